"""Activation patching (TransformerLens's ``patching`` module, computed by the engine):
sweeps over layers × positions or layers × heads, and attribution patching."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

from . import _native
from .model import HookedTransformer

Token = Union[int, str]
Prompt = Union[str, np.ndarray, list]


@dataclass
class PatchingResult:
    """A sweep: ``values[layer, col]`` (col: position or head) and its normalised form
    ``(value − corrupt) / (clean − corrupt)``."""

    site: str
    direction: str
    metric: Dict[str, Any]
    values: np.ndarray
    normalized: np.ndarray
    clean_metric: float
    corrupt_metric: float

    def to_dict(self) -> Dict[str, Any]:
        return {
            "site": self.site,
            "direction": self.direction,
            "metric": self.metric,
            "values": self.values.tolist(),
            "normalized": self.normalized.tolist(),
            "clean_metric": self.clean_metric,
            "corrupt_metric": self.corrupt_metric,
        }

    def plot(self, ax=None, normalized: bool = True, labels=None):
        """A heatmap (matplotlib): layers down, positions or heads across."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4, 0.4 * self.values.shape[1] + 2), 0.5 * self.values.shape[0] + 2))
        grid = self.normalized if normalized else self.values
        lim = float(np.abs(grid).max()) or 1.0
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(grid.shape[0]))
        ax.set_ylabel("layer")
        ax.set_xlabel("head" if self.site in ("z", "q", "k", "v", "pattern") else "position")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=90)
        elif grid.shape[1] <= 32:
            ax.set_xticks(range(grid.shape[1]))
        ax.set_title(f"{self.direction} {self.site} ({'normalised ' if normalized else ''}{self.metric['kind']})")
        ax.figure.colorbar(im, ax=ax)
        return ax


def _token(model: HookedTransformer, t: Token) -> int:
    return int(t) if isinstance(t, (int, np.integer)) else model.to_single_token(t)


def logit_diff(answer: Token, wrong: Token) -> Callable[[HookedTransformer], Dict[str, Any]]:
    """Logit of ``answer`` minus logit of ``wrong`` at the last position."""
    return lambda m: {"kind": "logit_diff", "answer": _token(m, answer), "wrong": _token(m, wrong)}


def prob(answer: Token):
    """Probability of ``answer`` at the last position."""
    return lambda m: {"kind": "prob", "answer": _token(m, answer)}


def logprob(answer: Token):
    """Log-probability of ``answer`` at the last position."""
    return lambda m: {"kind": "log_prob", "answer": _token(m, answer)}


def kl():
    """KL divergence from the clean run's next-token distribution."""
    return lambda m: {"kind": "kl"}


def _ids(model: HookedTransformer, p: Prompt):
    if isinstance(p, str):
        return model._m.to_tokens(p, None)
    a = np.asarray(p)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"a prompt is one sequence of tokens, got shape {a.shape}")
    return [int(x) for x in a]


def _result(j: str) -> PatchingResult:
    r = json.loads(j)
    shape = (r["n_layers"], r["n_cols"])
    return PatchingResult(
        site=r["site"],
        direction=r["direction"],
        metric=r["metric"],
        values=np.asarray(r["values"], dtype=np.float32).reshape(shape),
        normalized=np.asarray(r["normalized"], dtype=np.float32).reshape(shape),
        clean_metric=float(r["clean_metric"]),
        corrupt_metric=float(r["corrupt_metric"]),
    )


def sweep(
    model: HookedTransformer,
    clean: Prompt,
    corrupted: Prompt,
    site: str = "resid_pre",
    metric=None,
    noising: bool = False,
    batch: Optional[int] = None,
    window: int = 1,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> PatchingResult:
    """Patches every (layer, position) — or (layer, head) for z, q, k, v, pattern — of one run
    into the other: clean into corrupted (denoising) or, with ``noising``, the reverse."""
    if metric is None:
        raise ValueError("give a metric: patching.logit_diff(answer, wrong), prob, logprob or kl")
    j = _native.patching_sweep(model._engine, _ids(model, clean), _ids(model, corrupted), site, json.dumps(metric(model)),
        noising, batch, window, progress,
    )
    return _result(j)


def attribute(
    model: HookedTransformer, clean: Prompt, corrupted: Prompt, site: str = "resid_pre", metric=None, noising: bool = False
) -> PatchingResult:
    """Attribution patching: the first-order estimate of every patch of ``sweep`` from two
    forwards and one backward."""
    if metric is None:
        raise ValueError("give a metric: patching.logit_diff(answer, wrong), prob, logprob or kl")
    j = _native.attribution_sweep(model._engine, _ids(model, clean), _ids(model, corrupted), site, json.dumps(metric(model)), noising
    )
    return _result(j)


def _site(site: str):
    def f(model, clean, corrupted, metric, **kw) -> PatchingResult:
        return sweep(model, clean, corrupted, site=site, metric=metric, **kw)

    f.__name__ = f"get_act_patch_{site}"
    f.__doc__ = f"Patches ``{site}`` at every layer and {'head' if site in ('z','q','k','v','pattern') else 'position'}."
    return f


# TransformerLens's names (``patching.get_act_patch_resid_pre`` …), with declarative metrics.
get_act_patch_resid_pre = _site("resid_pre")
get_act_patch_resid_mid = _site("resid_mid")
get_act_patch_attn_out = _site("attn_out")
get_act_patch_mlp_out = _site("mlp_out")
get_act_patch_attn_head_out_all_pos = _site("z")
get_act_patch_attn_head_q_all_pos = _site("q")
get_act_patch_attn_head_k_all_pos = _site("k")
get_act_patch_attn_head_v_all_pos = _site("v")
get_act_patch_attn_head_pattern_all_pos = _site("pattern")
