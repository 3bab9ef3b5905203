//! The files a backtest reads besides the input log's own lines: an events file (input-log lines
//! or a Prometheus `ALERTS` range-query export) and a releases file (input-log lines or bare
//! `/v1/releases` bodies), merged in time order.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;

use crate::engine::Event;
use crate::ingest;
use crate::inputs::{Input, InputError, Options, parse_line, read_lines};
use crate::model::{Labels, Signal, SignalStatus, Source};

/// Reads an events file: JSON lines in the input-log format, or a Prometheus `ALERTS` range-query
/// export (one JSON document with `"data": {"resultType": "matrix", ..}`). Inputs come out in file
/// order; see [`sorted`].
pub fn read_events(text: &str, file: &str, opts: &Options) -> Result<Vec<Input>, InputError> {
    if looks_like_prometheus(text) {
        return prometheus(text, opts.step).map_err(|message| InputError {
            file: file.to_string(),
            line: 0,
            message,
        });
    }
    read_lines(text, file, opts)
}

/// A releases file: input-log lines (`source: release`), or bare `POST /v1/releases` bodies, each
/// seen at its `deployed_at` (which they must then carry).
pub fn read_releases(text: &str, file: &str) -> Result<Vec<Input>, InputError> {
    let opts = Options::default();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| InputError {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| err(format!("not JSON: {e}")))?;
        if v.get("source").is_some() && v.get("body").is_some() {
            if let Some(input) = parse_line(t, &opts).map_err(err)? {
                out.push(input);
            }
            continue;
        }
        let Some(at) = v
            .get("deployed_at")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<Timestamp>().ok())
        else {
            return Err(err(
                "deployed_at: a bare release needs an RFC 3339 deployed_at (it is replayed at that time)"
                    .to_string(),
            ));
        };
        let r = ingest::releases::parse(t.as_bytes(), at).map_err(|e| err(e.message))?;
        out.push(Input::outside(at, Event::Release(Box::new(r))));
    }
    Ok(out)
}

/// All inputs in time order. The sort is stable: equal times keep their order, and `first` comes
/// before `second` at the same time (pass the releases first: a release seen at the same instant
/// as an alert was known when the alert came). The daemon writes the log after each event is
/// durable, so two concurrent requests may be written in either order; `at` is the engine's own
/// time, and sorting restores the order it saw them in.
pub fn sorted(first: Vec<Input>, second: Vec<Input>) -> Vec<Input> {
    let mut all = first;
    all.extend(second);
    all.sort_by_key(|i| i.at);
    all
}

fn looks_like_prometheus(text: &str) -> bool {
    let head: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .take(64)
        .collect();
    // An input line starts with one of its own keys; an API answer with "status" or "data".
    head.starts_with("{\"status\"") || head.starts_with("{\"data\"")
}

#[derive(Deserialize)]
struct PromAnswer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    data: Option<PromData>,
}

#[derive(Deserialize)]
struct PromData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<PromSeries>,
}

#[derive(Deserialize)]
struct PromSeries {
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// A Prometheus `/api/v1/query_range` answer for `ALERTS` (a matrix) as Alertmanager signals.
///
/// Each series with `alertstate="firing"` (series without `alertstate` count as firing; `pending`
/// ones are skipped) is one alert: its labels without `__name__` and `alertstate`, keyed by a hash
/// of them. Samples closer than 1.5 × `step` belong to one run. A run becomes a firing signal at
/// its first sample (also its `startsAt`) and a resolve one step after its last sample (also its
/// `endsAt`), unless the run lasts to the end of the export, where it is still firing. `step` is
/// the query's step; without it, the smallest gap between two samples of a series (60 s if no
/// series has two samples). Samples whose value is `0` count as absent.
pub fn prometheus(text: &str, step: Option<Duration>) -> Result<Vec<Input>, String> {
    let a: PromAnswer = serde_json::from_str(text)
        .map_err(|e| format!("not a Prometheus query_range answer: {e}"))?;
    if a.status != "success" {
        return Err(format!(
            "Prometheus answered status `{}`: {}",
            a.status,
            a.error.unwrap_or_default()
        ));
    }
    let Some(data) = a.data else {
        return Err("data: missing".to_string());
    };
    if data.result_type != "matrix" {
        return Err(format!(
            "data.resultType: `{}`; export a range query (/api/v1/query_range), which answers a matrix",
            data.result_type
        ));
    }
    let to_ms = |t: f64| (t * 1000.0).round() as i64;
    let mut series: Vec<(Labels, Vec<i64>)> = Vec::new();
    for s in data.result {
        if s.metric.get("alertstate").is_some_and(|v| v != "firing") {
            continue;
        }
        let labels: Labels = s
            .metric
            .into_iter()
            .filter(|(k, _)| k != "__name__" && k != "alertstate")
            .collect();
        let mut ts: Vec<i64> = s
            .values
            .iter()
            .filter(|(_, v)| v.trim() != "0")
            .map(|(t, _)| to_ms(*t))
            .collect();
        ts.sort_unstable();
        ts.dedup();
        if !ts.is_empty() {
            series.push((labels, ts));
        }
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let step_ms = match step {
        Some(s) => (s.as_millis() as i64).max(1),
        None => series
            .iter()
            .flat_map(|(_, ts)| ts.windows(2).map(|w| w[1] - w[0]))
            .filter(|d| *d > 0)
            .min()
            .unwrap_or(60_000),
    };
    let end = series.iter().filter_map(|(_, ts)| ts.last()).max().copied();
    let ts_of =
        |ms: i64| Timestamp::from_millisecond(ms).map_err(|e| format!("sample time {ms} ms: {e}"));
    let mut signals: Vec<(i64, Signal)> = Vec::new();
    for (labels, ts) in series {
        let key = ingest::label_fingerprint(&labels);
        let mut i = 0;
        while i < ts.len() {
            let first = ts[i];
            let mut last = first;
            i += 1;
            while i < ts.len() && (ts[i] - last) * 2 <= step_ms * 3 {
                last = ts[i];
                i += 1;
            }
            signals.push((
                first,
                Signal {
                    source: Source::Alertmanager,
                    key: key.clone(),
                    labels: labels.clone(),
                    status: SignalStatus::Firing,
                    starts_at: Some(ts_of(first)?),
                    ends_at: None,
                },
            ));
            if Some(last) != end {
                let gone = last + step_ms;
                signals.push((
                    gone,
                    Signal {
                        source: Source::Alertmanager,
                        key: key.clone(),
                        labels: labels.clone(),
                        status: SignalStatus::Resolved,
                        starts_at: Some(ts_of(first)?),
                        ends_at: Some(ts_of(gone)?),
                    },
                ));
            }
        }
    }
    signals.sort_by_key(|(t, _)| *t);
    let mut out: Vec<Input> = Vec::new();
    let mut batch: Vec<Signal> = Vec::new();
    let mut batch_at: Option<i64> = None;
    for (t, s) in signals {
        if batch_at.is_some_and(|b| b != t) {
            out.push(Input::outside(
                ts_of(batch_at.unwrap_or(t))?,
                Event::Signals(std::mem::take(&mut batch)),
            ));
        }
        batch_at = Some(t);
        batch.push(s);
    }
    if let Some(t) = batch_at {
        out.push(Input::outside(ts_of(t)?, Event::Signals(batch)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::default()
    }

    #[test]
    fn prometheus_runs_become_firing_and_resolved() {
        // step 30 s: samples at 0,30,60 (run 1), gap, 150,180 (run 2, to the end of the export);
        // a second series fires once at 60.
        let text = r#"{"status":"success","data":{"resultType":"matrix","result":[
          {"metric":{"__name__":"ALERTS","alertname":"A","alertstate":"firing","service":"s"},
           "values":[[1767261600,"1"],[1767261630,"1"],[1767261660,"1"],[1767261750,"1"],[1767261780,"1"]]},
          {"metric":{"__name__":"ALERTS","alertname":"B","alertstate":"firing"},
           "values":[[1767261660,"1"]]},
          {"metric":{"__name__":"ALERTS","alertname":"A","alertstate":"pending","service":"s"},
           "values":[[1767261570,"1"]]}]}}"#;
        let inputs = prometheus(text, None).unwrap();
        let flat: Vec<(String, String, SignalStatus)> = inputs
            .iter()
            .flat_map(|i| {
                let Event::Signals(s) = &i.event else {
                    panic!()
                };
                s.iter()
                    .map(|s| (i.at.to_string(), s.labels["alertname"].clone(), s.status))
                    .collect::<Vec<_>>()
            })
            .collect();
        use SignalStatus::*;
        assert_eq!(
            flat,
            vec![
                ("2026-01-01T10:00:00Z".into(), "A".into(), Firing),
                ("2026-01-01T10:01:00Z".into(), "B".into(), Firing),
                ("2026-01-01T10:01:30Z".into(), "A".into(), Resolved),
                ("2026-01-01T10:01:30Z".into(), "B".into(), Resolved),
                ("2026-01-01T10:02:30Z".into(), "A".into(), Firing),
            ]
        );
        let Event::Signals(s) = &inputs[0].event else {
            panic!()
        };
        assert!(!s[0].labels.contains_key("alertstate") && !s[0].labels.contains_key("__name__"));
        assert_eq!(s[0].source, Source::Alertmanager);
        // An explicit, larger step joins the two runs of A.
        let joined = prometheus(text, Some(Duration::from_secs(90))).unwrap();
        assert_eq!(joined.len(), 3);
        assert!(read_events(text, "x", &opts()).is_ok());
        let e = prometheus(
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            None,
        )
        .unwrap_err();
        assert!(e.contains("matrix"), "{e}");
    }

    #[test]
    fn bare_releases_are_seen_at_their_deployment() {
        let text = r#"{"service":"s","environment":"production","version":"v1","deployment_id":"d1","deployed_at":"2026-01-01T09:00:00Z"}
{"at":"2026-01-01T09:30:00Z","source":"release","body":{"service":"s","version":"v2","deployment_id":"d2"}}"#;
        let r = read_releases(text, "rel.jsonl").unwrap();
        assert_eq!(r[0].at.to_string(), "2026-01-01T09:00:00Z");
        assert_eq!(r[1].at.to_string(), "2026-01-01T09:30:00Z");
        let e = read_releases(
            r#"{"service":"s","version":"v1","deployment_id":"d1"}"#,
            "rel.jsonl",
        )
        .unwrap_err();
        assert_eq!((e.line, e.message.contains("deployed_at")), (1, true));
    }
}
