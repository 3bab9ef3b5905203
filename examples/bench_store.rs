//! Generates a data directory for `bench/run.sh`'s cold-start measurement: finished incidents
//! and their timeline records written through `rollbackd::store::Store::commit`, exactly as the
//! daemon writes them (hash chain included).
//!
//! `cargo run --release --example bench_store -- DIR INCIDENTS TIMELINE_RECORDS`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use rollbackd::engine::Change;
use rollbackd::model::*;
use rollbackd::store::Store;
use serde_json::json;

fn step(name: &str, argv: &[&str], at: Timestamp) -> StepRun {
    StepRun {
        fencing_token: None,
        name: name.to_string(),
        plan: rollbackd::model::Plan::run(argv.iter().map(|s| s.to_string()).collect()),
        render_error: None,
        state: StepState::Done,
        attempts: 1,
        started_at: Some(at),
        finished_at: Some(at + SignedDuration::from_millis(850)),
        exit_code: Some(0),
        output: Some(format!("{name}: ok\n")),
        error: None,
        duration_ms: Some(850),
        probe: None,
        timeout_ms: 300_000,
        retries: 0,
        idempotent: true,
        continue_on_failure: false,
    }
}

fn incident(n: u64, at: Timestamp) -> Incident {
    let service = format!("svc-{:03}", n % 200);
    let rel = |v: u64, d: i64| ReleaseRef {
        version: format!("v1.{v}.0"),
        deployment_id: format!("dpl_{n}_{v}"),
        revision: None,
        deployed_at: at - SignedDuration::from_mins(d),
    };
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_string(), "HighErrorRate".to_string());
    labels.insert("service".to_string(), service.clone());
    labels.insert("environment".to_string(), "production".to_string());
    labels.insert("severity".to_string(), "page".to_string());
    Incident {
        id: format!("inc-{n:06}"),
        rule: "web-errors".to_string(),
        breach: format!("b-{n:06}"),
        group: format!("service={service}"),
        service: service.clone(),
        environment: "production".to_string(),
        state: if n % 10 == 0 {
            IncidentState::Expired
        } else {
            IncidentState::RolledBack
        },
        reason: None,
        mode: "enforce".to_string(),
        labels,
        breach_started_at: at - SignedDuration::from_mins(10),
        deadline: at,
        opened_at: at,
        updated_at: at + SignedDuration::from_mins(3),
        release_from: rel(2, 30),
        release_to: rel(1, 600),
        approvals: Approval {
            required: true,
            require_roles: vec!["founder".to_string()],
            quorum: 1,
            deadline: Some(at + SignedDuration::from_mins(5)),
            on_timeout: "abort".to_string(),
            votes: vec![Vote {
                person: "ada".to_string(),
                vote: VoteKind::Approve,
                at: at + SignedDuration::from_secs(40),
                via: "break-glass".to_string(),
                reason: Some("error rate is the release".to_string()),
                counted: true,
                why_not_counted: None,
            }],
        },
        steps: vec![
            step("disable flags", &["ldctl", "flags", "off"], at),
            step(
                "roll back deployment",
                &["vercel", "rollback", &format!("dpl_{n}_1"), "--yes"],
                at,
            ),
        ],
        freeze: true,
        notify: None,
        messages: BTreeMap::new(),
        pagerduty_incident: None,
        rollback_started_at: Some(at + SignedDuration::from_secs(41)),
        verify_deadline: Some(at + SignedDuration::from_mins(10)),
        verify: None,
        checks: vec![CheckResult {
            name: "error rate".to_string(),
            ok: true,
            detail: "0.002 < 0.01".to_string(),
        }],
        after: Vec::new(),
        finished_at: Some(at + SignedDuration::from_mins(3)),
        on_unfreeze: Vec::new(),
        unfrozen_at: None,
        on_unfreeze_ended_at: None,
    }
}

fn entry(subject: &str, k: u64, at: Timestamp) -> TimelineEntry {
    use rollbackd::model::Kind as K;
    let kinds = [
        K::Triggered,
        K::AwaitingApproval,
        K::Vote,
        K::Approved,
        K::RollingBack,
        K::StepStarted,
        K::StepDone,
        K::Verifying,
        K::Notified,
        K::RolledBack,
    ];
    TimelineEntry {
        at: at + SignedDuration::from_secs(k as i64 * 7),
        subject: subject.to_string(),
        kind: kinds[(k as usize) % kinds.len()],
        actor: "rollbackd".to_string(),
        message: format!("record {k} of {subject}: something happened and here is why"),
        data: json!({"k": k, "step": k % 3}),
        prev_hash: None,
        hash: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, incidents, records) = match args.as_slice() {
        [_, d, i, t] => (
            PathBuf::from(d),
            i.parse::<u64>().expect("INCIDENTS"),
            t.parse::<u64>().expect("TIMELINE_RECORDS"),
        ),
        _ => {
            eprintln!("usage: bench_store DIR INCIDENTS TIMELINE_RECORDS");
            std::process::exit(2);
        }
    };
    let store = Store::open(&dir).expect("open store");
    let start = Instant::now();
    let base: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let per = records / incidents.max(1);
    let extra = records % incidents.max(1);
    let batch = 1000u64;
    let mut n = 0u64;
    while n < incidents {
        let end = (n + batch).min(incidents);
        let mut changes = Vec::new();
        let mut timeline = Vec::new();
        for i in n..end {
            let at = base + SignedDuration::from_mins(i as i64);
            let inc = incident(i + 1, at);
            let k = per + u64::from(i < extra);
            for j in 0..k {
                timeline.push(entry(&inc.id, j, at));
            }
            changes.push(Change::Incident(Box::new(inc)));
        }
        changes.push(Change::Seq(end));
        store.commit(&changes, &timeline).await.expect("commit");
        n = end;
    }
    drop(store);
    eprintln!(
        "bench_store: {incidents} incidents, {records} timeline records in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}
