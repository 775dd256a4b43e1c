//! `cargo fuzz run prompts`: see `patchclamp_report::fuzzing::prompts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchclamp_report::fuzzing::prompts(data));
