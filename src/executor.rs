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
use crate::model::{Incident, Phase, Plan, StepKind, StepState};
use crate::steps::{self, HttpStep};
use crate::store::Store;

#[derive(Clone)]
pub struct Executor {
    pub engine: EngineHandle,
    pub store: Store,
    /// Verification checks (and, through the daemon, the notifier): redirects within one origin
    /// only ([`steps::outbound_client`]).
    pub http: reqwest::Client,
    /// http steps and probes: follows no redirect by itself ([`steps::http_client`]).
    pub step_http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    pub max_output: usize,
    pub tracker: TaskTracker,
    /// Once cancelled, no new step starts; running ones finish.
    pub stopping: CancellationToken,
    /// The fencing token of every step this executor runs (see `engine::Context`).
    pub fencing_token: u64,
    /// The config in force: the secrets it resolved are hidden from step output too (a child
    /// inherits the daemon's environment, tokens included).
    pub live: Arc<crate::live::Live>,
}

/// `plan` as it runs under `token`: `{{ fencing_token }}` filled in, and the token handed over as
/// `ROLLBACKD_FENCING_TOKEN` (run) or `X-Rollbackd-Fencing-Token` (http), so whatever the step
/// changes can refuse a deposed leader's late call.
fn fenced(plan: &Plan, token: u64) -> Plan {
    use crate::rules::template::FENCING_MARK;
    let t = token.to_string();
    let mut p = plan.clone();
    for a in &mut p.argv {
        if a.contains(FENCING_MARK) {
            *a = a.replace(FENCING_MARK, &t);
        }
    }
    if let crate::model::Body::Json(v) = &mut p.body {
        fence_json(v, &t);
    }
    match p.kind {
        StepKind::Run => {
            p.env.insert("ROLLBACKD_FENCING_TOKEN".to_string(), t);
        }
        StepKind::Http => {
            p.headers.insert("X-Rollbackd-Fencing-Token".to_string(), t);
        }
    }
    p
}

/// `{{ fencing_token }}` in a JSON body's strings, filled in.
fn fence_json(v: &mut serde_json::Value, token: &str) {
    use crate::rules::template::FENCING_MARK;
    match v {
        serde_json::Value::String(s) if s.contains(FENCING_MARK) => {
            *s = s.replace(FENCING_MARK, token);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|x| fence_json(x, token)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|x| fence_json(x, token)),
        _ => {}
    }
}

impl Executor {
    pub fn perform(&self, effect: Effect) {
        let me = self.clone();
        self.tracker.spawn(async move {
            match effect {
                Effect::RunStep {
                    incident,
                    phase,
                    index,
                    attempt,
                    delay,
                } => me.run_step(incident, phase, index, attempt, delay).await,
                Effect::Verify { incident, delay } => me.verify(incident, delay).await,
                Effect::Probe {
                    incident,
                    phase,
                    index,
                } => me.probe(incident, phase, index).await,
                Effect::RunAfter { incident } => me.run_after(incident).await,
                Effect::Preflight { incident } => me.preflight(incident).await,
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

    async fn run_step(
        &self,
        id: String,
        phase: Phase,
        index: usize,
        attempt: u32,
        delay: Duration,
    ) {
        if !self.wait(delay).await {
            return;
        }
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let Some(run) = inc.journal(phase).get(index).cloned() else {
            return;
        };
        match self
            .engine
            .send(Event::StepStarting {
                incident: id.clone(),
                phase,
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
        let result = self
            .act(
                &fenced(&run.plan, self.fencing_token),
                Duration::from_millis(run.timeout_ms),
            )
            .await;
        self.metrics
            .step_outcomes
            .with_label_values(&[if result.ok { "done" } else { "failed" }])
            .inc();
        if let Err(e) = self
            .engine
            .send(Event::StepFinished {
                incident: id.clone(),
                phase,
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

    /// Sleeps `delay` unless the executor is stopping; false when it is.
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.stopping.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        !self.stopping.is_cancelled()
    }

    /// Runs one planned `run` or `http` action, exactly as the incident recorded it; its output
    /// holds no secret it expanded nor any the config resolved.
    async fn act(&self, plan: &Plan, timeout: Duration) -> StepResult {
        let result = self.perform_action(plan, timeout).await;
        steps::redacted(result, self.live.config().resolved.pairs())
    }

    async fn perform_action(&self, plan: &Plan, timeout: Duration) -> StepResult {
        match plan.kind {
            StepKind::Run => {
                steps::run_command(
                    &plan.argv,
                    &plan.env,
                    plan.dir.as_ref(),
                    timeout,
                    self.max_output,
                )
                .await
            }
            StepKind::Http => {
                let (method, url) = match plan.argv.as_slice() {
                    [m, u] => (m.as_str(), u.as_str()),
                    _ => ("", ""),
                };
                steps::run_http(
                    &self.step_http,
                    HttpStep {
                        method,
                        url,
                        headers: &plan.headers,
                        body: &plan.body,
                        expect_status: &plan.expect_status,
                        follow_redirects: plan.follow_redirects,
                    },
                    timeout,
                    self.max_output,
                )
                .await
            }
        }
    }

    async fn probe(&self, id: String, phase: Phase, index: usize) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let (in_place, detail) = match inc.journal(phase).get(index).and_then(|s| s.probe.as_ref())
        {
            Some(plan) => {
                let r = self
                    .act(&fenced(plan, self.fencing_token), Duration::from_secs(60))
                    .await;
                match (plan.kind, r.ok, r.exit_code) {
                    (_, true, _) => (Some(true), "probe succeeded".to_string()),
                    (StepKind::Run, false, Some(1)) => (Some(false), "probe exited 1".to_string()),
                    (StepKind::Http, false, Some(404)) => {
                        (Some(false), "probe answered 404".to_string())
                    }
                    (_, false, _) => (None, r.error.unwrap_or_else(|| "probe failed".to_string())),
                }
            }
            None => (None, "the step's plan has no probe".to_string()),
        };
        let _ = self
            .engine
            .send(Event::ProbeResult {
                incident: id,
                phase,
                index,
                in_place,
                detail,
            })
            .await;
    }

    /// Whether the incident's plan can run here; the engine asks for approval (or refuses) on
    /// the answer.
    async fn preflight(&self, id: String) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let missing =
            match tokio::task::spawn_blocking(move || crate::preflight::incident(&inc)).await {
                Ok(m) => m,
                Err(e) => vec![format!("the preflight did not finish: {e}")],
            };
        if !missing.is_empty() {
            tracing::warn!(incident = %id, missing = ?missing, "the incident's plan cannot run here");
        }
        if let Err(e) = self
            .engine
            .send(Event::PreflightResult {
                incident: id.clone(),
                missing,
            })
            .await
        {
            tracing::error!(incident = %id, error = %e, "preflight result not recorded");
        }
    }

    async fn run_after(&self, id: String) {
        let Some(inc) = self.incident(&id) else {
            return;
        };
        for (index, hook) in inc.after.iter().enumerate() {
            if matches!(hook.state, StepState::Done | StepState::Failed) {
                continue;
            }
            if self.stopping.is_cancelled() {
                return;
            }
            let result = match &hook.render_error {
                Some(e) => StepResult {
                    ok: false,
                    exit_code: None,
                    output: String::new(),
                    error: Some(e.clone()),
                    duration_ms: 0,
                    permanent: false,
                },
                None => {
                    self.act(&hook.plan, Duration::from_millis(hook.timeout_ms))
                        .await
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

    /// One round of the incident's planned checks; the engine decides whether to try again.
    async fn verify(&self, id: String, delay: Duration) {
        if !self.wait(delay).await {
            return;
        }
        let Some(inc) = self.incident(&id) else {
            return;
        };
        let mut results = Vec::new();
        if let Some(v) = &inc.verify {
            let timeout = v.every().max(Duration::from_secs(1));
            for c in &v.checks {
                results.push(crate::checks::run(&self.http, c, timeout).await);
            }
        }
        let _ = self
            .engine
            .send(Event::VerifyFinished {
                incident: id,
                results,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Body;
    use crate::rules::template::FENCING_MARK;

    #[test]
    fn the_fencing_token_fills_the_argv_the_json_body_and_the_header() {
        let mut plan = Plan::run(vec!["POST".into(), "https://x.example/a".into()]);
        plan.kind = StepKind::Http;
        plan.body = Body::Json(serde_json::json!({
            "epoch": FENCING_MARK,
            "nested": [{"t": format!("term-{FENCING_MARK}")}, 7],
        }));
        let p = fenced(&plan, 42);
        assert_eq!(
            p.body,
            Body::Json(serde_json::json!({"epoch": "42", "nested": [{"t": "term-42"}, 7]}))
        );
        assert_eq!(p.headers["X-Rollbackd-Fencing-Token"], "42");
    }
}
