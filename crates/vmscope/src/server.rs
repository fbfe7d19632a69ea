//! The HTTP server: the listener, the accept loop, connection limits and
//! timeouts, JSON answers to requests too broken to route, and graceful
//! shutdown. The API itself (routes, handlers) is `crate::api`.
//!
//! Reads: TCP connections on the bound listener, the `[http]` settings
//! ([`HttpConfig`]). Emits: HTTP/1.1 responses from the axum router, and the
//! connection counters in [`crate::api::http_metrics::ConnectionMetrics`].
//!
//! # Design
//! - **A cap on connections** (`http.max_connections`, lowered at start to
//!   fit `RLIMIT_NOFILE`). At the cap, a new connection evicts an idle one
//!   (waiting for its first request, or kept alive between requests) instead
//!   of being refused: a flood of idle sockets therefore cannot lock out a
//!   health check or a scrape, which needs a slot for a few milliseconds.
//!   Connections that never completed a request go first, so a scraper's
//!   kept-alive connection survives a flood. Only when every slot has a
//!   request in progress is a new connection accepted and closed at once.
//! - **Descriptors in reserve.** The collector keeps `/proc` files open up to
//!   `RLIMIT_NOFILE` minus [`HttpConfig::fd_reserve`] (the connection cap plus
//!   [`OTHER_FDS`] for everything else), so neither can starve the other.
//!   `accept()` failing with EMFILE closes an idle connection and backs off
//!   instead of spinning.
//! - **Timeouts.** Each connection runs through [`Guarded`], which holds
//!   back a request's bytes from hyper until the whole head has arrived and
//!   parses, so that hyper only ever sees complete, valid heads. The head
//!   (and body) must arrive within `http.header_read_timeout`; a kept-alive
//!   connection may wait `http.idle_timeout` for its next request; a client
//!   that stops reading a response for `http.idle_timeout` is dropped.
//! - **Broken requests** (not HTTP/1.x, request target over
//!   [`MAX_URI_BYTES`], head over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]
//!   fields) are answered with the API's JSON error body (400 `bad_request`,
//!   414 `uri_too_long`, 431 `headers_too_large`) after the responses to any
//!   earlier requests on the connection, and the connection is closed.
//! - **TLS** (with a web config's `tls_server_config`, `crate::access::tls`):
//!   the handshake runs in the connection's task within
//!   `http.header_read_timeout`, with the configuration current at accept
//!   (a reload changes new handshakes only); then the same `Guarded` runs
//!   over the TLS stream. Failed handshakes are closed and counted
//!   (`tls_handshake`).
//! - **Client address.** Each request carries the peer's `ConnectInfo` for
//!   access control (allow-lists, rate limits).
//! - **Shutdown.** The listener closes, idle connections close at once,
//!   requests in progress get `http.shutdown_grace` to finish (without
//!   keep-alive), and whatever is left after that is dropped.
//!
//! # Limitations
//! HTTP/1 only (as before: axum's `http2` feature is off). A body that breaks
//! chunked framing closes the connection without an answer, since a response
//! may already be on its way.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::access::tls::TlsState;
use crate::api::ApiError;
use crate::api::http_metrics::{AcceptErrorKind, CloseReason, HttpMetrics};

/// Longest request target (path and query) accepted; longer is 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request head (request line and header fields); larger is 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request (hyper's own limit); more is 431.
pub const MAX_HEADERS: usize = 100;
/// Descriptors kept free for everything but connections and held `/proc`
/// files: stdio, the runtime, the listener, the state database, sinks'
/// sockets, and the collector's short-lived opens past its budget.
pub const OTHER_FDS: usize = 128;
/// Pause after `accept()` failed for lack of resources, so that a full
/// descriptor table does not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long an error answer may take to write, and how long the rest of the
/// client's request is read and discarded before closing (closing with
/// unread data would reset the connection and could destroy the answer).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Most connections open at once; at the cap an idle one is closed to
    /// make room.
    pub max_connections: usize,
    /// Time for a request's head (and body) to arrive, from the connection's
    /// start or the request's first byte.
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request (and a
    /// client may stall reading a response).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub idle_timeout: Duration,
    /// How long requests in progress may take to finish at shutdown.
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub shutdown_grace: Duration,
    /// The exporter-toolkit web configuration file (TLS, users, tokens,
    /// allow-lists; `crate::access`); `--web.config.file` overrides it.
    pub web_config_file: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 128,
            header_read_timeout: Duration::from_secs(10),
            // Longer than usual scrape intervals (up to 2 m), so that
            // Prometheus keeps its connection between scrapes.
            idle_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            web_config_file: None,
        }
    }
}

impl HttpConfig {
    /// Checks ranges; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(format!(
                "http.max_connections: {} is out of range (1 to 65536)",
                self.max_connections
            ));
        }
        let hour = Duration::from_secs(3600);
        for (key, d, min) in [
            (
                "header_read_timeout",
                self.header_read_timeout,
                Duration::from_millis(1),
            ),
            ("idle_timeout", self.idle_timeout, Duration::from_millis(1)),
            ("shutdown_grace", self.shutdown_grace, Duration::ZERO),
        ] {
            if d < min || d > hour {
                return Err(format!(
                    "http.{key}: {} is out of range ({} to 1h)",
                    humantime::format_duration(d),
                    if min.is_zero() { "0s" } else { "1ms" }
                ));
            }
        }
        Ok(())
    }

    /// Descriptors the collector leaves free: one per connection plus
    /// [`OTHER_FDS`].
    pub fn fd_reserve(&self) -> usize {
        self.max_connections.saturating_add(OTHER_FDS)
    }

    /// The connection cap that fits the descriptor limit: at most the soft
    /// `RLIMIT_NOFILE` minus [`OTHER_FDS`] (and at least 1).
    fn effective_max_connections(&self, fd_limit: Option<u64>) -> usize {
        let room = fd_limit
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
            .unwrap_or(usize::MAX)
            .saturating_sub(OTHER_FDS);
        self.max_connections.min(room).max(1)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops as
/// described in the module docs. Never fails: accept errors are counted,
/// logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &HttpConfig,
    metrics: Arc<HttpMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, app, cfg, metrics, None, None, shutdown).await;
}

/// [`serve`], speaking TLS on every connection when `tls` is given (see
/// `crate::access::tls`), and setting `gate`'s configured headers
/// (`http_server_config.headers`) on the answers the server writes itself
/// (an unparsable request), as the router's middleware does on all others.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    cfg: &HttpConfig,
    metrics: Arc<HttpMetrics>,
    tls: Option<Arc<TlsState>>,
    gate: Option<Arc<crate::access::Gate>>,
    shutdown: impl Future<Output = ()>,
) {
    let fd_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let cap = cfg.effective_max_connections(fd_limit);
    if cap < cfg.max_connections {
        tracing::warn!(
            max_connections = cfg.max_connections,
            lowered_to = cap,
            rlimit_nofile = fd_limit.unwrap_or(0),
            "http.max_connections lowered to fit the open-file limit; raise LimitNOFILE"
        );
    }
    metrics.connections().set_limit(cap);
    let limits = Limits {
        header_read: cfg.header_read_timeout,
        idle: cfg.idle_timeout,
    };
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res && e.is_panic() {
                    tracing::error!(error = %e, "an HTTP connection task panicked");
                }
                continue;
            }
            res = listener.accept() => res,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => {
                failing = false;
                (stream, peer)
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let kind = if is_resource_error(&e) {
                    AcceptErrorKind::Descriptors
                } else {
                    AcceptErrorKind::Other
                };
                metrics.connections().accept_error(kind);
                if !failing {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed; backing off");
                }
                failing = true;
                // A descriptor held by an idle client is worth more to
                // the next request than to that client.
                registry.evict_one();
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if registry.len() >= cap && !registry.evict_one() {
            metrics.connections().refused();
            tracing::debug!(
                limit = cap,
                "every HTTP connection is busy; closing a new one"
            );
            drop(stream);
            continue;
        }
        // Responses are written whole; Nagle would only delay their tail.
        let _ = stream.set_nodelay(true);
        let slot = registry.insert();
        metrics.connections().opened();
        let conn = Connection {
            slot,
            registry: Arc::clone(&registry),
            metrics: Arc::clone(&metrics),
            gate: gate.clone(),
        };
        tasks.spawn(conn.run(
            stream,
            peer,
            app.clone(),
            limits,
            tls.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if !tasks.is_empty() {
        tracing::info!(
            connections = tasks.len(),
            grace = %humantime::format_duration(cfg.shutdown_grace),
            "stopped accepting; waiting for requests in progress"
        );
    }
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = tasks.len();
        metrics
            .connections()
            .closed_n(CloseReason::Shutdown, left as u64);
        tracing::warn!(
            connections = left,
            "dropping HTTP connections still open after the shutdown grace period"
        );
        tasks.shutdown().await;
    }
}

/// Errors that concern one connection only (it went away before accept).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Out of descriptors or kernel memory: retrying at once would spin.
fn is_resource_error(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
}

/// What a connection is doing, as the accept loop sees it.
const IDLE: u8 = 0; // waiting for (the rest of) a request head: may be evicted
const BUSY: u8 = 1; // a request is being read or answered
const CLOSING: u8 = 2; // chosen for eviction or shutdown

/// One open connection's shared state.
#[derive(Debug)]
struct Slot {
    id: u64,
    accepted: Instant,
    state: AtomicU8,
    /// Request heads completed on this connection.
    served: AtomicU64,
    close: Notify,
}

impl Slot {
    /// Marks an idle connection for closing; false if it is busy (or
    /// already closing).
    fn take_if_idle(&self) -> bool {
        self.state
            .compare_exchange(IDLE, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn set_busy(&self) -> bool {
        self.state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.state.load(Ordering::Acquire) == BUSY
    }

    fn set_idle(&self) {
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The open connections, for the cap and eviction.
#[derive(Debug, Default)]
struct Registry {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // A poisoned map is still a consistent map of Arcs.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn insert(&self) -> Arc<Slot> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id,
            accepted: Instant::now(),
            state: AtomicU8::new(IDLE),
            served: AtomicU64::new(0),
            close: Notify::new(),
        });
        self.lock().insert(id, Arc::clone(&slot));
        slot
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes one idle connection: one that never completed a request
    /// first (oldest first), else the one kept alive longest. A linear scan:
    /// it runs only at the cap, over at most `max_connections` entries.
    fn evict_one(&self) -> bool {
        let mut idle: Vec<Arc<Slot>> = self
            .lock()
            .values()
            .filter(|s| s.state.load(Ordering::Acquire) == IDLE)
            .cloned()
            .collect();
        idle.sort_by_key(|s| (s.served.load(Ordering::Relaxed) > 0, s.accepted));
        for s in idle {
            if s.take_if_idle() {
                s.close.notify_one();
                return true;
            }
        }
        false
    }
}

/// A connection's task and its bookkeeping, released on drop (also when
/// the task is aborted at the end of the grace period).
struct Connection {
    slot: Arc<Slot>,
    registry: Arc<Registry>,
    metrics: Arc<HttpMetrics>,
    gate: Option<Arc<crate::access::Gate>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.registry.remove(self.slot.id);
        self.metrics.connections().released();
    }
}

enum Outcome {
    Done(Result<(), hyper::Error>),
    Closed(CloseReason),
}

impl Connection {
    async fn run(
        self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        app: Router,
        limits: Limits,
        tls: Option<Arc<TlsState>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(tls) = tls else {
            return self.run_on(stream, peer, app, limits, stop).await;
        };
        // The handshake is part of the head: it must end within
        // header_read_timeout, and the connection stays evictable meanwhile.
        // The configuration is taken per connection, so a reload applies
        // to new handshakes while open connections keep theirs.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let deadline = self.slot.accepted + limits.header_read;
        let reason = tokio::select! {
            res = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => match res {
                Ok(Ok(s)) => return self.run_on(s, peer, app, limits, stop).await,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, client = %peer, "TLS handshake failed");
                    CloseReason::TlsHandshake
                }
                Err(_) => CloseReason::HeaderTimeout,
            },
            () = self.slot.close.notified() => CloseReason::Evicted,
            _ = stop.changed() => CloseReason::Shutdown,
        };
        if reason != CloseReason::Shutdown {
            self.metrics.connections().closed(reason);
        }
    }

    async fn run_on<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        self,
        stream: S,
        peer: std::net::SocketAddr,
        app: Router,
        limits: Limits,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut io = Guarded::new(stream, limits, Arc::clone(&self.slot));
        // The client's address, for access control (allow-lists, rate limits).
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let mut builder = http1::Builder::new();
        builder
            // Read nothing while a request is answered: `Guarded` then knows
            // that a read for a head means the connection is idle, and an
            // early end of input still gets the answers already due.
            .half_close(true)
            .keep_alive(true)
            // Timeouts are `Guarded`'s (hyper has no timer here).
            .header_read_timeout(None);
        // Boxed so that it can be dropped, ending its borrow of `io`.
        let mut conn = Box::pin(builder.serve_connection(TokioIo::new(&mut io), svc));
        let mut stopping = false;
        let outcome = loop {
            tokio::select! {
                res = conn.as_mut() => break Outcome::Done(res),
                () = self.slot.close.notified() => {
                    break Outcome::Closed(if stopping { CloseReason::Shutdown } else { CloseReason::Evicted });
                }
                res = stop.changed(), if !stopping => {
                    stopping = true;
                    if res.is_err() || self.slot.take_if_idle() {
                        break Outcome::Closed(CloseReason::Shutdown);
                    }
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        drop(conn);
        match outcome {
            Outcome::Closed(reason) => {
                // Shutdown closes idle connections without a word; they are
                // not counted (the process is about to exit anyway).
                if reason != CloseReason::Shutdown {
                    self.metrics.connections().closed(reason);
                }
                tracing::debug!(reason = reason.as_str(), "closing an HTTP connection");
            }
            Outcome::Done(res) => {
                if let Some(reason) = io.timed_out {
                    self.metrics.connections().closed(reason);
                    tracing::debug!(reason = reason.as_str(), "closing an HTTP connection");
                } else if let Some(err) = io.rejected.take() {
                    self.metrics.connections().closed(CloseReason::BadRequest);
                    tracing::debug!(error = %err, "answering an unparsable HTTP request");
                    // Only after hyper finished cleanly are all earlier
                    // answers out, so that this one is the next on the wire.
                    if res.is_ok() {
                        let headers = self.gate.as_ref().map(|g| g.headers()).unwrap_or_default();
                        answer_and_close(&mut io.io, &err, &headers).await;
                    }
                } else if let Err(e) = res {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            }
        }
    }
}

/// Writes `err` as a complete HTTP/1.1 response, then closes gently: our
/// side first, then the client's unread bytes are discarded (bounded in time
/// and bytes) so that the close does not reset the answer away.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    err: &ApiError,
    headers: &[(String, String)],
) {
    let (status, _) = err.status_and_code();
    let body = err.json_body();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    // Checked at load: names from the toolkit's list, values without
    // control characters (so no header can be smuggled in here).
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; READ_CHUNK];
        let mut total = 0usize;
        while total < LINGER_MAX_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        io::Result::Ok(())
    };
    if let Ok(Err(e)) = tokio::time::timeout(LINGER, write).await {
        tracing::debug!(error = %e, "writing an HTTP error answer failed");
    }
}

// ---- request framing: what `Guarded` needs to know of HTTP/1.1 ----

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

#[derive(Debug)]
enum Inspect {
    /// Not a whole head yet, and nothing wrong so far.
    Partial,
    /// A valid head of `len` bytes.
    Complete {
        len: usize,
        body: Framing,
    },
    Reject(ApiError),
}

/// Inspects the start of `buf` as a request head, as hyper would parse it.
fn inspect_head(buf: &[u8]) -> Inspect {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let too_large = || {
        Inspect::Reject(ApiError::HeadersTooLarge {
            max_bytes: MAX_HEAD_BYTES,
            max_fields: MAX_HEADERS,
        })
    };
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            if req.path.is_some_and(|p| p.len() > MAX_URI_BYTES) {
                return Inspect::Reject(ApiError::UriTooLong(MAX_URI_BYTES));
            }
            if len > MAX_HEAD_BYTES {
                return too_large();
            }
            if let Some(p) = req.path
                && p.parse::<axum::http::Uri>().is_err()
            {
                return Inspect::Reject(ApiError::MalformedRequest("invalid request target"));
            }
            match framing(req.headers) {
                Ok(body) => Inspect::Complete { len, body },
                Err(e) => Inspect::Reject(e),
            }
        }
        Ok(httparse::Status::Partial) => {
            let line_done = req.version.is_some();
            if req.path.is_some_and(|p| p.len() > MAX_URI_BYTES)
                || (!line_done && buf.len() > MAX_URI_BYTES + 64)
            {
                Inspect::Reject(ApiError::UriTooLong(MAX_URI_BYTES))
            } else if buf.len() > MAX_HEAD_BYTES {
                too_large()
            } else {
                Inspect::Partial
            }
        }
        Err(httparse::Error::TooManyHeaders) => too_large(),
        Err(e) => Inspect::Reject(ApiError::MalformedRequest(match e {
            httparse::Error::HeaderName => "invalid header name",
            httparse::Error::HeaderValue => "invalid header value",
            httparse::Error::NewLine => "invalid line ending",
            httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
            httparse::Error::Token => "invalid request line",
            _ => "invalid request head",
        })),
    }
}

/// The body framing from the headers (RFC 9112 6.3), refusing what hyper
/// would refuse and what could be read two ways.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, ApiError> {
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(ApiError::MalformedRequest("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ApiError::MalformedRequest("conflicting Content-Length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of the last field decides.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (chunked, length) {
        (Some(_), Some(_)) => Err(ApiError::MalformedRequest(
            "both Transfer-Encoding and Content-Length",
        )),
        (Some(true), None) => Ok(Framing::Chunked),
        (Some(false), None) => Err(ApiError::MalformedRequest(
            "Transfer-Encoding without chunked last",
        )),
        (None, l) => Ok(Framing::Length(l.unwrap_or(0))),
    }
}

/// Where a chunked body is (RFC 9112 7.1), to find the end of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size { size: u64, digits: u8, ext: bool },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer { line: usize, total: usize },
    TrailerLf { line: usize, total: usize },
    Done,
}

impl Chunked {
    const START: Chunked = Chunked::Size {
        size: 0,
        digits: 0,
        ext: false,
    };

    /// Consumes bytes of `buf` up to the end of the body; returns how many,
    /// or `Err` when the framing is broken.
    fn advance(&mut self, buf: &[u8]) -> Result<usize, ()> {
        let mut i = 0;
        while i < buf.len() && *self != Chunked::Done {
            if let Chunked::Data(n) = *self {
                let take = n.min((buf.len() - i) as u64);
                i += take as usize;
                *self = if take == n {
                    Chunked::DataCr
                } else {
                    Chunked::Data(n - take)
                };
                continue;
            }
            let b = buf[i];
            i += 1;
            *self = match (*self, b) {
                (Chunked::Size { size, digits, .. }, b'\r') if digits > 0 => {
                    Chunked::SizeLf { size }
                }
                (Chunked::Size { ext: true, .. }, _) => *self,
                (Chunked::Size { size, digits, .. }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunked::Size {
                        size,
                        digits,
                        ext: true,
                    }
                }
                (Chunked::Size { size, digits, .. }, b) if digits < 16 => {
                    let d = (b as char).to_digit(16).ok_or(())?;
                    Chunked::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                        ext: false,
                    }
                }
                (Chunked::SizeLf { size: 0 }, b'\n') => Chunked::Trailer { line: 0, total: 0 },
                (Chunked::SizeLf { size }, b'\n') => Chunked::Data(size),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::START,
                (Chunked::Trailer { line, total }, b'\r') => Chunked::TrailerLf { line, total },
                (Chunked::Trailer { line, total }, _) if total < MAX_HEAD_BYTES => {
                    Chunked::Trailer {
                        line: line + 1,
                        total: total + 1,
                    }
                }
                (Chunked::TrailerLf { line: 0, .. }, b'\n') => Chunked::Done,
                (Chunked::TrailerLf { total, .. }, b'\n') => Chunked::Trailer { line: 0, total },
                _ => return Err(()),
            };
        }
        Ok(i)
    }
}

/// Where in the inbound byte stream [`Guarded`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Length(u64),
    Chunked(Chunked),
    /// A head was refused: hyper sees the end of input.
    Rejected,
    /// A body's framing was broken: reads fail.
    Broken,
}

/// Which timeout applies while hyper waits for bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// For a request head (or the first one): `header_read_timeout`.
    Head,
    /// For a request body: `header_read_timeout` from the head's end.
    Body,
    /// Kept alive between requests: `idle_timeout`.
    Idle,
}

/// The connection as hyper sees it: bytes are handed on only once a whole
/// request head has arrived and parses (bodies are passed through as they
/// come, counted to find the next head), and waits are bounded.
struct Guarded<S> {
    io: S,
    limits: Limits,
    slot: Arc<Slot>,
    /// Bytes read: `inbound[..out]` already handed to hyper,
    /// `inbound[out..ok]` checked and due to it, the rest under inspection.
    inbound: Vec<u8>,
    out: usize,
    ok: usize,
    phase: Phase,
    eof: bool,
    wait: (Wait, Instant),
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Set when a timeout closed the connection.
    timed_out: Option<CloseReason>,
    /// Set when a head was refused; the connection task answers it.
    rejected: Option<ApiError>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    fn new(io: S, limits: Limits, slot: Arc<Slot>) -> Self {
        let accepted = slot.accepted;
        Guarded {
            io,
            limits,
            slot,
            inbound: Vec::new(),
            out: 0,
            ok: 0,
            phase: Phase::Head,
            eof: false,
            wait: (Wait::Head, accepted),
            read_timer: None,
            write_timer: None,
            timed_out: None,
            rejected: None,
        }
    }

    /// Moves `ok` forward over what can be handed to hyper. Returns true on
    /// progress (or a change of phase).
    fn inspect(&mut self) -> bool {
        let pending = &self.inbound[self.ok..];
        match self.phase {
            Phase::Head => {
                if pending.is_empty() {
                    return false;
                }
                match inspect_head(pending) {
                    Inspect::Partial => false,
                    Inspect::Complete { len, body } => {
                        if !self.slot.set_busy() {
                            // Chosen for eviction a moment ago: let it go.
                            self.phase = Phase::Broken;
                            return true;
                        }
                        self.slot.served.fetch_add(1, Ordering::Relaxed);
                        self.ok += len;
                        self.phase = match body {
                            Framing::Length(0) => Phase::Head,
                            Framing::Length(n) => Phase::Length(n),
                            Framing::Chunked => Phase::Chunked(Chunked::START),
                        };
                        self.wait = (Wait::Body, Instant::now());
                        true
                    }
                    Inspect::Reject(e) => {
                        self.rejected = Some(e);
                        self.phase = Phase::Rejected;
                        true
                    }
                }
            }
            Phase::Length(n) => {
                if pending.is_empty() {
                    return false;
                }
                let take = n.min(pending.len() as u64);
                self.ok += take as usize;
                self.phase = if take == n {
                    Phase::Head
                } else {
                    Phase::Length(n - take)
                };
                true
            }
            Phase::Chunked(mut c) => match c.advance(pending) {
                Ok(used) => {
                    self.ok += used;
                    self.phase = if c == Chunked::Done {
                        Phase::Head
                    } else {
                        Phase::Chunked(c)
                    };
                    used > 0 || c == Chunked::Done
                }
                Err(()) => {
                    self.phase = Phase::Broken;
                    true
                }
            },
            Phase::Rejected | Phase::Broken => false,
        }
    }

    /// Before returning `Pending` to hyper: which wait this is, and whether
    /// it has lasted too long.
    fn poll_read_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let waiting_for = match self.phase {
            Phase::Head if self.ok == self.inbound.len() => {
                // hyper reads for a head only once earlier answers are out
                // (half_close): from here on the connection may be evicted.
                self.slot.set_idle();
                if self.slot.served.load(Ordering::Relaxed) > 0 {
                    Wait::Idle
                } else {
                    Wait::Head
                }
            }
            Phase::Head => {
                self.slot.set_idle();
                Wait::Head
            }
            _ => Wait::Body,
        };
        if waiting_for != self.wait.0 {
            self.wait = (waiting_for, Instant::now());
        }
        let (limit, reason) = match self.wait.0 {
            Wait::Idle => (self.limits.idle, CloseReason::IdleTimeout),
            Wait::Head | Wait::Body => (self.limits.header_read, CloseReason::HeaderTimeout),
        };
        let deadline = self.wait.1 + limit;
        let timer = self
            .read_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        self.timed_out = Some(reason);
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, reason.as_str()))
    }

    /// After a write returned `Pending`: has the client stalled too long?
    fn poll_write_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let idle = self.limits.idle;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        ready!(timer.as_mut().poll(cx));
        self.timed_out = Some(CloseReason::WriteTimeout);
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "write_timeout"))
    }

    fn write_result<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match res {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_write_timer(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ok > this.out {
                let n = (this.ok - this.out).min(buf.remaining());
                buf.put_slice(&this.inbound[this.out..this.out + n]);
                this.out += n;
                return Poll::Ready(Ok(()));
            }
            if this.out > 0 {
                // All handed on: drop it (bounded: at most a head plus a read).
                this.inbound.drain(..this.out);
                this.ok -= this.out;
                this.out = 0;
                if this.inbound.is_empty() && this.inbound.capacity() > 2 * READ_CHUNK {
                    // A large head came and went: idle connections keep no
                    // more than a read's worth.
                    this.inbound = Vec::new();
                }
            }
            if this.inspect() {
                continue;
            }
            match this.phase {
                Phase::Rejected => return Poll::Ready(Ok(())),
                Phase::Broken => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "connection closed",
                    )));
                }
                _ => {}
            }
            if this.eof {
                // Whatever was left is not a whole request: hyper sees the end.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.inbound.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_read_timer(cx).map(Err),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_result(cx, res)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_result(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_flush(cx);
        this.write_result(cx, res)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rejected.is_some() {
            // The answer to the refused request still has to go out.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn code(i: Inspect) -> &'static str {
        match i {
            Inspect::Reject(e) => e.status_and_code().1,
            Inspect::Partial => "partial",
            Inspect::Complete { .. } => "complete",
        }
    }

    #[test]
    fn heads_are_complete_partial_or_refused_with_the_right_code() {
        let ok = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
        match inspect_head(ok) {
            Inspect::Complete { len, body } => {
                assert_eq!(&ok[..len], b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
                assert_eq!(body, Framing::Length(0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(inspect_head(b"GET /metrics HTTP/1.1\r\nHo")),
            "partial"
        );
        assert_eq!(code(inspect_head(b"GET /me")), "partial");
        assert_eq!(
            code(inspect_head(b"GE(T / HTTP/1.1\r\n\r\n")),
            "bad_request"
        );
        assert_eq!(code(inspect_head(b"GET / HTTP/9.9\r\n\r\n")), "bad_request");
        assert_eq!(code(inspect_head(b"hello\r\n\r\n")), "bad_request");
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2 * MAX_URI_BYTES));
        assert_eq!(code(inspect_head(long.as_bytes())), "uri_too_long");
        // Still arriving, already too long.
        assert_eq!(
            code(inspect_head(&long.as_bytes()[..MAX_URI_BYTES + 100])),
            "uri_too_long"
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "v".repeat(MAX_HEAD_BYTES));
        assert_eq!(code(inspect_head(big.as_bytes())), "headers_too_large");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(code(inspect_head(many.as_bytes())), "headers_too_large");
    }

    #[test]
    fn body_framing_follows_the_headers_and_refuses_ambiguity() {
        let f = |h: &str| match inspect_head(format!("POST / HTTP/1.1\r\n{h}\r\n").as_bytes()) {
            Inspect::Complete { body, .. } => Ok(body),
            Inspect::Reject(e) => Err(e.to_string()),
            Inspect::Partial => Err("partial".into()),
        };
        assert_eq!(f("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(
            f("Content-Length: 12\r\ncontent-length: 12\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            f("Transfer-Encoding: gzip, chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert!(f("Content-Length: 1\r\nContent-Length: 2\r\n").is_err());
        assert!(f("Content-Length: -1\r\n").is_err());
        assert!(f("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n").is_err());
        assert!(f("Transfer-Encoding: chunked, gzip\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_end_where_they_end_whatever_the_reads() {
        let body = b"4;ext=1\r\nWiki\r\n0\r\nTrailer: x\r\n\r\nGET";
        let end = body.len() - 3;
        // Whole, and one byte at a time.
        let mut c = Chunked::START;
        assert_eq!(c.advance(body), Ok(end));
        assert_eq!(c, Chunked::Done);
        let mut c = Chunked::START;
        let mut used = 0;
        for b in body.chunks(1) {
            if c == Chunked::Done {
                break;
            }
            used += c.advance(b).unwrap();
        }
        assert_eq!(used, end);
        let mut c = Chunked::START;
        assert_eq!(c.advance(b"0\r\n\r\n"), Ok(5));
        assert_eq!(c, Chunked::Done);
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nWikiXX",
            b"\r\n",
            b"11111111111111111\r\n",
        ] {
            let mut c = Chunked::START;
            assert!(c.advance(bad).is_err(), "{bad:?}");
        }
    }

    /// A request whose answer never comes is dropped at the end of the grace
    /// period, and `serve` returns then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_drops_requests_still_running_after_the_grace_period() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hang", axum::routing::get(std::future::pending::<()>));
        let cfg = HttpConfig {
            shutdown_grace: Duration::from_millis(500),
            ..HttpConfig::default()
        };
        let metrics = Arc::new(HttpMetrics::new());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let metrics = Arc::clone(&metrics);
            async move {
                serve(listener, app, &cfg, metrics, async {
                    let _ = stop_rx.await;
                })
                .await
            }
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Wait until the request is being served, not merely queued.
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.connections().open.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = Instant::now();
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("serve returned")
            .unwrap();
        let took = stopped.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
        // The client sees its connection closed, with no answer.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));
    }

    #[test]
    fn the_http_section_loads_from_the_environment_and_bad_values_name_their_key() {
        let load = |vars: &[(&str, &str)]| {
            crate::config::Config::load_with_env(
                None,
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
        };
        let c = load(&[
            ("VMSCOPE_HTTP__MAX_CONNECTIONS", "16"),
            ("VMSCOPE_HTTP__IDLE_TIMEOUT", "30s"),
        ])
        .unwrap();
        assert_eq!(c.http.max_connections, 16);
        assert_eq!(c.http.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.http.shutdown_grace, Duration::from_secs(5));
        for (var, value, key) in [
            ("VMSCOPE_HTTP__MAX_CONNECTIONS", "0", "http.max_connections"),
            (
                "VMSCOPE_HTTP__HEADER_READ_TIMEOUT",
                "soon",
                "http.header_read_timeout",
            ),
            ("VMSCOPE_HTTP__SHUTDOWN_GRACE", "2h", "http.shutdown_grace"),
            ("VMSCOPE_HTTP__MAX_CONECTIONS", "5", "max_conections"),
        ] {
            let e = load(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
        }
    }

    #[test]
    fn config_ranges_name_the_key_and_the_cap_fits_the_fd_limit() {
        let c = HttpConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.fd_reserve(), 256);
        let bad = HttpConfig {
            max_connections: 0,
            ..HttpConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("http.max_connections")
        );
        let bad = HttpConfig {
            idle_timeout: Duration::ZERO,
            ..HttpConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("http.idle_timeout"));
        assert_eq!(c.effective_max_connections(None), 128);
        assert_eq!(c.effective_max_connections(Some(1 << 20)), 128);
        assert_eq!(c.effective_max_connections(Some(200)), 72);
        assert_eq!(c.effective_max_connections(Some(10)), 1);
    }
}
