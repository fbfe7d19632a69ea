//! The ledger's self-metrics, written into `/metrics` through
//! [`MetricSource`], and its `/healthz` component (`components.ledger`).
//!
//! Reads: numbers the ledger thread sets (atomics and two short mutexes, no
//! IO). Emits: `vmscope_ledger_persistence_enabled`,
//! `vmscope_ledger_flush_duration_seconds`, `vmscope_ledger_rows_written_total`,
//! `vmscope_ledger_pending_rows`, `vmscope_ledger_flush_errors_total`,
//! `vmscope_ledger_rows_dropped_total`, `vmscope_ledger_incarnations`,
//! `vmscope_ledger_last_flush_timestamp_seconds`,
//! `vmscope_ledger_pruned_rows_total`, `vmscope_ledger_prune_errors_total`;
//! no labels. Fails: never.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::export::{ComponentHealth, Desc, Histogram, MetricSource, MetricWriter};

static PERSISTENCE: Desc = Desc::gauge(
    "vmscope_ledger_persistence_enabled",
    "1 while the usage ledger writes its rows and cursors to the state database; 0 when it has none and usage is not recorded (see /healthz).",
);
static FLUSH: Desc = Desc::histogram(
    "vmscope_ledger_flush_duration_seconds",
    "Time from sending one ledger flush (rows and cursors, one transaction) to the state database until it was written.",
);
static WRITTEN: Desc = Desc::counter(
    "vmscope_ledger_rows_written_total",
    "Usage rows written to the state database (a row of an open interval is written again at each flush).",
);
static PENDING: Desc = Desc::gauge(
    "vmscope_ledger_pending_rows",
    "Usage rows changed since they were last written (kept in memory until a flush succeeds).",
);
static ERRORS: Desc = Desc::counter(
    "vmscope_ledger_flush_errors_total",
    "Ledger flushes that failed (database error, disk full, store busy); their rows are kept and sent again.",
);
static DROPPED: Desc = Desc::counter(
    "vmscope_ledger_rows_dropped_total",
    "Usage rows dropped unwritten because more than ledger.max_pending_rows were waiting for the database.",
);
static INCARNATIONS: Desc = Desc::gauge(
    "vmscope_ledger_incarnations",
    "VM incarnations (boot, PID, process start) the ledger follows.",
);
static LAST_FLUSH: Desc = Desc::gauge(
    "vmscope_ledger_last_flush_timestamp_seconds",
    "Unix time of the last successful ledger flush (0: none yet).",
);

static PRUNED: Desc = Desc::counter(
    "vmscope_ledger_pruned_rows_total",
    "Usage rows deleted by retention (ledger.retention: raw rows, hourly and daily rollups).",
);
static PRUNE_ERRORS: Desc = Desc::counter(
    "vmscope_ledger_prune_errors_total",
    "Retention passes that failed (tried again an hour later).",
);

/// Flush durations, seconds.
static BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The ledger's numbers, shared by its thread and the encoder.
#[derive(Debug)]
pub struct LedgerMetrics {
    /// `Ok(path)` while persisting, `Err(why)` when not.
    persistence: Mutex<Result<String, String>>,
    flush: Mutex<Histogram<12>>,
    written: AtomicU64,
    pending: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    incarnations: AtomicU64,
    last_flush_ms: AtomicU64,
    pruned: AtomicU64,
    prune_errors: AtomicU64,
}

impl LedgerMetrics {
    pub fn new(persistence: Result<String, String>) -> Self {
        LedgerMetrics {
            persistence: Mutex::new(persistence),
            flush: Mutex::new(Histogram::new(&BUCKETS)),
            written: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            incarnations: AtomicU64::new(0),
            last_flush_ms: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
            prune_errors: AtomicU64::new(0),
        }
    }

    pub fn set_persistence(&self, p: Result<String, String>) {
        *self.persistence.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    pub fn persisting(&self) -> bool {
        self.persistence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_ok()
    }

    pub fn flushed(&self, seconds: f64, rows: usize, at_ms: i64) {
        self.flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(seconds);
        crate::export::tasks::global().succeeded(
            crate::export::tasks::LEDGER_FLUSH,
            std::time::Duration::try_from_secs_f64(seconds).unwrap_or_default(),
        );
        self.written.fetch_add(rows as u64, Ordering::Relaxed);
        self.last_flush_ms
            .store(u64::try_from(at_ms).unwrap_or(0), Ordering::Relaxed);
    }

    pub fn pruned(&self, rows: u64) {
        self.pruned.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn prune_failed(&self) {
        self.prune_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn flush_failed(&self) {
        crate::export::tasks::global().failed(crate::export::tasks::LEDGER_FLUSH);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// State after a snapshot or a flush.
    pub fn set_state(&self, pending: usize, incarnations: usize, dropped: u64) {
        self.pending.store(pending as u64, Ordering::Relaxed);
        self.incarnations
            .store(incarnations as u64, Ordering::Relaxed);
        self.dropped.store(dropped, Ordering::Relaxed);
    }

    pub fn rows_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn flush_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl MetricSource for LedgerMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        out.family(&PERSISTENCE);
        out.sample(&[], u64::from(self.persisting()));
        out.family(&FLUSH);
        let h = *self.flush.lock().unwrap_or_else(|p| p.into_inner());
        h.write(out, &[]);
        out.family(&WRITTEN);
        out.sample(&[], self.written.load(Ordering::Relaxed));
        out.family(&PENDING);
        out.sample(&[], self.pending.load(Ordering::Relaxed));
        out.family(&ERRORS);
        out.sample(&[], self.errors.load(Ordering::Relaxed));
        out.family(&DROPPED);
        out.sample(&[], self.dropped.load(Ordering::Relaxed));
        out.family(&INCARNATIONS);
        out.sample(&[], self.incarnations.load(Ordering::Relaxed));
        out.family(&LAST_FLUSH);
        out.sample(
            &[],
            self.last_flush_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        out.family(&PRUNED);
        out.sample(&[], self.pruned.load(Ordering::Relaxed));
        out.family(&PRUNE_ERRORS);
        out.sample(&[], self.prune_errors.load(Ordering::Relaxed));
    }

    fn health(&self) -> Option<(&'static str, ComponentHealth)> {
        let p = self
            .persistence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some((
            "ledger",
            match p {
                Ok(path) => ComponentHealth {
                    status: "ok",
                    detail: path,
                },
                Err(why) => ComponentHealth {
                    status: "degraded",
                    detail: format!("the usage ledger records nothing: {why}"),
                },
            },
        ))
    }
}
