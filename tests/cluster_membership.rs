//! Membership changes other than adding a node, black-box: three real `rollbackd` processes
//! (`tests/common/cluster.rs`). A follower is removed and killed, and the two left keep taking
//! writes; then the leader itself is removed, and the one node left leads alone and still holds
//! every release acknowledged before. What each node answers on `GET /v1/cluster` is checked
//! against the releases each node serves.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::Duration;

use cluster::{Cluster, STEPLOG, poll, request};
use common::{am_alert, ts};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdefghij";

/// `ShopDown` for service `shop`, acting after 1 s without approval: one step that appends
/// `undo <fencing token> <pid> <parent pid>` to the shared step log.
fn rules() -> String {
    let script = format!("echo \"undo $ROLLBACKD_FENCING_TOKEN $$ $PPID\" >> {STEPLOG}");
    format!(
        "rules:\n  - name: shop-errors\n    match: ['alertname=\"ShopDown\"']\n    service: shop\n    breach: {{sustained: 1s, clear_after: 1s}}\n    release: {{max_age: 1h}}\n    approval: none\n    steps:\n      - name: undo\n        run: [/bin/sh, -c, '{script}']\n"
    )
}

fn member_ids(view: &Value) -> Vec<u64> {
    view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_u64())
        .collect()
}

/// Waits until `node` names `leader` and exactly `members`.
fn wait_view(c: &Cluster, node: u64, leader: u64, members: &[u64]) -> Value {
    poll(Duration::from_secs(20), || {
        c.view(node)
            .filter(|v| v["leader"] == leader && member_ids(v) == members)
    })
    .unwrap_or_else(|| {
        panic!(
            "node {node} does not name leader {leader} and members {members:?}\n{}",
            c.diagnose()
        )
    })
}

/// One POST of `body` to `node`'s `path`, with the admin token.
fn post(c: &Cluster, node: u64, path: &str, body: &Value) -> Option<(u16, Value)> {
    request(
        reqwest::Method::POST,
        &c.url(node, path),
        Some(ADMIN),
        Some(body),
        Duration::from_secs(5),
    )
}

fn release_body(service: &str, id: &str, deployed_secs: f64) -> Value {
    json!({"service": service, "version": id,
           "deployment_id": id, "deployed_at": ts(deployed_secs)})
}

/// Posts a release of `service` to `node` until it answers 2xx (a node may not know the leader
/// yet: 503); the status it answered.
fn release(c: &Cluster, node: u64, service: &str, id: &str, deployed_secs: f64) -> u16 {
    let body = release_body(service, id, deployed_secs);
    let mut last = None;
    poll(Duration::from_secs(15), || {
        let r = post(c, node, "/v1/releases", &body);
        last = r.clone();
        r.map(|(s, _)| s).filter(|s| (200..300).contains(s))
    })
    .unwrap_or_else(|| {
        panic!(
            "release {id} through node {node}: no 2xx, last {last:?}\n{}",
            c.diagnose()
        )
    })
}

fn remove(c: &Cluster, via: u64, id: u64) -> (u16, Value) {
    request(
        reqwest::Method::DELETE,
        &c.url(via, &format!("/v1/cluster/members/{id}")),
        Some(ADMIN),
        None,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("DELETE member {id} via {via}: no answer\n{}", c.diagnose()))
}

#[test]
fn removing_a_follower_then_the_leader_leaves_a_cluster_that_still_takes_writes() {
    let mut c =
        Cluster::start(3, &rules(), &format!("tokens: {{admin: \"{ADMIN}\"}}\n")).with_token(ADMIN);
    let leader = c.wait_leader(Duration::from_secs(20));
    release(&c, leader, "web", "r1", -30.0);

    // A follower goes: the view says so on the two left, which keep taking writes once it is
    // dead too (two of two is their majority).
    let gone = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let left: Vec<u64> = c.ids().into_iter().filter(|id| *id != gone).collect();
    let other = left
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("another");
    let (s, v) = remove(&c, other, gone);
    assert_eq!(s, 200, "{v}\n{}", c.diagnose());
    assert_eq!(member_ids(&v), left, "{v}");
    for id in &left {
        wait_view(&c, *id, leader, &left);
    }
    c.kill9(gone);
    release(&c, other, "web", "r2", -30.0);
    assert_eq!(
        c.release_ids(leader, "web"),
        Some(vec!["r2".into(), "r1".into()])
    );

    // Now the leader itself: the node left leads alone, with every release acknowledged before.
    let (s, v) = remove(&c, other, leader);
    assert_eq!(s, 200, "{v}\n{}", c.diagnose());
    assert_eq!(member_ids(&v), [other], "{v}");
    wait_view(&c, other, other, &[other]);
    release(&c, other, "web", "r3", -30.0);
    let ids = poll(Duration::from_secs(5), || {
        c.release_ids(other, "web").filter(|ids| ids.len() == 3)
    });
    assert_eq!(
        ids,
        Some(vec!["r3".into(), "r2".into(), "r1".into()]),
        "{}",
        c.diagnose()
    );
    // The removed leader (openraft 0.9 keeps it in its leader state) no longer counts as one: it
    // names no leader, acts on nothing, is not ready and refuses writes with 503.
    let mut removed = Value::Null;
    let stepped_down = poll(Duration::from_secs(10), || {
        removed = c.view(leader)?;
        (removed["leader"] != leader).then_some(())
    });
    assert_eq!(stepped_down, Some(()), "{removed:#}\n{}", c.diagnose());
    let answer = post(
        &c,
        leader,
        "/v1/releases",
        &release_body("web", "r4", -10.0),
    );
    assert_eq!(answer.as_ref().map(|(s, _)| *s), Some(503), "{answer:?}");
    let ready = request(
        reqwest::Method::GET,
        &c.url(leader, "/readyz"),
        None,
        None,
        Duration::from_secs(5),
    );
    assert_eq!(ready.as_ref().map(|(s, _)| *s), Some(503), "{ready:?}");
    assert_eq!(
        c.release_ids(other, "web").map(|ids| ids.len()),
        Some(3),
        "the removed node's refusal recorded nothing"
    );

    // A breach now: the one node left runs the step, once, with its own term as the fencing
    // token; the removed node, still running, runs nothing (the step processes say so).
    for (id, ago) in [("A", -120.0), ("B", -60.0)] {
        let (s, v) =
            post(&c, other, "/v1/releases", &release_body("shop", id, ago)).unwrap_or_default();
        assert_eq!(s, 201, "{v}");
    }
    let alert = am_alert(
        "firing",
        json!({"alertname": "ShopDown", "service": "shop"}),
        &ts(-5.0),
        "fp-shop",
    );
    let (s, v) = post(&c, other, "/v1/webhooks/alertmanager", &alert).unwrap_or_default();
    assert_eq!(s, 200, "{v}");
    let ran = poll(Duration::from_secs(15), || {
        let lines = c.steps.of("undo");
        (!lines.is_empty()).then_some(lines)
    })
    .unwrap_or_else(|| panic!("the step never ran\n{}", c.diagnose()));
    std::thread::sleep(Duration::from_secs(2));
    let lines = c.steps.of("undo");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(c.ran_on(&ran[0]), other, "{lines:?}\n{}", c.diagnose());
    assert_eq!(ran[0].token, c.term(other), "{lines:?}");
}
