#!/usr/bin/env python3
"""SAE training throughput, side by side: patchclamp vs SAELens on the same activations.

A TopK SAE (d_in 768, d_sae 24 576, k 32, batch 4096, Adam) trained on one set of pre-harvested
activations: the script writes them once as a patchclamp activation store (sharded
safetensors, tensor `acts`), SAELens's `TopKTrainingSAE` reads the same rows. SAELens's step is
its own `training_forward_pass` (MSE + AuxK) with `backward` and `torch.optim.Adam`, as its
trainer runs it; patchclamp's is `patchclamp bench sae --activations`. 2 threads; rounds
interleave the two (the machine's speed drifts); each round's ratio and the median are printed,
with each one's peak memory.

The activations are synthetic (no hub, no GPT-2-small weights here): sparse combinations of
random unit directions plus noise, which give a TopK SAE the live latents a real residual
stream does. The timing does not depend on their values, only on their shape and sparsity.

    pip install sae-lens
    python tools/bench/sae.py --patchclamp target/release/patchclamp [--rounds 3 --steps 3]
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
from pathlib import Path

D_IN, D_SAE, K, BATCH = 768, 24576, 32, 4096


def write_store(dir: Path, rows: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((4 * D_IN, D_IN)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dir.mkdir(parents=True, exist_ok=True)
    shards, done, i = [], 0, 0
    while done < rows:
        n = min(BATCH * 2, rows - done)
        codes = (rng.random((n, dirs.shape[0])) < 0.01) * rng.random((n, dirs.shape[0]))
        acts = (codes.astype(np.float32) @ dirs + 0.05 * rng.standard_normal((n, D_IN))).astype(np.float32)
        name = f"acts-{i:05d}.safetensors"
        header = json.dumps({"acts": {"dtype": "F32", "shape": [n, D_IN], "data_offsets": [0, acts.nbytes]}}).encode()
        header += b" " * (-len(header) % 8)
        with open(dir / name, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header + acts.tobytes())
        shards.append(name)
        done, i = done + n, i + 1
    (dir / "store.json").write_text(json.dumps({"format": "patchclamp-activation-store-1", "hook": "", "d_in": D_IN,
                                                "rows": rows, "shards": shards, "source": "tools/bench/sae.py"}))


def saelens_child(store: str, steps: int, threads: int):
    import numpy as np
    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    info = json.loads((Path(store) / "store.json").read_text())

    def batches():
        for name in info["shards"]:
            raw = (Path(store) / name).read_bytes()
            n = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8 : 8 + n])["acts"]
            a = np.frombuffer(raw[8 + n :], dtype=np.float32).reshape(meta["shape"])
            for i in range(0, len(a) - BATCH + 1, BATCH):
                yield torch.from_numpy(a[i : i + BATCH].copy())

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    dead = torch.zeros(D_SAE, dtype=torch.bool)

    def step(x):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                        n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    it = batches()
    step(next(it))  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"framework": "saelens", "ms_per_step": 1e3 * secs / steps, "tokens_per_s": steps * BATCH / secs,
                      "peak_rss_mib": peak}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patchclamp", default="target/release/patchclamp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help="also time patchclamp's harvest + training from this text (random GPT-2-small)")
    a = ap.parse_args()
    if a.child:
        return saelens_child(a.child, a.steps, a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        write_store(store, BATCH * (a.steps + 2))
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"TopK SAE {D_IN} → {D_SAE}, k {K}, batch {BATCH}, {a.steps} timed steps per round, {a.threads} threads; {cpu}")
        ratios, rows = [], {"patchclamp": [], "saelens": []}
        for r in range(a.rounds):
            pc = json.loads(subprocess.run([a.patchclamp, "bench", "sae", "--activations", str(store), "--d-sae", str(D_SAE),
                                            "--k", str(K), "--batch", str(BATCH), "--steps", str(a.steps), "--threads",
                                            str(a.threads), "--json"], check=True, capture_output=True, text=True, env=env).stdout)
            sl = json.loads(subprocess.run([sys.executable, __file__, "--child", str(store), "--steps", str(a.steps),
                                            "--threads", str(a.threads)], check=True, capture_output=True, text=True,
                                           env=env).stdout.strip().splitlines()[-1])
            rows["patchclamp"].append(pc)
            rows["saelens"].append(sl)
            ratios.append(sl["ms_per_step"] / pc["ms_per_step"])
            print(f"round {r + 1}: patchclamp {pc['ms_per_step']:.0f} ms/step ({pc['tokens_per_s']:.0f} tok/s, "
                  f"peak {pc['peak_rss_mib']:.0f} MiB) · SAELens {sl['ms_per_step']:.0f} ms/step ({sl['tokens_per_s']:.0f} tok/s, "
                  f"peak {sl['peak_rss_mib']:.0f} MiB) · {ratios[-1]:.2f}×")
        med = lambda k, f: statistics.median(x[k] for x in rows[f])
        print(f"median: patchclamp {med('ms_per_step', 'patchclamp'):.0f} ms/step, SAELens {med('ms_per_step', 'saelens'):.0f} ms/step; "
              f"patchclamp is {statistics.median(ratios):.2f}× SAELens's training throughput")
        if a.corpus:
            h = json.loads(subprocess.run([a.patchclamp, "bench", "sae", "--corpus", a.corpus, "--d-sae", str(D_SAE), "--k",
                                           str(K), "--batch", str(BATCH), "--steps", str(a.steps), "--threads",
                                           str(a.threads), "--json"], check=True, capture_output=True, text=True, env=env).stdout)
            print(f"patchclamp harvest + training from text ({h['source']}): {h['ms_per_step']:.0f} ms/step, "
                  f"{h['tokens_per_s']:.0f} tok/s, peak {h['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
