//! The usage ledger's tables, whatever the backend: [`LedgerStore`] and the
//! rows it reads and writes (the accounting itself is `crate::ledger`).
//!
//! Reads/writes: `ledger_rows` (one row per host, VM, incarnation,
//! resolution and interval, holding the interval's running totals),
//! `ledger_cursors` (per incarnation: the counters and time of its last
//! observation) and `ledger_state` (per host boot: the time up to which the
//! ledger had looked), through the store thread like every other query.
//! Emits: `vmscope_db_*{op="ledger_load"|"ledger_flush"}`.
//! Fails: [`StoreError`]; a flush is one transaction, so a failed flush
//! changes nothing and is simply sent again (rows are upserts: replaying a
//! flush writes the same totals, it cannot double count).

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Backend, Job, Store, StoreError};

/// The key of one ledger row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerKey {
    pub host: String,
    pub vm_id: String,
    /// `<boot id>:<pid>:<process start, clock ticks since boot>`.
    pub incarnation: String,
    /// Row length in seconds (60 for the raw rows by default).
    pub resolution_s: i64,
    /// Start of the interval, milliseconds since the Unix epoch, a multiple
    /// of the resolution.
    pub interval_start_ms: i64,
}

/// What one VM incarnation used in one interval (running totals while the
/// interval is open).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerUsage {
    pub vm_name: String,
    /// Owner keys and labels per `model::identity` (key: id, else name;
    /// label: name, else id), as resolved when the usage was measured.
    pub user_key: Option<String>,
    pub user_label: Option<String>,
    pub project_key: Option<String>,
    pub project_label: Option<String>,
    /// Hypervisor process user + system CPU seconds.
    pub cpu_seconds: f64,
    /// Guest (vCPU) seconds, part of `cpu_seconds`; `None` where the kernel
    /// did not report it for any part of the interval.
    pub guest_seconds: Option<f64>,
    pub vcpu_allocated_seconds: f64,
    pub memory_allocated_byte_seconds: f64,
    pub rss_byte_seconds: f64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub observed_seconds: f64,
    pub gap_seconds: f64,
}

/// One interface's counters in a cursor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetCounter {
    pub interface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The last observation of one incarnation: where its next delta starts.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerCursor {
    pub host: String,
    pub vm_id: String,
    pub incarnation: String,
    /// When it was observed, ms since the Unix epoch.
    pub at_ms: i64,
    pub cpu_seconds: f64,
    pub guest_seconds: Option<f64>,
    pub net: Vec<NetCounter>,
    pub vcpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub rss_bytes: u64,
    pub running: bool,
}

/// What the ledger finds at start for the running boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerRestore {
    /// Cursors of this boot's incarnations.
    pub cursors: Vec<LedgerCursor>,
    /// The rows those cursors' deltas may still add to (the interval each
    /// cursor was in, at `resolution_s`), so that they are continued rather
    /// than replaced.
    pub rows: Vec<(LedgerKey, LedgerUsage)>,
    /// Up to when (ms) the ledger had looked at this boot's VMs: a VM that
    /// started after it started while the agent was away.
    pub horizon_ms: Option<i64>,
}

/// One flush: written in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerBatch {
    pub rows: Vec<(LedgerKey, LedgerUsage)>,
    /// Cursors to insert or replace.
    pub cursors: Vec<LedgerCursor>,
    /// Incarnations whose cursors are no longer needed.
    pub forget: Vec<String>,
    /// (boot id, horizon ms).
    pub horizon: Option<(String, i64)>,
}

/// What usage totals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    User,
    Project,
    Vm,
}

impl UsageBy {
    pub const ALL: [UsageBy; 3] = [UsageBy::User, UsageBy::Project, UsageBy::Vm];
    pub const fn as_str(self) -> &'static str {
        match self {
            UsageBy::User => "user",
            UsageBy::Project => "project",
            UsageBy::Vm => "vm",
        }
    }
    /// (key column, label column) of `ledger_rows`.
    pub(super) const fn columns(self) -> (&'static str, &'static str) {
        match self {
            UsageBy::User => ("user_key", "user_label"),
            UsageBy::Project => ("project_key", "project_label"),
            UsageBy::Vm => ("vm_id", "vm_name"),
        }
    }
}

/// Usage totals over rows whose interval starts in `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Bucket length, ms, from `from_ms`; 0: one bucket for the window.
    pub step_ms: i64,
    pub by: UsageBy,
    /// Which rows are summed: those of this resolution (seconds: 60 for the
    /// raw rows, 3600 and 86400 for the hourly and daily rollups). 0: the
    /// finest resolution the ledger holds.
    pub resolution_s: i64,
    /// Only this host's rows (a fleet ledger holds many hosts); `None`: all.
    pub host: Option<String>,
    /// Most totals answered; one more is asked for to tell "too many".
    pub limit: usize,
}

/// One group's usage in one bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotal {
    /// Bucket start, ms.
    pub start_ms: i64,
    /// The group key (`None`: VMs without an owner of that kind).
    pub key: Option<String>,
    /// A label of the group (the latest row's, when it changed).
    pub label: Option<String>,
    pub cpu_seconds: f64,
    pub guest_seconds: Option<f64>,
    pub vcpu_allocated_seconds: f64,
    pub memory_allocated_byte_seconds: f64,
    pub rss_byte_seconds: f64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub observed_seconds: f64,
    pub gap_seconds: f64,
    /// Ledger rows summed.
    pub rows: u64,
}

impl UsageQuery {
    /// The SQL, fixed text but for the two column names chosen by `by`
    /// (never user input); values travel bound: ?1 from, ?2 to, ?3 step,
    /// ?4 limit, ?5 resolution (resolved, never 0), ?6 host or NULL. The label is a bare column
    /// next to the one `MAX()`: SQLite takes it from the row with the
    /// latest interval, so a renamed owner shows under its newest label.
    pub fn sql(&self) -> String {
        let (key, label) = self.by.columns();
        format!(
            "SELECT CASE WHEN ?3 > 0 THEN ?1 + ((interval_start_ms - ?1) / ?3) * ?3 ELSE ?1 END \
             AS bucket, {key}, {label}, MAX(interval_start_ms), SUM(cpu_seconds), SUM(guest_seconds), SUM(vcpu_allocated_seconds), \
             SUM(memory_allocated_byte_seconds), SUM(rss_byte_seconds), SUM(net_rx_bytes), \
             SUM(net_tx_bytes), SUM(observed_seconds), SUM(gap_seconds), COUNT(*) \
             FROM ledger_rows WHERE resolution_s = ?5 AND interval_start_ms >= ?1 \
             AND interval_start_ms < ?2 AND (?6 IS NULL OR host = ?6) GROUP BY bucket, {key} ORDER BY bucket, {key} LIMIT ?4"
        )
    }
}

/// Ledger state, whatever the backend.
pub trait LedgerStore {
    /// Cursors and open rows of boot `boot_id`; cursors of other boots are
    /// deleted (their incarnations cannot be running).
    fn load_ledger(
        &mut self,
        boot_id: &str,
        resolution_s: i64,
    ) -> Result<LedgerRestore, StoreError>;
    /// Upsert the rows and cursors, delete forgotten cursors, in one
    /// transaction.
    fn flush_ledger(&mut self, batch: &LedgerBatch) -> Result<(), StoreError>;
    /// Totals per group and bucket, at most `q.limit + 1` of them.
    fn usage(&mut self, q: &UsageQuery) -> Result<Vec<UsageTotal>, StoreError>;
}

impl Backend {
    pub fn ledger(&mut self) -> &mut dyn LedgerStore {
        match self {
            Backend::Sqlite(s) => s,
        }
    }
}

impl Store {
    /// Run `f` on the store thread against the ledger tables, timed as `op`.
    /// Returns a receiver rather than awaiting, so that a caller on a plain
    /// thread can go on working while the store is busy.
    pub fn ledger_job<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn LedgerStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let metrics = self.metrics.clone();
        let job: Job = Box::new(move |backend: &mut Backend| {
            let start = Instant::now();
            let res = f(backend.ledger());
            metrics.observe(op, start.elapsed(), res.is_ok());
            let _ = tx.send(res);
        });
        // Never waits: a full queue is an error the ledger retries later.
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        Ok(rx)
    }

    pub async fn usage(&self, q: UsageQuery) -> Result<Vec<UsageTotal>, StoreError> {
        let rx = self.ledger_job("query", move |s| s.usage(&q))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn load_ledger(
        &self,
        boot_id: String,
        resolution_s: i64,
    ) -> Result<LedgerRestore, StoreError> {
        let rx = self.ledger_job("ledger_load", move |s| {
            s.load_ledger(&boot_id, resolution_s)
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
