"""Mixture-of-experts models from Python: the four families against Hugging Face, routing
hook points, and expert switch-off equal to the CLI's (tolerance 1e-4 in f32)."""

import json
import subprocess

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS

FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_router_logits_match_hugging_face(family, reference):
    r = reference(family)
    model = pc.load(MODELS / family)
    tokens = r["tokens.0"].astype(np.int64)[None, :]
    logits, cache = model.run_with_cache(tokens)
    assert np.abs(logits[0] - r["hf.logits.0"]).max() < 1e-4
    routed = [k for k in r if k.startswith("hf.router.")]
    assert routed
    for key in routed:
        layer = key.rsplit(".", 1)[1]
        ours = cache[f"blocks.{layer}.mlp.gate.hook_out"]
        assert np.abs(ours.reshape(-1, ours.shape[-1]) - r[key]).max() < 1e-4
        idx = np.sort(cache[f"blocks.{layer}.mlp.hook_expert_indices"], axis=-1)
        assert (idx == r[f"hf.indices.{layer}"]).all()


def test_switch_off_equals_the_cli_and_frees_the_slot(reference, cli, tmp_path):
    r = reference("mixtral")
    model = pc.load(MODELS / "mixtral")
    ids = [int(t) for t in r["tokens.0"]]
    off = [{"at": "blocks.1.mlp.gate.hook_out", "op": {"kind": "switch_off", "experts": [2]}}]
    logits, cache = model.run_with_cache(np.array([ids]), interventions=off)
    assert not (cache["blocks.1.mlp.hook_expert_indices"] == 2).any()
    spec = tmp_path / "off.json"
    spec.write_text(json.dumps(off))
    out = subprocess.run(
        [cli, "run", str(MODELS / "mixtral"), "--tokens", ",".join(map(str, ids)), "--intervene", str(spec),
         "--top-k", "3", "--json"],
        capture_output=True, text=True, check=True,
    )
    top = json.loads(out.stdout)["top_k"]
    last = logits[0, -1]
    assert [t["id"] for t in top] == list(np.argsort(-last)[:3])
    assert all(abs(t["logit"] - last[t["id"]]) < 1e-4 for t in top)


def test_too_many_experts_switched_off_raises(reference):
    model = pc.load(MODELS / "mixtral")
    off = {"at": "blocks.0.mlp.gate.hook_out", "op": {"kind": "switch_off", "experts": [0, 1, 3]}}
    with pytest.raises(ValueError, match="fewer than the 2"):
        model.run_with_hooks(np.array([[0, 5, 6]]), interventions=off)
