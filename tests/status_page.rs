//! The status page as a person sees it: rendered by a real headless Chromium during a live
//! incident (`common::browser`).

mod common;

use std::time::Duration;

use common::browser::{asks_for_basic_auth, render};
use common::*;
use serde_json::json;

const READ: &str = "statusPageReadToken0123456789ab";
const ADMIN: &str = "statusPageAdminToken0123456789ab";

#[test]
fn a_person_sees_the_live_incident_its_approvals_breaches_freezes_and_releases() {
    let rules = r#"rules:
  - name: checkout-errors
    match: ['alertname="CheckoutErrors"']
    group_by: [service]
    service: "{{ labels.service }}"
    breach: { sustained: 2s }
    release: { max_age: 1h }
    approval: { require_roles: [founder, client-success-lead], quorum: 2, timeout: 10m }
    steps:
      - name: roll back
        run: [/bin/true]
  - name: slow-breach
    match: ['alertname="Latency"']
    group_by: [service]
    service: search
    breach: { sustained: 1h }
    steps:
      - name: roll back
        run: [/bin/true]
"#;
    let config = format!(
        "tokens: {{ read: \"{READ}\", admin: \"{ADMIN}\" }}\npeople:\n  - {{ id: ada, roles: [founder] }}\n  - {{ id: cy, roles: [client-success-lead] }}\n"
    );
    let setup = Setup::new(&config, rules);
    let d = setup.start();
    for (v, ago) in [("v1.4.0", -900.0), ("v1.5.0", -600.0)] {
        let (s, b) = post(
            &d.url("/v1/releases"),
            None,
            &json!({"service": "checkout", "environment": "production", "version": v, "deployment_id": format!("dpl-{v}"), "deployed_at": ts(ago)}),
        );
        assert_eq!(s, 201, "{b}");
    }
    post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &am_alert(
            "firing",
            json!({"alertname": "CheckoutErrors", "service": "checkout"}),
            &ts(-5.0),
            "f1",
        ),
    );
    // A hostile label value must show as text, never as markup.
    post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &am_alert(
            "firing",
            json!({"alertname": "Latency", "service": "<script>document.title='pwned'</script>"}),
            &ts(-1.0),
            "f2",
        ),
    );
    let id = first_incident(&d, "awaiting_approval", Some(READ), Duration::from_secs(10))
        .expect("awaiting approval");
    let (s, _) = post(
        &d.url(&format!("/v1/incidents/{id}/approve")),
        Some(ADMIN),
        &json!({"person": "ada"}),
    );
    assert_eq!(s, 200);
    let (s, _) = post(&d.url("/v1/freezes/billing"), None, &json!({}));
    assert_eq!(s, 405, "freezes are PUT");
    assert_eq!(put_freeze(&d, "billing", "quarter close", Some(ADMIN)), 200);

    // Without the read token a browser is asked for it.
    asks_for_basic_auth(&d.url("/"));

    let url = d.base.replace("http://", &format!("http://ops:{READ}@")) + "/";
    let shot = setup.path().join("status.png");
    let dom = render(&url, &shot);
    assert!(
        dom.contains("<title>rollbackd: 1 active, 2 breaches</title>"),
        "{dom}"
    );
    for seen in [
        "Waiting for approval",
        &id,
        "checkout v1.5.0 → v1.4.0",
        "ada Approve",
        "2 of roles [founder, client-success-lead]",
        "Open breaches",
        "checkout-errors",
        "slow-breach",
        "Release freezes",
        "billing",
        "quarter close",
        "Recent releases",
        "dpl-v1.5.0",
        "awaiting_approval",
    ] {
        assert!(
            dom.contains(seen),
            "the page does not show {seen:?}:\n{dom}"
        );
    }
    assert!(
        dom.contains(&format!("<a href=\"incidents/{id}\">{id}</a>")),
        "the incident is linked to its page:\n{dom}"
    );
    assert!(
        !dom.contains("<script>document.title"),
        "label rendered as markup:\n{dom}"
    );
    assert!(dom.contains("&lt;script&gt;"), "{dom}");
    assert!(!dom.contains("pwned</title>"));
    assert!(shot.exists(), "no screenshot");
    if let Ok(dir) = std::env::var("ROLLBACKD_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, std::path::Path::new(&dir).join("status.png"));
    }
}
