"""Every example under examples/python runs (quick mode) so none of them rots."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples" / "python").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "it reports what it found"


def test_there_are_examples():
    assert {p.stem for p in EXAMPLES} >= {"ioi_patching", "train_induction", "steering_sweep", "sae_workflow"}
