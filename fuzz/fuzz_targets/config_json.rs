//! `cargo fuzz run config_json`: see `patchclamp_report::fuzzing::config_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchclamp_report::fuzzing::config_json(data));
