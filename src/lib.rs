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
pub mod config;
pub mod driver;
pub mod engine;
pub mod executor;
pub mod ingest;
pub mod inputs;
pub mod live;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod model;
pub mod notify;
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
}

impl Daemon {
    /// Opens the store, resumes interrupted work and serves on `listener` until `shutdown`
    /// resolves; then stops taking requests, lets running steps finish within the grace period,
    /// and stops the engine.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let store = Store::open(&self.data_dir)?;
        let state = store.load_state()?;
        let metrics = Arc::new(Metrics::new());
        metrics.reload_successful.set(1);
        metrics.observe_state(&state);
        let config = self.config.clone();
        let live = Arc::new(live::Live::new(self.config, self.rules));
        let (engine, inbox) = driver::channel();
        let executor = Executor {
            engine: engine.clone(),
            store: store.clone(),
            http: steps::outbound_client(),
            step_http: steps::http_client(),
            metrics: metrics.clone(),
            max_output: config.step_output_bytes,
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
        };
        let app = Arc::new(App {
            limiters: api::Limiters::new(&config.limits),
            live: live.clone(),
            source: self.source.clone(),
            store: store.clone(),
            engine,
            metrics: metrics.clone(),
            clock: self.clock.clone(),
            ready: AtomicBool::new(false),
            record_inputs: config.record_inputs,
        });
        let stop_engine = CancellationToken::new();
        let outbox = Arc::new(tokio::sync::Notify::new());
        let notifier = Arc::new(notify::Notifier {
            store: store.clone(),
            engine: app.engine.clone(),
            live: live.clone(),
            http: executor.http.clone(),
            pagerduty: config
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
            live: live.clone(),
            store,
            clock: self.clock,
            metrics,
            dry_run: self.dry_run,
            outbox,
            inputs: inputs::Recorder::for_config(&config, &self.data_dir)
                .map_err(ServeError::Inputs)?,
        };
        let ex = executor.clone();
        let fatal = CancellationToken::new();
        let engine_task = {
            let (stop, fatal) = (stop_engine.clone(), fatal.clone());
            tokio::spawn(async move {
                let r = driver
                    .run(inbox, move |effect| ex.perform(effect), stop)
                    .await;
                if r.is_err() {
                    fatal.cancel();
                }
                r
            })
        };
        let watcher = tokio::spawn(reload_triggers(app.clone(), stop_engine.clone()));
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
        if !executor.drain(self.grace).await {
            tracing::warn!(
                "running steps did not finish within the grace period; they will be judged from the step journal at the next start"
            );
        }
        notifier.stopping.cancel();
        let _ = notifier_task.await;
        watcher.abort();
        stop_engine.cancel();
        if let Ok(Err(fatal)) = engine_task.await {
            tracing::error!(error = %fatal, "the engine stopped");
            return Err(ServeError::Engine(fatal));
        }
        Ok(())
    }
}

/// SIGHUP and a change in the config file or rules directory (polled every 2 s; Kubernetes
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
