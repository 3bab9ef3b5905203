//! Real processes for tests about real Prometheus and Alertmanager: finding their binaries,
//! running them with their logs kept, and a scrape target whose metric a test flips.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use super::client;

pub const INSTALL_HINT: &str = "this test runs the real Prometheus and Alertmanager. \
Install them with `sudo apt-get install -y prometheus prometheus-alertmanager` (Debian/Ubuntu), \
or run `scripts/test.sh`, which installs them when missing";

/// The full path of `name` found on PATH, or a failing test that says how to install it.
pub fn require_on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if is_executable(&p) {
            return p;
        }
    }
    panic!("`{name}` is not on PATH: {INSTALL_HINT}");
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// GET that never panics: (status, JSON or Null), or None when the server does not answer.
pub fn try_get(url: &str) -> Option<(u16, Value)> {
    let resp = client().get(url).send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().unwrap_or(Value::Null)))
}

pub fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

pub fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The value of the sample of `name` carrying all of `labels` in a text exposition; 0 when absent.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let ok = (rest.is_empty() || rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

pub fn time(v: &Value) -> Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("not a timestamp: {v}: {e}"))
}

pub fn secs(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64()
}

/// A child process (Prometheus, Alertmanager) killed when the test ends, however it ends. Its
/// output goes to a log file whose tail is printed if the test fails.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, program: &Path, args: &[String], dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", program.display()));
        Proc { name, child, log }
    }

    /// Panics with the log's tail if the process already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); its log ends:\n{}",
                self.name,
                last_lines(&self.log, 40)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log (last 40 lines) -----\n{}",
                self.name,
                last_lines(&self.log, 40)
            );
        }
    }
}

/// Prints rollbackd's stderr if the test fails.
pub struct DumpOnPanic(pub PathBuf);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- rollbackd stderr (last 60 lines) -----\n{}",
                last_lines(&self.0, 60)
            );
        }
    }
}

/// The scrape target: answers every request with `portal_error_ratio` 0.0 (good) or 0.5 (bad).
pub struct Target {
    pub addr: SocketAddr,
    bad: Arc<AtomicBool>,
}

impl Target {
    pub fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
        let addr = listener.local_addr().expect("target addr");
        let bad = Arc::new(AtomicBool::new(false));
        let flag = bad.clone();
        // The thread lives until the test process exits; it only ever answers loopback scrapes.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let flag = flag.clone();
                std::thread::spawn(move || serve_scrape(stream, &flag));
            }
        });
        Target { addr, bad }
    }

    pub fn set_bad(&self, bad: bool) {
        self.bad.store(bad, Ordering::SeqCst);
    }
}

pub fn serve_scrape(mut stream: TcpStream, bad: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let value = if bad.load(Ordering::SeqCst) {
        "0.5"
    } else {
        "0.0"
    };
    let body = format!(
        "# HELP portal_error_ratio Share of portal requests that failed.\n\
         # TYPE portal_error_ratio gauge\n\
         portal_error_ratio {value}\n"
    );
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
}
