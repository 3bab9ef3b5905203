//! GitLab project webhooks, deployment events (`X-Gitlab-Event: Deployment Hook`): a deployment
//! whose `status` is `success` is a release; other kinds and statuses are ignored, and the answer
//! says why. `X-Gitlab-Token` is checked before this parser sees the body.
//!
//! GitLab documents `short_sha` and `commit_url` for the commit, no full sha of its own: the
//! version is `short_sha`, the revision the full sha at the end of `commit_url`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

use super::releases::Reported;
use super::{IngestError, Outcome, json};
use crate::rules::template::value_is_safe;

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    object_kind: String,
}

#[derive(Deserialize)]
struct Raw {
    status: String,
    #[serde(default)]
    status_changed_at: Option<String>,
    deployment_id: u64,
    environment: String,
    project: Project,
    short_sha: String,
    #[serde(default)]
    commit_url: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    name: String,
    path_with_namespace: String,
}

/// GitLab's webhook time, `2021-04-28 21:50:00 +0200` or `2021-04-28 19:50:00 UTC`; RFC 3339
/// is taken too.
pub fn gitlab_time(field: &str, s: &str) -> Result<Timestamp, IngestError> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let text = match s.strip_suffix(" UTC") {
        Some(head) => format!("{head} +0000"),
        None => s.to_string(),
    };
    jiff::fmt::strtime::parse("%Y-%m-%d %H:%M:%S %z", &text)
        .and_then(|t| t.to_timestamp())
        .map_err(|e| {
            IngestError::new(format!(
                "{field}: `{s}` is not a GitLab time like `2021-04-28 21:50:00 +0200` ({e})"
            ))
        })
}

/// The full sha at the end of `commit_url` (`.../-/commit/<sha>`), when it is one.
fn commit_of(url: &str) -> Option<String> {
    let sha = url.rsplit_once("/-/commit/")?.1;
    let hex = sha.len() >= 7 && sha.chars().all(|c| c.is_ascii_hexdigit());
    hex.then(|| sha.to_string())
}

/// One delivery; `services` is `gitlab.services` (`path_with_namespace` → service).
pub fn parse(
    body: &[u8],
    services: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<Outcome, IngestError> {
    let kind: Kind = json(body, "GitLab webhook")?;
    if kind.object_kind != "deployment" {
        return Ok(Outcome::Ignored(format!(
            "object_kind is {:?}, only deployment events record a release",
            kind.object_kind
        )));
    }
    let r: Raw = json(body, "GitLab deployment event")?;
    if r.status != "success" {
        return Ok(Outcome::Ignored(format!(
            "deployment status is {}, only success records a release",
            r.status
        )));
    }
    let service = match services.get(&r.project.path_with_namespace) {
        Some(s) => s.clone(),
        None if value_is_safe(&r.project.name) => r.project.name,
        None => {
            return Err(IngestError::new(format!(
                "project.name: {:?} cannot be a service name ([A-Za-z0-9._:/@+=-] only); map {:?} to one in gitlab.services",
                r.project.name, r.project.path_with_namespace
            )));
        }
    };
    let deployed_at = match r.status_changed_at.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(gitlab_time("status_changed_at", s)?),
        None => None,
    };
    let revision = r.commit_url.as_deref().and_then(commit_of);
    Reported {
        service,
        environment: r.environment,
        revision: revision.or_else(|| Some(r.short_sha.clone())),
        version: r.short_sha,
        deployment_id: r.deployment_id.to_string(),
        deployed_at,
    }
    .record("gitlab", now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = include_bytes!("testdata/gitlab-deployment.json");

    fn now() -> Timestamp {
        "2021-04-28T20:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_published_example_is_a_release() {
        let Outcome::Release(r) = parse(EXAMPLE, &BTreeMap::new(), now()).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(r.service, "test-deployment-webhooks");
        assert_eq!(r.environment, "staging");
        assert_eq!(r.version, "279484c0");
        assert_eq!(r.deployment_id, "15");
        assert_eq!(
            r.revision.as_deref(),
            Some("279484c09fbe69ededfced8c1bb6e6d24616b468")
        );
        assert_eq!(r.deployed_at.to_string(), "2021-04-28T19:50:00Z");
        assert_eq!(r.origin, "gitlab");
        let map = BTreeMap::from([(
            "root/test-deployment-webhooks".to_string(),
            "webhooks".to_string(),
        )]);
        let Outcome::Release(r) = parse(EXAMPLE, &map, now()).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(r.service, "webhooks");
    }

    #[test]
    fn gitlab_times() {
        for (s, want) in [
            ("2021-04-28 21:50:00 +0200", "2021-04-28T19:50:00Z"),
            ("2021-04-28 19:50:00 UTC", "2021-04-28T19:50:00Z"),
            ("2021-04-28T19:50:00Z", "2021-04-28T19:50:00Z"),
        ] {
            assert_eq!(gitlab_time("t", s).unwrap().to_string(), want, "{s}");
        }
        assert!(
            gitlab_time("t", "yesterday")
                .unwrap_err()
                .message
                .contains("t: `yesterday`")
        );
    }

    #[test]
    fn an_unsafe_project_name_asks_for_a_mapping() {
        let mut v: serde_json::Value = serde_json::from_slice(EXAMPLE).unwrap();
        v["project"]["name"] = "My Project".into();
        let body = serde_json::to_vec(&v).unwrap();
        let e = parse(&body, &BTreeMap::new(), now()).unwrap_err();
        assert!(e.message.starts_with("project.name:"), "{e}");
        assert!(e.message.contains("gitlab.services"), "{e}");
    }

    #[test]
    fn other_kinds_and_statuses_are_ignored() {
        let mut v: serde_json::Value = serde_json::from_slice(EXAMPLE).unwrap();
        v["status"] = "running".into();
        let body = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            parse(&body, &BTreeMap::new(), now()).unwrap(),
            Outcome::Ignored("deployment status is running, only success records a release".into())
        );
        assert!(matches!(
            parse(br#"{"object_kind":"push"}"#, &BTreeMap::new(), now()).unwrap(),
            Outcome::Ignored(_)
        ));
    }
}
