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
/// A shape error names the field it is in (`alerts[0].labels: invalid type ...`).
pub fn json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, IngestError> {
    let failed = |path: String, e: serde_json::Error| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                return IngestError::new(format!("{what} body is not valid JSON: {e}"));
            }
            _ => "does not have the expected shape",
        };
        match path.as_str() {
            "." | "" => IngestError::new(format!("{what} body {kind}: {e}")),
            p => IngestError::new(format!("{what} body {kind}: {p}: {e}")),
        }
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        failed(path, e.into_inner())
    })?;
    de.end().map_err(|e| failed(String::new(), e))?;
    Ok(v)
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
