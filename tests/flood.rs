//! Flood: far more than the ingest quota on `/v1/webhooks/alertmanager` from several loopback
//! threads for a bounded time. The quota holds (429 with `Retry-After` beyond it, accepted ≈
//! rate × time + burst), memory stays bounded, other sources keep their own quota, and the admin
//! API is not behind the ingest quota: an approval sent mid-flood is processed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdefg";
const RATE: f64 = 50.0;
const BURST: f64 = 50.0;
const FLOOD: Duration = Duration::from_secs(3);
const THREADS: usize = 4;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    limited_without_retry_after: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

#[test]
fn a_flood_is_held_to_the_quota_and_admin_calls_still_pass() {
    let config = format!(
        "limits: {{ingest_per_second: {RATE}, ingest_burst: {BURST}}}\n\
         tokens: {{admin: \"{ADMIN}\"}}\n\
         people:\n  - {{id: ada, roles: [founder]}}\n"
    );
    let setup = Setup::new(&config, "");
    let log = setup.path().join("steps.log");
    std::fs::write(
        setup.path().join("rules/rules.yaml"),
        format!(
            r#"rules:
  - name: web-errors
    match:
      - alertname="WebHighErrorRate"
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach:
      sustained: 3s
    release:
      max_age: 1h
    approval: {{require_roles: [founder], quorum: 1, timeout: 5m}}
    steps:
      - name: roll back deployment
        run: [/bin/sh, -c, 'echo "$0" >> {}', "{{{{ release.previous.deployment_id }}}}"]
"#,
            log.display()
        ),
    )
    .unwrap();
    let d = setup.start();
    let pid = d.child.id();

    // An incident awaiting approval, before the flood.
    for (id, secs) in [("A", -120.0), ("B", -60.0)] {
        post_release(&d, "web", id, &ts(secs));
    }
    let (s, v) = post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &am_alert(
            "firing",
            json!({"alertname": "WebHighErrorRate", "service": "web"}),
            &ts(-2.5),
            "fp-flood-incident",
        ),
    );
    assert_eq!(s, 200, "{v}");
    let id = wait_for(Duration::from_secs(10), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        v["items"]
            .as_array()
            .and_then(|a| a.first())
            .filter(|i| i["state"] == "awaiting_approval")
            .and_then(|i| i["id"].as_str().map(String::from))
    })
    .unwrap_or_else(|| panic!("no incident awaiting approval\n{}", d.stderr()));
    // Let the bucket refill to its full burst before the flood starts.
    std::thread::sleep(Duration::from_millis((BURST / RATE * 1000.0) as u64 + 200));

    let url = d.url("/v1/webhooks/alertmanager");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, tally, stop) = (url.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut n = 0u64;
                // Bounded twice: by time and by count.
                while start.elapsed() < FLOOD && n < 200_000 && !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = am_alert(
                        "firing",
                        json!({"alertname": "FloodNoise", "service": format!("svc-{t}"), "n": n.to_string()}),
                        &ts(-1.0),
                        &format!("fp-{t}-{n}"),
                    );
                    match c.post(&url).json(&body).send() {
                        Ok(r) => match r.status().as_u16() {
                            200 => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            429 => {
                                tally.limited.fetch_add(1, Ordering::Relaxed);
                                let ra = r
                                    .headers()
                                    .get("retry-after")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse::<u64>().ok());
                                let body: Value = r.json().unwrap_or(Value::Null);
                                if ra.is_none_or(|s| s < 1)
                                    || !body["error"].as_str().is_some_and(|e| e.contains("quota"))
                                {
                                    tally
                                        .limited_without_retry_after
                                        .fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            _ => {
                                tally.other.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        Err(_) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    // RSS, sampled every 100 ms during the flood.
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < FLOOD + Duration::from_secs(5)
            {
                samples.push((start.elapsed(), rss_kib(pid)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };

    // Mid-flood: the approval and a release (another source, its own quota).
    std::thread::sleep(FLOOD / 2);
    let t0 = Instant::now();
    let (s, v) = post(
        &d.url(&format!("/v1/incidents/{id}/approve")),
        Some(ADMIN),
        &json!({"person": "ada", "reason": "approved during a flood"}),
    );
    let approve_took = t0.elapsed();
    assert_eq!(s, 200, "approval during the flood: {v}");
    let (s, v) = post(
        &d.url("/v1/releases"),
        None,
        &json!({"service": "other", "version": "v1", "deployment_id": "dpl_other",
                "deployed_at": ts(-1.0)}),
    );
    assert_eq!(s, 201, "a release during the alertmanager flood: {v}");
    let approved_mid_flood = start.elapsed() < FLOOD;

    for w in workers {
        w.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();

    let ok = tally.ok.load(Ordering::Relaxed) as f64;
    let limited = tally.limited.load(Ordering::Relaxed) as f64;
    let sent = ok + limited;
    let report = format!(
        "sent {sent} in {elapsed:.2}s ({:.0}/s): 200 {ok}, 429 {limited}, 429 without Retry-After/JSON {}, other {}, transport errors {}; approval took {approve_took:?}",
        sent / elapsed,
        tally.limited_without_retry_after.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    eprintln!("{report}");
    assert!(
        approved_mid_flood,
        "the approval came after the flood: {report}"
    );
    assert!(
        sent >= 10.0 * RATE * FLOOD.as_secs_f64(),
        "not a flood (want ≥ 10× the quota): {report}"
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{report}");
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "{report}");
    assert_eq!(
        tally.limited_without_retry_after.load(Ordering::Relaxed),
        0,
        "{report}"
    );
    let expected = RATE * elapsed + BURST;
    assert!(
        ok <= expected * 1.1 + 5.0 && ok >= expected * 0.7,
        "accepted {ok}, expected ≈ {expected:.0} (rate × time + burst): {report}"
    );
    assert!(
        approve_took < Duration::from_secs(2),
        "the approval waited behind the flood: {report}"
    );

    // Memory: bounded, and not climbing between the first and the last second.
    let first: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t < Duration::from_secs(1))
        .map(|s| s.1)
        .collect();
    let last: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t + Duration::from_secs(1) >= FLOOD && *t < FLOOD)
        .map(|s| s.1)
        .collect();
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let first_max = first.iter().copied().max().unwrap_or(0);
    let last_max = last.iter().copied().max().unwrap_or(0);
    eprintln!(
        "RSS: first second ≤ {first_max} KiB, last second ≤ {last_max} KiB, max {max} KiB ({} samples)",
        samples.len()
    );
    assert!(max > 0, "no RSS samples of pid {pid}");
    assert!(max < 200 * 1024, "RSS {max} KiB ≥ 200 MB: {report}");
    assert!(
        last_max <= first_max + 32 * 1024,
        "RSS grew from {first_max} KiB to {last_max} KiB during the flood"
    );

    // The approval took effect, the daemon is well, and the refusals are counted.
    let inc = wait_for(Duration::from_secs(15), || {
        let (_, v) = get(&d.url(&format!("/v1/incidents/{id}")), None);
        (v["state"] == "rolled_back").then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "incident {id} not rolled back after the approval: {}\n{}",
            get(&d.url(&format!("/v1/incidents/{id}")), None).1,
            d.stderr()
        )
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default().trim(),
        "A",
        "{inc:#}"
    );
    let (s, _) = get(&d.url("/healthz"), None);
    assert_eq!(s, 200);
    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    assert_eq!(
        metric(
            &metrics,
            "rollbackd_ingest_rejected_total",
            &[("source", "alertmanager"), ("reason", "rate_limited")]
        ),
        limited,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "rollbackd_signals_received_total",
            &[("source", "alertmanager")]
        ),
        ok + 1.0,
        "every accepted alert (and the incident's) counted once: {metrics}"
    );
}
