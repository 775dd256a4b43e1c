"""ActivationCache: TransformerLens's lookups, stacks and decompositions, checked against the
identities they must satisfy (tolerances stated per test)."""

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS


@pytest.fixture(scope="module")
def run(gpt2, reference):
    tokens = reference("gpt2")["tokens.0"]
    return gpt2.run_with_cache(tokens)


def test_lookups(run, gpt2):
    _, cache = run
    assert cache["resid_pre", 0] is cache["blocks.0.hook_resid_pre"]
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["logits"].shape == (1, 21, 320) and "logits" in cache
    assert ("q", 0) in cache and "nope" not in cache
    assert len(cache) == len(gpt2.hook_names())
    assert cache["pattern", 1].shape == (1, 4, 21, 21)
    with pytest.raises(KeyError, match="hook_resid_pre"):
        cache["blocks.0.hook_resid_prex"]


def test_stack_activation(run):
    _, cache = run
    s = cache.stack_activation("resid_post")
    assert s.shape == (2, 1, 21, 32)
    assert np.array_equal(s[1], cache["resid_post", 1])
    assert cache.stack_activation("resid_post", layer=1).shape[0] == 1


def test_accumulated_resid(run, gpt2):
    _, cache = run
    acc, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    assert np.array_equal(acc[-1], cache["resid_post", 1])
    acc_mid = cache.accumulated_resid(incl_mid=True)
    assert acc_mid.shape[0] == 5
    # With the final norm applied, the last component is exactly what ln_final normalised.
    ln = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
    assert ln.shape == (3, 1, 32)
    d = np.abs(ln[-1] - cache["ln_final.hook_normalized"][:, -1]).max()
    assert d < 1e-5, d


def test_decompose_resid_sums_to_the_residual(run):
    _, cache = run
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    d = np.abs(parts.sum(0) - cache["resid_post", 1]).max()
    assert d < 1e-4, d
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    assert np.abs(mid.sum(0) - cache["resid_mid", 1]).max() < 1e-4
    assert cache.decompose_resid(mode="attn").shape[0] == 4


def test_names_filter_and_positions(gpt2, reference):
    tokens = reference("gpt2")["tokens.0"]
    full_logits, full = gpt2.run_with_cache(tokens)
    _, only = gpt2.run_with_cache(tokens, names_filter="blocks.*.hook_resid_pre")
    assert sorted(only.keys()) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    _, fn = gpt2.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(fn.keys()) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    logits, last = gpt2.run_with_cache(tokens, names_filter=["hook_embed"], positions=[-1])
    assert np.array_equal(logits, full_logits)
    assert np.array_equal(last["hook_embed"], full["hook_embed"][:, -1:])
    _, nob = gpt2.run_with_cache(tokens, names_filter="hook_embed", remove_batch_dim=True)
    assert nob["hook_embed"].shape == (21, 32)


def test_processed_model_apply_ln(reference):
    m = pc.HookedTransformer.from_pretrained(str(MODELS / "gpt2"))
    _, cache = m.run_with_cache(reference("gpt2")["tokens.0"])
    ln = cache.accumulated_resid(apply_ln=True)
    assert np.abs(ln[-1] - cache["ln_final.hook_normalized"]).max() < 1e-5


def test_strided_views_hold_the_right_values(gpt2, reference):
    """Per-head points are strided views of the engine's memory (no copy): their values are
    TransformerLens's all the same, and they are not C-contiguous copies."""
    r = reference("gpt2")
    _, cache = gpt2.run_with_cache(r["tokens.0"])
    for name in ["blocks.0.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.0.attn.hook_pattern"]:
        assert np.abs(cache[name][0] - r[f"raw.{name}"]).max() <= 1e-4, name
        assert not cache[name].flags.writeable
    assert any(not cache[n].flags.c_contiguous for n in cache.keys()), "some point is a strided view"


def test_missing_names_say_why(gpt2, reference):
    _, cache = gpt2.run_with_cache(reference("gpt2")["tokens.0"], names_filter="hook_embed")
    with pytest.raises(KeyError, match="not recorded"):
        cache["blocks.0.hook_resid_pre"]
    with pytest.raises(KeyError, match="did you mean"):
        cache["blocks.0.hook_resid_prx"]
