//! The change-log report and the tamper-evident timeline, through the API and the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const RULES: &str = r#"rules:
  - name: report
    match: ['alertname="Report"']
    service: web
    breach: { sustained: 1s }
    release: { max_age: 1h }
    approval: none
    freeze: true
    steps:
      - name: roll back
        run: [/bin/echo, "{{ release.previous.deployment_id }}"]
"#;

fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", &d.base])
        .output()
        .expect("run the CLI")
}

#[test]
fn report_and_chain_verification_catch_an_edited_record() {
    let setup = Setup::new("", RULES);
    let d = setup.start();
    for (v, ago) in [("v1", -600.0), ("v2", -300.0)] {
        let (s, b) = post(
            &d.url("/v1/releases"),
            None,
            &json!({"service": "web", "version": v, "deployment_id": format!("dpl-{v}"), "deployed_at": ts(ago)}),
        );
        assert_eq!(s, 201, "{b}");
    }
    post(
        &d.url("/v1/signals"),
        None,
        &json!({"labels": {"alertname": "Report"}, "status": "firing", "starts_at": ts(-5.0)}),
    );
    let id = first_incident(&d, "rolled_back", None, Duration::from_secs(10)).expect("rolled back");

    let md = client()
        .get(d.url(&format!("/v1/incidents/{id}/report")))
        .send()
        .expect("report");
    assert_eq!(md.headers()["content-type"], "text/markdown; charset=utf-8");
    let md = md.text().expect("text");
    for section in [
        "## Summary",
        "## Trigger",
        "## Decision",
        "## Steps",
        "## Freeze",
        "## Timeline",
        "## Root cause",
        "## Follow-ups",
        "intact",
    ] {
        assert!(md.contains(section), "missing {section}:\n{md}");
    }
    assert!(md.contains("v2 (`dpl-v2`"), "{md}");
    let (s, j) = get(
        &d.url(&format!("/v1/incidents/{id}/report?format=json")),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(j["chain"]["ok"], true);
    assert_eq!(j["incident"]["release_to"]["deployment_id"], "dpl-v1");
    let (s, _) = get(
        &d.url(&format!("/v1/incidents/{id}/report?format=pdf")),
        None,
    );
    assert_eq!(s, 400);

    let out = cli(&d, &["incidents", "verify", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    let out = cli(&d, &["incidents", "report", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("# Rollback {id}")));

    // Stop it, edit one record behind its back, start it again.
    d.stop_cleanly();
    {
        let db = sled::open(setup.path().join("data")).expect("open sled");
        let tree = db.open_tree("timeline").expect("tree");
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        let (k, v) = tree
            .scan_prefix(&prefix)
            .next()
            .expect("an entry")
            .expect("read");
        let mut e: serde_json::Value = serde_json::from_slice(&v).expect("json");
        e["message"] = json!("nothing to see here");
        tree.insert(k, serde_json::to_vec(&e).expect("json"))
            .expect("write");
        db.flush().expect("flush");
    }
    std::thread::sleep(Duration::from_millis(300));
    let d = setup.start();
    let out = cli(&d, &["incidents", "verify", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN at entry 0"));
    let (_, v) = get(&d.url(&format!("/v1/incidents/{id}")), None);
    assert_eq!(v["timeline_chain"]["ok"], false);
    let md = client()
        .get(d.url(&format!("/v1/incidents/{id}/report")))
        .send()
        .and_then(|r| r.text())
        .expect("report");
    assert!(md.contains("**BROKEN at entry 0**"), "{md}");
}
