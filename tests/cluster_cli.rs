//! `rollbackd cluster status|add|remove`, black-box: the real binary as a client of a small fake
//! rollbackd node on a loopback port that answers the cluster endpoints as the API does. Each test
//! checks what the command sent (method, path, token, body) and what it printed and exited with.
//!
//! Run against another build with `ROLLBACKD_TEST_BIN=/path/to/rollbackd`.

use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdef";
const DIGEST_A: &str = "3f2a9c01b7de55aa90c1e2d3f4a5b6c7d8e9f00112233445566778899aabbccd";
const DIGEST_B: &str = "99887766554433221100ffeeddccbbaa99887766554433221100ffeeddccbbaa";

/// One request the fake node got.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    content_type: String,
    raw: Vec<u8>,
}

impl Seen {
    fn body(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }
}

struct Node {
    /// What `GET /v1/cluster` answers.
    view: Value,
    /// When set, every request is answered with this status and `{"error","detail"}`.
    refuse: Option<(u16, &'static str)>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Node>>;

/// A fake rollbackd node: `GET /v1/cluster`, `POST /v1/cluster/members`,
/// `DELETE /v1/cluster/members/{id}`, answering with the cluster view as the API does.
struct FakeNode {
    url: String,
    node: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeNode {
    fn start(view: Value) -> FakeNode {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let node = Arc::new(Mutex::new(Node {
            view,
            refuse: None,
            seen: Vec::new(),
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = node.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = Router::new().fallback(answer).with_state(state);
                tokio::select! {
                    r = axum::serve(listener, app) => r.expect("serve"),
                    _ = stopped => {}
                }
            });
        });
        FakeNode {
            url,
            node,
            _stop: stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.node.lock().unwrap().seen.clone()
    }

    fn refuse(&self, status: u16, error: &'static str) {
        self.node.lock().unwrap().refuse = Some((status, error));
    }
}

async fn answer(
    State(node): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut n = node.lock().unwrap();
    n.seen.push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        raw: body.to_vec(),
    });
    if let Some((status, error)) = n.refuse {
        let status = StatusCode::from_u16(status).unwrap();
        return (
            status,
            axum::Json(json!({"error": error, "detail": "refused by the test"})),
        )
            .into_response();
    }
    let path = uri.path();
    match (method.as_str(), path) {
        ("GET", "/v1/cluster") => axum::Json(n.view.clone()).into_response(),
        ("POST", "/v1/cluster/members") => {
            let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                return (StatusCode::BAD_REQUEST, "not JSON").into_response();
            };
            let member = json!({"id": req["id"], "url": req["url"], "role": "follower",
                                "rules_digest": DIGEST_A});
            n.view["members"].as_array_mut().unwrap().push(member);
            axum::Json(n.view.clone()).into_response()
        }
        ("DELETE", p) if p.starts_with("/v1/cluster/members/") => {
            let id: u64 = p["/v1/cluster/members/".len()..].parse().unwrap_or(0);
            n.view["members"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["id"].as_u64() != Some(id));
            axum::Json(n.view.clone()).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not_found"})),
        )
            .into_response(),
    }
}

fn bin() -> String {
    std::env::var("ROLLBACKD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_rollbackd").into())
}

/// Runs `rollbackd ARGS` with ROLLBACKD_URL pointing at `node` and the admin token in
/// ROLLBACKD_TOKEN, as an operator's shell would have them.
fn run(node: &FakeNode, args: &[&str]) -> Output {
    std::process::Command::new(bin())
        .args(args)
        .env("ROLLBACKD_URL", &node.url)
        .env("ROLLBACKD_TOKEN", ADMIN)
        .env_remove("ROLLBACKD_CONFIG")
        .output()
        .expect("run rollbackd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn three_nodes(leader: Option<u64>) -> Value {
    let role = |id: u64| match leader {
        Some(l) if l == id => "leader",
        Some(_) => "follower",
        None => "candidate",
    };
    json!({
        "node_id": 1,
        "leader": leader,
        "term": 5,
        "members": [
            {"id": 1, "url": "http://127.0.0.1:9751", "role": role(1), "rules_digest": DIGEST_A},
            {"id": 2, "url": "http://127.0.0.1:9752", "role": role(2), "rules_digest": DIGEST_A},
            {"id": 3, "url": "http://127.0.0.1:9753", "role": if leader.is_some() { "unreachable" } else { "candidate" }, "rules_digest": null},
        ]
    })
}

/// The one request `node` got, checked for its method, path and the admin token.
fn one_request(node: &FakeNode, method: &str, path: &str) -> Seen {
    let seen = node.seen();
    assert_eq!(seen.len(), 1, "expected one request: {seen:#?}");
    let req = seen[0].clone();
    assert_eq!((req.method.as_str(), req.path.as_str()), (method, path));
    assert_eq!(req.authorization, format!("Bearer {ADMIN}"));
    req
}

/// `status` reads GET /v1/cluster with the token and prints who leads, the term, and one row per
/// member (id, url, role, rules digest shortened); exit 0 while a leader is known.
#[test]
fn status_prints_the_members_the_leader_and_the_term() {
    let node = FakeNode::start(three_nodes(Some(2)));
    let out = run(&node, &["cluster", "status"]);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    let req = one_request(&node, "GET", "/v1/cluster");
    assert!(req.raw.is_empty());
    assert_eq!(
        stdout(&out),
        "term 5, leader 2* (as node 1 sees it)\n\
         ID  URL                    ROLE         RULES DIGEST\n\
         1   http://127.0.0.1:9751  follower     3f2a9c01b7de\n\
         2*  http://127.0.0.1:9752  leader       3f2a9c01b7de\n\
         3   http://127.0.0.1:9753  unreachable  -\n"
    );
}

/// No known leader: the table still prints (every member a candidate), and the exit code is 1
/// with a message saying writes are refused meanwhile.
#[test]
fn status_exits_non_zero_when_no_leader_is_known() {
    let node = FakeNode::start(three_nodes(None));
    let out = run(&node, &["cluster", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with("term 5, leader none (as node 1 sees it)\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).matches("candidate").count(), 3);
    let err = stderr(&out);
    assert!(err.contains("node 1 knows no leader (term 5)"), "{err}");
    assert!(err.contains("503"), "{err}");
}

/// `--json` prints the API's answer as it came; a leaderless answer still exits 1.
#[test]
fn status_json_prints_the_api_answer() {
    let node = FakeNode::start(three_nodes(Some(2)));
    let out = run(&node, &["cluster", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(printed, three_nodes(Some(2)));

    let leaderless = FakeNode::start(three_nodes(None));
    let out = run(&leaderless, &["cluster", "status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let printed: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(printed["leader"], Value::Null);
}

/// Members whose rules differ are called out: the leader's rules decide.
#[test]
fn status_says_when_rules_digests_differ() {
    let mut view = three_nodes(Some(1));
    view["members"][1]["rules_digest"] = json!(DIGEST_B);
    let node = FakeNode::start(view);
    let out = run(&node, &["cluster", "status"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("998877665544"), "{text}");
    assert!(
        text.ends_with("rules differ between members: the leader's rules decide\n"),
        "{text}"
    );
    let same = FakeNode::start(three_nodes(Some(1)));
    assert!(!stdout(&run(&same, &["cluster", "status"])).contains("rules differ"));
}

/// `add ID URL` posts `{"id", "url"}` as JSON to /v1/cluster/members and prints the new view.
#[test]
fn add_posts_the_id_and_url() {
    let node = FakeNode::start(three_nodes(Some(2)));
    let out = run(&node, &["cluster", "add", "4", "http://127.0.0.1:9754"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let req = one_request(&node, "POST", "/v1/cluster/members");
    assert!(req.content_type.starts_with("application/json"), "{req:?}");
    assert_eq!(req.body(), json!({"id": 4, "url": "http://127.0.0.1:9754"}));
    let text = stdout(&out);
    assert!(
        text.starts_with("node 4 added at http://127.0.0.1:9754: caught up, now a voter\n"),
        "{text}"
    );
    assert!(
        text.contains("4   http://127.0.0.1:9754  follower     3f2a9c01b7de\n"),
        "{text}"
    );
}

/// `remove ID` sends DELETE /v1/cluster/members/ID without a body and prints the remaining members.
#[test]
fn remove_deletes_the_member() {
    let node = FakeNode::start(three_nodes(Some(2)));
    let out = run(&node, &["cluster", "remove", "3", "--url", &node.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let req = one_request(&node, "DELETE", "/v1/cluster/members/3");
    assert!(req.raw.is_empty());
    let text = stdout(&out);
    assert!(text.starts_with("node 3 removed\n"), "{text}");
    assert!(!text.contains("http://127.0.0.1:9753"), "{text}");
    assert!(text.contains("http://127.0.0.1:9752"), "{text}");
}

/// An API error (here: no leader to forward to) is printed with its status and error, exit 1.
#[test]
fn an_api_error_is_reported_and_fails() {
    let node = FakeNode::start(three_nodes(None));
    node.refuse(503, "no_leader");
    for args in [
        &["cluster", "add", "4", "http://127.0.0.1:9754"][..],
        &["cluster", "remove", "2"][..],
        &["cluster", "status"][..],
    ] {
        let out = run(&node, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("rollbackd answered 503: no_leader"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// The help says what each command does and how to replace a node that lost its disk.
#[test]
fn help_teaches_the_commands_and_the_replacement_procedure() {
    let out = std::process::Command::new(bin())
        .args(["cluster", "--help"])
        .output()
        .expect("run rollbackd");
    assert!(out.status.success());
    let help = stdout(&out);
    for want in [
        "status",
        "add",
        "remove",
        "wipe its data directory",
        "catches up from a snapshot",
    ] {
        assert!(help.contains(want), "help lacks {want:?}:\n{help}");
    }
    let out = std::process::Command::new(bin())
        .args(["cluster", "add", "--help"])
        .output()
        .expect("run rollbackd");
    let help = stdout(&out);
    assert!(help.contains("learner") && help.contains("voter"), "{help}");
}
