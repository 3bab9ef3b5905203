//! The engine's contract, in one place: what it is told ([`Event`]), what it asks for
//! ([`Effect`]), what it writes ([`Change`]), what it answers ([`Reply`]), and why it did not act
//! ([`Reason`]). The words records carry (timeline kinds, announcement kinds, reason codes) are
//! re-exported here from `model`, where the records that store them live.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::*;
pub use crate::model::{Announcement, Kind, ReasonCode};

/// What the engine is told about. Serialized (as `{"variant": {..}}`) into the input log, so a
/// replay hands the engine the same events at the same instants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Alerts applied together: a webhook's, or one chunk of at most [`MAX_SIGNALS_PER_EVENT`]
    /// of a larger one.
    Signals(Vec<Signal>),
    Release(Box<Release>),
    /// Time passed: deadlines may be due.
    Tick,
    Vote {
        incident: String,
        person: String,
        vote: VoteKind,
        via: String,
        reason: Option<String>,
    },
    /// The executor asks to start a step it was told to run; the answer is [`Reply::Go`].
    StepStarting {
        incident: String,
        /// Which journal: absent (the rollback's `steps`) in logs written before `on_unfreeze`.
        #[serde(default, skip_serializing_if = "Phase::is_rollback")]
        phase: Phase,
        index: usize,
        attempt: u32,
    },
    StepFinished {
        incident: String,
        /// Which journal: absent (the rollback's `steps`) in logs written before `on_unfreeze`.
        #[serde(default, skip_serializing_if = "Phase::is_rollback")]
        phase: Phase,
        index: usize,
        attempt: u32,
        result: StepResult,
    },
    /// One round of the incident's checks; the engine decides whether another round fits.
    VerifyFinished {
        incident: String,
        results: Vec<CheckResult>,
    },
    /// A started step's probe answered after a restart: `Some(true)` its effect is in place,
    /// `Some(false)` it is not, `None` the probe could not tell.
    ProbeResult {
        incident: String,
        /// Which journal: absent (the rollback's `steps`) in logs written before `on_unfreeze`.
        #[serde(default, skip_serializing_if = "Phase::is_rollback")]
        phase: Phase,
        index: usize,
        in_place: Option<bool>,
        detail: String,
    },
    AfterFinished {
        incident: String,
        index: usize,
        result: StepResult,
    },
    /// What a just-opened incident's plan needs and the host lacks (a secret reference that does
    /// not resolve, a program not found), one line each; empty when it can run.
    PreflightResult {
        incident: String,
        missing: Vec<String>,
    },
    /// The config and rules were swapped (the context already holds the new set).
    RulesReloaded,
    /// A verified PagerDuty webhook delivery.
    PagerDuty {
        delivery: String,
        input: PagerDutyInput,
    },
    /// The notifier's word on one outbox entry.
    Delivery {
        entry: Box<OutboxEntry>,
        outcome: Delivery,
    },
    Freeze {
        service: String,
        reason: String,
        by: String,
    },
    Unfreeze {
        service: String,
        reason: String,
        by: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Delivered {
        detail: String,
    },
    /// Try again at `at` (backoff, or the receiver's rate-limit reset).
    Retry {
        error: String,
        at: Timestamp,
    },
    /// The receiver refused for good (a 4xx that retrying cannot fix).
    Dropped {
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub output: String,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The step could not be prepared for a reason another attempt would meet again (a secret
    /// reference that does not resolve): it is not retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

/// Side effects the caller performs after the changes are durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    RunStep {
        incident: String,
        phase: Phase,
        index: usize,
        attempt: u32,
        /// Backoff before a retry.
        delay: Duration,
    },
    /// Run one round of the incident's verify checks after `delay`.
    Verify { incident: String, delay: Duration },
    /// Ask a started, non-idempotent step's probe whether its effect is in place.
    Probe {
        incident: String,
        phase: Phase,
        index: usize,
    },
    /// Check that a just-opened incident's plan can run here (its secrets resolve, its programs
    /// are found) before anyone is asked to approve it; the answer is [`Event::PreflightResult`].
    Preflight { incident: String },
    /// Run the incident's pending `after` hooks.
    RunAfter { incident: String },
}

/// A record to write. Serializable: in a cluster a batch of them is one Raft log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Breach(Box<Breach>),
    Incident(Box<Incident>),
    Release(Box<Release>),
    Freeze(String, Option<Freeze>),
    Outbox(Box<OutboxEntry>),
    OutboxDone {
        seq: u64,
        target: String,
    },
    /// A PagerDuty delivery id seen at a time, or forgotten (`None`).
    Delivery(String, Option<Timestamp>),
    Seq(u64),
}

/// The most signals one [`Event::Signals`] carries: a larger delivery is handed over in chunks
/// of this size, each its own commit, so memory follows the chunk rather than the delivery.
pub const MAX_SIGNALS_PER_EVENT: usize = 500;

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Ok,
    /// Some signals were not applied for some rules: they would have opened a breach beyond
    /// `limits.max_open_breaches_per_rule`. The rest of the event was applied.
    Refused(Vec<Refusal>),
    Duplicate,
    Go(bool),
    NotFound(String),
    Conflict(String),
    Forbidden(String),
    Release {
        frozen: Option<Freeze>,
    },
    /// The freeze is lifted. `incident` set it; its `on_unfreeze` steps (`steps` of them) are
    /// `running` now, or wait for the incident to end.
    Unfrozen {
        incident: Option<String>,
        steps: usize,
        running: bool,
    },
}

/// Signals of one rule refused because the rule already holds `cap` open breaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub cap: usize,
    /// How many signals of the event were refused for this rule.
    pub signals: usize,
}

impl Reply {
    /// Adds another event's refusals to this reply's (a chunked delivery answers once).
    pub fn merge(&mut self, other: Reply) {
        let Reply::Refused(more) = other else {
            return;
        };
        if !matches!(self, Reply::Refused(_)) {
            *self = Reply::Refused(Vec::new());
        }
        let Reply::Refused(all) = self else {
            return;
        };
        for r in more {
            match all.iter_mut().find(|a| a.rule == r.rule) {
                Some(a) => {
                    a.signals += r.signals;
                    a.cap = r.cap;
                }
                None => all.push(r),
            }
        }
    }
}

#[derive(Debug)]
pub struct Output {
    pub reply: Reply,
    pub changes: Vec<Change>,
    pub timeline: Vec<TimelineEntry>,
    pub effects: Vec<Effect>,
}

/// The prefix of the PagerDuty Events API dedup key of rollbackd's own incidents.
const PAGERDUTY_KEY_PREFIX: &str = "rollbackd/";

/// The PagerDuty dedup key (its `incident_key`) of a rollbackd incident.
pub fn pagerduty_key(incident: &str) -> String {
    format!("{PAGERDUTY_KEY_PREFIX}{incident}")
}

/// The rollbackd incident a PagerDuty `incident_key` names, when it is one of ours.
pub fn incident_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(PAGERDUTY_KEY_PREFIX)
}

/// Why the engine did not act on a breach, or suppressed the incident it opened: its
/// [`ReasonCode`] for machines, its `Display` for people.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    NoService {
        error: String,
    },
    NoEnvironment {
        error: String,
    },
    NoRelease {
        scope: String,
    },
    ReleaseAfterBreach {
        current: ReleaseRef,
        breach_start: Timestamp,
    },
    ReleaseTooOld {
        current: ReleaseRef,
        age: Duration,
        max_age: Duration,
    },
    NoPreviousRelease {
        scope: String,
        current: ReleaseRef,
    },
    LoopGuard {
        prior: String,
        target: ReleaseRef,
    },
    DryRun,
    Shadow,
    Frozen {
        service: String,
        since: Timestamp,
        why: String,
    },
    OneAtATime {
        other: String,
        state: IncidentState,
        service: String,
    },
    Budget {
        used: usize,
        service: String,
        per: Duration,
        max: u32,
    },
}

impl Reason {
    pub fn code(&self) -> ReasonCode {
        match self {
            Reason::NoService { .. } => ReasonCode::NoService,
            Reason::NoEnvironment { .. } => ReasonCode::NoEnvironment,
            Reason::NoRelease { .. } => ReasonCode::NoRelease,
            Reason::ReleaseAfterBreach { .. } => ReasonCode::ReleaseAfterBreach,
            Reason::ReleaseTooOld { .. } => ReasonCode::ReleaseTooOld,
            Reason::NoPreviousRelease { .. } => ReasonCode::NoPreviousRelease,
            Reason::LoopGuard { .. } => ReasonCode::LoopGuard,
            Reason::DryRun => ReasonCode::DryRun,
            Reason::Shadow => ReasonCode::Shadow,
            Reason::Frozen { .. } => ReasonCode::Frozen,
            Reason::OneAtATime { .. } => ReasonCode::OneAtATime,
            Reason::Budget { .. } => ReasonCode::Budget,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |d: &Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        match self {
            Reason::NoService { error } => write!(f, "cannot tell the service: {error}"),
            Reason::NoEnvironment { error } => write!(f, "cannot tell the environment: {error}"),
            Reason::NoRelease { scope } => write!(f, "no release of {scope} is known"),
            Reason::ReleaseAfterBreach {
                current,
                breach_start,
            } => write!(
                f,
                "the latest release {} ({}) was deployed at {}, after the breach began at {breach_start}: a fix-forward may be in progress",
                current.version, current.deployment_id, current.deployed_at
            ),
            Reason::ReleaseTooOld {
                current,
                age,
                max_age,
            } => write!(
                f,
                "the breach began {} after the latest release {} ({}), more than release.max_age {}",
                d(age),
                current.version,
                current.deployment_id,
                d(max_age)
            ),
            Reason::NoPreviousRelease { scope, current } => write!(
                f,
                "no release of {scope} before {} ({}) is known: nothing to roll back to",
                current.version, current.deployment_id
            ),
            Reason::LoopGuard { prior, target } => write!(
                f,
                "loop guard: incident {prior} already rolled back from {} ({}); never rolling back to it",
                target.version, target.deployment_id
            ),
            Reason::DryRun => f.write_str("dry run: recorded what would run, ran nothing"),
            Reason::Shadow => f.write_str("shadow mode: recorded what would run, ran nothing"),
            Reason::Frozen {
                service,
                since,
                why,
            } => write!(
                f,
                "service {service} is frozen since {since} ({why}); a human must look before another rollback"
            ),
            Reason::OneAtATime {
                other,
                state,
                service,
            } => write!(
                f,
                "incident {other} is already {state} for service {service}: one rollback at a time"
            ),
            Reason::Budget {
                used,
                service,
                per,
                max,
            } => write!(
                f,
                "budget exhausted: {used} rollback(s) of {service} in the last {} (max {max})",
                humantime::format_duration(*per)
            ),
        }
    }
}
