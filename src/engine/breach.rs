//! Breaches: signals in, the group's window, its deadline agenda, clearing, and what a reload does
//! to open breaches.

use super::*;

impl State {
    pub(super) fn on_signal(&mut self, tx: &mut Tx, s: Signal) {
        let now = tx.now;
        for rule in tx
            .ctx
            .rules
            .rules
            .iter()
            .filter(|r| r.matches(s.source, &s.labels))
        {
            let (group, group_labels) = rule.group(&s.labels);
            let open = self.index.open_breach(&rule.name, &group);
            match s.status {
                SignalStatus::Firing => {
                    // A start in the future is a clock problem upstream: count from receipt.
                    let start = s.starts_at.unwrap_or(now).min(now);
                    let cap = rule.max_open.unwrap_or(tx.ctx.max_open_breaches_per_rule);
                    if open.is_none() && self.index.open_of_rule(&rule.name) >= cap {
                        // One more breach would pass the rule's cap: refused, nothing kept.
                        tx.refused.entry(rule.name.clone()).or_insert((cap, 0)).1 += 1;
                        continue;
                    }
                    let seq = match open {
                        Some(seq) => seq,
                        None => self.seq(tx),
                    };
                    if open.is_none() {
                        let id = breach_id(seq);
                        let b = Breach {
                            id: id.clone(),
                            rule: rule.name.clone(),
                            group: group.clone(),
                            group_labels: LabelSet::from(&group_labels),
                            labels: LabelSet::from(&s.labels),
                            started_at: start,
                            first_seen: now,
                            deadline: add(start, rule.sustained),
                            alerts: AlertMap::default(),
                            clearing_since: None,
                            decision: None,
                            incident: None,
                            pagerduty_incident: None,
                            closed_at: None,
                            alerts_capped_at: None,
                        };
                        tx.note(
                            &format!("breach:{id}"),
                            Kind::BreachOpened,
                            s.source.as_str(),
                            format!(
                                "breach of rule {} for {group} opened; started {start}, acts at {} if it lasts",
                                rule.name, b.deadline
                            ),
                        );
                        self.breaches.insert(seq, b);
                    }
                    let Some(b) = self.breaches.get_mut(&seq) else {
                        continue;
                    };
                    let mut changed = false;
                    if s.source == Source::Pagerduty && b.pagerduty_incident.is_none() {
                        b.pagerduty_incident = Some(s.key.clone());
                        changed = true;
                    }
                    match b.alerts.get_mut(&s.key) {
                        Some(a) if a.firing && a.starts_at <= start => {}
                        Some(a) => {
                            a.firing = true;
                            a.starts_at = a.starts_at.min(start);
                            a.resolved_at = None;
                            changed = true;
                        }
                        None => {
                            if b.alerts.len() < MAX_ALERTS_PER_BREACH
                                || b.alerts.forget_oldest_resolved()
                            {
                                b.alerts.insert(&s.key, AlertState::firing_since(start));
                                changed = true;
                            } else if b.alerts_capped_at.is_none() {
                                // Every alert it keeps fires, so the breach does: the new one
                                // adds nothing to its decision. Said once per breach.
                                b.alerts_capped_at = Some(now);
                                changed = true;
                                tx.note(
                                    &format!("breach:{}", b.id),
                                    Kind::BreachAlertsCapped,
                                    s.source.as_str(),
                                    format!(
                                        "the breach holds {MAX_ALERTS_PER_BREACH} firing alerts, the most one breach keeps; \
                                         a new alert of it counts once one of these resolves (the rule's group_by splits alerts into breaches)"
                                    ),
                                );
                            }
                        }
                    }
                    if start < b.started_at && b.decision.is_none() {
                        b.started_at = start;
                        b.deadline = add(start, rule.sustained);
                        changed = true;
                    }
                    if b.clearing_since.take().is_some() {
                        changed = true;
                        tx.out.timeline.push(TimelineEntry {
                            at: now,
                            subject: format!("breach:{}", b.id),
                            kind: Kind::BreachRefired,
                            actor: s.source.as_str().to_string(),
                            message: format!(
                                "fired again within clear_after; the breach keeps its start {}",
                                b.started_at
                            ),
                            data: serde_json::Value::Null,
                            prev_hash: None,
                            hash: None,
                        });
                    }
                    if changed {
                        Self::save_breach(&mut self.index, tx, b);
                    }
                }
                SignalStatus::Resolved => {
                    let Some(b) = open.and_then(|seq| self.breaches.get_mut(&seq)) else {
                        continue;
                    };
                    let Some(a) = b.alerts.get_mut(&s.key) else {
                        continue;
                    };
                    if !a.firing {
                        continue;
                    }
                    let at = s.ends_at.unwrap_or(now).min(now);
                    a.firing = false;
                    a.resolved_at = Some(at);
                    if !b.alerts.values().any(|a| a.firing) {
                        let since = b
                            .alerts
                            .values()
                            .filter_map(|a| a.resolved_at)
                            .max()
                            .unwrap_or(at);
                        b.clearing_since = Some(since);
                        tx.out.timeline.push(TimelineEntry {
                            at: now,
                            subject: format!("breach:{}", b.id),
                            kind: Kind::BreachResolving,
                            actor: s.source.as_str().to_string(),
                            message: format!(
                                "resolved at {since}; the breach ends at {} unless it fires again",
                                add(since, rule.clear_after)
                            ),
                            data: serde_json::Value::Null,
                            prev_hash: None,
                            hash: None,
                        });
                    }
                    Self::save_breach(&mut self.index, tx, b);
                }
            }
        }
    }

    /// Closes cleared breaches, acts on due deadlines, expires approvals.
    pub(super) fn evaluate(&mut self, tx: &mut Tx) {
        let now = tx.now;
        let forget_before = sub(now, DELIVERY_MEMORY);
        let old: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, at)| **at < forget_before)
            .take(1000)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.deliveries.remove(&id);
            tx.out.changes.push(Change::Delivery(id, None));
        }
        let rules = tx.ctx.rules;
        let breaches = &self.breaches;
        let due = self.index.due_breaches(now, |seq| {
            let b = breaches.get(&seq)?;
            let rule = rules.get(&b.rule)?;
            match b.clearing_since {
                Some(c) => Some(add(c, rule.clear_after)),
                None if b.decision.is_none() => Some(b.deadline),
                None => None,
            }
        });
        for seq in due {
            let Some(b) = self.breaches.get(&seq) else {
                continue;
            };
            let Some(rule) = tx.ctx.rules.get(&b.rule) else {
                continue;
            };
            match b.clearing_since {
                Some(c) => {
                    let ends = add(c, rule.clear_after);
                    self.close_breach(tx, seq, ends);
                }
                None => self.decide(tx, rule, seq),
            }
        }
        for id in self.index.due_approvals(now) {
            let due = self.incidents.get(&id).is_some_and(|i| {
                i.state == IncidentState::AwaitingApproval
                    && i.approvals.deadline.is_some_and(|d| now >= d)
            });
            if due {
                self.approval_timed_out(tx, &id);
            }
        }
    }

    pub(super) fn close_breach(&mut self, tx: &mut Tx, seq: BreachSeq, at: Timestamp) {
        let Some(mut b) = self.breaches.remove(&seq) else {
            return;
        };
        b.closed_at = Some(at);
        tx.note(
            &format!("breach:{}", b.id),
            Kind::BreachCleared,
            "rollbackd",
            format!("cleared: no alert fired for clear_after since {at}"),
        );
        Self::save_breach(&mut self.index, tx, &b);
        if let Some(id) = &b.incident
            && let Some(inc) = self.incidents.get(id)
            && matches!(
                inc.state,
                IncidentState::Triggered | IncidentState::AwaitingApproval
            )
        {
            let id = id.clone();
            self.transition(
                tx,
                &id,
                IncidentState::Cancelled,
                "rollbackd",
                "the breach cleared before approval; nothing to roll back".to_string(),
            );
        }
    }

    /// Breaches of rules that are gone end; incidents of theirs that have not started to roll
    /// back are cancelled. Breaches of rules that stay keep their start; one not decided yet
    /// takes the rule's new `sustained`.
    pub(super) fn on_rules_reloaded(&mut self, tx: &mut Tx) {
        // Due instants depend on the rules: note every breach again.
        self.index.reset_breaches(self.breaches.values());
        let seqs: Vec<(BreachSeq, String)> = self
            .breaches
            .iter()
            .map(|(seq, b)| (*seq, b.rule.clone()))
            .collect();
        for (seq, rule) in seqs {
            match tx.ctx.rules.get(&rule) {
                None => {
                    let Some(mut b) = self.breaches.remove(&seq) else {
                        continue;
                    };
                    b.closed_at = Some(tx.now);
                    tx.note(
                        &format!("breach:{}", b.id),
                        Kind::BreachCleared,
                        "rollbackd",
                        format!("rule {} was removed by a reload; the breach ends", b.rule),
                    );
                    Self::save_breach(&mut self.index, tx, &b);
                }
                Some(rule) => {
                    if let Some(b) = self.breaches.get_mut(&seq)
                        && b.decision.is_none()
                    {
                        let deadline = add(b.started_at, rule.sustained);
                        if deadline != b.deadline {
                            b.deadline = deadline;
                            Self::save_breach(&mut self.index, tx, b);
                        }
                    }
                }
            }
        }
        let orphans: Vec<String> = self
            .index
            .all_active()
            .filter_map(|id| self.incidents.get(id))
            .filter(|i| {
                matches!(
                    i.state,
                    IncidentState::Triggered | IncidentState::AwaitingApproval
                ) && tx.ctx.rules.get(&i.rule).is_none()
            })
            .map(|i| i.id.clone())
            .collect();
        for id in orphans {
            self.transition(
                tx,
                &id,
                IncidentState::Cancelled,
                "rollbackd",
                "its rule was removed by a reload".to_string(),
            );
        }
    }
}
