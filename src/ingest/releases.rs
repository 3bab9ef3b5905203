//! `POST /v1/releases` from CI: `{"service", "environment", "version", "deployment_id", "deployed_at"}`.
//! Values that later become step arguments must already be safe here, so a poisoned ledger entry
//! is refused at the door rather than at rollback time.

use jiff::Timestamp;
use serde::Deserialize;

use super::{IngestError, json, time};
use crate::model::Release;
use crate::rules::template::value_is_safe;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    service: String,
    #[serde(default)]
    environment: String,
    version: String,
    deployment_id: String,
    #[serde(default)]
    revision: Option<String>,
    deployed_at: Option<String>,
}

/// A release must not claim to be from more than this far in the future.
const MAX_SKEW_SECONDS: i64 = 300;

pub fn parse(body: &[u8], now: Timestamp) -> Result<Release, IngestError> {
    let r: Raw = json(body, "release")?;
    let deployed_at = match (
        time("deployed_at", r.deployed_at.as_deref())?,
        &r.deployed_at,
    ) {
        (Some(t), _) => t,
        (None, None) => now,
        (None, Some(s)) if s.is_empty() => now,
        // Go's zero time or earlier: a broken CI timestamp, never "now".
        (None, Some(s)) => {
            return Err(IngestError::new(format!(
                "deployed_at: `{s}` is not a real deployment time"
            )));
        }
    };
    checked(
        Release {
            service: r.service,
            environment: r.environment,
            version: r.version,
            deployment_id: r.deployment_id,
            revision: r.revision,
            deployed_at,
            received_at: now,
            origin: "ci".to_string(),
            incident: None,
            posted_during_freeze: None,
        },
        now,
    )
}

/// The checks every release passes, whoever reported it (CI, a deploy tool's webhook, a line of
/// the input log): its values may become step arguments, so each must be safe here, and it must
/// not claim to be from the future. An empty `revision` is no revision.
pub fn checked(mut r: Release, now: Timestamp) -> Result<Release, IngestError> {
    r.revision = r.revision.filter(|v| !v.is_empty());
    for (field, v, required) in [
        ("service", r.service.as_str(), true),
        ("environment", &r.environment, false),
        ("version", &r.version, true),
        ("deployment_id", &r.deployment_id, true),
        ("revision", r.revision.as_deref().unwrap_or(""), false),
    ] {
        if required && v.is_empty() {
            return Err(IngestError::new(format!("{field}: must not be empty")));
        }
        if v.len() > 256 || !value_is_safe(v) {
            return Err(IngestError::new(format!(
                "{field}: {v:?} must be at most 256 characters of [A-Za-z0-9._:/@+=-], without `..` or a leading `-`"
            )));
        }
    }
    if r.deployed_at.as_second() > now.as_second() + MAX_SKEW_SECONDS {
        return Err(IngestError::new(format!(
            "deployed_at: {} is in the future (now is {now})",
            r.deployed_at
        )));
    }
    Ok(r)
}

/// A release as a deploy tool reported it, before the checks every release passes.
pub struct Reported {
    pub service: String,
    pub environment: String,
    pub version: String,
    pub deployment_id: String,
    pub revision: Option<String>,
    /// Unset: when it was received.
    pub deployed_at: Option<Timestamp>,
}

impl Reported {
    /// The release `origin` reported, [`checked`] like every other.
    pub fn record(self, origin: &str, now: Timestamp) -> Result<super::Outcome, IngestError> {
        let r = checked(
            Release {
                service: self.service,
                environment: self.environment,
                version: self.version,
                deployment_id: self.deployment_id,
                revision: self.revision,
                deployed_at: self.deployed_at.unwrap_or(now),
                received_at: now,
                origin: origin.to_string(),
                incident: None,
                posted_during_freeze: None,
            },
            now,
        )?;
        Ok(super::Outcome::Release(Box::new(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn parses_and_defaults_time() {
        let r = parse(br#"{"service":"portal","environment":"production","version":"v1.2.3","deployment_id":"dpl_1"}"#, now()).unwrap();
        assert_eq!(r.deployed_at, now());
        assert_eq!(r.origin, "ci");
    }

    #[test]
    fn refuses_unsafe_or_future() {
        for (body, field) in [
            (
                r#"{"service":"a b","version":"1","deployment_id":"d"}"#,
                "service",
            ),
            (
                r#"{"service":"a","version":"$(id)","deployment_id":"d"}"#,
                "version",
            ),
            (
                r#"{"service":"a","version":"1","deployment_id":""}"#,
                "deployment_id",
            ),
            (
                r#"{"service":"a","version":"1","deployment_id":"d","deployed_at":"2099-01-01T00:00:00Z"}"#,
                "future",
            ),
            (
                r#"{"service":"a","version":"1","deployment_id":"d","extra":1}"#,
                "unknown field",
            ),
        ] {
            let e = parse(body.as_bytes(), now()).unwrap_err();
            assert!(e.message.contains(field), "{body}: {e}");
        }
    }
}

#[cfg(test)]
mod zero_time {
    #[test]
    fn go_zero_time_is_refused_not_now() {
        let now = "2026-11-24T12:00:00Z".parse().unwrap();
        let e = super::parse(
            br#"{"service":"a","version":"1","deployment_id":"d","deployed_at":"0001-01-01T00:00:00Z"}"#,
            now,
        )
        .unwrap_err();
        assert!(e.message.contains("not a real deployment time"), "{e}");
    }
}
