"""SAEs from Python: SAELens folders load and encode as SAELens does (the committed references),
splice into passes with and without the error term, edit latents, train and evaluate as the
CLI does, with the CLI's numbers."""

import json
import subprocess

import numpy as np
import pytest

import patchclamp as pc

from conftest import ROOT, read_safetensors

SAES = ROOT / "tests" / "fixtures" / "saes"
CORPUS = ROOT / "tests" / "fixtures" / "corpus.txt"
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return read_safetensors(SAES / "reference.safetensors")


@pytest.fixture(scope="module")
def prompt():
    return read_safetensors(ROOT / "tests" / "fixtures" / "models" / "gpt2" / "reference.safetensors")["tokens.0"]


@pytest.mark.parametrize("name", ["standard-resid", "topk-resid", "jumprelu-mlp", "gated-resid", "standard-z", "pre6-topk", "scaled-standard"])
def test_spliced_points_equal_saelens(gpt2, ref, prompt, name):
    sae = pc.SAE.load_from_disk(SAES / name)
    _, cache = gpt2.run_with_cache(prompt[None, :], saes=[sae])
    for site in ["input", "acts_pre", "acts_post", "recons", "output"]:
        want = ref[f"{name}.plain.hook_sae_{site}"]
        got = cache[f"{sae.hook_name}.hook_sae_{site}"]
        assert got.shape == want.shape, site
        assert np.abs(got - want).max() < TOL, (name, site)
    # encode on the recorded activation gives the spliced latents.
    x = cache[sae.hook_name]
    np.testing.assert_allclose(sae.encode(x), cache[f"{sae.hook_name}.hook_sae_acts_post"], atol=1e-6)


def test_weights_config_and_round_trip(tmp_path):
    sae = pc.SAE.load_from_disk(SAES / "gated-resid")
    assert sae.W_enc.shape == (32, 40) and sae.W_dec.shape == (40, 32) and sae.b_enc is None
    assert sae.architecture == "gated" and sae.cfg.d_sae == 40 and sae.cfg.metadata["hook_name"] == "blocks.1.hook_resid_post"
    out = sae.save_model(tmp_path / "copy")
    back = pc.SAE.load_from_disk(out)
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    assert np.array_equal(back.encode(x), sae.encode(x))
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "gated"


def test_error_term_keeps_the_model_exact_and_latents_steer(gpt2, prompt):
    sae = pc.SAE.load_from_disk(SAES / "standard-resid")
    plain = gpt2(prompt[None, :])
    gpt2.add_sae(sae, use_error_term=True)
    try:
        assert np.array_equal(gpt2(prompt[None, :]), plain), "bit for bit with the error term"
        assert any("hook_sae_acts_post" in n for n in gpt2.hook_names())
        # A latent edited through a Python hook and through the declarative op: the same logits.
        j = 3

        def zero(acts, hook):
            acts[..., j] = 0.0
            return acts

        a = gpt2.run_with_hooks(prompt[None, :], fwd_hooks=[("blocks.0.hook_resid_post.hook_sae_acts_post", zero)])
        b = gpt2(prompt[None, :], interventions=[{"at": "blocks.0.hook_resid_post.hook_sae_acts_post",
                                                   "select": {"units": [j]}, "op": {"kind": "zero"}}])
        assert np.array_equal(a, b)
    finally:
        gpt2.reset_saes()
    assert not any("hook_sae" in n for n in gpt2.hook_names())
    assert np.abs(gpt2.run_with_saes(prompt[None, :], [sae]) - plain).max() > 1e-3, "without the error term it replaces"


def test_errors(gpt2):
    with pytest.raises(FileNotFoundError):
        pc.SAE.load_from_disk("/nonexistent/sae")
    sae = pc.SAE.load_from_disk(SAES / "standard-resid")
    with pytest.raises(ValueError, match="d_in = 32 but the activation has 96"):
        sae.encode(np.zeros((2, 96), np.float32))
    with pytest.raises(KeyError, match="no SAE is spliced"):
        gpt2.run_with_cache("the cat", names_filter="blocks.1.hook_resid_post.hook_sae_acts_post")
    with pytest.raises(ValueError, match="k applies to arch"):
        pc.sae.train(gpt2, "blocks.0.hook_resid_post", CORPUS, d_sae=64, tokens=100, out="/tmp/x", arch="standard", k=4)


def test_train_and_evaluate_equal_the_cli(gpt2, cli, tmp_path):
    seen = []
    run = pc.sae.train(gpt2, "blocks.0.hook_resid_post", CORPUS, d_sae=64, tokens=4000, batch=200, k=4,
                       context_size=32, out=tmp_path / "py", progress=lambda *a: seen.append(a))
    assert len(seen) == 20 and run.last["step"] == 20
    subprocess.run([cli, "sae", "train", str(ROOT / "tests/fixtures/models/gpt2"), "--hook", "blocks.0.hook_resid_post",
                    "--corpus", str(CORPUS), "--arch", "topk", "--k", "4", "--d-sae", "64", "--tokens", "4000",
                    "--batch", "200", "--context-size", "32", "--out", str(tmp_path / "cli")], check=True, capture_output=True)
    py_w = (run.sae_path / "sae_weights.safetensors").read_bytes()
    assert py_w == (tmp_path / "cli" / "sae" / "sae_weights.safetensors").read_bytes(), "one function, the same bits"
    steps, l0 = run.curve("l0")
    assert steps[-1] == 20 and np.all(l0 <= 4.0)
    m = pc.sae.evaluate(run.sae, gpt2, CORPUS, contexts=8, context_size=32)
    out = subprocess.run([cli, "sae", "eval", str(run.sae_path), str(ROOT / "tests/fixtures/models/gpt2"), "--corpus",
                          str(CORPUS), "--contexts", "8", "--context-size", "32", "--json"], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)["metrics"] == m.to_dict()["metrics"]
    assert m.l0 <= 4.0 and np.isfinite(m.ce_loss_score) and m.frequencies.shape == (64,)


def test_features_and_contrast_equal_the_cli(gpt2, cli, tmp_path):
    sae_dir = SAES / "standard-resid"
    d = pc.sae.features(sae_dir, gpt2, CORPUS, tmp_path / "py", latents=[0, 5, 7], contexts=8, context_size=32)
    assert [f["index"] for f in d.features] == [0, 5, 7]
    assert (d.path / "features" / "5.html").is_file() and (d.path / "index.html").is_file()
    np_feat = d.neuronpedia["features"][0]
    for k in ["pos_str", "neg_str", "frac_nonzero", "freq_hist_data_bar_heights", "activations"]:
        assert k in np_feat
    subprocess.run([cli, "sae", "features", str(sae_dir), str(ROOT / "tests/fixtures/models/gpt2"), "--corpus", str(CORPUS),
                    "--latents", "0,5,7", "--contexts", "8", "--context-size", "32", "--out", str(tmp_path / "cli")],
                   check=True, capture_output=True)
    assert json.loads((tmp_path / "cli" / "result.json").read_text()) == d.data
    # Top examples are sorted by activation and centred on it.
    for f in d.features:
        maxes = [e["max_value"] for e in f["top"]]
        assert maxes == sorted(maxes, reverse=True)
        for e in f["top"]:
            assert e["values"][e["centre"]] == e["max_value"]
    c = pc.sae.contrast(sae_dir, gpt2, ["Mary went to", "John saw the"], ["0123 + - *", "( ) [ ]"], top=3)
    assert len(c["top_a"]) == 3 and c["top_a"][0]["difference"] >= c["top_a"][-1]["difference"]
    assert c["top_b"][0]["difference"] <= 0


def test_lab_sae_toy_runs_from_python(tmp_path):
    r = pc.lab.run("sae-toy", out=tmp_path / "k11", steps=300)
    assert (r.path / "report.html").is_file() and any("MMCS" in l for l in r.lines)


def test_harvest_then_train_from_the_store(gpt2, tmp_path):
    info = pc.sae.harvest(gpt2, "blocks.0.hook_resid_post", CORPUS, tokens=2000, out=tmp_path / "store", context_size=32,
                          shard_rows=700)
    assert info["rows"] == 2000 and len(info["shards"]) == 3 and info["d_in"] == 32
    run = pc.sae.train(gpt2, "blocks.0.hook_resid_post", None, d_sae=32, tokens=2000, batch=200, k=2,
                       activations=tmp_path / "store", out=tmp_path / "run")
    assert run.last["step"] == 10
    with pytest.raises(ValueError, match="fewer than"):
        pc.sae.train(gpt2, "blocks.0.hook_resid_post", None, d_sae=32, tokens=4000, batch=200, k=2,
                     activations=tmp_path / "store", out=tmp_path / "run2")


def test_generate_with_a_spliced_sae_equals_the_cli(gpt2, cli):
    sae = pc.SAE.load_from_disk(SAES / "standard-resid")
    steer = [{"at": "blocks.0.hook_resid_post.hook_sae_acts_post", "select": {"units": [3, 11], "positions": "generated"},
              "op": {"kind": "add", "vector": 40.0}}]
    plain = gpt2.generate("the cat", max_new_tokens=6, do_sample=False, return_type="tokens")
    same = gpt2.generate("the cat", max_new_tokens=6, do_sample=False, return_type="tokens", saes=[(sae, True)])
    assert np.array_equal(plain, same)
    g = gpt2.generate("the cat", max_new_tokens=6, do_sample=False, return_generations=True, saes=[(sae, True)],
                      interventions=steer, record="blocks.0.hook_resid_post.hook_sae_acts_post")[0]
    ivs = ROOT / "target" / "sae-steer.json"
    ivs.write_text(json.dumps(steer))
    out = subprocess.run([cli, "generate", str(ROOT / "tests/fixtures/models/gpt2"), "--prompt", "the cat", "--max-new-tokens", "6",
                          "--sae", str(SAES / "standard-resid"), "--error-term", "--intervene", str(ivs), "--json"],
                         check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)["generations"][0]["tokens"] == g.tokens
    assert g.cache["blocks.0.hook_resid_post.hook_sae_acts_post"].shape[-1] == 64


def test_analyses_run_with_attached_saes(gpt2):
    sae = pc.SAE.load_from_disk(SAES / "standard-resid")
    plain = pc.lens(gpt2, "the cat sat on").to_dict()
    gpt2.add_sae(sae, use_error_term=True)
    try:
        assert pc.lens(gpt2, "the cat sat on").to_dict() == plain, "the error term: the plain model's numbers"
        gpt2.add_sae(sae, use_error_term=False)
        assert pc.lens(gpt2, "the cat sat on").to_dict() != plain
    finally:
        gpt2.reset_saes()
    assert pc.lens(gpt2, "the cat sat on").to_dict() == plain
