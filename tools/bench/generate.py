#!/usr/bin/env python3
"""Generation benchmark, side by side: patchclamp vs Hugging Face `generate` vs TransformerLens.

One random GPT-2-small-shaped model (12 layers, d_model 768, vocab 50257), saved once and loaded
by every framework, so all run the same weights on the same token ids: 16-token prompts, 64 new
tokens, greedy with a KV cache, 2 threads, at batch 1 and batch 16 (ragged: 9 to 16 tokens, left
padded). TransformerLens generates at batch 1 with one steering hook (a vector added at
blocks.6.hook_resid_post); patchclamp generates plain and with the same vector. Every
(framework, batch) runs in its own process, so its peak RSS is its own, and the rounds
interleave the frameworks, so a slow stretch of the host hits all of them.

It also measures the machine's read bandwidth (a 1 GiB sum) and prints the bandwidth floor of
batch-1 decoding: the weight bytes one step reads (every parameter but the position table) over
that bandwidth.

    python tools/bench/generate.py --patchclamp target/release/patchclamp --rounds 3
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

SHAPE = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
PROMPT_LEN, NEW, STEER_LAYER, STEER_COEF = 16, 64, 6, 4.0


def prompts(batch):
    """Token ids: batch 1 is one 16-token prompt; larger batches are ragged (9..16 tokens)."""
    import torch

    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(batch):
        n = PROMPT_LEN if batch == 1 else PROMPT_LEN - (i * 5) % 8
        out.append(torch.randint(0, SHAPE["vocab_size"], (n,), generator=g).tolist())
    return out


def steer_vector():
    import torch

    g = torch.Generator().manual_seed(2)
    v = torch.randn(SHAPE["n_embd"], generator=g)
    return (v / v.norm()).tolist()


def left_padded(ps):
    import torch

    n = max(len(p) for p in ps)
    ids = torch.zeros((len(ps), n), dtype=torch.long)
    mask = torch.zeros((len(ps), n), dtype=torch.long)
    for i, p in enumerate(ps):
        ids[i, n - len(p):] = torch.tensor(p)
        mask[i, n - len(p):] = 1
    return ids, mask


def child(framework, folder, batch, iters, warmup, threads):
    """Runs one (framework, batch) in this process and prints a JSON row per mode."""
    import torch

    torch.set_num_threads(threads)
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ps = prompts(batch)
    ids, mask = left_padded(ps)
    rows = []

    def timed(run_prefill, run_all):
        totals, prefills, tokens = [], [], None
        for i in range(warmup + iters):
            t = time.perf_counter()
            run_prefill()
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            tokens = run_all()
            total = time.perf_counter() - t
            if i >= warmup:
                totals.append(total)
                prefills.append(prefill)
        return statistics.median(totals), statistics.median(prefills), tokens

    with torch.no_grad():
        if framework == "transformers":
            def prefill():
                model(ids, attention_mask=mask)

            def run_all():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                                     min_new_tokens=NEW, do_sample=False)
                return out[:, ids.shape[1]:].tolist()

            modes = [("plain", prefill, run_all)]
        else:
            from transformer_lens.model_bridge import TransformerBridge
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(folder)
            bridge = TransformerBridge.boot_transformers(folder, hf_model=model, tokenizer=tok)
            bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
            v = torch.tensor(steer_vector())

            def steer(x, hook):
                return x + STEER_COEF * v

            def with_hook(f):
                def run():
                    with bridge.hooks(fwd_hooks=[(f"blocks.{STEER_LAYER}.hook_resid_post", steer)]):
                        return f()
                return run

            def prefill():
                bridge(ids)

            def run_all():
                out = bridge.generate(ids, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                      use_past_kv_cache=True, verbose=False, return_type="tokens")
                return out[:, ids.shape[1]:].tolist()

            def uncached():
                out = bridge.generate(ids, max_new_tokens=NEW, do_sample=False, stop_at_eos=False,
                                      use_past_kv_cache=False, verbose=False, return_type="tokens")
                return out[:, ids.shape[1]:].tolist()

            modes = [("steered", with_hook(prefill), with_hook(run_all))]
        for mode, prefill, run_all in modes:
            total, pre, tokens = timed(prefill, run_all)
            rows.append(dict(framework=framework, mode=mode, batch=batch, total_s=total, prefill_s=pre,
                             decode_ms_per_step=1e3 * (total - pre) / (NEW - 1),
                             tokens_per_s=batch * NEW / total,
                             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             tokens=tokens))
        if framework == "transformer_lens":
            # The same steering without the cache: every step recomputes the whole sequence.
            rows[-1]["tokens_uncached"] = with_hook(uncached)()
    print(json.dumps(rows))


def bandwidth(threads):
    """Read bandwidth in bytes/s: the best of five sums over 1 GiB of float32."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(1 << 28)
    x.sum()
    best = min(_time(lambda: x.sum()) for _ in range(5))
    return x.numel() * 4 / best


def _time(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patchclamp", default="target/release/patchclamp")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "FOLDER", "BATCH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        fw, folder, batch = a.child
        child(fw, folder, int(batch), a.iters, a.warmup, a.threads)
        return

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    cfg = GPT2Config(**SHAPE, activation_function="gelu_new")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    read_bytes = 4 * sum(q.numel() for n, q in model.named_parameters() if "wpe" not in n)
    bw = bandwidth(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    results = {}
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<b>").save_pretrained(d)
        specs = {}
        for b in batches:
            specs[b] = os.path.join(d, f"spec-{b}.json")
            json.dump(dict(prompts=prompts(b), steer=dict(layer=STEER_LAYER, coef=STEER_COEF, vector=steer_vector())),
                      open(specs[b], "w"))
        common = ["--iters", str(a.iters), "--warmup", str(a.warmup), "--threads", str(a.threads)]
        for r in range(a.rounds):
            for b in batches:
                jobs = [("transformers", [sys.executable, __file__, "--child", "transformers", d, str(b)] + common)]
                if b == 1:
                    jobs.append(("transformer_lens",
                                 [sys.executable, __file__, "--child", "transformer_lens", d, str(b)] + common))
                jobs.append(("patchclamp", [a.patchclamp, "bench", "generate", "--model", d, "--spec", specs[b],
                                            "--max-new-tokens", str(NEW), "--json"] + common))
                for fw, cmd in jobs:
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                    for row in json.loads(out.strip().splitlines()[-1]):
                        row.setdefault("framework", fw)
                        results.setdefault((row["framework"], row["mode"], b), []).append(row)
                    print(f"round {r + 1}: {fw} batch {b} done", file=sys.stderr)

    floor_ms = 1e3 * read_bytes / bw
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; batch-1 decode reads {read_bytes / 1e6:.0f} MB of weights: "
          f"floor {floor_ms:.1f} ms/token")
    print("| framework | mode | batch | decode ms/step | × floor | tokens/s | prefill ms | peak RSS MiB | per round (ms/step) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (fw, mode, b), rs in sorted(results.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        dec = statistics.median(r["decode_ms_per_step"] for r in rs)
        row = dict(framework=fw, mode=mode, batch=b, decode_ms_per_step=dec,
                   tokens_per_s=statistics.median(r["tokens_per_s"] for r in rs),
                   prefill_ms=1e3 * statistics.median(r["prefill_s"] for r in rs),
                   peak_rss_mib=max(r["peak_rss_mib"] for r in rs),
                   rounds=[r["decode_ms_per_step"] for r in rs], tokens=rs[-1]["tokens"],
                   tokens_uncached=rs[-1].get("tokens_uncached"))
        rows.append(row)
        per = ", ".join(f"{x:.1f}" for x in row["rounds"])
        print(f"| {fw} | {mode} | {b} | {dec:.1f} | {dec / floor_ms:.2f} | {row['tokens_per_s']:.0f} | "
              f"{row['prefill_ms']:.1f} | {row['peak_rss_mib']:.0f} | {per} |")

    def tokens(fw, mode, b):
        return next((r["tokens"] for r in rows if (r["framework"], r["mode"], r["batch"]) == (fw, mode, b)), None)

    for b in batches:
        hf, pc = tokens("transformers", "plain", b), tokens("patchclamp", "plain", b)
        same = sum(x == y for ph, pp in zip(hf, pc) for x, y in zip(ph, pp))
        print(f"batch {b}: patchclamp's greedy tokens equal Hugging Face's at {same} of {b * NEW} positions")
    tl, pc = tokens("transformer_lens", "steered", 1), tokens("patchclamp", "steered", 1)
    if tl and pc:
        same = sum(x == y for x, y in zip(tl[0], pc[0]))
        print(f"steered batch 1: patchclamp's tokens equal TransformerLens's (KV cache) at {same} of {NEW} positions")
        unc = next(r["tokens_uncached"] for r in rows if r["framework"] == "transformer_lens")
        same = sum(x == y for x, y in zip(unc[0], pc[0]))
        own = sum(x == y for x, y in zip(unc[0], tl[0]))
        print(f"steered batch 1: patchclamp's tokens equal TransformerLens's without the cache (a full "
              f"recompute per step) at {same} of {NEW} positions; TransformerLens's cached and uncached "
              f"runs agree at {own}")
    if a.json:
        json.dump(dict(bandwidth_bytes_per_s=bw, read_bytes=read_bytes, rows=rows), open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
