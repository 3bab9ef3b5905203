//! Votes that are a person's: `people[].token` makes a vote through the API count for that
//! person only; the admin token keeps break-glass (a vote as anyone, recorded as such).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "personAdminToken0123456789abcdef";
const ADA: &str = "ada-own-token-0123456789abcdefgh";
const CY: &str = "cy-own-token-0123456789abcdefghi";

const RULES: &str = r#"rules:
  - name: web-errors
    match:
      - alertname="WebDown"
    service: web
    breach: {sustained: 3s, clear_after: 1s}
    release: {max_age: 1h}
    approval: {require_roles: [founder, client-success-lead], quorum: 2, timeout: 5m}
    steps:
      - name: noop
        run: [/bin/true]
"#;

/// Ada's token from a file, Cy's inline; Eve has none.
fn setup() -> Setup {
    let setup = Setup::new("", RULES);
    let token_file = setup.path().join("ada.token");
    std::fs::write(&token_file, format!("{ADA}\n")).expect("token file");
    let cfg = setup.path().join("rollbackd.yaml");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "tokens: {{admin: \"{ADMIN}\"}}\npeople:\n  - {{id: ada, roles: [founder], token: \"${{file:{}}}\"}}\n  - {{id: cy, roles: [client-success-lead], token: \"{CY}\"}}\n  - {{id: eve, roles: [founder]}}\n",
        token_file.display()
    ));
    std::fs::write(&cfg, text).expect("config");
    setup
}

fn awaiting(d: &Daemon) -> String {
    two_releases(d, "web");
    let (s, b) = post(
        &d.url("/v1/signals"),
        None,
        &json!({"labels": {"alertname": "WebDown"}, "status": "firing", "starts_at": ts(-2.5)}),
    );
    assert!((200..300).contains(&s), "{s} {b}");
    first_incident(d, "awaiting_approval", Some(ADMIN), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no incident awaiting approval:\n{}", d.stderr()))
}

fn votes(d: &Daemon, id: &str) -> Vec<Value> {
    let (s, v) = get(&d.url(&format!("/v1/incidents/{id}")), Some(ADMIN));
    assert_eq!(s, 200, "{v}");
    v["approvals"]["votes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_persons_token_votes_only_as_that_person() {
    let setup = setup();
    let d = setup.start();
    let id = awaiting(&d);
    let approve = d.url(&format!("/v1/incidents/{id}/approve"));

    // Ada's token cannot vote as Cy: refused before anything is recorded.
    let (s, v) = post(&approve, Some(ADA), &json!({"person": "cy", "reason": "x"}));
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("ada"), "{v}");
    assert!(votes(&d, &id).is_empty(), "{:?}", votes(&d, &id));

    // No token, or one nobody holds: 401.
    let (s, v) = post(&approve, None, &json!({"person": "ada"}));
    assert_eq!(s, 401, "{v}");
    let (s, v) = post(&approve, Some("not-anyones-token-0123456789"), &json!({}));
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].is_string(), "{v}");

    // Ada's token with no person (or her own id) is her vote.
    let (s, v) = post(&approve, Some(ADA), &json!({"reason": "confirmed"}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&approve, Some(ADA), &json!({"person": "ada"}));
    assert_eq!(s, 409, "one vote per person: {v}");
    let vs = votes(&d, &id);
    let ada: Vec<&Value> = vs.iter().filter(|v| v["counted"] == true).collect();
    assert_eq!(ada.len(), 1, "{vs:?}");
    assert_eq!(ada[0]["person"], "ada");
    assert_eq!(ada[0]["via"], "person-token");

    // The admin token still votes as anyone, recorded as break-glass; the quorum is reached.
    let (s, v) = post(
        &approve,
        Some(ADMIN),
        &json!({"person": "cy", "reason": "on call"}),
    );
    assert_eq!(s, 200, "{v}");
    let vs = votes(&d, &id);
    let cy = vs
        .iter()
        .find(|v| v["person"] == "cy" && v["counted"] == true)
        .unwrap_or_else(|| panic!("{vs:?}"));
    assert_eq!(cy["via"], "break-glass");
    let (_, inc) = get(&d.url(&format!("/v1/incidents/{id}")), Some(ADMIN));
    assert_ne!(inc["state"], "awaiting_approval", "{inc}");
    let timeline = inc["timeline"].to_string();
    assert!(timeline.contains("via person-token"), "{timeline}");
    assert!(timeline.contains("via break-glass"), "{timeline}");

    // A person's token is no admin token.
    let (s, v) = post(&d.url("/-/reload"), Some(CY), &json!({}));
    assert_eq!(s, 401, "{v}");
    assert!(!d.stderr().contains(ADA) && !d.stderr().contains(CY));
}

#[test]
fn cli_votes_with_a_persons_token_need_no_person() {
    let setup = setup();
    let d = setup.start();
    let id = awaiting(&d);
    let out = Command::new(bin())
        .args([
            "reject",
            &id,
            "--reason",
            "not this one",
            "--url",
            &d.base,
            "--token",
            CY,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, inc) = get(&d.url(&format!("/v1/incidents/{id}")), Some(ADMIN));
    assert_eq!(inc["state"], "rejected", "{inc}");
    assert_eq!(inc["approvals"]["votes"][0]["person"], "cy", "{inc}");
}

#[test]
fn a_persons_token_must_be_its_own() {
    for people in [
        format!("  - {{id: ada, roles: [founder], token: \"{ADMIN}\"}}\n"),
        format!(
            "  - {{id: ada, roles: [founder], token: \"{ADA}\"}}\n  - {{id: cy, roles: [founder], token: \"{ADA}\"}}\n"
        ),
    ] {
        let setup = Setup::new(
            &format!("tokens: {{admin: \"{ADMIN}\"}}\npeople:\n{people}"),
            RULES,
        );
        let out = Command::new(bin())
            .args(["serve", "--config"])
            .arg(setup.path().join("rollbackd.yaml"))
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(".token"), "{err}");
        assert!(
            !err.contains(ADMIN) && !err.contains(ADA),
            "a token shown: {err}"
        );
    }
}

/// A short token is allowed (the contract sets no length) and said at start, by key, never by
/// value; the token still works.
#[test]
fn a_short_token_starts_with_a_warning_naming_its_key() {
    let setup = Setup::new("tokens: {admin: \"adm1n-pw\"}\n", "rules: []\n");
    let d = setup.start();
    let (s, v) = post(&d.url("/-/reload"), Some("adm1n-px"), &json!({}));
    assert_eq!(s, 401, "{v}");
    let (s, v) = post(&d.url("/-/reload"), Some("adm1n-pw"), &json!({}));
    assert_eq!(s, 200, "{v}");
    let err = d.stderr();
    assert!(
        err.contains("tokens.admin is shorter than 16 characters"),
        "{err}"
    );
    assert!(!err.contains("adm1n-pw"), "the token shown: {err}");
}
