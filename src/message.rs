//! What announcements say. The reference plan's templates are the defaults:
//! internal ("Rollback initiated for release vX.Y.Z due to <issue>. Expect <impact>. Next update in
//! 15 minutes."), external, and the post-incident summary.

use crate::model::{Announcement as A, Incident, OutboxEntry};

/// One line that says what happened, for titles and fallbacks.
pub fn headline(e: &OutboxEntry, inc: &Incident) -> String {
    let svc = service(inc);
    match e.kind {
        A::ApprovalRequested => format!(
            "Approval needed: roll {svc} back to {}",
            inc.release_to.version
        ),
        A::Approved => format!("Rollback of {svc} approved"),
        A::Rejected => format!("Rollback of {svc} rejected"),
        A::Expired => format!("Rollback of {svc} not approved in time"),
        A::Cancelled => format!("Rollback of {svc} cancelled: the breach cleared"),
        A::RollbackStarted => format!("Rollback initiated: {svc}"),
        A::StepFailed => format!("Rollback step failed: {svc}"),
        A::RolledBack => format!("Rolled back: {svc} is on {}", inc.release_to.version),
        A::RollbackFailed if inc.rollback_started_at.is_none() => {
            format!("ROLLBACK CANNOT RUN: {svc} needs a human now")
        }
        A::RollbackFailed => format!("ROLLBACK FAILED: {svc} needs a human now"),
        A::FreezeLifted => format!("Releases of {} unfrozen", inc.service),
        A::UnfreezeStepsDone => format!("After the freeze of {svc}: on_unfreeze steps done"),
        A::UnfreezeStepFailed => {
            format!("After the freeze of {svc}: an on_unfreeze step FAILED, a human must finish")
        }
    }
}

fn service(inc: &Incident) -> String {
    if inc.environment.is_empty() {
        inc.service.clone()
    } else {
        format!("{} ({})", inc.service, inc.environment)
    }
}

/// Why the rollback happens, in words an on-call reads at 3 a.m.
pub fn issue(inc: &Incident) -> String {
    let alert = inc
        .labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| inc.rule.clone());
    format!(
        "{alert} breaching since {} (rule {})",
        inc.breach_started_at, inc.rule
    )
}

/// "SERVICE back from vA (dpl-a) to vB (dpl-b) because of ISSUE".
fn route(inc: &Incident) -> String {
    format!(
        "{} back from {} ({}) to {} ({}) because of {}",
        service(inc),
        inc.release_from.version,
        inc.release_from.deployment_id,
        inc.release_to.version,
        inc.release_to.deployment_id,
        issue(inc)
    )
}

/// The internal template.
pub fn internal(inc: &Incident) -> String {
    if let Some(text) = inc.messages.get("internal") {
        return text.clone();
    }
    format!(
        "Rollback initiated for release {} due to {}. Expect {} to return to {} ({}). Next update in 15 minutes.",
        inc.release_from.version,
        issue(inc),
        service(inc),
        inc.release_to.version,
        inc.release_to.deployment_id
    )
}

/// The external notice, for whoever relies on the service (a rule's `messages.external` replaces it).
pub fn external(inc: &Incident) -> String {
    if let Some(text) = inc.messages.get("external") {
        return text.clone();
    }
    format!(
        "We rolled back a recent {} update to keep it reliable. It keeps working; no action is needed. We will say when the change is rescheduled.",
        inc.service
    )
}

/// The body of an announcement: what happened and what to do.
pub fn body(e: &OutboxEntry, inc: &Incident, link: Option<&str>) -> String {
    let mut text = match e.kind {
        A::ApprovalRequested => {
            let roles = inc.approvals.require_roles.join(", ");
            let deadline = inc
                .approvals
                .deadline
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".to_string());
            format!(
                "rollbackd wants to roll {}. Needs {} approval(s) covering roles [{roles}] by {deadline} (then {}). To approve, run the \"Approve rollback\" workflow on this incident or add a note starting with /approve; to refuse, /reject.",
                route(inc),
                inc.approvals.quorum,
                inc.approvals.on_timeout,
            )
        }
        A::RollbackStarted => internal(inc),
        A::RolledBack => format!(
            "{} is back on {} ({}); checks passed. Releases stay frozen until a human lifts the freeze. External notice: \"{}\"",
            service(inc),
            inc.release_to.version,
            inc.release_to.deployment_id,
            external(inc)
        ),
        // Refused before it started: nothing ran, nobody was asked.
        A::RollbackFailed if inc.rollback_started_at.is_none() => format!(
            "Escalation: rollbackd would roll {}, but its plan {}. Roll back by hand now.",
            route(inc),
            e.detail
        ),
        A::RollbackFailed => format!(
            "Escalation: the rollback of {} did not finish: {}. The service may be half rolled back; releases stay frozen. Take over now.",
            service(inc),
            e.detail
        ),
        _ => e.detail.clone(),
    };
    if let Some(l) = link {
        text.push_str(&format!(" Incident: {l}"));
    }
    text
}
