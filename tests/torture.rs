//! kill -9 torture: the real daemon is killed at many random points while incidents run real child
//! processes, restarted, and finally left to finish. From the processes' own log we check that no
//! non-idempotent step ever ran twice, that every incident ends in a terminal state, and that the
//! timeline never claims less than what ran.
//!
//! `ROLLBACKD_TORTURE_KILLS=500` runs a longer round; `ROLLBACKD_TORTURE_SEED` replays one.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::rng::Rng;
use common::*;
use serde_json::{Value, json};

fn rules(log: &str) -> String {
    let step = |name: &str, idem: bool, sleep: &str| {
        format!(
            "      - name: {name}\n        run: [/bin/sh, -c, 'echo \"$0 {name}\" >> {log}; sleep {sleep}', \"{{{{ incident.id }}}}\"]\n        idempotent: {idem}\n        timeout: 10s\n"
        )
    };
    format!(
        "rules:\n  - name: torture\n    match: ['alertname=\"Torture\"']\n    group_by: [service]\n    service: \"{{{{ labels.service }}}}\"\n    breach: {{ sustained: 2s, clear_after: 1s }}\n    release: {{ max_age: 1h }}\n    approval: none\n    freeze: false\n    steps:\n{}{}{}",
        step("flags-off", true, "0.05"),
        step("down-migration", false, "0.15"),
        step("purge-cache", true, "0.05"),
    )
}

fn start_breach(d: &Daemon, service: &str) {
    for (v, dep, ago) in [("v1", "dpl-1", -1200.0), ("v2", "dpl-2", -600.0)] {
        let (s, body) = post(
            &d.url("/v1/releases"),
            None,
            &json!({"service": service, "environment": "prod", "version": v, "deployment_id": format!("{service}-{dep}"), "deployed_at": ts(ago)}),
        );
        assert!(s == 201 || s == 200, "release: {s} {body}");
    }
    let (s, body) = post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &am_alert(
            "firing",
            json!({"alertname": "Torture", "service": service}),
            &ts(-1.5),
            &format!("fp-{service}"),
        ),
    );
    assert_eq!(s, 200, "{body}");
}

fn incidents(d: &Daemon) -> Option<Vec<Value>> {
    let resp = client().get(d.url("/v1/incidents")).send().ok()?;
    let v: Value = resp.json().ok()?;
    v["items"].as_array().cloned()
}

#[test]
fn kill_9_at_random_points_never_runs_a_step_twice() {
    let kills: u64 = std::env::var("ROLLBACKD_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("ROLLBACKD_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("torture: {kills} kills, ROLLBACKD_TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("steps.log");
    let setup = Setup::new("", &rules(&log.display().to_string()));
    let mut services = 0u32;
    for _ in 0..kills {
        let d = setup.start();
        // Now and then a new service starts breaching, so kills land in every phase: breach
        // window, deadline, step start, mid-step, verification, idle.
        if services < 12 && rng.below(3) == 0 {
            start_breach(&d, &format!("svc-{services}"));
            services += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.below(450)));
        d.kill9();
    }
    if services == 0 {
        let d = setup.start();
        start_breach(&d, "svc-0");
        services = 1;
        d.kill9();
    }

    // Let it finish.
    let d = setup.start();
    let done = wait_for(Duration::from_secs(60), || {
        let items = incidents(&d)?;
        (items.len() as u32 == services
            && items.iter().all(|i| {
                !matches!(
                    i["state"].as_str(),
                    Some("triggered" | "approved" | "rolling_back" | "verifying")
                )
            }))
        .then_some(items)
    });
    let items = done.unwrap_or_else(|| {
        panic!(
            "not every incident reached a terminal state: {:#?}\n{}",
            incidents(&d),
            d.stderr()
        )
    });

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut runs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in text.lines() {
        let (id, step) = line.split_once(' ').expect("log line");
        *runs.entry((id.to_string(), step.to_string())).or_default() += 1;
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for inc in &items {
        let id = inc["id"].as_str().expect("id").to_string();
        let state = inc["state"].as_str().expect("state").to_string();
        *outcomes.entry(state.clone()).or_default() += 1;
        let ran = |step: &str| {
            runs.get(&(id.clone(), step.to_string()))
                .copied()
                .unwrap_or(0)
        };
        assert!(
            ran("down-migration") <= 1,
            "{id}: the non-idempotent step ran {} times",
            ran("down-migration")
        );
        let (_, full) = get(&d.url(&format!("/v1/incidents/{id}")), None);
        let timeline = full["timeline"].as_array().cloned().unwrap_or_default();
        for (i, step) in ["flags-off", "down-migration", "purge-cache"]
            .iter()
            .enumerate()
        {
            let started = timeline
                .iter()
                .filter(|e| e["kind"] == "step_started" && e["data"]["index"] == i)
                .count();
            assert!(
                started >= ran(step),
                "{id}: {step} ran {} times but the timeline records {started} starts",
                ran(step)
            );
        }
        match state.as_str() {
            "rolled_back" => {
                for step in ["flags-off", "down-migration", "purge-cache"] {
                    assert!(ran(step) >= 1, "{id} rolled back without running {step}");
                }
                assert!(
                    full["steps"]
                        .as_array()
                        .expect("steps")
                        .iter()
                        .all(|s| s["state"] == "done")
                );
            }
            "rollback_failed" => {
                let reason = full["reason"].as_str().unwrap_or("");
                assert!(
                    reason.contains("step state unknown, needs a human"),
                    "{id}: unexpected failure: {reason}"
                );
                assert!(full["steps"][1]["state"] == "started", "{full:#}");
                assert!(
                    ran("purge-cache") == 0,
                    "{id}: went on after an unknown step"
                );
            }
            other => panic!("{id}: unexpected terminal state {other}"),
        }
    }
    eprintln!(
        "torture: {services} incidents, outcomes {outcomes:?}, {} step runs",
        text.lines().count()
    );
}
