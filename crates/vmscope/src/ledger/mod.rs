//! The usage ledger: per VM incarnation and interval, what it used (CPU,
//! guest CPU, allocated vCPU- and memory-seconds, RSS byte-seconds, network
//! bytes) and how much of the interval was observed, kept in the state
//! database so that it survives agent restarts (docs/ledger.md).
//!
//! ```text
//! watch<Arc<Snapshot>> --> vmscope-ledger thread: account::Accountant (pure)
//!                            '--> every flush_interval: one transaction of
//!                                 rows + cursors + counter totals on the
//!                                 vmscope-store thread, totals read back
//!                            '--> CounterSlot (committed totals) --> the
//!                                 collector's next snapshot --> /metrics
//! ```
//!
//! Reads: the snapshots the collector publishes (the newest one whenever
//! the ledger thread looks: never blocks the tick, and nothing is lost when
//! it falls behind, steps only get coarser), `/proc/sys/kernel/random/boot_id`
//! and `btime` from `/proc/stat` under the configured proc root once at
//! start, and at start the cursors and open rows the previous run flushed.
//! Emits: `ledger_rows` / `ledger_cursors` / `ledger_state` /
//! `ledger_totals` through [`crate::store::LedgerStore`]; the committed
//! counter totals in a [`CounterSlot`] ([`totals`]; exposed as
//! `vmscope_{user,project}_*_total` and `vmscope_vm_ledger_*_total`);
//! `vmscope_ledger_*` ([`metrics`]) and the `/healthz` component `ledger`.
//! With `database_url` (the fleet ledger), flushes also spool their rows'
//! keys and [`ship`] sends the rows to PostgreSQL on its own thread; usage
//! is then read from there.
//! Fails: only [`LedgerConfig::validate`] (a key named, a database URL's
//! password never repeated). Without a state
//! database (none configured, unusable, or the boot id unreadable) the
//! ledger records nothing and says so (log, `/healthz`,
//! `vmscope_ledger_persistence_enabled 0`); a failing flush keeps its rows in
//! memory (bounded by `max_pending_rows`), is counted and retried at the
//! next flush; nothing in here panics or stops the agent.

pub mod account;
pub mod metrics;
pub mod ship;
pub mod totals;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::sync::{oneshot, watch};

pub use account::{AccountConfig, Accountant, BatchMarks};
pub use metrics::LedgerMetrics;

use crate::error::ErrorChain;
use crate::host::Roots;
use crate::model::Snapshot;
use crate::model::counters::CounterSlot;
use crate::outbound::redact::Secret;
use crate::store::postgres::{PgError, PgLedger, PgTarget};
use crate::store::{LedgerTotal, Store, StoreError, UsageQuery, UsageTotal};

/// `[ledger]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Record usage (default on: with the default SQLite state database a
    /// single host needs no setup).
    pub enabled: bool,
    /// Row length; rows are aligned to multiples of it since the Unix epoch
    /// (60 s: wall-clock minutes). Whole seconds dividing an hour.
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub interval: Duration,
    /// How often rows and cursors are written (one transaction). A crash
    /// loses at most this much of *observed time* (it shows as
    /// `gap_seconds`); the counters themselves continue from the last
    /// flushed cursor.
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub flush_interval: Duration,
    /// Most unwritten rows kept in memory while the database fails; past
    /// it the oldest are dropped and counted.
    pub max_pending_rows: usize,
    /// The fleet ledger: `postgres://user:password@host:port/db` (a
    /// secret, never logged). Rows are then also spooled in the state
    /// database and shipped there (docs/ledger.md, "PostgreSQL"); usage is
    /// read from there.
    pub database_url: Option<Secret>,
    /// The environment variable holding `database_url` instead.
    pub database_url_env: Option<String>,
    /// Most spooled rows waiting for PostgreSQL; past it the oldest are
    /// dropped from the spool (not from the local ledger) and counted.
    pub max_spool_rows: usize,
    /// Connect, statement and pool-wait timeout for PostgreSQL.
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub database_timeout: Duration,
    /// Most connections to PostgreSQL (the shipper's and the readers').
    pub database_pool_size: usize,
    /// The host name this host's rows carry (default: the kernel's host
    /// name, as `vmscope_vm_info`'s `host`). Set it when host names are
    /// not unique across the fleet.
    pub host: Option<String>,
    /// How long rows of each resolution are kept (`[ledger.retention]`).
    pub retention: Retention,
}

/// How long to keep rows: a duration, or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Forever,
    For(Duration),
}

impl Keep {
    /// Milliseconds, `None` for forever.
    pub fn ms(self) -> Option<i64> {
        match self {
            Keep::Forever => None,
            Keep::For(d) => Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    fn show(self) -> String {
        match self {
            Keep::Forever => "forever".to_owned(),
            // As configured ("35d"), not as humantime spells days
            // ("1month 4days 4h 30m 36s").
            Keep::For(d) if d.as_secs() % 86_400 == 0 && d.subsec_nanos() == 0 => {
                format!("{}d", d.as_secs() / 86_400)
            }
            Keep::For(d) => humantime::format_duration(d).to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        humantime::parse_duration(s.trim())
            .map(Keep::For)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is neither a duration (\"35d\", \"400d\") nor \"forever\": {e}"
                ))
            })
    }
}

/// `[ledger.retention]`: rows older than this (by interval start) are
/// deleted in the background, per resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// The raw rows (`interval`).
    pub raw: Keep,
    /// Hourly rollups.
    pub hourly: Keep,
    /// Daily rollups.
    pub daily: Keep,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Retention {
            raw: Keep::For(Duration::from_secs(35 * DAY)),
            hourly: Keep::For(Duration::from_secs(400 * DAY)),
            daily: Keep::Forever,
        }
    }
}

impl Retention {
    /// How long rows of `resolution_s` are kept (a resolution finer than an
    /// hour is raw).
    pub fn keep(&self, resolution_s: i64) -> Keep {
        match resolution_s {
            r if r >= 86_400 => self.daily,
            r if r >= 3600 => self.hourly,
            _ => self.raw,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let order = |k: Keep| k.ms().unwrap_or(i64::MAX);
        for (name, k, min) in [
            ("raw", self.raw, Duration::from_secs(3600)),
            ("hourly", self.hourly, Duration::from_secs(86_400)),
            ("daily", self.daily, Duration::from_secs(86_400)),
        ] {
            if let Keep::For(d) = k
                && d < min
            {
                return Err(format!(
                    "ledger.retention.{name}: {} is too short (at least {})",
                    k.show(),
                    humantime::format_duration(min)
                ));
            }
        }
        if order(self.raw) > order(self.hourly) || order(self.hourly) > order(self.daily) {
            return Err(format!(
                "ledger.retention: raw ({}) <= hourly ({}) <= daily ({}) is required, so that \
                 a window too old for finer rows is still answered by coarser ones",
                self.raw.show(),
                self.hourly.show(),
                self.daily.show()
            ));
        }
        Ok(())
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            flush_interval: Duration::from_secs(60),
            max_pending_rows: 500_000,
            retention: Retention::default(),
            database_url: None,
            database_url_env: None,
            max_spool_rows: 2_000_000,
            database_timeout: Duration::from_secs(5),
            database_pool_size: 4,
            host: None,
        }
    }
}

/// Bounds of `max_spool_rows` (at 60 s rows, 2 000 000 is a day and a
/// half of 1000 VMs; the spool holds keys only, ~80 bytes each).
const SPOOL_ROWS: std::ops::RangeInclusive<usize> = 1000..=100_000_000;

impl LedgerConfig {
    /// Checks serde cannot express; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let i = self.interval;
        if i.subsec_nanos() != 0 || i.as_secs() == 0 || 3600 % i.as_secs() != 0 {
            return Err(format!(
                "ledger.interval: {} must be a whole number of seconds that divides an hour \
                 (e.g. \"60s\", \"5m\", \"1h\"), so that rows align to hours",
                show(i)
            ));
        }
        let f = self.flush_interval;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&f) {
            return Err(format!(
                "ledger.flush_interval: {} is out of range (1s to 1h)",
                show(f)
            ));
        }
        if self.max_pending_rows < 1000 {
            return Err(format!(
                "ledger.max_pending_rows: {} is too small (at least 1000)",
                self.max_pending_rows
            ));
        }
        if !SPOOL_ROWS.contains(&self.max_spool_rows) {
            return Err(format!(
                "ledger.max_spool_rows: {} is out of range ({} to {})",
                self.max_spool_rows,
                SPOOL_ROWS.start(),
                SPOOL_ROWS.end()
            ));
        }
        let t = self.database_timeout;
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&t) {
            return Err(format!(
                "ledger.database_timeout: {} is out of range (100ms to 5m)",
                show(t)
            ));
        }
        if !(1..=64).contains(&self.database_pool_size) {
            return Err(format!(
                "ledger.database_pool_size: {} is out of range (1 to 64)",
                self.database_pool_size
            ));
        }
        if let Some(h) = &self.host
            && (h.trim().is_empty() || h.len() > 253 || h.chars().any(char::is_control))
        {
            return Err(format!(
                "ledger.host: {h:?} is not a host name (1 to 253 characters, no control characters)"
            ));
        }
        self.fleet_with(crate::outbound::redact::env_string)?;
        self.retention.validate()
    }

    /// The fleet ledger's database, if one is configured (`database_url`
    /// or the variable `database_url_env` names); errors name the key.
    pub fn fleet(&self) -> Result<Option<PgTarget>, String> {
        self.fleet_with(crate::outbound::redact::env_string)
    }

    fn fleet_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<PgTarget>, String> {
        let (key, url) = match (&self.database_url, &self.database_url_env) {
            (Some(_), Some(_)) => {
                return Err(
                    "ledger.database_url_env: set database_url or database_url_env, not both"
                        .to_owned(),
                );
            }
            (Some(u), None) => ("ledger.database_url", u.clone()),
            (None, Some(var)) => match env(var).filter(|v| !v.trim().is_empty()) {
                Some(v) => ("ledger.database_url_env", Secret::new(v.trim())),
                None => {
                    return Err(format!(
                        "ledger.database_url_env: the environment variable {var} is not set"
                    ));
                }
            },
            (None, None) => return Ok(None),
        };
        PgTarget::parse(key, &url).map(Some)
    }
}

/// Why usage cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLedger {
    /// `[ledger] enabled = false`.
    Disabled,
    /// Enabled, but without a state database (see `/healthz`).
    NoDatabase,
}

/// Reading usage totals: a query over the ledger's tables, or why there
/// is none. Cheap to clone; `GET /api/v1/usage` holds one.
#[derive(Clone)]
pub struct UsageReader {
    store: Result<Store, NoLedger>,
    /// Which rows answer a query best ([`crate::store::pick_resolution`]).
    retention: Retention,
    /// The fleet ledger, read instead of the state database when set.
    pg: Option<Arc<PgLedger>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("the usage ledger is not available ({0:?})")]
    Unavailable(NoLedger),
    #[error("the answer would hold more than {0} totals")]
    TooMany(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fleet(#[from] PgError),
}

impl UsageReader {
    pub fn unavailable(why: NoLedger) -> Self {
        UsageReader {
            store: Err(why),
            retention: Retention::default(),
            pg: None,
        }
    }

    /// Why usage cannot be read, if it cannot.
    pub fn why_unavailable(&self) -> Option<NoLedger> {
        self.store.as_ref().err().copied()
    }

    /// Totals per group and bucket, ordered by bucket then key, and the
    /// query as answered (its resolution chosen when it was 0: the
    /// coarsest rows that answer it exactly); more than `q.limit` is
    /// [`UsageError::TooMany`] rather than a cut answer.
    pub async fn query(&self, q: UsageQuery) -> Result<(UsageQuery, Vec<UsageTotal>), UsageError> {
        let store = self
            .store
            .as_ref()
            .map_err(|w| UsageError::Unavailable(*w))?;
        let limit = q.limit;
        let retention = self.retention;
        let pick = move |q: UsageQuery, held: &[i64]| resolve(q, held, &retention, now_ms());
        let (q, rows) = match &self.pg {
            // The pool bounds how many run; its wait and the statement
            // timeout bound how long (off the async workers).
            Some(pg) => {
                let pg = pg.clone();
                tokio::task::spawn_blocking(move || {
                    let q = if q.resolution_s == 0 {
                        pick(q, &pg.resolutions()?)
                    } else {
                        q
                    };
                    pg.usage(&q).map(|rows| (q, rows))
                })
                .await
                .map_err(|_| StoreError::Closed)??
            }
            None => store.usage(q, pick).await?,
        };
        if rows.len() > limit {
            return Err(UsageError::TooMany(limit));
        }
        Ok((q, rows))
    }
}

/// `q` with its resolution chosen when it is 0 (see
/// [`crate::store::pick_resolution`]); the CLI uses this too.
pub fn resolve(mut q: UsageQuery, held: &[i64], retention: &Retention, now_ms: i64) -> UsageQuery {
    if q.resolution_s == 0 {
        q.resolution_s =
            crate::store::pick_resolution(&q, held, |r| retention.keep(r).ms(), now_ms);
    }
    q
}

/// A running ledger.
pub struct Ledger {
    usage: UsageReader,
    metrics: Option<Arc<LedgerMetrics>>,
    /// The shipper to the fleet ledger, with its metrics.
    shipper: Option<ship::Shipper>,
    ship_metrics: Option<Arc<ship::ShipMetrics>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

/// How long [`Ledger::shutdown`] waits for the last flush.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

impl Ledger {
    /// A ledger that does nothing (disabled).
    pub fn disabled() -> Ledger {
        Ledger {
            usage: UsageReader::unavailable(NoLedger::Disabled),
            metrics: None,
            shipper: None,
            ship_metrics: None,
            stop: None,
            done: None,
        }
    }

    /// The shipper's `vmscope_ledger_spool_*` / `ledger_db` health (`None`
    /// without a fleet ledger).
    pub fn ship_metrics(&self) -> Option<Arc<ship::ShipMetrics>> {
        self.ship_metrics.clone()
    }

    /// What `GET /api/v1/usage` reads.
    pub fn usage(&self) -> UsageReader {
        self.usage.clone()
    }

    /// `vmscope_ledger_*` (`None` when disabled).
    pub fn metrics(&self) -> Option<Arc<LedgerMetrics>> {
        self.metrics.clone()
    }

    /// Account the newest snapshot, write everything pending (at most
    /// [`SHUTDOWN_WAIT`]) and stop.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take()
            && tokio::time::timeout(SHUTDOWN_WAIT, done).await.is_err()
        {
            tracing::warn!("the usage ledger's last flush did not finish in time");
        }
        // After the last flush: what it spooled ships at the next start.
        if let Some(s) = self.shipper.take() {
            s.stop(SHUTDOWN_WAIT).await;
        }
    }
}

/// `/proc/sys/kernel/random/boot_id` and `btime`, under `roots`.
fn boot(roots: &Roots) -> Result<(String, f64), String> {
    let path = roots.proc.join("sys/kernel/random/boot_id");
    let id = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .trim()
        .to_owned();
    if id.is_empty() || id.contains(':') {
        return Err(format!("{} holds no boot id", path.display()));
    }
    let stat = roots.proc.join("stat");
    let btime = std::fs::read_to_string(&stat)
        .map_err(|e| format!("cannot read {}: {e}", stat.display()))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .ok_or_else(|| format!("{} has no btime line", stat.display()))?;
    Ok((id, btime))
}

/// Start the ledger thread on `snapshots`. `store` is the state database
/// the serve command opened (`Err`: why there is none); `path` where it is.
/// The counter totals go to `counters` (nothing is published without a
/// database), at most `max_owners` owners of a kind with series of their
/// own (`[owners] max_owners`).
/// Must be called inside the tokio runtime (the thread uses its handle to
/// wait).
pub fn start(
    cfg: &LedgerConfig,
    roots: &Roots,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    store: Result<Store, String>,
    path: Option<PathBuf>,
    counters: CounterSlot,
    max_owners: usize,
) -> Ledger {
    if !cfg.enabled {
        tracing::info!("usage ledger disabled in the configuration");
        return Ledger::disabled();
    }
    let booted = boot(roots);
    let store = match (store, booted) {
        (Ok(s), Ok(b)) => Ok((s, b)),
        (Err(why), _) => Err(why),
        (_, Err(why)) => Err(why),
    };
    let (store, (boot_id, boot_time)) = match store {
        Ok(ok) => ok,
        Err(why) => {
            tracing::warn!(reason = %why, "the usage ledger has no state database and records nothing");
            return Ledger {
                usage: UsageReader::unavailable(NoLedger::NoDatabase),
                metrics: Some(Arc::new(LedgerMetrics::new(Err(why)))),
                shipper: None,
                ship_metrics: None,
                stop: None,
                done: None,
            };
        }
    };
    let (pg, shipper, ship_metrics) = fleet(cfg, &store);
    let reader = UsageReader {
        store: Ok(store.clone()),
        retention: cfg.retention,
        pg,
    };
    let shown = path.map_or_else(|| "state database".to_owned(), |p| p.display().to_string());
    let metrics = Arc::new(LedgerMetrics::new(Ok(shown)));
    let interval = snapshots.borrow().interval;
    let gap_after = interval
        .saturating_mul(3)
        .max(Duration::from_secs(2))
        .as_millis();
    let acct = AccountConfig {
        interval_ms: i64::try_from(cfg.interval.as_millis()).unwrap_or(60_000),
        gap_after_ms: i64::try_from(gap_after).unwrap_or(i64::MAX),
        forget_after_ms: i64::try_from(
            cfg.flush_interval
                .max(interval)
                .saturating_mul(10)
                .max(Duration::from_secs(600))
                .as_millis(),
        )
        .unwrap_or(i64::MAX),
        max_rows: cfg.max_pending_rows,
        boot_id,
        boot_time,
        max_owners,
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let m = metrics.clone();
    let flush_every = cfg.flush_interval;
    let retention = cfg.retention;
    let host = cfg.host.clone();
    let spawned = std::thread::Builder::new()
        .name("vmscope-ledger".to_owned())
        .spawn(move || {
            let mut worker = Worker {
                acct: Accountant::new(acct),
                store,
                metrics: m,
                counters,
                in_flight: None,
                prune: Prune::new(retention),
                host,
            };
            worker.run(&handle, snapshots, stop_rx, flush_every);
            // Our store handle goes before "done": whoever waits for the
            // store to close next (the watchdog's shutdown) is not kept.
            drop(worker);
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        let why = format!("cannot start the ledger thread: {e}");
        tracing::warn!(reason = %why, "the usage ledger records nothing");
        metrics.set_persistence(Err(why));
        return Ledger {
            usage: UsageReader::unavailable(NoLedger::NoDatabase),
            metrics: Some(metrics),
            shipper,
            ship_metrics,
            stop: None,
            done: None,
        };
    }
    Ledger {
        usage: reader,
        metrics: Some(metrics),
        shipper,
        ship_metrics,
        stop: Some(stop_tx),
        done: Some(done_rx),
    }
}

/// Rows per PostgreSQL transaction: large enough that a host's whole
/// flush (1000 VMs) goes in one, small enough to stay well inside the
/// statement timeout.
const SHIP_BATCH_ROWS: usize = 5000;

/// Spooling on or off (the store thread runs this before the ledger's
/// first flush: its queue is in order), and with a fleet ledger its
/// database handle, shipper and metrics.
#[allow(clippy::type_complexity)]
fn fleet(
    cfg: &LedgerConfig,
    store: &Store,
) -> (
    Option<Arc<PgLedger>>,
    Option<ship::Shipper>,
    Option<Arc<ship::ShipMetrics>>,
) {
    // `validate` has refused a bad URL; this is its fallback.
    let target = match cfg.fleet() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "no fleet ledger");
            None
        }
    };
    let on = target.is_some();
    match store.spool_job(move |s| s.spool_set(on)) {
        Ok(rx) => {
            tokio::spawn(async move {
                if let Ok(Err(e)) = rx.await {
                    tracing::warn!(error = %ErrorChain(&e), "cannot switch the usage ledger's spool; rows may not reach PostgreSQL");
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "cannot switch the usage ledger's spool; rows may not reach PostgreSQL");
        }
    }
    let Some(target) = target else {
        return (None, None, None);
    };
    let pg = Arc::new(PgLedger::new(
        target,
        cfg.database_pool_size,
        cfg.database_timeout,
        store.metrics().clone(),
    ));
    tracing::info!(db = %pg.describe(), "usage ledger ships to the fleet ledger in PostgreSQL");
    let metrics = Arc::new(ship::ShipMetrics::new(pg.clone()));
    let shipper = ship::start(
        store.clone(),
        pg.clone(),
        ship::ShipConfig {
            batch_rows: SHIP_BATCH_ROWS,
            max_spool_rows: cfg.max_spool_rows,
            idle: cfg.flush_interval.min(Duration::from_secs(5)) / 2,
            retention: cfg.retention,
        },
        metrics.clone(),
    );
    match shipper {
        Ok(s) => (Some(pg), Some(s), Some(metrics)),
        Err(e) => {
            tracing::warn!(error = %e, "usage rows stay in the local spool");
            (Some(pg), None, Some(metrics))
        }
    }
}

/// A flush's answer: whether it was written and, if so, the counter totals
/// it read back after writing (or why that read failed: the flush stands).
type FlushResult = oneshot::Receiver<Result<Result<Vec<LedgerTotal>, StoreError>, StoreError>>;

/// The ledger thread's state.
struct Worker {
    acct: Accountant,
    store: Store,
    metrics: Arc<LedgerMetrics>,
    /// Where the committed counter totals are published.
    counters: CounterSlot,
    /// The flush the store is working on: its answer, what it carried, when
    /// it was sent.
    in_flight: Option<(FlushResult, BatchMarks, Instant)>,
    /// `ledger.host`: the host name rows carry instead of the kernel's.
    host: Option<String>,
    prune: Prune,
}

type PruneResult = oneshot::Receiver<Result<(u64, i64), StoreError>>;

/// Retention, applied a little at a time: one store job of at most
/// [`PRUNE_BUDGET`] per wake of the ledger thread until every resolution is
/// done, then again an hour later.
struct Prune {
    /// (class of resolutions, how long kept in ms), those not kept
    /// forever.
    plan: Vec<(std::ops::RangeInclusive<i64>, i64)>,
    /// Which entry of `plan` is being worked on.
    at: usize,
    /// Where that resolution's walk goes on from (`None`: its oldest row).
    from: Option<i64>,
    next: Instant,
    in_flight: Option<PruneResult>,
}

const PRUNE_BUDGET: Duration = Duration::from_millis(50);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Prune {
    fn new(retention: Retention) -> Prune {
        // Raw rows of any length (the interval may have been changed),
        // hourly, daily.
        let plan = [
            (1..=3599, retention.raw),
            (3600..=86_399, retention.hourly),
            (86_400..=i64::MAX, retention.daily),
        ]
        .into_iter()
        .filter_map(|(class, keep)| keep.ms().map(|k| (class, k)))
        .collect();
        Prune {
            plan,
            at: 0,
            from: None,
            // Not at once: the first flushes and the restore go first.
            next: Instant::now() + Duration::from_secs(30),
            in_flight: None,
        }
    }
}

fn now_ms() -> i64 {
    crate::store::to_ms(SystemTime::now())
}

impl Worker {
    fn run(
        &mut self,
        handle: &tokio::runtime::Handle,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut stop: oneshot::Receiver<()>,
        flush_every: Duration,
    ) {
        // Timers and channels below are tokio's: this thread runs in the
        // runtime's context (it only ever blocks itself, never a worker).
        let _context = handle.enter();
        match handle.block_on(
            self.store
                .load_ledger(self.acct_boot_id(), self.acct_resolution()),
        ) {
            Ok(r) => {
                tracing::info!(
                    cursors = r.cursors.len(),
                    rows = r.rows.len(),
                    "usage ledger restored"
                );
                self.acct.restore(r, now_ms());
            }
            Err(e) => {
                // Without the cursors and open rows, a flush would replace
                // rows already written with partial totals: record nothing
                // rather than corrupt what is there, and say so.
                let why = format!("cannot load the usage ledger's cursors: {}", ErrorChain(&e));
                tracing::warn!(reason = %why, "the usage ledger records nothing");
                self.metrics.set_persistence(Err(why));
                return;
            }
        }
        let mut next_flush = Instant::now() + flush_every;
        let mut stopping = false;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            enum Woke {
                Snapshot,
                Closed,
                Timer,
                Stop,
            }
            let woke = handle.block_on(async {
                tokio::select! {
                    r = snapshots.changed() => if r.is_ok() { Woke::Snapshot } else { Woke::Closed },
                    _ = &mut stop, if !stopping => Woke::Stop,
                    _ = tokio::time::sleep(wait) => Woke::Timer,
                }
            });
            match woke {
                Woke::Snapshot => {
                    let snap = snapshots.borrow_and_update().clone();
                    self.observe(&snap);
                    // A VM or owner new to the counters gets its series
                    // from the next flush's read-back: do not make it
                    // wait a whole flush interval.
                    self.poll_flush(false, handle);
                    if self.in_flight.is_none() && self.acct.totals_unread() {
                        self.flush(handle, false);
                    }
                }
                Woke::Stop | Woke::Closed => stopping = true,
                Woke::Timer => {}
            }
            self.poll_flush(false, handle);
            if !stopping {
                self.prune();
            }
            if stopping {
                // The newest snapshot, then one last flush, waited for.
                let snap = snapshots.borrow_and_update().clone();
                self.observe(&snap);
                self.poll_flush(true, handle);
                self.flush(handle, true);
                self.poll_flush(true, handle);
                self.publish();
                return;
            }
            if Instant::now() >= next_flush {
                if self.in_flight.is_none() {
                    self.flush(handle, false);
                }
                next_flush = Instant::now() + flush_every;
            }
            self.publish();
        }
    }

    /// Account `snap`, under `ledger.host` when set (a copy of the
    /// snapshot per tick: only paid by hosts that rename themselves).
    fn observe(&mut self, snap: &Arc<Snapshot>) {
        match &self.host {
            Some(h) if snap.host.hostname.as_deref() != Some(h.as_str()) => {
                let mut renamed = Snapshot::clone(snap);
                renamed.host.hostname = Some(h.clone());
                self.acct.observe(&renamed);
            }
            _ => self.acct.observe(snap),
        }
    }

    /// Take the answer of the retention job in flight and send the next
    /// one when due. Never waits.
    fn prune(&mut self) {
        let p = &mut self.prune;
        if let Some(rx) = p.in_flight.as_mut() {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok((deleted, reached))) => {
                    p.in_flight = None;
                    self.metrics.pruned(deleted);
                    let keep = p.plan.get(p.at).map(|(_, k)| *k);
                    if let Some(keep) = keep
                        && reached < now_ms().saturating_sub(keep)
                    {
                        p.from = Some(reached);
                    } else {
                        p.at += 1;
                        p.from = None;
                        if p.at >= p.plan.len() {
                            p.at = 0;
                            p.next = Instant::now() + PRUNE_EVERY;
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    p.in_flight = None;
                    self.metrics.prune_failed();
                    tracing::warn!(error = %ErrorChain(&e), "usage ledger retention failed; tried again in an hour");
                    p.at = 0;
                    p.from = None;
                    p.next = Instant::now() + PRUNE_EVERY;
                    return;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    p.in_flight = None;
                    p.next = Instant::now() + PRUNE_EVERY;
                    return;
                }
            }
        }
        if Instant::now() < p.next {
            return;
        }
        let Some((class, keep)) = p.plan.get(p.at).cloned() else {
            p.next = Instant::now() + PRUNE_EVERY;
            return;
        };
        let before = now_ms().saturating_sub(keep);
        let from = p.from;
        // A busy store: the next wake tries again.
        if let Ok(rx) = self.store.ledger_job("prune", move |s| {
            s.prune_ledger(class, from, before, PRUNE_BUDGET)
        }) {
            p.in_flight = Some(rx);
        }
    }

    fn acct_boot_id(&self) -> String {
        self.acct.boot_id().to_owned()
    }

    fn acct_resolution(&self) -> i64 {
        self.acct.resolution_s()
    }

    fn publish(&mut self) {
        if let Some(view) = self.acct.counters() {
            self.counters.set(view);
        }
        self.metrics.set_state(
            self.acct.pending(),
            self.acct.incarnations(),
            self.acct.dropped(),
        );
    }

    /// Send what is pending to the store; never waits for it unless `wait`.
    fn flush(&mut self, handle: &tokio::runtime::Handle, wait: bool) {
        let (batch, marks) = self.acct.batch();
        let rows = marks.rows();
        // With no VM at all there is still the horizon to write: a VM that
        // starts while the agent is down is then counted from its start.
        if rows == 0
            && batch.cursors.is_empty()
            && batch.forget.is_empty()
            && batch.horizon.is_none()
            && batch.totals.is_empty()
            && marks.totals_keys().is_empty()
        {
            self.acct.flush_failed(marks);
            return;
        }
        let keys = marks.totals_keys().to_vec();
        // The read-back runs right after the commit on the store thread,
        // which runs one job at a time: it sees exactly this flush. Its
        // failure is not the flush's: what is committed is never resent.
        match self.store.ledger_job("ledger_flush", move |s| {
            s.flush_ledger(&batch)?;
            Ok(s.ledger_totals(&keys))
        }) {
            Ok(rx) => self.in_flight = Some((rx, marks, Instant::now())),
            Err(e) => {
                self.acct.flush_failed(marks);
                self.metrics.flush_failed();
                tracing::warn!(error = %ErrorChain(&e), rows, "usage ledger flush not sent; kept for the next one");
            }
        }
        if wait {
            self.poll_flush(true, handle);
        }
    }

    /// Take the answer of the flush in flight, if there is one (waiting for
    /// it at most [`SHUTDOWN_WAIT`] when `wait`).
    fn poll_flush(&mut self, wait: bool, handle: &tokio::runtime::Handle) {
        let Some((mut rx, marks, sent)) = self.in_flight.take() else {
            return;
        };
        let answer = if wait {
            match handle.block_on(async { tokio::time::timeout(SHUTDOWN_WAIT, &mut rx).await }) {
                Ok(r) => Some(r.unwrap_or(Err(StoreError::Closed))),
                Err(_) => None,
            }
        } else {
            match rx.try_recv() {
                Ok(r) => Some(r),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::Closed)),
            }
        };
        match answer {
            None => self.in_flight = Some((rx, marks, sent)),
            Some(Ok(totals)) => {
                let rows = marks.rows();
                if let Err(e) = &totals {
                    tracing::warn!(error = %ErrorChain(e), "usage ledger flush written, but its counter totals did not read back; read at the next flush");
                }
                self.acct.flushed(marks, totals.as_deref().ok());
                self.metrics
                    .flushed(sent.elapsed().as_secs_f64(), rows, now_ms());
            }
            Some(Err(e)) => {
                // The rows stay dirty and go with the next flush.
                let rows = marks.rows();
                self.acct.flush_failed(marks);
                self.metrics.flush_failed();
                tracing::warn!(error = %ErrorChain(&e), rows, "usage ledger flush failed; kept for the next one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_bad_values_name_their_key() {
        let c: LedgerConfig = toml::from_str("").unwrap();
        assert_eq!(c, LedgerConfig::default());
        assert!(c.enabled && c.validate().is_ok());
        let c: LedgerConfig = toml::from_str("interval = \"5s\"\nflush_interval = \"2s\"").unwrap();
        assert!(c.validate().is_ok());
        for (toml, key) in [
            ("interval = \"7s\"", "ledger.interval: "),
            ("interval = \"1500ms\"", "ledger.interval: "),
            ("interval = \"2h\"", "ledger.interval: "),
            ("flush_interval = \"0s\"", "ledger.flush_interval: "),
            ("max_pending_rows = 10", "ledger.max_pending_rows: "),
            ("max_spool_rows = 10", "ledger.max_spool_rows: "),
            ("database_timeout = \"10ms\"", "ledger.database_timeout: "),
            ("database_pool_size = 0", "ledger.database_pool_size: "),
            ("host = \" \"", "ledger.host: "),
            (
                "database_url = \"mysql://u:pw1234@h/db\"",
                "ledger.database_url: ",
            ),
            (
                "database_url = \"postgres://u:pw1234@h/db\"\ndatabase_url_env = \"X\"",
                "ledger.database_url_env: ",
            ),
        ] {
            let c: LedgerConfig = toml::from_str(toml).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{toml}: {e}");
        }
        assert!(toml::from_str::<LedgerConfig>("intervall = \"5s\"").is_err());
    }

    #[test]
    fn retention_reads_durations_and_forever_and_keeps_coarser_rows_longer() {
        let c: LedgerConfig =
            toml::from_str("[retention]\nraw = \"7d\"\nhourly = \"forever\"").unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.retention.keep(60).ms(), Some(7 * 86_400_000));
        assert_eq!(c.retention.keep(5).ms(), Some(7 * 86_400_000));
        assert_eq!(c.retention.keep(3600), Keep::Forever);
        assert_eq!(c.retention.keep(86_400), Keep::Forever);
        for (toml, want) in [
            ("raw = \"10m\"", "ledger.retention.raw: 10m is too short"),
            (
                "raw = \"500d\"",
                "ledger.retention: raw (500d) <= hourly (400d) <= daily (forever)",
            ),
            (
                "daily = \"30d\"",
                "ledger.retention: raw (35d) <= hourly (400d) <= daily (30d)",
            ),
        ] {
            let c: LedgerConfig = toml::from_str(&format!("[retention]\n{toml}")).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(want), "{toml}: {e}");
        }
        let e = toml::from_str::<LedgerConfig>("[retention]\nraw = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"soon\" is neither a duration"), "{e}");
    }

    #[test]
    fn the_fleet_database_comes_from_the_url_or_the_environment() {
        let c: LedgerConfig = toml::from_str("").unwrap();
        assert!(c.fleet().unwrap().is_none());
        let c: LedgerConfig =
            toml::from_str("database_url = \"postgres://u:pw1234@db:5433/fleet\"").unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(
            c.fleet().unwrap().unwrap().describe(),
            "postgres db:5433/fleet"
        );
        // The URL never shows in the config's Debug.
        assert!(!format!("{c:?}").contains("pw1234"));
        let c: LedgerConfig = toml::from_str("database_url_env = \"FLEET_DB\"").unwrap();
        let env = |v: &str| (v == "FLEET_DB").then(|| "postgres://u:pw1234@db/f".to_owned());
        assert_eq!(
            c.fleet_with(env).unwrap().unwrap().describe(),
            "postgres db:5432/f"
        );
        let e = c.fleet_with(|_| None).unwrap_err();
        assert!(
            e.starts_with("ledger.database_url_env: ") && e.contains("FLEET_DB"),
            "{e}"
        );
        let bad: LedgerConfig = toml::from_str("database_url_env = \"FLEET_DB\"").unwrap();
        let e = bad
            .fleet_with(|_| Some("postgres://u:pw1234@h".to_owned()))
            .unwrap_err();
        assert!(
            e.starts_with("ledger.database_url_env: ") && !e.contains("pw1234"),
            "{e}"
        );
    }

    #[test]
    fn the_boot_id_comes_from_the_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            proc: dir.path().to_path_buf(),
            ..Roots::default()
        };
        assert!(boot(&roots).unwrap_err().contains("boot_id"));
        std::fs::create_dir_all(dir.path().join("sys/kernel/random")).unwrap();
        std::fs::write(dir.path().join("sys/kernel/random/boot_id"), "abc-123\n").unwrap();
        std::fs::write(dir.path().join("stat"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
        assert_eq!(
            boot(&roots).unwrap(),
            ("abc-123".to_owned(), 1_700_000_000.0)
        );
    }
}
