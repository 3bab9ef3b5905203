//! The generic `POST /v1/signals` body: `{"labels", "status", "starts_at", "ends_at", "key"}`, or a
//! list of them.

use serde::Deserialize;

use super::{IngestError, json, label_fingerprint, time};
use crate::model::{Labels, Signal, SignalStatus, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    labels: Labels,
    status: String,
    starts_at: Option<String>,
    ends_at: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Raw),
    Many(Vec<Raw>),
}

pub fn parse(body: &[u8]) -> Result<Vec<Signal>, IngestError> {
    let raws = match json::<OneOrMany>(body, "signal")? {
        OneOrMany::One(r) => vec![r],
        OneOrMany::Many(v) => v,
    };
    raws.into_iter()
        .map(|r| {
            if r.labels.is_empty() {
                return Err(IngestError::new("labels: at least one label is needed"));
            }
            if r.key.as_ref().is_some_and(|k| k.len() > 256) {
                return Err(IngestError::new("key: longer than 256 characters"));
            }
            let status = match r.status.as_str() {
                "firing" => SignalStatus::Firing,
                "resolved" => SignalStatus::Resolved,
                other => {
                    return Err(IngestError::new(format!(
                        "status: `{other}` is not firing or resolved"
                    )));
                }
            };
            Ok(Signal {
                source: Source::Signal,
                key: r
                    .key
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| label_fingerprint(&r.labels)),
                starts_at: time("starts_at", r.starts_at.as_deref())?,
                ends_at: time("ends_at", r.ends_at.as_deref())?,
                labels: r.labels,
                status,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_many() {
        let s = parse(
            br#"{"labels":{"alertname":"A"},"status":"firing","starts_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].source, Source::Signal);
        let s = parse(br#"[{"labels":{"a":"1"},"status":"firing","key":"k"},{"labels":{"a":"2"},"status":"resolved"}]"#)
            .unwrap();
        assert_eq!(s[0].key, "k");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn rejects_bad_fields() {
        assert!(
            parse(br#"{"labels":{},"status":"firing"}"#)
                .unwrap_err()
                .message
                .contains("labels")
        );
        assert!(
            parse(br#"{"labels":{"a":"b"},"status":"on"}"#)
                .unwrap_err()
                .message
                .contains("status")
        );
        assert!(
            parse(br#"{"labels":{"a":"b"},"status":"firing","starts_at":"soon"}"#)
                .unwrap_err()
                .message
                .contains("starts_at")
        );
    }
}
