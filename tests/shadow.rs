//! `GET /v1/shadow`: how often a shadow rule would have acted, and what humans did afterwards.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn shadow_summary_counts_decisions_and_compares_with_humans() {
    let rules = r#"rules:
  - name: candidate
    mode: shadow
    match: ['alertname="Candidate"']
    group_by: [service]
    service: "{{ labels.service }}"
    breach: { sustained: 1s }
    release: { max_age: 1h }
    approval: none
    steps: [{ name: roll back, run: [/bin/false] }]
  - name: quiet
    mode: shadow
    match: ['alertname="Never"']
    service: x
    breach: { sustained: 1s }
    steps: [{ name: s, run: [/bin/false] }]
"#;
    let setup = Setup::new("", rules);
    let d = setup.start();
    for svc in ["a", "b"] {
        for (v, ago) in [("v1", -600.0), ("v2", -300.0)] {
            post(
                &d.url("/v1/releases"),
                None,
                &json!({"service": svc, "version": v, "deployment_id": format!("{svc}-{v}"), "deployed_at": ts(ago)}),
            );
        }
        post(
            &d.url("/v1/signals"),
            None,
            &json!({"labels": {"alertname": "Candidate", "service": svc}, "status": "firing", "starts_at": ts(-5.0)}),
        );
    }
    wait_for(Duration::from_secs(5), || {
        let (_, v) = get(&d.url("/v1/incidents?state=suppressed"), None);
        (v["items"].as_array()?.len() == 2).then_some(())
    })
    .expect("two shadow incidents");
    // A human rolls `a` back by hand: its previous deployment goes live again.
    std::thread::sleep(Duration::from_millis(20));
    let (s, b) = post(
        &d.url("/v1/releases"),
        None,
        &json!({"service": "a", "version": "v1", "deployment_id": "a-v1", "deployed_at": ts(0.0)}),
    );
    assert_eq!(s, 201, "a redeploy is a new ledger entry: {b}");
    // `b` ships a fix forward.
    let (s, b) = post(
        &d.url("/v1/releases"),
        None,
        &json!({"service": "b", "version": "v3", "deployment_id": "b-v3", "deployed_at": ts(0.0)}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, v) = get(&d.url("/v1/shadow"), None);
    assert_eq!(s, 200);
    let items = v["items"].as_array().expect("items");
    let cand = items
        .iter()
        .find(|i| i["rule"] == "candidate")
        .expect("candidate");
    assert_eq!(cand["would_have_acted"], 2, "{v:#}");
    assert_eq!(cand["humans_rolled_back"], 1, "{v:#}");
    assert_eq!(cand["humans_fixed_forward"], 1, "{v:#}");
    assert_eq!(cand["no_human_action_yet"], 0, "{v:#}");
    let quiet = items
        .iter()
        .find(|i| i["rule"] == "quiet")
        .expect("quiet is listed");
    assert_eq!(quiet["would_have_acted"], 0);
    assert!(!setup.path().join("ran").exists());
}
