//! The shipper: sends the rows the local SQLite ledger spooled to the fleet
//! ledger in PostgreSQL (`[ledger] database_url`), on its own thread
//! (`vmscope-ledger-ship`).
//!
//! ```text
//! vmscope-store:  flush_ledger writes rows + spools their keys (one tx)
//! vmscope-ledger-ship: loop { take the oldest spooled rows (store thread)
//!                             -> upsert them in PostgreSQL (one tx)
//!                             -> acknowledge: drop entries not renewed since }
//! ```
//!
//! Reads: the spool through the store thread ([`crate::store::Store::spool_job`]).
//! Emits: rows into PostgreSQL ([`PgLedger::upsert_rows`]); `vmscope_ledger_spool_rows`,
//! `vmscope_ledger_shipped_rows_total`, `vmscope_ledger_ship_errors_total`,
//! `vmscope_ledger_spool_dropped_rows_total`, `vmscope_ledger_ship_lag_seconds`,
//! `vmscope_db_pool_connections{state}` ([`ShipMetrics`]) and the `/healthz`
//! component `ledger_db` (degraded while PostgreSQL cannot be written).
//! Fails: never stops. PostgreSQL down or refusing: the rows stay spooled,
//! the failure is counted, logged once per change of state, and retried
//! after a back-off with jitter (0.5 s doubling to 30 s, so a fleet that
//! lost its database does not come back all at once). The spool is bounded
//! (`ledger.max_spool_rows`): past it the oldest entries are dropped,
//! counted and logged (their rows stay in the local ledger). The ledger
//! and the collector never wait for any of this.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use crate::error::ErrorChain;
use crate::export::{ComponentHealth, Desc, MetricSource, MetricWriter};
use crate::store::postgres::PgLedger;
use crate::store::{LedgerKey, Store, StoreError};

static SPOOL: Desc = Desc::gauge(
    "vmscope_ledger_spool_rows",
    "Usage rows written to the local state database and not yet shipped to the fleet ledger in PostgreSQL.",
);
static SHIPPED: Desc = Desc::counter(
    "vmscope_ledger_shipped_rows_total",
    "Usage rows upserted into the fleet ledger in PostgreSQL (a row of an open interval is shipped again after each flush that changed it).",
);
static SHIP_ERRORS: Desc = Desc::counter(
    "vmscope_ledger_ship_errors_total",
    "Attempts to ship spooled usage rows to PostgreSQL that failed (unreachable, refused, timed out); the rows stay spooled and are retried.",
);
static SPOOL_DROPPED: Desc = Desc::counter(
    "vmscope_ledger_spool_dropped_rows_total",
    "Spooled usage rows dropped unshipped because more than ledger.max_spool_rows were waiting; they stay in the local ledger but will not reach PostgreSQL.",
);
static LAG: Desc = Desc::gauge(
    "vmscope_ledger_ship_lag_seconds",
    "Age of the longest-waiting spooled usage row (0: the spool is empty).",
);
static POOL: Desc = Desc::gauge(
    "vmscope_db_pool_connections",
    "Connections to the fleet ledger's PostgreSQL, by state (in_use, idle).",
);

/// How the shipper runs.
#[derive(Debug, Clone, Copy)]
pub struct ShipConfig {
    /// Rows per PostgreSQL transaction.
    pub batch_rows: usize,
    /// `ledger.max_spool_rows`.
    pub max_spool_rows: usize,
    /// How long to wait when the spool is empty.
    pub idle: Duration,
    /// `[ledger.retention]`, applied to the fleet ledger too.
    pub retention: super::Retention,
}

/// How often the fleet ledger's retention runs, plus up to a tenth of it
/// at random: a fleet's agents do not all delete at the same moment.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// First and longest back-off after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait after `failures` failures in a row (>= 1): doubling from
/// [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], scaled by `jitter` in [0, 1) to
/// between half and all of it.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let full = BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the standard library's random hash keys.
fn jitter() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The shipper's numbers, shared with the encoder.
pub struct ShipMetrics {
    pg: Arc<PgLedger>,
    spool: AtomicU64,
    shipped: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    /// First spool time of the longest-waiting row, ms; 0: none.
    oldest_ms: AtomicI64,
    /// `Err(why)` while the last attempt failed.
    state: Mutex<Result<(), String>>,
}

impl ShipMetrics {
    pub fn new(pg: Arc<PgLedger>) -> Self {
        ShipMetrics {
            pg,
            spool: AtomicU64::new(0),
            shipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            oldest_ms: AtomicI64::new(0),
            state: Mutex::new(Ok(())),
        }
    }

    fn set_state(&self, s: Result<(), String>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn spooled(&self) -> u64 {
        self.spool.load(Ordering::Relaxed)
    }

    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }
}

impl MetricSource for ShipMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        out.family(&SPOOL);
        out.sample(&[], self.spool.load(Ordering::Relaxed));
        out.family(&SHIPPED);
        out.sample(&[], self.shipped.load(Ordering::Relaxed));
        out.family(&SHIP_ERRORS);
        out.sample(&[], self.errors.load(Ordering::Relaxed));
        out.family(&SPOOL_DROPPED);
        out.sample(&[], self.dropped.load(Ordering::Relaxed));
        out.family(&LAG);
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        let lag = if oldest > 0 {
            (crate::store::to_ms(SystemTime::now()) - oldest).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        out.sample(&[], lag);
        out.family(&POOL);
        let (in_use, idle) = self.pg.pool_counts();
        out.sample(&[("state", "in_use")], in_use as u64);
        out.sample(&[("state", "idle")], idle as u64);
    }

    fn health(&self) -> Option<(&'static str, ComponentHealth)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some((
            "ledger_db",
            match state {
                Ok(()) => ComponentHealth {
                    status: "ok",
                    detail: self.pg.describe().to_owned(),
                },
                Err(why) => ComponentHealth {
                    status: "degraded",
                    detail: format!(
                        "usage rows are kept in the local spool ({} waiting): {why}",
                        self.spooled()
                    ),
                },
            },
        ))
    }
}

/// A running shipper; stopped by [`Shipper::stop`] (or when dropped).
pub struct Shipper {
    stop: Option<mpsc::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Shipper {
    /// Ask the thread to stop and wait at most `wait` for it to let go of
    /// the store (a PostgreSQL call in progress ends within its timeout).
    pub async fn stop(mut self, wait: Duration) {
        drop(self.stop.take());
        if let Some(done) = self.done.take()
            && tokio::time::timeout(wait, done).await.is_err()
        {
            tracing::warn!("the ledger shipper did not stop in time");
        }
    }
}

/// Start the shipper thread. The spool must have been turned on
/// (`spool_set(true)`) before the first flush, which the caller does.
pub fn start(
    store: Store,
    pg: Arc<PgLedger>,
    cfg: ShipConfig,
    metrics: Arc<ShipMetrics>,
) -> Result<Shipper, String> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("vmscope-ledger-ship".to_owned())
        .spawn(move || {
            let mut w = Ship {
                store,
                pg,
                cfg,
                metrics,
                failures: 0,
                stop: stop_rx,
                // Not at start: shipping what waits goes first.
                next_retention: Instant::now() + RETENTION_EVERY.mul_f64(0.1 + 0.1 * jitter()),
            };
            w.run();
            drop(w);
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start the ledger shipper thread: {e}"))?;
    Ok(Shipper {
        stop: Some(stop_tx),
        done: Some(done_rx),
    })
}

struct Ship {
    store: Store,
    pg: Arc<PgLedger>,
    cfg: ShipConfig,
    metrics: Arc<ShipMetrics>,
    /// Failed attempts in a row (0: the last one worked).
    failures: u32,
    stop: mpsc::Receiver<()>,
    next_retention: Instant,
}

/// Why a round did not ship.
enum Failed {
    Store(StoreError),
    Pg(crate::store::postgres::PgError),
}

impl Ship {
    /// Sleep `d` unless told to stop; true when stopping.
    fn sleep(&self, d: Duration) -> bool {
        !matches!(
            self.stop.recv_timeout(d),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    fn store_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::store::sqlite::SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let rx = self.store.spool_job(f)?;
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    fn run(&mut self) {
        loop {
            let wait = match self.round() {
                Ok(0) => {
                    if Instant::now() >= self.next_retention {
                        self.retention();
                    }
                    self.cfg.idle
                }
                // More may be waiting: go on at once.
                Ok(_) => Duration::ZERO,
                Err(f) => self.failed(f),
            };
            if self.sleep(wait) {
                return;
            }
        }
    }

    /// Delete the fleet ledger's rows past `[ledger.retention]`, per
    /// resolution held (all hosts' rows: every agent of a fleet applies
    /// the same deletes, which are idempotent, so give them the same
    /// retention; the shortest wins). Runs only when the spool is empty,
    /// so it never delays shipping; a failure is logged and tried again an
    /// hour later.
    fn retention(&mut self) {
        self.next_retention = Instant::now() + RETENTION_EVERY.mul_f64(1.0 + 0.1 * jitter());
        let now = crate::store::to_ms(std::time::SystemTime::now());
        let held = match self.pg.resolutions() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "fleet ledger retention: cannot read its resolutions; tried again in an hour");
                return;
            }
        };
        for r in held {
            let Some(keep) = self.cfg.retention.keep(r).ms() else {
                continue;
            };
            match self.pg.delete_before(r, now.saturating_sub(keep)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        resolution_s = r,
                        rows = n,
                        "fleet ledger retention deleted old rows"
                    );
                }
                Err(e) => {
                    tracing::warn!(resolution_s = r, error = %e, "fleet ledger retention failed; tried again in an hour");
                    return;
                }
            }
        }
    }

    /// One take -> upsert -> acknowledge; how many rows were shipped.
    fn round(&mut self) -> Result<usize, Failed> {
        self.pg.migrate().map_err(Failed::Pg)?;
        let (batch_rows, bound) = (self.cfg.batch_rows, self.cfg.max_spool_rows);
        let batch = self
            .store_call(move |s| s.spool_take(batch_rows, bound))
            .map_err(Failed::Store)?;
        let m = &self.metrics;
        m.spool.store(batch.spooled, Ordering::Relaxed);
        m.oldest_ms
            .store(batch.oldest_ms.unwrap_or(0), Ordering::Relaxed);
        if batch.dropped > 0 {
            m.dropped.fetch_add(batch.dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped = batch.dropped,
                max_spool_rows = bound,
                "usage ledger spool full: the oldest rows will not reach PostgreSQL (they stay in the local ledger)"
            );
        }
        if batch.rows.is_empty() {
            self.succeeded();
            return Ok(0);
        }
        let started = Instant::now();
        self.pg.upsert_rows(&batch.rows).map_err(Failed::Pg)?;
        let n = batch.rows.len();
        let acks: Vec<(LedgerKey, i64)> = batch
            .rows
            .into_iter()
            .map(|(k, _)| k)
            .zip(batch.seqs)
            .collect();
        // A lost acknowledgement only ships the rows again: harmless.
        let acked = self
            .store_call(move |s| s.spool_ack(&acks))
            .map_err(Failed::Store)?;
        m.shipped.fetch_add(n as u64, Ordering::Relaxed);
        m.spool
            .store(batch.spooled.saturating_sub(acked), Ordering::Relaxed);
        tracing::debug!(
            rows = n,
            took_ms = started.elapsed().as_millis() as u64,
            "usage rows shipped"
        );
        self.succeeded();
        Ok(n)
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(db = %self.pg.describe(), failures = self.failures, "fleet ledger reachable again; shipping the spool");
        }
        self.failures = 0;
        self.metrics.set_state(Ok(()));
    }

    /// Count, log on a change of state, and say how long to wait.
    fn failed(&mut self, f: Failed) -> Duration {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        let why = match &f {
            Failed::Store(e) => format!("local spool: {}", ErrorChain(e)),
            Failed::Pg(e) => e.to_string(),
        };
        let changed = {
            let st = self.metrics.state.lock().unwrap_or_else(|p| p.into_inner());
            st.as_ref().err() != Some(&why)
        };
        if self.failures == 0 || changed {
            tracing::warn!(error = %why, spooled = self.metrics.spooled(), "cannot ship usage rows to the fleet ledger; they stay spooled and are retried");
        }
        self.failures = self.failures.saturating_add(1);
        self.metrics.set_state(Err(why));
        backoff(self.failures, jitter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap_and_jitters_within_half() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(2, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(3, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(10, 0.0), Duration::from_secs(15));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(15));
        assert!(backoff(u32::MAX, 0.99) <= BACKOFF_MAX);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
