"""Forward passes and caches equal the committed TransformerLens and Hugging Face references,
hook for hook, on all four fixture families (1e-4 absolute, as the Rust parity tests)."""

import numpy as np
import pytest

import patchclamp as pc
from conftest import FAMILIES, MODELS

TOL = 1e-4


def max_diff(a, b):
    """Largest absolute difference; masked scores (-inf) must be masked in both."""
    assert a.shape == b.shape
    inf = np.isinf(a)
    assert np.array_equal(inf, np.isinf(b)) and np.array_equal(a[inf], b[inf]), "masks differ"
    return float(np.abs(a[~inf] - b[~inf]).max()) if (~inf).any() else 0.0


def centered(x):
    return x - x.mean(axis=-1, keepdims=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["raw", "proc"])
def test_every_hook_matches_transformer_lens(family, mode, reference):
    r = reference(family)
    model = pc.load(MODELS / family, processing=(mode == "proc"))
    tokens = r["tokens.0"]
    logits, cache = model.run_with_cache(tokens)
    theirs = {k[len(mode) + 1 :] for k in r if k.startswith(mode + ".") and "logits" not in k}
    # Exactly TransformerLens's hook points, and the engine's own `logits` point.
    assert set(cache.keys()) == theirs | {"logits"}
    worst = max(max_diff(cache[k][0], r[f"{mode}.{k}"]) for k in theirs)
    assert worst <= TOL, f"{family}/{mode}: worst activation differs by {worst:e}"
    want = r[f"{mode}.logits"]
    got = logits[0]
    d = np.abs(centered(got) - centered(want)).max() if mode == "proc" else np.abs(got - want).max()
    assert d <= TOL
    hf = np.abs(centered(got) - centered(r["hf.logits.0"])).max()
    assert hf <= TOL, f"differs from Hugging Face by {hf:e}"


def test_tokens_and_strings(gpt2, reference):
    r = reference("gpt2")
    text = "The cat sat on the mat, and the cat sat again."
    toks = gpt2.to_tokens(text)
    assert toks.dtype == np.int64 and toks.shape == (1, len(r["tokens.0"]))
    np.testing.assert_array_equal(toks[0], r["tokens.0"])
    assert gpt2.to_string(toks[0, 1:]) == text
    strs = gpt2.to_str_tokens(text)
    assert len(strs) == toks.shape[1] and "".join(strs[1:]) == text
    assert gpt2.to_tokens(text, prepend_bos=False).shape[1] == toks.shape[1] - 1
    # Several strings are right-padded to one array.
    two = gpt2.to_tokens([text, "hello world"])
    assert two.shape == (2, toks.shape[1])
    assert gpt2.to_single_token(" sat") == gpt2.to_tokens(" sat", prepend_bos=False)[0, 0]
    with pytest.raises(ValueError, match="exactly one"):
        gpt2.to_single_token(" cat")


def test_batched_forward_equals_rows(gpt2, reference):
    r = reference("gpt2")
    a = r["tokens.0"]
    logits = gpt2(np.stack([a, a]))
    one = gpt2(a)
    assert logits.shape == (2, len(a), gpt2.cfg.d_vocab)
    assert np.abs(logits[1] - one[0]).max() == 0.0


def test_accepts_what_numpy_can_view(gpt2, reference):
    a = reference("gpt2")["tokens.0"]
    base = gpt2(a)
    for form in (a.tolist(), a.astype(np.int32), a[None, :].astype(np.uint16), list(map(int, a))):
        assert np.array_equal(gpt2(form), base)


def test_loss_is_mean_next_token_cross_entropy(gpt2, reference):
    a = reference("gpt2")["tokens.0"]
    logits, loss = gpt2(a, return_type="both")
    lp = logits[0, :-1].astype(np.float64)
    lp = lp - np.log(np.exp(lp - lp.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lp.max(-1, keepdims=True)
    want = -lp[np.arange(len(a) - 1), a[1:]].mean()
    assert abs(loss - want) < 1e-6
    assert gpt2(a, return_type=None) is None


def test_config_uses_transformer_lens_names(gpt2):
    c = gpt2.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.d_head, c.d_mlp) == (2, 32, 4, 8, 96)
    assert c.normalization_type == "LN" and c.positional_embedding_type == "standard"
    assert pc.HookedTransformer.from_pretrained(str(MODELS / "gpt2")).cfg.normalization_type == "LNPre"
    llama = pc.load(MODELS / "llama")
    assert llama.cfg.n_key_value_heads == 2 and llama.cfg.gated_mlp
    assert llama.cfg.positional_embedding_type == "rotary"
