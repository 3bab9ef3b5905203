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

/// What a body must look like, said in every shape error.
const SHAPE: &str = "a signal is an object `{\"labels\": {NAME: VALUE, ..}, \"status\": \"firing\"|\"resolved\", \"starts_at\"?, \"ends_at\"?, \"key\"?}`, and a body is one signal or a list of them";

pub fn parse(body: &[u8]) -> Result<Vec<Signal>, IngestError> {
    let raws = match json::<serde_json::Value>(body, "signal")? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| one(v, &format!("[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        v @ serde_json::Value::Object(_) => vec![one(v, "")?],
        other => {
            return Err(IngestError::new(format!(
                "signal body is {}, not an object or a list: {SHAPE}",
                kind_of(&other)
            )));
        }
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

/// One signal of the body; `at` is its place in a list (`[2]`), empty for a lone signal.
fn one(v: serde_json::Value, at: &str) -> Result<Raw, IngestError> {
    if !v.is_object() {
        return Err(IngestError::new(format!(
            "{at}: is {}, not an object: {SHAPE}",
            kind_of(&v)
        )));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = match (at, path.as_str()) {
            ("", ".") => String::new(),
            (at, ".") => format!("{at}: "),
            ("", p) => format!("{p}: "),
            (at, p) => format!("{at}.{p}: "),
        };
        IngestError::new(format!("signal body: {field}{}; {SHAPE}", e.inner()))
    })
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
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
    fn shape_errors_name_the_field_and_the_expected_shape() {
        for (body, want) in [
            (&br#"{"labels":{"a":"b"}}"#[..], "missing field `status`"),
            (
                br#"{"labels":{"a":"b"},"status":"firing","sev":"x"}"#,
                "unknown field `sev`",
            ),
            (
                br#"{"labels":["a"],"status":"firing"}"#,
                "labels: invalid type",
            ),
            (
                br#"[{"labels":{"a":"b"},"status":"firing"},{"labels":{"a":1},"status":"firing"}]"#,
                "[1].labels.a: invalid type",
            ),
            (
                br#"[{"labels":{"a":"b"},"status":"firing"},"x"]"#,
                "[1]: is a string, not an object",
            ),
            (
                br#""firing""#,
                "signal body is a string, not an object or a list",
            ),
        ] {
            let e = parse(body).unwrap_err().message;
            assert!(e.contains(want), "{e}");
            assert!(e.contains("\"labels\": {NAME: VALUE, ..}"), "{e}");
            assert!(!e.contains("untagged"), "{e}");
        }
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
