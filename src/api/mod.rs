//! HTTP: thin handlers. Each one admits the request (token or signature, then quota), parses the
//! raw bytes, hands an event to the engine or reads the store, and maps the answer to a status.
//! No decisions here.

mod auth;
mod cluster;
mod error;
pub mod incident_page;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, Extension, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::engine::{Event, MAX_SIGNALS_PER_EVENT, Refusal, Reply};
use crate::ingest::{self, IngestError};
use crate::inputs::{FreezeLine, VoteLine};
use crate::model::{IncidentState, Signal, VoteKind};
pub use auth::{Limiters, TokenKind, Voter};
pub use error::ApiError;

/// Who may call a route; checked before the body is read, so a caller without the token learns
/// nothing but 401. Credentials always come before the quota.
#[derive(Clone, Copy)]
enum Guard {
    /// The token, then the source's quota.
    Ingest(&'static str, TokenKind),
    /// The token only: the source also signs its body, and its handler spends the quota once the
    /// signature holds.
    Signed(&'static str),
    Read,
    Admin,
    /// A person's own token or the admin token; the handler learns which from [`Voter`].
    Vote,
}

async fn guard(
    State((app, g)): State<(Arc<App>, Guard)>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match g {
        Guard::Ingest(source, kind) => {
            app.admit(source, req.headers(), kind)?;
            app.quota(source)?;
        }
        Guard::Signed(source) => app.admit(source, req.headers(), TokenKind::Ingest)?,
        Guard::Read => app.authorize(req.headers(), TokenKind::Read)?,
        Guard::Admin => app.authorize(req.headers(), TokenKind::Admin)?,
        Guard::Vote => {
            let voter = app.voter(req.headers())?;
            let mut req = req;
            req.extensions_mut().insert(voter);
            return Ok(next.run(req).await);
        }
    }
    Ok(next.run(req).await)
}

/// Every error leaves as `{"error", "detail"}`, including axum's own rejections (405, bad query
/// strings, bad path encoding).
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = (status, Json(json!({"error": error, "detail": null}))).into_response();
    if let Some(v) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, v);
    }
    out
}

impl App {
    /// Hands a request's event to the engine, with its input-log line when `record_inputs` is
    /// on: the engine task writes the line once the event is durable, in the order it handled
    /// it, at the instant it used.
    pub async fn send_recorded(
        &self,
        source: &str,
        body: &[u8],
        event: Event,
    ) -> Result<Reply, crate::driver::EngineError> {
        let line = self
            .record_inputs
            .then(|| crate::inputs::Pending::new(source, body, &event));
        self.engine.send_recorded(event, line).await
    }

    /// Counts signals refused at the open-breach cap, per rule.
    fn count_refused(&self, refused: &[Refusal]) {
        for r in refused {
            self.metrics
                .breaches_refused
                .with_label_values(&[r.rule.as_str()])
                .inc_by(r.signals as u64);
        }
    }

    /// A request whose path carries part of it (a vote, a freeze): its input-log body is `line`,
    /// and its event is what `event` makes of the same line, as a replay of the log will.
    async fn send_line<L: serde::Serialize>(
        &self,
        source: &str,
        line: L,
        event: impl FnOnce(L) -> Event,
    ) -> Result<Reply, crate::driver::EngineError> {
        let body = serde_json::to_vec(&line).unwrap_or_default();
        self.send_recorded(source, &body, event(line)).await
    }
}

/// When a request's body must have arrived (`limits.body_read_timeout` after its head).
#[derive(Clone, Copy)]
struct BodyDeadline(tokio::time::Instant);

pub fn router(app: Arc<App>) -> Router {
    let limit = app.config().limits.max_body_bytes;
    let body_time = app.config().limits.body_read_timeout;
    let with = |g: Guard| middleware::from_fn_with_state((app.clone(), g), guard);
    let ingest = |source: &'static str| with(Guard::Ingest(source, TokenKind::Ingest));
    Router::new()
        .route(
            "/v1/webhooks/alertmanager",
            post(alertmanager).route_layer(ingest("alertmanager")),
        )
        .route(
            "/v1/webhooks/grafana",
            post(grafana).route_layer(with(Guard::Signed("grafana"))),
        )
        .route("/v1/webhooks/pagerduty", post(pagerduty))
        .route("/v1/signals", post(signals).route_layer(ingest("signal")))
        .route(
            "/v1/releases",
            post(post_release).route_layer(with(Guard::Ingest("release", TokenKind::Releases))),
        )
        .route("/v1/webhooks/github", post(github))
        .route("/v1/webhooks/gitlab", post(gitlab))
        .route("/v1/webhooks/flux", post(flux))
        .route(
            "/v1/webhooks/argocd",
            post(argocd).route_layer(with(Guard::Ingest("argocd", TokenKind::Releases))),
        )
        .route(
            "/v1/releases/{service}",
            get(get_releases).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/breaches",
            get(get_breaches).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/incidents",
            get(list_incidents).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/incidents/{id}",
            get(get_incident).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/incidents/{id}/report",
            get(get_report).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/incidents/{id}/approve",
            post(approve).route_layer(with(Guard::Vote)),
        )
        .route(
            "/v1/incidents/{id}/reject",
            post(reject).route_layer(with(Guard::Vote)),
        )
        .route(
            "/v1/freezes",
            get(list_freezes).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/freezes/{service}",
            get(get_freeze).route_layer(with(Guard::Read)).merge(
                put(put_freeze)
                    .delete(delete_freeze)
                    .route_layer(with(Guard::Admin)),
            ),
        )
        .route("/v1/shadow", get(shadow).route_layer(with(Guard::Read)))
        .route("/-/reload", post(reload).route_layer(with(Guard::Admin)))
        .route("/v1/backup", get(backup).route_layer(with(Guard::Admin)))
        .route("/", get(status_page))
        .route("/incidents/{id}", get(incident_page))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/internal/raft/append", post(cluster::append))
        .route("/internal/raft/vote", post(cluster::vote))
        .route("/internal/raft/snapshot", post(cluster::snapshot))
        .route("/internal/digest", get(cluster::digest))
        .route(
            "/v1/cluster",
            get(cluster::view).route_layer(with(Guard::Read)),
        )
        .route(
            "/v1/cluster/members",
            post(cluster::add_member).route_layer(with(Guard::Admin)),
        )
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(cluster::remove_member).route_layer(with(Guard::Admin)),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(
            app.clone(),
            cluster::forward,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            req.extensions_mut()
                .insert(BodyDeadline(tokio::time::Instant::now() + body_time));
            next.run(req)
        }))
        .with_state(app)
}

/// The request body as received, after the size limit and a content-type check, and only if it
/// all arrived before the request's `BodyDeadline` (else 408).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("content-type `{essence}` is not JSON; send application/json"),
                ));
            }
        }
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let read = Bytes::from_request(req, state);
        let read = match deadline {
            Some(BodyDeadline(at)) => tokio::time::timeout_at(at, read).await.map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive within limits.body_read_timeout",
                )
            })?,
            None => read.await,
        };
        let body = read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
        Ok(RawBody(body))
    }
}

fn malformed(app: &App, source: &str, e: IngestError) -> ApiError {
    app.metrics
        .ingest_rejected
        .with_label_values(&[source, "malformed"])
        .inc();
    ApiError::bad_request(e.message)
}

async fn ingest_signals(
    app: &App,
    source: &str,
    body: &[u8],
    signals: Vec<Signal>,
) -> Result<Response, ApiError> {
    let n = signals.len();
    if let Some(s) = signals.first() {
        app.metrics
            .signals_received
            .with_label_values(&[s.source.as_str()])
            .inc_by(n as u64);
    }
    let reply = app
        .send_recorded(source, body, Event::Signals(signals))
        .await?;
    signals_answer(app, source, n, reply)
}

/// A webhook's alerts, handed to the engine in chunks of at most [`MAX_SIGNALS_PER_EVENT`], in
/// order, each committed before the next is decoded; the answer comes once every chunk is
/// durable. A delivery of one chunk is logged with its body as received, a larger one as one
/// input-log line per chunk (its alerts exactly as received).
async fn ingest_delivery(
    app: &App,
    source: &str,
    body: &[u8],
    d: ingest::alertmanager::Delivery<'_>,
) -> Result<Response, ApiError> {
    d.check().map_err(|e| malformed(app, source, e))?;
    let n = d.len();
    app.metrics
        .signals_received
        .with_label_values(&[d.source().as_str()])
        .inc_by(n as u64);
    let whole = n <= MAX_SIGNALS_PER_EVENT;
    let mut reply = Reply::Ok;
    for range in d.ranges(MAX_SIGNALS_PER_EVENT) {
        let signals = d
            .chunk(range.clone())
            .map_err(|e| malformed(app, source, e))?;
        let chunk_body = (!whole && app.record_inputs).then(|| d.chunk_body(range));
        let logged = chunk_body.as_deref().map_or(body, str::as_bytes);
        reply.merge(
            app.send_recorded(source, logged, Event::Signals(signals))
                .await?,
        );
    }
    signals_answer(app, source, n, reply)
}

/// 200 `{"accepted": n}`, or 429 when some signals would have opened a breach beyond
/// `limits.max_open_breaches_per_rule` (everything else in the request was applied and is
/// durable; a redelivery is idempotent).
fn signals_answer(app: &App, source: &str, n: usize, reply: Reply) -> Result<Response, ApiError> {
    let Reply::Refused(refused) = reply else {
        tracing::debug!(source, n, "signals accepted");
        return Ok(Json(json!({"accepted": n})).into_response());
    };
    app.count_refused(&refused);
    let names: Vec<String> = refused
        .iter()
        .map(|r| {
            format!(
                "rule {} holds {} open breaches (limits.max_open_breaches_per_rule): {} alert(s) refused",
                r.rule, r.cap, r.signals
            )
        })
        .collect();
    tracing::warn!(source, refused = %names.join("; "), "signals refused at the open-breach cap");
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many open breaches: {}; the other alerts were applied",
            names.join("; ")
        ),
    );
    e.detail = json!({
        "received": n,
        "refused": refused.iter().map(|r| json!({
            "rule": r.rule, "cap": r.cap, "alerts": r.signals,
        })).collect::<Vec<_>>(),
    });
    Err(e)
}

async fn alertmanager(
    State(app): State<Arc<App>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let d =
        ingest::alertmanager::delivery(&body).map_err(|e| malformed(&app, "alertmanager", e))?;
    ingest_delivery(&app, "alertmanager", &body, d).await
}

async fn grafana(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    auth::grafana_signature(&app, &headers, &body)?;
    app.quota("grafana")?;
    let d = ingest::grafana::delivery(&body).map_err(|e| malformed(&app, "grafana", e))?;
    ingest_delivery(&app, "grafana", &body, d).await
}

/// PagerDuty Webhooks V3: the signature is checked on the exact bytes before anything is parsed;
/// every verified, well-formed delivery gets a 2xx (a 4xx would make PagerDuty disable the
/// subscription), duplicates included.
async fn pagerduty(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let config = app.config();
    let Some(pd) = &config.pagerduty else {
        return Err(ApiError::not_found(
            "PagerDuty is not configured (add `pagerduty:` with webhook_secrets to the config)",
        ));
    };
    let secrets: Vec<&str> = pd.webhook_secrets.iter().map(|s| s.expose()).collect();
    let signature = headers
        .get("x-pagerduty-signature")
        .and_then(|v| v.to_str().ok());
    ingest::pagerduty::verify_signature(&secrets, signature, &body)
        .map_err(|e| auth::signature_refused(&app, "pagerduty", e.status(), &e.message()))?;
    app.quota("pagerduty")?;
    let event = ingest::pagerduty::parse(&body).map_err(|e| malformed(&app, "pagerduty", e))?;
    // The signed `event.id`, never the unsigned `X-Webhook-Id` header: a captured delivery sent
    // again under a new header is still the same event.
    let delivery = event.id.clone();
    let input = ingest::pagerduty::input(
        &event,
        pd.workflows.get("approve").map(String::as_str),
        pd.workflows.get("reject").map(String::as_str),
    );
    if matches!(input, crate::model::PagerDutyInput::Incident { .. }) {
        app.metrics
            .signals_received
            .with_label_values(&["pagerduty"])
            .inc();
    }
    let reply = app
        .send_recorded(
            "pagerduty",
            &body,
            Event::PagerDuty {
                delivery: delivery.clone(),
                input,
            },
        )
        .await?;
    if let Reply::Refused(r) = &reply {
        app.count_refused(r);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "delivery": delivery,
            "event_type": event.event_type,
            "duplicate": reply == Reply::Duplicate,
        })),
    )
        .into_response())
}

async fn signals(
    State(app): State<Arc<App>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let s = ingest::signals::parse(&body).map_err(|e| malformed(&app, "signal", e))?;
    ingest_signals(&app, "signal", &body, s).await
}

async fn post_release(
    State(app): State<Arc<App>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let r = ingest::releases::parse(&body, app.clock.now())
        .map_err(|e| malformed(&app, "release", e))?;
    let release = r.clone();
    let reply = app
        .send_recorded("release", &body, Event::Release(Box::new(r)))
        .await?;
    release_answer(release, reply)
}

/// 201 `{"release", "frozen", "freeze"}` for a new ledger entry, 200 `{"duplicate": true,
/// "release"}` for one already there.
fn release_answer(release: crate::model::Release, reply: Reply) -> Result<Response, ApiError> {
    match reply {
        Reply::Duplicate => {
            Ok(Json(json!({"duplicate": true, "release": release})).into_response())
        }
        Reply::Release { frozen } => Ok((
            StatusCode::CREATED,
            Json(json!({
                "release": release,
                "frozen": frozen.is_some(),
                "freeze": frozen,
            })),
        )
            .into_response()),
        other => Err(ApiError::from_reply(other)),
    }
}

/// A deploy tool's delivery, once admitted: 202 `{"ignored": why}`, or the release recorded. Its
/// input-log line (source `deploy`) is the release itself, so a replay needs none of the config's
/// service maps to make the same event of it.
async fn deploy_outcome(
    app: &App,
    source: &str,
    outcome: Result<ingest::Outcome, IngestError>,
) -> Result<Response, ApiError> {
    match outcome.map_err(|e| malformed(app, source, e))? {
        ingest::Outcome::Ignored(why) => {
            tracing::debug!(source, ignored = %why, "deploy tool delivery ignored");
            Ok((StatusCode::ACCEPTED, Json(json!({"ignored": why}))).into_response())
        }
        ingest::Outcome::Release(r) => {
            let release = (*r).clone();
            let reply = app
                .send_line(crate::inputs::DEPLOY, r, Event::Release)
                .await?;
            release_answer(release, reply)
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// GitHub: `X-Hub-Signature-256` on the raw bytes, then the quota, then `X-GitHub-Event`.
async fn github(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let config = app.config();
    let secret = config.github.webhook_secret.as_ref();
    auth::signed(&app, &auth::GITHUB, secret, &headers, &body)?;
    app.quota("github")?;
    let event = header(&headers, "x-github-event");
    let outcome = ingest::github::parse(event, &body, &config.github.services, app.clock.now());
    deploy_outcome(&app, "github", outcome).await
}

/// GitLab: `X-Gitlab-Token` (constant time; missing or wrong 401), then the quota.
async fn gitlab(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let config = app.config();
    auth::gitlab_token(&app, config.gitlab.webhook_token.as_ref(), &headers)?;
    app.quota("gitlab")?;
    let outcome = ingest::gitlab::parse(&body, &config.gitlab.services, app.clock.now());
    deploy_outcome(&app, "gitlab", outcome).await
}

/// Flux `generic-hmac`: `X-Signature` on the raw bytes, then the quota.
async fn flux(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let config = app.config();
    let secret = config.flux.webhook_secret.as_ref();
    auth::signed(&app, &auth::FLUX, secret, &headers, &body)?;
    app.quota("flux")?;
    let outcome = ingest::flux::parse(&body, &config.flux.services, app.clock.now());
    deploy_outcome(&app, "flux", outcome).await
}

/// Argo CD notifications: admitted by the releases token (the guard), quota spent there.
async fn argocd(State(app): State<Arc<App>>, RawBody(body): RawBody) -> Result<Response, ApiError> {
    let outcome = ingest::argocd::parse(&body, app.clock.now());
    deploy_outcome(&app, "argocd", outcome).await
}

async fn get_releases(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": app.store.releases(&service)?})))
}

/// Lists are bounded: `?limit=` up to this many, [`DEFAULT_LIMIT`] when not given.
const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 1_000;

fn limit(asked: Option<usize>) -> Result<usize, ApiError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range: 1 to {MAX_LIMIT}"
        ))),
    }
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

/// Open breaches, soonest deadline first; `truncated` when more are open than `limit`.
async fn get_breaches(
    State(app): State<Arc<App>>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let (items, truncated) = app.store.open_breaches(limit(q.limit)?)?;
    Ok(Json(json!({"items": items, "truncated": truncated})))
}

#[derive(Deserialize)]
struct StateQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_incidents(
    State(app): State<Arc<App>>,
    Query(q): Query<StateQuery>,
) -> Result<Json<Value>, ApiError> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(IncidentState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state `{s}` is not one of: {}",
                IncidentState::ALL.map(|s| s.as_str()).join(", ")
            ))
        })?),
    };
    let (items, truncated) = app
        .store
        .incidents_where(|s| state.is_none_or(|st| s.state == st), limit(q.limit)?)?;
    let items = items
        .iter()
        .map(|inc| with_timeline(&app, inc))
        .collect::<Result<Vec<Value>, ApiError>>()?;
    Ok(Json(json!({"items": items, "truncated": truncated})))
}

async fn get_incident(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    incident_view(&app, &id).map(Json)
}

/// An incident with its timeline (and the timeline of the breach that opened it), as every
/// answer that holds incidents shows one.
fn with_timeline(app: &App, inc: &crate::model::Incident) -> Result<Value, ApiError> {
    let mut timeline = app.store.timeline(&format!("breach:{}", inc.breach))?;
    timeline.extend(app.store.timeline(&inc.id)?);
    timeline.sort_by_key(|t| t.at);
    let mut v = serde_json::to_value(inc).map_err(|e| ApiError::internal(e.to_string()))?;
    v["timeline"] =
        serde_json::to_value(timeline).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(v)
}

/// One incident: [`with_timeline`], and whether its timeline's hash chain is whole.
fn incident_view(app: &App, id: &str) -> Result<Value, ApiError> {
    let inc = app
        .store
        .incident(id)?
        .ok_or_else(|| ApiError::not_found(format!("no incident {id}")))?;
    let mut v = with_timeline(app, &inc)?;
    v["timeline_chain"] = serde_json::to_value(app.store.verify_chain(id)?)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(v)
}

#[derive(Deserialize)]
struct ReportQuery {
    format: Option<String>,
}

/// The change-log record and postmortem draft: Markdown, or JSON with `?format=json`.
async fn get_report(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let inc = app
        .store
        .incident(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no incident {id}")))?;
    let timeline = app.store.timeline(&id)?;
    let chain = app.store.verify_chain(&id)?;
    let breach_closed = app.store.breach(&inc.breach)?.and_then(|b| b.closed_at);
    let freeze = app.store.freeze(&inc.service)?;
    let report =
        crate::report::Report::new(&inc, breach_closed, freeze.as_ref(), &timeline, &chain);
    match q.format.as_deref() {
        None | Some("markdown") | Some("md") => Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            report.markdown(),
        )
            .into_response()),
        Some("json") => Ok(Json(report).into_response()),
        Some(other) => Err(ApiError::bad_request(format!(
            "format `{other}` is not one of: markdown, json"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    /// Whose vote: required with the admin token (break-glass); with a person's own token it
    /// may be left out, and when given it must be that person.
    #[serde(default)]
    person: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn vote(
    app: Arc<App>,
    voter: Voter,
    id: String,
    body: Bytes,
    vote: VoteKind,
) -> Result<Json<Value>, ApiError> {
    let b: VoteBody = ingest::json(&body, "vote").map_err(|e| ApiError::bad_request(e.message))?;
    let (person, via) = match voter {
        Voter::Person(owner) => match b.person {
            Some(p) if p != owner => {
                let mut e = ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("person: this token is `{owner}`'s; it votes only as `{owner}`"),
                );
                e.detail = json!({"person": p, "token_of": owner});
                return Err(e);
            }
            _ => (owner, Some(PERSON_TOKEN.to_string())),
        },
        Voter::BreakGlass => match b.person {
            Some(p) if !p.trim().is_empty() => (p, None),
            _ => {
                return Err(ApiError::bad_request(
                    "person: name the people id whose vote this is",
                ));
            }
        },
    };
    match app
        .send_line(
            "vote",
            VoteLine {
                incident: id.clone(),
                person,
                vote,
                via,
                reason: b.reason,
            },
            VoteLine::event,
        )
        .await?
    {
        Reply::Ok => incident_view(&app, &id).map(Json),
        other => Err(ApiError::from_reply(other)),
    }
}

/// How a vote cast with a person's own token is recorded (`via`).
const PERSON_TOKEN: &str = "person-token";

async fn approve(
    State(app): State<Arc<App>>,
    Extension(voter): Extension<Voter>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    vote(app, voter, id, body, VoteKind::Approve).await
}

async fn reject(
    State(app): State<Arc<App>>,
    Extension(voter): Extension<Voter>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    vote(app, voter, id, body, VoteKind::Reject).await
}

async fn list_freezes(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": app.store.freezes()?})))
}

async fn get_freeze(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    Ok(match app.store.freeze(&service)? {
        None => Json(json!({"frozen": false, "service": service})).into_response(),
        Some(f) => (
            StatusCode::LOCKED,
            Json(json!({
                "frozen": true, "service": service, "reason": f.reason,
                "incident": f.incident, "since": f.since, "by": f.by,
            })),
        )
            .into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeBody {
    reason: String,
    #[serde(default)]
    by: Option<String>,
}

fn freeze_body(body: &[u8]) -> Result<FreezeBody, ApiError> {
    let b: FreezeBody =
        ingest::json(body, "freeze").map_err(|e| ApiError::bad_request(e.message))?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "reason: say why, it goes into the timeline",
        ));
    }
    Ok(b)
}

async fn put_freeze(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let b = freeze_body(&body)?;
    let by = b.by.unwrap_or_else(|| "admin".to_string());
    match app
        .send_line(
            "freeze",
            FreezeLine {
                service: service.clone(),
                reason: b.reason,
                by: Some(by),
            },
            |l| l.event(true),
        )
        .await?
    {
        Reply::Ok => Ok(
            Json(json!({"frozen": true, "freeze": app.store.freeze(&service)?})).into_response(),
        ),
        other => Err(ApiError::from_reply(other)),
    }
}

async fn delete_freeze(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let b = freeze_body(&body)?;
    let by = b.by.unwrap_or_else(|| "admin".to_string());
    match app
        .send_line(
            "unfreeze",
            FreezeLine {
                service: service.clone(),
                reason: b.reason,
                by: Some(by),
            },
            |l| l.event(false),
        )
        .await?
    {
        Reply::Unfrozen {
            incident,
            steps,
            running,
        } => {
            let next = (steps > 0).then(|| {
                json!({
                    "steps": steps,
                    "state": if running { "running" } else { "waiting for the incident to end" },
                })
            });
            Ok(Json(json!({
                "frozen": false,
                "service": service,
                "incident": incident,
                "on_unfreeze": next,
            }))
            .into_response())
        }
        other => Err(ApiError::from_reply(other)),
    }
}

/// Per shadow rule: how often it would have acted, and what humans did after each of those times,
/// read from the release ledger: redeployed the previous release (they rolled back too), shipped
/// another release (a fix forward), or nothing yet.
async fn shadow(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let empty = |rule: &str| {
        json!({"rule": rule, "would_have_acted": 0, "humans_rolled_back": 0,
               "humans_fixed_forward": 0, "no_human_action_yet": 0, "last": null, "incidents": []})
    };
    let incidents = app.store.incidents(None)?;
    let mut per_rule: std::collections::BTreeMap<String, Value> = Default::default();
    for i in incidents.iter().filter(|i| i.mode == "shadow") {
        let later: Vec<crate::model::Release> = app
            .store
            .releases(&i.service)?
            .into_iter()
            .filter(|r| r.environment == i.environment && r.deployed_at > i.opened_at)
            .collect();
        let humans = crate::report::humans_after(i, &later);
        let e = per_rule
            .entry(i.rule.clone())
            .or_insert_with(|| empty(&i.rule));
        e["would_have_acted"] = json!(e["would_have_acted"].as_u64().unwrap_or(0) + 1);
        let key = match humans {
            "rolled_back" => "humans_rolled_back",
            "fixed_forward" => "humans_fixed_forward",
            _ => "no_human_action_yet",
        };
        e[key] = json!(e[key].as_u64().unwrap_or(0) + 1);
        if e["last"].is_null() {
            e["last"] = json!(i.opened_at);
        }
        if let Some(list) = e["incidents"].as_array_mut() {
            list.push(json!({"id": i.id, "service": i.service, "opened_at": i.opened_at,
                             "release_from": i.release_from, "release_to": i.release_to, "humans": humans}));
        }
    }
    // Shadow rules that never fired are listed too.
    for r in app
        .rules()
        .rules
        .iter()
        .filter(|r| r.mode == crate::rules::Mode::Shadow)
    {
        per_rule
            .entry(r.name.clone())
            .or_insert_with(|| empty(&r.name));
    }
    Ok(Json(
        json!({"items": per_rule.into_values().collect::<Vec<_>>()}),
    ))
}

/// Same as SIGHUP: 200 with the warnings, or 400 with every problem and the last good set kept.
async fn reload(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    match app.reload("POST /-/reload").await {
        Ok(warnings) => Ok(Json(json!({
            "reloaded": true,
            "rules": app.rules().rules.len(),
            "warnings": warnings,
        }))
        .into_response()),
        Err(problems) => {
            let mut e =
                ApiError::bad_request("reload refused; the last good config and rules stay active");
            e.detail = json!(problems);
            Err(e)
        }
    }
}

async fn status_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize_page(&headers)?;
    Ok(html_page(status::render(&app)?))
}

/// A consistent copy of every record (between two commits), for `rollbackd restore`.
async fn backup(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let blob = tokio::task::spawn_blocking(move || store.backup())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        blob,
    )
        .into_response())
}

async fn incident_page(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize_page(&headers)?;
    let html = incident_page::render(&app, &id)?
        .ok_or_else(|| ApiError::not_found(format!("no incident {id}")))?;
    Ok(html_page(html))
}

fn html_page(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if let Some(node) = &app.cluster
        && !node.ready()
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this node knows no leader that holds a majority",
        )
        .into_response();
    }
    if app.ready.load(Ordering::Acquire) {
        // Ready either way (alerts must keep arriving); what the rules lack here is said.
        let missing = app.preflight_lines();
        if missing.is_empty() {
            Json(json!({"status": "ready"})).into_response()
        } else {
            Json(json!({"status": "ready", "preflight": missing})).into_response()
        }
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: state is loading",
        )
        .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
