"""Patching sweeps equal TransformerLens's (the committed reference) and the CLI's, number for
number; a progress callback sees every batch, and Ctrl-C stops a sweep between batches."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS, read_safetensors


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # the families with a patching reference
def test_sweeps_match_transformer_lens(family):
    r = read_safetensors(MODELS / family / "patching.safetensors")
    model = pc.load(MODELS / family)
    answer, wrong = (int(x) for x in r["metric_ids"])
    metric = pc.patching.logit_diff(answer, wrong)
    resid = pc.patching.get_act_patch_resid_pre(model, r["clean_tokens"], r["corrupt_tokens"], metric, batch=6)
    z = pc.patching.get_act_patch_attn_head_out_all_pos(model, r["clean_tokens"], r["corrupt_tokens"], metric)
    assert resid.values.shape == r["resid_pre"].shape and z.values.shape == r["z"].shape
    assert np.abs(resid.values - r["resid_pre"]).max() <= 1e-4
    assert np.abs(z.values - r["z"]).max() <= 1e-4


CLEAN, CORRUPT = "The cat sat on the", "The mat sat on the"


def test_sweep_equals_the_cli(gpt2, cli, tmp_path):
    ours = pc.patching.sweep(gpt2, CLEAN, CORRUPT, site="resid_pre", metric=pc.patching.logit_diff(" sat", " on"))
    out = subprocess.run(
        [cli, "patch", str(MODELS / "gpt2"), "--clean", CLEAN, "--corrupted", CORRUPT, "--answer", " sat",
         "--wrong", " on", "--out", str(tmp_path / "p"), "--json"],
        capture_output=True, text=True, check=True,
    )
    theirs = json.loads(out.stdout)
    assert ours.values.ravel().tolist() == np.asarray(theirs["values"], dtype=np.float32).tolist()
    assert ours.clean_metric == pytest.approx(theirs["clean_metric"], abs=0)
    d = ours.to_dict()
    assert d["values"] == ours.values.tolist() and d["metric"]["kind"] == "logit_diff"


def test_normalisation_and_denoising_ends(gpt2):
    r = pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.logit_diff(" sat", " on"))
    # Patching the clean residual into the corrupted run at every position of block 0 restores
    # the clean metric where the prompts differ; normalised 1 = clean, 0 = corrupted.
    assert r.normalized.shape == (2, 7)
    assert np.allclose(r.normalized, (r.values - r.corrupt_metric) / (r.clean_metric - r.corrupt_metric), atol=1e-5)
    assert r.values[0, 2] == pytest.approx(r.clean_metric, abs=1e-4)


def test_attribution_matches_its_cli_and_tracks_the_sweep(gpt2, cli, tmp_path):
    est = pc.patching.attribute(gpt2, CLEAN, CORRUPT, site="resid_pre", metric=pc.patching.logit_diff(" sat", " on"))
    out = subprocess.run(
        [cli, "attribute", str(MODELS / "gpt2"), "--clean", CLEAN, "--corrupted", CORRUPT, "--answer", " sat",
         "--wrong", " on", "--out", str(tmp_path / "a"), "--json"],
        capture_output=True, text=True, check=True,
    )
    assert est.values.ravel().tolist() == np.asarray(json.loads(out.stdout)["values"], dtype=np.float32).tolist()


def test_progress_sees_every_batch(gpt2):
    seen = []
    pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.prob(" sat"), batch=3, progress=lambda d, t: seen.append((d, t)))
    # 14 variants (2 layers × 7 positions); positions where the prompts agree need no forward.
    assert seen[-1] == (14, 14) and len(seen) >= 2
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:])), "progress only grows"


def test_ctrl_c_stops_a_sweep_between_batches(gpt2):
    seen = []

    def interrupt(done, total):
        seen.append(done)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    with pytest.raises(KeyboardInterrupt):
        pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.prob(" sat"), batch=1, progress=interrupt)
    assert len(seen) < 14, "the sweep stopped early"
    # The engine is usable afterwards.
    assert pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.kl()).values.shape == (2, 7)


def test_an_exception_in_progress_propagates(gpt2):
    with pytest.raises(ZeroDivisionError):
        pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.kl(), progress=lambda d, t: 1 / 0)


def test_sweep_errors(gpt2):
    with pytest.raises(ValueError, match="same number of tokens"):
        pc.patching.sweep(gpt2, "The cat", "The dog sat", metric=pc.patching.kl())
    with pytest.raises(ValueError, match="unknown site"):
        pc.patching.sweep(gpt2, CLEAN, CORRUPT, site="resid", metric=pc.patching.kl())
    with pytest.raises(ValueError, match="metric"):
        pc.patching.sweep(gpt2, CLEAN, CORRUPT)
    with pytest.raises(ValueError, match="exactly one"):
        pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.prob(" cat"))
    with pytest.raises(ValueError, match="window"):
        pc.patching.sweep(gpt2, CLEAN, CORRUPT, metric=pc.patching.kl(), window=0)
