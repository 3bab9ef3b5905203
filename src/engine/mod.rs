//! The engine: every decision rollbackd makes, as a pure function
//! `(state, event, now) -> (state', changes, timeline, effects, reply)`.
//!
//! Rules of the room:
//! - No I/O, no clock, no randomness: `now` comes in, records and effects go out. Replay and tests
//!   drive it exactly as the daemon does.
//! - Every changed record is returned in [`Output::changes`]; the caller persists them (and the
//!   timeline) before it performs any effect, so a crash can never run a step it did not record.
//! - One breach per (rule, group); one incident per breach; one active incident per service.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::config::Person;
use crate::model::*;
use crate::rules::{Action, Mode, Rule, RuleSet};

mod index;
mod protocol;
#[cfg(test)]
mod tests;

pub use index::{BreachSeq, Index, breach_id, breach_seq};
pub use protocol::*;

/// Refused votes kept on an incident (all of them stay in the timeline).
const MAX_REFUSED_VOTES: usize = 50;

/// Everything the engine knows. Rebuilt from the store at start.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Open breaches by number. A caller with a store may keep only the ones an event works on
    /// (see [`State::breaches_needed`]); the index knows every open one.
    pub breaches: BTreeMap<BreachSeq, Breach>,
    pub incidents: BTreeMap<String, Incident>,
    /// Per service, ordered by `deployed_at` (then arrival).
    pub releases: BTreeMap<String, Vec<Release>>,
    pub freezes: BTreeMap<String, Freeze>,
    /// PagerDuty deliveries seen (`X-Webhook-Id`), kept [`DELIVERY_MEMORY`] for de-duplication.
    pub deliveries: BTreeMap<String, Timestamp>,
    pub next_seq: u64,
    /// Derived from the records: rebuilt when the store loads them, kept current on every save.
    pub index: Index,
}

/// PagerDuty retries a delivery for up to 48 hours; remember ids a day longer.
pub const DELIVERY_MEMORY: Duration = Duration::from_secs(72 * 3600);

/// What the engine reads but does not own.
pub struct Context<'a> {
    pub rules: &'a RuleSet,
    pub people: &'a [Person],
    /// `serve --dry-run`: decide and record, run nothing (as if every rule were in shadow mode).
    pub dry_run: bool,
    /// PagerDuty is configured: every announcement also goes to the `pagerduty` target.
    pub pagerduty: bool,
}

struct Tx<'a> {
    ctx: &'a Context<'a>,
    now: Timestamp,
    out: Output,
}

impl Tx<'_> {
    fn note(&mut self, subject: &str, kind: Kind, actor: &str, message: String) {
        self.note_with(subject, kind, actor, message, serde_json::Value::Null);
    }

    fn note_with(
        &mut self,
        subject: &str,
        kind: Kind,
        actor: &str,
        message: String,
        data: serde_json::Value,
    ) {
        self.out.timeline.push(TimelineEntry {
            at: self.now,
            subject: subject.to_string(),
            kind,
            actor: actor.to_string(),
            message,
            data,
            prev_hash: None,
            hash: None,
        });
    }
}

impl State {
    /// Applies one event at `now`.
    pub fn handle(&mut self, ctx: &Context, event: Event, now: Timestamp) -> Output {
        let mut tx = Tx {
            ctx,
            now,
            out: Output {
                reply: Reply::Ok,
                changes: Vec::new(),
                timeline: Vec::new(),
                effects: Vec::new(),
            },
        };
        let reply = match event {
            Event::Signals(signals) => {
                for s in signals {
                    self.on_signal(&mut tx, s);
                }
                Reply::Ok
            }
            Event::Release(r) => self.on_release(&mut tx, r),
            Event::Tick => Reply::Ok,
            Event::Vote {
                incident,
                person,
                vote,
                via,
                reason,
            } => self.on_vote(&mut tx, &incident, &person, vote, &via, reason),
            Event::StepStarting {
                incident,
                index,
                attempt,
            } => self.on_step_starting(&mut tx, &incident, index, attempt),
            Event::StepFinished {
                incident,
                index,
                attempt,
                result,
            } => self.on_step_finished(&mut tx, &incident, index, attempt, result),
            Event::VerifyFinished { incident, results } => {
                self.on_verify_finished(&mut tx, &incident, results)
            }
            Event::ProbeResult {
                incident,
                index,
                in_place,
                detail,
            } => self.on_probe_result(&mut tx, &incident, index, in_place, detail),
            Event::AfterFinished {
                incident,
                index,
                result,
            } => self.on_after_finished(&mut tx, &incident, index, result),
            Event::Freeze {
                service,
                reason,
                by,
            } => self.freeze(&mut tx, &service, reason, None, &by),
            Event::Unfreeze {
                service,
                reason,
                by,
            } => self.on_unfreeze(&mut tx, &service, reason, &by),
            Event::Delivery { entry, outcome } => Self::on_delivery(&mut tx, *entry, outcome),
            Event::PagerDuty { delivery, input } => self.on_pagerduty(&mut tx, delivery, input),
            Event::RulesReloaded => {
                self.on_rules_reloaded(&mut tx);
                Reply::Ok
            }
        };
        self.evaluate(&mut tx);
        tx.out.reply = reply;
        tx.out
    }

    /// After a restart: the effects that were under way when the process stopped, decided from the
    /// step journal. A step that may have started runs again only if it is idempotent.
    pub fn recover(&mut self, ctx: &Context, now: Timestamp) -> Output {
        let mut tx = Tx {
            ctx,
            now,
            out: Output {
                reply: Reply::Ok,
                changes: Vec::new(),
                timeline: Vec::new(),
                effects: Vec::new(),
            },
        };
        for inc in self.incidents.values() {
            if !inc.state.is_active() && inc.after_pending() {
                tx.out.effects.push(Effect::RunAfter {
                    incident: inc.id.clone(),
                });
            }
        }
        let ids: Vec<String> = self
            .incidents
            .values()
            .filter(|i| i.state.is_active())
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            let Some(inc) = self.incidents.get(&id) else {
                continue;
            };
            match inc.state {
                IncidentState::Approved => self.start_rollback(&mut tx, &id),
                IncidentState::RollingBack => self.resume_steps(&mut tx, &id),
                IncidentState::Verifying => tx.out.effects.push(Effect::Verify {
                    incident: id,
                    delay: Duration::ZERO,
                }),
                _ => {}
            }
        }
        self.evaluate(&mut tx);
        tx.out
    }

    /// When the engine next needs a [`Event::Tick`]: the earliest breach deadline, clear time or
    /// approval deadline (possibly a little early: a tick with nothing due changes nothing).
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        self.index.next_wakeup()
    }

    /// The open breaches that handling `event` (or a tick, `None`) at `now` may touch and that
    /// are not in [`State::breaches`]: the ones its signals fall in, the ones whose agenda entries
    /// have come up, and all of them for a rules reload. A caller that keeps only some breaches in
    /// memory puts these back from the store first, skipping any that has closed since (an agenda
    /// entry may outlive its breach).
    pub fn breaches_needed(
        &self,
        rules: &RuleSet,
        event: Option<&Event>,
        now: Timestamp,
    ) -> Vec<BreachSeq> {
        let mut need: Vec<BreachSeq> = self.index.coming_up(now).collect();
        let mut of_signal = |s: &Signal| {
            for rule in rules
                .rules
                .iter()
                .filter(|r| r.matches(s.source, &s.labels))
            {
                let (group, _) = rule.group(&s.labels);
                need.extend(self.index.open_breach(&rule.name, &group));
            }
        };
        match event {
            Some(Event::Signals(signals)) => signals.iter().for_each(&mut of_signal),
            Some(Event::PagerDuty {
                input: PagerDutyInput::Incident { signal, .. },
                ..
            }) => of_signal(signal),
            Some(Event::RulesReloaded) => need.extend(self.index.open_breaches()),
            _ => {}
        }
        need.retain(|seq| !self.breaches.contains_key(seq));
        need.sort_unstable();
        need.dedup();
        need
    }

    /// The incident an event works on, when it names one. Finished incidents need not stay in
    /// [`State::incidents`] (the index keeps what the engine looks across); a caller that let one
    /// go puts it back from the store before handing the event over.
    pub fn incident_named<'a>(&'a self, event: &'a Event) -> Option<&'a str> {
        match event {
            Event::Vote { incident, .. }
            | Event::StepStarting { incident, .. }
            | Event::StepFinished { incident, .. }
            | Event::VerifyFinished { incident, .. }
            | Event::ProbeResult { incident, .. }
            | Event::AfterFinished { incident, .. } => Some(incident),
            Event::PagerDuty { input, .. } => match input {
                PagerDutyInput::Incident { incident_key, .. } => {
                    incident_key.as_deref().and_then(incident_of_key)
                }
                PagerDutyInput::Vote { pd_incident, .. } => self.index.announced_on(pd_incident),
                PagerDutyInput::Ignored => None,
            },
            Event::Unfreeze { service, .. } => self
                .freezes
                .get(service)
                .and_then(|f| f.incident.as_deref()),
            _ => None,
        }
    }

    fn seq(&mut self, tx: &mut Tx) -> u64 {
        self.next_seq += 1;
        tx.out.changes.push(Change::Seq(self.next_seq));
        self.next_seq
    }

    fn save_breach(index: &mut Index, tx: &mut Tx, b: &Breach) {
        index.breach(b);
        tx.out.changes.push(Change::Breach(Box::new(b.clone())));
    }

    fn save_incident(&mut self, tx: &mut Tx, id: &str) {
        if let Some(i) = self.incidents.get(id) {
            self.index.incident(&IncidentSummary::from(i));
            tx.out.changes.push(Change::Incident(Box::new(i.clone())));
        }
    }

    // ---- signals and breaches ----

    fn on_signal(&mut self, tx: &mut Tx, s: Signal) {
        let now = tx.now;
        for rule in tx
            .ctx
            .rules
            .rules
            .iter()
            .filter(|r| r.matches(s.source, &s.labels))
        {
            let (group, group_labels) = rule.group(&s.labels);
            let open = self.index.open_breach(&rule.name, &group);
            match s.status {
                SignalStatus::Firing => {
                    // A start in the future is a clock problem upstream: count from receipt.
                    let start = s.starts_at.unwrap_or(now).min(now);
                    let seq = match open {
                        Some(seq) => seq,
                        None => self.seq(tx),
                    };
                    if open.is_none() {
                        let id = breach_id(seq);
                        let b = Breach {
                            id: id.clone(),
                            rule: rule.name.clone(),
                            group: group.clone(),
                            group_labels: LabelSet::from(&group_labels),
                            labels: LabelSet::from(&s.labels),
                            started_at: start,
                            first_seen: now,
                            deadline: add(start, rule.sustained),
                            alerts: AlertMap::default(),
                            clearing_since: None,
                            decision: None,
                            incident: None,
                            pagerduty_incident: None,
                            closed_at: None,
                        };
                        tx.note(
                            &format!("breach:{id}"),
                            Kind::BreachOpened,
                            s.source.as_str(),
                            format!(
                                "breach of rule {} for {group} opened; started {start}, acts at {} if it lasts",
                                rule.name, b.deadline
                            ),
                        );
                        self.breaches.insert(seq, b);
                    }
                    let Some(b) = self.breaches.get_mut(&seq) else {
                        continue;
                    };
                    let mut changed = false;
                    if s.source == Source::Pagerduty && b.pagerduty_incident.is_none() {
                        b.pagerduty_incident = Some(s.key.clone());
                        changed = true;
                    }
                    match b.alerts.get_mut(&s.key) {
                        Some(a) if a.firing && a.starts_at <= start => {}
                        Some(a) => {
                            a.firing = true;
                            a.starts_at = a.starts_at.min(start);
                            a.resolved_at = None;
                            changed = true;
                        }
                        None => {
                            b.alerts.insert(
                                &s.key,
                                AlertState {
                                    firing: true,
                                    starts_at: start,
                                    resolved_at: None,
                                },
                            );
                            changed = true;
                        }
                    }
                    if start < b.started_at && b.decision.is_none() {
                        b.started_at = start;
                        b.deadline = add(start, rule.sustained);
                        changed = true;
                    }
                    if b.clearing_since.take().is_some() {
                        changed = true;
                        tx.out.timeline.push(TimelineEntry {
                            at: now,
                            subject: format!("breach:{}", b.id),
                            kind: Kind::BreachRefired,
                            actor: s.source.as_str().to_string(),
                            message: format!(
                                "fired again within clear_after; the breach keeps its start {}",
                                b.started_at
                            ),
                            data: serde_json::Value::Null,
                            prev_hash: None,
                            hash: None,
                        });
                    }
                    if changed {
                        Self::save_breach(&mut self.index, tx, b);
                    }
                }
                SignalStatus::Resolved => {
                    let Some(b) = open.and_then(|seq| self.breaches.get_mut(&seq)) else {
                        continue;
                    };
                    let Some(a) = b.alerts.get_mut(&s.key) else {
                        continue;
                    };
                    if !a.firing {
                        continue;
                    }
                    let at = s.ends_at.unwrap_or(now).min(now);
                    a.firing = false;
                    a.resolved_at = Some(at);
                    if !b.alerts.values().any(|a| a.firing) {
                        let since = b
                            .alerts
                            .values()
                            .filter_map(|a| a.resolved_at)
                            .max()
                            .unwrap_or(at);
                        b.clearing_since = Some(since);
                        tx.out.timeline.push(TimelineEntry {
                            at: now,
                            subject: format!("breach:{}", b.id),
                            kind: Kind::BreachResolving,
                            actor: s.source.as_str().to_string(),
                            message: format!(
                                "resolved at {since}; the breach ends at {} unless it fires again",
                                add(since, rule.clear_after)
                            ),
                            data: serde_json::Value::Null,
                            prev_hash: None,
                            hash: None,
                        });
                    }
                    Self::save_breach(&mut self.index, tx, b);
                }
            }
        }
    }

    /// Closes cleared breaches, acts on due deadlines, expires approvals.
    fn evaluate(&mut self, tx: &mut Tx) {
        let now = tx.now;
        let forget_before = sub(now, DELIVERY_MEMORY);
        let old: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, at)| **at < forget_before)
            .take(1000)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.deliveries.remove(&id);
            tx.out.changes.push(Change::Delivery(id, None));
        }
        let rules = tx.ctx.rules;
        let breaches = &self.breaches;
        let due = self.index.due_breaches(now, |seq| {
            let b = breaches.get(&seq)?;
            let rule = rules.get(&b.rule)?;
            match b.clearing_since {
                Some(c) => Some(add(c, rule.clear_after)),
                None if b.decision.is_none() => Some(b.deadline),
                None => None,
            }
        });
        for seq in due {
            let Some(b) = self.breaches.get(&seq) else {
                continue;
            };
            let Some(rule) = tx.ctx.rules.get(&b.rule) else {
                continue;
            };
            match b.clearing_since {
                Some(c) => {
                    let ends = add(c, rule.clear_after);
                    self.close_breach(tx, seq, ends);
                }
                None => self.decide(tx, rule, seq),
            }
        }
        for id in self.index.due_approvals(now) {
            let due = self.incidents.get(&id).is_some_and(|i| {
                i.state == IncidentState::AwaitingApproval
                    && i.approvals.deadline.is_some_and(|d| now >= d)
            });
            if due {
                self.approval_timed_out(tx, &id);
            }
        }
    }

    fn close_breach(&mut self, tx: &mut Tx, seq: BreachSeq, at: Timestamp) {
        let Some(mut b) = self.breaches.remove(&seq) else {
            return;
        };
        b.closed_at = Some(at);
        tx.note(
            &format!("breach:{}", b.id),
            Kind::BreachCleared,
            "rollbackd",
            format!("cleared: no alert fired for clear_after since {at}"),
        );
        Self::save_breach(&mut self.index, tx, &b);
        if let Some(id) = &b.incident
            && let Some(inc) = self.incidents.get(id)
            && matches!(
                inc.state,
                IncidentState::Triggered | IncidentState::AwaitingApproval
            )
        {
            let id = id.clone();
            self.transition(
                tx,
                &id,
                IncidentState::Cancelled,
                "rollbackd",
                "the breach cleared before approval; nothing to roll back".to_string(),
            );
        }
    }

    /// The breach has lasted `sustained`: correlate with releases and open an incident, or record
    /// why not.
    fn decide(&mut self, tx: &mut Tx, rule: &Rule, breach: BreachSeq) {
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
        match &rule.approval {
            None => {
                self.transition(
                    tx,
                    &id,
                    IncidentState::Approved,
                    "rollbackd",
                    "approval: none".to_string(),
                );
                self.start_rollback(tx, &id);
            }
            Some(p) => {
                let deadline = add(now, p.timeout);
                if let Some(inc) = self.incidents.get_mut(&id) {
                    inc.approvals.deadline = Some(deadline);
                }
                self.transition(
                    tx,
                    &id,
                    IncidentState::AwaitingApproval,
                    "rollbackd",
                    format!(
                        "waiting for {} approval(s) covering roles [{}] until {deadline} (then {})",
                        p.quorum,
                        p.require_roles.join(", "),
                        if p.proceed_on_timeout {
                            "proceed"
                        } else {
                            "abort"
                        }
                    ),
                );
            }
        }
    }

    /// Which release broke it, and which to go back to; or why this breach is not a release's fault.
    fn correlate(
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
    fn gate(
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

    fn transition(&mut self, tx: &mut Tx, id: &str, to: IncidentState, actor: &str, why: String) {
        self.transition_because(tx, id, to, actor, why, None);
    }

    /// A transition whose reason has a code (a suppressed incident), kept in the timeline.
    fn transition_because(
        &mut self,
        tx: &mut Tx,
        id: &str,
        to: IncidentState,
        actor: &str,
        why: String,
        code: Option<ReasonCode>,
    ) {
        let Some(inc) = self.incidents.get_mut(id) else {
            return;
        };
        let from = inc.state;
        inc.state = to;
        inc.updated_at = tx.now;
        if !to.is_active() {
            inc.finished_at = Some(tx.now);
            inc.reason = Some(why.clone());
            if inc.after_pending() {
                tx.out.effects.push(Effect::RunAfter {
                    incident: id.to_string(),
                });
            }
        }
        let mut data = serde_json::json!({ "from": from.as_str(), "to": to.as_str() });
        if let Some(code) = code {
            data["code"] = serde_json::json!(code);
        }
        tx.note_with(id, Kind::from(to), actor, why.clone(), data);
        self.save_incident(tx, id);
        let kind = match to {
            IncidentState::AwaitingApproval => Some(Announcement::ApprovalRequested),
            IncidentState::Approved => Some(Announcement::Approved),
            IncidentState::Rejected => Some(Announcement::Rejected),
            IncidentState::Expired => Some(Announcement::Expired),
            IncidentState::Cancelled => Some(Announcement::Cancelled),
            IncidentState::RollingBack => Some(Announcement::RollbackStarted),
            IncidentState::RolledBack => Some(Announcement::RolledBack),
            IncidentState::RollbackFailed => Some(Announcement::RollbackFailed),
            IncidentState::Triggered | IncidentState::Verifying | IncidentState::Suppressed => None,
        };
        if let Some(kind) = kind {
            self.announce(tx, id, kind, why);
        }
    }

    /// Queues one announcement per notifier target of the incident's rule (and PagerDuty).
    fn announce(&mut self, tx: &mut Tx, id: &str, kind: Announcement, detail: String) {
        let Some(inc) = self.incidents.get(id) else {
            return;
        };
        let mut targets: Vec<String> = inc
            .notify
            .clone()
            .or_else(|| tx.ctx.rules.get(&inc.rule).map(|r| r.notify.clone()))
            .unwrap_or_default();
        if tx.ctx.pagerduty {
            targets.push("pagerduty".to_string());
        }
        let state = inc.state;
        for target in targets {
            let seq = self.seq(tx);
            tx.out.changes.push(Change::Outbox(Box::new(OutboxEntry {
                seq,
                target,
                incident: id.to_string(),
                kind,
                detail: detail.clone(),
                at: tx.now,
                state: Some(state),
                attempts: 0,
                next_at: None,
                last_error: None,
            })));
        }
    }

    /// Breaches of rules that are gone end; incidents of theirs that have not started to roll
    /// back are cancelled. Breaches of rules that stay keep their start; one not decided yet
    /// takes the rule's new `sustained`.
    fn on_rules_reloaded(&mut self, tx: &mut Tx) {
        // Due instants depend on the rules: note every breach again.
        self.index.reset_breaches(self.breaches.values());
        let seqs: Vec<(BreachSeq, String)> = self
            .breaches
            .iter()
            .map(|(seq, b)| (*seq, b.rule.clone()))
            .collect();
        for (seq, rule) in seqs {
            match tx.ctx.rules.get(&rule) {
                None => {
                    let Some(mut b) = self.breaches.remove(&seq) else {
                        continue;
                    };
                    b.closed_at = Some(tx.now);
                    tx.note(
                        &format!("breach:{}", b.id),
                        Kind::BreachCleared,
                        "rollbackd",
                        format!("rule {} was removed by a reload; the breach ends", b.rule),
                    );
                    Self::save_breach(&mut self.index, tx, &b);
                }
                Some(rule) => {
                    if let Some(b) = self.breaches.get_mut(&seq)
                        && b.decision.is_none()
                    {
                        let deadline = add(b.started_at, rule.sustained);
                        if deadline != b.deadline {
                            b.deadline = deadline;
                            Self::save_breach(&mut self.index, tx, b);
                        }
                    }
                }
            }
        }
        let orphans: Vec<String> = self
            .index
            .all_active()
            .filter_map(|id| self.incidents.get(id))
            .filter(|i| {
                matches!(
                    i.state,
                    IncidentState::Triggered | IncidentState::AwaitingApproval
                ) && tx.ctx.rules.get(&i.rule).is_none()
            })
            .map(|i| i.id.clone())
            .collect();
        for id in orphans {
            self.transition(
                tx,
                &id,
                IncidentState::Cancelled,
                "rollbackd",
                "its rule was removed by a reload".to_string(),
            );
        }
    }

    fn on_pagerduty(&mut self, tx: &mut Tx, delivery: String, input: PagerDutyInput) -> Reply {
        if self.deliveries.contains_key(&delivery) {
            return Reply::Duplicate;
        }
        self.deliveries.insert(delivery.clone(), tx.now);
        tx.out
            .changes
            .push(Change::Delivery(delivery, Some(tx.now)));
        match input {
            PagerDutyInput::Ignored => {}
            PagerDutyInput::Incident {
                signal,
                incident_key,
            } => {
                let ours = incident_key.as_deref().and_then(incident_of_key);
                match ours {
                    // Our own approval incident: link it, and never treat it as an alert
                    // (a rule matching it would feed on itself).
                    Some(id) => {
                        if let Some(inc) = self.incidents.get_mut(id)
                            && inc.pagerduty_incident.is_none()
                        {
                            inc.pagerduty_incident = Some(signal.key.clone());
                            tx.note(
                                id,
                                Kind::PagerdutyLinked,
                                "pagerduty",
                                format!("announced on PagerDuty incident {}", signal.key),
                            );
                            self.save_incident(tx, id);
                        }
                    }
                    None => self.on_signal(tx, signal),
                }
            }
            PagerDutyInput::Vote {
                pd_incident,
                pd_user,
                vote,
                via,
                reason,
            } => {
                let Some(id) = self.index.announced_on(&pd_incident).map(str::to_string) else {
                    tx.note(
                        &format!("pagerduty:{pd_incident}"),
                        Kind::VoteIgnored,
                        pd_user.as_deref().unwrap_or("pagerduty"),
                        format!("{via} vote on PagerDuty incident {pd_incident}, which no rollbackd incident is announced on"),
                    );
                    return Reply::Ok;
                };
                let person = pd_user
                    .as_deref()
                    .and_then(|u| {
                        tx.ctx
                            .people
                            .iter()
                            .find(|p| p.pagerduty_user.as_deref() == Some(u))
                    })
                    .map(|p| p.id.clone())
                    .unwrap_or_else(|| {
                        format!("pagerduty-user:{}", pd_user.as_deref().unwrap_or("unknown"))
                    });
                // Refusals are recorded by on_vote; PagerDuty itself always gets a 2xx.
                self.on_vote(tx, &id, &person, vote, &via, reason);
            }
        }
        Reply::Ok
    }

    fn on_delivery(tx: &mut Tx, mut e: OutboxEntry, outcome: Delivery) -> Reply {
        let done = Change::OutboxDone {
            seq: e.seq,
            target: e.target.clone(),
        };
        match outcome {
            Delivery::Delivered { detail } => {
                tx.out.changes.push(done);
                tx.note(
                    &e.incident,
                    Kind::Notified,
                    "rollbackd",
                    format!("{} announced to {} ({detail})", e.kind.code(), e.target),
                );
            }
            Delivery::Dropped { error } => {
                tx.out.changes.push(done);
                tx.note(
                    &e.incident,
                    Kind::NotificationDropped,
                    "rollbackd",
                    format!(
                        "{} to {} refused for good: {error}",
                        e.kind.code(),
                        e.target
                    ),
                );
            }
            Delivery::Retry { error, at } => {
                e.attempts += 1;
                e.next_at = Some(at);
                e.last_error = Some(error.clone());
                // The first failure and then every tenth go into the timeline, not every retry.
                if e.attempts == 1 || e.attempts % 10 == 0 {
                    tx.note(
                        &e.incident,
                        Kind::NotificationRetry,
                        "rollbackd",
                        format!(
                            "{} to {} failed (attempt {}): {error}; retrying at {at}",
                            e.kind.code(),
                            e.target,
                            e.attempts
                        ),
                    );
                }
                tx.out.changes.push(Change::Outbox(Box::new(e)));
            }
        }
        Reply::Ok
    }

    // ---- approval ----

    fn on_vote(
        &mut self,
        tx: &mut Tx,
        id: &str,
        person: &str,
        vote: VoteKind,
        via: &str,
        reason: Option<String>,
    ) -> Reply {
        let Some(inc) = self.incidents.get(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let verb = match vote {
            VoteKind::Approve => "approve",
            VoteKind::Reject => "reject",
        };
        let refuse = |me: &mut State, tx: &mut Tx, why: String, conflict: bool| {
            // Refused votes are kept on the incident up to a bound; the timeline has them all.
            if let Some(inc) = me.incidents.get_mut(id).filter(|i| {
                i.approvals.votes.iter().filter(|v| !v.counted).count() < MAX_REFUSED_VOTES
            }) {
                inc.approvals.votes.push(Vote {
                    person: person.to_string(),
                    vote,
                    at: tx.now,
                    via: via.to_string(),
                    reason: reason.clone(),
                    counted: false,
                    why_not_counted: Some(why.clone()),
                });
            }
            tx.note(
                id,
                Kind::VoteIgnored,
                person,
                format!("{verb} via {via} not counted: {why}"),
            );
            me.save_incident(tx, id);
            if conflict {
                Reply::Conflict(why)
            } else {
                Reply::Forbidden(why)
            }
        };
        if inc.state != IncidentState::AwaitingApproval {
            let why = format!("incident {id} is {}, not awaiting approval", inc.state);
            return refuse(self, tx, why, true);
        }
        let Some(p) = tx.ctx.people.iter().find(|p| p.id == person) else {
            return refuse(
                self,
                tx,
                format!("`{person}` is not listed under people"),
                false,
            );
        };
        if !p
            .roles
            .iter()
            .any(|r| inc.approvals.require_roles.contains(r))
        {
            let why = format!(
                "`{person}` holds none of the roles [{}]",
                inc.approvals.require_roles.join(", ")
            );
            return refuse(self, tx, why, false);
        }
        if inc
            .approvals
            .votes
            .iter()
            .any(|v| v.counted && v.person == person)
        {
            return refuse(self, tx, format!("`{person}` has already voted"), true);
        }
        let roles = p.roles.clone();
        if let Some(inc) = self.incidents.get_mut(id) {
            inc.approvals.votes.push(Vote {
                person: person.to_string(),
                vote,
                at: tx.now,
                via: via.to_string(),
                reason: reason.clone(),
                counted: true,
                why_not_counted: None,
            });
        }
        let because = reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        tx.note_with(
            id,
            Kind::Vote,
            person,
            format!("{person} voted {verb} via {via}{because}"),
            serde_json::json!({ "roles": roles }),
        );
        if vote == VoteKind::Reject {
            self.transition(
                tx,
                id,
                IncidentState::Rejected,
                person,
                format!("rejected by {person}{because}"),
            );
            return Reply::Ok;
        }
        if self.approval_met(tx.ctx, id) {
            self.transition(
                tx,
                id,
                IncidentState::Approved,
                person,
                "approval policy satisfied".to_string(),
            );
            self.start_rollback(tx, id);
        } else {
            self.save_incident(tx, id);
        }
        Reply::Ok
    }

    fn approval_met(&self, ctx: &Context, id: &str) -> bool {
        let Some(inc) = self.incidents.get(id) else {
            return false;
        };
        let approvers: Vec<&Person> = inc
            .approvals
            .votes
            .iter()
            .filter(|v| v.counted && v.vote == VoteKind::Approve)
            .filter_map(|v| ctx.people.iter().find(|p| p.id == v.person))
            .collect();
        approvers.len() >= inc.approvals.quorum
            && inc
                .approvals
                .require_roles
                .iter()
                .all(|role| approvers.iter().any(|p| p.roles.contains(role)))
    }

    fn approval_timed_out(&mut self, tx: &mut Tx, id: &str) {
        let proceed = self
            .incidents
            .get(id)
            .is_some_and(|i| i.approvals.on_timeout == "proceed");
        if proceed {
            self.transition(
                tx,
                id,
                IncidentState::Approved,
                "rollbackd",
                "approval timed out; on_timeout: proceed".to_string(),
            );
            self.start_rollback(tx, id);
        } else {
            self.transition(
                tx,
                id,
                IncidentState::Expired,
                "rollbackd",
                "approval timed out; on_timeout: abort".to_string(),
            );
        }
    }

    // ---- execution ----

    fn start_rollback(&mut self, tx: &mut Tx, id: &str) {
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
        self.advance(tx, id, 0);
    }

    /// Marks step `from` (or the next one that can run) intended and asks for it; past the last
    /// step, moves on to verification.
    fn advance(&mut self, tx: &mut Tx, id: &str, from: usize) {
        let mut index = from;
        loop {
            let Some(inc) = self.incidents.get_mut(id) else {
                return;
            };
            let Some(step) = inc.steps.get_mut(index) else {
                self.start_verify(tx, id);
                return;
            };
            if let Some(err) = step.render_error.clone() {
                // Rendering is deterministic: no retry could succeed, and nothing ran.
                step.state = StepState::Failed;
                step.error = Some(err.clone());
                let name = step.name.clone();
                let cont = step.continue_on_failure;
                tx.note(
                    id,
                    Kind::StepFailed,
                    "rollbackd",
                    format!("step {name} not run: {err}"),
                );
                if cont {
                    index += 1;
                    continue;
                }
                self.transition(
                    tx,
                    id,
                    IncidentState::RollbackFailed,
                    "rollbackd",
                    format!("step {name} could not be prepared: {err}"),
                );
                return;
            }
            step.state = StepState::Intended;
            let attempt = step.attempts + 1;
            self.save_incident(tx, id);
            tx.out.effects.push(Effect::RunStep {
                incident: id.to_string(),
                index,
                attempt,
                delay: Duration::ZERO,
            });
            return;
        }
    }

    fn resume_steps(&mut self, tx: &mut Tx, id: &str) {
        let Some(inc) = self.incidents.get(id) else {
            return;
        };
        let Some(index) = inc.steps.iter().position(|s| {
            matches!(
                s.state,
                StepState::Pending | StepState::Intended | StepState::Started
            )
        }) else {
            return self.start_verify(tx, id);
        };
        let step = &inc.steps[index];
        match step.state {
            StepState::Started if !step.idempotent && step.probe.is_some() => {
                let name = step.name.clone();
                tx.note(
                    id,
                    Kind::StepProbe,
                    "rollbackd",
                    format!("step {name} was running when rollbackd stopped; asking its probe whether it took effect"),
                );
                tx.out.effects.push(Effect::Probe {
                    incident: id.to_string(),
                    index,
                });
            }
            StepState::Started if !step.idempotent => {
                let name = step.name.clone();
                tx.note(
                    id,
                    Kind::StepUnknown,
                    "rollbackd",
                    format!("step {name} was running when rollbackd stopped and is not idempotent"),
                );
                self.transition(
                    tx,
                    id,
                    IncidentState::RollbackFailed,
                    "rollbackd",
                    format!(
                        "step state unknown, needs a human: step {name} may or may not have run"
                    ),
                );
            }
            StepState::Started => {
                let name = step.name.clone();
                tx.note(
                    id,
                    Kind::StepResumed,
                    "rollbackd",
                    format!("step {name} was running when rollbackd stopped; it is idempotent, running it again"),
                );
                self.advance(tx, id, index);
            }
            _ => self.advance(tx, id, index),
        }
    }

    fn on_step_starting(&mut self, tx: &mut Tx, id: &str, index: usize, attempt: u32) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::Go(false);
        };
        let ok_state = inc.state == IncidentState::RollingBack;
        let Some(step) = inc.steps.get_mut(index) else {
            return Reply::Go(false);
        };
        if !ok_state || step.state != StepState::Intended || step.attempts + 1 != attempt {
            return Reply::Go(false);
        }
        let first_start = inc.steps.iter().all(|s| s.started_at.is_none());
        let Some(step) = inc.steps.get_mut(index) else {
            return Reply::Go(false);
        };
        step.state = StepState::Started;
        step.attempts = attempt;
        step.started_at = Some(tx.now);
        let name = step.name.clone();
        let argv = step.plan.argv.clone();
        // Freeze when the first step that actually runs starts (the release is suspect from then).
        let freeze = inc.freeze && first_start;
        let service = inc.service.clone();
        tx.note_with(
            id,
            Kind::StepStarted,
            "rollbackd",
            format!("step {name} attempt {attempt} started"),
            serde_json::json!({ "index": index, "attempt": attempt, "argv": argv }),
        );
        self.save_incident(tx, id);
        if freeze && !self.freezes.contains_key(&service) {
            self.freeze(
                tx,
                &service,
                format!("rollback by incident {id} started"),
                Some(id.to_string()),
                "rollbackd",
            );
        }
        Reply::Go(true)
    }

    fn on_step_finished(
        &mut self,
        tx: &mut Tx,
        id: &str,
        index: usize,
        attempt: u32,
        r: StepResult,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let Some(step) = inc.steps.get_mut(index) else {
            return Reply::NotFound(format!("incident {id} has no step {index}"));
        };
        if inc.state != IncidentState::RollingBack
            || step.state != StepState::Started
            || step.attempts != attempt
        {
            return Reply::Conflict(format!("step {index} of {id} is not running"));
        }
        step.finished_at = Some(tx.now);
        step.exit_code = r.exit_code;
        step.output = Some(r.output.clone());
        step.error = r.error.clone();
        step.duration_ms = Some(r.duration_ms);
        let name = step.name.clone();
        let data = serde_json::json!({
            "index": index, "attempt": attempt, "exit_code": r.exit_code,
            "duration_ms": r.duration_ms, "output": r.output,
        });
        if r.ok {
            step.state = StepState::Done;
            tx.note_with(
                id,
                Kind::StepDone,
                "rollbackd",
                format!("step {name} succeeded"),
                data,
            );
            self.advance(tx, id, index + 1);
            return Reply::Ok;
        }
        let err = r.error.unwrap_or_else(|| "failed".to_string());
        if attempt <= step.retries {
            step.state = StepState::Intended;
            let delay = backoff(attempt, id, index);
            tx.note_with(
                id,
                Kind::StepRetry,
                "rollbackd",
                format!(
                    "step {name} attempt {attempt} failed ({err}); retrying in {}",
                    humantime::format_duration(delay)
                ),
                data,
            );
            self.save_incident(tx, id);
            tx.out.effects.push(Effect::RunStep {
                incident: id.to_string(),
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
            format!("step {name} failed: {err}"),
            data,
        );
        self.announce(
            tx,
            id,
            Announcement::StepFailed,
            format!("step {name} failed: {err}"),
        );
        if cont {
            self.advance(tx, id, index + 1);
        } else {
            self.transition(
                tx,
                id,
                IncidentState::RollbackFailed,
                "rollbackd",
                format!("step {name} failed: {err}"),
            );
        }
        Reply::Ok
    }

    fn on_probe_result(
        &mut self,
        tx: &mut Tx,
        id: &str,
        index: usize,
        in_place: Option<bool>,
        detail: String,
    ) -> Reply {
        let Some(inc) = self.incidents.get_mut(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let Some(step) = inc.steps.get_mut(index) else {
            return Reply::NotFound(format!("incident {id} has no step {index}"));
        };
        if inc.state != IncidentState::RollingBack || step.state != StepState::Started {
            return Reply::Conflict(format!("step {index} of {id} is not waiting for a probe"));
        }
        let name = step.name.clone();
        match in_place {
            Some(true) => {
                step.state = StepState::Done;
                step.finished_at = Some(tx.now);
                tx.note(
                    id,
                    Kind::StepDone,
                    "rollbackd",
                    format!("step {name}: its probe says the effect is in place ({detail}); not running it again"),
                );
                self.advance(tx, id, index + 1);
            }
            Some(false) => {
                step.state = StepState::Intended;
                tx.note(
                    id,
                    Kind::StepResumed,
                    "rollbackd",
                    format!("step {name}: its probe says the effect is absent ({detail}); running it again"),
                );
                self.advance(tx, id, index);
            }
            None => {
                self.transition(
                    tx,
                    id,
                    IncidentState::RollbackFailed,
                    "rollbackd",
                    format!("step state unknown, needs a human: step {name} may or may not have run and its probe could not tell ({detail})"),
                );
            }
        }
        Reply::Ok
    }

    fn on_after_finished(&mut self, tx: &mut Tx, id: &str, index: usize, r: StepResult) -> Reply {
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

    fn start_verify(&mut self, tx: &mut Tx, id: &str) {
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

    fn on_verify_finished(&mut self, tx: &mut Tx, id: &str, results: Vec<CheckResult>) -> Reply {
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

    fn rolled_back(&mut self, tx: &mut Tx, id: &str, why: &str) {
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
            deployed_at: tx.now,
            received_at: tx.now,
            origin: "rollback".to_string(),
            incident: Some(id.to_string()),
            posted_during_freeze: None,
        };
        self.insert_release(tx, release);
    }

    // ---- releases and freezes ----

    fn on_release(&mut self, tx: &mut Tx, mut r: Release) -> Reply {
        let frozen = self.freezes.get(&r.service).cloned();
        let ledger = self.releases.entry(r.service.clone()).or_default();
        // The same deployment at the same time is a repeat; at a later time it is a redeploy
        // (a rollback by hand, say) and a new ledger entry.
        if let Some(existing) = ledger.iter().find(|x| {
            x.environment == r.environment
                && x.deployment_id == r.deployment_id
                && x.deployed_at == r.deployed_at
                && x.origin == "ci"
        }) {
            return if existing.version == r.version {
                Reply::Duplicate
            } else {
                Reply::Conflict(format!(
                    "deployment {} of {} at {} is already recorded as version {}",
                    r.deployment_id, r.service, existing.deployed_at, existing.version
                ))
            };
        }
        if let Some(f) = &frozen {
            r.posted_during_freeze = Some(f.reason.clone());
            tx.note(
                &format!("freeze:{}", r.service),
                Kind::ReleaseDuringFreeze,
                "ci",
                format!(
                    "release {} ({}) of {} posted while the service is frozen ({})",
                    r.version, r.deployment_id, r.service, f.reason
                ),
            );
        }
        self.insert_release(tx, r);
        Reply::Release { frozen }
    }

    fn insert_release(&mut self, tx: &mut Tx, r: Release) {
        let ledger = self.releases.entry(r.service.clone()).or_default();
        // Ordered by deployed_at, not arrival; equal times keep arrival order.
        let pos = ledger.partition_point(|x| x.deployed_at <= r.deployed_at);
        ledger.insert(pos, r.clone());
        tx.out.changes.push(Change::Release(Box::new(r)));
    }

    fn freeze(
        &mut self,
        tx: &mut Tx,
        service: &str,
        reason: String,
        incident: Option<String>,
        by: &str,
    ) -> Reply {
        let f = Freeze {
            service: service.to_string(),
            reason: reason.clone(),
            incident: incident.clone(),
            since: tx.now,
            by: by.to_string(),
        };
        self.freezes.insert(service.to_string(), f.clone());
        tx.out
            .changes
            .push(Change::Freeze(service.to_string(), Some(f)));
        let subject = incident.unwrap_or_else(|| format!("freeze:{service}"));
        tx.note(
            &subject,
            Kind::Frozen,
            by,
            format!("releases of {service} frozen: {reason}"),
        );
        Reply::Ok
    }

    fn on_unfreeze(&mut self, tx: &mut Tx, service: &str, reason: String, by: &str) -> Reply {
        let Some(f) = self.freezes.remove(service) else {
            return Reply::NotFound(format!("service {service} is not frozen"));
        };
        tx.out
            .changes
            .push(Change::Freeze(service.to_string(), None));
        let message = format!("releases of {service} unfrozen by {by}: {reason}");
        match &f.incident {
            Some(id) => {
                tx.note(id, Kind::Unfrozen, by, message.clone());
                self.announce(tx, id, Announcement::FreezeLifted, message);
            }
            None => tx.note(&format!("freeze:{service}"), Kind::Unfrozen, by, message),
        }
        Reply::Ok
    }
}

/// Renders every step of the rule for this incident. A value that cannot be rendered safely is kept
/// as the step's `render_error`: the step will fail with it instead of running.
fn plan_steps(
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
fn empty_plan(a: &Action) -> Plan {
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
            ..
        } => Plan {
            kind: StepKind::Http,
            headers: headers.clone(),
            body: body.clone(),
            expect_status: expect_status.clone(),
            ..Plan::run(Vec::new())
        },
    }
}

/// An action as it will run: the argv of a run action, or `[METHOD, URL]` of an http action,
/// rendered; env, dir, headers and body copied with their secret references unexpanded.
fn plan_action(a: &Action, vars: &BTreeMap<String, String>) -> Result<Plan, String> {
    let argv = match a {
        Action::Run { argv, .. } => argv
            .iter()
            .map(|t| t.render(vars))
            .collect::<Result<_, _>>()?,
        Action::Http { method, url, .. } => vec![method.clone(), url.render(vars)?],
    };
    Ok(Plan {
        argv,
        ..empty_plan(a)
    })
}

/// The rule's verification as the incident keeps it; none when it has no checks.
fn plan_verify(v: Option<&crate::rules::Verify>) -> Option<VerifyPlan> {
    v.filter(|v| !v.checks.is_empty()).map(|v| VerifyPlan {
        within_ms: v.within.as_millis() as u64,
        every_ms: v.every.as_millis() as u64,
        checks: v.checks.clone(),
    })
}

/// Exponential backoff with deterministic jitter (so replays agree): 1s, 2s, 4s … capped at 60s,
/// each within ±25 %.
fn backoff(attempt: u32, id: &str, index: usize) -> Duration {
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

fn trunc(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
