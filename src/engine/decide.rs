//! The decision at a breach's deadline: correlate with the release ledger, apply the policy gates,
//! and open an incident with its plan fixed (steps, probes, checks, hooks, notifier targets).

use super::*;

impl State {
    /// The breach has lasted `sustained`: correlate with releases and open an incident, or record
    /// why not.
    pub(super) fn decide(&mut self, tx: &mut Tx, rule: &Rule, breach: BreachSeq) {
        let now = tx.now;
        let Some(b) = self.breaches.get(&breach).cloned() else {
            return;
        };
        let subject = format!("breach:{}", b.id);
        let not_acting = |me: &mut State, tx: &mut Tx, reason: Reason| {
            let code = reason.code();
            if let Some(b) = me.breaches.get_mut(&breach) {
                b.decision = Some(Decision {
                    at: now,
                    acted: false,
                    reason: reason.to_string(),
                    code: Some(code),
                });
                State::save_breach(&mut me.index, tx, b);
            }
            tx.note_with(
                &subject,
                Kind::NotActing,
                "rollbackd",
                reason.to_string(),
                serde_json::json!({ "code": code }),
            );
        };
        let label_vars: BTreeMap<String, String> = b
            .labels
            .iter()
            .map(|(k, v)| (format!("labels.{k}"), v.to_string()))
            .collect();
        let service = match rule.service.render(&label_vars) {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => {
                let error = "it rendered empty".to_string();
                return not_acting(self, tx, Reason::NoService { error });
            }
            Err(error) => return not_acting(self, tx, Reason::NoService { error }),
        };
        let environment = match rule.environment.as_ref().map(|t| t.render(&label_vars)) {
            None => None,
            Some(Ok(e)) => Some(e),
            Some(Err(error)) => return not_acting(self, tx, Reason::NoEnvironment { error }),
        };
        let (current, previous) = match self.correlate(rule, &b, &service, environment.as_deref()) {
            Ok(pair) => pair,
            Err(reason) => return not_acting(self, tx, reason),
        };
        let seq = self.seq(tx);
        let id = format!("inc-{seq:06}");
        let environment = current.environment.clone();
        let mut vars = label_vars;
        vars.insert("service".into(), service.clone());
        vars.insert("environment".into(), environment.clone());
        vars.insert("rule".into(), rule.name.clone());
        vars.insert("incident.id".into(), id.clone());
        vars.insert(
            "release.previous.deployment_id".into(),
            previous.deployment_id.clone(),
        );
        vars.insert("release.previous.version".into(), previous.version.clone());
        vars.insert(
            "release.current.deployment_id".into(),
            current.deployment_id.clone(),
        );
        vars.insert("release.current.version".into(), current.version.clone());
        for (name, r) in [("previous", &previous), ("current", &current)] {
            if let Some(rev) = &r.revision {
                vars.insert(format!("release.{name}.revision"), rev.clone());
            }
        }

        let mut messages = BTreeMap::new();
        for (key, t) in &rule.messages {
            match t.render(&vars) {
                Ok(text) => {
                    messages.insert(key.clone(), text);
                }
                Err(e) => tx.note(
                    &id,
                    Kind::MessageDefault,
                    "rollbackd",
                    format!(
                        "the rule's {key} message cannot be rendered ({e}); using the built-in one"
                    ),
                ),
            }
        }
        let shadow = rule.mode == Mode::Shadow || tx.ctx.dry_run;
        let steps = plan_steps(&rule.steps, &vars, shadow);
        let after = plan_steps(&rule.after, &vars, shadow);
        let on_unfreeze = plan_steps(&rule.on_unfreeze, &vars, shadow);
        let approval = match &rule.approval {
            None => Approval {
                required: false,
                require_roles: Vec::new(),
                quorum: 0,
                deadline: None,
                on_timeout: "abort".into(),
                votes: Vec::new(),
            },
            Some(p) => Approval {
                required: true,
                require_roles: p.require_roles.clone(),
                quorum: p.quorum,
                deadline: None,
                on_timeout: if p.proceed_on_timeout {
                    "proceed"
                } else {
                    "abort"
                }
                .into(),
                votes: Vec::new(),
            },
        };
        let incident = Incident {
            id: id.clone(),
            rule: rule.name.clone(),
            breach: b.id.clone(),
            group: b.group.clone(),
            service: service.clone(),
            environment,
            state: IncidentState::Triggered,
            reason: None,
            mode: if rule.mode == Mode::Shadow {
                "shadow"
            } else {
                "enforce"
            }
            .into(),
            labels: b.labels.to_labels(),
            breach_started_at: b.started_at,
            deadline: b.deadline,
            opened_at: now,
            updated_at: now,
            release_from: ReleaseRef::from(&current),
            release_to: ReleaseRef::from(&previous),
            approvals: approval,
            steps,
            freeze: rule.freeze,
            notify: Some(rule.notify.clone()),
            messages,
            pagerduty_incident: b.pagerduty_incident.clone(),
            rollback_started_at: None,
            verify_deadline: None,
            verify: plan_verify(rule.verify.as_ref()),
            checks: Vec::new(),
            after,
            finished_at: None,
            on_unfreeze,
            unfrozen_at: None,
            on_unfreeze_ended_at: None,
        };
        if let Some(b) = self.breaches.get_mut(&breach) {
            b.decision = Some(Decision {
                at: now,
                acted: true,
                reason: format!("incident {id} opened"),
                code: None,
            });
            b.incident = Some(id.clone());
            Self::save_breach(&mut self.index, tx, b);
        }
        let late = since(now, b.deadline);
        tx.note_with(
            &id,
            Kind::Triggered,
            "rollbackd",
            format!(
                "breach of {} since {} lasted {} (sustained {}); release {} ({}) deployed {} is suspect, target {} ({})",
                rule.name,
                b.started_at,
                humantime::format_duration(trunc(since(now, b.started_at))),
                humantime::format_duration(rule.sustained),
                current.version,
                current.deployment_id,
                current.deployed_at,
                previous.version,
                previous.deployment_id
            ),
            serde_json::json!({ "breach": b.id, "decision_delay_ms": late.as_millis() as u64 }),
        );
        self.incidents.insert(id.clone(), incident);

        if let Some(reason) = self.gate(rule, &id, &service, shadow, tx.ctx.dry_run, now) {
            self.transition_because(
                tx,
                &id,
                IncidentState::Suppressed,
                "rollbackd",
                reason.to_string(),
                Some(reason.code()),
            );
            return;
        }
        // The approval deadline counts from the open; the request goes out once the preflight
        // has said the plan can run here.
        let deadline = rule.approval.as_ref().map(|p| add(now, p.timeout));
        if let Some(inc) = self.incidents.get_mut(&id) {
            inc.approvals.deadline = deadline;
        }
        self.save_incident(tx, &id);
        tx.out.effects.push(Effect::Preflight { incident: id });
    }

    /// The preflight of a just-opened incident answered: with something missing the incident
    /// fails before anyone is asked (nothing runs); else its approval is requested, or with
    /// `approval: none` the rollback starts.
    pub(super) fn on_preflight(&mut self, tx: &mut Tx, id: &str, missing: Vec<String>) -> Reply {
        let Some(inc) = self.incidents.get(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        if inc.state != IncidentState::Triggered {
            return Reply::Ok;
        }
        if !missing.is_empty() {
            self.transition_because(
                tx,
                id,
                IncidentState::RollbackFailed,
                "rollbackd",
                format!(
                    "cannot run: {}; nothing was run and no approval was asked",
                    missing.join("; ")
                ),
                Some(ReasonCode::CannotRun),
            );
            return Reply::Ok;
        }
        let a = &inc.approvals;
        if !a.required {
            self.transition(
                tx,
                id,
                IncidentState::Approved,
                "rollbackd",
                "approval: none".to_string(),
            );
            self.start_rollback(tx, id);
            return Reply::Ok;
        }
        let why = format!(
            "waiting for {} approval(s) covering roles [{}] until {} (then {})",
            a.quorum,
            a.require_roles.join(", "),
            a.deadline.map(|d| d.to_string()).unwrap_or_default(),
            a.on_timeout
        );
        self.transition(tx, id, IncidentState::AwaitingApproval, "rollbackd", why);
        Reply::Ok
    }

    /// Which release broke it, and which to go back to; or why this breach is not a release's fault.
    pub(super) fn correlate(
        &self,
        rule: &Rule,
        b: &Breach,
        service: &str,
        environment: Option<&str>,
    ) -> Result<(Release, Release), Reason> {
        let ledger: Vec<&Release> = self
            .releases
            .get(service)
            .map(|v| {
                v.iter()
                    .filter(|r| environment.is_none_or(|e| r.environment == e))
                    .collect()
            })
            .unwrap_or_default();
        let scope = match environment {
            Some(e) => format!("service {service} in environment {e}"),
            None => format!("service {service}"),
        };
        let Some(current) = ledger.last().copied() else {
            return Err(Reason::NoRelease { scope });
        };
        if current.deployed_at > b.started_at {
            return Err(Reason::ReleaseAfterBreach {
                current: ReleaseRef::from(current),
                breach_start: b.started_at,
            });
        }
        let age = since(b.started_at, current.deployed_at);
        if age > rule.max_age {
            return Err(Reason::ReleaseTooOld {
                current: ReleaseRef::from(current),
                age,
                max_age: rule.max_age,
            });
        }
        // The release before the *first* time the current deployment went live: when it is a
        // redeploy of an older one (a rollback, by hand or by rollbackd), the releases in between
        // were already rolled back and are never a target.
        let same_env: Vec<&Release> = ledger
            .iter()
            .filter(|r| r.environment == current.environment)
            .copied()
            .collect();
        let first = same_env
            .iter()
            .position(|r| r.deployment_id == current.deployment_id)
            .unwrap_or(same_env.len().saturating_sub(1));
        // `first` is where the current deployment first went live, so the one before it is
        // always another deployment.
        let Some(previous) = first.checked_sub(1).and_then(|i| same_env.get(i)).copied() else {
            return Err(Reason::NoPreviousRelease {
                scope,
                current: ReleaseRef::from(current),
            });
        };
        if let Some((prior, _)) = self
            .index
            .rollbacks(service)
            .find(|(_, r)| r.environment == current.environment && r.from == previous.deployment_id)
        {
            return Err(Reason::LoopGuard {
                prior: prior.to_string(),
                target: ReleaseRef::from(previous),
            });
        }
        Ok((current.clone(), previous.clone()))
    }

    /// Policy gates that keep a correlated incident from acting: shadow, dry run, freeze, one
    /// rollback per service, budget.
    pub(super) fn gate(
        &self,
        rule: &Rule,
        id: &str,
        service: &str,
        shadow: bool,
        dry_run: bool,
        now: Timestamp,
    ) -> Option<Reason> {
        if dry_run {
            return Some(Reason::DryRun);
        }
        if shadow {
            return Some(Reason::Shadow);
        }
        if let Some(f) = self.freezes.get(service) {
            return Some(Reason::Frozen {
                service: service.to_string(),
                since: f.since,
                why: f.reason.clone(),
            });
        }
        if let Some(other) = self
            .index
            .active(service)
            .filter(|other| other.as_str() != id)
            .find_map(|other| self.incidents.get(other))
        {
            return Some(Reason::OneAtATime {
                other: other.id.clone(),
                state: other.state,
                service: service.to_string(),
            });
        }
        if let Some(budget) = rule.budget {
            let from = sub(now, budget.per);
            let used = self
                .index
                .rollbacks(service)
                .filter(|(_, r)| r.started_at >= from)
                .count();
            if used >= budget.max as usize {
                return Some(Reason::Budget {
                    used,
                    service: service.to_string(),
                    per: budget.per,
                    max: budget.max,
                });
            }
        }
        None
    }
}

/// Renders every step of the rule for this incident. A value that cannot be rendered safely is kept
/// as the step's `render_error`: the step will fail with it instead of running.
pub(super) fn plan_steps(
    specs: &[crate::rules::StepSpec],
    vars: &BTreeMap<String, String>,
    shadow: bool,
) -> Vec<StepRun> {
    specs
        .iter()
        .map(|s| {
            let (plan, render_error) = match plan_action(&s.action, vars) {
                Ok(p) => (p, None),
                Err(e) => (
                    Plan {
                        argv: Vec::new(),
                        ..empty_plan(&s.action)
                    },
                    Some(e),
                ),
            };
            StepRun {
                name: s.name.clone(),
                plan,
                render_error,
                fencing_token: None,
                state: if shadow {
                    StepState::WouldRun
                } else {
                    StepState::Pending
                },
                attempts: 0,
                started_at: None,
                finished_at: None,
                exit_code: None,
                output: None,
                error: None,
                duration_ms: None,
                probe: s.probe.as_ref().and_then(|p| plan_action(p, vars).ok()),
                timeout_ms: s.timeout.as_millis() as u64,
                retries: s.retries,
                idempotent: s.idempotent,
                continue_on_failure: s.continue_on_failure,
            }
        })
        .collect()
}

/// An action's plan with nothing rendered yet: what it copies from the rule as written.
pub(super) fn empty_plan(a: &Action) -> Plan {
    match a {
        Action::Run { env, dir, .. } => Plan {
            env: env.clone(),
            dir: dir.clone(),
            ..Plan::run(Vec::new())
        },
        Action::Http {
            headers,
            body,
            expect_status,
            follow_redirects,
            ..
        } => Plan {
            kind: StepKind::Http,
            headers: headers.clone(),
            body: body.clone(),
            expect_status: expect_status.clone(),
            follow_redirects: *follow_redirects,
            ..Plan::run(Vec::new())
        },
    }
}

/// An action as it will run: the argv of a run action, or `[METHOD, URL]` of an http action,
/// rendered (URL values percent-encoded, the rule's host kept or the step refused); env, dir, headers and body copied with their secret references unexpanded.
pub(super) fn plan_action(a: &Action, vars: &BTreeMap<String, String>) -> Result<Plan, String> {
    let argv = match a {
        Action::Run { argv, .. } => argv
            .iter()
            .map(|t| t.render(vars))
            .collect::<Result<_, _>>()?,
        Action::Http { method, url, .. } => vec![method.clone(), url.render(vars)?],
    };
    let mut plan = Plan {
        argv,
        ..empty_plan(a)
    };
    if let Body::Json(v) = &plan.body {
        plan.body = Body::Json(crate::rules::template::render_json(v, vars)?);
    }
    Ok(plan)
}

/// The rule's verification as the incident keeps it; none when it has no checks.
pub(super) fn plan_verify(v: Option<&crate::rules::Verify>) -> Option<VerifyPlan> {
    v.filter(|v| !v.checks.is_empty()).map(|v| VerifyPlan {
        within_ms: v.within.as_millis() as u64,
        every_ms: v.every.as_millis() as u64,
        checks: v.checks.clone(),
    })
}
