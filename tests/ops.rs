//! What an operator runs the daemon with: JSON log lines a shipper can parse (with failures at
//! WARN or ERROR), the data directory locked before the listener binds, and metrics that say what
//! they claim (decision latency only for breaches known before their deadline; the reload
//! timestamp set at start).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
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
fn json_log_lines_parse_and_failures_are_warn_or_error() {
    let setup = Setup::new(&format!("tokens: {{admin: \"{ADMIN}\"}}\n"), &rules());
    let d = setup.start_with(&["--log-format", "json"]);
    breach(&d, "web", "WebDown", 2.5);
    wait_for(Duration::from_secs(10), || {
        incident_in(&d, "web", "rollback_failed")
    })
    .unwrap_or_else(|| panic!("no rollback_failed incident:\n{}", d.stderr()));
    // A refused reload: the rules no longer parse.
    std::fs::write(setup.path().join("rules/rules.yaml"), "rules: [oops\n").expect("write");
    let (s, v) = post(&d.url("/-/reload"), Some(ADMIN), &json!({}));
    assert_eq!(s, 400, "{v}");
    let log = wait_for(Duration::from_secs(5), || {
        let log = d.stderr();
        log.contains("reload refused").then_some(log)
    })
    .unwrap_or_else(|| panic!("the refused reload was not logged:\n{}", d.stderr()));
    assert_eq!(d.terminate().code(), Some(0));

    let mut lines = Vec::new();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "no `{key}` in {line}");
        }
        lines.push(v);
    }
    assert!(!log.contains('\u{1b}'), "colour codes:\n{log:?}");
    let level_of = |f: &dyn Fn(&Value) -> bool| -> String {
        lines
            .iter()
            .find(|v| f(v))
            .and_then(|v| v["level"].as_str())
            .unwrap_or_else(|| panic!("no such line in:\n{log}"))
            .to_string()
    };
    let bad = ["WARN", "ERROR"];
    for kind in ["step_failed", "rollback_failed"] {
        let level = level_of(&|v| v["kind"] == kind);
        assert!(bad.contains(&level.as_str()), "{kind} logged at {level}");
    }
    let level = level_of(&|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("reload refused"))
    });
    assert!(bad.contains(&level.as_str()), "refused reload at {level}");
    assert!(lines.iter().any(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening"))
    }));
}

#[test]
fn the_config_names_the_log_format_and_the_flag_wins() {
    let setup = Setup::new("log_format: json\n", &rules());
    let first_line = |d: &Daemon| {
        wait_for(Duration::from_secs(5), || {
            d.stderr().lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| panic!("nothing logged"))
    };
    let d = setup.start();
    let line = first_line(&d);
    assert!(
        serde_json::from_str::<Value>(&line).is_ok(),
        "log_format: json, yet {line:?}"
    );
    d.terminate();
    let d = setup.start_with(&["--log-format", "text"]);
    let line = first_line(&d);
    assert!(
        serde_json::from_str::<Value>(&line).is_err() && line.contains("INFO"),
        "--log-format text, yet {line:?}"
    );
    d.terminate();
    let bad = Setup::new("log_format: xml\n", &rules());
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(bad.path().join("rollbackd.yaml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log_format"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_data_dir_never_listens_and_names_the_holder() {
    let setup = Setup::new("", &rules());
    let first = setup.start();
    let mut second = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(setup.path().join("rollbackd.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second daemon");
    let status = wait_for(Duration::from_secs(10), || second.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = second.kill();
        let _ = second.wait();
        panic!("the second daemon on the same data dir kept running");
    };
    let (mut out, mut err) = (String::new(), String::new());
    second.stdout.take().map(|mut s| s.read_to_string(&mut out));
    second.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert!(!status.success(), "{status:?}\n{err}");
    assert!(!out.contains("listening"), "stdout: {out}\nstderr: {err}");
    assert!(!err.contains("listening"), "{err}");
    let pid = first.child.id().to_string();
    assert!(
        err.contains(&format!("pid {pid}")),
        "the holder (pid {pid}) is not named:\n{err}"
    );
    assert!(err.contains("in use"), "{err}");
    // The first daemon is unharmed.
    let (s, _) = get(&first.url("/healthz"), None);
    assert_eq!(s, 200);
    // Once it stops, the data dir is free again.
    assert_eq!(first.terminate().code(), Some(0));
    let again = setup.start();
    assert_eq!(get(&again.url("/healthz"), None).0, 200);
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

/// `rollbackd freeze SERVICE` and `unfreeze SERVICE`, as the contract writes them: the reason is
/// optional (the timeline then says it was done by hand), the admin token is needed, and GET
/// /v1/freezes/SERVICE answers 423 while frozen, 200 after.
#[test]
fn freeze_and_unfreeze_from_the_command_line() {
    let setup = Setup::new(&format!("tokens: {{admin: \"{ADMIN}\"}}\n"), &rules());
    let d = setup.start();
    let cli = |args: &[&str], token: &str| {
        Command::new(bin())
            .args(args)
            .args(["--url", &d.base, "--token", token])
            .output()
            .expect("run the CLI")
    };
    // With the admin token, and it must succeed.
    let admin = |args: &[&str]| {
        let out = cli(args, ADMIN);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let freeze_state = || get(&d.url("/v1/freezes/web"), Some(ADMIN));

    let out = cli(&["freeze", "web"], "not-the-admin-token-0123456789");
    assert!(!out.status.success(), "a wrong token is refused");
    assert_eq!(freeze_state().0, 200, "and froze nothing");

    admin(&["freeze", "web"]);
    let (s, v) = freeze_state();
    assert_eq!(s, 423, "{v}");
    assert_eq!(v["frozen"], true);
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rollbackd freeze")),
        "{v}"
    );

    admin(&["unfreeze", "web", "--reason", "v3 is the fix"]);
    let (s, v) = freeze_state();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["frozen"], false);

    admin(&["freeze", "api", "--reason", "hold for the audit"]);
    admin(&["unfreeze", "api"]);
    let (s, v) = get(&d.url("/v1/freezes/api"), Some(ADMIN));
    assert_eq!(s, 200, "{v}");
}

/// `rollbackd serve` with nothing but the embedded defaults, in an empty directory: it starts
/// (no rules, said at WARN), keeps its state in ./data, and loads rule files put in ./rules later.
#[test]
fn serve_on_the_embedded_defaults_starts_in_an_empty_directory() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("ROLLBACKD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rollbackd");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line
        .trim()
        .strip_prefix("rollbackd listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let (s, v) = get(&format!("{base}/readyz"), None);
    assert_eq!(s, 200, "{v}");
    assert!(dir.path().join("data").is_dir(), "state in ./data");

    std::fs::create_dir(dir.path().join("rules")).expect("mkdir rules");
    std::fs::write(
        dir.path().join("rules/web.yaml"),
        "rules:\n  - name: web-errors\n    match: ['alertname=\"WebDown\"']\n    service: web\n    breach: {sustained: 10m}\n    approval: none\n    steps: [{name: only, run: [/bin/true]}]\n",
    )
    .expect("write a rule");
    let loaded = wait_for(Duration::from_secs(10), || {
        post(
            &format!("{base}/v1/signals"),
            None,
            &json!({"labels": {"alertname": "WebDown"}, "status": "firing"}),
        );
        let (_, v) = get(&format!("{base}/v1/breaches"), None);
        (v["items"][0]["rule"] == "web-errors").then_some(())
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    assert!(
        stderr.contains("no rules directory: running with no rules"),
        "{stderr}"
    );
    assert_eq!(
        loaded,
        Some(()),
        "the rule put in ./rules was loaded: {stderr}"
    );
}

/// SIGTERM at any moment after the daemon says it listens is a graceful stop, exit 0: the
/// handlers are in place before that line (they were once installed only when the server first
/// waited on them, and a SIGTERM in between killed the process).
#[test]
fn sigterm_right_after_the_listening_line_is_a_clean_stop() {
    let setup = Setup::new("", &rules());
    for _ in 0..10 {
        setup.start().stop_cleanly();
    }
}
