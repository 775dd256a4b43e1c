//! llama.cpp control vectors: the `gguf` package's file reads back exactly, what patchclamp
//! writes reads back identically, and llama.cpp's rules (F32 1-D, k ≥ 1, one width) hold.

use std::path::{Path, PathBuf};

use patchclamp_lab::steering::{Method, SteeringVectors};
use patchclamp_report::control_vector::ControlVector;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/control-vectors/gpt2-fixture.gguf")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pc-cv-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_gguf_packages_file_reads_back_exactly() {
    let cv = ControlVector::read(&fixture()).unwrap();
    assert_eq!(cv.model_hint, "gpt2");
    let want: Vec<f32> = (0..32)
        .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
        .collect();
    assert_eq!(cv.directions.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(cv.directions[&1], want);
    // Applied at block 1's output, scaled; a range without block 1 applies nothing.
    let ivs = cv.interventions(2.0, None, 2, 32).unwrap();
    assert_eq!(ivs.len(), 1);
    assert_eq!(ivs[0].at.to_string(), "blocks.1.hook_resid_post");
    assert!(cv
        .interventions(1.0, Some((0, 0)), 2, 32)
        .unwrap()
        .is_empty());
    let e = cv.interventions(1.0, None, 2, 64).unwrap_err().to_string();
    assert!(e.contains("width is 64"), "{e}");
}

#[test]
fn what_patchclamp_writes_reads_back_identically() {
    let d = tmp("roundtrip");
    let v = SteeringVectors {
        method: Method::Mean,
        layers: vec![1, 3],
        vectors: vec![vec![0.25, -1.5, 3.0], vec![1e-7, 0.0, -2.0]],
    };
    let cv = ControlVector::from_vectors(&v, "llama").unwrap();
    let p = d.join("v.gguf");
    cv.write(&p).unwrap();
    assert_eq!(ControlVector::read(&p).unwrap(), cv);
    // Block 0 has no slot in the format.
    let zero = SteeringVectors {
        layers: vec![0],
        vectors: vec![vec![1.0]],
        ..v.clone()
    };
    let e = ControlVector::from_vectors(&zero, "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("block 0"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn files_that_are_not_control_vectors_are_refused() {
    let d = tmp("bad");
    let junk = d.join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    assert!(ControlVector::read(&junk).is_err());
    // A GGUF file of another architecture.
    let other = d.join("model.gguf");
    let arch = candle_core::quantized::gguf_file::Value::String("llama".into());
    let t = candle_core::quantized::QTensor::quantize(
        &candle_core::Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    let mut f = std::fs::File::create(&other).unwrap();
    candle_core::quantized::gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("direction.1", &t)],
    )
    .unwrap();
    drop(f);
    let e = ControlVector::read(&other).unwrap_err().to_string();
    assert!(e.contains("not a control vector"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
