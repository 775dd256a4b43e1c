"""Generation: the cached decode equals a full recompute each step, interventions included; the
Python face gives the CLI's tokens; control vectors, recordings, batches and seeds."""

import json
import subprocess

import numpy as np
import pytest

import patchclamp as pc
from conftest import ROOT, MODELS

CV = ROOT / "tests" / "fixtures" / "control-vectors" / "gpt2-fixture.gguf"


def greedy_by_recompute(model, prompt, n, interventions=None):
    seq = list(prompt)
    for _ in range(n):
        logits = model(np.array(seq), interventions=interventions)
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_equals_full_recompute(family):
    m = pc.load(MODELS / family)
    prompt = [0, 275, 262, 261]
    out = m.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False)
    assert out.shape == (1, 12)
    assert out[0, 4:].tolist() == greedy_by_recompute(m, prompt, 8)


def test_steered_generation_equals_steered_recompute(gpt2):
    iv = [{"at": "blocks.0.hook_resid_post", "op": {"kind": "add", "vector": (np.sin(np.arange(32)) * 3).tolist()}}]
    prompt = [0, 275, 262, 261]
    out = gpt2.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False, interventions=iv)
    assert out[0, 4:].tolist() == greedy_by_recompute(gpt2, prompt, 8, iv)
    assert out[0, 4:].tolist() != greedy_by_recompute(gpt2, prompt, 8), "the steer changed the text"
    as_array = [{**iv[0], "op": {**iv[0]["op"], "vector": np.sin(np.arange(32)) * 3}}]
    assert np.array_equal(gpt2.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                                        interventions=as_array), out), "a numpy vector steers as its list does"


def cli_tokens(cli, *args):
    out = subprocess.run([cli, "generate", str(MODELS / "gpt2"), *args, "--json"], capture_output=True, text=True, check=True)
    return [g["tokens"] for g in json.loads(out.stdout)["generations"]]


def test_same_tokens_as_the_cli(gpt2, cli):
    g = gpt2.generate("The cat", max_new_tokens=6, temperature=0.8, top_k=20, seed=7, return_generations=True)
    assert [g[0].tokens] == cli_tokens(cli, "--prompt", "The cat", "--max-new-tokens", "6", "--temperature", "0.8", "--top-k", "20", "--seed", "7")
    steered = gpt2.generate("The cat", max_new_tokens=6, do_sample=False, control_vectors=[(CV, 5.0)], return_generations=True)
    assert [steered[0].tokens] == cli_tokens(cli, "--prompt", "The cat", "--max-new-tokens", "6", "--control-vector", f"{CV}:5")
    plain = gpt2.generate("The cat", max_new_tokens=6, do_sample=False, return_generations=True)
    assert steered[0].tokens != plain[0].tokens


def test_control_vector_is_the_add_intervention(gpt2):
    ivs = json.loads(gpt2._m.control_vector(str(CV), 1.5))
    assert all(iv["op"]["kind"] == "add" and iv["op"]["coef"] == 1.5 for iv in ivs)
    a = gpt2.generate([0, 275], max_new_tokens=5, do_sample=False, control_vectors=[(CV, 1.5)])
    b = gpt2.generate([0, 275], max_new_tokens=5, do_sample=False, interventions=ivs)
    assert np.array_equal(a, b)
    late = gpt2.generate([0, 275], max_new_tokens=5, do_sample=False, control_vectors=[{"path": CV, "scale": 1.5, "after_prompt": True, "layers": (1, 1)}])
    assert late.shape == a.shape
    with pytest.raises(ValueError, match="layers"):
        gpt2.generate([0, 275], control_vectors=[{"path": CV, "layers": (1, 5)}])
    with pytest.raises(FileNotFoundError):
        gpt2.generate([0, 275], control_vectors=["/nonexistent.gguf"])


def test_recordings_equal_a_forward_over_the_sequence(gpt2):
    g = gpt2.generate([0, 275, 262], max_new_tokens=5, do_sample=False, stop_at_eos=False, record="blocks.1.hook_resid_post", return_generations=True)[0]
    ran = g.prompt_tokens + g.tokens[:-1]  # the last token was never fed back
    _, cache = gpt2.run_with_cache(np.array(ran), names_filter="blocks.1.hook_resid_post")
    got = g.cache["blocks.1.hook_resid_post"]
    assert got.shape == (1, len(ran), 32)
    assert np.abs(got - cache["blocks.1.hook_resid_post"]).max() < 1e-5


def test_text_in_text_out_and_batches(gpt2):
    text = gpt2.generate("The cat", max_new_tokens=4, do_sample=False)
    assert isinstance(text, str) and text.startswith("<|endoftext|>The cat")
    both = gpt2.generate(["The cat", "hello world sat"], max_new_tokens=4, do_sample=False, return_generations=True)
    alone = [gpt2.generate(p, max_new_tokens=4, do_sample=False, return_generations=True)[0] for p in ["The cat", "hello world sat"]]
    assert [g.tokens for g in both] == [g.tokens for g in alone]
    one_at_a_time = gpt2.generate(["The cat", "hello world sat"], max_new_tokens=4, do_sample=False, batch=1, return_generations=True)
    assert [g.tokens for g in one_at_a_time] == [g.tokens for g in both]


def test_seeds_and_stops(gpt2):
    a = gpt2.generate("The", max_new_tokens=8, seed=3, return_generations=True)[0].tokens
    assert a == gpt2.generate("The", max_new_tokens=8, seed=3, return_generations=True)[0].tokens
    g = gpt2.generate("The cat", max_new_tokens=20, do_sample=False, stop=["at"], return_generations=True)[0]
    assert g.stop == "callback" and "at" in g.text
