//! The one error type of the HTTP API, and the fallbacks that use it.
//!
//! Every error response is `{"error": {"code": "...", "message": "..."}}`
//! with the status from [`ApiError::status_and_code`], the single place where
//! errors meet status codes. Internal errors are logged with their cause and
//! answered with a fixed message: no internal text reaches the client.
//! Requests too broken to reach the router (see `crate::server`) get the
//! same body, from [`ApiError::json_body`].

use std::borrow::Cow;
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
    #[error("no {kind} with id \"{id}\" has a VM on this host")]
    OwnerNotFound { kind: &'static str, id: String },
    #[error("no owner kind \"{0}\" (user or project)")]
    OwnerKindNotFound(String),
    #[error("no such endpoint; GET / lists them")]
    RouteNotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// A request the resource cannot answer; the message names the part
    /// (a parameter, the path) that is wrong.
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
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
    /// A part of the agent the resource needs is not running (the
    /// watchdog disabled, or without its database); the message says which.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Missing, malformed or wrong credentials (answered with
    /// `WWW-Authenticate` by `super::access`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Outside the IP allow-list or the credentials' scope.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    RateLimited(&'static str),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Like `Internal`, but the caller has logged the cause already and
    /// the fixed message says where to look.
    #[error("{0}")]
    Failed(&'static str),
}

impl ApiError {
    /// A not-found error that echoes at most `ECHO_MAX_CHARS` (128)
    /// characters of the id.
    pub fn vm_not_found(id: &str) -> Self {
        ApiError::VmNotFound(id.chars().take(ECHO_MAX_CHARS).collect())
    }

    /// An unknown owner, its id echoed as [`ApiError::vm_not_found`] does.
    pub fn owner_not_found(kind: &'static str, id: &str) -> Self {
        ApiError::OwnerNotFound {
            kind,
            id: id.chars().take(ECHO_MAX_CHARS).collect(),
        }
    }

    /// An unknown owner kind in the path, echoed likewise.
    pub fn owner_kind_not_found(kind: &str) -> Self {
        ApiError::OwnerKindNotFound(kind.chars().take(ECHO_MAX_CHARS).collect())
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::VmNotFound(_)
            | ApiError::OwnerNotFound { .. }
            | ApiError::OwnerKindNotFound(_)
            | ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
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
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Internal(_) | ApiError::Failed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The alerts resource's answers, folded into this type, keep their
    /// status, code and fixed message.
    #[test]
    fn every_error_has_one_status_and_a_fixed_body() {
        for (e, status, body) in [
            (
                ApiError::BadRequest("limit: \"0\" is not a number".to_owned().into()),
                StatusCode::BAD_REQUEST,
                r#"{"error":{"code":"bad_request","message":"limit: \"0\" is not a number"}}"#,
            ),
            (
                ApiError::Unavailable("the watchdog is disabled in the configuration"),
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":{"code":"unavailable","message":"the watchdog is disabled in the configuration"}}"#,
            ),
            (
                ApiError::Failed("the alert store failed; see the agent's log"),
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"code":"internal","message":"the alert store failed; see the agent's log"}}"#,
            ),
            (
                ApiError::Internal("secret path /var/lib/x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"code":"internal","message":"internal error"}}"#,
            ),
        ] {
            assert_eq!(e.status_and_code().0, status, "{e:?}");
            assert_eq!(String::from_utf8(e.json_body()).unwrap(), body);
        }
    }
}
