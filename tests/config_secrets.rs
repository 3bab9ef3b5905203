//! A config error names the key and the secret reference, never the value the reference
//! resolves to: at start (exit 64), on `POST /-/reload` (the 400 body) and in the daemon's log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SECRET: &str = "s3cr3t-value-123";
const ADMIN: &str = "admin-token-0123456789abcdefghij";

fn start_with_env(config: &str) -> std::process::Output {
    let setup = Setup::new(config, "rules: []\n");
    Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(setup.path().join("rollbackd.yaml"))
        .env("ROLLBACKD_TEST_SECRET", SECRET)
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .expect("run rollbackd")
}

#[test]
fn a_bad_secret_at_start_is_named_never_shown() {
    // (config, the key named, whether the message quotes the reference: it does where the
    // value itself is what does not fit)
    for (config, key, quoted) in [
        (
            "pagerduty: { webhook_secrets: \"${env:ROLLBACKD_TEST_SECRET}\" }\n",
            "pagerduty.webhook_secrets",
            true,
        ),
        (
            "limits: { ingest_burst: \"${env:ROLLBACKD_TEST_SECRET}\" }\n",
            "limits.ingest_burst",
            true,
        ),
        (
            "tokens: { admin: [\"${env:ROLLBACKD_TEST_SECRET}\"] }\n",
            "tokens.admin",
            false,
        ),
    ] {
        let out = start_with_env(config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{config}: {stderr}");
        assert!(stderr.contains(key), "{config}: {stderr}");
        assert!(
            !quoted || stderr.contains("${env:ROLLBACKD_TEST_SECRET}"),
            "{config}: {stderr}"
        );
        assert!(!stderr.contains(SECRET), "{config}: {stderr}");
        assert!(out.stdout.is_empty(), "did not start listening");
    }
}

#[test]
fn a_bad_secret_on_reload_is_named_never_shown() {
    let setup = Setup::new(&format!("tokens: {{admin: \"{ADMIN}\"}}\n"), "rules: []\n");
    let secret_file = setup.path().join("pd-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let d = setup.start();
    let cfg = setup.path().join("rollbackd.yaml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let reference = format!("${{file:{}}}", secret_file.display());
    std::fs::write(
        &cfg,
        format!("{good}pagerduty: {{ webhook_secrets: \"{reference}\" }}\n"),
    )
    .unwrap();

    let resp = client()
        .post(d.url("/-/reload"))
        .bearer_auth(ADMIN)
        .send()
        .expect("POST /-/reload");
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.text().unwrap_or_default();
    assert!(body.contains("pagerduty.webhook_secrets"), "{body}");
    assert!(body.contains(&reference), "{body}");
    assert!(!body.contains(SECRET), "{body}");

    // SIGHUP takes the same path; its refusal goes to the log.
    let _ = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status();
    let log = wait_for(Duration::from_secs(5), || {
        let log = d.stderr();
        (log.matches("reload refused").count() >= 2).then_some(log)
    })
    .unwrap_or_else(|| panic!("no refused reloads in the log:\n{}", d.stderr()));
    assert!(log.contains("pagerduty.webhook_secrets"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    // The last good config stays active.
    let (s, v) = get(&d.url("/healthz"), None);
    assert_eq!(s, 200, "{v}");
}
