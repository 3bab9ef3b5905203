//! A secret a step expands never leaves the step: printed by the step, its value is replaced by
//! the reference in the incident (API), the report, the daemon's log and the files of its store.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const SECRET: &str = "tok-9f8e7d6c5b4a-secret";
/// The daemon's own admin token, from its config: a child inherits the daemon's environment.
const ADMIN: &str = "admin-5e4d3c2b1a-token";

const RULES: &str = r#"rules:
  - name: leaky
    match: ['alertname="Leaky"']
    service: web
    breach: { sustained: 1s }
    release: { max_age: 1h }
    approval: none
    steps:
      - name: print the token
        run: [/bin/sh, -c, 'echo "token=$TOKEN"; echo "again $TOKEN" >&2']
        env: { TOKEN: "${env:MY_SECRET}" }
      - name: print it and fail
        run: [/bin/sh, -c, 'echo "$1"; exit 3', sh, "${env:MY_SECRET}"]
        continue_on_failure: true
      - name: print the daemon's token
        run: [/bin/sh, -c, 'echo "admin=$ROLLBACKD_TEST_ADMIN"']
"#;

/// Every file under `dir` that holds `needle`, as bytes.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_secret_printed_by_a_step_appears_nowhere() {
    let setup = Setup::new(
        "tokens: { admin: \"${env:ROLLBACKD_TEST_ADMIN}\" }\n",
        RULES,
    );
    let d = setup.start_with_env(
        &[],
        &[("MY_SECRET", SECRET), ("ROLLBACKD_TEST_ADMIN", ADMIN)],
    );
    release_pair_and_alert(&d, "web", json!({"alertname": "Leaky"}), "f1");
    let inc = wait_for(Duration::from_secs(20), || {
        let (_, list) = get(&d.url("/v1/incidents"), None);
        let id = list["items"][0]["id"].as_str()?.to_string();
        let (_, inc) = get(&d.url(&format!("/v1/incidents/{id}")), None);
        (inc["steps"][2]["state"] == "done").then_some(inc)
    })
    .expect("every step ran");
    let id = inc["id"].as_str().expect("id").to_string();
    let text = inc.to_string();
    assert!(
        !text.contains(SECRET),
        "the incident shows the secret: {text}"
    );
    let out = inc["steps"][0]["output"].as_str().unwrap_or_default();
    assert!(
        out.contains("token=${env:MY_SECRET}") && out.contains("again ${env:MY_SECRET}"),
        "the output says where the value was: {out}"
    );
    let out = inc["steps"][1]["output"].as_str().unwrap_or_default();
    assert!(out.contains("${env:MY_SECRET}"), "{out}");
    let out = inc["steps"][2]["output"].as_str().unwrap_or_default();
    assert_eq!(out, "admin=${env:ROLLBACKD_TEST_ADMIN}\n");
    assert!(!text.contains(ADMIN), "the incident shows the admin token");

    let report = client()
        .get(d.url(&format!("/v1/incidents/{id}/report")))
        .send()
        .and_then(|r| r.text())
        .expect("report");
    assert!(report.contains("print the token"), "{report}");
    assert!(!report.contains(SECRET), "the report shows the secret");
    let (_, json_report) = get(
        &d.url(&format!("/v1/incidents/{id}/report?format=json")),
        None,
    );
    assert!(!json_report.to_string().contains(SECRET));

    let stderr_log = d.stderr_log.clone();
    d.stop_cleanly();
    let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
    assert!(!log.contains(SECRET), "the log shows the secret: {log}");
    let holding = files_holding(&setup.path().join("data"), SECRET.as_bytes());
    assert!(
        holding.is_empty(),
        "the store holds the secret: {holding:?}"
    );
}
