"""The analyses give the CLI's results: the same result.json and result.safetensors, number
for number, and with ``out`` the same report folder."""

import json
import subprocess

import numpy as np
import pytest

import patchclamp as pc
from conftest import MODELS, read_safetensors

GPT2 = str(MODELS / "gpt2")
PROMPT = "The cat sat on the mat, and the cat sat again."


def cli_run(cli, tmp_path, *args):
    out = tmp_path / "cli"
    subprocess.run([cli, *args, "--out", str(out)], check=True, capture_output=True, text=True)
    grids = read_safetensors(out / "result.safetensors") if (out / "result.safetensors").is_file() else {}
    return json.loads((out / "result.json").read_text()), grids


def same(py, cli_json, cli_grids, ignore=("model",)):
    a = {k: v for k, v in py.data.items() if k not in ignore}
    b = {k: v for k, v in cli_json.items() if k not in ignore}
    assert a == b
    assert set(py.arrays) == set(cli_grids)
    for k, v in cli_grids.items():
        assert np.array_equal(py.arrays[k], v), k


@pytest.mark.parametrize(
    "call, args",
    [
        (lambda m: pc.lens(m, PROMPT, top_k=3, track=[" sat"]), ["lens", GPT2, "--prompt", PROMPT, "--top-k", "3", "--track", " sat"]),
        (lambda m: pc.dla(m, PROMPT, answer=" sat", wrong=" the"), ["dla", GPT2, "--prompt", PROMPT, "--answer", " sat", "--wrong", " the"]),
        (lambda m: pc.heads(m, n=8, block=6), ["heads", GPT2, "--n", "8", "--block", "6"]),
        (lambda m: pc.extremes(m, [PROMPT, "hello world"], abs_min=1.0, ratio=2.0), ["extremes", GPT2, "--prompt", PROMPT, "--prompt", "hello world", "--abs-min", "1", "--ratio", "2"]),
        (lambda m: pc.trace(m, PROMPT, answer=" sat", subject="cat", samples=3), ["trace", GPT2, "--prompt", PROMPT, "--answer", " sat", "--subject", "cat", "--samples", "3"]),
        (lambda m: pc.neurons(m, [PROMPT, "hello world", "The cat sat"], batch=2, top=3), ["neurons", GPT2, "--prompt", PROMPT, "--prompt", "hello world", "--prompt", "The cat sat", "--batch", "2", "--top", "3"]),
        (lambda m: pc.hydra(m, ["The cat sat on the"], ["The mat sat on the"], answer=" sat", wrong=" on"), ["hydra", GPT2, "--prompt", "The cat sat on the", "--source", "The mat sat on the", "--answer", " sat", "--wrong", " on"]),
    ],
    ids=["lens", "dla", "heads", "extremes", "trace", "neurons", "hydra"],
)
def test_the_same_result_as_the_cli(gpt2, cli, tmp_path, call, args):
    py = call(gpt2)
    same(py, *cli_run(cli, tmp_path, *args))
    assert py.summary and repr(py)


def test_out_writes_the_cli_folder(gpt2, tmp_path):
    r = pc.heads(gpt2, n=8, block=6, out=tmp_path / "h")
    files = {p.name for p in (tmp_path / "h").iterdir()}
    assert {"result.json", "result.safetensors", "report.html", "manifest.json"} <= files
    assert json.loads((tmp_path / "h" / "result.json").read_text())["heads"] == r.heads
    pc.heads(gpt2, n=8, block=6, out=tmp_path / "h")  # rerunning replaces its own run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a patchclamp run"):
        pc.heads(gpt2, n=8, block=6, out=tmp_path / "mine")
    pc.heads(gpt2, n=8, block=6, out=tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(FileExistsError, match="complete"):
        pc.dla(gpt2, PROMPT, answer=" sat", out=tmp_path / "h")  # another command's run
    with pytest.raises(ValueError, match="inside"):
        pc.heads(gpt2, n=8, block=6, out=MODELS / "gpt2" / "report")  # never inside the model


def test_analysis_errors(gpt2):
    with pytest.raises(ValueError, match="exactly one"):
        pc.dla(gpt2, PROMPT, answer=" cat")
    with pytest.raises(ValueError, match="does not occur"):
        pc.trace(gpt2, PROMPT, answer=" sat", subject="dog")
    with pytest.raises(ValueError, match="noise"):
        pc.trace(gpt2, PROMPT, answer=" sat", subject=[2, 3], noise=0.0)
    with pytest.raises(ValueError, match="kind"):
        pc.trace(gpt2, PROMPT, answer=" sat", subject=[2], kind="ffn")
    with pytest.raises(ValueError, match="labels"):
        pc.neurons(gpt2, [PROMPT, "hello"], labels=["en"])
    with pytest.raises(AttributeError, match="no field"):
        pc.heads(gpt2, n=4, block=4).nonexistent


def test_localize_equals_the_cli(gpt2, cli, tmp_path):
    stim = ["The cat sat on the mat", "The cat sat again", "A cat on a mat"]
    ctrl = ["hello world", "world of hello", "hello again world"]
    (tmp_path / "s.txt").write_text("\n".join(stim) + "\n")
    (tmp_path / "c.txt").write_text("\n".join(ctrl) + "\n")
    (tmp_path / "e.txt").write_text("\n".join(stim + ctrl) + "\n")
    py = pc.localize(gpt2, stim, ctrl, fraction=0.1, eval=stim + ctrl, random_draws=3)
    same(py, *cli_run(cli, tmp_path, "localize", GPT2, "--stimuli", str(tmp_path / "s.txt"), "--control",
                      str(tmp_path / "c.txt"), "--fraction", "0.1", "--eval", str(tmp_path / "e.txt"),
                      "--random-draws", "3"))
    assert py.ablation is not None
    with pytest.raises(ValueError, match="units"):
        pc.localize(gpt2, stim, ctrl, units="attn")


def test_probe_equals_the_cli(gpt2, cli, tmp_path):
    rows = [("The cat sat on the mat", "cat"), ("A cat sat", "cat"), ("The cat again", "cat"), ("cat cat", "cat"),
            ("hello world", "hi"), ("world hello", "hi"), ("hello again", "hi"), ("hello hello", "hi")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows))
    py = pc.probe(gpt2, [t for t, _ in rows], [l for _, l in rows], test_fraction=0.25)
    same(py, *cli_run(cli, tmp_path, "probe", GPT2, "--prompts", str(tmp_path / "p.jsonl"), "--test-fraction", "0.25"))
    assert len(py.probes) == 2
    with pytest.raises(ValueError, match="labels"):
        pc.probe(gpt2, ["a b", "c d"], ["x"])
    with pytest.raises(ValueError, match="pooling"):
        pc.probe(gpt2, ["a b", "c d"], ["x", "y"], pooling="max")
