//! Argo CD notifications, `webhook` service, with the template in `docs/argocd.md`: the body is
//! rollbackd's own shape, filled in by Argo CD's templates. An application `Synced` and
//! `Healthy` is a release whose deployment id is its history id (what
//! `POST /api/v1/applications/{name}/rollback` takes as `id`); anything else is ignored, and
//! the answer says why.

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use super::releases::Reported;
use super::{IngestError, Outcome, json, time};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    app: String,
    #[serde(default)]
    project: String,
    revision: String,
    /// A number as Argo CD renders it, or a string.
    history_id: Value,
    #[serde(default)]
    deployed_at: Option<String>,
    sync_status: String,
    health_status: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    environment: String,
}

/// Go's text/template prints a missing map key as `<no value>`: that is no value here either.
fn given(s: String) -> String {
    if s == "<no value>" { String::new() } else { s }
}

pub fn parse(body: &[u8], now: Timestamp) -> Result<Outcome, IngestError> {
    let r: Raw = json(body, "Argo CD notification")?;
    if r.sync_status != "Synced" || r.health_status != "Healthy" {
        return Ok(Outcome::Ignored(format!(
            "application {}/{} is {} and {}; only Synced and Healthy records a release",
            r.project, r.app, r.sync_status, r.health_status
        )));
    }
    let history_id = match &r.history_id {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
        other => {
            return Err(IngestError::new(format!(
                "history_id: {other} is not the id of an Argo CD history entry (a number)"
            )));
        }
    };
    let service = Some(given(r.service))
        .filter(|s| !s.is_empty())
        .unwrap_or(r.app);
    Reported {
        service,
        environment: given(r.environment),
        version: r.revision.clone(),
        revision: Some(r.revision),
        deployment_id: history_id,
        deployed_at: time("deployed_at", r.deployed_at.as_deref())?,
    }
    .record("argocd", now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = include_bytes!("testdata/argocd-app-deployed.json");

    fn now() -> Timestamp {
        "2024-05-14T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_rendered_template_is_a_release() {
        let Outcome::Release(r) = parse(EXAMPLE, now()).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(r.service, "guestbook-ui");
        assert_eq!(r.environment, "production");
        assert_eq!(r.deployment_id, "12");
        assert_eq!(r.version, "53e28ff20cc530b9ada2173fbbd64d48338583ba");
        assert_eq!(r.revision.as_deref(), Some(r.version.as_str()));
        assert_eq!(r.deployed_at.to_string(), "2024-05-14T09:02:31Z");
        assert_eq!(r.origin, "argocd");
    }

    fn with(key: &str, v: Value) -> Vec<u8> {
        let mut b: Value = serde_json::from_slice(EXAMPLE).unwrap();
        b[key] = v;
        serde_json::to_vec(&b).unwrap()
    }

    #[test]
    fn service_falls_back_to_the_app() {
        for s in ["", "<no value>"] {
            let Outcome::Release(r) = parse(&with("service", s.into()), now()).unwrap() else {
                panic!("ignored")
            };
            assert_eq!(r.service, "guestbook");
        }
        let Outcome::Release(r) = parse(&with("history_id", "7".into()), now()).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(r.deployment_id, "7");
    }

    #[test]
    fn not_synced_and_healthy_is_ignored_and_bad_ids_refused() {
        let Outcome::Ignored(why) =
            parse(&with("health_status", "Progressing".into()), now()).unwrap()
        else {
            panic!("recorded")
        };
        assert!(why.contains("Progressing"), "{why}");
        for bad in [Value::from(-1), Value::from("--force"), Value::Null] {
            let e = parse(&with("history_id", bad), now()).unwrap_err();
            assert!(e.message.starts_with("history_id:"), "{e}");
        }
        let e = parse(&with("extra", 1.into()), now()).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }
}
