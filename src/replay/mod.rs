//! Backtesting: recorded inputs through the very same engine and the very same pump
//! (`crate::pump`) the daemon uses, with memory for a store and a virtual clock, and every decision
//! it makes, with its time. The pieces: this file (the replayer and its decisions), `files` (events
//! and releases files, Prometheus `ALERTS` exports), `render` (JSON lines, table, summary,
//! `--expect`), `command` (`rollbackd replay`).
//!
//! Two ways to replay:
//! - **Exact.** The inputs are a daemon's own input log (it has `start` and `engine` lines) and the
//!   rules are the ones it ran (every rules digest in the log is theirs): every event is handled at
//!   its recorded instant, ticks and step, probe, check, hook and delivery outcomes included, and
//!   nothing is simulated. Incident ids, states, votes and decisions come out as they were.
//! - **What-if** (other rules, or inputs written by hand or exported from Prometheus). Between two
//!   inputs the engine is ticked at each of its wakeups before the next input's time; a wakeup at
//!   exactly an input's time is handled by that input's own evaluation. The executor is simulated:
//!   each step the engine asks for becomes a `would_run` decision with its rendered argv; its
//!   outcome is the one the log recorded for the same step of the same incident, or else a
//!   success, and every line that rests on a simulated outcome says `simulated: true`.
//!   Verification, probes and `after` hooks go the same way. Votes come only from the inputs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::model::Phase;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::{Config, Person};
use crate::engine::{Change, Context, Effect, Event, Output, State, StepResult};
use crate::inputs::{self, Input, Origin};
use crate::model::{CheckResult, Incident, ReasonCode, StepState, TimelineEntry, since};
use crate::pump::{self, Memory, Pump};
use crate::rules::RuleSet;

mod command;
pub mod files;
mod render;

pub use command::{Args, EXIT_BAD_INPUT, EXIT_DIFFERS, Format, command};
pub use render::{
    EXPECT_FIELDS, Expected, compare, read_expect, render_json, render_summary, render_table,
};

/// One decision, as `--format json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// The virtual time of the decision.
    pub at: Timestamp,
    pub kind: String,
    pub rule: Option<String>,
    pub group: Option<String>,
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breach: Option<String>,
    /// Why it did not act (not_acting, suppressed, cancelled, expired, rejected, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reason as a word: `release_after_breach`, `no_release`, `release_too_old`,
    /// `no_previous_release`, `loop_guard`, `budget`, `frozen`, `one_at_a_time`, `shadow`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<ReasonCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The rendered argv of a step it would run (`[METHOD, URL]` for an http step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// breach_opened: the breach's start (earliest `startsAt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// breach_opened: when it acts if it lasts; awaiting_approval: the approval deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// triggered: the suspect release and the target, `version (deployment id)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_to: Option<String>,
    /// vote, vote_ignored: whose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// frozen, unfrozen, release_during_freeze: what the timeline says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The outcome this line rests on was simulated (no recorded counterpart): a step, probe,
    /// check or after hook assumed to succeed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
}

impl Decision {
    fn new(at: Timestamp, kind: &str) -> Decision {
        Decision {
            at,
            kind: kind.to_string(),
            rule: None,
            group: None,
            service: None,
            incident: None,
            breach: None,
            reason: None,
            reason_code: None,
            step: None,
            argv: None,
            deadline: None,
            started_at: None,
            release_from: None,
            release_to: None,
            person: None,
            detail: None,
            simulated: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuleSummary {
    pub breaches: usize,
    /// Incidents opened (including suppressed ones).
    pub incidents: usize,
    /// Incidents that would have run their steps.
    pub rollbacks: usize,
    pub not_acting: usize,
    pub suppressed: usize,
    /// Resolves followed by a new firing inside `clear_after` (the breach went on).
    pub blips_absorbed: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub inputs: usize,
    /// Inputs later than `--until`, not replayed.
    pub inputs_after_until: usize,
    pub from: Option<Timestamp>,
    /// Where the virtual clock stopped.
    pub until: Option<Timestamp>,
    pub decisions: usize,
    pub kinds: BTreeMap<String, usize>,
    pub rules: BTreeMap<String, RuleSummary>,
    pub breaches_closed: usize,
    pub breaches_open_at_end: usize,
    /// Median length of the closed breaches: start to the resolve that ended them (without
    /// `clear_after`).
    pub median_breach_ms: Option<u64>,
    pub blips_absorbed: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub decisions: Vec<Decision>,
    pub summary: Summary,
}

/// Replays `inputs` (in time order; see [`files::sorted`]) and runs the clock on to `until`, or
/// to the last input's time. Inputs after `until` are not replayed.
pub fn replay(
    rules: &RuleSet,
    people: &[Person],
    inputs: impl IntoIterator<Item = Input>,
    until: Option<Timestamp>,
) -> Report {
    let mut r = Replayer::new(rules, people);
    for i in inputs {
        r.feed_until(i, until);
    }
    r.finish(until)
}

struct BreachInfo {
    rule: String,
    group: String,
    service: Option<String>,
    started_at: Timestamp,
    deadline: Timestamp,
}

/// The engine on a virtual clock, fed one input at a time.
pub struct Replayer<'a> {
    rules: &'a RuleSet,
    people: &'a [Person],
    pagerduty: bool,
    dry_run: bool,
    max_open_breaches_per_rule: usize,
    /// The inputs are the daemon's own log and the rules are the ones it ran: every tick and
    /// outcome comes from the log, nothing is simulated.
    exact: bool,
    recorded: Recorded,
    pump: Pump,
    memory: Memory,
    now: Option<Timestamp>,
    first: Option<Timestamp>,
    inputs: usize,
    after_until: usize,
    decisions: Vec<Decision>,
    breaches: HashMap<String, BreachInfo>,
    lengths_ms: Vec<u64>,
    per_rule: BTreeMap<String, RuleSummary>,
}

impl<'a> Replayer<'a> {
    pub fn new(rules: &'a RuleSet, people: &'a [Person]) -> Replayer<'a> {
        Replayer {
            rules,
            people,
            pagerduty: false,
            dry_run: false,
            max_open_breaches_per_rule: crate::config::Limits::default().max_open_breaches_per_rule,
            exact: false,
            recorded: Recorded::default(),
            pump: Pump::new(State::default()),
            memory: Memory::default(),
            now: None,
            first: None,
            inputs: 0,
            after_until: 0,
            decisions: Vec::new(),
            breaches: HashMap::new(),
            lengths_ms: Vec::new(),
            per_rule: rules
                .rules
                .iter()
                .map(|r| (r.name.clone(), RuleSummary::default()))
                .collect(),
        }
    }

    /// As the daemon with `pagerduty:` configured: announcements also go to PagerDuty. It changes
    /// no decision, but it takes sequence numbers, so incident ids match the live ones only when
    /// this matches the config the inputs were recorded under.
    pub fn pagerduty(mut self, on: bool) -> Replayer<'a> {
        self.pagerduty = on;
        self
    }

    /// As the daemon with `limits.max_open_breaches_per_rule: n`: a signal that would open a
    /// breach beyond it is refused, as the daemon refused it.
    pub fn max_open_breaches_per_rule(mut self, n: usize) -> Replayer<'a> {
        self.max_open_breaches_per_rule = n;
        self
    }

    /// As `serve --dry-run`: every incident is suppressed.
    pub fn dry_run(mut self, on: bool) -> Replayer<'a> {
        self.dry_run = on;
        self
    }

    /// Replays the daemon's own log exactly: its ticks and outcomes, at its instants (see
    /// [`exact_for`]). Otherwise its outcomes stand in where the same step comes up, and the
    /// rest is simulated.
    pub fn recorded(mut self, inputs: &[Input], exact: bool) -> Replayer<'a> {
        self.exact = exact;
        if !exact {
            self.recorded = Recorded::from(inputs);
        }
        self
    }

    /// Decisions so far.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// The engine's state (for tests and tools).
    pub fn state(&self) -> &State {
        &self.pump.state
    }

    /// Every incident the replay opened, as last recorded.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.memory.incidents()
    }

    fn incident(&self, id: &str) -> Option<&Incident> {
        self.pump
            .state
            .incidents
            .get(id)
            .or_else(|| self.memory.get(id))
    }

    /// Feeds one input: first the wakeups before its time, then the input itself. An input earlier
    /// than the one before it is seen at the earlier one's time (the clock never goes back).
    pub fn feed(&mut self, input: Input) {
        let at = self.now.map_or(input.at, |n| input.at.max(n));
        self.inputs += 1;
        self.first.get_or_insert(at);
        if self.exact {
            self.now = Some(at);
            let what = match input.origin {
                Origin::Start => pump::Input::Recover,
                _ => pump::Input::Event(input.event),
            };
            return self.run(VecDeque::from([(what, false)]), at);
        }
        if input.origin != Origin::Outside {
            // A what-if keeps its own clock and executor; recorded outcomes stand in through
            // `recorded`.
            return;
        }
        self.advance(at, false);
        self.apply(input.event, at);
    }

    /// [`Replayer::feed`], unless the input is later than `until`.
    pub fn feed_until(&mut self, input: Input, until: Option<Timestamp>) {
        if until.is_some_and(|u| input.at > u) {
            self.after_until += 1;
        } else {
            self.feed(input);
        }
    }

    /// Runs the clock on to `until` (default: the last input's time) and sums up.
    pub fn finish(mut self, until: Option<Timestamp>) -> Report {
        let end = match (until, self.now) {
            (Some(u), Some(n)) => Some(u.max(n)),
            (u, n) => u.or(n),
        };
        if let Some(end) = end {
            if !self.exact {
                self.advance(end, true);
            }
            self.now = Some(end);
        }
        let mut kinds = BTreeMap::new();
        for d in &self.decisions {
            *kinds.entry(d.kind.clone()).or_insert(0) += 1;
        }
        let mut lengths = self.lengths_ms;
        lengths.sort_unstable();
        let median = match lengths.len() {
            0 => None,
            n if n % 2 == 1 => Some(lengths[n / 2]),
            n => Some((lengths[n / 2 - 1] + lengths[n / 2]) / 2),
        };
        let summary = Summary {
            inputs: self.inputs,
            inputs_after_until: self.after_until,
            from: self.first,
            until: self.now,
            decisions: self.decisions.len(),
            kinds,
            breaches_closed: lengths.len(),
            breaches_open_at_end: self.pump.state.index.open_count(),
            median_breach_ms: median,
            blips_absorbed: self.per_rule.values().map(|r| r.blips_absorbed).sum(),
            rules: self.per_rule,
        };
        Report {
            decisions: self.decisions,
            summary,
        }
    }

    /// Ticks at every wakeup before `to` (and at `to` when `inclusive`).
    fn advance(&mut self, to: Timestamp, inclusive: bool) {
        let mut last = None;
        while let Some(w) = self.pump.next_wakeup() {
            if w > to || (w == to && !inclusive) {
                break;
            }
            let w = self.now.map_or(w, |n| w.max(n));
            if last == Some(w) {
                // A wakeup that a tick does not move on: stop rather than spin.
                break;
            }
            last = Some(w);
            self.apply(Event::Tick, w);
        }
    }

    /// Hands one event to the engine at `at`, then plays the executor for the effects it asks for,
    /// at the same instant, until nothing is left to do.
    fn apply(&mut self, event: Event, at: Timestamp) {
        self.now = Some(at);
        self.run(VecDeque::from([(pump::Input::Event(event), false)]), at);
    }

    /// The pump, with memory for a store and the simulated executor: each input and what its
    /// effects lead to, at the same instant, until nothing is left to do. The flag says the
    /// input is a simulated outcome.
    fn run(&mut self, mut queue: VecDeque<(pump::Input, bool)>, at: Timestamp) {
        while let Some((input, simulated)) = queue.pop_front() {
            let ctx = Context {
                rules: self.rules,
                people: self.people,
                dry_run: self.dry_run,
                pagerduty: self.pagerduty,
                max_open_breaches_per_rule: self.max_open_breaches_per_rule,
                // A replay starts nothing, so no token fences anything.
                fencing_token: 0,
            };
            // Memory never fails to read back.
            let Ok(handled) = self.pump.handle(&self.memory, &ctx, input, at) else {
                continue;
            };
            let loaded = handled.loaded;
            let mut out = handled.out;
            let changes = std::mem::take(&mut out.changes);
            self.absorb(&changes, out, at, &mut queue, simulated);
            self.pump.let_go(&changes, [loaded]);
            self.memory.commit(changes);
        }
    }

    fn absorb(
        &mut self,
        changes: &[Change],
        out: Output,
        at: Timestamp,
        queue: &mut VecDeque<(pump::Input, bool)>,
        simulated: bool,
    ) {
        let mut closed = Vec::new();
        for c in changes {
            let Change::Breach(b) = c else { continue };
            let rules = self.rules;
            let info = self.breaches.entry(b.id.clone()).or_insert_with(|| {
                let vars = b
                    .labels
                    .iter()
                    .map(|(k, v)| (format!("labels.{k}"), v.to_string()))
                    .collect();
                BreachInfo {
                    rule: b.rule.clone(),
                    group: b.group.clone(),
                    service: rules
                        .get(&b.rule)
                        .and_then(|r| r.service.render(&vars).ok())
                        .filter(|s| !s.is_empty()),
                    started_at: b.started_at,
                    deadline: b.deadline,
                }
            });
            info.started_at = b.started_at;
            info.deadline = b.deadline;
            if let Some(end) = b.closed_at {
                let stopped = b.clearing_since.unwrap_or(end);
                self.lengths_ms
                    .push(since(stopped, b.started_at).as_millis() as u64);
                closed.push(b.id.clone());
            }
        }
        for t in out.timeline {
            self.note(t, simulated);
        }
        for id in closed {
            self.breaches.remove(&id);
        }
        for e in out.effects {
            self.perform(e, at, queue, simulated);
        }
    }

    /// The executor of a replay: a step it would run is a decision line; in an exact replay
    /// its outcome comes later from the log, otherwise from the recorded outcome of the same
    /// step or, when there is none, a simulated success.
    fn perform(
        &mut self,
        e: Effect,
        at: Timestamp,
        queue: &mut VecDeque<(pump::Input, bool)>,
        simulated: bool,
    ) {
        let exact = self.exact;
        let mut outcome = |ev: Event, recorded: bool| {
            if !exact {
                queue.push_back((pump::Input::Event(ev), simulated || !recorded));
            }
        };
        match e {
            Effect::RunStep {
                incident,
                phase,
                index,
                attempt,
                ..
            } => {
                let mut d = self.about_incident(at, "would_run", &incident);
                if let Some(step) = self
                    .incident(&incident)
                    .and_then(|i| i.journal(phase).get(index))
                {
                    d.step = Some(step.name.clone());
                    d.argv = Some(step.plan.argv.clone());
                }
                let recorded = self.recorded.step(&incident, phase, index, attempt);
                d.simulated = !exact && (simulated || recorded.is_none());
                self.decisions.push(d);
                outcome(
                    Event::StepStarting {
                        incident: incident.clone(),
                        phase,
                        index,
                        attempt,
                    },
                    true,
                );
                let found = recorded.is_some();
                let result = recorded.unwrap_or_else(ok_result);
                outcome(
                    Event::StepFinished {
                        incident,
                        phase,
                        index,
                        attempt,
                        result,
                    },
                    found,
                );
            }
            Effect::Verify { incident, .. } => {
                let recorded = self.recorded.verify(&incident);
                let found = recorded.is_some();
                let results = recorded.unwrap_or_else(|| {
                    self.incident(&incident)
                        .and_then(|i| i.verify.as_ref())
                        .map(|v| v.checks.iter().map(simulated_check).collect())
                        .unwrap_or_default()
                });
                outcome(Event::VerifyFinished { incident, results }, found);
            }
            Effect::Probe {
                incident,
                phase,
                index,
            } => {
                let recorded = self.recorded.probe(&incident, phase, index);
                let found = recorded.is_some();
                let (in_place, detail) = recorded
                    .unwrap_or_else(|| (Some(true), "replay: assumed in place".to_string()));
                outcome(
                    Event::ProbeResult {
                        incident,
                        phase,
                        index,
                        in_place,
                        detail,
                    },
                    found,
                );
            }
            Effect::Preflight { incident } => {
                // A backtest judges the rules, not this host: without a recorded answer the
                // plan is taken as complete, and what follows is no less real for it.
                let missing = self
                    .recorded
                    .preflights
                    .get(&incident)
                    .cloned()
                    .unwrap_or_default();
                outcome(Event::PreflightResult { incident, missing }, true);
            }
            Effect::RunAfter { incident } => {
                let hooks: Vec<(usize, String, Vec<String>, Option<String>)> = self
                    .incident(&incident)
                    .map(|i| {
                        i.after
                            .iter()
                            .enumerate()
                            .filter(|(_, h)| {
                                !matches!(h.state, StepState::Done | StepState::Failed)
                            })
                            .map(|(n, h)| {
                                (
                                    n,
                                    h.name.clone(),
                                    h.plan.argv.clone(),
                                    h.render_error.clone(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                for (index, name, argv, render_error) in hooks {
                    let mut d = self.about_incident(at, "would_run_after", &incident);
                    d.step = Some(name);
                    let recorded = self.recorded.after(&incident, index);
                    let found = recorded.is_some();
                    let result = match (recorded, render_error) {
                        (Some(r), _) => {
                            d.argv = Some(argv);
                            r
                        }
                        (None, None) => {
                            d.argv = Some(argv);
                            ok_result()
                        }
                        (None, Some(e)) => {
                            d.reason = Some(e.clone());
                            StepResult {
                                ok: false,
                                error: Some(e),
                                ..ok_result()
                            }
                        }
                    };
                    d.simulated = !exact && (simulated || !found);
                    self.decisions.push(d);
                    outcome(
                        Event::AfterFinished {
                            incident: incident.clone(),
                            index,
                            result,
                        },
                        found,
                    );
                }
            }
        }
    }

    fn about_incident(&self, at: Timestamp, kind: &str, id: &str) -> Decision {
        let mut d = Decision::new(at, kind);
        d.incident = Some(id.to_string());
        if let Some(i) = self.incident(id) {
            d.rule = Some(i.rule.clone());
            d.group = Some(i.group.clone());
            d.service = Some(i.service.clone());
            d.breach = Some(i.breach.clone());
        }
        d
    }

    /// A timeline entry as a decision (or nothing, for the executor's own bookkeeping).
    fn note(&mut self, t: TimelineEntry, simulated: bool) {
        use crate::model::Kind as K;
        if matches!(
            t.kind,
            K::StepStarted
                | K::StepDone
                | K::StepRetry
                | K::StepProbe
                | K::StepResumed
                | K::StepUnknown
                | K::Verifying
                | K::AfterCheck
                | K::Notified
                | K::NotificationRetry
                | K::NotificationDropped
                | K::PagerdutyLinked
        ) {
            return;
        }
        let kind = t.kind.code();
        let mut d = if let Some(id) = t.subject.strip_prefix("breach:") {
            let mut d = Decision::new(t.at, kind);
            d.breach = Some(id.to_string());
            if let Some(b) = self.breaches.get(id) {
                d.rule = Some(b.rule.clone());
                d.group = Some(b.group.clone());
                d.service = b.service.clone();
                if t.kind == K::BreachOpened {
                    d.started_at = Some(b.started_at);
                    d.deadline = Some(b.deadline);
                }
            }
            d
        } else if let Some(service) = t.subject.strip_prefix("freeze:") {
            let mut d = Decision::new(t.at, kind);
            d.service = Some(service.to_string());
            d
        } else if t.subject.starts_with("pagerduty:") {
            Decision::new(t.at, kind)
        } else {
            self.about_incident(t.at, kind, &t.subject)
        };
        let stats = d
            .rule
            .as_ref()
            .and_then(|r| self.per_rule.get_mut(r.as_str()));
        match t.kind {
            K::BreachOpened => {
                if let Some(s) = stats {
                    s.breaches += 1;
                }
            }
            K::BreachRefired => {
                if let Some(s) = stats {
                    s.blips_absorbed += 1;
                }
            }
            K::Triggered => {
                if let Some(s) = stats {
                    s.incidents += 1;
                }
                if let Some(i) = self.incident(&t.subject) {
                    let r = |r: &crate::model::ReleaseRef| {
                        format!("{} ({})", r.version, r.deployment_id)
                    };
                    d.release_from = Some(r(&i.release_from));
                    d.release_to = Some(r(&i.release_to));
                }
            }
            K::AwaitingApproval => {
                d.deadline = self.incident(&t.subject).and_then(|i| i.approvals.deadline);
            }
            K::RollingBack => {
                if let Some(s) = stats {
                    s.rollbacks += 1;
                }
            }
            K::NotActing | K::Suppressed => {
                if let Some(s) = stats {
                    if t.kind == K::NotActing {
                        s.not_acting += 1;
                    } else {
                        s.suppressed += 1;
                    }
                }
                d.reason_code = t
                    .data
                    .get("code")
                    .and_then(|c| c.as_str())
                    .and_then(ReasonCode::parse);
                d.reason = Some(t.message);
            }
            K::Cancelled | K::Expired | K::Rejected | K::RollbackFailed | K::StepFailed => {
                // A code where the transition has one (an incident whose plan cannot run).
                d.reason_code = t
                    .data
                    .get("code")
                    .and_then(|c| c.as_str())
                    .and_then(ReasonCode::parse);
                d.reason = Some(t.message);
            }
            K::Vote => d.person = Some(t.actor),
            K::VoteIgnored => {
                d.person = Some(t.actor);
                d.reason = Some(t.message);
            }
            K::Frozen | K::Unfrozen | K::ReleaseDuringFreeze => d.detail = Some(t.message),
            _ => {}
        }
        d.simulated = simulated;
        self.decisions.push(d);
    }
}

/// The outcomes a daemon's log recorded, for a what-if replay of it: where the replay runs the
/// same step of the same incident, the recorded outcome stands in for a simulated one.
#[derive(Default)]
struct Recorded {
    steps: HashMap<(String, Phase, usize, u32), StepResult>,
    probes: HashMap<(String, Phase, usize), (Option<bool>, String)>,
    afters: HashMap<(String, usize), StepResult>,
    preflights: HashMap<String, Vec<String>>,
    verifies: HashMap<String, VecDeque<Vec<CheckResult>>>,
}

impl Recorded {
    fn from(inputs: &[Input]) -> Recorded {
        let mut r = Recorded::default();
        for i in inputs.iter().filter(|i| i.origin == Origin::Engine) {
            match &i.event {
                Event::StepFinished {
                    incident,
                    phase,
                    index,
                    attempt,
                    result,
                } => {
                    r.steps
                        .insert((incident.clone(), *phase, *index, *attempt), result.clone());
                }
                Event::ProbeResult {
                    incident,
                    phase,
                    index,
                    in_place,
                    detail,
                } => {
                    r.probes.insert(
                        (incident.clone(), *phase, *index),
                        (*in_place, detail.clone()),
                    );
                }
                Event::AfterFinished {
                    incident,
                    index,
                    result,
                } => {
                    r.afters.insert((incident.clone(), *index), result.clone());
                }
                Event::PreflightResult { incident, missing } => {
                    r.preflights.insert(incident.clone(), missing.clone());
                }
                Event::VerifyFinished { incident, results } => r
                    .verifies
                    .entry(incident.clone())
                    .or_default()
                    .push_back(results.clone()),
                _ => {}
            }
        }
        r
    }

    fn step(&mut self, id: &str, phase: Phase, index: usize, attempt: u32) -> Option<StepResult> {
        self.steps.remove(&(id.to_string(), phase, index, attempt))
    }

    fn probe(&mut self, id: &str, phase: Phase, index: usize) -> Option<(Option<bool>, String)> {
        self.probes.remove(&(id.to_string(), phase, index))
    }

    fn after(&mut self, id: &str, index: usize) -> Option<StepResult> {
        self.afters.remove(&(id.to_string(), index))
    }

    fn verify(&mut self, id: &str) -> Option<Vec<CheckResult>> {
        self.verifies.get_mut(id).and_then(VecDeque::pop_front)
    }
}

/// The first characters of a digest (a hand-written log may hold any text there).
fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// Whether `inputs` are a daemon's own log (it has `start` or `engine` lines) recorded under
/// exactly `rules` (every recorded rules digest is theirs): then a replay takes every tick and
/// outcome from the log. `Err` names the first digest that differs.
pub fn exact_for(inputs: &[Input], rules: &RuleSet) -> Result<bool, String> {
    let recorded = inputs.iter().any(|i| i.origin != Origin::Outside);
    if !recorded {
        return Ok(false);
    }
    match inputs
        .iter()
        .filter_map(|i| i.rules_digest.as_deref().map(|d| (i.at, d)))
        .find(|(_, d)| *d != rules.digest)
    {
        None => Ok(true),
        Some((at, d)) => Err(format!(
            "the log was recorded under other rules from {at} (digest {}…, these are {}…): a what-if; outcomes without a recorded counterpart are simulated",
            short(d),
            short(&rules.digest)
        )),
    }
}

/// A check the replay does not run: assumed to pass.
fn simulated_check(c: &crate::model::Check) -> CheckResult {
    CheckResult {
        name: c.name(),
        ok: true,
        detail: "replay: assumed ok".to_string(),
    }
}

fn ok_result() -> StepResult {
    StepResult {
        ok: true,
        exit_code: Some(0),
        output: String::new(),
        error: None,
        duration_ms: 0,
        permanent: false,
    }
}
