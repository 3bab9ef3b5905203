//! The engine task: the single writer. It feeds events to the pure engine one at a time, commits
//! what changed, and only then answers the caller and hands effects to the executor. It wakes
//! itself at the engine's next deadline, so deadlines fire on time without any new input.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::engine::{Change, Context, Effect, Event, Reply, State};
use crate::metrics::Metrics;
use crate::model::{Kind, since};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine is shutting down")]
    Stopped,
    #[error("could not write state: {0}")]
    Store(String),
}

pub struct Command {
    event: Event,
    reply: oneshot::Sender<Result<(Reply, jiff::Timestamp), EngineError>>,
}

/// How the rest of the daemon talks to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

impl EngineHandle {
    /// Sends an event and waits until its consequences are durable.
    pub async fn send(&self, event: Event) -> Result<Reply, EngineError> {
        self.send_at(event).await.map(|(reply, _)| reply)
    }

    /// As [`EngineHandle::send`], also returning the `now` the engine handled the event at (the
    /// input log records it, so a replay sees the event at the same instant).
    pub async fn send_at(&self, event: Event) -> Result<(Reply, jiff::Timestamp), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command { event, reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

pub struct Driver {
    pub state: State,
    pub live: Arc<crate::live::Live>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub dry_run: bool,
    /// Woken after a commit that queued announcements.
    pub outbox: Arc<tokio::sync::Notify>,
}

pub fn channel() -> (EngineHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(1024);
    (EngineHandle { tx }, rx)
}

pub type Inbox = mpsc::Receiver<Command>;

/// At most this many queued events share one commit (and one flush).
const MAX_BATCH: usize = 256;

/// What one engine entry point did, waiting for its batch's commit.
struct Applied {
    reply: Option<oneshot::Sender<Result<(Reply, jiff::Timestamp), EngineError>>>,
    answer: Reply,
    effects: Vec<Effect>,
    now: jiff::Timestamp,
}

impl Driver {
    /// Runs until `stop` is cancelled. `perform` receives every effect after it is durable.
    pub async fn run(
        mut self,
        mut inbox: Inbox,
        perform: impl Fn(Effect) + Send + 'static,
        stop: CancellationToken,
    ) {
        // Resume whatever was under way when the process last stopped.
        self.apply(vec![Pending::Recover], &perform).await;
        loop {
            let wake = self.state.next_wakeup().map(|at| {
                let wait = since(at, self.clock.now());
                // A small margin so the tick lands at or after the deadline on the wall clock.
                tokio::time::Instant::now() + wait + Duration::from_millis(1)
            });
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                cmd = inbox.recv() => {
                    let Some(cmd) = cmd else { break };
                    // Group commit: whatever else is already queued shares this commit.
                    let mut batch = vec![Pending::Command(Box::new(cmd))];
                    while batch.len() < MAX_BATCH {
                        match inbox.try_recv() {
                            Ok(c) => batch.push(Pending::Command(Box::new(c))),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch, &perform).await;
                }
                _ = sleep => self.apply(vec![Pending::Tick], &perform).await,
            }
        }
    }

    /// Feeds each input to the engine in order, commits all their records at once, and only
    /// then answers each caller and performs each input's effects.
    async fn apply(&mut self, inputs: Vec<Pending>, perform: &impl Fn(Effect)) {
        let (config, rules) = self.live.snapshot();
        let ctx = Context {
            rules: &rules,
            people: &config.people,
            dry_run: self.dry_run,
            pagerduty: config.pagerduty.is_some(),
        };
        let mut changes = Vec::new();
        let mut timeline = Vec::new();
        let mut applied = Vec::with_capacity(inputs.len());
        let mut loaded = Vec::new();
        for input in inputs {
            let now = self.clock.now();
            let event = match &input {
                Pending::Command(c) => Some(&c.event),
                _ => None,
            };
            match self.load_needed(&rules, event, now) {
                Ok(Some(id)) => loaded.push(id),
                Ok(None) => {}
                Err(e) => {
                    // Deciding without a breach that is open on disk could open a second one, and
                    // without the incident a vote names would answer "no such incident".
                    tracing::error!(error = %e, "cannot read state the event needs; not handling it");
                    match input {
                        Pending::Command(c) => {
                            let _ = c.reply.send(Err(EngineError::Store(e.to_string())));
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    continue;
                }
            }
            let (reply, mut out) = match input {
                Pending::Recover => (None, self.state.recover(&ctx, now)),
                Pending::Tick => (None, self.state.handle(&ctx, Event::Tick, now)),
                Pending::Command(c) => {
                    let c = *c;
                    (Some(c.reply), self.state.handle(&ctx, c.event, now))
                }
            };
            changes.append(&mut out.changes);
            timeline.append(&mut out.timeline);
            applied.push(Applied {
                reply,
                answer: out.reply,
                effects: out.effects,
                now,
            });
        }
        if let Err(e) = self.store.commit(&changes, &timeline).await {
            // The in-memory state ran ahead of the disk: go back to what is durable.
            tracing::error!(error = %e, "commit failed; reloading state from the store");
            if let Ok(st) = self.store.load_state() {
                self.state = st;
            }
            for a in applied {
                if let Some(r) = a.reply {
                    let _ = r.send(Err(EngineError::Store(e.to_string())));
                }
            }
            return;
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::Outbox(e) if e.attempts == 0))
        {
            self.outbox.notify_one();
        }
        let written = self.clock.now();
        for t in timeline.iter().filter(|t| t.kind == Kind::Triggered) {
            if let Some(i) = self.state.incidents.get(&t.subject) {
                self.metrics
                    .decision_latency
                    .observe(since(written, i.deadline).as_secs_f64());
            }
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::Incident(_) | Change::Breach(_)))
        {
            self.metrics.observe_state(&self.state);
        }
        self.let_go(&changes, loaded);
        // Open breaches stay on disk and in the index; the next event reads back what it needs.
        self.state.breaches.clear();
        for t in &timeline {
            tracing::info!(subject = %t.subject, kind = t.kind.code(), actor = %t.actor, "{}", t.message);
        }
        for a in applied {
            if let Some(r) = a.reply {
                let _ = r.send(Ok((a.answer, a.now)));
            }
            a.effects.into_iter().for_each(perform);
        }
    }
}

impl Driver {
    /// Puts back in memory from the store what an event (or a tick) needs: the open breaches it
    /// may touch and the finished incident it names. Returns the incident it put back, if any.
    fn load_needed(
        &mut self,
        rules: &crate::rules::RuleSet,
        event: Option<&Event>,
        now: jiff::Timestamp,
    ) -> Result<Option<String>, crate::store::StoreError> {
        for seq in self.state.breaches_needed(rules, event, now) {
            // An agenda entry may name a breach that has closed since: that one stays closed.
            if let Some(b) = self.store.breach(&crate::engine::breach_id(seq))?
                && b.closed_at.is_none()
            {
                self.state.breaches.insert(seq, b);
            }
        }
        let Some(id) = event.and_then(|e| self.state.incident_named(e)) else {
            return Ok(None);
        };
        if self.state.incidents.contains_key(id) {
            return Ok(None);
        }
        let id = id.to_string();
        Ok(self.store.incident(&id)?.map(|i| {
            self.state.incidents.insert(id.clone(), i);
            id
        }))
    }

    /// Lets go of the incidents the engine no longer works on (they are durable in the store and
    /// summarised in the index), so memory holds the active ones, not the history.
    fn let_go(&mut self, changes: &[Change], loaded: Vec<String>) {
        let touched = changes.iter().filter_map(|c| match c {
            Change::Incident(i) => Some(i.id.clone()),
            _ => None,
        });
        for id in touched.chain(loaded) {
            if self.state.incidents.get(&id).is_some_and(|i| !i.resident()) {
                self.state.incidents.remove(&id);
            }
        }
    }
}

/// One engine entry point waiting in a batch.
enum Pending {
    Recover,
    Tick,
    Command(Box<Command>),
}
