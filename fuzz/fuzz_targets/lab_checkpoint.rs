//! `cargo fuzz run lab_checkpoint`: see `patchclamp_report::fuzzing::lab_checkpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchclamp_report::fuzzing::lab_checkpoint(data));
