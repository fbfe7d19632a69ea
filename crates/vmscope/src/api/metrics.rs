//! `/metrics` and `/metrics.json`, served from the [`ExpositionCache`].
//!
//! Negotiation: Prometheus text 0.0.4 by default; OpenMetrics 1.0.0 when the
//! `Accept` header lists `application/openmetrics-text` with q > 0 (as
//! Prometheus does); gzip when `Accept-Encoding` allows `gzip` (or `*`).
//! Responses carry `Vary: Accept, Accept-Encoding`.
//!
//! The body is the cached snapshot part plus the live tail, sent as separate
//! chunks with an exact length, never copied into one buffer.
//!
//! Scope: a tenant token is served its view (its VMs and its owners, see
//! `crate::model::scope`), an anonymous `host_only` caller the host-level
//! families; both cached per snapshot (`crate::export::scoped`).
//!
//! Failure: a compression error is a 500 with no detail (logged).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCEPT, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, VARY,
};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::access::{Peer, Viewer};
use super::{ApiError, AppState};
use crate::export::{Exposition, ExpositionCache, Format};

/// The longest a scrape waits for a running tick's snapshot.
const TICK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn metrics(
    State(state): State<AppState>,
    viewer: Viewer,
    peer: Peer,
    headers: HeaderMap,
    uri: axum::http::Uri,
    access: Option<axum::extract::Extension<crate::access::Access>>,
) -> Result<Response, ApiError> {
    // The dual mode: `?query=` is a PromQL query through the proxy.
    if super::prometheus::is_query(&uri) {
        return Ok(super::prometheus::metrics_query(&state, access, &uri).await);
    }
    let format = if accepts_openmetrics(&headers) {
        Format::OpenMetrics
    } else {
        Format::Text
    };
    // A scraper's rhythm sets the collector's phase (`model::pace`):
    // only full expositions, the ones monitoring systems scrape.
    if let (Viewer::All, Some(who)) = (&viewer, peer.0) {
        state.pacer().record(who, std::time::Instant::now());
    }
    // Mid-tick (a scrape a little early, or a slow tick): the new snapshot
    // is due any moment; serving the previous one would make this sample
    // an interval older than the others.
    // The receiver first: a tick that publishes between the check and the
    // wait then ends the wait at once.
    let mut rx = state.snapshots();
    if state.pacer().ticking() {
        let _ = tokio::time::timeout(TICK_WAIT, rx.changed()).await;
    }
    serve(&state, &viewer, format, &headers)
}

pub async fn metrics_json(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&state, &viewer, Format::Json, &headers)
}

fn serve(
    state: &AppState,
    viewer: &Viewer,
    format: Format,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let gzip = accepts_gzip(headers);
    let snapshot = state.snapshot();
    let exposition = match viewer {
        Viewer::All => {
            let cache: &ExpositionCache = state.cache();
            cache.render(&snapshot, state.sources(), format, gzip)
        }
        Viewer::Scoped(view) => state.scoped().render(&snapshot, view, format, gzip),
    }
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(response(exposition))
}

fn response(exposition: Exposition) -> Response {
    let len = exposition.len();
    let mut resp = Response::new(Body::new(Chunks::new(exposition.chunks)));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(exposition.format.content_type()),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    let vary = match exposition.format {
        Format::Json => "Accept-Encoding",
        Format::Text | Format::OpenMetrics => "Accept, Accept-Encoding",
    };
    h.insert(VARY, HeaderValue::from_static(vary));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if exposition.gzip {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// Media ranges from all `Accept`-style headers of one name, with their q.
fn ranges(headers: &HeaderMap, name: axum::http::HeaderName) -> impl Iterator<Item = (&str, f32)> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
            (token, q)
        })
}

fn accepts_openmetrics(headers: &HeaderMap) -> bool {
    ranges(headers, ACCEPT)
        .any(|(t, q)| t.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0)
}

/// `gzip` with q > 0, or `*` with q > 0 when gzip is not listed.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut star = None;
    for (t, q) in ranges(headers, ACCEPT_ENCODING) {
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q);
        } else if t == "*" {
            star = Some(q);
        }
    }
    gzip.or(star).is_some_and(|q| q > 0.0)
}

/// A body of ready chunks with an exact size.
struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks, remaining }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let next = this.chunks.pop_front();
        if let Some(c) = &next {
            this.remaining = this.remaining.saturating_sub(c.len() as u64);
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: axum::http::HeaderName, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(v));
        m
    }

    #[test]
    fn prometheus_accept_header_selects_openmetrics() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                    text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(accepts_openmetrics(&h(ACCEPT, prom)));
        assert!(!accepts_openmetrics(&h(ACCEPT, "text/plain;version=0.0.4")));
        assert!(!accepts_openmetrics(&h(
            ACCEPT,
            "application/openmetrics-text;q=0"
        )));
        assert!(!accepts_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&h(ACCEPT_ENCODING, "gzip")));
        assert!(accepts_gzip(&h(ACCEPT_ENCODING, "br, gzip;q=0.5")));
        assert!(accepts_gzip(&h(ACCEPT_ENCODING, "*")));
        assert!(!accepts_gzip(&h(ACCEPT_ENCODING, "gzip;q=0, *")));
        assert!(!accepts_gzip(&h(ACCEPT_ENCODING, "identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
