//! The configuration the tool pages (`docs/github.md`, `gitlab.md`, `flux.md`, `argocd.md`) show
//! is the configuration that works: each snippet is a file under `docs/snippets/`, shown verbatim
//! on its page; the rollbackd snippets start the real daemon, which then records each tool's
//! example delivery; the Flux and Argo CD manifests are YAML of the expected kinds and keys; and
//! the Argo CD template, rendered for a sample Application, is the body the daemon records.
//!
//! Rendering: Argo CD renders templates with Go's text/template and the Sprig functions. The
//! template uses three forms only, evaluated here the way text/template does on the Application
//! as a map: `.a.b.c` (a path; a missing key prints `<no value>`), `(last .list).field`, and
//! `index .map "key"`.

mod common;

use common::*;
use serde_json::{Value, json};

fn snippet(name: &str) -> String {
    repo_file(&format!("docs/snippets/{name}"))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The documents of a `---`-separated YAML stream.
fn yaml_docs(text: &str) -> Vec<Value> {
    text.split("\n---\n").map(yaml).collect()
}

#[test]
fn every_snippet_is_shown_on_its_page() {
    for (page, names) in [
        ("github.md", &["rollbackd-github.yaml"][..]),
        ("gitlab.md", &["rollbackd-gitlab.yaml"]),
        ("flux.md", &["rollbackd-flux.yaml", "flux.yaml"]),
        (
            "argocd.md",
            &[
                "rollbackd-argocd.yaml",
                "argocd-notifications-cm.yaml",
                "argocd-notifications-secret.yaml",
                "argocd-application.yaml",
            ],
        ),
    ] {
        let doc = repo_file(&format!("docs/{page}"));
        for n in names {
            let text = snippet(n);
            assert!(
                doc.contains(&format!("# docs/snippets/{n}\n{text}```")),
                "docs/{page} does not show docs/snippets/{n} verbatim"
            );
        }
    }
}

/// Evaluates one `{{ ... }}` action of the template on `app` (bound as `.app`).
fn action(expr: &str, root: &Value) -> String {
    let path = |p: &str| -> Value {
        let mut v = root;
        for k in p.trim().trim_start_matches('.').split('.') {
            v = v.get(k).unwrap_or(&Value::Null);
        }
        v.clone()
    };
    let print = |v: Value| match v {
        Value::Null => "<no value>".to_string(),
        Value::String(s) => s,
        other => other.to_string(),
    };
    let e = expr.trim();
    if let Some(rest) = e.strip_prefix("(last ") {
        let (list, field) = rest.split_once(").").expect("(last .list).field");
        let last = path(list).as_array().and_then(|a| a.last().cloned());
        return print(last.map_or(Value::Null, |l| l[field].clone()));
    }
    if let Some(rest) = e.strip_prefix("index ") {
        let (map, key) = rest.split_once(' ').expect("index .map \"key\"");
        return print(path(map)[key.trim().trim_matches('"')].clone());
    }
    assert!(
        e.starts_with('.') && !e.contains(' '),
        "an action this rendering does not know: {e}"
    );
    print(path(e))
}

fn render(template: &str, root: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let j = rest[i..].find("}}").expect("closed action") + i;
        out.push_str(&action(&rest[i + 2..j], root));
        rest = &rest[j + 2..];
    }
    out.push_str(rest);
    out
}

/// A sample Application as Argo CD holds it after a sync, with the annotations of the snippet.
fn sample_app() -> Value {
    let app = yaml(&snippet("argocd-application.yaml"));
    json!({"app": {
        "metadata": app["metadata"],
        "spec": {"project": "default"},
        "status": {
            "sync": {"status": "Synced", "revision": "53e28ff20cc530b9ada2173fbbd64d48338583ba"},
            "health": {"status": "Healthy"},
            "history": [
                {"id": 11, "revision": "a0b1c2d3e4f5a0b1c2d3e4f5a0b1c2d3e4f5a0b1", "deployedAt": "2024-05-13T16:40:02Z"},
                {"id": 12, "revision": "53e28ff20cc530b9ada2173fbbd64d48338583ba", "deployedAt": "2024-05-14T09:02:31Z"}
            ],
            "operationState": {"phase": "Succeeded", "finishedAt": "2024-05-14T09:02:31Z",
                               "syncResult": {"revision": "53e28ff20cc530b9ada2173fbbd64d48338583ba"}}
        }
    }})
}

#[test]
fn the_argocd_configmap_secret_and_annotation_fit_together() {
    let cm = yaml(&snippet("argocd-notifications-cm.yaml"));
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-notifications-cm");
    let data = &cm["data"];
    let service = yaml(data["service.webhook.rollbackd"].as_str().expect("service"));
    assert!(
        service["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://"))
    );
    let auth = service["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["name"] == "Authorization"))
        .and_then(|h| h["value"].as_str())
        .expect("an Authorization header");
    let key = auth.strip_prefix("Bearer $").expect("Bearer $<secret key>");
    let secret = yaml(&snippet("argocd-notifications-secret.yaml"));
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "argocd-notifications-secret");
    assert!(secret["stringData"].get(key).is_some(), "no key {key}");

    let template = yaml(
        data["template.rollbackd-release"]
            .as_str()
            .expect("template"),
    );
    let hook = &template["webhook"]["rollbackd"];
    assert_eq!(hook["method"], "POST");
    assert_eq!(hook["path"], "/v1/webhooks/argocd");
    let trigger = yaml(
        data["trigger.on-deployed-rollbackd"]
            .as_str()
            .expect("trigger"),
    );
    let t = &trigger[0];
    assert_eq!(t["send"], json!(["rollbackd-release"]));
    let when = t["when"].as_str().unwrap_or_default();
    assert!(
        when.contains("'Succeeded'") && when.contains("'Healthy'"),
        "{when}"
    );
    assert!(t["oncePer"].is_string());

    let app = yaml(&snippet("argocd-application.yaml"));
    let annotations = app["metadata"]["annotations"]
        .as_object()
        .expect("annotations");
    let sub = annotations
        .keys()
        .find_map(|k| k.strip_prefix("notifications.argoproj.io/subscribe."))
        .expect("a subscription annotation");
    let (trig, svc) = sub.split_once('.').expect("<trigger>.<service>");
    assert!(data.get(format!("trigger.{trig}")).is_some(), "{trig}");
    assert!(
        data.get(format!("service.webhook.{svc}")).is_some(),
        "{svc}"
    );

    let body = render(hook["body"].as_str().expect("body"), &sample_app());
    let rendered: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let example: Value =
        serde_json::from_str(&repo_file("src/ingest/testdata/argocd-app-deployed.json")).unwrap();
    assert_eq!(
        rendered, example,
        "the testdata is what the template renders"
    );
}

#[test]
fn the_flux_manifests_have_the_kinds_and_keys_flux_reads() {
    let docs = yaml_docs(&snippet("flux.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let secret = kind("Secret");
    assert!(
        secret["stringData"]["token"].is_string(),
        "generic-hmac signs with `token`"
    );
    let provider = kind("Provider");
    assert_eq!(
        provider["apiVersion"],
        "notification.toolkit.fluxcd.io/v1beta3"
    );
    assert_eq!(provider["spec"]["type"], "generic-hmac");
    assert_eq!(
        provider["spec"]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    assert!(
        provider["spec"]["address"]
            .as_str()
            .is_some_and(|a| a.ends_with("/v1/webhooks/flux"))
    );
    let alert = kind("Alert");
    assert_eq!(
        alert["spec"]["providerRef"]["name"],
        provider["metadata"]["name"]
    );
    assert_eq!(alert["spec"]["eventSeverity"], "info");
    let kinds: Vec<&Value> = alert["spec"]["eventSources"]
        .as_array()
        .expect("eventSources")
        .iter()
        .map(|s| &s["kind"])
        .collect();
    assert_eq!(kinds, [&json!("Kustomization"), &json!("HelmRelease")]);
}

#[test]
fn the_rollbackd_snippets_start_the_daemon_and_record_each_tool() {
    let config: String = [
        "rollbackd-github.yaml",
        "rollbackd-gitlab.yaml",
        "rollbackd-flux.yaml",
        "rollbackd-argocd.yaml",
    ]
    .iter()
    .map(|n| snippet(n))
    .collect();
    let (gh, gl, fx, rel) = (
        "gh-secret-0123456789",
        "gl-token-0123456789",
        "fx-secret-0123456789",
        "releases-0123456789abcdef",
    );
    let s = Setup::new(&config, WEB_ERRORS_RULE);
    let d = s.start_with_env(
        &[],
        &[
            ("GITHUB_WEBHOOK_SECRET", gh),
            ("GITLAB_WEBHOOK_TOKEN", gl),
            ("FLUX_WEBHOOK_SECRET", fx),
            ("ROLLBACKD_INGEST_TOKEN", "ingest-0123456789abcdef"),
            ("ROLLBACKD_RELEASES_TOKEN", rel),
        ],
    );
    let data = |n: &str| repo_file(&format!("src/ingest/testdata/{n}"));
    let body = data("github-deployment_status.json");
    let sig = sha256_signature(gh, &body);
    let headers = [
        ("x-github-event", "deployment_status"),
        ("x-hub-signature-256", sig.as_str()),
    ];
    assert_eq!(post_with(&d, "/v1/webhooks/github", &headers, &body).0, 201);
    let body = data("gitlab-deployment.json");
    assert_eq!(
        post_with(&d, "/v1/webhooks/gitlab", &[("x-gitlab-token", gl)], &body).0,
        201
    );
    let body = data("flux-helmrelease-upgraded.json");
    let sig = sha256_signature(fx, &body);
    let (st, v) = post_with(&d, "/v1/webhooks/flux", &[("x-signature", &sig)], &body);
    assert_eq!(
        (st, &v["release"]["service"]),
        (201, &json!("podinfo")),
        "{v}"
    );
    let body = render(
        yaml(
            yaml(&snippet("argocd-notifications-cm.yaml"))["data"]["template.rollbackd-release"]
                .as_str()
                .expect("template"),
        )["webhook"]["rollbackd"]["body"]
            .as_str()
            .expect("body"),
        &sample_app(),
    );
    let auth = format!("Bearer {rel}");
    let (st, v) = post_with(
        &d,
        "/v1/webhooks/argocd",
        &[("authorization", &auth)],
        &body,
    );
    assert_eq!(
        (st, &v["release"]["deployment_id"]),
        (201, &json!("12")),
        "{v}"
    );
}
