//! Verification after the steps, against a real Prometheus (querying a target this test flips)
//! and a local HTTP server that can be told to fail.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::{Setup, get, post, ts, wait_for};
use serde_json::{Value, json};

/// Answers `GET /fail-N` with 503 for its first N requests and 200 after; anything else 200.
fn flaky_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            let count = {
                let mut m = seen.lock().expect("lock");
                let c = m.entry(path.clone()).or_insert(0);
                *c += 1;
                *c
            };
            let fail_first: u32 = path
                .strip_prefix("/fail-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let (status, body) = if count <= fail_first {
                ("503 Service Unavailable", "down")
            } else {
                ("200 OK", "portal ok")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

fn rule(name: &str, checks: &str) -> String {
    format!(
        r#"
  - name: {name}
    match: ['alertname="{name}"']
    service: {name}
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: none
    freeze: true
    steps:
      - name: roll back
        run: [/bin/true]
    verify:
      within: 4s
      every: 300ms
      checks:
{checks}"#
    )
}

fn trigger(base: &str, service: &str) {
    for (v, ago) in [("v1", -600.0), ("v2", -300.0)] {
        let (s, b) = post(
            &format!("{base}/v1/releases"),
            None,
            &json!({"service": service, "version": v, "deployment_id": format!("{service}-{v}"), "deployed_at": ts(ago)}),
        );
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = post(
        &format!("{base}/v1/signals"),
        None,
        &json!({"labels": {"alertname": service}, "status": "firing", "starts_at": ts(-2.0)}),
    );
    assert_eq!(s, 200, "{b}");
}

fn finished(base: &str, service: &str) -> Value {
    wait_for(Duration::from_secs(20), || {
        let (_, v) = get(&format!("{base}/v1/incidents"), None);
        v["items"]
            .as_array()?
            .iter()
            .find(|i| {
                i["service"] == service
                    && matches!(i["state"].as_str(), Some("rolled_back" | "rollback_failed"))
            })
            .cloned()
    })
    .unwrap_or_else(|| panic!("{service} did not finish"))
}

#[test]
fn verification_against_real_prometheus_and_a_flaky_http_server() {
    let prometheus_bin = require_on_path("prometheus");
    let work = tempfile::tempdir().expect("tempdir");
    let target = Target::start();
    let prom_port = free_port();
    let cfg = work.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: portal\n    static_configs:\n      - targets: [\"{}\"]\n",
            target.addr
        ),
    )
    .expect("write config");
    let mut prometheus = Proc::spawn(
        "prometheus",
        &prometheus_bin,
        &[
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", work.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        work.path(),
    );
    let prom = format!("http://127.0.0.1:{prom_port}");
    wait_for(Duration::from_secs(30), || {
        prometheus.assert_running();
        let (_, v) = try_get(&format!("{prom}/api/v1/query?query=portal_error_ratio"))?;
        (v["data"]["result"].as_array()?.first()?["value"][1] == "0").then_some(())
    })
    .expect("Prometheus never scraped the target");

    let http = flaky_server();
    let q = |query: &str, bound: &str| {
        format!("        - prometheus: {{ url: \"{prom}\", query: '{query}', {bound} }}\n")
    };
    let h = |path: &str| {
        format!(
            "        - http: {{ url: \"{http}{path}\", expect_status: 200, body_contains: ok }}\n"
        )
    };
    let rules = format!(
        "rules:{}{}{}{}{}",
        rule(
            "healthy",
            &format!("{}{}", q("portal_error_ratio", "below: 0.1"), h("/fail-2"))
        ),
        rule("empty", &q("no_such_metric_anywhere", "below: 0.1")),
        rule("broken-http", &h("/fail-1000")),
        rule("above", &q("portal_error_ratio", "above: 0.2")),
        rule("degraded", &q("portal_error_ratio", "below: 0.1")),
    );
    let setup = Setup::new("", &rules);
    let d = setup.start();

    // All good: the Prometheus check passes, the HTTP check passes once the server recovers.
    trigger(&d.base, "healthy");
    let inc = finished(&d.base, "healthy");
    assert_eq!(inc["state"], "rolled_back", "{inc:#}");
    assert_eq!(inc["checks"].as_array().map(Vec::len), Some(2), "{inc:#}");
    assert!(
        inc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );

    // An empty result is a failure, not a pass; the freeze stays.
    trigger(&d.base, "empty");
    let inc = finished(&d.base, "empty");
    assert_eq!(inc["state"], "rollback_failed", "{inc:#}");
    assert!(
        inc["reason"].as_str().unwrap().contains("empty result"),
        "{inc:#}"
    );
    let (status, f) = get(&d.url("/v1/freezes/empty"), None);
    assert_eq!(status, 423, "{f}");

    // An HTTP check that never recovers fails within `within`.
    trigger(&d.base, "broken-http");
    let inc = finished(&d.base, "broken-http");
    assert_eq!(inc["state"], "rollback_failed", "{inc:#}");
    assert!(
        inc["reason"].as_str().unwrap().contains("HTTP 503"),
        "{inc:#}"
    );

    // Flip the metric bad: an `above 0.2` check now passes.
    target.set_bad(true);
    wait_for(Duration::from_secs(10), || {
        let (_, v) = try_get(&format!("{prom}/api/v1/query?query=portal_error_ratio"))?;
        (v["data"]["result"].as_array()?.first()?["value"][1] == "0.5").then_some(())
    })
    .expect("Prometheus never saw the flip");
    trigger(&d.base, "above");
    let inc = finished(&d.base, "above");
    assert_eq!(inc["state"], "rolled_back", "{inc:#}");

    // The same metric now fails a `below` check: the rollback did not fix it.
    trigger(&d.base, "degraded");
    let inc = finished(&d.base, "degraded");
    assert_eq!(inc["state"], "rollback_failed", "{inc:#}");
    assert!(
        inc["reason"].as_str().unwrap().contains("not below 0.1"),
        "{inc:#}"
    );
}
