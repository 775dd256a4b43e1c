"""The flagship from Python: train the three induction runs (baseline, layer-0 attention
ablated, head 0.0 clamped to the previous-token pattern) and plot their in-context loss and
induction scores. Same runs, same numbers as `patchclamp lab induction`.

    python examples/python/train_induction.py            # ~3 minutes on 2 cores
"""

import argparse
from pathlib import Path

import patchclamp as pc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/py-induction")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run (the test suite's): 60 steps")
    a = ap.parse_args()
    steps = 60 if a.quick else a.steps

    runs = {}
    for i, (label, exp) in enumerate(pc.lab.presets("induction", seed=a.seed, steps=steps)):
        if a.quick:
            exp["train"]["eval_every"] = 20
        print(f"training {label} …")
        runs[label] = pc.lab.train(exp, out=Path(a.out) / exp["name"], force=True, progress=True)

    for label, run in runs.items():
        s = run.summary["runs"][0]
        print(f"{label:>32}: phase change at step {s.get('phase_change_step')}, final in-context loss {run.curve('in_context_loss')[1][-1]:.3f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(install matplotlib for the curves)")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run in runs.items():
        ax1.plot(*run.curve("in_context_loss"), label=label)
        steps_, icl = run.curve("icl_score")
        ax2.plot(steps_, icl, label=label)
    ax1.set(xlabel="step", ylabel="nats", title="loss on in-context targets")
    ax2.set(xlabel="step", ylabel="nats", title="in-context learning score")
    ax1.legend()
    fig.tight_layout()
    path = Path(a.out) / "curves.png"
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
