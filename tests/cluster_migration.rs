//! A single node's data directory moved into a cluster, black-box: real processes on loopback.
//! The node that holds the records forms the cluster alone, the others join it and receive the
//! records in a snapshot; a data directory with records never joins a cluster it did not form.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SECRET: &str = "cluster-secret-0123456789abcdef";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `setup`'s config with a `cluster:` section (node `id`, the given initial members).
fn clustered(setup: &Setup, id: u64, port: u16, members: &[(u64, u16)]) {
    let path = setup.path().join("rollbackd.yaml");
    let base: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .take_while(|l| !l.starts_with("cluster:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let members: String = members
        .iter()
        .map(|(i, p)| format!("    - {{ id: {i}, url: \"http://127.0.0.1:{p}\" }}\n"))
        .collect();
    let cfg = format!(
        "{base}cluster:\n  node_id: {id}\n  advertise: http://127.0.0.1:{port}\n  secret: \"{SECRET}\"\n  members:\n{members}"
    );
    std::fs::write(path, cfg).unwrap();
}

fn start(setup: &Setup, port: u16) -> Daemon {
    setup.start_with(&["--listen", &format!("127.0.0.1:{port}")])
}

fn release_ids(d: &Daemon) -> Vec<String> {
    let (_, v) = get(&d.url("/v1/releases/web"), None);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["deployment_id"].as_str().map(String::from))
        .collect()
}

fn roles(view: &Value) -> Vec<(u64, String)> {
    view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["id"].as_u64().unwrap_or(0),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn leader(d: &Daemon) -> Option<u64> {
    let (s, v) = get(&d.url("/v1/cluster"), None);
    (s == 200).then(|| v["leader"].as_u64()).flatten()
}

#[test]
fn a_single_nodes_records_move_into_a_cluster_it_forms() {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let s1 = Setup::new("", "rules: []\n");
    let d1 = start(&s1, p1);
    let (s, v) = post(
        &d1.url("/v1/releases"),
        None,
        &json!({"service": "web", "version": "v1", "deployment_id": "before-the-cluster",
                "deployed_at": ts(-600.0)}),
    );
    assert_eq!(s, 201, "{v}");
    d1.stop_cleanly();

    // Listed with two other initial voters, the node refuses: its records would not be theirs.
    clustered(&s1, 1, p1, &[(1, p1), (2, p2), (3, p3)]);
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(s1.path().join("rollbackd.yaml"))
        .args(["--listen", &format!("127.0.0.1:{p1}")])
        .output()
        .expect("run rollbackd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds the records of a single node"),
        "{stderr}"
    );

    // Alone, it forms the cluster; the others join it and receive the records.
    clustered(&s1, 1, p1, &[(1, p1)]);
    let d1 = start(&s1, p1);
    assert_eq!(
        wait_for(Duration::from_secs(10), || leader(&d1).filter(|l| *l == 1)),
        Some(1),
        "{}",
        d1.stderr()
    );
    let (s2, s3) = (Setup::new("", "rules: []\n"), Setup::new("", "rules: []\n"));
    clustered(&s2, 2, p2, &[(1, p1)]);
    clustered(&s3, 3, p3, &[(1, p1)]);
    let (d2, d3) = (start(&s2, p2), start(&s3, p3));
    for (id, port) in [(2, p2), (3, p3)] {
        let (s, v) = post(
            &d1.url("/v1/cluster/members"),
            None,
            &json!({"id": id, "url": format!("http://127.0.0.1:{port}")}),
        );
        assert_eq!(s, 200, "add {id}: {v}\n{}", d1.stderr());
    }
    for d in [&d2, &d3] {
        let got = wait_for(Duration::from_secs(10), || {
            let ids = release_ids(d);
            (!ids.is_empty()).then_some(ids)
        });
        assert_eq!(
            got,
            Some(vec!["before-the-cluster".to_string()]),
            "{}",
            d.stderr()
        );
    }
    // Node 3 holds the records before it has applied the membership changes that follow them
    // in the log: its view settles once it has.
    let want = [
        (1, "leader".to_string()),
        (2, "follower".to_string()),
        (3, "follower".to_string()),
    ];
    let mut view = Value::Null;
    let settled = wait_for(Duration::from_secs(10), || {
        view = get(&d3.url("/v1/cluster"), None).1;
        (roles(&view) == want).then_some(())
    });
    assert_eq!(settled, Some(()), "{view:#}\n{}", d3.stderr());

    // The cluster outlives the node it started from.
    d1.kill9();
    let new = wait_for(Duration::from_secs(15), || {
        leader(&d2).filter(|l| *l != 1 && leader(&d3) == Some(*l))
    })
    .expect("a new leader among 2 and 3");
    let (s, v): (u16, Value) = post(
        &d3.url("/v1/releases"),
        None,
        &json!({"service": "web", "version": "v2", "deployment_id": "after-failover",
                "deployed_at": ts(-60.0)}),
    );
    assert_eq!(s, 201, "release through node 3 (leader {new}): {v}");
    for d in [&d2, &d3] {
        let ids = wait_for(Duration::from_secs(5), || {
            let ids = release_ids(d);
            (ids.len() == 2).then_some(ids)
        });
        assert_eq!(
            ids,
            Some(vec![
                "after-failover".to_string(),
                "before-the-cluster".to_string()
            ])
        );
    }
}
