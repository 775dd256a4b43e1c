"""The CLI's analyses from Python — logit lens, direct logit attribution, head detectors,
extreme tokens, causal tracing — each returning an :class:`AnalysisResult`, and writing the
CLI's report folder when given ``out``."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _native
from .model import HookedTransformer

Prompts = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]], np.ndarray]
Token = Union[int, str]


class AnalysisResult:
    """An analysis's typed result: ``data`` (its JSON, as the CLI's result.json), ``arrays``
    (its grids, as the CLI's result.safetensors) and ``summary`` (the lines the CLI prints).
    Fields of ``data`` read as attributes: ``result.lens``, ``result.heads`` …"""

    def __init__(self, kind: str, data: Dict[str, Any], summary: str, arrays: Dict[str, np.ndarray]):
        self.kind = kind
        self.data = data
        self.summary = summary
        self.arrays = arrays

    def __getattr__(self, name: str):
        data = self.__dict__.get("data", {})
        if name in data:
            return data[name]
        raise AttributeError(f"{self.kind} result has no field {name!r}; it has {sorted(data)}")

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.data)

    def __repr__(self) -> str:
        grids = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.arrays.items())
        return f"AnalysisResult({self.kind}: {sorted(self.data)}; arrays: {grids or 'none'})"


def _result(kind: str, out) -> AnalysisResult:
    j, summary, arrays = out
    return AnalysisResult(kind, json.loads(j), summary, dict(arrays))


def _prompts(model: HookedTransformer, prompts: Prompts):
    """Token rows and their texts from strings, one token sequence, or several."""
    if isinstance(prompts, str):
        prompts = [prompts]
    rows, texts = [], []
    for p in prompts if not isinstance(prompts, np.ndarray) or prompts.ndim == 2 else [prompts]:
        if isinstance(p, str):
            rows.append(model._m.to_tokens(p, None))
            texts.append(p)
        elif isinstance(p, (int, np.integer)):
            # One flat sequence of ids was given.
            ids = [int(x) for x in prompts]
            return [ids], [" ".join(map(str, ids))]
        else:
            ids = [int(x) for x in np.asarray(p).ravel()]
            rows.append(ids)
            texts.append(" ".join(map(str, ids)))
    return rows, texts


def _token(model: HookedTransformer, t: Token) -> int:
    return int(t) if isinstance(t, (int, np.integer)) else model.to_single_token(t)


def _out(out):
    return None if out is None else os.fspath(out)


def lens(model: HookedTransformer, prompts: Prompts, top_k: int = 5, track: Sequence[Token] = (),
         out=None, force: bool = False) -> AnalysisResult:
    """The logit lens: each layer's top tokens at every position (and ``track``'s probabilities)."""
    rows, texts = _prompts(model, prompts)
    return _result("lens", _native.lens(model._engine, rows, texts, top_k, [_token(model, t) for t in track], _out(out), force))


def dla(model: HookedTransformer, prompts: Prompts, answer: Token, wrong: Optional[Token] = None,
        out=None, force: bool = False) -> AnalysisResult:
    """Direct logit attribution of ``answer`` (minus ``wrong``) to every head and MLP."""
    rows, texts = _prompts(model, prompts)
    return _result("dla", _native.dla(model._engine, rows, texts, _token(model, answer), str(answer),
        None if wrong is None else _token(model, wrong), None if wrong is None else str(wrong), _out(out), force))


def heads(model: HookedTransformer, n: int = 64, block: int = 24, repeats: int = 2, seed: int = 0,
          out=None, force: bool = False) -> AnalysisResult:
    """Every head detector's score grid [layer, head] on repeated random blocks."""
    return _result("heads", _native.heads(model._engine, n, block, repeats, seed, _out(out), force))


def extremes(model: HookedTransformer, prompts: Prompts, triggers: Sequence[Token] = (), abs_min: float = 100.0,
             ratio: float = 1000.0, out=None, force: bool = False) -> AnalysisResult:
    """Attention sinks, value drains, residual peaks and massive activations."""
    rows, _ = _prompts(model, prompts)
    return _result("extremes", _native.extremes(model._engine, rows, [_token(model, t) for t in triggers], abs_min, ratio, _out(out), force))


def neurons(model: HookedTransformer, prompts: Prompts, labels: Optional[Sequence[Optional[str]]] = None,
            batch: int = 16, top: int = 10, lape_top_rate: float = 0.01, out=None, force: bool = False,
            progress: Optional[Callable[[int, int], Any]] = None) -> AnalysisResult:
    """The MLP neuron census over ``prompts`` (streamed): dead and lazy neurons, token, bigram
    and positional detectors; with ``labels`` (one per prompt, e.g. a language) LAPE and
    average-precision experts."""
    rows, _ = _prompts(model, prompts)
    labs = [None] * len(rows) if labels is None else list(labels)
    return _result("neurons", _native.neurons(model._engine, rows, labs, batch, top, lape_top_rate, _out(out), force, progress))


def localize(model: HookedTransformer, stimuli: Prompts, control: Prompts, units: str = "resid_post",
             fraction: float = 0.01, eval: Optional[Prompts] = None, random_draws: int = 10, seed: int = 0,
             out=None, force: bool = False) -> AnalysisResult:
    """The Fedorenko-style localizer: units responding more to ``stimuli`` than to ``control``
    (Welch t, the top ``fraction``), and with ``eval`` prompts the loss increase of ablating
    them against random unit sets."""
    a, _ = _prompts(model, stimuli)
    b, _ = _prompts(model, control)
    e = None if eval is None else _prompts(model, eval)[0]
    return _result("localize", _native.localize(model._engine, a, b, units, fraction, e, random_draws, seed, _out(out), force))


def probe(model: HookedTransformer, prompts: Prompts, labels: Sequence[str], points: Optional[Sequence[str]] = None,
          pooling: str = "last", test_fraction: float = 0.25, seed: int = 0, tcav: Optional[Dict[str, Any]] = None,
          tcav_runs: int = 10, out=None, force: bool = False) -> AnalysisResult:
    """Linear probes of ``labels`` (one per prompt) at ``points`` (default: every block's
    output), held-out accuracy per point; or TCAV with ``tcav={"concept": L, "random": L,
    "class": token, "inputs": L or None}`` at the one point."""
    rows, _ = _prompts(model, prompts)
    t = None
    if tcav is not None:
        t = (tcav["concept"], tcav["random"], _token(model, tcav["class"]), str(tcav["class"]), tcav.get("inputs"))
    return _result("probe", _native.probe(model._engine, rows, list(labels), None if points is None else list(points), pooling, test_fraction, seed, t,
        tcav_runs, _out(out), force))


def hydra(model: HookedTransformer, prompts: Prompts, sources: Prompts, answer: Token, wrong: Optional[Token] = None,
          out=None, force: bool = False) -> AnalysisResult:
    """Hydra (McGrath et al.): each layer's direct and total effect when resample-ablated from
    ``sources``, and the compensation by later layers."""
    rows, texts = _prompts(model, prompts)
    srows, stexts = _prompts(model, sources)
    return _result("hydra", _native.hydra(model._engine, rows, texts, srows, stexts, _token(model, answer), None if wrong is None else _token(model, wrong),
        _out(out), force))


def _find(hay: List[int], needle: List[int]) -> Optional[List[int]]:
    for i in range(len(hay) - len(needle) + 1):
        if needle and hay[i : i + len(needle)] == needle:
            return list(range(i, i + len(needle)))
    return None


def trace(model: HookedTransformer, prompt: Union[str, Sequence[int]], answer: Token,
          subject: Optional[Union[str, Sequence[int]]] = None, kind: str = "hidden", window: Optional[int] = None,
          samples: int = 10, noise: Optional[float] = None, seed: int = 0, severed: bool = False,
          batch: Optional[int] = None, out=None, force: bool = False,
          progress: Optional[Callable[[int, int], Any]] = None) -> AnalysisResult:
    """ROME's causal tracing: noise the subject's tokens, restore each (layer, position) and
    measure the answer's probability. ``subject`` is its text or its positions."""
    (ids,), (text,) = _prompts(model, [prompt])
    if isinstance(subject, str):
        found = _find(ids, model._m.to_tokens(" " + subject, False)) or _find(ids, model._m.to_tokens(subject, False))
        if found is None:
            raise ValueError(f"the subject {subject!r} does not occur in the prompt's tokens {ids}")
        positions = found
    elif subject is None:
        raise ValueError("give the subject: its text or its positions")
    else:
        positions = [int(p) for p in subject]
    return _result("trace", _native.trace(model._engine, ids, text, positions, _token(model, answer), kind, window, samples, noise, seed, severed,
        batch, _out(out), force, progress))
