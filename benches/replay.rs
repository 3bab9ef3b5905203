//! Replay speed: `cargo bench --bench replay` (`-- --events N --services N --long-every N` for
//! another mix; `--long-every 20` makes ten times more incidents).
//!
//! Generates input-log lines in memory (releases, and firing/resolved signals for many services:
//! mostly short blips, some flaps inside `clear_after`, some breaches long enough to act), then
//! times (1) parsing the lines alone, the baseline, and (2) parsing and replaying them through the
//! engine, and prints inputs per second and the ratio of the two.

use std::fmt::Write as _;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use rollbackd::config::Person;
use rollbackd::inputs::{self, Options};
use rollbackd::replay;
use rollbackd::rules::{self, RuleSet};

const RULES: &str = r#"rules:
  - name: web-errors
    match:
      - alertname="HighErrorRate"
    group_by: [service, environment]
    service: "{{ labels.service }}"
    environment: "{{ labels.environment }}"
    breach: { sustained: 10m, clear_after: 2m }
    release: { max_age: 6h }
    approval: none
    steps:
      - name: roll back deployment
        run: [deployctl, rollback, "{{ service }}", --to, "{{ release.previous.deployment_id }}"]
        idempotent: true
      - name: purge cache
        http: { method: POST, url: "https://cache.example.com/purge/{{ service }}" }
    budget: { max: 2, per: 1h }
  - name: latency
    match:
      - alertname="HighLatency"
    group_by: [service]
    service: "{{ labels.service }}"
    breach: { sustained: 15m, clear_after: 5m }
    release: { max_age: 6h }
    approval: { require_roles: [founder], timeout: 5m }
    steps:
      - name: roll back
        run: [deployctl, rollback, "{{ service }}", --to, "{{ release.previous.version }}"]
"#;

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::Rng;

/// At least `target` input lines, in time order.
fn generate(target: usize, services: usize, long_every: u64) -> String {
    let t0: Timestamp = "2026-03-02T00:00:00Z".parse().unwrap();
    let at = |s: i64| t0.checked_add(SignedDuration::from_secs(s)).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut lines: Vec<(i64, u64, String)> = Vec::with_capacity(target + services * 4);
    // The second field keeps arrival order among lines at the same instant.
    let push = |lines: &mut Vec<(i64, u64, String)>, t: i64, line: String| {
        let seq = lines.len() as u64 + 1;
        lines.push((t, seq, line));
    };
    let release = |svc: &str, n: u64, t: i64| {
        format!(
            r#"{{"at":"{}","source":"release","body":{{"service":"{svc}","environment":"production","version":"v{n}","deployment_id":"dpl_{svc}_{n}","deployed_at":"{}"}}}}"#,
            at(t),
            at(t)
        )
    };
    let signal = |alert: &str, svc: &str, key: &str, firing: bool, t: i64| {
        let (status, field) = if firing {
            ("firing", "starts_at")
        } else {
            ("resolved", "ends_at")
        };
        format!(
            r#"{{"at":"{}","source":"signal","body":{{"labels":{{"alertname":"{alert}","service":"{svc}","environment":"production","severity":"page"}},"status":"{status}","key":"{key}","{field}":"{}"}}}}"#,
            at(t),
            at(t)
        )
    };
    // One alert firing at `t` and resolved `len` seconds later.
    let run = |lines: &mut Vec<(i64, u64, String)>,
               alert: &str,
               svc: &str,
               key: &str,
               t: i64,
               len: i64| {
        push(lines, t, signal(alert, svc, key, true, t));
        push(lines, t + len, signal(alert, svc, key, false, t + len));
    };
    // Each service: releases every ~4 h; alert episodes one after another until enough lines.
    let per_service = target / services + 1;
    for s in 0..services {
        let svc = format!("svc{s:04}");
        let mut t = -7200 - rng.below(3600) as i64;
        let mut n = 1;
        push(&mut lines, t, release(&svc, n, t));
        let mut next_release = -600 - rng.below(600) as i64;
        let mut made = 1;
        let mut clock = rng.below(1800) as i64;
        while made < per_service {
            while next_release < clock {
                n += 1;
                push(&mut lines, next_release, release(&svc, n, next_release));
                made += 1;
                next_release += 3 * 3600 + rng.below(7200) as i64;
            }
            let (alert, key) = if rng.below(4) == 0 {
                ("HighLatency", format!("{svc}-lat"))
            } else {
                ("HighErrorRate", format!("{svc}-err"))
            };
            // Episode: 1-3 flaps, each firing for 15-90 s, gaps of 20-80 s (inside clear_after;
            // together shorter than `sustained`), or, for 1 in `long_every` episodes, one long
            // run of 12-25 min.
            t = clock;
            if rng.below(long_every) == 0 {
                let len = 720 + rng.below(780) as i64;
                run(&mut lines, alert, &svc, &key, t, len);
                made += 2;
                t += len;
            } else {
                for _ in 0..1 + rng.below(3) {
                    let len = 15 + rng.below(76) as i64;
                    run(&mut lines, alert, &svc, &key, t, len);
                    made += 2;
                    t += len + 20 + rng.below(61) as i64;
                }
            }
            clock = t + 600 + rng.below(3000) as i64;
        }
    }
    lines.sort_by_key(|(t, seq, _)| (*t, *seq));
    let mut out = String::with_capacity(lines.iter().map(|l| l.2.len() + 1).sum());
    for (_, _, l) in lines {
        let _ = writeln!(out, "{l}");
    }
    out
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, and
    // a million inputs in a debug build is no test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("replay benchmark: run it with `cargo bench --bench replay`");
        return;
    }
    let mut events = 1_000_000usize;
    let mut services = 500usize;
    let mut long_every = 200u64;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--events" => events = w[1].parse().expect("--events N"),
            "--services" => services = w[1].parse().expect("--services N"),
            "--long-every" => long_every = w[1].parse().expect("--long-every N"),
            _ => {}
        }
    }
    let ctx = rules::Context::with_people([("ada", &["founder"][..])], []);
    let (set, problems) = rules::load_str("bench.yaml", RULES, &ctx);
    let set: RuleSet = set.unwrap_or_else(|| panic!("{problems:?}"));
    let people = vec![Person {
        id: "ada".into(),
        name: "Ada".into(),
        pagerduty_user: None,
        token: None,
        roles: vec!["founder".into()],
    }];

    let t = Instant::now();
    let text = generate(events, services, long_every.max(1));
    let lines = text.lines().count();
    println!(
        "generated {lines} input lines ({:.1} MB) for {services} services (1 in {long_every} alert episodes long enough to act) in {:.2?}",
        text.len() as f64 / 1e6,
        t.elapsed()
    );

    let opts = Options::default();
    let mut best_parse = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let parsed = inputs::read_lines(&text, "bench", &opts).expect("parse");
        best_parse = best_parse.min(t.elapsed().as_secs_f64());
        drop(parsed);
    }
    // One full run (a replay of a million inputs takes a while; the engine is deterministic, so
    // the run-to-run spread is the machine's).
    let t = Instant::now();
    let parsed = inputs::read_lines(&text, "bench", &opts).expect("parse");
    let parsed_at = t.elapsed().as_secs_f64();
    let all = rollbackd::replay::files::sorted(Vec::new(), parsed);
    let report = replay::replay(&set, &people, all, None);
    let total = t.elapsed().as_secs_f64();
    let replay_secs = total - parsed_at;
    let per_s = |secs: f64| lines as f64 / secs;
    println!(
        "parse only (baseline):  {best_parse:>7.3} s  {:>12.0} inputs/s",
        per_s(best_parse)
    );
    println!(
        "parse + replay:         {total:>7.3} s  {:>12.0} inputs/s",
        per_s(total)
    );
    println!(
        "replay (engine) alone:  {replay_secs:>7.3} s  {:>12.0} inputs/s",
        per_s(replay_secs)
    );
    println!(
        "ratio (parse + replay) / parse: {:.2}x   (parse: best of 3 runs)",
        total / best_parse
    );
    // A digest of the whole JSON output: equal digests, byte-identical decisions.
    let json = replay::render_json(&report.decisions);
    let digest = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    println!(
        "output: {:.1} MB of JSON lines, FNV-1a digest {digest:016x}",
        json.len() as f64 / 1e6
    );
    let s = &report.summary;
    println!(
        "{} decisions; {} blips absorbed; median breach {} ms; per rule:",
        s.decisions,
        s.blips_absorbed,
        s.median_breach_ms.unwrap_or(0)
    );
    for (rule, r) in &s.rules {
        println!(
            "  {rule}: {} breaches, {} incidents, {} rollbacks, {} not acting, {} suppressed",
            r.breaches, r.incidents, r.rollbacks, r.not_acting, r.suppressed
        );
    }
}
