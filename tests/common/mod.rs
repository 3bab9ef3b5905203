//! Shared harness for black-box tests: the real `rollbackd` binary on a loopback port, in its own
//! temporary directory, talked to over real HTTP.
#![allow(dead_code)]

pub mod browser;
pub mod procs;
pub mod receiver;
pub mod rng;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rollbackd");

/// One rule that acts on `WebErrors` sustained for an hour, with a step that does nothing.
pub const WEB_ERRORS_RULE: &str = r#"rules:
  - name: web-errors
    match: ['alertname="WebErrors"']
    group_by: [service]
    service: "{{ labels.service }}"
    breach: { sustained: 1h }
    approval: none
    steps:
      - { name: noop, run: [/bin/true] }
"#;

/// The binary the daemon tests start: [`BIN`], or `ROLLBACKD_TEST_BIN` when set (to run a test
/// against another build, e.g. to see it fail on the binary from before a fix).
pub fn bin() -> String {
    std::env::var("ROLLBACKD_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// A running daemon. Dropping it kills the process (SIGKILL).
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
    pub stderr_log: PathBuf,
}

pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// A temp dir with `rules/` holding `rules_yaml` and `rollbackd.yaml` holding `config_yaml`
    /// (listen, data_dir and rules_dir are filled in).
    pub fn new(config_yaml: &str, rules_yaml: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("rules")).expect("mkdir rules");
        std::fs::write(dir.path().join("rules/rules.yaml"), rules_yaml).expect("write rules");
        let cfg = format!(
            "listen: 127.0.0.1:0\ndata_dir: {}\nrules_dir: {}\n{}",
            dir.path().join("data").display(),
            dir.path().join("rules").display(),
            config_yaml
        );
        std::fs::write(dir.path().join("rollbackd.yaml"), cfg).expect("write config");
        Setup { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the daemon and waits until it prints its address.
    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    pub fn start_with(&self, extra: &[&str]) -> Daemon {
        self.start_with_env(extra, &[])
    }

    /// [`Setup::start_with`], the daemon's environment having `env` in addition.
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let n = std::fs::read_dir(self.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let stderr_log = self.path().join(format!("stderr-{n}.log"));
        let err = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--config")
            .arg(self.path().join("rollbackd.yaml"))
            .args(extra)
            .env("ROLLBACKD_LOG", "info,openraft=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn rollbackd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read first line");
        let base = line
            .trim()
            .strip_prefix("rollbackd listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; stderr: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            })
            .to_string();
        Daemon {
            child,
            base,
            dir: self.path().to_path_buf(),
            stderr_log,
        }
    }
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait")
    }

    /// SIGTERM, and the process must exit 0; else panics with its status and its log.
    pub fn stop_cleanly(self) {
        let log = self.stderr_log.clone();
        let status = self.terminate();
        assert!(
            status.success(),
            "{status:?} after SIGTERM; stderr:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The value of `series` (a metric name with its labels, as `/metrics` writes them), if the
    /// daemon reports it.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// POSTs JSON, returns (status, body as JSON or Null).
pub fn post(url: &str, token: Option<&str>, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let mut req = client().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

/// POSTs `body` as `application/json` with `headers`, returns (status, body as JSON or Null).
pub fn post_with(
    d: &Daemon,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .post(d.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, as GitHub and Flux sign a body.
pub fn sha256_signature(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(serde_json::Value::Null))
}

/// Posts release `id` (version `v-<id>`) of `service` in production; expects 201.
pub fn post_release(d: &Daemon, service: &str, id: &str, deployed_at: &str) {
    let (s, v) = post(
        &d.url("/v1/releases"),
        None,
        &serde_json::json!({"service": service, "environment": "production",
                            "version": format!("v-{id}"), "deployment_id": id,
                            "deployed_at": deployed_at}),
    );
    assert_eq!(s, 201, "release {id}: {v}");
}

/// Posts releases `<service>-v1` and `<service>-v2` of `service` in production, 10 and 5
/// minutes ago; expects 201 each.
pub fn two_releases(d: &Daemon, service: &str) {
    for (v, ago) in [("v1", -600.0), ("v2", -300.0)] {
        let (s, b) = post(
            &d.url("/v1/releases"),
            None,
            &serde_json::json!({"service": service, "environment": "production", "version": v,
                                "deployment_id": format!("{service}-{v}"), "deployed_at": ts(ago)}),
        );
        assert_eq!(s, 201, "{b}");
    }
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_every(timeout, Duration::from_millis(20), f)
}

/// Polls `f` every `every` until it returns Some or `timeout` passes.
pub fn wait_every<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A file of this repository (docs, rules), as text.
pub fn repo_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `PUT /v1/freezes/{service}` with `reason` (admin `token`); the status.
pub fn put_freeze(d: &Daemon, service: &str, reason: &str, token: Option<&str>) -> u16 {
    let mut req = client()
        .put(d.url(&format!("/v1/freezes/{service}")))
        .json(&serde_json::json!({ "reason": reason }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().expect("freeze").status().as_u16()
}

/// The id of the newest incident in `state` (read with `token`), once there is one; `None` if
/// none is in that state within `timeout`.
pub fn first_incident(
    d: &Daemon,
    state: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Option<String> {
    wait_for(timeout, || {
        let (_, v) = get(&d.url(&format!("/v1/incidents?state={state}")), token);
        v["items"][0]["id"].as_str().map(String::from)
    })
}

/// RFC 3339 UTC `secs` seconds from now (negative: in the past).
pub fn ts(secs: f64) -> String {
    let now = jiff::Timestamp::now();
    let d = jiff::SignedDuration::from_secs_f64(secs);
    now.checked_add(d).expect("time").to_string()
}

/// An Alertmanager v4 webhook body with one alert.
pub fn am_alert(
    status: &str,
    labels: serde_json::Value,
    starts_at: &str,
    fingerprint: &str,
) -> serde_json::Value {
    let ends_at = if status == "firing" {
        "0001-01-01T00:00:00Z".to_string()
    } else {
        ts(0.0)
    };
    serde_json::json!({
        "receiver": "rollbackd", "status": status, "version": "4",
        "groupKey": "{}:{}", "truncatedAlerts": 0, "externalURL": "http://am",
        "groupLabels": {}, "commonLabels": labels, "commonAnnotations": {},
        "alerts": [{
            "status": status, "labels": labels, "annotations": {},
            "startsAt": starts_at, "endsAt": ends_at,
            "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint
        }]
    })
}

/// Posts the release pair `dpl-1` → `dpl-2` of `service` and a firing alert with `labels` that
/// began 5 s ago (every rule here acts after 1 s).
pub fn release_pair_and_alert(
    d: &Daemon,
    service: &str,
    labels: serde_json::Value,
    fingerprint: &str,
) {
    for (v, dep, ago) in [("v1", "dpl-1", -600.0), ("v2", "dpl-2", -300.0)] {
        let (s, b) = post(
            &d.url("/v1/releases"),
            None,
            &serde_json::json!({"service": service, "version": v, "deployment_id": dep, "deployed_at": ts(ago)}),
        );
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = post(
        &d.url("/v1/webhooks/alertmanager"),
        None,
        &am_alert("firing", labels, &ts(-5.0), fingerprint),
    );
    assert_eq!(s, 200, "{b}");
}
