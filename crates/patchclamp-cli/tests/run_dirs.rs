//! Output folders at the command line: a manifest written last, reruns that replace the whole
//! earlier set, and `--force` that writes beside files patchclamp did not write.

mod common;

use common::{bin, fixture, ok, tmp};

fn manifest(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_rerun_replaces_the_earlier_set_and_the_manifest_lists_it() {
    let out = tmp("rundir-rerun");
    let lens = |prompts: &[&str]| {
        let mut c = bin();
        c.args(["lens", &fixture("gpt2")]);
        for p in prompts {
            c.args(["--prompt", p]);
        }
        ok(c.arg("--out").arg(&out).output().unwrap())
    };
    lens(&["The cat sat", "on the mat"]);
    let m = manifest(&out);
    assert_eq!(m["command"], "lens");
    assert_eq!(m["complete"], true);
    let files: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "result.json",
        "result.safetensors",
        "lens_0.svg",
        "lens_1.png",
        "report.html",
    ] {
        assert!(files.contains(&f), "{f} in {files:?}");
        assert!(out.join(f).is_file(), "{f} on disk");
    }
    lens(&["The cat sat"]);
    assert!(out.join("lens_0.svg").is_file());
    assert!(
        !out.join("lens_1.svg").exists() && !out.join("lens_1.png").exists(),
        "the second prompt's figures belonged to the earlier run"
    );
    assert!(!manifest(&out)["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "lens_1.svg"));
}

#[test]
fn force_writes_beside_foreign_files_and_keeps_them() {
    let out = tmp("rundir-force");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    ok(bin()
        .args([
            "heads",
            &fixture("gpt2"),
            "--n",
            "2",
            "--block",
            "4",
            "--force",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(manifest(&out)["complete"], true);
}
