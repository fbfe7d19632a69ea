//! Pushing snapshots to other systems: Prometheus remote_write and OTLP
//! over HTTP, fed by the same snapshots (and the same metric sources) as
//! `/metrics`, never by a second collection.
//!
//! - [`config`]: `[[push.remote_write]]`, `[[push.otlp]]`, resolved into
//!   [`config::Destination`]s;
//! - [`collect`](mod@collect): a snapshot's series as values, once per snapshot for all
//!   destinations (the structured-sample encoder of `export`);
//! - [`remote_write`], [`otlp`]: one [`Pusher`] each, in the [`PUSHERS`]
//!   table (adding a protocol = its file + one line there);
//! - [`metrics`]: the per-destination counters.
//!
//! Per destination, two tasks on the runtime:
//! ```text
//! feeder: snapshot watch -> (interval elapsed?) -> collect + encode (blocking pool)
//!         -> bounded queue (full: the oldest push goes, its samples counted)
//! sender: queue -> POST; 2xx sent; 5xx/429/unreachable/timeout: retry with
//!         backoff (Retry-After honoured, capped at max_backoff), unless the
//!         queue filled up meanwhile (then this oldest push is dropped);
//!         other 4xx: rejected at once, never retried
//! ```
//! The collector publishes into the watch channel and never waits for a
//! pusher; the HTTP server shares nothing with them but the metric cells.
//! So a dead or slow endpoint costs its own queue's memory (bounded by
//! `max_queue` compressed bodies) and nothing else.
//!
//! Reads: the snapshot channel, the metric sources. Emits: HTTP requests;
//! `vmscope_push_*` ([`metrics`]); a warning when a destination starts
//! failing and an info line when it recovers (not one per attempt).
//! Fails: [`start`] only, on an unusable CA file (naming the key).

pub mod collect;
pub mod config;
pub mod metrics;
pub mod otlp;
pub mod remote_write;
mod reuse;
mod wire;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::export::{MetricSource, Sources, Value, tasks};
use crate::model::Snapshot;
use crate::outbound::client::send_classified;
use crate::outbound::{Backoff, BoundedQueue, DeliveryError};

pub use collect::{Collected, collect};
pub use config::{Destination, PushConfig};
pub use metrics::{DestinationMetrics, PushMetrics};

/// A sample value as the wire formats carry it.
pub(crate) fn as_f64(v: Value) -> f64 {
    match v {
        Value::U64(n) => n as f64,
        Value::I64(n) => n as f64,
        Value::F64(f) => f,
    }
}

/// The protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RemoteWrite,
    Otlp,
}

/// What a protocol does with one snapshot.
pub trait Pusher: Send + Sync {
    /// The request body (compressed) for `snap`, then the live `sources`
    /// (the `/metrics` order), and the number of series in it. Both
    /// protocols write their bytes straight from the snapshot; each
    /// destination encodes its own push. Blocking work.
    fn encode(&self, snap: &Snapshot, sources: &[Arc<dyn MetricSource>]) -> Encoded;
    /// Headers every request carries (content type and encoding, ...).
    fn headers(&self) -> &'static [(&'static str, &'static str)];
}

/// One encoded request body.
pub struct Encoded {
    /// Compressed.
    pub body: Vec<u8>,
    /// Series in it.
    pub samples: u64,
    /// Series whose bytes were reused from the destination's last push.
    pub reused: u64,
}

/// One row of [`PUSHERS`].
pub struct PusherEntry {
    pub kind: Kind,
    /// The config key under `[push]`, and the default destination name.
    pub key: &'static str,
    /// Builds the pusher of a destination (`start` is this process' start).
    pub build: fn(&Destination, SystemTime) -> Box<dyn Pusher>,
}

/// The protocol table.
pub const PUSHERS: &[PusherEntry] = &[
    PusherEntry {
        kind: Kind::RemoteWrite,
        key: "remote_write",
        build: |d, _| {
            Box::new(RemoteWrite {
                labels: d.labels.clone(),
                last: Mutex::default(),
            })
        },
    },
    PusherEntry {
        kind: Kind::Otlp,
        key: "otlp",
        build: |d, start| {
            Box::new(Otlp {
                start,
                attrs: d.labels.clone(),
                gzip: d.compression != config::Compression::None,
                last: Mutex::default(),
            })
        },
    },
];

impl Kind {
    fn entry(self) -> &'static PusherEntry {
        // The table has a row per variant (a test holds this).
        PUSHERS
            .iter()
            .find(|e| e.kind == self)
            .unwrap_or(&PUSHERS[0])
    }

    /// The name its pushes report under in `vmscope_task_*{task}`.
    pub fn task(self) -> &'static str {
        match self {
            Kind::RemoteWrite => tasks::PUSH_REMOTE_WRITE,
            Kind::Otlp => tasks::PUSH_OTLP,
        }
    }

    /// The config key (`remote_write`, `otlp`).
    pub fn key(self) -> &'static str {
        self.entry().key
    }

    /// Whether `name` may be one of the destination's `labels`.
    pub(crate) fn valid_label(self, name: &str) -> bool {
        match self {
            Kind::RemoteWrite => {
                let mut b = name.bytes();
                b.next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                    && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
                    && !name.starts_with("__")
            }
            Kind::Otlp => !name.is_empty() && name.len() <= 255,
        }
    }

    pub(crate) fn label_word(self) -> &'static str {
        match self {
            Kind::RemoteWrite => "label",
            Kind::Otlp => "resource attribute",
        }
    }
}

/// A destination's kept last push, locked. A panic mid-encode (none is
/// known) would leave a half-written template: that one is started afresh
/// rather than reused.
fn last_push<T: Default>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| {
        m.clear_poison();
        let mut g = p.into_inner();
        *g = T::default();
        g
    })
}

struct RemoteWrite {
    labels: Vec<(String, String)>,
    /// The last push's series, reused while they stay the same. One
    /// destination encodes one push at a time: never contended.
    last: Mutex<remote_write::Template>,
}

impl Pusher for RemoteWrite {
    fn encode(&self, snap: &Snapshot, sources: &[Arc<dyn MetricSource>]) -> Encoded {
        let mut last = last_push(&self.last);
        let (body, n) = remote_write::encode_snapshot(snap, sources, &self.labels, &mut last);
        Encoded {
            body,
            samples: n as u64,
            reused: last.reused() as u64,
        }
    }
    fn headers(&self) -> &'static [(&'static str, &'static str)] {
        remote_write::HEADERS
    }
}

struct Otlp {
    start: SystemTime,
    attrs: Vec<(String, String)>,
    /// `compression = "gzip"` (else the body goes as is).
    gzip: bool,
    /// As for remote_write: the last push's series.
    last: Mutex<otlp::Template>,
}

impl Pusher for Otlp {
    fn encode(&self, snap: &Snapshot, sources: &[Arc<dyn MetricSource>]) -> Encoded {
        let mut last = last_push(&self.last);
        let (body, n) =
            otlp::encode_snapshot(snap, sources, self.start, &self.attrs, self.gzip, &mut last);
        Encoded {
            body,
            samples: n as u64,
            reused: last.reused() as u64,
        }
    }
    fn headers(&self) -> &'static [(&'static str, &'static str)] {
        if self.gzip {
            otlp::HEADERS
        } else {
            otlp::HEADERS_PLAIN
        }
    }
}

/// Starting the pushers failed.
#[derive(Debug, thiserror::Error)]
#[error("push.{kind}: destination {name:?}: {reason}")]
pub struct PushError {
    kind: &'static str,
    name: String,
    reason: String,
}

/// One encoded push waiting for its destination.
struct Batch {
    body: bytes::Bytes,
    samples: u64,
    seq: u64,
}

/// The running pushers; [`Pushers::shutdown`] stops them.
pub struct Pushers {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Pushers {
    /// No destination configured.
    pub fn none() -> Self {
        Pushers {
            tasks: Vec::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Stops every task. What is still queued is dropped (and counted):
    /// metrics are pushed fresh after a restart, replaying old pushes
    /// would only be refused as out of order.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts one feeder and one sender task per destination (on the current
/// tokio runtime). `metrics` gets a row per destination.
pub fn start(
    destinations: Vec<Destination>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    sources: Sources,
    metrics: &PushMetrics,
) -> Result<Pushers, PushError> {
    let process_start = SystemTime::now();
    let sources = Arc::new(sources);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for d in destinations {
        let client = crate::outbound::client::client(&d.client).map_err(|e| PushError {
            kind: d.kind.key(),
            name: d.name.clone(),
            reason: e.to_string(),
        })?;
        let pusher: Arc<dyn Pusher> = Arc::from((d.kind.entry().build)(&d, process_start));
        tasks::global().register(d.kind.task());
        let m = metrics.destination(&d.name);
        let queue = Arc::new(BoundedQueue::new(d.max_queue, |_: &Batch| false));
        let d = Arc::new(d);
        tasks.push(tokio::spawn(feed(
            Arc::clone(&d),
            snapshots.clone(),
            Arc::clone(&sources),
            pusher.clone(),
            Arc::clone(&queue),
            Arc::clone(&m),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(send_loop(
            d,
            client,
            pusher,
            queue,
            m,
            stop_rx.clone(),
        )));
    }
    Ok(Pushers { tasks, stop })
}

/// The calling thread's CPU time, nanoseconds.
fn thread_cpu() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Waits for each new snapshot; at most once per `interval` encodes it
/// and queues the push.
async fn feed(
    d: Arc<Destination>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    sources: Arc<Sources>,
    pusher: Arc<dyn Pusher>,
    queue: Arc<BoundedQueue<Batch>>,
    m: Arc<DestinationMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    // A snapshot arriving a little early still counts as the next one:
    // ticks jitter, and skipping one would halve the push rate.
    let slack = d.interval / 4;
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
        let snap = Arc::clone(&snapshots.borrow_and_update());
        if snap.seq == 0 {
            continue;
        }
        if last.is_some_and(|l| l.elapsed() + slack < d.interval) {
            continue;
        }
        last = Some(Instant::now());
        let (sources, pusher) = (Arc::clone(&sources), Arc::clone(&pusher));
        let started = Instant::now();
        let encoded = tokio::task::spawn_blocking(move || {
            // The encoding runs on this one thread from start to end, so
            // its CPU clock is the push's CPU (what the operator pays).
            let cpu = thread_cpu();
            let e = pusher.encode(&snap, sources.as_slice());
            (e, snap.seq, thread_cpu().saturating_sub(cpu))
        })
        .await;
        let Ok((
            Encoded {
                body,
                samples,
                reused,
            },
            seq,
            cpu,
        )) = encoded
        else {
            continue;
        };
        m.reused.store(reused, Ordering::Relaxed);
        DestinationMetrics::set_f64(&m.duration, started.elapsed().as_secs_f64());
        m.encode_cpu_ns.fetch_add(cpu, Ordering::Relaxed);
        m.encodes.fetch_add(1, Ordering::Relaxed);
        m.queue.fetch_add(samples, Ordering::Relaxed);
        let batch = Batch {
            body: body.into(),
            samples,
            seq,
        };
        if let Some(old) = queue.push(batch) {
            m.queue.fetch_sub(old.samples, Ordering::Relaxed);
            m.dropped.fetch_add(old.samples, Ordering::Relaxed);
            tracing::debug!(destination = %d.name, seq = old.seq, "push queue full: dropped the oldest push");
        }
    }
    queue.close();
}

/// Sends queued pushes in order, retrying as the module docs say.
///
/// The pause after a retryable failure holds for the destination, not for
/// one push: when the push being retried is dropped (the queue filled up
/// behind it), the next one still waits out the pause, so a receiver
/// answering 429 is never hit faster than it asked.
async fn send_loop(
    d: Arc<Destination>,
    client: reqwest::Client,
    pusher: Arc<dyn Pusher>,
    queue: Arc<BoundedQueue<Batch>>,
    m: Arc<DestinationMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let secrets_owned = d.secrets();
    let secrets: Vec<&str> = secrets_owned.iter().map(String::as_str).collect();
    // Logged on a change of state only, never per attempt.
    let mut state = State::Ok;
    let mut backoff = Backoff::new(d.max_backoff);
    let mut pause: Option<Duration> = None;
    'batches: loop {
        let batch = tokio::select! {
            b = queue.pop() => match b { Some(b) => b, None => break },
            _ = stop.changed() => break,
        };
        let started = Instant::now();
        let outcome = loop {
            if let Some(p) = pause.take() {
                tokio::select! {
                    _ = tokio::time::sleep(p) => {}
                    _ = stop.changed() => {
                        m.queue.fetch_sub(batch.samples, Ordering::Relaxed);
                        m.dropped.fetch_add(batch.samples, Ordering::Relaxed);
                        break 'batches;
                    }
                }
                // The queue filled up behind this push: it is the oldest,
                // so it goes first.
                if queue.len() >= d.max_queue {
                    break Outcome::Dropped;
                }
            }
            let mut req = client.post(&d.url).body(batch.body.clone());
            for (k, v) in pusher.headers() {
                req = req.header(*k, *v);
            }
            for (k, v) in &d.headers {
                req = req.header(k, v);
            }
            req = match &d.auth {
                config::Auth::None => req,
                config::Auth::Bearer(t) => req.bearer_auth(t.expose()),
                config::Auth::Basic { username, password } => {
                    req.basic_auth(username, Some(password.expose()))
                }
            };
            // Shutdown does not wait out a slow receiver's timeout.
            let result = tokio::select! {
                r = send_classified(req, &secrets) => r,
                _ = stop.changed() => break Outcome::Dropped,
            };
            match result {
                Ok(()) => break Outcome::Sent,
                Err((DeliveryError::Rejected(msg), kind)) => {
                    m.error(kind.label());
                    break Outcome::Rejected(msg);
                }
                Err((
                    DeliveryError::Retryable {
                        message,
                        retry_after,
                    },
                    kind,
                )) => {
                    m.error(kind.label());
                    if state != State::Failing {
                        state = State::Failing;
                        tracing::warn!(destination = %d.name, error = %message, "push failing; retrying with backoff");
                    }
                    let p = backoff.pause(retry_after);
                    tracing::debug!(destination = %d.name, kind = kind.label(), pause = ?p, "push retry");
                    pause = Some(p);
                }
            }
        };
        m.queue.fetch_sub(batch.samples, Ordering::Relaxed);
        match outcome {
            Outcome::Sent => {
                tasks::global().succeeded(d.kind.task(), started.elapsed());
                m.sent.fetch_add(batch.samples, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_secs_f64();
                DestinationMetrics::set_f64(&m.last_success, now);
                backoff = Backoff::new(d.max_backoff);
                if state != State::Ok {
                    state = State::Ok;
                    tracing::info!(destination = %d.name, "push recovered");
                }
            }
            Outcome::Rejected(msg) => {
                tasks::global().failed(d.kind.task());
                m.rejected.fetch_add(batch.samples, Ordering::Relaxed);
                if state != State::Rejected {
                    state = State::Rejected;
                    tracing::warn!(destination = %d.name, seq = batch.seq, error = %msg, "push rejected; not retried (logged again after a success)");
                } else {
                    tracing::debug!(destination = %d.name, seq = batch.seq, error = %msg, "push rejected");
                }
            }
            Outcome::Dropped => {
                tasks::global().failed(d.kind.task());
                m.dropped.fetch_add(batch.samples, Ordering::Relaxed);
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    // Whatever is left is dropped, and counted.
    queue.close();
    while let Ok(Some(b)) = tokio::time::timeout(Duration::ZERO, queue.pop()).await {
        m.queue.fetch_sub(b.samples, Ordering::Relaxed);
        m.dropped.fetch_add(b.samples, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ok,
    Failing,
    Rejected,
}

enum Outcome {
    Sent,
    Rejected(String),
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_kind() {
        for k in [Kind::RemoteWrite, Kind::Otlp] {
            assert_eq!(k.entry().kind, k);
        }
        assert_eq!(Kind::RemoteWrite.key(), "remote_write");
        assert_eq!(Kind::Otlp.key(), "otlp");
    }

    #[test]
    fn remote_write_label_names() {
        for ok in ["a", "_x", "job", "instance", "region_1"] {
            assert!(Kind::RemoteWrite.valid_label(ok), "{ok}");
        }
        for bad in ["", "1x", "a-b", "__name__", "é"] {
            assert!(!Kind::RemoteWrite.valid_label(bad), "{bad}");
        }
        assert!(Kind::Otlp.valid_label("deployment.environment"));
    }
}
