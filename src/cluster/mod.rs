//! High availability: several nodes replicate every record with Raft (the `openraft` crate). Each
//! node keeps its own sled (log, vote and the applied state trees, see `store::raft`); the Raft
//! log is the journal, one entry per group-commit batch, and a batch is acknowledged only once a
//! majority holds it. Only the leader decides and acts; its term is the fencing token of every
//! step it starts.
//!
//! This module runs the Raft node and its transport (HTTP on the daemon's own listener, see
//! `api::cluster`) and answers what the rest needs: who leads, in which term, whether a write
//! was committed.

pub mod network;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use openraft::{BasicNode, Raft, ServerState};
use serde::Serialize;

use crate::config::{Cluster as ClusterConfig, Secret};
use crate::store::Store;
use crate::store::raft::{Batch, LogStore, StateMachine, TypeConfig};

/// How long a commit may wait for a majority before the write is answered 503.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(3);

/// The header every request between nodes carries: the sender's node id.
pub const NODE_HEADER: &str = "x-rollbackd-node";
/// The header that authenticates a node to another (the cluster secret).
pub const SECRET_HEADER: &str = "x-rollbackd-cluster-secret";

pub struct Node {
    pub id: u64,
    pub raft: Raft<TypeConfig>,
    pub secret: Secret,
    pub advertise: String,
    election_timeout: Duration,
    /// When this node last heard from a leader (append entries), in ms since the epoch.
    last_leader_contact: AtomicI64,
    pub http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("this node is not the leader (the leader is {0:?})")]
    NotLeader(Option<u64>),
    #[error("no majority acknowledged the write within {0:?}")]
    Timeout(Duration),
    #[error("raft: {0}")]
    Raft(String),
}

/// One member as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub url: String,
    pub role: &'static str,
}

impl Node {
    /// Starts the Raft node on `store`, and forms the cluster from `members` if it has never
    /// been formed (every node may try; the first election settles it).
    pub async fn start(cfg: &ClusterConfig, store: &Store) -> Result<Arc<Node>, String> {
        let id = cfg.me()?;
        let et = cfg.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "rollbackd".to_string(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: et,
            election_timeout_max: et * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.snapshot_every.min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("cluster timings: {e}"))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cluster http client: {e}"))?;
        let net = network::Network {
            http: http.clone(),
            secret: cfg.secret.clone(),
            me: id,
        };
        let log = LogStore::open(store).map_err(|e| e.to_string())?;
        let sm = StateMachine::new(store.clone());
        let raft = Raft::new(id, Arc::new(raft_config), net, log, sm)
            .await
            .map_err(|e| format!("raft: {e}"))?;
        let initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
        // A data dir a single node wrote: its records must be the cluster's, so this node
        // forms the cluster alone and the others join it (they receive a snapshot).
        let migrating = !initialized && store.holds_records();
        if migrating && cfg.members.len() > 1 {
            let _ = raft.shutdown().await;
            return Err(format!(
                "{}: this data directory holds the records of a single node. To bring them into a cluster, start this node first with cluster.members listing only itself (id {id}), then add the others with `rollbackd cluster add ID URL`; they receive a snapshot of these records",
                "cluster.members"
            ));
        }
        let founding = cfg.members.iter().any(|m| m.id == id);
        if !initialized && !founding {
            // Not one of the initial voters: it never forms a cluster of its own, it waits for
            // the leader to add it (`rollbackd cluster add`).
            tracing::info!(
                node = id,
                "not among cluster.members: waiting to be added to the cluster"
            );
        }
        if !initialized && founding {
            let members: BTreeMap<u64, BasicNode> = cfg
                .members
                .iter()
                .map(|m| (m.id, BasicNode::new(m.url.trim_end_matches('/'))))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                // Another node formed it first: that is fine, this one joins it.
                tracing::debug!(error = %e, "cluster already formed");
            }
        }
        if migrating {
            let r = raft.clone();
            tokio::spawn(async move {
                // Once it leads alone, every record is in a snapshot and the log before it
                // is dropped: a node added later is sent the snapshot, not a log without them.
                if r.wait(None)
                    .state(ServerState::Leader, "single-node migration")
                    .await
                    .is_ok()
                    && r.trigger().snapshot().await.is_ok()
                    && let Ok(m) = r
                        .wait(None)
                        .metrics(|m| m.snapshot.is_some(), "snapshot")
                        .await
                    && let Some(s) = m.snapshot
                {
                    let _ = r.trigger().purge_log(s.index).await;
                    tracing::info!(
                        index = s.index,
                        "single-node records moved into the cluster's first snapshot"
                    );
                }
            });
        }
        Ok(Arc::new(Node {
            id,
            raft,
            secret: cfg.secret.clone(),
            advertise: cfg.advertise.trim_end_matches('/').to_string(),
            election_timeout: cfg.election_timeout,
            last_leader_contact: AtomicI64::new(0),
            http,
        }))
    }

    pub fn metrics(&self) -> openraft::RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn term(&self) -> u64 {
        self.metrics().current_term
    }

    /// The leader this node knows, if that leader is a voter of the membership this node has: a
    /// leader that removed itself (openraft 0.9 keeps it in the leader state) is none.
    pub fn leader(&self) -> Option<u64> {
        let m = self.metrics();
        m.current_leader.filter(|l| votes(&m, *l))
    }

    pub fn is_leader(&self) -> bool {
        self.leads(&self.metrics())
    }

    /// This node leads: openraft says so, and it is a voter of its own membership. A leader
    /// removed from the membership stays in openraft's leader state (0.9 has no step-down), but
    /// it may no longer act: it has no majority of which it is part.
    fn leads(&self, m: &openraft::RaftMetrics<u64, BasicNode>) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(self.id) && votes(m, self.id)
    }

    /// The url of the leader, if this node knows one other than itself.
    pub fn leader_url(&self) -> Option<String> {
        let m = self.metrics();
        let leader = self.leader().filter(|l| *l != self.id)?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Appends one batch to the Raft log and waits until a majority holds it and this node has
    /// applied it.
    pub async fn commit(&self, batch: Batch) -> Result<(), CommitError> {
        match tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(batch)).await {
            Err(_) => Err(CommitError::Timeout(COMMIT_TIMEOUT)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Err(CommitError::NotLeader(f.leader_id)),
                None => Err(CommitError::Raft(e.to_string())),
            },
        }
    }

    /// A leader heard from: for readiness.
    pub fn heard_from_leader(&self) {
        self.last_leader_contact
            .store(jiff::Timestamp::now().as_millisecond(), Ordering::Relaxed);
    }

    /// Whether this node knows a leader that holds a majority: it is that leader and a
    /// majority acknowledged it recently, or it heard from the leader recently.
    pub fn ready(&self) -> bool {
        let m = self.metrics();
        let window = (self.election_timeout * 2).as_millis() as u64;
        if self.leader().is_none() {
            return false;
        }
        if self.leads(&m) {
            return m.millis_since_quorum_ack.is_some_and(|ms| ms <= window);
        }
        let since = jiff::Timestamp::now().as_millisecond()
            - self.last_leader_contact.load(Ordering::Relaxed);
        since >= 0 && (since as u64) <= window
    }

    /// The members with their roles as this node sees them; `reachable` says which other
    /// members answered just now.
    pub fn members(&self, reachable: &BTreeMap<u64, bool>) -> Vec<MemberView> {
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let role = if *id == self.id {
                    match m.state {
                        ServerState::Leader => "leader",
                        ServerState::Candidate => "candidate",
                        ServerState::Learner => "learner",
                        _ if !voters.contains(id) => "learner",
                        _ => "follower",
                    }
                } else if reachable.get(id) == Some(&false) {
                    "unreachable"
                } else if Some(*id) == m.current_leader {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                MemberView {
                    id: *id,
                    url: node.addr.clone(),
                    role,
                }
            })
            .collect()
    }

    /// Waits until this node leads, in a term whose every earlier entry it has applied: then
    /// its store holds everything committed, and its term is returned.
    pub async fn wait_to_lead(&self) -> u64 {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                let applied = m.last_applied.map(|l| l.index);
                if self.leads(&m) && applied.is_some() && applied >= m.last_log_index {
                    return m.current_term;
                }
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves if the Raft core stops for good (a storage error, a bug): the node can neither
    /// follow nor lead any more, and the daemon must stop so that it is restarted.
    pub async fn died(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "the raft core stopped".to_string();
            }
        }
    }

    /// Resolves once this node no longer leads in `term`.
    pub async fn lost(&self, term: u64) {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if !self.leads(&m) || m.current_term != term {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// `id` is a voter of the membership in `m`.
fn votes(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> bool {
    m.membership_config
        .membership()
        .voter_ids()
        .any(|v| v == id)
}
