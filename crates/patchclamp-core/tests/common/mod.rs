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
