//! The only place that says `sled`. One tree per record kind, JSON values, keys that sort the way
//! they are read (time-ordered keys are big-endian).
//!
//! The engine task is the single writer: it commits each event's changes and timeline in one
//! transaction and waits for the flush before it performs any effect or answers the caller.
//! Readers (the API) read committed records directly.

pub mod lock;
pub mod raft;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::engine::{Change, State};
use crate::model::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage: record does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    breaches: sled::Tree,
    incidents: sled::Tree,
    releases: sled::Tree,
    freezes: sled::Tree,
    timeline: sled::Tree,
    meta: sled::Tree,
    outbox: sled::Tree,
    deliveries: sled::Tree,
    /// One [`IncidentSummary`] per incident, written with it.
    summaries: sled::Tree,
    timeline_seq: std::sync::Arc<AtomicU64>,
    /// Held while a commit's transaction applies and while a backup reads: a backup sees the state
    /// between two commits, never half of one.
    gate: std::sync::Arc<std::sync::Mutex<()>>,
}

/// The first line of a backup file; the [`Store::export`] blob follows.
const BACKUP_MAGIC: &[u8] = b"rollbackd-backup 1\n";

const META_SEQ: &[u8] = b"seq";
const META_EPOCH: &[u8] = b"epoch";
const ACTED_TERM: &[u8] = b"acted_term";
/// Set while a snapshot is being installed (in the default tree).
const IMPORTING: &[u8] = b"importing_snapshot";

/// Reads an [`Store::export`] blob.
struct Blob<'a>(&'a [u8]);

impl<'a> Blob<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(StoreError::Sled(sled::Error::Unsupported(
                "snapshot does not decode".into(),
            )));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
}
const META_TIMELINE_SEQ: &[u8] = b"timeline_seq";

/// Tree name → its key/value pairs.
type Decoded<'a> = Vec<(&'a [u8], Vec<(&'a [u8], &'a [u8])>)>;

/// An [`Store::export`] blob, every tree and record of it.
fn decode(blob: &[u8]) -> Result<Decoded<'_>> {
    let mut b = Blob(blob);
    let mut out = Vec::new();
    while !b.0.is_empty() {
        let name = b.bytes()?;
        let count = b.u32()?;
        let mut records = Vec::new();
        for _ in 0..count {
            records.push((b.bytes()?, b.bytes()?));
        }
        out.push((name, records));
    }
    Ok(out)
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let db = open_db(dir)?;
        let meta = db.open_tree("meta")?;
        let timeline_seq = read_u64(&meta, META_TIMELINE_SEQ)?;
        let store = Store {
            breaches: db.open_tree("breaches")?,
            incidents: db.open_tree("incidents")?,
            releases: db.open_tree("releases")?,
            freezes: db.open_tree("freezes")?,
            timeline: db.open_tree("timeline")?,
            outbox: db.open_tree("outbox")?,
            deliveries: db.open_tree("deliveries")?,
            summaries: db.open_tree("incident_summaries")?,
            meta,
            timeline_seq: std::sync::Arc::new(AtomicU64::new(timeline_seq)),
            gate: Default::default(),
            db,
        };
        if store.db.contains_key(IMPORTING)? {
            tracing::warn!(
                "a snapshot install was cut off; wiping the half-installed state (the cluster sends it again)"
            );
            for (_, tree) in store.state_trees() {
                tree.clear()?;
            }
            store.timeline_seq.store(0, Ordering::SeqCst);
            store.db.remove(IMPORTING)?;
            store.db.flush()?;
        }
        Ok(store)
    }

    /// Everything the engine needs, as it was last committed.
    pub fn load_state(&self) -> Result<State> {
        let mut st = State {
            next_seq: read_u64(&self.meta, META_SEQ)?,
            ..State::default()
        };
        for kv in self.breaches.iter() {
            let b: Breach = serde_json::from_slice(&kv?.1)?;
            // The index knows every open breach; the driver reads one back when an event needs it.
            if b.closed_at.is_none() {
                st.index.breach(&b);
            }
        }
        // Every incident's summary feeds the index; only the incidents the engine still works on
        // (active, or hooks to run) are read whole.
        self.summarise_older_records()?;
        for s in values::<IncidentSummary>(&self.summaries)? {
            st.index.incident(&s);
            if s.resident
                && let Some(i) = self.incident(&s.id)?
            {
                st.incidents.insert(i.id.clone(), i);
            }
        }
        // Keys sort by service, environment, deployed_at: arrival order within equal times is
        // lost, which the ledger does not rely on.
        for r in values::<Release>(&self.releases)? {
            st.releases.entry(r.service.clone()).or_default().push(r);
        }
        for ledger in st.releases.values_mut() {
            ledger.sort_by_key(|r| r.deployed_at);
        }
        for f in values::<Freeze>(&self.freezes)? {
            st.freezes.insert(f.service.clone(), f);
        }
        for kv in self.deliveries.iter() {
            let (k, v) = kv?;
            if let (Ok(id), Ok(ms)) = (
                String::from_utf8(k.to_vec()),
                <[u8; 8]>::try_from(v.as_ref()),
            ) {
                if let Ok(at) = jiff::Timestamp::from_millisecond(i64::from_be_bytes(ms)) {
                    st.deliveries.insert(id, at);
                }
            }
        }
        Ok(st)
    }

    /// Writes records atomically (one transaction) and durably (flushed). Of several changes to
    /// one record only the last is written.
    pub async fn commit(&self, changes: &[Change], timeline: &[TimelineEntry]) -> Result<()> {
        self.commit_with(changes, timeline, &[]).await
    }

    /// [`Store::commit`], with `meta` records written in the same transaction (the Raft state
    /// machine's applied log id and membership, so records and "applied up to" never disagree).
    pub(crate) async fn commit_with(
        &self,
        changes: &[Change],
        timeline: &[TimelineEntry],
        meta: &[(&[u8], Vec<u8>)],
    ) -> Result<()> {
        if changes.is_empty() && timeline.is_empty() && meta.is_empty() {
            return Ok(());
        }
        let mut writes: Vec<(usize, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        // Walk backwards so the last change to a record is the one taken.
        let mut taken: std::collections::HashSet<(usize, &[u8])> = Default::default();
        for c in changes.iter().rev() {
            let record = match c {
                Change::Breach(b) => Some((0, b.id.as_bytes())),
                Change::Incident(i) => Some((1, i.id.as_bytes())),
                Change::Seq(_) => Some((5, META_SEQ)),
                _ => None,
            };
            if record.is_some_and(|r| !taken.insert(r)) {
                continue;
            }
            match c {
                Change::Breach(b) => writes.push((0, b.id.as_bytes().to_vec(), Some(json(b)?))),
                Change::Incident(i) => {
                    writes.push((1, i.id.as_bytes().to_vec(), Some(json(i)?)));
                    let summary = IncidentSummary::from(i.as_ref());
                    writes.push((8, i.id.as_bytes().to_vec(), Some(json(&summary)?)));
                }
                Change::Release(r) => writes.push((2, release_key(r), Some(json(r)?))),
                Change::Freeze(service, f) => writes.push((
                    3,
                    service.as_bytes().to_vec(),
                    f.as_ref().map(json).transpose()?,
                )),
                Change::Outbox(e) => writes.push((6, outbox_key(e.seq, &e.target), Some(json(e)?))),
                Change::OutboxDone { seq, target } => {
                    writes.push((6, outbox_key(*seq, target), None))
                }
                Change::Delivery(id, at) => writes.push((
                    7,
                    id.as_bytes().to_vec(),
                    at.map(|t| t.as_millisecond().to_be_bytes().to_vec()),
                )),
                Change::Seq(n) => {
                    writes.push((5, META_SEQ.to_vec(), Some(n.to_be_bytes().to_vec())))
                }
            }
        }
        writes.reverse();
        let base = self
            .timeline_seq
            .fetch_add(timeline.len() as u64, Ordering::SeqCst);
        let mut heads: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
        for (i, t) in timeline.iter().enumerate() {
            let seq = base + i as u64 + 1;
            let prev = match heads.get(t.subject.as_str()) {
                Some(h) => h.clone(),
                None => self.chain_head(&t.subject)?,
            };
            let mut t = t.clone();
            let hash = t.chain_hash(&prev);
            t.prev_hash = Some(prev);
            t.hash = Some(hash.clone());
            heads.insert(timeline[i].subject.as_str(), hash);
            writes.push((4, timeline_key(&t.subject, seq), Some(json(&t)?)));
        }
        if !timeline.is_empty() {
            let last = base + timeline.len() as u64;
            writes.push((
                5,
                META_TIMELINE_SEQ.to_vec(),
                Some(last.to_be_bytes().to_vec()),
            ));
        }
        for (k, v) in meta {
            writes.push((5, k.to_vec(), Some(v.clone())));
        }
        let trees = (
            &self.breaches,
            &self.incidents,
            &self.releases,
            &self.freezes,
            &self.timeline,
            &self.meta,
            &self.outbox,
            &self.deliveries,
            &self.summaries,
        );
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let applied = trees
            .transaction(|(t0, t1, t2, t3, t4, t5, t6, t7, t8)| {
                for (tree, key, value) in &writes {
                    let t = match tree {
                        0 => t0,
                        1 => t1,
                        2 => t2,
                        3 => t3,
                        4 => t4,
                        5 => t5,
                        6 => t6,
                        7 => t7,
                        _ => t8,
                    };
                    match value {
                        Some(v) => {
                            t.insert(key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            t.remove(key.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(s) => StoreError::Sled(s),
                TransactionError::Abort(()) => {
                    StoreError::Sled(sled::Error::Unsupported("transaction aborted".into()))
                }
            });
        drop(gate);
        applied?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The state trees, in a fixed order (a Raft snapshot holds exactly these).
    fn state_trees(&self) -> [(&'static str, &sled::Tree); 9] {
        [
            ("breaches", &self.breaches),
            ("incidents", &self.incidents),
            ("releases", &self.releases),
            ("freezes", &self.freezes),
            ("timeline", &self.timeline),
            ("meta", &self.meta),
            ("outbox", &self.outbox),
            ("deliveries", &self.deliveries),
            ("incident_summaries", &self.summaries),
        ]
    }

    /// Every record of every state tree as one blob: per tree, its name and its key/value pairs,
    /// each length-prefixed (u32 big-endian).
    pub(crate) fn export(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        for (name, tree) in self.state_trees() {
            put(&mut out, name.as_bytes());
            out.extend_from_slice(&(tree.len() as u32).to_be_bytes());
            for kv in tree.iter() {
                let (k, v) = kv?;
                put(&mut out, &k);
                put(&mut out, &v);
            }
        }
        Ok(out)
    }

    /// A backup of a running store: every state tree as it is between two commits, behind
    /// [`BACKUP_MAGIC`].
    pub fn backup(&self) -> Result<Vec<u8>> {
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let blob = self.export();
        drop(gate);
        let mut out = BACKUP_MAGIC.to_vec();
        out.extend_from_slice(&blob?);
        Ok(out)
    }

    /// Writes a [`Store::backup`] into the empty data dir `dir`; the number of records restored.
    /// A file that is not a whole backup, or a dir that already holds records, changes nothing.
    pub async fn restore(backup: &[u8], dir: &Path) -> std::result::Result<usize, String> {
        let blob = backup
            .strip_prefix(BACKUP_MAGIC)
            .ok_or("not a rollbackd backup (its first line is not `rollbackd-backup 1`)")?;
        let records: usize = decode(blob)
            .map_err(|_| "the backup is cut short or damaged: it does not decode")?
            .iter()
            .map(|(_, kv)| kv.len())
            .sum();
        let store = Store::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if store.holds_records() || !store.meta.is_empty() {
            return Err(format!(
                "{} already holds records; restore into an empty data dir",
                dir.display()
            ));
        }
        store
            .import(blob)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(records)
    }

    /// Replaces every state tree with an [`Store::export`] blob. A crash in the middle leaves a
    /// mark that the next open wipes the state trees on, so a half-installed snapshot is never
    /// read as state (the node then receives the snapshot again).
    pub(crate) async fn import(&self, blob: &[u8]) -> Result<()> {
        let bad = || StoreError::Sled(sled::Error::Unsupported("snapshot does not decode".into()));
        // Decoded whole first: a blob that does not decode changes nothing.
        let trees = self.state_trees();
        let decoded = decode(blob)?
            .into_iter()
            .map(|(name, records)| {
                let tree = trees
                    .iter()
                    .find(|(n, _)| n.as_bytes() == name)
                    .map(|(_, t)| *t)
                    .ok_or_else(bad)?;
                Ok((tree, records))
            })
            .collect::<Result<Vec<_>>>()?;
        self.db.insert(IMPORTING, b"1")?;
        self.db.flush_async().await?;
        for (_, tree) in &trees {
            tree.clear()?;
        }
        for (tree, records) in decoded {
            let mut batch = sled::Batch::default();
            for (k, v) in records {
                batch.insert(k, v);
            }
            tree.apply_batch(batch)?;
        }
        self.timeline_seq
            .store(read_u64(&self.meta, META_TIMELINE_SEQ)?, Ordering::SeqCst);
        self.db.flush_async().await?;
        self.db.remove(IMPORTING)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The number of this start of a single node (1, 2, ...), durable before it is used: the
    /// fencing token of the steps this run starts, higher than any earlier run's.
    pub async fn next_epoch(&self) -> Result<u64> {
        let n = read_u64(&self.meta, META_EPOCH)? + 1;
        self.meta.insert(META_EPOCH, &n.to_be_bytes())?;
        self.db.flush_async().await?;
        Ok(n)
    }

    /// The last Raft term this node acted in as leader (in the default tree: a node's own,
    /// never replicated).
    pub fn acted_term(&self) -> Result<u64> {
        read_u64(&self.db, ACTED_TERM)
    }

    pub async fn set_acted_term(&self, term: u64) -> Result<()> {
        self.db.insert(ACTED_TERM, &term.to_be_bytes())?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Whether any record is kept (a data dir a single node wrote, when the Raft log is empty).
    pub fn holds_records(&self) -> bool {
        [
            &self.breaches,
            &self.incidents,
            &self.releases,
            &self.freezes,
            &self.timeline,
        ]
        .iter()
        .any(|t| !t.is_empty())
    }

    /// A meta record (the Raft state machine's own).
    pub(crate) fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    /// The sled database, for the Raft log beside the state trees.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Data written before summaries existed: summarise every incident once.
    fn summarise_older_records(&self) -> Result<()> {
        if !self.summaries.is_empty() || self.incidents.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for i in values::<Incident>(&self.incidents)? {
            batch.insert(i.id.as_bytes(), json(&IncidentSummary::from(&i))?);
        }
        self.summaries.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn incidents(&self, state: Option<IncidentState>) -> Result<Vec<Incident>> {
        let (all, _) =
            self.incidents_where(|s| state.is_none_or(|st| s.state == st), usize::MAX)?;
        Ok(all)
    }

    /// The newest incidents whose summary passes `keep`, at most `limit`, and whether more
    /// passed. Reads summaries newest first and only the incidents it returns.
    pub fn incidents_where(
        &self,
        keep: impl Fn(&IncidentSummary) -> bool,
        limit: usize,
    ) -> Result<(Vec<Incident>, bool)> {
        let mut picked = Vec::new();
        for kv in self.summaries.iter().rev() {
            let s: IncidentSummary = serde_json::from_slice(&kv?.1)?;
            if !keep(&s) {
                continue;
            }
            if picked.len() == limit {
                return Ok((sorted(picked), true));
            }
            if let Some(i) = self.incident(&s.id)? {
                picked.push(i);
            }
        }
        Ok((sorted(picked), false))
    }

    pub fn incident(&self, id: &str) -> Result<Option<Incident>> {
        get(&self.incidents, id.as_bytes())
    }

    pub fn timeline(&self, subject: &str) -> Result<Vec<TimelineEntry>> {
        let mut prefix = subject.as_bytes().to_vec();
        prefix.push(0);
        self.timeline
            .scan_prefix(prefix)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// The hash of a subject's last timeline entry ("" when it has none).
    fn chain_head(&self, subject: &str) -> Result<String> {
        let mut prefix = subject.as_bytes().to_vec();
        prefix.push(0);
        match self.timeline.scan_prefix(prefix).next_back() {
            Some(kv) => {
                let t: TimelineEntry = serde_json::from_slice(&kv?.1)?;
                Ok(t.hash.unwrap_or_default())
            }
            None => Ok(String::new()),
        }
    }

    /// Recomputes a subject's chain: every entry must point at its predecessor and hash to what
    /// it says.
    pub fn verify_chain(&self, subject: &str) -> Result<ChainStatus> {
        let entries = self.timeline(subject)?;
        let mut prev = String::new();
        for (i, t) in entries.iter().enumerate() {
            let ok = t.prev_hash.as_deref() == Some(prev.as_str())
                && t.hash.as_deref() == Some(t.chain_hash(&prev).as_str());
            if !ok {
                return Ok(ChainStatus {
                    ok: false,
                    entries: entries.len(),
                    head: entries
                        .last()
                        .and_then(|t| t.hash.clone())
                        .unwrap_or_default(),
                    broken_at: Some(i),
                });
            }
            prev = t.hash.clone().unwrap_or_default();
        }
        Ok(ChainStatus {
            ok: true,
            entries: entries.len(),
            head: prev,
            broken_at: None,
        })
    }

    /// The open breaches that act soonest, at most `limit`, and whether there are more. Memory
    /// stays bounded by `limit` however many are open.
    pub fn open_breaches(&self, limit: usize) -> Result<(Vec<Breach>, bool)> {
        let mut soonest: Vec<Breach> = Vec::new();
        let mut more = false;
        let keep = |v: &mut Vec<Breach>| {
            v.sort_by(|a, b| a.deadline.cmp(&b.deadline).then_with(|| a.id.cmp(&b.id)));
            v.truncate(limit);
        };
        for kv in self.breaches.iter() {
            let b: Breach = serde_json::from_slice(&kv?.1)?;
            if b.closed_at.is_some() {
                continue;
            }
            soonest.push(b);
            if soonest.len() > limit.saturating_mul(2).max(64) {
                more = true;
                keep(&mut soonest);
            }
        }
        more |= soonest.len() > limit;
        keep(&mut soonest);
        Ok((soonest, more))
    }

    pub fn breach(&self, id: &str) -> Result<Option<Breach>> {
        get(&self.breaches, id.as_bytes())
    }

    /// Newest first.
    pub fn releases(&self, service: &str) -> Result<Vec<Release>> {
        let mut prefix = service.as_bytes().to_vec();
        prefix.push(0);
        let mut all: Vec<Release> = self
            .releases
            .scan_prefix(prefix)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect::<Result<_>>()?;
        all.sort_by_key(|r| std::cmp::Reverse(r.deployed_at));
        Ok(all)
    }

    /// Announcements not yet delivered, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        values(&self.outbox)
    }

    /// The newest `n` releases of every service.
    pub fn recent_releases(
        &self,
        n: usize,
    ) -> Result<std::collections::BTreeMap<String, Vec<Release>>> {
        let mut all: std::collections::BTreeMap<String, Vec<Release>> = Default::default();
        for r in values::<Release>(&self.releases)? {
            all.entry(r.service.clone()).or_default().push(r);
        }
        for list in all.values_mut() {
            list.sort_by_key(|r| std::cmp::Reverse(r.deployed_at));
            list.truncate(n);
        }
        Ok(all)
    }

    pub fn freezes(&self) -> Result<Vec<Freeze>> {
        values(&self.freezes)
    }

    pub fn freeze(&self, service: &str) -> Result<Option<Freeze>> {
        get(&self.freezes, service.as_bytes())
    }
}

/// sled's page cache (its default is 1 GiB). The engine reads back a handful of records per event
/// (the open breaches it touches) and the kernel's page cache keeps the file's hot part; a larger
/// cache buys little here and costs resident memory (`bench/run.sh` measures both).
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// sled releases its file lock from a background thread after the last handle is dropped, so a
/// reopen in the same process can briefly see `WouldBlock`; wait for it (up to ~1 s).
///
/// sled 0.34 writes a snapshot (a recovery shortcut; its log is the data) to `snap.<lsn>.generating`
/// and renames it once complete, but on open it reads the newest `snap.*` file, `.generating`
/// included. A `kill -9` while one is being written leaves it torn, and sled then refuses to open
/// with a corruption error (spacejam/sled#1527). A `.generating` file is never a finished
/// snapshot; without it sled starts from the previous one and replays its log from there, as after
/// a crash a moment earlier. So on a corruption error, and only then (sled held its lock, so no
/// live process is writing one), such files are removed and the open is tried again.
fn open_db(dir: &Path) -> Result<sled::Db> {
    let mut wait = std::time::Duration::from_millis(10);
    let mut removed_unfinished = false;
    for _ in 0..9 {
        match open_sled(dir) {
            // sled reports the busy lock as ErrorKind::Other "could not acquire lock ... WouldBlock".
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(wait);
                wait *= 2;
            }
            Err(e @ sled::Error::Corruption { .. }) if !removed_unfinished => {
                removed_unfinished = true;
                if !remove_unfinished_snapshots(dir)? {
                    return Err(e.into());
                }
            }
            other => return Ok(other?),
        }
    }
    Ok(open_sled(dir)?)
}

fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::LowSpace)
        .cache_capacity(CACHE_BYTES)
        .open()
}

/// Removes the `snap.*.generating` files in `dir`; true if there were any.
fn remove_unfinished_snapshots(dir: &Path) -> Result<bool> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(sled::Error::from)? {
        let path = entry.map_err(sled::Error::from)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(
                file = name,
                "removing a storage snapshot a crash left unfinished"
            );
            std::fs::remove_file(&path).map_err(sled::Error::from)?;
            removed = true;
        }
    }
    Ok(removed)
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>> {
    match tree.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

/// Newest first, as every incident list is shown.
fn sorted(mut all: Vec<Incident>) -> Vec<Incident> {
    all.sort_by(|a, b| b.opened_at.cmp(&a.opened_at).then(b.id.cmp(&a.id)));
    all
}

fn values<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
    tree.iter()
        .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
        .collect()
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

fn release_key(r: &Release) -> Vec<u8> {
    let mut k = r.service.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(r.environment.as_bytes());
    k.push(0);
    // Sign bit flipped so negative times sort before positive ones.
    let ms = (r.deployed_at.as_millisecond() as u64) ^ (1 << 63);
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(r.origin.as_bytes());
    k.push(0);
    k.extend_from_slice(r.deployment_id.as_bytes());
    k
}

fn outbox_key(seq: u64, target: &str) -> Vec<u8> {
    let mut k = seq.to_be_bytes().to_vec();
    k.extend_from_slice(target.as_bytes());
    k
}

fn timeline_key(subject: &str, seq: u64) -> Vec<u8> {
    let mut k = subject.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Change;

    fn release(service: &str, id: &str, at: &str) -> Release {
        Release {
            service: service.into(),
            environment: "prod".into(),
            version: id.into(),
            deployment_id: id.into(),
            revision: None,
            deployed_at: at.parse().unwrap(),
            received_at: at.parse().unwrap(),
            origin: "ci".into(),
            incident: None,
            posted_during_freeze: None,
        }
    }

    #[tokio::test]
    async fn commits_survive_reopen_and_releases_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.commit(
                &[
                    Change::Release(Box::new(release("web", "b", "2026-01-02T00:00:00Z"))),
                    Change::Release(Box::new(release("web", "a", "2026-01-01T00:00:00Z"))),
                    Change::Release(Box::new(release("webx", "c", "2026-01-03T00:00:00Z"))),
                    Change::Seq(7),
                ],
                &[TimelineEntry {
                    at: "2026-01-01T00:00:00Z".parse().unwrap(),
                    subject: "inc-1".into(),
                    kind: crate::model::Kind::Frozen,
                    actor: "a".into(),
                    message: "m".into(),
                    data: serde_json::Value::Null,
                    prev_hash: None,
                    hash: None,
                }],
            )
            .await
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let web: Vec<String> = s
            .releases("web")
            .unwrap()
            .into_iter()
            .map(|r| r.deployment_id)
            .collect();
        assert_eq!(web, ["b", "a"]);
        let st = s.load_state().unwrap();
        assert_eq!(st.next_seq, 7);
        assert_eq!(st.releases["web"][0].deployment_id, "a");
        assert_eq!(s.timeline("inc-1").unwrap().len(), 1);
        assert!(s.timeline("inc-").unwrap().is_empty());
    }

    /// What a `kill -9` while sled writes a snapshot leaves: a torn `snap.<lsn>.generating`, the
    /// newest snap file. sled alone refuses to open it; the store opens with every record.
    #[tokio::test]
    async fn a_snapshot_a_crash_left_unfinished_does_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let r = release("web", "a", "2026-01-01T00:00:00Z");
            s.commit(&[Change::Release(Box::new(r))], &[])
                .await
                .unwrap();
        }
        for (name, bytes) in [
            ("snap.7FFFFFFFFFFFFFFE.generating", &b""[..]),
            (
                "snap.7FFFFFFFFFFFFFFF.generating",
                &b"half a snapshot, no crc"[..],
            ),
        ] {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let refused = open_sled(dir.path()).map(drop);
        assert!(
            matches!(refused, Err(sled::Error::Corruption { .. })),
            "sled alone: {refused:?}"
        );
        let s = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = s
            .releases("web")
            .unwrap()
            .into_iter()
            .map(|r| r.deployment_id)
            .collect();
        assert_eq!(ids, ["a"]);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".generating"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn entry(subject: &str, message: &str) -> TimelineEntry {
        TimelineEntry {
            at: "2026-01-01T00:00:00Z".parse().unwrap(),
            subject: subject.into(),
            kind: crate::model::Kind::Frozen,
            actor: "rollbackd".into(),
            message: message.into(),
            data: serde_json::Value::Null,
            prev_hash: None,
            hash: None,
        }
    }

    #[tokio::test]
    async fn the_timeline_chain_detects_an_edited_or_removed_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.commit(
            &[],
            &[
                entry("inc-9", "one"),
                entry("inc-8", "other"),
                entry("inc-9", "two"),
            ],
        )
        .await
        .unwrap();
        s.commit(&[], &[entry("inc-9", "three")]).await.unwrap();
        let st = s.verify_chain("inc-9").unwrap();
        assert!(st.ok && st.entries == 3 && st.head.len() == 64, "{st:?}");
        let t = s.timeline("inc-9").unwrap();
        assert_eq!(t[1].prev_hash, t[0].hash);
        assert_eq!(t[0].prev_hash.as_deref(), Some(""));

        // Someone edits the second record in place (a valid JSON record, a different message).
        let keys: Vec<sled::IVec> = s
            .timeline
            .scan_prefix(b"inc-9\0")
            .keys()
            .map(|k| k.unwrap())
            .collect();
        let mut edited: TimelineEntry =
            serde_json::from_slice(&s.timeline.get(&keys[1]).unwrap().unwrap()).unwrap();
        edited.message = "nothing happened".into();
        s.timeline
            .insert(&keys[1], serde_json::to_vec(&edited).unwrap())
            .unwrap();
        let st = s.verify_chain("inc-9").unwrap();
        assert_eq!((st.ok, st.broken_at), (false, Some(1)));

        // Put it back, then remove the first record instead.
        edited.message = "two".into();
        s.timeline
            .insert(&keys[1], serde_json::to_vec(&edited).unwrap())
            .unwrap();
        assert!(s.verify_chain("inc-9").unwrap().ok);
        s.timeline.remove(&keys[0]).unwrap();
        let st = s.verify_chain("inc-9").unwrap();
        assert_eq!((st.ok, st.broken_at), (false, Some(0)));
        assert!(
            s.verify_chain("inc-8").unwrap().ok,
            "other subjects are untouched"
        );
    }

    #[tokio::test]
    async fn a_start_reads_summaries_and_only_the_incidents_still_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let done = crate::report::tests::full_incident();
        let mut waiting = done.clone();
        waiting.id = "inc-000009".into();
        waiting.state = IncidentState::AwaitingApproval;
        waiting.rollback_started_at = None;
        {
            let s = Store::open(dir.path()).unwrap();
            s.commit(
                &[
                    Change::Incident(Box::new(done.clone())),
                    Change::Incident(Box::new(waiting.clone())),
                ],
                &[],
            )
            .await
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let st = s.load_state().unwrap();
        assert_eq!(st.incidents.keys().collect::<Vec<_>>(), ["inc-000009"]);
        assert_eq!(st.index.count(done.state), 1);
        assert_eq!(
            st.index.active(&done.service).collect::<Vec<_>>(),
            ["inc-000009"]
        );
        assert_eq!(st.index.rollbacks(&done.service).count(), 1);
        assert_eq!(s.incident(&done.id).unwrap(), Some(done.clone()));

        // Data written before summaries existed is summarised once, at the next start.
        s.summaries.clear().unwrap();
        let st = s.load_state().unwrap();
        assert_eq!(s.summaries.len(), 2);
        assert_eq!(st.incidents.len(), 1);
        assert_eq!(st.index.rollbacks(&done.service).count(), 1);
    }

    #[tokio::test]
    async fn of_several_changes_to_one_record_the_last_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let at: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let breach = |deadline: jiff::Timestamp| -> Breach {
            serde_json::from_value(serde_json::json!({
                "id": "b-000001", "rule": "r", "group": "{}", "group_labels": {},
                "labels": {"service": "web"}, "started_at": at, "first_seen": at,
                "deadline": deadline, "alerts": {}
            }))
            .unwrap()
        };
        let later = add(at, std::time::Duration::from_secs(60));
        s.commit(
            &[
                Change::Breach(Box::new(breach(at))),
                Change::Seq(1),
                Change::Breach(Box::new(breach(later))),
                Change::Seq(2),
            ],
            &[],
        )
        .await
        .unwrap();
        assert_eq!(s.breach("b-000001").unwrap().unwrap().deadline, later);
        assert_eq!(s.load_state().unwrap().next_seq, 2);
    }
}
