//! Cluster mode, black-box: three real `rollbackd` processes replicating with Raft, each behind a
//! proxy the test controls (`tests/common/proxy.rs`), so links between nodes can be cut one
//! direction at a time while clients still reach every node.
//!
//! Invariants are read from what the steps' child processes wrote (`<step> <fencing token>
//! <pid> <parent pid>`, one line per run, in one shared file; the parent is the node's process
//! that ran it), never from the daemons' word alone; the daemons' answers are compared with them.
//!
//! Time is the wall clock (these tests are about elections): rules act after `sustained: 1s`
//! on alerts whose `startsAt` lies in the past, or a few seconds after a cut when the test
//! wants the deadline to fall inside it. The cluster tests share a lock, so the 2-core machine
//! runs one cluster at a time.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cluster::{Cluster, STEPLOG, StepLine, poll, request, try_get};
use common::{am_alert, ts};
use serde_json::{Value, json};

// ---- helpers ----

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster at a time (a panicked test leaves the lock usable).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const ADMIN: &str = "admin-token-0123456789abcdefghij";
const ELECTION: Duration = Duration::from_secs(10);
/// The first election, while three processes start on a busy machine.
const FIRST_ELECTION: Duration = Duration::from_secs(20);

/// A rule acting on `alertname` for the alert's `service` label, with one run step `step` that
/// appends `<step> <fencing token> <pid> <parent pid>` to the shared step log and then runs
/// `then` (shell).
fn rule(
    name: &str,
    alertname: &str,
    sustained: &str,
    approval: &str,
    step: &str,
    then: &str,
    idempotent: bool,
) -> String {
    let script = format!("echo \"{step} $ROLLBACKD_FENCING_TOKEN $$ $PPID\" >> {STEPLOG}; {then}")
        .replace('\'', "''");
    let steps = format!(
        "      - name: {step}\n        run: [/bin/sh, -c, '{script}']\n        timeout: 2m\n        idempotent: {idempotent}\n"
    );
    rule_with(name, alertname, sustained, approval, &steps)
}

/// A rule acting on `alertname` for the alert's `service` label with the given steps (YAML,
/// indented as list items under `steps:`).
fn rule_with(name: &str, alertname: &str, sustained: &str, approval: &str, steps: &str) -> String {
    format!(
        r#"  - name: {name}
    match:
      - alertname="{alertname}"
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach:
      sustained: {sustained}
      clear_after: 1s
    release:
      max_age: 1h
    approval: {approval}
    steps:
{steps}"#
    )
}

/// POSTs to one node, never panicking: None when no answer came within `timeout`.
fn post_to(
    c: &Cluster,
    node: u64,
    path: &str,
    token: Option<&str>,
    body: &Value,
    timeout: Duration,
) -> Option<(u16, Value)> {
    request(
        reqwest::Method::POST,
        &c.url(node, path),
        token,
        Some(body),
        timeout,
    )
}

/// POSTs to `node` until it answers 2xx (a node may not know the new leader yet: 503), for up to
/// 10 s; panics with the last answer. Only for idempotent writes (a release with the same
/// deployment id, the same alert, the same person's vote).
fn post_ok(c: &Cluster, node: u64, path: &str, token: Option<&str>, body: &Value) -> Value {
    let mut last = None;
    let done = poll(Duration::from_secs(10), || {
        let r = post_to(c, node, path, token, body, Duration::from_secs(3));
        last = r.clone();
        r.filter(|(s, _)| (200..300).contains(s)).map(|(_, v)| v)
    });
    done.unwrap_or_else(|| {
        panic!(
            "POST {path} on node {node}: no 2xx in 10 s, last {last:?}\n{}",
            c.diagnose()
        )
    })
}

fn release_body(service: &str, id: &str, deployed_at: &str) -> Value {
    json!({"service": service, "environment": "production", "version": format!("v-{id}"),
           "deployment_id": id, "deployed_at": deployed_at})
}

/// Releases A (older) and B (newer) of `service`, then a firing alert that began `started`
/// seconds from now (negative: in the past), all sent to `node`.
fn breach(c: &Cluster, node: u64, service: &str, alertname: &str, started: f64) {
    post_ok(
        c,
        node,
        "/v1/releases",
        None,
        &release_body(service, "A", &ts(-120.0)),
    );
    post_ok(
        c,
        node,
        "/v1/releases",
        None,
        &release_body(service, "B", &ts(-60.0)),
    );
    let alert = am_alert(
        "firing",
        json!({"alertname": alertname, "service": service, "environment": "production", "severity": "page"}),
        &ts(started),
        &format!("fp-{service}"),
    );
    post_ok(c, node, "/v1/webhooks/alertmanager", None, &alert);
}

/// The other live nodes.
fn others(c: &Cluster, not: u64) -> Vec<u64> {
    c.ids().into_iter().filter(|i| *i != not).collect()
}

/// Waits until `node` shows incident `id` exactly as `reference` shows it.
fn wait_same_incident(c: &Cluster, node: u64, reference: u64, id: &str) {
    let mut last = (Value::Null, Value::Null);
    let same = poll(Duration::from_secs(15), || {
        let (a, b) = (c.incident(node, id), c.incident(reference, id));
        let same = a.is_some() && a == b;
        last = (a.unwrap_or(Value::Null), b.unwrap_or(Value::Null));
        same.then_some(())
    });
    assert!(
        same.is_some(),
        "{id} differs between node {node} and node {reference} after 15 s:\nnode {node}: {:#}\nnode {reference}: {:#}",
        last.0,
        last.1
    );
}

/// Waits up to 10 s for `GET /readyz` on `node` to answer `status`.
fn wait_ready(c: &Cluster, node: u64, status: u16) {
    let mut last = None;
    let ok = poll(Duration::from_secs(10), || {
        last = request(
            reqwest::Method::GET,
            &c.url(node, "/readyz"),
            None,
            None,
            Duration::from_secs(2),
        );
        last.as_ref().filter(|(s, _)| *s == status).map(|_| ())
    });
    assert!(
        ok.is_some(),
        "/readyz on node {node}: not {status} within 10 s (last {last:?})\n{}",
        c.diagnose()
    );
}

/// Step lines stay as they are for `d` (nothing more runs).
fn assert_no_more_lines(c: &Cluster, before: &[StepLine], d: Duration, why: &str) {
    std::thread::sleep(d);
    let now = c.steps.lines();
    assert_eq!(now, before, "{why}: more step lines\n{}", c.diagnose());
}

// ---- a. kill -9 the leader while a non-idempotent and an idempotent step run ----

#[test]
fn kill9_leader_mid_steps_fails_the_non_idempotent_and_reruns_the_idempotent() {
    let _g = serial();
    // The first run of each step sleeps long (it must still be running at the kill); a re-run
    // of the idempotent step finds its marker and sleeps briefly.
    let marker = format!("{STEPLOG}.again");
    let rules = format!(
        "rules:\n{}{}",
        rule(
            "once-errors",
            "OnceErrors",
            "1s",
            "none",
            "once-step",
            "exec sleep 30",
            false
        ),
        rule(
            "again-errors",
            "AgainErrors",
            "1s",
            "none",
            "again-step",
            &format!("if [ -e {marker} ]; then exec sleep 1; fi; touch {marker}; exec sleep 30"),
            true
        ),
    );
    let mut c = Cluster::start(3, &rules, "");
    let leader = c.wait_leader(FIRST_ELECTION);
    let old_term = c.term(leader);

    breach(&c, leader, "once", "OnceErrors", -5.0);
    breach(&c, leader, "again", "AgainErrors", -5.0);
    let once = c.wait_incident_of(leader, "once", Duration::from_secs(10));
    let again = c.wait_incident_of(leader, "again", Duration::from_secs(10));
    // Both steps started: their processes wrote their lines, and the journal says so.
    poll(Duration::from_secs(10), || {
        let started = |id: &str| {
            c.incident(leader, id)
                .is_some_and(|i| i["steps"][0]["state"] == "started")
        };
        (c.steps.of("once-step").len() == 1
            && c.steps.of("again-step").len() == 1
            && started(&once)
            && started(&again))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("both steps never seen running\n{}", c.diagnose()));
    let first_once = c.steps.of("once-step")[0].clone();
    let first_again = c.steps.of("again-step")[0].clone();
    assert_eq!(c.ran_on(&first_once), leader, "{first_once:?}");
    assert_eq!(c.ran_on(&first_again), leader, "{first_again:?}");
    // The token is the term of the leader that started the steps.
    let term = c.term(leader);
    assert!(term >= old_term, "term went from {old_term} to {term}");
    assert_eq!(first_once.token, term, "{first_once:?}");
    assert_eq!(first_again.token, term, "{first_again:?}");

    c.kill9(leader);
    let (new_leader, took) = c.wait_new_leader(leader, ELECTION);
    eprintln!("new leader {new_leader} after {took:?}");

    let failed = c.wait_state(
        new_leader,
        &once,
        "rollback_failed",
        Duration::from_secs(15),
    );
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("step state unknown"),
        "reason {reason:?}: {failed:#}"
    );
    let done = c.wait_state(new_leader, &again, "rolled_back", Duration::from_secs(20));

    // From the processes' own lines: the non-idempotent step ran once, the idempotent one again
    // under a strictly higher token.
    let once_lines = c.steps.of("once-step");
    assert_eq!(
        once_lines,
        std::slice::from_ref(&first_once),
        "non-idempotent step ran again\n{}",
        c.diagnose()
    );
    let again_lines = c.steps.of("again-step");
    assert_eq!(
        again_lines.len(),
        2,
        "idempotent step: {again_lines:?}\n{}",
        c.diagnose()
    );
    assert_eq!(again_lines[0], first_again);
    assert!(
        again_lines[1].token > again_lines[0].token,
        "re-run token {} not above {}",
        again_lines[1].token,
        again_lines[0].token
    );
    assert_ne!(again_lines[1].pid, again_lines[0].pid);
    assert_eq!(c.ran_on(&again_lines[1]), new_leader, "{again_lines:?}");
    assert_eq!(again_lines[1].token, c.term(new_leader), "{again_lines:?}");
    let became = format!("became leader term={}", again_lines[1].token);
    assert!(
        c.stderr(new_leader).contains(&became),
        "node {new_leader} never logged `{became}`\n{}",
        c.diagnose()
    );
    // The journal agrees with the processes.
    assert_eq!(
        done["steps"][0]["fencing_token"], again_lines[1].token,
        "{done:#}"
    );
    assert_eq!(
        failed["steps"][0]["fencing_token"], first_once.token,
        "{failed:#}"
    );

    // The killed node comes back on its data dir, follows the new leader, runs nothing, and
    // holds the same records.
    let before = c.steps.lines();
    c.restart(leader);
    c.wait_all_agree(new_leader, Duration::from_secs(15));
    for id in [&once, &again] {
        wait_same_incident(&c, leader, new_leader, id);
    }
    assert_no_more_lines(&c, &before, Duration::from_secs(1), "after the restart");
}

// ---- b. SIGSTOP the leader while an incident awaits approval ----

#[test]
fn paused_leader_awaiting_approval_is_replaced_and_runs_nothing_after_it_resumes() {
    let _g = serial();
    // A second rule whose breach reaches its deadline while the leader is paused: when the
    // paused leader resumes, its own timers are late at once, before it has heard that it was
    // deposed.
    let rules = format!(
        "rules:\n{}{}",
        rule(
            "gated-errors",
            "GatedErrors",
            "1s",
            "{require_roles: [founder], quorum: 1, timeout: 5m}",
            "gated-step",
            "sleep 1",
            false
        ),
        rule(
            "late-errors",
            "LateErrors",
            "3s",
            "none",
            "late-step",
            "true",
            false
        )
    );
    let extra = format!(
        "people:\n  - {{id: ada, name: Ada Founder, roles: [founder]}}\ntokens: {{admin: \"{ADMIN}\"}}\n"
    );
    let mut c = Cluster::start(3, &rules, &extra);
    let old = c.wait_leader(FIRST_ELECTION);
    let old_term = c.term(old);

    breach(&c, old, "gated", "GatedErrors", -5.0);
    let id = c.wait_incident_of(old, "gated", Duration::from_secs(10));
    for n in c.ids() {
        c.wait_state(n, &id, "awaiting_approval", Duration::from_secs(10));
    }
    assert!(c.steps.lines().is_empty(), "ran before approval");
    // Due 3 s from now, while the leader is paused.
    breach(&c, old, "late", "LateErrors", 0.0);

    c.stop(old);
    let (new, took) = c.wait_new_leader(old, ELECTION);
    eprintln!("new leader {new} after {took:?}");
    // Approve through the survivor that is not the leader (it forwards), else the leader.
    let via = others(&c, old)
        .into_iter()
        .find(|n| *n != new)
        .unwrap_or(new);
    post_ok(
        &c,
        via,
        &format!("/v1/incidents/{id}/approve"),
        Some(ADMIN),
        &json!({"person": "ada", "reason": "the leader is paused"}),
    );
    let inc = c.wait_state(new, &id, "rolled_back", Duration::from_secs(15));

    let lines = c.steps.of("gated-step");
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", c.diagnose());
    let token = lines[0].token;
    assert!(
        token > old_term,
        "token {token} not above the paused leader's term {old_term}"
    );
    assert_eq!(c.ran_on(&lines[0]), new, "{lines:?}");
    assert_eq!(inc["steps"][0]["fencing_token"], token, "{inc:#}");
    assert!(
        c.stderr(new)
            .contains(&format!("became leader term={token}")),
        "node {new} never logged `became leader term={token}`\n{}",
        c.diagnose()
    );

    // The breach that fell due during the pause is the new leader's to act on, once.
    let late = c.wait_incident_of(new, "late", Duration::from_secs(15));
    c.wait_state(new, &late, "rolled_back", Duration::from_secs(15));
    let late_lines = c.steps.of("late-step");
    assert_eq!(late_lines.len(), 1, "{late_lines:?}");
    assert_eq!(c.ran_on(&late_lines[0]), new, "{late_lines:?}");
    assert!(late_lines[0].token > old_term, "{late_lines:?}");

    // The old leader resumes: it learns it was deposed and runs nothing, not even what its own
    // timers found due while it was paused.
    let before = c.steps.lines();
    c.cont(old);
    poll(Duration::from_secs(10), || {
        (c.view(old).is_some_and(|v| v["leader"] == new)
            && c.stderr(old).contains("lost leadership"))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "resumed node {old} does not name {new} or never logged `lost leadership`\n{}",
            c.diagnose()
        )
    });
    assert_no_more_lines(&c, &before, Duration::from_secs(2), "after SIGCONT");
    wait_same_incident(&c, old, new, &id);
    wait_same_incident(&c, old, new, &late);
}

// ---- c. partitions ----

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// Every link to and from the leader.
    Isolate,
    /// Only what the leader opens to the followers (they still reach it).
    LeaderToFollowers,
    /// Only what the followers open to the leader (it still reaches them).
    FollowersToLeader,
}

/// Releases acknowledged 2xx, by (service, deployment id), and by which node.
#[derive(Default)]
struct Acked(Vec<(String, String, u64)>);

impl Acked {
    /// Posts a fresh release of `service` to `node` once; remembers it when acknowledged.
    fn try_release(
        &mut self,
        c: &Cluster,
        node: u64,
        service: &str,
        timeout: Duration,
    ) -> Option<u16> {
        let dep = format!("{service}-n{node}-{}", self.0.len());
        let r = post_to(
            c,
            node,
            "/v1/releases",
            None,
            &release_body(service, &dep, &ts(-30.0)),
            timeout,
        );
        let status = r.as_ref().map(|(s, _)| *s);
        if let Some(s) = status {
            if (200..300).contains(&s) {
                self.0.push((service.to_string(), dep, node));
            }
        }
        status
    }

    /// Fresh releases to `node` until one is acknowledged, for up to 10 s.
    fn release_ok(&mut self, c: &Cluster, node: u64, service: &str) {
        let mut last = None;
        let ok = poll(Duration::from_secs(10), || {
            last = self.try_release(c, node, service, Duration::from_secs(3));
            last.filter(|s| (200..300).contains(s))
        });
        assert!(
            ok.is_some(),
            "no release acknowledged by node {node} in 10 s (last {last:?})\n{}",
            c.diagnose()
        );
    }

    fn record(&mut self, service: &str, dep: &str, node: u64) {
        self.0.push((service.to_string(), dep.to_string(), node));
    }

    /// Every acknowledged release is on every node.
    fn assert_everywhere(&self, c: &Cluster) {
        for n in c.ids() {
            let mut missing = Vec::new();
            let found = poll(Duration::from_secs(15), || {
                missing = self
                    .0
                    .iter()
                    .filter(|(svc, dep, _)| {
                        !c.release_ids(n, svc).is_some_and(|ids| ids.contains(dep))
                    })
                    .cloned()
                    .collect();
                missing.is_empty().then_some(())
            });
            assert!(
                found.is_some(),
                "node {n} lacks acknowledged releases {missing:?} (service, id, acknowledged by)\n{}",
                c.diagnose()
            );
        }
    }
}

fn partition(cut: Cut) {
    let _g = serial();
    // The breach's deadline falls inside the cut: the rule acts 5 s after the alert began, and
    // the alert begins as the cut starts.
    let rules = format!(
        "rules:\n{}",
        rule(
            "part-errors",
            "PartErrors",
            "5s",
            "none",
            "part-step",
            "true",
            false
        )
    );
    let c = Cluster::start(3, &rules, "");
    let leader = c.wait_leader(FIRST_ELECTION);
    let old_term = c.term(leader);
    let followers = others(&c, leader);
    let mut acked = Acked::default();

    // Before the cut: the release pair and the alert, through the leader.
    breach(&c, leader, "part", "PartErrors", 0.0);
    acked.record("part", "A", leader);
    acked.record("part", "B", leader);
    acked.release_ok(&c, leader, "before");
    // The proxies know who sends what: peer traffic names its sender.
    for f in &followers {
        assert!(
            c.net.accepted(leader, *f) > 0,
            "no connection from leader {leader} to {f} named its sender (X-Rollbackd-Node)"
        );
    }

    match cut {
        Cut::Isolate => c.net.isolate(leader),
        Cut::LeaderToFollowers => followers.iter().for_each(|f| c.net.block(leader, *f)),
        Cut::FollowersToLeader => followers.iter().for_each(|f| c.net.block(*f, leader)),
    }
    let cut_at = Instant::now();

    let acting = if cut == Cut::FollowersToLeader {
        // The leader still reaches a majority (its own appends go through): it stays, and its
        // writes are acknowledged; a follower cannot forward to it.
        acked.release_ok(&c, leader, "during");
        for f in &followers {
            let s = acked.try_release(&c, *f, "during", Duration::from_secs(3));
            eprintln!("write to follower {f} during the cut: {s:?}");
        }
        let l = c.wait_leader(ELECTION);
        assert_eq!(
            l, leader,
            "the leader changed though it reaches every follower"
        );
        leader
    } else {
        // A write to the deposed leader, sent as soon as it is cut off: never acknowledged.
        let before = acked.0.len();
        let s = acked.try_release(&c, leader, "during", Duration::from_secs(4));
        assert!(
            acked.0.len() == before,
            "the cut-off leader {leader} acknowledged a write ({s:?}) it cannot have replicated\n{}",
            c.diagnose()
        );
        eprintln!("write to the cut-off leader {leader}: {s:?}");
        let (l, took) = c.wait_new_leader(leader, ELECTION);
        eprintln!(
            "new leader {l} after {took:?} (cut {:?} ago)",
            cut_at.elapsed()
        );
        if cut == Cut::Isolate {
            // Cut off from every peer, it knows no leader that holds a majority.
            wait_ready(&c, leader, 503);
        }
        // The majority takes writes, through either of its nodes.
        for f in &followers {
            acked.release_ok(&c, *f, "during");
        }
        l
    };

    // The deadline passes during the cut: the acting leader runs the step once, under its term.
    let id = c.wait_incident_of(acting, "part", Duration::from_secs(15));
    c.wait_state(acting, &id, "rolled_back", Duration::from_secs(15));
    let lines = c.steps.of("part-step");
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", c.diagnose());
    assert_eq!(c.ran_on(&lines[0]), acting, "{lines:?}");
    if acting != leader {
        assert!(
            lines[0].token > old_term,
            "step ran under token {} though the cut-off leader had term {old_term}",
            lines[0].token
        );
    }
    eprintln!("cut lasted {:?}", cut_at.elapsed());

    // The nodes that see a leader holding a majority say they are ready.
    for n in c.ids() {
        if n != leader || cut == Cut::FollowersToLeader {
            wait_ready(&c, n, 200);
        }
    }

    c.net.heal_all();
    let after = c.wait_leader(ELECTION);
    c.wait_all_agree(after, Duration::from_secs(15));
    acked.release_ok(&c, after, "after");
    acked.assert_everywhere(&c);
    for n in c.ids() {
        wait_same_incident(&c, n, after, &id);
    }
    c.steps.assert_each_once(&["part-step"]);
    assert_no_more_lines(
        &c,
        &c.steps.lines(),
        Duration::from_secs(1),
        "after the heal",
    );
    // Every request a node sent to a peer named its sender.
    for n in c.ids() {
        assert_eq!(
            c.net.anonymous(n),
            0,
            "node {n}'s proxy got connections without X-Rollbackd-Node"
        );
    }
}

#[test]
fn partition_isolated_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    partition(Cut::Isolate);
}

#[test]
fn partition_leader_to_followers_cut_only() {
    partition(Cut::LeaderToFollowers);
}

#[test]
fn partition_followers_to_leader_cut_only() {
    partition(Cut::FollowersToLeader);
}

// ---- the cluster's own surface: its view, peer authentication, the token everywhere ----

#[test]
fn view_peer_auth_and_fencing_token_in_templates_and_http_steps() {
    let _g = serial();
    let hook = common::receiver::Receiver::generic();
    let steps = format!(
        r#"      - name: tmpl-step
        run: [/bin/sh, -c, 'echo "tmpl-step $0 $$ $PPID" >> {STEPLOG}', "{{{{ fencing_token }}}}"]
        timeout: 1m
      - name: http-step
        http: {{ method: POST, url: "{url}" }}
        timeout: 1m
"#,
        url = hook.url("/fence/{{ fencing_token }}")
    );
    let rules = format!(
        "rules:\n{}",
        rule_with("fence-errors", "FenceErrors", "1s", "none", &steps)
    );
    let mut c = Cluster::start(3, &rules, "");
    let leader = c.wait_leader(FIRST_ELECTION);
    let term = c.term(leader);

    // Every node's view: itself, the same leader and members (their urls are the proxies'),
    // one rules digest.
    for n in c.ids() {
        let v = c.view(n).unwrap_or_else(|| panic!("no view on {n}"));
        assert_eq!(v["node_id"], n, "{v}");
        assert_eq!(v["leader"], leader, "{v}");
        assert!(v["term"].as_u64().is_some(), "{v}");
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let ids: Vec<u64> = members.iter().filter_map(|m| m["id"].as_u64()).collect();
        assert_eq!(ids, [1, 2, 3], "{v}");
        for m in &members {
            let id = m["id"].as_u64().unwrap_or_default();
            assert_eq!(
                m["url"],
                format!("http://127.0.0.1:{}", c.node(id).proxy_port),
                "{v}"
            );
            let role = m["role"].as_str().unwrap_or_default();
            let want = if id == leader { "leader" } else { "follower" };
            assert_eq!(role, want, "member {id} on node {n}: {v}");
            assert_eq!(m["rules_digest"], members[0]["rules_digest"], "{v}");
            assert!(m["rules_digest"].is_string(), "{v}");
        }
    }

    // Peer endpoints want the cluster secret.
    for path in [
        "/internal/raft/append",
        "/internal/raft/vote",
        "/internal/raft/snapshot",
    ] {
        for secret in [None, Some("not-the-cluster-secret-at-all")] {
            let mut req = reqwest::blocking::Client::new()
                .post(c.url(leader, path))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(s) = secret {
                req = req.header("X-Rollbackd-Cluster-Secret", s);
            }
            let status = req.send().map(|r| r.status().as_u16()).ok();
            assert_eq!(status, Some(401), "{path} with secret {secret:?}");
        }
    }

    // The token reaches a template in argv, an http step's URL and header, and the journal.
    breach(&c, leader, "fence", "FenceErrors", -5.0);
    let id = c.wait_incident_of(leader, "fence", Duration::from_secs(10));
    let inc = c.wait_state(leader, &id, "rolled_back", Duration::from_secs(15));
    let lines = c.steps.of("tmpl-step");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0].token, term,
        "{{{{ fencing_token }}}} in argv: {lines:?}"
    );
    assert_eq!(c.ran_on(&lines[0]), leader);
    let got = hook.wait_delivered(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, format!("/fence/{term}"), "{:?}", got[0]);
    assert_eq!(
        got[0].header("x-rollbackd-fencing-token"),
        term.to_string(),
        "{:?}",
        got[0]
    );
    for (i, s) in inc["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        assert_eq!(s["fencing_token"], term, "step {i}: {inc:#}");
    }

    // A member that is gone is `unreachable` in the leader's view.
    let gone = others(&c, leader)[0];
    c.kill9(gone);
    poll(Duration::from_secs(10), || {
        c.view(leader).and_then(|v| {
            v["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == gone && m["role"] == "unreachable")
                .map(|_| ())
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "killed member {gone} not `unreachable` in the leader's view\n{}",
            c.diagnose()
        )
    });
}

/// A node whose disk is lost rejoins from a snapshot: with `snapshot_every: 10` the log the
/// others hold no longer starts at the beginning, so the wiped node can only catch up by
/// installing a snapshot of the state trees; it then holds every record, and follows.
#[test]
fn a_node_whose_disk_was_wiped_rejoins_from_a_snapshot() {
    let _serial = serial();
    let mut c = Cluster::start(3, "rules: []\n", "  snapshot_every: 10\n");
    let leader = c.wait_leader(FIRST_ELECTION);
    let victim = others(&c, leader)[0];
    let ids: Vec<String> = (0..40).map(|i| format!("dpl-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        post_ok(
            &c,
            leader,
            "/v1/releases",
            None,
            &release_body("web", id, &ts(-3600.0 + i as f64)),
        );
    }
    c.kill9(victim);
    std::fs::remove_dir_all(c.node(victim).setup.path().join("data")).expect("wipe the data dir");
    c.restart(victim);
    let got = poll(Duration::from_secs(30), || {
        let (s, v) = try_get(&c.url(victim, "/v1/releases/web"), None)?;
        let n = v["items"].as_array().map(Vec::len).unwrap_or(0);
        (s == 200 && n == ids.len()).then_some(n)
    });
    assert_eq!(got, Some(ids.len()), "{}", c.diagnose());
    let view = c.view(victim).expect("the wiped node answers");
    assert_eq!(view["leader"].as_u64(), Some(leader), "{view:#}");
    // It takes writes again like any member.
    post_ok(
        &c,
        victim,
        "/v1/releases",
        None,
        &release_body("web", "dpl-after", &ts(-1.0)),
    );
    let on_leader = poll(Duration::from_secs(10), || {
        let (_, v) = try_get(&c.url(leader, "/v1/releases/web"), None)?;
        v["items"]
            .as_array()
            .filter(|l| l.len() == ids.len() + 1)
            .map(Vec::len)
    });
    assert_eq!(on_leader, Some(ids.len() + 1), "{}", c.diagnose());
}
