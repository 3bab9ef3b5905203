//! Approval: votes from the API and from PagerDuty, who counts, the quorum, the deadline; PagerDuty
//! incidents linked to ours.

use super::*;

/// One vote as cast: who, which way, through what, and why.
pub(super) struct Ballot<'a> {
    pub person: &'a str,
    pub vote: VoteKind,
    pub via: &'a str,
    pub reason: Option<String>,
}

/// Why a signed PagerDuty vote is refused for its time: it has none, or it happened before the
/// incident opened, so it was cast on an earlier one (a captured delivery sent again).
fn stale(occurred_at: Option<Timestamp>, opened: Option<Timestamp>, id: &str) -> Option<String> {
    match (occurred_at, opened) {
        (None, _) => Some("the event has no valid occurred_at".to_string()),
        (Some(at), Some(opened)) if at < opened => Some(format!(
            "the event occurred at {at}, before incident {id} opened at {opened}: a vote on an earlier incident"
        )),
        _ => None,
    }
}

impl State {
    pub(super) fn on_pagerduty(
        &mut self,
        tx: &mut Tx,
        delivery: String,
        input: PagerDutyInput,
    ) -> Reply {
        if self.deliveries.contains_key(&delivery) {
            return Reply::Duplicate;
        }
        self.deliveries.insert(delivery.clone(), tx.now);
        tx.out
            .changes
            .push(Change::Delivery(delivery, Some(tx.now)));
        match input {
            PagerDutyInput::Ignored => {}
            PagerDutyInput::Incident {
                signal,
                incident_key,
            } => {
                let ours = incident_key.as_deref().and_then(incident_of_key);
                match ours {
                    // Our own approval incident: link it, and never treat it as an alert
                    // (a rule matching it would feed on itself).
                    Some(id) => {
                        if let Some(inc) = self.incidents.get_mut(id)
                            && inc.pagerduty_incident.is_none()
                        {
                            inc.pagerduty_incident = Some(signal.key.clone());
                            tx.note(
                                id,
                                Kind::PagerdutyLinked,
                                "pagerduty",
                                format!("announced on PagerDuty incident {}", signal.key),
                            );
                            self.save_incident(tx, id);
                        }
                    }
                    None => self.on_signal(tx, signal),
                }
            }
            PagerDutyInput::Vote {
                pd_incident,
                pd_user,
                vote,
                via,
                reason,
                occurred_at,
            } => {
                let Some(id) = self.index.announced_on(&pd_incident).map(str::to_string) else {
                    tx.note(
                        &format!("pagerduty:{pd_incident}"),
                        Kind::VoteIgnored,
                        pd_user.as_deref().unwrap_or("pagerduty"),
                        format!("{via} vote on PagerDuty incident {pd_incident}, which no rollbackd incident is announced on"),
                    );
                    return Reply::Ok;
                };
                let person = pd_user
                    .as_deref()
                    .and_then(|u| {
                        tx.ctx
                            .people
                            .iter()
                            .find(|p| p.pagerduty_user.as_deref() == Some(u))
                    })
                    .map(|p| p.id.clone())
                    .unwrap_or_else(|| {
                        format!("pagerduty-user:{}", pd_user.as_deref().unwrap_or("unknown"))
                    });
                let ballot = Ballot {
                    person: &person,
                    vote,
                    via: &via,
                    reason,
                };
                let opened = self.incidents.get(&id).map(|i| i.opened_at);
                // Refusals are recorded; PagerDuty itself always gets a 2xx.
                if pd_user.is_none() {
                    let why = "the event's agent is not a PagerDuty user (agent.type is not user_reference)";
                    self.refuse_vote(tx, &id, &ballot, why.to_string(), false);
                } else if let Some(why) = stale(occurred_at, opened, &id) {
                    self.refuse_vote(tx, &id, &ballot, why, false);
                } else {
                    self.on_vote(tx, &id, ballot);
                }
            }
        }
        Reply::Ok
    }

    /// Records a vote that does not count, on the incident (up to a bound) and in the timeline.
    pub(super) fn refuse_vote(
        &mut self,
        tx: &mut Tx,
        id: &str,
        b: &Ballot,
        why: String,
        conflict: bool,
    ) -> Reply {
        let verb = b.vote.verb();
        if let Some(inc) = self
            .incidents
            .get_mut(id)
            .filter(|i| i.approvals.votes.iter().filter(|v| !v.counted).count() < MAX_REFUSED_VOTES)
        {
            inc.approvals.votes.push(Vote {
                person: b.person.to_string(),
                vote: b.vote,
                at: tx.now,
                via: b.via.to_string(),
                reason: b.reason.clone(),
                counted: false,
                why_not_counted: Some(why.clone()),
            });
        }
        tx.note(
            id,
            Kind::VoteIgnored,
            b.person,
            format!("{verb} via {} not counted: {why}", b.via),
        );
        self.save_incident(tx, id);
        if conflict {
            Reply::Conflict(why)
        } else {
            Reply::Forbidden(why)
        }
    }

    pub(super) fn on_vote(&mut self, tx: &mut Tx, id: &str, b: Ballot) -> Reply {
        let Some(inc) = self.incidents.get(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let person = b.person;
        if inc.state != IncidentState::AwaitingApproval {
            let why = format!("incident {id} is {}, not awaiting approval", inc.state);
            return self.refuse_vote(tx, id, &b, why, true);
        }
        let Some(p) = tx.ctx.people.iter().find(|p| p.id == person) else {
            let why = format!("`{person}` is not listed under people");
            return self.refuse_vote(tx, id, &b, why, false);
        };
        if !p
            .roles
            .iter()
            .any(|r| inc.approvals.require_roles.contains(r))
        {
            let why = format!(
                "`{person}` holds none of the roles [{}]",
                inc.approvals.require_roles.join(", ")
            );
            return self.refuse_vote(tx, id, &b, why, false);
        }
        if inc
            .approvals
            .votes
            .iter()
            .any(|v| v.counted && v.person == person)
        {
            let why = format!("`{person}` has already voted");
            return self.refuse_vote(tx, id, &b, why, true);
        }
        let roles = p.roles.clone();
        let (verb, via, vote) = (b.vote.verb(), b.via, b.vote);
        if let Some(inc) = self.incidents.get_mut(id) {
            inc.approvals.votes.push(Vote {
                person: person.to_string(),
                vote,
                at: tx.now,
                via: via.to_string(),
                reason: b.reason.clone(),
                counted: true,
                why_not_counted: None,
            });
        }
        let because = b
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        tx.note_with(
            id,
            Kind::Vote,
            person,
            format!("{person} voted {verb} via {via}{because}"),
            serde_json::json!({ "roles": roles }),
        );
        if vote == VoteKind::Reject {
            self.transition(
                tx,
                id,
                IncidentState::Rejected,
                person,
                format!("rejected by {person}{because}"),
            );
            return Reply::Ok;
        }
        if self.approval_met(tx.ctx, id) {
            self.transition(
                tx,
                id,
                IncidentState::Approved,
                person,
                "approval policy satisfied".to_string(),
            );
            self.start_rollback(tx, id);
        } else {
            self.save_incident(tx, id);
        }
        Reply::Ok
    }

    pub(super) fn approval_met(&self, ctx: &Context, id: &str) -> bool {
        let Some(inc) = self.incidents.get(id) else {
            return false;
        };
        let approvers: Vec<&Person> = inc
            .approvals
            .votes
            .iter()
            .filter(|v| v.counted && v.vote == VoteKind::Approve)
            .filter_map(|v| ctx.people.iter().find(|p| p.id == v.person))
            .collect();
        approvers.len() >= inc.approvals.quorum
            && inc
                .approvals
                .require_roles
                .iter()
                .all(|role| approvers.iter().any(|p| p.roles.contains(role)))
    }

    pub(super) fn approval_timed_out(&mut self, tx: &mut Tx, id: &str) {
        let proceed = self
            .incidents
            .get(id)
            .is_some_and(|i| i.approvals.on_timeout == "proceed");
        if proceed {
            self.transition(
                tx,
                id,
                IncidentState::Approved,
                "rollbackd",
                "approval timed out; on_timeout: proceed".to_string(),
            );
            self.start_rollback(tx, id);
        } else {
            self.transition(
                tx,
                id,
                IncidentState::Expired,
                "rollbackd",
                "approval timed out; on_timeout: abort".to_string(),
            );
        }
    }
}
