"""Type stubs of the compiled half of patchclamp (``patchclamp._native``)."""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__version__: str

class Model:
    @staticmethod
    def load(spec: str, processing: bool = False) -> "Model": ...
    def cfg_json(self) -> str: ...
    def to_tokens(self, text: str, prepend_bos: Optional[bool] = None) -> List[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def str_tokens(self, ids: Sequence[int]) -> List[str]: ...
    def hook_names(self) -> List[str]: ...
    def check_hook_names(self, names: Sequence[str]) -> None: ...
    def resolve_hook_names(self, pattern: str) -> List[str]: ...
    def forward(
        self,
        tokens: Sequence[Sequence[int]],
        capture: Sequence[str] = ...,
        positions: Optional[Sequence[int]] = None,
        interventions: Optional[str] = None,
        functions: Sequence[Tuple[Sequence[str], Callable[[np.ndarray, str], Optional[np.ndarray]]]] = ...,
    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]: ...
    def control_vector(
        self, path: str, scale: float = 1.0, layers: Optional[Tuple[int, int]] = None, after_prompt: bool = False
    ) -> str: ...
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        spec: str,
        interventions: Optional[str] = None,
        record: Sequence[str] = ...,
        batch: Optional[int] = None,
        stop: Sequence[str] = ...,
    ) -> Tuple[str, List[Dict[str, np.ndarray]]]: ...

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def patching_sweep(
    model: Model,
    clean: Sequence[int],
    corrupt: Sequence[int],
    site: str,
    metric: str,
    noising: bool = False,
    batch: Optional[int] = None,
    window: int = 1,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> str: ...
def attribution_sweep(
    model: Model, clean: Sequence[int], corrupt: Sequence[int], site: str, metric: str, noising: bool = False
) -> str: ...
def presets(name: str, seed: int = 0, steps: Optional[int] = None) -> List[Tuple[str, str]]: ...
def train(
    experiment: str,
    is_json: bool = False,
    out: Optional[str] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    resume: str = "no",
    force: bool = False,
    progress: Optional[Callable[[str, int, float], Any]] = None,
) -> Tuple[str, str]: ...
def experiments() -> List[Tuple[str, str]]: ...
def lab_run(
    name: str,
    out: Optional[str] = None,
    seed: int = 0,
    steps: Optional[int] = None,
    clamp: Optional[str] = None,
    clamp_is_json: bool = False,
    force: bool = False,
    progress: Optional[Callable[[str, str, int, float], Any]] = None,
) -> Tuple[str, str, List[str]]: ...

Analysed = Tuple[str, str, Dict[str, np.ndarray]]

def lens(model: Model, prompts: Sequence[Sequence[int]], texts: Sequence[str], top_k: int = 5,
         track: Sequence[int] = ..., out: Optional[str] = None, force: bool = False) -> Analysed: ...
def dla(model: Model, prompts: Sequence[Sequence[int]], texts: Sequence[str], answer: int, answer_label: str,
        wrong: Optional[int] = None, wrong_label: Optional[str] = None, out: Optional[str] = None,
        force: bool = False) -> Analysed: ...
def heads(model: Model, n: int = 64, block: int = 24, repeats: int = 2, seed: int = 0,
          out: Optional[str] = None, force: bool = False) -> Analysed: ...
def extremes(model: Model, prompts: Sequence[Sequence[int]], triggers: Sequence[int] = ..., abs_min: float = 100.0,
             ratio: float = 1000.0, out: Optional[str] = None, force: bool = False) -> Analysed: ...
def trace(model: Model, prompt: Sequence[int], text: str, subject: Sequence[int], answer: int, kind: str = "hidden",
          window: Optional[int] = None, samples: int = 10, noise: Optional[float] = None, seed: int = 0,
          severed: bool = False, batch: Optional[int] = None, out: Optional[str] = None, force: bool = False,
          progress: Optional[Callable[[int, int], Any]] = None) -> Analysed: ...
def neurons(model: Model, prompts: Sequence[Sequence[int]], labels: Sequence[Optional[str]], batch: int = 16,
            top: int = 10, lape_top_rate: float = 0.01, out: Optional[str] = None, force: bool = False,
            progress: Optional[Callable[[int, int], Any]] = None) -> Analysed: ...
def hydra(model: Model, prompts: Sequence[Sequence[int]], texts: Sequence[str], sources: Sequence[Sequence[int]],
          source_texts: Sequence[str], answer: int, wrong: Optional[int] = None, out: Optional[str] = None,
          force: bool = False) -> Analysed: ...
def localize(model: Model, stimuli: Sequence[Sequence[int]], control: Sequence[Sequence[int]], units: str = "resid_post",
             fraction: float = 0.01, eval: Optional[Sequence[Sequence[int]]] = None, random_draws: int = 10,
             seed: int = 0, out: Optional[str] = None, force: bool = False) -> Analysed: ...
def probe(model: Model, prompts: Sequence[Sequence[int]], labels: Sequence[Optional[str]],
          points: Optional[Sequence[str]] = None, pooling: str = "last", test_fraction: float = 0.25, seed: int = 0,
          tcav: Optional[Tuple[str, str, int, str, Optional[str]]] = None, tcav_runs: int = 10,
          out: Optional[str] = None, force: bool = False) -> Analysed: ...
def steering_extract(model: Model, pairs: Sequence[Tuple[Sequence[int], Sequence[int]]], layers: Tuple[int, int],
                     method: str = "pca-diff", position: int = -1, out: Optional[str] = None,
                     force: bool = False) -> Tuple[List[int], List[List[float]]]: ...
def directional_ablation_interventions(model: Model, direction: Sequence[float]) -> str: ...

def steering_sweep(model: Model, prompts: Sequence[Sequence[int]], texts: Sequence[str],
                   vectors: Sequence[Tuple[str, float]], scales: Sequence[float], spec: str,
                   layers: Optional[Tuple[int, int]] = None, after_prompt: bool = False, contains: Sequence[str] = ...,
                   batch: Optional[int] = None, out: Optional[str] = None, force: bool = False,
                   progress: Optional[Callable[[int, int], Any]] = None) -> Analysed: ...
def control_vector_direction(path: str, block: int) -> List[float]: ...
def fit_act(model: Model, source: Sequence[Sequence[int]], target: Sequence[Sequence[int]], point: str, out: str,
            force: bool = False) -> int: ...
def transport_intervention(model: Model, path: str, strength: float = 1.0) -> str: ...

class TensorMemory: ...
