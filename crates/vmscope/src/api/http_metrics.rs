//! HTTP self-metrics: a request-duration histogram and an in-flight gauge,
//! recorded by a middleware and exported as a [`MetricSource`].
//!
//! Labels are bounded: `route` is the matched route template from
//! [`MatchedPath`] (never the raw path; `unmatched` for the 404 fallback),
//! `method` is one of the standard methods or `other`, `status` the numeric
//! code. The duration is measured to the response head, not the end of a
//! streamed body.
//!
//! Failure: none; a poisoned lock is recovered (the data is plain counters).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::export::{Desc, Histogram, MetricSource, MetricWriter};

static DURATION: Desc = Desc::histogram(
    "vmscope_http_request_duration_seconds",
    "Time from request to response head of vmscope's HTTP API, by route template, method and status.",
);
static IN_FLIGHT: Desc = Desc::gauge(
    "vmscope_http_requests_in_flight",
    "HTTP requests vmscope is serving right now.",
);

/// Upper bounds in seconds; /metrics from cache is ~0.1-1 ms.
static BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "other",
];

/// Series key: (route label, method label, status).
type Key = (&'static str, &'static str, u16);

type Hist = Histogram<12>;

/// Shared by the middleware (writes) and the exposition (reads).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    in_flight: AtomicI64,
    series: Mutex<BTreeMap<Key, Hist>>,
}

impl HttpMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn observe(&self, key: Key, seconds: f64) {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| Histogram::new(&BUCKETS))
            .observe(seconds);
    }
}

impl MetricSource for HttpMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        out.family(&IN_FLIGHT);
        out.sample(&[], self.in_flight.load(Ordering::Relaxed));

        // Copy out so the request path never waits on encoding.
        let series: Vec<(Key, Hist)> = {
            let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (*k, *v)).collect()
        };
        out.family(&DURATION);
        for ((route, method, status), h) in series {
            let mut code = itoa::Buffer::new();
            let labels = [
                ("route", route),
                ("method", method),
                ("status", code.format(status)),
            ];
            h.write(out, &labels);
        }
    }
}

fn method_label(m: &Method) -> &'static str {
    METHODS
        .iter()
        .copied()
        .find(|s| *s == m.as_str())
        .unwrap_or("other")
}

/// The route label: the template from the static route table (so the label
/// is `'static` and bounded), `unmatched` for the fallback.
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    match matched {
        None => "unmatched",
        Some(m) => super::ROUTES
            .iter()
            .map(|r| r.path)
            .chain(crate::alert::api::ROUTES.iter().map(|r| r.path))
            .find(|p| *p == m.as_str())
            .unwrap_or("other"),
    }
}

/// Decrements the in-flight gauge even when the request future is dropped.
struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: counts the request in flight and records its duration.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let metrics = state.http_metrics();
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight(&metrics.in_flight);
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.observe(
        (route, method, resp.status().as_u16()),
        start.elapsed().as_secs_f64(),
    );
    resp
}
