//! What the engine looks things up by, derived from its records so that no event costs a scan of
//! every breach or incident. Rebuilt from the records at load and kept current by the engine each
//! time it saves a record (every change to a breach or incident is saved, so nothing is missed).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::model::{Breach, IncidentState, IncidentSummary};

/// A breach's number: `b-000042` is 42. Open breaches are kept by it.
pub type BreachSeq = u64;

/// The number in a breach id (`b-000042`).
pub fn breach_seq(id: &str) -> Option<BreachSeq> {
    id.strip_prefix("b-")?.parse().ok()
}

/// The breach id for a number.
pub fn breach_id(seq: BreachSeq) -> String {
    format!("b-{seq:06}")
}

/// (rule, group) in 16 bytes: what the index knows every open breach by, so that memory holds
/// 16 bytes per open breach rather than its names.
fn key_hash(rule: &str, group: &str) -> u128 {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(group.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

/// A rollback that started, as the budget and the loop guard need it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollback {
    pub environment: String,
    /// The deployment it rolled back from.
    pub from: String,
    pub started_at: Timestamp,
}

#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Every open breach, by (rule, group).
    open: HashMap<u128, BreachSeq>,
    /// How many breaches each rule holds open (what `limits.max_open_breaches_per_rule` caps).
    open_per_rule: HashMap<Box<str>, usize>,
    /// Open breaches by the earliest instant they may need the engine (a deadline, or the start of
    /// a clearing window). Entries go stale when a breach changes; each is checked when it comes
    /// up, so an entry may be early or dead, never late.
    agenda: BTreeSet<(Timestamp, BreachSeq)>,
    /// Incidents awaiting approval by approval deadline (stale entries checked the same way).
    approvals: BTreeSet<(Timestamp, String)>,
    /// Active incidents per service.
    active: BTreeMap<String, BTreeSet<String>>,
    /// Rollbacks that started, per service, by incident id.
    rollbacks: BTreeMap<String, BTreeMap<String, Rollback>>,
    /// PagerDuty incident -> the newest rollbackd incident announced on it (opened_at, id).
    pd_links: BTreeMap<String, (Timestamp, String)>,
    /// Every incident's last state, and how many are in each.
    states: BTreeMap<String, IncidentState>,
    counts: BTreeMap<IncidentState, u64>,
}

impl Index {
    /// Notes a saved breach.
    pub fn breach(&mut self, b: &Breach) {
        let Some(seq) = breach_seq(&b.id) else {
            return;
        };
        let key = key_hash(&b.rule, &b.group);
        if b.closed_at.is_some() {
            if self.open.get(&key) == Some(&seq) {
                self.open.remove(&key);
                if let Some(n) = self.open_per_rule.get_mut(b.rule.as_str()) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.open_per_rule.remove(b.rule.as_str());
                    }
                }
            }
            return;
        }
        if self.open.insert(key, seq).is_none() {
            match self.open_per_rule.get_mut(b.rule.as_str()) {
                Some(n) => *n += 1,
                None => {
                    self.open_per_rule.insert(b.rule.as_str().into(), 1);
                }
            }
        }
        let at = match (b.clearing_since, &b.decision) {
            (Some(c), _) => c,
            (None, None) => b.deadline,
            (None, Some(_)) => return,
        };
        self.agenda.insert((at, seq));
    }

    /// The open breach of a rule for a group, if any.
    pub fn open_breach(&self, rule: &str, group: &str) -> Option<BreachSeq> {
        self.open.get(&key_hash(rule, group)).copied()
    }

    /// How many breaches of a rule are open.
    pub fn open_of_rule(&self, rule: &str) -> usize {
        self.open_per_rule.get(rule).copied().unwrap_or(0)
    }

    /// How many breaches are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Every open breach.
    pub fn open_breaches(&self) -> impl Iterator<Item = BreachSeq> + '_ {
        self.open.values().copied()
    }

    /// Drops every agenda entry and notes these breaches again (after a rules reload).
    pub fn reset_breaches<'a>(&mut self, breaches: impl Iterator<Item = &'a Breach>) {
        self.agenda.clear();
        breaches.for_each(|b| self.breach(b));
    }

    /// The breaches whose agenda entries have come up by `now` (some may turn out not due).
    pub fn coming_up(&self, now: Timestamp) -> impl Iterator<Item = BreachSeq> + '_ {
        self.agenda
            .range(..=(now, BreachSeq::MAX))
            .map(|(_, seq)| *seq)
    }

    /// Takes the entries that have come up by `now`. `due_at` tells a breach's real due instant
    /// under the current rules (`None`: nothing to do for it, or it is gone); those due by `now`
    /// are returned, the others go back in at their real instant.
    pub fn due_breaches(
        &mut self,
        now: Timestamp,
        due_at: impl Fn(BreachSeq) -> Option<Timestamp>,
    ) -> Vec<BreachSeq> {
        let mut due = Vec::new();
        let mut seen = BTreeSet::new();
        let mut later = Vec::new();
        while let Some(first) = self.agenda.first() {
            if first.0 > now {
                break;
            }
            let Some((_, seq)) = self.agenda.pop_first() else {
                break;
            };
            match due_at(seq) {
                Some(at) if at <= now && seen.insert(seq) => due.push(seq),
                Some(at) if at <= now => {}
                Some(at) => later.push((at, seq)),
                None => {}
            }
        }
        self.agenda.extend(later);
        due
    }

    /// Notes a saved incident.
    pub fn incident(&mut self, i: &IncidentSummary) {
        let old = self.states.insert(i.id.clone(), i.state);
        if old != Some(i.state) {
            if let Some(old) = old
                && let Some(n) = self.counts.get_mut(&old)
            {
                *n = n.saturating_sub(1);
            }
            *self.counts.entry(i.state).or_default() += 1;
        }
        let active = self.active.entry(i.service.clone()).or_default();
        if i.state.is_active() {
            active.insert(i.id.clone());
        } else {
            active.remove(&i.id);
            if active.is_empty() {
                self.active.remove(&i.service);
            }
        }
        if i.state == IncidentState::AwaitingApproval
            && let Some(d) = i.approval_deadline
        {
            self.approvals.insert((d, i.id.clone()));
        }
        if let Some(started_at) = i.rollback_started_at {
            self.rollbacks.entry(i.service.clone()).or_default().insert(
                i.id.clone(),
                Rollback {
                    environment: i.environment.clone(),
                    from: i.from.clone(),
                    started_at,
                },
            );
        }
        if let Some(pd) = &i.pagerduty_incident {
            let newer = self
                .pd_links
                .get(pd)
                .is_none_or(|(at, _)| *at <= i.opened_at);
            if newer {
                self.pd_links
                    .insert(pd.clone(), (i.opened_at, i.id.clone()));
            }
        }
    }

    /// Takes the approval entries that have come up by `now` (the caller checks each incident).
    pub fn due_approvals(&mut self, now: Timestamp) -> Vec<String> {
        let mut due = Vec::new();
        while self.approvals.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.approvals.pop_first() {
                due.push(id);
            }
        }
        due
    }

    /// The earliest instant anything indexed may need the engine.
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        let b = self.agenda.first().map(|(at, _)| *at);
        let a = self.approvals.first().map(|(at, _)| *at);
        b.into_iter().chain(a).min()
    }

    /// Ids of the active incidents of a service.
    pub fn active(&self, service: &str) -> impl Iterator<Item = &String> {
        self.active.get(service).into_iter().flatten()
    }

    /// Ids of every active incident.
    pub fn all_active(&self) -> impl Iterator<Item = &String> {
        self.active.values().flatten()
    }

    /// The rollbacks of a service that started, by incident id.
    pub fn rollbacks(&self, service: &str) -> impl Iterator<Item = (&String, &Rollback)> {
        self.rollbacks.get(service).into_iter().flatten()
    }

    /// The newest rollbackd incident announced on a PagerDuty incident.
    pub fn announced_on(&self, pd_incident: &str) -> Option<&str> {
        self.pd_links.get(pd_incident).map(|(_, id)| id.as_str())
    }

    /// How many incidents are in each state.
    pub fn count(&self, s: IncidentState) -> u64 {
        self.counts.get(&s).copied().unwrap_or(0)
    }
}
