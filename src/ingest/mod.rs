//! Ingress parsers: each source's payload in, normalised [`Signal`]s or [`Release`]s out.
//! Parsers are pure (bytes and `now` in); authentication happens before them, decisions after.
//! Every error names the field that is wrong.

pub mod alertmanager;
pub mod grafana;
pub mod pagerduty;
pub mod releases;
pub mod signals;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::model::Labels;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct IngestError {
    pub message: String,
}

impl IngestError {
    pub fn new(message: impl Into<String>) -> IngestError {
        IngestError {
            message: message.into(),
        }
    }
}

/// Parses JSON with a message that says where it broke.
pub fn json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, IngestError> {
    serde_json::from_slice(body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "is not valid JSON"
            }
            _ => "does not have the expected shape",
        };
        IngestError::new(format!("{what} body {kind}: {e}"))
    })
}

/// An RFC 3339 time; Go's zero time (`0001-01-01T00:00:00Z`) means "not set".
pub fn time(field: &str, v: Option<&str>) -> Result<Option<Timestamp>, IngestError> {
    let Some(s) = v.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ts: Timestamp = s
        .parse()
        .map_err(|e| IngestError::new(format!("{field}: `{s}` is not an RFC 3339 time ({e})")))?;
    if ts.as_second() <= -62_135_596_800 {
        return Ok(None);
    }
    Ok(Some(ts))
}

/// A stable key for an alert that came without one: a hash of its sorted labels.
pub fn label_fingerprint(labels: &Labels) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xff]);
    }
    let d = h.finalize();
    hex::encode(&d[..8])
}
