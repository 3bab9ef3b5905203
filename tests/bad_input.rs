//! Bad-input catalogue: hostile and broken requests against the real binary on loopback.
//!
//! One table of (method, raw path, headers, body, expected status, substring of the JSON `error`).
//! Requests go over a raw TCP socket, so paths with `..`, percent-encoded garbage, invalid UTF-8
//! and odd methods reach the daemon exactly as written (an HTTP client library would normalise
//! them). After each request the daemon must still answer `/healthz`; every error must be
//! `{"error": "...", "detail": ...}` as JSON; at the end no state may have changed and `/metrics`
//! must count the refusals.

mod common;
#[path = "common/fake_pagerduty.rs"]
mod fake_pagerduty;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const INGEST: &str = "ingest-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdefgh";
const ADMIN: &str = "admin-token-0123456789abcdefg";
const PD_SECRET: &str = "pd-webhook-secret-ChAnGeMe+/==";
const RELEASES: &str = "releases-token-0123456789abcdef";
const GRAFANA_SECRET: &str = "grafana-secret-0123456789abcdef";
const GITHUB_SECRET: &str = "github-secret-0123456789abcdef";
const GITLAB_TOKEN: &str = "gitlab-token-0123456789abcdef";
const FLUX_SECRET: &str = "flux-secret-0123456789abcdef";

/// A GitHub `deployment_status` of `web`, state `success`, with `payload` as its deployment's.
fn gh_body(payload: Value, id: Value) -> String {
    json!({"deployment_status": {"state": "success", "created_at": ts(-60.0)},
           "deployment": {"id": id, "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", "ref": "main",
                          "environment": "production", "payload": payload},
           "repository": {"name": "web", "full_name": "acme/web"}})
    .to_string()
}

/// A GitLab deployment event of project `name`, status `success`.
fn gl_body(name: &str, deployment_id: Value) -> String {
    json!({"object_kind": "deployment", "status": "success", "status_changed_at": "2021-04-28 21:50:00 +0200",
           "deployment_id": deployment_id, "environment": "production", "short_sha": "279484c0",
           "project": {"name": name, "path_with_namespace": format!("acme/{name}")}})
    .to_string()
}

/// A Flux event of Kustomization `apps/web` reconciled, with `metadata`.
fn flux_body(metadata: Value) -> String {
    json!({"involvedObject": {"kind": "Kustomization", "namespace": "apps", "name": "web"},
           "severity": "info", "reason": "ReconciliationSucceeded", "metadata": metadata,
           "timestamp": ts(-60.0)})
    .to_string()
}

/// The Argo CD template's body for application `web`.
fn argo_body(service: &str, history_id: Value) -> String {
    json!({"app": "web", "revision": "53e28ff20cc530b9ada2173fbbd64d48338583ba", "history_id": history_id,
           "sync_status": "Synced", "health_status": "Healthy", "service": service})
    .to_string()
}

/// `X-Grafana-Alerting-Signature` over `"<ts>:" + body`, or over the body alone.
fn grafana_sig(ts: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(GRAFANA_SECRET.as_bytes()).unwrap();
    if !ts.is_empty() {
        mac.update(format!("{ts}:").as_bytes());
    }
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
const ALERT: &str = "WebHighErrorRate";
/// The request is not valid HTTP (non-ASCII bytes or spaces in the request target): hyper refuses
/// it with a bare 400 before any handler, so the body cannot be the JSON error shape.
const HTTP_LAYER: &str = "<refused by the HTTP parser>";

/// One HTTP exchange: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Sends one request exactly as given (`Connection: close`, `Content-Length` when there is a
/// body) and reads the whole answer. The body is written from another thread while the answer
/// is read, so a server that answers 413 before reading a large body is heard.
fn raw(base: &str, method: &str, path: &[u8], headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let addr = host_port(base);
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = Vec::new();
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(path);
    head.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").as_bytes(),
    );
    for (k, v) in headers {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    s.write_all(&head).expect("write head");
    let mut w = s.try_clone().expect("clone");
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        // The server may answer and close before reading it all (413): that is fine.
        let _ = w.write_all(&body);
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the full answer arrived (unread request body) is not an error here.
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read {method} {}: {e}", String::from_utf8_lossy(path)),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    parse_answer(&buf)
}

fn parse_answer(buf: &[u8]) -> Answer {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..p]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = p + 2;
            out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
            rest = &rest[(start + size + 2).min(rest.len())..];
        }
        body = out;
    }
    Answer {
        status,
        headers,
        body,
    }
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// Substring of the JSON `error` (for an error status) or of the whole body (for a 2xx).
    expect: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl AsRef<[u8]>,
    headers: &[(&'static str, &str)],
    body: impl AsRef<[u8]>,
    status: u16,
    expect: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.as_ref().to_vec(),
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        body: body.as_ref().to_vec(),
        status,
        expect,
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn am_body(labels: Value, starts_at: Value, fingerprint: &str) -> String {
    json!({
        "receiver": "rollbackd", "status": "firing", "version": "4", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "externalURL": "http://am", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {},
        "alerts": [{"status": "firing", "labels": labels, "annotations": {}, "startsAt": starts_at,
                    "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint}]
    })
    .to_string()
}

fn matching_labels() -> Value {
    json!({"alertname": ALERT, "service": "web", "severity": "page"})
}

fn release_body(service: &str, version: &str, deployment_id: &str, deployed_at: Value) -> String {
    json!({"service": service, "environment": "production", "version": version,
           "deployment_id": deployment_id, "deployed_at": deployed_at})
    .to_string()
}

fn pd_body(event_id: &str, event_type: &str, data_type: &str) -> String {
    json!({"event": {"id": event_id, "event_type": event_type, "resource_type": "incident",
        "occurred_at": "2026-11-24T10:00:00Z", "agent": null, "client": null,
        "data": {"id": "Q1XYZ", "type": data_type, "status": "triggered", "title": "x"}}})
    .to_string()
}

/// The table. One line per case reads better than rustfmt's one argument per line.
#[rustfmt::skip]
fn catalogue() -> Vec<Case> {
    let ct = ("content-type", "application/json");
    let ing = bearer(INGEST);
    let read = bearer(READ);
    let admin = bearer(ADMIN);
    let ingest = [ct, ("authorization", ing.as_str())];
    let admin_h = [ct, ("authorization", admin.as_str())];
    let rel = bearer(RELEASES);
    let releases_h = [ct, ("authorization", rel.as_str())];
    let read_h = [("authorization", read.as_str())];
    let am = "/v1/webhooks/alertmanager";
    let good_am = am_body(matching_labels(), json!(ts(-1.0)), "fp-good");
    let a_starts = |v: Value| am_body(matching_labels(), v, "fp-time");
    let pd = "/v1/webhooks/pagerduty";
    let pd_ok = pd_body("01UNKNOWN", "incident.exploded", "widget");
    let pd_sig_ok = fake_pagerduty::signed_webhook(PD_SECRET, &pd_ok);
    let pd_other = pd_body("01OTHER", "incident.triggered", "incident");
    let pd_sig_other_secret = fake_pagerduty::signed_webhook("not-the-secret", &pd_other);
    let pd_not_json = "{\"event\": nope";
    let pd_no_id = json!({"event": {"event_type": "incident.triggered"}}).to_string();
    let pd_ping = json!({"event": {"id": "01PING", "event_type": "pagey.ping", "data": {"type": "ping"}}})
        .to_string();
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_arrays = format!("{{\"version\":\"4\",\"alerts\":{}}}", nest(100_000));
    let deep_ignored = format!("{{\"version\":\"4\",\"alerts\":[],\"extra\":{}}}", nest(100_000));
    let deep_signal = format!(
        "{{\"labels\":{{\"alertname\":\"{ALERT}\",\"service\":\"web\"}},\"status\":\"firing\",\"key\":{}}}",
        nest(100_000)
    );
    let deep_pd = format!(
        "{{\"event\":{{\"id\":\"01DEEP\",\"event_type\":\"incident.triggered\",\"data\":{}}}}}",
        nest(100_000)
    );
    let deep_pd_sig = fake_pagerduty::signed_webhook(PD_SECRET, &deep_pd);
    let deep_objects = format!(
        "{}1{}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    let huge = {
        let pad = "x".repeat(2 * 1024 * 1024);
        am_body(json!({"alertname": ALERT, "service": "web", "pad": pad}), json!(ts(-1.0)), "fp-huge")
    };
    let mut invalid_utf8 = br#"{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"WebHighErrorRate","service":"w"#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xc0\xaf");
    invalid_utf8.extend_from_slice(br#""},"startsAt":"2026-01-01T00:00:00Z"}]}"#);
    let long_fp = am_body(matching_labels(), json!(ts(-1.0)), &"f".repeat(300));
    let long_dpl = release_body("web", "v1", &"d".repeat(300), json!(ts(-60.0)));
    let injection_labels = json!({
        "alertname": "NotARule", "service": "$(touch /tmp/pwned)", "environment": "{{ labels.x }}",
        "team": "${env:HOME}", "path": "../../etc/passwd", "flag": "--force", "nl": "a\nb;id",
        "weird key !$": "`id`", "": "empty name"
    });
    let huge_path = format!("/v1/incidents/{}", "a".repeat(10_000));
    let old_ts = (jiff::Timestamp::now().as_second() - 3600).to_string();
    let gf_v2 = r#"{"version":"2","alerts":[]}"#;
    let gf_no_alerts = r#"{"version":"1"}"#;
    let gh = "/v1/webhooks/github";
    let gh_ok = gh_body(json!({}), json!(7));
    let gh_forged = sha256_signature("not-the-secret", &gh_ok);
    let gh_sig = sha256_signature(GITHUB_SECRET, &gh_ok);
    let gh_evil = gh_body(json!({"service": "$(id)"}), json!(7));
    let gh_evil_sig = sha256_signature(GITHUB_SECRET, &gh_evil);
    let gh_evil_str = gh_body(json!("{\"service\":\"../../etc\"}"), json!(7));
    let gh_evil_str_sig = sha256_signature(GITHUB_SECRET, &gh_evil_str);
    let gh_neg = gh_body(json!({}), json!(-7));
    let gh_neg_sig = sha256_signature(GITHUB_SECRET, &gh_neg);
    let gh_junk_sig = sha256_signature(GITHUB_SECRET, "{\"deployment\": nope");
    let gh_ev = ("x-github-event", "deployment_status");
    let gl = "/v1/webhooks/gitlab";
    let gl_ok = gl_body("web", json!(15));
    let gl_tok = ("x-gitlab-token", GITLAB_TOKEN);
    let fx = "/v1/webhooks/flux";
    let fx_ok = flux_body(json!({"revision": "main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1"}));
    let fx_forged = sha256_signature("not-the-secret", &fx_ok);
    let fx_evil = flux_body(json!({"revision": "main@sha1:731f", "service": "../../etc"}));
    let fx_evil_sig = sha256_signature(FLUX_SECRET, &fx_evil);
    let fx_flag = flux_body(json!({"revision": "--force"}));
    let fx_flag_sig = sha256_signature(FLUX_SECRET, &fx_flag);
    let argo = "/v1/webhooks/argocd";

    vec![
        // ---- deploy tools: signatures, tokens, and values that would become step arguments ----
        case("github forged signature", "POST", gh, &[ct, gh_ev, ("x-hub-signature-256", &gh_forged)], &gh_ok, 401, "X-Hub-Signature-256 does not match"),
        case("github without signature", "POST", gh, &[ct, gh_ev], &gh_ok, 400, "missing X-Hub-Signature-256"),
        case("github signature without sha256=", "POST", gh, &[ct, gh_ev, ("x-hub-signature-256", &gh_sig[7..])], &gh_ok, 400, "X-Hub-Signature-256 is not of the form"),
        case("github signed but no event header", "POST", gh, &[ct, ("x-hub-signature-256", &gh_sig)], &gh_ok, 400, "X-GitHub-Event"),
        case("github signed, not JSON", "POST", gh, &[ct, gh_ev, ("x-hub-signature-256", &gh_junk_sig)], "{\"deployment\": nope", 400, "not valid JSON"),
        case("github payload service $(id)", "POST", gh, &[ct, gh_ev, ("x-hub-signature-256", &gh_evil_sig)], &gh_evil, 400, "service"),
        case("github payload string service ../../etc", "POST", gh, &[ct, gh_ev, ("x-hub-signature-256", &gh_evil_str_sig)], &gh_evil_str, 400, "service"),
        case("github negative deployment id", "POST", gh, &[ct, gh_ev, ("x-hub-signature-256", &gh_neg_sig)], &gh_neg, 400, "deployment.id"),
        case("gitlab without token", "POST", gl, &[ct], &gl_ok, 401, "missing X-Gitlab-Token"),
        case("gitlab wrong token", "POST", gl, &[ct, ("x-gitlab-token", "wrong")], &gl_ok, 401, "not gitlab.webhook_token"),
        case("gitlab project name with a space", "POST", gl, &[ct, gl_tok], gl_body("web app", json!(15)), 400, "gitlab.services"),
        case("gitlab deployment_id --force", "POST", gl, &[ct, gl_tok], gl_body("web", json!("--force")), 400, "deployment_id"),
        case("gitlab time not GitLab's", "POST", gl, &[ct, gl_tok], gl_ok.replace("2021-04-28 21:50:00 +0200", "yesterday"), 400, "status_changed_at"),
        case("flux without signature", "POST", fx, &[ct], &fx_ok, 400, "missing X-Signature"),
        case("flux forged signature", "POST", fx, &[ct, ("x-signature", &fx_forged)], &fx_ok, 401, "X-Signature does not match"),
        case("flux metadata.service ../../etc", "POST", fx, &[ct, ("x-signature", &fx_evil_sig)], &fx_evil, 400, "service"),
        case("flux revision --force", "POST", fx, &[ct, ("x-signature", &fx_flag_sig)], &fx_flag, 400, "version"),
        case("argocd without token", "POST", argo, &[ct], argo_body("", json!(3)), 401, "releases token"),
        case("argocd with the ingest token", "POST", argo, &ingest, argo_body("", json!(3)), 401, "not a valid releases token"),
        case("argocd history_id --force", "POST", argo, &releases_h, argo_body("", json!("--force")), 400, "history_id"),
        case("argocd service $(id)", "POST", argo, &releases_h, argo_body("$(id)", json!(3)), 400, "service"),
        case("argocd unknown field", "POST", argo, &releases_h, argo_body("", json!(3)).replace("{\"app\"", "{\"admin\":true,\"app\""), 400, "unknown field"),
        // ---- tokens (all three kinds configured) ----
        case("alertmanager without token", "POST", am, &[ct], &good_am, 401, "missing `Authorization: Bearer <ingest token>`"),
        case("alertmanager with a wrong token", "POST", am, &[ct, ("authorization", "Bearer wrong-token-0123456789abcdef")], &good_am, 401, "not a valid ingest token"),
        case("alertmanager with the read token", "POST", am, &[ct, ("authorization", read.as_str())], &good_am, 401, "not a valid ingest token"),
        case("alertmanager with Basic auth", "POST", am, &[ct, ("authorization", "Basic aW5nZXN0OnNlY3JldA==")], &good_am, 401, "missing"),
        case("alertmanager with an empty bearer", "POST", am, &[ct, ("authorization", "Bearer ")], &good_am, 401, "ingest"),
        case("release without token", "POST", "/v1/releases", &[ct], release_body("web", "v9", "dpl_x", json!(ts(-60.0))), 401, "releases token"),
        case("release with the ingest token", "POST", "/v1/releases", &ingest, release_body("web", "v9", "dpl_x", json!(ts(-60.0))), 401, "not a valid releases token"),
        case("signal without token", "POST", "/v1/signals", &[ct], r#"{"labels":{"alertname":"WebHighErrorRate","service":"web"},"status":"firing"}"#, 401, "ingest token"),
        case("grafana without token", "POST", "/v1/webhooks/grafana", &[ct], "{}", 401, "ingest token"),
        case("grafana without a signature", "POST", "/v1/webhooks/grafana", &ingest, "{}", 401, "missing X-Grafana-Alerting-Signature"),
        case("grafana signature not hex", "POST", "/v1/webhooks/grafana", &[ct, ("authorization", ing.as_str()), ("x-grafana-alerting-signature", "zz")], "{}", 401, "not hex"),
        case("grafana signature timestamp not Unix seconds", "POST", "/v1/webhooks/grafana", &[ct, ("authorization", ing.as_str()), ("x-grafana-alerting-signature", &grafana_sig("yesterday", "{}")), ("x-grafana-alerting-signature-timestamp", "yesterday")], "{}", 401, "not Unix seconds"),
        case("grafana signature an hour old", "POST", "/v1/webhooks/grafana", &[ct, ("authorization", ing.as_str()), ("x-grafana-alerting-signature", &grafana_sig(&old_ts, "{}")), ("x-grafana-alerting-signature-timestamp", &old_ts)], "{}", 401, "signature_max_age"),
        case("incidents without token", "GET", "/v1/incidents", &[], "", 401, "read token"),
        case("breaches with the ingest token", "GET", "/v1/breaches", &[("authorization", ing.as_str())], "", 401, "not a valid read token"),
        case("approve with the read token", "POST", "/v1/incidents/inc-000001/approve", &[ct, ("authorization", read.as_str())], r#"{"person":"ada"}"#, 401, "admin token"),
        case("freeze without token", "PUT", "/v1/freezes/web", &[ct], r#"{"reason":"x"}"#, 401, "admin token"),
        case("unfreeze with the ingest token", "DELETE", "/v1/freezes/web", &[ct, ("authorization", ing.as_str())], r#"{"reason":"x"}"#, 401, "admin token"),
        case("status page without token", "GET", "/", &[], "", 401, "status page needs the read token"),
        // ---- malformed JSON and wrong shapes ----
        case("not JSON", "POST", am, &ingest, "{nope", 400, "is not valid JSON"),
        case("empty body", "POST", am, &ingest, "", 400, "is not valid JSON"),
        case("JSON null", "POST", am, &ingest, "null", 400, "does not have the expected shape"),
        case("JSON list", "POST", am, &ingest, "[]", 400, "expected shape"),
        case("truncated", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"fir"#, 400, "is not valid JSON"),
        case("trailing garbage", "POST", am, &ingest, format!("{good_am} trailing"), 400, "trailing characters"),
        case("two documents", "POST", am, &ingest, format!("{good_am}{good_am}"), 400, "trailing characters"),
        case("byte order mark", "POST", am, &ingest, format!("\u{feff}{good_am}"), 400, "not valid JSON"),
        case("NUL bytes", "POST", am, &ingest, b"{\"version\":\"4\"\x00\x00,\"alerts\":[]}", 400, "not valid JSON"),
        case("alerts is a string", "POST", am, &ingest, r#"{"version":"4","alerts":"all of them"}"#, 400, "expected shape"),
        case("label value is a number", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"firing","labels":{"alertname":1}}]}"#, 400, "expected shape"),
        case("labels is null", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"firing","labels":null}]}"#, 400, "expected shape"),
        case("version 3", "POST", am, &ingest, r#"{"version":"3","alerts":[]}"#, 400, "version"),
        case("version missing", "POST", am, &ingest, r#"{"alerts":[]}"#, 400, "version: missing"),
        case("version is a number", "POST", am, &ingest, r#"{"version":4,"alerts":[]}"#, 400, "expected shape"),
        case("unknown alert status", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"boom","labels":{}}]}"#, 400, "alerts[0].status"),
        case("fingerprint of 300 characters", "POST", am, &ingest, &long_fp, 400, "alerts[0].fingerprint"),
        case("100,000 nested arrays as alerts", "POST", am, &ingest, &deep_arrays, 400, "invalid type: sequence"),
        case("100,000 nested arrays in an ignored field", "POST", am, &ingest, &deep_ignored, 200, "\"accepted\":0"),
        case("100,000 nested arrays in a signal (untagged)", "POST", "/v1/signals", &ingest, &deep_signal, 400, "recursion limit exceeded"),
        case("100,000 nested arrays as release fields", "POST", "/v1/releases", &releases_h, format!("{{\"service\":{}}}", nest(100_000)), 400, "invalid type: sequence"),
        case("50,000 nested objects", "POST", am, &ingest, &deep_objects, 400, "missing field `alerts`"),
        case("body over max_body_bytes", "POST", am, &ingest, &huge, 413, "too large"),
        case("invalid UTF-8 in a label", "POST", am, &ingest, &invalid_utf8, 400, "not valid JSON"),
        case("lone surrogate escape", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"\ud800"}}]}"#, 400, "hex escape"),
        case("lone surrogate escape pair", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"firing","labels":{"alertname":"\ud800\u0041"}}]}"#, 400, "surrogate"),
        case("duplicate key", "POST", am, &ingest, r#"{"version":"4","version":"4","alerts":[]}"#, 400, "duplicate field"),
        // ---- absurd timestamps ----
        case("startsAt 1e300 as a number", "POST", am, &ingest, a_starts(json!(1e300)), 400, "expected shape"),
        case("startsAt \"1e300\"", "POST", am, &ingest, a_starts(json!("1e300")), 400, "alerts[0].startsAt"),
        case("startsAt negative number", "POST", am, &ingest, a_starts(json!(-1)), 400, "expected shape"),
        case("startsAt negative year", "POST", am, &ingest, a_starts(json!("-0001-01-01T00:00:00Z")), 400, "alerts[0].startsAt"),
        case("startsAt year 10000", "POST", am, &ingest, a_starts(json!("10000-01-01T00:00:00Z")), 400, "alerts[0].startsAt"),
        case("startsAt month 13", "POST", am, &ingest, a_starts(json!("2026-13-01T00:00:00Z")), 400, "alerts[0].startsAt"),
        case("startsAt without zone", "POST", am, &ingest, a_starts(json!("2026-11-24T10:00:00")), 400, "alerts[0].startsAt"),
        case("endsAt garbage", "POST", am, &ingest, r#"{"version":"4","alerts":[{"status":"resolved","labels":{"alertname":"WebHighErrorRate"},"endsAt":"tomorrow-ish"}]}"#, 400, "alerts[0].endsAt"),
        case("release deployed at the end of year 9999", "POST", "/v1/releases", &releases_h, release_body("web", "v9", "dpl_9999", json!("9999-12-31T23:59:59Z")), 400, "deployed_at: `9999-12-31T23:59:59Z` is not an RFC 3339 time"),
        case("release deployed in year 9999", "POST", "/v1/releases", &releases_h, release_body("web", "v9", "dpl_9999", json!("9999-12-30T00:00:00Z")), 400, "in the future"),
        case("release deployed_at 1e300", "POST", "/v1/releases", &releases_h, release_body("web", "v9", "dpl_n", json!(1e300)), 400, "expected shape"),
        case("release deployed_at negative", "POST", "/v1/releases", &releases_h, release_body("web", "v9", "dpl_n", json!(-86400)), 400, "expected shape"),
        case("release deployed_at tomorrow", "POST", "/v1/releases", &releases_h, release_body("web", "v9", "dpl_t", json!(ts(86_400.0))), 400, "in the future"),
        case("signal starts_at garbage", "POST", "/v1/signals", &ingest, r#"{"labels":{"alertname":"WebHighErrorRate","service":"web"},"status":"firing","starts_at":"soon"}"#, 400, "starts_at"),
        // ---- releases: values that would become step arguments ----
        case("release version $(id)", "POST", "/v1/releases", &releases_h, release_body("web", "$(id)", "dpl_a", json!(ts(-60.0))), 400, "version"),
        case("release deployment_id --force", "POST", "/v1/releases", &releases_h, release_body("web", "v1", "--force", json!(ts(-60.0))), 400, "deployment_id"),
        case("release service ../../etc", "POST", "/v1/releases", &releases_h, release_body("../../etc", "v1", "dpl_a", json!(ts(-60.0))), 400, "service"),
        case("release service with a space", "POST", "/v1/releases", &releases_h, release_body("web; rm -rf /", "v1", "dpl_a", json!(ts(-60.0))), 400, "service"),
        case("release service ${env:HOME}", "POST", "/v1/releases", &releases_h, release_body("${env:HOME}", "v1", "dpl_a", json!(ts(-60.0))), 400, "service"),
        case("release version is a template", "POST", "/v1/releases", &releases_h, release_body("web", "{{ labels.x }}", "dpl_a", json!(ts(-60.0))), 400, "version"),
        case("release deployment_id of 300 characters", "POST", "/v1/releases", &releases_h, &long_dpl, 400, "deployment_id"),
        case("release with an unknown field", "POST", "/v1/releases", &releases_h, r#"{"service":"web","version":"v1","deployment_id":"d","admin":true}"#, 400, "unknown field"),
        case("release without service", "POST", "/v1/releases", &releases_h, r#"{"version":"v1","deployment_id":"d"}"#, 400, "missing field `service`"),
        case("release version is a number", "POST", "/v1/releases", &releases_h, r#"{"service":"web","version":1.5,"deployment_id":"d"}"#, 400, "expected shape"),
        // ---- signals ----
        case("signal without labels", "POST", "/v1/signals", &ingest, r#"{"labels":{},"status":"firing"}"#, 400, "labels"),
        case("signal status on", "POST", "/v1/signals", &ingest, r#"{"labels":{"a":"b"},"status":"on"}"#, 400, "status"),
        case("signal unknown field", "POST", "/v1/signals", &ingest, r#"{"labels":{"a":"b"},"status":"firing","severity":"x"}"#, 400, "unknown field `severity`"),
        case("signal label value a number", "POST", "/v1/signals", &ingest, r#"{"labels":{"a":1},"status":"firing"}"#, 400, r#"signal body: labels.a: invalid type: integer `1`, expected a string; a signal is an object `{"labels": {NAME: VALUE, ..}"#),
        case("signal list holding a string", "POST", "/v1/signals", &ingest, r#"[{"labels":{"a":"b"},"status":"firing"},"firing"]"#, 400, "[1]: is a string, not an object"),
        case("signal body a string", "POST", "/v1/signals", &ingest, r#""firing""#, 400, "signal body is a string, not an object or a list"),
        case("signal without status", "POST", "/v1/signals", &ingest, r#"{"labels":{"a":"b"}}"#, 400, "missing field `status`; a signal is an object"),
        case("signal list with one bad", "POST", "/v1/signals", &ingest, r#"[{"labels":{"alertname":"WebHighErrorRate","service":"web"},"status":"firing"},{"labels":{},"status":"firing"}]"#, 400, "labels"),
        // ---- grafana ----
        case("grafana version 2", "POST", "/v1/webhooks/grafana", &[ct, ("authorization", ing.as_str()), ("x-grafana-alerting-signature", &grafana_sig("", gf_v2))], gf_v2, 400, "version"),
        case("grafana alerts missing", "POST", "/v1/webhooks/grafana", &[ct, ("authorization", ing.as_str()), ("x-grafana-alerting-signature", &grafana_sig("", gf_no_alerts))], gf_no_alerts, 400, "missing field `alerts`"),
        // ---- content types ----
        case("text/plain", "POST", am, &[("content-type", "text/plain"), ("authorization", ing.as_str())], &good_am, 415, "is not JSON"),
        case("form encoded", "POST", am, &[("content-type", "application/x-www-form-urlencoded"), ("authorization", ing.as_str())], "a=b", 415, "is not JSON"),
        case("multipart", "POST", "/v1/releases", &[("content-type", "multipart/form-data; boundary=x"), ("authorization", rel.as_str())], "--x--", 415, "is not JSON"),
        case("text/json", "POST", "/v1/signals", &[("content-type", "text/json"), ("authorization", ing.as_str())], "{}", 415, "is not JSON"),
        case("content type of invalid bytes", "POST", am, &[("content-type", "application/jsön"), ("authorization", ing.as_str())], &good_am, 415, "not JSON"),
        case("freeze as XML", "PUT", "/v1/freezes/web", &[("content-type", "application/xml"), ("authorization", admin.as_str())], "<reason/>", 415, "is not JSON"),
        // ---- PagerDuty signatures ----
        case("pagerduty without signature", "POST", pd, &[ct], &pd_ok, 400, "missing X-PagerDuty-Signature"),
        case("pagerduty signature not hex", "POST", pd, &[ct, ("x-pagerduty-signature", "v1=zz")], &pd_ok, 401, "does not match"),
        case("pagerduty signature v0", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_ok.replace("v1=", "v0="))], &pd_ok, 400, "has no `v1="),
        case("pagerduty forged signature", "POST", pd, &[ct, ("x-pagerduty-signature", &format!("v1={}", "0".repeat(64)))], &pd_ok, 401, "does not match"),
        case("pagerduty signed with another secret", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_other_secret)], &pd_other, 401, "does not match"),
        case("pagerduty signature replayed on another body", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_ok)], &pd_other, 401, "does not match"),
        case("pagerduty signature over a truncated body", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_ok)], &pd_ok[..pd_ok.len() - 1], 401, "does not match"),
        case("pagerduty signed, not JSON", "POST", pd, &[ct, ("x-pagerduty-signature", &fake_pagerduty::signed_webhook(PD_SECRET, pd_not_json))], pd_not_json, 400, "not valid JSON"),
        case("pagerduty signed, no event.id", "POST", pd, &[ct, ("x-pagerduty-signature", &fake_pagerduty::signed_webhook(PD_SECRET, &pd_no_id))], &pd_no_id, 400, "event.id"),
        case("pagerduty unknown event type", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_ok), ("x-webhook-id", "wh-replay-1")], &pd_ok, 202, "\"duplicate\":false"),
        case("pagerduty delivery replayed", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_ok), ("x-webhook-id", "wh-replay-1")], &pd_ok, 202, "\"duplicate\":true"),
        case("pagerduty delivery replayed under a new X-Webhook-Id", "POST", pd, &[ct, ("x-pagerduty-signature", &pd_sig_ok), ("x-webhook-id", "wh-replay-2")], &pd_ok, 202, "\"duplicate\":true"),
        case("pagerduty signed, 100,000 nested arrays", "POST", pd, &[ct, ("x-pagerduty-signature", &deep_pd_sig)], &deep_pd, 400, "recursion limit exceeded"),
        case("pagerduty ping", "POST", pd, &[ct, ("x-pagerduty-signature", &fake_pagerduty::signed_webhook(PD_SECRET, &pd_ping))], &pd_ping, 202, "pagey.ping"),
        // ---- votes and freezes ----
        case("approve an unknown incident", "POST", "/v1/incidents/inc-999999/approve", &admin_h, r#"{"person":"ada"}"#, 404, "inc-999999"),
        case("approve with an empty person", "POST", "/v1/incidents/inc-000001/approve", &admin_h, r#"{"person":"  "}"#, 400, "person"),
        case("approve with an unknown field", "POST", "/v1/incidents/inc-000001/approve", &admin_h, r#"{"person":"ada","role":"founder"}"#, 400, "unknown field"),
        case("reject with a non-JSON body", "POST", "/v1/incidents/inc-000001/reject", &admin_h, "person=ada", 400, "not valid JSON"),
        case("approve through ..", "POST", "/v1/incidents/../incidents/inc-000001/approve", &admin_h, r#"{"person":"ada"}"#, 404, "no such endpoint"),
        case("freeze with an empty reason", "PUT", "/v1/freezes/web", &admin_h, r#"{"reason":""}"#, 400, "reason"),
        case("freeze with a reason of the wrong type", "PUT", "/v1/freezes/web", &admin_h, r#"{"reason":["a"]}"#, 400, "expected shape"),
        case("unfreeze what is not frozen", "DELETE", "/v1/freezes/web", &admin_h, r#"{"reason":"try"}"#, 404, "web"),
        // ---- methods ----
        case("PUT /healthz", "PUT", "/healthz", &[], "", 405, "method not allowed"),
        case("GET the webhook", "GET", am, &[], "", 405, "method not allowed"),
        case("DELETE /v1/incidents", "DELETE", "/v1/incidents", &read_h, "", 405, "method not allowed"),
        case("PATCH /v1/releases", "PATCH", "/v1/releases", &releases_h, "{}", 405, "method not allowed"),
        case("TRACE /metrics", "TRACE", "/metrics", &[], "", 405, "method not allowed"),
        case("made-up method", "BREW", "/v1/incidents", &read_h, "", 405, "method not allowed"),
        // ---- paths and query strings ----
        case("unknown path", "GET", "/v2/alerts", &[], "", 404, "no such endpoint"),
        case("dot-dot to /etc/passwd", "GET", "/../../etc/passwd", &[], "", 404, "no such endpoint"),
        case("unknown incident", "GET", "/v1/incidents/inc-000001", &read_h, "", 404, "no incident inc-000001"),
        case("encoded dot-dot incident", "GET", "/v1/incidents/%2e%2e%2f%2e%2e%2fetc%2fpasswd", &read_h, "", 404, "no incident ../../etc/passwd"),
        case("invalid UTF-8 path segment", "GET", "/v1/releases/%ff%fe", &read_h, "", 400, "Invalid URL"),
        case("raw invalid UTF-8 in path", "GET", b"/v1/releases/\xff\xfe".as_slice(), &read_h, "", 400, HTTP_LAYER),
        case("request line with a space in the path", "GET", "/v1/incidents/a b", &read_h, "", 400, HTTP_LAYER),
        case("report of an unknown incident", "GET", "/v1/incidents/nope/report?format=pdf", &read_h, "", 404, "no incident nope"),
        case("incidents?state=bogus", "GET", "/v1/incidents?state=bogus", &read_h, "", 400, "state `bogus` is not one of"),
        case("incidents?state twice", "GET", "/v1/incidents?state=a&state=b", &read_h, "", 400, "duplicate field"),
        case("incidents?state=%ff", "GET", "/v1/incidents?state=%ff", &read_h, "", 400, "is not one of"),
        case("incidents?state=%00", "GET", "/v1/incidents?state=%00", &read_h, "", 400, "is not one of"),
        case("incident id of 10,000 characters", "GET", huge_path.as_bytes(), &read_h, "", 404, "no incident"),
        // ---- valid but hostile: accepted, matches no rule, changes nothing ----
        case("labels built for template injection", "POST", am, &ingest, am_body(injection_labels, json!(ts(-1.0)), "fp-inject"), 200, "\"accepted\":1"),
        case("startsAt year 0 on an unmatched alert", "POST", am, &ingest, am_body(json!({"alertname": "NotARule"}), json!("0000-01-01T00:00:00Z"), "fp-y0"), 200, "\"accepted\":1"),
        case("startsAt year 9999 on an unmatched alert", "POST", am, &ingest, am_body(json!({"alertname": "NotARule"}), json!("9999-12-30T00:00:00Z"), "fp-y9999"), 200, "\"accepted\":1"),
        case("startsAt past jiff's range", "POST", am, &ingest, a_starts(json!("9999-12-31T23:59:59.999999999Z")), 400, "alerts[0].startsAt"),
        case("unknown fields are ignored", "POST", am, &ingest, r#"{"version":"4","alerts":[],"routeLabels":{"x":"y"},"notification_reason":7,"__proto__":{"admin":true}}"#, 200, "\"accepted\":0"),
        case("freeze of an unknown service is a read", "GET", "/v1/freezes/%00%0a..", &read_h, "", 200, "\"frozen\":false"),
    ]
}

fn assert_alive(d: &mut Daemon, after: &str) {
    if let Ok(Some(status)) = d.child.try_wait() {
        panic!(
            "the daemon exited ({status}) after {after}\nstderr:\n{}",
            d.stderr()
        );
    }
    let a = raw(&d.base, "GET", b"/healthz", &[], b"");
    assert_eq!(a.status, 200, "healthz after {after}: {:?}", a.json());
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn hostile_and_broken_requests_are_refused_and_change_nothing() {
    let config = format!(
        "tokens: {{ingest: \"{INGEST}\", releases: \"{RELEASES}\", read: \"{READ}\", admin: \"{ADMIN}\"}}\n\
         pagerduty: {{webhook_secrets: [\"{PD_SECRET}\"]}}\n\
         grafana: {{webhook_secret: \"{GRAFANA_SECRET}\"}}\n\
         github: {{webhook_secret: \"{GITHUB_SECRET}\"}}\n\
         gitlab: {{webhook_token: \"{GITLAB_TOKEN}\"}}\n\
         flux: {{webhook_secret: \"{FLUX_SECRET}\"}}\n\
         people:\n  - {{id: ada, roles: [founder]}}\n"
    );
    let rules = format!(
        r#"rules:
  - name: web-errors
    match:
      - alertname="{ALERT}"
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach:
      sustained: 10m
    approval: none
    steps:
      - name: echo
        run: [/bin/echo, "{{{{ labels.service }}}}", "{{{{ release.previous.deployment_id }}}}"]
"#
    );
    let setup = Setup::new(&config, &rules);
    let mut d = setup.start();
    let cases = catalogue();
    assert!(cases.len() >= 50, "only {} cases", cases.len());

    let mut failures = Vec::new();
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = raw(&d.base, c.method, &c.path, &headers, &c.body);
        let v = a.json();
        let text = String::from_utf8_lossy(&a.body).to_string();
        let mut problems = Vec::new();
        if a.status != c.status {
            problems.push(format!("status {} (want {})", a.status, c.status));
        }
        if c.expect == HTTP_LAYER {
            // Only the status is ours to check.
        } else if a.status >= 400 {
            let ct = a.header("content-type").unwrap_or("");
            if !ct.starts_with("application/json") {
                problems.push(format!("content-type {ct:?}"));
            }
            match (&v["error"], v.as_object().map(|o| o.contains_key("detail"))) {
                (Value::String(e), Some(true)) => {
                    if !e.contains(c.expect) {
                        problems.push(format!("error {e:?} lacks {:?}", c.expect));
                    }
                }
                _ => problems.push("not {\"error\": string, \"detail\": ..}".to_string()),
            }
        } else if !text.contains(c.expect) {
            problems.push(format!("body lacks {:?}", c.expect));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({} {}): {}; body {}",
                c.name,
                c.method,
                String::from_utf8_lossy(&c.path)
                    .chars()
                    .take(80)
                    .collect::<String>(),
                problems.join(", "),
                text.chars().take(300).collect::<String>()
            ));
        }
        assert_alive(&mut d, c.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing changed.
    let read = bearer(READ);
    let read_h = [("authorization", read.as_str())];
    for path in [
        "/v1/breaches",
        "/v1/incidents",
        "/v1/releases/web",
        "/v1/releases/..",
        "/v1/freezes",
    ] {
        let a = raw(&d.base, "GET", path.as_bytes(), &read_h, b"");
        assert_eq!(a.status, 200, "{path}: {:?}", a.json());
        assert!(
            items(&a.json()).is_empty(),
            "{path} is not empty: {}",
            a.json()
        );
    }
    let a = raw(&d.base, "GET", b"/v1/freezes/web", &read_h, b"");
    assert_eq!(a.status, 200, "web is not frozen: {:?}", a.json());

    // The refusals are counted.
    let metrics =
        String::from_utf8_lossy(&raw(&d.base, "GET", b"/metrics", &[], b"").body).to_string();
    let count = |source: &str, reason: &str| {
        metric(
            &metrics,
            "rollbackd_ingest_rejected_total",
            &[("source", source), ("reason", reason)],
        )
    };
    let want = |source: &str, reason: &str| -> usize {
        cases
            .iter()
            .filter(|c| c.status == if reason == "auth" { 401 } else { 400 })
            .filter(|c| {
                let p = String::from_utf8_lossy(&c.path);
                let src = match p.as_ref() {
                    "/v1/webhooks/alertmanager" => "alertmanager",
                    "/v1/webhooks/grafana" => "grafana",
                    "/v1/signals" => "signal",
                    "/v1/releases" => "release",
                    "/v1/webhooks/pagerduty" => "pagerduty",
                    "/v1/webhooks/github" => "github",
                    "/v1/webhooks/gitlab" => "gitlab",
                    "/v1/webhooks/flux" => "flux",
                    "/v1/webhooks/argocd" => "argocd",
                    _ => "",
                };
                src == source
            })
            // PagerDuty's 400s for a missing or malformed signature count as `auth`.
            .filter(|c| {
                source != "pagerduty"
                    || !(c.expect.contains("X-PagerDuty-Signature") || c.expect.contains("v1="))
            })
            // GitHub's and Flux's 400s for a missing or malformed signature count as `auth`.
            .filter(|c| {
                !(c.status == 400
                    && (c.expect.contains("X-Hub-Signature-256")
                        || c.expect.contains("X-Signature")))
            })
            .count()
    };
    for (source, reason) in [
        ("alertmanager", "malformed"),
        ("alertmanager", "auth"),
        ("release", "malformed"),
        ("release", "auth"),
        ("signal", "malformed"),
        ("signal", "auth"),
        ("grafana", "malformed"),
        ("grafana", "auth"),
        ("pagerduty", "malformed"),
        ("github", "malformed"),
        ("gitlab", "malformed"),
        ("gitlab", "auth"),
        ("flux", "malformed"),
        ("argocd", "malformed"),
        ("argocd", "auth"),
    ] {
        let got = count(source, reason);
        let want = want(source, reason) as f64;
        assert_eq!(
            got, want,
            "rollbackd_ingest_rejected_total{{source={source},reason={reason}}}:\n{metrics}"
        );
    }
    // PagerDuty signature refusals: 3 malformed/missing (400) and 4 mismatches (401).
    assert_eq!(count("pagerduty", "auth"), 7.0, "{metrics}");
    // GitHub: 2 missing/malformed (400) and 1 mismatch; Flux: 1 and 1.
    assert_eq!(count("github", "auth"), 3.0, "{metrics}");
    assert_eq!(count("flux", "auth"), 2.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "rollbackd_breaches_open", &[]),
        0.0,
        "{metrics}"
    );
}
