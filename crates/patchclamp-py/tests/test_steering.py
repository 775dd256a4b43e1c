"""Steering vectors from Python are the CLI's (the same GGUF bytes), and steer generation as
the control vector file does; directional ablation removes the direction."""

import subprocess

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS

POS = ["I love this, it is great", "What a wonderful day", "This is so good"]
NEG = ["I hate this, it is awful", "What a terrible day", "This is so bad"]


def test_extract_equals_the_cli(gpt2, cli, tmp_path):
    v = pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(1, 1), method="mean", out=tmp_path / "py.gguf")
    assert sorted(v.vectors) == [1] and v.vectors[1].shape == (32,)
    (tmp_path / "pos.txt").write_text("\n".join(POS) + "\n")
    (tmp_path / "neg.txt").write_text("\n".join(NEG) + "\n")
    subprocess.run([cli, "steer", "extract", str(MODELS / "gpt2"), "--positives", str(tmp_path / "pos.txt"),
                    "--negatives", str(tmp_path / "neg.txt"), "--method", "mean", "--layers", "1-1",
                    "--out", str(tmp_path / "cli.gguf")], check=True, capture_output=True)
    assert (tmp_path / "py.gguf").read_bytes() == (tmp_path / "cli.gguf").read_bytes()
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    # The file and the in-memory vectors steer alike.
    a = gpt2.generate("The", max_new_tokens=6, do_sample=False, control_vectors=[(tmp_path / "py.gguf", 3.0)])
    b = gpt2.generate("The", max_new_tokens=6, do_sample=False, interventions=v.interventions(3.0))
    assert a == b
    with pytest.raises(FileExistsError):
        pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(1, 1), out=tmp_path / "py.gguf")
    with pytest.raises(ValueError, match="block 0"):
        pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(0, 1), out=tmp_path / "zero.gguf")


def test_mean_method_is_the_mean_difference(gpt2):
    v = pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(1, 1), method="mean")
    diffs = []
    for p, n in zip(POS, NEG):
        _, cp = gpt2.run_with_cache(p, names_filter="blocks.1.hook_resid_post")
        _, cn = gpt2.run_with_cache(n, names_filter="blocks.1.hook_resid_post")
        diffs.append(cp["resid_post", 1][0, -1] - cn["resid_post", 1][0, -1])
    assert np.abs(v.vectors[1] - np.mean(diffs, axis=0)).max() < 1e-5


def test_directional_ablation_removes_the_direction(gpt2):
    d = np.random.default_rng(0).normal(size=32).astype(np.float32)
    ivs = pc.steering.directional_ablation(gpt2, d)
    _, cache = gpt2.run_with_cache("The cat sat", names_filter="blocks.1.hook_resid_post", interventions=ivs)
    x = cache["resid_post", 1]
    assert np.abs(x @ (d / np.linalg.norm(d))).max() < 1e-4


def test_steering_errors(gpt2, tmp_path):
    with pytest.raises(ValueError, match="method"):
        pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(0, 1), method="median")
    with pytest.raises(ValueError, match="layers"):
        pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(1, 4))
    with pytest.raises(ValueError, match=".gguf"):
        pc.steering.extract(gpt2, list(zip(POS, NEG)), layers=(1, 1), out=tmp_path / "v.bin")
    with pytest.raises(ValueError, match="width"):
        pc.steering.directional_ablation(gpt2, np.ones(3))
