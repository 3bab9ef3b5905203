//! Approval: votes from the API and from PagerDuty, who counts, the quorum, the deadline; PagerDuty
//! incidents linked to ours.

use super::*;

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
                // Refusals are recorded by on_vote; PagerDuty itself always gets a 2xx.
                self.on_vote(tx, &id, &person, vote, &via, reason);
            }
        }
        Reply::Ok
    }

    pub(super) fn on_vote(
        &mut self,
        tx: &mut Tx,
        id: &str,
        person: &str,
        vote: VoteKind,
        via: &str,
        reason: Option<String>,
    ) -> Reply {
        let Some(inc) = self.incidents.get(id) else {
            return Reply::NotFound(format!("no incident {id}"));
        };
        let verb = match vote {
            VoteKind::Approve => "approve",
            VoteKind::Reject => "reject",
        };
        let refuse = |me: &mut State, tx: &mut Tx, why: String, conflict: bool| {
            // Refused votes are kept on the incident up to a bound; the timeline has them all.
            if let Some(inc) = me.incidents.get_mut(id).filter(|i| {
                i.approvals.votes.iter().filter(|v| !v.counted).count() < MAX_REFUSED_VOTES
            }) {
                inc.approvals.votes.push(Vote {
                    person: person.to_string(),
                    vote,
                    at: tx.now,
                    via: via.to_string(),
                    reason: reason.clone(),
                    counted: false,
                    why_not_counted: Some(why.clone()),
                });
            }
            tx.note(
                id,
                Kind::VoteIgnored,
                person,
                format!("{verb} via {via} not counted: {why}"),
            );
            me.save_incident(tx, id);
            if conflict {
                Reply::Conflict(why)
            } else {
                Reply::Forbidden(why)
            }
        };
        if inc.state != IncidentState::AwaitingApproval {
            let why = format!("incident {id} is {}, not awaiting approval", inc.state);
            return refuse(self, tx, why, true);
        }
        let Some(p) = tx.ctx.people.iter().find(|p| p.id == person) else {
            return refuse(
                self,
                tx,
                format!("`{person}` is not listed under people"),
                false,
            );
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
            return refuse(self, tx, why, false);
        }
        if inc
            .approvals
            .votes
            .iter()
            .any(|v| v.counted && v.person == person)
        {
            return refuse(self, tx, format!("`{person}` has already voted"), true);
        }
        let roles = p.roles.clone();
        if let Some(inc) = self.incidents.get_mut(id) {
            inc.approvals.votes.push(Vote {
                person: person.to_string(),
                vote,
                at: tx.now,
                via: via.to_string(),
                reason: reason.clone(),
                counted: true,
                why_not_counted: None,
            });
        }
        let because = reason
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
