"""Hook functions (the flexible path) and declarative interventions (the fast path) give the
same numbers; hook functions see what the cache records; their failures surface unchanged."""

import numpy as np
import pytest

import patchclamp as pc


@pytest.fixture(scope="module")
def tokens(reference):
    return reference("gpt2")["tokens.0"]


def test_a_hook_that_returns_nothing_changes_nothing(gpt2, tokens):
    seen = {}

    def look(act, hook):
        seen[hook.name] = act.copy()

    base, cache = gpt2.run_with_cache(tokens)
    logits = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", look), (lambda n: n.endswith("mlp_out"), look)])
    assert np.array_equal(logits, base)
    assert sorted(seen) == ["blocks.0.hook_mlp_out", "blocks.1.attn.hook_pattern", "blocks.1.hook_mlp_out"]
    for name, act in seen.items():
        assert np.array_equal(act, cache[name]), name
    assert isinstance(pc.HookPoint("blocks.3.hook_z").layer(), int)


@pytest.mark.parametrize(
    "edit, op",
    [
        (lambda a: np.zeros_like(a), {"kind": "zero"}),
        (lambda a: a * 2.5, {"kind": "scale", "factor": 2.5}),
        # Eighths are exact in float32 and float64 alike, so both paths add the same numbers.
        (lambda a: a + np.arange(32, dtype=np.float32) * 0.125, {"kind": "add", "vector": (np.arange(32) * 0.125).tolist()}),
    ],
)
def test_callback_equals_declarative(gpt2, tokens, edit, op):
    by_fn = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: edit(a))])
    by_spec = gpt2.run_with_hooks(tokens, interventions=[{"at": "blocks.0.hook_resid_post", "op": op}])
    assert np.abs(by_fn - by_spec).max() <= 1e-6
    assert np.abs(by_fn - gpt2(tokens)).max() > 1e-3, "the edit moved the logits"


def test_head_ablation_by_callback_equals_declarative(gpt2, tokens):
    def kill(z, hook):
        z = z.copy()
        z[:, :, 2] = 0.0  # [batch, pos, head, d_head]
        return z

    a = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", kill)])
    b = gpt2.run_with_hooks(tokens, interventions=[{"at": "blocks.1.attn.hook_z", "select": {"heads": [2]}, "op": {"kind": "zero"}}])
    assert np.abs(a - b).max() <= 1e-6


def test_glob_names_and_torch_like_returns(gpt2, tokens):
    calls = []

    def count(a, hook):
        calls.append(hook.name)
        return a.astype(np.float64)  # any dtype numpy can convert comes back as float32

    out = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.*.hook_resid_pre", count)])
    assert calls == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    assert np.array_equal(out, gpt2(tokens))


def test_an_exception_in_a_hook_propagates_unchanged(gpt2, tokens):
    class Mine(Exception):
        pass

    err = Mine("from the hook")

    def boom(a, hook):
        raise err

    with pytest.raises(Mine) as info:
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", boom)])
    assert info.value is err
    assert any(tb.name == "boom" for tb in info.traceback), "the traceback reaches the hook"


def test_a_wrong_shape_names_the_hook_and_both_shapes(gpt2, tokens):
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out.*\[1, 21\].*\[1, 21, 32\]"):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, h: a[..., 0])])


def test_nan_from_a_hook_is_refused(gpt2, tokens):
    with pytest.raises(ValueError, match="NaN"):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, h: a * np.nan)])


def test_interventions_accept_numpy_values(gpt2, tokens):
    v = np.linspace(-1, 1, 32).astype(np.float32)
    a = gpt2.run_with_hooks(tokens, interventions={"at": "blocks.1.hook_resid_pre", "op": {"kind": "add", "vector": v, "coef": 2.0}})
    b = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, h: x + 2.0 * v)])
    assert np.abs(a - b).max() <= 1e-5


def test_patch_from_a_cache_restores_the_clean_run(gpt2, tokens):
    """Zeroing layer 0's attention, then patching block 1's input from the clean run, gives the
    clean logits back (everything downstream is the clean run's)."""
    clean, cache = gpt2.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
    saved = cache["resid_pre", 1]
    out = gpt2.run_with_hooks(
        tokens,
        fwd_hooks=[("blocks.0.hook_attn_out", lambda a, h: np.zeros_like(a)), ("blocks.1.hook_resid_pre", lambda a, h: saved)],
    )
    assert np.abs(out - clean).max() < 1e-5


def test_an_in_place_edit_without_return_takes_effect(gpt2, tokens):
    """As in TransformerLens, a hook may edit its activation in place and return nothing."""

    def zero_head(z, hook):
        z[:, :, 1] = 0.0

    a = gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head)])
    b = gpt2.run_with_hooks(tokens, interventions=[{"at": "blocks.0.attn.hook_z", "select": {"heads": [1]}, "op": {"kind": "zero"}}])
    assert np.abs(a - b).max() <= 1e-6 and np.abs(a - gpt2(tokens)).max() > 1e-4


def test_returned_arrays_are_read_only_views(gpt2, tokens):
    logits, cache = gpt2.run_with_cache(tokens)
    pos = cache["hook_pos_embed"]
    with pytest.raises(ValueError, match="read-only"):
        pos[0, 0, 0] = 1.0  # it may view the weights themselves: never writable
    c = pos.copy()
    c[0, 0, 0] = 1.0  # a copy is the caller's
    assert np.array_equal(gpt2.run_with_cache(tokens)[1]["hook_pos_embed"], pos)
