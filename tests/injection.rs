//! Template injection through alert labels: every hostile value is refused with a clear reason,
//! and no process runs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[test]
fn hostile_label_values_never_reach_a_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ran.log");
    let rules = format!(
        r#"rules:
  - name: inject
    match: ['alertname="Inject"']
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: none
    steps:
      - name: use the label
        run: [/bin/sh, -c, 'echo "$0" >> {}', "target={{{{ labels.target }}}}"]
        idempotent: true
"#,
        log.display()
    );
    let setup = Setup::new("", &rules);
    let d = setup.start();
    let hostile = [
        "a;touch /tmp/pwned",
        "$(id)",
        "`id`",
        "two words",
        "line\nbreak",
        "../../etc/passwd",
        "--help",
        "${env:HOME}",
        "quote\"s",
        "semi;colon",
        "ünïcode",
    ];
    for (i, value) in hostile.iter().enumerate() {
        let service = format!("svc-{i}");
        for (v, dep, ago) in [("v1", "dpl-1", -600.0), ("v2", "dpl-2", -300.0)] {
            let (s, b) = post(
                &d.url("/v1/releases"),
                None,
                &json!({"service": service, "version": v, "deployment_id": dep, "deployed_at": ts(ago)}),
            );
            assert_eq!(s, 201, "{b}");
        }
        let (s, b) = post(
            &d.url("/v1/webhooks/alertmanager"),
            None,
            &am_alert(
                "firing",
                json!({"alertname": "Inject", "service": service, "target": value}),
                &ts(-5.0),
                &format!("fp{i}"),
            ),
        );
        assert_eq!(s, 200, "{b}");
    }
    let items = wait_for(Duration::from_secs(10), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        let items = v["items"].as_array()?.clone();
        (items.len() == hostile.len() && items.iter().all(|i| i["state"] == "rollback_failed"))
            .then_some(items)
    })
    .unwrap_or_else(|| panic!("{:#}", get(&d.url("/v1/incidents"), None).1));
    for inc in &items {
        let step: &Value = &inc["steps"][0];
        assert_eq!(step["state"], "failed", "{inc:#}");
        assert_eq!(step["attempts"], 0, "never started: {inc:#}");
        let error = step["error"].as_str().unwrap_or("");
        assert!(
            error.contains("labels.target") && error.contains("refusing"),
            "{error}"
        );
        assert!(
            inc["reason"]
                .as_str()
                .unwrap_or("")
                .contains("could not be prepared")
        );
    }
    assert!(
        !log.exists(),
        "a step ran: {:?}",
        std::fs::read_to_string(&log)
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn hostile_release_fields_are_refused_at_the_door() {
    let setup = Setup::new("", "rules: []\n");
    let d = setup.start();
    for (field, value) in [
        ("deployment_id", "dpl;rm -rf /"),
        ("version", "$(id)"),
        ("service", "../portal"),
        ("deployment_id", "--force"),
        ("environment", "prod uction"),
    ] {
        let mut body = json!({"service": "portal", "version": "v1", "deployment_id": "d1"});
        body[field] = json!(value);
        let (s, b) = post(&d.url("/v1/releases"), None, &body);
        assert_eq!(s, 400, "{field}={value:?}: {b}");
        assert!(b["error"].as_str().unwrap_or("").contains(field), "{b}");
    }
    let (_, v) = get(&d.url("/v1/releases/portal"), None);
    assert_eq!(v["items"], json!([]));
}
