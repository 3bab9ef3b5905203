//! The daemon's log keeps one event per line: input that holds a newline (a vote's reason, a
//! person id, a freeze reason) cannot forge a log line, and no colour codes go to a stderr that
//! is not a terminal.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdefghij";
const FORGED: &str = "2026-01-01T00:00:00Z  INFO rollbackd: forged";

const RULES: &str = r#"rules:
  - name: web-errors
    match:
      - alertname="WebHighErrorRate"
    group_by: [service]
    service: "{{ labels.service }}"
    breach:
      sustained: 3s
      clear_after: 1s
    release:
      max_age: 1h
    approval: {require_roles: [founder, client-success-lead], quorum: 2, timeout: 5m}
    steps:
      - name: noop
        run: [/bin/true]
"#;

fn send(method: reqwest::Method, url: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .request(method, url)
        .bearer_auth(ADMIN)
        .json(body)
        .send()
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn a_newline_in_input_never_starts_a_log_line() {
    let setup = Setup::new(
        &format!(
            "people:\n  - {{id: ada, roles: [founder]}}\n  - {{id: cy, roles: [client-success-lead]}}\ntokens: {{admin: \"{ADMIN}\"}}\n"
        ),
        RULES,
    );
    let d = setup.start();
    for (id, secs) in [("A", -120.0), ("B", -60.0)] {
        post_release(&d, "web", id, &ts(secs));
    }
    let labels = json!({"alertname": "WebHighErrorRate", "service": "web", "severity": "page"});
    let (s, v) = post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &am_alert("firing", labels, &ts(-2.5), "fp-log"),
    );
    assert_eq!(s, 200, "{v}");
    let id = first_incident(&d, "awaiting_approval", None, Duration::from_secs(8))
        .unwrap_or_else(|| panic!("no incident awaiting approval:\n{}", d.stderr()));
    let approve = d.url(&format!("/v1/incidents/{id}/approve"));

    // A counted vote logs its reason; a refused one logs the person; a freeze logs its reason.
    let (s, v) = send(
        reqwest::Method::POST,
        &approve,
        &json!({"person": "ada", "reason": format!("looks bad\n{FORGED} vote\r\n")}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = send(
        reqwest::Method::POST,
        &approve,
        &json!({"person": format!("mallory\n{FORGED} person"), "reason": "x"}),
    );
    assert_eq!(s, 403, "{v}");
    let (s, v) = send(
        reqwest::Method::PUT,
        &d.url("/v1/freezes/web"),
        &json!({"reason": format!("hold\n{FORGED} freeze\u{1b}[2J")}),
    );
    assert_eq!(s, 200, "{v}");

    let log = wait_for(Duration::from_secs(5), || {
        let log = d.stderr();
        (log.contains("forged vote")
            && log.contains("forged person")
            && log.contains("forged freeze"))
        .then_some(log)
    })
    .unwrap_or_else(|| panic!("the inputs were not logged:\n{}", d.stderr()));
    for line in log.lines() {
        assert!(!line.starts_with(FORGED), "a forged line: {line:?}\n{log}");
    }
    for escaped in [
        format!("looks bad\\n{FORGED} vote\\r\\n"),
        format!("mallory\\n{FORGED} person"),
        format!("hold\\n{FORGED} freeze\\u{{1b}}[2J"),
    ] {
        assert!(log.contains(&escaped), "{escaped:?} not in the log:\n{log}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{log:?}"
    );
}
