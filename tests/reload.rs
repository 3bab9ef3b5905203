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
    let text = client()
        .get(d.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
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
    for (v, ago) in [("v1", -600.0), ("v2", -300.0)] {
        post(
            &d.url("/v1/releases"),
            None,
            &json!({"service": "web", "version": v, "deployment_id": format!("d-{v}"), "deployed_at": ts(ago)}),
        );
    }
    post(
        &d.url("/v1/signals"),
        None,
        &json!({"labels": {"alertname": "Slow"}, "status": "firing", "starts_at": ts(-10.0)}),
    );
    post(
        &d.url("/v1/signals"),
        None,
        &json!({"labels": {"alertname": "Gated"}, "status": "firing", "starts_at": ts(-10.0)}),
    );
    let gated = wait_for(Duration::from_secs(5), || {
        let (_, v) = get(&d.url("/v1/incidents?state=awaiting_approval"), None);
        v["items"][0]["id"].as_str().map(String::from)
    })
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
