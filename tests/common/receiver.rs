//! A loopback HTTP server for black-box tests that records every request and answers as told:
//! canned answers (redirects among them), a failing spell, or its port closed (connection refused)
//! and opened again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::wait_for;

/// One request a receiver got, and its answer.
#[derive(Clone, Debug)]
pub struct Req {
    /// As sent (percent-encoding kept).
    pub path: String,
    /// As sent, without the `?`; empty when there is none.
    pub query: String,
    /// Lowercase names.
    pub headers: BTreeMap<String, String>,
    pub raw: Vec<u8>,
    pub body: Value,
    pub status: u16,
}

impl Req {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub struct Recorder {
    requests: Vec<Req>,
    /// Canned answers for the next requests, then `failing`, then `ok`.
    script: VecDeque<(u16, String)>,
    /// Redirects (status, `Location`) for the next requests, before `script`.
    redirects: VecDeque<(u16, String)>,
    failing: Option<(u16, String)>,
    ok: (u16, String),
}

pub type Shared = Arc<Mutex<Recorder>>;

/// A loopback HTTP server recording requests; can go down (port closed) and come back on the
/// same port.
pub struct Receiver {
    port: u16,
    inner: Shared,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Receiver {
    /// Answers `ok_status` with `ok_body` (text) unless told otherwise.
    pub fn start(ok_status: u16, ok_body: &str) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Mutex::new(Recorder {
            requests: Vec::new(),
            script: VecDeque::new(),
            redirects: VecDeque::new(),
            failing: None,
            ok: (ok_status, ok_body.to_string()),
        }));
        let mut r = Receiver {
            port,
            inner,
            server: None,
        };
        r.serve(listener);
        r
    }

    /// Slack's incoming webhook: `200 ok` (text/plain).
    pub fn slack() -> Receiver {
        Receiver::start(200, "ok")
    }

    pub fn generic() -> Receiver {
        Receiver::start(200, "{\"received\":true}")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let state = self.inner.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new().fallback(record).with_state(state);
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime closes the listener and every open connection.
        });
        self.server = Some((stop, thread));
    }

    /// Closes the port: connections are refused until [`up`](Self::up).
    pub fn down(&mut self) {
        if let Some((stop, thread)) = self.server.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        let start = Instant::now();
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen on port {} again: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    pub fn fail_next(&self, status: u16, body: &str) {
        self.inner
            .lock()
            .unwrap()
            .script
            .push_back((status, body.to_string()));
    }

    /// Answers the next request with the redirect `status` to `location`.
    pub fn redirect_next(&self, status: u16, location: &str) {
        self.inner
            .lock()
            .unwrap()
            .redirects
            .push_back((status, location.to_string()));
    }

    /// Answers every request with `status` until [`recover`](Self::recover).
    pub fn fail_all(&self, status: u16, body: &str) {
        self.inner.lock().unwrap().failing = Some((status, body.to_string()));
    }

    pub fn recover(&self) {
        self.inner.lock().unwrap().failing = None;
    }

    pub fn requests(&self) -> Vec<Req> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn delivered(&self) -> Vec<Req> {
        self.requests().into_iter().filter(Req::delivered).collect()
    }

    /// Waits until at least `n` requests were answered 2xx.
    pub fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Req> {
        wait_for(timeout, || {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
        .unwrap_or_else(|| {
            panic!(
                "fewer than {n} deliveries within {timeout:?}: {:#?}",
                self.requests()
            )
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

pub async fn record(
    State(inner): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = inner.lock().unwrap();
    let redirect = g.redirects.pop_front();
    let (status, text) = match &redirect {
        Some((status, _)) => (*status, String::new()),
        None => g
            .script
            .pop_front()
            .or_else(|| g.failing.clone())
            .unwrap_or_else(|| g.ok.clone()),
    };
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    g.requests.push(Req {
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        status,
    });
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "text/plain")],
        text,
    )
        .into_response();
    if let Some((_, location)) = redirect {
        resp.headers_mut()
            .insert("location", location.parse().unwrap());
    }
    resp
}
