"""Bad input raises the matching Python exception with the engine's message."""

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS


def test_missing_model_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        pc.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        pc.load("no-such-org/no-such-model")


def test_unknown_hook_is_key_error_with_nearest(gpt2):
    with pytest.raises(KeyError, match="hook_resid_pre"):
        gpt2.run_with_cache([0, 1, 2], names_filter="blocks.0.hook_resid_pr")
    with pytest.raises(KeyError, match="layer 7"):
        gpt2.run_with_hooks([0, 1, 2], fwd_hooks=[("blocks.7.hook_resid_pre", lambda a, h: a)])
    with pytest.raises(KeyError):
        gpt2.run_with_hooks([0, 1], fwd_hooks=[("blocks.0.mlp.hook_pre_linear", lambda a, h: a)])  # gpt2 is not gated


def test_bad_tokens_are_value_errors(gpt2):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt2([0, 1, 100000])
    with pytest.raises(ValueError, match="context"):
        gpt2(np.zeros(65, dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        gpt2([0, -1])
    with pytest.raises(ValueError, match="integers"):
        gpt2(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        gpt2(np.zeros((1, 2, 3), dtype=np.int64))


def test_bad_interventions_are_value_errors(gpt2):
    with pytest.raises(ValueError, match="intervention 0"):
        gpt2.run_with_hooks([0, 1], interventions=[{"at": "blocks.0.hook_mlp_out", "op": {"kind": "teleport"}}])
    with pytest.raises(ValueError, match="32"):
        gpt2.run_with_hooks([0, 1], interventions=[{"at": "blocks.0.hook_mlp_out", "op": {"kind": "add", "vector": [1.0, 2.0]}}])
    with pytest.raises(ValueError, match="NaN"):
        gpt2.run_with_hooks([0, 1], interventions=[{"at": "blocks.0.hook_mlp_out", "op": {"kind": "add", "vector": np.full(32, np.nan)}}])
    with pytest.raises(ValueError, match="NaN or Inf"):
        gpt2.run_with_hooks([0, 1], interventions=[{"at": "blocks.0.hook_mlp_out", "op": {"kind": "scale", "factor": float("nan")}}])


def test_generation_settings_are_checked(gpt2):
    with pytest.raises(ValueError, match="max_new_tokens"):
        gpt2.generate([0, 1], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        gpt2.generate([0, 1], temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        gpt2.generate([0, 1], top_p=1.5)
    with pytest.raises(ValueError, match="stop"):
        gpt2.generate("The", stop=[""])


def test_bad_thread_count():
    with pytest.raises(ValueError):
        pc.set_num_threads(0)
    assert pc.get_num_threads() >= 1


def test_processing_a_lab_checkpoint_is_refused(tmp_path):
    ck = tmp_path / "x.safetensors"
    ck.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError):
        pc.load(ck)
