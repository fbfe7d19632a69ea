//! Request limits: a deadline per request and a cap on request bodies.
//!
//! The API only reads; a body is never needed, so the cap is small. A
//! declared `Content-Length` over the cap is refused up front with the usual
//! JSON error; a chunked body that grows past it is cut off by tower-http's
//! `RequestBodyLimitLayer` (installed in [`super::router`]).
//!
//! Failure: an overdue request is dropped and answered 503 `timeout`.

use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Largest request body accepted.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// The API's outermost layer: the request's own metrics
/// ([`super::http_metrics::track`]) around its limits ([`enforce`]). One
/// `from_fn` layer, not two: each boxes its future and clones the inner
/// service for every request (4% of a gzip scrape's user time went to
/// the layers).
pub async fn track_and_enforce(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    super::http_metrics::track(&state, req, |req| enforce(&state, req, next)).await
}

/// The body cap (a declared length) and the deadline.
async fn enforce(state: &AppState, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT_BYTES as u64) {
        return ApiError::PayloadTooLarge(BODY_LIMIT_BYTES).into_response();
    }
    let timeout = state.request_timeout();
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(timeout).into_response(),
    }
}
