//! `GET /`: the status page. One server-rendered HTML page, no JavaScript, no CDN: it refreshes
//! itself every few seconds. Everything shown comes from the store, and maud escapes every value
//! (alert labels are attacker-controlled text).

use std::collections::BTreeMap;

use jiff::Timestamp;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::App;
use crate::api::ApiError;
use crate::model::{Breach, Freeze, Incident, IncidentState, Kind, Release, TimelineEntry, since};

const REFRESH_SECONDS: u32 = 5;
const RECENT_INCIDENTS: usize = 20;
/// Shown at most; the page says how to see all.
const SHOWN: usize = 200;
const RELEASES_PER_SERVICE: usize = 3;

pub(super) const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.6em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0} .muted{color:#777} code{font-size:.95em}
.state{font-weight:600} .bad{color:#b00020} .good{color:#0a7d28} .wait{color:#a05a00}
a{color:#0b57d0} pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:.9em}
svg{background:#fff;border:1px solid #ddd;max-width:100%;height:auto}
";

pub fn render(app: &App) -> Result<String, ApiError> {
    let now = app.clock.now();
    let (breaches, more_breaches) = app.store.open_breaches(SHOWN)?;
    let (incidents, _) = app.store.incidents_where(|_| true, RECENT_INCIDENTS)?;
    let (active, more_active) = app.store.incidents_where(|s| s.state.is_active(), SHOWN)?;
    let freezes = app.store.freezes()?;
    let releases = app.store.recent_releases(RELEASES_PER_SERVICE)?;
    let waiting: Vec<&Incident> = active
        .iter()
        .filter(|i| i.state == IncidentState::AwaitingApproval)
        .collect();
    let recent = incidents
        .iter()
        .take(RECENT_INCIDENTS)
        .map(|i| {
            let latest = latest_transition(&app.store.timeline(&i.id)?)
                .map(|t| format!("{} · {}", t.at, t.message))
                .unwrap_or_default();
            Ok((i, latest))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;

    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "rollbackd: " (active.len()) " active, " (breaches.len()) " breaches" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "rollbackd" }
                p.muted {
                    "As of " (now) " · refreshes every " (REFRESH_SECONDS) " s · "
                    (app.rules().rules.len()) " rule(s) loaded"
                }
                (approvals(now, &waiting, more_active))
                (open_breaches(now, &breaches, more_breaches))
                (recent_incidents(&recent))
                (release_freezes(&freezes))
                (recent_releases(&releases))
            }
        }
    };
    Ok(page.into_string())
}

fn approvals(now: Timestamp, waiting: &[&Incident], more_active: bool) -> Markup {
    let rows: Vec<Markup> = waiting
        .iter()
        .map(|i| {
            html! {
                tr {
                    td { (incident_link(&i.id)) }
                    td { (i.service) " " (i.release_from.version) " → " (i.release_to.version) }
                    td {
                        (i.approvals.quorum) " of roles ["
                        (i.approvals.require_roles.join(", ")) "]"
                    }
                    td {
                        @for (n, v) in i.approvals.votes.iter().enumerate() {
                            @if n > 0 { br; }
                            (v.person) " " (format!("{:?}", v.vote))
                            @if !v.counted { " (not counted)" }
                        }
                        @if i.approvals.votes.is_empty() { "none yet" }
                    }
                    td {
                        @if let Some(d) = i.approvals.deadline { (countdown(now, d)) }
                    }
                }
            }
        })
        .collect();
    html! {
        h2 #approvals { "Waiting for approval" }
        @if more_active {
            p.muted { "More than " (SHOWN) " incidents are active; the newest are shown." }
        }
        (table_or(
            "Nothing is waiting for approval.",
            &["incident", "rollback", "needs", "votes", "deadline"],
            &rows,
        ))
    }
}

fn open_breaches(now: Timestamp, breaches: &[Breach], more: bool) -> Markup {
    let rows: Vec<Markup> = breaches
        .iter()
        .map(|b| {
            html! {
                tr {
                    td { (b.rule) }
                    td { code { (b.group) } }
                    td { (b.started_at) }
                    td { (countdown(now, b.deadline)) }
                    td {
                        (breach_status(b))
                        @if let Some(id) = &b.incident { " · " (incident_link(id)) }
                    }
                }
            }
        })
        .collect();
    html! {
        h2 #breaches { "Open breaches" }
        (table_or(
            "No open breach.",
            &["rule", "group", "started", "deadline", "status"],
            &rows,
        ))
        @if more && !rows.is_empty() {
            p.muted {
                "The " (SHOWN) " soonest are shown; "
                code { "GET /v1/breaches?limit=N" } " lists more."
            }
        }
    }
}

/// The newest incidents, each with why it is where it is: its last transition's reason.
fn recent_incidents(incidents: &[(&Incident, String)]) -> Markup {
    let rows: Vec<Markup> = incidents
        .iter()
        .map(|(i, latest)| {
            html! {
                tr {
                    td { (incident_link(&i.id)) }
                    td class={ "state " (state_class(i.state)) } { (i.state) }
                    td { (i.service) " " (i.environment) }
                    td { (i.release_from.version) " → " (i.release_to.version) }
                    td { (i.opened_at) }
                    td { (latest) }
                }
            }
        })
        .collect();
    html! {
        h2 #incidents { "Incidents" }
        (table_or(
            "No incident yet.",
            &["incident", "state", "service", "release", "opened", "latest"],
            &rows,
        ))
    }
}

fn release_freezes(freezes: &[Freeze]) -> Markup {
    let rows: Vec<Markup> = freezes
        .iter()
        .map(|f| {
            html! {
                tr {
                    td.bad { (f.service) }
                    td { (f.since) }
                    td { (f.by) }
                    td {
                        (f.reason)
                        @if let Some(id) = &f.incident { " · " (incident_link(id)) }
                    }
                }
            }
        })
        .collect();
    html! {
        h2 #freezes { "Release freezes" }
        (table_or("No service is frozen.", &["service", "since", "by", "reason"], &rows))
    }
}

fn recent_releases(releases: &BTreeMap<String, Vec<Release>>) -> Markup {
    let rows: Vec<Markup> = releases
        .iter()
        .flat_map(|(service, list)| list.iter().map(move |r| (service, r)))
        .map(|(service, r)| {
            html! {
                tr {
                    td { (service) }
                    td { (r.environment) }
                    td { (r.version) }
                    td { code { (r.deployment_id) } }
                    td { (r.deployed_at) }
                    td {
                        (r.origin)
                        @if let Some(id) = &r.incident { " · " (incident_link(id)) }
                    }
                }
            }
        })
        .collect();
    html! {
        h2 #releases { "Recent releases" }
        (table_or(
            "No release reported yet.",
            &["service", "environment", "version", "deployment", "deployed", "origin"],
            &rows,
        ))
    }
}

/// The incident's own page, relative to `/` (so it works under a path prefix too).
pub(super) fn incident_link(id: &str) -> Markup {
    html! { a href={ "incidents/" (id) } { (id) } }
}

/// The last entry that moved the incident to a state (its reason), not a delivery or a step.
pub(super) fn latest_transition(timeline: &[TimelineEntry]) -> Option<&TimelineEntry> {
    timeline
        .iter()
        .rev()
        .find(|t| IncidentState::ALL.iter().any(|s| Kind::from(*s) == t.kind))
}

/// `empty` as a muted paragraph when there are no rows, else a table of the column names and rows.
pub(super) fn table_or(empty: &str, columns: &[&str], rows: &[Markup]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { (empty) }
        } @else {
            table {
                tr { @for c in columns { th { (c) } } }
                @for r in rows { (r) }
            }
        }
    }
}

/// Plain text: the page escapes it.
fn breach_status(b: &Breach) -> String {
    match (&b.decision, b.clearing_since) {
        (Some(d), _) if d.acted => "acted".to_string(),
        (Some(d), _) => format!("did not act: {}", d.reason),
        (None, Some(c)) => format!("resolving since {c}"),
        (None, None) => "firing".to_string(),
    }
}

pub(super) fn countdown(now: Timestamp, at: Timestamp) -> String {
    if at <= now {
        format!("{at} (passed)")
    } else {
        format!("{at} (in {}s)", since(at, now).as_secs())
    }
}

pub(super) fn state_class(s: IncidentState) -> &'static str {
    match s {
        IncidentState::RolledBack => "good",
        IncidentState::RollbackFailed | IncidentState::Expired | IncidentState::Rejected => "bad",
        _ if s.is_active() => "wait",
        _ => "muted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = r#"<script>alert("x")</script>&'"#;
    const ESCAPED: &str = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;'";

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn breach_labels_are_text_not_markup() {
        let breach: Breach = serde_json::from_value(serde_json::json!({
            "id": "b-000001", "rule": HOSTILE, "group": format!("{{service={HOSTILE:?}}}"),
            "group_labels": {}, "labels": {"service": HOSTILE},
            "started_at": "2026-01-01T00:00:00Z", "first_seen": "2026-01-01T00:00:00Z",
            "deadline": "2026-01-01T00:10:00Z", "alerts": {},
            "decision": {"at": "2026-01-01T00:10:00Z", "acted": false, "reason": HOSTILE}
        }))
        .expect("breach");
        let html = open_breaches(at("2026-01-01T00:05:00Z"), &[breach], true).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains(&format!("<td>{ESCAPED}</td>")), "{html}");
        assert!(
            html.contains(&format!("<td>did not act: {ESCAPED}</td>")),
            "{html}"
        );
        assert!(
            html.contains("<code>{service=&quot;&lt;script&gt;"),
            "{html}"
        );
        assert!(html.contains("2026-01-01T00:10:00Z (in 300s)"), "{html}");
        assert!(
            html.contains("<code>GET /v1/breaches?limit=N</code>"),
            "{html}"
        );
    }

    #[test]
    fn freeze_reasons_are_text_not_markup() {
        let freeze = Freeze {
            service: HOSTILE.to_string(),
            reason: HOSTILE.to_string(),
            incident: None,
            since: at("2026-01-01T00:00:00Z"),
            by: HOSTILE.to_string(),
        };
        let html = release_freezes(&[freeze]).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains(&format!("<td class=\"bad\">{ESCAPED}</td>")),
            "{html}"
        );
        assert_eq!(html.matches(ESCAPED).count(), 3, "{html}");
    }

    #[test]
    fn latest_is_the_last_transition_not_a_delivery() {
        let entry = |kind: Kind, message: &str| TimelineEntry {
            at: at("2026-01-01T00:00:00Z"),
            subject: "inc-000001".to_string(),
            kind,
            actor: "rollbackd".to_string(),
            message: message.to_string(),
            data: serde_json::Value::Null,
            prev_hash: None,
            hash: None,
        };
        let timeline = [
            entry(Kind::Triggered, "opened"),
            entry(Kind::RolledBack, "verified: all checks passed"),
            entry(Kind::StepDone, "a step"),
            entry(Kind::Notified, "rolled_back announced to team (HTTP 200)"),
        ];
        let latest = latest_transition(&timeline).map(|t| t.message.as_str());
        assert_eq!(latest, Some("verified: all checks passed"));
        assert!(latest_transition(&timeline[2..]).is_none());
    }

    #[test]
    fn empty_sections_say_so() {
        assert_eq!(
            release_freezes(&[]).into_string(),
            r#"<h2 id="freezes">Release freezes</h2><p class="muted">No service is frozen.</p>"#
        );
        assert!(
            recent_releases(&BTreeMap::new())
                .into_string()
                .contains("No release reported yet.")
        );
    }
}
