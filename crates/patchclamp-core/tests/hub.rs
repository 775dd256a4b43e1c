//! Loading by repo id from the Hugging Face cache layout (no network, ever).

use std::path::PathBuf;

use candle_core::Device;
use patchclamp_core::load;

/// Lays a fixture out as `$HF_HOME/hub/models--ORG--NAME/{refs/main, snapshots/REV/}`.
#[test]
fn loads_from_hf_cache_by_repo_id() {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    let home = std::env::temp_dir().join(format!("pc-hfhome-{}", std::process::id()));
    let entry = home.join("hub").join("models--tiny-org--tiny-llama");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = entry.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(entry.join("refs")).unwrap();
    std::fs::write(entry.join("refs").join("main"), rev).unwrap();
    for e in std::fs::read_dir(&fixture).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
    }
    // This test binary holds this one test, so setting the variable races with nothing.
    unsafe { std::env::set_var("HF_HOME", &home) };
    unsafe { std::env::remove_var("HF_HUB_CACHE") };

    let m = load("tiny-org/tiny-llama", &Device::Cpu).unwrap();
    assert_eq!(m.files.dir, snap);
    assert_eq!(
        m.files.weights.len(),
        4,
        "sharded checkpoint read through its index"
    );
    assert_eq!(m.model.cfg.family, "llama");
    let by_rev = load(&format!("tiny-org/tiny-llama@{rev}"), &Device::Cpu).unwrap();
    assert_eq!(by_rev.files.dir, snap);

    let e = load("tiny-org/other", &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            &home
                .join("hub")
                .join("models--tiny-org--other")
                .display()
                .to_string()
        ),
        "{e}"
    );
    std::fs::remove_dir_all(&home).unwrap();
}
