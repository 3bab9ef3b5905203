//! `rollbackd::ingest::signals::parse` (the generic `POST /v1/signals`, one or a list) on
//! arbitrary bytes: never panics; accepted signals are sane and have at least one label.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(signals) = rollbackd::ingest::signals::parse(data) {
        common::check_signals(&signals, None);
        for s in &signals {
            assert!(!s.labels.is_empty(), "a signal without labels: {s:?}");
        }
    }
});
