//! Fuzz target `http_response`: a runtime API's HTTP reply through hyper's
//! client connection, the size cap and the Docker/Nomad reply handling; the
//! decoder's request/status line parsing.
//! The harness and its invariants live in imds_observer::fuzzing, where
//! `cargo test` replays this target's corpus too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imds_observer::fuzzing::http_response(data);
});
