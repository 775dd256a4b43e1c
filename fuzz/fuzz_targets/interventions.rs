//! `cargo fuzz run interventions`: see `patchclamp_report::fuzzing::interventions`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| patchclamp_report::fuzzing::interventions(data));
