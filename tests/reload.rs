//! Hot reload: `POST /-/reload`, SIGHUP and a change of the rules directory swap config and rules
//! atomically; an invalid set is refused with its lint messages and the last good set stays.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ADMIN: &str = "reloadAdminToken0123456789abcdef";

fn rule(name: &str, alert: &str, sustained: &str, approval: &str) -> String {
    format!(
        "  - name: {name}\n    match: ['alertname=\"{alert}\"']\n    service: web\n    breach: {{ sustained: {sustained} }}\n    release: {{ max_age: 1h }}\n    approval: {approval}\n    steps: [{{ name: s, run: [/bin/true] }}]\n"
    )
}

fn write_rules(setup: &Setup, body: &str) {
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        format!("rules:\n{body}"),
    )
    .expect("write rules");
}

fn metric(d: &Daemon, name: &str) -> f64 {
    d.metric(name).unwrap_or(f64::NAN)
}

/// Two releases of `web`, 10 and 5 minutes ago.
fn two_releases(d: &Daemon) {
    for (v, ago) in [("v1", -600.0), ("v2", -300.0)] {
        post(
            &d.url("/v1/releases"),
            None,
            &json!({"service": "web", "version": v, "deployment_id": format!("d-{v}"), "deployed_at": ts(ago)}),
        );
    }
}

/// A firing signal `alertname=<alert>` that started 10 s ago.
fn fire(d: &Daemon, alert: &str) {
    post(
        &d.url("/v1/signals"),
        None,
        &json!({"labels": {"alertname": alert}, "status": "firing", "starts_at": ts(-10.0)}),
    );
}

fn reload(d: &Daemon) -> (u16, serde_json::Value) {
    post(&d.url("/-/reload"), Some(ADMIN), &json!({}))
}

#[test]
fn reload_swaps_rules_keeps_breaches_and_refuses_a_bad_set() {
    let setup = Setup::new(
        &format!("tokens: {{ admin: \"{ADMIN}\" }}\npeople: [{{ id: ada, roles: [founder] }}]\n"),
        &format!(
            "rules:\n{}{}",
            rule("slow", "Slow", "1h", "none"),
            rule("gated", "Gated", "1s", "{ require_roles: [founder] }")
        ),
    );
    let d = setup.start();
    two_releases(&d);
    fire(&d, "Slow");
    fire(&d, "Gated");
    let gated = first_incident(&d, "awaiting_approval", None, Duration::from_secs(5))
        .expect("gated incident awaits approval");
    let (_, v) = get(&d.url("/v1/breaches"), None);
    let slow = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["rule"] == "slow")
        .unwrap()
        .clone();

    // Without the admin token: 401. A broken set: 400 with the lint message, nothing changes.
    assert_eq!(post(&d.url("/-/reload"), None, &json!({})).0, 401);
    write_rules(&setup, "  - name: Broken\n    match: [nope]\n");
    let (s, body) = reload(&d);
    assert_eq!(s, 400, "{body}");
    let detail = body["detail"].to_string();
    assert!(
        detail.contains("rules.yaml:3:5: missing field `service`"),
        "{body}"
    );
    assert_eq!(metric(&d, "rollbackd_config_last_reload_successful"), 0.0);
    let (_, v) = get(&d.url("/v1/incidents?state=awaiting_approval"), None);
    assert_eq!(
        v["items"][0]["id"],
        gated.as_str(),
        "the last good set stays active"
    );

    // A valid set: `slow` now acts after 2 s, counted from its original start; `gated` is gone.
    write_rules(&setup, &rule("slow", "Slow", "2s", "none"));
    let (s, body) = reload(&d);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["rules"], 1);
    assert_eq!(metric(&d, "rollbackd_config_last_reload_successful"), 1.0);
    let inc = wait_for(Duration::from_secs(5), || {
        let (_, v) = get(&d.url("/v1/incidents?state=rolled_back"), None);
        v["items"].as_array()?.first().cloned()
    })
    .expect("the kept breach acts under the new rule");
    assert_eq!(
        inc["breach_started_at"], slow["started_at"],
        "the breach kept its start"
    );
    let (_, g) = get(&d.url(&format!("/v1/incidents/{gated}")), None);
    assert_eq!(g["state"], "cancelled");
    assert!(
        g["reason"]
            .as_str()
            .unwrap()
            .contains("removed by a reload"),
        "{g}"
    );

    // A change on disk alone reloads (the directory is watched), and so does SIGHUP.
    write_rules(
        &setup,
        &format!(
            "{}{}",
            rule("slow", "Slow", "2s", "none"),
            rule("extra", "Extra", "1m", "none")
        ),
    );
    let before = metric(&d, "rollbackd_config_last_reload_success_timestamp_seconds");
    wait_for(Duration::from_secs(6), || {
        let page = client()
            .get(d.url("/"))
            .send()
            .and_then(|r| r.text())
            .ok()?;
        page.contains("2 rule(s) loaded").then_some(())
    })
    .expect("the watched directory reloads by itself");
    write_rules(&setup, &rule("slow", "Slow", "2s", "none"));
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status();
    wait_for(Duration::from_secs(3), || {
        let page = client()
            .get(d.url("/"))
            .send()
            .and_then(|r| r.text())
            .ok()?;
        page.contains("1 rule(s) loaded").then_some(())
    })
    .expect("SIGHUP reloads");
    assert!(metric(&d, "rollbackd_config_last_reload_success_timestamp_seconds") >= before);
}

/// A rule with an http step and a run step whose header, env and argv all say `word`.
fn planned_rule(receiver: &str, out: &std::path::Path, word: &str) -> String {
    format!(
        r#"rules:
  - name: planned
    match: ['alertname="Planned"']
    service: web
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: {{ require_roles: [founder], timeout: 10m }}
    steps:
      - name: flags off
        http: {{ method: POST, url: "{receiver}", headers: {{ X-Plan: {word} }}, json: {{ plan: {word} }} }}
      - name: record
        run: [/bin/sh, -c, 'printf "%s %s\n" "$PLAN" "$0" >> {out}', {word}-arg]
        env: {{ PLAN: {word} }}
"#,
        out = out.display()
    )
}

#[test]
fn a_reload_while_awaiting_approval_leaves_the_incident_its_plan() {
    let receiver = common::receiver::Receiver::start(200, "{}");
    let setup = Setup::new(
        &format!("tokens: {{ admin: \"{ADMIN}\" }}\npeople: [{{ id: ada, roles: [founder] }}]\n"),
        "rules: []\n",
    );
    let out = setup.path().join("ran.txt");
    let rules = |word: &str| planned_rule(&receiver.url("/flags"), &out, word);
    std::fs::write(setup.path().join("rules/rules.yaml"), rules("old")).expect("write rules");
    let d = setup.start();
    two_releases(&d);
    fire(&d, "Planned");
    let id = first_incident(&d, "awaiting_approval", None, Duration::from_secs(5))
        .expect("the incident awaits approval");

    std::fs::write(setup.path().join("rules/rules.yaml"), rules("new")).expect("write rules");
    let (s, body) = reload(&d);
    assert_eq!(s, 200, "{body}");

    let (s, v) = post(
        &d.url(&format!("/v1/incidents/{id}/approve")),
        Some(ADMIN),
        &json!({"person": "ada", "reason": "plan test"}),
    );
    assert_eq!(s, 200, "{v}");
    let inc = wait_for(Duration::from_secs(10), || {
        let (_, v) = get(&d.url(&format!("/v1/incidents/{id}")), None);
        (v["state"] == "rolled_back" || v["state"] == "rollback_failed").then_some(v)
    })
    .expect("the incident ends");
    assert_eq!(inc["state"], "rolled_back", "{inc:#}");

    // What ran, seen from the receiving side: the plan at open, whole.
    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].header("x-plan"), "old");
    assert_eq!(reqs[0].body, json!({"plan": "old"}));
    let ran = std::fs::read_to_string(&out).expect("the run step wrote its file");
    assert_eq!(ran, "old old-arg\n", "env and argv are the plan at open");
    // And the incident shows that plan.
    assert_eq!(inc["steps"][0]["headers"]["X-Plan"], "old", "{inc:#}");
    assert_eq!(inc["steps"][1]["env"]["PLAN"], "old", "{inc:#}");
}
