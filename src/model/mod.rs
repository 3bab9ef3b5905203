//! The records rollbackd reasons about and stores: signals, releases, breaches, incidents, freezes,
//! timeline entries. Plain data with serde; no behaviour beyond small helpers. The engine owns every
//! change to them, the store owns their bytes, the API shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

mod compact;
mod words;
pub use compact::{AlertMap, LabelSet};
pub use words::{Announcement, Kind, ReasonCode};

pub type Labels = BTreeMap<String, String>;

/// Where a signal came from; rules may restrict themselves with `sources:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Alertmanager,
    Grafana,
    Pagerduty,
    Signal,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Alertmanager,
        Source::Grafana,
        Source::Pagerduty,
        Source::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Alertmanager => "alertmanager",
            Source::Grafana => "grafana",
            Source::Pagerduty => "pagerduty",
            Source::Signal => "signal",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|src| src.as_str() == s)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalStatus {
    Firing,
    Resolved,
}

/// One alert instance, normalised from any source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub source: Source,
    /// Stable identity of the alert across firing, repeats and resolve (Alertmanager's fingerprint).
    pub key: String,
    pub labels: Labels,
    pub status: SignalStatus,
    pub starts_at: Option<Timestamp>,
    pub ends_at: Option<Timestamp>,
}

/// One deployment of a service, as reported by CI (or recorded by rollbackd after a rollback).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub service: String,
    #[serde(default)]
    pub environment: String,
    pub version: String,
    pub deployment_id: String,
    /// The git commit the deployment runs, when the source says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub deployed_at: Timestamp,
    pub received_at: Timestamp,
    /// Who reported it: `ci` (`POST /v1/releases`), a deploy tool's webhook (`github`, `gitlab`,
    /// `flux`, `argocd`), or `rollback` for the redeploy of a previous release by an incident.
    #[serde(default = "origin_ci")]
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// Set when the release was posted while the service was frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_during_freeze: Option<String>,
}

fn origin_ci() -> String {
    "ci".to_string()
}

/// The part of a release an incident refers to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub version: String,
    pub deployment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub deployed_at: Timestamp,
}

impl From<&Release> for ReleaseRef {
    fn from(r: &Release) -> Self {
        ReleaseRef {
            version: r.version.clone(),
            deployment_id: r.deployment_id.clone(),
            revision: r.revision.clone(),
            deployed_at: r.deployed_at,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub firing: bool,
    pub starts_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Timestamp>,
}

impl AlertState {
    pub fn firing_since(starts_at: Timestamp) -> AlertState {
        AlertState {
            firing: true,
            starts_at,
            resolved_at: None,
        }
    }
}

/// What the engine decided at a breach's deadline when it did not open an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: Timestamp,
    pub acted: bool,
    pub reason: String,
    /// Why it did not act, as a code (absent on records written before codes were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ReasonCode>,
}

/// A sustained-failure window of one rule for one group of labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    pub id: String,
    pub rule: String,
    pub group: String,
    pub group_labels: LabelSet,
    /// Labels of the first firing signal: what `{{ labels.X }}` renders from.
    pub labels: LabelSet,
    pub started_at: Timestamp,
    pub first_seen: Timestamp,
    pub deadline: Timestamp,
    pub alerts: AlertMap,
    /// Set while no alert of the group fires: the breach ends at `clearing_since + clear_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearing_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The PagerDuty incident whose signals opened this breach, if any: the incident is then
    /// announced on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_incident: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// When the breach first held [`crate::engine::MAX_ALERTS_PER_BREACH`] firing alerts and
    /// left a new one untracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_capped_at: Option<Timestamp>,
}

impl Breach {
    pub fn firing(&self) -> bool {
        self.clearing_since.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Triggered,
    AwaitingApproval,
    Approved,
    RollingBack,
    Verifying,
    RolledBack,
    RollbackFailed,
    Rejected,
    Expired,
    Cancelled,
    Suppressed,
}

impl IncidentState {
    pub const ALL: [IncidentState; 11] = [
        IncidentState::Triggered,
        IncidentState::AwaitingApproval,
        IncidentState::Approved,
        IncidentState::RollingBack,
        IncidentState::Verifying,
        IncidentState::RolledBack,
        IncidentState::RollbackFailed,
        IncidentState::Rejected,
        IncidentState::Expired,
        IncidentState::Cancelled,
        IncidentState::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Triggered => "triggered",
            IncidentState::AwaitingApproval => "awaiting_approval",
            IncidentState::Approved => "approved",
            IncidentState::RollingBack => "rolling_back",
            IncidentState::Verifying => "verifying",
            IncidentState::RolledBack => "rolled_back",
            IncidentState::RollbackFailed => "rollback_failed",
            IncidentState::Rejected => "rejected",
            IncidentState::Expired => "expired",
            IncidentState::Cancelled => "cancelled",
            IncidentState::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<IncidentState> {
        IncidentState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Still heading somewhere: holds the service's one rollback slot.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            IncidentState::Triggered
                | IncidentState::AwaitingApproval
                | IncidentState::Approved
                | IncidentState::RollingBack
                | IncidentState::Verifying
        )
    }
}

impl fmt::Display for IncidentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteKind {
    Approve,
    Reject,
}

impl VoteKind {
    pub fn verb(self) -> &'static str {
        match self {
            VoteKind::Approve => "approve",
            VoteKind::Reject => "reject",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub person: String,
    pub vote: VoteKind,
    pub at: Timestamp,
    /// `break-glass`, `pagerduty-workflow`, `pagerduty-note`.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub counted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not_counted: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub required: bool,
    pub require_roles: Vec<String>,
    pub quorum: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    pub on_timeout: String,
    pub votes: Vec<Vote>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    /// Recorded before its side effect may start: safe to start after a crash.
    Intended,
    /// The side effect may have happened: after a crash only an idempotent step runs again.
    Started,
    Done,
    Failed,
    /// Shadow mode or dry run: recorded, never run.
    WouldRun,
}

/// A run step's program or an http step's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Run,
    Http,
}

/// An http step's request body. Secret references in a raw body stay unexpanded until sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Body {
    #[default]
    None,
    Json(serde_json::Value),
    Raw(String),
}

impl Body {
    pub fn is_none(&self) -> bool {
        matches!(self, Body::None)
    }
}

/// Which redirects an http step follows: none (a 3xx is the answer), or those that stay on the
/// request's scheme, host and port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirects {
    #[default]
    None,
    SameOrigin,
}

impl Redirects {
    pub fn is_none(&self) -> bool {
        matches!(self, Redirects::None)
    }
}

/// One action exactly as it will run, fixed when the incident opened: templates rendered,
/// secret references (`${env:..}`, `${file:..}`) still references. The executor reads nothing else,
/// so a reload changes only incidents opened after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: StepKind,
    /// The rendered command (run steps) or `[METHOD, URL]` (http steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Body::is_none")]
    pub body: Body,
    /// Statuses that mean success (any 2xx when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
    /// Redirects an http step follows (none unless the rule says `same_origin`).
    #[serde(default, skip_serializing_if = "Redirects::is_none")]
    pub follow_redirects: Redirects,
}

impl Plan {
    /// A run step's plan: just a command.
    pub fn run(argv: Vec<String>) -> Plan {
        Plan {
            kind: StepKind::Run,
            argv,
            env: BTreeMap::new(),
            dir: None,
            headers: BTreeMap::new(),
            body: Body::None,
            expect_status: Vec::new(),
            follow_redirects: Redirects::None,
        }
    }
}

/// One verification check, as the rule said it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Prometheus {
        url: String,
        query: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        below: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        above: Option<f64>,
    },
    Http {
        url: String,
        expect_status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
    },
}

impl Check {
    /// How results and timelines name the check.
    pub fn name(&self) -> String {
        match self {
            Check::Prometheus { query, .. } => format!("prometheus `{query}`"),
            Check::Http { url, .. } => format!("http {url}"),
        }
    }
}

/// The verification an incident runs after its last step, fixed when it opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyPlan {
    pub within_ms: u64,
    pub every_ms: u64,
    pub checks: Vec<Check>,
}

impl VerifyPlan {
    pub fn within(&self) -> Duration {
        Duration::from_millis(self.within_ms)
    }

    pub fn every(&self) -> Duration {
        Duration::from_millis(self.every_ms)
    }
}

/// Which of an incident's step journals a step is in: the rollback's `steps`, or the
/// `on_unfreeze` steps run when the freeze is lifted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Rollback,
    #[serde(rename = "on_unfreeze")]
    Unfreeze,
}

impl Phase {
    pub fn is_rollback(&self) -> bool {
        *self == Phase::Rollback
    }

    /// How the timeline names one of its steps: `step NAME` or `on_unfreeze step NAME`.
    pub fn step(self, name: &str) -> String {
        match self {
            Phase::Rollback => format!("step {name}"),
            Phase::Unfreeze => format!("on_unfreeze step {name}"),
        }
    }
}

/// The plan and journal of one rollback step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub name: String,
    #[serde(flatten)]
    pub plan: Plan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_error: Option<String>,
    pub state: StepState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The fencing token of the attempt that started last (see `engine::Context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The step's probe, planned like the step. A record written before probes were planned
    /// whole (an argv list) reads as no probe: a started step then needs a human, the safe side.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "planned_probe"
    )]
    pub probe: Option<Plan>,
    pub timeout_ms: u64,
    pub retries: u32,
    pub idempotent: bool,
    pub continue_on_failure: bool,
}

fn planned_probe<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Plan>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Recorded {
        Planned(Plan),
        Argv(serde::de::IgnoredAny),
    }
    Ok(match Option::<Recorded>::deserialize(d)? {
        Some(Recorded::Planned(p)) => Some(p),
        Some(Recorded::Argv(_)) | None => None,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub rule: String,
    pub breach: String,
    pub group: String,
    pub service: String,
    pub environment: String,
    pub state: IncidentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub mode: String,
    pub labels: Labels,
    pub breach_started_at: Timestamp,
    pub deadline: Timestamp,
    pub opened_at: Timestamp,
    pub updated_at: Timestamp,
    pub release_from: ReleaseRef,
    pub release_to: ReleaseRef,
    pub approvals: Approval,
    pub steps: Vec<StepRun>,
    /// Freeze the service's releases when the first step starts.
    pub freeze: bool,
    /// The rule's notifier targets, fixed at open (absent on records written before they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<String>>,
    /// The rule's own `internal` / `external` announcement texts, rendered for this incident.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub messages: BTreeMap<String, String>,
    /// The PagerDuty incident this incident is announced on, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_incident: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_deadline: Option<Timestamp>,
    /// What verifies the rollback, fixed at open (`None`: the rule had no checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPlan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// Integrity hooks run once the rollback has ended; their results never change the state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<StepRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The rule's `on_unfreeze` steps, planned at open and journaled like `steps`: they run once
    /// the freeze this incident set is lifted and the incident has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_unfreeze: Vec<StepRun>,
    /// When the freeze this incident set was lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfrozen_at: Option<Timestamp>,
    /// When its `on_unfreeze` steps ended (all done, or one failed and the rest were not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unfreeze_ended_at: Option<Timestamp>,
}

impl Incident {
    /// `after` hooks of a rollback that started are still to run.
    pub fn after_pending(&self) -> bool {
        self.rollback_started_at.is_some()
            && self.after.iter().any(|s| {
                matches!(
                    s.state,
                    StepState::Pending | StepState::Started | StepState::Intended
                )
            })
    }

    /// The freeze is lifted and the `on_unfreeze` steps have not ended.
    pub fn unfreeze_pending(&self) -> bool {
        self.unfrozen_at.is_some()
            && self.on_unfreeze_ended_at.is_none()
            && !self.on_unfreeze.is_empty()
    }

    /// The step journal of a phase.
    pub fn journal(&self, phase: Phase) -> &[StepRun] {
        match phase {
            Phase::Rollback => &self.steps,
            Phase::Unfreeze => &self.on_unfreeze,
        }
    }

    pub fn journal_mut(&mut self, phase: Phase) -> &mut Vec<StepRun> {
        match phase {
            Phase::Rollback => &mut self.steps,
            Phase::Unfreeze => &mut self.on_unfreeze,
        }
    }

    /// Whether the steps of `phase` may run now: the rollback's while rolling back, the
    /// `on_unfreeze` steps once the freeze is lifted and the incident has ended.
    pub fn phase_running(&self, phase: Phase) -> bool {
        match phase {
            Phase::Rollback => self.state == IncidentState::RollingBack,
            Phase::Unfreeze => !self.state.is_active() && self.unfreeze_pending(),
        }
    }

    /// The engine still needs the whole record in memory: it is active, or hooks or
    /// `on_unfreeze` steps are to run.
    pub fn resident(&self) -> bool {
        self.state.is_active() || self.after_pending() || self.unfreeze_pending()
    }
}

/// What the engine keeps of every incident, finished or not, to look across incidents (one
/// rollback per service, budgets, the loop guard, PagerDuty links, counts) without holding them
/// all. Stored beside each incident so a start reads these, not every incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentSummary {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub state: IncidentState,
    pub opened_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_started_at: Option<Timestamp>,
    /// The deployment it rolls back from.
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_incident: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_deadline: Option<Timestamp>,
    /// See [`Incident::resident`].
    pub resident: bool,
}

impl From<&Incident> for IncidentSummary {
    fn from(i: &Incident) -> Self {
        IncidentSummary {
            id: i.id.clone(),
            service: i.service.clone(),
            environment: i.environment.clone(),
            state: i.state,
            opened_at: i.opened_at,
            rollback_started_at: i.rollback_started_at,
            from: i.release_from.deployment_id.clone(),
            pagerduty_incident: i.pagerduty_incident.clone(),
            approval_deadline: i.approvals.deadline,
            resident: i.resident(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Freeze {
    pub service: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    pub since: Timestamp,
    pub by: String,
}

/// What one PagerDuty webhook delivery means to the engine, after signature and parsing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PagerDutyInput {
    /// An `incident.*` event. `incident_key` is the Events API dedup key of the PagerDuty
    /// incident (rollbackd's own are `rollbackd/<incident id>`).
    Incident {
        signal: Signal,
        incident_key: Option<String>,
    },
    /// A vote: an approve/reject workflow run, or a `/approve` `/reject` note.
    Vote {
        pd_incident: String,
        /// The PagerDuty user who cast it; `None` when the event's agent is not a user.
        pd_user: Option<String>,
        vote: VoteKind,
        via: String,
        reason: Option<String>,
        /// `event.occurred_at`, signed with the body.
        #[serde(default)]
        occurred_at: Option<Timestamp>,
    },
    /// Well-formed, nothing to do (pings, other event types, workflows that are not ours).
    Ignored,
}

/// One announcement for one notifier target, waiting in the durable outbox until delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    /// A notifier name from the config, or `pagerduty`.
    pub target: String,
    pub incident: String,
    pub kind: Announcement,
    pub detail: String,
    pub at: Timestamp,
    /// The incident's state when this was announced: messages describe that moment, not the
    /// state at delivery (which may be much later after an outage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<IncidentState>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One append-only line of history: who did what, when, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// Incident id, or `breach:<id>` for decisions about a breach that opened no incident.
    pub subject: String,
    pub kind: Kind,
    pub actor: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// Hash of the previous entry of the same subject ("" for the first): the chain that makes
    /// an edited or removed record detectable. Filled in by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// SHA-256 over `prev_hash` and this entry without its hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl TimelineEntry {
    /// The chain hash of this entry after `prev` (hex).
    pub fn chain_hash(&self, prev: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut bare = self.clone();
        bare.prev_hash = None;
        bare.hash = None;
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(b"\n");
        h.update(serde_json::to_vec(&bare).unwrap_or_default());
        hex::encode(h.finalize())
    }
}

/// Whether a subject's timeline chain holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub ok: bool,
    pub entries: usize,
    /// The hash of the last entry: anchor it elsewhere (a ticket, a note) to detect a rewrite.
    pub head: String,
    /// Index of the first entry that does not match, when broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<usize>,
}

/// `ts + d`, saturating at the far future instead of overflowing on absurd inputs.
pub fn add(ts: Timestamp, d: Duration) -> Timestamp {
    let sd = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    ts.saturating_add(sd).unwrap_or(Timestamp::MAX)
}

/// `ts - d`, saturating at the far past.
pub fn sub(ts: Timestamp, d: Duration) -> Timestamp {
    let sd = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    ts.saturating_sub(sd).unwrap_or(Timestamp::MIN)
}

/// Non-negative duration from `a` to `b` (zero when `b` is before `a`).
pub fn since(b: Timestamp, a: Timestamp) -> Duration {
    Duration::try_from(b.duration_since(a)).unwrap_or(Duration::ZERO)
}
