//! The engine task: the single writer. It feeds events to the pure engine one at a time, commits
//! what changed, and only then answers the caller and hands effects to the executor. It wakes
//! itself at the engine's next deadline, so deadlines fire on time without any new input.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::engine::{Change, Context, Effect, Event, MAX_SIGNALS_PER_EVENT, Reply};
use crate::inputs::{self, Pending, Recorder};
use crate::metrics::Metrics;
use crate::model::{Kind, TimelineEntry, since};
use crate::pump::{self, Pump};
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
    /// The input-log line of a request, written once the event is handled (`record_inputs`).
    record: Option<Pending>,
    reply: oneshot::Sender<Result<(Reply, jiff::Timestamp), EngineError>>,
}

/// How the rest of the daemon talks to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    /// For the executor and notifier of one term: once cancelled, nothing more is taken from
    /// them (a deposed leader's late results are refused).
    valid: Option<CancellationToken>,
}

impl EngineHandle {
    /// A handle that stops taking events once `until` is cancelled.
    pub fn scoped(&self, until: CancellationToken) -> EngineHandle {
        EngineHandle {
            tx: self.tx.clone(),
            valid: Some(until),
        }
    }

    /// Sends an event and waits until its consequences are durable.
    pub async fn send(&self, event: Event) -> Result<Reply, EngineError> {
        self.send_recorded(event, None).await
    }

    /// As [`EngineHandle::send`], with the input-log line of the request it came from.
    pub async fn send_recorded(
        &self,
        event: Event,
        record: Option<Pending>,
    ) -> Result<Reply, EngineError> {
        if self.valid.as_ref().is_some_and(|v| v.is_cancelled()) {
            return Err(EngineError::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                event,
                record,
                reply,
            })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?.map(|(r, _)| r)
    }
}

pub struct Driver {
    pub pump: Pump,
    pub live: Arc<crate::live::Live>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub dry_run: bool,
    /// Woken after a commit that queued announcements.
    pub outbox: Arc<tokio::sync::Notify>,
    /// The input log (`record_inputs: true`): every event handled, in order, after its commit.
    pub inputs: Option<Recorder>,
    /// In a cluster, batches are committed through Raft (and applied to `store` by it);
    /// otherwise straight to `store`.
    pub raft: Option<Arc<crate::cluster::Node>>,
    /// See `engine::Context::fencing_token`.
    pub fencing_token: u64,
    /// Set when a commit through Raft failed: this node may no longer lead, so the task stops
    /// and acts again only once it leads with everything applied.
    pub deposed: bool,
}

/// The engine task cannot go on: memory ran ahead of the disk and the disk cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error(
    "a commit failed ({commit}) and the state cannot be read back ({reload}); stopping so a restart resumes from what is durable"
)]
pub struct Fatal {
    pub commit: String,
    pub reload: String,
}

pub fn channel() -> (EngineHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(1024);
    (EngineHandle { tx, valid: None }, rx)
}

pub type Inbox = mpsc::Receiver<Command>;

/// Answers every command waiting in `inbox` with "not taken" (this node stopped acting); the
/// callers answer 503 and their senders retry, at the leader.
pub fn refuse_waiting(inbox: &mut Inbox) {
    while let Ok(c) = inbox.try_recv() {
        let _ = c.reply.send(Err(EngineError::Store(
            "this node stopped leading before the event was committed".to_string(),
        )));
    }
}

/// At most this many queued events share one commit (and one flush).
const MAX_BATCH: usize = 256;

/// What one engine entry point did, waiting for its batch's commit.
struct Applied {
    reply: Option<oneshot::Sender<Result<(Reply, jiff::Timestamp), EngineError>>>,
    answer: Reply,
    effects: Vec<Effect>,
    now: jiff::Timestamp,
    line: Option<String>,
    loaded: Option<String>,
}

impl Driver {
    /// Runs until `stop` is cancelled. `perform` receives every effect after it is durable.
    pub async fn run(
        mut self,
        inbox: &mut Inbox,
        perform: impl Fn(Effect) + Send + 'static,
        stop: CancellationToken,
    ) -> Result<(), Fatal> {
        // Resume whatever was under way when the process last stopped.
        self.apply(vec![Waiting::Recover], &perform).await?;
        while !self.deposed {
            let wake = self.pump.next_wakeup().map(|at| {
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
                    // It stops at MAX_BATCH events or once it holds a chunk's worth of signals,
                    // so a commit's records stay bounded however large the deliveries.
                    let mut signals = signals_in(&cmd.event);
                    let mut batch = vec![Waiting::Command(Box::new(cmd))];
                    while batch.len() < MAX_BATCH && signals < MAX_SIGNALS_PER_EVENT {
                        match inbox.try_recv() {
                            Ok(c) => {
                                signals += signals_in(&c.event);
                                batch.push(Waiting::Command(Box::new(c)));
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply(batch, &perform).await?;
                }
                _ = sleep => self.apply(vec![Waiting::Tick], &perform).await?,
            }
        }
        Ok(())
    }

    /// Feeds each input to the engine in order, commits all their records at once, and only
    /// then answers each caller, writes the input log and performs each input's effects.
    async fn apply(
        &mut self,
        inputs: Vec<Waiting>,
        perform: &impl Fn(Effect),
    ) -> Result<(), Fatal> {
        let (config, rules) = self.live.snapshot();
        let ctx = Context {
            rules: &rules,
            people: &config.people,
            dry_run: self.dry_run,
            pagerduty: config.pagerduty.is_some(),
            max_open_breaches_per_rule: config.limits.max_open_breaches_per_rule,
            fencing_token: self.fencing_token,
        };
        let mut changes = Vec::new();
        let mut timeline = Vec::new();
        let mut applied = Vec::with_capacity(inputs.len());
        for input in inputs {
            let now = self.clock.now();
            let record = self.inputs.is_some();
            let (reply, line, input) = match input {
                Waiting::Recover => (
                    None,
                    record.then(|| inputs::start_line(now, &rules.digest)),
                    pump::Input::Recover,
                ),
                Waiting::Tick => (
                    None,
                    record.then(|| inputs::engine_line(now, &Event::Tick, None)),
                    pump::Input::Event(Event::Tick),
                ),
                Waiting::Command(c) => {
                    let c = *c;
                    let line = record.then(|| match &c.record {
                        Some(p) => p.line(now),
                        None => {
                            let digest = matches!(c.event, Event::RulesReloaded)
                                .then_some(rules.digest.as_str());
                            inputs::engine_line(now, &c.event, digest)
                        }
                    });
                    (Some(c.reply), line, pump::Input::Event(c.event))
                }
            };
            let mut handled = match self.pump.handle(&self.store, &ctx, input, now) {
                Ok(h) => h,
                Err(e) => {
                    // Without the breach or incident it needs the engine would decide wrong.
                    tracing::error!(error = %e, "cannot read state the event needs; not handling it");
                    match reply {
                        Some(r) => {
                            let _ = r.send(Err(EngineError::Store(e)));
                        }
                        None => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    continue;
                }
            };
            changes.append(&mut handled.out.changes);
            timeline.append(&mut handled.out.timeline);
            applied.push(Applied {
                reply,
                answer: handled.out.reply.clone(),
                loaded: handled.loaded.take(),
                effects: std::mem::take(&mut handled.out.effects),
                now,
                line,
            });
        }
        if let Some(node) = &self.raft {
            let batch = crate::store::raft::Batch {
                changes: changes.clone(),
                timeline: timeline.clone(),
            };
            if let Err(e) = node.commit(batch).await {
                // Not committed (or not known to be): no reply says yes, no effect runs, and
                // this task stops; it acts again from what the log holds once it leads.
                tracing::warn!(error = %e, "commit through raft failed; not acting until this node leads again");
                for a in applied {
                    if let Some(r) = a.reply {
                        let _ = r.send(Err(EngineError::Store(e.to_string())));
                    }
                }
                self.deposed = true;
                return Ok(());
            }
        } else if let Err(e) = self.store.commit(&changes, &timeline).await {
            // The in-memory state ran ahead of the disk: go back to what is durable, or stop.
            tracing::error!(error = %e, "commit failed; reloading state from the store");
            for a in applied {
                if let Some(r) = a.reply {
                    let _ = r.send(Err(EngineError::Store(e.to_string())));
                }
            }
            return match self.store.load_state() {
                Ok(st) => {
                    self.pump = Pump::new(st);
                    Ok(())
                }
                Err(reload) => Err(Fatal {
                    commit: e.to_string(),
                    reload: reload.to_string(),
                }),
            };
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::Outbox(e) if e.attempts == 0))
        {
            self.outbox.notify_one();
        }
        let written = self.clock.now();
        for t in timeline.iter().filter(|t| t.kind == Kind::Triggered) {
            if let Some(i) = self.pump.state.incidents.get(&t.subject) {
                // Only a breach known before its deadline can be decided on time; one learned
                // after it (an old `startsAt`, a late delivery) is counted apart.
                let first_seen = changes
                    .iter()
                    .find_map(|c| match c {
                        Change::Breach(b) if b.id == i.breach => Some(b.first_seen),
                        _ => None,
                    })
                    .or_else(|| {
                        crate::engine::breach_seq(&i.breach)
                            .and_then(|seq| self.pump.state.breaches.get(&seq))
                            .map(|b| b.first_seen)
                    });
                match first_seen {
                    Some(seen) if seen >= i.deadline => self.metrics.decisions_late.inc(),
                    _ => self
                        .metrics
                        .decision_latency
                        .observe(since(written, i.deadline).as_secs_f64()),
                }
            }
        }
        if changes
            .iter()
            .any(|c| matches!(c, Change::Incident(_) | Change::Breach(_)))
        {
            self.metrics.observe_state(&self.pump.state);
        }
        self.pump
            .let_go(&changes, applied.iter().map(|a| a.loaded.clone()));
        timeline.iter().for_each(log_entry);
        if let Some(rec) = &self.inputs {
            let lines: String = applied.iter().filter_map(|a| a.line.as_deref()).collect();
            if let Err(e) = rec.append(&lines) {
                tracing::error!(error = %e, file = %rec.path().display(), "cannot append to the input log");
            }
        }
        for a in applied {
            if let Some(r) = a.reply {
                let _ = r.send(Ok((a.answer, a.now)));
            }
            a.effects.into_iter().for_each(perform);
        }
        Ok(())
    }
}

/// One timeline entry as a log line: a failed rollback or step at ERROR, a retry or a dropped
/// announcement at WARN, the rest at INFO.
fn log_entry(t: &TimelineEntry) {
    macro_rules! entry {
        ($level:ident) => {
            tracing::$level!(subject = %t.subject, kind = t.kind.code(), actor = %t.actor, "{}", t.message)
        };
    }
    match t.kind {
        Kind::RollbackFailed | Kind::StepFailed | Kind::StepUnknown => entry!(error),
        Kind::StepRetry | Kind::NotificationDropped | Kind::ReleaseDuringFreeze => entry!(warn),
        _ => entry!(info),
    }
}

fn signals_in(e: &Event) -> usize {
    match e {
        Event::Signals(s) => s.len(),
        _ => 0,
    }
}

/// One engine entry point waiting in a batch.
enum Waiting {
    Recover,
    Tick,
    Command(Box<Command>),
}
