//! http steps and redirects, against two real loopback servers: by default a 3xx is the answer and
//! nothing is sent to where it points; `follow_redirects: same_origin` follows redirects on the same
//! scheme, host and port and refuses any other, so a step's secret header never leaves its origin.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::{Value, json};

const SECRET: &str = "k-redirect-secret-0123456789";

/// A daemon with one rule whose single http step GETs `url` with a secret `X-Api-Key` header
/// (`extra`: more keys of the http step); runs it for a breach of `svc` and returns the
/// incident once the rollback has ended.
fn run_step(url: &str, extra: &str) -> Value {
    let setup = Setup::new("", "rules: []\n");
    let secret = setup.path().join("api-key");
    std::fs::write(&secret, SECRET).unwrap();
    let rules = format!(
        r#"rules:
  - name: redirected
    match: ['alertname="Redirected"']
    service: svc
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: none
    steps:
      - name: call the deploy API
        http: {{ method: GET, url: "{url}", headers: {{ X-Api-Key: "${{file:{}}}" }}{extra} }}
        idempotent: true
"#,
        secret.display()
    );
    std::fs::write(setup.path().join("rules/rules.yaml"), rules).unwrap();
    let d = setup.start();
    release_pair_and_alert(&d, "svc", json!({"alertname": "Redirected"}), "fp-r");
    wait_for(Duration::from_secs(10), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        let inc = v["items"].as_array()?.first()?.clone();
        matches!(
            inc["state"].as_str(),
            Some("rolled_back" | "rollback_failed")
        )
        .then_some(inc)
    })
    .unwrap_or_else(|| panic!("{:#}", get(&d.url("/v1/incidents"), None).1))
}

/// `api` answers `status` with a redirect to another loopback server; the step runs with
/// `extra` and must fail, with `api` asked once and the other server never. Returns the error.
fn redirect_elsewhere_fails(status: u16, extra: &str) -> (String, String) {
    let api = Receiver::generic();
    let elsewhere = Receiver::generic();
    api.redirect_next(status, &elsewhere.url("/landing"));
    let inc = run_step(&api.url("/v1/rollback"), extra);
    assert_eq!(inc["state"], "rollback_failed", "{inc:#}");
    assert_eq!(api.requests().len(), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        elsewhere.requests().is_empty(),
        "{:#?}",
        elsewhere.requests()
    );
    let error = inc["steps"][0]["error"].as_str().unwrap_or("").to_string();
    (error, elsewhere.url(""))
}

#[test]
fn a_redirect_is_not_followed_by_default() {
    let (error, elsewhere) = redirect_elsewhere_fails(302, "");
    assert!(
        error.contains("302") && error.contains(&elsewhere) && error.contains("not followed"),
        "{error}"
    );
}

#[test]
fn same_origin_follows_a_redirect_on_the_same_server() {
    let api = Receiver::generic();
    api.redirect_next(302, "/v1/rollback/moved");
    let inc = run_step(&api.url("/v1/rollback"), ", follow_redirects: same_origin");
    assert_eq!(inc["state"], "rolled_back", "{inc:#}");
    let got = api.requests();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[1].path, "/v1/rollback/moved");
    assert_eq!(got[1].header("x-api-key"), SECRET);
    assert_eq!(
        inc["steps"][0]["follow_redirects"], "same_origin",
        "{inc:#}"
    );
}

#[test]
fn same_origin_refuses_a_redirect_to_another_port() {
    let (error, elsewhere) = redirect_elsewhere_fails(307, ", follow_redirects: same_origin");
    assert!(
        error.contains(&format!("redirect to {elsewhere} was refused")),
        "{error}"
    );
}
