//! Flux notification-controller events (Provider type `generic-hmac`): a Kustomization or
//! HelmRelease reconciled at a revision is a release; errors, other kinds and other reasons are
//! ignored, and the answer says why. `X-Signature` is checked before this parser sees the body.
//!
//! The controller forwards `metadata` with the API group taken off its keys (`revision`, not
//! `kustomize.toolkit.fluxcd.io/revision`) and adds an Alert's `spec.eventMetadata`; both forms
//! of the revision key are read.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

use super::releases::Reported;
use super::{IngestError, Outcome, json, time};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    involved_object: Object,
    severity: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Object {
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
}

/// The reasons that say a Kustomization or HelmRelease now runs its revision.
const SUCCEEDED: [(&str, &str); 4] = [
    ("Kustomization", "ReconciliationSucceeded"),
    ("HelmRelease", "ReconciliationSucceeded"),
    ("HelmRelease", "InstallSucceeded"),
    ("HelmRelease", "UpgradeSucceeded"),
];

/// The git commit in a Flux revision: the sha after `sha1:` in `main@sha1:<sha>`, or the sha
/// after the last `/` in the older `main/<sha>`. A chart version (`6.2.1`) is no commit.
fn commit_of(revision: &str) -> Option<String> {
    let sha = match revision.rsplit_once("sha1:") {
        Some((_, sha)) => sha,
        None => revision.rsplit_once('/')?.1,
    };
    let is_sha = sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit());
    is_sha.then(|| sha.to_string())
}

/// One event; `services` is `flux.services` (`<Kind>/<namespace>/<name>` → service).
pub fn parse(
    body: &[u8],
    services: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<Outcome, IngestError> {
    let r: Raw = json(body, "Flux event")?;
    let o = &r.involved_object;
    let object = format!("{}/{}/{}", o.kind, o.namespace, o.name);
    if o.kind != "Kustomization" && o.kind != "HelmRelease" {
        return Ok(Outcome::Ignored(format!(
            "{object}: only Kustomization and HelmRelease events record a release"
        )));
    }
    if r.severity != "info" || !SUCCEEDED.contains(&(o.kind.as_str(), r.reason.as_str())) {
        return Ok(Outcome::Ignored(format!(
            "{object}: {} event with reason {:?} is not a successful reconciliation",
            r.severity, r.reason
        )));
    }
    let revision = r.metadata.get("revision").or_else(|| {
        r.metadata
            .iter()
            .find(|(k, _)| k.ends_with("/revision"))
            .map(|(_, v)| v)
    });
    let Some(revision) = revision.filter(|v| !v.is_empty()).cloned() else {
        return Ok(Outcome::Ignored(format!(
            "{object}: the event carries no metadata.revision"
        )));
    };
    let service = r
        .metadata
        .get("service")
        .filter(|s| !s.is_empty())
        .or_else(|| services.get(&object))
        .cloned()
        .unwrap_or_else(|| o.name.clone());
    Reported {
        service,
        environment: r.metadata.get("environment").cloned().unwrap_or_default(),
        deployment_id: format!("{object}@{revision}"),
        revision: commit_of(&revision),
        version: revision,
        deployed_at: time("timestamp", r.timestamp.as_deref())?,
    }
    .record("flux", now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2022-12-07T16:00:00Z".parse().unwrap()
    }

    fn release(body: &[u8]) -> crate::model::Release {
        match parse(body, &BTreeMap::new(), now()).unwrap() {
            Outcome::Release(r) => *r,
            Outcome::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn a_kustomization_reconciled_is_a_release_with_its_commit() {
        let r = release(include_bytes!("testdata/flux-kustomization-succeeded.json"));
        assert_eq!(r.service, "webapp");
        assert_eq!(r.environment, "production");
        assert_eq!(
            r.version,
            "main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1"
        );
        assert_eq!(
            r.revision.as_deref(),
            Some("731f7eaddfb6af01cb2173e18f0f75b0ba780ef1")
        );
        assert_eq!(
            r.deployment_id,
            "Kustomization/apps/webapp@main@sha1:731f7eaddfb6af01cb2173e18f0f75b0ba780ef1"
        );
        assert_eq!(r.deployed_at.to_string(), "2022-10-28T07:30:02Z");
        assert_eq!(r.origin, "flux");
    }

    #[test]
    fn a_helmrelease_upgraded_is_a_release_without_a_commit() {
        let r = release(include_bytes!("testdata/flux-helmrelease-upgraded.json"));
        assert_eq!(r.service, "podinfo");
        assert_eq!(r.version, "6.2.1");
        assert_eq!(r.revision, None);
        assert_eq!(r.deployment_id, "HelmRelease/apps/podinfo@6.2.1");
        let map = BTreeMap::from([("HelmRelease/apps/podinfo".to_string(), "info".to_string())]);
        let body = include_bytes!("testdata/flux-helmrelease-upgraded.json");
        let Outcome::Release(r) = parse(body, &map, now()).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(r.service, "info", "flux.services maps Kind/namespace/name");
    }

    #[test]
    fn the_published_error_event_is_ignored() {
        let body = include_bytes!("testdata/flux-event-validation-failed.json");
        let Outcome::Ignored(why) = parse(body, &BTreeMap::new(), now()).unwrap() else {
            panic!("recorded")
        };
        assert!(why.contains("ValidationFailed"), "{why}");
    }

    #[test]
    fn commits_in_revisions() {
        assert_eq!(
            commit_of("main/731f7eaddfb6af01cb2173e18f0f75b0ba780ef1").as_deref(),
            Some("731f7eaddfb6af01cb2173e18f0f75b0ba780ef1")
        );
        assert_eq!(commit_of("6.2.1"), None);
        assert_eq!(commit_of("v1.0.0@sha256:abcd"), None);
    }
}
