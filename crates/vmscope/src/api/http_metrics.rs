//! HTTP self-metrics: a request-duration histogram and an in-flight gauge,
//! recorded by a middleware, and the connection counters that
//! `crate::server` keeps ([`ConnectionMetrics`]), all exported as one
//! [`MetricSource`].
//!
//! Labels are bounded: `route` is the matched route template from
//! [`MatchedPath`] (never the raw path; `unmatched` for the 404 fallback),
//! `method` is one of the standard methods or `other`, `status` the numeric
//! code. The duration is measured to the response head, not the end of a
//! streamed body.
//!
//! Failure: none; a poisoned lock is recovered (the data is plain counters).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;

use super::AppState;
use crate::export::{Desc, Format, Histogram, MetricSource, MetricWriter, SeriesText};

static DURATION: Desc = Desc::histogram(
    "vmscope_http_request_duration_seconds",
    "Time from request to response head of vmscope's HTTP API, by route template, method and status.",
);
static IN_FLIGHT: Desc = Desc::gauge(
    "vmscope_http_requests_in_flight",
    "HTTP requests vmscope is serving right now.",
);

static CONNECTIONS: Desc = Desc::gauge(
    "vmscope_http_connections",
    "TCP connections open to vmscope's HTTP server.",
);
static CONNECTIONS_LIMIT: Desc = Desc::gauge(
    "vmscope_http_connections_limit",
    "Most TCP connections vmscope's HTTP server keeps open (http.max_connections, lowered to fit RLIMIT_NOFILE).",
);
static ACCEPTED: Desc = Desc::counter(
    "vmscope_http_connections_accepted_total",
    "TCP connections accepted by vmscope's HTTP server.",
);
static CLOSED: Desc = Desc::counter(
    "vmscope_http_connections_closed_total",
    "Connections vmscope's HTTP server closed on its own, by reason (clients closing are not counted).",
);
static ACCEPT_ERRORS: Desc = Desc::counter(
    "vmscope_http_accept_errors_total",
    "Failed accept() calls of vmscope's HTTP server; descriptors = the process or system is out of file descriptors.",
);

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Accepted at the cap with no idle connection to make room: closed at once.
    OverLimit,
    /// Idle (or still sending its request head) and closed to make room.
    Evicted,
    /// The request head (or body) did not arrive within `http.header_read_timeout`.
    HeaderTimeout,
    /// Kept alive with no request for `http.idle_timeout`.
    IdleTimeout,
    /// The client stopped reading the response for `http.idle_timeout`.
    WriteTimeout,
    /// The request head was not valid HTTP/1.x or too large: answered, then closed.
    BadRequest,
    /// Still open when the server stopped.
    Shutdown,
    /// The TLS handshake failed (no common version or suite, a refused
    /// client certificate, not TLS at all).
    TlsHandshake,
}

impl CloseReason {
    const ALL: [CloseReason; 8] = [
        CloseReason::OverLimit,
        CloseReason::Evicted,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::WriteTimeout,
        CloseReason::BadRequest,
        CloseReason::Shutdown,
        CloseReason::TlsHandshake,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::OverLimit => "over_limit",
            CloseReason::Evicted => "evicted",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::BadRequest => "bad_request",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TlsHandshake => "tls_handshake",
        }
    }
}

/// The `kind` label of `vmscope_http_accept_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptErrorKind {
    /// EMFILE, ENFILE, ENOBUFS, ENOMEM: the server backs off.
    Descriptors,
    Other,
}

/// Connection counters, written by `crate::server` (plain atomics: the
/// accept loop never waits on a scrape).
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    pub(crate) open: AtomicI64,
    limit: AtomicU64,
    accepted: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    accept_errors: [AtomicU64; 2],
}

impl ConnectionMetrics {
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit as u64, Ordering::Relaxed);
    }
    pub fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }
    pub fn released(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
    /// Counts a connection accepted only to be closed at once (not open).
    pub fn refused(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.closed(CloseReason::OverLimit);
    }
    pub fn closed(&self, reason: CloseReason) {
        self.closed_n(reason, 1);
    }
    pub fn closed_n(&self, reason: CloseReason, n: u64) {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.closed[i].fetch_add(n, Ordering::Relaxed);
    }
    pub fn accept_error(&self, kind: AcceptErrorKind) {
        let i = match kind {
            AcceptErrorKind::Descriptors => 0,
            AcceptErrorKind::Other => 1,
        };
        self.accept_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self, out: &mut MetricWriter<'_>) {
        out.family(&CONNECTIONS);
        out.sample(&[], self.open.load(Ordering::Relaxed));
        out.family(&CONNECTIONS_LIMIT);
        out.sample(&[], self.limit.load(Ordering::Relaxed));
        out.family(&ACCEPTED);
        out.sample(&[], self.accepted.load(Ordering::Relaxed));
        out.family(&CLOSED);
        for (reason, n) in CloseReason::ALL.iter().zip(&self.closed) {
            out.sample(&[("reason", reason.as_str())], n.load(Ordering::Relaxed));
        }
        out.family(&ACCEPT_ERRORS);
        for (kind, n) in ["descriptors", "other"].iter().zip(&self.accept_errors) {
            out.sample(&[("kind", kind)], n.load(Ordering::Relaxed));
        }
    }
}

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
    /// Each series' text as last written, per text format (Prometheus,
    /// OpenMetrics): this source is written on every scrape, and between
    /// two scrapes usually only the scraped route's series moved (the
    /// others were a quarter of a gzip scrape's user time at 1000 VMs).
    /// Bounded like `series`. Locked by the writers only: a scrape that
    /// finds it taken writes without it.
    texts: Mutex<HashMap<Key, [SeriesText; 2], foldhash::fast::RandomState>>,
    connections: ConnectionMetrics,
}

impl HttpMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's connection counters.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
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
        self.connections.encode(out);

        // Copy out so the request path never waits on encoding.
        let series: Vec<(Key, Hist)> = {
            let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (*k, *v)).collect()
        };
        out.family(&DURATION);
        let mut texts = match self.texts.try_lock() {
            Ok(t) => Some(t),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        for (key, h) in series {
            let (route, method, status) = key;
            let mut code = itoa::Buffer::new();
            let labels = [
                ("route", route),
                ("method", method),
                ("status", code.format(status)),
            ];
            let slot = out.text_format().zip(texts.as_mut()).and_then(|(f, t)| {
                let i = usize::from(f == Format::OpenMetrics);
                t.entry(key).or_default().get_mut(i)
            });
            match slot {
                Some(cache) => h.write_cached(out, &labels, cache),
                None => h.write(out, &labels),
            }
        }
    }

    /// Every request served moves these (the scrape before this one).
    fn volatile(&self) -> bool {
        true
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

/// Middleware (run by `limits::track_and_enforce`): counts the request
/// in flight and records the duration of `inner` (the rest of the stack).
pub async fn track<F: Future<Output = Response>>(
    state: &AppState,
    req: Request,
    inner: impl FnOnce(Request) -> F,
) -> Response {
    let metrics = state.http_metrics();
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight(&metrics.in_flight);
    let start = Instant::now();
    let resp = inner(req).await;
    metrics.observe(
        (route, method, resp.status().as_u16()),
        start.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &HttpMetrics, format: Format) -> String {
        let mut s = String::new();
        let mut w = MetricWriter::new(&mut s, format);
        m.encode(&mut w);
        w.finish();
        s
    }

    fn fresh(observed: &[(Key, f64)]) -> HttpMetrics {
        let m = HttpMetrics::new();
        for (k, v) in observed {
            m.observe(*k, *v);
        }
        m
    }

    /// The series' kept texts are what writing them afresh gives, in both
    /// text formats taken in turn, and follow each new observation.
    #[test]
    fn kept_series_texts_follow_new_observations() {
        let scrape: Key = ("/metrics", "GET", 200);
        let health: Key = ("/healthz", "GET", 200);
        let mut seen = vec![(scrape, 0.001), (health, 0.0002)];
        let m = fresh(&seen);
        for round in 0..3 {
            for format in [Format::Text, Format::OpenMetrics] {
                let want = text(&fresh(&seen), format);
                assert_eq!(text(&m, format), want, "round {round}, {format:?}");
                assert_eq!(text(&m, format), want, "again, round {round}");
            }
            m.observe(scrape, 0.003);
            seen.push((scrape, 0.003));
        }
        let last = text(&m, Format::Text);
        assert!(
            last.contains(
                "vmscope_http_request_duration_seconds_count{route=\"/metrics\",method=\"GET\",status=\"200\"} 4\n"
            ),
            "{last}"
        );
    }
}
