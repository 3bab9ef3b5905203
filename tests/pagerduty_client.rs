//! `rollbackd::notify::pagerduty::PdClient` against the fake PagerDuty: request shapes and headers,
//! and how each answer maps to `PdError`.

#[path = "common/fake_pagerduty.rs"]
mod fake_pagerduty;

use std::time::Duration;

use fake_pagerduty::{ACCEPT_V2, FakePagerDuty, signed_webhook};
use rollbackd::model::{
    Approval, Incident, IncidentState, ReleaseRef, Signal, SignalStatus, Source,
};
use rollbackd::notify::pagerduty::{
    EventAction, EventsV2, EventsV2Link, EventsV2Payload, PdClient, PdError, Severity,
};
use serde_json::json;

const TOKEN: &str = "y_NbAkKc66ryYTWUXYEu";
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
const FROM: &str = "rollbackd@example.com";

fn client(pd: &FakePagerDuty) -> PdClient {
    client_from(pd, FROM)
}

fn client_from(pd: &FakePagerDuty, from: &str) -> PdClient {
    // A trailing slash on the bases must not double up in the paths.
    PdClient::new(
        reqwest::Client::new(),
        format!("{}/", pd.url()),
        TOKEN,
        from,
        format!("{}/", pd.url()),
    )
}

fn trigger(summary: &str) -> EventsV2 {
    EventsV2 {
        routing_key: ROUTING_KEY.into(),
        event_action: EventAction::Trigger,
        dedup_key: "rollbackd/inc-20261124-0001".into(),
        payload: Some(EventsV2Payload {
            summary: summary.into(),
            source: "portal/prod".into(),
            severity: Severity::Critical,
            timestamp: Some("2026-11-24T10:10:00Z".parse().unwrap()),
            component: Some("portal".into()),
            group: Some("prod".into()),
            class: Some("portal-error-rate".into()),
            custom_details: Some(json!({"release_from": "v42", "release_to": "v41"})),
        }),
        client: Some("rollbackd".into()),
        client_url: Some("https://rollbackd.example.com/incidents/inc-1".into()),
        links: vec![EventsV2Link {
            href: "https://rollbackd.example.com/incidents/inc-1".into(),
            text: Some("rollbackd incident".into()),
        }],
        images: vec![],
    }
}

fn resolve() -> EventsV2 {
    EventsV2 {
        routing_key: ROUTING_KEY.into(),
        event_action: EventAction::Resolve,
        dedup_key: "rollbackd/inc-20261124-0001".into(),
        payload: None,
        client: None,
        client_url: None,
        links: vec![],
        images: vec![],
    }
}

fn no_secrets(e: &PdError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(TOKEN), "token leaked: {text}");
    assert!(!text.contains(ROUTING_KEY), "routing key leaked: {text}");
}

#[tokio::test]
async fn enqueue_trigger_sends_the_documented_body_without_auth() {
    let pd = FakePagerDuty::start();
    let key = client(&pd)
        .enqueue(&trigger("portal error rate 12% since v42"))
        .await
        .unwrap();
    assert_eq!(key, "rollbackd/inc-20261124-0001");
    let calls = pd.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(
        (c.method.as_str(), c.path.as_str(), c.status),
        ("POST", "/v2/enqueue", 202)
    );
    assert_eq!(
        c.header("authorization"),
        None,
        "Events API takes no auth header"
    );
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(
        c.body,
        json!({
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "dedup_key": "rollbackd/inc-20261124-0001",
            "payload": {
                "summary": "portal error rate 12% since v42",
                "source": "portal/prod",
                "severity": "critical",
                "timestamp": "2026-11-24T10:10:00Z",
                "component": "portal",
                "group": "prod",
                "class": "portal-error-rate",
                "custom_details": {"release_from": "v42", "release_to": "v41"}
            },
            "client": "rollbackd",
            "client_url": "https://rollbackd.example.com/incidents/inc-1",
            "links": [{"href": "https://rollbackd.example.com/incidents/inc-1", "text": "rollbackd incident"}]
        })
    );
}

#[tokio::test]
async fn enqueue_resolve_sends_no_payload() {
    let pd = FakePagerDuty::start();
    let key = client(&pd).enqueue(&resolve()).await.unwrap();
    assert_eq!(key, "rollbackd/inc-20261124-0001");
    assert_eq!(
        pd.calls()[0].body,
        json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "rollbackd/inc-20261124-0001"})
    );
}

#[tokio::test]
async fn enqueue_cuts_summaries_to_1024_characters() {
    let pd = FakePagerDuty::start();
    let long = "é".repeat(3000);
    client(&pd).enqueue(&trigger(&long)).await.unwrap();
    let c = &pd.calls()[0];
    assert_eq!(c.status, 202);
    let sent = c.body["payload"]["summary"].as_str().unwrap();
    assert_eq!(sent.chars().count(), 1024);
    assert!(sent.ends_with('…'));
    // The fake itself refuses what PagerDuty refuses.
    let raw = json!({"routing_key": ROUTING_KEY, "event_action": "trigger",
        "payload": {"summary": "x".repeat(1025), "source": "s", "severity": "info"}});
    let r = reqwest::Client::new()
        .post(format!("{}/v2/enqueue", pd.url()))
        .json(&raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "invalid event");
}

#[tokio::test]
async fn enqueue_400_is_permanent_and_names_no_secret() {
    let pd = FakePagerDuty::start();
    let mut ev = trigger("x");
    ev.routing_key = "too-short".into();
    let err = client(&pd).enqueue(&ev).await.unwrap_err();
    let PdError::Permanent(why) = &err else {
        panic!("{err:?}")
    };
    assert!(
        why.contains("HTTP 400") && why.contains("invalid event"),
        "{why}"
    );
    assert!(
        why.contains("routing_key"),
        "PagerDuty's reason is kept: {why}"
    );
    no_secrets(&err);
    // A bad dedup key never leaves the process.
    let mut ev = resolve();
    ev.dedup_key = "k".repeat(256);
    assert!(matches!(
        client(&pd).enqueue(&ev).await,
        Err(PdError::Permanent(_))
    ));
    assert_eq!(pd.calls().len(), 1);
}

#[tokio::test]
async fn enqueue_429_and_5xx_retry() {
    let pd = FakePagerDuty::start();
    pd.fail_next_with(1, 429, Some(7));
    let err = client(&pd).enqueue(&trigger("x")).await.unwrap_err();
    assert!(
        matches!(err, PdError::Retry { after: Some(d), .. } if d == Duration::from_secs(7)),
        "{err:?}"
    );
    no_secrets(&err);
    pd.fail_next_with(1, 429, None);
    let err = client(&pd).enqueue(&trigger("x")).await.unwrap_err();
    assert!(matches!(err, PdError::Retry { after: None, .. }), "{err:?}");
    pd.fail_next(1, 503);
    let err = client(&pd).enqueue(&trigger("x")).await.unwrap_err();
    assert!(matches!(err, PdError::Retry { after: None, .. }), "{err:?}");
    // Once the failures are used up the same event goes through.
    assert!(client(&pd).enqueue(&trigger("x")).await.is_ok());
    let statuses: Vec<u16> = pd.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 429, 503, 202]);
}

#[tokio::test]
async fn note_sends_token_version_and_from() {
    let pd = FakePagerDuty::start();
    client(&pd)
        .note(
            "Q2CKYRLH85UNN4",
            "rollbackd wants to roll portal back to v41: /approve or /reject",
        )
        .await
        .unwrap();
    let c = &pd.calls()[0];
    assert_eq!(
        (c.method.as_str(), c.path.as_str(), c.status),
        ("POST", "/incidents/Q2CKYRLH85UNN4/notes", 201)
    );
    assert_eq!(
        c.header("authorization"),
        Some(format!("Token token={TOKEN}").as_str())
    );
    assert_eq!(c.header("accept"), Some(ACCEPT_V2));
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.header("from"), Some(FROM));
    assert_eq!(
        c.body,
        json!({"note": {"content": "rollbackd wants to roll portal back to v41: /approve or /reject"}})
    );
}

#[tokio::test]
async fn resolve_incident_puts_an_incident_reference() {
    let pd = FakePagerDuty::start();
    client(&pd).resolve_incident("PGR0VU2").await.unwrap();
    let c = &pd.calls()[0];
    assert_eq!(
        (c.method.as_str(), c.path.as_str(), c.status),
        ("PUT", "/incidents/PGR0VU2", 200)
    );
    assert_eq!(c.header("from"), Some(FROM));
    assert_eq!(c.header("accept"), Some(ACCEPT_V2));
    assert_eq!(
        c.body,
        json!({"incident": {"type": "incident_reference", "status": "resolved"}})
    );
}

#[tokio::test]
async fn resolving_a_resolved_incident_is_success() {
    let pd = FakePagerDuty::start();
    pd.answer_next(
        400,
        json!({"error": {"message": "Incident Already Resolved", "code": 1001}}),
    );
    client(&pd).resolve_incident("PGR0VU2").await.unwrap();
    // The same code on a note is an error: nothing was written.
    pd.answer_next(
        400,
        json!({"error": {"message": "Incident Already Resolved", "code": 1001}}),
    );
    let err = client(&pd).note("PGR0VU2", "x").await.unwrap_err();
    assert!(
        matches!(&err, PdError::Permanent(w) if w.contains("code 1001")),
        "{err:?}"
    );
}

#[tokio::test]
async fn rest_429_honours_ratelimit_reset() {
    let pd = FakePagerDuty::start();
    pd.fail_next_with(1, 429, Some(20));
    let err = client(&pd).note("PGR0VU2", "hello").await.unwrap_err();
    let PdError::Retry { after, why } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*after, Some(Duration::from_secs(20)));
    assert!(why.contains("2020"), "PagerDuty's code is kept: {why}");
    no_secrets(&err);
    pd.fail_next(1, 429);
    let err = client(&pd).resolve_incident("PGR0VU2").await.unwrap_err();
    assert_eq!(
        err,
        PdError::Retry {
            after: Some(Duration::from_secs(1)),
            why: "PagerDuty PUT /incidents/PGR0VU2: HTTP 429: code 2020: Rate Limit Exceeded"
                .into()
        }
    );
}

#[tokio::test]
async fn rest_500_retries_and_connection_errors_retry() {
    let pd = FakePagerDuty::start();
    pd.fail_next(2, 500);
    for r in [
        client(&pd).note("PGR0VU2", "hello").await,
        client(&pd).resolve_incident("PGR0VU2").await,
    ] {
        let err = r.unwrap_err();
        assert!(matches!(err, PdError::Retry { after: None, .. }), "{err:?}");
        no_secrets(&err);
    }
    // Nothing listens here any more.
    let url = pd.url();
    drop(pd);
    let gone = PdClient::new(reqwest::Client::new(), &url, TOKEN, FROM, &url);
    for err in [
        gone.note("PGR0VU2", "hello").await.unwrap_err(),
        gone.enqueue(&trigger("x")).await.unwrap_err(),
    ] {
        assert!(matches!(err, PdError::Retry { after: None, .. }), "{err:?}");
        no_secrets(&err);
        assert!(!err.to_string().contains(&url), "no URL in errors: {err}");
    }
}

#[tokio::test]
async fn rest_4xx_is_permanent_with_pagerdutys_reason() {
    let pd = FakePagerDuty::start();
    // A name instead of an email: PagerDuty's 1028.
    let err = client_from(&pd, "Rollback Bot")
        .note("PGR0VU2", "hi")
        .await
        .unwrap_err();
    let PdError::Permanent(why) = &err else {
        panic!("{err:?}")
    };
    assert!(
        why.contains("HTTP 400") && why.contains("code 1028"),
        "{why}"
    );
    no_secrets(&err);
    // No `from` configured: refused before any request.
    let before = pd.calls().len();
    let err = client_from(&pd, "")
        .note("PGR0VU2", "hi")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PdError::Permanent(w) if w.contains("pagerduty.from")),
        "{err:?}"
    );
    assert_eq!(pd.calls().len(), before);
    // Other 4xx answers.
    for status in [400, 401, 403, 404] {
        pd.fail_next(1, status);
        let err = client(&pd).resolve_incident("PGR0VU2").await.unwrap_err();
        assert!(
            matches!(&err, PdError::Permanent(w) if w.contains(&format!("HTTP {status}"))),
            "{err:?}"
        );
        no_secrets(&err);
    }
}

#[tokio::test]
async fn fake_answers_missing_from_with_2016() {
    let pd = FakePagerDuty::start();
    let r = reqwest::Client::new()
        .post(format!("{}/incidents/PGR0VU2/notes", pd.url()))
        .header("Authorization", format!("Token token={TOKEN}"))
        .header("Accept", ACCEPT_V2)
        .json(&json!({"note": {"content": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 2016);
    let r = reqwest::Client::new()
        .put(format!("{}/incidents/PGR0VU2", pd.url()))
        .json(&json!({"incident": {"type": "incident_reference", "status": "resolved"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
}

#[tokio::test]
async fn incident_ids_are_validated_before_any_request() {
    let pd = FakePagerDuty::start();
    for bad in ["", "../users", "PGR0VU2/notes", "PGR0VU2?x=1", "P GR"] {
        let err = client(&pd).note(bad, "x").await.unwrap_err();
        assert!(matches!(err, PdError::Permanent(_)), "{bad}: {err:?}");
        let err = client(&pd).resolve_incident(bad).await.unwrap_err();
        assert!(matches!(err, PdError::Permanent(_)), "{bad}: {err:?}");
    }
    assert!(pd.calls().is_empty());
}

#[tokio::test]
async fn events_v2_for_an_incident() {
    let inc = incident();
    let ev = EventsV2::new(
        ROUTING_KEY.into(),
        EventAction::Trigger,
        "rollbackd/inc-1".into(),
        &"s".repeat(2000),
        &inc,
        Some("https://rollbackd.example.com/incidents/inc-1"),
    );
    assert!(!format!("{ev:?}").contains(ROUTING_KEY));
    let pd = FakePagerDuty::start();
    assert_eq!(client(&pd).enqueue(&ev).await.unwrap(), "rollbackd/inc-1");
    let body = &pd.calls()[0].body;
    assert_eq!(body["payload"]["source"], "portal/prod");
    assert_eq!(body["payload"]["class"], "portal-error-rate");
    assert_eq!(body["payload"]["custom_details"]["release_to"], "v41");
    assert_eq!(
        body["payload"]["summary"].as_str().unwrap().chars().count(),
        1024
    );
    assert_eq!(
        body["links"][0]["href"],
        "https://rollbackd.example.com/incidents/inc-1"
    );
    let ev = EventsV2::new(
        ROUTING_KEY.into(),
        EventAction::Resolve,
        "rollbackd/inc-1".into(),
        "done",
        &inc,
        None,
    );
    assert!(ev.payload.is_none());
    assert_eq!(ev.event_action.to_string(), "resolve");
}

#[test]
fn fake_works_from_blocking_tests_and_signs_webhooks() {
    let pd = FakePagerDuty::start();
    pd.fail_next(1, 500);
    let http = reqwest::blocking::Client::new();
    let send = || {
        http.post(format!("{}/v2/enqueue", pd.url()))
            .json(&json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "k"}))
            .send()
            .unwrap()
    };
    assert_eq!(send().status(), 500);
    let r = send();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        v,
        json!({"status": "success", "message": "Event processed", "dedup_key": "k"})
    );
    let calls = pd.wait_for(Duration::from_secs(1), |c| c.len() == 2);
    assert_eq!(calls[1].status, 202);
    // The official go-pagerduty vector (webhookv3/webhookv3_test.go).
    let body = include_str!("../src/ingest/testdata/pagerduty_webhookv3_vector.json");
    let secret = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK";
    let sig = signed_webhook(secret, body);
    assert_eq!(
        sig,
        "v1=0c0b9495b893a39e70d1fea2fe11fbe0a825f88b9f67846f6cc07dd2bc5476cd"
    );
    // And the daemon's parser agrees with the fake's signer and body builders.
    use rollbackd::ingest::pagerduty::{PdKind, parse, signal, verify_signature};
    assert_eq!(
        verify_signature(&["a", secret], Some(&sig), body.as_bytes()),
        Ok(())
    );
    let wf = fake_pagerduty::webhook_workflow_started("E1", "PBAZLIU", "PAPPRV1", "PABC123");
    let rotating = fake_pagerduty::signed_webhook_rotating(&["old", "new"], &wf);
    assert_eq!(
        verify_signature(&["new"], Some(&rotating), wf.as_bytes()),
        Ok(())
    );
    let e = parse(wf.as_bytes()).unwrap();
    assert_eq!(
        e.kind,
        PdKind::WorkflowStarted {
            incident_id: "PBAZLIU".into(),
            workflow_id: "PAPPRV1".into()
        }
    );
    assert_eq!(e.agent.unwrap().id, "PABC123");
    let note = fake_pagerduty::webhook_note("E2", "PBAZLIU", "/reject not the release", "PDEF456");
    assert!(matches!(
        parse(note.as_bytes()).unwrap().kind,
        PdKind::Note { .. }
    ));
    assert_eq!(
        parse(fake_pagerduty::webhook_ping("E3").as_bytes())
            .unwrap()
            .kind,
        PdKind::Ping
    );
    let trig = fake_pagerduty::webhook_incident(
        "E4",
        "incident.triggered",
        "Q1R2DLCB21K7NP",
        Some("rollbackd/inc-1"),
        "portal",
    );
    let s: Signal = signal(&parse(trig.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        (s.source, s.status, s.key.as_str()),
        (Source::Pagerduty, SignalStatus::Firing, "Q1R2DLCB21K7NP")
    );
}

fn incident() -> Incident {
    let t: jiff::Timestamp = "2026-11-24T10:10:00Z".parse().unwrap();
    let rel = |v: &str| ReleaseRef {
        version: v.into(),
        deployment_id: format!("d-{v}"),
        revision: None,
        deployed_at: t,
    };
    Incident {
        id: "inc-1".into(),
        rule: "portal-error-rate".into(),
        breach: "b-1".into(),
        group: "service=portal".into(),
        service: "portal".into(),
        environment: "prod".into(),
        state: IncidentState::AwaitingApproval,
        reason: None,
        mode: "enforce".into(),
        labels: Default::default(),
        breach_started_at: t,
        deadline: t,
        opened_at: t,
        updated_at: t,
        release_from: rel("v42"),
        release_to: rel("v41"),
        approvals: Approval {
            required: true,
            require_roles: vec![],
            quorum: 1,
            deadline: None,
            on_timeout: "reject".into(),
            votes: vec![],
        },
        steps: vec![],
        freeze: false,
        notify: None,
        messages: Default::default(),
        pagerduty_incident: None,
        rollback_started_at: None,
        verify_deadline: None,
        verify: None,
        checks: vec![],
        after: vec![],
        finished_at: None,
        on_unfreeze: Vec::new(),
        unfrozen_at: None,
        on_unfreeze_ended_at: None,
    }
}
