//! `rollbackd::ingest::releases::parse` on arbitrary bytes at a fixed `now`: never panics; an
//! accepted release has template-safe fields (they become step arguments) and is not from the
//! future beyond the 5-minute skew.
#![no_main]

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use rollbackd::model::Release;
use rollbackd::rules::template::value_is_safe;

fn independent_safe(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@+=-".contains(&b))
        && !v.contains("..")
        && !v.starts_with('-')
}

fuzz_target!(|data: &[u8]| {
    let now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
    let Ok(r) = rollbackd::ingest::releases::parse(data, now) else {
        return;
    };
    for (field, v) in [
        ("service", &r.service),
        ("environment", &r.environment),
        ("version", &r.version),
        ("deployment_id", &r.deployment_id),
    ] {
        assert!(v.len() <= 256, "{field} longer than 256");
        assert!(independent_safe(v), "{field} {v:?} accepted but unsafe");
        assert!(value_is_safe(v));
    }
    assert!(!r.service.is_empty() && !r.version.is_empty() && !r.deployment_id.is_empty());
    assert!(
        r.deployed_at.as_second() <= now.as_second() + 300,
        "deployed_at {} too far in the future",
        r.deployed_at
    );
    assert_eq!(r.received_at, now);
    let bytes = serde_json::to_vec(&r).expect("a release serialises");
    let back: Release = serde_json::from_slice(&bytes).expect("a release deserialises");
    assert_eq!(back, r, "JSON round trip changed the release");
});
