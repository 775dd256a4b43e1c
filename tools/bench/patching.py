#!/usr/bin/env python3
"""Activation-patching benchmark, side by side: patchclamp vs TransformerLens, identical weights.

Builds a random GPT-2-shaped model (gpt2-small or tiny), saves it as a Hugging Face folder, and
runs on the same 15-token IOI-style token ids:
  - TransformerLens: transformer_lens.patching.get_act_patch_resid_pre and
    get_act_patch_attn_head_out_all_pos through TransformerBridge (compatibility mode, raw weights);
  - patchclamp: `patchclamp bench patch --model DIR` (the same sweeps: resid_pre per position,
    hook_z per head), batched and reusing the unpatched prefix.
Rounds alternate the two; the table shows each one's median over rounds and every round's ratio.
Prints wall time and the largest difference between the two result matrices.

    python tools/bench/patching.py --patchclamp target/release/patchclamp --shapes tiny,gpt2-small --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models

SHAPES = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "tiny": dict(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=256),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patchclamp", required=True)
    ap.add_argument("--shapes", default="tiny,gpt2-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=15)
    ap.add_argument("--batch", type=int, help="variants per forward (default: patchclamp's own)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens import patching

    rows = []
    for shape in a.shapes.split(","):
        cfg = GPT2Config(**SHAPES[shape], activation_function="gelu_new")
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg).eval()
        g = torch.Generator().manual_seed(1)
        clean = torch.randint(0, cfg.vocab_size, (1, a.seq), generator=g)
        corrupt = clean.clone()
        corrupt[0, 2] = (clean[0, 2] + 1) % cfg.vocab_size  # swap a "name"
        corrupt[0, 9] = (clean[0, 9] + 7) % cfg.vocab_size
        answer, wrong = int(clean[0, 2]), int(corrupt[0, 2])
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<b>").save_pretrained(d)
            tok = AutoTokenizer.from_pretrained(d)
            bridge = TransformerBridge.boot_transformers(d, hf_model=model, tokenizer=tok)
            bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)

            def metric(logits):
                return logits[0, -1, answer] - logits[0, -1, wrong]

            env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
            ids = lambda t: ",".join(str(int(x)) for x in t[0])
            tl_times, pc_times, tl, pc = {}, {}, {}, {}
            # Rounds alternate the two frameworks, so a slow stretch of the host hits both.
            for _ in range(a.rounds):
                with torch.no_grad():
                    _, clean_cache = bridge.run_with_cache(clean)
                    for name, fn in [("resid_pre", patching.get_act_patch_resid_pre),
                                     ("z", patching.get_act_patch_attn_head_out_all_pos)]:
                        t = time.perf_counter()
                        out = fn(bridge, corrupt, clean_cache, metric)
                        tl_times.setdefault(name, []).append(time.perf_counter() - t)
                        tl[name] = out.float()
                        print(f"done {shape} transformer_lens {name}", file=sys.stderr)
                out = subprocess.run(
                    [a.patchclamp, "bench", "patch", "--model", d, "--clean", ids(clean), "--corrupt", ids(corrupt),
                     "--answer", str(answer), "--wrong", str(wrong),
                     "--threads", str(a.threads), "--iters", "3", "--json"]
                    + (["--batch", str(a.batch)] if a.batch else []),
                    check=True, capture_output=True, text=True, env=env).stdout
                for r in json.loads(out):
                    pc[r["site"]] = r
                    pc_times.setdefault(r["site"], []).append(r["median_s"])
        for name in ["resid_pre", "z"]:
            tl_time, ours_time = statistics.median(tl_times[name]), statistics.median(pc_times[name])
            ours = torch.tensor(pc[name]["values"]).reshape(pc[name]["n_layers"], pc[name]["n_cols"])
            diff = (ours - tl[name]).abs().max().item()
            rows.append(dict(model=shape, sweep=name, variants=ours.numel(), tl_s=tl_time,
                             patchclamp_s=ours_time, speedup=tl_time / ours_time, max_abs_diff=diff,
                             speedups=[t / o for t, o in zip(tl_times[name], pc_times[name])]))
    print(f"| model | sweep | variants | TransformerLens s | patchclamp s | speed-up | per round | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{x:.1f}x" for x in r["speedups"])
        print(f"| {r['model']} | {r['sweep']} | {r['variants']} | {r['tl_s']:.2f} | {r['patchclamp_s']:.2f} | "
              f"{r['speedup']:.1f}x | {per} | {r['max_abs_diff']:.1e} |")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
