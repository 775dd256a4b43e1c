"""Shared fixtures: the committed fixture models and their reference activations (read with
numpy alone: no torch, no safetensors package)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import patchclamp as pc

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "tests" / "fixtures" / "models"
FAMILIES = ["gpt2", "llama", "mistral", "qwen2"]

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U32": np.uint32}


def read_safetensors(path: Path) -> dict:
    """Every tensor of a safetensors file as a numpy array."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


@pytest.fixture(scope="session")
def gpt2():
    return pc.load(MODELS / "gpt2")


@pytest.fixture(scope="session")
def reference():
    cache = {}

    def get(family: str) -> dict:
        if family not in cache:
            cache[family] = read_safetensors(MODELS / family / "reference.safetensors")
        return cache[family]

    return get


@pytest.fixture(scope="session")
def cli():
    """The patchclamp binary the Rust tests built (the README's test command builds it first)."""
    exe = os.environ.get("PATCHCLAMP_BIN") or str(ROOT / "target" / "debug" / "patchclamp")
    if not Path(exe).is_file():
        exe = shutil.which("patchclamp")
    if not exe:
        pytest.skip("no patchclamp binary: run `cargo build` first or set PATCHCLAMP_BIN")
    return exe
