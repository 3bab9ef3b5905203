// Shared checks, included with `#[path]` by the targets that produce signals.
#![allow(dead_code)]

use jiff::Timestamp;
use rollbackd::model::{Release, Signal};
use rollbackd::rules::template::value_is_safe;

/// What every accepted signal must satisfy, whatever the bytes were: a usable key, times after
/// Go's zero time (which means "unset"), and a JSON round trip that gives back the same record
/// (the store keeps signals' fields as JSON).
pub fn check_signals(signals: &[Signal], max_key: Option<usize>) {
    for s in signals {
        assert!(!s.key.is_empty(), "empty key accepted: {s:?}");
        if let Some(max) = max_key {
            assert!(s.key.len() <= max, "key longer than {max}: {}", s.key.len());
        }
        for t in [s.starts_at, s.ends_at].into_iter().flatten() {
            assert!(
                t.as_second() > -62_135_596_800,
                "Go zero time (or earlier) kept as a real time: {t}"
            );
        }
        let bytes = serde_json::to_vec(s).expect("a signal serialises");
        let back: Signal = serde_json::from_slice(&bytes).expect("a signal deserialises");
        assert_eq!(&back, s, "JSON round trip changed the signal");
    }
}

fn independent_safe(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@+=-".contains(&b))
        && !v.contains("..")
        && !v.starts_with('-')
}

/// What every accepted release must satisfy, whoever reported it: template-safe fields (they
/// become step arguments, checked here independently of the parser's own check), the required
/// ones present, not from the future beyond the 5-minute skew, received `now`, and a JSON round
/// trip that gives back the same record.
pub fn check_release(r: &Release, now: Timestamp) {
    let revision = r.revision.clone().unwrap_or_default();
    for (field, v) in [
        ("service", &r.service),
        ("environment", &r.environment),
        ("version", &r.version),
        ("deployment_id", &r.deployment_id),
        ("revision", &revision),
    ] {
        assert!(v.len() <= 256, "{field} longer than 256");
        assert!(independent_safe(v), "{field} {v:?} accepted but unsafe");
        assert!(value_is_safe(v));
    }
    assert!(r.revision.as_deref() != Some(""), "an empty revision kept");
    assert!(!r.service.is_empty() && !r.version.is_empty() && !r.deployment_id.is_empty());
    assert!(
        r.deployed_at.as_second() <= now.as_second() + 300,
        "deployed_at {} too far in the future",
        r.deployed_at
    );
    assert_eq!(r.received_at, now);
    let bytes = serde_json::to_vec(r).expect("a release serialises");
    let back: Release = serde_json::from_slice(&bytes).expect("a release deserialises");
    assert_eq!(&back, r, "JSON round trip changed the release");
}
