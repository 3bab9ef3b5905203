//! The release ledger and freezes: releases in deployment order, a rollback's redeploy, freezing
//! and unfreezing a service.

use super::*;

impl State {
    pub(super) fn on_release(&mut self, tx: &mut Tx, mut r: Release) -> Reply {
        let frozen = self.freezes.get(&r.service).cloned();
        let ledger = self.releases.entry(r.service.clone()).or_default();
        // The same deployment at the same time is a repeat; at a later time it is a redeploy
        // (a rollback by hand, say) and a new ledger entry.
        if let Some(existing) = ledger.iter().find(|x| {
            x.environment == r.environment
                && x.deployment_id == r.deployment_id
                && x.deployed_at == r.deployed_at
                && x.origin == "ci"
        }) {
            return if existing.version == r.version {
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
                "ci",
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
        match &f.incident {
            Some(id) => {
                tx.note(id, Kind::Unfrozen, by, message.clone());
                self.announce(tx, id, Announcement::FreezeLifted, message);
            }
            None => tx.note(&format!("freeze:{service}"), Kind::Unfrozen, by, message),
        }
        Reply::Ok
    }
}
