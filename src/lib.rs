//! rollbackd rolls a bad release back on its own, with a human's yes.
//!
//! # Layout
//! - [`config`]: the daemon config, embedded defaults, `${env:..}`/`${file:..}` secrets.
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
//! - [`cli`]: operator commands, thin clients of the HTTP API.
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
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pagerduty;
pub mod replay;
pub mod report;
pub mod rules;
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
    pub config: Arc<Config>,
    pub rules: Arc<RuleSet>,
    pub store: Store,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub limiters: api::Limiters,
    pub ready: AtomicBool,
    /// The input log (`record_inputs: true`), written by [`App::send_recorded`].
    pub inputs: Option<inputs::Recorder>,
}

/// Everything `serve` needs, validated.
pub struct Daemon {
    pub config: Config,
    pub rules: RuleSet,
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
        let rules = Arc::new(self.rules);
        let config = Arc::new(self.config);
        let (engine, inbox) = driver::channel();
        let executor = Executor {
            engine: engine.clone(),
            store: store.clone(),
            rules: rules.clone(),
            http: reqwest::Client::builder()
                .user_agent(concat!("rollbackd/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            metrics: metrics.clone(),
            max_output: config.step_output_bytes,
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
        };
        let app = Arc::new(App {
            limiters: api::Limiters::new(&config.limits),
            config: config.clone(),
            rules: rules.clone(),
            store: store.clone(),
            engine,
            metrics: metrics.clone(),
            clock: self.clock.clone(),
            ready: AtomicBool::new(false),
            inputs: inputs::Recorder::for_config(&config, &self.data_dir)
                .map_err(ServeError::Inputs)?,
        });
        let stop_engine = CancellationToken::new();
        let outbox = Arc::new(tokio::sync::Notify::new());
        let notifier = Arc::new(notify::Notifier {
            store: store.clone(),
            engine: app.engine.clone(),
            config: config.clone(),
            http: executor.http.clone(),
            pagerduty: config
                .pagerduty
                .as_ref()
                .map(|p| pagerduty::PdClient::from_config(executor.http.clone(), p)),
            clock: self.clock.clone(),
            wake: outbox.clone(),
            stopping: CancellationToken::new(),
        });
        let notifier_task = tokio::spawn(notifier.clone().run());
        let driver = Driver {
            state,
            rules,
            config,
            store,
            clock: self.clock,
            metrics,
            dry_run: self.dry_run,
            outbox,
        };
        let ex = executor.clone();
        let engine_task =
            tokio::spawn(driver.run(inbox, move |effect| ex.perform(effect), stop_engine.clone()));
        app.ready.store(true, Ordering::Release);
        let server = axum::serve(listener, api::router(app.clone()))
            .with_graceful_shutdown(shutdown)
            .await;
        app.ready.store(false, Ordering::Release);
        if !executor.drain(self.grace).await {
            tracing::warn!(
                "running steps did not finish within the grace period; they will be judged from the step journal at the next start"
            );
        }
        notifier.stopping.cancel();
        let _ = notifier_task.await;
        stop_engine.cancel();
        let _ = engine_task.await;
        server?;
        Ok(())
    }
}
