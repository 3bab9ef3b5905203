//! Engine tests on a manual clock: time is a value, nothing sleeps.

use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;

use super::journal::backoff;
use super::*;
use crate::config::Person;
use crate::pump::{self, Memory, Pump};
use crate::rules::{self, RuleSet};

const T0: &str = "2026-11-24T10:00:00Z";

fn t(offset_secs: f64) -> Timestamp {
    let base: Timestamp = T0.parse().unwrap();
    base.checked_add(jiff::SignedDuration::from_secs_f64(offset_secs))
        .unwrap()
}

fn ruleset(yaml: &str) -> RuleSet {
    let ctx = rules::Context {
        people: Some(
            people()
                .into_iter()
                .map(|p| (p.id, p.roles.into_iter().collect()))
                .collect(),
        ),
        notifiers: Default::default(),
    };
    let (set, problems) = rules::load_str("test.yaml", yaml, &ctx);
    set.unwrap_or_else(|| panic!("rules do not load: {problems:?}"))
}

fn people() -> Vec<Person> {
    vec![
        Person {
            id: "ada".into(),
            name: "Ada".into(),
            pagerduty_user: None,
            token: None,
            roles: vec!["founder".into()],
        },
        Person {
            id: "cy".into(),
            name: "Cy".into(),
            pagerduty_user: None,
            token: None,
            roles: vec!["client-success-lead".into()],
        },
        Person {
            id: "eve".into(),
            name: "Eve".into(),
            pagerduty_user: None,
            token: None,
            roles: vec!["intern".into()],
        },
    ]
}

/// A rule in the contract's shape with the knobs tests turn.
fn rule(name: &str, extra: &str) -> String {
    format!(
        r#"
  - name: {name}
    match: ['alertname="HighErrorRate"']
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach: {{ sustained: 10m, clear_after: 2m }}
    release: {{ max_age: 2h }}
    approval: none
    steps:
      - name: roll back
        run: [rollback, "{{{{ service }}}}", "{{{{ release.previous.deployment_id }}}}"]
        idempotent: true
      - name: purge
        run: [purge, "{{{{ labels.region }}}}"]
{extra}"#
    )
}

struct World {
    pump: Pump,
    rules: RuleSet,
    people: Vec<Person>,
    dry_run: bool,
    /// Everything the engine asked for, in order.
    effects: Vec<Effect>,
    timeline: Vec<TimelineEntry>,
    /// When set, events go through the pump the daemon and replay use: finished incidents
    /// and every breach are let go of after each event and read back from here when an event
    /// needs them.
    disk: Option<Memory>,
    /// `limits.max_open_breaches_per_rule`.
    cap: usize,
    /// What the preflight of every incident that opens finds missing.
    missing: Vec<String>,
    /// False: preflights are left unanswered (kept in `effects`), as after a crash.
    answer_preflight: bool,
}

impl World {
    fn new(rules_yaml: &str) -> World {
        World {
            pump: Pump::new(State::default()),
            rules: ruleset(&format!("rules:{rules_yaml}")),
            people: people(),
            dry_run: false,
            effects: Vec::new(),
            timeline: Vec::new(),
            disk: None,
            cap: 10_000,
            missing: Vec::new(),
            answer_preflight: true,
        }
    }

    fn send(&mut self, ev: Event, now: Timestamp) -> Reply {
        let ctx = Context {
            rules: &self.rules,
            people: &self.people,
            dry_run: self.dry_run,
            pagerduty: false,
            max_open_breaches_per_rule: self.cap,
            fencing_token: 7,
        };
        let out = match &mut self.disk {
            Some(disk) => {
                let handled = self
                    .pump
                    .handle(&*disk, &ctx, pump::Input::Event(ev), now)
                    .expect("memory reads back");
                let loaded = handled.loaded;
                let mut out = handled.out;
                let changes = std::mem::take(&mut out.changes);
                self.pump.let_go(&changes, [loaded]);
                out.changes = changes.clone();
                disk.commit(changes);
                out
            }
            None => self.pump.state.handle(&ctx, ev, now),
        };
        self.timeline.extend(out.timeline);
        // The preflight answers at once, as the executor would: with `missing`.
        let mut preflights = Vec::new();
        for e in out.effects {
            match e {
                Effect::Preflight { incident } if self.answer_preflight => {
                    preflights.push(incident)
                }
                other => self.effects.push(other),
            }
        }
        for incident in preflights {
            let missing = self.missing.clone();
            self.send(Event::PreflightResult { incident, missing }, now);
        }
        out.reply
    }

    fn release(&mut self, service: &str, id: &str, at: Timestamp, now: Timestamp) -> Reply {
        self.send(
            Event::Release(Box::new(Release {
                service: service.into(),
                environment: "production".into(),
                version: format!("v-{id}"),
                deployment_id: id.into(),
                revision: None,
                deployed_at: at,
                received_at: now,
                origin: "ci".into(),
                incident: None,
                posted_during_freeze: None,
            })),
            now,
        )
    }

    fn alert(
        &mut self,
        service: &str,
        key: &str,
        firing: bool,
        at: Timestamp,
        now: Timestamp,
    ) -> Reply {
        let labels: Labels = [
            ("alertname", "HighErrorRate"),
            ("service", service),
            ("region", "eu-west-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        self.send(
            Event::Signals(vec![Signal {
                source: Source::Alertmanager,
                key: key.into(),
                labels,
                status: if firing {
                    SignalStatus::Firing
                } else {
                    SignalStatus::Resolved
                },
                starts_at: firing.then_some(at),
                ends_at: (!firing).then_some(at),
            }]),
            now,
        )
    }

    fn tick(&mut self, now: Timestamp) {
        self.send(Event::Tick, now);
    }

    /// Ticks at every wakeup up to and including `until`, as the driver does.
    fn run_until(&mut self, until: Timestamp) {
        while let Some(w) = self.pump.state.next_wakeup() {
            if w > until {
                break;
            }
            self.tick(w);
        }
    }

    fn incidents(&self) -> Vec<&Incident> {
        match &self.disk {
            Some(disk) => disk.incidents().collect(),
            None => self.pump.state.incidents.values().collect(),
        }
    }

    fn only_incident(&self) -> &Incident {
        let all = self.incidents();
        assert_eq!(all.len(), 1, "expected one incident, got {all:#?}");
        all[0]
    }

    fn breach(&self, service: &str) -> Option<&Breach> {
        let breaches: Vec<&Breach> = match &self.disk {
            Some(disk) => disk.breaches().collect(),
            None => self.pump.state.breaches.values().collect(),
        };
        breaches
            .into_iter()
            .filter(|b| b.closed_at.is_none())
            .find(|b| b.group_labels.get("service") == Some(service))
    }

    /// Performs pending RunStep effects with the given outcome, as the executor would.
    fn run_steps(&mut self, ok: impl Fn(&str) -> bool, now: Timestamp) {
        while let Some(pos) = self
            .effects
            .iter()
            .position(|e| matches!(e, Effect::RunStep { .. }))
        {
            let Effect::RunStep {
                incident,
                phase,
                index,
                attempt,
                ..
            } = self.effects.remove(pos)
            else {
                unreachable!()
            };
            let go = self.send(
                Event::StepStarting {
                    incident: incident.clone(),
                    phase,
                    index,
                    attempt,
                },
                now,
            );
            if go != Reply::Go(true) {
                continue;
            }
            let name = self.pump.state.incidents[&incident].journal(phase)[index]
                .name
                .clone();
            let success = ok(&name);
            self.send(
                Event::StepFinished {
                    incident,
                    phase,
                    index,
                    attempt,
                    result: StepResult {
                        ok: success,
                        exit_code: Some(if success { 0 } else { 1 }),
                        output: String::new(),
                        error: (!success).then(|| "exited with status 1".into()),
                        duration_ms: 5,
                        permanent: false,
                    },
                },
                now,
            );
        }
    }

    /// What a restarted process would do from the current records.
    fn recovered(&self, now: Timestamp) -> (State, Output) {
        let ctx = Context {
            rules: &self.rules,
            people: &self.people,
            dry_run: false,
            pagerduty: false,
            max_open_breaches_per_rule: 10_000,
            fencing_token: 7,
        };
        let mut st = self.pump.state.clone();
        let out = st.recover(&ctx, now);
        (st, out)
    }

    fn reasons(&self) -> Vec<String> {
        self.timeline
            .iter()
            .filter(|e| e.kind == Kind::NotActing)
            .map(|e| e.message.clone())
            .collect()
    }
}

/// Two releases of `web`: dpl-a 60 min before T0, dpl-b 30 min before.
fn with_releases(w: &mut World) {
    w.release("web", "dpl-a", t(-3600.0), t(-3600.0));
    w.release("web", "dpl-b", t(-1800.0), t(-1800.0));
}

#[test]
fn a_rule_at_its_open_breach_cap_refuses_new_breaches_only() {
    let mut w = World::new(&rule("r", ""));
    w.disk = Some(Memory::default());
    w.cap = 2;
    assert_eq!(w.alert("web", "f1", true, t(0.0), t(1.0)), Reply::Ok);
    assert_eq!(w.alert("shop", "f2", true, t(0.0), t(1.0)), Reply::Ok);
    let refused = Reply::Refused(vec![Refusal {
        rule: "r".into(),
        cap: 2,
        signals: 1,
    }]);
    assert_eq!(w.alert("pay", "f3", true, t(0.0), t(2.0)), refused);
    assert_eq!(w.pump.state.index.open_count(), 2);
    assert!(
        !w.timeline.iter().any(|e| e.message.contains("pay")),
        "a refused signal leaves no trace in the records"
    );
    // Alerts of open breaches, and resolves, are never refused.
    assert_eq!(w.alert("web", "f1", true, t(0.0), t(3.0)), Reply::Ok);
    assert_eq!(w.alert("web", "f4", true, t(0.0), t(3.0)), Reply::Ok);
    assert_eq!(w.alert("pay", "f3", false, t(3.0), t(3.0)), Reply::Ok);
    assert_eq!(w.alert("shop", "f2", false, t(3.0), t(3.0)), Reply::Ok);
    // Once shop's breach has cleared, pay may open one.
    w.run_until(t(200.0));
    assert_eq!(w.pump.state.index.open_of_rule("r"), 1);
    assert_eq!(w.alert("pay", "f3", true, t(200.0), t(200.0)), Reply::Ok);
    assert_eq!(w.pump.state.index.open_of_rule("r"), 2);
}

#[test]
fn an_event_holds_one_copy_of_each_breach_it_changes() {
    let mut w = World::new(&rule("r", ""));
    let signals: Vec<Signal> = (0..50)
        .map(|i| Signal {
            source: Source::Alertmanager,
            key: format!("f{i}"),
            labels: [("alertname", "HighErrorRate"), ("service", "web")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: SignalStatus::Firing,
            starts_at: Some(t(100.0 - i as f64)),
            ends_at: None,
        })
        .collect();
    let ctx = Context {
        rules: &w.rules,
        people: &w.people,
        dry_run: false,
        pagerduty: false,
        max_open_breaches_per_rule: 10,
        fencing_token: 7,
    };
    let out = w.pump.state.handle(&ctx, Event::Signals(signals), t(100.0));
    let copies: Vec<&Breach> = out
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Breach(b) => Some(&**b),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 1, "one copy, the last");
    assert_eq!(copies[0].alerts.len(), 50);
    assert_eq!(copies[0].started_at, t(51.0));
}

#[test]
fn a_breach_keeps_at_most_max_alerts_and_says_so_once() {
    let mut w = World::new(&rule("r", ""));
    let n = MAX_ALERTS_PER_BREACH;
    for i in 0..n {
        assert_eq!(
            w.alert("web", &format!("f{i}"), true, t(0.0), t(1.0)),
            Reply::Ok
        );
    }
    let capped = |w: &World| {
        w.timeline
            .iter()
            .filter(|e| e.kind == Kind::BreachAlertsCapped)
            .count()
    };
    assert_eq!(capped(&w), 0, "at the cap, nothing refused yet");
    // Every tracked alert fires: new ones are not kept, and the breach says so once.
    for i in n..n + 3 {
        assert_eq!(
            w.alert("web", &format!("f{i}"), true, t(2.0), t(2.0)),
            Reply::Ok
        );
    }
    let b = w.breach("web").expect("breach");
    assert_eq!(b.alerts.len(), n);
    assert_eq!(b.alerts_capped_at, Some(t(2.0)));
    assert_eq!(b.deadline, t(600.0), "the breach's window is untouched");
    assert_eq!(capped(&w), 1);
    // A resolved alert makes room: the one that resolved first goes.
    w.alert("web", "f7", false, t(3.0), t(3.0));
    w.alert("web", "f3", false, t(4.0), t(4.0));
    w.alert("web", &format!("f{n}"), true, t(5.0), t(5.0));
    let b = w.breach("web").expect("breach");
    let keys: Vec<&str> = b.alerts.iter().map(|(k, _)| k).collect();
    assert_eq!(b.alerts.len(), n);
    assert!(!keys.contains(&"f7"), "the first to resolve is forgotten");
    assert!(keys.contains(&"f3") && keys.contains(&format!("f{n}").as_str()));
    assert!(b.firing());
    assert_eq!(capped(&w), 1, "said once per breach");
}

#[test]
fn reply_merge_adds_refusals_per_rule() {
    let r = |rule: &str, n| Refusal {
        rule: rule.into(),
        cap: 3,
        signals: n,
    };
    let mut all = Reply::Ok;
    all.merge(Reply::Ok);
    assert_eq!(all, Reply::Ok);
    all.merge(Reply::Refused(vec![r("a", 2)]));
    all.merge(Reply::Ok);
    all.merge(Reply::Refused(vec![r("b", 1), r("a", 3)]));
    assert_eq!(all, Reply::Refused(vec![r("a", 5), r("b", 1)]));
}

#[test]
fn acts_exactly_at_start_plus_sustained() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.5));
    assert_eq!(w.pump.state.next_wakeup(), Some(t(600.0)));
    w.tick(t(599.999));
    assert!(w.incidents().is_empty(), "must not act before the deadline");
    w.tick(t(600.0));
    let inc = w.only_incident();
    assert_eq!(inc.opened_at, t(600.0));
    assert_eq!(inc.deadline, t(600.0));
    assert_eq!(inc.breach_started_at, t(0.0));
    assert_eq!(inc.release_from.deployment_id, "dpl-b");
    assert_eq!(inc.release_to.deployment_id, "dpl-a");
    assert_eq!(inc.state, IncidentState::RollingBack);
    assert_eq!(inc.steps[0].plan.argv, ["rollback", "web", "dpl-a"]);
    assert_eq!(inc.steps[0].state, StepState::Intended);
    assert_eq!(
        w.effects,
        [Effect::RunStep {
            incident: inc.id.clone(),
            phase: Phase::Rollback,
            index: 0,
            attempt: 1,
            delay: Duration::ZERO
        }]
    );
}

#[test]
fn start_is_first_seen_without_starts_at_and_never_in_the_future() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.send(
        Event::Signals(vec![Signal {
            source: Source::Signal,
            key: "k".into(),
            labels: [("alertname", "HighErrorRate"), ("service", "web")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: SignalStatus::Firing,
            starts_at: None,
            ends_at: None,
        }]),
        t(5.0),
    );
    assert_eq!(w.breach("web").unwrap().started_at, t(5.0));
    // A start claimed in the future counts from receipt.
    w.alert("web", "k2", true, t(9999.0), t(6.0));
    assert_eq!(w.breach("web").unwrap().started_at, t(5.0));
    // An earlier start moves the breach back.
    w.alert("web", "k3", true, t(-10.0), t(7.0));
    assert_eq!(w.breach("web").unwrap().started_at, t(-10.0));
    assert_eq!(w.breach("web").unwrap().deadline, t(590.0));
}

#[test]
fn flap_inside_clear_after_keeps_the_start() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.alert("web", "f1", false, t(180.0), t(180.0));
    w.run_until(t(299.0));
    assert!(w.breach("web").is_some(), "still inside clear_after");
    w.alert("web", "f1", true, t(290.0), t(299.0));
    assert_eq!(w.breach("web").unwrap().started_at, t(0.0));
    w.run_until(t(700.0));
    assert_eq!(w.only_incident().opened_at, t(600.0));
}

#[test]
fn a_resolve_that_holds_ends_the_breach_and_a_new_breach_starts_fresh() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.alert("web", "f1", false, t(100.0), t(100.0));
    assert_eq!(w.pump.state.next_wakeup(), Some(t(220.0)));
    w.run_until(t(220.0));
    assert!(w.breach("web").is_none());
    w.alert("web", "f1", true, t(300.0), t(300.0));
    assert_eq!(w.breach("web").unwrap().started_at, t(300.0));
    w.run_until(t(2000.0));
    assert_eq!(w.only_incident().opened_at, t(900.0));
}

#[test]
fn deadline_during_clear_after_waits_then_refire_acts_at_once() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.alert("web", "f1", false, t(550.0), t(550.0));
    w.run_until(t(660.0));
    assert!(w.incidents().is_empty(), "resolving at the deadline: wait");
    w.alert("web", "f1", true, t(665.0), t(665.0));
    assert_eq!(w.only_incident().opened_at, t(665.0));
    assert_eq!(w.only_incident().breach_started_at, t(0.0));
}

#[test]
fn deadline_during_clear_after_then_clear_never_acts() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.alert("web", "f1", false, t(550.0), t(550.0));
    w.run_until(t(5000.0));
    assert!(w.incidents().is_empty());
    assert!(w.breach("web").is_none());
}

#[test]
fn group_fires_while_any_alert_fires() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "a", true, t(0.0), t(0.0));
    w.alert("web", "b", true, t(10.0), t(10.0));
    w.alert("web", "a", false, t(20.0), t(20.0));
    w.run_until(t(599.0));
    assert!(w.breach("web").unwrap().firing());
    w.run_until(t(600.0));
    assert_eq!(w.only_incident().opened_at, t(600.0));
}

#[test]
fn old_starts_at_decides_at_once() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(-700.0), t(0.0));
    assert_eq!(w.only_incident().opened_at, t(0.0));
}

#[test]
fn identical_repeats_change_nothing() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(1.0));
    let ctx = Context {
        rules: &w.rules,
        people: &w.people,
        dry_run: false,
        pagerduty: false,
        max_open_breaches_per_rule: 10_000,
        fencing_token: 7,
    };
    let labels: Labels = [
        ("alertname", "HighErrorRate"),
        ("service", "web"),
        ("region", "eu-west-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = w.pump.state.handle(
        &ctx,
        Event::Signals(vec![Signal {
            source: Source::Alertmanager,
            key: "f1".into(),
            labels,
            status: SignalStatus::Firing,
            starts_at: Some(t(0.0)),
            ends_at: None,
        }]),
        t(2.0),
    );
    assert!(out.changes.is_empty() && out.timeline.is_empty(), "{out:?}");
}

#[test]
fn no_act_without_correlated_release() {
    // No release at all.
    let mut w = World::new(&rule("r", ""));
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert!(w.incidents().is_empty());
    assert!(w.reasons()[0].contains("no release"), "{:?}", w.reasons());
    assert!(
        w.breach("web")
            .unwrap()
            .decision
            .as_ref()
            .is_some_and(|d| !d.acted)
    );

    // Only one release: nothing to go back to.
    let mut w = World::new(&rule("r", ""));
    w.release("web", "dpl-a", t(-60.0), t(-60.0));
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert!(w.incidents().is_empty());
    assert!(w.reasons()[0].contains("nothing to roll back to"));

    // A release after the breach began: a fix-forward.
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.release("web", "dpl-c", t(300.0), t(300.0));
    w.run_until(t(700.0));
    assert!(w.incidents().is_empty());
    assert!(w.reasons()[0].contains("fix-forward"));

    // The release is older than max_age when the breach begins.
    let mut w = World::new(&rule("r", ""));
    w.release("web", "dpl-a", t(-20000.0), t(-20000.0));
    w.release("web", "dpl-b", t(-10000.0), t(-10000.0));
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert!(w.incidents().is_empty());
    assert!(w.reasons()[0].contains("max_age"));
}

#[test]
fn ledger_is_ordered_by_deployed_at_not_arrival() {
    let mut w = World::new(&rule("r", ""));
    w.release("web", "dpl-b", t(-1800.0), t(-10.0));
    w.release("web", "dpl-a", t(-3600.0), t(-5.0));
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert_eq!(w.only_incident().release_to.deployment_id, "dpl-a");
    assert_eq!(w.only_incident().release_from.deployment_id, "dpl-b");
    // Re-posting is idempotent; the same deployment at a later time is a redeploy.
    assert_eq!(
        w.release("web", "dpl-a", t(-3600.0), t(800.0)),
        Reply::Duplicate
    );
    assert!(matches!(
        w.release("web", "dpl-a", t(700.0), t(800.0)),
        Reply::Release { .. }
    ));
    assert_eq!(w.pump.state.releases["web"].len(), 3);
}

#[test]
fn environment_scopes_the_ledger() {
    let mut w = World::new(&rule("r", "    environment: production\n"));
    w.release("web", "stg-1", t(-100.0), t(-100.0));
    if let Some(l) = w.pump.state.releases.get_mut("web") {
        l[0].environment = "staging".into();
    }
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert_eq!(w.only_incident().release_to.deployment_id, "dpl-a");
}

#[test]
fn steps_run_in_order_then_rolled_back_and_ledger_updated() {
    let mut w = World::new(&rule("r", "    freeze: true\n"));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    assert!(
        w.pump.state.freezes.is_empty(),
        "freeze starts with the first step"
    );
    w.run_steps(|_| true, t(601.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::RolledBack);
    assert!(
        inc.steps
            .iter()
            .all(|s| s.state == StepState::Done && s.attempts == 1)
    );
    assert_eq!(inc.steps[1].plan.argv, ["purge", "eu-west-1"]);
    let f = &w.pump.state.freezes["web"];
    assert_eq!(f.incident.as_deref(), Some(inc.id.as_str()));
    let latest = w.pump.state.releases["web"].last().unwrap();
    assert_eq!(
        (latest.deployment_id.as_str(), latest.origin.as_str()),
        ("dpl-a", "rollback")
    );
    // A release during the freeze is recorded and flagged.
    match w.release("web", "dpl-c", t(700.0), t(700.0)) {
        Reply::Release { frozen: Some(_) } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        w.pump.state.releases["web"]
            .last()
            .unwrap()
            .posted_during_freeze
            .is_some()
    );
}

/// `rule` whose first step may be retried twice, at its deadline with a step to run.
fn retrying_at_deadline() -> World {
    let mut w = World::new(&rule("r", "").replace(
        "        idempotent: true",
        "        idempotent: true\n        retries: 2",
    ));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    w
}

#[test]
fn step_retries_with_backoff_then_fails_the_incident() {
    let mut w = retrying_at_deadline();
    w.run_steps(|name| name != "roll back", t(601.0));
    let inc = w.only_incident();
    assert_eq!(inc.steps[0].attempts, 3);
    assert_eq!(inc.steps[0].state, StepState::Failed);
    assert_eq!(
        inc.steps[1].state,
        StepState::Pending,
        "never started after a failure"
    );
    assert_eq!(inc.state, IncidentState::RollbackFailed);
    let retries: Vec<&TimelineEntry> = w
        .timeline
        .iter()
        .filter(|e| e.kind == Kind::StepRetry)
        .collect();
    assert_eq!(retries.len(), 2);
}

#[test]
fn an_unanswered_preflight_is_asked_again_after_a_restart() {
    let mut w = World::new(&rule("r", ""));
    w.answer_preflight = false;
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    assert_eq!(w.only_incident().state, IncidentState::Triggered);
    let id = w.only_incident().id.clone();
    assert_eq!(
        w.effects,
        [Effect::Preflight {
            incident: id.clone()
        }]
    );
    let (_, out) = w.recovered(t(700.0));
    assert_eq!(out.effects, [Effect::Preflight { incident: id }]);
}

#[test]
fn a_step_whose_secret_does_not_resolve_is_not_retried() {
    let mut w = retrying_at_deadline();
    let Some(Effect::RunStep {
        incident, index, ..
    }) = w.effects.pop()
    else {
        panic!("a step to run: {:?}", w.effects);
    };
    let go = w.send(
        Event::StepStarting {
            incident: incident.clone(),
            phase: Phase::Rollback,
            index,
            attempt: 1,
        },
        t(601.0),
    );
    assert_eq!(go, Reply::Go(true));
    w.send(
        Event::StepFinished {
            incident,
            phase: Phase::Rollback,
            index,
            attempt: 1,
            result: StepResult {
                ok: false,
                exit_code: None,
                output: String::new(),
                error: Some("env T: environment variable `X` is not set".into()),
                duration_ms: 0,
                permanent: true,
            },
        },
        t(601.0),
    );
    let inc = w.only_incident();
    assert_eq!(inc.steps[0].attempts, 1);
    assert_eq!(inc.state, IncidentState::RollbackFailed);
    assert!(w.effects.is_empty(), "{:?}", w.effects);
}

#[test]
fn continue_on_failure_goes_on() {
    let mut w = World::new(&rule("r", "").replace(
        "        idempotent: true",
        "        idempotent: true\n        continue_on_failure: true",
    ));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    w.run_steps(|name| name != "roll back", t(601.0));
    let inc = w.only_incident();
    assert_eq!(inc.steps[0].state, StepState::Failed);
    assert_eq!(inc.steps[1].state, StepState::Done);
    assert_eq!(inc.state, IncidentState::RolledBack);
}

#[test]
fn unsafe_label_value_fails_the_step_without_running_it() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    let labels: Labels = [
        ("alertname", "HighErrorRate"),
        ("service", "web"),
        ("region", "eu; rm -rf /"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    w.send(
        Event::Signals(vec![Signal {
            source: Source::Alertmanager,
            key: "k".into(),
            labels,
            status: SignalStatus::Firing,
            starts_at: Some(t(0.0)),
            ends_at: None,
        }]),
        t(0.0),
    );
    w.run_until(t(600.0));
    w.run_steps(|_| true, t(601.0));
    let inc = w.only_incident();
    assert_eq!(inc.steps[0].state, StepState::Done);
    assert_eq!(inc.steps[1].state, StepState::Failed);
    assert_eq!(inc.steps[1].attempts, 0, "never started");
    assert!(inc.steps[1].error.as_deref().unwrap().contains("refusing"));
    assert_eq!(inc.state, IncidentState::RollbackFailed);
}

#[test]
fn unsafe_service_label_never_opens_an_incident() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web/../x y", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert!(w.incidents().is_empty());
    assert!(w.reasons()[0].contains("cannot tell the service"));
}

#[test]
fn recovery_never_runs_a_non_idempotent_step_twice() {
    let yaml = rule("r", "").replace("        idempotent: true\n", "");
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let id = w.only_incident().id.clone();
    assert_eq!(
        w.send(
            Event::StepStarting {
                incident: id.clone(),
                phase: Phase::Rollback,
                index: 0,
                attempt: 1
            },
            t(601.0)
        ),
        Reply::Go(true)
    );
    // The process dies here; a new one recovers from the same records.
    let (mut st, out) = w.recovered(t(700.0));
    assert!(out.effects.is_empty(), "{:?}", out.effects);
    assert_eq!(st.incidents[&id].state, IncidentState::RollbackFailed);
    assert!(
        st.incidents[&id]
            .reason
            .as_deref()
            .unwrap()
            .contains("step state unknown, needs a human")
    );
    // A stale StepStarting for the old attempt is refused.
    let ctx = Context {
        rules: &w.rules,
        people: &w.people,
        dry_run: false,
        pagerduty: false,
        max_open_breaches_per_rule: 10_000,
        fencing_token: 7,
    };
    let out = st.handle(
        &ctx,
        Event::StepStarting {
            incident: id.clone(),
            phase: Phase::Rollback,
            index: 0,
            attempt: 1,
        },
        t(701.0),
    );
    assert_eq!(out.reply, Reply::Go(false));
}

#[test]
fn recovery_reruns_idempotent_and_intended_steps() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let id = w.only_incident().id.clone();
    // Intended but never started: runs after recovery with the same attempt number.
    let (_, out) = w.recovered(t(700.0));
    assert!(matches!(
        out.effects[..],
        [Effect::RunStep {
            index: 0,
            attempt: 1,
            ..
        }]
    ));
    // Started and idempotent: runs again as attempt 2.
    w.send(
        Event::StepStarting {
            incident: id.clone(),
            phase: Phase::Rollback,
            index: 0,
            attempt: 1,
        },
        t(601.0),
    );
    let (st, out) = w.recovered(t(700.0));
    assert!(matches!(
        out.effects[..],
        [Effect::RunStep {
            index: 0,
            attempt: 2,
            ..
        }]
    ));
    assert_eq!(st.incidents[&id].state, IncidentState::RollingBack);
}

const APPROVAL: &str = "    approval:\n      require_roles: [founder, client-success-lead]\n      quorum: 2\n      timeout: 5m\n";

fn approval_world(extra: &str) -> (World, String) {
    let yaml = rule("r", extra).replace("    approval: none\n", APPROVAL);
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::AwaitingApproval);
    assert_eq!(inc.approvals.deadline, Some(t(900.0)));
    assert!(w.effects.is_empty(), "nothing runs before approval");
    let id = inc.id.clone();
    (w, id)
}

fn vote(w: &mut World, id: &str, person: &str, v: VoteKind, now: f64) -> Reply {
    w.send(
        Event::Vote {
            incident: id.into(),
            person: person.into(),
            vote: v,
            via: "break-glass".into(),
            reason: Some("test".into()),
        },
        t(now),
    )
}

#[test]
fn approval_needs_every_role_and_quorum() {
    let (mut w, id) = approval_world("");
    assert!(matches!(
        vote(&mut w, &id, "eve", VoteKind::Approve, 610.0),
        Reply::Forbidden(_)
    ));
    assert!(matches!(
        vote(&mut w, &id, "mallory", VoteKind::Approve, 611.0),
        Reply::Forbidden(_)
    ));
    assert_eq!(
        vote(&mut w, &id, "ada", VoteKind::Approve, 612.0),
        Reply::Ok
    );
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::AwaitingApproval
    );
    assert!(matches!(
        vote(&mut w, &id, "ada", VoteKind::Approve, 613.0),
        Reply::Conflict(_)
    ));
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::AwaitingApproval
    );
    assert_eq!(vote(&mut w, &id, "cy", VoteKind::Approve, 614.0), Reply::Ok);
    let inc = &w.pump.state.incidents[&id];
    assert_eq!(inc.state, IncidentState::RollingBack);
    let counted: Vec<&str> = inc
        .approvals
        .votes
        .iter()
        .filter(|v| v.counted)
        .map(|v| v.person.as_str())
        .collect();
    assert_eq!(counted, ["ada", "cy"]);
    assert_eq!(inc.approvals.votes.iter().filter(|v| !v.counted).count(), 3);
    // A vote after the decision is recorded and ignored.
    assert!(matches!(
        vote(&mut w, &id, "cy", VoteKind::Reject, 615.0),
        Reply::Conflict(_)
    ));
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::RollingBack
    );
}

#[test]
fn quorum_without_every_role_is_not_enough() {
    let yaml = rule("r", "").replace(
        "    approval: none\n",
        "    approval:\n      require_roles: [founder, client-success-lead]\n      quorum: 1\n",
    );
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let id = w.only_incident().id.clone();
    vote(&mut w, &id, "ada", VoteKind::Approve, 601.0);
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::AwaitingApproval
    );
    vote(&mut w, &id, "cy", VoteKind::Approve, 602.0);
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::RollingBack
    );
}

#[test]
fn one_reject_ends_it() {
    let (mut w, id) = approval_world("");
    vote(&mut w, &id, "ada", VoteKind::Approve, 601.0);
    vote(&mut w, &id, "cy", VoteKind::Reject, 602.0);
    assert_eq!(w.pump.state.incidents[&id].state, IncidentState::Rejected);
    assert!(w.effects.is_empty());
}

#[test]
fn approval_timeout_aborts_or_proceeds() {
    let (mut w, id) = approval_world("");
    w.run_until(t(899.0));
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::AwaitingApproval
    );
    w.run_until(t(900.0));
    assert_eq!(w.pump.state.incidents[&id].state, IncidentState::Expired);

    let yaml = rule("r", "").replace(
        "    approval: none\n",
        &format!("{APPROVAL}      on_timeout: proceed\n"),
    );
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(900.0));
    assert_eq!(w.only_incident().state, IncidentState::RollingBack);
}

#[test]
fn a_vote_just_after_the_deadline_finds_the_request_expired() {
    // No tick ran between the deadline and the vote: the vote's own instant decides.
    let (mut w, id) = approval_world("");
    vote(&mut w, &id, "ada", VoteKind::Approve, 601.0);
    let reply = vote(&mut w, &id, "cy", VoteKind::Approve, 900.001);
    assert!(
        matches!(reply, Reply::Conflict(ref why) if why.contains("expired")),
        "{reply:?}"
    );
    assert_eq!(w.pump.state.incidents[&id].state, IncidentState::Expired);
    assert!(w.effects.is_empty(), "nothing ran");
}

#[test]
fn breach_clearing_before_approval_cancels() {
    let (mut w, id) = approval_world("");
    w.alert("web", "f1", false, t(650.0), t(650.0));
    w.run_until(t(770.0));
    assert_eq!(w.pump.state.incidents[&id].state, IncidentState::Cancelled);
}

#[test]
fn shadow_and_dry_run_record_the_plan_and_run_nothing() {
    let mut w = World::new(&rule("r", "    mode: shadow\n"));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::Suppressed);
    assert_eq!(inc.steps[0].state, StepState::WouldRun);
    assert_eq!(inc.steps[0].plan.argv, ["rollback", "web", "dpl-a"]);
    assert!(w.effects.is_empty());

    let mut w = World::new(&rule("r", ""));
    w.dry_run = true;
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    assert_eq!(w.only_incident().state, IncidentState::Suppressed);
    assert!(
        w.only_incident()
            .reason
            .as_deref()
            .unwrap()
            .contains("dry run")
    );
    assert!(w.effects.is_empty());
}

#[test]
fn frozen_service_is_suppressed() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.send(
        Event::Freeze {
            service: "web".into(),
            reason: "holiday".into(),
            by: "ada".into(),
        },
        t(-10.0),
    );
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    assert_eq!(w.only_incident().state, IncidentState::Suppressed);
    assert!(
        w.only_incident()
            .reason
            .as_deref()
            .unwrap()
            .contains("frozen")
    );
    assert!(matches!(
        w.send(
            Event::Unfreeze {
                service: "nope".into(),
                reason: "x".into(),
                by: "a".into()
            },
            t(601.0)
        ),
        Reply::NotFound(_)
    ));
}

#[test]
fn one_rollback_per_service_and_one_incident_per_breach() {
    let yaml = format!("{}{}", rule("r1", ""), rule("r2", ""));
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let mut states: Vec<IncidentState> = w.incidents().iter().map(|i| i.state).collect();
    states.sort();
    assert_eq!(
        states,
        [IncidentState::RollingBack, IncidentState::Suppressed]
    );
    // The same breach going on never opens another incident.
    w.alert("web", "f2", true, t(100.0), t(700.0));
    w.run_until(t(5000.0));
    assert_eq!(w.incidents().len(), 2);
}

#[test]
fn loop_guard_never_rolls_back_to_what_it_rolled_back_from() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    w.run_steps(|_| true, t(601.0));
    assert_eq!(w.only_incident().state, IncidentState::RolledBack);
    // The breach clears, a new one starts on the rolled-back deployment.
    w.alert("web", "f1", false, t(700.0), t(700.0));
    w.run_until(t(900.0));
    w.alert("web", "f1", true, t(1000.0), t(1000.0));
    w.run_until(t(2000.0));
    assert_eq!(w.incidents().len(), 1, "no second rollback");
    assert!(
        w.reasons()
            .iter()
            .any(|r| r.contains("nothing to roll back to")),
        "the rolled-back deployment's predecessors are never targets: {:?}",
        w.reasons()
    );
    // The bad deployment comes back by hand and a new release follows it: its predecessor is
    // the one rollbackd rolled back from, and the loop guard refuses it.
    w.alert("web", "f1", false, t(2100.0), t(2100.0));
    w.run_until(t(2300.0));
    w.release("web", "dpl-b", t(2400.0), t(2400.0));
    w.release("web", "dpl-c", t(2500.0), t(2500.0));
    w.alert("web", "f1", true, t(2600.0), t(2600.0));
    w.run_until(t(4000.0));
    assert_eq!(w.incidents().len(), 1, "no rollback to dpl-b");
    assert!(
        w.reasons().iter().any(|r| r.contains("loop guard")),
        "{:?}",
        w.reasons()
    );
}

#[test]
fn a_redeploy_by_hand_is_never_rolled_back_into_the_bad_release() {
    let mut w = World::new(&rule("r", ""));
    with_releases(&mut w);
    // A human rolled back by redeploying dpl-a; then the breach starts.
    w.release("web", "dpl-a", t(-600.0), t(-600.0));
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(700.0));
    assert!(w.incidents().is_empty(), "dpl-b was already rolled back");
    assert!(
        w.reasons()[0].contains("nothing to roll back to"),
        "{:?}",
        w.reasons()
    );
}

#[test]
fn budget_counts_rollbacks_per_window() {
    let mut w = World::new(&rule("r", "    budget: { max: 1, per: 1h }\n"));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    w.run_steps(|_| true, t(601.0));
    w.alert("web", "f1", false, t(700.0), t(700.0));
    w.run_until(t(900.0));
    // Two new releases after the rollback, then a new breach.
    w.release("web", "dpl-c", t(1000.0), t(1000.0));
    w.release("web", "dpl-d", t(1100.0), t(1100.0));
    w.alert("web", "f1", true, t(1200.0), t(1200.0));
    w.run_until(t(1800.0));
    let second = w
        .incidents()
        .into_iter()
        .find(|i| i.release_from.deployment_id == "dpl-d")
        .unwrap()
        .clone();
    assert_eq!(second.state, IncidentState::Suppressed);
    assert!(second.reason.unwrap().contains("budget"));
    // After the window a new breach may act again.
    w.alert("web", "f1", false, t(1900.0), t(1900.0));
    w.run_until(t(2100.0));
    w.release("web", "dpl-e", t(4000.0), t(4000.0));
    w.alert("web", "f1", true, t(4300.0), t(4300.0));
    w.run_until(t(4900.0));
    assert!(
        w.incidents()
            .iter()
            .any(|i| i.release_from.deployment_id == "dpl-e"
                && i.state == IncidentState::RollingBack)
    );
}

#[test]
fn backoff_grows_and_is_deterministic() {
    let a = backoff(1, "inc-1", 0);
    let b = backoff(2, "inc-1", 0);
    let c = backoff(3, "inc-1", 0);
    assert!(a >= Duration::from_millis(750) && a <= Duration::from_millis(1250));
    assert!(b >= Duration::from_millis(1500) && b <= Duration::from_millis(2500));
    assert!(c >= Duration::from_millis(3000) && c <= Duration::from_millis(5000));
    assert_eq!(a, backoff(1, "inc-1", 0));
    assert!(backoff(30, "inc-1", 0) <= Duration::from_millis(75_000));
}

// ---- properties ----

/// One alert's life: (milliseconds since the previous change, firing after it?).
fn flips() -> impl Strategy<Value = Vec<(u64, bool)>> {
    prop::collection::vec((1u64..400_000, any::<bool>()), 1..40)
}

fn sim(yaml: &str, services: &[&str], script: &[(usize, u64, bool)]) -> World {
    sim_with(yaml, services, script, false)
}

fn sim_with(yaml: &str, services: &[&str], script: &[(usize, u64, bool)], let_go: bool) -> World {
    let mut w = World::new(yaml);
    if let_go {
        w.disk = Some(Memory::default());
    }
    for s in services {
        w.release(s, "dpl-a", t(-3600.0), t(-3600.0));
        w.release(s, "dpl-b", t(-1800.0), t(-1800.0));
    }
    let mut now = t(0.0);
    for (who, gap, firing) in script {
        let next = add(now, Duration::from_millis(*gap));
        w.run_until(next);
        check_invariants(&w);
        now = next;
        let svc = services[*who % services.len()];
        w.alert(svc, &format!("k{who}"), *firing, now, now);
        check_invariants(&w);
        w.run_steps(|_| true, now);
    }
    w.run_until(add(now, Duration::from_secs(3600)));
    check_invariants(&w);
    w
}

fn check_invariants(w: &World) {
    let mut active_services = std::collections::BTreeSet::new();
    let mut per_breach = std::collections::BTreeSet::new();
    for i in w.incidents() {
        assert!(
            per_breach.insert(i.breach.clone()),
            "two incidents for breach {}",
            i.breach
        );
        assert!(
            i.opened_at >= i.deadline,
            "acted before its deadline: {i:?}"
        );
        if i.state.is_active() {
            assert!(
                active_services.insert(i.service.clone()),
                "two active incidents for {}",
                i.service
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// A breach shorter than `sustained` never triggers.
    #[test]
    fn short_breaches_never_trigger(gaps in prop::collection::vec((1u64..590_000, 121_000u64..3_000_000), 1..20)) {
        // Firing for less than 10 min, then quiet for longer than clear_after (2 min).
        let mut script = Vec::new();
        for (on, off) in gaps {
            script.push((0, off, true));
            script.push((0, on, false));
        }
        let w = sim(&rule("r", ""), &["web"], &script);
        prop_assert!(w.incidents().is_empty(), "{:#?}", w.incidents());
    }

    /// Flaps shorter than `clear_after` keep the clock: the incident opens at first start + sustained.
    #[test]
    fn flaps_inside_clear_after_keep_the_clock(gaps in prop::collection::vec((1u64..60_000, 1u64..119_000), 1..30)) {
        let mut script = vec![(0, 1, true)];
        for (on, off) in gaps {
            script.push((0, on, false));
            script.push((0, off, true));
        }
        let w = sim(&rule("r", ""), &["web"], &script);
        let total: u64 = script.iter().map(|s| s.1).sum();
        let first = t(0.001);
        if total >= 600_000 {
            let inc = w.only_incident();
            prop_assert_eq!(inc.breach_started_at, first);
            // Acts at start + sustained, or at the re-fire that follows a deadline spent resolving.
            prop_assert!(inc.opened_at >= inc.deadline);
            prop_assert_eq!(inc.deadline, add(first, Duration::from_secs(600)));
        }
    }

    /// Any interleaving of alerts over several rules and services keeps the invariants
    /// (checked after every step by `sim`), and every incident opened exactly at its deadline
    /// unless the breach was resolving then.
    #[test]
    fn invariants_hold_for_any_history(script in prop::collection::vec((0usize..4, 1u64..400_000, any::<bool>()), 1..60)) {
        let yaml = format!("{}{}", rule("r1", ""), rule("r2", "    sources: [alertmanager]\n"));
        let w = sim(&yaml, &["web", "api"], &script);
        for i in w.pump.state.incidents.values() {
            let resolving_at_deadline = w.timeline.iter().any(|e| e.kind == Kind::BreachRefired && e.at > i.deadline && e.at == i.opened_at);
            prop_assert!(i.opened_at == i.deadline || resolving_at_deadline, "{i:#?}");
        }
    }

    /// Letting go of finished incidents and of every breach after each event (as the driver
    /// does) changes no decision: the index carries what the engine looks across, and what an
    /// event needs comes back first.
    #[test]
    fn letting_go_of_finished_incidents_changes_nothing(script in prop::collection::vec((0usize..4, 1u64..900_000, any::<bool>()), 1..60)) {
        let yaml = format!("{}{}", rule("r1", "    budget: { max: 1, per: 1h }\n"), rule("r2", ""));
        let kept = sim_with(&yaml, &["web", "api"], &script, false);
        let let_go = sim_with(&yaml, &["web", "api"], &script, true);
        prop_assert_eq!(&kept.timeline, &let_go.timeline);
        prop_assert_eq!(format!("{:?}", kept.effects), format!("{:?}", let_go.effects));
        prop_assert_eq!(kept.incidents(), let_go.incidents());
    }

    /// The step journal never lets a step start twice for one attempt.
    #[test]
    fn a_step_attempt_starts_at_most_once(n in 1usize..5) {
        let mut w = World::new(&rule("r", ""));
        with_releases(&mut w);
        w.alert("web", "f1", true, t(0.0), t(0.0));
        w.run_until(t(600.0));
        let id = w.only_incident().id.clone();
        let mut go = 0;
        for _ in 0..n {
            if w.send(Event::StepStarting { incident: id.clone(), phase: Phase::Rollback, index: 0, attempt: 1 }, t(601.0)) == Reply::Go(true) {
                go += 1;
            }
        }
        prop_assert_eq!(go, 1);
    }
}

#[test]
fn flips_strategy_is_used() {
    // Keeps the generic generator honest: a random single-alert history keeps the invariants.
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&flips(), |f| {
            let script: Vec<(usize, u64, bool)> = f.into_iter().map(|(g, b)| (0, g, b)).collect();
            sim(&rule("r", ""), &["web"], &script);
            Ok(())
        })
        .unwrap();
}

fn probe_world() -> (World, String) {
    let yaml = rule("r", "").replace(
        "        idempotent: true\n",
        "        probe: { run: [is-live, \"{{ release.previous.deployment_id }}\"] }\n",
    );
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let id = w.only_incident().id.clone();
    assert_eq!(
        w.only_incident().steps[0]
            .probe
            .as_ref()
            .map(|p| p.argv.as_slice()),
        Some(&["is-live".to_string(), "dpl-a".to_string()][..])
    );
    w.send(
        Event::StepStarting {
            incident: id.clone(),
            phase: Phase::Rollback,
            index: 0,
            attempt: 1,
        },
        t(601.0),
    );
    w.effects.clear();
    (w, id)
}

#[test]
fn probe_decides_a_started_non_idempotent_step_after_a_crash() {
    for (answer, want) in [
        (Some(true), "next step"),
        (Some(false), "again"),
        (None, "unknown"),
    ] {
        let (w, id) = probe_world();
        let (mut st, out) = w.recovered(t(700.0));
        assert_eq!(
            out.effects,
            [Effect::Probe {
                incident: id.clone(),
                phase: Phase::Rollback,
                index: 0
            }]
        );
        let ctx = Context {
            rules: &w.rules,
            people: &w.people,
            dry_run: false,
            pagerduty: false,
            max_open_breaches_per_rule: 10_000,
            fencing_token: 7,
        };
        let out = st.handle(
            &ctx,
            Event::ProbeResult {
                incident: id.clone(),
                phase: Phase::Rollback,
                index: 0,
                in_place: answer,
                detail: "test".into(),
            },
            t(701.0),
        );
        let inc = &st.incidents[&id];
        match want {
            "next step" => {
                assert_eq!(inc.steps[0].state, StepState::Done);
                assert_eq!(inc.steps[0].attempts, 1, "not run again");
                assert!(matches!(
                    out.effects[..],
                    [Effect::RunStep {
                        index: 1,
                        attempt: 1,
                        ..
                    }]
                ));
            }
            "again" => {
                assert!(matches!(
                    out.effects[..],
                    [Effect::RunStep {
                        index: 0,
                        attempt: 2,
                        ..
                    }]
                ));
            }
            _ => {
                assert_eq!(inc.state, IncidentState::RollbackFailed);
                assert!(
                    inc.reason
                        .as_deref()
                        .unwrap()
                        .contains("step state unknown, needs a human")
                );
                assert!(out.effects.is_empty());
            }
        }
    }
}

#[test]
fn after_hooks_run_once_the_rollback_ends_and_never_change_it() {
    let mut w = World::new(&rule(
        "r",
        "    after:\n      - name: row counts\n        run: [check-rows, \"{{ release.current.version }}\"]\n",
    ));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    w.run_steps(|_| true, t(601.0));
    let id = w.only_incident().id.clone();
    assert_eq!(w.only_incident().state, IncidentState::RolledBack);
    assert_eq!(
        w.effects,
        [Effect::RunAfter {
            incident: id.clone()
        }]
    );
    assert_eq!(
        w.only_incident().after[0].plan.argv,
        ["check-rows", "v-dpl-b"]
    );
    // A crash before the hook finished: it runs after the restart.
    let (_, out) = w.recovered(t(650.0));
    assert_eq!(
        out.effects,
        [Effect::RunAfter {
            incident: id.clone()
        }]
    );
    w.send(
        Event::AfterFinished {
            incident: id.clone(),
            index: 0,
            result: StepResult {
                ok: false,
                exit_code: Some(2),
                output: "rows: 10 != 12".into(),
                error: Some("exited with status 2".into()),
                duration_ms: 3,
                permanent: false,
            },
        },
        t(651.0),
    );
    let inc = w.only_incident();
    assert_eq!(
        inc.state,
        IncidentState::RolledBack,
        "hooks inform, never decide"
    );
    assert_eq!(inc.after[0].state, StepState::Failed);
    assert!(
        w.timeline
            .iter()
            .any(|e| e.kind == Kind::AfterCheck && e.message.contains("FAILED"))
    );
    let (_, out) = w.recovered(t(700.0));
    assert!(out.effects.is_empty(), "done hooks do not run again");
}

#[test]
fn a_plan_that_cannot_run_fails_before_approval_and_runs_nothing() {
    let mut w = World::new(&rule("r", "    notify: [incidents]\n"));
    w.missing = vec!["step `a`: env T: environment variable `X` is not set".to_string()];
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::RollbackFailed);
    let reason = inc.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("cannot run: step `a`: env T: environment variable `X` is not set"),
        "{reason}"
    );
    assert!(inc.rollback_started_at.is_none());
    assert!(w.effects.is_empty(), "nothing runs: {:?}", w.effects);
    assert!(
        w.timeline
            .iter()
            .all(|e| e.kind != Kind::AwaitingApproval && e.kind != Kind::Approved)
    );
}

#[test]
fn transitions_queue_one_announcement_per_target_and_deliveries_settle_them() {
    let mut w = World::new(&rule("r", "    notify: [incidents]\n"));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    let ctx = Context {
        rules: &w.rules,
        people: &w.people,
        dry_run: false,
        pagerduty: true,
        max_open_breaches_per_rule: 10_000,
        fencing_token: 7,
    };
    let out = w.pump.state.handle(&ctx, Event::Tick, t(600.0));
    let [Effect::Preflight { incident }] = out.effects.as_slice() else {
        panic!("the open asks for a preflight first: {:?}", out.effects);
    };
    let out = w.pump.state.handle(
        &ctx,
        Event::PreflightResult {
            incident: incident.clone(),
            missing: Vec::new(),
        },
        t(600.0),
    );
    let queued: Vec<(String, String)> = out
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Outbox(e) => Some((e.kind.code().to_string(), e.target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        queued,
        [
            ("approved".to_string(), "incidents".to_string()),
            ("approved".into(), "pagerduty".into()),
            ("rollback_started".into(), "incidents".into()),
            ("rollback_started".into(), "pagerduty".into()),
        ]
    );
    let Some(Change::Outbox(first)) = out
        .changes
        .iter()
        .find(|c| matches!(c, Change::Outbox(_)))
        .cloned()
    else {
        unreachable!()
    };
    // A failure is kept with its attempt count; a delivery removes it and says so.
    let out = w.pump.state.handle(
        &ctx,
        Event::Delivery {
            entry: first.clone(),
            outcome: Delivery::Retry {
                error: "HTTP 503".into(),
                at: t(602.0),
            },
        },
        t(601.0),
    );
    assert!(
        matches!(&out.changes[..], [Change::Outbox(e)] if e.attempts == 1 && e.next_at == Some(t(602.0)))
    );
    let out = w.pump.state.handle(
        &ctx,
        Event::Delivery {
            entry: first.clone(),
            outcome: Delivery::Delivered {
                detail: "HTTP 200".into(),
            },
        },
        t(603.0),
    );
    assert!(matches!(&out.changes[..], [Change::OutboxDone { seq, .. }] if *seq == first.seq));
    assert_eq!(out.timeline[0].kind, Kind::Notified);
}

#[test]
fn shadow_incidents_announce_nothing() {
    let mut w = World::new(&rule("r", "    mode: shadow\n    notify: [incidents]\n"));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    let ctx = Context {
        rules: &w.rules,
        people: &w.people,
        dry_run: false,
        pagerduty: true,
        max_open_breaches_per_rule: 10_000,
        fencing_token: 7,
    };
    let out = w.pump.state.handle(&ctx, Event::Tick, t(600.0));
    assert!(!out.changes.iter().any(|c| matches!(c, Change::Outbox(_))));
}

fn pd_vote(
    w: &mut World,
    delivery: &str,
    pd_incident: &str,
    pd_user: &str,
    vote: VoteKind,
) -> Reply {
    w.send(
        Event::PagerDuty {
            delivery: delivery.into(),
            input: PagerDutyInput::Vote {
                pd_incident: pd_incident.into(),
                pd_user: Some(pd_user.into()),
                vote,
                via: "pagerduty-workflow".into(),
                reason: None,
                occurred_at: Some(t(649.0)),
            },
        },
        t(650.0),
    )
}

fn pd_incident_signal(pd_id: &str, key: Option<&str>, labels: &[(&str, &str)]) -> PagerDutyInput {
    PagerDutyInput::Incident {
        signal: Signal {
            source: Source::Pagerduty,
            key: pd_id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: SignalStatus::Firing,
            starts_at: Some(t(0.0)),
            ends_at: None,
        },
        incident_key: key.map(String::from),
    }
}

#[test]
fn pagerduty_votes_map_users_to_people_and_deliveries_dedupe() {
    let (mut w, id) = approval_world("");
    for p in &mut w.people {
        p.pagerduty_user = Some(format!("PD{}", p.id.to_uppercase()));
    }
    // PagerDuty tells us which of its incidents is ours (the Events API dedup key).
    w.send(
        Event::PagerDuty {
            delivery: "d1".into(),
            input: pd_incident_signal(
                "Q1",
                Some(&format!("rollbackd/{id}")),
                &[("alertname", "HighErrorRate"), ("service", "web")],
            ),
        },
        t(601.0),
    );
    assert_eq!(
        w.pump.state.incidents[&id].pagerduty_incident.as_deref(),
        Some("Q1")
    );
    assert!(
        w.breach("web").unwrap().alerts.len() == 1,
        "our own PagerDuty incident is never an alert"
    );
    // Unknown PagerDuty user: recorded, not counted.
    pd_vote(&mut w, "d2", "Q1", "PNOBODY", VoteKind::Approve);
    assert!(
        w.pump.state.incidents[&id]
            .approvals
            .votes
            .iter()
            .any(|v| !v.counted && v.person == "pagerduty-user:PNOBODY")
    );
    assert_eq!(
        pd_vote(&mut w, "d3", "Q1", "PDADA", VoteKind::Approve),
        Reply::Ok
    );
    // The same delivery again (PagerDuty retries): nothing changes.
    assert_eq!(
        pd_vote(&mut w, "d3", "Q1", "PDADA", VoteKind::Approve),
        Reply::Duplicate
    );
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::AwaitingApproval
    );
    pd_vote(&mut w, "d4", "Q1", "PDCY", VoteKind::Approve);
    assert_eq!(
        w.pump.state.incidents[&id].state,
        IncidentState::RollingBack
    );
    let vias: Vec<&str> = w.pump.state.incidents[&id]
        .approvals
        .votes
        .iter()
        .filter(|v| v.counted)
        .map(|v| v.via.as_str())
        .collect();
    assert_eq!(vias, ["pagerduty-workflow", "pagerduty-workflow"]);
    // A vote on a PagerDuty incident we do not know is recorded, and answered 2xx.
    assert_eq!(
        pd_vote(&mut w, "d5", "QOTHER", "PDADA", VoteKind::Reject),
        Reply::Ok
    );
    assert!(w.timeline.iter().any(|e| e.subject == "pagerduty:QOTHER"));
    // Delivery ids are forgotten after three days.
    w.tick(t(650.0 + 72.0 * 3600.0 + 1.0));
    assert!(w.pump.state.deliveries.is_empty());
}

#[test]
fn pagerduty_votes_from_before_the_incident_or_not_from_a_person_do_not_count() {
    let (mut w, id) = approval_world("");
    for p in &mut w.people {
        p.pagerduty_user = Some(format!("PD{}", p.id.to_uppercase()));
    }
    w.send(
        Event::PagerDuty {
            delivery: "link".into(),
            input: pd_incident_signal(
                "Q1",
                Some(&format!("rollbackd/{id}")),
                &[("alertname", "HighErrorRate"), ("service", "web")],
            ),
        },
        t(601.0),
    );
    let opened = w.pump.state.incidents[&id].opened_at;
    let send = |w: &mut World, delivery: &str, user: Option<&str>, at: Option<Timestamp>| {
        w.send(
            Event::PagerDuty {
                delivery: delivery.into(),
                input: PagerDutyInput::Vote {
                    pd_incident: "Q1".into(),
                    pd_user: user.map(String::from),
                    vote: VoteKind::Approve,
                    via: "pagerduty-workflow".into(),
                    reason: None,
                    occurred_at: at,
                },
            },
            t(650.0),
        )
    };
    // Cast on an earlier incident of the same PagerDuty incident, sent again now.
    send(
        &mut w,
        "old",
        Some("PDADA"),
        Some(sub(opened, Duration::from_secs(1))),
    );
    send(&mut w, "no-time", Some("PDADA"), None);
    // An integration's event, not a person's.
    send(&mut w, "bot", None, Some(t(640.0)));
    let inc = &w.pump.state.incidents[&id];
    assert!(
        inc.approvals.votes.iter().all(|v| !v.counted),
        "{:?}",
        inc.approvals.votes
    );
    let why: Vec<&str> = inc
        .approvals
        .votes
        .iter()
        .filter_map(|v| v.why_not_counted.as_deref())
        .collect();
    assert!(why[0].contains("before incident"), "{why:?}");
    assert!(why[1].contains("occurred_at"), "{why:?}");
    assert!(why[2].contains("not a PagerDuty user"), "{why:?}");
    // The same person, on time, counts.
    send(&mut w, "now", Some("PDADA"), Some(t(640.0)));
    assert!(
        w.pump.state.incidents[&id]
            .approvals
            .votes
            .iter()
            .any(|v| v.counted && v.person == "ada")
    );
}

#[test]
fn a_breach_from_a_pagerduty_incident_is_announced_on_it() {
    let yaml = rule("r", "    sources: [pagerduty]\n")
        .replace("alertname=\"HighErrorRate\"", "priority=~\"P0|P1\"");
    let mut w = World::new(&yaml);
    with_releases(&mut w);
    w.send(
        Event::PagerDuty {
            delivery: "d1".into(),
            input: pd_incident_signal(
                "PX9",
                None,
                &[("priority", "P1"), ("service", "web"), ("region", "eu")],
            ),
        },
        t(0.0),
    );
    w.run_until(t(600.0));
    assert_eq!(w.only_incident().pagerduty_incident.as_deref(), Some("PX9"));
}

#[test]
fn rules_may_override_the_announcement_texts() {
    let mut w = World::new(&rule(
        "r",
        "    messages:\n      internal: \"Rolling {{ service }} back from {{ release.current.version }} to {{ release.previous.version }}\"\n      external: \"{{ labels.region }} customers: {{ service }} update paused\"\n",
    ));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let inc = w.only_incident();
    assert_eq!(
        inc.messages["internal"],
        "Rolling web back from v-dpl-b to v-dpl-a"
    );
    assert_eq!(
        crate::message::external(inc),
        "eu-west-1 customers: web update paused"
    );
}

#[test]
fn a_reload_that_removes_the_rule_of_a_running_rollback_lets_it_finish_its_plan() {
    let mut w = World::new(&rule("r", "    notify: [team]\n    freeze: true\n"));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    assert_eq!(w.only_incident().state, IncidentState::RollingBack);
    // The rule is gone; the incident keeps its plan and its notifier.
    w.rules = ruleset("rules: []");
    w.send(Event::RulesReloaded, t(601.0));
    assert_eq!(w.only_incident().state, IncidentState::RollingBack);
    w.run_steps(|_| true, t(602.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::RolledBack);
    assert_eq!(inc.steps[1].plan.argv, ["purge", "eu-west-1"]);
    let out = w.pump.state.handle(
        &Context {
            rules: &w.rules,
            people: &w.people,
            dry_run: false,
            pagerduty: false,
            max_open_breaches_per_rule: 10_000,
            fencing_token: 7,
        },
        Event::Unfreeze {
            service: "web".into(),
            reason: "fixed".into(),
            by: "ada".into(),
        },
        t(700.0),
    );
    let announced: Vec<&str> = out
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Outbox(e) => Some(e.target.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        announced,
        ["team"],
        "announced to the targets fixed at open"
    );
}

/// `rule` with a freeze and two `on_unfreeze` steps (the first idempotent, the second not).
fn unfreeze_world() -> (World, String) {
    let mut w = World::new(&rule(
        "r",
        concat!(
            "    freeze: true\n",
            "    on_unfreeze:\n",
            "      - name: auto-sync on\n",
            "        run: [argocd-sync, on, \"{{ service }}\", \"{{ release.current.deployment_id }}\"]\n",
            "        idempotent: true\n",
            "      - name: resume\n",
            "        run: [flux-resume, \"{{ service }}\"]\n",
        ),
    ));
    with_releases(&mut w);
    w.alert("web", "f1", true, t(0.0), t(0.0));
    w.run_until(t(600.0));
    let id = w.only_incident().id.clone();
    (w, id)
}

fn succeeded() -> StepResult {
    StepResult {
        ok: true,
        exit_code: Some(0),
        output: String::new(),
        error: None,
        duration_ms: 1,
        permanent: false,
    }
}

fn unfreeze(w: &mut World, at: f64) -> Reply {
    w.send(
        Event::Unfreeze {
            service: "web".into(),
            reason: "cause found".into(),
            by: "ada".into(),
        },
        t(at),
    )
}

fn unfreeze_effects(w: &World) -> Vec<(usize, u32)> {
    unfreeze_runs(&w.effects)
}

/// The (index, attempt) of every on_unfreeze step `effects` ask to run.
fn unfreeze_runs(effects: &[Effect]) -> Vec<(usize, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::RunStep {
                phase: Phase::Unfreeze,
                index,
                attempt,
                ..
            } => Some((*index, *attempt)),
            _ => None,
        })
        .collect()
}

#[test]
fn on_unfreeze_steps_run_once_when_the_freeze_is_lifted() {
    let (mut w, _) = unfreeze_world();
    w.run_steps(|_| true, t(601.0));
    assert_eq!(w.only_incident().state, IncidentState::RolledBack);
    assert!(w.pump.state.freezes.contains_key("web"));
    assert!(unfreeze_effects(&w).is_empty(), "nothing runs while frozen");
    assert_eq!(
        w.only_incident().on_unfreeze[0].plan.argv,
        ["argocd-sync", "on", "web", "dpl-b"],
        "planned at open, from the incident's releases"
    );
    let (_, out) = w.recovered(t(650.0));
    assert!(out.effects.is_empty(), "{:?}", out.effects);

    let id = w.only_incident().id.clone();
    assert_eq!(
        unfreeze(&mut w, 700.0),
        Reply::Unfrozen {
            incident: Some(id),
            steps: 2,
            running: true
        }
    );
    assert_eq!(unfreeze_effects(&w), [(0, 1)]);
    assert_eq!(w.only_incident().on_unfreeze[0].state, StepState::Intended);
    w.run_steps(|_| true, t(701.0));
    let inc = w.only_incident();
    assert!(
        inc.on_unfreeze
            .iter()
            .all(|s| s.state == StepState::Done && s.attempts == 1),
        "{:#?}",
        inc.on_unfreeze
    );
    assert_eq!(inc.unfrozen_at, Some(t(700.0)));
    assert_eq!(inc.on_unfreeze_ended_at, Some(t(701.0)));
    assert_eq!(inc.state, IncidentState::RolledBack, "the outcome stays");
    let ended: Vec<_> = w
        .timeline
        .iter()
        .filter(|e| e.kind == Kind::UnfreezeStepsEnded)
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].data["ok"], true);
    let started: Vec<_> = w
        .timeline
        .iter()
        .filter(|e| e.kind == Kind::StepStarted && e.data["phase"] == "on_unfreeze")
        .map(|e| e.message.clone())
        .collect();
    assert_eq!(
        started,
        [
            "on_unfreeze step auto-sync on attempt 1 started",
            "on_unfreeze step resume attempt 1 started"
        ]
    );
    // Done: a restart runs nothing, the record can be let go of, and a second unfreeze of a
    // service no longer frozen is refused.
    let (_, out) = w.recovered(t(800.0));
    assert!(out.effects.is_empty(), "{:?}", out.effects);
    assert!(!w.only_incident().resident());
    assert!(matches!(unfreeze(&mut w, 801.0), Reply::NotFound(_)));
}

#[test]
fn on_unfreeze_steps_wait_for_a_rollback_still_running() {
    let (mut w, id) = unfreeze_world();
    // The first step starts (and freezes); a human lifts the freeze mid-rollback.
    let Some(Effect::RunStep { attempt, .. }) = w.effects.first().cloned() else {
        panic!("{:?}", w.effects)
    };
    let go = w.send(
        Event::StepStarting {
            incident: id.clone(),
            phase: Phase::Rollback,
            index: 0,
            attempt,
        },
        t(601.0),
    );
    assert_eq!(go, Reply::Go(true));
    assert_eq!(
        unfreeze(&mut w, 602.0),
        Reply::Unfrozen {
            incident: Some(id.clone()),
            steps: 2,
            running: false
        },
        "accepted, the steps wait"
    );
    assert!(
        unfreeze_effects(&w).is_empty(),
        "the rollback is still running"
    );
    // An unfreeze step asked for now would be refused.
    assert_eq!(
        w.send(
            Event::StepStarting {
                incident: id.clone(),
                phase: Phase::Unfreeze,
                index: 0,
                attempt: 1,
            },
            t(603.0)
        ),
        Reply::Go(false)
    );
    w.send(
        Event::StepFinished {
            incident: id.clone(),
            phase: Phase::Rollback,
            index: 0,
            attempt,
            result: succeeded(),
        },
        t(604.0),
    );
    w.effects.retain(|e| {
        !matches!(
            e,
            Effect::RunStep {
                phase: Phase::Rollback,
                index: 0,
                ..
            }
        )
    });
    w.run_steps(|_| true, t(605.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::RolledBack);
    assert!(
        inc.on_unfreeze.iter().all(|s| s.state == StepState::Done),
        "they ran once the rollback ended: {:#?}",
        inc.on_unfreeze
    );
}

#[test]
fn a_finished_incident_let_go_of_is_read_back_for_its_on_unfreeze_steps() {
    let (mut w, id) = unfreeze_world();
    w.disk = Some(Memory::default());
    w.run_steps(|_| true, t(601.0));
    assert!(
        !w.pump.state.incidents.contains_key(&id),
        "a finished incident is let go of"
    );
    unfreeze(&mut w, 700.0);
    assert_eq!(unfreeze_effects(&w), [(0, 1)]);
    w.run_steps(|_| true, t(701.0));
    let inc = w.only_incident();
    assert!(inc.on_unfreeze.iter().all(|s| s.state == StepState::Done));
    assert!(inc.on_unfreeze_ended_at.is_some());
}

#[test]
fn a_failed_on_unfreeze_step_stops_the_rest_and_never_changes_the_outcome() {
    let (mut w, _) = unfreeze_world();
    w.run_steps(|_| true, t(601.0));
    unfreeze(&mut w, 700.0);
    w.run_steps(|name| name != "auto-sync on", t(701.0));
    let inc = w.only_incident();
    assert_eq!(inc.state, IncidentState::RolledBack);
    assert_eq!(inc.on_unfreeze[0].state, StepState::Failed);
    assert_eq!(
        inc.on_unfreeze[1].state,
        StepState::Pending,
        "not run after a failure"
    );
    assert!(inc.on_unfreeze_ended_at.is_some());
    let ended = w
        .timeline
        .iter()
        .find(|e| e.kind == Kind::UnfreezeStepsEnded)
        .unwrap();
    assert_eq!(ended.data["ok"], false);
    assert!(
        ended.message.contains("a human must finish"),
        "{}",
        ended.message
    );
    let (_, out) = w.recovered(t(800.0));
    assert!(out.effects.is_empty(), "{:?}", out.effects);
}

#[test]
fn recovery_of_on_unfreeze_steps_reruns_the_idempotent_and_stops_at_the_other() {
    let (mut w, id) = unfreeze_world();
    w.run_steps(|_| true, t(601.0));
    unfreeze(&mut w, 700.0);
    let start = |w: &mut World, index: usize, attempt: u32, at: f64| {
        w.send(
            Event::StepStarting {
                incident: id.clone(),
                phase: Phase::Unfreeze,
                index,
                attempt,
            },
            t(at),
        )
    };
    // Intended, never started: a restart asks for the same attempt.
    let (_, out) = w.recovered(t(701.0));
    assert_eq!(out.effects.len(), 1, "{:?}", out.effects);
    assert_eq!(unfreeze_runs(&out.effects), [(0, 1)]);
    // Started and idempotent: runs again as attempt 2.
    assert_eq!(start(&mut w, 0, 1, 702.0), Reply::Go(true));
    let (_, out) = w.recovered(t(703.0));
    assert_eq!(out.effects.len(), 1, "{:?}", out.effects);
    assert_eq!(unfreeze_runs(&out.effects), [(0, 2)]);
    // Finish it; the second (not idempotent, no probe) starts and the process dies.
    w.send(
        Event::StepFinished {
            incident: id.clone(),
            phase: Phase::Unfreeze,
            index: 0,
            attempt: 1,
            result: succeeded(),
        },
        t(704.0),
    );
    assert_eq!(start(&mut w, 1, 1, 705.0), Reply::Go(true));
    let (st, out) = w.recovered(t(706.0));
    assert!(out.effects.is_empty(), "never twice: {:?}", out.effects);
    let inc = &st.incidents[&id];
    assert_eq!(inc.state, IncidentState::RolledBack, "the outcome stays");
    assert!(inc.on_unfreeze_ended_at.is_some());
    assert_eq!(inc.on_unfreeze[1].state, StepState::Started);
}

#[test]
fn a_deploy_tools_redelivery_is_one_ledger_entry_and_ci_may_redeploy() {
    let mut w = World::new(&rule("r", ""));
    let release = |origin: &str, id: &str, at: f64| {
        Event::Release(Box::new(Release {
            service: "web".into(),
            environment: "production".into(),
            version: format!("v-{id}"),
            deployment_id: id.into(),
            revision: Some("0123abcd".into()),
            deployed_at: t(at),
            received_at: t(at),
            origin: origin.into(),
            incident: None,
            posted_during_freeze: None,
        }))
    };
    assert!(matches!(
        w.send(release("github", "42", -60.0), t(0.0)),
        Reply::Release { .. }
    ));
    // Redelivered later (GitHub's "Redeliver", a retry): the same deployment.
    assert_eq!(
        w.send(release("github", "42", -30.0), t(1.0)),
        Reply::Duplicate
    );
    // Another source may use the same id for its own deployment.
    assert!(matches!(
        w.send(release("gitlab", "42", -20.0), t(2.0)),
        Reply::Release { .. }
    ));
    // From CI the same id later is a redeploy.
    assert!(matches!(
        w.send(release("ci", "42", -10.0), t(3.0)),
        Reply::Release { .. }
    ));
    assert!(matches!(
        w.send(release("ci", "42", -5.0), t(4.0)),
        Reply::Release { .. }
    ));
    assert_eq!(w.pump.state.releases["web"].len(), 4);
}

#[test]
fn revisions_reach_the_steps_and_a_release_without_one_fails_the_step_unrun() {
    let yaml = rule("r", "").replace(
        "run: [purge, \"{{ labels.region }}\"]",
        "run: [git-revert, \"{{ release.current.revision }}\", \"{{ release.previous.revision }}\"]",
    );
    for (revisions, expect) in [
        (true, IncidentState::RolledBack),
        (false, IncidentState::RollbackFailed),
    ] {
        let mut w = World::new(&yaml);
        for (id, at, rev) in [
            ("dpl-a", -3600.0, "aaaa1111"),
            ("dpl-b", -1800.0, "bbbb2222"),
        ] {
            w.send(
                Event::Release(Box::new(Release {
                    service: "web".into(),
                    environment: "production".into(),
                    version: format!("v-{id}"),
                    deployment_id: id.into(),
                    revision: revisions.then(|| rev.to_string()),
                    deployed_at: t(at),
                    received_at: t(at),
                    origin: "github".into(),
                    incident: None,
                    posted_during_freeze: None,
                })),
                t(at),
            );
        }
        w.alert("web", "f1", true, t(0.0), t(0.0));
        w.run_until(t(600.0));
        w.run_steps(|_| true, t(601.0));
        let inc = w.only_incident();
        assert_eq!(inc.state, expect, "revisions: {revisions}");
        if revisions {
            assert_eq!(
                inc.steps[1].plan.argv,
                ["git-revert", "bbbb2222", "aaaa1111"]
            );
            assert_eq!(inc.release_to.revision.as_deref(), Some("aaaa1111"));
            let latest = w.pump.state.releases["web"].last().unwrap();
            assert_eq!(
                (latest.origin.as_str(), latest.revision.as_deref()),
                ("rollback", Some("aaaa1111")),
                "the redeploy names the revision it went back to"
            );
        } else {
            assert_eq!(inc.steps[1].state, StepState::Failed);
            assert!(inc.steps[1].attempts == 0, "never run");
            assert!(
                inc.steps[1]
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("release.current.revision"),
                "{:?}",
                inc.steps[1].error
            );
        }
    }
}
