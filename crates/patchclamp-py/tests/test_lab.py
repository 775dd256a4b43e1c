"""Training from Python: the same run folder as `patchclamp train`, progress callbacks, and a
Ctrl-C that stops cleanly with a checkpoint from which a resumed run equals an uninterrupted one."""

import json
import os
import signal
import subprocess

import pytest

import patchclamp as pc


def experiment(steps=40):
    return {
        "name": "small",
        "task": {"kind": "repeated", "vocab": 16, "seq_len": 16, "min_len": 2, "max_len": 6},
        "model": {"n_layers": 2, "d_model": 16, "n_heads": 2},
        "train": {"steps": steps, "batch": 8, "lr": {"lr": 1e-3}, "eval_every": 20, "eval_batch": 8, "checkpoint_every": 20},
    }


def log_lines(run):
    return (run.path / "log.jsonl").read_text().splitlines()


def test_train_from_a_dict_equals_the_cli(tmp_path, cli):
    seen = []
    run = pc.lab.train(experiment(), out=tmp_path / "py", progress=lambda k, s, v: seen.append((k, s)))
    assert isinstance(run, pc.lab.Run) and run.report.is_file() and run.checkpoint.is_file()
    assert [s["step"] for s in run.steps] == list(range(1, 41))
    assert [k for k, _ in seen].count("step") == 40 and [k for k, _ in seen].count("eval") == 3
    steps, loss = run.curve("in_context_loss")
    assert steps.tolist() == [0, 20, 40] and loss[-1] < loss[0]
    (tmp_path / "exp.toml").write_text((run.path / "experiment.toml").read_text())
    subprocess.run([cli, "train", str(tmp_path / "exp.toml"), "--out", str(tmp_path / "cli")], check=True, capture_output=True)
    assert log_lines(run) == (tmp_path / "cli" / "log.jsonl").read_text().splitlines()
    trained = run.model()
    assert trained.cfg.d_model == 16 and trained(list(range(8))).shape == (1, 8, 16)


def test_ctrl_c_stops_cleanly_and_resume_equals_uninterrupted(tmp_path):
    whole = pc.lab.train(experiment(), out=tmp_path / "whole")

    def interrupt(kind, step, value):
        if kind == "step" and step == 25:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pc.lab.train(experiment(), out=tmp_path / "cut", progress=interrupt)
    assert (tmp_path / "cut" / "checkpoint.safetensors").is_file()
    resumed = pc.lab.train(experiment(), out=tmp_path / "cut", resume=True)
    assert log_lines(resumed) == log_lines(whole)


def test_overrides_and_files(tmp_path):
    run = pc.lab.train(experiment(), out=tmp_path / "r", steps=20, seed=3)
    assert len(run.steps) == 20 and "seed = 3" in (run.path / "experiment.toml").read_text()
    again = pc.lab.train(run.path / "experiment.toml", out=tmp_path / "r2")
    assert log_lines(again) == log_lines(run)


def test_training_errors(tmp_path):
    bad = experiment()
    bad["train"]["steps"] = 0
    with pytest.raises(ValueError, match="steps"):
        pc.lab.train(bad, out=tmp_path / "a")
    with pytest.raises(FileNotFoundError):
        pc.lab.train(tmp_path / "missing.toml")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a patchclamp run"):
        pc.lab.train(experiment(), out=tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="resume"):
        pc.lab.train(experiment(), out=tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="resume"):
        pc.lab.train(experiment(), out=tmp_path / "b", resume="sometimes")
    with pytest.raises(FileNotFoundError):
        pc.lab.Run(tmp_path / "nothing")


def test_presets_are_the_flagship_runs():
    runs = pc.lab.presets("induction", seed=1, steps=100)
    assert [label for label, _ in runs] == ["baseline", "layer-0 attention ablated", "head 0.0 clamped to prev-token"]
    assert all(e["train"]["steps"] == 100 and e["train"]["seed"] == 1 for _, e in runs)
    assert runs[1][1]["interventions"][0]["op"]["kind"] == "zero"
    with pytest.raises(ValueError, match="preset"):
        pc.lab.presets("grokking")
