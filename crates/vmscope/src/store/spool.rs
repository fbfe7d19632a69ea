//! The fleet ledger's local spool: which ledger rows the SQLite state
//! database holds that PostgreSQL does not have yet (their keys in
//! `ledger_spool`, migration 5; the totals stay in `ledger_rows`).
//!
//! Reads/writes: `ledger_spool` and `ledger_spool_state` through the store
//! thread, like every other query ([`Store::spool_job`]); `flush_ledger`
//! adds the keys of the rows it writes in the same transaction, so a row
//! is spooled exactly when it is written. Emits:
//! `vmscope_db_*{op="ledger_spool"}`. Fails: [`StoreError`]; a failed take
//! or acknowledgement changes nothing and is tried again (an entry shipped
//! twice writes the same totals twice: PostgreSQL upserts).

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::ledger::{LedgerKey, LedgerUsage};
use super::sqlite::SqliteStore;
use super::{Backend, Job, Store, StoreError};

/// What the shipper takes from the spool in one go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpoolBatch {
    /// The oldest spooled rows (by flush), with their current totals.
    pub rows: Vec<(LedgerKey, LedgerUsage)>,
    /// The flush number of each row as read (same order as `rows`): an
    /// acknowledgement removes an entry only if no later flush renewed it.
    pub seqs: Vec<i64>,
    /// Entries in the spool after this take (including `rows`).
    pub spooled: u64,
    /// Entries dropped by this take because the spool was over its bound.
    pub dropped: u64,
    /// When the longest-waiting entry was first spooled (ms).
    pub oldest_ms: Option<i64>,
}

/// How many of `count` entries are past `bound` (the oldest go).
pub fn excess(count: u64, bound: usize) -> u64 {
    count.saturating_sub(bound as u64)
}

impl Store {
    /// Run `f` on the store thread against the SQLite backend's spool,
    /// timed as `op`. Never waits for a queue slot (a full queue is
    /// [`StoreError::Busy`], retried later); returns the answer's receiver.
    pub fn spool_job<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let metrics = self.metrics.clone();
        let job: Job = Box::new(move |backend: &mut Backend| {
            let start = Instant::now();
            let res = match backend {
                Backend::Sqlite(s) => f(s),
                // The spool lives with the ledger, in SQLite only.
                Backend::Postgres(_) => Err(StoreError::NoLedger),
            };
            metrics.observe("ledger_spool", start.elapsed(), res.is_ok());
            let _ = tx.send(res);
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{LedgerBatch, LedgerStore};

    #[test]
    fn excess_is_what_is_past_the_bound() {
        assert_eq!(excess(0, 10), 0);
        assert_eq!(excess(10, 10), 0);
        assert_eq!(excess(11, 10), 1);
        assert_eq!(excess(5_000_000, 2_000_000), 3_000_000);
    }

    /// A daily row: nothing coarser, so no rollup rows join the spool and
    /// the tests below count exactly the rows they flush (rollups are
    /// `raw_rows_are_spooled_with_their_rollups`).
    fn row(vm: &str, start: i64, cpu: f64) -> (LedgerKey, LedgerUsage) {
        row_of(86_400, vm, start, cpu)
    }

    fn row_of(res: i64, vm: &str, start: i64, cpu: f64) -> (LedgerKey, LedgerUsage) {
        (
            LedgerKey {
                host: "hv1".into(),
                vm_id: vm.into(),
                incarnation: "b:1:1".into(),
                resolution_s: res,
                interval_start_ms: start,
            },
            LedgerUsage {
                vm_name: format!("{vm}-name"),
                cpu_seconds: cpu,
                observed_seconds: 60.0,
                ..LedgerUsage::default()
            },
        )
    }

    fn flush(s: &mut SqliteStore, rows: Vec<(LedgerKey, LedgerUsage)>) {
        s.flush_ledger(&LedgerBatch {
            rows,
            ..LedgerBatch::default()
        })
        .unwrap();
    }

    #[test]
    fn raw_rows_are_spooled_with_their_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        s.spool_set(true).unwrap();
        flush(
            &mut s,
            vec![row_of(60, "a", 0, 2.0), row_of(60, "a", 60_000, 3.0)],
        );
        let t = s.spool_take(100, 1000).unwrap();
        let mut got: Vec<(i64, i64, f64)> = t
            .rows
            .iter()
            .map(|(k, u)| (k.resolution_s, k.interval_start_ms, u.cpu_seconds))
            .collect();
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // Both raw rows, and the hour and the day they add up to: the
        // fleet ledger gets the rollups as they are, it never recomputes.
        assert_eq!(
            got,
            [
                (60, 0, 2.0),
                (60, 60_000, 3.0),
                (3600, 0, 5.0),
                (86_400, 0, 5.0)
            ]
        );
    }

    #[test]
    fn flushes_spool_only_when_on_and_a_renewed_row_outlives_an_older_ack() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        // Off by default: nothing spooled.
        flush(&mut s, vec![row("a", 0, 1.0)]);
        assert_eq!(s.spool_take(100, 1000).unwrap().spooled, 0);
        s.spool_set(true).unwrap();
        flush(&mut s, vec![row("a", 0, 2.0), row("b", 0, 5.0)]);
        flush(&mut s, vec![row("c", 60_000, 7.0)]);
        let t = s.spool_take(100, 1000).unwrap();
        assert_eq!(t.spooled, 3);
        // Oldest flush first, with the totals as they are now.
        let got: Vec<(&str, f64)> = t
            .rows
            .iter()
            .map(|(k, u)| (k.vm_id.as_str(), u.cpu_seconds))
            .collect();
        assert_eq!(got, [("a", 2.0), ("b", 5.0), ("c", 7.0)]);
        assert!(t.seqs[0] == t.seqs[1] && t.seqs[1] < t.seqs[2]);
        assert!(t.oldest_ms.is_some());
        // "a" is flushed again while the batch is on its way.
        flush(&mut s, vec![row("a", 0, 3.0)]);
        let acks: Vec<(LedgerKey, i64)> = t
            .rows
            .iter()
            .map(|r| r.0.clone())
            .zip(t.seqs.iter().copied())
            .collect();
        assert_eq!(s.spool_ack(&acks).unwrap(), 2);
        let left = s.spool_take(100, 1000).unwrap();
        assert_eq!(left.rows, vec![row("a", 0, 3.0)]);
        // Turning spooling off empties it.
        s.spool_set(false).unwrap();
        assert_eq!(s.spool_take(100, 1000).unwrap().spooled, 0);
    }

    #[test]
    fn past_its_bound_the_oldest_entries_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        s.spool_set(true).unwrap();
        for i in 0..5 {
            flush(&mut s, vec![row(&format!("vm{i}"), 0, f64::from(i))]);
        }
        let t = s.spool_take(2, 3).unwrap();
        assert_eq!((t.dropped, t.spooled), (2, 3));
        let vms: Vec<&str> = t.rows.iter().map(|r| r.0.vm_id.as_str()).collect();
        assert_eq!(vms, ["vm2", "vm3"]);
        // The rows themselves stay in the local ledger.
        let all = s
            .usage(&crate::store::UsageQuery {
                from_ms: 0,
                to_ms: 60_000,
                step_ms: 0,
                by: crate::store::UsageBy::Vm,
                resolution_s: 0,
                host: None,
                limit: 100,
                owners: None,
            })
            .unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(s.spool_take(10, 3).unwrap().dropped, 0);
    }
}
