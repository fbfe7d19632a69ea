//! The HTTP API: `/metrics` (Prometheus text or OpenMetrics), `/metrics.json`,
//! the JSON resources under `/api/v1`, `/healthz` and the status page at
//! `/` (with its files under `/ui/`, see [`ui`]).
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
//! ([`limits`]), then access control ([`access`], see `crate::access`).
//!
//! Failure: unknown routes and ids are 404 JSON; an overdue request is 503
//! JSON; nothing internal is echoed to clients.

pub mod access;
pub mod alerts;
pub mod error;
mod grafana;
mod health;
mod history;
mod host;
pub mod http_metrics;
mod index;
pub mod limits;
mod metrics;
mod owners;
mod prometheus;
pub mod ui;
pub mod usage;
mod vms;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde::Serialize;
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;

pub use error::ApiError;
pub use http_metrics::HttpMetrics;

use crate::alert::AlertHistory;
use crate::export::scoped::{ScopedCache, View};
use crate::export::{ExpositionCache, MetricSource, SnapshotAge, Sources};
use crate::ledger::{NoLedger, UsageReader};
use crate::model::Snapshot;
use crate::model::pace::Pacer;

/// What a resource answers from: the snapshot (always there) or a part of
/// the agent that may be off (the watchdog's alert history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    Snapshot,
    AlertHistory,
    /// The usage ledger's tables (`crate::ledger::UsageReader`).
    Usage,
    /// The Prometheus behind the query proxy (`crate::proxy`).
    Prometheus,
    /// Nothing but the request (and the configuration).
    Request,
}

/// One resource the router serves: the table row that the router, the index
/// page, the `route` label of the HTTP self-metrics and the OpenAPI test all
/// read, so a path is written once.
#[derive(Clone, Copy)]
pub struct Resource {
    /// The axum route template, also the OpenAPI path and the `route` label.
    pub path: &'static str,
    pub summary: &'static str,
    /// The handlers of the resource (all of today's answer GET and HEAD).
    pub handler: fn() -> MethodRouter<AppState>,
    /// Gzip the answer when asked to (large JSON: 1000 VMs). Off for
    /// /metrics, which does its own (cached) gzip and must not be
    /// compressed twice, and for what stays small.
    pub compress: bool,
    pub reads: Reads,
    /// The handler scopes its answer by the request's
    /// [`crate::access::Access`] (a tenant sees only its VMs and owners;
    /// anonymous `host_only` only host-level aggregates). Routes that do
    /// not are refused to tenants (403) and to `host_only` callers (401)
    /// before their handler runs ([`access::admit`]), so a new route
    /// leaks nothing until it is written to scope.
    pub scoped: bool,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("path", &self.path)
            .field("reads", &self.reads)
            .finish_non_exhaustive()
    }
}

/// Every resource, in the order the index lists them.
pub const ROUTES: &[Resource] = &[
    Resource {
        path: "/",
        summary: "The status page: host gauges, alerts, the VMs with their last hour as graphs, and this index.",
        handler: || get(index::get),
        compress: true,
        reads: Reads::Snapshot,
        // The page's own HTML holds nothing about VMs or owners; its
        // script reads the scoped JSON resources with the caller's
        // credentials.
        scoped: true,
    },
    Resource {
        path: "/ui/{file}",
        summary: "The status page's embedded script and style sheet (app.js, app.css), cached by content hash.",
        handler: || get(ui::get),
        compress: true,
        reads: Reads::Request,
        scoped: true,
    },
    Resource {
        path: "/metrics",
        summary: "Prometheus text 0.0.4, or OpenMetrics 1.0.0 when Accept asks for application/openmetrics-text.",
        handler: || get(metrics::metrics),
        compress: false,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/metrics.json",
        summary: "The same metric families as JSON.",
        handler: || get(metrics::metrics_json),
        compress: false,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/healthz",
        summary: "200 while collection is current, 503 otherwise.",
        handler: || get(health::get),
        compress: false,
        reads: Reads::Snapshot,
        scoped: false,
    },
    Resource {
        path: "/api/v1/vms",
        summary: "All VMs, one summary each.",
        handler: || get(vms::list),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/vms/{id}",
        summary: "Everything known about one VM.",
        handler: || get(vms::get),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/vms/{id}/stats",
        summary: "One VM's usage as flat totals and rates.",
        handler: || get(vms::stats),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/vms/{id}/history",
        summary: "One VM's last hour (CPU cores, RSS, network rates), one point per 15 s; ?points=1..240.",
        handler: || get(history::vm),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/history",
        summary: "Every VM's last hour (and the host's, for admins), coarsened to ?points=1..240 (default 60): the status page's sparklines.",
        handler: || get(history::list),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/owners",
        summary: "Every owner (users and projects) with VMs on this host and their totals; ?kind=user|project.",
        handler: || get(owners::list),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/owners/{kind}/{id}",
        summary: "One owner (kind user or project, id its key) with its totals and its VMs.",
        handler: || get(owners::get),
        compress: true,
        reads: Reads::Snapshot,
        scoped: true,
    },
    Resource {
        path: "/api/v1/host",
        summary: "The host's CPU, memory, load and filesystems.",
        handler: || get(host::get),
        compress: true,
        reads: Reads::Snapshot,
        scoped: false,
    },
    Resource {
        path: "/api/v1/alerts",
        summary: "Watchdog alerts: active ones and the history (503 when the watchdog is off).",
        handler: alerts::handler,
        compress: false,
        reads: Reads::AlertHistory,
        scoped: true,
    },
    Resource {
        path: "/api/v1/usage",
        summary: "Usage totals from the ledger by user, project or VM over a window (CSV with Accept: text/csv; 503 when the ledger is off).",
        handler: usage::handler,
        compress: true,
        reads: Reads::Usage,
        scoped: true,
    },
    // The query proxy and Grafana embedding scope by Access themselves
    // (crate::proxy, docs/proxy.md).
    Resource {
        path: "/api/v1/prometheus/query",
        summary: "Prometheus instant query through the proxy (GET or POST form); a tenant's query is rewritten to its own series.",
        handler: prometheus::query,
        compress: true,
        reads: Reads::Prometheus,
        scoped: true,
    },
    Resource {
        path: "/api/v1/prometheus/query_range",
        summary: "Prometheus range query through the proxy (GET or POST form).",
        handler: prometheus::query_range,
        compress: true,
        reads: Reads::Prometheus,
        scoped: true,
    },
    Resource {
        path: "/api/v1/prometheus/series",
        summary: "Prometheus series by match[] through the proxy (GET or POST form).",
        handler: prometheus::series,
        compress: true,
        reads: Reads::Prometheus,
        scoped: true,
    },
    Resource {
        path: "/api/v1/prometheus/labels",
        summary: "Prometheus label names through the proxy (GET or POST form).",
        handler: prometheus::labels,
        compress: true,
        reads: Reads::Prometheus,
        scoped: true,
    },
    Resource {
        path: "/api/v1/prometheus/label/{name}/values",
        summary: "Prometheus values of one label through the proxy (GET or POST form).",
        handler: prometheus::label_values,
        compress: true,
        reads: Reads::Prometheus,
        scoped: true,
    },
    Resource {
        path: "/grafana/panel_iframe_src",
        summary: "The same-origin Grafana iframe URL of one panel (uid, panelId); a tenant's owner variable is fixed from its token.",
        handler: || get(grafana::panel_iframe_src),
        compress: false,
        reads: Reads::Request,
        scoped: true,
    },
    Resource {
        path: "/grafana/panel.png",
        summary: "410 Gone: panel images are not rendered; use /grafana/panel_iframe_src.",
        handler: || get(grafana::panel_png),
        compress: false,
        reads: Reads::Request,
        scoped: true,
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
    /// The live sources after the snapshot's families (the HTTP
    /// self-metrics among them).
    sources: Sources,
    http: Arc<HttpMetrics>,
    cache: ExpositionCache,
    /// Tenants' and host-only views and expositions.
    scoped: ScopedCache,
    request_timeout: Duration,
    alerts: AlertHistory,
    usage: UsageReader,
    pacer: Pacer,
    /// The last hour per VM and of the host (the status page's graphs),
    /// fed by [`AppState::spawn_history`].
    history: crate::model::history::History,
    /// Set once by [`AppState::with_proxy`] (unset: those routes answer 503).
    proxy: std::sync::OnceLock<Arc<crate::proxy::Proxy>>,
}

/// What the API serves, built once at start-up by `vmscope serve`
/// (`crate::cli::serve::state`).
pub struct Parts {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Every live metric source, in exposition order; `http` must be one
    /// of them for the HTTP self-metrics to be exported.
    pub sources: Sources,
    /// The HTTP self-metrics the middleware and the server write.
    pub http: Arc<HttpMetrics>,
    /// What `/api/v1/alerts` answers from.
    pub alerts: AlertHistory,
    /// What `/api/v1/usage` answers from.
    pub usage: UsageReader,
    pub request_timeout: Duration,
    /// Told of every full scrape, so that the collector's ticks finish
    /// just before the scrapes (`crate::model::pace`).
    pub pacer: Pacer,
}

impl AppState {
    /// A state serving `snapshots` with `extra` sources followed by the
    /// snapshot age and the HTTP self-metrics, as `vmscope serve` orders
    /// them, no watchdog (`/api/v1/alerts` answers 503) and the default
    /// timeout: for tests and benches.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        mut extra: Vec<Arc<dyn MetricSource>>,
    ) -> Self {
        let http = Arc::new(HttpMetrics::new());
        extra.push(Arc::new(SnapshotAge::new(snapshots.clone())));
        extra.push(Arc::clone(&http) as Arc<dyn MetricSource>);
        Self::from_parts(Parts {
            snapshots,
            sources: Sources::new(extra),
            http,
            alerts: AlertHistory::disabled(),
            usage: UsageReader::unavailable(NoLedger::Disabled),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            pacer: Pacer::default(),
        })
    }

    pub fn from_parts(parts: Parts) -> Self {
        let Parts {
            snapshots,
            sources,
            http,
            alerts,
            usage,
            request_timeout,
            pacer,
        } = parts;
        let state = AppState {
            inner: Arc::new(Inner {
                snapshots,
                sources,
                http,
                cache: ExpositionCache::new(),
                scoped: ScopedCache::new(),
                request_timeout,
                alerts,
                usage,
                pacer,
                history: crate::model::history::History::new(),
                proxy: std::sync::OnceLock::new(),
            }),
        };
        state.spawn_prewarm();
        state.spawn_history();
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

    /// Records each new snapshot into the history, off the collector's
    /// tick (the collector only publishes; this task does the O(VMs)
    /// work). Holds a weak reference and ends with the state; outside a
    /// tokio runtime there is no history (empty series).
    fn spawn_history(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rx = self.inner.snapshots.clone();
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            // The snapshot there now counts too (the first tick may have
            // been published before this task started).
            loop {
                let snap = Arc::clone(&rx.borrow_and_update());
                {
                    let Some(inner) = weak.upgrade() else { return };
                    if snap.seq > 0 {
                        inner.history.record(&snap);
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The per-VM and host history (`/api/v1/history`).
    pub(crate) fn history(&self) -> &crate::model::history::History {
        &self.inner.history
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.inner.snapshots.borrow())
    }

    /// The latest snapshot as `viewer` may see it: whole, or a tenant's
    /// view (built once per snapshot and tenant). The host-only view has
    /// no JSON resources: it is asked for credentials.
    pub(crate) fn snapshot_for(&self, viewer: &access::Viewer) -> Result<Arc<Snapshot>, ApiError> {
        let snap = self.snapshot();
        match viewer {
            access::Viewer::All => Ok(snap),
            access::Viewer::Scoped(View::Tenant(t)) => Ok(self.inner.scoped.view(&snap, t)),
            access::Viewer::Scoped(View::HostOnly) => {
                Err(ApiError::Unauthorized("credentials required"))
            }
        }
    }

    /// A receiver of new snapshots (to wait for the one being collected).
    pub(crate) fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        let mut rx = self.inner.snapshots.clone();
        rx.mark_unchanged();
        rx
    }

    pub(crate) fn pacer(&self) -> &Pacer {
        &self.inner.pacer
    }

    pub(crate) fn scoped(&self) -> &ScopedCache {
        &self.inner.scoped
    }

    /// The HTTP self-metrics (also exported on /metrics).
    pub fn http_metrics(&self) -> &HttpMetrics {
        &self.inner.http
    }

    /// The same, shared: the server (`crate::server`) counts connections in it.
    pub fn shared_http_metrics(&self) -> Arc<HttpMetrics> {
        Arc::clone(&self.inner.http)
    }

    /// The live metric sources (`/metrics` tail, `/healthz` components).
    pub(crate) fn sources(&self) -> &[Arc<dyn MetricSource>] {
        self.inner.sources.as_slice()
    }

    pub(crate) fn cache(&self) -> &ExpositionCache {
        &self.inner.cache
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The watchdog's alert history (`/api/v1/alerts`).
    pub(crate) fn alerts(&self) -> &AlertHistory {
        &self.inner.alerts
    }

    /// The usage ledger's reader (`/api/v1/usage`).
    pub(crate) fn usage(&self) -> &UsageReader {
        &self.inner.usage
    }

    /// The query proxy and Grafana embedding (`/api/v1/prometheus/*`,
    /// `/metrics?query=`, `/grafana/*`); without it those answer 503.
    /// Set once: a second call keeps the first proxy.
    pub fn with_proxy(self, proxy: Arc<crate::proxy::Proxy>) -> Self {
        if self.inner.proxy.set(proxy).is_err() {
            tracing::debug!("the query proxy was set up already");
        }
        self
    }

    /// The query proxy, when set up.
    pub(crate) fn proxy(&self) -> Option<Arc<crate::proxy::Proxy>> {
        self.inner.proxy.get().cloned()
    }
}

/// The whole API as one router: every row of [`ROUTES`], behind the same
/// layers (outermost first): HTTP self-metrics, the request timeout, the
/// body limit; JSON errors for unknown routes and methods.
pub fn router(state: AppState) -> Router {
    router_with_access(state, Arc::new(crate::access::Gate::open()))
}

/// [`router`] behind the access control of `gate` (inside the timeout, so
/// that a bcrypt check is bounded by it too).
pub fn router_with_access(state: AppState, gate: Arc<crate::access::Gate>) -> Router {
    let mut app = Router::new();
    for r in ROUTES {
        let handler = (r.handler)();
        let handler = if r.compress {
            handler.layer(CompressionLayer::new())
        } else {
            handler
        };
        let handler = if r.scoped {
            handler
        } else {
            handler.route_layer(axum::middleware::from_fn(access::admit))
        };
        app = app.route(r.path, handler);
    }
    app.with_state(state.clone())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(from_fn_with_state(gate, access::enforce))
        .layer(RequestBodyLimitLayer::new(limits::BODY_LIMIT_BYTES))
        .layer(from_fn_with_state(state, limits::track_and_enforce))
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
