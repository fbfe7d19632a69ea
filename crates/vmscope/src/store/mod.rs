//! Persistent state: alert episodes, the notification log and outbox, and
//! the usage ledger, in an embedded SQLite database; the alert state may
//! instead live in PostgreSQL ([`pg_alerts`], `[store] database_url`).
//!
//! Reads/writes: the database file named by `store.path` (see [`config`]:
//! opened once by the serve command and handed to its users; default
//! `/var/lib/vmscope/state.db` for root, the user's state directory
//! otherwise; WAL mode, parent directory created) and `<db>.lock` beside it
//! ([`lock`]: one agent per database).
//! Every query runs on one dedicated thread (`vmscope-store`) that owns the
//! connection; async callers send it a job and await the answer, so no
//! SQLite call ever blocks a tokio worker. Emits:
//! `vmscope_db_query_duration_seconds{op}` and `vmscope_db_errors_total{op}`
//! through [`DbMetrics`] (`op` is one of [`OPS`]).
//! Fails: [`StoreError`], naming the database path or the operation, with
//! SQLite's own message as its source (print it with
//! [`crate::error::ErrorChain`]: "database or disk is full"). A database
//! another agent holds is [`StoreError::Locked`]; one that cannot be used
//! (unwritable, not ours, newer schema) is the caller's to degrade around; a
//! failed write is logged and counted by the caller, never fatal to the
//! watchdog loop.
//!
//! Extending: a new backend is a [`Backend`] variant implementing
//! [`AlertStore`]; the ledger will be a second trait next to it, reached the
//! same way (`Backend::ledger()`), sharing the thread and the migrations.

pub mod config;
pub mod ledger;
pub mod lock;
pub mod metrics;
pub mod pg_alerts;
pub mod postgres;
pub mod spool;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

pub use config::{Opened, StoreConfig, open};
pub use ledger::{
    LedgerBatch, LedgerCursor, LedgerKey, LedgerRestore, LedgerStore, LedgerTotal, LedgerUsage,
    NetCounter, OwnerKeys, Quantities, ROLLUPS, TOTALS_RESTORE_OWNERS, TotalsDelta, TotalsKind,
    UsageBy, UsageQuery, UsageTotal, pick_resolution, resolutions,
};
pub use metrics::{DbMetrics, OPS};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("state database {} has schema version {found}; this vmscope knows up to {known}", path.display())]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database operation {op} failed")]
    Query {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state database {} is in use by another vmscope ({}); \
         give each instance its own store.path (VMSCOPE_STORE__PATH; \
         formerly watchdog.state_db_path, VMSCOPE_WATCHDOG__STATE_DB_PATH)",
        path.display(),
        pid.map_or_else(|| "PID unknown".to_owned(), |p| format!("pid {p}"))
    )]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error(
        "{} is an SQLite database that vmscope did not create ({detail}); refusing to write into it",
        path.display()
    )]
    Foreign { path: PathBuf, detail: String },
    #[error("stored {what} is not valid: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("PostgreSQL operation {op} failed")]
    Postgres {
        op: &'static str,
        #[source]
        source: ::postgres::Error,
    },
    #[error(
        "the alert store {at} already has a vmscope for host {host:?} (it holds the host's \
         advisory lock); give each host its own name, or stop the other agent"
    )]
    HostTaken { host: String, at: String },
    #[error("the usage ledger lives in the SQLite state database, not in this store")]
    NoLedger,
    #[error("the state database thread has stopped")]
    Closed,
    #[error("the state database thread is busy (its queue of {QUEUE} jobs is full)")]
    Busy,
}

/// Where state lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// An SQLite file (created with its parent directory if missing).
    Sqlite(PathBuf),
    /// The alert state of host `host` in PostgreSQL (`[store]
    /// database_url`); the ledger stays in SQLite.
    Postgres {
        target: Box<postgres::PgTarget>,
        host: String,
    },
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Location::Sqlite(a), Location::Sqlite(b)) => a == b,
            (
                Location::Postgres { target: a, host: h },
                Location::Postgres { target: b, host: g },
            ) => h == g && a.describe() == b.describe(),
            _ => false,
        }
    }
}

impl Eq for Location {}

/// One alert episode: a (rule, scope) firing from `started_at` until
/// `resolved_at` (open while `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeRow {
    pub id: i64,
    pub rule: String,
    pub scope_key: String,
    pub severity: String,
    pub started_at: SystemTime,
    pub resolved_at: Option<SystemTime>,
    pub last_notified_at: SystemTime,
    /// The alert as it fired (JSON, `alert::Alert`'s schema).
    pub payload: String,
    /// The resolution alert (JSON), once resolved.
    pub resolved_payload: Option<String>,
}

/// A change to the episode table, applied in one transaction per batch.
#[derive(Debug, Clone, PartialEq)]
pub enum EpisodeWrite {
    Open {
        rule: String,
        scope_key: String,
        severity: String,
        started_at: SystemTime,
        payload: String,
    },
    Notified {
        rule: String,
        scope_key: String,
        at: SystemTime,
    },
    Resolve {
        rule: String,
        scope_key: String,
        at: SystemTime,
        payload: Option<String>,
    },
}

/// One delivery outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationLogEntry {
    pub at: SystemTime,
    pub sink: String,
    pub rule: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// `success`, `rejected`, `dropped_queue_full`, ...
    pub result: String,
    pub alerts: u32,
    /// Already free of secrets (sinks strip URLs and tokens).
    pub error: Option<String>,
}

/// A notification queued for one sink, persisted until the sink confirms
/// or gives up (the outbox).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxWrite {
    pub sink: String,
    pub created_at: SystemTime,
    /// The notification (JSON, `alert::Notification`'s stored form).
    pub payload: String,
}

/// An outbox row still undelivered, as loaded at start.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Increasing: the order notifications were queued in.
    pub id: i64,
    pub sink: String,
    pub created_at: SystemTime,
    pub payload: String,
}

/// Filters for listing episodes. Time filters select episodes that overlap
/// `[since, until]`: started at or before `until`, and not resolved before
/// `since`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodeQuery {
    pub rule: Option<String>,
    /// A scope key (`vm:<id>`) or a scope kind (`vm`, `host`, `filesystem`).
    pub scope: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// History page size.
    pub limit: u32,
    pub position: Position,
    /// Only episodes whose scope key is one of these (a tenant's VMs and
    /// owners, `crate::api::alerts`); `Some` of an empty list matches
    /// nothing. `None`: no such restriction.
    pub only_scopes: Option<Vec<String>>,
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Position {
    #[default]
    First,
    /// After this (started_at ms, id): keyset pagination, stable under inserts.
    After { started_ms: i64, id: i64 },
    /// 1-based page number (offset pagination).
    Page(u32),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodePage {
    /// Open episodes matching the filters, newest first (not paginated:
    /// bounded by the number of rules x scopes).
    pub active: Vec<EpisodeRow>,
    /// Resolved episodes, newest first, one page.
    pub history: Vec<EpisodeRow>,
    /// Where the next history page starts, if there is one.
    pub next: Option<Position>,
}

impl EpisodePage {
    /// The page from a history query that asked for `limit + 1` rows at
    /// `position` (the extra row only says there is a next page), with
    /// where that next page starts. Every backend pages alike.
    pub fn new(
        active: Vec<EpisodeRow>,
        mut history: Vec<EpisodeRow>,
        limit: u32,
        position: Position,
    ) -> EpisodePage {
        let more = history.len() > limit as usize;
        history.truncate(limit as usize);
        let next = match (more, position, history.last()) {
            (false, _, _) | (_, _, None) => None,
            (true, Position::Page(p), _) => Some(Position::Page(p.saturating_add(1))),
            (true, _, Some(last)) => Some(Position::After {
                started_ms: to_ms(last.started_at),
                id: last.id,
            }),
        };
        EpisodePage {
            active,
            history,
            next,
        }
    }
}

/// Alert state, whatever the backend.
pub trait AlertStore {
    fn open_episodes(&mut self) -> Result<Vec<EpisodeRow>, StoreError>;
    fn apply(&mut self, writes: &[EpisodeWrite]) -> Result<(), StoreError> {
        self.record(writes, &[]).map(|_| ())
    }
    /// Episode changes and the notifications they cause, in one
    /// transaction: either both are kept or neither. Returns the outbox
    /// ids, in the order of `outbox`.
    fn record(
        &mut self,
        writes: &[EpisodeWrite],
        outbox: &[OutboxWrite],
    ) -> Result<Vec<i64>, StoreError>;
    fn log_notification(&mut self, entry: &NotificationLogEntry) -> Result<(), StoreError> {
        self.finish_delivery(None, entry)
    }
    /// A final outcome: its log row, and the outbox row (if any) removed,
    /// in one transaction.
    fn finish_delivery(
        &mut self,
        outbox_id: Option<i64>,
        entry: &NotificationLogEntry,
    ) -> Result<(), StoreError>;
    /// Undelivered notifications, oldest first.
    fn outbox(&mut self) -> Result<Vec<OutboxRow>, StoreError>;
    fn query(&mut self, q: &EpisodeQuery) -> Result<EpisodePage, StoreError>;
    fn notification_log(&mut self, limit: u32) -> Result<Vec<NotificationLogEntry>, StoreError>;
    /// Delete resolved episodes and log rows older than `before`.
    fn prune(&mut self, before: SystemTime) -> Result<u64, StoreError>;
}

/// The backends. Adding PostgreSQL = one variant + its `AlertStore` impl.
// One value per store thread, so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Sqlite(sqlite::SqliteStore),
    /// Alert state only (the ledger keeps its own SQLite store).
    Postgres(Box<pg_alerts::PgAlertStore>),
}

impl Backend {
    pub fn open(location: &Location) -> Result<Backend, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Backend::Sqlite(sqlite::SqliteStore::open(path)?)),
            Location::Postgres { target, host } => Ok(Backend::Postgres(Box::new(
                pg_alerts::PgAlertStore::open(target, host)?,
            ))),
        }
    }
    pub fn alerts(&mut self) -> &mut dyn AlertStore {
        match self {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => p.as_mut(),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Backend) + Send>;

/// Handle to the store thread. Cheap to clone; the thread (and the
/// connection) ends when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    metrics: Arc<DbMetrics>,
    /// Becomes true (or loses its sender) once the thread has closed the
    /// database and released its lock.
    closed: watch::Receiver<bool>,
}

/// Jobs waiting for the store thread before senders wait.
const QUEUE: usize = 256;

impl Store {
    /// Open (creating and migrating) the database on a new thread.
    pub async fn open(location: Location, metrics: Arc<DbMetrics>) -> Result<Store, StoreError> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (closed_tx, closed) = watch::channel(false);
        let m = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("vmscope-store".to_owned())
            .spawn(move || {
                let start = Instant::now();
                let opened = Backend::open(&location);
                m.observe("migrate", start.elapsed(), opened.is_ok());
                let mut backend = match opened {
                    Ok(b) => {
                        let _ = ready_tx.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    job(&mut backend);
                }
                // Closes the connection and releases the lock file.
                drop(backend);
                let _ = closed_tx.send(true);
            });
        if let Err(e) = spawned {
            return Err(StoreError::Open {
                path: PathBuf::from("<thread>"),
                source: Box::new(e),
            });
        }
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Store {
            jobs: tx,
            metrics,
            closed,
        })
    }

    /// Drop this handle and wait, at most `timeout`, until the database is
    /// closed and its lock released: that happens once every handle is
    /// gone, so a store can be opened again at once (a restart in the same
    /// process). False if other handles kept it open past `timeout`.
    pub async fn close(self, timeout: Duration) -> bool {
        let mut closed = self.closed.clone();
        drop(self);
        // An error means the thread is gone, which is closed too.
        tokio::time::timeout(timeout, async move {
            let _ = closed.wait_for(|c| *c).await;
        })
        .await
        .is_ok()
    }

    pub fn metrics(&self) -> &Arc<DbMetrics> {
        &self.metrics
    }

    /// Run `f` on the store thread, timing it as `op`.
    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn AlertStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let metrics = self.metrics.clone();
        let job: Job = Box::new(move |backend: &mut Backend| {
            let start = Instant::now();
            let res = f(backend.alerts());
            metrics.observe(op, start.elapsed(), res.is_ok());
            let _ = tx.send(res);
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn open_episodes(&self) -> Result<Vec<EpisodeRow>, StoreError> {
        self.call("load_open", |s| s.open_episodes()).await
    }

    pub async fn apply(&self, writes: Vec<EpisodeWrite>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.call("apply", move |s| s.apply(&writes)).await
    }

    /// See [`AlertStore::record`].
    pub async fn record(
        &self,
        writes: Vec<EpisodeWrite>,
        outbox: Vec<OutboxWrite>,
    ) -> Result<Vec<i64>, StoreError> {
        if writes.is_empty() && outbox.is_empty() {
            return Ok(Vec::new());
        }
        self.call("apply", move |s| s.record(&writes, &outbox))
            .await
    }

    pub async fn log_notification(&self, entry: NotificationLogEntry) -> Result<(), StoreError> {
        self.call("log_notification", move |s| s.log_notification(&entry))
            .await
    }

    /// See [`AlertStore::finish_delivery`].
    pub async fn finish_delivery(
        &self,
        outbox_id: Option<i64>,
        entry: NotificationLogEntry,
    ) -> Result<(), StoreError> {
        self.call("log_notification", move |s| {
            s.finish_delivery(outbox_id, &entry)
        })
        .await
    }

    pub async fn outbox(&self) -> Result<Vec<OutboxRow>, StoreError> {
        self.call("load_open", |s| s.outbox()).await
    }

    pub async fn query(&self, q: EpisodeQuery) -> Result<EpisodePage, StoreError> {
        self.call("query", move |s| s.query(&q)).await
    }

    pub async fn notification_log(
        &self,
        limit: u32,
    ) -> Result<Vec<NotificationLogEntry>, StoreError> {
        self.call("query", move |s| s.notification_log(limit)).await
    }

    pub async fn prune(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.call("prune", move |s| s.prune(before)).await
    }
}

/// Database integers are i64 (SQLite and PostgreSQL alike); byte counters
/// beyond that (never in practice) saturate rather than wrap.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored count back: a negative one (never written) reads as 0.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Milliseconds since the Unix epoch (negative before it, saturating).
pub fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}
