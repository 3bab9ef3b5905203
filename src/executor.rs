//! Performs the engine's effects outside the engine, one task each, and reports results back as
//! events. Before a step's side effect it asks the engine to record the step as started and waits
//! for that record to be durable; the engine may refuse (the incident moved on), and then nothing
//! runs.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::driver::EngineHandle;
use crate::engine::{Effect, Event, Reply, StepResult};
use crate::metrics::Metrics;
use crate::model::{Incident, since};
use crate::rules::{Action, RuleSet};
use crate::steps::{self, HttpStep};
use crate::store::Store;

#[derive(Clone)]
pub struct Executor {
    pub engine: EngineHandle,
    pub store: Store,
    pub rules: Arc<RuleSet>,
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    pub max_output: usize,
    pub tracker: TaskTracker,
    /// Once cancelled, no new step starts; running ones finish.
    pub stopping: CancellationToken,
}

impl Executor {
    pub fn perform(&self, effect: Effect) {
        let me = self.clone();
        self.tracker.spawn(async move {
            match effect {
                Effect::RunStep {
                    incident,
                    index,
                    attempt,
                    delay,
                } => me.run_step(incident, index, attempt, delay).await,
                Effect::Verify { incident } => me.verify(incident).await,
            }
        });
    }

    /// Stops starting new work and waits up to `grace` for what is running.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    fn incident(&self, id: &str) -> Option<Incident> {
        match self.store.incident(id) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(incident = id, error = %e, "cannot read incident");
                None
            }
        }
    }

    async fn run_step(&self, id: String, index: usize, attempt: u32, delay: Duration) {
        tokio::select! {
            _ = self.stopping.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        if self.stopping.is_cancelled() {
            return;
        }
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let Some(run) = inc.steps.get(index).cloned() else {
            return;
        };
        let spec = self
            .rules
            .get(&inc.rule)
            .and_then(|r| r.steps.get(index))
            .filter(|s| s.name == run.name)
            .cloned();
        match self
            .engine
            .send(Event::StepStarting {
                incident: id.clone(),
                index,
                attempt,
            })
            .await
        {
            Ok(Reply::Go(true)) => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "step not started");
                return;
            }
        }
        let timeout = Duration::from_millis(run.timeout_ms);
        let result = match spec {
            None => StepResult {
                ok: false,
                exit_code: None,
                output: String::new(),
                error: Some(format!(
                    "rule {} no longer has step {:?}; nothing was run",
                    inc.rule, run.name
                )),
                duration_ms: 0,
            },
            Some(spec) => match &spec.action {
                Action::Run { env, dir, .. } => {
                    steps::run_command(&run.argv, env, dir.as_ref(), timeout, self.max_output).await
                }
                Action::Http {
                    headers,
                    body,
                    expect_status,
                    ..
                } => {
                    let (method, url) = match run.argv.as_slice() {
                        [m, u] => (m.as_str(), u.as_str()),
                        _ => ("", ""),
                    };
                    steps::run_http(
                        &self.http,
                        HttpStep {
                            method,
                            url,
                            headers,
                            body,
                            expect_status,
                        },
                        timeout,
                        self.max_output,
                    )
                    .await
                }
            },
        };
        self.metrics
            .step_outcomes
            .with_label_values(&[if result.ok { "done" } else { "failed" }])
            .inc();
        if let Err(e) = self
            .engine
            .send(Event::StepFinished {
                incident: id.clone(),
                index,
                attempt,
                result,
            })
            .await
        {
            // The step ran but its end is not recorded: a restart treats it as "started".
            tracing::error!(incident = %id, step = index, error = %e, "step result not recorded");
        }
    }

    async fn verify(&self, id: String) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let Some(verify) = self.rules.get(&inc.rule).and_then(|r| r.verify.clone()) else {
            let _ = self
                .engine
                .send(Event::VerifyFinished {
                    incident: id,
                    ok: false,
                    results: Vec::new(),
                })
                .await;
            return;
        };
        let deadline = inc.verify_deadline;
        loop {
            let mut results = Vec::new();
            for c in &verify.checks {
                results.push(
                    crate::checks::run(&self.http, c, verify.every.max(Duration::from_secs(1)))
                        .await,
                );
            }
            let all_ok = results.iter().all(|r| r.ok);
            let left = deadline.map(|d| since(d, jiff::Timestamp::now()));
            let out_of_time = left.is_some_and(|l| l < verify.every);
            if all_ok || out_of_time {
                let _ = self
                    .engine
                    .send(Event::VerifyFinished {
                        incident: id,
                        ok: all_ok,
                        results,
                    })
                    .await;
                return;
            }
            tokio::select! {
                _ = self.stopping.cancelled() => return,
                _ = tokio::time::sleep(verify.every) => {}
            }
        }
    }
}
