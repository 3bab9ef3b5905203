//! An incident's own page as a person sees it: a real incident (created through the API, approved
//! by votes, rolled back by a run step and an http step, verified by a check) rendered by a real
//! headless Chromium, its DOM and its screenshot checked.

mod common;

use std::time::Duration;

use common::browser::{Shot, WINDOW, asks_for_basic_auth, render};
use common::receiver::Receiver;
use common::*;
use serde_json::{Value, json};

const READ: &str = "incidentPageReadToken0123456789";
const ADMIN: &str = "incidentPageAdminToken012345678";
const SECRET: &str = "s3cr3t-api-key-never-on-the-page";

#[test]
fn a_person_sees_an_incidents_plan_votes_steps_checks_freeze_and_timeline() {
    let api = Receiver::generic();
    let team = Receiver::generic();
    let setup = Setup::new("", "rules: []\n");
    let secret_file = setup.path().join("api-key");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let rules = format!(
        r#"rules:
  - name: checkout-errors
    match: ['alertname="CheckoutErrors"']
    group_by: [service]
    service: "{{{{ labels.service }}}}"
    breach: {{ sustained: 1s }}
    release: {{ max_age: 1h }}
    approval: {{ require_roles: [founder, client-success-lead], quorum: 2, timeout: 10m }}
    freeze: true
    notify: [team]
    steps:
      - name: redeploy
        run: [/bin/echo, "redeploying {{{{ release.previous.deployment_id }}}}", "<b>not markup</b>"]
      - name: tell the api
        http:
          method: POST
          url: "{api}"
          headers: {{ X-Api-Key: "${{file:{secret}}}" }}
    verify:
      within: 10s
      every: 300ms
      checks:
        - http: {{ url: "{health}", expect_status: 200, body_contains: received }}
"#,
        api = api.url("/rollback"),
        secret = secret_file.display(),
        health = api.url("/health"),
    );
    std::fs::write(setup.path().join("rules/rules.yaml"), rules).expect("write rules");
    let config = std::fs::read_to_string(setup.path().join("rollbackd.yaml")).expect("config")
        + &format!(
            "tokens: {{ read: \"{READ}\", admin: \"{ADMIN}\" }}\n\
             people:\n  - {{ id: ada, roles: [founder] }}\n  - {{ id: cy, roles: [client-success-lead] }}\n  - {{ id: bo, roles: [intern] }}\n\
             notifiers:\n  team: {{ webhook: \"{}\", secret: \"incidentPageWebhookSecret012345\" }}\n",
            team.url("/hook")
        );
    std::fs::write(setup.path().join("rollbackd.yaml"), config).expect("write config");
    let d = setup.start();
    release_pair_and_alert(
        &d,
        "checkout",
        json!({"alertname": "CheckoutErrors", "service": "checkout"}),
        "f1",
    );
    let id = first_incident(&d, "awaiting_approval", Some(READ), Duration::from_secs(10))
        .expect("awaiting approval");
    let vote = |person: &str| {
        post(
            &d.url(&format!("/v1/incidents/{id}/approve")),
            Some(ADMIN),
            &json!({"person": person, "reason": "errors <everywhere>"}),
        )
    };
    let (s, b) = vote("bo");
    assert!(
        s >= 400,
        "a person without the roles does not count: {s} {b}"
    );
    for person in ["ada", "cy"] {
        let (s, b) = vote(person);
        assert_eq!(s, 200, "{b}");
    }
    let inc: Value = wait_for(Duration::from_secs(20), || {
        let (_, v) = get(&d.url(&format!("/v1/incidents/{id}")), Some(READ));
        (v["state"] == "rolled_back").then_some(v)
    })
    .expect("rolled back");
    // Every announcement delivered, so the last timeline entry is delivery noise.
    team.wait_delivered(4, Duration::from_secs(10));
    wait_for(Duration::from_secs(10), || {
        let (_, v) = get(&d.url(&format!("/v1/incidents/{id}")), Some(READ));
        let last = v["timeline"].as_array()?.last()?.clone();
        (last["kind"] == "notified").then_some(())
    })
    .expect("the last entry is a delivery");
    let reason = inc["reason"].as_str().expect("reason").to_string();

    // The status page links the incident from its lists and says why, not who was told.
    let r = client()
        .get(d.url("/"))
        .basic_auth("ops", Some(READ))
        .send()
        .expect("status page");
    let status = r.text().expect("html");
    assert!(
        status.contains(&reason),
        "the latest column shows the reason: {status}"
    );
    assert!(!status.contains("announced to team"), "{status}");
    let link = format!("<a href=\"incidents/{id}\">{id}</a>");
    assert!(status.contains(&link), "{status}");
    assert!(
        status.matches(&link).count() >= 3,
        "incidents, open breach and freeze link it: {status}"
    );

    // The page asks a browser for the read token, and knows no other incident.
    asks_for_basic_auth(&d.url(&format!("/incidents/{id}")));
    let r = client()
        .get(d.url("/incidents/inc-999999"))
        .basic_auth("ops", Some(READ))
        .send()
        .expect("page");
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().expect("json error");
    assert_eq!(body["error"], "no incident inc-999999");

    let base = d.base.replace("http://", &format!("http://ops:{READ}@"));
    let shot = setup.path().join("incident.png");
    let dom = render(&format!("{base}/incidents/{id}"), &shot);
    if let Ok(dir) = std::env::var("ROLLBACKD_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, std::path::Path::new(&dir).join("incident.png"));
    }
    assert!(
        dom.contains(&format!("<title>rollbackd: {id} rolled_back</title>")),
        "{dom}"
    );
    for seen in [
        // the plan, with the reference as written
        "Plan",
        "[\"/bin/echo\",\"redeploying dpl-1\",\"&lt;b&gt;not markup&lt;/b&gt;\"]",
        &format!("POST {}", api.url("/rollback")),
        &format!("X-Api-Key: ${{file:{}}}", secret_file.display()),
        // votes, counted and ignored with the reason
        "Needs 2 of roles [founder, client-success-lead]",
        "<td class=\"good\">counted</td>",
        "<td class=\"bad\">ignored: ",
        "errors &lt;everywhere&gt;",
        // steps with output
        "<pre>redeploying dpl-1 &lt;b&gt;not markup&lt;/b&gt;\n</pre>",
        "exit 0",
        // checks
        &format!("http {}", api.url("/health")),
        "<td class=\"good\">ok</td>",
        // the freeze
        "This incident freezes releases of checkout when its first step starts.",
        "(by this incident)",
        // the timeline, drawn and listed
        "<svg id=\"timeline-chart\"",
        "data-span=\"breach\"",
        "data-span=\"approval\"",
        "data-span=\"step:redeploy\"",
        "data-span=\"step:tell the api\"",
        "data-span=\"verification\"",
        "data-mark=\"breach start\"",
        "data-mark=\"deadline\"",
        "awaiting_approval",
        "vote_ignored",
        &reason,
    ] {
        assert!(
            dom.contains(seen),
            "the page does not show {seen:?}:\n{dom}"
        );
    }
    assert!(
        !dom.contains("<b>not markup</b>"),
        "output rendered as markup:\n{dom}"
    );
    assert!(
        !dom.contains(SECRET),
        "the expanded secret is on the page:\n{dom}"
    );

    // The screenshot: the window's size, not blank, and the chart's bars painted in their colours.
    let png = Shot::load(&shot);
    assert_eq!((png.width, png.height), WINDOW);
    assert!(png.drawn() > 20_000, "the screenshot is nearly blank");
    for (what, colour) in [
        ("breach", [0xf4, 0xb4, 0x00]),
        ("done steps", [0x34, 0xa8, 0x53]),
        ("verification", [0x00, 0x96, 0x88]),
    ] {
        assert!(png.count(colour) > 50, "no {what} bar in the screenshot");
    }
}
