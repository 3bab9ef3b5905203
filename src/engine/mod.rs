//! The engine: every decision rollbackd makes, as a pure function
//! `(state, event, now) -> (state', changes, timeline, effects, reply)`.
//!
//! Rules of the room:
//! - No I/O, no clock, no randomness: `now` comes in, records and effects go out. Replay and tests
//!   drive it exactly as the daemon does.
//! - Every changed record is returned in [`Output::changes`]; the caller persists them (and the
//!   timeline) before it performs any effect, so a crash can never run a step it did not record.
//! - One breach per (rule, group); one incident per breach; one active incident per service.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;

use crate::config::Person;
use crate::model::*;
use crate::rules::{Action, Mode, Rule, RuleSet};

mod announce;
mod approval;
mod breach;
mod decide;
mod index;
mod journal;
mod ledger;
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
    /// PagerDuty events seen (the signed `event.id`), kept [`DELIVERY_MEMORY`] for de-duplication.
    pub deliveries: BTreeMap<String, Timestamp>,
    pub next_seq: u64,
    /// Derived from the records: rebuilt when the store loads them, kept current on every save.
    pub index: Index,
}

/// PagerDuty retries a delivery for up to 48 hours; remember ids a day longer.
pub const DELIVERY_MEMORY: Duration = Duration::from_secs(72 * 3600);

/// The most alerts one breach keeps one by one. Every event that touches a breach writes its
/// record again, alerts included, so this bounds that write whatever an alert's labels are. At the
/// cap a new alert takes the place of the alert that resolved first; when all of them fire, the
/// new one is not kept (the breach fires anyway) and Alertmanager's next resend of it counts once
/// there is room.
pub const MAX_ALERTS_PER_BREACH: usize = 1000;

/// What the engine reads but does not own.
pub struct Context<'a> {
    pub rules: &'a RuleSet,
    pub people: &'a [Person],
    /// `serve --dry-run`: decide and record, run nothing (as if every rule were in shadow mode).
    pub dry_run: bool,
    /// PagerDuty is configured: every announcement also goes to the `pagerduty` target.
    pub pagerduty: bool,
    /// `limits.max_open_breaches_per_rule`: a firing signal that would open a breach of a rule
    /// already holding this many open ones (or its own `breach.max_open`) is refused (see
    /// [`Reply::Refused`]).
    pub max_open_breaches_per_rule: usize,
    /// The fencing token of the steps this engine starts: the leader's Raft term in a cluster,
    /// the number of the daemon's start on a single node. It only ever rises.
    pub fencing_token: u64,
}

struct Tx<'a> {
    ctx: &'a Context<'a>,
    now: Timestamp,
    out: Output,
    /// Where each breach saved in this event sits in `out.changes`: a breach saved again
    /// replaces its earlier copy, so an event holds one copy per breach, not one per signal.
    saved: HashMap<BreachSeq, usize>,
    /// Signals refused per rule: (the rule's cap, how many).
    refused: BTreeMap<String, (usize, usize)>,
}

impl<'a> Tx<'a> {
    fn new(ctx: &'a Context<'a>, now: Timestamp) -> Tx<'a> {
        Tx {
            ctx,
            now,
            out: Output {
                reply: Reply::Ok,
                changes: Vec::new(),
                timeline: Vec::new(),
                effects: Vec::new(),
            },
            saved: HashMap::new(),
            refused: BTreeMap::new(),
        }
    }

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
        let mut tx = Tx::new(ctx, now);
        // What was due by `now` happens before the event at `now`: a vote that arrives after
        // the approval deadline finds the request already expired.
        if !matches!(event, Event::Tick) {
            self.evaluate(&mut tx);
        }
        let reply = match event {
            Event::Signals(signals) => {
                for s in signals {
                    self.on_signal(&mut tx, s);
                }
                Reply::Ok
            }
            Event::Release(r) => self.on_release(&mut tx, *r),
            Event::Tick => Reply::Ok,
            Event::Vote {
                incident,
                person,
                vote,
                via,
                reason,
            } => self.on_vote(
                &mut tx,
                &incident,
                approval::Ballot {
                    person: &person,
                    vote,
                    via: &via,
                    reason,
                },
            ),
            Event::StepStarting {
                incident,
                phase,
                index,
                attempt,
            } => self.on_step_starting(&mut tx, &incident, phase, index, attempt),
            Event::StepFinished {
                incident,
                phase,
                index,
                attempt,
                result,
            } => self.on_step_finished(&mut tx, &incident, phase, index, attempt, result),
            Event::VerifyFinished { incident, results } => {
                self.on_verify_finished(&mut tx, &incident, results)
            }
            Event::ProbeResult {
                incident,
                phase,
                index,
                in_place,
                detail,
            } => self.on_probe_result(&mut tx, &incident, phase, index, in_place, detail),
            Event::AfterFinished {
                incident,
                index,
                result,
            } => self.on_after_finished(&mut tx, &incident, index, result),
            Event::PreflightResult { incident, missing } => {
                self.on_preflight(&mut tx, &incident, missing)
            }
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
        tx.out.reply = match reply {
            Reply::Ok if !tx.refused.is_empty() => Reply::Refused(
                std::mem::take(&mut tx.refused)
                    .into_iter()
                    .map(|(rule, (cap, signals))| Refusal { rule, cap, signals })
                    .collect(),
            ),
            other => other,
        };
        tx.out
    }

    /// After a restart: the effects that were under way when the process stopped, decided from the
    /// step journal. A step that may have started runs again only if it is idempotent.
    pub fn recover(&mut self, ctx: &Context, now: Timestamp) -> Output {
        let mut tx = Tx::new(ctx, now);
        for inc in self.incidents.values() {
            if !inc.state.is_active() && inc.after_pending() {
                tx.out.effects.push(Effect::RunAfter {
                    incident: inc.id.clone(),
                });
            }
        }
        let unfreezing: Vec<String> = self
            .incidents
            .values()
            .filter(|i| i.phase_running(Phase::Unfreeze))
            .map(|i| i.id.clone())
            .collect();
        for id in unfreezing {
            self.resume_steps(&mut tx, &id, Phase::Unfreeze);
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
                // Opened, its preflight not answered yet: ask again.
                IncidentState::Triggered => tx.out.effects.push(Effect::Preflight { incident: id }),
                IncidentState::Approved => self.start_rollback(&mut tx, &id),
                IncidentState::RollingBack => self.resume_steps(&mut tx, &id, Phase::Rollback),
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
            | Event::PreflightResult { incident, .. }
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
        let copy = Change::Breach(Box::new(b.clone()));
        let Some(seq) = breach_seq(&b.id) else {
            tx.out.changes.push(copy);
            return;
        };
        match tx.saved.get(&seq) {
            Some(&at) if at < tx.out.changes.len() => tx.out.changes[at] = copy,
            _ => {
                tx.saved.insert(seq, tx.out.changes.len());
                tx.out.changes.push(copy);
            }
        }
    }

    fn save_incident(&mut self, tx: &mut Tx, id: &str) {
        if let Some(i) = self.incidents.get(id) {
            self.index.incident(&IncidentSummary::from(i));
            tx.out.changes.push(Change::Incident(Box::new(i.clone())));
        }
    }

    // ---- signals and breaches ----

    // ---- approval ----

    // ---- execution ----

    // ---- releases and freezes ----
}

fn trunc(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
