//! GitHub webhooks (`X-GitHub-Event`): a `deployment_status` whose state is `success` is a
//! release; `ping` and everything else is ignored, and the answer says why. The signature
//! (`X-Hub-Signature-256`) is checked on the raw bytes before this parser sees them.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use super::releases::Reported;
use super::{IngestError, Outcome, json, time};

#[derive(Deserialize)]
struct Raw {
    deployment_status: Status,
    deployment: Deployment,
    repository: Repository,
}

#[derive(Deserialize)]
struct Status {
    state: String,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct Deployment {
    id: u64,
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    environment: String,
    /// An object, or (in some of GitHub's payloads) a JSON string or an empty string.
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
struct Repository {
    name: String,
    full_name: String,
}

/// `deployment.payload.service`, whether the payload came as an object or as a string of JSON.
fn payload_service(payload: &Value) -> Option<String> {
    let parsed;
    let obj = match payload {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).ok()?;
            &parsed
        }
        v => v,
    };
    obj.get("service")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// One delivery: `event` is its `X-GitHub-Event` header, `services` is `github.services`
/// (`"owner/repo"` → service).
pub fn parse(
    event: &str,
    body: &[u8],
    services: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<Outcome, IngestError> {
    match event {
        "deployment_status" => {}
        "ping" => {
            return Ok(Outcome::Ignored(
                "ping: the webhook reaches rollbackd; deployment_status events record releases"
                    .to_string(),
            ));
        }
        "" => {
            return Err(IngestError::new(
                "X-GitHub-Event: missing; GitHub sends it with every delivery",
            ));
        }
        other => {
            return Ok(Outcome::Ignored(format!(
                "event {other} is not deployment_status; only deployment statuses record a release"
            )));
        }
    }
    let r: Raw = json(body, "GitHub deployment_status")?;
    if r.deployment_status.state != "success" {
        return Ok(Outcome::Ignored(format!(
            "deployment_status state is {}, only success records a release",
            r.deployment_status.state
        )));
    }
    let service = payload_service(&r.deployment.payload)
        .or_else(|| services.get(&r.repository.full_name).cloned())
        .unwrap_or(r.repository.name);
    let deployed_at = time(
        "deployment_status.created_at",
        r.deployment_status.created_at.as_deref(),
    )?;
    Reported {
        service,
        environment: r.deployment.environment,
        version: r.deployment.git_ref,
        deployment_id: r.deployment.id.to_string(),
        revision: Some(r.deployment.sha),
        deployed_at,
    }
    .record("github", now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = include_bytes!("testdata/github-deployment_status.json");

    fn now() -> Timestamp {
        "2019-05-15T15:30:00Z".parse().unwrap()
    }

    fn release(o: Outcome) -> crate::model::Release {
        match o {
            Outcome::Release(r) => *r,
            Outcome::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn the_published_example_is_a_release() {
        let r = release(parse("deployment_status", EXAMPLE, &BTreeMap::new(), now()).unwrap());
        assert_eq!(r.service, "Hello-World");
        assert_eq!(r.environment, "production");
        assert_eq!(r.version, "master");
        assert_eq!(r.deployment_id, "145988746");
        assert_eq!(
            r.revision.as_deref(),
            Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
        );
        assert_eq!(r.deployed_at.to_string(), "2019-05-15T15:20:55Z");
        assert_eq!(r.origin, "github");
        let map = BTreeMap::from([("Codertocat/Hello-World".to_string(), "hello".to_string())]);
        let r = release(parse("deployment_status", EXAMPLE, &map, now()).unwrap());
        assert_eq!(r.service, "hello", "github.services maps owner/repo");
    }

    fn with_payload(payload: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(EXAMPLE).unwrap();
        v["deployment"]["payload"] = payload;
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn payload_service_wins_as_object_or_string() {
        let map = BTreeMap::from([("Codertocat/Hello-World".to_string(), "hello".to_string())]);
        for p in [
            serde_json::json!({"service": "checkout"}),
            serde_json::json!("{\"service\":\"checkout\"}"),
        ] {
            let r = release(parse("deployment_status", &with_payload(p), &map, now()).unwrap());
            assert_eq!(r.service, "checkout");
        }
        for p in [
            serde_json::json!(""),
            serde_json::json!("not json"),
            Value::Null,
        ] {
            let r = release(parse("deployment_status", &with_payload(p), &map, now()).unwrap());
            assert_eq!(r.service, "hello");
        }
        let e = parse(
            "deployment_status",
            &with_payload(serde_json::json!({"service": "a b"})),
            &map,
            now(),
        )
        .unwrap_err();
        assert!(e.message.starts_with("service:"), "{e}");
    }

    #[test]
    fn other_states_and_events_are_ignored_with_a_reason() {
        let mut v: Value = serde_json::from_slice(EXAMPLE).unwrap();
        v["deployment_status"]["state"] = "in_progress".into();
        let body = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            parse("deployment_status", &body, &BTreeMap::new(), now()).unwrap(),
            Outcome::Ignored(
                "deployment_status state is in_progress, only success records a release".into()
            )
        );
        for ev in ["ping", "push"] {
            assert!(matches!(
                parse(ev, b"{}", &BTreeMap::new(), now()).unwrap(),
                Outcome::Ignored(_)
            ));
        }
        assert!(parse("", b"{}", &BTreeMap::new(), now()).is_err());
        let e = parse("deployment_status", b"{}", &BTreeMap::new(), now()).unwrap_err();
        assert!(e.message.contains("deployment_status"), "{e}");
    }
}
