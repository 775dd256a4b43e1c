//! `cargo fuzz run experiment`: see `patchclamp_report::fuzzing::experiment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchclamp_report::fuzzing::experiment(data));
