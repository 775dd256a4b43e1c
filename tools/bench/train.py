#!/usr/bin/env python3
"""Training-speed benchmark, side by side: patchclamp vs PyTorch on the same models.

A 2-layer attention-only transformer (pre-LayerNorm, learned positions, no biases, untied
unembedding), vocabulary 64, 64 positions, batch 32, Adam lr 1e-3, next-token loss on every
position; shapes `flagship` (d_model 64, 4 heads) and `wide` (d_model 256, 8 heads), 2 threads.
Rounds interleave the frameworks (the machine's speed drifts); each round's ratio, the median
round (ms/step, steps/s) and the best round (best) are reported.

    python tools/bench/train.py --patchclamp target/release/patchclamp
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

SHAPES = {"flagship": (64, 4), "wide": (256, 8)}


def torch_child(shape, steps, warmup, threads):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d, h = SHAPES[shape]
    V, S, B = 64, 64, 32

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.o = nn.Linear(d, d, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.qkv(self.ln(x)).split(d, dim=-1)
            q, k, v = (t.view(b, s, h, d // h).transpose(1, 2) for t in (q, k, v))
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return x + self.o(z.transpose(1, 2).reshape(b, s, d))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, d)
            self.pos = nn.Parameter(torch.randn(S, d) * 0.02)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.ln = nn.LayerNorm(d)
            self.unembed = nn.Linear(d, V, bias=False)

        def forward(self, t):
            x = self.emb(t) + self.pos
            for b in self.blocks:
                x = b(x)
            return self.unembed(self.ln(x))

    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)

    def batch():
        # Random tokens with one segment repeated, as patchclamp's `repeated` task.
        toks = torch.randint(0, V, (B, S + 1), generator=g)
        for r in range(B):
            n = int(torch.randint(8, 33, (1,), generator=g))
            free = S + 1 - 2 * n
            a, c = sorted(torch.randint(0, free + 1, (2,), generator=g).tolist())
            toks[r, c + n:c + 2 * n] = toks[r, a:a + n]
        return toks[:, :-1], toks[:, 1:]

    def step():
        x, y = batch()
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"shape": shape, "framework": "pytorch", "params": params,
                      "steps_per_s": steps / secs, "ms_per_step": 1e3 * secs / steps,
                      "threads": threads, "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patchclamp", help="path to the patchclamp binary (required)")
    ap.add_argument("--shapes", default="flagship,wide")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        torch_child(a.child, a.steps, a.warmup, a.threads)
        return
    if not a.patchclamp:
        ap.error("--patchclamp is required")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    rows = []
    for shape in a.shapes.split(","):
        runs = {"patchclamp": [], "pytorch": []}
        for rnd in range(a.rounds):
            out = subprocess.run([a.patchclamp, "bench", "train", "--shape", shape, "--json"] + common,
                                 check=True, capture_output=True, text=True, env=env).stdout
            runs["patchclamp"].append(json.loads(out))
            out = subprocess.run([sys.executable, __file__, "--child", shape] + common,
                                 check=True, capture_output=True, text=True, env=env).stdout
            runs["pytorch"].append(json.loads(out.strip().splitlines()[-1]))
            pc, pt = runs["patchclamp"][-1]["ms_per_step"], runs["pytorch"][-1]["ms_per_step"]
            print(f"{shape} round {rnd + 1}: patchclamp {pc:.1f} ms, pytorch {pt:.1f} ms, "
                  f"patchclamp {pt / pc:.2f}x as fast", file=sys.stderr)
        ratios = [pt["ms_per_step"] / pc["ms_per_step"] for pc, pt in zip(runs["patchclamp"], runs["pytorch"])]
        wins = sum(r > 1 for r in ratios)
        print(f"{shape}: patchclamp faster in {wins} of {len(ratios)} rounds, "
              f"median ratio {statistics.median(ratios):.2f}x", file=sys.stderr)
        for fw, rs in runs.items():
            best = min(r["ms_per_step"] for r in rs)
            rs = sorted(rs, key=lambda r: r["ms_per_step"])
            rows.append(dict(rs[len(rs) // 2], best_ms=best))
    print(f"| {'shape':<9} | {'framework':<10} | {'params':>8} | {'ms/step':>8} | {'best':>6} | {'steps/s':>8} |")
    print("|-----------|------------|----------|----------|--------|----------|")
    for r in rows:
        print(f"| {r['shape']:<9} | {r['framework']:<10} | {r['params']:>8} | {r['ms_per_step']:>8.1f} "
              f"| {r['best_ms']:>6.1f} | {r['steps_per_s']:>8.1f} |")


if __name__ == "__main__":
    main()
