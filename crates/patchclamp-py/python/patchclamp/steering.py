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
    blocks, vectors = _native.steering_extract(model._engine, rows, tuple(layers), method, position, None if out is None else os.fspath(out), force
    )
    return SteeringVectors(method, {b: np.asarray(v, dtype=np.float32) for b, v in zip(blocks, vectors)})


def directional_ablation(model: HookedTransformer, direction) -> List[Dict[str, Any]]:
    """The interventions that project ``direction`` out of every residual point and block
    output (Arditi et al. 2024): pass them as ``interventions=`` to any forward or generation.
    ``direction`` is an array, or ``(control_vector.gguf, block)`` as the CLI's ``--ablate``."""
    if isinstance(direction, tuple) and len(direction) == 2 and not np.isscalar(direction[0]):
        direction = _native.control_vector_direction(os.fspath(direction[0]), int(direction[1]))
    d = np.asarray(direction, dtype=np.float32).ravel().tolist()
    return json.loads(_native.directional_ablation_interventions(model._engine, d))


def fit_act(model: HookedTransformer, source: Sequence[Prompt], target: Sequence[Prompt],
            point: str = "blocks.0.hook_resid_post", out: Union[str, os.PathLike] = "act.safetensors",
            force: bool = False) -> int:
    """Fits Linear-AcT maps (Rodriguez et al. 2024) at ``point`` carrying the activations of
    ``source`` prompts onto those of ``target`` prompts, and writes them to ``out``; returns the
    number of units mapped. Apply them with :func:`transport`."""
    return _native.fit_act(model._engine, [_ids(model, p) for p in source], [_ids(model, p) for p in target], point,
                           os.fspath(out), force)


def transport(model: HookedTransformer, path: Union[str, os.PathLike], strength: float = 1.0) -> List[Dict[str, Any]]:
    """The intervention that applies a Linear-AcT map file at ``strength`` λ ∈ [0, 1]."""
    return json.loads(_native.transport_intervention(model._engine, os.fspath(path), float(strength)))


def sweep(
    model: HookedTransformer,
    prompts: Sequence[Prompt],
    vectors: Sequence[Union[str, os.PathLike, Tuple[Union[str, os.PathLike], float]]],
    scales: Sequence[float] = (-2, -1, 0, 1, 2),
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    layers: Optional[Tuple[int, int]] = None,
    after_prompt: bool = False,
    contains: Sequence[str] = (),
    batch: Optional[int] = None,
    out: Optional[Union[str, os.PathLike]] = None,
    force: bool = False,
    progress=None,
):
    """Generations under control vectors at each of ``scales`` (as ``patchclamp steer sweep``),
    the share containing one of ``contains`` per scale; with ``out`` the CLI's report folder."""
    from .analysis import _result

    rows = [_ids(model, p) for p in prompts]
    texts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
    vecs = [(os.fspath(v[0]), float(v[1])) if isinstance(v, tuple) else (os.fspath(v), 1.0) for v in vectors]
    eos = model.cfg.raw.get("eos_token_id")
    spec = {
        "max_new_tokens": int(max_new_tokens),
        "sampling": {"temperature": float(temperature) if do_sample else None, "repetition_penalty": 1.0,
                     "frequency_penalty": 0.0, "seed": int(seed)},
        "stop_tokens": [] if eos is None else [eos],
    }
    return _result("steer sweep", _native.steering_sweep(model._engine, rows, texts, vecs, [float(s) for s in scales], json.dumps(spec), None if layers is None else tuple(layers),
        after_prompt, list(contains), batch, None if out is None else os.fspath(out), force, progress))
