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
use crate::rules::Action;
use crate::steps::{self, HttpStep};
use crate::store::Store;

#[derive(Clone)]
pub struct Executor {
    pub engine: EngineHandle,
    pub store: Store,
    pub live: Arc<crate::live::Live>,
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
                Effect::Probe { incident, index } => me.probe(incident, index).await,
                Effect::RunAfter { incident } => me.run_after(incident).await,
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
            .live
            .rules()
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
            Some(spec) => self.perform_action(&spec.action, &run.argv, timeout).await,
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

    /// Runs one `run` or `http` action with its rendered argv (`[METHOD, URL]` for http).
    async fn perform_action(
        &self,
        action: &Action,
        argv: &[String],
        timeout: Duration,
    ) -> StepResult {
        match action {
            Action::Run { env, dir, .. } => {
                steps::run_command(argv, env, dir.as_ref(), timeout, self.max_output).await
            }
            Action::Http {
                headers,
                body,
                expect_status,
                ..
            } => {
                let (method, url) = match argv {
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
        }
    }

    async fn probe(&self, id: String, index: usize) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let spec = self
            .live
            .rules()
            .get(&inc.rule)
            .and_then(|r| r.steps.get(index))
            .and_then(|s| s.probe.clone());
        let argv = inc.steps.get(index).and_then(|s| s.probe.clone());
        let (in_place, detail) = match (spec, argv) {
            (Some(action), Some(argv)) => {
                let r = self
                    .perform_action(&action, &argv, Duration::from_secs(60))
                    .await;
                let is_http = matches!(action, Action::Http { .. });
                match (is_http, r.ok, r.exit_code) {
                    (_, true, _) => (Some(true), "probe succeeded".to_string()),
                    (false, false, Some(1)) => (Some(false), "probe exited 1".to_string()),
                    (true, false, Some(404)) => (Some(false), "probe answered 404".to_string()),
                    (_, false, _) => (None, r.error.unwrap_or_else(|| "probe failed".to_string())),
                }
            }
            _ => (
                None,
                "the step has no probe in the loaded rules".to_string(),
            ),
        };
        let _ = self
            .engine
            .send(Event::ProbeResult {
                incident: id,
                index,
                in_place,
                detail,
            })
            .await;
    }

    async fn run_after(&self, id: String) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        for (index, hook) in inc.after.iter().enumerate() {
            if matches!(
                hook.state,
                crate::model::StepState::Done | crate::model::StepState::Failed
            ) {
                continue;
            }
            if self.stopping.is_cancelled() {
                return;
            }
            let rules = self.live.rules();
            let spec = rules
                .get(&inc.rule)
                .and_then(|r| r.after.get(index))
                .filter(|s| s.name == hook.name);
            let refused = |error: String| StepResult {
                ok: false,
                exit_code: None,
                output: String::new(),
                error: Some(error),
                duration_ms: 0,
            };
            let result = match (&hook.render_error, spec) {
                (Some(e), _) => refused(e.clone()),
                (None, None) => refused(format!("rule {} no longer has this hook", inc.rule)),
                (None, Some(spec)) => {
                    let timeout = Duration::from_millis(hook.timeout_ms);
                    self.perform_action(&spec.action, &hook.argv, timeout).await
                }
            };
            let _ = self
                .engine
                .send(Event::AfterFinished {
                    incident: id.clone(),
                    index,
                    result,
                })
                .await;
        }
    }

    async fn verify(&self, id: String) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let Some(verify) = self
            .live
            .rules()
            .get(&inc.rule)
            .and_then(|r| r.verify.clone())
        else {
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
