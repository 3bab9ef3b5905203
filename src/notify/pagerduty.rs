//! Outbound PagerDuty: Events API v2 (`POST /v2/enqueue`) to open, update and resolve an alert
//! under a deterministic `dedup_key`, and the REST API to note on and resolve an incident.
//!
//! Facts (PagerDuty's `developer-docs` and `api-schema`): the Events API takes no auth header,
//! answers 202 `{"status":"success","message":"Event processed","dedup_key":..}`, 400 for a bad
//! event (do not retry), 429 and 5xx to retry later; `routing_key` is 32 characters, `dedup_key`
//! at most 255, `payload.summary` at most 1024. The REST API wants `Authorization: Token
//! token=..`, `Accept: application/vnd.pagerduty+json;version=2`, and on incident writes a `From:`
//! header with a real user's email (missing: 400 code 2016; not an email: 400 code 1028); it
//! rate-limits with 429 (code 2020) and `ratelimit-reset: <seconds>`, sometimes without headers.
//!
//! The API token and routing key never appear in a log line, an error or a `Debug` output.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Value, json};

use crate::model::Incident;

pub const DEFAULT_API_URL: &str = "https://api.pagerduty.com";
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com";
const ACCEPT_V2: &str = "application/vnd.pagerduty+json;version=2";
/// Longest `payload.summary` the Events API takes.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// Longest `dedup_key` the Events API takes.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;
/// Per-request timeout: PagerDuty answers in well under a second when healthy.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait honoured from `ratelimit-reset` / `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct PdClient {
    http: reqwest::Client,
    api_url: String,
    api_token: String,
    from: String,
    events_url: String,
}

impl fmt::Debug for PdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PdClient")
            .field("api_url", &self.api_url)
            .field("api_token", &"<redacted>")
            .field("from", &self.from)
            .field("events_url", &self.events_url)
            .finish()
    }
}

/// What a failed call means for its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PdError {
    /// Try again later: after `after` when PagerDuty said how long (`ratelimit-reset`).
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Retrying the same request will not help (bad input, bad credentials, unknown incident).
    Permanent(String),
}

impl fmt::Display for PdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PdError::Retry { why, .. } => write!(f, "{why} (will retry)"),
            PdError::Permanent(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PdError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    Trigger,
    Acknowledge,
    Resolve,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Trigger => "trigger",
            EventAction::Acknowledge => "acknowledge",
            EventAction::Resolve => "resolve",
        }
    }
}

impl fmt::Display for EventAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trigger" => Ok(EventAction::Trigger),
            "acknowledge" => Ok(EventAction::Acknowledge),
            "resolve" => Ok(EventAction::Resolve),
            other => Err(format!(
                "event_action `{other}` is not trigger, acknowledge or resolve"
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

/// An Events API v2 alert event, serialised with exactly the documented field names.
/// `Debug` hides the routing key.
#[derive(Clone, PartialEq, Serialize)]
pub struct EventsV2 {
    pub routing_key: String,
    pub event_action: EventAction,
    pub dedup_key: String,
    /// Required for `trigger`; PagerDuty ignores it on `acknowledge` and `resolve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<EventsV2Payload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<EventsV2Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<EventsV2Image>,
}

impl fmt::Debug for EventsV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsV2")
            .field("routing_key", &"<redacted>")
            .field("event_action", &self.event_action)
            .field("dedup_key", &self.dedup_key)
            .field("payload", &self.payload)
            .field("client", &self.client)
            .field("client_url", &self.client_url)
            .field("links", &self.links)
            .field("images", &self.images)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventsV2Payload {
    /// At most 1024 characters; [`PdClient::enqueue`] cuts longer ones.
    pub summary: String,
    pub source: String,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_details: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventsV2Link {
    pub href: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventsV2Image {
    pub src: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alt: Option<String>,
}

impl EventsV2 {
    /// The event announcing a rollbackd incident: `source` is `service/environment`, `component`
    /// the service, `group` the environment, `class` the rule; `custom_details` name both
    /// releases; `link` (the incident's page) becomes `client_url` and a link. The payload is
    /// only sent with `trigger`.
    pub fn new(
        routing_key: String,
        event_action: EventAction,
        dedup_key: String,
        summary: &str,
        inc: &Incident,
        link: Option<&str>,
    ) -> EventsV2 {
        let payload = (event_action == EventAction::Trigger).then(|| EventsV2Payload {
            summary: truncate_chars(summary, MAX_SUMMARY_CHARS),
            source: if inc.environment.is_empty() {
                inc.service.clone()
            } else {
                format!("{}/{}", inc.service, inc.environment)
            },
            severity: Severity::Critical,
            timestamp: Some(inc.updated_at),
            component: Some(inc.service.clone()),
            group: (!inc.environment.is_empty()).then(|| inc.environment.clone()),
            class: Some(inc.rule.clone()),
            custom_details: Some(json!({
                "rollbackd_incident": inc.id,
                "rule": inc.rule,
                "state": inc.state.as_str(),
                "mode": inc.mode,
                "service": inc.service,
                "environment": inc.environment,
                "release_from": inc.release_from.version,
                "release_to": inc.release_to.version,
            })),
        });
        EventsV2 {
            routing_key,
            event_action,
            dedup_key,
            payload,
            client: Some("rollbackd".to_string()),
            client_url: link.map(str::to_string),
            links: link
                .map(|href| EventsV2Link {
                    href: href.to_string(),
                    text: Some(format!("rollbackd incident {}", inc.id)),
                })
                .into_iter()
                .collect(),
            images: Vec::new(),
        }
    }
}

impl PdClient {
    /// `api_url` and `events_url` are bases without a path (trailing `/` is dropped), e.g.
    /// [`DEFAULT_API_URL`] and [`DEFAULT_EVENTS_URL`]; `from` is the email of the PagerDuty user
    /// that REST writes are made as.
    pub fn new(
        http: reqwest::Client,
        api_url: impl Into<String>,
        api_token: impl Into<String>,
        from: impl Into<String>,
        events_url: impl Into<String>,
    ) -> PdClient {
        PdClient {
            http,
            api_url: api_url.into().trim_end_matches('/').to_string(),
            api_token: api_token.into(),
            from: from.into(),
            events_url: events_url.into().trim_end_matches('/').to_string(),
        }
    }

    /// From the `pagerduty:` config, with PagerDuty's public URLs as defaults. A missing token or
    /// `from` makes REST calls fail permanently (the Events API needs neither).
    pub fn from_config(http: reqwest::Client, c: &crate::config::PagerDuty) -> PdClient {
        PdClient::new(
            http,
            c.api_url.as_deref().unwrap_or(DEFAULT_API_URL),
            c.api_token
                .as_ref()
                .map(|t| t.expose().to_string())
                .unwrap_or_default(),
            c.from.clone().unwrap_or_default(),
            c.events_url.as_deref().unwrap_or(DEFAULT_EVENTS_URL),
        )
    }

    /// Sends one Events API v2 event; `Ok` is the dedup key PagerDuty filed it under.
    /// A summary over 1024 characters is cut (with `…`) rather than refused.
    pub async fn enqueue(&self, ev: &EventsV2) -> Result<String, PdError> {
        let what = format!("PagerDuty Events API {}", ev.event_action);
        if ev.routing_key.is_empty() {
            return Err(PdError::Permanent(format!(
                "{what}: no routing key configured"
            )));
        }
        if ev.dedup_key.is_empty() || ev.dedup_key.chars().count() > MAX_DEDUP_KEY_CHARS {
            return Err(PdError::Permanent(format!(
                "{what}: dedup_key must be 1 to {MAX_DEDUP_KEY_CHARS} characters"
            )));
        }
        let mut body = ev.clone();
        if let Some(p) = &mut body.payload {
            p.summary = truncate_chars(&p.summary, MAX_SUMMARY_CHARS);
        }
        let url = format!("{}/v2/enqueue", self.events_url);
        let resp = self
            .http
            .post(&url)
            .timeout(TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport(&what, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let scrub = |s: &str| self.scrub(s, &[&ev.routing_key]);
        if status.is_success() {
            let key = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("dedup_key")?.as_str().map(str::to_string))
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| ev.dedup_key.clone());
            return Ok(key);
        }
        let detail = scrub(&events_error(&text));
        Err(classify(&what, status, &headers, &detail))
    }

    /// Adds a note to a PagerDuty incident (`POST /incidents/{id}/notes`), as the `from` user.
    pub async fn note(&self, incident_id: &str, content: &str) -> Result<(), PdError> {
        let path = format!("/incidents/{}/notes", checked_id(incident_id)?);
        let body = json!({ "note": { "content": content } });
        self.rest(reqwest::Method::POST, &path, &body, &[])
            .await
            .map(|_| ())
    }

    /// Resolves a PagerDuty incident (`PUT /incidents/{id}`). Already resolved (code 1001) is
    /// success: resolving is idempotent for rollbackd.
    pub async fn resolve_incident(&self, incident_id: &str) -> Result<(), PdError> {
        let path = format!("/incidents/{}", checked_id(incident_id)?);
        let body = json!({ "incident": { "type": "incident_reference", "status": "resolved" } });
        self.rest(reqwest::Method::PUT, &path, &body, &[1001])
            .await
            .map(|_| ())
    }

    /// One REST write; `ok_codes` are PagerDuty error codes that mean "already done".
    async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        ok_codes: &[i64],
    ) -> Result<Value, PdError> {
        let what = format!("PagerDuty {method} {path}");
        if self.api_token.is_empty() {
            return Err(PdError::Permanent(format!(
                "{what}: pagerduty.api_token is not configured"
            )));
        }
        if self.from.is_empty() {
            return Err(PdError::Permanent(format!(
                "{what}: pagerduty.from (the email of the PagerDuty user rollbackd acts as) is not configured"
            )));
        }
        let resp = self
            .http
            .request(method, format!("{}{path}", self.api_url))
            .timeout(TIMEOUT)
            .header(AUTHORIZATION, format!("Token token={}", self.api_token))
            .header(ACCEPT, ACCEPT_V2)
            .header(CONTENT_TYPE, "application/json")
            .header("From", &self.from)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport(&what, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let (code, detail) = rest_error(&text);
        if code.is_some_and(|c| ok_codes.contains(&c)) {
            return Ok(Value::Null);
        }
        let detail = self.scrub(&detail, &[]);
        Err(classify(&what, status, &headers, &detail))
    }

    /// Removes the token (and any `extra` secret) from text PagerDuty sent back.
    fn scrub(&self, s: &str, extra: &[&str]) -> String {
        let mut out = s.to_string();
        for secret in std::iter::once(self.api_token.as_str()).chain(extra.iter().copied()) {
            if secret.len() >= 4 {
                out = out.replace(secret, "<redacted>");
            }
        }
        out
    }
}

/// PagerDuty ids are short alphanumeric strings (7 or 14 characters in practice); anything
/// else is refused before it can change the URL.
fn checked_id(id: &str) -> Result<&str, PdError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(PdError::Permanent(format!(
            "`{}` is not a PagerDuty incident id (expected letters and digits)",
            truncate_chars(id, 40)
        )))
    }
}

fn classify(what: &str, status: StatusCode, headers: &HeaderMap, detail: &str) -> PdError {
    let code = status.as_u16();
    let why = if detail.is_empty() {
        format!("{what}: HTTP {code}")
    } else {
        format!("{what}: HTTP {code}: {detail}")
    };
    match code {
        429 => PdError::Retry {
            after: retry_after(headers),
            why,
        },
        408 | 500..=599 => PdError::Retry { after: None, why },
        _ => PdError::Permanent(why),
    }
}

/// `ratelimit-reset` (seconds until the window resets), else `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs = |name: &str| -> Option<Duration> {
        let v = headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v).min(MAX_RETRY_AFTER))
    };
    secs("ratelimit-reset").or_else(|| secs(RETRY_AFTER.as_str()))
}

/// A transport failure: retry unless the request could not even be built. Never names the URL.
fn transport(what: &str, e: &reqwest::Error) -> PdError {
    if e.is_builder() {
        return PdError::Permanent(format!(
            "{what}: invalid request (check pagerduty.api_url, events_url, from and the token's characters)"
        ));
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    PdError::Retry {
        after: None,
        why: format!("{what}: {kind}"),
    }
}

/// REST error body `{"error": {"message", "code", "errors": [..]}}` as `(code, "code N: msg (..)")`.
fn rest_error(text: &str) -> (Option<i64>, String) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return (None, truncate_chars(text.trim(), 200));
    };
    let err = v.get("error").unwrap_or(&Value::Null);
    let code = err.get("code").and_then(Value::as_i64);
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    let mut out = match code {
        Some(c) => format!("code {c}: {message}"),
        None => message.to_string(),
    };
    let details = string_list(err.get("errors"));
    if !details.is_empty() {
        out.push_str(&format!(" ({details})"));
    }
    (code, truncate_chars(&out, 500))
}

/// Events API error body `{"status", "message", "errors": [..]}`.
fn events_error(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return truncate_chars(text.trim(), 200);
    };
    let parts: Vec<&str> = ["status", "message"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = parts.join(": ");
    let details = string_list(v.get("errors"));
    if !details.is_empty() {
        out.push_str(&format!(" ({details})"));
    }
    truncate_chars(&out, 500)
}

fn string_list(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// At most `max` characters, the last one `…` when cut.
fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert_eq!(checked_id("PGR0VU2"), Ok("PGR0VU2"));
        assert_eq!(checked_id("Q2CKYRLH85UNN4"), Ok("Q2CKYRLH85UNN4"));
        for bad in ["", "../users", "P1/notes", "P1?x=1", "P 1", "P%2F", "é"] {
            assert!(
                matches!(checked_id(bad), Err(PdError::Permanent(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcd", 3), "ab…");
        let long = "é".repeat(2000);
        let t = truncate_chars(&long, MAX_SUMMARY_CHARS);
        assert_eq!(t.chars().count(), MAX_SUMMARY_CHARS);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn error_bodies_are_summarised() {
        let (code, d) = rest_error(
            r#"{"error":{"message":"Malformed \"From\" header","code":1028,"errors":["From must be an email"]}}"#,
        );
        assert_eq!(code, Some(1028));
        assert_eq!(
            d,
            r#"code 1028: Malformed "From" header (From must be an email)"#
        );
        assert_eq!(
            rest_error("<html>oops</html>"),
            (None, "<html>oops</html>".into())
        );
        assert_eq!(
            events_error(
                r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect (should be 32 characters)"]}"#
            ),
            "invalid event: Event object is invalid (Length of 'routing_key' is incorrect (should be 32 characters))"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = PdClient::new(
            reqwest::Client::new(),
            "https://api.pagerduty.com/",
            "u+supersecrettoken",
            "bot@example.com",
            "https://events.pagerduty.com",
        );
        let d = format!("{c:?}");
        assert!(!d.contains("supersecret"), "{d}");
        assert_eq!(c.api_url, "https://api.pagerduty.com");
        assert_eq!(
            c.scrub("bad token u+supersecrettoken", &[]),
            "bad token <redacted>"
        );
        let ev = EventsV2 {
            routing_key: "R0UT1NGKEY0123456789abcdefABCDEF".into(),
            event_action: EventAction::Resolve,
            dedup_key: "rollbackd/inc-1".into(),
            payload: None,
            client: None,
            client_url: None,
            links: vec![],
            images: vec![],
        };
        assert!(!format!("{ev:?}").contains("R0UT1NG"));
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"routing_key":"R0UT1NGKEY0123456789abcdefABCDEF","event_action":"resolve","dedup_key":"rollbackd/inc-1"})
        );
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("ratelimit-reset", "20".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(20)));
        h.insert("ratelimit-reset", "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert("ratelimit-reset", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}
