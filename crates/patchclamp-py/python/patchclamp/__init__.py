"""patchclamp: patch-clamp electrophysiology for transformers, from Python.

Record every activation, patch, ablate, clamp and steer them, and train under interventions,
with TransformerLens's names and shapes over patchclamp's Rust engine::

    import patchclamp as pc
    model = pc.load("tests/fixtures/models/gpt2")
    logits, cache = model.run_with_cache("The cat sat on the mat")
    cache["blocks.0.hook_resid_pre"].shape          # (1, pos, d_model), a numpy array
"""

from . import analysis, lab, patching, sae, steering, utils
from .analysis import AnalysisResult, dla, extremes, heads, hydra, lens, localize, neurons, probe, trace
from ._native import __version__, get_num_threads, set_num_threads
from .cache import ActivationCache
from .model import Config, Generation, HookedTransformer, HookPoint, load
from .sae import SAE, SAEConfig

__all__ = [
    "ActivationCache",
    "AnalysisResult",
    "analysis",
    "dla",
    "extremes",
    "heads",
    "hydra",
    "lens",
    "localize",
    "neurons",
    "trace",
    "Config",
    "SAE",
    "SAEConfig",
    "sae",
    "Generation",
    "HookPoint",
    "HookedTransformer",
    "__version__",
    "get_num_threads",
    "lab",
    "load",
    "patching",
    "probe",
    "set_num_threads",
    "steering",
    "utils",
]
