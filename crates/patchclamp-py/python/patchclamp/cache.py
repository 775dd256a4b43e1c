"""``ActivationCache``: the activations a forward pass recorded, with TransformerLens's methods."""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .utils import get_act_name

PosSlice = Union[None, int, slice, List[int], np.ndarray]


def _apply_pos(x: np.ndarray, pos_slice: PosSlice, dim: int = -2) -> np.ndarray:
    """``x`` sliced on its position axis as TransformerLens's ``Slice`` does (an int drops it)."""
    if pos_slice is None:
        return x
    index = [slice(None)] * x.ndim
    index[dim] = pos_slice if not isinstance(pos_slice, list) else np.asarray(pos_slice)
    return x[tuple(index)]


class ActivationCache:
    """Recorded activations by hook name (numpy arrays, TransformerLens's shapes).

    ``cache["blocks.0.hook_resid_pre"]`` and ``cache["resid_pre", 0]`` name the same array.
    """

    def __init__(self, cache_dict: Dict[str, np.ndarray], model, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # --- the mapping ---
    def _name(self, key) -> str:
        # A recorded name is itself (`logits` has no dot but is a full name); else TL's short forms.
        if isinstance(key, str) and key in self.cache_dict:
            return key
        return get_act_name(*key) if isinstance(key, tuple) else get_act_name(key)

    def __getitem__(self, key) -> np.ndarray:
        name = self._name(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            raise KeyError(self._missing(name)) from None

    def _missing(self, name: str) -> str:
        # The engine names the nearest points of an unknown name (its KeyError's message).
        try:
            self.model._m.check_hook_names([name])
        except KeyError as e:
            return e.args[0]
        return f"{name} was not recorded (names_filter left it out)"

    def __contains__(self, key) -> bool:
        return self._name(key) in self.cache_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    def remove_batch_dim(self) -> "ActivationCache":
        """The cache of a batch of one without its batch axis."""
        if not self.has_batch_dim:
            return self
        for k, v in self.cache_dict.items():
            if v.shape[0] != 1:
                raise ValueError(f"{k} has batch size {v.shape[0]}; remove_batch_dim needs 1")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.model, False)

    def to_dict(self) -> Dict[str, np.ndarray]:
        return dict(self.cache_dict)

    # --- stacks ---
    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: Optional[str] = None
    ) -> np.ndarray:
        """``activation_name`` of every layer before ``layer`` (all for -1), stacked first."""
        n = self.model.cfg.n_layers if layer == -1 else layer
        return np.stack([self[activation_name, l, sublayer_type] for l in range(n)])

    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ):
        """The residual stream after each layer up to ``layer`` (the final one for ``None``):
        ``[components, batch, pos, d_model]``, as TransformerLens stacks it."""
        n_layers = self.model.cfg.n_layers
        if layer is None or layer == -1:
            layer = n_layers
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n_layers:
                parts.append(self["resid_post", n_layers - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = np.stack([_apply_pos(p, pos_slice) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ):
        """The residual stream at ``layer`` as the sum of its parts: embeddings, then each
        layer's attention and MLP outputs (``mode`` "attn" or "mlp" keeps one kind)."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        n_layers = self.model.cfg.n_layers
        if layer is None or layer == -1:
            layer = n_layers
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and self.model.cfg.d_mlp > 0
        parts, labels = [], []
        if incl_embeds:
            for name, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
                if name in self.cache_dict:
                    parts.append(self[name])
                    labels.append(label)
        for l in range(layer):
            if incl_attn:
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise ValueError("no components to decompose: record the embeddings and block outputs")
        parts = [_apply_pos(p, pos_slice) for p in parts]
        shape = np.broadcast_shapes(*(p.shape for p in parts))
        stack = np.stack([np.broadcast_to(p, shape) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: np.ndarray,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
    ) -> np.ndarray:
        """Each component centred (LayerNorm models) and divided by the recorded norm scale of
        the full residual, as TransformerLens does: the norm's weights are not applied (fold
        them first: ``processing=True``)."""
        kind = self.model.cfg.normalization_type
        if kind is None:
            return residual_stack
        n_layers = self.model.cfg.n_layers
        if layer is None or layer == n_layers:
            scale = self["ln_final.hook_scale"]
        else:
            scale = self[f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"]
        scale = _apply_pos(scale, pos_slice)
        if kind in ("LN", "LNPre"):
            residual_stack = residual_stack - residual_stack.mean(axis=-1, keepdims=True)
        return residual_stack / scale
