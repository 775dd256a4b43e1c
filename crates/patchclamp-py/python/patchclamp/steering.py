"""Steering vectors from contrastive pairs (CAA, repeng and llama.cpp methods), written as
llama.cpp control vectors, and directional ablation — as ``patchclamp steer extract``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from .model import HookedTransformer

Prompt = Union[str, Sequence[int]]


@dataclass
class SteeringVectors:
    """One vector per block (``vectors[l]``: ``[d_model]``), to add at that block's output."""

    method: str
    vectors: Dict[int, np.ndarray]

    def interventions(self, scale: float = 1.0, after_prompt: bool = False) -> List[Dict[str, Any]]:
        """The interventions that add ``scale`` times each vector at its block's output
        (every position, or only generated ones with ``after_prompt``)."""
        out = []
        for layer, v in self.vectors.items():
            iv = {"at": f"blocks.{layer}.hook_resid_post", "op": {"kind": "add", "vector": v.astype(np.float64).tolist(), "coef": float(scale)}}
            if after_prompt:
                iv["select"] = {"positions": "generated"}
            out.append(iv)
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"method": self.method, "vectors": {l: v.tolist() for l, v in self.vectors.items()}}


def _ids(model: HookedTransformer, p: Prompt) -> List[int]:
    return model._m.to_tokens(p, None) if isinstance(p, str) else [int(x) for x in p]


def extract(
    model: HookedTransformer,
    pairs: Sequence[Tuple[Prompt, Prompt]],
    layers: Tuple[int, int],
    method: str = "pca-diff",
    position: int = -1,
    out: Optional[Union[str, os.PathLike]] = None,
    force: bool = False,
) -> SteeringVectors:
    """Vectors for blocks ``layers[0]..=layers[1]`` from (positive, negative) prompts read at
    ``position`` (−2: CAA's answer letter); ``method`` is "mean", "pca-diff", "pca-center",
    "llama-mean" or "llama-pca". With ``out`` (``.gguf``) writes the llama.cpp control vector
    (and ``.safetensors`` beside it) that ``generate(control_vectors=[out])`` reads."""
    rows = [(_ids(model, p), _ids(model, n)) for p, n in pairs]
    blocks, vectors = _native.steering_extract(
        model._m, rows, tuple(layers), method, position, None if out is None else os.fspath(out), force
    )
    return SteeringVectors(method, {b: np.asarray(v, dtype=np.float32) for b, v in zip(blocks, vectors)})


def directional_ablation(model: HookedTransformer, direction) -> List[Dict[str, Any]]:
    """The interventions that project ``direction`` out of every residual point and block
    output (Arditi et al. 2024): pass them as ``interventions=`` to any forward or generation."""
    d = np.asarray(direction, dtype=np.float32).ravel().tolist()
    return json.loads(_native.directional_ablation_interventions(model._m, d))
