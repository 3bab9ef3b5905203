//! `rollbackd::ingest::releases::parse` on arbitrary bytes at a fixed `now`: never panics; an
//! accepted release has template-safe fields (they become step arguments) and is not from the
//! future beyond the 5-minute skew.
#![no_main]

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
    let Ok(r) = rollbackd::ingest::releases::parse(data, now) else {
        return;
    };
    assert_eq!(r.origin, "ci");
    common::check_release(&r, now);
});
