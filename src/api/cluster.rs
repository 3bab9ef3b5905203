//! The cluster's HTTP side: the Raft transport between nodes (`/internal/*`, authenticated with
//! the cluster secret in constant time), `GET /v1/cluster`, membership changes, and the
//! forwarding of writes from a follower to the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use openraft::BasicNode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::App;
use crate::cluster::{NODE_HEADER, Node, SECRET_HEADER};

/// Marks a request a follower forwarded, so it is never forwarded twice.
const FORWARDED: &str = "x-rollbackd-forwarded";

fn node(app: &App) -> Result<&Arc<Node>, ApiError> {
    app.cluster.as_ref().ok_or_else(|| {
        ApiError::not_found("this node is not part of a cluster (no `cluster:` in its config)")
    })
}

/// Only another node of the cluster, holding the secret.
fn peer(app: &App, headers: &HeaderMap) -> Result<Arc<Node>, ApiError> {
    let node = node(app)?;
    let given = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(node.secret.expose().as_bytes());
    if !bool::from(a.ct_eq(&b)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "internal cluster endpoint: the cluster secret is missing or wrong",
        ));
    }
    Ok(node.clone())
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("raft message: {e}")))
}

/// One Raft message from another node: checked, decoded, handed to the Raft node, its answer
/// (or Raft's refusal) sent back. `from_leader`: a message only a leader sends, so an accepted
/// one counts as contact with the leader (for readiness).
async fn rpc<Req, T, E, F>(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    from_leader: bool,
    call: impl FnOnce(Arc<Node>, Req) -> F,
) -> Result<Response, ApiError>
where
    Req: DeserializeOwned,
    T: serde::Serialize,
    E: serde::Serialize,
    F: std::future::Future<Output = Result<T, E>>,
{
    let node = peer(app, headers)?;
    let res = call(node.clone(), decode(body)?).await;
    if from_leader && res.is_ok() {
        node.heard_from_leader();
    }
    Ok(Json(res).into_response())
}

pub(super) async fn append(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    rpc(&app, &headers, &body, true, |n, req| async move {
        n.raft.append_entries(req).await
    })
    .await
}

pub(super) async fn vote(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    rpc(&app, &headers, &body, false, |n, req| async move {
        n.raft.vote(req).await
    })
    .await
}

pub(super) async fn snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    rpc(&app, &headers, &body, true, |n, req| async move {
        n.raft.install_snapshot(req).await
    })
    .await
}

/// This node's rules digest, for the other nodes' `GET /v1/cluster`.
pub(super) async fn digest(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    peer(&app, &headers)?;
    Ok(Json(json!({"rules_digest": app.rules().digest})).into_response())
}

/// `GET /v1/cluster`: who leads in which term, and every member with its role and rules digest
/// (asked of each member now; one that does not answer is `unreachable`).
pub(super) async fn view(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let node = node(&app)?;
    let m = node.metrics();
    let others: Vec<(u64, String)> = m
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != node.id)
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let asks = others.into_iter().map(|(id, url)| {
        let node = node.clone();
        async move {
            let r = node
                .http
                .get(format!("{url}/internal/digest"))
                .header(SECRET_HEADER, node.secret.expose())
                .header(NODE_HEADER, node.id.to_string())
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            let digest = match r {
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["rules_digest"].as_str().map(String::from)),
                _ => None,
            };
            (id, digest)
        }
    });
    let answers: BTreeMap<u64, Option<String>> = futures_join(asks).await.into_iter().collect();
    let reachable: BTreeMap<u64, bool> = answers.iter().map(|(id, d)| (*id, d.is_some())).collect();
    let own = app.rules().digest.clone();
    let mut mismatched = 0;
    let members: Vec<Value> = node
        .members(&reachable)
        .into_iter()
        .map(|mv| {
            let digest = if mv.id == node.id {
                Some(own.clone())
            } else {
                answers.get(&mv.id).cloned().flatten()
            };
            if digest.as_ref().is_some_and(|d| *d != own) {
                mismatched += 1;
            }
            json!({"id": mv.id, "url": mv.url, "role": mv.role, "rules_digest": digest})
        })
        .collect();
    app.metrics.cluster_rules_mismatch.set(mismatched);
    Ok(Json(json!({
        "node_id": node.id,
        "leader": node.leader(),
        "term": m.current_term,
        "members": members,
    })))
}

/// Runs `fs` side by side; their outputs in order.
async fn futures_join<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    id: u64,
    url: String,
}

/// `POST /v1/cluster/members`: adds a node as a learner, waits until it has caught up, then
/// makes it a voter.
pub(super) async fn add_member(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let node = node(&app)?;
    let b: NewMember = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: {e}; send {{\"id\": N, \"url\": \"http://..\"}}"
        ))
    })?;
    let url = url::Url::parse(&b.url)
        .map_err(|e| ApiError::bad_request(format!("url: `{}` is not a URL ({e})", b.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ApiError::bad_request("url: an http(s) URL with a host"));
    }
    let addr = b.url.trim_end_matches('/').to_string();
    node.raft
        .add_learner(b.id, BasicNode::new(addr), true)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("cannot add node {}: {e}", b.id),
            )
        })?;
    let mut voters: std::collections::BTreeSet<u64> = node
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    voters.insert(b.id);
    node.raft
        .change_membership(voters, false)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("cannot make node {} a voter: {e}", b.id),
            )
        })?;
    view(State(app)).await
}

/// `DELETE /v1/cluster/members/{id}`: removes a node from the cluster.
pub(super) async fn remove_member(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let node = node(&app)?;
    let membership = node.metrics().membership_config.membership().clone();
    if membership.get_node(&id).is_none() {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    let voters: std::collections::BTreeSet<u64> =
        membership.voter_ids().filter(|v| *v != id).collect();
    if voters.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot remove the last voter",
        ));
    }
    node.raft
        .change_membership(voters, false)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("cannot remove node {id}: {e}"),
            )
        })?;
    view(State(app)).await
}

/// Writes that reach a follower go to the leader, whose answer is relayed; without a leader the
/// answer is 503 (Alertmanager and PagerDuty retry). Reads, internal traffic and forwarded
/// requests are served here.
pub async fn forward(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(node) = app.cluster.clone() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let write = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE)
        && !path.starts_with("/internal/")
        && path != "/-/reload";
    if !write || node.is_leader() {
        return next.run(req).await;
    }
    if req.headers().contains_key(FORWARDED) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not the leader any more; retry",
        )
        .into_response();
    }
    let Some(leader) = node.leader_url() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader is known to this node; retry",
        )
        .into_response();
    };
    let limit = app.config().limits.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
                .into_response();
        }
    };
    let target = format!(
        "{leader}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut out = node.http.request(parts.method.clone(), &target);
    for (k, v) in parts.headers.iter() {
        if !matches!(
            k.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            out = out.header(k, v);
        }
    }
    let sent = out
        .header(FORWARDED, "1")
        .header(NODE_HEADER, node.id.to_string())
        .timeout(crate::cluster::COMMIT_TIMEOUT + Duration::from_secs(2))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = Response::new(Body::from(bytes));
            *resp.status_mut() = status;
            for (k, v) in headers.iter() {
                if !matches!(
                    k.as_str(),
                    "content-length" | "connection" | "transfer-encoding"
                ) {
                    resp.headers_mut().insert(k, v.clone());
                }
            }
            resp
        }
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the leader did not answer ({}); retry", without_url(&e)),
        )
        .into_response(),
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let e = format!("{e}");
    e.split(" for url").next().unwrap_or("").to_string()
}
