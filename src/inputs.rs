//! The input log: every input the engine accepted, one JSON line each, so `rollbackd replay` can
//! feed the same inputs through the same engine later.
//!
//! A line is `{"at": RFC3339, "source": .., "body": <the webhook body as received>}`:
//! - `at` is the instant the engine handled the input (its `now`), so a replay sees it at the same
//!   instant;
//! - `source` is `alertmanager`, `grafana`, `pagerduty`, `signal` or `release` (bodies as the
//!   HTTP endpoints take them; an alert webhook of more than one chunk of
//!   `MAX_SIGNALS_PER_EVENT` alerts is one line per chunk, `{"version", "alerts": [..]}` with
//!   that chunk's alerts as received, since each chunk is its own event), or `vote`, `freeze`,
//!   `unfreeze` for the break-glass API (bodies
//!   `{"incident", "person", "vote": "approve"|"reject", "via", "reason"}` and
//!   `{"service", "reason", "by"}`, since the path carries part of those requests), or `deploy`
//!   for a release a deploy tool's webhook reported (body: the release as recorded, its
//!   `origin` included);
//! - `pagerduty` lines may carry `"delivery"` (the de-duplication id; default `event.id`), and
//!   `release` lines `"received_at"` (the receipt time, which a release without `deployed_at`
//!   defaults to; default `at`);
//! - `engine` lines are what the daemon handled besides requests, as the engine's own event
//!   (`{"tick": null}`, `{"step_finished": {..}}`, `{"verify_finished": {..}}`, `{"delivery": {..}}`,
//!   `"rules_reloaded"`, ...): ticks at the instant they ran, and the outcomes of steps, probes,
//!   checks, after hooks and deliveries. A reload line carries `"rules_digest"`;
//! - `start` lines mark a daemon start (the engine recovers what was under way), with
//!   `"rules_digest"`.
//!
//! The daemon writes its log from the engine task, after each commit and in the order the engine
//! handled the events, so a replay of it with the same rules reproduces the run exactly.
//!
//! The reader also takes a Prometheus `ALERTS` range-query export (see [`prometheus`]). The
//! [`Recorder`] appends lines for the daemon when `record_inputs: true`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::engine::Event;
use crate::ingest;
use crate::model::VoteKind;

/// One input at the instant the engine is to see it.
#[derive(Clone, Debug)]
pub struct Input {
    pub at: Timestamp,
    pub event: Event,
    pub origin: Origin,
    /// `start` and reload lines: the digest of the rules in force (see `live::rules_digest`).
    pub rules_digest: Option<String>,
}

/// Where an input came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A request (webhook, release, vote, freeze) or a line written by hand.
    Outside,
    /// What the daemon itself handled: a tick, an outcome of the executor or the notifier, a
    /// reload.
    Engine,
    /// A daemon start: the engine recovered what was under way (the event is a tick).
    Start,
}

impl Input {
    pub fn outside(at: Timestamp, event: Event) -> Input {
        Input {
            at,
            event,
            origin: Origin::Outside,
            rules_digest: None,
        }
    }
}

/// A line of an input file that cannot be used, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for InputError {}

/// What parsing needs besides the bytes.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// PagerDuty workflow ids (`pagerduty.workflows.approve` / `.reject` in the config).
    pub approve_workflow: Option<String>,
    pub reject_workflow: Option<String>,
    /// Prometheus exports: the query step; default the smallest gap between two samples.
    pub step: Option<Duration>,
}

impl Options {
    pub fn from_config(c: &crate::config::Config) -> Options {
        let wf = |k: &str| {
            c.pagerduty
                .as_ref()
                .and_then(|p| p.workflows.get(k).cloned())
        };
        Options {
            approve_workflow: wf("approve"),
            reject_workflow: wf("reject"),
            step: None,
        }
    }
}

#[derive(Deserialize)]
struct RawLine<'a> {
    at: Timestamp,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    body: &'a RawValue,
    #[serde(default)]
    delivery: Option<String>,
    #[serde(default)]
    received_at: Option<Timestamp>,
    #[serde(default)]
    rules_digest: Option<String>,
}

/// A break-glass vote, as a `vote` line's body and as the API's request (whose path carries the
/// incident and the verb): the one place it becomes an [`Event`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteLine {
    pub incident: String,
    pub person: String,
    pub vote: VoteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl VoteLine {
    pub fn event(self) -> Event {
        Event::Vote {
            incident: self.incident,
            person: self.person,
            vote: self.vote,
            via: self.via.unwrap_or_else(|| "break-glass".to_string()),
            reason: self.reason,
        }
    }
}

/// A freeze or unfreeze, as a `freeze` / `unfreeze` line's body and as the API's request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeLine {
    pub service: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl FreezeLine {
    /// The freeze (`frozen`) or unfreeze event.
    pub fn event(self, frozen: bool) -> Event {
        let by = self.by.unwrap_or_else(|| "admin".to_string());
        let (service, reason) = (self.service, self.reason);
        if frozen {
            Event::Freeze {
                service,
                reason,
                by,
            }
        } else {
            Event::Unfreeze {
                service,
                reason,
                by,
            }
        }
    }
}

/// The source of a release a deploy tool's webhook reported (GitHub, GitLab, Flux, Argo CD): its
/// body is the release as recorded (origin included), not the tool's delivery, whose reading
/// depends on the config's service maps.
pub const DEPLOY: &str = "deploy";

/// Parses one input-log line; `Ok(None)` for a blank line or a `#` comment.
pub fn parse_line(text: &str, opts: &Options) -> Result<Option<Input>, String> {
    let t = text.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let raw: RawLine = serde_json::from_str(t)
        .map_err(|e| format!("not an input line {{\"at\", \"source\", \"body\"}}: {e}"))?;
    let body = raw.body.get().as_bytes();
    let at = raw.at;
    let (origin, rules_digest) = match raw.source.as_ref() {
        "engine" => (Origin::Engine, raw.rules_digest),
        "start" => (Origin::Start, raw.rules_digest),
        _ => (Origin::Outside, None),
    };
    let event = match raw.source.as_ref() {
        "engine" => serde_json::from_slice(body).map_err(|e| format!("engine body: {e}"))?,
        "start" => Event::Tick,
        "alertmanager" => Event::Signals(ingest::alertmanager::parse(body).map_err(msg)?),
        "grafana" => Event::Signals(ingest::grafana::parse(body).map_err(msg)?),
        "signal" => Event::Signals(ingest::signals::parse(body).map_err(msg)?),
        "release" => Event::Release(Box::new(
            ingest::releases::parse(body, raw.received_at.unwrap_or(at)).map_err(msg)?,
        )),
        DEPLOY => {
            let r: crate::model::Release =
                serde_json::from_slice(body).map_err(|e| format!("deploy body: {e}"))?;
            Event::Release(Box::new(ingest::releases::checked(r, at).map_err(msg)?))
        }
        "pagerduty" => {
            let e = ingest::pagerduty::parse(body).map_err(msg)?;
            let input = ingest::pagerduty::input(
                &e,
                opts.approve_workflow.as_deref(),
                opts.reject_workflow.as_deref(),
            );
            Event::PagerDuty {
                delivery: raw.delivery.unwrap_or_else(|| e.id.clone()),
                input,
            }
        }
        "vote" => serde_json::from_slice::<VoteLine>(body)
            .map_err(|e| format!("vote body: {e}"))?
            .event(),
        s @ ("freeze" | "unfreeze") => serde_json::from_slice::<FreezeLine>(body)
            .map_err(|e| format!("{s} body: {e}"))?
            .event(s == "freeze"),
        other => {
            return Err(format!(
                "source: `{other}` is not one of alertmanager, grafana, pagerduty, signal, release, deploy, vote, freeze, unfreeze, engine, start"
            ));
        }
    };
    Ok(Some(Input {
        at,
        event,
        origin,
        rules_digest,
    }))
}

fn msg(e: ingest::IngestError) -> String {
    e.message
}

/// Input-log lines only.
pub fn read_lines(text: &str, file: &str, opts: &Options) -> Result<Vec<Input>, InputError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line, opts) {
            Ok(Some(input)) => out.push(input),
            Ok(None) => {}
            Err(message) => {
                return Err(InputError {
                    file: file.to_string(),
                    line: i + 1,
                    message,
                });
            }
        }
    }
    Ok(out)
}

/// Appends input-log lines for the daemon. Safe to share between handlers: one `write` per line
/// under a lock, to a file opened for appending.
pub struct Recorder {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl Recorder {
    pub fn open(path: &Path) -> std::io::Result<Recorder> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Recorder {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The recorder `record_inputs: true` asks for (`inputs_file`, default
    /// `<data_dir>/inputs.jsonl`), or `None`.
    pub fn for_config(
        c: &crate::config::Config,
        data_dir: &Path,
    ) -> std::io::Result<Option<Recorder>> {
        if !c.record_inputs {
            return Ok(None);
        }
        let path = c
            .inputs_file
            .clone()
            .unwrap_or_else(|| data_dir.join("inputs.jsonl"));
        Recorder::open(&path).map(Some)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line (the caller's, newline-terminated).
    pub fn append(&self, line: &str) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(line.as_bytes())
    }
}

/// An input-log line, all but its `at` (known only once the engine has handled the event).
pub struct Pending {
    head: String,
    tail: String,
}

impl Pending {
    /// `body` is the request body as received (it parsed as JSON), or for votes and freezes
    /// (whose path carries part of the request) their [`VoteLine`] / [`FreezeLine`].
    pub fn new(source: &str, body: &[u8], event: &Event) -> Pending {
        let body = match serde_json::from_slice::<&RawValue>(body) {
            // Line breaks can only sit between JSON tokens: replacing them keeps the meaning and
            // every other byte.
            Ok(raw) => raw.get().replace(['\n', '\r'], " "),
            Err(_) => "null".to_string(),
        };
        let mut extra = String::new();
        match event {
            Event::PagerDuty { delivery, .. } => {
                extra = format!(
                    ",\"delivery\":{}",
                    serde_json::Value::from(delivery.as_str())
                );
            }
            Event::Release(r) => {
                extra = format!(",\"received_at\":\"{}\"", r.received_at);
            }
            _ => {}
        }
        Pending {
            head: format!(
                ",\"source\":{}{extra},\"body\":",
                serde_json::Value::from(source)
            ),
            tail: body,
        }
    }

    pub fn line(&self, at: Timestamp) -> String {
        format!("{{\"at\":\"{at}\"{}{}}}\n", self.head, self.tail)
    }
}

/// The input-log line of what the engine handled on its own (ticks, outcomes, reloads).
pub fn engine_line(at: Timestamp, event: &Event, rules_digest: Option<&str>) -> String {
    let digest = rules_digest
        .map(|d| format!(",\"rules_digest\":{}", serde_json::Value::from(d)))
        .unwrap_or_default();
    let body = serde_json::to_string(event).unwrap_or_else(|_| "null".to_string());
    format!("{{\"at\":\"{at}\",\"source\":\"engine\"{digest},\"body\":{body}}}\n")
}

/// The input-log line of a daemon start.
pub fn start_line(at: Timestamp, rules_digest: &str) -> String {
    format!(
        "{{\"at\":\"{at}\",\"source\":\"start\",\"rules_digest\":{},\"body\":null}}\n",
        serde_json::Value::from(rules_digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::default()
    }

    #[test]
    fn lines_of_every_source_parse() {
        let lines = [
            r#"{"at":"2026-01-01T10:00:00Z","source":"alertmanager","body":{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"A"},"startsAt":"2026-01-01T09:59:00Z"}]}}"#,
            r#"{"at":"2026-01-01T10:00:00Z","source":"grafana","body":{"version":"1","alerts":[{"status":"firing","labels":{"alertname":"A"}}]}}"#,
            r#"{"at":"2026-01-01T10:00:00Z","source":"signal","body":{"labels":{"alertname":"A"},"status":"firing"}}"#,
            r#"{"at":"2026-01-01T10:00:00Z","source":"release","received_at":"2026-01-01T09:59:59Z","body":{"service":"s","version":"v1","deployment_id":"d1"}}"#,
            r#"{"at":"2026-01-01T10:00:00Z","source":"pagerduty","body":{"event":{"id":"E1","event_type":"pagey.ping"}}}"#,
            r#"{"at":"2026-01-01T10:00:00Z","source":"vote","body":{"incident":"inc-000002","person":"ada","vote":"approve"}}"#,
            r#"{"at":"2026-01-01T10:00:00Z","source":"unfreeze","body":{"service":"s","reason":"fixed"}}"#,
        ];
        for l in lines {
            let i = parse_line(l, &opts()).unwrap().unwrap();
            assert_eq!(i.at.to_string(), "2026-01-01T10:00:00Z");
        }
        let r = parse_line(lines[3], &opts()).unwrap().unwrap();
        let Event::Release(r) = r.event else { panic!() };
        assert_eq!(r.deployed_at.to_string(), "2026-01-01T09:59:59Z");
        let p = parse_line(lines[4], &opts()).unwrap().unwrap();
        assert!(matches!(p.event, Event::PagerDuty { delivery, .. } if delivery == "E1"));
        assert!(parse_line("   ", &opts()).unwrap().is_none());
        assert!(parse_line("# a comment", &opts()).unwrap().is_none());
    }

    /// A release a deploy tool reported is logged as the release, and reads back as the same
    /// event, whatever the config's service maps say at replay time.
    #[test]
    fn a_deploy_tool_release_reads_back_as_the_same_release() {
        let at: Timestamp = "2019-05-15T15:21:00Z".parse().unwrap();
        let body = include_bytes!("ingest/testdata/github-deployment_status.json");
        let services = std::collections::BTreeMap::from([(
            "Codertocat/Hello-World".to_string(),
            "hello".to_string(),
        )]);
        let ingest::Outcome::Release(r) =
            ingest::github::parse("deployment_status", body, &services, at).unwrap()
        else {
            panic!("ignored")
        };
        let logged = serde_json::to_vec(&r).unwrap();
        let sent = Event::Release(r.clone());
        let line = Pending::new(DEPLOY, &logged, &sent).line(at);
        let back = parse_line(&line, &opts()).unwrap().unwrap();
        assert_eq!(back.at, at);
        let Event::Release(b) = back.event else {
            panic!("{line}")
        };
        assert_eq!(b, r);
        assert_eq!(b.service, "hello");
        assert_eq!(b.origin, "github");
        assert_eq!(
            b.revision.as_deref(),
            Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
        );
        let poisoned = line.replace("\"version\":\"master\"", "\"version\":\"$(id)\"");
        assert!(
            parse_line(&poisoned, &opts())
                .unwrap_err()
                .contains("version")
        );
    }

    #[test]
    fn bad_lines_say_where() {
        let text = "\n{\"at\":\"2026-01-01T10:00:00Z\",\"source\":\"signal\",\"body\":{\"labels\":{},\"status\":\"firing\"}}\n";
        let e = read_lines(text, "in.jsonl", &opts()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("in.jsonl:2: labels"), "{e}");
        let e = read_lines(r#"{"at":"x","source":"signal","body":{}}"#, "f", &opts()).unwrap_err();
        assert!(e.message.contains("not an input line"), "{e}");
        let e = read_lines(
            r#"{"at":"2026-01-01T10:00:00Z","source":"carrier-pigeon","body":{}}"#,
            "f",
            &opts(),
        )
        .unwrap_err();
        assert!(e.message.contains("carrier-pigeon"), "{e}");
    }

    #[test]
    fn recorded_lines_read_back_identically() {
        let body = b"{\n  \"labels\": {\"alertname\": \"A\"},\n  \"status\": \"firing\"\n}\n";
        let ev = Event::Signals(ingest::signals::parse(body).unwrap());
        let at: Timestamp = "2026-01-01T10:00:00.123456789Z".parse().unwrap();
        let line = Pending::new("signal", body, &ev).line(at);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let back = parse_line(&line, &opts()).unwrap().unwrap();
        assert_eq!(back.at, at);
        assert!(matches!(back.event, Event::Signals(s) if s.len() == 1));
        let vote = VoteLine {
            incident: "inc-000001".into(),
            person: "ada".into(),
            vote: VoteKind::Approve,
            via: None,
            reason: Some("ok".into()),
        };
        let body = serde_json::to_vec(&vote).unwrap();
        let sent = vote.event();
        let line = Pending::new("vote", &body, &sent).line(at);
        let back = parse_line(&line, &opts()).unwrap().unwrap();
        assert_eq!(
            back.event, sent,
            "the log line reads back as the event the API sent"
        );
    }

    #[test]
    fn recorder_appends_whole_lines_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let rec =
            std::sync::Arc::new(Recorder::open(&dir.path().join("sub/inputs.jsonl")).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        rec.append(&format!("{{\"t\":{t},\"i\":{i}}}\n")).unwrap();
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        let text = std::fs::read_to_string(rec.path()).unwrap();
        assert_eq!(text.lines().count(), 1600);
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }
}
