//! Template injection through alert labels: every hostile value is refused with a clear reason,
//! and no process runs; in an http step's URL a value is percent-encoded where it stands and
//! can never move the request to another host.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::{Value, json};

/// A rule that acts 1 s into a breach of `alertname`, one breach per service, without approval,
/// with `steps` (YAML list items).
fn acting_rule(alertname: &str, steps: &str) -> String {
    format!(
        r#"rules:
  - name: acting
    match: ['alertname="{alertname}"']
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: none
    steps:
{steps}"#
    )
}

#[test]
fn hostile_label_values_never_reach_a_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ran.log");
    let rules = acting_rule(
        "Inject",
        &format!(
            r#"      - name: use the label
        run: [/bin/sh, -c, 'echo "$0" >> {}', "target={{{{ labels.target }}}}"]
        idempotent: true
"#,
            log.display()
        ),
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
        release_pair_and_alert(
            &d,
            &service,
            json!({"alertname": "Inject", "service": service, "target": value}),
            &format!("fp{i}"),
        );
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

fn incident_of(d: &Daemon, service: &str, done: &[&str]) -> Value {
    wait_for(Duration::from_secs(10), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        v["items"]
            .as_array()?
            .iter()
            .find(|i| i["service"] == service && done.contains(&i["state"].as_str().unwrap_or("")))
            .cloned()
    })
    .unwrap_or_else(|| panic!("{:#}", get(&d.url("/v1/incidents"), None).1))
}

#[test]
fn hostile_label_in_an_http_url_stays_one_segment_on_the_rules_host() {
    let intended = Receiver::generic();
    let attacker = Receiver::generic();
    let setup = Setup::new("", "rules: []\n");
    let secret = setup.path().join("api-key");
    std::fs::write(&secret, "k-0123456789abcdef").unwrap();
    let rules = acting_rule(
        "UrlInject",
        &format!(
            r#"      - name: call the deploy API
        http:
          method: POST
          url: "{}/v1/clusters/{{{{ labels.cluster }}}}/rollback?to={{{{ release.previous.deployment_id }}}}&note={{{{ labels.note }}}}"
          headers: {{ X-Api-Key: "${{file:{}}}" }}
          json: {{ rollback: true }}
        idempotent: true
"#,
            intended.url(""),
            secret.display()
        ),
    );
    std::fs::write(setup.path().join("rules/rules.yaml"), rules).unwrap();
    let d = setup.start();
    let evil = attacker.url("").trim_start_matches("http://").to_string();
    let cluster = format!("a/../../b?x=1#@{evil}");
    release_pair_and_alert(
        &d,
        "svc-url",
        json!({"alertname": "UrlInject", "service": "svc-url", "cluster": cluster, "note": "x&admin=1#frag"}),
        "fp-url",
    );
    let inc = incident_of(&d, "svc-url", &["rolled_back", "rollback_failed"]);
    assert_eq!(inc["state"], "rolled_back", "{inc:#}");
    let got = intended.requests();
    assert_eq!(got.len(), 1, "{got:#?}");
    let encoded_evil = evil.replace(':', "%3A");
    assert_eq!(
        got[0].path,
        format!("/v1/clusters/a%2F..%2F..%2Fb%3Fx%3D1%23%40{encoded_evil}/rollback")
    );
    assert_eq!(got[0].query, "to=dpl-1&note=x%26admin%3D1%23frag");
    assert_eq!(got[0].header("x-api-key"), "k-0123456789abcdef");
    assert_eq!(
        got[0].header("host"),
        intended.url("").trim_start_matches("http://")
    );
    // The plan the incident recorded is the encoded URL, the secret still a reference.
    let argv = &inc["steps"][0]["argv"];
    assert!(
        argv[1]
            .as_str()
            .unwrap_or("")
            .starts_with(&intended.url("/v1/clusters/a%2F")),
        "{argv}"
    );

    // A value that would be a `..` segment is refused: nothing is sent.
    release_pair_and_alert(
        &d,
        "svc-dots",
        json!({"alertname": "UrlInject", "service": "svc-dots", "cluster": "..", "note": "n"}),
        "fp-dots",
    );
    let inc = incident_of(&d, "svc-dots", &["rolled_back", "rollback_failed"]);
    assert_eq!(inc["state"], "rollback_failed", "{inc:#}");
    let error = inc["steps"][0]["error"].as_str().unwrap_or("");
    assert!(error.contains("climbs out"), "{error}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(intended.requests().len(), 1, "{:#?}", intended.requests());
    assert!(attacker.requests().is_empty(), "{:#?}", attacker.requests());
}

fn lint(dir: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("lint")
        .arg(dir)
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .expect("run rollbackd lint");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const HTTP_RULE_HEAD: &str = r#"rules:
  - name: url-lint
    match: ['alertname="X"']
    service: web
    breach: { sustained: 1m }
    approval: none
    steps:
"#;

#[test]
fn a_template_before_the_path_of_an_http_url_is_a_lint_error() {
    let setup = Setup::new("", "rules: []\n");
    let file = setup.path().join("rules/rules.yaml");
    // Line 8 on: one step per place a template may not stand, and one bad redirect policy.
    let steps = r#"      - name: host
        http: { url: "http://{{ labels.cluster }}.invalid/x" }
      - name: userinfo
        http: { url: "https://{{ labels.user }}@api.example.com/x" }
      - name: port
        http: { url: "https://api.example.com:{{ labels.port }}/x" }
      - name: scheme
        http: { url: "{{ labels.scheme }}://api.example.com/x" }
      - name: fragment
        http: { url: "https://api.example.com/x#{{ labels.f }}" }
      - name: redirects
        http: { url: "https://api.example.com/x", follow_redirects: always }
      - name: path and query are fine
        http: { url: "https://api.example.com/{{ labels.cluster }}/x?to={{ release.previous.deployment_id }}" }
"#;
    std::fs::write(&file, format!("{HTTP_RULE_HEAD}{steps}")).unwrap();
    let (code, out) = lint(&setup.path().join("rules"));
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |line: u32| {
        let prefix = format!("{}:{line}:", file.display());
        lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no problem on line {line}: {out}"))
            .to_string()
    };
    for line in [9, 11, 13, 15] {
        let p = at(line);
        assert!(
            p.contains("may stand only after the host") && !p.contains("warning"),
            "{p}"
        );
    }
    assert!(at(13).contains("host or port"), "{}", at(13));
    assert!(at(17).contains("fragment"), "{}", at(17));
    let p = at(19);
    assert!(
        p.contains("follow_redirects") && p.contains("none, same_origin"),
        "{p}"
    );
    assert_eq!(lines.len(), 6, "only those six: {out}");

    // The same rule with only the good step lints clean.
    let good = steps.split("      - name: path and query").nth(1).unwrap();
    std::fs::write(
        &file,
        format!("{HTTP_RULE_HEAD}      - name: path and query{good}"),
    )
    .unwrap();
    let (code, out) = lint(&setup.path().join("rules"));
    assert_eq!((code, out.as_str()), (0, ""), "{out}");
}

#[test]
fn a_secret_in_argv_is_a_lint_warning_and_the_shipped_rules_have_none() {
    let setup = Setup::new("", "rules: []\n");
    let file = setup.path().join("rules/rules.yaml");
    let steps = r#"      - name: token on the command line
        run: [deploy-tool, rollback, --token, "${env:DEPLOY_TOKEN}"]
      - name: token through the environment
        run: [deploy-tool, rollback]
        env: { DEPLOY_TOKEN: "${env:DEPLOY_TOKEN}" }
"#;
    std::fs::write(&file, format!("{HTTP_RULE_HEAD}{steps}")).unwrap();
    let (code, out) = lint(&setup.path().join("rules"));
    assert_eq!(code, 0, "a warning does not fail the lint: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let prefix = format!("{}:9:", file.display());
    assert!(lines[0].starts_with(&prefix), "{out}");
    assert!(
        lines[0].contains("warning: ")
            && lines[0].contains("${env:DEPLOY_TOKEN}")
            && lines[0].contains("command line")
            && lines[0].contains("env:"),
        "{out}"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.join("rules"), root.join("rules/presets")] {
        let (code, out) = lint(&dir);
        assert_eq!(code, 0, "{}: {out}", dir.display());
        assert!(!out.contains("command line"), "{}: {out}", dir.display());
    }
}
