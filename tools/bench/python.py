#!/usr/bin/env python3
"""The Python package's speed, side by side: patchclamp from Python vs the Rust CLI vs
TransformerLens, on identical weights and inputs, 2 threads, rounds interleaved.

Per model (a random GPT-2-small-shaped one saved as a Hugging Face folder, and the committed
tiny GPT-2 fixture):
  - a plain forward, run_with_cache of every hook, and of a filtered set (blocks.*.hook_resid_pre);
  - a forward with one Python callback hook (identity, at blocks.0.hook_resid_pre), and the cost
    of one callback hook (per_hook: a forward with one at every block's resid_pre against a plain
    forward, alternating within the process, divided by the number of hooks);
  - a resid_pre activation-patching sweep (logit difference, 15 tokens).
The Rust numbers come from `patchclamp bench forward` / `bench patch` on the same folder; each
framework runs in its own process. Prints one table (and --json writes the rows).

    python tools/bench/python.py --patchclamp target/release/patchclamp --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILTER = "blocks.*.hook_resid_pre"
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def timed(fn, iters, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def per_hook(plain, hooked, n, iters):
    """The cost of one callback hook: a forward with ``n`` identity hooks against a plain one,
    alternating within the process (so the host's drift cancels), divided by ``n``."""
    plain(), hooked()
    ds = []
    for _ in range(iters):
        t = time.perf_counter()
        plain()
        a = time.perf_counter() - t
        t = time.perf_counter()
        hooked()
        ds.append(time.perf_counter() - t - a)
    return statistics.median(ds) / n * 1e3


def inputs(vocab, batch, seq):
    import numpy as np

    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, size=(batch, seq))
    clean = rng.integers(0, vocab, size=15)
    corrupt = clean.copy()
    corrupt[2] = (clean[2] + 1) % vocab
    corrupt[9] = (clean[9] + 7) % vocab
    return tokens, clean, corrupt, int(clean[2]), int(corrupt[2])


def child_python(d, batch, seq, iters, threads):
    import patchclamp as pc

    pc.set_num_threads(threads)
    m = pc.load(d)
    tokens, clean, corrupt, answer, wrong = inputs(m.cfg.d_vocab, batch, seq)
    out = {
        "plain": timed(lambda: m(tokens), iters),
        "cache-all": timed(lambda: m.run_with_cache(tokens), iters),
        "cache-filtered": timed(lambda: m.run_with_cache(tokens, names_filter=FILTER), iters),
        "callback": timed(lambda: m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: None)]), iters),
        "sweep": timed(lambda: pc.patching.sweep(m, clean, corrupt, metric=pc.patching.logit_diff(answer, wrong)), max(1, iters // 2)),
    }
    hooks = [(f"blocks.{l}.hook_resid_pre", lambda a, h: None) for l in range(m.cfg.n_layers)]
    out["per_hook"] = per_hook(lambda: m(tokens), lambda: m.run_with_hooks(tokens, fwd_hooks=hooks), len(hooks), iters)
    print(json.dumps(out))


def child_tl(d, batch, seq, iters, threads):
    import torch
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.set_num_threads(threads)
    hf = GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(d)
    bridge = TransformerBridge.boot_transformers(d, hf_model=hf, tokenizer=tok)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    tokens, clean, corrupt, answer, wrong = inputs(hf.config.vocab_size, batch, seq)
    tokens = torch.tensor(tokens)
    clean, corrupt = torch.tensor(clean)[None], torch.tensor(corrupt)[None]
    want = lambda n: n.startswith("blocks.") and n.endswith(".hook_resid_pre")

    def sweep():
        _, cache = bridge.run_with_cache(clean)
        patching.get_act_patch_resid_pre(bridge, corrupt, cache, lambda l: l[0, -1, answer] - l[0, -1, wrong])

    with torch.no_grad():
        out = {
            "plain": timed(lambda: bridge(tokens), iters),
            "cache-all": timed(lambda: bridge.run_with_cache(tokens), iters),
            "cache-filtered": timed(lambda: bridge.run_with_cache(tokens, names_filter=want), iters),
            "callback": timed(lambda: bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: None)]), iters),
            "sweep": timed(sweep, max(1, iters // 2)),
        }
        n = hf.config.n_layer
        hooks = [(f"blocks.{l}.hook_resid_pre", lambda a, hook: None) for l in range(n)]
        out["per_hook"] = per_hook(lambda: bridge(tokens), lambda: bridge.run_with_hooks(tokens, fwd_hooks=hooks), n, iters)
    print(json.dumps(out))


def rust(exe, d, batch, seq, iters, threads, vocab):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    fw = json.loads(subprocess.run(
        [exe, "bench", "forward", "--model", d, "--batch", str(batch), "--seq", str(seq), "--iters", str(iters),
         "--threads", str(threads), "--cache", FILTER, "--json"], check=True, capture_output=True, text=True, env=env).stdout)
    out = {r["mode"]: r["median_ms"] for r in fw}
    _, clean, corrupt, answer, wrong = inputs(vocab, batch, seq)
    ids = lambda t: ",".join(str(int(x)) for x in t)
    pt = json.loads(subprocess.run(
        [exe, "bench", "patch", "--model", d, "--clean", ids(clean), "--corrupt", ids(corrupt), "--answer", str(answer),
         "--wrong", str(wrong), "--sweeps", "resid_pre", "--threads", str(threads), "--iters", str(max(1, iters // 2)), "--json"],
        check=True, capture_output=True, text=True, env=env).stdout)
    out["sweep"] = pt[0]["median_s"] * 1e3
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patchclamp", help="the release binary (required)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--models", default="gpt2-small,tiny-fixture")
    ap.add_argument("--frameworks", default="rust,python,transformer_lens")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        {"python": child_python, "transformer_lens": child_tl}[a.child[0]](a.child[1], a.batch, a.seq, a.iters, a.threads)
        return

    if not a.patchclamp:
        ap.error("--patchclamp is required")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads))
    tmp = tempfile.mkdtemp()
    models = {}
    for name in a.models.split(","):
        if name == "tiny-fixture":
            # Per-call overhead is the question here: many more iterations of a ~0.1 ms call.
            models[name] = (str(ROOT / "tests/fixtures/models/gpt2"), 1, 21, 320, a.iters * 40)
        else:
            import torch
            from tokenizers import Tokenizer, models as tm
            from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

            torch.manual_seed(0)
            GPT2LMHeadModel(GPT2Config(**GPT2_SMALL, activation_function="gelu_new")).save_pretrained(f"{tmp}/{name}")
            PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tm.BPE()), bos_token="<b>").save_pretrained(f"{tmp}/{name}")
            models[name] = (f"{tmp}/{name}", a.batch, a.seq, GPT2_SMALL["vocab_size"], a.iters)
    rows = []
    for name, (d, batch, seq, vocab, iters) in models.items():
        results = {}
        for rnd in range(a.rounds):
            for fw in a.frameworks.split(","):
                if fw == "rust":
                    r = rust(a.patchclamp, d, batch, seq, iters, a.threads, vocab)
                else:
                    p = subprocess.run([sys.executable, __file__, "--child", fw, d, "--batch", str(batch), "--seq", str(seq),
                                        "--iters", str(iters), "--threads", str(a.threads)],
                                       capture_output=True, text=True, env=env)
                    if p.returncode != 0:
                        print(f"{fw} on {name} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                        continue
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                results.setdefault(fw, []).append(r)
                print(f"done {name} {fw} round {rnd + 1}", file=sys.stderr)
        for fw, rs in results.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            rows.append(dict(model=name, batch=batch, seq=seq, framework=fw, **med))
    cols = ["plain", "cache-all", "cache-filtered", "callback", "sweep", "per_hook"]
    print(f"| model | batch×seq | framework | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in rows:
        cells = " | ".join(f"{r[c]:.3f}" if c in r else "—" for c in cols)
        print(f"| {r['model']} | {r['batch']}×{r['seq']} | {r['framework']} | {cells} |")
    by = {(r["model"], r["framework"]): r for r in rows}
    for name in models:
        py, rs = by.get((name, "python")), by.get((name, "rust"))
        if py and rs:
            parts = ", ".join(f"{c} {100 * (py[c] / rs[c] - 1):+.1f}%" for c in ["plain", "cache-all", "cache-filtered", "sweep"])
            print(f"{name}: Python vs Rust: {parts}; per-call overhead {py['plain'] - rs['plain']:.3f} ms")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
