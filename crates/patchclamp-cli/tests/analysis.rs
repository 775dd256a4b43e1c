//! The analysis commands: results, figures and pages, labelled files, lab checkpoints.

mod common;

use common::{analysis, bin, fails, fixture, ok, tmp};

#[test]
fn analysis_commands_write_results_plots_and_pages() {
    let m = fixture("gpt2");
    let d = tmp("analysis");
    let prompt = "When Mary and John went to the store, John gave a drink to";
    let v = analysis(
        &["lens", &m, "--prompt", prompt, "--track", "id:17"],
        &d.join("lens"),
        &["lens_0"],
    );
    let lens = &v["lens"][0];
    assert_eq!(lens["layers"].as_array().unwrap().len(), 3);
    assert_eq!(
        lens["top"][2].as_array().unwrap().len(),
        lens["tokens"].as_array().unwrap().len()
    );
    assert!(d.join("lens/lens_0.png").exists());

    let v = analysis(
        &[
            "dla",
            &m,
            "--prompt",
            prompt,
            "--prompt",
            "The cat sat on the",
            "--target",
            "id:17",
            "--baseline",
            "id:42",
        ],
        &d.join("dla"),
        &["dla"],
    );
    let dla = &v["dla"];
    for row in 0..2 {
        let sum: f64 = dla["components"][row]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum::<f64>()
            + dla["constant"][row].as_f64().unwrap();
        assert!((sum - dla["total"][row].as_f64().unwrap()).abs() < 1e-4);
    }

    let v = analysis(
        &["heads", &m, "--n", "8", "--block", "6"],
        &d.join("heads"),
        &["prev_token", "induction", "sink", "copying"],
    );
    assert_eq!(
        v["heads"]["scores"]["induction"].as_array().unwrap().len(),
        2
    );

    let v = analysis(
        &[
            "extremes",
            &m,
            "--prompt",
            prompt,
            "--prompt",
            "The cat sat on the mat",
        ],
        &d.join("extremes"),
        &["sink", "value_drain", "residual_peak"],
    );
    assert_eq!(v["extremes"]["prompts"], 2);

    let v = analysis(
        &[
            "hydra",
            &m,
            "--prompt",
            prompt,
            "--source",
            "When John and Mary went to the store, John gave a drink to",
            "--target",
            "id:17",
        ],
        &d.join("hydra"),
        &["effects", "compensation"],
    );
    // Resampling from the swapped-name prompt moves the logit somewhere (its own outputs
    // would change nothing, so that source is refused).
    let total: Vec<f64> = v["hydra"]["total"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(
        total.iter().all(|x| x.is_finite()) && total.iter().any(|x| x.abs() > 1e-5),
        "{total:?}"
    );
    // Bad input: a token that is several tokens, an unknown hook point, no prompts.
    let err = fails(
        bin()
            .args([
                "dla",
                &m,
                "--prompt",
                prompt,
                "--target",
                "Mary and John",
                "--out",
            ])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("exactly one"), "{err}");
    let err = fails(
        bin()
            .args(["heads", &m, "--block", "0", "--out"])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("block"), "{err}");
    let err = fails(
        bin()
            .args(["extremes", &m, "--out"])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("no prompts"), "{err}");
}

#[test]
fn census_probe_and_localizer_stream_labelled_files() {
    let m = fixture("gpt2");
    let d = tmp("census");
    std::fs::create_dir_all(&d).unwrap();
    // Two "languages": token ids from disjoint ranges, given as ids.
    let mut jsonl = String::new();
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0..40u32 {
        let (lab, base) = if i % 2 == 0 { ("x", 10) } else { ("y", 60) };
        let toks: Vec<u32> = (0..8).map(|k| base + (i * 7 + k * 3) % 20).collect();
        jsonl.push_str(&format!("{{\"tokens\": {toks:?}, \"label\": \"{lab}\"}}\n"));
        let s = if i % 2 == 0 { &mut a } else { &mut b };
        s.push_str(&format!("{{\"tokens\": {toks:?}}}\n"));
    }
    std::fs::write(d.join("l.jsonl"), &jsonl).unwrap();
    std::fs::write(d.join("a.jsonl"), &a).unwrap();
    std::fs::write(d.join("b.jsonl"), &b).unwrap();
    let file = d.join("l.jsonl").to_string_lossy().into_owned();
    let v = analysis(
        &["neurons", &m, "--prompts", &file, "--batch", "7"],
        &d.join("neurons"),
        &["frequency", "sparsity"],
    );
    assert_eq!(v["census"]["tokens"], 320);
    assert_eq!(
        v["lape"].as_array().unwrap().len(),
        2,
        "two labels → LAPE per label"
    );
    let ap = v["experts"][0]["experts"][0]["ap"].as_f64().unwrap();
    assert!(
        ap > 0.9,
        "disjoint token ranges have expert neurons: AP {ap}"
    );
    let v = analysis(
        &["probe", &m, "--prompts", &file],
        &d.join("probe"),
        &["accuracy"],
    );
    let acc = v["probes"][0]["test_accuracy"].as_f64().unwrap();
    assert!(
        acc >= 0.9,
        "disjoint token ranges are linearly separable: {acc}"
    );
    let (sa, sb) = (d.join("a.jsonl"), d.join("b.jsonl"));
    let v = analysis(
        &[
            "localize",
            &m,
            "--stimuli",
            &sa.to_string_lossy(),
            "--control",
            &sb.to_string_lossy(),
            "--eval",
            &sa.to_string_lossy(),
            "--random-draws",
            "3",
        ],
        &d.join("loc"),
        &["selected_per_layer"],
    );
    assert_eq!(v["localized"]["units"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["ablation"]["random_increases"].as_array().unwrap().len(),
        3
    );
    // Probing without labels is refused with the reason.
    let err = fails(
        bin()
            .args(["probe", &m, "--prompt", "hello", "--out"])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("label"), "{err}");
    let err = fails(
        bin()
            .args([
                "probe",
                &m,
                "--prompts",
                &file,
                "--point",
                "blocks.9.hook_resid_post",
                "--out",
            ])
            .arg(d.join("x"))
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("out of range") || err.contains("layer"),
        "{err}"
    );
}

#[test]
fn extremes_measure_a_trained_bigram_backcopy_checkpoint_from_its_task() {
    let d = tmp("bb");
    std::fs::create_dir_all(&d).unwrap();
    let exp = d.join("bb.toml");
    std::fs::write(
        &exp,
        "name = \"bb\"\n[task]\nkind = \"bigram_backcopy\"\nvocab = 16\nseq_len = 24\ntriggers = 2\n\
         branching = 3\ntable_seed = 0\n[model]\nn_layers = 1\nd_model = 16\nn_heads = 1\nd_mlp = 32\n\
         [train]\nsteps = 6\nbatch = 4\nlr = { lr = 1e-3 }\neval_every = 3\neval_batch = 4\n",
    )
    .unwrap();
    ok(bin()
        .arg("train")
        .arg(&exp)
        .arg("--out")
        .arg(d.join("run"))
        .output()
        .unwrap());
    let ck = d
        .join("run/checkpoint.safetensors")
        .to_string_lossy()
        .into_owned();
    let e = exp.to_string_lossy().into_owned();
    let v = analysis(
        &["extremes", &ck, "--task", &e, "--n", "5"],
        &d.join("ext"),
        &["sink", "prev_trigger"],
    );
    let rep = &v["extremes"];
    assert_eq!(rep["prompts"], 5);
    assert_eq!(
        v["spec"]["triggers"].as_array().unwrap().len(),
        2,
        "the task's triggers"
    );
    assert_eq!(rep["prev_trigger"].as_array().unwrap().len(), 1);
    let sink = rep["sink"][0][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&sink));
}
