//! A cluster of real `rollbackd` processes on loopback, each in its own temp dir with its own
//! sled database, each behind a [`Net`] proxy that the members' urls point at, so a test can cut
//! the links between nodes (clients talk to each node's own listener and are never cut).
//!
//! Steps of the rules a cluster runs append `<step name> <fencing token> <pid> <parent pid>`
//! lines to one shared file ([`StepLog`]): the invariants are read from what the child processes
//! wrote (the parent pid says which node's process ran the step), never from the daemons' word
//! alone.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::procs::free_port;
use crate::common::{Daemon, Setup, wait_every};
use crate::proxy::Net;

/// The secret every node of a test cluster shares (at least 16 characters).
pub const SECRET: &str = "cluster-secret-0123456789abcdef";

/// In a rules text given to [`Cluster::start`], replaced by the shared step log's path.
pub const STEPLOG: &str = "@STEPLOG@";

/// The one client of the test's questions: short timeouts, so a paused or cut-off node costs
/// little.
fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("client")
    })
}

/// Polls `f` every 100 ms until it returns Some or `timeout` passes (gentler than `wait_for` on
/// a machine that also runs three daemons).
pub fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_every(timeout, Duration::from_millis(100), f)
}

/// One request that never panics: (status, JSON or Null), or None when no answer came in
/// `timeout` (refused, reset, or still waiting).
pub fn request(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let mut req = client().request(method, url).timeout(timeout);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().unwrap_or(Value::Null)))
}

pub fn try_get(url: &str, token: Option<&str>) -> Option<(u16, Value)> {
    request(
        reqwest::Method::GET,
        url,
        token,
        None,
        Duration::from_secs(2),
    )
}

/// What one node is: its dir, its own port, its proxy's port, and the process when running.
pub struct Node {
    pub id: u64,
    pub setup: Setup,
    /// The node's own listener (clients).
    pub port: u16,
    /// The proxy in front of it (the members' url of this node: peers).
    pub proxy_port: u16,
    pub daemon: Option<Daemon>,
    pub stopped: bool,
    /// Every stderr file this node has written, one per start.
    pub stderr_logs: Vec<PathBuf>,
    /// The process id of each start.
    pub pids: Vec<u32>,
}

impl Node {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.child.id())
    }

    /// Starts the process on the node's own port and waits until it says where it listens.
    fn spawn(&self) -> Daemon {
        let listen = format!("127.0.0.1:{}", self.port);
        let d = self.setup.start_with(&["--listen", &listen]);
        assert_eq!(
            d.base,
            self.base(),
            "node {} listens elsewhere than asked",
            self.id
        );
        d
    }

    fn adopt(&mut self, d: Daemon) {
        self.stderr_logs.push(d.stderr_log.clone());
        self.pids.push(d.child.id());
        self.daemon = Some(d);
        self.stopped = false;
    }

    /// Running and not paused.
    pub fn live(&self) -> bool {
        self.daemon.is_some() && !self.stopped
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub net: Net,
    pub token: Option<String>,
    pub steps: StepLog,
    _shared: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with the same rules and the same extra config (people,
    /// tokens, ...). `rules_yaml` may name the shared step log as [`STEPLOG`].
    pub fn start(n: u64, rules_yaml: &str, extra_config: &str) -> Cluster {
        let shared = tempfile::tempdir().expect("tempdir");
        let steps = StepLog::new(shared.path().join("steps.log"));
        let rules = rules_yaml.replace(STEPLOG, &steps.path.display().to_string());
        let net = Net::new();
        // The proxies' listeners are bound (and kept) first, so a node's port picked next can
        // never be one of them.
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy"))
            .collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let proxies: Vec<u16> = (1..=n)
            .zip(listeners)
            .zip(&ports)
            .map(|((id, listener), port)| {
                let target = format!("127.0.0.1:{port}").parse().expect("addr");
                net.proxy_on(listener, id, target).port()
            })
            .collect();
        let members: String = (1..=n)
            .zip(&proxies)
            .map(|(id, p)| format!("    - {{ id: {id}, url: \"http://127.0.0.1:{p}\" }}\n"))
            .collect();
        let mut nodes = Vec::new();
        for (i, id) in (1..=n).enumerate() {
            let config = format!(
                "cluster:\n  node_id: {id}\n  advertise: \"http://127.0.0.1:{p}\"\n  members:\n{members}  secret: \"{SECRET}\"\n{extra_config}",
                p = proxies[i]
            );
            nodes.push(Node {
                id,
                setup: Setup::new(&config, &rules),
                port: ports[i],
                proxy_port: proxies[i],
                daemon: None,
                stopped: false,
                stderr_logs: Vec::new(),
                pids: Vec::new(),
            });
        }
        let mut c = Cluster {
            nodes,
            net,
            token: None,
            steps,
            _shared: shared,
        };
        // All at once: a node may wait for its peers before it says where it listens.
        let started: Vec<Daemon> = std::thread::scope(|scope| {
            let handles: Vec<_> = c
                .nodes
                .iter()
                .map(|n| scope.spawn(move || n.spawn()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| panic!("a node did not start")))
                .collect()
        });
        for (node, d) in c.nodes.iter_mut().zip(started) {
            node.adopt(d);
        }
        c
    }

    /// The read/admin token the test's own questions carry (when the config sets tokens).
    pub fn with_token(mut self, token: &str) -> Cluster {
        self.token = Some(token.to_string());
        self
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn majority(&self) -> usize {
        self.size() / 2 + 1
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        self.node(id).url(path)
    }

    fn launch(&mut self, id: u64) {
        let node = self.node_mut(id);
        assert!(node.daemon.is_none(), "node {id} is running");
        let d = node.spawn();
        node.adopt(d);
    }

    /// `kill -9` the node (its data dir stays).
    pub fn kill9(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(d) = node.daemon.take() {
            d.kill9();
        }
        node.stopped = false;
    }

    /// Pauses the node (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn stop(&mut self, id: u64) {
        self.signal(id, "-STOP");
        self.node_mut(id).stopped = true;
    }

    /// Resumes a paused node (SIGCONT).
    pub fn cont(&mut self, id: u64) {
        self.signal(id, "-CONT");
        self.node_mut(id).stopped = false;
    }

    fn signal(&self, id: u64, sig: &str) {
        let pid = self
            .node(id)
            .pid()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid} (node {id}) failed");
    }

    /// Starts a killed node again on the same data dir.
    pub fn restart(&mut self, id: u64) {
        if self.node(id).daemon.is_some() {
            self.kill9(id);
        }
        self.launch(id);
    }

    /// The node whose process (in any of its starts) has process id `pid`.
    pub fn node_of_pid(&self, pid: u32) -> Option<u64> {
        self.nodes
            .iter()
            .find(|n| n.pids.contains(&pid))
            .map(|n| n.id)
    }

    /// The node that ran the step of `line` (its process's parent).
    pub fn ran_on(&self, line: &StepLine) -> u64 {
        self.node_of_pid(line.parent).unwrap_or_else(|| {
            panic!(
                "step {line:?} was not started by any node's process\n{}",
                self.diagnose()
            )
        })
    }

    /// Everything the node has written to stderr, over all its starts.
    pub fn stderr(&self, id: u64) -> String {
        self.node(id)
            .stderr_logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `GET /v1/cluster` on the node, if it answers 200 within 2 s.
    pub fn view(&self, id: u64) -> Option<Value> {
        if !self.node(id).live() {
            return None;
        }
        match try_get(&self.url(id, "/v1/cluster"), self.token.as_deref()) {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The leader a majority of the cluster's nodes agree on, asking every live node.
    pub fn leader(&self) -> Option<u64> {
        let said: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.live())
            .filter_map(|n| self.view(n.id))
            .filter_map(|v| v["leader"].as_u64())
            .collect();
        said.iter()
            .copied()
            .find(|l| said.iter().filter(|x| *x == l).count() >= self.majority())
    }

    /// Waits for a leader a majority agrees on; panics with every node's view and log tail.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        poll(timeout, || self.leader())
            .unwrap_or_else(|| panic!("no leader within {timeout:?}\n{}", self.diagnose()))
    }

    /// Waits for a leader a majority agrees on other than `old`; returns it and how long it took.
    pub fn wait_new_leader(&self, old: u64, timeout: Duration) -> (u64, Duration) {
        let t0 = Instant::now();
        let l = poll(timeout, || self.leader().filter(|l| *l != old)).unwrap_or_else(|| {
            panic!(
                "no leader other than {old} within {timeout:?}\n{}",
                self.diagnose()
            )
        });
        (l, t0.elapsed())
    }

    /// Waits until every live node names `leader` (a healed or restarted node has rejoined).
    pub fn wait_all_agree(&self, leader: u64, timeout: Duration) {
        poll(timeout, || {
            self.nodes
                .iter()
                .filter(|n| n.live())
                .all(|n| self.view(n.id).is_some_and(|v| v["leader"] == leader))
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "not every node names {leader} within {timeout:?}\n{}",
                self.diagnose()
            )
        });
    }

    /// The node's term as it says it.
    pub fn term(&self, id: u64) -> u64 {
        self.view(id)
            .and_then(|v| v["term"].as_u64())
            .unwrap_or_else(|| panic!("node {id} says no term\n{}", self.diagnose()))
    }

    /// Every node's `/v1/cluster` and the last lines of its stderr.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let view = if n.live() {
                try_get(&n.url("/v1/cluster"), self.token.as_deref())
                    .map(|(s, v)| format!("{s} {v}"))
                    .unwrap_or_else(|| "no answer".into())
            } else if n.daemon.is_some() {
                "paused".into()
            } else {
                "not running".into()
            };
            let err = self.stderr(n.id);
            let lines: Vec<&str> = err.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            out.push_str(&format!(
                "----- node {} (port {}, proxy {}): {view}\n{tail}\n",
                n.id, n.port, n.proxy_port
            ));
        }
        out.push_str(&format!(
            "----- step log\n{}\n",
            std::fs::read_to_string(&self.steps.path).unwrap_or_default()
        ));
        out
    }

    /// GET on one node with the test's token; panics unless 200.
    pub fn get(&self, id: u64, path: &str) -> Value {
        match try_get(&self.url(id, path), self.token.as_deref()) {
            Some((200, v)) => v,
            other => panic!("GET {path} on node {id}: {other:?}\n{}", self.diagnose()),
        }
    }

    /// Incident `id` as node `node` has it, if it answers.
    pub fn incident(&self, node: u64, id: &str) -> Option<Value> {
        match try_get(
            &self.url(node, &format!("/v1/incidents/{id}")),
            self.token.as_deref(),
        ) {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The incidents node `node` lists.
    pub fn incidents(&self, node: u64) -> Vec<Value> {
        match try_get(&self.url(node, "/v1/incidents"), self.token.as_deref()) {
            Some((200, v)) => v["items"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Waits for node `node` to list an incident of `service`; returns its id.
    pub fn wait_incident_of(&self, node: u64, service: &str, timeout: Duration) -> String {
        poll(timeout, || {
            self.incidents(node)
                .into_iter()
                .find(|i| i["service"] == service)
                .and_then(|i| i["id"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| {
            panic!(
                "node {node} lists no incident of {service} within {timeout:?}\n{}",
                self.diagnose()
            )
        })
    }

    /// Waits until node `node` shows incident `id` in `state`; returns it.
    pub fn wait_state(&self, node: u64, id: &str, state: &str, timeout: Duration) -> Value {
        poll(timeout, || {
            self.incident(node, id).filter(|i| i["state"] == state)
        })
        .unwrap_or_else(|| {
            panic!(
                "{id} not {state} on node {node} within {timeout:?}: {:#}\n{}",
                self.incident(node, id).unwrap_or(Value::Null),
                self.diagnose()
            )
        })
    }

    /// The deployment ids of `service`'s releases as node `node` lists them.
    pub fn release_ids(&self, node: u64, service: &str) -> Option<Vec<String>> {
        match try_get(
            &self.url(node, &format!("/v1/releases/{service}")),
            self.token.as_deref(),
        ) {
            Some((200, v)) => Some(
                v["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|r| r["deployment_id"].as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnose());
        }
        for n in &mut self.nodes {
            if let Some(d) = n.daemon.take() {
                // SIGKILL reaches a paused process too.
                d.kill9();
            }
        }
    }
}

/// The file the steps' child processes append `<step name> <fencing token> <pid> <parent pid>`
/// to. Dropping it ends the step processes still running (a step of a killed node outlives its
/// node).
pub struct StepLog {
    pub path: PathBuf,
}

/// One line a step's process wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    pub step: String,
    pub token: u64,
    pub pid: u32,
    /// The process that started the step's shell: a node's daemon.
    pub parent: u32,
}

impl StepLog {
    fn new(path: PathBuf) -> StepLog {
        StepLog { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every line so far; panics on one that is not `<name> <token> <pid> <parent>` with a
    /// numeric token (an empty token means the step ran without `ROLLBACKD_FENCING_TOKEN`).
    pub fn lines(&self) -> Vec<StepLine> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let parts: Vec<&str> = l.split(' ').collect();
                match parts.as_slice() {
                    [step, token, pid, parent] => StepLine {
                        step: step.to_string(),
                        token: token
                            .parse()
                            .unwrap_or_else(|_| panic!("step line without a fencing token: {l:?}")),
                        pid: pid.parse().unwrap_or_else(|_| panic!("bad pid: {l:?}")),
                        parent: parent
                            .parse()
                            .unwrap_or_else(|_| panic!("bad parent pid: {l:?}")),
                    },
                    _ => panic!("step line not `<name> <token> <pid> <parent>`: {l:?}"),
                }
            })
            .collect()
    }

    /// The lines of one step.
    pub fn of(&self, step: &str) -> Vec<StepLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.step == step)
            .collect()
    }

    /// No step wrote two lines (a step that may run twice is not checked here).
    pub fn assert_each_once(&self, steps: &[&str]) {
        for s in steps {
            let l = self.of(s);
            assert!(l.len() <= 1, "step {s} ran {} times: {l:?}", l.len());
        }
    }
}

impl Drop for StepLog {
    fn drop(&mut self) {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        for pid in text
            .lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
        {
            // Only a step process that is still ours: its command line is the step's sleep.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("sleep") {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}
