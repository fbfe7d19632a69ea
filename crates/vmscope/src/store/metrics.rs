//! Database self-metrics: how long each kind of query takes and how often
//! it fails. Updated by the store thread, read by the `/metrics` encoder.
//! The label `op` takes only the values in [`OPS`].

use std::sync::Mutex;
use std::time::Duration;

use crate::export::Histogram;

/// Every value of the `op` label.
pub const OPS: [&str; 13] = [
    "migrate",
    "load_open",
    "apply",
    "log_notification",
    "query",
    "prune",
    "ledger_load",
    "ledger_flush",
    // The fleet ledger's spool in the state database (ledger/ship.rs).
    "ledger_spool",
    // The fleet ledger in PostgreSQL (store/postgres.rs).
    "pg_migrate",
    "pg_ship",
    "pg_query",
    "pg_delete",
];

/// Histogram upper bounds, seconds (SQLite on a local disk: sub-ms to 1 s).
pub static BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One op's cumulative numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStats {
    /// Durations in seconds, over [`BUCKETS`].
    pub duration: Histogram<12>,
    pub errors: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            duration: Histogram::new(&BUCKETS),
            errors: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct DbMetrics {
    ops: Mutex<[OpStats; OPS.len()]>,
}

impl DbMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one query of kind `op` (unknown ops are ignored: the label
    /// set stays fixed).
    pub fn observe(&self, op: &str, took: Duration, ok: bool) {
        let Some(i) = OPS.iter().position(|o| *o == op) else {
            return;
        };
        // A poisoned lock only means another thread panicked mid-update of
        // plain numbers: keep counting.
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = ops.get_mut(i) {
            s.duration.observe(took.as_secs_f64());
            if !ok {
                s.errors += 1;
            }
        }
    }

    /// (op, stats) for every op, in [`OPS`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, OpStats)> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        OPS.iter().copied().zip(ops.iter().cloned()).collect()
    }
}
