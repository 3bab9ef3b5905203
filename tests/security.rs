//! Security, black-box: the real `rollbackd` binary on a loopback port, attacked the way a caller
//! without credentials (or with the wrong ones) would. Each test states the guarantee it holds.
//!
//! Run one against another build with `ROLLBACKD_TEST_BIN=/path/to/rollbackd`.

mod common;
#[path = "common/fake_pagerduty.rs"]
mod fake_pagerduty;

use std::time::{Duration, Instant};

use common::*;
use fake_pagerduty::{signed_webhook, webhook_ping};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const INGEST: &str = "ingest-token-0123456789abcdef";
const RELEASES: &str = "releases-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const PD_SECRET: &str = "pd-webhook-secret-0123456789";
const GRAFANA_SECRET: &str = "grafana-webhook-secret-0123456789";

fn send(
    d: &Daemon,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut req = client()
        .post(d.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn alert(fingerprint: &str) -> String {
    am_alert(
        "firing",
        json!({"alertname": "WebErrors", "service": "web"}),
        &ts(-1.0),
        fingerprint,
    )
    .to_string()
}

fn grafana_body() -> String {
    let mut v = am_alert(
        "firing",
        json!({"alertname": "WebErrors", "service": "web"}),
        &ts(-1.0),
        "fp-grafana",
    );
    v["version"] = json!("1");
    v["orgId"] = json!(1);
    v["state"] = json!("alerting");
    v.to_string()
}

/// `X-Grafana-Alerting-Signature` over `"<ts>:" + body`, as Grafana computes it.
fn grafana_signature(ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(GRAFANA_SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}:").as_bytes());
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Every token kind and both body signatures configured; a quota of 3 per source.
fn guarded() -> (Setup, Daemon) {
    guarded_with(&format!(", releases: \"{RELEASES}\""))
}

fn guarded_with(more_tokens: &str) -> (Setup, Daemon) {
    let config = format!(
        r#"tokens: {{ ingest: "{INGEST}", admin: "{ADMIN}"{more_tokens} }}
limits: {{ ingest_per_second: 1, ingest_burst: 3 }}
pagerduty: {{ webhook_secrets: ["{PD_SECRET}"] }}
grafana: {{ webhook_secret: "{GRAFANA_SECRET}" }}
"#
    );
    let setup = Setup::new(&config, WEB_ERRORS_RULE);
    let d = setup.start();
    (setup, d)
}

/// Callers who cannot prove who they are never spend the quota the real senders need: a flood
/// without the token, with a wrong signature, or with the token but a forged body signature is
/// refused with 401 and leaves every source's quota whole.
#[test]
fn credentials_come_before_the_quota() {
    let (_setup, d) = guarded_with("");
    let body = alert("fp-1");
    let ping = webhook_ping("evt-quota");
    let gbody = grafana_body();
    let forged_grafana = grafana_signature(unix_now(), "{}");
    for i in 0..40 {
        let (s, _) = send(&d, "/v1/webhooks/alertmanager", None, &[], &body);
        assert_eq!(s, 401, "alertmanager without a token, try {i}");
        let (s, _) = send(
            &d,
            "/v1/webhooks/alertmanager",
            Some("wrong-token-0123456789"),
            &[],
            &body,
        );
        assert_eq!(s, 401, "alertmanager with a wrong token, try {i}");
        let forged = signed_webhook("not-the-secret-0123456789", &ping);
        let (s, _) = send(
            &d,
            "/v1/webhooks/pagerduty",
            None,
            &[("x-pagerduty-signature", &forged)],
            &ping,
        );
        assert_eq!(s, 401, "pagerduty with a forged signature, try {i}");
        let (s, _) = send(&d, "/v1/webhooks/grafana", None, &[], &gbody);
        assert_eq!(s, 401, "grafana without a token, try {i}");
        let ts = unix_now().to_string();
        let (s, _) = send(
            &d,
            "/v1/webhooks/grafana",
            Some(INGEST),
            &[
                ("x-grafana-alerting-signature", &forged_grafana),
                ("x-grafana-alerting-signature-timestamp", &ts),
            ],
            &gbody,
        );
        assert_eq!(s, 401, "grafana with a forged signature, try {i}");
        let (s, _) = send(&d, "/v1/releases", None, &[], "{}");
        assert_eq!(s, 401, "releases without a token, try {i}");
    }
    // The real senders, inside their quota, are all served.
    let (s, v) = send(&d, "/v1/webhooks/alertmanager", Some(INGEST), &[], &body);
    assert_eq!(s, 200, "{v}");
    let good = signed_webhook(PD_SECRET, &ping);
    let (s, v) = send(
        &d,
        "/v1/webhooks/pagerduty",
        None,
        &[("x-pagerduty-signature", &good)],
        &ping,
    );
    assert_eq!(s, 202, "{v}");
    let now = unix_now();
    let sig = grafana_signature(now, &gbody);
    let now = now.to_string();
    let (s, v) = send(
        &d,
        "/v1/webhooks/grafana",
        Some(INGEST),
        &[
            ("x-grafana-alerting-signature", &sig),
            ("x-grafana-alerting-signature-timestamp", &now),
        ],
        &gbody,
    );
    assert_eq!(s, 200, "{v}");
    // The quota itself still holds for an authenticated flood.
    let statuses: Vec<u16> = (0..10)
        .map(|_| send(&d, "/v1/webhooks/alertmanager", Some(INGEST), &[], &body).0)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let (_, metrics) = (
        0,
        client()
            .get(d.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default(),
    );
    assert!(
        metrics
            .contains(r#"rollbackd_ingest_rejected_total{reason="auth",source="alertmanager"} 80"#),
        "refusals are counted as auth, not rate_limited:\n{metrics}"
    );
}

fn release(d: &Daemon, token: Option<&str>, id: &str) -> (u16, Value) {
    let body = json!({"service": "web", "environment": "production", "version": id,
                      "deployment_id": id, "deployed_at": ts(-60.0)});
    send(d, "/v1/releases", token, &[], &body.to_string())
}

/// A release picks the rollback target, so with `tokens.releases` set only that token records
/// one: the alert senders' ingest token gets 401 there, and the releases token sends no alerts.
#[test]
fn releases_take_their_own_token() {
    let (_setup, d) = guarded();
    let (s, v) = release(&d, Some(INGEST), "dpl-by-alert-sender");
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("releases"),
        "{v}"
    );
    let (s, v) = send(
        &d,
        "/v1/webhooks/alertmanager",
        Some(RELEASES),
        &[],
        &alert("fp-r"),
    );
    assert_eq!(s, 401, "{v}");
    let (s, v) = release(&d, Some(RELEASES), "dpl-1");
    assert_eq!(s, 201, "{v}");
    let (s, v) = get(&d.url("/v1/releases/web"), None);
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["deployment_id"].as_str())
        .collect();
    assert_eq!(ids, ["dpl-1"], "the refused release changed nothing: {v}");

    // Without `tokens.releases` the ingest token records releases, and the start says so.
    let setup = Setup::new(
        &format!("tokens: {{ ingest: \"{INGEST}\" }}\n"),
        WEB_ERRORS_RULE,
    );
    let shared = setup.start();
    let (s, v) = release(&shared, Some(INGEST), "dpl-2");
    assert_eq!(s, 201, "{v}");
    assert!(
        shared.stderr().contains("tokens.releases is not set"),
        "{}",
        shared.stderr()
    );
}

/// Grafana's signed timestamp makes a captured delivery worthless after
/// `grafana.signature_max_age` (default 5 minutes): older or far-future timestamps get 401.
#[test]
fn grafana_signatures_expire() {
    let (_setup, d) = guarded();
    let body = grafana_body();
    for (offset, want) in [(-600, 401), (600, 401), (-30, 200)] {
        let at = unix_now() + offset;
        let sig = grafana_signature(at, &body);
        let at = at.to_string();
        let (s, v) = send(
            &d,
            "/v1/webhooks/grafana",
            Some(INGEST),
            &[
                ("x-grafana-alerting-signature", &sig),
                ("x-grafana-alerting-signature-timestamp", &at),
            ],
            &body,
        );
        assert_eq!(s, want, "timestamp {offset:+}s: {v}");
        if want == 401 {
            assert!(
                v["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("signature_max_age"),
                "{v}"
            );
        }
    }
    let (s, v) = get(&d.url("/v1/breaches"), None);
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
}

/// A vote that arrives after the approval deadline never counts, however close to it: every
/// counted vote is older than the deadline, and the request ends `expired`.
#[test]
fn no_vote_counts_after_the_approval_deadline() {
    const PEOPLE: usize = 2000;
    let people: String = (0..PEOPLE)
        .map(|i| format!("  - {{id: p{i}, roles: [founder]}}\n"))
        .collect();
    let config = format!("tokens: {{ admin: \"{ADMIN}\" }}\npeople:\n{people}");
    // A quorum the votes below never meet: the request waits until its deadline.
    let rules = WEB_ERRORS_RULE.replace("sustained: 1h", "sustained: 1s").replace(
        "approval: none",
        &format!("approval: {{ require_roles: [founder], quorum: {PEOPLE}, timeout: 2s, on_timeout: abort }}"),
    );
    let setup = Setup::new(&config, &rules);
    let d = setup.start();
    for (id, at) in [("A", -120.0), ("B", -60.0)] {
        let body = json!({"service": "web", "environment": "production", "version": id,
                          "deployment_id": id, "deployed_at": ts(at)});
        let (s, v) = post(&d.url("/v1/releases"), None, &body);
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &serde_json::from_str(&alert("fp-deadline")).unwrap(),
    );
    assert_eq!(s, 200, "{v}");
    let inc = wait_for(Duration::from_secs(5), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        v["items"]
            .as_array()
            .and_then(|l| l.first().cloned())
            .filter(|i| i["state"] == "awaiting_approval")
    })
    .expect("an incident awaiting approval");
    let id = inc["id"].as_str().unwrap().to_string();
    let (_, full) = get(&d.url(&format!("/v1/incidents/{id}")), None);
    let deadline: jiff::Timestamp = full["approvals"]["deadline"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("deadline: {full:#}"));
    // Four voters back to back, each vote another person's, from 150 ms before the deadline
    // until 150 ms after it.
    let lead = deadline
        .duration_since(jiff::Timestamp::now())
        .as_secs_f64()
        - 0.15;
    if lead > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(lead));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = Instant::now() + Duration::from_millis(300);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let c = client();
                while Instant::now() < stop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= PEOPLE {
                        break;
                    }
                    let _ = c
                        .post(d.url(&format!("/v1/incidents/{id}/approve")))
                        .bearer_auth(ADMIN)
                        .json(&json!({"person": format!("p{i}")}))
                        .send();
                }
            });
        }
    });
    let inc = wait_for(Duration::from_secs(5), || {
        let (_, v) = get(&d.url(&format!("/v1/incidents/{id}")), None);
        (v["state"] == "expired").then_some(v)
    })
    .expect("the request expires");
    for v in inc["approvals"]["votes"].as_array().into_iter().flatten() {
        let at: jiff::Timestamp = v["at"].as_str().and_then(|s| s.parse().ok()).unwrap();
        if v["counted"] == true {
            assert!(
                at < deadline,
                "a vote at {at} counted after the deadline {deadline}: {v}"
            );
        }
    }
}
