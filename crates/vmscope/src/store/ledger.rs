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

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Backend, Job, Store, StoreError};
pub use crate::model::counters::Quantities;

/// The rollup resolutions (seconds): hourly and daily rows, each the sum
/// of the finer rows in it, written by the same flush (see
/// `store/sqlite/ledger.rs`). A resolution coarser than the raw rows only.
pub const ROLLUPS: [i64; 2] = [3600, 86_400];

/// The resolutions a ledger with raw rows of `raw_s` holds, finest first.
pub fn resolutions(raw_s: i64) -> Vec<i64> {
    std::iter::once(raw_s)
        .chain(ROLLUPS.into_iter().filter(|r| *r > raw_s))
        .collect()
}

/// The coarsest resolution that answers `q` exactly, of those the ledger
/// holds (`held`, any order; the finest is the raw rows): rows of
/// resolution R give the same totals as the raw rows when `from` and the
/// step are multiples of R and `to` is too (or is now: nothing after now
/// has been used, and raw and rollup rows are written by the same
/// flushes), and R's rows are still kept at `from` (`keep_ms(R)`: how long
/// rows of R are kept, `None` = forever). The raw rows otherwise (they
/// answer every window: rows that *start* in it). 0 when nothing is held.
pub fn pick_resolution(
    q: &UsageQuery,
    held: &[i64],
    keep_ms: impl Fn(i64) -> Option<i64>,
    now_ms: i64,
) -> i64 {
    let Some(raw) = held.iter().copied().filter(|r| *r > 0).min() else {
        return 0;
    };
    let fits = |r: i64| {
        let len = r * 1000;
        q.from_ms.rem_euclid(len) == 0
            && q.step_ms.rem_euclid(len) == 0
            // A second of slack: `to` defaulted to "now" a moment ago.
            && (q.to_ms.rem_euclid(len) == 0 || q.to_ms >= now_ms - 1000)
            && keep_ms(r).is_none_or(|k| q.from_ms >= now_ms.saturating_sub(k))
    };
    held.iter()
        .copied()
        .filter(|r| *r > raw && fits(*r))
        .max()
        .unwrap_or(raw)
}

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
    /// Counter totals (`ledger_totals`) to continue from: every overflow
    /// row, and the owners most recently active (at most
    /// [`TOTALS_RESTORE_OWNERS`] per kind), so that an owner with no VM
    /// left keeps its series across an agent restart. VMs' totals are read
    /// when they appear ([`LedgerStore::ledger_totals`]).
    pub totals: Vec<LedgerTotal>,
}

/// At most this many owners of one kind are restored at start (the most
/// recently active; `[owners] max_owners` of them keep series).
pub const TOTALS_RESTORE_OWNERS: usize = 10_000;

/// What a counter family of `ledger_totals` is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TotalsKind {
    /// An owner's own series (`vmscope_user_*_total{user}`).
    User,
    Project,
    /// The usage of owners that had no series of their own when it was
    /// accounted (the `__other__` series); key `""`.
    UserOverflow,
    ProjectOverflow,
    /// A VM id, across its incarnations (`vmscope_vm_ledger_*_total`).
    Vm,
}

impl TotalsKind {
    pub const ALL: [TotalsKind; 5] = [
        TotalsKind::User,
        TotalsKind::Project,
        TotalsKind::UserOverflow,
        TotalsKind::ProjectOverflow,
        TotalsKind::Vm,
    ];

    /// The `kind` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            TotalsKind::User => "user",
            TotalsKind::Project => "project",
            TotalsKind::UserOverflow => "user_overflow",
            TotalsKind::ProjectOverflow => "project_overflow",
            TotalsKind::Vm => "vm",
        }
    }

    pub fn from_name(s: &str) -> Option<TotalsKind> {
        TotalsKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One row of `ledger_totals`: everything the ledger accounted for one
/// key, on this host, ever.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerTotal {
    pub kind: TotalsKind,
    pub key: String,
    pub q: Quantities,
    /// When usage was last added, ms since the Unix epoch.
    pub last_ms: i64,
}

/// Usage to add to one `ledger_totals` row in a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct TotalsDelta {
    pub kind: TotalsKind,
    pub key: String,
    /// The owner's label or the VM's name, for people reading the table.
    pub label: Option<String>,
    pub add: Quantities,
    pub at_ms: i64,
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
    /// Usage added to the counter totals since the last flush; added to
    /// `ledger_totals` in the same transaction as the cursors it goes with.
    pub totals: Vec<TotalsDelta>,
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
    /// Only the rows of these owners (a tenant's: rows whose user key is
    /// one of `users` or whose project key is one of `projects`, as the
    /// row measured them); `None`: every row.
    pub owners: Option<OwnerKeys>,
}

/// Owner keys a usage query is restricted to (see [`UsageQuery::owners`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerKeys {
    pub users: Vec<String>,
    pub projects: Vec<String>,
}

impl OwnerKeys {
    /// The two key lists as JSON arrays, for SQLite's `json_each` (one
    /// bound value per list, whatever its length: the SQL text is fixed).
    pub fn json(&self) -> (String, String) {
        let j = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned());
        (j(&self.users), j(&self.projects))
    }
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
    /// ?4 limit, ?5 resolution (resolved, never 0), ?6 host or NULL, ?7 and
    /// ?8 the owner keys' JSON arrays or NULL. The label is a bare column
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
             AND interval_start_ms < ?2 AND (?6 IS NULL OR host = ?6) \
             AND (?7 IS NULL OR user_key IN (SELECT value FROM json_each(?7)) \
             OR project_key IN (SELECT value FROM json_each(?8))) GROUP BY bucket, {key} ORDER BY bucket, {key} LIMIT ?4"
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
    /// The resolutions rows exist for (seconds, ascending).
    fn resolutions(&mut self) -> Result<Vec<i64>, StoreError>;
    /// Totals per group and bucket, at most `q.limit + 1` of them.
    fn usage(&mut self, q: &UsageQuery) -> Result<Vec<UsageTotal>, StoreError>;
    /// Retention: delete rows whose resolution is in `resolutions` (a
    /// class: raw rows of any length below an hour, hourly, daily) and
    /// whose interval starts before `before_ms`, walking up from `from_ms`
    /// (`None`: the oldest row) for about `budget`, so that the store
    /// thread is never held long. Returns (rows deleted, where to go on
    /// from): done once that reaches `before_ms`.
    fn prune_ledger(
        &mut self,
        resolutions: std::ops::RangeInclusive<i64>,
        from_ms: Option<i64>,
        before_ms: i64,
        budget: Duration,
    ) -> Result<(u64, i64), StoreError>;
    /// The `ledger_totals` rows of these keys (absent: never counted).
    fn ledger_totals(
        &mut self,
        keys: &[(TotalsKind, String)],
    ) -> Result<Vec<LedgerTotal>, StoreError>;
}

impl Backend {
    /// The ledger's tables: only in SQLite (the fleet's PostgreSQL copy is
    /// written by the shipper, not through the store thread).
    pub fn ledger(&mut self) -> Result<&mut dyn LedgerStore, StoreError> {
        match self {
            Backend::Sqlite(s) => Ok(s),
            Backend::Postgres(_) => Err(StoreError::NoLedger),
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
            let res = backend.ledger().and_then(f);
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

    /// Totals for `q`, its resolution chosen by `pick` from those held
    /// when it is 0; returns the query as answered.
    pub async fn usage(
        &self,
        q: UsageQuery,
        pick: impl FnOnce(UsageQuery, &[i64]) -> UsageQuery + Send + 'static,
    ) -> Result<(UsageQuery, Vec<UsageTotal>), StoreError> {
        let rx = self.ledger_job("query", move |s| {
            let q = if q.resolution_s == 0 {
                let held = s.resolutions()?;
                pick(q, &held)
            } else {
                q
            };
            let totals = s.usage(&q)?;
            Ok((q, totals))
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const D: i64 = 86_400_000;

    fn q(from_ms: i64, to_ms: i64, step_ms: i64) -> UsageQuery {
        UsageQuery {
            from_ms,
            to_ms,
            step_ms,
            by: UsageBy::Vm,
            resolution_s: 0,
            host: None,
            limit: 10,
            owners: None,
        }
    }

    #[test]
    fn the_coarsest_rows_that_answer_exactly_are_picked() {
        let now = 400 * D + 5 * H + 1234;
        let forever = |_| None;
        let held = [60, 3600, 86_400];
        // A month of days up to now: daily rows.
        assert_eq!(
            pick_resolution(&q(370 * D, now, D), &held, forever, now),
            86_400
        );
        // Days, but `to` in the past in mid-day: hourly rows still fit.
        assert_eq!(
            pick_resolution(&q(370 * D, 399 * D + 3 * H, 0), &held, forever, now),
            3600
        );
        // An unaligned start: only the raw rows.
        assert_eq!(
            pick_resolution(&q(370 * D + 60_000, now, 0), &held, forever, now),
            60
        );
        // An hourly step over an aligned window: hourly, not daily.
        assert_eq!(
            pick_resolution(&q(399 * D, 400 * D, H), &held, forever, now),
            3600
        );
        // Hourly rows kept 30 days: a window starting 31 days ago takes
        // the daily rows; one unaligned to days falls back to the raw rows.
        let keep = |r: i64| (r == 3600).then_some(30 * D);
        assert_eq!(
            pick_resolution(&q(369 * D, now, 0), &held, keep, now),
            86_400
        );
        assert_eq!(
            pick_resolution(&q(369 * D + H, now, 0), &held, keep, now),
            60
        );
        // Raw rows of an hour: only the daily rollup is coarser.
        assert_eq!(resolutions(3600), vec![3600, 86_400]);
        assert_eq!(
            pick_resolution(&q(399 * D, now, 0), &[3600, 86_400], forever, now),
            86_400
        );
        assert_eq!(
            pick_resolution(&q(399 * D + H, now, 0), &[3600, 86_400], forever, now),
            3600
        );
        // Raw rows of 5 s and of 60 s (the interval was changed): the
        // finest are the raw rows; nothing held, nothing to pick.
        assert_eq!(
            pick_resolution(&q(D + 5000, now, 0), &[60, 5, 3600], forever, now),
            5
        );
        assert_eq!(pick_resolution(&q(D, now, 0), &[], forever, now), 0);
    }
}
