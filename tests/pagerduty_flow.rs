//! Approval through PagerDuty, black-box: the real `rollbackd` binary on a loopback port, a fake
//! PagerDuty (Events API v2 and REST on one port) recording what rollbackd sends, and signed V3
//! webhooks posted the way PagerDuty posts them (raw bytes, `X-PagerDuty-Signature`,
//! `X-Webhook-Id`).
//!
//! Time is the wall clock; deadlines are short because alerts are posted with `startsAt` in the
//! past (`sustained: 3s`, started 2.5 s ago: the rule acts in half a second). Every wait polls.
//! Each test has its own daemon, temp dir and fake PagerDuty, so they run in parallel.

mod common;
#[path = "common/fake_pagerduty.rs"]
mod fake_pagerduty;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use fake_pagerduty::{
    ACCEPT_V2, Call, FakePagerDuty, signed_webhook, signed_webhook_rotating, webhook_incident,
    webhook_note, webhook_ping, webhook_workflow_started,
};
use serde_json::{Value, json};

// ---- fixtures ----

/// Two webhook secrets, as during a rotation. Strings as given (they look like base64 and are
/// not decoded).
const S1: &str = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itB";
const S2: &str = "AYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK";
const API_TOKEN: &str = "y_NbAkKc66ryYTWUXYEu";
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF"; // 32 characters
const FROM: &str = "rollbackd@example.com";
const PUBLIC_URL: &str = "https://rollbackd.example.com";
const APPROVE_WF: &str = "PAPPRV1";
const REJECT_WF: &str = "PREJCT1";
const ADA: &str = "PABC123";
const CY: &str = "PDEF456";
const EVE: &str = "PEVE789";
/// The PagerDuty incident the Events API trigger opened (14 characters, like real ones).
const PD_INC: &str = "Q1RBKD0000LINK";

const ALERT: &str = "WebHighErrorRate";
const SERVICE: &str = "web";
const POLICY: &str =
    "{require_roles: [founder, client-success-lead], quorum: 2, timeout: 1m, on_timeout: abort}";

fn config(pd: &FakePagerDuty) -> String {
    format!(
        r#"public_url: {PUBLIC_URL}
pagerduty:
  webhook_secrets: ["{S1}", "{S2}"]
  api_url: {url}
  events_url: {url}
  api_token: "{API_TOKEN}"
  from: {FROM}
  routing_key: "{ROUTING_KEY}"
  workflows: {{approve: {APPROVE_WF}, reject: {REJECT_WF}}}
people:
  - {{id: ada, name: Ada Founder, pagerduty_user: {ADA}, roles: [founder]}}
  - {{id: cy, name: Cy Lead, pagerduty_user: {CY}, roles: [client-success-lead]}}
  - {{id: eve, name: Eve Intern, pagerduty_user: {EVE}, roles: [intern]}}
"#,
        url = pd.url()
    )
}

/// One rule: `approval` as given, one real child-process step appending its argument (the
/// previous deployment id) to `log`.
fn rules(approval: &str, log: &Path) -> String {
    format!(
        r#"rules:
  - name: web-errors
    match:
      - alertname="{ALERT}"
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach:
      sustained: 3s
      clear_after: 1s
    release:
      max_age: 1h
    approval: {approval}
    steps:
      - name: roll back deployment
        run: [/bin/sh, -c, 'echo "$0" >> {log}', "{{{{ release.previous.deployment_id }}}}"]
        timeout: 1m
    freeze: true
"#,
        log = log.display()
    )
}

/// A daemon with PagerDuty configured and one incident of the rule opened (releases A then B,
/// an alert that started 2.5 s ago).
struct Flow {
    setup: Setup,
    d: Daemon,
    pd: FakePagerDuty,
    log: PathBuf,
    id: String,
}

impl Flow {
    fn start(approval: &str) -> Flow {
        let pd = FakePagerDuty::start();
        let setup = Setup::new(&config(&pd), "");
        let log = setup.path().join("steps.log");
        std::fs::write(setup.path().join("rules/rules.yaml"), rules(approval, &log)).unwrap();
        let d = setup.start();
        release(&d, "A", &ts(-120.0));
        release(&d, "B", &ts(-60.0));
        let alert = am_alert(
            "firing",
            json!({"alertname": ALERT, "service": SERVICE, "severity": "page"}),
            &ts(-2.5),
            "fp-pagerduty",
        );
        let (s, v) = post(&d.url("/v1/webhooks/alertmanager"), None, &alert);
        assert_eq!(s, 200, "alert: {v}");
        let id = wait_for(Duration::from_secs(5), || {
            incidents(&d)
                .first()
                .map(|i| i["id"].as_str().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no incident; stderr:\n{}", d.stderr()));
        Flow {
            setup,
            d,
            pd,
            log,
            id,
        }
    }

    /// Started with an approval policy: waits for `awaiting_approval` and for the Events API
    /// trigger that asks for approval.
    fn awaiting(approval: &str) -> Flow {
        let f = Flow::start(approval);
        f.wait_state("awaiting_approval", Duration::from_secs(5));
        f.pd.wait_for(Duration::from_secs(5), |c| {
            c.iter().any(|c| c.path == "/v2/enqueue" && c.status == 202)
        });
        f
    }

    /// `kill -9` and start again on the same data dir.
    fn restart(self) -> Flow {
        let Flow {
            setup,
            d,
            pd,
            log,
            id,
        } = self;
        d.kill9();
        let d = setup.start();
        Flow {
            setup,
            d,
            pd,
            log,
            id,
        }
    }

    fn dedup_key(&self) -> String {
        format!("rollbackd/{}", self.id)
    }

    fn incident(&self) -> Value {
        let (s, v) = get(&self.d.url(&format!("/v1/incidents/{}", self.id)), None);
        assert_eq!(s, 200, "incident: {v}");
        v
    }

    fn wait_state(&self, state: &str, timeout: Duration) -> Value {
        wait_for(timeout, || {
            let v = self.incident();
            (v["state"] == state).then_some(v)
        })
        .unwrap_or_else(|| {
            panic!(
                "incident {} did not reach {state} within {timeout:?}: {:#}\nstderr:\n{}",
                self.id,
                self.incident(),
                self.d.stderr()
            )
        })
    }

    /// PagerDuty tells rollbackd about the incident its trigger opened (`incident_key` = the
    /// dedup key): from then on votes on that PagerDuty incident count for this incident.
    fn link(&self) {
        let body = webhook_incident(
            "evt-link",
            "incident.triggered",
            PD_INC,
            Some(&self.dedup_key()),
            "Approval needed: roll web back",
        );
        let (s, v) = deliver(&self.d, &body, Some(&signed_webhook(S1, &body)), "wh-link");
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["event_type"], "incident.triggered", "{v}");
        let inc = self.incident();
        assert_eq!(inc["pagerduty_incident"], PD_INC, "{inc:#}");
        assert!(
            timeline(&inc)
                .iter()
                .any(|t| t["kind"] == "pagerduty_linked"),
            "{inc:#}"
        );
    }

    /// `user` runs `workflow` on the linked PagerDuty incident; the delivery is `delivery`.
    fn workflow(&self, delivery: &str, workflow: &str, user: &str) -> Value {
        let body = webhook_workflow_started(&format!("evt-{delivery}"), PD_INC, workflow, user);
        let (s, v) = deliver(&self.d, &body, Some(&signed_webhook(S1, &body)), delivery);
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["event_type"], "incident.workflow.started", "{v}");
        assert_eq!(
            v["delivery"],
            format!("evt-{delivery}"),
            "the signed event id: {v}"
        );
        v
    }

    fn note(&self, delivery: &str, content: &str, user: &str) -> Value {
        let body = webhook_note(&format!("evt-{delivery}"), PD_INC, content, user);
        let (s, v) = deliver(&self.d, &body, Some(&signed_webhook(S2, &body)), delivery);
        assert_eq!(s, 202, "{v}");
        v
    }

    fn step_log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn release(d: &Daemon, id: &str, deployed_at: &str) {
    let (s, v) = post(
        &d.url("/v1/releases"),
        None,
        &json!({
            "service": SERVICE, "environment": "production", "version": format!("v-{id}"),
            "deployment_id": id, "deployed_at": deployed_at,
        }),
    );
    assert_eq!(s, 201, "release {id}: {v}");
}

fn incidents(d: &Daemon) -> Vec<Value> {
    let (s, v) = get(&d.url("/v1/incidents"), None);
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

/// POSTs a webhook delivery as PagerDuty does: the exact bytes, its signature header (if any)
/// and `X-Webhook-Id`. Returns (status, JSON body or Null).
fn deliver(d: &Daemon, body: &str, signature: Option<&str>, webhook_id: &str) -> (u16, Value) {
    let mut req = client()
        .post(d.url("/v1/webhooks/pagerduty"))
        .header("content-type", "application/json")
        .header("user-agent", "PagerDuty-Webhook/V3.0")
        .header("x-webhook-subscription", "PSUB001")
        .header("x-webhook-id", webhook_id)
        .body(body.to_string());
    if let Some(sig) = signature {
        req = req.header("x-pagerduty-signature", sig);
    }
    let resp = req.send().expect("POST webhook");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn timeline(inc: &Value) -> Vec<Value> {
    inc["timeline"].as_array().cloned().unwrap_or_default()
}

fn votes(inc: &Value) -> Vec<Value> {
    inc["approvals"]["votes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn counted(inc: &Value) -> Vec<String> {
    votes(inc)
        .iter()
        .filter(|v| v["counted"] == true)
        .map(|v| v["person"].as_str().unwrap_or("").to_string())
        .collect()
}

fn enqueues(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.path == "/v2/enqueue")
        .cloned()
        .collect()
}

fn ok(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| (200..300).contains(&c.status))
        .cloned()
        .collect()
}

fn summary(c: &Call) -> &str {
    c.body["payload"]["summary"].as_str().unwrap_or("")
}

/// Checks the REST headers PagerDuty requires on incident writes.
fn assert_rest_headers(c: &Call) {
    assert_eq!(
        c.header("authorization"),
        Some(format!("Token token={API_TOKEN}").as_str()),
        "{c:#?}"
    );
    assert_eq!(c.header("from"), Some(FROM), "{c:#?}");
    assert_eq!(c.header("accept"), Some(ACCEPT_V2), "{c:#?}");
    assert!(
        c.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{c:#?}"
    );
}

// ---- 1. the full flow ----

#[test]
fn full_flow_trigger_link_two_workflow_votes_notes_and_resolve() {
    let f = Flow::awaiting(POLICY);
    let key = f.dedup_key();
    let link = format!("{PUBLIC_URL}/v1/incidents/{}", f.id);

    // The Events API trigger asking for approval.
    let calls = f.pd.calls();
    assert_eq!(calls.len(), 1, "only the trigger so far: {calls:#?}");
    let t = &calls[0];
    assert_eq!((t.method.as_str(), t.status), ("POST", 202), "{t:#?}");
    assert_eq!(t.header("authorization"), None, "Events API takes no auth");
    assert_eq!(t.body["event_action"], "trigger", "{t:#?}");
    assert_eq!(t.body["dedup_key"], key.as_str(), "{t:#?}");
    assert_eq!(t.body["routing_key"], ROUTING_KEY, "{t:#?}");
    let s = summary(t);
    assert!(
        s.chars().count() <= 1024 && !s.is_empty(),
        "summary of {} chars",
        s.chars().count()
    );
    assert!(
        s.contains("v-B") && s.contains("v-A"),
        "the summary names both releases: {s}"
    );
    assert!(s.contains("Approval needed"), "{s}");
    assert_eq!(t.body["payload"]["severity"], "critical", "{t:#?}");
    assert_eq!(t.body["payload"]["source"], "web/production", "{t:#?}");
    assert_eq!(
        t.body["payload"]["custom_details"]["rollbackd_incident"],
        f.id.as_str()
    );
    assert_eq!(t.body["payload"]["custom_details"]["release_from"], "v-B");
    assert_eq!(t.body["payload"]["custom_details"]["release_to"], "v-A");
    assert_eq!(t.body["client_url"], link.as_str(), "{t:#?}");
    assert_eq!(t.body["links"][0]["href"], link.as_str(), "{t:#?}");

    // PagerDuty says which incident that opened.
    f.link();
    let inc = f.incident();
    assert_eq!(inc["state"], "awaiting_approval");

    // Ada runs "Approve rollback": one of two.
    f.workflow("wh-ada", APPROVE_WF, ADA);
    let inc = f.incident();
    assert_eq!(inc["state"], "awaiting_approval", "{inc:#}");
    assert_eq!(counted(&inc), ["ada"], "{inc:#}");
    let v = &votes(&inc)[0];
    assert_eq!(v["via"], "pagerduty-workflow", "{v}");
    assert_eq!(v["vote"], "approve", "{v}");
    assert!(f.step_log().is_empty(), "nothing runs on one vote");

    // Cy runs it too: both roles covered, quorum 2.
    f.workflow("wh-cy", APPROVE_WF, CY);
    let inc = f.wait_state("rolled_back", Duration::from_secs(10));
    assert_eq!(counted(&inc), ["ada", "cy"], "{inc:#}");
    assert_eq!(inc["steps"][0]["state"], "done", "{inc:#}");
    assert_eq!(f.step_log(), ["A"], "the step ran exactly once");
    assert!(
        timeline(&inc).iter().any(|t| t["kind"] == "vote"
            && t["actor"] == "cy"
            && t["message"]
                .as_str()
                .is_some_and(|m| m.contains("pagerduty-workflow"))),
        "{inc:#}"
    );

    // Once linked, every announcement is a note on the PagerDuty incident; rolled_back also
    // resolves the alert rollbackd opened (Events API, same dedup key).
    let notes_path = format!("/incidents/{PD_INC}/notes");
    let calls = f.pd.wait_for(Duration::from_secs(10), |c| {
        c.iter().filter(|c| c.path == notes_path).count() >= 3
    });
    let after: Vec<&Call> = calls[1..].iter().collect();
    let shape: Vec<(String, String)> = after
        .iter()
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect();
    assert_eq!(
        shape,
        [
            ("POST".to_string(), notes_path.clone()),
            ("POST".to_string(), notes_path.clone()),
            ("POST".to_string(), "/v2/enqueue".to_string()),
            ("POST".to_string(), notes_path.clone()),
        ],
        "note(approved), note(rollback_started), resolve, note(rolled_back): {calls:#?}"
    );
    assert!(after.iter().all(|c| c.status < 300), "{calls:#?}");
    let notes: Vec<&str> = after
        .iter()
        .filter(|c| c.path == notes_path)
        .map(|c| {
            assert_rest_headers(c);
            c.body["note"]["content"].as_str().unwrap_or("")
        })
        .collect();
    assert!(notes[0].contains("approved"), "{notes:#?}");
    assert!(notes[1].contains("Rollback initiated"), "{notes:#?}");
    assert!(
        notes[2].contains("Rolled back") && notes[2].contains("v-A"),
        "{notes:#?}"
    );
    assert!(
        notes.iter().all(|n| n.contains(&link)),
        "notes link back: {notes:#?}"
    );
    let resolve = after[2];
    assert_eq!(resolve.body["event_action"], "resolve", "{resolve:#?}");
    assert_eq!(resolve.body["dedup_key"], key.as_str(), "{resolve:#?}");
    assert_eq!(resolve.body["routing_key"], ROUTING_KEY, "{resolve:#?}");

    // No second trigger, and every delivery is in the timeline.
    assert_eq!(
        enqueues(&calls).len(),
        2,
        "one trigger, one resolve: {calls:#?}"
    );
    let inc = wait_for(Duration::from_secs(5), || {
        let inc = f.incident();
        let n = timeline(&inc)
            .iter()
            .filter(|t| {
                t["kind"] == "notified"
                    && t["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("pagerduty"))
            })
            .count();
        (n == 4).then_some(inc)
    })
    .unwrap_or_else(|| panic!("4 notified entries: {:#}", f.incident()));
    assert!(inc["approvals"]["deadline"].is_string(), "{inc:#}");
}

// ---- 2. negative flows ----

#[test]
fn strangers_repeats_and_duplicate_deliveries_are_not_counted_and_a_note_approves() {
    let f = Flow::awaiting(POLICY);
    f.link();

    // A PagerDuty user who is not in `people`: 202, recorded, not counted.
    f.workflow("wh-stranger", APPROVE_WF, "PZZZ999");
    // Eve is a person but holds none of the required roles.
    f.workflow("wh-eve", APPROVE_WF, EVE);
    let inc = f.incident();
    let v = votes(&inc);
    assert_eq!(v.len(), 2, "{inc:#}");
    assert!(v.iter().all(|v| v["counted"] == false), "{inc:#}");
    assert!(
        v[0]["person"]
            .as_str()
            .is_some_and(|p| p.contains("PZZZ999")),
        "{inc:#}"
    );
    assert_eq!(v[1]["person"], "eve", "{inc:#}");
    assert!(
        v.iter().all(|v| v["why_not_counted"].is_string()),
        "{inc:#}"
    );

    // Ada's vote, then the same delivery again (PagerDuty retries with the same X-Webhook-Id).
    let body = webhook_workflow_started("evt-ada-1", PD_INC, APPROVE_WF, ADA);
    let sig = signed_webhook(S1, &body);
    let (s, first) = deliver(&f.d, &body, Some(&sig), "wh-ada-1");
    assert_eq!((s, &first["duplicate"]), (202, &json!(false)), "{first}");
    let (s, again) = deliver(&f.d, &body, Some(&sig), "wh-ada-1");
    assert_eq!(s, 202, "a duplicate still gets a 2xx: {again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["delivery"], "evt-ada-1", "{again}");
    // Sent again under a new X-Webhook-Id (the header is not signed): the same event.
    let (s, forged) = deliver(&f.d, &body, Some(&sig), "wh-forged-new-id");
    assert_eq!((s, &forged["duplicate"]), (202, &json!(true)), "{forged}");
    let inc = f.incident();
    assert_eq!(votes(&inc).len(), 3, "no vote from the duplicate: {inc:#}");
    assert_eq!(counted(&inc), ["ada"]);

    // Ada again, in a different delivery: recorded, counted once.
    f.workflow("wh-ada-2", APPROVE_WF, ADA);
    let inc = f.incident();
    assert_eq!(counted(&inc), ["ada"], "{inc:#}");
    assert_eq!(votes(&inc).len(), 4, "{inc:#}");
    assert_eq!(inc["state"], "awaiting_approval");

    // A note that merely mentions /approve is not a vote.
    f.note("wh-chatter", "I think we should /approve this", CY);
    let inc = f.incident();
    assert_eq!(votes(&inc).len(), 4, "{inc:#}");
    assert!(f.step_log().is_empty());

    // Cy's `/approve` note counts like the workflow.
    f.note("wh-cy-note", "/approve error rate doubled since v-B", CY);
    let inc = f.wait_state("rolled_back", Duration::from_secs(10));
    assert_eq!(counted(&inc), ["ada", "cy"], "{inc:#}");
    let cy = votes(&inc)
        .into_iter()
        .find(|v| v["person"] == "cy")
        .unwrap();
    assert_eq!(cy["via"], "pagerduty-note", "{cy}");
    assert_eq!(cy["reason"], "error rate doubled since v-B", "{cy}");
    assert_eq!(f.step_log(), ["A"]);
}

/// A signed workflow body as PagerDuty would have sent it, with `event` fields changed before
/// signing (what a captured delivery of an earlier time, or an integration's event, looks like).
fn workflow_body_with(event_id: &str, user: &str, change: impl FnOnce(&mut Value)) -> String {
    let body = webhook_workflow_started(event_id, PD_INC, APPROVE_WF, user);
    let mut v: Value = serde_json::from_str(&body).unwrap();
    change(&mut v["event"]);
    v.to_string()
}

#[test]
fn a_captured_approval_from_before_the_incident_and_a_bots_vote_are_not_counted() {
    let f = Flow::awaiting(POLICY);
    f.link();
    // Ada's approval from an earlier incident on the same PagerDuty incident, sent again: its
    // event id is past the de-duplication memory, its signed occurred_at is not.
    let captured = workflow_body_with("evt-captured", ADA, |e| {
        e["occurred_at"] = json!("2026-01-01T09:00:00.000Z");
    });
    let (s, v) = deliver(
        &f.d,
        &captured,
        Some(&signed_webhook(S1, &captured)),
        "wh-new-1",
    );
    assert_eq!((s, &v["duplicate"]), (202, &json!(false)), "{v}");
    // An event whose agent is an integration, naming Cy's user id.
    let bot = workflow_body_with("evt-bot", CY, |e| {
        e["agent"]["type"] = json!("service_reference");
    });
    let (s, v) = deliver(&f.d, &bot, Some(&signed_webhook(S1, &bot)), "wh-new-2");
    assert_eq!(s, 202, "{v}");
    let inc = f.incident();
    let v = votes(&inc);
    assert_eq!(v.len(), 2, "{inc:#}");
    assert!(counted(&inc).is_empty(), "{inc:#}");
    let why = |i: usize| v[i]["why_not_counted"].as_str().unwrap_or("").to_string();
    assert!(why(0).contains("before incident"), "{inc:#}");
    assert!(why(1).contains("not a PagerDuty user"), "{inc:#}");
    assert_eq!(inc["state"], "awaiting_approval");
    // The same people, now: counted, and the rollback runs once.
    f.workflow("wh-ada", APPROVE_WF, ADA);
    f.workflow("wh-cy", APPROVE_WF, CY);
    let inc = f.wait_state("rolled_back", Duration::from_secs(10));
    assert_eq!(counted(&inc), ["ada", "cy"], "{inc:#}");
    assert_eq!(f.step_log(), ["A"]);
}

#[test]
fn reject_workflow_ends_the_request_and_nothing_runs() {
    let f = Flow::awaiting(POLICY);
    f.link();
    f.workflow("wh-cy-reject", REJECT_WF, CY);
    let inc = f.wait_state("rejected", Duration::from_secs(5));
    assert!(
        inc["reason"].as_str().is_some_and(|r| r.contains("cy")),
        "{inc:#}"
    );
    assert_eq!(votes(&inc)[0]["vote"], "reject", "{inc:#}");
    // A late approval is answered 202 (PagerDuty must not see a 4xx) and changes nothing.
    f.workflow("wh-ada-late", APPROVE_WF, ADA);
    let inc = f.incident();
    assert_eq!(inc["state"], "rejected");
    assert_eq!(counted(&inc), ["cy"], "{inc:#}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(f.step_log().is_empty(), "the step ran: {:?}", f.step_log());
    assert!(!f.log.exists());
    let (s, v) = get(&f.d.url(&format!("/v1/freezes/{SERVICE}")), None);
    assert_eq!(s, 200, "no freeze without a rollback: {v}");
    // The decision is announced as a note on the linked PagerDuty incident.
    let notes_path = format!("/incidents/{PD_INC}/notes");
    f.pd.wait_for(Duration::from_secs(5), |c| {
        c.iter().any(|c| {
            c.path == notes_path
                && c.body["note"]["content"]
                    .as_str()
                    .is_some_and(|n| n.contains("rejected"))
        })
    });
    // Nobody needs paging about it any more: the alert rollbackd opened is resolved.
    f.pd.wait_for(Duration::from_secs(5), |c| {
        c.iter()
            .any(|c| c.path == "/v2/enqueue" && c.body["event_action"] == "resolve")
    });
}

#[test]
fn approval_timeout_abort_expires() {
    let f = Flow::awaiting(
        "{require_roles: [founder, client-success-lead], quorum: 2, timeout: 2s, on_timeout: abort}",
    );
    f.link();
    f.workflow("wh-ada", APPROVE_WF, ADA);
    let inc = f.wait_state("expired", Duration::from_secs(6));
    assert!(
        inc["reason"]
            .as_str()
            .is_some_and(|r| r.contains("timed out")),
        "{inc:#}"
    );
    // Too late now.
    f.workflow("wh-cy-late", APPROVE_WF, CY);
    std::thread::sleep(Duration::from_millis(300));
    let inc = f.incident();
    assert_eq!(inc["state"], "expired");
    assert_eq!(counted(&inc), ["ada"], "{inc:#}");
    assert!(f.step_log().is_empty(), "the step ran: {:?}", f.step_log());
    // The expiry is announced on the linked PagerDuty incident.
    let notes_path = format!("/incidents/{PD_INC}/notes");
    f.pd.wait_for(Duration::from_secs(5), |c| {
        c.iter().any(|c| {
            c.path == notes_path
                && c.body["note"]["content"]
                    .as_str()
                    .is_some_and(|n| n.contains("not approved in time"))
        })
    });
}

#[test]
fn approval_timeout_proceed_rolls_back() {
    let f = Flow::awaiting(
        "{require_roles: [founder, client-success-lead], quorum: 2, timeout: 2s, on_timeout: proceed}",
    );
    let inc = f.wait_state("rolled_back", Duration::from_secs(8));
    assert!(
        timeline(&inc).iter().any(|t| t["kind"] == "approved"
            && t["message"]
                .as_str()
                .is_some_and(|m| m.contains("on_timeout: proceed"))),
        "{inc:#}"
    );
    assert_eq!(f.step_log(), ["A"]);
}

#[test]
fn restart_while_awaiting_keeps_deadline_dedupe_and_counts_later_votes() {
    let f = Flow::awaiting(POLICY);
    f.link();
    let body = webhook_workflow_started("evt-ada", PD_INC, APPROVE_WF, ADA);
    let sig = signed_webhook(S1, &body);
    let (s, v) = deliver(&f.d, &body, Some(&sig), "wh-ada");
    assert_eq!((s, &v["duplicate"]), (202, &json!(false)), "{v}");
    let before = f.incident();
    assert_eq!(counted(&before), ["ada"]);
    let deadline = before["approvals"]["deadline"].clone();
    assert!(deadline.is_string(), "{before:#}");
    // The trigger is delivered and recorded before the crash.
    wait_for(Duration::from_secs(5), || {
        timeline(&f.incident())
            .iter()
            .any(|t| t["kind"] == "notified")
            .then_some(())
    })
    .expect("trigger recorded as notified");

    let f = f.restart();

    let inc = f.incident();
    assert_eq!(inc["state"], "awaiting_approval", "{inc:#}");
    assert_eq!(
        inc["approvals"]["deadline"], deadline,
        "the deadline survives"
    );
    assert_eq!(counted(&inc), ["ada"], "the vote survives: {inc:#}");
    assert_eq!(inc["pagerduty_incident"], PD_INC, "the link survives");

    // PagerDuty retries Ada's delivery after the restart: still a duplicate.
    let (s, v) = deliver(&f.d, &body, Some(&sig), "wh-ada");
    assert_eq!((s, &v["duplicate"]), (202, &json!(true)), "{v}");

    f.workflow("wh-cy", APPROVE_WF, CY);
    let inc = f.wait_state("rolled_back", Duration::from_secs(10));
    assert_eq!(counted(&inc), ["ada", "cy"], "{inc:#}");
    assert_eq!(f.step_log(), ["A"]);
    // The trigger was not sent again (it was delivered before the crash); the rest follow it.
    let notes_path = format!("/incidents/{PD_INC}/notes");
    let calls = f.pd.wait_for(Duration::from_secs(10), |c| {
        c.iter().filter(|c| c.path == notes_path).count() >= 3
    });
    let triggers = enqueues(&calls)
        .into_iter()
        .filter(|c| c.body["event_action"] == "trigger")
        .count();
    assert_eq!(triggers, 1, "{calls:#?}");
}

#[test]
fn pings_unknown_events_and_foreign_workflows_change_nothing() {
    let f = Flow::awaiting(POLICY);
    f.link();
    let before = f.incident();
    let sign = |b: &str| signed_webhook(S1, b);

    let ping = webhook_ping("evt-ping");
    let (s, v) = deliver(&f.d, &ping, Some(&sign(&ping)), "wh-ping");
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["event_type"], "pagey.ping");
    assert_eq!(v["duplicate"], false);

    let unknown = json!({"event": {
        "id": "evt-unknown", "event_type": "service.updated", "resource_type": "service",
        "occurred_at": ts(0.0), "agent": null, "client": null,
        "data": {"id": "PSVC001", "type": "service", "summary": "portal"}
    }})
    .to_string();
    let (s, v) = deliver(&f.d, &unknown, Some(&sign(&unknown)), "wh-unknown");
    assert!((200..300).contains(&s), "{s} {v}");
    assert_eq!(v["event_type"], "service.updated");

    let future = json!({"event": {
        "id": "evt-future", "event_type": "incident.something_brand_new",
        "data": {"incident": {"id": PD_INC}, "type": "something"}
    }})
    .to_string();
    let (s, v) = deliver(&f.d, &future, Some(&sign(&future)), "wh-future");
    assert!((200..300).contains(&s), "{s} {v}");

    // A workflow that is neither the approve nor the reject one.
    f.workflow("wh-other-wf", "PUNKNWN", ADA);
    // A note without a command.
    f.note("wh-chatter", "looking into it", ADA);
    // An approval on a PagerDuty incident no rollbackd incident is announced on.
    let foreign = webhook_workflow_started("evt-foreign", "QFOREIGN000001", APPROVE_WF, ADA);
    let (s, v) = deliver(&f.d, &foreign, Some(&sign(&foreign)), "wh-foreign");
    assert_eq!(s, 202, "{v}");
    // Another update of our own PagerDuty incident (acknowledged): not an alert, no new link.
    let ack = webhook_incident(
        "evt-ack",
        "incident.acknowledged",
        PD_INC,
        Some(&f.dedup_key()),
        "ack",
    );
    let (s, v) = deliver(&f.d, &ack, Some(&sign(&ack)), "wh-ack");
    assert_eq!(s, 202, "{v}");

    std::thread::sleep(Duration::from_millis(200));
    let after = f.incident();
    assert_eq!(after["state"], "awaiting_approval", "{after:#}");
    assert_eq!(after["approvals"], before["approvals"], "{after:#}");
    assert_eq!(after["pagerduty_incident"], PD_INC);
    assert!(
        !timeline(&after)
            .iter()
            .any(|t| t["kind"] == "vote" || t["kind"] == "vote_ignored"),
        "{after:#}"
    );
    assert_eq!(incidents(&f.d).len(), 1, "no other incident");
    let (s, v) = get(&f.d.url("/v1/breaches"), None);
    assert_eq!(s, 200);
    assert_eq!(
        v["items"].as_array().map(Vec::len),
        Some(1),
        "PagerDuty's own incident opened no breach: {v:#}"
    );
    assert!(f.step_log().is_empty());
}

// ---- 3. signatures ----

#[test]
fn signatures_are_checked_on_the_exact_bytes() {
    let pd = FakePagerDuty::start();
    let setup = Setup::new(&config(&pd), "");
    let log = setup.path().join("steps.log");
    std::fs::write(setup.path().join("rules/rules.yaml"), rules(POLICY, &log)).unwrap();
    let d = setup.start();
    let body = webhook_ping("evt-sig");
    let good = signed_webhook(S1, &body);

    let expect_error = |status: u16, sig: Option<&str>, b: &str, id: &str, why: &str| {
        let (s, v) = deliver(&d, b, sig, id);
        assert_eq!(s, status, "{why}: {v}");
        assert!(v["error"].is_string(), "{why}: JSON error body: {v}");
    };
    expect_error(400, None, &body, "wh-1", "missing header");
    expect_error(400, Some(""), &body, "wh-2", "empty header");
    expect_error(400, Some("t=1700000000"), &body, "wh-3", "no v1= entry");
    let v0 = good.replacen("v1=", "v0=", 1);
    expect_error(400, Some(&v0), &body, "wh-4", "only another version");
    expect_error(
        401,
        Some("v1=not-hex"),
        &body,
        "wh-5",
        "a v1= entry that matches nothing",
    );
    let wrong = signed_webhook("some-other-secret-entirely", &body);
    expect_error(401, Some(&wrong), &body, "wh-6", "wrong signature");
    let tampered = body.replace("Pagey", "Pagex");
    assert_ne!(tampered, body);
    expect_error(
        401,
        Some(&good),
        &tampered,
        "wh-7",
        "body changed after signing",
    );
    let newline = format!("{body}\n");
    expect_error(401, Some(&good), &newline, "wh-8", "trailing newline added");
    let reserialised =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    expect_error(
        401,
        Some(&good),
        &reserialised,
        "wh-9",
        "re-serialised body",
    );

    // Rotation: several entries, one valid; or signed with the second configured secret.
    let rotated = webhook_ping("evt-sig-rotated");
    let rotating = signed_webhook_rotating(&["retired-secret-0123456789", S1], &rotated);
    let (s, v) = deliver(&d, &rotated, Some(&rotating), "wh-10");
    assert_eq!((s, &v["duplicate"]), (202, &json!(false)), "rotation: {v}");
    let by_s2 = webhook_ping("evt-sig-2");
    let (s, v) = deliver(&d, &by_s2, Some(&signed_webhook(S2, &by_s2)), "wh-11");
    assert_eq!(s, 202, "second configured secret: {v}");
    let both = signed_webhook_rotating(&[S2, S1], &rotated);
    let (s, v) = deliver(&d, &rotated, Some(&both), "wh-12");
    assert_eq!(
        (s, &v["duplicate"]),
        (202, &json!(true)),
        "the same event: {v}"
    );

    // A refused delivery does not use up its id: PagerDuty's retry with a good signature counts.
    expect_error(401, Some(&wrong), &body, "wh-13", "wrong signature");
    let (s, v) = deliver(&d, &body, Some(&good), "wh-13");
    assert_eq!((s, &v["duplicate"]), (202, &json!(false)), "{v}");
    let (s, v) = deliver(&d, &body, Some(&good), "wh-13");
    assert_eq!((s, &v["duplicate"]), (202, &json!(true)), "{v}");

    // Signed, but not a V3 body: 400 naming the problem.
    let junk = r#"{"messages":[{"event":"incident.custom"}]}"#;
    let (s, v) = deliver(&d, junk, Some(&signed_webhook(S1, junk)), "wh-14");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("event")),
        "{v}"
    );

    // Refusals are counted.
    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let auth = metrics
        .lines()
        .find(|l| {
            l.starts_with("rollbackd_ingest_rejected_total")
                && l.contains("source=\"pagerduty\"")
                && l.contains("reason=\"auth\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: f64 = auth.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, 10.0, "{auth}");
    // Nothing reached PagerDuty: no incident.
    assert!(pd.calls().is_empty());
}

#[test]
fn pagerduty_not_configured_is_404_json() {
    let setup = Setup::new("", "");
    let d = setup.start();
    let body = webhook_ping("evt-none");
    let (s, v) = deliver(&d, &body, Some(&signed_webhook(S1, &body)), "wh-none");
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("PagerDuty")),
        "{v}"
    );
    assert!(v.get("detail").is_some(), "{v}");
}

// ---- 4. outbound resilience ----

/// No approval: the rule acts at once; the announcements are approved, rollback_started,
/// rolled_back, all through the Events API (no PagerDuty incident is linked).
fn autonomous(prepare: impl FnOnce(&FakePagerDuty)) -> Flow {
    let pd = FakePagerDuty::start();
    prepare(&pd);
    let setup = Setup::new(&config(&pd), "");
    let log = setup.path().join("steps.log");
    std::fs::write(setup.path().join("rules/rules.yaml"), rules("none", &log)).unwrap();
    let d = setup.start();
    release(&d, "A", &ts(-120.0));
    release(&d, "B", &ts(-60.0));
    let alert = am_alert(
        "firing",
        json!({"alertname": ALERT, "service": SERVICE, "severity": "page"}),
        &ts(-2.5),
        "fp-auto",
    );
    let (s, v) = post(&d.url("/v1/webhooks/alertmanager"), None, &alert);
    assert_eq!(s, 200, "{v}");
    let id = wait_for(Duration::from_secs(5), || {
        incidents(&d)
            .first()
            .map(|i| i["id"].as_str().unwrap().to_string())
    })
    .expect("incident");
    Flow {
        setup,
        d,
        pd,
        log,
        id,
    }
}

/// The three successful events, in order: trigger (approved), trigger (rollback started),
/// resolve (rolled back), all under the incident's dedup key.
fn assert_three_events_in_order(f: &Flow, calls: &[Call]) {
    let good = ok(&enqueues(calls));
    assert_eq!(good.len(), 3, "{calls:#?}");
    let actions: Vec<&str> = good
        .iter()
        .map(|c| c.body["event_action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["trigger", "trigger", "resolve"], "{calls:#?}");
    assert!(summary(&good[0]).contains("approved"), "{calls:#?}");
    assert!(
        summary(&good[1]).contains("Rollback initiated"),
        "{calls:#?}"
    );
    assert!(
        good.iter()
            .all(|c| c.body["dedup_key"] == f.dedup_key().as_str()),
        "{calls:#?}"
    );
}

#[test]
fn events_api_5xx_is_retried_and_never_blocks_the_rollback() {
    let f = autonomous(|pd| pd.fail_next(2, 500));
    let inc = f.wait_state("rolled_back", Duration::from_secs(5));
    // The rollback finished while PagerDuty was still failing.
    let so_far = f.pd.calls();
    assert!(
        ok(&so_far).is_empty(),
        "rolled back before PagerDuty accepted anything: {so_far:#?}"
    );
    assert_eq!(f.step_log(), ["A"]);
    assert_eq!(inc["steps"][0]["state"], "done");

    let calls = f.pd.wait_for(Duration::from_secs(12), |c| ok(c).len() >= 3);
    assert_eq!(calls.len(), 5, "two failures, three deliveries: {calls:#?}");
    assert_eq!(calls[0].status, 500);
    assert_eq!(calls[1].status, 500);
    // The failed attempts were the first announcement, retried with the same key and text.
    // (Not byte-identical: the payload is rendered from the incident at delivery time, so
    // `custom_details.state` and `timestamp` move on between attempts.)
    for k in ["/event_action", "/dedup_key", "/payload/summary"] {
        assert_eq!(
            calls[0].body.pointer(k),
            calls[2].body.pointer(k),
            "{k}: {calls:#?}"
        );
    }
    assert_three_events_in_order(&f, &calls);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.pd.calls().len(), 5, "nothing sent twice");
    let inc = f.incident();
    let tl = timeline(&inc);
    assert!(
        tl.iter().any(|t| t["kind"] == "notification_retry"
            && t["message"].as_str().is_some_and(|m| m.contains("500"))),
        "{inc:#}"
    );
    assert_eq!(
        tl.iter().filter(|t| t["kind"] == "notified").count(),
        3,
        "{inc:#}"
    );
}

#[test]
fn events_api_429_waits_for_ratelimit_reset_and_never_blocks_the_rollback() {
    // The first answer says "reset in 1 s", the second "in 3 s" (longer than the 2 s backoff
    // rollbackd would otherwise use): both waits are honoured.
    let f = autonomous(|pd| {
        pd.fail_next(1, 429);
        pd.fail_next_with(1, 429, Some(3));
    });
    f.wait_state("rolled_back", Duration::from_secs(5));
    assert!(ok(&f.pd.calls()).is_empty(), "{:#?}", f.pd.calls());
    assert_eq!(f.step_log(), ["A"]);

    let calls = f.pd.wait_for(Duration::from_secs(12), |c| ok(c).len() >= 3);
    assert_eq!(calls.len(), 5, "{calls:#?}");
    assert_eq!(calls[0].status, 429);
    assert_eq!(calls[1].status, 429);
    let gap1 = calls[1].at.duration_since(calls[0].at);
    let gap2 = calls[2].at.duration_since(calls[1].at);
    assert!(gap1 >= Duration::from_millis(900), "retried after {gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(2800),
        "ratelimit-reset: 3 honoured, retried after {gap2:?}"
    );
    assert_three_events_in_order(&f, &calls);
}
