//! `rollbackd::ingest::grafana::parse` on arbitrary bytes: never panics; accepted signals are sane.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(signals) = rollbackd::ingest::grafana::parse(data) {
        common::check_signals(&signals, Some(256));
    }
});
