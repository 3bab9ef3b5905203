//! The Raft side of the store, for a cluster: the log and the vote in their own sled trees beside
//! the state trees, and the state machine that applies each committed batch to the state trees
//! with [`Store::commit_with`], recording the applied log id in the same transaction.
//!
//! One log entry is one group-commit batch of the engine task: the records it changed and the
//! timeline it appended. Snapshots are [`Store::export`] blobs of every state tree.

// openraft's storage traits fix the error type (`StorageError`, large); the helpers share it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::engine::Change;
use crate::model::TimelineEntry;

/// What one Raft log entry carries: one commit of the engine task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub changes: Vec<Change>,
    pub timeline: Vec<TimelineEntry>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

type Err = StorageError<u64>;
type Applied = (Option<LogId<u64>>, StoredMembership<u64, BasicNode>);
type Current = Arc<tokio::sync::Mutex<Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>>>;

const META_APPLIED: &[u8] = b"raft_applied";
const META_MEMBERSHIP: &[u8] = b"raft_membership";
const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

fn read_err(e: impl std::error::Error + 'static) -> Err {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> Err {
    StorageIOError::write(&e).into()
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, Err> {
    serde_json::to_vec(v).map_err(write_err)
}

fn from_json<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, Err> {
    serde_json::from_slice(b).map_err(read_err)
}

/// The Raft log (`raft_log`: index → entry) and its state (`raft_state`: vote, committed, last
/// purged), each write flushed before it is reported done.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    state: sled::Tree,
}

impl LogStore {
    pub fn open(store: &Store) -> Result<LogStore, super::StoreError> {
        let db = store.db().clone();
        Ok(LogStore {
            log: db.open_tree("raft_log")?,
            state: db.open_tree("raft_state")?,
            db,
        })
    }

    fn get<T: for<'a> Deserialize<'a>>(&self, key: &[u8]) -> Result<Option<T>, Err> {
        match self.state.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(from_json(&v)?)),
            None => Ok(None),
        }
    }

    async fn put<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), Err> {
        self.state.insert(key, to_json(v)?).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    /// Removes the log entries whose (big-endian) indexes fall in `range`, durably.
    async fn remove_entries<R>(&self, range: R) -> Result<(), Err>
    where
        R: RangeBounds<[u8; 8]>,
    {
        let keys: Vec<sled::IVec> = self
            .log
            .range(range)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        for k in keys {
            self.log.remove(k).map_err(write_err)?;
        }
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Err> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.log.range(start.to_be_bytes()..) {
            let (k, v) = kv.map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            if !range.contains(&index) {
                break;
            }
            out.push(from_json(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Err> {
        let last_purged_log_id: Option<LogId<u64>> = self.get(PURGED)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(from_json::<Entry<TypeConfig>>(&v)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Err> {
        self.put(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Err> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), Err> {
        self.put(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, Err> {
        Ok(self.get::<Option<LogId<u64>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Err>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), to_json(&e)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        let flushed = self.db.flush_async().await.map(|_| ());
        callback.log_io_completed(flushed.map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), Err> {
        self.remove_entries(log_id.index.to_be_bytes()..).await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Err> {
        self.put(PURGED, &log_id).await?;
        self.remove_entries(..=log_id.index.to_be_bytes()).await
    }
}

/// The state trees as a Raft state machine.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    /// The last snapshot built or installed, kept for sending to nodes that fell behind.
    current: Current,
    /// Held while a batch is applied and while a snapshot reads the trees with their applied
    /// log id, so a snapshot never holds a batch its log id says is still to come.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    pub fn new(store: Store) -> StateMachine {
        StateMachine {
            store,
            current: Default::default(),
            gate: Default::default(),
        }
    }

    fn applied(&self) -> Result<Applied, Err> {
        let applied = match self.store.meta(META_APPLIED).map_err(read_err)? {
            Some(v) => from_json(&v)?,
            None => None,
        };
        let membership = match self.store.meta(META_MEMBERSHIP).map_err(read_err)? {
            Some(v) => from_json(&v)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Err> {
        let gate = self.gate.lock().await;
        let (last_log_id, last_membership) = self.applied()?;
        let data = self.store.export().map_err(read_err)?;
        drop(gate);
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        *self.current.lock().await = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<Applied, Err> {
        self.applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, Err>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let _gate = self.gate.lock().await;
        let (_, mut membership) = self.applied()?;
        let mut out = Vec::new();
        for e in entries {
            let empty = Batch::default();
            let batch = match &e.payload {
                EntryPayload::Normal(b) => b,
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(e.log_id), m.clone());
                    &empty
                }
                EntryPayload::Blank => &empty,
            };
            let meta = [
                (META_APPLIED, to_json(&Some(e.log_id))?),
                (META_MEMBERSHIP, to_json(&membership)?),
            ];
            self.store
                .commit_with(&batch.changes, &batch.timeline, &meta)
                .await
                .map_err(|err| StorageIOError::apply(e.log_id, &err))?;
            out.push(());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Err> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Err> {
        let data = snapshot.into_inner();
        let _gate = self.gate.lock().await;
        self.store.import(&data).await.map_err(write_err)?;
        let applied = [
            (META_APPLIED, to_json(&meta.last_log_id)?),
            (META_MEMBERSHIP, to_json(&meta.last_membership)?),
        ];
        self.store
            .commit_with(&[], &[], &applied)
            .await
            .map_err(write_err)?;
        *self.current.lock().await = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Err> {
        Ok(self
            .current
            .lock()
            .await
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
