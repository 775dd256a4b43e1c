"""Sparse autoencoders in SAELens's format: load, encode, decode, splice, train, evaluate.

SAELens's names where it has them::

    import patchclamp as pc
    model = pc.load("tests/fixtures/models/gpt2")
    sae = pc.SAE.load_from_disk("tests/fixtures/saes/standard-resid")
    acts = sae.encode(cache["blocks.0.hook_resid_post"])        # [batch, pos, d_sae]
    logits, cache = model.run_with_cache("The cat", saes=[sae])  # hook_sae_* points recorded
    model.add_sae(sae, use_error_term=True)                      # every later call, as HookedSAETransformer
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from . import _native

PathLike = Union[str, os.PathLike]


class SAEConfig:
    """An SAE's cfg.json (v6 layout): its keys as attributes, ``metadata`` as a dict."""

    def __init__(self, raw: Dict[str, Any]):
        self.raw = raw
        self.metadata: Dict[str, Any] = dict(raw.get("metadata") or {})

    def __getattr__(self, name: str):
        raw = self.__dict__.get("raw", {})
        if name in raw:
            return raw[name]
        meta = self.__dict__.get("metadata", {})
        if name in meta:
            return meta[name]
        raise AttributeError(name)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self.raw))

    def __repr__(self) -> str:
        return f"SAEConfig({self.raw.get('architecture')}, d_in={self.raw.get('d_in')}, d_sae={self.raw.get('d_sae')})"


class SAE:
    """An SAE or transcoder read from a SAELens folder (``SAE.load_from_disk``)."""

    def __init__(self, native: "_native.Sae", path: Optional[Path] = None):
        self._s = native
        self.path = path
        self.cfg = SAEConfig(json.loads(native.cfg_json()))
        # SAELens's flag; `model.add_sae(sae, use_error_term=…)` sets it per splice.
        self.use_error_term = False

    @classmethod
    def load_from_disk(cls, path: PathLike) -> "SAE":
        """Reads ``cfg.json`` and ``sae_weights.safetensors`` (pre-6.0 configs upgraded as SAELens does)."""
        return cls(_native.Sae.load(str(path)), Path(path))

    load = load_from_disk

    def __repr__(self) -> str:
        return f"SAE({self._s.architecture()}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, hook={self.cfg.metadata.get('hook_name')})"

    # --- weights, as SAELens names them ---
    def _w(self, name: str) -> Optional[np.ndarray]:
        return self._s.weight(name)

    W_enc = property(lambda self: self._w("W_enc"), doc="Encoder ``[d_in, d_sae]``.")
    b_enc = property(lambda self: self._w("b_enc"), doc="Encoder bias ``[d_sae]`` (None for gated).")
    W_dec = property(lambda self: self._w("W_dec"), doc="Decoder ``[d_sae, d_out]``.")
    b_dec = property(lambda self: self._w("b_dec"), doc="Decoder bias ``[d_out]``.")
    threshold = property(lambda self: self._w("threshold"), doc="JumpReLU thresholds ``[d_sae]``.")
    W_skip = property(lambda self: self._w("W_skip"), doc="A skip transcoder's ``[d_out, d_in]``.")
    sparsity = property(lambda self: self._w("sparsity"), doc="log10 feature density from sparsity.safetensors.")

    @property
    def architecture(self) -> str:
        return self._s.architecture()

    @property
    def hook_name(self) -> Optional[str]:
        return self.cfg.metadata.get("hook_name")

    # --- math ---
    def encode(self, x) -> np.ndarray:
        """Latents ``[..., d_sae]`` of activations ``[..., d_in]`` (``[..., heads, d_head]`` for hook_z SAEs)."""
        return self._s.encode(np.ascontiguousarray(x, dtype=np.float32))

    def decode(self, feature_acts) -> np.ndarray:
        """``feature_acts · W_dec + b_dec``, flat ``[..., d_out]``."""
        return self._s.decode(np.ascontiguousarray(feature_acts, dtype=np.float32))

    def forward(self, x) -> np.ndarray:
        """The reconstruction of ``x`` in its own shape (no error term)."""
        return self._s.forward(np.ascontiguousarray(x, dtype=np.float32))

    __call__ = forward

    def save_model(self, path: PathLike) -> Path:
        """Writes a SAELens folder (cfg.json last); returns it."""
        self._s.save(str(path))
        return Path(path)


class TrainedSAE:
    """A finished ``sae.train`` folder: the SAELens folder, the log and the report."""

    def __init__(self, path: PathLike, sae_path: PathLike, lines: List[str], last: Dict[str, Any]):
        self.path = Path(path)
        self.sae_path = Path(sae_path)
        self.lines = lines
        self.last = last

    @property
    def sae(self) -> SAE:
        return SAE.load_from_disk(self.sae_path)

    @property
    def log(self) -> List[Dict[str, Any]]:
        """The logged steps: step, loss, mse, aux, l0, explained_variance, dead, lr."""
        with open(self.path / "log.jsonl") as f:
            return [json.loads(line) for line in f if line.strip()]

    def curve(self, key: str):
        rows = self.log
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=np.float64)

    @property
    def evals(self) -> List[Dict[str, Any]]:
        """Held-out evaluations (``eval_corpus``): step, ce_loss_score, delta_lm_loss, kl_div_score…"""
        with open(self.path / "result.json") as f:
            return json.load(f)["evals"]

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def __repr__(self) -> str:
        return f"TrainedSAE({self.path}; {self.lines[-1] if self.lines else ''})"


def _arch(arch: str, k: Optional[int], l1: Optional[float], l0: Optional[float], warm_up: int) -> Dict[str, Any]:
    def only(name, value, archs):
        if value is not None:
            raise ValueError(f"{name} applies to arch {archs}, not {arch!r}")

    if arch == "standard":
        only("k", k, "topk or batchtopk")
        only("l0", l0, "jumprelu")
        return {"kind": "standard", "l1": 5.0 if l1 is None else float(l1), "l1_warm_up_steps": warm_up}
    if arch in ("topk", "batchtopk"):
        only("l1", l1, "standard")
        only("l0", l0, "jumprelu")
        if k is None:
            raise ValueError(f"arch {arch!r} needs k")
        return {"kind": arch, "k": int(k)}
    if arch == "jumprelu":
        only("k", k, "topk or batchtopk")
        only("l1", l1, "standard")
        return {"kind": "jumprelu", "l0": 1.0 if l0 is None else float(l0), "l0_warm_up_steps": warm_up}
    raise ValueError(f"unknown arch {arch!r}; use standard, topk, batchtopk or jumprelu")


def train(model, hook: str, corpus: Optional[PathLike], d_sae: int, tokens: int, out: PathLike, arch: str = "topk",
          k: Optional[int] = None, l1: Optional[float] = None, l0: Optional[float] = None, batch: int = 4096,
          context_size: int = 128, lr: float = 3e-4, lr_warm_up_steps: int = 0, lr_decay: bool = False,
          sparsity_warm_up_steps: int = 0, normalize: bool = False, b_dec_init: str = "geometric_median",
          dead_window: int = 1000, buffer_batches: int = 4, contexts_per_forward: int = 8,
          checkpoint_every: int = 500, log_every: int = 50, seed: int = 0, resume: bool = False,
          force: bool = False, progress: Optional[Callable[..., Any]] = None,
          activations: Optional[PathLike] = None, eval_corpus: Optional[PathLike] = None,
          eval_every: int = 500, eval_contexts: int = 16) -> TrainedSAE:
    """Trains an SAE on ``model``'s activations at ``hook`` harvested from ``corpus`` (text: one
    document per line; JSONL: ``{"text": …}``) — or read from an ``activations`` store
    (:func:`harvest`) — into ``out``, as ``patchclamp sae train`` does (same flags, same
    numbers). ``progress(step, l0, explained_variance, dead, tokens_per_s)`` sees each step;
    Ctrl-C stops at a step and ``resume=True`` continues bit for bit."""
    if (corpus is None) == (activations is None):
        raise ValueError("give exactly one of corpus and activations")
    if tokens <= 0 or batch <= 0:
        raise ValueError("tokens and batch must be positive")
    if b_dec_init.replace("-", "_") not in ("geometric_median", "mean", "zeros"):
        raise ValueError(f"unknown b_dec_init {b_dec_init!r}; use geometric_median, mean or zeros")
    a = _arch(arch, k, l1, l0, int(sparsity_warm_up_steps))
    spec = {
        "arch": a,
        "d_in": 0,
        "d_sae": int(d_sae),
        "batch": int(batch),
        "steps": -(-int(tokens) // int(batch)),
        "lr": {"lr": float(lr), "warmup": int(lr_warm_up_steps), "decay": "linear" if lr_decay else "constant", "min_ratio": 0.0},
        "unit_decoder": arch in ("topk", "batchtopk"),
        "decoder_init_norm": 0.1,
        "tied": False,
        "b_dec_init": b_dec_init.replace("-", "_"),
        "aux_coef": 1.0,
        "dead_window": int(dead_window),
        "normalize": bool(normalize),
        "seed": int(seed),
    }
    path, sae_path, lines, last = _native.sae_train(
        model._m, hook, "" if corpus is None else str(corpus), json.dumps(spec), str(out), int(context_size),
        int(buffer_batches), int(contexts_per_forward), int(checkpoint_every), int(log_every), bool(resume),
        bool(force), progress, None if activations is None else str(activations),
        None if eval_corpus is None else str(eval_corpus), int(eval_every), int(eval_contexts),
    )
    return TrainedSAE(path, sae_path, list(lines), json.loads(last))


class SAEMetrics:
    """``sae.evaluate``'s numbers as attributes (l0, explained_variance, ce_loss_score, …)."""

    def __init__(self, data: Dict[str, Any]):
        self._data = data
        self.frequencies = np.array(data["metrics"]["frequencies"], dtype=np.float64)

    def __getattr__(self, name: str):
        m = self.__dict__["_data"]["metrics"]
        if name in m:
            return m[name]
        if name in self.__dict__["_data"]:
            return self.__dict__["_data"][name]
        raise AttributeError(name)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def __repr__(self) -> str:
        m = self._data["metrics"]
        return (f"SAEMetrics(L0 {m['l0']:.2f}, explained variance {m['explained_variance']:.4f}, "
                f"CE-loss score {m['ce_loss_score']:.4f}, dead {m['dead']})")


def evaluate(sae: Union[SAE, PathLike], model, corpus: PathLike, contexts: int = 64, context_size: int = 128,
             batch: int = 8, out: Optional[PathLike] = None, force: bool = False) -> SAEMetrics:
    """L0, explained variance, MSE, CE-loss score, delta LM loss, KL score and densities of an
    SAE on ``model`` over the first ``contexts`` contexts of ``corpus``, as ``patchclamp sae eval``."""
    path = sae.path if isinstance(sae, SAE) else Path(sae)
    if path is None:
        raise ValueError("evaluate reads the SAE from its folder: save it first (sae.save_model(path))")
    text = _native.sae_eval(model._m, str(path), str(corpus), int(contexts), int(context_size), int(batch),
                            None if out is None else str(out), bool(force))
    return SAEMetrics(json.loads(text))


class Dashboards:
    """``sae.features``'s folder: ``index.html``, one page per latent, ``neuronpedia.json``."""

    def __init__(self, index: PathLike, data: Dict[str, Any]):
        self.index = Path(index)
        self.path = self.index.parent
        self.data = data

    @property
    def features(self) -> List[Dict[str, Any]]:
        """Per latent: index, frac_nonzero, max_activation, top examples, groups, logit weights…"""
        return self.data["features"]

    @property
    def neuronpedia(self) -> Dict[str, Any]:
        with open(self.path / "neuronpedia.json") as f:
            return json.load(f)

    def __repr__(self) -> str:
        return f"Dashboards({len(self.features)} latents at {self.data['hook']}: {self.index})"


def features(sae: Union[SAE, PathLike], model, corpus: PathLike, out: PathLike, latents=None, contexts: int = 64,
             context_size: int = 128, batch: int = 8, top: int = 20, force: bool = False) -> Dashboards:
    """Feature dashboards (top contexts ±5 tokens, quantile groups, logit weights, densities) as
    HTML pages and Neuronpedia-style JSON, as ``patchclamp sae features``."""
    path = sae.path if isinstance(sae, SAE) else Path(sae)
    index, text = _native.sae_features(model._m, str(path), str(corpus), str(out), [int(j) for j in (latents or [])],
                                       int(contexts), int(context_size), int(batch), int(top), bool(force))
    return Dashboards(index, json.loads(text))


def contrast(sae: Union[SAE, PathLike], model, prompts, control, top: int = 10, mean: bool = False) -> Dict[str, Any]:
    """Latents ranked by mean activation on ``prompts`` minus on ``control`` (each prompt's last
    token, or all its tokens when ``mean``), as ``patchclamp sae contrast``; returns
    ``{"top_a": [...], "top_b": [...], ...}``."""
    s = sae if isinstance(sae, SAE) else SAE.load_from_disk(sae)
    rows = lambda ps: [list(model._m.to_tokens(p, None)) if isinstance(p, str) else [int(t) for t in p] for p in ps]
    return json.loads(_native.sae_contrast(model._m, s._s, rows(prompts), rows(control), int(top), bool(mean)))


def harvest(model, hook: str, corpus: PathLike, tokens: int, out: PathLike, context_size: int = 128,
            buffer: int = 16384, shard_rows: int = 65536, seed: int = 0, force: bool = False) -> Dict[str, Any]:
    """Stores ``tokens`` activations at ``hook`` (sharded safetensors, ``store.json``) for
    ``train(…, activations=out)``, as ``patchclamp sae harvest``; returns ``store.json``."""
    _, text = _native.sae_harvest(model._m, hook, str(corpus), int(tokens), str(out), int(context_size), int(buffer),
                                  int(shard_rows), int(seed), bool(force))
    return json.loads(text)
