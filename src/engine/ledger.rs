//! The release ledger and freezes: releases in deployment order, a rollback's redeploy, freezing
//! and unfreezing a service.

use super::*;

impl State {
    pub(super) fn on_release(&mut self, tx: &mut Tx, mut r: Release) -> Reply {
        let frozen = self.freezes.get(&r.service).cloned();
        let ledger = self.releases.entry(r.service.clone()).or_default();
        // From CI, the same deployment at the same time is a repeat; at a later time it is a
        // redeploy (a rollback by hand, say) and a new ledger entry. A deploy tool names each
        // deployment once (GitHub's deployment id, Argo CD's history id, ...), so from a tool the
        // same deployment id is a redelivery, whatever else it says.
        let from_ci = r.origin == "ci";
        if let Some(existing) = ledger.iter().find(|x| {
            x.origin == r.origin
                && x.environment == r.environment
                && x.deployment_id == r.deployment_id
                && (!from_ci || x.deployed_at == r.deployed_at)
        }) {
            return if !from_ci || existing.version == r.version {
                Reply::Duplicate
            } else {
                Reply::Conflict(format!(
                    "deployment {} of {} at {} is already recorded as version {}",
                    r.deployment_id, r.service, existing.deployed_at, existing.version
                ))
            };
        }
        if let Some(f) = &frozen {
            r.posted_during_freeze = Some(f.reason.clone());
            tx.note(
                &format!("freeze:{}", r.service),
                Kind::ReleaseDuringFreeze,
                &r.origin,
                format!(
                    "release {} ({}) of {} posted while the service is frozen ({})",
                    r.version, r.deployment_id, r.service, f.reason
                ),
            );
        }
        self.insert_release(tx, r);
        Reply::Release { frozen }
    }

    pub(super) fn insert_release(&mut self, tx: &mut Tx, r: Release) {
        let ledger = self.releases.entry(r.service.clone()).or_default();
        // Ordered by deployed_at, not arrival; equal times keep arrival order.
        let pos = ledger.partition_point(|x| x.deployed_at <= r.deployed_at);
        ledger.insert(pos, r.clone());
        tx.out.changes.push(Change::Release(Box::new(r)));
    }

    pub(super) fn freeze(
        &mut self,
        tx: &mut Tx,
        service: &str,
        reason: String,
        incident: Option<String>,
        by: &str,
    ) -> Reply {
        let f = Freeze {
            service: service.to_string(),
            reason: reason.clone(),
            incident: incident.clone(),
            since: tx.now,
            by: by.to_string(),
        };
        self.freezes.insert(service.to_string(), f.clone());
        tx.out
            .changes
            .push(Change::Freeze(service.to_string(), Some(f)));
        let subject = incident.unwrap_or_else(|| format!("freeze:{service}"));
        tx.note(
            &subject,
            Kind::Frozen,
            by,
            format!("releases of {service} frozen: {reason}"),
        );
        Reply::Ok
    }

    /// The incident's first rollback step started: freeze the service's releases for it. A
    /// service frozen by hand is now held for this incident too, so lifting that freeze runs its
    /// `on_unfreeze` steps; a service another incident froze keeps that incident's freeze.
    pub(super) fn hold_freeze(&mut self, tx: &mut Tx, service: &str, id: &str) {
        let waits = self
            .incidents
            .get(id)
            .is_some_and(|i| !i.on_unfreeze.is_empty());
        let Some(f) = self.freezes.get_mut(service) else {
            self.freeze(
                tx,
                service,
                format!("rollback by incident {id} started"),
                Some(id.to_string()),
                "rollbackd",
            );
            return;
        };
        if !waits {
            return;
        }
        match f.incident.clone() {
            None => {
                f.incident = Some(id.to_string());
                let f = f.clone();
                tx.out
                    .changes
                    .push(Change::Freeze(service.to_string(), Some(f.clone())));
                tx.note(
                    id,
                    Kind::Frozen,
                    "rollbackd",
                    format!(
                        "releases of {service} were already frozen ({}); lifting that freeze now also runs this incident's on_unfreeze steps",
                        f.reason
                    ),
                );
            }
            Some(other) if other != id => tx.note(
                id,
                Kind::Frozen,
                "rollbackd",
                format!(
                    "releases of {service} were already frozen by incident {other}: lifting that freeze runs {other}'s on_unfreeze steps, not this incident's; a human must run these"
                ),
            ),
            Some(_) => {}
        }
    }

    pub(super) fn on_unfreeze(
        &mut self,
        tx: &mut Tx,
        service: &str,
        reason: String,
        by: &str,
    ) -> Reply {
        let Some(f) = self.freezes.remove(service) else {
            return Reply::NotFound(format!("service {service} is not frozen"));
        };
        tx.out
            .changes
            .push(Change::Freeze(service.to_string(), None));
        let message = format!("releases of {service} unfrozen by {by}: {reason}");
        let (steps, running) = match &f.incident {
            Some(id) => {
                tx.note(id, Kind::Unfrozen, by, message.clone());
                self.announce(tx, id, Announcement::FreezeLifted, message);
                self.unfrozen(tx, id)
            }
            None => {
                tx.note(&format!("freeze:{service}"), Kind::Unfrozen, by, message);
                (0, false)
            }
        };
        Reply::Unfrozen {
            incident: f.incident,
            steps,
            running,
        }
    }

    /// The freeze incident `id` set was lifted: its `on_unfreeze` steps run now, or when the
    /// incident ends if it has not yet. How many there are, and whether they run now.
    fn unfrozen(&mut self, tx: &mut Tx, id: &str) -> (usize, bool) {
        let Some(inc) = self.incidents.get_mut(id) else {
            return (0, false);
        };
        let steps = inc.on_unfreeze.len();
        if steps == 0 || inc.unfrozen_at.is_some() {
            return (0, false);
        }
        inc.unfrozen_at = Some(tx.now);
        let running = !inc.state.is_active();
        if !running {
            let state = inc.state;
            tx.note(
                id,
                Kind::Unfrozen,
                "rollbackd",
                format!("the on_unfreeze steps run once the incident ends (it is {state})"),
            );
            self.save_incident(tx, id);
        } else {
            self.save_incident(tx, id);
            self.start_unfreeze(tx, id);
        }
        (steps, running)
    }
}
