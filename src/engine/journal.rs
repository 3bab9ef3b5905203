//! The step journal: pending → intended → started → done/failed, retries with backoff, recovery of
//! started steps by probe, verification rounds, after hooks.

use super::*;

impl State {
    pub(super) fn start_rollback(&mut self, tx: &mut Tx, id: &str) {
        if let Some(inc) = self.incidents.get_mut(id) {
            inc.rollback_started_at = Some(tx.now);
        }
        self.transition(
            tx,
            id,
            IncidentState::RollingBack,
            "rollbackd",
            "running the rollback steps".to_string(),
        );
        self.advance(tx, id, Phase::Rollback, 0);
    }

    /// Marks step `from` of `phase` (or the next one that can run) intended and asks for it;
    /// past the last step, the phase is complete.
    pub(super) fn advance(&mut self, tx: &mut Tx, id: &str, phase: Phase, from: usize) {
        let mut index = from;
        loop {
            let Some(inc) = self.incidents.get_mut(id) else {
                return;
            };
            let Some(step) = inc.journal_mut(phase).get_mut(index) else {
                return self.phase_complete(tx, id, phase);
            };
            if let Some(err) = step.render_error.clone() {
                // Rendering is deterministic: no retry could succeed, and nothing ran.
                step.state = StepState::Failed;
                step.error = Some(err.clone());
                let name = phase.step(&step.name);
                let cont = step.continue_on_failure;
                tx.note(
                    id,
                    Kind::StepFailed,
                    "rollbackd",
                    format!("{name} not run: {err}"),
                );
                if cont {
                    index += 1;
                    continue;
                }
                return self.phase_failed(
                    tx,
                    id,
                    phase,
                    format!("{name} could not be prepared: {err}"),
                );
            }
            step.state = StepState::Intended;
            let attempt = step.attempts + 1;
            self.save_incident(tx, id);
            tx.out.effects.push(Effect::RunStep {
                incident: id.to_string(),
                phase,
                index,
                attempt,
                delay: Duration::ZERO,
            });
            return;
        }
    }

    /// Every step of `phase` has run (or failed and said to go on).
    fn phase_complete(&mut self, tx: &mut Tx, id: &str, phase: Phase) {
        if phase == Phase::Rollback {
            return self.start_verify(tx, id);
        }
        let Some(inc) = self.incidents.get_mut(id) else {
            return;
        };
        let failed: Vec<String> = inc
            .on_unfreeze
            .iter()
            .filter(|s| s.state == StepState::Failed)
            .map(|s| s.name.clone())
            .collect();
        if failed.is_empty() {
            let n = inc.on_unfreeze.len();
            self.end_unfreeze(
                tx,
                id,
                Announcement::UnfreezeStepsDone,
                format!("the {n} on_unfreeze step(s) succeeded"),
            );
        } else {
            let names = failed.join(", ");
            self.end_unfreeze(
                tx,
                id,
                Announcement::UnfreezeStepFailed,
                format!("on_unfreeze step(s) failed: {names}; a human must finish them"),
            );
        }
    }

    /// A step of `phase` failed for good: the rollback fails, or the `on_unfreeze` steps end
    /// (the incident's outcome stays what it was) with the rest of them not run.
    fn phase_failed(&mut self, tx: &mut Tx, id: &str, phase: Phase, why: String) {
        match phase {
            Phase::Rollback => {
                self.transition(tx, id, IncidentState::RollbackFailed, "rollbackd", why)
            }
            Phase::Unfreeze => self.end_unfreeze(
                tx,
                id,
                Announcement::UnfreezeStepFailed,
                format!(
                    "{why}; the on_unfreeze steps after it were not run, a human must finish them"
                ),
            ),
        }
    }

    fn end_unfreeze(&mut self, tx: &mut Tx, id: &str, kind: Announcement, why: String) {
        let Some(inc) = self.incidents.get_mut(id) else {
            return;
        };
        inc.on_unfreeze_ended_at = Some(tx.now);
        inc.updated_at = tx.now;
        let ok = kind == Announcement::UnfreezeStepsDone;
        tx.note_with(
            id,
            Kind::UnfreezeStepsEnded,
            "rollbackd",
            why.clone(),
            serde_json::json!({ "ok": ok }),
        );
        self.save_incident(tx, id);
        self.announce(tx, id, kind, why);
    }

    /// Starts the `on_unfreeze` steps once the freeze is lifted and the incident has ended
    /// (whichever comes last); nothing when they already started or there are none.
    pub(super) fn start_unfreeze(&mut self, tx: &mut Tx, id: &str) {
        let Some(inc) = self.incidents.get(id) else {
            return;
        };
        let fresh = inc
            .on_unfreeze
            .iter()
            .all(|s| s.state == StepState::Pending);
        if inc.phase_running(Phase::Unfreeze) && fresh {
            self.advance(tx, id, Phase::Unfreeze, 0);
        }
    }

    pub(super) fn resume_steps(&mut self, tx: &mut Tx, id: &str, phase: Phase) {
        let Some(inc) = self.incidents.get(id) else {
            return;
        };
        let Some(index) = inc.journal(phase).iter().position(|s| {
            matches!(
                s.state,
                StepState::Pending | StepState::Intended | StepState::Started
            )
        }) else {
            return self.phase_complete(tx, id, phase);
        };
        let step = &inc.journal(phase)[index];
        let name = phase.step(&step.name);
        match step.state {
            StepState::Started if !step.idempotent && step.probe.is_some() => {
                tx.note(
                    id,
                    Kind::StepProbe,
                    "rollbackd",
                    format!("{name} was running when rollbackd stopped; asking its probe whether it took effect"),
                );
                tx.out.effects.push(Effect::Probe {
                    incident: id.to_string(),
                    phase,
                    index,
                });
            }
            StepState::Started if !step.idempotent => {
                tx.note(
                    id,
                    Kind::StepUnknown,
                    "rollbackd",
                    format!("{name} was running when rollbackd stopped and is not idempotent"),
                );
                self.phase_failed(
                    tx,
                    id,
                    phase,
                    format!("step state unknown, needs a human: {name} may or may not have run"),
                );
            }
            StepState::Started => {
                tx.note(
                    id,
                    Kind::StepResumed,
                    "rollbackd",
                    format!("{name} was running when rollbackd stopped; it is idempotent, running it again"),
                );
                self.advance(tx, id, phase, index);
            }
            _ => self.advance(tx, id, phase, index),
        }
    }

    pub(super) fn on_step_starting(
        &mut self,
        tx: &mut Tx,
        id: &str,
        phase: Phase,
        index: usize,
        attempt: u32,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::Go(false);
        };
        if !inc.phase_running(phase) {
            return Reply::Go(false);
        }
        // Freeze when the first rollback step that actually runs starts (the release is suspect
        // from then).
        let freeze = phase == Phase::Rollback
            && inc.freeze
            && inc.steps.iter().all(|s| s.started_at.is_none());
        let service = inc.service.clone();
        let Some(step) = inc.journal_mut(phase).get_mut(index) else {
            return Reply::Go(false);
        };
        if step.state != StepState::Intended || step.attempts + 1 != attempt {
            return Reply::Go(false);
        }
        step.state = StepState::Started;
        step.attempts = attempt;
        step.started_at = Some(tx.now);
        step.fencing_token = Some(tx.ctx.fencing_token);
        let name = phase.step(&step.name);
        let argv = step.plan.argv.clone();
        tx.note_with(
            id,
            Kind::StepStarted,
            "rollbackd",
            format!("{name} attempt {attempt} started"),
            phased(phase, serde_json::json!({ "index": index, "attempt": attempt, "argv": argv, "fencing_token": tx.ctx.fencing_token })),
        );
        self.save_incident(tx, id);
        if freeze {
            self.hold_freeze(tx, &service, id);
        }
        Reply::Go(true)
    }

    pub(super) fn on_step_finished(
        &mut self,
        tx: &mut Tx,
        id: &str,
        phase: Phase,
        index: usize,
        attempt: u32,
        r: StepResult,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let running = inc.phase_running(phase);
        let Some(step) = inc.journal_mut(phase).get_mut(index) else {
            return Reply::NotFound(format!("incident {id} has no step {index}"));
        };
        if !running || step.state != StepState::Started || step.attempts != attempt {
            return Reply::Conflict(format!("step {index} of {id} is not running"));
        }
        step.finished_at = Some(tx.now);
        step.exit_code = r.exit_code;
        step.output = Some(r.output.clone());
        step.error = r.error.clone();
        step.duration_ms = Some(r.duration_ms);
        let name = phase.step(&step.name);
        let data = phased(
            phase,
            serde_json::json!({
                "index": index, "attempt": attempt, "exit_code": r.exit_code,
                "duration_ms": r.duration_ms, "output": r.output,
            }),
        );
        if r.ok {
            step.state = StepState::Done;
            tx.note_with(
                id,
                Kind::StepDone,
                "rollbackd",
                format!("{name} succeeded"),
                data,
            );
            self.advance(tx, id, phase, index + 1);
            return Reply::Ok;
        }
        let err = r.error.unwrap_or_else(|| "failed".to_string());
        if attempt <= step.retries && !r.permanent {
            step.state = StepState::Intended;
            let delay = backoff(attempt, id, index);
            tx.note_with(
                id,
                Kind::StepRetry,
                "rollbackd",
                format!(
                    "{name} attempt {attempt} failed ({err}); retrying in {}",
                    humantime::format_duration(delay)
                ),
                data,
            );
            self.save_incident(tx, id);
            tx.out.effects.push(Effect::RunStep {
                incident: id.to_string(),
                phase,
                index,
                attempt: attempt + 1,
                delay,
            });
            return Reply::Ok;
        }
        step.state = StepState::Failed;
        let cont = step.continue_on_failure;
        tx.note_with(
            id,
            Kind::StepFailed,
            "rollbackd",
            format!("{name} failed: {err}"),
            data,
        );
        if phase == Phase::Rollback {
            self.announce(
                tx,
                id,
                Announcement::StepFailed,
                format!("{name} failed: {err}"),
            );
        }
        if cont {
            self.advance(tx, id, phase, index + 1);
        } else {
            self.phase_failed(tx, id, phase, format!("{name} failed: {err}"));
        }
        Reply::Ok
    }

    pub(super) fn on_probe_result(
        &mut self,
        tx: &mut Tx,
        id: &str,
        phase: Phase,
        index: usize,
        in_place: Option<bool>,
        detail: String,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let running = inc.phase_running(phase);
        let Some(step) = inc.journal_mut(phase).get_mut(index) else {
            return Reply::NotFound(format!("incident {id} has no step {index}"));
        };
        if !running || step.state != StepState::Started {
            return Reply::Conflict(format!("step {index} of {id} is not waiting for a probe"));
        }
        let name = phase.step(&step.name);
        match in_place {
            Some(true) => {
                step.state = StepState::Done;
                step.finished_at = Some(tx.now);
                tx.note(
                    id,
                    Kind::StepDone,
                    "rollbackd",
                    format!("{name}: its probe says the effect is in place ({detail}); not running it again"),
                );
                self.advance(tx, id, phase, index + 1);
            }
            Some(false) => {
                step.state = StepState::Intended;
                tx.note(
                    id,
                    Kind::StepResumed,
                    "rollbackd",
                    format!("{name}: its probe says the effect is absent ({detail}); running it again"),
                );
                self.advance(tx, id, phase, index);
            }
            None => self.phase_failed(
                tx,
                id,
                phase,
                format!("step state unknown, needs a human: {name} may or may not have run and its probe could not tell ({detail})"),
            ),
        }
        Reply::Ok
    }

    pub(super) fn on_after_finished(
        &mut self,
        tx: &mut Tx,
        id: &str,
        index: usize,
        r: StepResult,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let Some(hook) = inc.after.get_mut(index) else {
            return Reply::NotFound(format!("incident {id} has no after hook {index}"));
        };
        if matches!(hook.state, StepState::Done | StepState::Failed) {
            return Reply::Conflict(format!("after hook {index} of {id} already ran"));
        }
        hook.state = if r.ok {
            StepState::Done
        } else {
            StepState::Failed
        };
        hook.attempts += 1;
        hook.finished_at = Some(tx.now);
        hook.exit_code = r.exit_code;
        hook.output = Some(r.output.clone());
        hook.error = r.error.clone();
        hook.duration_ms = Some(r.duration_ms);
        let name = hook.name.clone();
        let verdict = if r.ok {
            "passed".to_string()
        } else {
            format!("FAILED: {}", r.error.unwrap_or_default())
        };
        tx.note_with(
            id,
            Kind::AfterCheck,
            "rollbackd",
            format!("integrity check {name} {verdict}"),
            serde_json::json!({ "index": index, "exit_code": r.exit_code, "output": r.output }),
        );
        self.save_incident(tx, id);
        Reply::Ok
    }

    pub(super) fn start_verify(&mut self, tx: &mut Tx, id: &str) {
        let Some(inc) = self.incidents.get_mut(id) else {
            return;
        };
        let Some(v) = &inc.verify else {
            return self.rolled_back(tx, id, "steps done; the rule has no verify checks");
        };
        let deadline = add(tx.now, v.within());
        let checks = v.checks.len();
        inc.verify_deadline = Some(deadline);
        self.transition(
            tx,
            id,
            IncidentState::Verifying,
            "rollbackd",
            format!("steps done; verifying {checks} check(s) until {deadline}"),
        );
        tx.out.effects.push(Effect::Verify {
            incident: id.to_string(),
            delay: Duration::ZERO,
        });
    }

    pub(super) fn on_verify_finished(
        &mut self,
        tx: &mut Tx,
        id: &str,
        results: Vec<CheckResult>,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        if inc.state != IncidentState::Verifying {
            return Reply::Conflict(format!("incident {id} is not verifying"));
        }
        let ok = !results.is_empty() && results.iter().all(|c| c.ok);
        inc.checks = results.clone();
        // Another round fits before the deadline: the engine decides, on the injected clock.
        let every = inc.verify.as_ref().map(VerifyPlan::every);
        if let (false, Some(every), Some(deadline)) = (ok, every, inc.verify_deadline)
            && add(tx.now, every) < deadline
        {
            self.save_incident(tx, id);
            tx.out.effects.push(Effect::Verify {
                incident: id.to_string(),
                delay: every,
            });
            return Reply::Ok;
        }
        let summary: Vec<String> = results
            .iter()
            .map(|c| {
                format!(
                    "{}: {} ({})",
                    c.name,
                    if c.ok { "ok" } else { "FAILED" },
                    c.detail
                )
            })
            .collect();
        if ok {
            self.rolled_back(tx, id, &format!("verified: {}", summary.join("; ")));
        } else {
            self.transition(
                tx,
                id,
                IncidentState::RollbackFailed,
                "rollbackd",
                format!(
                    "verification failed; the freeze stays, a human must look: {}",
                    summary.join("; ")
                ),
            );
        }
        Reply::Ok
    }

    pub(super) fn rolled_back(&mut self, tx: &mut Tx, id: &str, why: &str) {
        self.transition(
            tx,
            id,
            IncidentState::RolledBack,
            "rollbackd",
            why.to_string(),
        );
        let Some(inc) = self.incidents.get(id) else {
            return;
        };
        // The ledger now says what runs: the previous deployment, redeployed by this incident.
        let release = Release {
            service: inc.service.clone(),
            environment: inc.environment.clone(),
            version: inc.release_to.version.clone(),
            deployment_id: inc.release_to.deployment_id.clone(),
            revision: inc.release_to.revision.clone(),
            deployed_at: tx.now,
            received_at: tx.now,
            origin: "rollback".to_string(),
            incident: Some(id.to_string()),
            posted_during_freeze: None,
        };
        self.insert_release(tx, release);
    }
}

/// A step's timeline data, with `"phase": "on_unfreeze"` for an `on_unfreeze` step (a rollback
/// step's data is as it always was).
fn phased(phase: Phase, mut data: serde_json::Value) -> serde_json::Value {
    if phase == Phase::Unfreeze {
        data["phase"] = serde_json::json!(phase);
    }
    data
}

/// Exponential backoff with deterministic jitter (so replays agree): 1s, 2s, 4s … capped at 60s,
/// each within ±25 %.
pub(super) fn backoff(attempt: u32, id: &str, index: usize) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(60_000);
    let h = id.bytes().fold(index as u64 ^ u64::from(attempt), |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let jitter = (h % 501) as i64 - 250; // per mille of ±25 %
    let ms = base as i64 + base as i64 * jitter / 1000;
    Duration::from_millis(ms.max(1) as u64)
}
