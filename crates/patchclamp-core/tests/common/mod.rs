//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

/// Path of a committed fixture model (or of a file under tests/fixtures with "../NAME").
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// The same path as a string, for `load`.
pub fn fixture(name: &str) -> String {
    fixture_path(name).to_string_lossy().into_owned()
}

#[allow(unused_imports)] // not every test binary compares tensors
pub use patchclamp_core::testing::max_diff;

/// A fixture's `reference.safetensors` (written by `tools/fixtures/`), by tensor name.
pub fn reference(name: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(
        fixture_path(name).join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("reference.safetensors (regenerate with tools/fixtures/regenerate.sh)")
}

/// The token ids of a reference's prompt `i`.
pub fn reference_tokens(
    r: &std::collections::HashMap<String, candle_core::Tensor>,
    i: usize,
) -> Vec<u32> {
    r[&format!("tokens.{i}")]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Logits with each position's mean removed (`center_unembed` shifts them by a constant).
pub fn centered(x: &candle_core::Tensor) -> candle_core::Tensor {
    x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1).unwrap())
        .unwrap()
}
