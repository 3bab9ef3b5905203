//! `rollbackd::ingest::grafana`: `parse` on arbitrary bytes (never panics; accepted signals are
//! sane) and `verify_signature` on a fuzzed signature header, timestamp header and body. Input
//! layout for the signature: the first line is `X-Grafana-Alerting-Signature`, the second
//! `X-Grafana-Alerting-Signature-Timestamp` (a line of exactly `-` means "no header"), the rest
//! is the body.
//!
//! Properties: nothing panics (timestamps at the ends of i64 included); a pass means the header
//! held the real HMAC of the (timestamp and) body and a timestamp within the window; the real
//! signature of a fresh timestamp always passes; an empty secret never verifies anything.
#![no_main]

use std::time::Duration;

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rollbackd::ingest::grafana;
use sha2::Sha256;

#[path = "common.rs"]
mod common;

const SECRET: &str = "grafana-fuzz-secret";
const NOW: i64 = 1_790_000_000;
const MAX_AGE: Duration = Duration::from_secs(300);

fn sign(secret: &str, ts: Option<&str>, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    if let Some(ts) = ts {
        mac.update(ts.as_bytes());
        mac.update(b":");
    }
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn line(data: &[u8]) -> (Option<String>, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let l = &data[..i];
            let v = (l != b"-").then(|| String::from_utf8_lossy(l).into_owned());
            (v, &data[i + 1..])
        }
        None => (None, data),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(signals) = grafana::parse(data) {
        common::check_signals(&signals, Some(256));
    }

    let (sig, rest) = line(data);
    let (ts, body) = line(rest);
    let verdict =
        grafana::verify_signature(SECRET, sig.as_deref(), ts.as_deref(), body, NOW, MAX_AGE);
    if verdict.is_ok() {
        let real = sign(SECRET, ts.as_deref(), body);
        let given = sig.as_deref().unwrap_or("").trim().to_ascii_lowercase();
        assert_eq!(given, real, "accepted a signature that is not the real HMAC");
        if let Some(ts) = ts.as_deref() {
            let at: i64 = ts.trim().parse().expect("accepted a timestamp that is not a number");
            assert!(NOW.abs_diff(at) <= MAX_AGE.as_secs(), "accepted a stale timestamp {at}");
        }
    }
    // The real signature of a fresh timestamp passes; the empty secret never does.
    let fresh = NOW.to_string();
    let good = sign(SECRET, Some(&fresh), body);
    assert_eq!(
        grafana::verify_signature(SECRET, Some(&good), Some(&fresh), body, NOW, MAX_AGE),
        Ok(())
    );
    let empty = sign("", ts.as_deref(), body);
    assert!(
        grafana::verify_signature("", Some(&empty), ts.as_deref(), body, NOW, MAX_AGE).is_err()
    );
});
