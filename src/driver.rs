//! The engine task: the single writer. It feeds events to the pure engine one at a time, commits
//! what changed, and only then answers the caller and hands effects to the executor. It wakes
//! itself at the engine's next deadline, so deadlines fire on time without any new input.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Context, Effect, Event, Reply, State};
use crate::metrics::Metrics;
use crate::model::since;
use crate::rules::RuleSet;
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
    pub rules: Arc<RuleSet>,
    pub config: Arc<Config>,
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

impl Driver {
    /// Runs until `stop` is cancelled. `perform` receives every effect after it is durable.
    pub async fn run(
        mut self,
        mut inbox: Inbox,
        perform: impl Fn(Effect) + Send + 'static,
        stop: CancellationToken,
    ) {
        // Resume whatever was under way when the process last stopped.
        if let Ok(effects) = self.apply(Recover).await {
            effects.into_iter().for_each(&perform);
        }
        loop {
            let wake = self.state.next_wakeup(&self.rules).map(|at| {
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
                    let res = self.apply(cmd.event).await;
                    match res {
                        Ok((reply, effects, now)) => {
                            let _ = cmd.reply.send(Ok((reply, now)));
                            effects.into_iter().for_each(&perform);
                        }
                        Err(e) => { let _ = cmd.reply.send(Err(e)); }
                    }
                }
                _ = sleep => {
                    if let Ok((_, effects, _)) = self.apply(Event::Tick).await {
                        effects.into_iter().for_each(&perform);
                    }
                }
            }
        }
    }

    async fn apply<E: Input>(&mut self, input: E) -> Result<E::Out, EngineError> {
        let now = self.clock.now();
        let ctx = Context {
            rules: &self.rules,
            people: &self.config.people,
            dry_run: self.dry_run,
            pagerduty: self.config.pagerduty.is_some(),
        };
        let out = input.feed(&mut self.state, &ctx, now);
        if let Err(e) = self.store.commit(&out.changes, &out.timeline).await {
            // The in-memory state ran ahead of the disk: go back to what is durable.
            tracing::error!(error = %e, "commit failed; reloading state from the store");
            if let Ok(st) = self.store.load_state() {
                self.state = st;
            }
            return Err(EngineError::Store(e.to_string()));
        }
        if out
            .changes
            .iter()
            .any(|c| matches!(c, crate::engine::Change::Outbox(e) if e.attempts == 0))
        {
            self.outbox.notify_one();
        }
        let written = self.clock.now();
        for t in out.timeline.iter().filter(|t| t.kind == "triggered") {
            if let Some(i) = self.state.incidents.get(&t.subject) {
                self.metrics
                    .decision_latency
                    .observe(since(written, i.deadline).as_secs_f64());
            }
        }
        self.metrics.observe_state(&self.state);
        for t in &out.timeline {
            tracing::info!(subject = %t.subject, kind = %t.kind, actor = %t.actor, "{}", t.message);
        }
        Ok(input.finish(out, now))
    }
}

/// An engine entry point: a normal event, or recovery at start.
trait Input {
    type Out;
    fn feed(&self, st: &mut State, ctx: &Context, now: jiff::Timestamp) -> crate::engine::Output;
    fn finish(self, out: crate::engine::Output, now: jiff::Timestamp) -> Self::Out;
}

impl Input for Event {
    type Out = (Reply, Vec<Effect>, jiff::Timestamp);
    fn feed(&self, st: &mut State, ctx: &Context, now: jiff::Timestamp) -> crate::engine::Output {
        st.handle(ctx, self.clone(), now)
    }
    fn finish(self, out: crate::engine::Output, now: jiff::Timestamp) -> Self::Out {
        (out.reply, out.effects, now)
    }
}

struct Recover;

impl Input for Recover {
    type Out = Vec<Effect>;
    fn feed(&self, st: &mut State, ctx: &Context, now: jiff::Timestamp) -> crate::engine::Output {
        st.recover(ctx, now)
    }
    fn finish(self, out: crate::engine::Output, _now: jiff::Timestamp) -> Self::Out {
        out.effects
    }
}
