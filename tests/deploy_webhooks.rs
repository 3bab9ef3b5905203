//! Releases from the tools that deploy, black-box: the real binary on loopback receives each
//! tool's published example payload, signed (or tokened) as the tool does, and the ledger
//! (`GET /v1/releases/{service}`) holds what it should, with its revision; forgeries and
//! redeliveries change nothing.

mod common;

use common::*;
use serde_json::{Value, json};

const INGEST: &str = "ingest-token-0123456789abcdef";
const RELEASES: &str = "releases-token-0123456789abcdef";
const GITHUB_SECRET: &str = "github-secret-0123456789";
const GITLAB_TOKEN: &str = "gitlab-token-0123456789";
const FLUX_SECRET: &str = "flux-secret-0123456789";

fn testdata(name: &str) -> String {
    repo_file(&format!("src/ingest/testdata/{name}"))
}

fn ledger(d: &Daemon, service: &str) -> Vec<Value> {
    let (s, v) = get(&d.url(&format!("/v1/releases/{service}")), None);
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

fn all_ledgers(d: &Daemon) -> Vec<Vec<Value>> {
    [
        "hello",
        "test-deployment-webhooks",
        "webapp",
        "podinfo",
        "guestbook-ui",
        "guestbook",
    ]
    .iter()
    .map(|s| ledger(d, s))
    .collect()
}

fn setup() -> Setup {
    let config = format!(
        "tokens: {{ingest: \"{INGEST}\", releases: \"{RELEASES}\"}}\n\
         github: {{webhook_secret: \"{GITHUB_SECRET}\", services: {{\"Codertocat/Hello-World\": hello}}}}\n\
         gitlab: {{webhook_token: \"{GITLAB_TOKEN}\"}}\n\
         flux: {{webhook_secret: \"{FLUX_SECRET}\"}}\n"
    );
    Setup::new(&config, WEB_ERRORS_RULE)
}

fn github(d: &Daemon, event: &str, delivery: &str, body: &str) -> (u16, Value) {
    let sig = sha256_signature(GITHUB_SECRET, body);
    post_with(
        d,
        "/v1/webhooks/github",
        &[
            ("x-github-event", event),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &sig),
        ],
        body,
    )
}

fn flux(d: &Daemon, body: &str) -> (u16, Value) {
    let sig = sha256_signature(FLUX_SECRET, body);
    post_with(d, "/v1/webhooks/flux", &[("x-signature", &sig)], body)
}

fn gitlab(d: &Daemon, body: &str) -> (u16, Value) {
    post_with(
        d,
        "/v1/webhooks/gitlab",
        &[
            ("x-gitlab-event", "Deployment Hook"),
            ("x-gitlab-token", GITLAB_TOKEN),
        ],
        body,
    )
}

fn argocd(d: &Daemon, token: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    post_with(d, "/v1/webhooks/argocd", &[("authorization", &auth)], body)
}

#[test]
fn each_published_example_records_a_release_with_its_revision() {
    let s = setup();
    let d = s.start();
    let (st, v) = github(
        &d,
        "deployment_status",
        "d-1",
        &testdata("github-deployment_status.json"),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["frozen"], false);
    let (st, v) = gitlab(&d, &testdata("gitlab-deployment.json"));
    assert_eq!(st, 201, "{v}");
    let (st, v) = flux(&d, &testdata("flux-kustomization-succeeded.json"));
    assert_eq!(st, 201, "{v}");
    let (st, v) = flux(&d, &testdata("flux-helmrelease-upgraded.json"));
    assert_eq!(st, 201, "{v}");
    let (st, v) = argocd(&d, RELEASES, &testdata("argocd-app-deployed.json"));
    assert_eq!(st, 201, "{v}");

    let one = |service: &str| {
        let l = ledger(&d, service);
        assert_eq!(l.len(), 1, "{service}: {l:?}");
        l[0].clone()
    };
    let gh = one("hello");
    assert_eq!(gh["origin"], "github");
    assert_eq!(gh["deployment_id"], "145988746");
    assert_eq!(gh["version"], "master");
    assert_eq!(gh["revision"], "f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
    let gl = one("test-deployment-webhooks");
    assert_eq!(gl["origin"], "gitlab");
    assert_eq!(gl["environment"], "staging");
    assert_eq!(gl["revision"], "279484c09fbe69ededfced8c1bb6e6d24616b468");
    assert_eq!(gl["deployed_at"], "2021-04-28T19:50:00Z");
    let fx = one("webapp");
    assert_eq!(fx["origin"], "flux");
    assert_eq!(fx["revision"], "731f7eaddfb6af01cb2173e18f0f75b0ba780ef1");
    assert_eq!(
        fx["deployment_id"],
        "Kustomization/apps/webapp@main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1"
    );
    let hr = one("podinfo");
    assert_eq!(hr["version"], "6.2.1");
    assert!(
        hr.get("revision").is_none(),
        "a chart version is no commit: {hr}"
    );
    let ar = one("guestbook-ui");
    assert_eq!(ar["origin"], "argocd");
    assert_eq!(ar["deployment_id"], "12");
    assert_eq!(ar["revision"], "53e28ff20cc530b9ada2173fbbd64d48338583ba");
}

/// (path, headers, body, status, what the error says).
type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);

#[test]
fn forged_or_missing_credentials_are_refused_and_change_nothing() {
    let s = setup();
    let d = s.start();
    let before = all_ledgers(&d);
    let gh = testdata("github-deployment_status.json");
    let forged = sha256_signature("not-the-secret", &gh);
    let fx = testdata("flux-kustomization-succeeded.json");
    let fx_forged = sha256_signature("not-the-secret", &fx);
    let gl = testdata("gitlab-deployment.json");
    let ev = ("x-github-event", "deployment_status");
    let cases: Vec<Refusal> = vec![
        (
            "/v1/webhooks/github",
            vec![ev, ("x-hub-signature-256", &forged)],
            &gh,
            401,
            "does not match",
        ),
        (
            "/v1/webhooks/github",
            vec![ev],
            &gh,
            400,
            "missing X-Hub-Signature-256",
        ),
        (
            "/v1/webhooks/github",
            vec![ev, ("x-hub-signature-256", "deadbeef")],
            &gh,
            400,
            "sha256=",
        ),
        (
            "/v1/webhooks/flux",
            vec![("x-signature", &fx_forged)],
            &fx,
            401,
            "does not match",
        ),
        ("/v1/webhooks/flux", vec![], &fx, 400, "missing X-Signature"),
        (
            "/v1/webhooks/gitlab",
            vec![("x-gitlab-token", "wrong")],
            &gl,
            401,
            "not gitlab.webhook_token",
        ),
        (
            "/v1/webhooks/gitlab",
            vec![],
            &gl,
            401,
            "missing X-Gitlab-Token",
        ),
    ];
    for (path, headers, body, status, says) in &cases {
        let (st, v) = post_with(&d, path, headers, body);
        assert_eq!(st, *status, "{path} {headers:?}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(says), "{path}: {e:?} lacks {says:?}");
    }
    let ar = testdata("argocd-app-deployed.json");
    let (st, v) = argocd(&d, INGEST, &ar);
    assert_eq!(
        st, 401,
        "tokens.releases is set: the ingest token is refused: {v}"
    );
    let (st, v) = post_with(&d, "/v1/webhooks/argocd", &[], &ar);
    assert_eq!(st, 401, "{v}");
    assert_eq!(all_ledgers(&d), before, "nothing changed");
    let refused = d
        .metric("rollbackd_ingest_rejected_total{reason=\"auth\",source=\"github\"}")
        .unwrap_or(0.0);
    assert_eq!(refused, 3.0);
}

#[test]
fn a_redelivery_is_one_ledger_entry_answered_as_a_duplicate() {
    let s = setup();
    let d = s.start();
    let gh = testdata("github-deployment_status.json");
    let (st, v) = github(&d, "deployment_status", "delivery-1", &gh);
    assert_eq!(st, 201, "{v}");
    // GitHub's "Redeliver" sends the same body under a new X-GitHub-Delivery.
    let (st, v) = github(&d, "deployment_status", "delivery-2", &gh);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["duplicate"], true);
    assert_eq!(ledger(&d, "hello").len(), 1);

    let fx = testdata("flux-kustomization-succeeded.json");
    assert_eq!(flux(&d, &fx).0, 201);
    // Flux reports the same revision again at the next reconciliation.
    let again = fx.replace("07:30:02Z", "07:40:02Z");
    let (st, v) = flux(&d, &again);
    assert_eq!((st, &v["duplicate"]), (200, &json!(true)), "{v}");
    assert_eq!(ledger(&d, "webapp").len(), 1);

    let gl = testdata("gitlab-deployment.json");
    assert_eq!(gitlab(&d, &gl).0, 201);
    assert_eq!(gitlab(&d, &gl).0, 200);
    let ar = testdata("argocd-app-deployed.json");
    assert_eq!(argocd(&d, RELEASES, &ar).0, 201);
    assert_eq!(argocd(&d, RELEASES, &ar).0, 200);
    assert_eq!(ledger(&d, "test-deployment-webhooks").len(), 1);
    assert_eq!(ledger(&d, "guestbook-ui").len(), 1);
}

#[test]
fn other_events_and_states_are_ignored_with_a_reason() {
    let s = setup();
    let d = s.start();
    let before = all_ledgers(&d);
    let ping = r#"{"zen":"Avoid administrative distraction.","hook_id":90753227}"#;
    let (st, v) = github(&d, "ping", "p-1", ping);
    assert_eq!(st, 202, "{v}");
    assert!(
        v["ignored"].as_str().unwrap_or_default().contains("ping"),
        "{v}"
    );
    let gh = testdata("github-deployment_status.json")
        .replace("\"state\": \"success\"", "\"state\": \"in_progress\"");
    let (st, v) = github(&d, "deployment_status", "p-2", &gh);
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        v["ignored"],
        "deployment_status state is in_progress, only success records a release"
    );
    let (st, v) = flux(&d, &testdata("flux-event-validation-failed.json"));
    assert_eq!(st, 202, "{v}");
    assert!(
        v["ignored"]
            .as_str()
            .unwrap_or_default()
            .contains("ValidationFailed")
    );
    let gl = testdata("gitlab-deployment.json")
        .replace("\"status\": \"success\"", "\"status\": \"failed\"");
    let (st, v) = gitlab(&d, &gl);
    assert_eq!(st, 202, "{v}");
    assert!(v["ignored"].as_str().unwrap_or_default().contains("failed"));
    let ar = testdata("argocd-app-deployed.json").replace("\"Healthy\"", "\"Degraded\"");
    let (st, v) = argocd(&d, RELEASES, &ar);
    assert_eq!(st, 202, "{v}");
    assert!(
        v["ignored"]
            .as_str()
            .unwrap_or_default()
            .contains("Degraded")
    );
    assert_eq!(all_ledgers(&d), before, "nothing recorded");
}

#[test]
fn an_endpoint_without_its_secret_says_which_key_enables_it() {
    let s = Setup::new("", WEB_ERRORS_RULE);
    let d = s.start();
    for (path, key) in [
        ("/v1/webhooks/github", "github.webhook_secret"),
        ("/v1/webhooks/gitlab", "gitlab.webhook_token"),
        ("/v1/webhooks/flux", "flux.webhook_secret"),
    ] {
        let (st, v) = post_with(&d, path, &[], "{}");
        assert_eq!(st, 404, "{path}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(key), "{v}");
    }
    // Argo CD takes the bearer token of /v1/releases: with none configured, it is open.
    let (st, v) = post_with(
        &d,
        "/v1/webhooks/argocd",
        &[],
        &testdata("argocd-app-deployed.json"),
    );
    assert_eq!(st, 201, "{v}");
}

/// A deployment status as GitHub sends it, for `acme/web`.
fn github_status(id: u64, sha: &str, age_secs: f64) -> String {
    json!({"action": "created",
           "deployment_status": {"state": "success", "created_at": ts(-age_secs)},
           "deployment": {"id": id, "sha": sha, "ref": format!("v{id}"), "environment": "production",
                          "payload": {}},
           "repository": {"name": "web-repo", "full_name": "acme/web"}})
    .to_string()
}

/// Releases a deploy tool reported are in the input log as the releases themselves: a replay of
/// the log, with a config that no longer maps the repository to its service, rolls back to the
/// same previous deployment at the same revision.
#[test]
fn a_logged_deploy_tool_release_replays_without_the_service_map() {
    let rules = r#"rules:
  - name: web-errors
    match: ['alertname="WebErrors"']
    group_by: [service]
    service: "{{ labels.service }}"
    breach: { sustained: 10s }
    release: { max_age: 2h }
    approval: none
    steps:
      - name: roll back
        run: [echo, rollback, "{{ release.previous.deployment_id }}", "{{ release.previous.revision }}"]
"#;
    let config = format!(
        "record_inputs: true\ngithub: {{webhook_secret: \"{GITHUB_SECRET}\", services: {{\"acme/web\": web}}}}\n"
    );
    let s = Setup::new(&config, rules);
    let d = s.start();
    let old = "1111111111111111111111111111111111111111";
    let new = "2222222222222222222222222222222222222222";
    assert_eq!(
        github(
            &d,
            "deployment_status",
            "a",
            &github_status(101, old, 3600.0)
        )
        .0,
        201
    );
    assert_eq!(
        github(
            &d,
            "deployment_status",
            "b",
            &github_status(102, new, 600.0)
        )
        .0,
        201
    );
    let alert = am_alert(
        "firing",
        json!({"alertname": "WebErrors", "service": "web"}),
        &ts(-20.0),
        "fp-web",
    );
    assert_eq!(
        post(&d.url("/v1/webhooks/alertmanager"), None, &alert).0,
        200
    );
    let done = wait_for(std::time::Duration::from_secs(15), || {
        let (_, v) = get(&d.url("/v1/incidents"), None);
        v["items"]
            .as_array()?
            .iter()
            .find(|i| i["state"] == "rolled_back")
            .cloned()
    })
    .unwrap_or_else(|| panic!("never rolled back; stderr:\n{}", d.stderr()));
    let log = std::fs::read_to_string(s.path().join("data/inputs.jsonl")).expect("the log");
    let deploy: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["source"] == "deploy")
        .collect();
    assert_eq!(deploy.len(), 2, "{log}");
    assert_eq!(deploy[0]["body"]["service"], "web");
    assert_eq!(deploy[0]["body"]["origin"], "github");
    drop(d);

    // The replay reads the config without the map: the log alone says the service.
    let bare = s.path().join("bare.yaml");
    std::fs::write(&bare, "").expect("write");
    let out = std::process::Command::new(BIN)
        .args(["replay", "--format", "json", "--rules"])
        .arg(s.path().join("rules"))
        .arg("--config")
        .arg(&bare)
        .arg("--events")
        .arg(s.path().join("data/inputs.jsonl"))
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .expect("replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decisions: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let triggered = decisions
        .iter()
        .find(|d| d["kind"] == "triggered")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(triggered["incident"], done["id"]);
    assert_eq!(triggered["service"], "web");
    let ran = decisions
        .iter()
        .find(|d| d["kind"] == "would_run")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(ran["argv"], json!(["echo", "rollback", "101", old]));
    assert_eq!(
        ran["argv"], done["steps"][0]["argv"],
        "the same step as the live run"
    );
}

/// Each tool has its own quota, spent only once its credentials hold.
#[test]
fn each_tool_has_its_own_quota_spent_after_the_credentials() {
    let config = format!(
        "limits: {{ingest_per_second: 1, ingest_burst: 1}}\n\
         github: {{webhook_secret: \"{GITHUB_SECRET}\"}}\n\
         flux: {{webhook_secret: \"{FLUX_SECRET}\"}}\n"
    );
    let s = Setup::new(&config, WEB_ERRORS_RULE);
    let d = s.start();
    let body = testdata("github-deployment_status.json");
    let forged = sha256_signature("not-the-secret", &body);
    let headers = [
        ("x-github-event", "deployment_status"),
        ("x-hub-signature-256", forged.as_str()),
    ];
    for _ in 0..3 {
        assert_eq!(post_with(&d, "/v1/webhooks/github", &headers, &body).0, 401);
    }
    assert_eq!(github(&d, "deployment_status", "q-1", &body).0, 201);
    let (st, v) = github(&d, "deployment_status", "q-2", &body);
    assert_eq!(st, 429, "{v}");
    // Flux's quota is its own.
    assert_eq!(
        flux(&d, &testdata("flux-kustomization-succeeded.json")).0,
        201
    );
    let limited = d
        .metric("rollbackd_ingest_rejected_total{reason=\"rate_limited\",source=\"github\"}")
        .unwrap_or(0.0);
    assert_eq!(limited, 1.0);
}
