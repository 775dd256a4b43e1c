"""``HookedTransformer``: a loaded model with TransformerLens's methods over the Rust engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from .cache import ActivationCache
from .utils import float_array, tokens_array

NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
HookFn = Callable[[np.ndarray, "HookPoint"], Optional[np.ndarray]]
Input = Union[str, Sequence[str], np.ndarray, Sequence[int], Sequence[Sequence[int]]]


@dataclass
class Config:
    """The model's configuration under TransformerLens's names; ``raw`` is the engine's."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_key_value_heads: int
    act_fn: Optional[str]
    normalization_type: Optional[str]
    positional_embedding_type: str
    original_architecture: str
    default_prepend_bos: bool
    attn_only: bool
    gated_mlp: bool
    raw: Dict[str, Any] = field(repr=False)

    @staticmethod
    def from_engine(raw: Dict[str, Any]) -> "Config":
        mlp, norm, pos = raw["mlp"], raw["norm"], raw["positions"]
        # A folded norm (``fold_ln``) is TransformerLens's "LNPre" / "RMSPre".
        kind = {"layer_norm": "LN", "rms_norm": "RMS", "layer_norm_pre": "LNPre", "rms_norm_pre": "RMSPre"}.get(
            norm["kind"]
        )
        return Config(
            n_layers=raw["n_layers"],
            d_model=raw["d_model"],
            n_heads=raw["attn"]["n_heads"],
            d_head=raw["attn"]["d_head"],
            d_mlp=mlp.get("d_mlp", 0),
            d_vocab=raw["d_vocab"],
            n_ctx=raw["n_ctx"],
            n_key_value_heads=raw["attn"]["n_kv_heads"],
            act_fn=mlp.get("act"),
            normalization_type=kind,
            positional_embedding_type="standard" if pos["kind"] == "learned" else pos["kind"],
            original_architecture=raw["family"],
            default_prepend_bos=raw["default_prepend_bos"],
            attn_only=mlp["kind"] == "none",
            gated_mlp=mlp["kind"] == "gated",
            raw=raw,
        )


class HookPoint:
    """The ``hook`` argument of a hook function: where the activation was taken."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def layer(self) -> Optional[int]:
        """The block index, or ``None`` for points outside the blocks."""
        parts = self.name.split(".")
        return int(parts[1]) if parts[0] == "blocks" else None

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


class HookedTransformer:
    """A transformer loaded by the engine; its methods mirror TransformerLens's."""

    def __init__(self, native: "_native.Model"):
        self._m = native
        self.cfg = Config.from_engine(json.loads(native.cfg_json()))
        self._hook_names: Optional[List[str]] = None
        # SAEs spliced into every pass (HookedSAETransformer's add_sae): (SAE, use_error_term).
        self._saes: List[Tuple[Any, bool]] = []

    # --- loading ---
    @classmethod
    def from_pretrained(cls, name: str, **_ignored) -> "HookedTransformer":
        """A model folder or cached ``ORG/NAME`` with TransformerLens's weight processing
        (fold_ln, centring, value biases), as TransformerLens's ``from_pretrained``."""
        return load(name, processing=True)

    @classmethod
    def from_pretrained_no_processing(cls, name: str) -> "HookedTransformer":
        """The raw weights: activations equal Hugging Face's."""
        return load(name, processing=False)

    def __repr__(self) -> str:
        return repr(self._m)

    # --- names ---
    def hook_names(self) -> List[str]:
        """Every hook point's TransformerLens name, in forward order (attached SAEs' included)."""
        if self._hook_names is None:
            self._hook_names = list(self._m.hook_names(self._native_saes(None)))
        return self._hook_names

    # --- SAEs (SAELens's HookedSAETransformer names) ---
    def add_sae(self, sae, use_error_term: Optional[bool] = None) -> None:
        """Splices ``sae`` at its hook in every later pass until :meth:`reset_saes`; its
        ``<hook>.hook_sae_*`` points can then be cached and hooked. With the error term the
        model's output is unchanged until a latent is edited."""
        err = sae.use_error_term if use_error_term is None else bool(use_error_term)
        self._saes = [(s, e) for s, e in self._saes if s.hook_name != sae.hook_name] + [(sae, err)]
        self._hook_names = None

    def reset_saes(self) -> None:
        """Removes every attached SAE."""
        self._saes = []
        self._hook_names = None

    @property
    def _engine(self) -> "_native.Model":
        """The engine model the analyses run on: with the attached SAEs spliced into every pass."""
        return self._m if not self._saes else self._m.with_saes(self._native_saes(None))

    @property
    def acts_to_saes(self) -> Dict[str, Any]:
        return {s.hook_name: s for s, _ in self._saes}

    def _native_saes(self, saes) -> List[Tuple[Any, bool]]:
        """The attached SAEs plus the call's (an SAE object, or ``(sae, use_error_term)``)."""
        out = list(self._saes)
        for item in saes or ():
            sae, err = item if isinstance(item, tuple) else (item, item.use_error_term)
            out = [(s, e) for s, e in out if s.hook_name != sae.hook_name] + [(sae, bool(err))]
        return [(s._s, e) for s, e in out]

    def run_with_saes(self, input, saes=(), return_type: Optional[str] = "logits", use_error_term: Optional[bool] = None):
        """A forward pass with ``saes`` spliced in for this call only."""
        if use_error_term is not None:
            saes = [(s, bool(use_error_term)) for s in saes]
        return self._run(input, [], None, None, [], return_type, saes)[0]

    def run_with_cache_with_saes(self, input, saes=(), names_filter: NamesFilter = None, **kw):
        """``run_with_cache`` with ``saes`` spliced in for this call only."""
        return self.run_with_cache(input, names_filter=names_filter, saes=saes, **kw)

    @property
    def hook_dict(self) -> Dict[str, HookPoint]:
        return {n: HookPoint(n) for n in self.hook_names()}

    def _names(self, names_filter: NamesFilter, saes=None) -> List[str]:
        """The hook names a filter selects (globs allowed); unknown names raise KeyError."""
        if names_filter is None:
            return ["*"]
        if callable(names_filter):
            every = self.hook_names() if not saes else list(self._m.hook_names(self._native_saes(saes)))
            names = [n for n in every if names_filter(n)]
            if not names:
                raise ValueError("names_filter selects no hook point")
            return names
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        self._m.check_hook_names([n for n in names if "*" not in n])
        return names

    # --- tokens ---
    def to_tokens(self, input: Union[str, Sequence[str]], prepend_bos: Optional[bool] = None) -> np.ndarray:
        """Token ids ``[batch, pos]`` (int64); several strings are right-padded."""
        texts = [input] if isinstance(input, str) else list(input)
        rows = [self._m.to_tokens(t, prepend_bos) for t in texts]
        n = max(len(r) for r in rows)
        pad = self.cfg.raw.get("pad_token_id") or self.cfg.raw.get("eos_token_id") or 0
        out = np.full((len(rows), n), pad, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def to_string(self, tokens) -> Union[str, List[str]]:
        """The text of a token sequence (a list of texts for ``[batch, pos]``)."""
        a = np.asarray(tokens)
        if a.ndim == 0:
            return self._m.decode([int(a)])
        if a.ndim == 1:
            return self._m.decode(a.tolist())
        return [self._m.decode(r.tolist()) for r in a]

    def to_str_tokens(self, input, prepend_bos: Optional[bool] = None) -> List[str]:
        """Each token's text: of a string (tokenized first) or of one token sequence."""
        if isinstance(input, str):
            ids = self._m.to_tokens(input, prepend_bos)
        else:
            a = np.asarray(input)
            if a.ndim == 2:
                if a.shape[0] != 1:
                    raise ValueError("to_str_tokens takes one sequence; got a batch")
                a = a[0]
            ids = a.tolist()
        return list(self._m.str_tokens(ids))

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS)."""
        ids = self._m.to_tokens(string, False)
        if len(ids) != 1:
            raise ValueError(f"{string!r} is {len(ids)} tokens {ids}; it must be exactly one")
        return ids[0]

    def _tokens(self, input: Input, prepend_bos: Optional[bool] = None) -> np.ndarray:
        if isinstance(input, str) or (
            isinstance(input, (list, tuple)) and input and isinstance(input[0], str)
        ):
            return self.to_tokens(input, prepend_bos)
        return tokens_array(input)

    # --- forward passes ---
    def _run(self, input, capture, positions, interventions, functions, return_type, saes=None):
        tokens = self._tokens(input)
        ivs = _interventions_json(interventions)
        logits, cache = self._m.forward(
            tokens.tolist(),
            capture,
            None if positions is None else [int(p) for p in np.atleast_1d(positions)],
            ivs,
            functions,
            self._native_saes(saes),
        )
        return _returned(logits, tokens, return_type), cache

    def forward(self, input: Input, return_type: Optional[str] = "logits", interventions=None, saes=()):
        """Logits ``[batch, pos, d_vocab]`` (``return_type="loss"``: the mean next-token loss,
        ``"both"``: both, ``None``: nothing); ``saes`` spliced for this call."""
        return self._run(input, [], None, interventions, [], return_type, saes)[0]

    __call__ = forward

    def run_with_cache(
        self,
        input: Input,
        names_filter: NamesFilter = None,
        positions=None,
        return_type: Optional[str] = "logits",
        remove_batch_dim: bool = False,
        interventions=None,
        saes=(),
    ) -> Tuple[Any, ActivationCache]:
        """A forward pass that records ``names_filter``'s activations (all when ``None``),
        only at ``positions`` when given; ``saes`` spliced for this call (their points recorded too)."""
        out, cache = self._run(
            input, self._names(names_filter, saes), positions, interventions, [], return_type, saes
        )
        ac = ActivationCache(cache, self)
        return out, ac.remove_batch_dim() if remove_batch_dim else ac

    def run_with_hooks(
        self,
        input: Input,
        fwd_hooks: Sequence[Tuple[Union[str, Callable[[str], bool]], HookFn]] = (),
        interventions=None,
        return_type: Optional[str] = "logits",
        bwd_hooks: Sequence = (),
        reset_hooks_end: bool = True,
        saes=(),
    ):
        """A forward pass with hook functions ``fn(activation, hook)`` (each may return a
        replacement array) and/or declarative ``interventions`` (dicts in the intervention-file
        schema; they run in the engine, no Python per activation). ``reset_hooks_end`` is
        accepted for TransformerLens's signature: hooks never outlive the call here."""
        if bwd_hooks:
            raise NotImplementedError("backward hooks are not supported; use patchclamp.patching.attribute")
        functions = []
        for name, fn in fwd_hooks:
            names = [
                r
                for n in self._names(name, saes)
                for r in (self._m.resolve_hook_names(n, self._native_saes(saes)) if "*" in n else [n])
            ]
            functions.append((names, _wrap(fn)))
        return self._run(input, [], None, interventions, functions, return_type, saes)[0]

    # --- generation ---
    def generate(
        self,
        input: Input = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: Optional[Union[int, Sequence[int]]] = None,
        do_sample: bool = True,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        prepend_bos: Optional[bool] = None,
        return_type: str = "input",
        seed: int = 0,
        interventions=None,
        control_vectors: Sequence = (),
        stop: Sequence[str] = (),
        batch: Optional[int] = None,
        record: NamesFilter = (),
        return_generations: bool = False,
        verbose: bool = False,
        saes=(),
    ):
        """Generates after the prompt(s) with the engine's KV cache, interventions and control
        vectors acting at every step by absolute position.

        Returns, as TransformerLens: the prompt and its continuation as text for a string
        input (``return_type="input"``/``"str"``), token arrays otherwise. With
        ``return_generations=True``, a list of :class:`Generation` (tokens, text, why it
        stopped, and the activations recorded at ``record``)."""
        texts = isinstance(input, str) or (
            isinstance(input, (list, tuple)) and input and isinstance(input[0], str)
        )
        if texts:
            strings = [input] if isinstance(input, str) else list(input)
            prompts = [self._m.to_tokens(s, prepend_bos) for s in strings]
        else:
            a = np.asarray(input)
            prompts = [list(map(int, r)) for r in (a[None, :] if a.ndim == 1 else a)]
        stops: List[int] = []
        if stop_at_eos:
            if eos_token_id is None:
                eos = self.cfg.raw.get("eos_token_id")
                stops = [] if eos is None else [eos]
            else:
                stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        spec = {
            "max_new_tokens": int(max_new_tokens),
            "sampling": {
                "temperature": float(temperature) if do_sample else None,
                "top_k": top_k,
                "top_p": top_p,
                "repetition_penalty": float(repetition_penalty),
                "frequency_penalty": float(freq_penalty),
                "seed": int(seed),
            },
            "stop_tokens": stops,
        }
        ivs = list(_interventions_list(interventions))
        for cv in control_vectors:
            ivs += json.loads(self._control_vector(cv))
        names = [] if not record else self._names(record, saes)
        out, recordings = self._m.generate(
            prompts, json.dumps(spec), _interventions_text(ivs) if ivs else None, names, batch, list(stop),
            self._native_saes(saes),
        )
        gens = [
            Generation(g["prompt_tokens"], g["tokens"], g["text"], g["stop"], ActivationCache(r, self))
            for g, r in zip(json.loads(out)["generations"], recordings)
        ]
        if return_generations:
            return gens
        if texts and return_type in ("input", "str"):
            full = [self._m.decode(g.prompt_tokens + g.tokens) for g in gens]
            return full[0] if isinstance(input, str) else full
        rows = [g.prompt_tokens + g.tokens for g in gens]
        n = max(len(r) for r in rows)
        pad = self.cfg.raw.get("pad_token_id") or 0
        arr = np.full((len(rows), n), pad, dtype=np.int64)
        for i, r in enumerate(rows):
            arr[i, : len(r)] = r
        return arr

    def _control_vector(self, cv) -> str:
        """The interventions of a control vector: a path, ``(path, scale)`` or a dict with
        ``path``, ``scale``, ``layers=(a, b)`` and ``after_prompt``."""
        if isinstance(cv, (str,)) or hasattr(cv, "__fspath__"):
            return self._m.control_vector(str(cv))
        if isinstance(cv, tuple):
            return self._m.control_vector(str(cv[0]), float(cv[1]))
        if isinstance(cv, dict):
            return self._m.control_vector(
                str(cv["path"]), float(cv.get("scale", 1.0)), cv.get("layers"), bool(cv.get("after_prompt", False))
            )
        raise TypeError(f"a control vector is a path, (path, scale) or a dict, not {type(cv).__name__}")


@dataclass
class Generation:
    """One prompt's generation: its tokens, text, why it stopped, and what was recorded."""

    prompt_tokens: List[int]
    tokens: List[int]
    text: str
    stop: str
    cache: ActivationCache = field(repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "text": self.text, "stop": self.stop}


def load(path_or_repo: str, processing: bool = False) -> HookedTransformer:
    """Loads a Hugging Face folder, a cached ``ORG/NAME`` (never downloaded) or a lab
    checkpoint; ``processing=True`` applies TransformerLens's weight processing."""
    return HookedTransformer(_native.Model.load(str(path_or_repo), bool(processing)))


def _wrap(fn: HookFn):
    """The engine calls ``f(array, name)``; the user's function gets TransformerLens's
    ``(activation, hook)`` and may return a replacement (any array numpy can view)."""

    def call(activation: np.ndarray, name: str):
        out = fn(activation, HookPoint(name))
        if out is None or out is activation:
            return None  # the engine reads the (possibly edited in place) activation back
        if hasattr(out, "detach") and hasattr(out, "numpy"):
            out = out.detach().cpu().numpy()
        return np.ascontiguousarray(out, dtype=np.float32)

    return call


def _interventions_list(interventions) -> List[Dict[str, Any]]:
    if interventions is None:
        return []
    if isinstance(interventions, dict):
        return [interventions]
    return [dict(iv) for iv in interventions]


def _interventions_json(interventions) -> Optional[str]:
    ivs = _interventions_list(interventions)
    return _interventions_text(ivs) if ivs else None


def _interventions_text(ivs: List[Dict[str, Any]]) -> str:
    """Intervention dicts as the engine's JSON (numpy and torch values as lists). JSON has no
    NaN, so a non-finite number is refused here, by name, not as a parse error."""
    try:
        return json.dumps(ivs, default=_jsonable, allow_nan=False)
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise
        raise ValueError("an intervention holds NaN or Inf: every value must be finite") from None


def _jsonable(x):
    """numpy values inside intervention dicts (vectors, indices) as JSON."""
    if isinstance(x, np.ndarray):
        return float_array(x, "an intervention's values").astype(np.float64).tolist()
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        return x.detach().cpu().numpy().astype(np.float64).tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _returned(logits: np.ndarray, tokens: np.ndarray, return_type: Optional[str]):
    """What a forward returns for TransformerLens's ``return_type``."""
    if return_type == "logits":
        return logits
    if return_type is None:
        return None
    if return_type in ("loss", "both"):
        loss = _loss(logits, tokens)
        return loss if return_type == "loss" else (logits, loss)
    raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")


def _loss(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean cross-entropy of each next token (float64 log-softmax)."""
    if tokens.shape[1] < 2:
        raise ValueError("the loss needs at least two tokens")
    x = logits[:, :-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    nxt = tokens[:, 1:]
    return float(-np.take_along_axis(logp, nxt[..., None], axis=-1).mean())
