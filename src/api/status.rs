//! `GET /`: the status page. One server-rendered HTML page, no JavaScript, no CDN: it refreshes
//! itself every few seconds. Everything shown comes from the store, and every value is escaped
//! (alert labels are attacker-controlled text).

use std::fmt::Write as _;

use jiff::Timestamp;

use crate::App;
use crate::api::ApiError;
use crate::model::{Breach, Incident, IncidentState, since};

const REFRESH_SECONDS: u32 = 5;
const RECENT_INCIDENTS: usize = 20;
/// Shown at most; the page says how to see all.
const SHOWN: usize = 200;
const RELEASES_PER_SERVICE: usize = 3;

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

    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rollbackd: {} active, {} breaches</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}}
h1{{font-size:1.3em;margin:0 0 .2em}} h2{{font-size:1.05em;margin:1.6em 0 .4em}}
table{{border-collapse:collapse;width:100%;background:#fff}}
th,td{{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}}
th{{background:#f0f0f0}} .muted{{color:#777}} code{{font-size:.95em}}
.state{{font-weight:600}} .bad{{color:#b00020}} .good{{color:#0a7d28}} .wait{{color:#a05a00}}
</style></head><body>
<h1>rollbackd</h1>
<p class="muted">As of {now} · refreshes every {REFRESH_SECONDS} s · {} rule(s) loaded</p>
"#,
        active.len(),
        breaches.len(),
        app.rules().rules.len()
    );

    h.push_str("<h2 id=\"approvals\">Waiting for approval</h2>\n");
    if more_active {
        let _ = writeln!(
            h,
            "<p class=\"muted\">More than {SHOWN} incidents are active; the newest are shown.</p>"
        );
    }
    if waiting.is_empty() {
        h.push_str("<p class=\"muted\">Nothing is waiting for approval.</p>\n");
    } else {
        h.push_str("<table><tr><th>incident</th><th>rollback</th><th>needs</th><th>votes</th><th>deadline</th></tr>\n");
        for i in &waiting {
            let votes: Vec<String> = i
                .approvals
                .votes
                .iter()
                .map(|v| {
                    format!(
                        "{} {:?}{}",
                        esc(&v.person),
                        v.vote,
                        if v.counted { "" } else { " (not counted)" }
                    )
                })
                .collect();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{} {} → {}</td><td>{} of roles [{}]</td><td>{}</td><td>{}</td></tr>",
                esc(&i.id),
                esc(&i.service),
                esc(&i.release_from.version),
                esc(&i.release_to.version),
                i.approvals.quorum,
                esc(&i.approvals.require_roles.join(", ")),
                if votes.is_empty() {
                    "none yet".to_string()
                } else {
                    votes.join("<br>")
                },
                i.approvals
                    .deadline
                    .map(|d| countdown(now, d))
                    .unwrap_or_default()
            );
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2 id=\"breaches\">Open breaches</h2>\n");
    if breaches.is_empty() {
        h.push_str("<p class=\"muted\">No open breach.</p>\n");
    } else {
        h.push_str("<table><tr><th>rule</th><th>group</th><th>started</th><th>deadline</th><th>status</th></tr>\n");
        for b in &breaches {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&b.rule),
                esc(&b.group),
                b.started_at,
                countdown(now, b.deadline),
                breach_status(b)
            );
        }
        h.push_str("</table>\n");
        if more_breaches {
            let _ = writeln!(
                h,
                "<p class=\"muted\">The {SHOWN} soonest are shown; <code>GET /v1/breaches?limit=N</code> lists more.</p>"
            );
        }
    }

    h.push_str("<h2 id=\"incidents\">Incidents</h2>\n");
    if incidents.is_empty() {
        h.push_str("<p class=\"muted\">No incident yet.</p>\n");
    } else {
        h.push_str("<table><tr><th>incident</th><th>state</th><th>service</th><th>release</th><th>opened</th><th>latest</th></tr>\n");
        for i in incidents.iter().take(RECENT_INCIDENTS) {
            let latest = app
                .store
                .timeline(&i.id)?
                .last()
                .map(|t| format!("{} · {}", t.at, esc(&t.message)))
                .unwrap_or_default();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"state {}\">{}</td><td>{} {}</td><td>{} → {}</td><td>{}</td><td>{}</td></tr>",
                esc(&i.id),
                state_class(i.state),
                i.state,
                esc(&i.service),
                esc(&i.environment),
                esc(&i.release_from.version),
                esc(&i.release_to.version),
                i.opened_at,
                latest
            );
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2 id=\"freezes\">Release freezes</h2>\n");
    if freezes.is_empty() {
        h.push_str("<p class=\"muted\">No service is frozen.</p>\n");
    } else {
        h.push_str("<table><tr><th>service</th><th>since</th><th>by</th><th>reason</th></tr>\n");
        for f in &freezes {
            let _ = writeln!(
                h,
                "<tr><td class=\"bad\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.service),
                f.since,
                esc(&f.by),
                esc(&f.reason)
            );
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h2 id=\"releases\">Recent releases</h2>\n");
    if releases.is_empty() {
        h.push_str("<p class=\"muted\">No release reported yet.</p>\n");
    } else {
        h.push_str("<table><tr><th>service</th><th>environment</th><th>version</th><th>deployment</th><th>deployed</th><th>origin</th></tr>\n");
        for (service, list) in &releases {
            for r in list {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    esc(service),
                    esc(&r.environment),
                    esc(&r.version),
                    esc(&r.deployment_id),
                    r.deployed_at,
                    esc(&r.origin)
                );
            }
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

fn breach_status(b: &Breach) -> String {
    match (&b.decision, b.clearing_since) {
        (Some(d), _) if d.acted => format!(
            "acted: {}",
            esc(b.incident.as_deref().unwrap_or("incident"))
        ),
        (Some(d), _) => format!("did not act: {}", esc(&d.reason)),
        (None, Some(c)) => format!("resolving since {c}"),
        (None, None) => "firing".to_string(),
    }
}

fn countdown(now: Timestamp, at: Timestamp) -> String {
    if at <= now {
        format!("{at} (passed)")
    } else {
        format!("{at} (in {}s)", since(at, now).as_secs())
    }
}

fn state_class(s: IncidentState) -> &'static str {
    match s {
        IncidentState::RolledBack => "good",
        IncidentState::RollbackFailed | IncidentState::Expired | IncidentState::Rejected => "bad",
        _ if s.is_active() => "wait",
        _ => "muted",
    }
}

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }
}
