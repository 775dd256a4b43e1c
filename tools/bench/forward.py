#!/usr/bin/env python3
"""Forward-pass benchmark, side by side: patchclamp vs Hugging Face transformers vs TransformerLens.

Same shapes as `patchclamp bench forward`: a random GPT-2-small-shaped model (12 layers,
d_model 768, 12 heads, vocab 50257) and a tiny one (2 layers, d_model 128, 4 heads, vocab 1000),
batch 8 x 128 tokens, 2 threads. Each (framework, mode) runs in its own process so peak RSS is
its own. Prints one table (and --json writes it).

    python tools/bench/forward.py --patchclamp target/release/patchclamp
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "tiny": dict(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=256),
}


def child(shape, framework, mode, batch, seq, iters, warmup, threads):
    """Runs one measurement in this process and prints a JSON row."""
    import torch

    torch.set_num_threads(threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**SHAPES[shape], activation_function="gelu_new")
    cfg._attn_implementation = "eager" if framework == "transformer_lens" else "sdpa"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if framework == "transformers":
        def step():
            if mode == "plain":
                return model(tokens).logits, 0
            out = model(tokens, output_hidden_states=True, output_attentions=True)
            n = sum(t.numel() * t.element_size() for t in out.hidden_states + out.attentions)
            return out.logits, n
    else:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import PreTrainedTokenizerFast
        from tokenizers import Tokenizer, models

        tmp = tempfile.mkdtemp()
        model.save_pretrained(tmp)
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<b>")
        tok.save_pretrained(tmp)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tmp)
        bridge = TransformerBridge.boot_transformers(tmp, hf_model=model, tokenizer=tok)
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)

        def step():
            if mode == "plain":
                return bridge(tokens), 0
            logits, cache = bridge.run_with_cache(tokens)
            n = sum(t.numel() * t.element_size() for t in cache.values())
            return logits, n

    times, cache_bytes = [], 0
    with torch.no_grad():
        for i in range(warmup + iters):
            t = time.perf_counter()
            _, cache_bytes = step()
            dt = time.perf_counter() - t
            if i >= warmup:
                times.append(dt)
    med = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "model": shape, "framework": framework, "mode": mode, "median_ms": med * 1e3,
        "tokens_per_s": batch * seq / med, "peak_rss_mib": peak, "base_rss_mib": base_rss,
        "cache_mib": cache_bytes / 2**20,
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patchclamp", help="path to the patchclamp binary (adds its rows)")
    ap.add_argument("--shapes", default="tiny,gpt2-small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frameworks", default="patchclamp,transformers,transformer_lens")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every measurement this many times, frameworks interleaved, and "
                         "report the median round (the machine's speed drifts over minutes)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--child", nargs=3, metavar=("SHAPE", "FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child, a.batch, a.seq, a.iters, a.warmup, a.threads)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))

    def measure(shape, fw):
        if fw == "patchclamp":
            out = subprocess.run(
                [a.patchclamp, "bench", "forward", "--shape", shape, "--batch", str(a.batch),
                 "--seq", str(a.seq), "--iters", str(a.iters), "--warmup", str(a.warmup),
                 "--threads", str(a.threads), "--json"],
                check=True, capture_output=True, text=True, env=env).stdout
            rows = json.loads(out)
            for r in rows:
                r["framework"] = "patchclamp"
            return rows
        rows = []
        for mode in ["plain", "cache-all"]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", shape, fw, mode, "--batch", str(a.batch),
                 "--seq", str(a.seq), "--iters", str(a.iters), "--warmup", str(a.warmup),
                 "--threads", str(a.threads)],
                check=True, capture_output=True, text=True, env=env).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        return rows

    frameworks = [f for f in a.frameworks.split(",") if f != "patchclamp" or a.patchclamp]
    rows = []
    for shape in a.shapes.split(","):
        rounds = {}
        for rnd in range(a.rounds):
            for fw in frameworks:
                for r in measure(shape, fw):
                    rounds.setdefault((fw, r["mode"]), []).append(r)
                print(f"done {shape} {fw} round {rnd + 1}", file=sys.stderr)
        for key in sorted(rounds, key=lambda k: (frameworks.index(k[0]), k[1] != "plain")):
            rs = sorted(rounds[key], key=lambda r: r["median_ms"])
            rows.append(rs[len(rs) // 2])
    hdr = f"| {'model':<10} | {'framework':<16} | {'mode':<9} | {'median ms':>9} | {'tokens/s':>9} | {'peak RSS MiB':>12} | {'cache MiB':>9} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['model']:<10} | {r['framework']:<16} | {r['mode']:<9} | {r['median_ms']:>9.1f} | "
              f"{r['tokens_per_s']:>9.0f} | {r['peak_rss_mib']:>12.1f} | {r['cache_mib']:>9.1f} |")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
