//! The one error type at the HTTP edge: `{"error": "...", "detail": ...}` with a 4xx/5xx status.
//! Internal errors are logged once here and shown to clients without their internals.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::driver::EngineError;
use crate::engine::Reply;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub detail: Value,
    pub retry_after: Option<u64>,
    /// Ask a browser for credentials (`WWW-Authenticate: Basic`).
    pub www_authenticate: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            detail: Value::Null,
            retry_after: None,
            www_authenticate: false,
        }
    }

    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error)
    }

    pub fn internal(detail: String) -> ApiError {
        tracing::error!(%detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the daemon's log",
        )
    }

    pub fn from_reply(r: Reply) -> ApiError {
        match r {
            Reply::NotFound(m) => ApiError::not_found(m),
            Reply::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            Reply::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            other => ApiError::internal(format!("unexpected engine reply {other:?}")),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        tracing::error!(error = %e, "engine unavailable");
        // 503: senders such as Alertmanager retry; nothing was acknowledged.
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not accepted, try again: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response();
        if self.www_authenticate {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"rollbackd\", charset=\"UTF-8\""),
            );
        }
        if let Some(s) = self.retry_after
            && let Ok(v) = s.to_string().parse()
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
