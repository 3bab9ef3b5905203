//! `on_unfreeze` steps against the real daemon: they run once the freeze is lifted, as real child
//! processes, and a `kill -9` in the middle of one is recovered the way a rollback step is (an
//! idempotent one runs again under a higher fencing token, a non-idempotent one never twice). What
//! ran is read from the children's own log lines, never from the daemon's word alone.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One rollback step, then two `on_unfreeze` steps; each child appends
/// `<incident> <step> <fencing token>` to `log` and then sleeps as long as `sleeps` says.
fn rules(log: &str, sync_sleep: &str, resume_sleep: &str) -> String {
    let step = |name: &str, idem: bool, sleep: &str| {
        format!(
            "      - name: {name}\n        run: [/bin/sh, -c, 'echo \"$0 {name} $ROLLBACKD_FENCING_TOKEN\" >> {log}; sleep {sleep}', \"{{{{ incident.id }}}}\"]\n        idempotent: {idem}\n        timeout: 20s\n"
        )
    };
    format!(
        "rules:\n  - name: gitops\n    match: ['alertname=\"Gitops\"']\n    group_by: [service]\n    service: \"{{{{ labels.service }}}}\"\n    breach: {{ sustained: 1s, clear_after: 1s }}\n    release: {{ max_age: 1h }}\n    approval: none\n    freeze: true\n    steps:\n{}    on_unfreeze:\n{}{}",
        step("auto-sync-off", true, "0"),
        step("auto-sync-on", true, sync_sleep),
        step("resume", false, resume_sleep),
    )
}

fn lines(log: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

fn ran<'a>(lines: &'a [Vec<String>], step: &str) -> Vec<&'a Vec<String>> {
    lines.iter().filter(|l| l[1] == step).collect()
}

fn incident(d: &Daemon, id: &str) -> Option<Value> {
    let (s, v) = get(&d.url(&format!("/v1/incidents/{id}")), None);
    (s == 200).then_some(v)
}

/// Starts `web`'s breach and waits for the rollback to end with the service frozen.
fn rolled_back_and_frozen(d: &Daemon) -> String {
    release_pair_and_alert(
        d,
        "web",
        json!({"alertname": "Gitops", "service": "web"}),
        "fp-web",
    );
    let id = first_incident(d, "rolled_back", None, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no rollback: {}", d.stderr()));
    let (s, v) = get(&d.url("/v1/freezes/web"), None);
    assert_eq!(s, 423, "frozen by the rollback: {v}");
    assert_eq!(v["incident"], id.as_str());
    id
}

/// Lifts `web`'s freeze; the answer.
fn unfreeze(d: &Daemon) -> Value {
    let resp = client()
        .delete(d.url("/v1/freezes/web"))
        .json(&json!({"reason": "cause found", "by": "ada"}))
        .send()
        .expect("unfreeze");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().expect("json")
}

fn ended(d: &Daemon, id: &str) -> Value {
    wait_for(Duration::from_secs(30), || {
        let inc = incident(d, id)?;
        inc.get("on_unfreeze_ended_at")?.as_str()?;
        Some(inc)
    })
    .unwrap_or_else(|| {
        panic!(
            "on_unfreeze steps did not end: {:#?}\n{}",
            incident(d, id),
            d.stderr()
        )
    })
}

fn timeline_kinds(inc: &Value) -> Vec<String> {
    inc["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn on_unfreeze_steps_run_once_after_the_freeze_is_lifted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("steps.log");
    let setup = Setup::new("", &rules(&log.display().to_string(), "0", "0"));
    let d = setup.start();
    let id = rolled_back_and_frozen(&d);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ran(&lines(&log), "auto-sync-on").is_empty(),
        "nothing runs while frozen"
    );
    let answer = unfreeze(&d);
    assert_eq!(
        answer,
        json!({"frozen": false, "service": "web", "incident": id,
               "on_unfreeze": {"steps": 2, "state": "running"}}),
        "the answer says what lifting the freeze set going"
    );
    let inc = ended(&d, &id);
    let l = lines(&log);
    assert_eq!(ran(&l, "auto-sync-off").len(), 1);
    assert_eq!(ran(&l, "auto-sync-on").len(), 1);
    assert_eq!(ran(&l, "resume").len(), 1);
    let order: Vec<&str> = l.iter().map(|l| l[1].as_str()).collect();
    assert_eq!(order, ["auto-sync-off", "auto-sync-on", "resume"]);
    assert_eq!(inc["state"], "rolled_back");
    let states: Vec<&str> = inc["on_unfreeze"]
        .as_array()
        .expect("on_unfreeze")
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    assert_eq!(states, ["done", "done"]);
    let kinds = timeline_kinds(&inc);
    let at = |k: &str| kinds.iter().position(|x| x == k);
    let (unfrozen, ended) = (at("unfrozen"), at("unfreeze_steps_ended"));
    assert!(
        unfrozen.is_some() && ended.is_some() && unfrozen < ended,
        "{kinds:?}"
    );
    // The incident's page shows them beside the rollback's steps.
    let page = client()
        .get(d.url(&format!("/incidents/{id}")))
        .send()
        .and_then(|r| r.text())
        .expect("incident page");
    for text in ["on_unfreeze", "auto-sync-on", "resume"] {
        assert!(page.contains(text), "{text} not on the incident page");
    }
    // A restart runs none of them again.
    d.kill9();
    let d = setup.start();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines(&log).len(), 3, "{:?}", lines(&log));
    drop(d);
}

/// Lifts the freeze, kills the daemon with `kill -9` while the on_unfreeze step `step` (which
/// sleeps 1.5 s) runs, restarts it and waits for the on_unfreeze steps to end.
fn killed_in(log: &std::path::Path, step: &str) -> (Setup, Daemon, Value) {
    let (sync, resume) = if step == "resume" {
        ("0", "1.5")
    } else {
        ("1.5", "0")
    };
    let setup = Setup::new("", &rules(&log.display().to_string(), sync, resume));
    let d = setup.start();
    let id = rolled_back_and_frozen(&d);
    unfreeze(&d);
    wait_for(Duration::from_secs(10), || {
        (!ran(&lines(log), step).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("{step} did not start"));
    d.kill9();
    let d = setup.start();
    let inc = ended(&d, &id);
    (setup, d, inc)
}

#[test]
fn kill_9_in_an_idempotent_on_unfreeze_step_runs_it_again_under_a_higher_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("steps.log");
    let (_setup, _d, inc) = killed_in(&log, "auto-sync-on");
    let l = lines(&log);
    let sync = ran(&l, "auto-sync-on");
    assert_eq!(sync.len(), 2, "run again after the crash: {l:?}");
    let token = |line: &Vec<String>| line[2].parse::<u64>().expect("token");
    assert!(token(sync[1]) > token(sync[0]), "{sync:?}");
    assert_eq!(ran(&l, "resume").len(), 1);
    assert_eq!(inc["on_unfreeze"][0]["state"], "done");
    assert!(timeline_kinds(&inc).contains(&"step_resumed".to_string()));
}

#[test]
fn kill_9_in_a_non_idempotent_on_unfreeze_step_never_runs_it_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("steps.log");
    let (_setup, _d, inc) = killed_in(&log, "resume");
    std::thread::sleep(Duration::from_millis(500));
    let l = lines(&log);
    assert_eq!(ran(&l, "resume").len(), 1, "{l:?}");
    assert_eq!(inc["state"], "rolled_back", "the outcome stays");
    assert_eq!(inc["on_unfreeze"][1]["state"], "started");
    let end = inc["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["kind"] == "unfreeze_steps_ended"))
        .cloned()
        .expect("ended entry");
    assert_eq!(end["data"]["ok"], false);
    assert!(
        end["message"]
            .as_str()
            .is_some_and(|m| m.contains("needs a human")),
        "{end}"
    );
}
