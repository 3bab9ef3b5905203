//! The open-breach cap (`limits.max_open_breaches_per_rule`) and large deliveries, against the
//! real binary (and a rule's own `breach.max_open`): a firing alert that would open one breach too many is refused with 429 naming
//! the rule and the cap, counted per rule, and changes nothing; resolves and alerts of open
//! breaches still pass; a delivery larger than one chunk is applied (and logged) chunk by chunk,
//! and its input log replays to the same breaches.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// Three rules, one breach per `instance`: `capped` (alerts `Capped`), `own` (alerts `Own`, its
/// own `breach.max_open: 5`) and `other` (alerts `Other`).
fn rules() -> String {
    let rule = |name: &str, alert: &str, extra: &str| {
        format!(
            "  - name: {name}\n    match: ['alertname=\"{alert}\"']\n    group_by: [instance]\n    service: {name}\n    breach: {{ sustained: 1h, clear_after: 1h{extra} }}\n    approval: none\n    steps:\n      - name: noop\n        run: [/bin/true]\n"
        )
    };
    format!(
        "rules:\n{}{}{}",
        rule("capped", "Capped", ""),
        rule("own", "Own", ", max_open: 5"),
        rule("other", "Other", "")
    )
}

/// An Alertmanager v4 body with one alert per (status, alertname, instance).
fn webhook(alerts: &[(&str, &str, String)]) -> Value {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(status, name, instance)| {
            json!({
                "status": status,
                "labels": {"alertname": name, "instance": instance},
                "annotations": {"summary": "x"},
                "startsAt": ts(-30.0),
                "endsAt": if *status == "firing" { "0001-01-01T00:00:00Z".to_string() } else { ts(0.0) },
                "generatorURL": "http://prometheus/graph",
                "fingerprint": format!("{name}-{instance}"),
            })
        })
        .collect();
    json!({"receiver": "rollbackd", "status": "firing", "version": "4", "groupKey": "{}:{}",
           "truncatedAlerts": 0, "externalURL": "http://am", "groupLabels": {},
           "commonLabels": {}, "commonAnnotations": {}, "alerts": alerts})
}

fn firing(
    name: &'static str,
    n: std::ops::Range<usize>,
) -> Vec<(&'static str, &'static str, String)> {
    n.map(|i| ("firing", name, format!("i{i}"))).collect()
}

fn breaches(d: &Daemon) -> Vec<Value> {
    let (s, v) = get(&d.url("/v1/breaches?limit=5000"), None);
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

fn of_rule(bs: &[Value], rule: &str) -> usize {
    bs.iter().filter(|b| b["rule"] == rule).count()
}

fn refused_metric(d: &Daemon, rule: &str) -> Option<u64> {
    d.metric(&format!(
        "rollbackd_breaches_refused_total{{rule=\"{rule}\"}}"
    ))
    .map(|v| v as u64)
}

#[test]
fn alerts_beyond_the_open_breach_cap_are_refused_with_429_and_the_rest_applied() {
    let setup = Setup::new("limits: { max_open_breaches_per_rule: 3 }\n", &rules());
    let d = setup.start();
    let am = d.url("/v1/webhooks/alertmanager");

    let (s, v) = post(&am, None, &webhook(&firing("Capped", 0..5)));
    assert_eq!(s, 429, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("capped")
            && error.contains('3')
            && error.contains("max_open_breaches_per_rule"),
        "the error names the rule and the cap: {v}"
    );
    assert_eq!(
        v["detail"]["refused"],
        json!([{"rule": "capped", "cap": 3, "alerts": 2}]),
        "{v}"
    );
    let bs = breaches(&d);
    assert_eq!(of_rule(&bs, "capped"), 3, "{bs:#?}");
    assert_eq!(refused_metric(&d, "capped"), Some(2));

    // The same delivery again (a redelivery): nothing new opens, the same two are refused.
    let (s, v) = post(&am, None, &webhook(&firing("Capped", 0..5)));
    assert_eq!(s, 429, "{v}");
    assert_eq!(of_rule(&breaches(&d), "capped"), 3);
    assert_eq!(refused_metric(&d, "capped"), Some(4));

    // Alerts of open breaches are never refused: a repeat, and a resolve.
    let (s, v) = post(&am, None, &webhook(&firing("Capped", 0..1)));
    assert_eq!(s, 200, "a repeat of an open breach's alert: {v}");
    let (s, v) = post(
        &am,
        None,
        &webhook(&[("resolved", "Capped", "i1".to_string())]),
    );
    assert_eq!(s, 200, "a resolve of an open breach's alert: {v}");
    assert_eq!(v["accepted"], 1, "{v}");
    // A resolve for an alert that never opened a breach is not refused either.
    let (s, v) = post(
        &am,
        None,
        &webhook(&[("resolved", "Capped", "i4".to_string())]),
    );
    assert_eq!(s, 200, "{v}");

    // Another rule has its own cap.
    let (s, v) = post(&am, None, &webhook(&firing("Other", 0..3)));
    assert_eq!(s, 200, "{v}");
    let bs = breaches(&d);
    assert_eq!(
        (of_rule(&bs, "capped"), of_rule(&bs, "other")),
        (3, 3),
        "{bs:#?}"
    );
    assert_eq!(
        refused_metric(&d, "other"),
        None,
        "no refusal counted for other"
    );
    assert_eq!(refused_metric(&d, "capped"), Some(4));

    // A rule's own `breach.max_open` stands in for the limit.
    let (s, v) = post(&am, None, &webhook(&firing("Own", 0..5)));
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&am, None, &webhook(&firing("Own", 5..6)));
    assert_eq!(s, 429, "{v}");
    assert_eq!(
        v["detail"]["refused"],
        json!([{"rule": "own", "cap": 5, "alerts": 1}]),
        "{v}"
    );
    assert_eq!(of_rule(&breaches(&d), "own"), 5);

    // The cap counts open breaches across a restart (the index is rebuilt from disk).
    drop(d);
    let d = setup.start();
    let (s, v) = post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &webhook(&firing("Capped", 5..6)),
    );
    assert_eq!(s, 429, "{v}");
    assert_eq!(of_rule(&breaches(&d), "capped"), 3);
}

#[test]
fn a_large_delivery_is_applied_in_chunks_and_its_log_replays_to_the_same_breaches() {
    // 1,200 alerts: three chunks of at most 500; the cap refuses the last 150.
    let setup = Setup::new(
        "record_inputs: true\nlimits: { max_body_bytes: 4194304, max_open_breaches_per_rule: 1050 }\n",
        &rules(),
    );
    let d = setup.start();
    let mut alerts = firing("Capped", 0..1200);
    alerts.extend(firing("Other", 0..10));
    let (s, v) = post(&d.url("/v1/webhooks/alertmanager"), None, &webhook(&alerts));
    assert_eq!(s, 429, "{v}");
    assert_eq!(
        v["detail"]["refused"],
        json!([{"rule": "capped", "cap": 1050, "alerts": 150}]),
        "{v}"
    );
    assert_eq!(v["detail"]["received"], 1210, "{v}");
    let bs = breaches(&d);
    assert_eq!((of_rule(&bs, "capped"), of_rule(&bs, "other")), (1050, 10));
    drop(d);

    // The log holds one line per chunk, each with its own alerts exactly as received.
    let log = std::fs::read_to_string(setup.path().join("data/inputs.jsonl")).expect("the log");
    let chunks: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|l| l["source"] == "alertmanager")
        .collect();
    let sizes: Vec<usize> = chunks
        .iter()
        .map(|l| l["body"]["alerts"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, [500, 500, 210], "one line per chunk");
    assert_eq!(chunks[0]["body"]["alerts"][0]["fingerprint"], "Capped-i0");
    assert_eq!(
        chunks[0]["body"]["alerts"][0]["annotations"]["summary"],
        "x"
    );
    assert_eq!(chunks[2]["body"]["alerts"][209]["fingerprint"], "Other-i9");

    // A replay of the log with the daemon's config opens the same 1,060 breaches.
    let out = Command::new(BIN)
        .args(["replay", "--format", "json", "--rules"])
        .arg(setup.path().join("rules"))
        .arg("--config")
        .arg(setup.path().join("rollbackd.yaml"))
        .arg("--events")
        .arg(setup.path().join("data/inputs.jsonl"))
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .expect("replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let opened = |rule: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|d| d["kind"] == "breach_opened" && d["rule"] == rule)
            .count()
    };
    assert_eq!((opened("capped"), opened("other")), (1050, 10), "{stderr}");
}

/// One breach keeps 1,000 alerts one by one, whatever a label with a value per pod makes of a
/// rule's group: more firing alerts of it are answered 200 and not kept, and the breach says so.
#[test]
fn one_breach_keeps_a_thousand_alerts_and_says_when_it_holds_them() {
    let rules = "rules:\n  - name: wide\n    match: ['alertname=\"Wide\"']\n    group_by: [alertname]\n    service: web\n    breach: { sustained: 1h, clear_after: 1h }\n    approval: none\n    steps:\n      - name: noop\n        run: [/bin/true]\n";
    let setup = Setup::new("", rules);
    let d = setup.start();
    let am = d.url("/v1/webhooks/alertmanager");
    let (s, v) = post(&am, None, &webhook(&firing("Wide", 0..1000)));
    assert_eq!(s, 200, "{v}");
    let bs = breaches(&d);
    assert_eq!(bs.len(), 1, "{bs:?}");
    assert_eq!(bs[0]["alerts"].as_object().map(|m| m.len()), Some(1000));
    assert!(bs[0].get("alerts_capped_at").is_none(), "{}", bs[0]);

    let (s, v) = post(&am, None, &webhook(&firing("Wide", 1000..1003)));
    assert_eq!(s, 200, "alerts of an open breach are not refused: {v}");
    let bs = breaches(&d);
    let alerts = bs[0]["alerts"].as_object().cloned().unwrap_or_default();
    assert_eq!(alerts.len(), 1000);
    assert!(
        !alerts.contains_key("Wide-i1000"),
        "{:?}",
        alerts.keys().next_back()
    );
    assert!(bs[0]["alerts_capped_at"].is_string(), "{}", bs[0]);

    // A resolved alert makes room for the next.
    let resolved = vec![("resolved", "Wide", "i0".to_string())];
    let (s, v) = post(&am, None, &webhook(&resolved));
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&am, None, &webhook(&firing("Wide", 1000..1001)));
    assert_eq!(s, 200, "{v}");
    let alerts = breaches(&d)[0]["alerts"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(alerts.len(), 1000);
    assert!(alerts.contains_key("Wide-i1000") && !alerts.contains_key("Wide-i0"));
}
