"""A steering sweep from Python: generate under a control vector at several scales and watch
the text move. Uses the GGUF control vector the repo ships for the GPT-2 fixture; any
llama.cpp control vector for a model you have works the same way.

    python examples/python/steering_sweep.py
    python examples/python/steering_sweep.py --model M --vector v.gguf --prompt "I think"
"""

import argparse
from pathlib import Path

import numpy as np

import patchclamp as pc

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/models/gpt2"))
    ap.add_argument("--vector", default=str(ROOT / "tests/fixtures/control-vectors/gpt2-fixture.gguf"))
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--scales", default="-8,-4,-2,0,2,4,8")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--out", default="runs/py-steering")
    ap.add_argument("--quick", action="store_true", help="a smoke run (the test suite's)")
    a = ap.parse_args()
    prompts = a.prompt or ["The cat sat on the", "hello world", "I think that"]
    scales = [float(s) for s in a.scales.split(",")]
    n = 6 if a.quick else a.tokens

    model = pc.load(a.model)
    plain = model.generate(prompts, max_new_tokens=n, do_sample=False, return_generations=True)
    changed = []
    for scale in scales:
        gens = model.generate(
            prompts, max_new_tokens=n, do_sample=False, control_vectors=[(a.vector, scale)], return_generations=True
        )
        # How far the steer moved the text: the share of generated tokens that differ.
        diff = np.mean([np.mean(np.array(g.tokens[: len(p.tokens)]) != np.array(p.tokens[: len(g.tokens)])) for g, p in zip(gens, plain)])
        changed.append(diff)
        print(f"scale {scale:+5.1f}  changed {diff:4.0%}  {gens[0].text!r}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(install matplotlib for the plot)")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(scales, changed, marker="o")
    ax.set(xlabel="control-vector scale", ylabel="generated tokens changed", title="steering sweep")
    fig.tight_layout()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "sweep.png", dpi=120)
    print(f"figure: {out / 'sweep.png'}")


if __name__ == "__main__":
    main()
