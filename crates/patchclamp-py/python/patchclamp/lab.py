"""The training lab: train an experiment into a run folder, read a run back."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _native
from .model import _interventions_list, _interventions_text

Progress = Union[None, bool, Callable[[str, int, float], Any]]


class Run:
    """A run folder: its experiment, log (steps and evaluations), summary and checkpoint."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        # A lab comparison keeps its runs in sub-folders under one manifest.
        finished = (self.path / "manifest.json").is_file() or (
            (self.path / "log.jsonl").is_file() and (self.path.parent / "manifest.json").is_file()
        )
        if not finished:
            raise FileNotFoundError(f"{self.path} holds no finished patchclamp run (no manifest.json)")

    def _lines(self) -> List[Dict[str, Any]]:
        with open(self.path / "log.jsonl") as f:
            return [json.loads(line) for line in f if line.strip()]

    @property
    def steps(self) -> List[Dict[str, Any]]:
        """One record per update: step, loss, lr, grad_norm."""
        return [l for l in self._lines() if l["kind"] == "step"]

    @property
    def evals(self) -> List[Dict[str, Any]]:
        """One record per evaluation (in-context loss, head scores, …)."""
        return [l for l in self._lines() if l["kind"] == "eval"]

    def curve(self, key: str, evals: bool = True):
        """``(steps, values)`` arrays of one logged number (``"in_context_loss"``, ``"loss"``…)."""
        rows = self.evals if evals else self.steps
        rows = [r for r in rows if r.get(key) is not None]
        if not rows:
            raise KeyError(f"no {'evaluation' if evals else 'step'} record has {key!r}")
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=np.float64)

    @property
    def summary(self) -> Dict[str, Any]:
        with open(self.path / "summary.json") as f:
            return json.load(f)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    def model(self):
        """The trained model (token ids in, no tokenizer)."""
        from .model import load

        return load(str(self.checkpoint))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def presets(name: str, seed: int = 0, steps: Optional[int] = None) -> List[Tuple[str, Dict[str, Any]]]:
    """The lab's calibrated experiments as ``(label, experiment dict)`` pairs: ``"induction"``
    (the flagship: baseline, layer-0 attention ablated, head 0.0 clamped to previous-token)
    or ``"singh"`` (Singh et al. 2024)."""
    return [(label, json.loads(j)) for label, j in _native.presets(name, seed, steps)]


def _bar() -> Callable[[str, int, float], None]:
    """A one-line progress display on stderr."""

    def show(kind: str, step: int, value: float) -> None:
        if kind == "step" and step % 10 == 0:
            print(f"\rstep {step:>6}  loss {value:.4f}", end="", file=sys.stderr, flush=True)
        elif kind == "eval":
            print(f"\rstep {step:>6}  in-context loss {value:.4f}", file=sys.stderr, flush=True)

    return show


def train(
    experiment: Union[str, os.PathLike, Dict[str, Any]],
    out: Optional[Union[str, os.PathLike]] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    resume: Union[bool, str] = False,
    force: bool = False,
    progress: Progress = None,
) -> Run:
    """Trains an experiment (a TOML file, or a dict in its schema) into ``out`` (default
    ``runs/NAME``), exactly as ``patchclamp train``: the same folder, log, checkpoint and
    report. ``resume=True`` continues from the folder's checkpoint (``"if_present"``: or
    starts over). ``progress(kind, step, value)`` sees each step and evaluation (``True``: a
    line on stderr). Ctrl-C stops after the current step, leaving a checkpoint to resume."""
    if isinstance(experiment, dict):
        text, is_json = json.dumps(experiment), True
    else:
        text, is_json = os.fspath(experiment), False
    mode = {False: "no", True: "required"}.get(resume, resume) if isinstance(resume, bool) else resume
    cb = _bar() if progress is True else (progress or None)
    path, _summary = _native.train(
        text, is_json, None if out is None else os.fspath(out), steps, seed, mode, force, cb
    )
    if progress is True:
        print(file=sys.stderr)
    return Run(path)


class LabRun:
    """A lab experiment's folder (``patchclamp lab NAME``): its main page, the lines the CLI
    prints, and the training runs it holds (by folder name)."""

    def __init__(self, path: Union[str, os.PathLike], report: Union[str, os.PathLike], lines: List[str]):
        self.path = Path(path)
        self.report = Path(report)
        self.lines = list(lines)

    @property
    def runs(self) -> Dict[str, Run]:
        """The training runs, by sub-folder name (empty for the toy protocols and K8)."""
        return {p.name: Run(p) for p in sorted(self.path.iterdir()) if (p / "log.jsonl").is_file()}

    @property
    def summary(self) -> Dict[str, Any]:
        """``summary.json`` (every experiment writes one)."""
        with open(self.path / "summary.json") as f:
            return json.load(f)

    def __repr__(self) -> str:
        return f"LabRun({str(self.path)!r})"


def experiments() -> List[Tuple[str, str]]:
    """The lab's experiments as ``(name, description)`` pairs, as ``patchclamp lab`` lists them."""
    return list(_native.experiments())


def _lab_bar() -> Callable[[str, str, int, float], None]:
    """One line per event worth a line on stderr."""

    def show(label: str, kind: str, step: int, value: float) -> None:
        if kind == "eval":
            print(f"{label}: step {step:>6}  in-context loss {value:.4f}", file=sys.stderr, flush=True)
        elif kind == "stage":
            print(label, file=sys.stderr, flush=True)

    return show


def run(
    name: str,
    out: Optional[Union[str, os.PathLike]] = None,
    seed: int = 0,
    steps: Optional[int] = None,
    clamp: Union[None, str, os.PathLike, List[Dict[str, Any]]] = None,
    force: bool = False,
    progress: Union[None, bool, Callable[[str, str, int, float], Any]] = None,
) -> LabRun:
    """Runs one of the lab's experiments (see :func:`experiments`) into ``out`` (default
    ``runs/NAME``), exactly as ``patchclamp lab NAME``: the same folder, runs and report.
    ``clamp`` (a TOML file with ``[[interventions]]``, or a list of intervention dicts) trains
    one more run under those interventions (``induction``, ``singh-ih``).
    ``progress(label, kind, step, value)`` sees each run's ``"start"`` (value: its steps),
    ``"step"`` (loss), ``"eval"`` (in-context loss) and a protocol's ``"stage"`` (label: the
    stage); ``True`` prints evaluations and stages on stderr. Ctrl-C stops the runs cleanly."""
    if clamp is None or isinstance(clamp, (list, tuple, dict)):
        text = None if clamp is None else _interventions_text(_interventions_list(clamp))
        is_json = True
    else:
        text, is_json = os.fspath(clamp), False
    cb = _lab_bar() if progress is True else (progress or None)
    path, report, lines = _native.lab_run(
        name, None if out is None else os.fspath(out), seed, steps, text, is_json, force, cb
    )
    return LabRun(path, report, lines)
