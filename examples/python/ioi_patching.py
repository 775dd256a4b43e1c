"""IOI-style activation patching from Python: which residual positions and which heads carry
the indirect object? Patches the clean run into the name-swapped run, layer by layer, and
draws both heatmaps.

    python examples/python/ioi_patching.py                       # the GPT-2 fixture (no download)
    python examples/python/ioi_patching.py --model ORG/NAME      # a model in the HF cache
"""

import argparse
from pathlib import Path

import patchclamp as pc

ROOT = Path(__file__).resolve().parents[2]


def first_token(model, text):
    # On GPT-2 small a name with its space is one token; the fixture's tiny vocabulary splits
    # it, so the metric reads the name's first token.
    return int(model.to_tokens(text, prepend_bos=False)[0, 0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/models/gpt2"))
    ap.add_argument("--out", default="runs/py-ioi", help="folder for the heatmaps")
    ap.add_argument("--quick", action="store_true", help="a smoke run (the test suite's)")
    a = ap.parse_args()

    model = pc.HookedTransformer.from_pretrained(a.model)
    # The indirect object is Mary; the corrupted prompt names a third person as the giver
    # (Wang et al.'s "ABC" distribution), so the duplicate-name signal is gone.
    clean = "When Mary and Sam went to the store, Sam gave a drink to"
    corrupted = "When Mary and Sam went to the store, Dan gave a drink to"
    io, s = first_token(model, " Mary"), first_token(model, " Sam")
    metric = pc.patching.logit_diff(io, s)
    labels = model.to_str_tokens(clean)

    resid = pc.patching.get_act_patch_resid_pre(model, clean, corrupted, metric)
    heads = pc.patching.get_act_patch_attn_head_out_all_pos(model, clean, corrupted, metric)
    print(f"logit difference: clean {resid.clean_metric:.3f}, corrupted {resid.corrupt_metric:.3f}")
    layer, pos = divmod(int(abs(resid.normalized).argmax()), resid.values.shape[1])
    print(f"strongest residual patch: layer {layer}, position {pos} ({labels[pos]!r}) → {resid.normalized[layer, pos]:.2f}")
    layer, head = divmod(int(abs(heads.normalized).argmax()), heads.values.shape[1])
    print(f"strongest head: {layer}.{head} → {heads.normalized[layer, head]:.2f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(install matplotlib for the heatmaps)")
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 1]})
    resid.plot(ax=axes[0], labels=labels)
    heads.plot(ax=axes[1])
    fig.tight_layout()
    fig.savefig(out / "ioi_patching.png", dpi=120)
    print(f"figure: {out / 'ioi_patching.png'}")


if __name__ == "__main__":
    main()
