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


def cli_lines(cli, *args):
    """What `patchclamp lab …` prints, without its timing line."""
    out = subprocess.run([cli, "lab", *args], check=True, capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if not l.startswith("finished in")]


def test_lab_experiments_are_the_cli_list(cli):
    names = [n for n, _ in pc.lab.experiments()]
    assert names == ["induction", "singh-ih", "toy-phase", "critical-periods", "steering", "sae-toy"]
    listed = subprocess.run([cli, "lab"], check=True, capture_output=True, text=True).stdout
    assert all(f"  {n} " in listed for n in names)


def test_lab_toy_phase_equals_the_cli(tmp_path, cli):
    lab = pc.lab.run("toy-phase", out=tmp_path / "py", steps=60)
    assert isinstance(lab, pc.lab.LabRun) and lab.report.is_file() and lab.runs == {}
    assert lab.lines == cli_lines(cli, "toy-phase", "--steps", "60", "--out", str(tmp_path / "cli"))
    assert lab.summary == json.loads((tmp_path / "cli" / "summary.json").read_text())


def test_lab_induction_with_a_clamp_equals_the_cli(tmp_path, cli):
    clamp = [{"at": "blocks.0.attn.hook_pattern", "select": {"heads": [0]}, "op": {"kind": "zero"}}]
    seen = []
    lab = pc.lab.run("induction", out=tmp_path / "py", steps=12, clamp=clamp,
                     progress=lambda label, kind, step, value: seen.append((label, kind, step)))
    assert sorted(lab.runs) == ["induction-baseline", "induction-custom-clamp", "induction-layer0-ablated",
                                "induction-prev-token-clamp"]
    starts = [label for label, kind, _ in seen if kind == "start"]
    assert len(starts) == 4 and "custom clamp" in starts
    assert sum(kind == "step" for _, kind, _ in seen) == 4 * 12
    (tmp_path / "clamp.toml").write_text(
        '[[interventions]]\nat = "blocks.0.attn.hook_pattern"\nselect = { heads = [0] }\nop = { kind = "zero" }\n')
    lines = cli_lines(cli, "induction", "--steps", "12", "--clamp", str(tmp_path / "clamp.toml"),
                      "--out", str(tmp_path / "cli"))
    assert lab.lines == lines and lab.report == lab.path / "report.html" and lab.report.is_file()
    for name, run in lab.runs.items():
        assert log_lines(run) == (tmp_path / "cli" / name / "log.jsonl").read_text().splitlines(), name
    assert lab.runs["induction-baseline"].curve("in_context_loss")[0].tolist()[0] == 0


def test_lab_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'grokking'"):
        pc.lab.run("grokking", out=tmp_path / "a")
    with pytest.raises(ValueError, match="--steps does not apply"):
        pc.lab.run("critical-periods", out=tmp_path / "b", steps=10)
    with pytest.raises(ValueError, match="--clamp applies to induction"):
        pc.lab.run("toy-phase", out=tmp_path / "c", clamp=[])
    with pytest.raises(FileNotFoundError):
        pc.lab.run("induction", out=tmp_path / "d", clamp=tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="the clamp holds no interventions"):
        pc.lab.run("induction", out=tmp_path / "e", steps=2, clamp=[])
    with pytest.raises(ValueError, match="NaN or Inf"):
        pc.lab.run("induction", out=tmp_path / "f", steps=2,
                   clamp=[{"at": "blocks.0.hook_attn_out", "op": {"kind": "scale", "factor": float("nan")}}])
    with pytest.raises(ValueError, match="steps"):
        pc.lab.run("steering", out=tmp_path / "g", steps=0)
    assert not any((tmp_path / d).exists() for d in "abcdefg")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a patchclamp run"):
        pc.lab.run("toy-phase", out=tmp_path / "theirs", steps=5)
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["notes.txt"]

    def broken(label, kind, step, value):
        raise RuntimeError("my callback broke")

    with pytest.raises(RuntimeError, match="my callback broke"):
        pc.lab.run("induction", out=tmp_path / "h", steps=50, progress=broken)


def test_lab_ctrl_c_stops_every_run(tmp_path):
    def interrupt(label, kind, step, value):
        if kind == "step" and step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pc.lab.run("induction", out=tmp_path / "cut", steps=400, progress=interrupt)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"] is False
    logs = list((tmp_path / "cut").glob("*/log.jsonl"))
    assert len(logs) == 3 and all(len(p.read_text().splitlines()) < 400 for p in logs)
