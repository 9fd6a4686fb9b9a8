//! Fuzz target `netlink`: an rtnetlink datagram as a link dump, a route and a
//! netns id reply.
//! The harness and its invariants live in imds_observer::fuzzing, where
//! `cargo test` replays this target's corpus too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| imds_observer::fuzzing::netlink(data));
