//! The HTTP API: `/metrics` (Prometheus text or OpenMetrics), `/metrics.json`,
//! the JSON resources under `/api/v1`, `/healthz` and an index at `/`.
//!
//! Reads: the latest `Arc<Snapshot>` from a `tokio::sync::watch` channel
//! (never blocking the collector) and the extra metric sources. Emits: HTTP
//! responses; binding the socket and connections are `crate::server`'s job.
//! `docs/openapi.yaml` describes every route in [`ROUTES`]; a test keeps the
//! two in agreement.
//!
//! One file per resource; [`error::ApiError`] is the only error type and maps
//! to status codes in one `match`. Middleware, outermost first: HTTP
//! self-metrics ([`http_metrics`]), then a request timeout and body limit
//! ([`limits`]).
//!
//! Failure: unknown routes and ids are 404 JSON; an overdue request is 503
//! JSON; nothing internal is echoed to clients.

pub mod error;
mod health;
mod host;
pub mod http_metrics;
mod index;
pub mod limits;
mod metrics;
mod snapshot_age;
mod vms;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;

pub use error::ApiError;
pub use http_metrics::HttpMetrics;

use crate::export::{ExpositionCache, MetricSource};
use crate::model::Snapshot;

/// A route the router serves (all of them answer GET and HEAD).
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo {
    /// The axum route template, also the OpenAPI path and the `route` label.
    pub path: &'static str,
    pub summary: &'static str,
}

/// Every route, in the order the index lists them.
pub const ROUTES: &[RouteInfo] = &[
    RouteInfo {
        path: "/",
        summary: "This index.",
    },
    RouteInfo {
        path: "/metrics",
        summary: "Prometheus text 0.0.4, or OpenMetrics 1.0.0 when Accept asks for application/openmetrics-text.",
    },
    RouteInfo {
        path: "/metrics.json",
        summary: "The same metric families as JSON.",
    },
    RouteInfo {
        path: "/healthz",
        summary: "200 while collection is current, 503 otherwise.",
    },
    RouteInfo {
        path: "/api/v1/vms",
        summary: "All VMs, one summary each.",
    },
    RouteInfo {
        path: "/api/v1/vms/{id}",
        summary: "Everything known about one VM.",
    },
    RouteInfo {
        path: "/api/v1/vms/{id}/stats",
        summary: "One VM's usage as flat totals and rates.",
    },
    RouteInfo {
        path: "/api/v1/host",
        summary: "The host's CPU, memory, load and filesystems.",
    },
];

/// Default bound on the time to answer one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of all handlers: cheap to clone, no global lock (the
/// watch receiver and the exposition cache do their own fine-grained sync).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Extra sources followed by the HTTP self-metrics.
    extra: Vec<Arc<dyn MetricSource>>,
    http: Arc<HttpMetrics>,
    cache: ExpositionCache,
    request_timeout: Duration,
}

impl AppState {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        extra: Vec<Arc<dyn MetricSource>>,
    ) -> Self {
        Self::with_timeout(snapshots, extra, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Same, with a request timeout other than [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_timeout(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        mut extra: Vec<Arc<dyn MetricSource>>,
        request_timeout: Duration,
    ) -> Self {
        let http = Arc::new(HttpMetrics::new());
        extra.push(Arc::new(snapshot_age::SnapshotAge::new(snapshots.clone())));
        extra.push(Arc::clone(&http) as Arc<dyn MetricSource>);
        let state = AppState {
            inner: Arc::new(Inner {
                snapshots,
                extra,
                http,
                cache: ExpositionCache::new(),
                request_timeout,
            }),
        };
        state.spawn_prewarm();
        state
    }

    /// Encodes each new snapshot, on a blocking thread, in the variants
    /// scrapers have been asking for: scrapes then only copy bytes. The task
    /// holds a weak reference and ends with the state. Outside a tokio
    /// runtime (plain unit tests) there is no pre-encoding: the first
    /// request encodes instead, which is slower but the same output.
    fn spawn_prewarm(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rx = self.inner.snapshots.clone();
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                let snap = Arc::clone(&rx.borrow_and_update());
                let horizon = snap.interval;
                let res =
                    tokio::task::spawn_blocking(move || inner.cache.prewarm(&snap, horizon)).await;
                match res {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "pre-encoding the exposition failed"),
                    Err(e) => tracing::warn!(error = %e, "pre-encoding task failed"),
                }
            }
        });
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.inner.snapshots.borrow())
    }

    /// The HTTP self-metrics (also exported on /metrics).
    pub fn http_metrics(&self) -> &HttpMetrics {
        &self.inner.http
    }

    /// The same, shared: the server (`crate::server`) counts connections in it.
    pub fn shared_http_metrics(&self) -> Arc<HttpMetrics> {
        Arc::clone(&self.inner.http)
    }

    pub(crate) fn extra(&self) -> &[Arc<dyn MetricSource>] {
        &self.inner.extra
    }

    pub(crate) fn cache(&self) -> &ExpositionCache {
        &self.inner.cache
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }
}

/// The whole API as one router. Every route answers GET and HEAD.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The API plus `extra` routes that carry their own state (the watchdog's
/// `/api/v1/alerts`), all behind the same layers: HTTP self-metrics, the
/// request timeout, the body limit, and JSON errors for unknown routes and
/// methods.
pub fn router_with(state: AppState, extra: Router) -> Router {
    // JSON resources may be large (1000 VMs): compress on request. /metrics
    // does its own (cached) gzip and must not be compressed twice.
    let resources = Router::new()
        .route("/api/v1/vms", get(vms::list))
        .route("/api/v1/vms/{id}", get(vms::get))
        .route("/api/v1/vms/{id}/stats", get(vms::stats))
        .route("/api/v1/host", get(host::get))
        .layer(CompressionLayer::new());
    Router::new()
        .route("/", get(index::get))
        .route("/metrics", get(metrics::metrics))
        .route("/metrics.json", get(metrics::metrics_json))
        .route("/healthz", get(health::get))
        .merge(resources)
        .with_state(state.clone())
        .merge(extra)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(RequestBodyLimitLayer::new(limits::BODY_LIMIT_BYTES))
        .layer(from_fn_with_state(state.clone(), limits::enforce))
        .layer(from_fn_with_state(state, http_metrics::track))
}

/// A JSON response from a borrowed value (the snapshot outlives no handler).
fn json<T: Serialize + ?Sized>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
