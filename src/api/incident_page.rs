//! `GET /incidents/{id}`: one incident as a page, beside the status page and with its look. The
//! plan as it was fixed at open (secret references stay references), the votes, the steps with
//! their output, the checks, the freeze, and the timeline drawn as a server-rendered SVG. No
//! JavaScript; maud escapes every value.

use jiff::Timestamp;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::status::{CSS, countdown, latest_transition, state_class, table_or};
use crate::App;
use crate::api::ApiError;
use crate::model::{
    Body, Freeze, Incident, IncidentState, Kind, Plan, StepKind, StepRun, StepState, TimelineEntry,
    since,
};

const REFRESH_SECONDS: u32 = 5;

/// The page, or `None` when there is no such incident.
pub fn render(app: &App, id: &str) -> Result<Option<String>, ApiError> {
    let Some(inc) = app.store.incident(id)? else {
        return Ok(None);
    };
    let now = app.clock.now();
    let own = app.store.timeline(id)?;
    let mut timeline = app.store.timeline(&format!("breach:{}", inc.breach))?;
    timeline.extend(own.iter().cloned());
    timeline.sort_by_key(|t| t.at);
    let freeze = app.store.freeze(&inc.service)?;
    let why = latest_transition(&own).map(|t| t.message.clone());
    Ok(Some(
        page(now, &inc, &timeline, freeze.as_ref(), why).into_string(),
    ))
}

fn page(
    now: Timestamp,
    inc: &Incident,
    timeline: &[TimelineEntry],
    freeze: Option<&Freeze>,
    why: Option<String>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if inc.state.is_active() {
                    meta http-equiv="refresh" content=(REFRESH_SECONDS);
                }
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "rollbackd: " (inc.id) " " (inc.state) }
                style { (PreEscaped(CSS)) }
            }
            body {
                p.muted { a href="../" { "← status" } " · as of " (now) }
                h1 {
                    (inc.id) " · "
                    span class={ "state " (state_class(inc.state)) } { (inc.state) }
                }
                (summary(inc, why))
                h2 #timeline { "Timeline" }
                (chart(now, inc, timeline))
                (plan(inc))
                (votes(now, inc))
                (steps(inc))
                (checks(inc))
                (freeze_section(inc, freeze))
                (entries(timeline))
            }
        }
    }
}

fn summary(inc: &Incident, why: Option<String>) -> Markup {
    html! {
        table #summary {
            tr { th { "why" } td { (why.or_else(|| inc.reason.clone()).unwrap_or_default()) } }
            tr { th { "service" } td { (inc.service) " " (inc.environment) } }
            tr {
                th { "rollback" }
                td {
                    (inc.release_from.version) " (" code { (inc.release_from.deployment_id) } ") → "
                    (inc.release_to.version) " (" code { (inc.release_to.deployment_id) } ")"
                }
            }
            tr { th { "rule" } td { (inc.rule) " · mode " (inc.mode) } }
            tr { th { "breach" } td { (inc.breach) " · " code { (inc.group) } } }
            tr {
                th { "opened" }
                td {
                    (inc.opened_at)
                    @if let Some(f) = inc.finished_at { " · finished " (f) }
                }
            }
            @if let Some(pd) = &inc.pagerduty_incident {
                tr { th { "PagerDuty" } td { (pd) } }
            }
            tr {
                th { "as JSON" }
                td {
                    code { "GET /v1/incidents/" (inc.id) } " · report: "
                    code { "GET /v1/incidents/" (inc.id) "/report" }
                }
            }
        }
    }
}

/// One bar of the chart: a row label, a span, how it is drawn.
struct Bar {
    label: String,
    from: Timestamp,
    to: Timestamp,
    /// CSS colour.
    fill: &'static str,
    /// A planned end still ahead (drawn as an outline, not filled).
    planned: bool,
    /// `data-span` of the rect: what tests and people can find it by.
    span: String,
    title: String,
}

const CHART_WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 190.0;
const ROW: f64 = 24.0;
const TOP: f64 = 34.0;
/// A span of a few milliseconds still shows.
const MIN_BAR: f64 = 6.0;

/// The first time the incident's timeline says it moved to one of `kinds`.
fn moved_at(inc: &Incident, timeline: &[TimelineEntry], kinds: &[Kind]) -> Option<Timestamp> {
    timeline
        .iter()
        .find(|t| t.subject == inc.id && kinds.contains(&t.kind))
        .map(|t| t.at)
}

fn bars(now: Timestamp, inc: &Incident, timeline: &[TimelineEntry]) -> Vec<Bar> {
    let mut out = vec![Bar {
        label: "breach".to_string(),
        from: inc.breach_started_at,
        to: inc.deadline,
        fill: "#f4b400",
        planned: false,
        span: "breach".to_string(),
        title: format!(
            "breach from {} to its deadline {}",
            inc.breach_started_at, inc.deadline
        ),
    }];
    if inc.approvals.required {
        let asked = moved_at(inc, timeline, &[Kind::AwaitingApproval]).unwrap_or(inc.opened_at);
        let ended = moved_at(
            inc,
            timeline,
            &[
                Kind::Approved,
                Kind::Rejected,
                Kind::Expired,
                Kind::Cancelled,
            ],
        );
        let (to, planned) = match (ended, inc.approvals.deadline) {
            (Some(at), _) => (at, false),
            (None, Some(d)) if inc.state.is_active() => (d, true),
            (None, _) => (inc.finished_at.unwrap_or(now), false),
        };
        out.push(Bar {
            label: "approval".to_string(),
            from: asked,
            to,
            fill: "#c77d1a",
            planned,
            span: "approval".to_string(),
            title: format!("approval asked {asked}, window until {to}"),
        });
    }
    for (what, s) in runs(inc) {
        let Some(from) = s.started_at else { continue };
        let to = s.finished_at.unwrap_or(now).max(from);
        let fill = match s.state {
            StepState::Done => "#34a853",
            StepState::Failed => "#d93025",
            _ => "#4285f4",
        };
        out.push(Bar {
            label: format!("{what}: {}", s.name),
            from,
            to,
            fill,
            planned: false,
            span: format!("{what}:{}", s.name),
            title: format!("{} {} from {from} to {to}", s.name, step_state(s.state)),
        });
    }
    if let Some(from) = moved_at(inc, timeline, &[Kind::Verifying]) {
        let ended = matches!(
            inc.state,
            IncidentState::RolledBack | IncidentState::RollbackFailed | IncidentState::Cancelled
        );
        let (to, planned) = match (ended, inc.finished_at, inc.verify_deadline) {
            (true, Some(f), _) => (f, false),
            (false, _, Some(d)) => (d, true),
            _ => (now, false),
        };
        let fill = if inc.state == IncidentState::RollbackFailed {
            "#d93025"
        } else {
            "#009688"
        };
        out.push(Bar {
            label: "verification".to_string(),
            from,
            to: to.max(from),
            fill,
            planned,
            span: "verification".to_string(),
            title: format!("verification from {from} to {to}"),
        });
    }
    out
}

/// The incident's life as bars on one time axis, with the breach start and deadline marked.
fn chart(now: Timestamp, inc: &Incident, timeline: &[TimelineEntry]) -> Markup {
    let bars = bars(now, inc, timeline);
    let start = bars
        .iter()
        .map(|b| b.from)
        .min()
        .unwrap_or(inc.breach_started_at);
    let mut end = bars.iter().map(|b| b.to).max().unwrap_or(inc.deadline);
    if inc.state.is_active() {
        end = end.max(now);
    }
    let total = since(end, start).as_secs_f64().max(1.0);
    let plot = CHART_WIDTH - LABEL_WIDTH - 20.0;
    let x = |t: Timestamp| LABEL_WIDTH + since(t, start).as_secs_f64() / total * plot;
    let height = TOP + ROW * bars.len() as f64 + 26.0;
    let bottom = height - 20.0;
    let mut marks = vec![
        ("breach start", inc.breach_started_at),
        ("deadline", inc.deadline),
    ];
    if inc.state.is_active() {
        marks.push(("now", now));
    }
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|n| {
            let secs = total * f64::from(n) / 4.0;
            let label = if total < 20.0 {
                format!("+{secs:.1}s")
            } else {
                format!("+{secs:.0}s")
            };
            (LABEL_WIDTH + plot * f64::from(n) / 4.0, label)
        })
        .collect();
    let w = format!("{CHART_WIDTH}");
    let h = format!("{height:.0}");
    html! {
        svg #timeline-chart xmlns="http://www.w3.org/2000/svg" width=(w) height=(h)
            viewBox={ "0 0 " (w) " " (h) } role="img"
            aria-label={ "timeline of " (inc.id) } font-family="system-ui,sans-serif" font-size="12" {
            title { "timeline of " (inc.id) " from " (start) " to " (end) }
            @for (tx, label) in &ticks {
                line x1=(fmt(*tx)) y1=(fmt(TOP - 6.0)) x2=(fmt(*tx)) y2=(fmt(bottom)) stroke="#eee" {}
                text x=(fmt(*tx)) y=(fmt(height - 6.0)) text-anchor="middle" fill="#777" { (label) }
            }
            text x="4" y=(fmt(height - 6.0)) fill="#777" { (start.strftime("%H:%M:%S UTC")) }
            @for (n, b) in bars.iter().enumerate() {
                @let y = TOP + ROW * n as f64;
                @let x1 = x(b.from).round();
                @let width = (x(b.to).round() - x1).max(MIN_BAR);
                text x="4" y=(fmt(y + 15.0)) { (b.label) }
                @if b.planned {
                    rect data-span=(b.span) x=(fmt(x1)) y=(fmt(y + 3.0)) width=(fmt(width))
                        height=(fmt(ROW - 8.0)) fill="none" stroke=(b.fill) stroke-dasharray="4 3" {
                        title { (b.title) " (planned)" }
                    }
                } @else {
                    rect data-span=(b.span) x=(fmt(x1)) y=(fmt(y + 3.0)) width=(fmt(width))
                        height=(fmt(ROW - 8.0)) fill=(b.fill) {
                        title { (b.title) }
                    }
                }
            }
            @for (label, at) in &marks {
                @let mx = x(*at);
                line data-mark=(label) x1=(fmt(mx)) y1=(fmt(TOP - 12.0)) x2=(fmt(mx)) y2=(fmt(bottom))
                    stroke="#1d1d1f" stroke-dasharray="2 2" {}
                text x=(fmt(mx + 3.0)) y=(fmt(TOP - 14.0)) fill="#1d1d1f" { (label) }
            }
        }
    }
}

/// The rollback's steps, its after hooks, then its `on_unfreeze` steps, each with which it is.
fn runs(inc: &Incident) -> impl Iterator<Item = (&'static str, &StepRun)> {
    let steps = inc.steps.iter().map(|s| ("step", s));
    steps
        .chain(inc.after.iter().map(|s| ("after", s)))
        .chain(inc.on_unfreeze.iter().map(|s| ("on_unfreeze", s)))
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn step_state(s: StepState) -> &'static str {
    match s {
        StepState::Pending => "pending",
        StepState::Intended => "intended",
        StepState::Started => "started",
        StepState::Done => "done",
        StepState::Failed => "failed",
        StepState::WouldRun => "would run",
    }
}

/// What a plan does: the argv, or the method and URL; references stay as written.
fn what(p: &Plan) -> Markup {
    match p.kind {
        StepKind::Run => {
            let argv = serde_json::to_string(&p.argv).unwrap_or_default();
            html! { "run " code { (argv) } }
        }
        StepKind::Http => html! {
            "http " code { (p.argv.join(" ")) }
        },
    }
}

/// A plan's other fields, one line each.
fn plan_details(s: &StepRun) -> Markup {
    let p = &s.plan;
    html! {
        @for (k, v) in &p.env { "env " code { (k) "=" (v) } br; }
        @if let Some(d) = &p.dir { "dir " code { (d.display()) } br; }
        @for (k, v) in &p.headers { "header " code { (k) ": " (v) } br; }
        @match &p.body {
            Body::None => {},
            Body::Json(v) => { "body " code { (v) } br; },
            Body::Raw(r) => { "body " code { (r) } br; },
        }
        @if !p.expect_status.is_empty() {
            "expect status " (format!("{:?}", p.expect_status)) br;
        }
        "timeout " (s.timeout_ms) " ms · retries " (s.retries)
        @if s.idempotent { " · idempotent" }
        @if s.continue_on_failure { " · continues on failure" }
        @if let Some(probe) = &s.probe { br; "probe " (what(probe)) }
        @if let Some(e) = &s.render_error { br; span.bad { "not rendered: " (e) } }
    }
}

fn plan(inc: &Incident) -> Markup {
    let rows: Vec<Markup> = runs(inc)
        .map(|(kind, s)| {
            html! {
                tr { td { (kind) ": " (s.name) } td { (what(&s.plan)) } td { (plan_details(s)) } }
            }
        })
        .collect();
    html! {
        h2 #plan { "Plan" }
        p.muted { "Fixed when the incident opened; secret references are shown as written." }
        (table_or("The plan has no step.", &["step", "does", "details"], &rows))
    }
}

fn votes(now: Timestamp, inc: &Incident) -> Markup {
    let a = &inc.approvals;
    let rows: Vec<Markup> = a
        .votes
        .iter()
        .map(|v| {
            html! {
                tr {
                    td { (v.person) }
                    td { (v.vote.verb()) }
                    td { (v.at) }
                    td { (v.via) }
                    @if v.counted {
                        td.good { "counted" }
                    } @else {
                        td.bad { "ignored: " (v.why_not_counted.as_deref().unwrap_or("not counted")) }
                    }
                    td { (v.reason.as_deref().unwrap_or("")) }
                }
            }
        })
        .collect();
    html! {
        h2 #votes { "Votes" }
        @if a.required {
            p {
                "Needs " (a.quorum) " of roles [" (a.require_roles.join(", ")) "]"
                @if let Some(d) = a.deadline {
                    @if inc.state == IncidentState::AwaitingApproval {
                        " by " (countdown(now, d))
                    } @else {
                        " by " (d)
                    }
                }
                "; on timeout: " (a.on_timeout) "."
            }
        } @else {
            p.muted { "No approval required." }
        }
        (table_or(
            "No vote yet.",
            &["person", "vote", "at", "via", "counted", "reason"],
            &rows,
        ))
    }
}

fn steps(inc: &Incident) -> Markup {
    let rows: Vec<Markup> = runs(inc)
        .map(|(kind, s)| {
            html! {
                tr {
                    td { (kind) ": " (s.name) }
                    td class=(match s.state {
                        StepState::Done => "good",
                        StepState::Failed => "bad",
                        _ => "wait",
                    }) { (step_state(s.state)) }
                    td { (s.attempts) }
                    td {
                        @if let Some(t) = s.started_at { (t) }
                        @if let Some(t) = s.finished_at { br; "→ " (t) }
                        @if let Some(ms) = s.duration_ms { br; (ms) " ms" }
                    }
                    td {
                        @if let Some(c) = s.exit_code { "exit " (c) }
                        @if let Some(e) = &s.error { br; span.bad { (e) } }
                    }
                    td { @if let Some(o) = &s.output { pre { (o) } } }
                }
            }
        })
        .collect();
    html! {
        h2 #steps { "Steps" }
        (table_or(
            "No step.",
            &["step", "state", "attempts", "ran", "result", "output"],
            &rows,
        ))
    }
}

fn checks(inc: &Incident) -> Markup {
    let rows: Vec<Markup> = inc
        .checks
        .iter()
        .map(|c| {
            html! {
                tr {
                    td { (c.name) }
                    @if c.ok { td.good { "ok" } } @else { td.bad { "failed" } }
                    td { (c.detail) }
                }
            }
        })
        .collect();
    html! {
        h2 #checks { "Checks" }
        @match &inc.verify {
            Some(v) => p {
                "Verified within " (v.within_ms / 1000) " s, every " (v.every_ms) " ms: "
                @for (n, c) in v.checks.iter().enumerate() {
                    @if n > 0 { ", " }
                    code { (c.name()) }
                }
                @if let Some(d) = inc.verify_deadline { " (until " (d) ")" }
            },
            None => p.muted { "The rule has no checks." },
        }
        (table_or("No check has answered yet.", &["check", "result", "detail"], &rows))
    }
}

fn freeze_section(inc: &Incident, freeze: Option<&Freeze>) -> Markup {
    html! {
        h2 #freeze { "Freeze" }
        p {
            @if inc.freeze {
                "This incident freezes releases of " (inc.service) " when its first step starts. "
            } @else {
                "This incident does not freeze releases. "
            }
            @match freeze {
                Some(f) => span.bad {
                    (f.service) " is frozen since " (f.since) " by " (f.by) ": " (f.reason)
                    @if f.incident.as_deref() == Some(inc.id.as_str()) { " (by this incident)" }
                },
                None => span.muted { (inc.service) " is not frozen now." },
            }
        }
    }
}

fn entries(timeline: &[TimelineEntry]) -> Markup {
    let rows: Vec<Markup> = timeline
        .iter()
        .map(|t| {
            html! {
                tr { td { (t.at) } td { code { (t.kind.code()) } } td { (t.actor) } td { (t.message) } }
            }
        })
        .collect();
    html! {
        h2 #entries { "Timeline entries" }
        (table_or("No entry.", &["at", "kind", "actor", "message"], &rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = r#"<script>alert("x")</script>"#;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn incident() -> Incident {
        let release = serde_json::json!({
            "version": HOSTILE, "deployment_id": "d-1", "deployed_at": "2026-01-01T00:00:00Z"
        });
        serde_json::from_value(serde_json::json!({
            "id": "inc-000001", "rule": HOSTILE, "breach": "b-000001", "group": HOSTILE,
            "service": "web", "environment": "production", "state": "rolling_back",
            "mode": "enforce", "labels": {"service": HOSTILE},
            "breach_started_at": "2026-01-01T00:00:00Z", "deadline": "2026-01-01T00:01:00Z",
            "opened_at": "2026-01-01T00:01:00Z", "updated_at": "2026-01-01T00:02:00Z",
            "release_from": release, "release_to": release,
            "approvals": {"required": true, "require_roles": ["founder"], "quorum": 1,
                "deadline": "2026-01-01T00:11:00Z", "on_timeout": "abort",
                "votes": [{"person": HOSTILE, "vote": "approve", "at": "2026-01-01T00:01:30Z",
                    "via": "break-glass", "counted": false, "why_not_counted": HOSTILE}]},
            "steps": [
                {"name": HOSTILE, "kind": "run", "argv": ["/bin/echo", HOSTILE], "state": "done",
                 "attempts": 1, "started_at": "2026-01-01T00:02:00Z",
                 "finished_at": "2026-01-01T00:02:01Z", "output": HOSTILE, "exit_code": 0,
                 "timeout_ms": 1000, "retries": 0, "idempotent": false, "continue_on_failure": false},
                {"name": "later", "kind": "http", "argv": ["POST", "https://api.example/x"],
                 "headers": {"Authorization": "Bearer ${env:API_TOKEN}"}, "state": "pending",
                 "attempts": 0, "timeout_ms": 1000, "retries": 0, "idempotent": false,
                 "continue_on_failure": false}
            ],
            "freeze": false
        }))
        .expect("incident")
    }

    #[test]
    fn every_value_is_text_and_references_stay_references() {
        let inc = incident();
        let html = page(at("2026-01-01T00:03:00Z"), &inc, &[], None, None).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(
            html.contains("Authorization: Bearer ${env:API_TOKEN}"),
            "{html}"
        );
        assert!(html.contains("<pre>&lt;script&gt;"), "{html}");
        assert!(html.contains("ignored: &lt;script&gt;"), "{html}");
        // Running: the page refreshes and the chart marks now; a pending step has no bar.
        assert!(html.contains(r#"http-equiv="refresh""#), "{html}");
        assert!(html.contains(r#"data-mark="now""#), "{html}");
        assert!(html.contains(r#"data-span="step:&lt;script&gt;"#), "{html}");
        assert!(!html.contains(r#"data-span="step:later""#), "{html}");
    }

    #[test]
    fn bars_follow_the_timeline() {
        let inc = incident();
        let entry = |kind: Kind, t: &str| TimelineEntry {
            at: at(t),
            subject: "inc-000001".to_string(),
            kind,
            actor: "rollbackd".to_string(),
            message: String::new(),
            data: serde_json::Value::Null,
            prev_hash: None,
            hash: None,
        };
        let timeline = [
            entry(Kind::AwaitingApproval, "2026-01-01T00:01:00Z"),
            entry(Kind::Approved, "2026-01-01T00:01:40Z"),
        ];
        let bars = bars(at("2026-01-01T00:03:00Z"), &inc, &timeline);
        let spans: Vec<(&str, Timestamp, Timestamp)> = bars
            .iter()
            .map(|b| (b.span.as_str(), b.from, b.to))
            .collect();
        assert_eq!(
            spans,
            [
                (
                    "breach",
                    at("2026-01-01T00:00:00Z"),
                    at("2026-01-01T00:01:00Z")
                ),
                (
                    "approval",
                    at("2026-01-01T00:01:00Z"),
                    at("2026-01-01T00:01:40Z")
                ),
                (
                    "step:<script>alert(\"x\")</script>",
                    at("2026-01-01T00:02:00Z"),
                    at("2026-01-01T00:02:01Z")
                ),
            ]
        );
    }
}
