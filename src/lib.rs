//! rollbackd rolls a bad release back on its own, with a human's yes.
//!
//! # Layout
//! - [`config`]: the daemon config, embedded defaults, `${env:..}`/`${file:..}` secrets.
//! - [`live`]: the config and rules in force, swapped whole on reload; the one loader.
//! - [`rules`]: rule files in, compiled rules and `FILE:LINE:COL` problems out.
//! - [`model`]: the records (signals, releases, breaches, incidents, freezes, timeline).
//! - [`ingest`]: one parser per source; bytes in, signals or releases out.
//! - [`engine`]: every decision, pure: `(state, event, now) -> (state', changes, effects)`.
//! - [`driver`]: the engine task, the single writer; commits before any effect, wakes at deadlines.
//! - [`executor`]: performs effects (steps, verification) and reports back as events.
//! - [`steps`], [`checks`]: one command or HTTP request; one verification check.
//! - [`store`]: the only place that says `sled`.
//! - [`notify`]: delivers the durable outbox (Slack, webhooks, PagerDuty); [`pagerduty`]: its REST
//!   and Events API client.
//! - [`report`]: an incident's change-log record and postmortem draft (Markdown, JSON).
//! - [`logging`]: the text log, one line per event whatever the values hold.
//! - [`cli`]: operator commands, thin clients of the HTTP API.
//! - [`github_revert`]: `rollbackd github-revert`, the GitHub revert preset's pull request.
//! - [`server`]: connections under the router: their limit, head deadline, graceful stop.
//! - [`api`]: thin HTTP handlers; [`metrics`]: the owned Prometheus registry; [`clock`]: time.
//!
//! # Rules of the house
//! - Handlers never decide; the engine never does I/O; only `store` touches sled.
//! - A transition is durable before its side effect starts, and before a webhook gets its 2xx.
//! - No alert-supplied text reaches a shell: steps are argv, template values are charset-checked.

pub mod api;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod driver;
pub mod engine;
pub mod executor;
pub mod github_revert;
pub mod ingest;
pub mod inputs;
pub mod live;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod preflight;
pub mod pump;
pub mod replay;
pub mod report;
pub mod rules;
pub mod server;
pub mod steps;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::driver::{Driver, EngineHandle};
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::store::Store;

/// What every handler shares.
pub struct App {
    pub live: Arc<live::Live>,
    /// Where a reload reads the config and rules from.
    pub source: live::Source,
    pub store: Store,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub limiters: api::Limiters,
    pub ready: AtomicBool,
    /// `record_inputs: true`: requests hand the engine their input-log line.
    pub record_inputs: bool,
    /// This node of a cluster; `None` on a single node.
    pub cluster: Option<Arc<cluster::Node>>,
    /// What the active rules need and this host lacks (the last preflight), as lint lines.
    pub preflight: std::sync::RwLock<Vec<String>>,
}

impl App {
    pub fn config(&self) -> Arc<Config> {
        self.live.config()
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.live.rules()
    }

    /// Loads the config and rules again and, when they are valid, makes them the active set and
    /// tells the engine (breaches and waiting incidents of removed rules end, with a reason).
    /// Refused, with the last good set kept, when they have errors or when a removed rule still
    /// has a rollback running.
    pub async fn reload(&self, why: &str) -> Result<Vec<String>, Vec<String>> {
        let result = self.try_reload(why).await;
        self.metrics
            .reload_successful
            .set(i64::from(result.is_ok()));
        if result.is_ok() {
            self.metrics
                .reload_timestamp
                .set(self.clock.now().as_second());
        }
        match &result {
            Ok(w) => tracing::info!(
                trigger = why,
                warnings = w.len(),
                "config and rules reloaded"
            ),
            Err(e) => {
                tracing::error!(trigger = why, problems = ?e, "reload refused; the last good config and rules stay active")
            }
        }
        result
    }

    /// Checks that what the active rules need is here (secrets resolve, programs are found):
    /// each miss is a warning in the log, a line of `/readyz` and counted in
    /// `rollbackd_preflight_missing`. Returns the lines.
    pub fn preflight(&self) -> Vec<String> {
        let found = preflight::rules(&self.rules(), rules::Severity::Warning);
        self.metrics.preflight_missing.reset();
        let mut lines = Vec::with_capacity(found.len());
        for (rule, problem) in found {
            self.metrics
                .preflight_missing
                .with_label_values(&[rule.as_str()])
                .inc();
            let line = problem.to_string();
            tracing::warn!("{line}");
            lines.push(line);
        }
        match self.preflight.write() {
            Ok(mut g) => g.clone_from(&lines),
            Err(poisoned) => poisoned.into_inner().clone_from(&lines),
        }
        lines
    }

    /// The lines of the last [`App::preflight`].
    pub fn preflight_lines(&self) -> Vec<String> {
        match self.preflight.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn try_reload(&self, _why: &str) -> Result<Vec<String>, Vec<String>> {
        let loaded = self.source.load().map_err(|e| e.lines())?;
        let old = self.config();
        let mut warnings: Vec<String> = loaded.warnings.iter().map(|p| p.to_string()).collect();
        warnings.extend(loaded.config.warnings());
        for (what, changed) in [
            ("listen", old.listen != loaded.config.listen),
            ("data_dir", old.data_dir != loaded.config.data_dir),
            (
                "limits",
                old.limits.fixed_at_start() != loaded.config.limits.fixed_at_start(),
            ),
            (
                "pagerduty (outbound client)",
                format!("{:?}", old.pagerduty) != format!("{:?}", loaded.config.pagerduty),
            ),
        ] {
            if changed {
                warnings.push(format!(
                    "{what} changed: it takes effect at the next restart"
                ));
            }
        }
        // Incidents carry their plan from the moment they open, so a reload never needs to
        // wait for one: those of a removed rule that have not started are cancelled by the
        // engine, the others finish as planned.
        self.live.set(loaded.config, loaded.rules);
        warnings.extend(self.preflight());
        self.engine
            .send(engine::Event::RulesReloaded)
            .await
            .map_err(|e| vec![e.to_string()])?;
        Ok(warnings)
    }
}

/// Everything `serve` needs, validated.
pub struct Daemon {
    pub config: Config,
    pub rules: RuleSet,
    /// Where reloads read from.
    pub source: live::Source,
    pub data_dir: PathBuf,
    pub dry_run: bool,
    pub clock: Arc<dyn Clock>,
    /// How long running steps may take to finish after a shutdown signal.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error("input log: {0}")]
    Inputs(std::io::Error),
    #[error(transparent)]
    Engine(driver::Fatal),
    #[error("cluster: {0}")]
    Cluster(String),
}

impl Daemon {
    /// Opens the store, resumes interrupted work and serves on `listener` until `shutdown`
    /// resolves; then stops taking requests, lets running steps finish within the grace period,
    /// and stops the engine. In a cluster the engine, executor and notifier run only while this
    /// node leads, each term afresh from what the Raft log holds.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let store = Store::open(&self.data_dir)?;
        let metrics = Arc::new(Metrics::new());
        metrics.reload_successful.set(1);
        metrics.reload_timestamp.set(self.clock.now().as_second());
        let config = self.config.clone();
        let node = match &config.cluster {
            Some(c) => Some(
                cluster::Node::start(c, &store)
                    .await
                    .map_err(ServeError::Cluster)?,
            ),
            None => None,
        };
        let live = Arc::new(live::Live::new(self.config, self.rules));
        let (engine, inbox) = driver::channel();
        let app = Arc::new(App {
            limiters: api::Limiters::new(&config.limits),
            live: live.clone(),
            source: self.source.clone(),
            store: store.clone(),
            engine: engine.clone(),
            metrics: metrics.clone(),
            clock: self.clock.clone(),
            ready: AtomicBool::new(false),
            record_inputs: config.record_inputs,
            cluster: node.clone(),
            preflight: std::sync::RwLock::new(Vec::new()),
        });
        app.preflight();
        let stage = Stage {
            store: store.clone(),
            live: live.clone(),
            engine,
            metrics,
            clock: self.clock.clone(),
            dry_run: self.dry_run,
            config: config.clone(),
            data_dir: self.data_dir.clone(),
            inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
        };
        let fatal = CancellationToken::new();
        let stop_acting = CancellationToken::new();
        let acting = match node.clone() {
            None => {
                let state = store.load_state()?;
                let epoch = store.next_epoch().await?;
                let acting = stage.act(state, epoch, None, fatal.clone())?;
                let stop = stop_acting.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    acting.stop(self.grace).await
                })
            }
            Some(node) => {
                let (n, dead) = (node.clone(), fatal.clone());
                tokio::spawn(async move {
                    let why = n.died().await;
                    tracing::error!(error = %why, "the raft core stopped; stopping so this node is restarted");
                    dead.cancel();
                });
                tokio::spawn(lead(
                    stage,
                    node,
                    fatal.clone(),
                    stop_acting.clone(),
                    self.grace,
                ))
            }
        };
        let watcher = tokio::spawn(reload_triggers(app.clone(), fatal.clone()));
        app.ready.store(true, Ordering::Release);
        let stopped = fatal.clone();
        server::serve(
            listener,
            api::router(app.clone()),
            &config.limits,
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stopped.cancelled() => {}
                }
            },
        )
        .await;
        app.ready.store(false, Ordering::Release);
        watcher.abort();
        stop_acting.cancel();
        let outcome = acting.await.ok().flatten();
        if let Some(node) = node {
            let _ = node.raft.shutdown().await;
        }
        if let Some(fatal) = outcome {
            tracing::error!(error = %fatal, "the engine stopped");
            return Err(ServeError::Engine(fatal));
        }
        Ok(())
    }
}

/// What acting needs, kept across a cluster node's terms as leader.
struct Stage {
    store: Store,
    live: Arc<live::Live>,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    dry_run: bool,
    config: Config,
    data_dir: PathBuf,
    /// The engine's inbox: one driver at a time holds it.
    inbox: Arc<tokio::sync::Mutex<driver::Inbox>>,
}

/// The engine task, the executor and the notifier of one term (or of a single node's life).
struct Acting {
    executor: Executor,
    notifier: Arc<notify::Notifier>,
    notifier_task: tokio::task::JoinHandle<()>,
    stop_engine: CancellationToken,
    engine_task: tokio::task::JoinHandle<Result<(), driver::Fatal>>,
    /// The engine task's outcome, once it ended on its own.
    ended: Option<Option<driver::Fatal>>,
    /// Cancelled when the term (or the daemon) ends: see `EngineHandle::scoped`.
    term: CancellationToken,
}

impl Stage {
    fn act(
        &self,
        state: engine::State,
        fencing_token: u64,
        raft: Option<Arc<cluster::Node>>,
        fatal: CancellationToken,
    ) -> Result<Acting, ServeError> {
        self.metrics.observe_state(&state);
        // What this term's executor and notifier send is refused once the term is over.
        let term = CancellationToken::new();
        let engine = self.engine.scoped(term.clone());
        let executor = Executor {
            engine: engine.clone(),
            store: self.store.clone(),
            http: steps::outbound_client(),
            step_http: steps::http_client(),
            metrics: self.metrics.clone(),
            max_output: self.config.step_output_bytes,
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            fencing_token,
            live: self.live.clone(),
        };
        let outbox = Arc::new(tokio::sync::Notify::new());
        let notifier = Arc::new(notify::Notifier {
            store: self.store.clone(),
            engine,
            live: self.live.clone(),
            http: executor.http.clone(),
            pagerduty: self
                .config
                .pagerduty
                .as_ref()
                .map(|p| notify::pagerduty::PdClient::from_config(executor.http.clone(), p)),
            clock: self.clock.clone(),
            wake: outbox.clone(),
            stopping: CancellationToken::new(),
        });
        let notifier_task = tokio::spawn(notifier.clone().run());
        let driver = Driver {
            pump: pump::Pump::new(state),
            live: self.live.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            dry_run: self.dry_run,
            outbox,
            inputs: inputs::Recorder::for_config(&self.config, &self.data_dir)
                .map_err(ServeError::Inputs)?,
            raft,
            fencing_token,
            deposed: false,
        };
        let stop_engine = CancellationToken::new();
        let ex = executor.clone();
        let inbox = self.inbox.clone();
        let engine_task = {
            let stop = stop_engine.clone();
            tokio::spawn(async move {
                let mut inbox = inbox.lock().await;
                let r = driver
                    .run(&mut inbox, move |effect| ex.perform(effect), stop)
                    .await;
                if r.is_err() {
                    fatal.cancel();
                }
                r
            })
        };
        Ok(Acting {
            executor,
            notifier,
            notifier_task,
            stop_engine,
            engine_task,
            ended: None,
            term,
        })
    }
}

impl Acting {
    /// Lets running steps finish within `grace`, then stops the notifier and the engine task;
    /// the engine's fatal error, if it stopped on one.
    async fn stop(self, grace: Duration) -> Option<driver::Fatal> {
        if !self.executor.drain(grace).await {
            tracing::warn!(
                "running steps did not finish within the grace period; they will be judged from the step journal at the next start"
            );
        }
        self.notifier.stopping.cancel();
        let _ = self.notifier_task.await;
        self.stop_engine.cancel();
        match self.ended {
            Some(outcome) => outcome,
            None => self.engine_task.await.ok().and_then(Result::err),
        }
    }

    /// Resolves when the engine task ended on its own (a failed commit, a fatal error).
    async fn engine_ended(&mut self) {
        let outcome = (&mut self.engine_task).await.ok().and_then(Result::err);
        self.ended = Some(outcome);
    }
}

/// A cluster node: acts while it leads, each term from the state its log holds, and stops
/// acting the moment it does not lead any more (nothing it started late is committed: every
/// step's start goes through the log in the term it was started in).
async fn lead(
    stage: Stage,
    node: Arc<cluster::Node>,
    fatal: CancellationToken,
    stop: CancellationToken,
    grace: Duration,
) -> Option<driver::Fatal> {
    loop {
        // While not acting, whatever reaches the inbox (a write accepted in the instant this
        // node still looked like the leader) is answered "not taken", so no caller hangs.
        let term = loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                t = node.wait_to_lead() => break t,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    driver::refuse_waiting(&mut *stage.inbox.lock().await);
                }
            }
        };
        // A leader restarted within its own term resumes it; its steps would carry the token
        // of its previous life. Only a term it never acted in will do: stand for a new one.
        match stage.store.acted_term() {
            Ok(acted) if term <= acted => {
                tracing::info!(
                    term,
                    acted,
                    "resumed leadership in a term already acted in; calling an election"
                );
                let _ = node.raft.trigger().elect().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the last term acted in; not acting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        if let Err(e) = stage.store.set_acted_term(term).await {
            tracing::error!(error = %e, "cannot record the term about to be acted in; not acting");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        tracing::info!(node = node.id, "became leader term={term}");
        stage.metrics.cluster_term.set(term as i64);
        stage.metrics.cluster_leader.set(1);
        let state = match stage.store.load_state() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state to lead with; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut acting = match stage.act(state, term, Some(node.clone()), fatal.clone()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot start acting");
                return None;
            }
        };
        let finished = tokio::select! {
            _ = stop.cancelled() => return acting.stop(grace).await,
            _ = node.lost(term) => false,
            _ = acting.engine_ended() => true,
        };
        tracing::info!(node = node.id, finished, "lost leadership term={term}");
        stage.metrics.cluster_leader.set(0);
        acting.term.cancel();
        if let Some(f) = acting.stop(Duration::ZERO).await {
            return Some(f);
        }
        driver::refuse_waiting(&mut *stage.inbox.lock().await);
    }
}

/// SIGHUP and a change in the config file or rules directory/// SIGHUP and a change in the config file or rules directory (polled every 2 s; Kubernetes
/// ConfigMaps swap a symlink, which inotify-style watches miss) both reload.
async fn reload_triggers(app: Arc<App>, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = app.source.fingerprint(&app.config().rules_dir);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup => {
                let _ = app.reload("SIGHUP").await;
                seen = app.source.fingerprint(&app.config().rules_dir);
            }
            _ = tick.tick() => {
                let now = app.source.fingerprint(&app.config().rules_dir);
                if now != seen {
                    seen = now;
                    let _ = app.reload("files changed").await;
                }
            }
        }
    }
}
