//! Fuzz target `decode_record`: ring records (wire header + snapshot) through
//! the pipeline, the diagnosis and the report.
//! The harness and its invariants live in imds_observer::fuzzing, where
//! `cargo test` replays this target's corpus too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imds_observer::fuzzing::decode_record(data);
});
