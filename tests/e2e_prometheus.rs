//! End to end with the real thing: a metrics target served by this test, the real `prometheus`
//! scraping it and evaluating an alerting rule, the real `prometheus-alertmanager` delivering the
//! alert to the real `rollbackd` binary over its bearer-token webhook, and a real child process as
//! the rollback step.
//!
//! Needs the Debian packages `prometheus` and `prometheus-alertmanager` on PATH (`scripts/test.sh`
//! installs them). Without them this test fails, it never skips.
//!
//! One test, two scenarios on the same processes, in real time (about 40 s):
//! 1. a short blip: Prometheus fires, Alertmanager delivers, the metric recovers well before
//!    `breach.sustained`; rollbackd sees the breach, sees it clear, opens no incident, runs nothing;
//! 2. a sustained breach: rollbackd opens an incident at `start + sustained`, runs the step with the
//!    previous deployment id, ends `rolled_back` and freezes the service.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};

use common::procs::*;
use common::{Setup, get, post, ts, wait_for};

/// 32 characters, so the token path is the real one (rollbackd refuses tokens under 16).
const INGEST_TOKEN: &str = "e2eIngestToken0123456789abcdefAB";
const PREVIOUS: &str = "dpl-portal-previous-1a2b";
const CURRENT: &str = "dpl-portal-current-3c4d";
/// `breach.sustained` of the rule: long enough that a blip resolves well before it (the resolve
/// reaches rollbackd ~3-5 s after the alert's start), short enough to keep the test quick.
const SUSTAINED_SECS: i64 = 10;

// ---------------------------------------------------------------------------------------------
// configs

fn prometheus_yml(target: SocketAddr, am_port: u16, rules: &Path) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: portal
    static_configs:
      - targets: ["{target}"]
"#,
        rules = rules.display()
    )
}

const PROMETHEUS_RULES: &str = r#"groups:
  - name: portal-slo
    rules:
      - alert: PortalHighErrorRate
        expr: portal_error_ratio > 0.1
        for: 1s
        labels:
          severity: page
          service: portal
          environment: production
        annotations:
          summary: "portal error ratio is {{ $value }}"
"#;

fn alertmanager_yml(rollbackd_base: &str) -> String {
    format!(
        r#"route:
  receiver: rollbackd
  group_by: [alertname, service, environment]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: rollbackd
    webhook_configs:
      - url: {rollbackd_base}/v1/webhooks/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials: {INGEST_TOKEN}
"#
    )
}

fn rollbackd_rules(step_log: &Path) -> String {
    // The template value reaches the shell as "$0", a positional argument, never as script text.
    format!(
        r#"rules:
  - name: portal-error-rate
    match:
      - alertname="PortalHighErrorRate"
      - severity=~"page|critical"
    sources: [alertmanager]
    group_by: [service, environment]
    service: "{{{{ labels.service }}}}"
    environment: "{{{{ labels.environment }}}}"
    breach:
      sustained: {SUSTAINED_SECS}s
      clear_after: 1s
    release:
      max_age: 1h
    approval: none
    steps:
      - name: roll back deployment
        run: [/bin/sh, -c, 'echo "$0" >> {log}', "{{{{ release.previous.deployment_id }}}}"]
        timeout: 30s
        idempotent: true
    freeze: true
"#,
        log = step_log.display()
    )
}

// ---------------------------------------------------------------------------------------------
// the test

#[test]
fn prometheus_alertmanager_rollbackd_end_to_end() {
    let t0 = Instant::now();
    let prometheus_bin = require_on_path("prometheus");
    let alertmanager_bin = require_on_path("prometheus-alertmanager");

    let work = tempfile::tempdir().expect("tempdir");
    let step_log = work.path().join("steps.log");

    // rollbackd first: Alertmanager's config needs its port.
    let setup = Setup::new(
        &format!("tokens: {{ ingest: \"{INGEST_TOKEN}\" }}\n"),
        &rollbackd_rules(&step_log),
    );
    let daemon = setup.start();
    let _dump = DumpOnPanic(daemon.stderr_log.clone());
    let rb = |path: &str| daemon.url(path);

    // The webhook really is guarded: without the token Alertmanager would get 401.
    let (status, _) = post(
        &rb("/v1/webhooks/alertmanager"),
        None,
        &json!({"version": "4", "alerts": []}),
    );
    assert_eq!(status, 401, "webhook without the ingest token");

    // Two releases, both well in the past: the breach will begin after the latest one.
    for (version, id, ago) in [("v41", PREVIOUS, -1800.0), ("v42", CURRENT, -1200.0)] {
        let (status, body) = post(
            &rb("/v1/releases"),
            Some(INGEST_TOKEN),
            &json!({"service": "portal", "environment": "production", "version": version,
                    "deployment_id": id, "deployed_at": ts(ago)}),
        );
        assert_eq!(status, 201, "POST /v1/releases {id}: {body}");
    }

    // The scrape target, Alertmanager, Prometheus.
    let target = Target::start();
    let am_port = free_port();
    let prom_port = free_port();
    let am_dir = work.path().join("alertmanager");
    let prom_dir = work.path().join("prometheus");
    std::fs::create_dir_all(&am_dir).unwrap();
    std::fs::create_dir_all(&prom_dir).unwrap();
    let am_cfg = work.path().join("alertmanager.yml");
    let prom_cfg = work.path().join("prometheus.yml");
    let prom_rules = work.path().join("alerts.yml");
    std::fs::write(&am_cfg, alertmanager_yml(&daemon.base)).unwrap();
    std::fs::write(&prom_rules, PROMETHEUS_RULES).unwrap();
    std::fs::write(&prom_cfg, prometheus_yml(target.addr, am_port, &prom_rules)).unwrap();

    let mut alertmanager = Proc::spawn(
        "alertmanager",
        &alertmanager_bin,
        &[
            format!("--config.file={}", am_cfg.display()),
            format!("--storage.path={}", am_dir.display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_string(),
        ],
        work.path(),
    );
    let mut prometheus = Proc::spawn(
        "prometheus",
        &prometheus_bin,
        &[
            format!("--config.file={}", prom_cfg.display()),
            format!("--storage.tsdb.path={}", prom_dir.display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        work.path(),
    );
    let am = |path: &str| format!("http://127.0.0.1:{am_port}{path}");
    let prom = |path: &str| format!("http://127.0.0.1:{prom_port}{path}");

    // Both ready, Prometheus knows Alertmanager, has scraped the target and evaluated the rule
    // once after that (otherwise the first cycle is slow).
    let ready = |url: String, p: &mut Proc| {
        wait_for(Duration::from_secs(30), || {
            p.assert_running();
            try_get(&url).filter(|(s, _)| *s == 200).map(|_| ())
        })
        .unwrap_or_else(|| panic!("{} not ready at {url} within 30 s", p.name))
    };
    ready(am("/-/ready"), &mut alertmanager);
    ready(prom("/-/ready"), &mut prometheus);
    wait_for(Duration::from_secs(30), || {
        let (_, v) = try_get(&prom("/api/v1/alertmanagers"))?;
        let n = v["data"]["activeAlertmanagers"].as_array()?.len();
        (n > 0).then_some(())
    })
    .expect("Prometheus never discovered Alertmanager");
    let scraped_at = wait_for(Duration::from_secs(30), || {
        let (_, v) = try_get(&prom("/api/v1/query?query=portal_error_ratio"))?;
        let r = v["data"]["result"].as_array()?.first()?.clone();
        (r["value"][1] == "0").then(Timestamp::now)
    })
    .expect("Prometheus never scraped portal_error_ratio 0 from the target");
    wait_for(Duration::from_secs(30), || {
        let (_, v) = try_get(&prom("/api/v1/rules"))?;
        let last: Timestamp = v["data"]["groups"][0]["lastEvaluation"]
            .as_str()?
            .parse()
            .ok()?;
        (last > scraped_at).then_some(())
    })
    .expect("Prometheus never evaluated the alerting rule after its first scrape");
    eprintln!(
        "e2e: rollbackd {}, Alertmanager :{am_port}, Prometheus :{prom_port}, target {}; ready after {:.1}s",
        daemon.base,
        target.addr,
        t0.elapsed().as_secs_f64()
    );

    let breaches = || -> Vec<Value> {
        let (s, v) = get(&rb("/v1/breaches"), None);
        assert_eq!(s, 200, "GET /v1/breaches: {v}");
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let incidents = || -> Vec<Value> {
        let (s, v) = get(&rb("/v1/incidents"), None);
        assert_eq!(s, 200, "GET /v1/incidents: {v}");
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let received = || {
        sample(
            &get_text(&rb("/metrics")),
            "rollbackd_signals_received_total",
            &[("source", "alertmanager")],
        )
    };

    // ---- Scenario 1: a blip. Bad just long enough for Alertmanager to deliver the firing alert,
    // then good again: the resolve reaches rollbackd well before `sustained`.
    let flipped = Timestamp::now();
    target.set_bad(true);
    let breach = wait_for(Duration::from_secs(30), || {
        prometheus.assert_running();
        alertmanager.assert_running();
        breaches().into_iter().next()
    })
    .expect("scenario 1: no breach in rollbackd within 30 s of the metric going bad");
    target.set_bad(false);
    let good_at = Timestamp::now();
    let started = time(&breach["started_at"]);
    let first_seen = time(&breach["first_seen"]);
    let deadline = time(&breach["deadline"]);
    eprintln!(
        "e2e: blip: flip bad -> alert startsAt {:.3}s -> webhook at rollbackd {:.3}s (Alertmanager delivery {:.3}s)",
        secs(flipped, started),
        secs(flipped, first_seen),
        secs(started, first_seen)
    );
    assert_eq!(breach["rule"], "portal-error-rate", "{breach}");
    assert_eq!(breach["labels"]["alertname"], "PortalHighErrorRate");
    assert_eq!(breach["labels"]["service"], "portal");
    assert_eq!(breach["labels"]["environment"], "production");
    assert_eq!(
        secs(started, deadline).round() as i64,
        SUSTAINED_SECS,
        "{breach}"
    );
    assert!(
        received() >= 1.0,
        "the breach came through Alertmanager's webhook"
    );

    let mut saw_resolving = false;
    wait_for(Duration::from_secs(30), || {
        let open = breaches();
        saw_resolving |= open.iter().any(|b| b.get("clearing_since").is_some());
        open.is_empty().then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "scenario 1: the breach did not clear within 30 s of the metric recovering; open: {:?}",
            breaches()
        )
    });
    let cleared = Timestamp::now();
    eprintln!(
        "e2e: blip: flip good -> breach cleared {:.2}s (clear_after 1s; resolving seen: {saw_resolving}); {:.2}s before its deadline",
        secs(good_at, cleared),
        secs(cleared, deadline)
    );
    assert!(
        cleared < deadline,
        "scenario 1 needs the resolve before the deadline; the timings of this machine are off: \
         cleared {cleared}, deadline {deadline}"
    );
    assert!(
        received() >= 2.0,
        "rollbackd got both the firing and the resolved notification"
    );
    // Past the blip's deadline, still nothing: no incident, no step.
    let past_deadline = Duration::from_secs_f64(secs(Timestamp::now(), deadline).max(0.0) + 1.5);
    std::thread::sleep(past_deadline);
    assert!(
        incidents().is_empty(),
        "scenario 1: a blip opened an incident: {:?}",
        incidents()
    );
    assert!(breaches().is_empty(), "scenario 1: {:?}", breaches());
    assert!(
        !step_log.exists(),
        "scenario 1: a rollback step ran: {}",
        std::fs::read_to_string(&step_log).unwrap_or_default()
    );
    let (s, v) = get(&rb("/v1/freezes/portal"), None);
    assert_eq!((s, &v["frozen"]), (200, &json!(false)), "{v}");

    // ---- Scenario 2: bad and staying bad. rollbackd acts at start + sustained.
    let flipped = Timestamp::now();
    target.set_bad(true);
    let breach = wait_for(Duration::from_secs(30), || {
        prometheus.assert_running();
        alertmanager.assert_running();
        breaches().into_iter().next()
    })
    .expect("scenario 2: no breach in rollbackd within 30 s of the metric going bad");
    let started = time(&breach["started_at"]);
    eprintln!(
        "e2e: sustained: flip bad -> alert startsAt {:.3}s -> webhook at rollbackd {:.3}s",
        secs(flipped, started),
        secs(flipped, time(&breach["first_seen"]))
    );
    let incident = wait_for(Duration::from_secs(SUSTAINED_SECS as u64 + 30), || {
        prometheus.assert_running();
        alertmanager.assert_running();
        let inc = incidents().into_iter().next()?;
        let state = inc["state"].as_str().unwrap_or("").to_string();
        match state.as_str() {
            "rolled_back" => Some(inc),
            "triggered" | "approved" | "rolling_back" | "verifying" => None,
            other => panic!("scenario 2: incident ended {other}: {inc:#}"),
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "scenario 2: no incident reached rolled_back; incidents: {:#?}",
            incidents()
        )
    });
    target.set_bad(false);

    assert_eq!(incident["rule"], "portal-error-rate");
    assert_eq!(incident["service"], "portal");
    assert_eq!(incident["environment"], "production");
    assert_eq!(incident["breach"], breach["id"], "{incident:#}");
    assert_eq!(incident["release_from"]["deployment_id"], CURRENT);
    assert_eq!(incident["release_to"]["deployment_id"], PREVIOUS);
    let step = &incident["steps"][0];
    assert_eq!(step["state"], "done", "{incident:#}");
    assert_eq!(step["exit_code"], 0, "{incident:#}");
    assert_eq!(
        step["argv"][3], PREVIOUS,
        "the template value is a positional argument: {step}"
    );
    let log = std::fs::read_to_string(&step_log).expect("the step wrote its log");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![PREVIOUS],
        "exactly one step run, with the previous deployment id"
    );
    let (s, v) = get(&rb("/v1/freezes/portal"), None);
    assert_eq!(s, 423, "the rollback froze portal: {v}");
    assert_eq!(v["frozen"], true);
    assert_eq!(v["incident"], incident["id"]);

    let deadline = time(&incident["deadline"]);
    let opened = time(&incident["opened_at"]);
    let step_started = time(&step["started_at"]);
    let step_finished = time(&step["finished_at"]);
    assert_eq!(
        secs(started, deadline).round() as i64,
        SUSTAINED_SECS,
        "{incident:#}"
    );
    assert!(
        opened >= deadline,
        "never acts before start + sustained: {incident:#}"
    );
    assert!(
        secs(deadline, opened) < 2.0,
        "acts at start + sustained, not later: {incident:#}"
    );
    eprintln!(
        "e2e: sustained: alert startsAt -> incident opened {:.3}s (deadline +{:.3}s) -> step started {:.3}s (deadline +{:.3}s) -> step done {:.3}s",
        secs(started, opened),
        secs(deadline, opened),
        secs(started, step_started),
        secs(deadline, step_started),
        secs(started, step_finished)
    );

    // Recovery ends the breach, and nothing more happens.
    wait_for(Duration::from_secs(30), || {
        breaches().is_empty().then_some(())
    })
    .expect("scenario 2: the breach did not clear after the metric recovered");
    let all = incidents();
    assert_eq!(all.len(), 1, "one incident per breach: {all:#?}");
    assert_eq!(
        std::fs::read_to_string(&step_log).unwrap().lines().count(),
        1
    );
    // Every Alertmanager delivery got through the token check: the only refusal is ours above.
    let m = get_text(&rb("/metrics"));
    assert_eq!(
        sample(
            &m,
            "rollbackd_ingest_rejected_total",
            &[("source", "alertmanager"), ("reason", "auth")]
        ),
        1.0,
        "{m}"
    );
    eprintln!("e2e: done in {:.1}s", t0.elapsed().as_secs_f64());
}
