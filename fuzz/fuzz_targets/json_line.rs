//! Fuzz target `json_line`: a JSON-lines stream as `report --from` / `tui
//! --from` read it, diagnosed and rendered.
//! The harness and its invariants live in imds_observer::fuzzing, where
//! `cargo test` replays this target's corpus too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imds_observer::fuzzing::json_line(data));
