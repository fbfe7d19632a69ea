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
//! Fails: only [`LedgerConfig::validate`] (a key named). Without a state
//! database (none configured, unusable, or the boot id unreadable) the
//! ledger records nothing and says so (log, `/healthz`,
//! `vmscope_ledger_persistence_enabled 0`); a failing flush keeps its rows in
//! memory (bounded by `max_pending_rows`), is counted and retried at the
//! next flush; nothing in here panics or stops the agent.

pub mod account;
pub mod metrics;
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
        }
    }
}

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
        self.retention.validate()
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
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("the usage ledger is not available ({0:?})")]
    Unavailable(NoLedger),
    #[error("the answer would hold more than {0} totals")]
    TooMany(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UsageReader {
    pub fn unavailable(why: NoLedger) -> Self {
        UsageReader {
            store: Err(why),
            retention: Retention::default(),
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
        let retention = self.retention.clone();
        let (q, rows) = store
            .usage(q, move |q, held| resolve(q, held, &retention, now_ms()))
            .await?;
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
            stop: None,
            done: None,
        }
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
                stop: None,
                done: None,
            };
        }
    };
    let reader = UsageReader {
        store: Ok(store.clone()),
        retention: cfg.retention.clone(),
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
    let retention = cfg.retention.clone();
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
            stop: None,
            done: None,
        };
    }
    Ledger {
        usage: reader,
        metrics: Some(metrics),
        stop: Some(stop_tx),
        done: Some(done_rx),
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
                    self.acct.observe(&snap);
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
                self.acct.observe(&snap);
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
