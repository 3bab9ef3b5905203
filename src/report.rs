//! The change-log record and postmortem draft of one incident, as Markdown for people and JSON
//! for tools. Pure: records in, text out. Its sections follow the reference plan's post-incident
//! asks: decision, timeline and outcome in the change log; root cause, resolution and follow-ups
//! for the review within 3 business days.

use serde::Serialize;

use crate::message;
use crate::model::{ChainStatus, Freeze, Incident, StepRun, TimelineEntry, since};

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub incident: &'a Incident,
    pub breach_duration_seconds: Option<u64>,
    pub freeze: Option<&'a Freeze>,
    pub timeline: &'a [TimelineEntry],
    pub chain: &'a ChainStatus,
    pub internal_notice: String,
    pub external_notice: String,
}

impl<'a> Report<'a> {
    pub fn new(
        incident: &'a Incident,
        breach_closed_at: Option<jiff::Timestamp>,
        freeze: Option<&'a Freeze>,
        timeline: &'a [TimelineEntry],
        chain: &'a ChainStatus,
    ) -> Report<'a> {
        let end = breach_closed_at.or(incident.finished_at);
        Report {
            breach_duration_seconds: end.map(|e| since(e, incident.breach_started_at).as_secs()),
            incident,
            freeze,
            timeline,
            chain,
            internal_notice: message::internal(incident),
            external_notice: message::external(incident),
        }
    }

    pub fn markdown(&self) -> String {
        let i = self.incident;
        let mut md = String::new();
        let env = if i.environment.is_empty() {
            String::new()
        } else {
            format!(" ({})", i.environment)
        };
        md += &format!("# Rollback {}: {}{env}\n\n", i.id, i.service);
        md += "## Summary\n\n";
        md += &format!(
            "- Outcome: **{}**{}\n",
            i.state,
            i.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        md += &format!(
            "- Release: {} (`{}`, deployed {}) → {} (`{}`)\n",
            i.release_from.version,
            i.release_from.deployment_id,
            i.release_from.deployed_at,
            i.release_to.version,
            i.release_to.deployment_id
        );
        md += &format!("- Rule: `{}` ({} mode)\n", i.rule, i.mode);
        md += &format!("- Opened: {}", i.opened_at);
        if let Some(f) = i.finished_at {
            md += &format!(", finished: {f}");
        }
        md += "\n\n";

        md += "## Trigger\n\n";
        let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        md += &format!("- Alert labels: `{{{}}}`\n", labels.join(", "));
        md += &format!("- Group: `{}`\n", i.group);
        md += &format!("- Breach began: {}\n", i.breach_started_at);
        md += &format!(
            "- Acted at: {} (deadline {}, {} ms after it)\n",
            i.opened_at,
            i.deadline,
            since(i.opened_at, i.deadline).as_millis()
        );
        match self.breach_duration_seconds {
            Some(s) => md += &format!("- Breach duration: {}\n", fmt_secs(s)),
            None => md += "- Breach duration: still open\n",
        }
        md += "\n## Decision\n\n";
        let a = &i.approvals;
        if a.required {
            md += &format!(
                "Approval from roles [{}], quorum {}, deadline {}, on timeout {}.\n\n",
                a.require_roles.join(", "),
                a.quorum,
                a.deadline
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.on_timeout
            );
            md += "| when | who | vote | via | counted | note |\n|---|---|---|---|---|---|\n";
            for v in &a.votes {
                md += &format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    v.at,
                    cell(&v.person),
                    word(&v.vote),
                    v.via,
                    if v.counted { "yes" } else { "no" },
                    cell(
                        v.why_not_counted
                            .as_deref()
                            .or(v.reason.as_deref())
                            .unwrap_or("")
                    )
                );
            }
            if a.votes.is_empty() {
                md += "| - | - | - | - | - | no votes |\n";
            }
        } else {
            md += "No approval required (`approval: none`).\n";
        }

        md += "\n## Steps\n\n";
        md += &steps_table(&i.steps);
        if !i.checks.is_empty() {
            md += "\n## Verification\n\n| check | result | detail |\n|---|---|---|\n";
            for c in &i.checks {
                md += &format!(
                    "| {} | {} | {} |\n",
                    cell(&c.name),
                    if c.ok { "ok" } else { "FAILED" },
                    cell(&c.detail)
                );
            }
        }
        if !i.after.is_empty() {
            md += "\n## Integrity checks\n\n";
            md += &steps_table(&i.after);
        }
        if !i.on_unfreeze.is_empty() {
            md += "\n## Steps after the freeze (`on_unfreeze`)\n\n";
            md += &steps_table(&i.on_unfreeze);
        }
        md += "\n## Freeze\n\n";
        md += &match self.freeze {
            Some(f) => format!(
                "Releases of {} are **frozen** since {} by {}: {}. Lift with `rollbackd unfreeze {} --reason ..` once the cause is found and the fix tested.\n",
                f.service, f.since, f.by, f.reason, f.service
            ),
            None => format!("Releases of {} are not frozen.\n", i.service),
        };

        md += "\n## Communications\n\n";
        md += &format!("- Internal: {}\n", self.internal_notice);
        md += &format!("- External: {}\n", self.external_notice);

        md += "\n## Timeline\n\n| when | what | who | detail |\n|---|---|---|---|\n";
        for t in self.timeline {
            md += &format!(
                "| {} | {} | {} | {} |\n",
                t.at,
                t.kind.code(),
                cell(&t.actor),
                cell(&t.message)
            );
        }
        md +=
            "\n## Root cause\n\n_To be written at the incident review (within 3 business days)._\n";
        md += "\n## Resolution\n\n_What fixed it for good, and when the release is rescheduled._\n";
        md += "\n## Follow-ups\n\n- [ ] Fix tested and release rescheduled (tell whoever heard of the rollback)\n- [ ] Runbooks and test coverage updated where gaps were found\n- [ ] Freeze lifted\n";
        md += &format!(
            "\n## Record\n\nTimeline chain: {} entries, {} (head `{}`).\n",
            self.chain.entries,
            if self.chain.ok {
                "intact".to_string()
            } else {
                format!(
                    "**BROKEN at entry {}**",
                    self.chain.broken_at.unwrap_or_default()
                )
            },
            self.chain.head
        );
        md
    }
}

/// What humans did after a shadow incident, from the releases of its service and environment
/// deployed after it (newest first, as the store lists them, so the first deploy after it
/// decides): redeployed the previous release (`rolled_back`: they agreed), shipped something else
/// (`fixed_forward`), or nothing yet.
pub fn humans_after(inc: &Incident, later: &[crate::model::Release]) -> &'static str {
    match later.last() {
        None => "no_action_yet",
        Some(r) if r.deployment_id == inc.release_to.deployment_id => "rolled_back",
        Some(_) => "fixed_forward",
    }
}

fn steps_table(steps: &[StepRun]) -> String {
    let mut md = String::from(
        "| # | step | state | attempts | exit | duration | command |\n|---|---|---|---|---|---|---|\n",
    );
    for (n, s) in steps.iter().enumerate() {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | `{}` |\n",
            n + 1,
            cell(&s.name),
            word(&s.state),
            s.attempts,
            s.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            s.duration_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into()),
            cell(&s.plan.argv.join(" "))
        );
        if let Some(e) = s.error.as_deref().or(s.render_error.as_deref()) {
            md += &format!("|  | ↳ {} |  |  |  |  |  |\n", cell(e));
        }
    }
    md
}

/// A value's serialised name (`done`, `approve`).
fn word<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn fmt_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn step(name: &str, argv: &[&str], state: StepState, exit: Option<i32>) -> StepRun {
        StepRun {
            name: name.into(),
            plan: crate::model::Plan::run(argv.iter().map(|s| s.to_string()).collect()),
            render_error: None,
            fencing_token: Some(1),
            state,
            attempts: 1,
            started_at: Some(ts("2026-11-24T10:17:01Z")),
            finished_at: Some(ts("2026-11-24T10:17:03Z")),
            exit_code: exit,
            output: Some("ok".into()),
            error: None,
            duration_ms: Some(2000),
            probe: None,
            timeout_ms: 300_000,
            retries: 0,
            idempotent: true,
            continue_on_failure: false,
        }
    }

    fn entry(at: &str, kind: &str, actor: &str, message: &str) -> TimelineEntry {
        TimelineEntry {
            at: ts(at),
            subject: "inc-000002".into(),
            kind: Kind::parse(kind).expect("a timeline kind"),
            actor: actor.into(),
            message: message.into(),
            data: serde_json::Value::Null,
            prev_hash: None,
            hash: None,
        }
    }

    /// A full incident: breach, approval by two people, three steps, verification, freeze.
    pub(crate) fn full_incident() -> Incident {
        Incident {
            id: "inc-000002".into(),
            rule: "portal-error-rate".into(),
            breach: "b-000001".into(),
            group: r#"{environment="production", service="portal"}"#.into(),
            service: "portal".into(),
            environment: "production".into(),
            state: IncidentState::RolledBack,
            reason: Some("verified: prometheus ok".into()),
            mode: "enforce".into(),
            labels: [
                ("alertname", "PortalHighErrorRate"),
                ("service", "portal"),
                ("environment", "production"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            breach_started_at: ts("2026-11-24T10:00:00Z"),
            deadline: ts("2026-11-24T10:10:00Z"),
            opened_at: ts("2026-11-24T10:10:00.004Z"),
            updated_at: ts("2026-11-24T10:19:00Z"),
            release_from: ReleaseRef {
                version: "v2.4.0".into(),
                deployment_id: "dpl_new".into(),
                revision: None,
                deployed_at: ts("2026-11-24T09:40:00Z"),
            },
            release_to: ReleaseRef {
                version: "v2.3.9".into(),
                deployment_id: "dpl_old".into(),
                revision: None,
                deployed_at: ts("2026-11-23T16:00:00Z"),
            },
            approvals: Approval {
                required: true,
                require_roles: vec!["founder".into(), "client-success-lead".into()],
                quorum: 2,
                deadline: Some(ts("2026-11-24T10:15:00.004Z")),
                on_timeout: "abort".into(),
                votes: vec![
                    Vote {
                        person: "eve".into(),
                        vote: VoteKind::Approve,
                        at: ts("2026-11-24T10:12:00Z"),
                        via: "pagerduty-note".into(),
                        reason: None,
                        counted: false,
                        why_not_counted: Some("`eve` holds none of the roles".into()),
                    },
                    Vote {
                        person: "ada".into(),
                        vote: VoteKind::Approve,
                        at: ts("2026-11-24T10:13:00Z"),
                        via: "pagerduty-workflow".into(),
                        reason: None,
                        counted: true,
                        why_not_counted: None,
                    },
                    Vote {
                        person: "cy".into(),
                        vote: VoteKind::Approve,
                        at: ts("2026-11-24T10:16:59Z"),
                        via: "break-glass".into(),
                        reason: Some("customer impact confirmed".into()),
                        counted: true,
                        why_not_counted: None,
                    },
                ],
            },
            steps: vec![
                step(
                    "disable release flags",
                    &[
                        "PATCH",
                        "https://app.launchdarkly.com/api/v2/flags/portal/new-share-links",
                    ],
                    StepState::Done,
                    Some(200),
                ),
                step(
                    "roll back deployment",
                    &["vercel", "rollback", "dpl_old", "--yes"],
                    StepState::Done,
                    Some(0),
                ),
                step(
                    "down-migration",
                    &["/opt/portal/bin/migrate", "down", "--to", "v2.3.9"],
                    StepState::Done,
                    Some(0),
                ),
            ],
            freeze: true,
            notify: None,
            messages: Default::default(),
            pagerduty_incident: Some("Q1ABCDEF".into()),
            rollback_started_at: Some(ts("2026-11-24T10:17:00Z")),
            verify_deadline: Some(ts("2026-11-24T10:28:00Z")),
            verify: None,
            checks: vec![CheckResult {
                name: "prometheus `job:portal_error_ratio:rate5m`".into(),
                ok: true,
                detail: "1 sample(s) below 0.01".into(),
            }],
            after: vec![step(
                "row counts",
                &["/opt/portal/bin/check-rows"],
                StepState::Done,
                Some(0),
            )],
            finished_at: Some(ts("2026-11-24T10:19:00Z")),
            on_unfreeze: Vec::new(),
            unfrozen_at: None,
            on_unfreeze_ended_at: None,
        }
    }

    #[test]
    fn humans_after_reads_the_first_deploy_after_the_incident() {
        let rel = |id: &str| Release {
            service: "portal".into(),
            environment: "production".into(),
            version: id.into(),
            deployment_id: id.into(),
            revision: None,
            deployed_at: ts("2026-11-24T11:00:00Z"),
            received_at: ts("2026-11-24T11:00:00Z"),
            origin: "ci".into(),
            incident: None,
            posted_during_freeze: None,
        };
        let mut inc = full_incident();
        inc.release_to.deployment_id = "dpl_old".into();
        assert_eq!(humans_after(&inc, &[]), "no_action_yet");
        assert_eq!(
            humans_after(&inc, &[rel("dpl_x"), rel("dpl_old")]),
            "rolled_back"
        );
        assert_eq!(
            humans_after(&inc, &[rel("dpl_old"), rel("dpl_fix")]),
            "fixed_forward"
        );
    }

    #[test]
    fn report_of_a_full_incident_matches_the_snapshot() {
        let inc = full_incident();
        let freeze = Freeze {
            service: "portal".into(),
            reason: "rollback by incident inc-000002 started".into(),
            incident: Some("inc-000002".into()),
            since: ts("2026-11-24T10:17:00Z"),
            by: "rollbackd".into(),
        };
        let timeline = vec![
            entry(
                "2026-11-24T10:10:00.004Z",
                "triggered",
                "rollbackd",
                "breach of portal-error-rate lasted 10m",
            ),
            entry(
                "2026-11-24T10:10:00.004Z",
                "awaiting_approval",
                "rollbackd",
                "waiting for 2 approval(s)",
            ),
            entry(
                "2026-11-24T10:13:00Z",
                "vote",
                "ada",
                "ada voted approve via pagerduty-workflow",
            ),
            entry(
                "2026-11-24T10:16:59Z",
                "vote",
                "cy",
                "cy voted approve via break-glass: customer impact | confirmed",
            ),
            entry(
                "2026-11-24T10:19:00Z",
                "rolled_back",
                "rollbackd",
                "verified",
            ),
        ];
        let chain = ChainStatus {
            ok: true,
            entries: 5,
            head: "ab12".into(),
            broken_at: None,
        };
        let r = Report::new(
            &inc,
            Some(ts("2026-11-24T10:25:30Z")),
            Some(&freeze),
            &timeline,
            &chain,
        );
        let got = r.markdown();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/testdata/report-full-incident.md");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            got, want,
            "report changed; if intended, rerun with BLESS=1 and review the diff"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["breach_duration_seconds"], 1530);
        assert_eq!(json["incident"]["id"], "inc-000002");
    }
}
