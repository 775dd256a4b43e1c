"""An SAE end to end from Python: train a TopK SAE on a model's residual stream, evaluate it,
look at its features, and steer the model by one latent — then plot the training curves.

    python examples/python/sae_workflow.py                       # the GPT-2 fixture (no download)
    python examples/python/sae_workflow.py --model ORG/NAME --hook blocks.6.hook_resid_post \\
        --corpus my_corpus.txt --d-sae 24576 --k 32 --tokens 10000000
"""

import argparse
from pathlib import Path

import numpy as np

import patchclamp as pc

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/models/gpt2"))
    ap.add_argument("--hook", default="blocks.0.hook_resid_post")
    ap.add_argument("--corpus", default=str(ROOT / "tests/fixtures/corpus.txt"))
    ap.add_argument("--d-sae", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=12_000)
    ap.add_argument("--context-size", type=int, default=32)
    ap.add_argument("--out", default="runs/py-sae")
    ap.add_argument("--quick", action="store_true", help="a smoke run (the test suite's)")
    a = ap.parse_args()
    out = Path(a.out)
    tokens = 2_000 if a.quick else a.tokens

    model = pc.load(a.model)
    run = pc.sae.train(model, a.hook, a.corpus, d_sae=a.d_sae, k=a.k, tokens=tokens, batch=200,
                       context_size=a.context_size, out=out / "train", force=True, log_every=5)
    print(run.lines[-1])
    sae = run.sae
    m = pc.sae.evaluate(sae, model, a.corpus, contexts=8, context_size=a.context_size)
    print(f"evaluation: {m}")

    # The most frequent latent's dashboard, and steering by it with the error term kept.
    j = int(np.argmax(m.frequencies))
    d = pc.sae.features(sae, model, a.corpus, out / "features", latents=[j], contexts=8,
                        context_size=a.context_size)
    print(f"latent {j}: fires on {100 * d.features[0]['frac_nonzero']:.1f}% of tokens; page {d.path / 'features' / f'{j}.html'}")
    prompt = "the cat sat on"
    plain = model.generate(prompt, max_new_tokens=8, do_sample=False)
    steer = [{"at": f"{a.hook}.hook_sae_acts_post", "select": {"units": [j], "positions": "generated"},
              "op": {"kind": "add", "vector": 20.0}}]
    steered = model.generate(prompt, max_new_tokens=8, do_sample=False, saes=[(sae, True)], interventions=steer)
    print(f"plain:   {plain!r}\nsteered: {steered!r}")

    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, key in zip(axes, ["explained_variance", "l0"]):
        steps, values = run.curve(key)
        ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "))
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=100)
    print(f"curves: {out / 'training.png'}")


if __name__ == "__main__":
    main()
