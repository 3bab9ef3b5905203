//! Announcements, black-box: the real `rollbackd` binary delivering its durable outbox to a fake
//! Slack incoming webhook and a fake generic webhook receiver, both small HTTP servers in the
//! test that record every request. The Slack one answers `ok` like Slack; either can be told to
//! fail (500, a Slack 4xx) or be down (its port closed: connection refused) and come back on the
//! same port.
//!
//! Time is the wall clock; rules act within a second (alerts posted with `startsAt` in the
//! past). Every wait polls. Each test has its own daemon, receivers and temp dir.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::receiver::{Receiver, Req};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

// ---- the daemon ----

const SECRET: &str = "audit-signing-secret-0123456789";
const SLACK_PATH: &str = "/services/T000/B000/XXXX";
const PUBLIC_URL: &str = "https://rollbackd.example.com";
const ALERT: &str = "WebHighErrorRate";
const SERVICE: &str = "web";
/// The announcement kinds of a rollback without approval that succeeds.
const ROLLBACK: [&str; 3] = ["approved", "rollback_started", "rolled_back"];

fn config(slack: &Receiver, generic: &Receiver) -> String {
    format!(
        r#"public_url: {PUBLIC_URL}
notifiers:
  incidents: {{slack_webhook: "{}"}}
  audit: {{webhook: "{}", secret: "{SECRET}"}}
"#,
        slack.url(SLACK_PATH),
        generic.url("/hook")
    )
}

/// `approval: none`, one step running `script` (with the previous deployment id as `$0`).
fn rules(script: &str) -> String {
    format!(
        r#"rules:
  - name: web-errors
    match:
      - alertname="{ALERT}"
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach:
      sustained: 3s
      clear_after: 1s
    release:
      max_age: 1h
    approval: none
    steps:
      - name: roll back deployment
        run: [/bin/sh, -c, '{script}', "{{{{ release.previous.deployment_id }}}}"]
        timeout: 1m
    notify: [incidents, audit]
"#
    )
}

fn log_script(log: &Path) -> String {
    format!("echo \"$0\" >> {}", log.display())
}

/// Starts a daemon, posts releases A then B and an alert that started 2.5 s ago; returns the
/// daemon and the incident id.
fn start(setup: &Setup) -> (Daemon, String) {
    let d = setup.start();
    for (id, at) in [("A", -120.0), ("B", -60.0)] {
        let (s, v) = post(
            &d.url("/v1/releases"),
            None,
            &json!({
                "service": SERVICE, "environment": "production", "version": format!("v-{id}"),
                "deployment_id": id, "deployed_at": ts(at),
            }),
        );
        assert_eq!(s, 201, "{v}");
    }
    let alert = am_alert(
        "firing",
        json!({"alertname": ALERT, "service": SERVICE, "severity": "page"}),
        &ts(-2.5),
        "fp-notify",
    );
    let (s, v) = post(&d.url("/v1/webhooks/alertmanager"), None, &alert);
    assert_eq!(s, 200, "{v}");
    let id = wait_for(Duration::from_secs(5), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        v["items"][0]["id"].as_str().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no incident; stderr:\n{}", d.stderr()));
    (d, id)
}

fn incident(d: &Daemon, id: &str) -> Value {
    let (s, v) = get(&d.url(&format!("/v1/incidents/{id}")), None);
    assert_eq!(s, 200, "{v}");
    v
}

fn wait_state(d: &Daemon, id: &str, state: &str, timeout: Duration) -> Value {
    wait_for(timeout, || {
        let v = incident(d, id);
        (v["state"] == state).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "{id} did not reach {state}: {:#}\nstderr:\n{}",
            incident(d, id),
            d.stderr()
        )
    })
}

fn timeline(inc: &Value) -> Vec<Value> {
    inc["timeline"].as_array().cloned().unwrap_or_default()
}

/// Timeline entries of `kind` whose message mentions `target`.
fn entries(inc: &Value, kind: &str, target: &str) -> Vec<String> {
    timeline(inc)
        .iter()
        .filter(|t| t["kind"] == kind)
        .filter_map(|t| t["message"].as_str())
        .filter(|m| m.contains(&format!("to {target}")))
        .map(str::to_string)
        .collect()
}

/// The incident states whose transitions are announced, in timeline order, as announcement
/// kinds.
fn announced(inc: &Value) -> Vec<String> {
    timeline(inc)
        .iter()
        .filter_map(|t| match t["kind"].as_str()? {
            "awaiting_approval" => Some("approval_requested"),
            "rolling_back" => Some("rollback_started"),
            k @ ("approved" | "rejected" | "expired" | "cancelled" | "rolled_back"
            | "rollback_failed" | "step_failed") => Some(k),
            _ => None,
        })
        .map(str::to_string)
        .collect()
}

fn kinds(reqs: &[Req]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.body["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn slack_headers(reqs: &[Req]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            r.body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// What a receiver of the generic webhook does: HMAC-SHA256 over `"<timestamp>.<raw body>"`.
fn verify_signature(r: &Req) {
    let ts = r.header("x-rollbackd-timestamp");
    let secs: i64 = ts
        .parse()
        .unwrap_or_else(|_| panic!("timestamp {ts:?}: {r:#?}"));
    let now = jiff::Timestamp::now().as_second();
    assert!(
        (now - secs).abs() < 120,
        "timestamp {secs} is not recent ({now})"
    );
    let sig = r.header("x-rollbackd-signature");
    let given = sig
        .strip_prefix("v1=")
        .unwrap_or_else(|| panic!("signature {sig:?}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.raw);
    let want = hex::encode(mac.finalize().into_bytes());
    assert_eq!(
        given,
        want,
        "signature of {}",
        String::from_utf8_lossy(&r.raw)
    );
    // And it does not verify a body changed by one byte.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.raw);
    mac.update(b" ");
    let sig = hex::decode(given).expect("hex signature");
    assert!(mac.verify_slice(&sig).is_err());
}

/// Asserts that no `X-Rollbackd-Delivery` id was delivered twice.
fn assert_unique_ids(reqs: &[Req], who: &str) {
    let mut seen = HashSet::new();
    for r in reqs {
        let id = r.header("x-rollbackd-delivery");
        assert!(!id.is_empty(), "{who}: no delivery id: {r:#?}");
        assert!(seen.insert(id.to_string()), "{who}: {id} delivered twice");
    }
}

// ---- 1. a rollback announced to Slack and a signed webhook ----

#[test]
fn rollback_is_announced_in_order_to_slack_and_a_signed_webhook() {
    let slack = Receiver::slack();
    let generic = Receiver::generic();
    let setup = Setup::new(&config(&slack, &generic), "");
    let log = setup.path().join("steps.log");
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        rules(&log_script(&log)),
    )
    .unwrap();
    let (d, id) = start(&setup);
    let inc = wait_state(&d, &id, "rolled_back", Duration::from_secs(5));
    assert_eq!(announced(&inc), ROLLBACK, "{inc:#}");

    // Slack: Block Kit, in order.
    let s = slack.wait_delivered(3, Duration::from_secs(5));
    for r in &s {
        assert_eq!(r.path, SLACK_PATH);
        assert!(
            r.header("content-type").starts_with("application/json"),
            "{r:#?}"
        );
        assert!(
            r.body["text"].as_str().is_some_and(|t| !t.is_empty()),
            "{r:#?}"
        );
        let blocks = r.body["blocks"].as_array().expect("blocks");
        assert_eq!(blocks[0]["type"], "header", "{r:#?}");
        assert_eq!(blocks[0]["text"]["type"], "plain_text", "{r:#?}");
        let header = blocks[0]["text"]["text"].as_str().unwrap();
        assert!(
            header.contains(SERVICE),
            "header names the service: {header}"
        );
        assert!(header.chars().count() <= 150, "{header}");
        let all = r.body.to_string();
        assert!(
            all.contains("v-B → v-A"),
            "releases from → to in the message: {all}"
        );
        assert!(
            all.contains(&format!("{PUBLIC_URL}/v1/incidents/{id}")),
            "links back: {all}"
        );
    }
    let headers = slack_headers(&s);
    assert!(headers[0].contains("approved"), "{headers:?}");
    assert!(headers[1].contains("Rollback initiated"), "{headers:?}");
    // Each message shows the state of its own moment, not the state at delivery.
    let states: Vec<String> = s
        .iter()
        .map(|r| {
            r.body["blocks"][2]["fields"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        states,
        [
            "*State*\napproved",
            "*State*\nrolling_back",
            "*State*\nrolled_back"
        ],
        "{states:?}"
    );
    assert!(
        headers[2].contains("Rolled back") && headers[2].contains("v-A"),
        "{headers:?}"
    );
    assert_unique_ids(&s, "slack");

    // Generic webhook: id, kind, incident; signed.
    let g = generic.wait_delivered(3, Duration::from_secs(5));
    assert_eq!(kinds(&g), ROLLBACK);
    for r in &g {
        assert_eq!(r.path, "/hook");
        assert_eq!(r.body["id"], r.header("x-rollbackd-delivery"), "{r:#?}");
        assert_eq!(r.body["incident"]["id"], id.as_str(), "{r:#?}");
        assert_eq!(r.body["incident"]["service"], SERVICE, "{r:#?}");
        assert_eq!(
            r.body["incident"]["release_from"]["deployment_id"], "B",
            "{r:#?}"
        );
        assert!(r.body["headline"].is_string() && r.body["text"].is_string());
        verify_signature(r);
    }
    assert_unique_ids(&g, "audit");
    // Slack is not signed (it has no secret).
    assert!(
        s.iter()
            .all(|r| r.header("x-rollbackd-signature").is_empty())
    );

    // Each delivery is in the timeline.
    let inc = wait_for(Duration::from_secs(5), || {
        let inc = incident(&d, &id);
        (timeline(&inc)
            .iter()
            .filter(|t| t["kind"] == "notified")
            .count()
            == 6)
            .then_some(inc)
    })
    .unwrap_or_else(|| panic!("{:#}", incident(&d, &id)));
    for target in ["incidents", "audit"] {
        let n = entries(&inc, "notified", target);
        assert_eq!(n.len(), 3, "{target}: {n:#?}");
        for (msg, kind) in n.iter().zip(ROLLBACK) {
            assert!(msg.starts_with(kind), "{msg} should announce {kind}");
        }
    }
    // Nothing more arrives.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(slack.requests().len(), 3);
    assert_eq!(generic.requests().len(), 3);
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["A"]
    );
}

// ---- 2. outage, crash and recovery ----

#[test]
fn outage_across_a_kill9_loses_nothing_and_duplicates_nothing() {
    let mut slack = Receiver::slack();
    let generic = Receiver::generic();
    slack.down(); // connection refused
    generic.fail_all(500, "upstream unavailable");
    let setup = Setup::new(&config(&slack, &generic), "");
    let log = setup.path().join("steps.log");
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        rules(&log_script(&log)),
    )
    .unwrap();
    let (d, id) = start(&setup);

    // The rollback does not wait for the receivers.
    let inc = wait_state(&d, &id, "rolled_back", Duration::from_secs(5));
    assert_eq!(inc["steps"][0]["state"], "done");
    // Both targets were tried and failed.
    let inc = wait_for(Duration::from_secs(5), || {
        let inc = incident(&d, &id);
        (!entries(&inc, "notification_retry", "incidents").is_empty()
            && !entries(&inc, "notification_retry", "audit").is_empty())
        .then_some(inc)
    })
    .unwrap_or_else(|| panic!("no retries recorded: {:#}", incident(&d, &id)));
    assert!(
        entries(&inc, "notification_retry", "audit")[0].contains("HTTP 500"),
        "{inc:#}"
    );
    assert!(!generic.requests().is_empty());
    assert!(generic.delivered().is_empty());
    let expected = announced(&inc);
    assert_eq!(expected, ROLLBACK, "{inc:#}");

    d.kill9();
    slack.up();
    generic.recover();
    let d = setup.start();

    let s = slack.wait_delivered(expected.len(), Duration::from_secs(15));
    let g = generic.wait_delivered(expected.len(), Duration::from_secs(15));
    // Give any duplicate time to show up.
    std::thread::sleep(Duration::from_millis(1500));
    let s2 = slack.delivered();
    let g2 = generic.delivered();
    assert_eq!(s2.len(), s.len(), "slack: {s2:#?}");
    assert_eq!(g2.len(), g.len(), "audit: {g2:#?}");
    assert_eq!(
        s2.len(),
        expected.len(),
        "slack: one message per transition"
    );
    assert_eq!(
        g2.len(),
        expected.len(),
        "audit: one message per transition"
    );
    assert_unique_ids(&s2, "slack");
    assert_unique_ids(&g2, "audit");
    assert_eq!(kinds(&g2), expected, "audit order");
    let headers = slack_headers(&s2);
    assert!(headers[0].contains("approved"), "{headers:?}");
    assert!(headers[1].contains("Rollback initiated"), "{headers:?}");
    assert!(headers[2].contains("Rolled back"), "{headers:?}");
    for r in &g2 {
        verify_signature(r);
    }
    // The 500s were the same deliveries, retried under their ids.
    let ids: HashSet<String> = g2
        .iter()
        .map(|r| r.header("x-rollbackd-delivery").to_string())
        .collect();
    assert!(
        generic
            .requests()
            .iter()
            .all(|r| ids.contains(r.header("x-rollbackd-delivery"))),
        "{:#?}",
        generic.requests()
    );
    let inc = wait_for(Duration::from_secs(5), || {
        let inc = incident(&d, &id);
        (timeline(&inc)
            .iter()
            .filter(|t| t["kind"] == "notified")
            .count()
            == 6)
            .then_some(inc)
    })
    .unwrap_or_else(|| panic!("{:#}", incident(&d, &id)));
    assert_eq!(inc["state"], "rolled_back");
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["A"],
        "the restart ran nothing again"
    );
}

// ---- 3. a Slack 4xx drops one message, not the queue ----

#[test]
fn slack_4xx_drops_that_message_and_later_ones_arrive() {
    let slack = Receiver::slack();
    let generic = Receiver::generic();
    slack.fail_next(404, "no_service");
    let setup = Setup::new(&config(&slack, &generic), "");
    let log = setup.path().join("steps.log");
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        rules(&log_script(&log)),
    )
    .unwrap();
    let (d, id) = start(&setup);
    wait_state(&d, &id, "rolled_back", Duration::from_secs(5));

    let s = slack.wait_delivered(2, Duration::from_secs(5));
    let headers = slack_headers(&s);
    assert!(headers[0].contains("Rollback initiated"), "{headers:?}");
    assert!(headers[1].contains("Rolled back"), "{headers:?}");
    let all = slack.requests();
    assert_eq!(all.len(), 3, "the 404 is not retried: {all:#?}");
    assert_eq!(all[0].status, 404);
    assert!(slack_headers(&all[..1])[0].contains("approved"), "{all:#?}");
    // The webhook receiver got everything.
    assert_eq!(
        kinds(&generic.wait_delivered(3, Duration::from_secs(5))),
        ROLLBACK
    );

    let inc = wait_for(Duration::from_secs(5), || {
        let inc = incident(&d, &id);
        (entries(&inc, "notified", "incidents").len() == 2).then_some(inc)
    })
    .unwrap_or_else(|| panic!("{:#}", incident(&d, &id)));
    let dropped = entries(&inc, "notification_dropped", "incidents");
    assert_eq!(dropped.len(), 1, "{inc:#}");
    assert!(
        dropped[0].starts_with("approved") && dropped[0].contains("404"),
        "{dropped:?}"
    );
    assert!(dropped[0].contains("no_service"), "{dropped:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(slack.requests().len(), 3, "never sent again");
}

// ---- 4. a failed rollback escalates ----

#[test]
fn failed_rollback_sends_an_escalation() {
    let slack = Receiver::slack();
    let generic = Receiver::generic();
    let setup = Setup::new(&config(&slack, &generic), "");
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        rules("echo cannot reach the deploy API >&2; exit 3"),
    )
    .unwrap();
    let (d, id) = start(&setup);
    let inc = wait_state(&d, &id, "rollback_failed", Duration::from_secs(5));
    let expected = announced(&inc);
    assert_eq!(
        expected,
        [
            "approved",
            "rollback_started",
            "step_failed",
            "rollback_failed"
        ],
        "{inc:#}"
    );

    let g = generic.wait_delivered(expected.len(), Duration::from_secs(5));
    assert_eq!(kinds(&g), expected);
    let last = &g[g.len() - 1];
    let text = last.body["text"].as_str().unwrap_or("");
    let headline = last.body["headline"].as_str().unwrap_or("");
    assert!(
        text.contains("Escalation") || headline.contains("ROLLBACK FAILED"),
        "{:#}",
        last.body
    );
    assert!(text.contains("exit"), "says why: {text}");
    verify_signature(last);

    let s = slack.wait_delivered(expected.len(), Duration::from_secs(5));
    let last = &s[s.len() - 1];
    let header = last.body["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap_or("");
    assert!(header.contains("ROLLBACK FAILED"), "{header}");
    assert!(
        last.body["text"]
            .as_str()
            .is_some_and(|t| t.contains("Escalation")),
        "{:#}",
        last.body
    );
}
