//! `patch`, `attribute` and `trace`: sweeps, their files and their refusals.

mod common;

use common::{bin, fails, fixture, ok};

#[test]
fn patch_writes_json_tensors_and_heatmaps() {
    let out = std::env::temp_dir().join(format!("pc-patch-{}", std::process::id()));
    for point in ["resid_pre", "z"] {
        let stdout = ok(bin()
            .args([
                "patch",
                &fixture("gpt2"),
                "--clean",
                "The cat sat on the mat",
            ])
            .args(["--corrupted", "The cat sat on the cat"])
            .args([
                "--answer", ".", "--wrong", ",", "--point", point, "--batch", "7", "--json",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let (rows, cols) = (
            v["n_layers"].as_u64().unwrap() as usize,
            v["n_cols"].as_u64().unwrap() as usize,
        );
        assert_eq!(rows, 2);
        assert_eq!(
            cols,
            if point == "z" {
                4
            } else {
                v["clean_tokens"].as_array().unwrap().len()
            }
        );
        assert_eq!(v["values"].as_array().unwrap().len(), rows * cols);
        // Patching the residual where both runs hold the same values changes nothing, and those
        // variants are the corrupted run itself: at block 0 (the embeddings) every position
        // with the same token, later every position before the first changed token (causal
        // attention).
        let unchanged = v["unchanged"].as_u64().unwrap() as usize;
        if point == "resid_pre" {
            let (c, k) = (&v["clean_tokens"], &v["corrupted_tokens"]);
            let same: Vec<bool> = (0..cols).map(|i| c[i] == k[i]).collect();
            let first = same.iter().position(|s| !s).unwrap();
            let equal = same.iter().filter(|&&s| s).count();
            assert_eq!(unchanged, equal + (rows - 1) * first);
            let values = v["values"].as_array().unwrap();
            for l in 0..rows {
                assert_eq!(
                    values[l * cols],
                    v["corrupt_metric"],
                    "layer {l}, position 0"
                );
            }
        } else {
            assert_eq!(unchanged, 0);
        }
        let t = candle_core::safetensors::load(
            out.join("result.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(t["normalized"].dims(), &[rows, cols]);
        let svg = std::fs::read_to_string(out.join("heatmap.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("normalised recovery"));
        let png = std::fs::read(out.join("heatmap.png")).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
    }
    let err = fails(
        bin()
            .args([
                "patch",
                &fixture("gpt2"),
                "--clean",
                "a b c",
                "--corrupted",
                "a b",
                "--answer",
                ".",
                "--wrong",
                ",",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("same number of tokens"), "{err}");
    let err = fails(
        bin()
            .args([
                "patch",
                &fixture("gpt2"),
                "--clean",
                "a",
                "--corrupted",
                "b",
                "--answer",
                "Mary Mary",
                "--wrong",
                ",",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("must be exactly one"), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn attribute_estimates_the_same_grid_as_patch() {
    let out = std::env::temp_dir().join(format!("pc-attr-{}", std::process::id()));
    let run = |cmd: &str| -> serde_json::Value {
        let stdout = ok(bin()
            .args([
                cmd,
                &fixture("gpt2"),
                "--clean",
                "The cat sat on the mat",
                "--corrupted",
                "The cat sat on the cat",
            ])
            .args([
                "--answer", ".", "--wrong", ",", "--point", "z", "--json", "--out",
            ])
            .arg(out.join(cmd))
            .output()
            .unwrap());
        serde_json::from_str(&stdout).unwrap()
    };
    let (exact, approx) = (run("patch"), run("attribute"));
    assert_eq!(approx["method"], "attribution patching");
    assert_eq!(
        exact["values"].as_array().unwrap().len(),
        approx["values"].as_array().unwrap().len()
    );
    // The sweep's reference runs compute the last position only, the attribution's every
    // position with gradients: equal up to rounding.
    let metric = |v: &serde_json::Value| v["clean_metric"].as_f64().unwrap();
    let (a, b) = (metric(&exact), metric(&approx));
    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
    assert!(out.join("attribute/heatmap.png").is_file());
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn trace_maps_indirect_effects() {
    let out = std::env::temp_dir().join(format!("pc-trace-{}", std::process::id()));
    let stdout = ok(bin()
        .args([
            "trace",
            &fixture("gpt2"),
            "--prompt",
            "The cat sat on the mat",
            "--subject",
            "cat",
            "--answer",
            " t",
        ])
        .args([
            "--samples",
            "2",
            "--kind",
            "mlp",
            "--window",
            "2",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let n = v["n_layers"].as_u64().unwrap() * v["n_positions"].as_u64().unwrap();
    assert_eq!(v["indirect_effect"].as_array().unwrap().len() as u64, n);
    assert_eq!(
        v["config"]["subject"],
        serde_json::json!([2, 3]),
        "\" cat\" is two tokens here"
    );
    assert!(v["total_effect"].as_f64().unwrap() > 0.1);
    assert!(out.join("heatmap.png").is_file() && out.join("result.safetensors").is_file());
    let err = fails(
        bin()
            .args([
                "trace",
                &fixture("gpt2"),
                "--prompt",
                "The cat sat",
                "--subject",
                "dog",
                "--answer",
                " t",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert!(err.contains("does not occur in the prompt"), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}
