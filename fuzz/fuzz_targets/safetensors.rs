//! `cargo fuzz run safetensors`: see `patchclamp_report::fuzzing::safetensors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchclamp_report::fuzzing::safetensors(data));
