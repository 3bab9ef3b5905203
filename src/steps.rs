//! Performs one rollback step: a child process from an argv (never a shell), or an HTTP request.
//! Secret references (`${env:..}`, `${file:..}`) are expanded here, at the last moment, and never
//! written back into a record or a log: the value of every reference a step expanded is replaced
//! by the reference itself in the step's captured output and error before the result leaves here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::config::{conceal, resolve_noting};
use crate::engine::StepResult;
use crate::rules::{Body, Redirects};

/// Runs `argv` with a timeout; stdout and stderr are captured and cut to `max_output` bytes.
pub async fn run_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    dir: Option<&PathBuf>,
    timeout: Duration,
    max_output: usize,
) -> StepResult {
    let started = Instant::now();
    let fail = |error: String| StepResult {
        ok: false,
        exit_code: None,
        output: String::new(),
        error: Some(error),
        duration_ms: started.elapsed().as_millis() as u64,
        permanent: false,
    };
    let Some((program, args)) = argv.split_first() else {
        return fail("empty command".to_string());
    };
    let mut secrets = Vec::new();
    let mut resolved = Vec::with_capacity(args.len());
    for a in args {
        match resolve_noting(a, &mut secrets) {
            Ok(v) => resolved.push(v),
            Err(e) => return unresolved(fail(e)),
        }
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&resolved)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Its own process group, so a timeout kills everything the step started, not just its head.
    #[cfg(unix)]
    cmd.process_group(0);
    for (k, v) in env {
        match resolve_noting(v, &mut secrets) {
            Ok(v) => {
                cmd.env(k, v);
            }
            Err(e) => return unresolved(fail(format!("env {k}: {e}"))),
        }
    }
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return redacted(fail(format!("cannot start `{program}`: {e}")), &secrets),
    };
    let pid = child.id();
    let out = tokio::spawn(read_capped(child.stdout.take(), max_output));
    let err = tokio::spawn(read_capped(child.stderr.take(), max_output));
    let status = tokio::select! {
        s = child.wait() => Some(s),
        _ = tokio::time::sleep(timeout) => None,
    };
    let status = match status {
        None => {
            // The leader is not reaped yet, so its group id cannot have been reused.
            kill_group(pid);
            let _ = child.wait().await;
            out.abort();
            err.abort();
            return fail(format!(
                "timed out after {}; the process group was killed",
                humantime::format_duration(timeout)
            ));
        }
        Some(Err(e)) => {
            return redacted(fail(format!("waiting for `{program}`: {e}")), &secrets);
        }
        Some(Ok(s)) => s,
    };
    // A background child may still hold the pipes open: do not wait for it for long.
    let grace = Duration::from_secs(2);
    let mut text = match tokio::time::timeout(grace, out).await {
        Ok(Ok(b)) => hide_secrets(&b, max_output, &secrets),
        _ => "[output cut: a background process kept stdout open]".to_string(),
    };
    let err = match tokio::time::timeout(grace, err).await {
        Ok(Ok(b)) => hide_secrets(&b, max_output, &secrets),
        _ => String::new(),
    };
    if !err.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&err);
    }
    let code = status.code();
    StepResult {
        ok: status.success(),
        exit_code: code,
        output: truncate(&text, max_output),
        error: (!status.success()).then(|| match code {
            Some(c) => format!("exited with status {c}"),
            None => "killed by a signal".to_string(),
        }),
        duration_ms: started.elapsed().as_millis() as u64,
        permanent: false,
    }
}

/// A result whose secret could not be resolved: trying again would not find it either.
fn unresolved(mut r: StepResult) -> StepResult {
    r.permanent = true;
    r
}

/// `r` with every value of `secrets` replaced by its reference.
pub fn redacted(mut r: StepResult, secrets: &[(String, String)]) -> StepResult {
    if !secrets.is_empty() {
        r.output = conceal(std::mem::take(&mut r.output), secrets);
        r.error = r.error.map(|e| conceal(e, secrets));
    }
    r
}

/// Captured bytes as text with every expanded secret value replaced by its reference. When the
/// capture was cut (more than `max` bytes), a value cut with it is hidden too: a tail that is the
/// start of a value is replaced by the reference.
fn hide_secrets(bytes: &[u8], max: usize, secrets: &[(String, String)]) -> String {
    let mut text = conceal(String::from_utf8_lossy(bytes).into_owned(), secrets);
    if bytes.len() > max {
        for (reference, value) in secrets {
            let cut = (1..value.len())
                .rev()
                .filter(|&n| value.is_char_boundary(n))
                .find(|&n| text.ends_with(&value[..n]));
            if let Some(n) = cut {
                text.truncate(text.len() - n);
                text.push_str(reference);
            }
        }
    }
    text
}

/// Reads everything, keeping the first `max + 1` bytes (so truncation can say so) and discarding
/// the rest, so a chatty step never blocks on a full pipe.
async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>, max: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = (max + 1).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// SIGKILL to the step's whole process group.
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok())
        && pid > 0
    {
        // SAFETY: kill(2) with a negative pid signals the process group the step leads; it
        // touches no memory of ours. ESRCH (already gone) is fine.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

pub struct HttpStep<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub body: &'a Body,
    pub expect_status: &'a [u16],
    pub follow_redirects: Redirects,
}

/// Redirects a `same_origin` step follows before it gives up.
pub const MAX_REDIRECTS: usize = 5;

/// The client http steps are sent with: it never follows a redirect by itself ([`run_http`]
/// decides, per step), so no header of a step reaches a server the rule did not name.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// The client of checks, notifiers and the PagerDuty API: it follows a redirect only within the
/// origin it was sent to (at most [`MAX_REDIRECTS`]); a redirect elsewhere is the answer, so no
/// header it carries reaches a server nobody configured.
pub fn outbound_client() -> reqwest::Client {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let home = attempt.previous().first().map(|u| u.origin());
        if home == Some(attempt.url().origin()) && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
        .redirect(same_origin)
        .build()
        .unwrap_or_default()
}

/// Sends one HTTP request; success is an expected status (any 2xx when none is listed). A 3xx is
/// the answer unless the step follows redirects within its origin (`follow_redirects:
/// same_origin`, at most [`MAX_REDIRECTS`]); a redirect elsewhere is refused, naming only the
/// origin it pointed to. `client` must not follow redirects itself (see [`http_client`]).
pub async fn run_http(
    client: &reqwest::Client,
    s: HttpStep<'_>,
    timeout: Duration,
    max_output: usize,
) -> StepResult {
    let started = Instant::now();
    let fail = |error: String| StepResult {
        ok: false,
        exit_code: None,
        output: String::new(),
        error: Some(error),
        duration_ms: started.elapsed().as_millis() as u64,
        permanent: false,
    };
    let mut secrets = Vec::new();
    let result = send_http(client, s, timeout, max_output, &mut secrets, started, &fail).await;
    redacted(result, &secrets)
}

async fn send_http(
    client: &reqwest::Client,
    s: HttpStep<'_>,
    timeout: Duration,
    max_output: usize,
    secrets: &mut Vec<(String, String)>,
    started: Instant,
    fail: &(dyn Fn(String) -> StepResult + Sync),
) -> StepResult {
    let mut url = match resolve_noting(s.url, secrets).map(|u| reqwest::Url::parse(&u)) {
        Ok(Ok(u)) => u,
        Ok(Err(_)) if !secrets.is_empty() => {
            return fail("url: not a valid URL once its references are expanded".to_string());
        }
        Ok(Err(e)) => return fail(format!("url: not a valid URL ({e})")),
        Err(e) => return unresolved(fail(format!("url: {e}"))),
    };
    let origin = url.origin();
    let Ok(method) = reqwest::Method::from_bytes(s.method.as_bytes()) else {
        return fail(format!("bad method {}", s.method));
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in s.headers {
        let value = match resolve_noting(v, secrets) {
            Ok(v) => v,
            Err(e) => return unresolved(fail(format!("header {k}: {e}"))),
        };
        match (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            (Ok(k), Ok(v)) => {
                headers.append(k, v);
            }
            _ => return fail(format!("header {k}: not a valid header name or value")),
        }
    }
    let raw_body = match s.body {
        Body::Raw(b) => match resolve_noting(b, secrets) {
            Ok(b) => Some(b),
            Err(e) => return unresolved(fail(format!("body: {e}"))),
        },
        _ => None,
    };
    let mut hops = 0;
    loop {
        let mut req = client
            .request(method.clone(), url.clone())
            .timeout(timeout.saturating_sub(started.elapsed()))
            .headers(headers.clone());
        req = match (s.body, &raw_body) {
            (Body::Json(v), _) => req.json(v),
            (_, Some(b)) => req.body(b.clone()),
            _ => req,
        };
        let resp = match req.send().await {
            // reqwest's error text names the URL (without secrets in headers); keep it short.
            Err(e) => return fail(format!("request failed: {}", without_url(&e))),
            Ok(resp) => resp,
        };
        let status = resp.status();
        let target = status
            .is_redirection()
            .then(|| resp.headers().get(reqwest::header::LOCATION))
            .flatten()
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok());
        let mut note = None;
        if let Some(target) = target {
            let to = target.origin().ascii_serialization();
            match s.follow_redirects {
                Redirects::SameOrigin if target.origin() != origin => {
                    return fail(format!(
                        "HTTP {} redirect to {to} was refused: follow_redirects: same_origin follows only redirects within {}",
                        status.as_u16(),
                        origin.ascii_serialization()
                    ));
                }
                Redirects::SameOrigin if hops == MAX_REDIRECTS => {
                    return fail(format!(
                        "more than {MAX_REDIRECTS} redirects; the last (HTTP {}) was not followed",
                        status.as_u16()
                    ));
                }
                Redirects::SameOrigin => {
                    // 307 and 308 repeat the request as it was; the others would turn it into a
                    // GET, which is not the step the rule wrote unless it was a GET already.
                    let keeps_method = matches!(status.as_u16(), 307 | 308)
                        || method == reqwest::Method::GET
                        || method == reqwest::Method::HEAD;
                    if !keeps_method {
                        return fail(format!(
                            "HTTP {} redirect to {to} was not followed: it would turn {method} into GET (only 307 and 308 keep the method)",
                            status.as_u16()
                        ));
                    }
                    hops += 1;
                    url = target;
                    continue;
                }
                Redirects::None => {
                    note = Some(format!(
                        "HTTP {} redirect to {to} was not followed (follow_redirects: same_origin follows redirects within the same origin)",
                        status.as_u16()
                    ));
                }
            }
        }
        let status = status.as_u16();
        let ok = if s.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            s.expect_status.contains(&status)
        };
        let mut text = resp.text().await.unwrap_or_default();
        let error = match (ok, note) {
            (true, Some(n)) => {
                text = format!("[{n}]\n{text}");
                None
            }
            (true, None) => None,
            (false, Some(n)) => Some(format!("unexpected HTTP status {status}: {n}")),
            (false, None) => Some(format!("unexpected HTTP status {status}")),
        };
        return StepResult {
            ok,
            exit_code: Some(i32::from(status)),
            // Concealed whole before it is cut, so no part of a value is left at the cut.
            output: truncate(&conceal(text, secrets), max_output),
            error,
            duration_ms: started.elapsed().as_millis() as u64,
            permanent: false,
        };
    }
}

/// A short reason that names neither the URL (it may carry a secret) nor header values.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_builder() {
        "invalid request (check the URL and headers)".to_string()
    } else {
        "transport error".to_string()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, saying so.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_argv_without_a_shell() {
        let r = run_command(
            &["echo".into(), "$(id); rm -rf /".into()],
            &BTreeMap::new(),
            None,
            Duration::from_secs(5),
            1024,
        )
        .await;
        assert!(r.ok);
        assert_eq!(r.output, "$(id); rm -rf /\n");
        assert_eq!(r.exit_code, Some(0));
    }

    #[tokio::test]
    async fn failure_timeout_and_missing_program_are_named() {
        let r = run_command(
            &["false".into()],
            &BTreeMap::new(),
            None,
            Duration::from_secs(5),
            64,
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.exit_code, Some(1));
        let r = run_command(
            &["sleep".into(), "5".into()],
            &BTreeMap::new(),
            None,
            Duration::from_millis(100),
            64,
        )
        .await;
        assert!(r.error.unwrap().contains("timed out"));
        let r = run_command(
            &["/nonexistent/rollbackd-step".into()],
            &BTreeMap::new(),
            None,
            Duration::from_secs(1),
            64,
        )
        .await;
        assert!(r.error.unwrap().contains("cannot start"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let script = format!("(sleep 1; touch {}) & sleep 5", marker.display());
        let r = run_command(
            &["/bin/sh".into(), "-c".into(), script],
            &BTreeMap::new(),
            None,
            Duration::from_millis(200),
            64,
        )
        .await;
        assert!(r.error.unwrap().contains("timed out"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a child of the step outlived its timeout");
    }

    /// A loopback server answering every request with `status` and `Location: location`,
    /// counting requests.
    async fn redirector(
        status: u16,
        location: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let app = axum::Router::new().fallback(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap_or_default(),
                    [("location", location)],
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    async fn http(method: &str, url: &str, follow: Redirects) -> StepResult {
        run_http(
            &http_client(),
            HttpStep {
                method,
                url,
                headers: &BTreeMap::new(),
                body: &Body::Json(serde_json::json!({"op": "rollback"})),
                expect_status: &[],
                follow_redirects: follow,
            },
            Duration::from_secs(5),
            256,
        )
        .await
    }

    #[tokio::test]
    async fn same_origin_redirects_are_bounded_and_keep_the_method() {
        use std::sync::atomic::Ordering;
        let (base, seen) = redirector(302, "/again").await;
        let r = http("GET", &format!("{base}/start"), Redirects::SameOrigin).await;
        assert!(r.error.unwrap().contains("more than 5 redirects"));
        assert_eq!(seen.load(Ordering::SeqCst), MAX_REDIRECTS + 1);

        let (base, seen) = redirector(303, "/result").await;
        let r = http("PATCH", &format!("{base}/flag"), Redirects::SameOrigin).await;
        let e = r.error.unwrap();
        assert!(e.contains("would turn PATCH into GET"), "{e}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        // Not following, a 3xx is the answer; expected, it succeeds and the output says so.
        let r = run_http(
            &http_client(),
            HttpStep {
                method: "GET",
                url: &format!("{base}/flag"),
                headers: &BTreeMap::new(),
                body: &Body::None,
                expect_status: &[303],
                follow_redirects: Redirects::None,
            },
            Duration::from_secs(5),
            256,
        )
        .await;
        assert!(
            r.ok && r.output.contains("was not followed"),
            "{}",
            r.output
        );
    }

    #[tokio::test]
    async fn the_outbound_client_stays_on_its_origin() {
        use std::sync::atomic::Ordering;
        let (elsewhere, seen_elsewhere) = redirector(200, "").await;
        let location: &'static str = Box::leak(format!("{elsewhere}/stolen").into_boxed_str());
        let (base, seen) = redirector(307, location).await;
        let c = outbound_client();
        let r = c.get(format!("{base}/hook")).send().await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            307,
            "another origin's redirect is the answer"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(
            seen_elsewhere.load(Ordering::SeqCst),
            0,
            "nothing went elsewhere"
        );
        let (base, seen) = redirector(302, "/again").await;
        let r = c.get(format!("{base}/hook")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 302);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            MAX_REDIRECTS + 1,
            "same origin, bounded"
        );
    }

    #[test]
    fn a_secret_cut_with_the_capture_is_hidden_too() {
        let secrets = vec![("${env:T}".to_string(), "abcdef123456".to_string())];
        let t = hide_secrets(b"x abcdef123456 y abcdef12", 20, &secrets);
        assert_eq!(t, "x ${env:T} y ${env:T}");
        let t = hide_secrets(b"whole abcdef12", 100, &secrets);
        assert_eq!(t, "whole abcdef12", "not cut: a prefix is just text");
    }

    #[tokio::test]
    async fn an_unresolved_secret_is_permanent() {
        let mut env = BTreeMap::new();
        env.insert(
            "T".to_string(),
            "${env:ROLLBACKD_TEST_SURELY_UNSET}".to_string(),
        );
        let r = run_command(
            &["/bin/true".into()],
            &env,
            None,
            Duration::from_secs(5),
            64,
        )
        .await;
        assert!(r.permanent && !r.ok, "{r:?}");
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        let t = truncate("ééé", 3);
        assert!(t.starts_with('é') && t.contains("bytes cut"), "{t}");
    }
}
