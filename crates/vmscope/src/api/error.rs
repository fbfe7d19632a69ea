//! The one error type of the HTTP API, and the fallbacks that use it.
//!
//! Every error response is `{"error": {"code": "...", "message": "..."}}`
//! with the status from [`ApiError::status_and_code`], the single place where
//! errors meet status codes. Internal errors are logged with their cause and
//! answered with a fixed message: no internal text reaches the client.
//! Requests too broken to reach the router (see `crate::server`) get the
//! same body, from [`ApiError::json_body`].

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Longest client-supplied text echoed back in a message.
const ECHO_MAX_CHARS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no VM with id \"{0}\"")]
    VmNotFound(String),
    #[error("no such endpoint; GET / lists them")]
    RouteNotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A request head that is not HTTP/1.x (answered by `crate::server`).
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    #[error(
        "request head larger than {max_bytes} bytes or with more than {max_fields} header fields"
    )]
    HeadersTooLarge { max_bytes: usize, max_fields: usize },
    #[error("request took longer than {0:?}")]
    Timeout(Duration),
    #[error("no collection tick has completed yet")]
    NotReady,
    #[error(
        "the last snapshot is {age_seconds:.1} s old (limit {limit_seconds:.0} s): collection is stuck"
    )]
    Stale {
        age_seconds: f64,
        limit_seconds: f64,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A not-found error that echoes at most [`ECHO_MAX_CHARS`] of the id.
    pub fn vm_not_found(id: &str) -> Self {
        ApiError::VmNotFound(id.chars().take(ECHO_MAX_CHARS).collect())
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::VmNotFound(_) | ApiError::RouteNotFound => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadRequest(_) | ApiError::MalformedRequest(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ApiError::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Stale { .. } => (StatusCode::SERVICE_UNAVAILABLE, "stale"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The error body, `{"error":{"code":...,"message":...}}`.
    fn body(&self) -> Body<'static> {
        let (_, code) = self.status_and_code();
        // `Internal`'s Display is the fixed "internal error", never its source.
        Body {
            error: Detail {
                code,
                message: self.to_string(),
            },
        }
    }

    /// The error body as bytes, for answers written outside axum.
    pub fn json_body(&self) -> Vec<u8> {
        // Two strings cannot fail to serialize; the fallback is never used.
        serde_json::to_vec(&self.body()).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "internal error answering an HTTP request");
        }
        (status, Json(self.body())).into_response()
    }
}

/// Unmatched routes.
pub async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
