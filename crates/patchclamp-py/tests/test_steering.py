"""Steering vectors from Python are the CLI's (the same GGUF bytes), and steer generation as
the control vector file does; directional ablation removes the direction."""

import subprocess

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS, read_safetensors


def header(path):
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]).get("__metadata__")

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


def test_ablation_from_a_control_vector_equals_the_cli(gpt2, cli, tmp_path):
    cv = MODELS.parent / "control-vectors" / "gpt2-fixture.gguf"
    ivs = pc.steering.directional_ablation(gpt2, (cv, 1))
    ours = gpt2.generate("The cat", max_new_tokens=6, do_sample=False, interventions=ivs, return_generations=True)[0].tokens
    out = subprocess.run([cli, "generate", str(MODELS / "gpt2"), "--prompt", "The cat", "--max-new-tokens", "6",
                          "--ablate", f"{cv}:1", "--json"], check=True, capture_output=True, text=True).stdout
    import json
    assert [ours] == [g["tokens"] for g in json.loads(out)["generations"]]
    with pytest.raises(ValueError, match="no direction.7"):
        pc.steering.directional_ablation(gpt2, (cv, 7))


def test_linear_act_equals_the_cli(gpt2, cli, tmp_path):
    n = pc.steering.fit_act(gpt2, POS, NEG, point="blocks.0.hook_resid_post", out=tmp_path / "py.safetensors")
    assert n == 32
    (tmp_path / "pos.txt").write_text("\n".join(POS) + "\n")
    (tmp_path / "neg.txt").write_text("\n".join(NEG) + "\n")
    subprocess.run([cli, "steer", "fit-act", str(MODELS / "gpt2"), "--source", str(tmp_path / "pos.txt"), "--target",
                    str(tmp_path / "neg.txt"), "--point", "blocks.0.hook_resid_post", "--out", str(tmp_path / "cli.safetensors")],
                   check=True, capture_output=True)
    # The same maps and metadata (the header's key order is the writer's hash order).
    a, b = read_safetensors(tmp_path / "py.safetensors"), read_safetensors(tmp_path / "cli.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert header(tmp_path / "py.safetensors") == header(tmp_path / "cli.safetensors")
    ivs = pc.steering.transport(gpt2, tmp_path / "py.safetensors", 0.5)
    ours = gpt2.generate("The cat", max_new_tokens=6, do_sample=False, interventions=ivs, return_generations=True)[0].tokens
    out = subprocess.run([cli, "generate", str(MODELS / "gpt2"), "--prompt", "The cat", "--max-new-tokens", "6",
                          "--transport", f"{tmp_path / 'py.safetensors'}:0.5", "--json"], check=True, capture_output=True, text=True).stdout
    import json
    assert [ours] == [g["tokens"] for g in json.loads(out)["generations"]]
    with pytest.raises(ValueError, match="strength"):
        pc.steering.transport(gpt2, tmp_path / "py.safetensors", 1.5)
    with pytest.raises(ValueError, match="same"):
        pc.steering.fit_act(gpt2, POS, POS, out=tmp_path / "same.safetensors")


def test_sweep_equals_the_cli(gpt2, cli, tmp_path):
    cv = MODELS.parent / "control-vectors" / "gpt2-fixture.gguf"
    py = pc.steering.sweep(gpt2, ["The cat", "hello world"], [(cv, 2.0)], scales=[-1, 0, 1], max_new_tokens=5,
                           contains=["at"], out=tmp_path / "py")
    subprocess.run([cli, "steer", "sweep", str(MODELS / "gpt2"), "--vector", f"{cv}:2", "--scales=-1,0,1",
                    "--prompt", "The cat", "--prompt", "hello world", "--max-new-tokens", "5", "--contains", "at",
                    "--out", str(tmp_path / "cli")], check=True, capture_output=True)
    import json
    theirs = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert [c["generations"] for c in py.columns] == [c["generations"] for c in theirs["columns"]]
    assert [c["metric"] for c in py.columns] == [c["metric"] for c in theirs["columns"]]
    assert (tmp_path / "py" / "report.html").is_file()
    with pytest.raises(ValueError, match="scale"):
        pc.steering.sweep(gpt2, ["The cat"], [cv], scales=[])
