//! State transitions and what they announce: the timeline entry, the outbox entries per notifier
//! target, and the notifier's word back on each.

use super::*;

impl State {
    pub(super) fn transition(
        &mut self,
        tx: &mut Tx,
        id: &str,
        to: IncidentState,
        actor: &str,
        why: String,
    ) {
        self.transition_because(tx, id, to, actor, why, None);
    }

    /// A transition whose reason has a code (a suppressed incident), kept in the timeline.
    pub(super) fn transition_because(
        &mut self,
        tx: &mut Tx,
        id: &str,
        to: IncidentState,
        actor: &str,
        why: String,
        code: Option<ReasonCode>,
    ) {
        let Some(inc) = self.incidents.get_mut(id) else {
            return;
        };
        let from = inc.state;
        inc.state = to;
        inc.updated_at = tx.now;
        if !to.is_active() {
            inc.finished_at = Some(tx.now);
            inc.reason = Some(why.clone());
            if inc.after_pending() {
                tx.out.effects.push(Effect::RunAfter {
                    incident: id.to_string(),
                });
            }
        }
        let mut data = serde_json::json!({ "from": from.as_str(), "to": to.as_str() });
        if let Some(code) = code {
            data["code"] = serde_json::json!(code);
        }
        tx.note_with(id, Kind::from(to), actor, why.clone(), data);
        self.save_incident(tx, id);
        let kind = match to {
            IncidentState::AwaitingApproval => Some(Announcement::ApprovalRequested),
            IncidentState::Approved => Some(Announcement::Approved),
            IncidentState::Rejected => Some(Announcement::Rejected),
            IncidentState::Expired => Some(Announcement::Expired),
            IncidentState::Cancelled => Some(Announcement::Cancelled),
            IncidentState::RollingBack => Some(Announcement::RollbackStarted),
            IncidentState::RolledBack => Some(Announcement::RolledBack),
            IncidentState::RollbackFailed => Some(Announcement::RollbackFailed),
            IncidentState::Triggered | IncidentState::Verifying | IncidentState::Suppressed => None,
        };
        if let Some(kind) = kind {
            self.announce(tx, id, kind, why);
        }
        if !to.is_active() {
            // Lifted while the rollback ran: the on_unfreeze steps waited for this.
            self.start_unfreeze(tx, id);
        }
    }

    /// Queues one announcement per notifier target of the incident's rule (and PagerDuty).
    pub(super) fn announce(&mut self, tx: &mut Tx, id: &str, kind: Announcement, detail: String) {
        let Some(inc) = self.incidents.get(id) else {
            return;
        };
        let mut targets: Vec<String> = inc
            .notify
            .clone()
            .or_else(|| tx.ctx.rules.get(&inc.rule).map(|r| r.notify.clone()))
            .unwrap_or_default();
        if tx.ctx.pagerduty {
            targets.push("pagerduty".to_string());
        }
        let state = inc.state;
        for target in targets {
            let seq = self.seq(tx);
            tx.out.changes.push(Change::Outbox(Box::new(OutboxEntry {
                seq,
                target,
                incident: id.to_string(),
                kind,
                detail: detail.clone(),
                at: tx.now,
                state: Some(state),
                attempts: 0,
                next_at: None,
                last_error: None,
            })));
        }
    }

    pub(super) fn on_delivery(tx: &mut Tx, mut e: OutboxEntry, outcome: Delivery) -> Reply {
        let done = Change::OutboxDone {
            seq: e.seq,
            target: e.target.clone(),
        };
        match outcome {
            Delivery::Delivered { detail } => {
                tx.out.changes.push(done);
                tx.note(
                    &e.incident,
                    Kind::Notified,
                    "rollbackd",
                    format!("{} announced to {} ({detail})", e.kind.code(), e.target),
                );
            }
            Delivery::Dropped { error } => {
                tx.out.changes.push(done);
                tx.note(
                    &e.incident,
                    Kind::NotificationDropped,
                    "rollbackd",
                    format!(
                        "{} to {} refused for good: {error}",
                        e.kind.code(),
                        e.target
                    ),
                );
            }
            Delivery::Retry { error, at } => {
                e.attempts += 1;
                e.next_at = Some(at);
                e.last_error = Some(error.clone());
                // The first failure and then every tenth go into the timeline, not every retry.
                if e.attempts == 1 || e.attempts % 10 == 0 {
                    tx.note(
                        &e.incident,
                        Kind::NotificationRetry,
                        "rollbackd",
                        format!(
                            "{} to {} failed (attempt {}): {error}; retrying at {at}",
                            e.kind.code(),
                            e.target,
                            e.attempts
                        ),
                    );
                }
                tx.out.changes.push(Change::Outbox(Box::new(e)));
            }
        }
        Reply::Ok
    }
}
