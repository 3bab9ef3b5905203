//! What an operator runs the daemon with: metrics that say what they claim (decision latency
//! only for breaches known before their deadline; the reload timestamp set at start).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "opsAdminToken0123456789abcdefghij";

/// `web` rolls back with a step that fails; `api` and `batch` with one that succeeds. All act
/// 3 s into a breach, without approval.
fn rules() -> String {
    let mut out = String::from("rules:\n");
    for (service, alert, step) in [
        ("web", "WebDown", "/bin/false"),
        ("api", "ApiDown", "/bin/true"),
        ("batch", "BatchDown", "/bin/true"),
    ] {
        out.push_str(&format!(
            "  - name: {service}-errors\n    match: ['alertname=\"{alert}\"']\n    service: {service}\n    breach: {{sustained: 3s, clear_after: 1s}}\n    release: {{max_age: 1h}}\n    approval: none\n    steps: [{{name: only, run: [{step}]}}]\n"
        ));
    }
    out
}

/// Two releases of `service`, 10 and 5 minutes ago, then a firing signal that began
/// `started_secs` ago.
fn breach(d: &Daemon, service: &str, alert: &str, started_secs: f64) {
    two_releases(d, service);
    let (s, b) = post(
        &d.url("/v1/signals"),
        None,
        &json!({"labels": {"alertname": alert}, "status": "firing", "starts_at": ts(-started_secs)}),
    );
    assert!((200..300).contains(&s), "{s} {b}");
}

fn incident_in(d: &Daemon, service: &str, state: &str) -> Option<Value> {
    let (_, v) = get(&d.url(&format!("/v1/incidents?state={state}")), Some(ADMIN));
    v["items"]
        .as_array()?
        .iter()
        .find(|i| i["service"] == service)
        .cloned()
}

#[test]
fn decision_latency_counts_only_breaches_known_before_their_deadline() {
    let setup = Setup::new("", &rules());
    let d = setup.start();
    assert!(
        d.metric("rollbackd_config_last_reload_success_timestamp_seconds")
            .unwrap_or(0.0)
            > 0.0,
        "the load at start sets the reload timestamp"
    );
    // Learned 2 minutes after its deadline: decided at once, but not a decision latency.
    breach(&d, "api", "ApiDown", 120.0);
    // Learned before its deadline: the daemon decides at the deadline.
    breach(&d, "batch", "BatchDown", 2.5);
    for service in ["api", "batch"] {
        wait_for(Duration::from_secs(10), || {
            incident_in(&d, service, "rolled_back")
        })
        .unwrap_or_else(|| panic!("no incident for {service}:\n{}", d.stderr()));
    }
    assert_eq!(
        d.metric("rollbackd_decision_latency_seconds_count"),
        Some(1.0)
    );
    assert!(
        d.metric("rollbackd_decision_latency_seconds_sum")
            .unwrap_or(f64::MAX)
            < 5.0,
        "the late breach's 2 minutes were counted"
    );
    assert_eq!(d.metric("rollbackd_decisions_late_total"), Some(1.0));
}
