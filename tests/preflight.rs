//! Preflight: a rule whose steps need a secret that does not resolve or a program that is not
//! found is said to be so at start and at each reload (log, `/readyz`, metric), is an error for
//! `lint --preflight`, and an incident of it fails before anyone is asked to approve, saying
//! why, with nothing run.

mod common;

use std::process::Command;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::json;

const UNSET: &str = "ROLLBACKD_PREFLIGHT_TEST_UNSET";
const SECRET: &str = "audit-signing-secret-0123456789";

fn rules(marker: &std::path::Path, token_file: &std::path::Path) -> String {
    format!(
        r#"rules:
  - name: needs-secrets
    match: ['alertname="Needy"']
    service: web
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: {{ require_roles: [founder], quorum: 1, timeout: 10m }}
    steps:
      - name: roll back
        run: [/bin/sh, -c, 'touch "$MARK"']
        env: {{ MARK: "{}", TOKEN: "${{env:{UNSET}}}" }}
        retries: 2
      - name: purge
        run: [rollbackd-test-no-such-program, --yes]
    notify: [audit]
  - name: needs-a-file
    match: ['alertname="Filed"']
    service: api
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: {{ require_roles: [founder], quorum: 1, timeout: 10m }}
    steps:
      - name: roll back
        run: [/bin/true]
        env: {{ TOKEN: "${{file:{}}}" }}
"#,
        marker.display(),
        token_file.display()
    )
}

fn config(audit: &Receiver) -> String {
    format!(
        "people:\n  - {{id: ada, roles: [founder]}}\nnotifiers:\n  audit: {{webhook: \"{}\", secret: \"{SECRET}\"}}\n",
        audit.url("/hook")
    )
}

fn metric(d: &Daemon, rule: &str) -> Option<f64> {
    let text = client()
        .get(d.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .ok()?;
    let head = format!("rollbackd_preflight_missing{{rule=\"{rule}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Where the step would leave its mark, and the secret file of `needs-a-file`.
fn paths(setup: &Setup) -> (std::path::PathBuf, std::path::PathBuf) {
    (setup.path().join("rolled-back"), setup.path().join("token"))
}

/// A daemon with the rules above and an audit webhook; the secret file is absent.
fn start() -> (Receiver, Setup, Daemon) {
    let audit = Receiver::generic();
    let setup = Setup::new(&config(&audit), "");
    let (marker, token) = paths(&setup);
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        rules(&marker, &token),
    )
    .unwrap();
    let d = setup.start();
    (audit, setup, d)
}

/// The first incident, once it is in `state`.
fn first_incident_in(d: &Daemon, state: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(20), || {
        let (_, list) = get(&d.url("/v1/incidents"), None);
        let id = list["items"][0]["id"].as_str()?.to_string();
        let (_, inc) = get(&d.url(&format!("/v1/incidents/{id}")), None);
        (inc["state"] == state).then_some(inc)
    })
    .unwrap_or_else(|| panic!("no incident reached {state}"))
}

#[test]
fn a_plan_needing_an_unset_secret_is_refused_before_approval_and_nothing_runs() {
    let (audit, setup, d) = start();
    let (marker, _) = paths(&setup);

    // At start: the log, /readyz and the metric say what is missing, by name.
    let (s, ready) = get(&d.url("/readyz"), None);
    assert_eq!(s, 200, "{ready}");
    let lines: Vec<String> = ready["preflight"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].contains("rules.yaml:")
            && lines[0].contains("rule needs-secrets cannot run here: step `roll back`: env TOKEN: environment variable `ROLLBACKD_PREFLIGHT_TEST_UNSET` is not set"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(
            "step `purge`: program `rollbackd-test-no-such-program` is not found in PATH"
        ),
        "{lines:#?}"
    );
    assert!(lines[2].contains("rule needs-a-file cannot run here: step `roll back`: env TOKEN: cannot read secret file"), "{lines:#?}");
    assert_eq!(metric(&d, "needs-secrets"), Some(2.0));
    assert_eq!(metric(&d, "needs-a-file"), Some(1.0));
    let log = d.stderr();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains(UNSET)),
        "{log}"
    );

    // An incident of it fails before anyone is asked, saying why; nothing runs.
    release_pair_and_alert(&d, "web", json!({"alertname": "Needy"}), "f1");
    let inc = first_incident_in(&d, "rollback_failed");
    let reason = inc["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("cannot run: step `roll back`: env TOKEN: environment variable `ROLLBACKD_PREFLIGHT_TEST_UNSET` is not set; step `purge`: program `rollbackd-test-no-such-program` is not found in PATH"),
        "{reason}"
    );
    let kinds: Vec<&str> = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        !kinds.contains(&"awaiting_approval") && !kinds.contains(&"step_started"),
        "{kinds:?}"
    );
    for s in inc["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "pending", "{s}");
        assert_eq!(s["attempts"], 0, "{s}");
    }
    let failed = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rollback_failed")
        .expect("rollback_failed entry");
    assert_eq!(failed["data"]["code"], "cannot_run", "{failed}");

    // The one announcement says it cannot run; no approval was requested.
    let got = audit.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(got[0].body["kind"], "rollback_failed", "{:#?}", got[0].body);
    let text = got[0].body["text"].as_str().unwrap_or_default();
    assert!(text.contains("cannot run: step `roll back`"), "{text}");
    assert!(
        got[0].body["headline"]
            .as_str()
            .unwrap_or_default()
            .contains("CANNOT RUN")
    );
    // A vote changes nothing: the request was never made.
    let id = inc["id"].as_str().unwrap();
    let (s, _) = post(
        &d.url(&format!("/v1/incidents/{id}/approve")),
        None,
        &json!({"person": "ada"}),
    );
    assert!(s >= 400, "{s}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "the step ran");
    assert_eq!(audit.delivered().len(), 1, "{:#?}", audit.delivered());
}

#[test]
fn a_reload_runs_the_preflight_again_and_a_complete_plan_asks_for_approval() {
    let (_audit, setup, d) = start();
    let (_, token) = paths(&setup);
    assert_eq!(metric(&d, "needs-a-file"), Some(1.0));

    std::fs::write(&token, "file-token-0123456789\n").unwrap();
    let (s, body) = post(&d.url("/-/reload"), None, &json!({}));
    assert_eq!(s, 200, "{body}");
    let (_, ready) = get(&d.url("/readyz"), None);
    let lines = ready["preflight"].as_array().cloned().unwrap_or_default();
    assert_eq!(lines.len(), 2, "the file is found now: {lines:#?}");
    assert_eq!(metric(&d, "needs-a-file"), None, "{ready}");
    assert_eq!(metric(&d, "needs-secrets"), Some(2.0));

    release_pair_and_alert(&d, "api", json!({"alertname": "Filed"}), "f2");
    let inc = first_incident_in(&d, "awaiting_approval");
    assert!(inc["approvals"]["deadline"].is_string(), "{inc}");
}

#[test]
fn lint_preflight_makes_a_miss_an_error() {
    let audit = Receiver::generic();
    let setup = Setup::new(&config(&audit), "");
    let marker = setup.path().join("rolled-back");
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        rules(&marker, &setup.path().join("token")),
    )
    .unwrap();
    let cfg = setup.path().join("rollbackd.yaml");
    let lint = |extra: &[&str]| {
        Command::new(BIN)
            .args(["lint", "--config"])
            .arg(&cfg)
            .args(extra)
            .env_remove(UNSET)
            .output()
            .expect("run lint")
    };
    let out = lint(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = lint(&["--preflight"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let file = setup.path().join("rules/rules.yaml");
    assert!(
        lines[0].starts_with(&format!("{}:2:5: rule needs-secrets cannot run here: step `roll back`: env TOKEN: environment variable `{UNSET}` is not set", file.display())),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 preflight error(s)"));

    // Present, it passes.
    let ok = Command::new(BIN)
        .args(["lint", "--config"])
        .arg(&cfg)
        .arg("--preflight")
        .env(UNSET, "x")
        .output()
        .expect("run lint");
    assert_eq!(
        ok.status.code(),
        Some(1),
        "the program and the file are still missing"
    );
    std::fs::write(setup.path().join("token"), "t\n").unwrap();
    std::fs::write(
        &file,
        rules(&marker, &setup.path().join("token"))
            .replace("rollbackd-test-no-such-program", "/bin/true"),
    )
    .unwrap();
    let ok = Command::new(BIN)
        .args(["lint", "--config"])
        .arg(&cfg)
        .arg("--preflight")
        .env(UNSET, "x")
        .output()
        .expect("run lint");
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stderr).contains("preflight OK"));
}
