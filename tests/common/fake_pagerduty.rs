//! A fake PagerDuty for tests: the Events API v2 `POST /v2/enqueue` and the REST API's
//! `POST /incidents/{id}/notes` and `PUT /incidents/{id}` on one loopback port, so one URL serves
//! as both `pagerduty.events_url` and `pagerduty.api_url`. It checks requests the way PagerDuty's
//! docs describe (a little stricter where PagerDuty is vague), records every call, and can be
//! told to fail the next calls with 429 (with `ratelimit-reset`) or 5xx.
//!
//! It runs on its own thread with its own tokio runtime, so blocking tests, async tests and
//! black-box tests of the daemon binary can all use it. Include it with
//! `#[path = "common/fake_pagerduty.rs"] mod fake_pagerduty;`.
//!
//! Also here: [`signed_webhook`] (the `X-PagerDuty-Signature` of a body) and builders of
//! realistic V3 webhook bodies to post to the daemon.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub const ACCEPT_V2: &str = "application/vnd.pagerduty+json;version=2";

/// One request the fake received, and what it answered.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    /// Header names in lowercase; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or `Value::Null` when the body was not JSON.
    pub body: Value,
    pub raw_body: String,
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Clone, Debug)]
struct Failure {
    status: u16,
    ratelimit_reset: Option<u64>,
    /// A canned body instead of the route's usual error body.
    body: Option<Value>,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    failures: VecDeque<Failure>,
    seq: u64,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakePagerDuty {
    url: String,
    inner: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePagerDuty {
    /// Starts the fake on `127.0.0.1:<free port>`; it serves until dropped.
    pub fn start() -> FakePagerDuty {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake PagerDuty");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let inner: Shared = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = inner.clone();
        let thread = std::thread::Builder::new()
            .name("fake-pagerduty".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake PagerDuty runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = Router::new().fallback(handle).with_state(state);
                    tokio::select! {
                        r = axum::serve(listener, app) => r.expect("fake PagerDuty server"),
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn fake PagerDuty");
        FakePagerDuty {
            url: format!("http://{addr}"),
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash: use it as both `api_url` and
    /// `events_url`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Calls whose path is `path`.
    pub fn calls_to(&self, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap().calls.clear();
    }

    /// Answers the next `n` calls (any route) with `status`; a 429 carries `ratelimit-reset: 1`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail_next_with(n, status, (status == 429).then_some(1));
    }

    /// Like [`fail_next`](Self::fail_next), choosing the `ratelimit-reset` header (seconds), or
    /// none: PagerDuty sometimes sends a 429 without it.
    pub fn fail_next_with(&self, n: usize, status: u16, ratelimit_reset: Option<u64>) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..n {
            inner.failures.push_back(Failure {
                status,
                ratelimit_reset,
                body: None,
            });
        }
    }

    /// Answers the next call (any route) with `status` and exactly `body`, e.g. a PagerDuty
    /// error code the fake does not produce by itself.
    pub fn answer_next(&self, status: u16, body: Value) {
        self.inner.lock().unwrap().failures.push_back(Failure {
            status,
            ratelimit_reset: None,
            body: Some(body),
        });
    }

    /// Waits (blocking, polling) until `done(calls)` holds; panics with the calls after `timeout`.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let start = Instant::now();
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            if start.elapsed() > timeout {
                panic!("fake PagerDuty: condition not met within {timeout:?}; calls: {calls:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The async form of [`wait_for`](Self::wait_for), for `#[tokio::test]`s.
    pub async fn wait_for_async(
        &self,
        timeout: Duration,
        done: impl Fn(&[Call]) -> bool,
    ) -> Vec<Call> {
        let start = Instant::now();
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            if start.elapsed() > timeout {
                panic!("fake PagerDuty: condition not met within {timeout:?}; calls: {calls:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakePagerDuty {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Events,
    Rest,
}

async fn handle(
    State(inner): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().to_string();
    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut recorded = BTreeMap::new();
    for (name, value) in &headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        recorded
            .entry(name.as_str().to_string())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let api = if path.starts_with("/v2/") {
        Api::Events
    } else {
        Api::Rest
    };
    let (failure, seq) = {
        let mut g = inner.lock().unwrap();
        g.seq += 1;
        (g.failures.pop_front(), g.seq)
    };
    let (status, extra, answer) = match failure {
        Some(f) => injected(api, f),
        None => route(&method, &path, &recorded, &json_body, seq),
    };
    inner.lock().unwrap().calls.push(Call {
        method: method.to_string(),
        path,
        headers: recorded,
        body: json_body,
        raw_body,
        status,
        at,
    });
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(answer),
    )
        .into_response();
    for (k, v) in extra {
        resp.headers_mut()
            .insert(k, v.parse().expect("header value"));
    }
    resp
}

type Answer = (u16, Vec<(&'static str, String)>, Value);

fn injected(api: Api, f: Failure) -> Answer {
    let mut headers = Vec::new();
    if f.status == 429
        && let Some(reset) = f.ratelimit_reset
    {
        headers.push(("ratelimit-limit", "960".to_string()));
        headers.push(("ratelimit-remaining", "0".to_string()));
        headers.push(("ratelimit-reset", reset.to_string()));
    }
    if let Some(body) = f.body {
        return (f.status, headers, body);
    }
    let body = match (api, f.status) {
        // REST: developer-docs docs/REST-API/04-Rate-Limits.md.
        (Api::Rest, 429) => rest_error("Rate Limit Exceeded", 2020, &[]),
        // REST: developer-docs docs/REST-API/14-Errors.md, code 2000.
        (Api::Rest, s) if s >= 500 => rest_error(
            "An internal error has occurred. PagerDuty team has been notified.",
            2000,
            &[],
        ),
        (Api::Rest, _) => rest_error("Injected failure", 2001, &[]),
        (Api::Events, 429) => {
            json!({"status": "throttle event", "message": "Too many API calls at a time."})
        }
        (Api::Events, _) => {
            json!({"status": "error", "message": "Internal Server Error", "errors": ["injected failure"]})
        }
    };
    (f.status, headers, body)
}

fn route(
    method: &Method,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: &Value,
    seq: u64,
) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v2", "enqueue"]) => enqueue(body, seq),
        ("POST", ["incidents", id, "notes"]) => rest(headers, id, || note(id, headers, body, seq)),
        ("PUT", ["incidents", id]) => rest(headers, id, || update_incident(id, body)),
        _ => (404, vec![], rest_error("Not Found", 2100, &[])),
    }
}

/// Events API v2 checks: developer-docs docs/events-API-v2/02-Trigger-Events.md and
/// api-schema reference/events-v2/openapiv3.json.
fn enqueue(body: &Value, seq: u64) -> Answer {
    let Some(ev) = body.as_object() else {
        return invalid_event(vec!["Event object is not a JSON object".into()]);
    };
    let s = |k: &str| ev.get(k).and_then(Value::as_str);
    let mut errors = Vec::new();
    match s("routing_key") {
        None => errors.push("'routing_key' is missing".to_string()),
        Some(k) if k.chars().count() != 32 => {
            errors.push("'routing_key' must be 32 characters".to_string())
        }
        Some(_) => {}
    }
    let action = s("event_action");
    if !matches!(action, Some("trigger" | "acknowledge" | "resolve")) {
        errors.push("'event_action' must be trigger, acknowledge or resolve".to_string());
    }
    let dedup = s("dedup_key");
    if let Some(d) = dedup
        && d.chars().count() > 255
    {
        errors.push("'dedup_key' is longer than 255 characters".to_string());
    }
    if matches!(action, Some("acknowledge" | "resolve")) && dedup.is_none_or(str::is_empty) {
        errors.push("'dedup_key' is required to acknowledge or resolve".to_string());
    }
    if action == Some("trigger") {
        let p = ev.get("payload").and_then(Value::as_object);
        let ps = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
        match ps("summary") {
            None | Some("") => errors.push("'payload.summary' is missing".to_string()),
            Some(sum) if sum.chars().count() > 1024 => {
                errors.push("'payload.summary' is longer than 1024 characters".to_string())
            }
            Some(_) => {}
        }
        if ps("source").is_none_or(str::is_empty) {
            errors.push("'payload.source' is missing".to_string());
        }
        if !matches!(
            ps("severity"),
            Some("critical" | "error" | "warning" | "info")
        ) {
            errors.push("'payload.severity' must be critical, error, warning or info".to_string());
        }
    }
    if !errors.is_empty() {
        return invalid_event(errors);
    }
    let dedup_key = dedup
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{seq:032x}"));
    (
        202,
        vec![],
        json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    )
}

fn invalid_event(errors: Vec<String>) -> Answer {
    (
        400,
        vec![],
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

/// REST checks shared by incident writes: token, version, JSON, `From`.
/// developer-docs docs/REST-API/02-Authentication.md and 14-Errors.md; the `From` errors as
/// PagerDuty answers them (400 code 2016 when missing, 1028 when not an email).
fn rest(headers: &BTreeMap<String, String>, id: &str, ok: impl FnOnce() -> Answer) -> Answer {
    let h = |k: &str| headers.get(k).map(String::as_str);
    let token = h("authorization").and_then(|a| a.strip_prefix("Token token="));
    if token.is_none_or(|t| t.trim().is_empty()) {
        return (401, vec![], rest_error("Authentication failed", 2006, &[]));
    }
    if h("accept") != Some(ACCEPT_V2) {
        return (
            400,
            vec![],
            rest_error(
                "Invalid Input Provided",
                2001,
                &["Accept must be application/vnd.pagerduty+json;version=2"],
            ),
        );
    }
    if !h("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return (
            400,
            vec![],
            rest_error(
                "Invalid Input Provided",
                2001,
                &["Content-Type must be application/json"],
            ),
        );
    }
    match h("from") {
        None | Some("") => {
            return (
                400,
                vec![],
                rest_error(
                    "You must specify a user's email address in the \"From\" header to perform this action",
                    2016,
                    &[],
                ),
            );
        }
        Some(f) if !is_email(f) => {
            return (
                400,
                vec![],
                rest_error("Malformed \"From\" header", 1028, &[]),
            );
        }
        Some(_) => {}
    }
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return (404, vec![], rest_error("Incident Not Found", 5001, &[]));
    }
    ok()
}

fn note(id: &str, headers: &BTreeMap<String, String>, body: &Value, seq: u64) -> Answer {
    let Some(content) = body
        .pointer("/note/content")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
    else {
        return (
            400,
            vec![],
            rest_error(
                "Invalid Input Provided",
                2001,
                &["note.content must be a non-empty string"],
            ),
        );
    };
    let from = headers.get("from").cloned().unwrap_or_default();
    (
        201,
        vec![],
        json!({"note": {
            "id": format!("PNOTE{seq:02}"),
            "user": {"id": "PFAKEUS", "type": "user_reference", "summary": from,
                     "self": "https://api.pagerduty.com/users/PFAKEUS"},
            "channel": {"summary": "The PagerDuty website or APIs"},
            "content": content,
            "created_at": jiff::Timestamp::now().to_string(),
            "incident_id": id,
        }}),
    )
}

fn update_incident(id: &str, body: &Value) -> Answer {
    let kind = body.pointer("/incident/type").and_then(Value::as_str);
    let status = body.pointer("/incident/status").and_then(Value::as_str);
    if !matches!(kind, Some("incident" | "incident_reference")) {
        return (
            400,
            vec![],
            rest_error(
                "Invalid Input Provided",
                2001,
                &["incident.type must be incident or incident_reference"],
            ),
        );
    }
    if !matches!(status, Some("acknowledged" | "resolved")) {
        return (
            400,
            vec![],
            rest_error("Invalid Status Provided", 1003, &[]),
        );
    }
    (
        200,
        vec![],
        json!({"incident": {
            "id": id, "type": "incident", "status": status,
            "self": format!("https://api.pagerduty.com/incidents/{id}"),
            "html_url": format!("https://fake.pagerduty.com/incidents/{id}"),
        }}),
    )
}

fn rest_error(message: &str, code: u32, errors: &[&str]) -> Value {
    let mut e = json!({"error": {"message": message, "code": code}});
    if !errors.is_empty() {
        e["error"]["errors"] = json!(errors);
    }
    e
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
}

/// The `X-PagerDuty-Signature` value for `body` under `secret`: `v1=<lowercase hex
/// HMAC-SHA256(secret bytes as given, body)>`.
pub fn signed_webhook(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The header PagerDuty sends while a secret rotates: one `v1=` entry per secret, `,`-joined.
pub fn signed_webhook_rotating(secrets: &[&str], body: &str) -> String {
    secrets
        .iter()
        .map(|s| signed_webhook(s, body))
        .collect::<Vec<_>>()
        .join(",")
}

fn user_ref(user_id: &str) -> Value {
    json!({
        "html_url": format!("https://acme.pagerduty.com/users/{user_id}"),
        "id": user_id,
        "self": format!("https://api.pagerduty.com/users/{user_id}"),
        "summary": format!("User {user_id}"),
        "type": "user_reference",
    })
}

fn envelope(event_id: &str, event_type: &str, agent: Option<&str>, data: Value) -> String {
    json!({"event": {
        "id": event_id,
        "event_type": event_type,
        "resource_type": event_type.split('.').next().unwrap_or("incident"),
        "occurred_at": jiff::Timestamp::now().to_string(),
        "agent": agent.map(user_ref),
        "client": null,
        "data": data,
    }})
    .to_string()
}

/// A V3 `incident.*` webhook body whose data is the incident (shape: developer-docs
/// docs/webhooks/01-Overview.md, `incident`). `incident_key` is the Events API dedup key.
pub fn webhook_incident(
    event_id: &str,
    event_type: &str,
    incident_id: &str,
    incident_key: Option<&str>,
    title: &str,
) -> String {
    let status = match event_type {
        "incident.resolved" => "resolved",
        "incident.acknowledged" => "acknowledged",
        _ => "triggered",
    };
    let mut data = json!({
        "id": incident_id,
        "type": "incident",
        "self": format!("https://api.pagerduty.com/incidents/{incident_id}"),
        "html_url": format!("https://acme.pagerduty.com/incidents/{incident_id}"),
        "number": 1,
        "status": status,
        "created_at": "2026-11-24T10:00:00Z",
        "title": title,
        "service": {"id": "PSVC001", "summary": "portal", "type": "service_reference"},
        "assignees": [],
        "escalation_policy": {"id": "PEP0001", "summary": "Default", "type": "escalation_policy_reference"},
        "teams": [],
        "priority": null,
        "urgency": "high",
        "conference_bridge": null,
        "resolve_reason": null,
    });
    if let Some(k) = incident_key {
        data["incident_key"] = json!(k);
    }
    envelope(event_id, event_type, None, data)
}

/// A V3 `incident.workflow.started` body: `user_id` ran workflow `workflow_id` on the incident
/// (shape: developer-docs docs/webhooks, `incident_workflow_instance`).
pub fn webhook_workflow_started(
    event_id: &str,
    incident_id: &str,
    workflow_id: &str,
    user_id: &str,
) -> String {
    envelope(
        event_id,
        "incident.workflow.started",
        Some(user_id),
        json!({
            "id": "P3SNKQS",
            "type": "incident_workflow_instance",
            "summary": "Rollback decision",
            "incident_workflow": {"id": workflow_id, "summary": "Rollback decision", "type": "incident_workflow_reference"},
            "workflow_trigger": {"html_url": null, "id": "4ad696eb-bb48-422a-8bd0-6efad6befa29", "summary": "Manual Incident Trigger", "type": "workflow_trigger_reference"},
            "incident": {"id": incident_id, "summary": "rollback", "type": "incident_reference"},
            "service": {"id": "PSVC001", "summary": "portal", "type": "service_reference"},
        }),
    )
}

/// A V3 `incident.annotated` body: `user_id` added a note (shape: developer-docs
/// docs/webhooks/01-Overview.md, `incident_note`).
pub fn webhook_note(event_id: &str, incident_id: &str, content: &str, user_id: &str) -> String {
    envelope(
        event_id,
        "incident.annotated",
        Some(user_id),
        json!({
            "incident": {"id": incident_id, "summary": "rollback", "type": "incident_reference"},
            "id": "PNOTE99",
            "content": content,
            "trimmed": false,
            "type": "incident_note",
        }),
    )
}

/// The test delivery PagerDuty sends from the subscription page.
pub fn webhook_ping(event_id: &str) -> String {
    envelope(
        event_id,
        "pagey.ping",
        None,
        json!({"message": "Hello from your friend Pagey!", "type": "ping"}),
    )
}
