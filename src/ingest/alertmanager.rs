//! Alertmanager `webhook_configs` payload, version 4: one [`Signal`] per alert, keyed by its
//! fingerprint. Unknown fields are ignored (newer releases add some).

use serde::Deserialize;

use super::{IngestError, json, label_fingerprint, time};
use crate::model::{Labels, Signal, SignalStatus, Source};

#[derive(Deserialize)]
pub(crate) struct Payload {
    pub version: Option<String>,
    pub alerts: Vec<Alert>,
}

#[derive(Deserialize)]
pub(crate) struct Alert {
    pub status: String,
    pub labels: Labels,
    #[serde(rename = "startsAt")]
    pub starts_at: Option<String>,
    #[serde(rename = "endsAt")]
    pub ends_at: Option<String>,
    pub fingerprint: Option<String>,
}

pub fn parse(body: &[u8]) -> Result<Vec<Signal>, IngestError> {
    let p: Payload = json(body, "Alertmanager webhook")?;
    match p.version.as_deref() {
        Some("4") => {}
        Some(v) => {
            return Err(IngestError::new(format!(
                "version: payload version {v:?} is not supported; rollbackd reads Alertmanager webhook version \"4\""
            )));
        }
        None => {
            return Err(IngestError::new(
                "version: missing; Alertmanager sends \"4\"",
            ));
        }
    }
    signals(p.alerts, Source::Alertmanager)
}

/// Shared by Alertmanager and Grafana, which send the same alert shape.
pub(crate) fn signals(alerts: Vec<Alert>, source: Source) -> Result<Vec<Signal>, IngestError> {
    alerts
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let status = match a.status.as_str() {
                "firing" => SignalStatus::Firing,
                "resolved" => SignalStatus::Resolved,
                other => {
                    return Err(IngestError::new(format!(
                        "alerts[{i}].status: `{other}` is not firing or resolved"
                    )));
                }
            };
            let key = a
                .fingerprint
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| label_fingerprint(&a.labels));
            if key.len() > 256 {
                return Err(IngestError::new(format!(
                    "alerts[{i}].fingerprint: longer than 256 characters"
                )));
            }
            Ok(Signal {
                source,
                starts_at: time(&format!("alerts[{i}].startsAt"), a.starts_at.as_deref())?,
                ends_at: time(&format!("alerts[{i}].endsAt"), a.ends_at.as_deref())?,
                key,
                labels: a.labels,
                status,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"receiver":"rollbackd","status":"firing","alerts":[
      {"status":"firing","labels":{"alertname":"PortalHighErrorRate","service":"portal"},
       "annotations":{},"startsAt":"2026-11-24T10:00:00.123456789Z","endsAt":"0001-01-01T00:00:00Z",
       "generatorURL":"http://p/graph","fingerprint":"c7a1d3f0e5b2a4c6"},
      {"status":"resolved","labels":{"alertname":"X"},"annotations":{},
       "startsAt":"2026-11-24T09:00:00Z","endsAt":"2026-11-24T09:30:00+02:00","fingerprint":""}],
      "groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am",
      "version":"4","groupKey":"{}:{}","truncatedAlerts":0,"notification_reason":1}"#;

    #[test]
    fn one_signal_per_alert() {
        let s = parse(BODY.as_bytes()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].key, "c7a1d3f0e5b2a4c6");
        assert_eq!(s[0].status, SignalStatus::Firing);
        assert_eq!(s[0].ends_at, None, "Go zero time means unset");
        assert_eq!(
            s[0].starts_at.unwrap().to_string(),
            "2026-11-24T10:00:00.123456789Z"
        );
        assert_eq!(s[1].status, SignalStatus::Resolved);
        assert_eq!(s[1].ends_at.unwrap().to_string(), "2026-11-24T07:30:00Z");
        assert_eq!(
            s[1].key.len(),
            16,
            "missing fingerprint falls back to a label hash"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(br#"{"version":"3","alerts":[]}"#).unwrap_err();
        assert!(e.message.contains("version"), "{e}");
        let e = parse(br#"{"version":"4","alerts":[{"status":"boom","labels":{}}]}"#).unwrap_err();
        assert!(e.message.contains("alerts[0].status"), "{e}");
        let e = parse(
            br#"{"version":"4","alerts":[{"status":"firing","labels":{},"startsAt":"yesterday"}]}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("alerts[0].startsAt"), "{e}");
        let e = parse(br#"{"version":"4","alerts":[{"status":"firing","labels":{"a":1}}]}"#)
            .unwrap_err();
        assert!(e.message.contains("expected shape"), "{e}");
        let e = parse(b"{nope").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e}");
    }
}
