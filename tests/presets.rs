//! The step presets under `rules/presets/`: every file lints clean and stays in shadow mode, each
//! HTTP preset sends exactly the request its vendor documents (checked against a fake vendor
//! server on loopback that answers the way the vendor documents, errors included), and each CLI
//! preset renders to the documented argv. No vendor API is ever called. The GitOps presets run
//! their `run` steps as real child processes against fakes: `rollbackd github-revert` (the binary
//! cargo built) against a fake GitHub, and the real `kubectl` against a fake Kubernetes API server
//! over TLS (a certificate made with `openssl`); a test whose program is not installed says so and
//! passes without running.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rollbackd::engine::StepResult;
use rollbackd::rules::{self, Action, Body, Context, Mode, Rule, Severity, StepSpec, template};
use rollbackd::steps::{self, HttpStep};
use serde_json::{Value, json};

/// The people of the example config, and someone who owns the database (the migration preset
/// asks for that role).
fn people() -> Context {
    Context::with_people(
        [
            ("ada", &["founder"][..]),
            ("cy", &["client-success-lead"][..]),
            ("dee", &["database-owner"][..]),
        ],
        [],
    )
}

const PRESETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/presets");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");

// Fake credentials, set once for the whole test process (see `set_env`).
const LD_TOKEN: &str = "api-00000000-preset-test-token";
const CF_TOKEN: &str = "cf-preset-test-token-0000";
const CF_ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const UPSTASH_TOKEN: &str = "AX-preset-test-token-0000";
const ARGOCD_TOKEN: &str = "argocd-preset-test-token-0000";
const GITHUB_TOKEN: &str = "github_pat_preset_test_token_0000";

static ENV: Once = Once::new();

/// Puts the presets' `${env:NAME}` secrets into this process's environment. Every test calls it
/// before doing anything else.
fn set_env() {
    ENV.call_once(|| {
        for (name, value) in [
            ("LD_API_TOKEN", LD_TOKEN),
            ("CLOUDFLARE_API_TOKEN", CF_TOKEN),
            ("CLOUDFLARE_ZONE_ID", CF_ZONE),
            ("UPSTASH_REDIS_REST_TOKEN", UPSTASH_TOKEN),
            ("ARGOCD_TOKEN", ARGOCD_TOKEN),
            ("GITHUB_TOKEN", GITHUB_TOKEN),
        ] {
            // SAFETY: `set_var` is unsound only while another thread reads or writes the
            // environment. Every test in this binary calls `set_env` first, and `Once` runs this
            // closure on one thread while all other callers block until it returns, so no other
            // thread of this process touches the environment meanwhile; afterwards it is only read.
            unsafe { std::env::set_var(name, value) };
        }
    });
}

// ---- presets ----

fn preset_text(file: &str) -> String {
    std::fs::read_to_string(Path::new(PRESETS).join(file))
        .unwrap_or_else(|e| panic!("cannot read preset {file}: {e}"))
}

/// Loads one preset through `rules::load_str`, after replacing each `from` (which must occur) by
/// `to`: how the tests point a vendor base URL at a fake server.
fn load_preset(file: &str, replace: &[(&str, &str)]) -> Rule {
    let mut text = preset_text(file);
    for (from, to) in replace {
        assert!(text.contains(from), "{file} does not contain {from}");
        text = text.replace(from, to);
    }
    let (set, problems) = rules::load_str(file, &text, &people());
    let set = set.unwrap_or_else(|| panic!("{file} does not load: {problems:#?}"));
    assert!(
        problems.iter().all(|p| p.severity == Severity::Warning),
        "{problems:#?}"
    );
    assert_eq!(set.rules.len(), 1, "{file} holds one rule");
    let rule = set.rules.into_iter().next().expect("one rule");
    assert_eq!(rule.mode, Mode::Shadow, "{file} must ship in shadow mode");
    rule
}

/// The template variables the engine builds for a step (see `engine::plan_steps`), for an alert
/// `{service="web", environment="production", namespace="web-prod"}` and a release pair; `extra`
/// overrides or adds names.
fn vars(rule: &Rule, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut v: BTreeMap<String, String> = [
        ("labels.service", "web"),
        ("labels.environment", "production"),
        ("labels.namespace", "web-prod"),
        ("service", "web"),
        ("environment", "production"),
        ("incident.id", "inc-000042"),
        ("release.previous.deployment_id", "dpl_8fT3kq2Lm"),
        ("release.previous.version", "v1.4.0"),
        ("release.current.deployment_id", "dpl_9Zx1aBcDe"),
        ("release.current.version", "v1.5.0"),
        ("release.previous.revision", PREVIOUS_SHA),
        ("release.current.revision", CURRENT_SHA),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    v.insert("rule".into(), rule.name.clone());
    for (k, val) in extra {
        v.insert(k.to_string(), val.to_string());
    }
    v
}

/// The git commits of the release pair: the good one and the bad one.
const PREVIOUS_SHA: &str = "3f2a1c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39";
const CURRENT_SHA: &str = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b";

fn step<'a>(rule: &'a Rule, name: &str) -> &'a StepSpec {
    rule.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{} has no step {name:?}", rule.name))
}

fn unfreeze_step<'a>(rule: &'a Rule, name: &str) -> &'a StepSpec {
    rule.on_unfreeze
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{} has no on_unfreeze step {name:?}", rule.name))
}

/// The argv of a `run` step, rendered as the engine renders it (one element at a time).
fn render_argv(step: &StepSpec, vars: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    match &step.action {
        Action::Run { argv, .. } => argv.iter().map(|t| t.render(vars)).collect(),
        Action::Http { .. } => panic!("step {:?} is not a run step", step.name),
    }
}

/// The `env` of a `run` step, secret references unexpanded.
fn run_env(step: &StepSpec) -> &BTreeMap<String, String> {
    match &step.action {
        Action::Run { env, .. } => env,
        Action::Http { .. } => panic!("step {:?} is not a run step", step.name),
    }
}

/// Renders a `run` step like the engine and runs it with the daemon's step runner: a real child
/// process, its `env` expanded, `extra` added to its environment (a fake server's address,
/// a kubeconfig).
async fn run_run_step(
    step: &StepSpec,
    vars: &BTreeMap<String, String>,
    extra: &[(&str, &str)],
) -> StepResult {
    let argv = render_argv(step, vars).expect("argv renders");
    let mut env = run_env(step).clone();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    steps::run_command(&argv, &env, None, step.timeout, 16 * 1024).await
}

/// Whether every program a test runs is installed; when one is not, the test says so and skips
/// (on a developer's machine). Under CI (`CI` set) a missing program fails the test instead:
/// `scripts/test.sh` installs them, so a skip there would hide a test that never ran.
fn installed(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} not installed (scripts/test.sh installs them)",
            missing.join(", ")
        );
        eprintln!("skipped: {} not installed", missing.join(", "));
    }
    missing.is_empty()
}

/// The presets run `rollbackd` from PATH; the tests run the binary cargo built.
const ROLLBACKD_PROGRAM: (&str, &str) = (
    "run: [rollbackd,",
    concat!("run: [", env!("CARGO_BIN_EXE_rollbackd"), ","),
);

/// RFC 7386 JSON merge patch, as Argo CD's `patchType: merge` and Kubernetes'
/// `application/merge-patch+json` apply it.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Renders an `http` step's URL like the engine and performs it with the daemon's step runner.
async fn run_http_step(step: &StepSpec, vars: &BTreeMap<String, String>) -> StepResult {
    let Action::Http {
        method,
        url,
        headers,
        body,
        expect_status,
        follow_redirects,
    } = &step.action
    else {
        panic!("step {:?} is not an http step", step.name)
    };
    let url = url.render(vars).expect("url renders");
    // A JSON body's templates, as the engine renders them when the incident opens.
    let body = &match body {
        Body::Json(v) => Body::Json(template::render_json(v, vars).expect("body renders")),
        other => other.clone(),
    };
    steps::run_http(
        &steps::http_client(),
        HttpStep {
            method,
            url: &url,
            headers,
            body,
            expect_status,
            follow_redirects: *follow_redirects,
        },
        step.timeout,
        4096,
    )
    .await
}

// ---- a fake vendor: records every request, answers with a vendor-specific handler ----

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    /// Header names lowercased, in arrival order, repeated names kept.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header (None when absent or repeated).
    fn header(&self, name: &str) -> Option<&str> {
        match self.all(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Clone)]
struct FakeState {
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
}

struct Fake {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
        let (app, seen) = Fake::router(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake vendor");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake vendor serves");
        });
        Fake {
            base: format!("http://{addr}"),
            seen,
        }
    }

    /// The same over HTTPS with the certificate and key of `tls` (PEM files): for clients that
    /// send credentials only over TLS, as kubectl does (kubernetes/kubectl#744).
    async fn start_tls(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: &TestCert,
    ) -> Fake {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
        let (app, seen) = Fake::router(handler);
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&tls.cert)
            .expect("read certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&tls.key).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake vendor");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Fake {
            base: format!("https://{addr}"),
            seen,
        }
    }

    fn router(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> (Router, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            seen: seen.clone(),
            handler: Arc::new(handler),
        };
        (Router::new().fallback(record).with_state(state), seen)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn only_request(&self) -> Seen {
        let all = self.requests();
        assert_eq!(all.len(), 1, "exactly one request expected: {all:#?}");
        all.into_iter().next().expect("one request")
    }
}

async fn record(
    State(state): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    let reply = (state.handler)(&seen);
    state.seen.lock().expect("lock").push(seen);
    let mut resp = (
        StatusCode::from_u16(reply.status).expect("status"),
        [("content-type", "application/json")],
        reply.body.to_string(),
    )
        .into_response();
    for (k, v) in reply.headers {
        resp.headers_mut()
            .insert(k, v.parse().expect("header value"));
    }
    resp
}

// ---- LaunchDarkly ----

const LD_FLAG_PATH: &str = "/api/v2/flags/portal/new-share-links";

/// LaunchDarkly's update-feature-flag endpoint as documented: the raw access token in
/// `Authorization`, a semantic patch only with `domain-model=launchdarkly.semanticpatch` (else the
/// body is read as a JSON patch: 400), errors as `{"code", "message", "id"}`.
fn fake_launchdarkly(token: &'static str, rate_limited: bool) -> impl Fn(&Seen) -> Reply {
    move |r: &Seen| {
        let error = |status: u16, code: &str, message: &str| {
            Reply::json(
                status,
                json!({"code": code, "message": message, "id": "30ce6058-87da-11e4-b116-123b93f75cba"}),
            )
        };
        if rate_limited {
            return error(429, "rate_limited", "Too many requests")
                .with_header("x-ratelimit-reset", "1718000000000");
        }
        if r.header("authorization") != Some(token) {
            return error(401, "unauthorized", "Invalid access token");
        }
        if r.path != LD_FLAG_PATH {
            return error(404, "not_found", "Invalid resource identifier");
        }
        if r.method != "PATCH" {
            return error(405, "method_not_allowed", "Method not allowed");
        }
        let semantic = r
            .header("content-type")
            .is_some_and(|c| c.contains("domain-model=launchdarkly.semanticpatch"));
        let Some(body) = r.json() else {
            return error(400, "invalid_request", "Invalid JSON");
        };
        if !semantic {
            return error(400, "invalid_request", "Invalid JSON patch");
        }
        let off = body["instructions"]
            .as_array()
            .is_some_and(|i| i.iter().any(|x| x["kind"] == "turnFlagOff"));
        let Some(env) = body["environmentKey"].as_str() else {
            return error(400, "invalid_request", "environmentKey is required");
        };
        Reply::json(
            200,
            json!({
                "key": "new-share-links",
                "environments": { env: { "on": !off } },
            }),
        )
    }
}

fn launchdarkly_preset(fake: &Fake) -> Rule {
    load_preset(
        "launchdarkly.yaml",
        &[("https://app.launchdarkly.com", &fake.base)],
    )
}

#[tokio::test]
async fn launchdarkly_turns_the_flag_off_with_a_semantic_patch() {
    set_env();
    let fake = Fake::start(fake_launchdarkly(LD_TOKEN, false)).await;
    let rule = launchdarkly_preset(&fake);
    let step = step(&rule, "turn off new-share-links flag");
    assert!(step.idempotent, "semantic patches are idempotent");

    let r = run_http_step(step, &vars(&rule, &[])).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(200));
    assert!(r.output.contains(r#""on":false"#), "{}", r.output);

    let req = fake.only_request();
    assert_eq!(req.method, "PATCH");
    assert_eq!(req.path, LD_FLAG_PATH);
    assert_eq!(req.query, None);
    // The raw access token: LaunchDarkly's API takes no "Bearer" prefix.
    assert_eq!(req.header("authorization"), Some(LD_TOKEN));
    assert_eq!(
        req.header("content-type"),
        Some("application/json; domain-model=launchdarkly.semanticpatch"),
        "one Content-Type, with the semantic-patch domain model: {:?}",
        req.all("content-type")
    );
    assert_eq!(
        req.json(),
        Some(json!({
            "environmentKey": "production",
            "comment": "rollbackd: turning the flag off while the release is rolled back",
            "instructions": [{"kind": "turnFlagOff"}],
        }))
    );
}

#[tokio::test]
async fn launchdarkly_refusals_fail_the_step() {
    set_env();
    // A token LaunchDarkly does not accept: 401 "Invalid access token".
    let fake = Fake::start(fake_launchdarkly("api-some-other-token", false)).await;
    let rule = launchdarkly_preset(&fake);
    let r = run_http_step(
        step(&rule, "turn off new-share-links flag"),
        &vars(&rule, &[]),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(401));
    assert_eq!(r.error.as_deref(), Some("unexpected HTTP status 401"));
    assert!(r.output.contains("Invalid access token"), "{}", r.output);
    assert!(
        !r.output.contains(LD_TOKEN) && !r.error.unwrap_or_default().contains(LD_TOKEN),
        "the token never appears in the record"
    );

    // Rate limited: 429.
    let fake = Fake::start(fake_launchdarkly(LD_TOKEN, true)).await;
    let rule = launchdarkly_preset(&fake);
    let r = run_http_step(
        step(&rule, "turn off new-share-links flag"),
        &vars(&rule, &[]),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(429));
}

// ---- Cloudflare ----

fn cloudflare_purge_path() -> String {
    format!("/client/v4/zones/{CF_ZONE}/purge_cache")
}

/// Cloudflare's purge-cache endpoint as documented: `Authorization: Bearer <token>`, a JSON body,
/// the `{success, errors, messages, result}` envelope, and 429 with `retry-after` over the API
/// rate limit.
fn fake_cloudflare(token: &'static str, rate_limited: bool) -> impl Fn(&Seen) -> Reply {
    move |r: &Seen| {
        let error = |status: u16, code: u32, message: &str| {
            Reply::json(
                status,
                json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
            )
        };
        if rate_limited {
            return error(
                429,
                971,
                "Please wait and consider throttling your request speed",
            )
            .with_header("retry-after", "300");
        }
        if r.header("authorization") != Some(&format!("Bearer {token}")) {
            return error(403, 10000, "Authentication error");
        }
        if r.method != "POST" || r.path != cloudflare_purge_path() {
            return error(404, 7003, "Could not route to the requested path");
        }
        if r.header("content-type") != Some("application/json") || r.json().is_none() {
            return error(400, 6003, "Invalid request headers");
        }
        Reply::json(
            200,
            json!({"success": true, "errors": [], "messages": [], "result": {"id": CF_ZONE}}),
        )
    }
}

fn cloudflare_preset(fake: &Fake) -> Rule {
    load_preset(
        "cloudflare.yaml",
        &[("https://api.cloudflare.com", &fake.base)],
    )
}

#[tokio::test]
async fn cloudflare_purges_everything_with_a_bearer_token() {
    set_env();
    let fake = Fake::start(fake_cloudflare(CF_TOKEN, false)).await;
    let rule = cloudflare_preset(&fake);
    let step = step(&rule, "purge cloudflare cache");
    assert!(step.idempotent);

    // The rendered URL (what an incident records) keeps the zone as a reference.
    let Action::Http { url, .. } = &step.action else {
        panic!("http step")
    };
    let rendered = url.render(&vars(&rule, &[])).expect("renders");
    assert!(
        rendered.ends_with("/client/v4/zones/${env:CLOUDFLARE_ZONE_ID}/purge_cache"),
        "{rendered}"
    );

    let r = run_http_step(step, &vars(&rule, &[])).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(200));

    let req = fake.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, cloudflare_purge_path());
    assert_eq!(req.query, None);
    assert_eq!(
        req.header("authorization").map(str::to_string),
        Some(format!("Bearer {CF_TOKEN}"))
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.json(), Some(json!({"purge_everything": true})));
}

#[tokio::test]
async fn cloudflare_refusals_fail_the_step() {
    set_env();
    // Over the API rate limit: 429 with retry-after.
    let fake = Fake::start(fake_cloudflare(CF_TOKEN, true)).await;
    let rule = cloudflare_preset(&fake);
    let r = run_http_step(step(&rule, "purge cloudflare cache"), &vars(&rule, &[])).await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(429));

    // A token without access to the zone.
    let fake = Fake::start(fake_cloudflare("another-token", false)).await;
    let rule = cloudflare_preset(&fake);
    let r = run_http_step(step(&rule, "purge cloudflare cache"), &vars(&rule, &[])).await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(403));
    assert!(r.output.contains(r#""success":false"#), "{}", r.output);
}

// ---- Upstash ----

/// Upstash Redis's REST API as documented: `Authorization: Bearer <token>`, a command as a JSON
/// array POSTed to the REST URL, `{"result": ...}` on success, `{"error": ...}` with 400/401/405.
fn fake_upstash(token: &'static str) -> impl Fn(&Seen) -> Reply {
    move |r: &Seen| {
        if r.header("authorization") != Some(&format!("Bearer {token}")) {
            return Reply::json(401, json!({"error": "Unauthorized"}));
        }
        if !matches!(r.method.as_str(), "HEAD" | "GET" | "POST" | "PUT") {
            return Reply::json(405, json!({"error": "Method not allowed"}));
        }
        match (r.path.as_str(), r.json()) {
            ("/", Some(Value::Array(cmd)))
                if cmd.len() == 1
                    && cmd[0].as_str().map(str::to_ascii_uppercase).as_deref()
                        == Some("FLUSHDB") =>
            {
                Reply::json(200, json!({"result": "OK"}))
            }
            _ => Reply::json(400, json!({"error": "ERR syntax error"})),
        }
    }
}

fn upstash_preset(fake: &Fake) -> Rule {
    load_preset(
        "upstash.yaml",
        &[("${env:UPSTASH_REDIS_REST_URL}", &fake.base)],
    )
}

#[tokio::test]
async fn upstash_flushes_the_cache_database() {
    set_env();
    let fake = Fake::start(fake_upstash(UPSTASH_TOKEN)).await;
    let rule = upstash_preset(&fake);
    let step = step(&rule, "flush upstash cache database");
    assert!(step.idempotent);

    let r = run_http_step(step, &vars(&rule, &[])).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(200));
    assert_eq!(r.output, r#"{"result":"OK"}"#);

    let req = fake.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/");
    assert_eq!(
        req.header("authorization").map(str::to_string),
        Some(format!("Bearer {UPSTASH_TOKEN}"))
    );
    assert_eq!(req.json(), Some(json!(["FLUSHDB"])));
}

#[tokio::test]
async fn upstash_bad_token_fails_the_step() {
    set_env();
    let fake = Fake::start(fake_upstash("some-other-token")).await;
    let rule = upstash_preset(&fake);
    let r = run_http_step(
        step(&rule, "flush upstash cache database"),
        &vars(&rule, &[]),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(401));
    assert_eq!(r.output, r#"{"error":"Unauthorized"}"#);
}

// ---- Argo CD ----

/// An Application that syncs automatically, with two history entries: 6 (the good revision) and
/// 7 (the bad one).
fn argocd_app() -> Arc<Mutex<Value>> {
    Arc::new(Mutex::new(json!({
        "metadata": {"name": "web", "namespace": "argocd"},
        "spec": {
            "source": {"repoURL": "https://github.com/acme/web-deploy", "targetRevision": "main"},
            "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
        },
        "status": {
            "sync": {"revision": CURRENT_SHA},
            "history": [
                {"id": 6, "revision": PREVIOUS_SHA},
                {"id": 7, "revision": CURRENT_SHA},
            ],
        },
    })))
}

/// Argo CD's application API as its grpc-gateway serves it
/// (https://argo-cd.readthedocs.io/en/stable/developer-guide/api-docs/; messages and routes of
/// `server/application/application.proto`, `assets/swagger.json` and the checks of
/// `server/application/application.go` in github.com/argoproj/argo-cd): a bearer token, request
/// bodies per ApplicationPatchRequest / ApplicationRollbackRequest / ApplicationSyncRequest (an
/// int64 as a JSON number or a decimal string, as protobuf's JSON mapping allows), the
/// Application on 200, and gRPC errors mapped to HTTP as `{"error", "code", "message"}`:
/// Unauthenticated 401, PermissionDenied 403 (an unknown application too), InvalidArgument and
/// FailedPrecondition 400, NotFound 404.
fn fake_argocd(app: Arc<Mutex<Value>>, token: &'static str) -> impl Fn(&Seen) -> Reply {
    move |r: &Seen| {
        let error = |status: u16, code: u32, message: &str| {
            Reply::json(
                status,
                json!({"error": message, "code": code, "message": message}),
            )
        };
        if r.header("authorization") != Some(&format!("Bearer {token}")) {
            return error(401, 16, "invalid session: token signature is invalid");
        }
        let Some(rest) = r.path.strip_prefix("/api/v1/applications/") else {
            return error(404, 5, "Not Found");
        };
        let (name, action) = match rest.split_once('/') {
            Some((n, a)) => (n, Some(a)),
            None => (rest, None),
        };
        let mut app = app.lock().expect("lock");
        if name != app["metadata"]["name"] {
            return error(403, 7, "permission denied");
        }
        let Some(body) = r.json() else {
            return error(400, 3, "invalid character looking for beginning of value");
        };
        if body["name"] != name {
            return error(400, 3, "name is required");
        }
        let automated = !app["spec"]["syncPolicy"]["automated"].is_null();
        match (r.method.as_str(), action) {
            ("PATCH", None) => {
                if body["patchType"] != "merge" {
                    return error(400, 3, "Patch type is not supported");
                }
                let Some(patch) = body["patch"]
                    .as_str()
                    .and_then(|p| serde_json::from_str::<Value>(p).ok())
                else {
                    return error(400, 3, "error unmarshaling patch");
                };
                merge_patch(&mut app, &patch);
                Reply::json(200, app.clone())
            }
            ("POST", Some("rollback")) => {
                if automated {
                    return error(
                        400,
                        9,
                        "rollback cannot be initiated when auto-sync is enabled",
                    );
                }
                let id = match &body["id"] {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.parse::<i64>().ok(),
                    _ => None,
                };
                let entry = app["status"]["history"]
                    .as_array()
                    .and_then(|h| h.iter().find(|e| e["id"].as_i64() == id))
                    .cloned();
                let Some(entry) = entry else {
                    return error(
                        400,
                        3,
                        &format!("application web does not have deployment with id {id:?}"),
                    );
                };
                argocd_synced(&mut app, &entry["revision"]);
                Reply::json(200, app.clone())
            }
            ("POST", Some("sync")) => {
                let revision = body["revision"].as_str().unwrap_or("");
                let target = app["spec"]["source"]["targetRevision"].clone();
                if automated && !revision.is_empty() && target != revision {
                    return error(
                        400,
                        9,
                        &format!(
                            "Cannot sync to {revision}: auto-sync currently set to {}",
                            target.as_str().unwrap_or("HEAD")
                        ),
                    );
                }
                argocd_synced(&mut app, &json!(revision));
                Reply::json(200, app.clone())
            }
            _ => error(404, 5, "Not Found"),
        }
    }
}

/// What a finished sync leaves: the live revision and a new history entry (ids only grow; the
/// entry rolled back to stays).
fn argocd_synced(app: &mut Value, revision: &Value) {
    app["status"]["sync"]["revision"] = revision.clone();
    app["operation"] = json!({"sync": {"revision": revision}});
    let history = app["status"]["history"].as_array_mut().expect("history");
    let next = history
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .max()
        .unwrap_or(0)
        + 1;
    history.push(json!({"id": next, "revision": revision}));
}

/// The Application, a fake Argo CD serving it, and the preset pointed at the fake.
async fn argocd_setup(file: &str) -> (Arc<Mutex<Value>>, Fake, Rule) {
    set_env();
    let app = argocd_app();
    let fake = Fake::start(fake_argocd(app.clone(), ARGOCD_TOKEN)).await;
    let rule = argocd_preset(file, &fake);
    (app, fake, rule)
}

fn argocd_preset(file: &str, fake: &Fake) -> Rule {
    load_preset(file, &[("https://argocd.example.com", &fake.base)])
}

/// The http step failed with `status`, and the answer it kept names the reason.
#[track_caller]
fn assert_refused_with(r: &StepResult, status: i32, says: &str) {
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(status), "{r:?}");
    assert!(r.output.contains(says), "{says:?} not in {}", r.output);
}

/// The step failed, and what the program wrote names the reason.
#[track_caller]
fn assert_refused(r: &StepResult, says: &str) {
    assert!(!r.ok, "{r:?}");
    assert!(r.output.contains(says), "{says:?} not in {}", r.output);
}

fn assert_argocd_request(req: &Seen, method: &str, path: &str) {
    assert_eq!((req.method.as_str(), req.path.as_str()), (method, path));
    assert_eq!(req.query, None);
    assert_eq!(
        req.header("authorization").map(str::to_string),
        Some(format!("Bearer {ARGOCD_TOKEN}"))
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn argocd_turns_auto_sync_off_rolls_back_to_the_history_id_and_back_on_when_unfrozen() {
    set_env();
    let (app, fake, rule) = argocd_setup("argocd.yaml").await;
    assert!(rule.freeze, "on_unfreeze needs the freeze");
    // Argo CD's notifications webhook posts the history id as the release's deployment_id.
    let v = vars(&rule, &[("release.previous.deployment_id", "6")]);

    let off = step(&rule, "turn off argo cd auto-sync");
    let rollback = step(&rule, "argo cd rollback to the previous history entry");
    assert!(off.idempotent && rollback.idempotent);
    assert_eq!(
        rule.steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        [off.name.as_str(), rollback.name.as_str()],
        "auto-sync goes off before the rollback: Argo CD refuses one while it is on"
    );

    let r = run_http_step(off, &v).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.exit_code, Some(200));
    assert!(app.lock().expect("lock")["spec"]["syncPolicy"]["automated"].is_null());

    let r = run_http_step(rollback, &v).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        app.lock().expect("lock")["status"]["sync"]["revision"],
        PREVIOUS_SHA
    );
    // Idempotent: rolling back to entry 6 again syncs the same revision (entry 6 is still there).
    let r = run_http_step(rollback, &v).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        app.lock().expect("lock")["status"]["sync"]["revision"],
        PREVIOUS_SHA
    );

    let on = unfreeze_step(&rule, "turn argo cd auto-sync back on");
    assert!(on.idempotent);
    let r = run_http_step(on, &v).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        app.lock().expect("lock")["spec"]["syncPolicy"]["automated"],
        json!({"prune": true, "selfHeal": true})
    );

    let seen = fake.requests();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let path = "/api/v1/applications/web";
    assert_argocd_request(&seen[0], "PATCH", path);
    assert_eq!(
        seen[0].json(),
        Some(json!({
            "name": "web",
            "patch": r#"{"spec":{"syncPolicy":{"automated":null}}}"#,
            "patchType": "merge",
        }))
    );
    for req in &seen[1..3] {
        assert_argocd_request(req, "POST", "/api/v1/applications/web/rollback");
        assert_eq!(
            req.json(),
            Some(json!({"name": "web", "id": "6", "prune": false, "dryRun": false})),
            "the history id as a decimal string, as protobuf's JSON mapping takes an int64"
        );
    }
    assert_argocd_request(&seen[3], "PATCH", path);
    assert_eq!(
        seen[3].json(),
        Some(json!({
            "name": "web",
            "patch": r#"{"spec":{"syncPolicy":{"automated":{"prune":true,"selfHeal":true}}}}"#,
            "patchType": "merge",
        }))
    );
}

#[tokio::test]
async fn argocd_refusals_fail_the_step() {
    set_env();
    let (app, fake, rule) = argocd_setup("argocd.yaml").await;
    let rollback = step(&rule, "argo cd rollback to the previous history entry");

    // Auto-sync still on: FailedPrecondition, 400.
    let v = vars(&rule, &[("release.previous.deployment_id", "6")]);
    let r = run_http_step(rollback, &v).await;
    assert_refused_with(
        &r,
        400,
        "rollback cannot be initiated when auto-sync is enabled",
    );

    // A history id Argo CD does not have (pruned by revisionHistoryLimit): InvalidArgument, 400.
    assert!(
        run_http_step(step(&rule, "turn off argo cd auto-sync"), &v)
            .await
            .ok
    );
    let gone = vars(&rule, &[("release.previous.deployment_id", "2")]);
    assert_refused_with(
        &run_http_step(rollback, &gone).await,
        400,
        "does not have deployment",
    );
    // A deployment id that is not an Argo CD history id (a ledger not fed by Argo CD): refused
    // the same way, and nothing moves.
    let r = run_http_step(rollback, &vars(&rule, &[])).await;
    assert_refused_with(&r, 400, "does not have deployment");
    assert_eq!(
        app.lock().expect("lock")["status"]["sync"]["revision"],
        CURRENT_SHA
    );
    assert_eq!(fake.requests().len(), 4);

    // A token Argo CD does not accept: Unauthenticated, 401, on both kinds of step.
    let fake = Fake::start(fake_argocd(argocd_app(), "another-token")).await;
    let rule = argocd_preset("argocd.yaml", &fake);
    for name in [
        "turn off argo cd auto-sync",
        "argo cd rollback to the previous history entry",
    ] {
        let r = run_http_step(step(&rule, name), &v).await;
        assert_refused_with(&r, 401, "invalid session");
        assert!(!r.output.contains(ARGOCD_TOKEN));
    }

    // An application the token cannot see (or that does not exist): PermissionDenied, 403.
    let fake = Fake::start(fake_argocd(argocd_app(), ARGOCD_TOKEN)).await;
    let rule = load_preset(
        "argocd.yaml",
        &[
            ("https://argocd.example.com", &fake.base),
            ("/applications/web", "/applications/webb"),
        ],
    );
    let off = step(&rule, "turn off argo cd auto-sync");
    let r = run_http_step(off, &v).await;
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(403));
    assert!(r.output.contains("permission denied"), "{}", r.output);
}

#[tokio::test]
async fn argocd_sync_variant_syncs_to_the_previous_git_revision() {
    set_env();
    let (app, fake, rule) = argocd_setup("argocd-sync-revision.yaml").await;
    assert!(rule.freeze);
    let v = vars(&rule, &[]);
    let sync = step(&rule, "argo cd sync to the previous revision");
    assert!(sync.idempotent);

    // Before auto-sync is off, Argo CD refuses a sync to another revision.
    assert_refused_with(
        &run_http_step(sync, &v).await,
        400,
        "auto-sync currently set to main",
    );

    assert!(
        run_http_step(step(&rule, "turn off argo cd auto-sync"), &v)
            .await
            .ok
    );
    let r = run_http_step(sync, &v).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        app.lock().expect("lock")["status"]["sync"]["revision"],
        PREVIOUS_SHA
    );
    let seen = fake.requests();
    let last = seen.last().expect("a request");
    assert_argocd_request(last, "POST", "/api/v1/applications/web/sync");
    assert_eq!(
        last.json(),
        Some(json!({"name": "web", "revision": PREVIOUS_SHA, "prune": true}))
    );

    assert!(
        run_http_step(unfreeze_step(&rule, "turn argo cd auto-sync back on"), &v)
            .await
            .ok
    );
    assert!(!app.lock().expect("lock")["spec"]["syncPolicy"]["automated"].is_null());

    // A release without a revision: the step does not render, nothing runs.
    let mut none = vars(&rule, &[]);
    none.remove("release.previous.revision");
    let Action::Http {
        body: Body::Json(body),
        ..
    } = &sync.action
    else {
        panic!("the sync step is an http step with a JSON body")
    };
    let e = template::render_json(body, &none).expect_err("no revision, no body");
    assert!(e.contains("release.previous.revision"), "{e}");
}

// ---- Flux, through kubectl against a fake Kubernetes API server ----

const KUBE_TOKEN: &str = "kube-preset-test-token-0000";

/// The custom resources the fake serves: group, version, plural, kind.
const FLUX_RESOURCES: [(&str, &str, &str, &str); 3] = [
    (
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "kustomizations",
        "Kustomization",
    ),
    (
        "helm.toolkit.fluxcd.io",
        "v2",
        "helmreleases",
        "HelmRelease",
    ),
    (
        "image.toolkit.fluxcd.io",
        "v1beta2",
        "imageupdateautomations",
        "ImageUpdateAutomation",
    ),
];

/// Stored objects by API path (`/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>`).
type KubeObjects = Arc<Mutex<BTreeMap<String, Value>>>;

fn flux_objects() -> KubeObjects {
    let mut objects = BTreeMap::new();
    for (group, version, plural, kind, name) in [
        (
            "kustomize.toolkit.fluxcd.io",
            "v1",
            "kustomizations",
            "Kustomization",
            "web",
        ),
        (
            "image.toolkit.fluxcd.io",
            "v1beta2",
            "imageupdateautomations",
            "ImageUpdateAutomation",
            "flux-system",
        ),
    ] {
        objects.insert(
            format!("/apis/{group}/{version}/namespaces/flux-system/{plural}/{name}"),
            json!({
                "apiVersion": format!("{group}/{version}"),
                "kind": kind,
                "metadata": {"name": name, "namespace": "flux-system", "resourceVersion": "1"},
                "spec": {"interval": "10m", "suspend": false},
            }),
        );
    }
    Arc::new(Mutex::new(objects))
}

/// A `Status` object, how the API server reports a failure
/// (https://kubernetes.io/docs/reference/using-api/api-concepts/#response-status-kind).
fn kube_status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// A Kubernetes API server as kubectl meets it, per the API conventions
/// (https://kubernetes.io/docs/reference/using-api/api-concepts/,
/// https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/,
/// https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md):
/// bearer-token authentication (401 `Status` with reason `Unauthorized` otherwise); discovery
/// (https://kubernetes.io/docs/concepts/overview/kubernetes-api/#discovery-api) answered in the
/// unaggregated form only, `APIVersions` at `/api`, `APIGroupList` at `/apis`, `APIResourceList`
/// at `/api/v1` and `/apis/<group>/<version>`, all as `application/json`, which makes a client
/// that asked for the aggregated `APIGroupDiscoveryList` fall back to them; `/version` without
/// credentials; `GET` of a stored object and of its namespace; `PATCH` of a
/// namespaced object with `application/merge-patch+json` (RFC 7386) answering 200 with the
/// object and a new `resourceVersion` (415 for another content type, 404 `Status` with reason
/// `NotFound` for an object it does not hold).
fn fake_kube(objects: KubeObjects, token: &'static str) -> impl Fn(&Seen) -> Reply {
    move |r: &Seen| {
        let path = r.path.trim_end_matches('/');
        // Everyone may read the version (the `system:public-info-viewer` role).
        if r.method == "GET" && path == "/version" {
            return Reply::json(
                200,
                json!({"major": "1", "minor": "32", "gitVersion": "v1.32.4", "platform": "linux/amd64"}),
            );
        }
        if r.header("authorization") != Some(&format!("Bearer {token}")) {
            return kube_status(401, "Unauthorized", "Unauthorized");
        }
        if r.method == "GET" {
            let groups = || {
                FLUX_RESOURCES.iter().map(|(g, v, _, _)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
            };
            match path {
                "/api" => {
                    return Reply::json(
                        200,
                        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
                        ]}),
                    );
                }
                "/apis" => {
                    return Reply::json(
                        200,
                        json!({"kind": "APIGroupList", "apiVersion": "v1",
                               "groups": groups().collect::<Vec<_>>()}),
                    );
                }
                "/api/v1" => {
                    return Reply::json(
                        200,
                        json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
                             "kind": "Namespace", "verbs": ["get", "list"], "shortNames": ["ns"]}
                        ]}),
                    );
                }
                _ => {}
            }
            if let Some((g, v, plural, kind)) = FLUX_RESOURCES
                .iter()
                .find(|(g, v, _, _)| path == format!("/apis/{g}/{v}"))
            {
                let singular = kind.to_ascii_lowercase();
                return Reply::json(
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1",
                           "groupVersion": format!("{g}/{v}"), "resources": [
                        {"name": plural, "singularName": singular, "namespaced": true, "kind": kind,
                         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                        {"name": format!("{plural}/status"), "singularName": "", "namespaced": true,
                         "kind": kind, "verbs": ["get", "patch", "update"]}
                    ]}),
                );
            }
        }
        if path == "/api/v1/namespaces/flux-system" && r.method == "GET" {
            return Reply::json(
                200,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
            );
        }
        if matches!(r.method.as_str(), "GET" | "PATCH") {
            let mut objects = objects.lock().expect("lock");
            let Some(object) = objects.get_mut(path) else {
                let mut parts = path.rsplit('/');
                let (name, plural) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let group = path.split('/').nth(2).unwrap_or("");
                return kube_status(
                    404,
                    "NotFound",
                    &format!("{plural}.{group} \"{name}\" not found"),
                );
            };
            if r.method == "GET" {
                return Reply::json(200, object.clone());
            }
            if r.header("content-type") != Some("application/merge-patch+json") {
                return kube_status(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format",
                );
            }
            let Some(patch) = r.json() else {
                return kube_status(400, "BadRequest", "error decoding patch");
            };
            merge_patch(object, &patch);
            let version = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
            return Reply::json(200, object.clone());
        }
        kube_status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
}

/// A self-signed certificate for 127.0.0.1, made with the `openssl` CLI, and its key (PEM files).
struct TestCert {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl TestCert {
    fn new() -> TestCert {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "{out:?}");
        TestCert {
            _dir: dir,
            cert,
            key,
        }
    }
}

/// A kubeconfig for the fake (its certificate as the CA, a bearer token) and a HOME for
/// kubectl's cache, both in a temporary directory; the child environment that uses them.
struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: String,
}

impl Kubectl {
    fn new(fake: &Fake, tls: &TestCert, token: &str) -> Kubectl {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: rollbackd\n  user:\n    token: {token}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: rollbackd\n\
                 current-context: fake\n",
                fake.base,
                tls.cert.display(),
            ),
        )
        .expect("write kubeconfig");
        Kubectl {
            kubeconfig: kubeconfig.to_string_lossy().into_owned(),
            dir,
        }
    }

    fn env(&self) -> [(&str, &str); 3] {
        let home = self.dir.path().to_str().expect("utf-8 temp dir");
        [
            ("KUBECONFIG", self.kubeconfig.as_str()),
            ("HOME", home),
            ("KUBECACHEDIR", home),
        ]
    }
}

fn suspended(objects: &KubeObjects) -> Vec<Value> {
    objects
        .lock()
        .expect("lock")
        .values()
        .map(|o| o["spec"]["suspend"].clone())
        .collect()
}

/// The Flux objects, a certificate, and a fake API server holding the objects over TLS.
async fn flux_cluster() -> Option<(KubeObjects, TestCert, Fake)> {
    set_env();
    if !installed(&["kubectl", "openssl"]) {
        return None;
    }
    let objects = flux_objects();
    let tls = TestCert::new();
    let fake = Fake::start_tls(fake_kube(objects.clone(), KUBE_TOKEN), &tls).await;
    Some((objects, tls, fake))
}

#[tokio::test]
async fn flux_suspends_and_resumes_through_kubectl() {
    let Some((objects, tls, fake)) = flux_cluster().await else {
        return;
    };
    let kubectl = Kubectl::new(&fake, &tls, KUBE_TOKEN);
    let rule = load_preset("flux.yaml", &[]);
    assert!(rule.freeze);
    let v = vars(&rule, &[]);

    for s in &rule.steps {
        assert!(s.idempotent, "{}", s.name);
        let r = run_run_step(s, &v, &kubectl.env()).await;
        assert!(r.ok, "{}: {r:?}", s.name);
        assert!(r.output.contains("patched"), "{}", r.output);
    }
    assert_eq!(suspended(&objects), [json!(true), json!(true)]);
    // Suspending again changes nothing and succeeds.
    let again = run_run_step(&rule.steps[1], &v, &kubectl.env()).await;
    assert!(again.ok, "{again:?}");
    assert_eq!(suspended(&objects), [json!(true), json!(true)]);

    for s in &rule.on_unfreeze {
        assert!(s.idempotent, "{}", s.name);
        let r = run_run_step(s, &v, &kubectl.env()).await;
        assert!(r.ok, "{}: {r:?}", s.name);
    }
    assert_eq!(suspended(&objects), [json!(false), json!(false)]);

    let seen = fake.requests();
    // kubectl 1.26 and later ask for aggregated discovery first, with plain JSON as the fallback,
    // and take the plain lists the fake answers; older ones (Debian's kubernetes-client is 1.20)
    // ask for plain JSON only.
    let first = seen.iter().find(|r| r.path == "/api").expect("discovery");
    assert!(
        first.header("accept").is_some_and(|a| {
            let aggregated = a.starts_with(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,",
            );
            (aggregated && a.ends_with(",application/json"))
                || (!aggregated && a.starts_with("application/json"))
        }),
        "{first:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.path == "/apis/kustomize.toolkit.fluxcd.io/v1"),
        "kubectl read the group's resource list"
    );
    for req in &seen {
        assert_eq!(
            req.header("authorization").map(str::to_string),
            Some(format!("Bearer {KUBE_TOKEN}")),
            "{req:?}"
        );
    }
    let patches: Vec<(&str, Option<Value>)> = seen
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| (r.path.as_str(), r.json()))
        .collect();
    let ks = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/web";
    let iua = "/apis/image.toolkit.fluxcd.io/v1beta2/namespaces/flux-system/imageupdateautomations/flux-system";
    let suspend = |s: bool| Some(json!({"spec": {"suspend": s}}));
    assert_eq!(
        patches,
        [
            (iua, suspend(true)),
            (ks, suspend(true)),
            (ks, suspend(true)),
            (ks, suspend(false)),
            (iua, suspend(false)),
        ]
    );
    assert!(
        seen.iter()
            .filter(|r| r.method == "PATCH")
            .all(|r| r.header("content-type") == Some("application/merge-patch+json"))
    );
}

#[tokio::test]
async fn flux_steps_fail_for_a_missing_object_or_a_bad_token() {
    let Some((objects, tls, fake)) = flux_cluster().await else {
        return;
    };
    let kubectl = Kubectl::new(&fake, &tls, KUBE_TOKEN);
    // A Kustomization the cluster does not have: 404 NotFound, kubectl exits non-zero.
    let rule = load_preset(
        "flux.yaml",
        &[(
            "kustomization.kustomize.toolkit.fluxcd.io/web",
            "kustomization.kustomize.toolkit.fluxcd.io/nope",
        )],
    );
    let r = run_run_step(
        step(&rule, "suspend flux kustomization"),
        &vars(&rule, &[]),
        &kubectl.env(),
    )
    .await;
    assert_ne!(r.exit_code, Some(0));
    assert_refused(
        &r,
        r#"kustomizations.kustomize.toolkit.fluxcd.io "nope" not found"#,
    );
    assert_eq!(suspended(&objects), [json!(false), json!(false)]);

    // A token the API server does not accept: 401.
    let kubectl = Kubectl::new(&fake, &tls, "another-token");
    let rule = load_preset("flux.yaml", &[]);
    let s = step(&rule, "suspend flux kustomization");
    assert_refused(
        &run_run_step(s, &vars(&rule, &[]), &kubectl.env()).await,
        "error: You must be logged in to the server",
    );
    assert_eq!(suspended(&objects), [json!(false), json!(false)]);
}

// ---- GitHub: a revert opened as a pull request ----

const GITHUB_REPO: &str = "/repos/acme/web-deploy";
const PREVIOUS_TREE: &str = "1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e";
const CURRENT_TREE: &str = "aa11bb22cc33dd44ee55ff6677889900aabbccdd";

/// What the fake GitHub repository holds: commits (sha → object), branches (name → sha), pull
/// requests.
#[derive(Default)]
struct GitHubRepo {
    commits: BTreeMap<String, Value>,
    branches: BTreeMap<String, String>,
    pulls: Vec<Value>,
}

fn github_repo() -> Arc<Mutex<GitHubRepo>> {
    let mut repo = GitHubRepo::default();
    for (sha, tree, parent) in [
        (PREVIOUS_SHA, PREVIOUS_TREE, None),
        (CURRENT_SHA, CURRENT_TREE, Some(PREVIOUS_SHA)),
    ] {
        repo.commits.insert(
            sha.into(),
            json!({"sha": sha, "tree": {"sha": tree}, "parents": parent.map(|p| vec![json!({"sha": p})]).unwrap_or_default(), "message": "deploy"}),
        );
    }
    repo.branches.insert("main".into(), CURRENT_SHA.into());
    Arc::new(Mutex::new(repo))
}

/// GitHub's REST API for git objects and pull requests as documented
/// (https://docs.github.com/en/rest/using-the-rest-api/getting-started-with-the-rest-api,
/// https://docs.github.com/en/rest/git/commits, https://docs.github.com/en/rest/git/refs,
/// https://docs.github.com/en/rest/pulls/pulls,
/// https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api):
/// `Authorization: Bearer <token>` (401 "Bad credentials"), a `User-Agent` (403 without one),
/// `X-GitHub-Api-Version` (400 for a version it does not know); `GET git/commits/{sha}` 200 or
/// 404 "Not Found"; `POST git/commits` 201 (422 for a tree or parent it does not have);
/// `POST git/refs` 201 (422 "Reference already exists"); `PATCH git/refs/heads/{branch}` 200
/// (422 "Reference does not exist"); `POST pulls` 201 (422 "Validation Failed" with "A pull
/// request already exists for OWNER:BRANCH." or an unknown head); `GET pulls?head=&state=` 200.
/// Errors are `{"message", "documentation_url", "status"}`.
fn fake_github(repo: Arc<Mutex<GitHubRepo>>, token: &'static str) -> impl Fn(&Seen) -> Reply {
    move |r: &Seen| {
        let error = |status: u16, message: &str| {
            Reply::json(
                status,
                json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()}),
            )
        };
        if r.header("user-agent").is_none() {
            return error(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
            );
        }
        if r.header("authorization") != Some(&format!("Bearer {token}")) {
            return error(401, "Bad credentials");
        }
        if r.header("x-github-api-version")
            .is_some_and(|v| v != "2022-11-28")
        {
            return error(400, "API version is not supported");
        }
        let Some(rest) = r.path.strip_prefix(GITHUB_REPO) else {
            return error(404, "Not Found");
        };
        let mut repo = repo.lock().expect("lock");
        let body = r.json().unwrap_or(Value::Null);
        match (r.method.as_str(), rest) {
            ("GET", p) if p.starts_with("/git/commits/") => {
                match repo.commits.get(&p["/git/commits/".len()..]) {
                    Some(c) => Reply::json(200, c.clone()),
                    None => error(404, "Not Found"),
                }
            }
            ("POST", "/git/commits") => {
                let tree = body["tree"].as_str().unwrap_or("");
                let known_tree = repo.commits.values().any(|c| c["tree"]["sha"] == tree);
                let parents: Vec<&str> = body["parents"]
                    .as_array()
                    .map(|p| p.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !body["message"].is_string()
                    || !known_tree
                    || parents.iter().any(|p| !repo.commits.contains_key(*p))
                {
                    return error(422, "Tree SHA does not exist");
                }
                let sha = format!("{:040x}", 0xc0ffee_u64 + repo.commits.len() as u64);
                let commit = json!({
                    "sha": sha, "tree": {"sha": tree}, "message": body["message"],
                    "parents": parents.iter().map(|p| json!({"sha": p})).collect::<Vec<_>>(),
                });
                repo.commits.insert(sha, commit.clone());
                Reply::json(201, commit)
            }
            ("POST", "/git/refs") => {
                let (Some(name), Some(sha)) = (
                    body["ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("refs/heads/")),
                    body["sha"].as_str(),
                ) else {
                    return error(422, "Reference name is invalid");
                };
                if repo.branches.contains_key(name) {
                    return error(422, "Reference already exists");
                }
                if !repo.commits.contains_key(sha) {
                    return error(422, "Object does not exist");
                }
                repo.branches.insert(name.into(), sha.into());
                Reply::json(
                    201,
                    json!({"ref": body["ref"], "object": {"type": "commit", "sha": sha}}),
                )
            }
            ("PATCH", p) if p.starts_with("/git/refs/heads/") => {
                let name = &p["/git/refs/heads/".len()..];
                let sha = body["sha"].as_str().unwrap_or("").to_string();
                if !repo.branches.contains_key(name) {
                    return error(422, "Reference does not exist");
                }
                if !repo.commits.contains_key(&sha) {
                    return error(422, "Object does not exist");
                }
                repo.branches.insert(name.into(), sha.clone());
                Reply::json(
                    200,
                    json!({"ref": format!("refs/heads/{name}"), "object": {"type": "commit", "sha": sha}}),
                )
            }
            ("POST", "/pulls") => {
                let head = body["head"].as_str().unwrap_or("");
                let base = body["base"].as_str().unwrap_or("");
                if !body["title"].is_string()
                    || !repo.branches.contains_key(head)
                    || !repo.branches.contains_key(base)
                {
                    return Reply::json(
                        422,
                        json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}], "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "422"}),
                    );
                }
                if repo.pulls.iter().any(|p| p["head"]["ref"] == head) {
                    return Reply::json(
                        422,
                        json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for acme:{head}.")}], "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "422"}),
                    );
                }
                let number = repo.pulls.len() + 1;
                let pull = json!({
                    "number": number, "state": "open", "title": body["title"], "body": body["body"],
                    "html_url": format!("https://github.com/acme/web-deploy/pull/{number}"),
                    "head": {"ref": head, "label": format!("acme:{head}")}, "base": {"ref": base},
                });
                repo.pulls.push(pull.clone());
                Reply::json(201, pull)
            }
            ("GET", "/pulls") => {
                let query = r.query.clone().unwrap_or_default();
                let open: Vec<Value> = repo
                    .pulls
                    .iter()
                    .filter(|p| {
                        query.contains("state=open")
                            && p["head"]["label"]
                                .as_str()
                                .is_some_and(|l| query.contains(&format!("head={l}")))
                    })
                    .cloned()
                    .collect();
                Reply::json(200, Value::Array(open))
            }
            _ => error(404, "Not Found"),
        }
    }
}

/// The repository, a fake GitHub serving it, and the preset running the built binary.
async fn github_setup(token: &'static str) -> (Arc<Mutex<GitHubRepo>>, Fake, Rule) {
    set_env();
    let repo = github_repo();
    let fake = Fake::start(fake_github(repo.clone(), token)).await;
    let rule = load_preset("github-revert.yaml", &[ROLLBACKD_PROGRAM]);
    (repo, fake, rule)
}

#[tokio::test]
async fn github_revert_opens_a_pull_request_with_the_previous_tree_on_the_bad_commit() {
    let (repo, fake, rule) = github_setup(GITHUB_TOKEN).await;
    assert!(rule.freeze);
    assert!(
        rule.on_unfreeze.is_empty(),
        "a person merges the pull request"
    );
    let s = step(&rule, "open a revert pull request on github");
    assert!(s.idempotent);
    let v = vars(&rule, &[]);
    let api = [("GITHUB_API_URL", fake.base.as_str())];

    let r = run_run_step(s, &v, &api).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.output.trim(), "https://github.com/acme/web-deploy/pull/1");

    let seen = fake.requests();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let commit_path = format!("{GITHUB_REPO}/git/commits/{PREVIOUS_SHA}");
    let commits = format!("{GITHUB_REPO}/git/commits");
    let refs = format!("{GITHUB_REPO}/git/refs");
    let pulls = format!("{GITHUB_REPO}/pulls");
    assert_eq!(
        calls,
        [
            ("GET", commit_path.as_str()),
            ("POST", commits.as_str()),
            ("POST", refs.as_str()),
            ("POST", pulls.as_str()),
        ]
    );
    for req in &seen {
        assert_eq!(
            req.header("authorization").map(str::to_string),
            Some(format!("Bearer {GITHUB_TOKEN}"))
        );
        assert_eq!(req.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(req.header("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(
            req.header("user-agent"),
            Some(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
        );
    }
    for req in &seen[1..] {
        assert_eq!(req.header("content-type"), Some("application/json"));
    }

    let commit = seen[1].json().expect("commit body");
    assert_eq!(
        commit["tree"], PREVIOUS_TREE,
        "the previous revision's tree"
    );
    assert_eq!(
        commit["parents"],
        json!([CURRENT_SHA]),
        "on top of the bad commit"
    );
    assert!(
        commit["message"]
            .as_str()
            .is_some_and(|m| m.contains("inc-000042"))
    );

    let repo = repo.lock().expect("lock");
    let branch = repo
        .branches
        .get("rollbackd/revert-inc-000042")
        .expect("branch created");
    assert_eq!(repo.commits[branch]["tree"]["sha"], PREVIOUS_TREE);
    assert_eq!(
        seen[2].json(),
        Some(json!({"ref": "refs/heads/rollbackd/revert-inc-000042", "sha": branch}))
    );
    let pull = seen[3].json().expect("pull body");
    assert_eq!(pull["head"], "rollbackd/revert-inc-000042");
    assert_eq!(pull["base"], "main");
    for field in ["title", "body"] {
        let text = pull[field].as_str().unwrap_or_default();
        assert!(
            text.contains("inc-000042"),
            "the {field} names the incident: {pull}"
        );
    }
    assert_eq!(
        repo.branches["main"], CURRENT_SHA,
        "main is left to the person who merges"
    );
}

#[tokio::test]
async fn github_revert_run_twice_keeps_one_branch_and_one_pull_request() {
    let (repo, fake, rule) = github_setup(GITHUB_TOKEN).await;
    let s = step(&rule, "open a revert pull request on github");
    let api = [("GITHUB_API_URL", fake.base.as_str())];
    for _ in 0..2 {
        let r = run_run_step(s, &vars(&rule, &[]), &api).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.output.trim(), "https://github.com/acme/web-deploy/pull/1");
    }
    let repo = repo.lock().expect("lock");
    assert_eq!(repo.pulls.len(), 1);
    let branch = &repo.branches["rollbackd/revert-inc-000042"];
    assert_eq!(repo.commits[branch]["tree"]["sha"], PREVIOUS_TREE);
    let seen = fake.requests();
    let second: Vec<(&str, &str)> = seen[4..]
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let moved = format!("{GITHUB_REPO}/git/refs/heads/rollbackd/revert-inc-000042");
    let pulls = format!("{GITHUB_REPO}/pulls");
    assert_eq!(second[3], ("PATCH", moved.as_str()), "{second:?}");
    assert_eq!(second[5], ("GET", pulls.as_str()), "{second:?}");
}

#[tokio::test]
async fn github_revert_refusals_fail_the_step() {
    // A token GitHub does not accept: 401 "Bad credentials", nothing created.
    let (repo, fake, rule) = github_setup("ghp_another_token").await;
    let s = step(&rule, "open a revert pull request on github");
    let api = [("GITHUB_API_URL", fake.base.as_str())];
    let r = run_run_step(s, &vars(&rule, &[]), &api).await;
    assert_eq!(r.exit_code, Some(1));
    assert_refused(&r, "HTTP 401");
    assert_refused(&r, "Bad credentials");
    assert!(!r.output.contains(GITHUB_TOKEN));
    assert_eq!(fake.requests().len(), 1);
    assert!(repo.lock().expect("lock").branches.len() == 1);

    // A previous revision the repository does not have: 404, nothing created.
    let (repo, fake, rule) = github_setup(GITHUB_TOKEN).await;
    let s = step(&rule, "open a revert pull request on github");
    let api = [("GITHUB_API_URL", fake.base.as_str())];
    let unknown = vars(
        &rule,
        &[(
            "release.previous.revision",
            "0123456789abcdef0123456789abcdef01234567",
        )],
    );
    assert_refused(&run_run_step(s, &unknown, &api).await, "HTTP 404");
    assert_eq!(repo.lock().expect("lock").branches.len(), 1);

    // A revision that is not a commit sha never reaches GitHub.
    let odd = vars(&rule, &[("release.previous.revision", "main")]);
    let before = fake.requests().len();
    assert_refused_with(
        &run_run_step(s, &odd, &api).await,
        64,
        "refusing commit main",
    );
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn github_revert_without_a_token_or_with_bad_arguments_sends_nothing() {
    let (repo, fake, rule) = github_setup(GITHUB_TOKEN).await;
    let s = step(&rule, "open a revert pull request on github");
    let run = |vars: BTreeMap<String, String>, token: bool| {
        let argv = render_argv(s, &vars).expect("argv renders");
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("GITHUB_API_URL", &fake.base);
        if token {
            cmd.env("GITHUB_TOKEN", GITHUB_TOKEN);
        } else {
            cmd.env_remove("GITHUB_TOKEN");
        }
        async move { cmd.output().await.expect("run rollbackd") }
    };

    // No GITHUB_TOKEN in the environment: exit 2, nothing sent.
    let o = run(vars(&rule, &[]), false).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("GITHUB_TOKEN is not set"),
        "{o:?}"
    );

    // A current revision that is not a hex sha: exit 64, nothing sent, token or not.
    for token in [true, false] {
        let o = run(
            vars(&rule, &[("release.current.revision", "9C8B7A6F5E4D3C2B")]),
            token,
        )
        .await;
        assert_eq!(o.status.code(), Some(64), "{o:?}");
        assert!(o.stdout.is_empty(), "{o:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("refusing commit 9C8B7A6F5E4D3C2B"),
            "{stderr}"
        );
        assert!(!stderr.contains(GITHUB_TOKEN), "{stderr}");
    }

    // A command line clap refuses (no --incident): 64 as well, not clap's 2.
    let mut argv = render_argv(s, &vars(&rule, &[])).expect("argv renders");
    argv.truncate(argv.len() - 2);
    let o = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("GITHUB_API_URL", &fake.base)
        .output()
        .await
        .expect("run rollbackd");
    assert_eq!(o.status.code(), Some(64), "{o:?}");

    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert_eq!(repo.lock().expect("lock").branches.len(), 1);
}

#[tokio::test]
async fn github_revert_follows_no_redirect() {
    // GitHub answering with a redirect to another host: the token is not sent there, the
    // redirect is the answer, and the step fails on it.
    let (_repo, elsewhere, rule) = github_setup(GITHUB_TOKEN).await;
    let to = format!(
        "{}/repos/acme/web-deploy/git/commits/{PREVIOUS_SHA}",
        elsewhere.base
    );
    let fake = Fake::start(move |_: &Seen| {
        Reply::json(307, json!({"message": "Temporary Redirect"}))
            .with_header("location", to.clone())
    })
    .await;
    let s = step(&rule, "open a revert pull request on github");
    let api = [("GITHUB_API_URL", fake.base.as_str())];
    let r = run_run_step(s, &vars(&rule, &[]), &api).await;
    assert_refused_with(&r, 1, "HTTP 307");
    assert!(r.output.contains("Temporary Redirect"), "{r:?}");
    assert!(!r.output.contains(GITHUB_TOKEN), "{r:?}");
    assert_eq!(fake.requests().len(), 1);
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
}

// ---- CLI presets: rendered argv, nothing run ----

#[test]
fn vercel_renders_rollback_to_the_previous_deployment() {
    set_env();
    let rule = load_preset("vercel.yaml", &[]);
    let s = step(&rule, "vercel rollback to previous deployment");
    assert!(s.idempotent);
    assert!(
        s.timeout > Duration::from_secs(4 * 60),
        "the step outlives --timeout 4m"
    );
    assert_eq!(
        render_argv(s, &vars(&rule, &[])).expect("renders"),
        strings(&[
            "vercel",
            "rollback",
            "dpl_8fT3kq2Lm",
            "--timeout",
            "4m",
            "--yes",
            "--scope",
            "my-team",
        ])
    );
    // The token reaches the CLI through its environment, never on its command line.
    assert_eq!(
        run_env(s).get("VERCEL_TOKEN").map(String::as_str),
        Some("${env:VERCEL_TOKEN}")
    );
    // A deployment id with shell syntax never reaches the argv.
    let err = render_argv(
        s,
        &vars(
            &rule,
            &[("release.previous.deployment_id", "dpl_1; rm -rf /")],
        ),
    )
    .expect_err("unsafe value refused");
    assert!(err.contains("refusing"), "{err}");
}

#[test]
fn kubernetes_rollout_undo_is_marked_not_idempotent() {
    set_env();
    let rule = load_preset("kubernetes.yaml", &[]);
    let undo = step(&rule, "kubectl rollout undo");
    assert!(!undo.idempotent, "undo twice flips back to the bad release");
    assert_eq!(undo.retries, 0);
    assert!(
        undo.probe.is_none(),
        "a kubectl probe would read any error as 'absent' and undo again"
    );
    assert_eq!(
        render_argv(undo, &vars(&rule, &[])).expect("renders"),
        strings(&[
            "kubectl",
            "rollout",
            "undo",
            "deployment/web",
            "-n",
            "web-prod"
        ])
    );
    let wait = step(&rule, "wait for the rollout");
    assert!(wait.idempotent);
    assert_eq!(
        render_argv(wait, &vars(&rule, &[])).expect("renders"),
        strings(&[
            "kubectl",
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "web-prod",
            "--timeout=5m",
        ])
    );
    // No namespace label on the alert: the step refuses to render, nothing would run.
    let mut no_ns = vars(&rule, &[]);
    no_ns.remove("labels.namespace");
    assert!(
        render_argv(undo, &no_ns)
            .expect_err("missing label")
            .contains("labels.namespace")
    );
    // The commented --to-revision alternative is written with names the templates know.
    assert!(
        preset_text("kubernetes.yaml")
            .contains(r#""--to-revision={{ release.previous.deployment_id }}""#)
    );
}

#[test]
fn kubernetes_set_image_renders_the_previous_image() {
    set_env();
    let rule = load_preset("kubernetes-set-image.yaml", &[]);
    let set = step(&rule, "set the previous image");
    assert!(set.idempotent);
    assert_eq!(
        render_argv(set, &vars(&rule, &[])).expect("renders"),
        strings(&[
            "kubectl",
            "set",
            "image",
            "deployment/web",
            "web=registry.example.com/acme/web:v1.4.0",
            "-n",
            "web-prod",
        ])
    );
    assert!(step(&rule, "wait for the rollout").idempotent);
}

#[test]
fn helm_renders_rollback_to_the_revision_ci_posted() {
    set_env();
    let rule = load_preset("helm.yaml", &[]);
    let s = step(&rule, "helm rollback to previous revision");
    assert!(s.idempotent);
    assert!(
        s.timeout > Duration::from_secs(8 * 60),
        "the step outlives helm's --timeout 8m"
    );
    // CI posts the Helm revision number as the release's deployment_id.
    let v = vars(&rule, &[("release.previous.deployment_id", "41")]);
    assert_eq!(
        render_argv(s, &v).expect("renders"),
        strings(&[
            "helm",
            "rollback",
            "web",
            "41",
            "--namespace",
            "web-prod",
            "--wait",
            "--timeout",
            "8m",
        ])
    );
}

#[test]
fn migrate_renders_goto_the_previous_schema_version() {
    set_env();
    let rule = load_preset("migrate.yaml", &[]);
    // The alert's service "web" maps to the schema's pseudo-service "web-db".
    let labels: BTreeMap<String, String> = [("labels.service", "web")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(rule.service.render(&labels).expect("service"), "web-db");
    assert!(
        rule.approval.is_some(),
        "a down-migration waits for a human"
    );

    let s = step(&rule, "migrate goto previous schema version");
    assert!(!s.idempotent, "down-migrations are not repeated");
    assert_eq!(s.retries, 0);
    assert!(
        s.probe.is_none(),
        "`migrate version` exits 0 whatever the version"
    );
    let v = vars(
        &rule,
        &[
            ("service", "web-db"),
            ("release.previous.version", "20240611093000"),
            ("release.current.version", "20240618120000"),
        ],
    );
    assert_eq!(
        render_argv(s, &v).expect("renders"),
        strings(&[
            "migrate",
            "-path",
            "/srv/portal/migrations",
            "-database",
            "postgres://migrator@db.internal:5432/portal?sslmode=require",
            "goto",
            "20240611093000",
        ])
    );
    // The password reaches the driver as PGPASSWORD, never on migrate's command line.
    assert_eq!(
        run_env(s).get("PGPASSWORD").map(String::as_str),
        Some("${env:DATABASE_PASSWORD}")
    );
}

// ---- the directory as a whole ----

#[test]
fn presets_lint_clean_and_are_not_loaded_from_the_rules_dir() {
    set_env();
    let (set, problems) = rules::load_dir(Path::new(PRESETS), &people());
    let set = set.unwrap_or_else(|| panic!("presets do not load: {problems:#?}"));
    assert!(problems.is_empty(), "{problems:#?}");
    // Without anyone holding its approval role, the migration preset does not load.
    let (_, problems) = rules::load_dir(
        Path::new(PRESETS),
        &Context::with_people([("ada", &["founder"][..])], []),
    );
    assert!(
        problems.iter().all(|p| p.severity == Severity::Error
            && p.file.ends_with("migrate.yaml")
            && p.message.contains("database-owner")),
        "{problems:#?}"
    );
    let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "preset-argocd-sync-to-previous-revision",
            "preset-argocd-rollback",
            "preset-cloudflare-purge-everything",
            "preset-flux-suspend",
            "preset-github-revert-pull-request",
            "preset-helm-rollback",
            "preset-kubernetes-set-image",
            "preset-kubernetes-rollout-undo",
            "preset-launchdarkly-flag-off",
            "preset-migrate-down",
            "preset-upstash-flushdb",
            "preset-vercel-rollback",
        ]
    );
    assert!(set.rules.iter().all(|r| r.mode == Mode::Shadow));

    // The daemon reads only the top level of its rules directory.
    let (top, problems) = rules::load_dir(Path::new(RULES), &people());
    let top = top.unwrap_or_else(|| panic!("rules/ does not load: {problems:#?}"));
    assert!(
        top.rules.iter().all(|r| !r.name.starts_with("preset-")),
        "rules/presets/ must not be loaded by the daemon"
    );
}

#[test]
fn presets_hold_secrets_only_as_references() {
    set_env();
    let (set, _) = rules::load_dir(Path::new(PRESETS), &people());
    let set = set.expect("presets load");
    let is_ref = |v: &str| v.starts_with("${env:") || v.starts_with("${file:");
    for rule in &set.rules {
        for s in rule.steps.iter().chain(&rule.on_unfreeze) {
            match &s.action {
                Action::Http { headers, body, .. } => {
                    for (k, v) in headers {
                        if k.eq_ignore_ascii_case("authorization") {
                            let token = v.strip_prefix("Bearer ").unwrap_or(v);
                            assert!(is_ref(token), "{}: {k}: {v}", rule.name);
                        }
                    }
                    assert!(
                        !matches!(body, Body::Raw(_)),
                        "{}: literal JSON bodies only",
                        rule.name
                    );
                }
                Action::Run { argv, env, .. } => {
                    // A secret in argv is on the child's command line: presets pass them in `env`.
                    for a in argv {
                        assert!(
                            !a.source().contains("${"),
                            "{}: secret in argv: {}",
                            rule.name,
                            a.source()
                        );
                    }
                    for (k, v) in env {
                        let is_secret = k.contains("TOKEN") || k.contains("PASSWORD");
                        assert!(!is_secret || is_ref(v), "{}: {k}: {v}", rule.name);
                    }
                }
            }
        }
    }
}

// ---- the whole flow, through the real daemon ----

const GITHUB_SECRET: &str = "github-flow-secret-0123456789";

/// A preset made to run in a test: enforcing, a breach of 1 s, no verification (there is no
/// Prometheus here), `replace` applied (a vendor's address); everything else as shipped.
fn flow_rules(file: &str, replace: &[(&str, &str)]) -> String {
    let mut text = preset_text(file);
    for &(from, to) in [
        ("mode: shadow", "mode: enforce"),
        ("sustained: 10m", "sustained: 1s"),
        ("clear_after: 2m", "clear_after: 1s"),
    ]
    .iter()
    .chain(replace)
    {
        assert!(text.contains(from), "{file} does not contain {from}");
        text = text.replace(from, to);
    }
    let verify = text.find("    verify:\n").expect("a verify block");
    let end = verify
        + text[verify..]
            .find("    budget:")
            .expect("budget after verify");
    text.replace_range(verify..end, "");
    text
}

/// One Argo CD rollback, end to end: the releases `report` posts, a sustained breach, the preset's
/// steps against the fake Argo CD, the freeze, and the unfreeze that turns auto-sync back on.
/// Returns the fake's requests before and after the unfreeze.
fn argocd_flow(
    file: &str,
    config: &str,
    report: impl Fn(&common::Daemon),
) -> (Vec<Seen>, Vec<Seen>, Arc<Mutex<Value>>, Value) {
    set_env();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let app = argocd_app();
    let fake = rt.block_on(Fake::start(fake_argocd(app.clone(), ARGOCD_TOKEN)));
    let rules = flow_rules(file, &[("https://argocd.example.com", &fake.base)]);
    let (before, after, inc) = gitops_flow(
        &fake,
        config,
        &rules,
        &[("ARGOCD_TOKEN", ARGOCD_TOKEN)],
        report,
    );
    (before, after, app, inc)
}

/// The part every GitOps preset's flow shares: the daemon on `rules`, the releases `report`
/// posts, a firing alert, the rollback and its freeze (nothing more reaches `fake` while frozen),
/// the freeze lifted, and the incident once its `on_unfreeze` steps ended. Returns what `fake`
/// saw before and after the unfreeze, and the incident.
fn gitops_flow(
    fake: &Fake,
    config: &str,
    rules: &str,
    env: &[(&str, &str)],
    report: impl Fn(&common::Daemon),
) -> (Vec<Seen>, Vec<Seen>, Value) {
    let setup = common::Setup::new(config, rules);
    let d = setup.start_with_env(&[], env);
    report(&d);
    let (s, b) = common::post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &common::am_alert(
            "firing",
            json!({"alertname": "WebHighErrorRate", "service": "web", "environment": "production"}),
            &common::ts(-5.0),
            "fp-web",
        ),
    );
    assert_eq!(s, 200, "{b}");
    let id = common::first_incident(&d, "rolled_back", None, Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no rollback: {:#?}\n{}",
                common::get(&d.url("/v1/incidents"), None),
                d.stderr()
            )
        });
    let (s, freeze) = common::get(&d.url("/v1/freezes/web"), None);
    assert_eq!(s, 423, "the rollback froze releases: {freeze}");
    assert_eq!(freeze["incident"], id.as_str());
    let before = fake.requests();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fake.requests().len(),
        before.len(),
        "nothing more while frozen"
    );

    let resp = common::client()
        .delete(d.url("/v1/freezes/web"))
        .json(&json!({"reason": "the revert is merged", "by": "ada"}))
        .send()
        .expect("unfreeze");
    assert_eq!(resp.status().as_u16(), 200);
    let done = common::wait_for(Duration::from_secs(20), || {
        let (_, inc) = common::get(&d.url(&format!("/v1/incidents/{id}")), None);
        inc.get("on_unfreeze_ended_at")?.as_str()?;
        Some(inc)
    })
    .unwrap_or_else(|| panic!("the on_unfreeze steps did not end\n{}", d.stderr()));
    let after = fake.requests()[before.len()..].to_vec();
    (before, after, done)
}

/// The timeline of an incident that rolled back, froze, and ran its `on_unfreeze` steps once the
/// freeze was lifted, in that order.
fn assert_held_then_released(inc: &Value) {
    assert_eq!(inc["state"], "rolled_back");
    let kinds: Vec<&str> = inc["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(at("rolling_back") < at("frozen"), "{kinds:?}");
    assert!(at("frozen") < at("rolled_back"), "{kinds:?}");
    assert!(at("rolled_back") < at("unfrozen"), "{kinds:?}");
    assert!(at("unfrozen") < at("unfreeze_steps_ended"), "{kinds:?}");
    let end = inc["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["kind"] == "unfreeze_steps_ended"))
        .expect("ended");
    assert_eq!(end["data"]["ok"], true, "{end}");
}

/// The auto-sync-on patch, the one request after the unfreeze; the incident says so too.
fn assert_auto_sync_back_on(after: &[Seen], app: &Mutex<Value>, inc: &Value) {
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_argocd_request(&after[0], "PATCH", "/api/v1/applications/web");
    assert_eq!(
        after[0].json().expect("json")["patch"],
        r#"{"spec":{"syncPolicy":{"automated":{"prune":true,"selfHeal":true}}}}"#
    );
    assert_eq!(
        app.lock().expect("lock")["spec"]["syncPolicy"]["automated"],
        json!({"prune": true, "selfHeal": true})
    );
    assert_eq!(inc["on_unfreeze"][0]["state"], "done");
    assert_held_then_released(inc);
}

#[test]
fn github_deployments_to_an_argo_cd_rollback_held_by_the_freeze_until_the_unfreeze() {
    let config = format!(
        "github: {{webhook_secret: \"{GITHUB_SECRET}\", services: {{\"acme/web-deploy\": web}}}}\n"
    );
    let status = |id: u64, state: &str, sha: &str, age: f64| {
        json!({"action": "created",
               "deployment_status": {"id": id * 10, "state": state, "created_at": common::ts(-age)},
               "deployment": {"id": id, "sha": sha, "ref": format!("v1.{id}.0"),
                              "environment": "production", "payload": {}},
               "repository": {"name": "web-deploy", "full_name": "acme/web-deploy"}})
        .to_string()
    };
    let deliver = |d: &common::Daemon, delivery: &str, body: &str| {
        let sig = common::sha256_signature(GITHUB_SECRET, body);
        common::post_with(
            d,
            "/v1/webhooks/github",
            &[
                ("x-github-event", "deployment_status"),
                ("x-github-delivery", delivery),
                ("x-hub-signature-256", &sig),
            ],
            body,
        )
    };
    let (before, after, app, inc) = argocd_flow(
        "argocd-sync-revision.yaml",
        &config,
        |d: &common::Daemon| {
            for (delivery, body, want) in [
                ("d-1", status(41, "success", PREVIOUS_SHA, 900.0), 201),
                ("d-2", status(42, "in_progress", CURRENT_SHA, 320.0), 202),
                ("d-3", status(42, "success", CURRENT_SHA, 300.0), 201),
                // GitHub's "Redeliver" sends it again under a new delivery id.
                ("d-4", status(42, "success", CURRENT_SHA, 300.0), 200),
            ] {
                let (s, v) = deliver(d, delivery, &body);
                assert_eq!(s, want, "{delivery}: {v}");
            }
            let (_, v) = common::get(&d.url("/v1/releases/web"), None);
            let revisions: Vec<&str> = v["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|r| r["revision"].as_str())
                .collect();
            assert_eq!(
                revisions,
                [CURRENT_SHA, PREVIOUS_SHA],
                "one entry per deployment"
            );
        },
    );
    // While frozen: auto-sync off, then a sync to the previous revision (from GitHub's sha).
    assert_eq!(before.len(), 2, "{before:#?}");
    assert_argocd_request(&before[0], "PATCH", "/api/v1/applications/web");
    assert_eq!(
        before[0].json().expect("json")["patch"],
        r#"{"spec":{"syncPolicy":{"automated":null}}}"#
    );
    assert_argocd_request(&before[1], "POST", "/api/v1/applications/web/sync");
    assert_eq!(
        before[1].json(),
        Some(json!({"name": "web", "revision": PREVIOUS_SHA, "prune": true}))
    );
    assert!(
        before
            .iter()
            .all(|r| r.header("x-rollbackd-fencing-token").is_some()),
        "every step carries its fencing token"
    );
    assert_auto_sync_back_on(&after, &app, &inc);
}

#[test]
fn argo_cd_notifications_to_a_rollback_by_history_id_held_by_the_freeze_until_the_unfreeze() {
    let deployed = |history_id: u64, revision: &str, age: f64| {
        json!({"app": "web", "project": "default", "revision": revision, "history_id": history_id,
               "deployed_at": common::ts(-age), "sync_status": "Synced", "health_status": "Healthy",
               "service": "web", "environment": "production"})
        .to_string()
    };
    let (before, after, app, inc) = argocd_flow("argocd.yaml", "", |d: &common::Daemon| {
        for (body, want) in [
            (deployed(6, PREVIOUS_SHA, 900.0), 201),
            (deployed(7, CURRENT_SHA, 300.0), 201),
            (deployed(7, CURRENT_SHA, 300.0), 200),
        ] {
            let (s, v) = common::post_with(d, "/v1/webhooks/argocd", &[], &body);
            assert_eq!(s, want, "{v}");
        }
    });
    assert_eq!(before.len(), 2, "{before:#?}");
    assert_argocd_request(&before[0], "PATCH", "/api/v1/applications/web");
    assert_argocd_request(&before[1], "POST", "/api/v1/applications/web/rollback");
    assert_eq!(
        before[1].json(),
        Some(json!({"name": "web", "id": "6", "prune": false, "dryRun": false}))
    );
    assert_eq!(
        app.lock().expect("lock")["status"]["sync"]["revision"],
        PREVIOUS_SHA
    );
    assert_auto_sync_back_on(&after, &app, &inc);
}

const FLUX_SECRET: &str = "flux-flow-secret-0123456789";

#[test]
fn flux_events_to_a_suspended_reconciler_held_by_the_freeze_until_the_unfreeze() {
    set_env();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let Some((objects, tls, fake)) = rt.block_on(flux_cluster()) else {
        return;
    };
    let kubectl = Kubectl::new(&fake, &tls, KUBE_TOKEN);
    let config = format!(
        "flux: {{webhook_secret: \"{FLUX_SECRET}\", services: {{\"Kustomization/flux-system/web\": web}}}}\n"
    );
    let event = |sha: &str, age: f64| {
        json!({"involvedObject": {"apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                                  "kind": "Kustomization", "name": "web", "namespace": "flux-system"},
               "metadata": {"revision": format!("main@sha1:{sha}"), "environment": "production"},
               "severity": "info", "reason": "ReconciliationSucceeded",
               "message": "Reconciliation finished in 2.1s, next run in 10m0s",
               "reportingController": "kustomize-controller", "timestamp": common::ts(-age)})
        .to_string()
    };
    let (before, after, inc) = gitops_flow(
        &fake,
        &config,
        &flow_rules("flux.yaml", &[]),
        &kubectl.env(),
        |d: &common::Daemon| {
            for (body, want) in [
                (event(PREVIOUS_SHA, 900.0), 201),
                (event(CURRENT_SHA, 300.0), 201),
                // Flux reports the same revision at every reconciliation: one entry.
                (event(CURRENT_SHA, 200.0), 200),
            ] {
                let sig = common::sha256_signature(FLUX_SECRET, &body);
                let (s, v) =
                    common::post_with(d, "/v1/webhooks/flux", &[("x-signature", &sig)], &body);
                assert_eq!(s, want, "{v}");
            }
        },
    );
    let patches = |seen: &[Seen]| -> Vec<(String, Value)> {
        seen.iter()
            .filter(|r| r.method == "PATCH")
            .map(|r| {
                (
                    r.path.rsplit('/').take(2).collect::<Vec<_>>().join("<"),
                    r.json().unwrap_or_default(),
                )
            })
            .collect()
    };
    let suspend = |s: bool| json!({"spec": {"suspend": s}});
    // While frozen: the image automation, then the Kustomization, suspended.
    assert_eq!(
        patches(&before),
        [
            (
                "flux-system<imageupdateautomations".to_string(),
                suspend(true)
            ),
            ("web<kustomizations".to_string(), suspend(true)),
        ]
    );
    // Lifting the freeze resumes them, in the reverse order.
    assert_eq!(
        patches(&after),
        [
            ("web<kustomizations".to_string(), suspend(false)),
            (
                "flux-system<imageupdateautomations".to_string(),
                suspend(false)
            ),
        ]
    );
    assert_eq!(suspended(&objects), [json!(false), json!(false)]);
    assert_held_then_released(&inc);
}
