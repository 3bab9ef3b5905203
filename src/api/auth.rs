//! Admission: bearer tokens compared in constant time, body signatures, then per-source ingress
//! quotas (governor). Credentials come first: a caller who cannot prove who it is never spends a
//! quota that the real senders need.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::App;
use crate::config::{Limits, Secret};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Ingest,
    /// `/v1/releases` and `/v1/webhooks/argocd`: `tokens.releases` when set, else the ingest token.
    Releases,
    Read,
    Admin,
}

impl TokenKind {
    fn name(self) -> &'static str {
        match self {
            TokenKind::Ingest => "ingest",
            TokenKind::Releases => "releases",
            TokenKind::Read => "read",
            TokenKind::Admin => "admin",
        }
    }
}

/// Whose vote a request to `/v1/incidents/{id}/approve|reject` may cast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Voter {
    /// It carries this person's own token (`people[].token`): it votes as them, and only them.
    Person(String),
    /// The admin token (or no admin token is configured): break-glass, as any person.
    BreakGlass,
}

/// One quota per ingest source, so a flood from one cannot starve the others.
pub struct Limiters {
    sources: Vec<(&'static str, DefaultDirectRateLimiter)>,
}

impl Limiters {
    pub fn new(l: &Limits) -> Limiters {
        let rate = NonZeroU32::new(l.ingest_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(l.ingest_burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Limiters {
            sources: crate::metrics::INGEST_SOURCES
                .into_iter()
                .map(|s| (s, RateLimiter::direct(quota)))
                .collect(),
        }
    }

    fn check(&self, source: &str) -> Result<(), Duration> {
        let Some((_, lim)) = self.sources.iter().find(|(s, _)| *s == source) else {
            return Ok(());
        };
        lim.check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

fn token_matches(given: &str, want: &Secret) -> bool {
    // Hash both sides so the comparison takes the same time whatever the lengths.
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(want.expose().as_bytes());
    a.ct_eq(&b).into()
}

/// The `user:password` of `Authorization: Basic <credentials>`: canonical standard base64 (RFC 4648
/// alphabet, padded, no stray bits) of UTF-8 text. Anything else is no Basic credential at all.
fn basic_credentials(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = BASE64.decode(encoded.trim()).ok()?;
    String::from_utf8(raw).ok()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl App {
    /// Checks the bearer token for `kind`; an unconfigured kind admits everyone. The admin token
    /// is also accepted where the read token is asked for.
    pub fn authorize(&self, headers: &HeaderMap, kind: TokenKind) -> Result<(), ApiError> {
        let t = &self.config().tokens;
        let accepted: Vec<&Secret> = match kind {
            TokenKind::Ingest => t.ingest.iter().collect(),
            TokenKind::Releases => t
                .releases
                .as_ref()
                .or(t.ingest.as_ref())
                .into_iter()
                .collect(),
            TokenKind::Admin => t.admin.iter().collect(),
            TokenKind::Read => match &t.read {
                None => Vec::new(),
                Some(r) => std::iter::once(r).chain(t.admin.iter()).collect(),
            },
        };
        if accepted.is_empty() {
            return Ok(());
        }
        let name = match kind {
            TokenKind::Releases if t.releases.is_none() => TokenKind::Ingest.name(),
            k => k.name(),
        };
        match bearer(headers) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("missing `Authorization: Bearer <{name} token>`"),
            )),
            Some(given) if accepted.iter().any(|w| token_matches(given, w)) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("the bearer token is not a valid {name} token"),
            )),
        }
    }

    /// Who a vote request speaks for: a person's own token makes it theirs; else the admin
    /// token (break-glass) is asked for. Every person's token is compared, in constant time each,
    /// whichever matches.
    pub fn voter(&self, headers: &HeaderMap) -> Result<Voter, ApiError> {
        let config = self.config();
        if let Some(given) = bearer(headers) {
            let mut owner = None;
            for p in &config.people {
                if let Some(t) = &p.token
                    && token_matches(given, t)
                    && owner.is_none()
                {
                    owner = Some(p.id.clone());
                }
            }
            if let Some(id) = owner {
                return Ok(Voter::Person(id));
            }
        }
        if !config.people.iter().any(|p| p.token.is_some()) {
            return self
                .authorize(headers, TokenKind::Admin)
                .map(|()| Voter::BreakGlass);
        }
        // With people's tokens configured, break-glass needs the admin token itself: without
        // one, only a person's own token votes.
        let admitted =
            config.tokens.admin.as_ref().is_some_and(|admin| {
                bearer(headers).is_some_and(|given| token_matches(given, admin))
            });
        if admitted {
            return Ok(Voter::BreakGlass);
        }
        let why = match (bearer(headers), config.tokens.admin.is_some()) {
            (None, true) => {
                "missing `Authorization: Bearer <your people token, or the admin token>`"
            }
            (None, false) => "missing `Authorization: Bearer <your people token>`",
            (Some(_), true) => "the bearer token is neither a person's token nor the admin token",
            (Some(_), false) => "the bearer token is not a person's token",
        };
        Err(ApiError::new(StatusCode::UNAUTHORIZED, why))
    }

    /// The status page: the read token as a bearer token, or as the password of HTTP Basic
    /// authentication (any user name) so a browser can ask for it.
    pub fn authorize_page(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let t = &self.config().tokens;
        let Some(read) = &t.read else {
            return self.authorize(headers, TokenKind::Read);
        };
        if let Some(userpass) = basic_credentials(headers) {
            let password = userpass.split_once(':').map(|(_, p)| p).unwrap_or("");
            let ok = std::iter::once(read)
                .chain(t.admin.iter())
                .any(|w| token_matches(password, w));
            if ok {
                return Ok(());
            }
        } else if self.authorize(headers, TokenKind::Read).is_ok() {
            return Ok(());
        }
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the status page needs the read token (as the Basic password, or a Bearer token)",
        );
        e.www_authenticate = true;
        Err(e)
    }

    /// The token of an ingest source; a refusal is counted and touches no quota.
    pub fn admit(
        &self,
        source: &str,
        headers: &HeaderMap,
        kind: TokenKind,
    ) -> Result<(), ApiError> {
        self.authorize(headers, kind)
            .inspect_err(|_| self.refused(source))
    }

    pub(super) fn refused(&self, source: &str) {
        self.metrics
            .ingest_rejected
            .with_label_values(&[source, "auth"])
            .inc();
    }

    /// The source's ingress quota, spent only once the caller has proved who it is (token or
    /// body signature): 429 with `Retry-After` beyond it.
    pub fn quota(&self, source: &str) -> Result<(), ApiError> {
        if let Err(wait) = self.limiters.check(source) {
            self.metrics
                .ingest_rejected
                .with_label_values(&[source, "rate_limited"])
                .inc();
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("ingest quota for {source} exceeded; retry later"),
            );
            e.retry_after = Some(wait.as_secs().max(1));
            return Err(e);
        }
        Ok(())
    }
}

/// Grafana's optional webhook HMAC (see [`crate::ingest::grafana::verify_signature`]).
pub fn grafana_signature(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let config = app.config();
    let Some(secret) = &config.grafana.webhook_secret else {
        return Ok(());
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::ingest::grafana::verify_signature(
        secret.expose(),
        header("x-grafana-alerting-signature"),
        header("x-grafana-alerting-signature-timestamp"),
        body,
        app.clock.now().as_second(),
        config.grafana.signature_max_age,
    )
    .map_err(|msg| signature_refused(app, "grafana", 401, &msg))
}

/// A body signature that does not hold: an auth refusal of `source`, with the verifier's
/// status (400 missing or malformed, 401 no match) and message.
pub fn signature_refused(app: &App, source: &str, status: u16, message: &str) -> ApiError {
    app.refused(source);
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
        message,
    )
}

/// 404 naming the config key that turns a deploy tool's endpoint on.
fn not_enabled(tool: &str, key: &str) -> ApiError {
    ApiError::not_found(format!(
        "{tool} webhooks are not enabled: set `{key}` in the config"
    ))
}

/// A deploy tool that signs its bodies `sha256=<hex HMAC-SHA256>` (GitHub, Flux).
pub struct Signed {
    source: &'static str,
    tool: &'static str,
    /// The config key of its secret.
    key: &'static str,
    header: &'static str,
}

pub const GITHUB: Signed = Signed {
    source: "github",
    tool: "GitHub",
    key: "github.webhook_secret",
    header: "X-Hub-Signature-256",
};

pub const FLUX: Signed = Signed {
    source: "flux",
    tool: "Flux",
    key: "flux.webhook_secret",
    header: "X-Signature",
};

/// The signature on the raw bytes: unset secret 404, missing or malformed 400, wrong 401.
pub fn signed(
    app: &App,
    s: &Signed,
    secret: Option<&Secret>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let secret = secret.ok_or_else(|| not_enabled(s.tool, s.key))?;
    let given = headers.get(s.header).and_then(|v| v.to_str().ok());
    crate::ingest::verify_sha256_signature(s.header, secret.expose(), given, body)
        .map_err(|e| signature_refused(app, s.source, e.status(), e.message()))
}

/// GitLab's `X-Gitlab-Token`, compared in constant time: unset in the config 404, missing or
/// wrong 401.
pub fn gitlab_token(app: &App, want: Option<&Secret>, headers: &HeaderMap) -> Result<(), ApiError> {
    let want = want.ok_or_else(|| not_enabled("GitLab", "gitlab.webhook_token"))?;
    let refused = |msg: &str| signature_refused(app, "gitlab", 401, msg);
    match headers.get("x-gitlab-token").and_then(|v| v.to_str().ok()) {
        None => Err(refused(
            "missing X-Gitlab-Token (the webhook's secret token)",
        )),
        Some(given) if !token_matches(given, want) || want.expose().is_empty() => {
            Err(refused("X-Gitlab-Token is not gitlab.webhook_token"))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    fn basic(credentials: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("Basic {credentials}")).expect("header value");
        h.insert(header::AUTHORIZATION, v);
        super::basic_credentials(&h)
    }

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(basic("dXNlcjpwYXNz").as_deref(), Some("user:pass"));
        assert_eq!(basic("YTpi").as_deref(), Some("a:b"));
        assert_eq!(basic("YQ==").as_deref(), Some("a"));
        assert_eq!(basic(" YTpi ").as_deref(), Some("a:b"), "surrounding space");
    }

    #[test]
    fn malformed_basic_credentials_are_refused() {
        for bad in [
            "!!", "YQ=",      // short padding
            "YQ",       // no padding
            "YQ===",    // too much padding
            "Y Q==",    // inner space
            "YR==",     // non-canonical: trailing bits set
            "YQ==YQ==", // data after padding
            "YTp*",     // not the base64 alphabet
            "_-8=",     // URL-safe alphabet
            "/w==",     // valid base64, not UTF-8
        ] {
            assert_eq!(basic(bad), None, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer YTpi"),
        );
        assert_eq!(super::basic_credentials(&h), None, "another scheme");
    }
}
