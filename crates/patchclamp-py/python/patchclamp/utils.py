"""Hook names as TransformerLens spells them, and small conversions shared by the package."""

from __future__ import annotations

from typing import Optional

import numpy as np

_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP = {"pre", "post", "mid", "pre_linear"}
_NORM = {"scale", "normalized"}
_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """The full hook name of a short one, as TransformerLens's ``utils.get_act_name``.

    ``get_act_name("resid_pre", 0)`` is ``"blocks.0.hook_resid_pre"``, ``("pattern", 1)`` is
    ``"blocks.1.attn.hook_pattern"``, ``("scale", 0, "ln1")`` is ``"blocks.0.ln1.hook_scale"``
    and ``("scale")`` is ``"ln_final.hook_scale"``. Full names are returned unchanged.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    name = name.lower()
    name = _ALIASES.get(name, name)
    full = f"blocks.{layer}." if layer is not None else ""
    if name in _ATTN:
        layer_type = "attn"
    elif name in _MLP:
        layer_type = "mlp"
    elif layer_type in _TYPES:
        layer_type = _TYPES[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in _NORM and layer is None:
        full = f"ln_final.{full}"
    return full


def tokens_array(tokens) -> np.ndarray:
    """Token ids as a 2-D int64 array ``[batch, pos]`` (a 1-D sequence becomes one row).

    Accepts lists, numpy arrays and anything numpy can view (a torch CPU tensor included).
    """
    if hasattr(tokens, "detach") and hasattr(tokens, "numpy"):  # a torch tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    a = np.asarray(tokens)
    if a.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integers, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"tokens must be [pos] or [batch, pos], got shape {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"token ids must be non-negative, got {int(a.min())}")
    return a.astype(np.int64, copy=False)


def float_array(x, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (one copy at most), refusing NaN and infinities."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return a
