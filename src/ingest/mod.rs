//! Ingress parsers: each source's payload in, normalised [`Signal`]s or [`Release`]s out.
//! Parsers are pure (bytes and `now` in); authentication happens before them, decisions after.
//! Every error names the field that is wrong.

pub mod alertmanager;
pub mod argocd;
pub mod flux;
pub mod github;
pub mod gitlab;
pub mod grafana;
pub mod pagerduty;
pub mod releases;
pub mod signals;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::model::{Labels, Release};

/// What a deploy tool's delivery comes to: a release to record, or nothing, and why.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Release(Box<Release>),
    Ignored(String),
}

/// Why a body signature is refused: `Missing` (or not of the `sha256=<hex>` form) is the
/// sender's mistake (400), `Mismatch` a forgery or the wrong secret (401).
#[derive(Debug, PartialEq)]
pub enum SignatureError {
    Missing(String),
    Mismatch(String),
}

impl SignatureError {
    pub fn status(&self) -> u16 {
        match self {
            SignatureError::Missing(_) => 400,
            SignatureError::Mismatch(_) => 401,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            SignatureError::Missing(m) | SignatureError::Mismatch(m) => m,
        }
    }
}

/// `<header>: sha256=<hex HMAC-SHA256(secret, body)>` (GitHub's `X-Hub-Signature-256`, Flux's
/// `X-Signature`), checked on the exact bytes in constant time. An empty secret matches nothing.
pub fn verify_sha256_signature(
    header: &str,
    secret: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    use hmac::{Hmac, Mac};
    let sig = signature
        .ok_or_else(|| SignatureError::Missing(format!("missing {header} (sha256=<hex HMAC>)")))?;
    let hex_part = sig.trim().strip_prefix("sha256=").ok_or_else(|| {
        SignatureError::Missing(format!("{header} is not of the form sha256=<hex HMAC>"))
    })?;
    let want = hex::decode(hex_part).map_err(|_| {
        SignatureError::Missing(format!("{header}: the HMAC after sha256= is not hex"))
    })?;
    let mismatch = || SignatureError::Mismatch(format!("{header} does not match the body"));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| mismatch())?;
    mac.update(body);
    if secret.is_empty() || mac.verify_slice(&want).is_err() {
        return Err(mismatch());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct IngestError {
    pub message: String,
}

impl IngestError {
    pub fn new(message: impl Into<String>) -> IngestError {
        IngestError {
            message: message.into(),
        }
    }
}

/// Parses JSON with a message that says where it broke.
/// A shape error names the field it is in (`alerts[0].labels: invalid type ...`).
pub fn json<'a, T: serde::Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, IngestError> {
    let failed = |path: String, e: serde_json::Error| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                return IngestError::new(format!("{what} body is not valid JSON: {e}"));
            }
            _ => "does not have the expected shape",
        };
        match path.as_str() {
            "." | "" => IngestError::new(format!("{what} body {kind}: {e}")),
            p => IngestError::new(format!("{what} body {kind}: {p}: {e}")),
        }
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        failed(path, e.into_inner())
    })?;
    de.end().map_err(|e| failed(String::new(), e))?;
    Ok(v)
}

/// An RFC 3339 time; Go's zero time (`0001-01-01T00:00:00Z`) means "not set".
pub fn time(field: &str, v: Option<&str>) -> Result<Option<Timestamp>, IngestError> {
    let Some(s) = v.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ts: Timestamp = s
        .parse()
        .map_err(|e| IngestError::new(format!("{field}: `{s}` is not an RFC 3339 time ({e})")))?;
    if ts.as_second() <= -62_135_596_800 {
        return Ok(None);
    }
    Ok(Some(ts))
}

/// A stable key for an alert that came without one: a hash of its sorted labels.
pub fn label_fingerprint(labels: &Labels) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xff]);
    }
    let d = h.finalize();
    hex::encode(&d[..8])
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    /// GitHub's documented example ("Validating webhook deliveries").
    #[test]
    fn githubs_documented_example_verifies() {
        let secret = "It's a Secret to Everybody";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = "X-Hub-Signature-256";
        assert_eq!(
            verify_sha256_signature(h, secret, Some(sig), b"Hello, World!"),
            Ok(())
        );
        let e = verify_sha256_signature(h, secret, Some(sig), b"Hello, World?").unwrap_err();
        assert_eq!(e.status(), 401);
        let e = verify_sha256_signature(h, "other", Some(sig), b"Hello, World!").unwrap_err();
        assert_eq!(e.status(), 401);
        for bad in [None, Some("757107ea"), Some("sha1=abcd"), Some("sha256=zz")] {
            let e = verify_sha256_signature(h, secret, bad, b"Hello, World!").unwrap_err();
            assert_eq!(e.status(), 400, "{bad:?}");
            assert!(e.message().contains(h), "{e:?}");
        }
        let e = verify_sha256_signature(
            h,
            "",
            Some("sha256=b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"),
            b"",
        )
        .unwrap_err();
        assert_eq!(e.status(), 401, "an empty secret matches nothing");
    }
}
