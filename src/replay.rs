//! Backtesting: recorded inputs through the very same engine on a virtual clock, and every decision
//! it makes, with its time.
//!
//! [`replay`] (or [`Replayer`], step by step) is pure: no clock, no network, no step runs. Between
//! two inputs the engine is ticked at each of its wakeups (breach deadlines, clear times, approval
//! deadlines) before the next input's time, as the daemon's driver would; a wakeup at exactly an
//! input's time is handled by that input's own evaluation (the daemon, too, handles an input that
//! arrives at a deadline before its timer). The executor is simulated: each step the engine asks
//! for becomes a `would_run` decision with its rendered argv and then succeeds at the same instant;
//! verification passes; probes say the effect is in place; `after` hooks pass. Votes come only
//! from the inputs (PagerDuty deliveries, and `vote` lines from the break-glass API); without them
//! an approval deadline fires as it would have.
//!
//! [`command`] is `rollbackd replay`: the files in, the table or JSON lines out, `--expect` diff.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::{Config, Person};
use crate::engine::{Change, Context, Effect, Event, Output, State, StepResult};
use crate::inputs::{self, Input, Origin};
use crate::model::{CheckResult, Incident, ReasonCode, StepState, TimelineEntry, since};
use crate::pump::{self, Memory, Pump};
use crate::rules::{self, RuleSet, Severity};

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

/// Replays `inputs` (in time order; see [`inputs::sorted`]) and runs the clock on to `until`, or
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
            };
            // Memory never fails to read back.
            let Ok(handled) = self.pump.handle(&self.memory, &ctx, input, at) else {
                continue;
            };
            let loaded = handled.loaded();
            let mut out = handled.out;
            self.memory.commit(&out.changes);
            let changes = std::mem::take(&mut out.changes);
            self.absorb(&changes, out, at, &mut queue, simulated);
            self.pump.let_go(&changes, [loaded]);
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
                index,
                attempt,
                ..
            } => {
                let mut d = self.about_incident(at, "would_run", &incident);
                if let Some(step) = self.incident(&incident).and_then(|i| i.steps.get(index)) {
                    d.step = Some(step.name.clone());
                    d.argv = Some(step.plan.argv.clone());
                }
                let recorded = self.recorded.step(&incident, index, attempt);
                d.simulated = !exact && (simulated || recorded.is_none());
                self.decisions.push(d);
                outcome(
                    Event::StepStarting {
                        incident: incident.clone(),
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
            Effect::Probe { incident, index } => {
                let recorded = self.recorded.probe(&incident, index);
                let found = recorded.is_some();
                let (in_place, detail) = recorded
                    .unwrap_or_else(|| (Some(true), "replay: assumed in place".to_string()));
                outcome(
                    Event::ProbeResult {
                        incident,
                        index,
                        in_place,
                        detail,
                    },
                    found,
                );
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
                    let mut outcome = |ev: Event, recorded: bool| {
                        if !exact {
                            queue.push_back((pump::Input::Event(ev), simulated || !recorded));
                        }
                    };
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
    steps: HashMap<(String, usize, u32), StepResult>,
    probes: HashMap<(String, usize), (Option<bool>, String)>,
    afters: HashMap<(String, usize), StepResult>,
    verifies: HashMap<String, VecDeque<Vec<CheckResult>>>,
}

impl Recorded {
    fn from(inputs: &[Input]) -> Recorded {
        let mut r = Recorded::default();
        for i in inputs.iter().filter(|i| i.origin == Origin::Engine) {
            match &i.event {
                Event::StepFinished {
                    incident,
                    index,
                    attempt,
                    result,
                } => {
                    r.steps
                        .insert((incident.clone(), *index, *attempt), result.clone());
                }
                Event::ProbeResult {
                    incident,
                    index,
                    in_place,
                    detail,
                } => {
                    r.probes
                        .insert((incident.clone(), *index), (*in_place, detail.clone()));
                }
                Event::AfterFinished {
                    incident,
                    index,
                    result,
                } => {
                    r.afters.insert((incident.clone(), *index), result.clone());
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

    fn step(&mut self, id: &str, index: usize, attempt: u32) -> Option<StepResult> {
        self.steps.remove(&(id.to_string(), index, attempt))
    }

    fn probe(&mut self, id: &str, index: usize) -> Option<(Option<bool>, String)> {
        self.probes.remove(&(id.to_string(), index))
    }

    fn after(&mut self, id: &str, index: usize) -> Option<StepResult> {
        self.afters.remove(&(id.to_string(), index))
    }

    fn verify(&mut self, id: &str) -> Option<Vec<CheckResult>> {
        self.verifies.get_mut(id).and_then(VecDeque::pop_front)
    }
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
            &d[..d.len().min(12)],
            &rules.digest[..rules.digest.len().min(12)]
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
    }
}

// ---- output ----

/// JSON lines, one decision per line.
pub fn render_json(decisions: &[Decision]) -> String {
    let mut out = String::new();
    for d in decisions {
        out.push_str(&serde_json::to_string(d).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A table for people: one row per decision.
pub fn render_table(decisions: &[Decision]) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_string());
    let mut rows: Vec<[String; 7]> = vec![[
        "AT".into(),
        "KIND".into(),
        "RULE".into(),
        "GROUP".into(),
        "SERVICE".into(),
        "SUBJECT".into(),
        "DETAIL".into(),
    ]];
    for d in decisions {
        rows.push([
            d.at.to_string(),
            d.kind.clone(),
            dash(&d.rule),
            dash(&d.group),
            dash(&d.service),
            d.incident
                .clone()
                .or_else(|| d.breach.clone())
                .unwrap_or_else(|| "-".into()),
            detail(d),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        for (w, cell) in widths.iter().zip(r.iter()) {
            out.push_str(cell);
            out.push_str(&" ".repeat(w - cell.chars().count() + 2));
        }
        out.push_str(&r[6]);
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

fn detail(d: &Decision) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &d.started_at {
        parts.push(format!("started {s}"));
    }
    if let Some(dl) = &d.deadline {
        parts.push(match d.kind.as_str() {
            "breach_opened" => format!("acts at {dl}"),
            _ => format!("until {dl}"),
        });
    }
    if let (Some(f), Some(t)) = (&d.release_from, &d.release_to) {
        parts.push(format!("{f} -> {t}"));
    }
    if let Some(p) = &d.person {
        parts.push(format!("by {p}"));
    }
    if let Some(s) = &d.step {
        parts.push(format!("step {s:?}"));
    }
    if let Some(argv) = &d.argv {
        let shown: Vec<String> = argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect();
        parts.push(shown.join(" "));
    }
    if let Some(r) = &d.reason {
        parts.push(match &d.reason_code {
            Some(c) => format!("[{}] {r}", c.code()),
            None => r.clone(),
        });
    }
    if let Some(x) = &d.detail {
        parts.push(x.clone());
    }
    if d.simulated {
        parts.push("(simulated)".to_string());
    }
    parts.join("; ")
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// The summary for people.
pub fn render_summary(s: &Summary) -> String {
    let t = |o: &Option<Timestamp>| o.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "summary: {} input(s) from {} to {}{}; {} decision(s)\n",
        s.inputs,
        t(&s.from),
        t(&s.until),
        if s.inputs_after_until > 0 {
            format!(" ({} after --until not replayed)", s.inputs_after_until)
        } else {
            String::new()
        },
        s.decisions
    );
    let header = [
        "RULE",
        "BREACHES",
        "INCIDENTS",
        "ROLLBACKS",
        "NOT_ACTING",
        "SUPPRESSED",
        "BLIPS_ABSORBED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (name, r) in &s.rules {
        rows.push(vec![
            name.clone(),
            r.breaches.to_string(),
            r.incidents.to_string(),
            r.rollbacks.to_string(),
            r.not_acting.to_string(),
            r.suppressed.to_string(),
            r.blips_absorbed.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "  median breach length: {} ({} closed breach(es), {} still open at the end)\n",
        s.median_breach_ms.map(fmt_ms).unwrap_or_else(|| "-".into()),
        s.breaches_closed,
        s.breaches_open_at_end
    ));
    out.push_str(&format!(
        "  blips absorbed by clear_after: {}\n",
        s.blips_absorbed
    ));
    out
}

// ---- --expect ----

/// The fields `--expect` compares.
pub const EXPECT_FIELDS: [&str; 5] = ["at", "kind", "rule", "group", "service"];

/// One expected decision: its line in the file, and its fields.
pub type Expected = (usize, serde_json::Map<String, serde_json::Value>);

/// Reads an expectations file: JSON lines, one decision each (extra fields are ignored; a field
/// left out matches anything).
pub fn read_expect(text: &str, file: &str) -> Result<Vec<Expected>, inputs::InputError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let err = |message: String| inputs::InputError {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| err(format!("not JSON: {e}")))?;
        let serde_json::Value::Object(m) = v else {
            return Err(err("an expected decision is a JSON object".to_string()));
        };
        if let Some(at) = m.get("at") {
            let ok = at.as_str().is_some_and(|s| s.parse::<Timestamp>().is_ok());
            if !ok {
                return Err(err(format!("at: {at} is not an RFC 3339 time")));
            }
        }
        out.push((i + 1, m));
    }
    Ok(out)
}

fn expected_matches(e: &serde_json::Map<String, serde_json::Value>, d: &Decision) -> bool {
    EXPECT_FIELDS.iter().all(|f| {
        let Some(want) = e.get(*f) else {
            return true;
        };
        match *f {
            "at" => want
                .as_str()
                .and_then(|s| s.parse::<Timestamp>().ok())
                .is_some_and(|t| t == d.at),
            "kind" => want.as_str() == Some(d.kind.as_str()),
            field => {
                let got = match field {
                    "rule" => &d.rule,
                    "group" => &d.group,
                    _ => &d.service,
                };
                match got {
                    Some(g) => want.as_str() == Some(g.as_str()),
                    None => want.is_null(),
                }
            }
        }
    })
}

fn compared(d: &Decision) -> String {
    let opt = |o: &Option<String>| serde_json::Value::from(o.clone());
    fields(&[
        ("at", serde_json::Value::from(d.at.to_string())),
        ("kind", serde_json::Value::from(d.kind.clone())),
        ("rule", opt(&d.rule)),
        ("group", opt(&d.group)),
        ("service", opt(&d.service)),
    ])
}

fn compared_expected(e: &serde_json::Map<String, serde_json::Value>) -> String {
    let present: Vec<(&str, serde_json::Value)> = EXPECT_FIELDS
        .iter()
        .filter_map(|f| e.get(*f).map(|v| (*f, v.clone())))
        .collect();
    fields(&present)
}

/// A JSON object with its keys in the order given.
fn fields(kv: &[(&str, serde_json::Value)]) -> String {
    let inner: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// The difference between the expected decisions and the replayed ones, or `None` when they
/// agree: lines `- FILE:LINE: {..}` expected but not made, `+ decision N: {..}` made but not
/// expected, in order.
pub fn compare(expected: &[Expected], actual: &[Decision], file: &str) -> Option<String> {
    let eq = |i: usize, j: usize| expected_matches(&expected[i].1, &actual[j]);
    let (n, m) = (expected.len(), actual.len());
    let mut pre = 0;
    while pre < n && pre < m && eq(pre, pre) {
        pre += 1;
    }
    let mut suf = 0;
    while suf < n - pre && suf < m - pre && eq(n - 1 - suf, m - 1 - suf) {
        suf += 1;
    }
    if pre + suf == n && pre + suf == m {
        return None;
    }
    let (e0, e1, a0, a1) = (pre, n - suf, pre, m - suf);
    let (h, w) = (e1 - e0, a1 - a0);
    // (false, i) = expected i missing; (true, j) = actual j unexpected.
    let mut ops: Vec<(bool, usize)> = Vec::new();
    if h.saturating_mul(w) <= 4_000_000 {
        // Longest common subsequence of the differing middle.
        let mut lcs = vec![0u32; (h + 1) * (w + 1)];
        let at = |i: usize, j: usize| i * (w + 1) + j;
        for i in (0..h).rev() {
            for j in (0..w).rev() {
                lcs[at(i, j)] = if eq(e0 + i, a0 + j) {
                    lcs[at(i + 1, j + 1)] + 1
                } else {
                    lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < h || j < w {
            if i < h && j < w && eq(e0 + i, a0 + j) {
                i += 1;
                j += 1;
            } else if j < w && (i == h || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
                ops.push((true, a0 + j));
                j += 1;
            } else {
                ops.push((false, e0 + i));
                i += 1;
            }
        }
    } else {
        ops.extend((e0..e1).map(|i| (false, i)));
        ops.extend((a0..a1).map(|j| (true, j)));
    }
    let missing = ops.iter().filter(|(plus, _)| !plus).count();
    let extra = ops.len() - missing;
    let mut out = format!(
        "replay differs from {file}: {missing} expected decision(s) not made, {extra} decision(s) not expected (compared: {})\n",
        EXPECT_FIELDS.join(", ")
    );
    for (plus, k) in ops {
        if plus {
            out.push_str(&format!("+ decision {}: {}\n", k + 1, compared(&actual[k])));
        } else {
            let (line, e) = &expected[k];
            out.push_str(&format!("- {file}:{line}: {}\n", compared_expected(e)));
        }
    }
    Some(out)
}

// ---- the command ----

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// `rollbackd replay`: what would have happened, and when.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rules directory (checked as `serve` checks it; errors exit 64).
    #[arg(long)]
    pub rules: PathBuf,
    /// Recorded inputs: JSON lines `{"at", "source", "body"}` (what `record_inputs: true` writes),
    /// or a Prometheus ALERTS range-query export (/api/v1/query_range JSON). May be given more
    /// than once (e.g. an export in pieces): all files are merged in time order.
    #[arg(long, required = true)]
    pub events: Vec<PathBuf>,
    /// Releases: JSON lines, input-log lines or bare `/v1/releases` bodies with `deployed_at`.
    #[arg(long)]
    pub releases: Option<PathBuf>,
    /// Config for people (approvals) and PagerDuty workflow ids; secret references are not
    /// resolved (replay needs no secret).
    #[arg(long, env = "ROLLBACKD_CONFIG")]
    pub config: Option<PathBuf>,
    /// `table` for people, `json` for tools (one decision per line; the summary goes to stderr).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Run the clock to this RFC 3339 time (default: the last input's); later inputs are skipped.
    #[arg(long)]
    pub until: Option<String>,
    /// Expected decisions (JSON lines, compared on at, kind, rule, group, service); exit 1 and
    /// print the difference when the replay differs.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Prometheus exports: the query step (default: the smallest gap between two samples).
    #[arg(long)]
    pub step: Option<String>,
    /// Decide as `serve --dry-run` does: every incident is recorded as suppressed, nothing runs.
    #[arg(long)]
    pub dry_run: bool,
}

pub const EXIT_DIFFERS: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 64;

/// Secret references replaced for replay: long enough for a token, a URL for a notifier.
const SECRET_STANDIN: &str = "https://replay.invalid/secret";

fn load_config(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let re = regex::Regex::new(r"\$\{(env|file):[^}]*\}").map_err(|e| e.to_string())?;
    let text = re.replace_all(&text, SECRET_STANDIN);
    Config::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Runs `rollbackd replay`; returns the exit code (0 ok, 1 differs from `--expect`, 64 bad input).
pub fn command(args: Args) -> u8 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rollbackd replay: {e}");
            EXIT_BAD_INPUT
        }
    }
}

fn run(args: Args) -> Result<u8, String> {
    let cfg = match &args.config {
        Some(p) => load_config(p)?,
        None => Config::default(),
    };
    let (set, problems) = rules::load_dir(&args.rules, &cfg.rules_context());
    for p in &problems {
        eprintln!("{p}");
    }
    let Some(set) = set else {
        let errors = problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        return Err(format!(
            "rules in {} have {errors} error(s)",
            args.rules.display()
        ));
    };
    let until = match &args.until {
        Some(u) => Some(
            u.parse::<Timestamp>()
                .map_err(|e| format!("--until: `{u}` is not an RFC 3339 time ({e})"))?,
        ),
        None => None,
    };
    let mut opts = inputs::Options::from_config(&cfg);
    if let Some(s) = &args.step {
        opts.step = Some(
            humantime::parse_duration(s)
                .map_err(|e| format!("--step: `{s}` is not a duration ({e})"))?,
        );
    }
    let expected = match &args.expect {
        Some(p) => {
            Some(read_expect(&read(p)?, &p.display().to_string()).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut events = Vec::new();
    for p in &args.events {
        events.extend(
            inputs::read_events(&read(p)?, &p.display().to_string(), &opts)
                .map_err(|e| e.to_string())?,
        );
    }
    let releases = match &args.releases {
        Some(p) => {
            inputs::read_releases(&read(p)?, &p.display().to_string()).map_err(|e| e.to_string())?
        }
        None => Vec::new(),
    };
    let all = inputs::sorted(releases, events);

    let total = all.len();
    let mut progress = Progress::new(total);
    let exact = match exact_for(&all, &set) {
        Ok(true) => {
            eprintln!(
                "rollbackd replay: a daemon's own log under the same rules: ticks and outcomes come from the log"
            );
            true
        }
        Ok(false) => false,
        Err(why) => {
            eprintln!("rollbackd replay: {why}");
            false
        }
    };
    let mut r = Replayer::new(&set, &cfg.people)
        .pagerduty(cfg.pagerduty.is_some())
        .dry_run(args.dry_run)
        .recorded(&all, exact);
    for (n, input) in all.into_iter().enumerate() {
        r.feed_until(input, until);
        progress.tick(n + 1);
    }
    progress.done();
    let report = r.finish(until);

    let mut stdout = std::io::stdout().lock();
    let printed = match args.format {
        Format::Json => {
            let res = stdout.write_all(render_json(&report.decisions).as_bytes());
            eprint!("{}", render_summary(&report.summary));
            res
        }
        Format::Table => stdout
            .write_all(render_table(&report.decisions).as_bytes())
            .and_then(|_| stdout.write_all(b"\n"))
            .and_then(|_| stdout.write_all(render_summary(&report.summary).as_bytes())),
    };
    let _ = printed.and_then(|_| stdout.flush());
    if let (Some(exp), Some(path)) = (expected, &args.expect) {
        if let Some(diff) = compare(&exp, &report.decisions, &path.display().to_string()) {
            eprint!("{diff}");
            return Ok(EXIT_DIFFERS);
        }
        eprintln!(
            "replay matches {} ({} decision(s))",
            path.display(),
            exp.len()
        );
    }
    Ok(0)
}

/// A progress bar on stderr for large inputs, only when stderr is a terminal.
struct Progress {
    total: usize,
    on: bool,
    shown: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            on: total >= 20_000 && std::io::stderr().is_terminal(),
            shown: usize::MAX,
        }
    }

    fn tick(&mut self, n: usize) {
        if !self.on {
            return;
        }
        let pct = n * 100 / self.total.max(1);
        if pct == self.shown {
            return;
        }
        self.shown = pct;
        let filled = pct * 30 / 100;
        eprint!(
            "\rreplaying [{}{}] {pct:>3}% {n}/{} inputs",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            self.total
        );
    }

    fn done(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(at: &str, kind: &str, rule: Option<&str>) -> Decision {
        let mut d = Decision::new(at.parse().unwrap(), kind);
        d.rule = rule.map(String::from);
        d
    }

    #[test]
    fn compare_reports_missing_and_unexpected_in_order() {
        let actual = vec![
            dec("2026-01-01T10:00:00Z", "breach_opened", Some("r")),
            dec("2026-01-01T10:10:00Z", "triggered", Some("r")),
            dec("2026-01-01T10:10:00Z", "would_run", Some("r")),
        ];
        let exp = read_expect(
            "{\"at\":\"2026-01-01T10:00:00.000Z\",\"kind\":\"breach_opened\",\"rule\":\"r\"}\n\n{\"kind\":\"not_acting\"}\n{\"kind\":\"would_run\",\"rule\":\"r\",\"argv\":[\"ignored\"]}\n",
            "e.jsonl",
        )
        .unwrap();
        let diff = compare(&exp, &actual, "e.jsonl").unwrap();
        assert!(
            diff.contains("1 expected decision(s) not made, 1 decision(s) not expected"),
            "{diff}"
        );
        assert!(
            diff.contains("- e.jsonl:3: {\"kind\":\"not_acting\"}"),
            "{diff}"
        );
        assert!(
            diff.contains("+ decision 2: {\"at\":\"2026-01-01T10:10:00Z\",\"kind\":\"triggered\""),
            "{diff}"
        );
        let exact: Vec<_> = actual
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let serde_json::Value::Object(m) = serde_json::to_value(d).unwrap() else {
                    panic!()
                };
                (i + 1, m)
            })
            .collect();
        assert_eq!(compare(&exact, &actual, "e"), None);
        assert!(read_expect("{\"at\":\"noon\"}", "e").is_err());
    }

    #[test]
    fn table_aligns_and_shows_details() {
        let mut d = dec("2026-01-01T10:10:00Z", "would_run", Some("web-errors"));
        d.argv = Some(vec!["echo".into(), "a b".into()]);
        d.step = Some("roll back".into());
        let t = render_table(&[d]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("AT  "), "{t}");
        assert_eq!(lines[0].find("KIND"), lines[1].find("would_run"), "{t}");
        assert!(
            lines[1].ends_with("step \"roll back\"; echo \"a b\""),
            "{t}"
        );
    }
}
