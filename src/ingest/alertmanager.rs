//! Alertmanager `webhook_configs` payload, version 4: one [`Signal`] per alert, keyed by its
//! fingerprint. Unknown fields are ignored (newer releases add some).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{IngestError, json, label_fingerprint, time};
use crate::model::{Labels, Signal, SignalStatus, Source};

/// A webhook's alerts, each still the JSON text it came as (borrowed from the body, 16 bytes
/// an alert): they are decoded one at a time, so a delivery of thousands of alerts never holds
/// them all decoded at once. [`Delivery::check`] decodes every one (and keeps none) so a bad
/// alert refuses the whole delivery before anything is applied; [`Delivery::chunk`] decodes a
/// slice into [`Signal`]s.
pub struct Delivery<'a> {
    source: Source,
    /// The payload version, written into a chunk's body (see [`Delivery::chunk_body`]).
    version: &'static str,
    alerts: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    version: Option<Text<'a>>,
    #[serde(borrow)]
    alerts: Vec<&'a RawValue>,
}

/// A JSON string borrowed from the body when it has no escapes, copied when it has.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'a> PartialEq for Text<'a> {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl<'a> Eq for Text<'a> {}
impl<'a> PartialOrd for Text<'a> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<'a> Ord for Text<'a> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}

/// One alert as sent (Alertmanager's shape, which Grafana shares); unknown fields are skipped.
#[derive(Deserialize)]
struct Alert<'a> {
    #[serde(borrow)]
    status: Text<'a>,
    #[serde(borrow)]
    labels: BTreeMap<Text<'a>, Text<'a>>,
    #[serde(rename = "startsAt", borrow, default)]
    starts_at: Option<Text<'a>>,
    #[serde(rename = "endsAt", borrow, default)]
    ends_at: Option<Text<'a>>,
    #[serde(borrow, default)]
    fingerprint: Option<Text<'a>>,
}

pub fn parse(body: &[u8]) -> Result<Vec<Signal>, IngestError> {
    delivery(body)?.all()
}

/// The delivery in an Alertmanager webhook body, after its version is checked.
pub fn delivery(body: &[u8]) -> Result<Delivery<'_>, IngestError> {
    let p: Envelope = json(body, "Alertmanager webhook")?;
    match p.version.as_ref().map(|v| v.0.as_ref()) {
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
    Ok(Delivery {
        source: Source::Alertmanager,
        version: "4",
        alerts: p.alerts,
    })
}

/// The delivery in a Grafana webhook body (version "1", or none).
pub fn grafana_delivery(body: &[u8]) -> Result<Delivery<'_>, IngestError> {
    let p: Envelope = json(body, "Grafana webhook")?;
    if let Some(v) = p.version.as_ref().map(|v| v.0.as_ref())
        && v != "1"
    {
        return Err(IngestError::new(format!(
            "version: payload version {v:?} is not supported; rollbackd reads Grafana webhook version \"1\""
        )));
    }
    Ok(Delivery {
        source: Source::Grafana,
        version: "1",
        alerts: p.alerts,
    })
}

impl<'a> Delivery<'a> {
    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    pub fn source(&self) -> Source {
        self.source
    }

    /// Decodes every alert and keeps none: the first problem, naming `alerts[i]`.
    pub fn check(&self) -> Result<(), IngestError> {
        (0..self.alerts.len()).try_for_each(|i| self.signal(i).map(drop))
    }

    /// Alerts `range` as signals.
    pub fn chunk(&self, range: std::ops::Range<usize>) -> Result<Vec<Signal>, IngestError> {
        range.map(|i| self.signal(i)).collect()
    }

    /// Every alert as a signal.
    pub fn all(&self) -> Result<Vec<Signal>, IngestError> {
        self.chunk(0..self.alerts.len())
    }

    /// The ranges of at most `n` alerts a delivery is handed over in, in order.
    pub fn ranges(&self, n: usize) -> impl Iterator<Item = std::ops::Range<usize>> + use<> {
        let len = self.alerts.len();
        let n = n.max(1);
        (0..len.div_ceil(n)).map(move |c| c * n..((c + 1) * n).min(len))
    }

    /// A body of the same source holding only alerts `range`, each exactly as received: what
    /// the input log records for one chunk of a delivery, so a replay reads the same signals.
    pub fn chunk_body(&self, range: std::ops::Range<usize>) -> String {
        let alerts = self.alerts.get(range).unwrap_or_default();
        let size: usize = alerts.iter().map(|a| a.get().len() + 1).sum();
        let mut out = String::with_capacity(size + 40);
        out.push_str("{\"version\":\"");
        out.push_str(self.version);
        out.push_str("\",\"alerts\":[");
        for (i, a) in alerts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(a.get());
        }
        out.push_str("]}");
        out
    }

    fn signal(&self, i: usize) -> Result<Signal, IngestError> {
        let raw = self
            .alerts
            .get(i)
            .ok_or_else(|| IngestError::new(format!("alerts[{i}]: no such alert")))?;
        let a: Alert = serde_json::from_str(raw.get()).map_err(|e| {
            IngestError::new(format!("alerts[{i}] does not have the expected shape: {e}"))
        })?;
        let status = match a.status.0.as_ref() {
            "firing" => SignalStatus::Firing,
            "resolved" => SignalStatus::Resolved,
            other => {
                return Err(IngestError::new(format!(
                    "alerts[{i}].status: `{other}` is not firing or resolved"
                )));
            }
        };
        let labels: Labels = a
            .labels
            .into_iter()
            .map(|(k, v)| (k.0.into_owned(), v.0.into_owned()))
            .collect();
        let key = match a.fingerprint.filter(|f| !f.0.is_empty()) {
            Some(f) => f.0.into_owned(),
            None => label_fingerprint(&labels),
        };
        if key.len() > 256 {
            return Err(IngestError::new(format!(
                "alerts[{i}].fingerprint: longer than 256 characters"
            )));
        }
        let t = |field: &str, v: &Option<Text>| {
            time(
                &format!("alerts[{i}].{field}"),
                v.as_ref().map(|t| t.0.as_ref()),
            )
        };
        Ok(Signal {
            source: self.source,
            starts_at: t("startsAt", &a.starts_at)?,
            ends_at: t("endsAt", &a.ends_at)?,
            key,
            labels,
            status,
        })
    }
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

    #[test]
    fn a_delivery_decodes_in_chunks_and_each_chunk_body_reads_back_the_same() {
        let alert = |i: usize| {
            format!(
                r#"{{"status":"firing","labels":{{"alertname":"A","instance":"i{i}","note":"tab\there \u00e9"}},"startsAt":"2026-11-24T10:00:00Z","fingerprint":"f{i}","annotations":{{"x":[1,2]}}}}"#
            )
        };
        let alerts: Vec<String> = (0..7).map(alert).collect();
        let body = format!(
            r#"{{"version":"4","receiver":"r","alerts":[{}]}}"#,
            alerts.join(",\n ")
        );
        let d = delivery(body.as_bytes()).unwrap();
        d.check().unwrap();
        let ranges: Vec<_> = d.ranges(3).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..7]);
        let all = d.all().unwrap();
        assert_eq!(all[0].labels["note"], "tab\there \u{e9}", "escapes decode");
        let mut again = Vec::new();
        for r in ranges {
            let chunk = d.chunk(r.clone()).unwrap();
            let back = parse(d.chunk_body(r).as_bytes()).unwrap();
            assert_eq!(chunk, back, "a chunk's body reads back as the chunk");
            again.extend(back);
        }
        assert_eq!(again, all);
        assert_eq!(d.ranges(500).count(), 1);
    }

    #[test]
    fn a_bad_alert_anywhere_fails_the_check_naming_it() {
        let body = br#"{"version":"4","alerts":[{"status":"firing","labels":{}},{"status":"firing","labels":{},"endsAt":"later"}]}"#;
        let d = delivery(body).unwrap();
        let e = d.check().unwrap_err();
        assert!(e.message.contains("alerts[1].endsAt"), "{e}");
    }
}
