// Shared checks, included with `#[path]` by the targets that produce signals.
#![allow(dead_code)]

use rollbackd::model::Signal;

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
