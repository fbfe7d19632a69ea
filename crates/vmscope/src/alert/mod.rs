//! The watchdog: sustained-threshold alerts and recoveries over vmscope's own
//! snapshots, delivered to logs, webhooks, Telegram, Sentry and Alertmanager.
//!
//! ```text
//! watch<Arc<Snapshot>> --> engine (pure: rules x scopes -> notifications)
//!                            |--> store (episodes + outbox, one transaction, own thread)
//!                            '--> dispatcher --> one task + bounded queue per sink
//! ```
//!
//! - [`rules`]: what each rule watches; [`engine`]: the state machine
//!   (sustained / recovery timers, repeat interval, grouping), no IO and no
//!   clock; [`context`] and [`text`]: what a message says.
//! - [`sinks`]: one file per sink behind a registry table; retries, backoff
//!   and isolation in `sinks/mod.rs`.
//! - [`usage`]: the usage rules' ledger answers, refreshed on a task of
//!   their own so that the loop never waits on the database.
//! - [`history`]: the alert history as plain values (`GET /api/v1/alerts`
//!   lives in `crate::api::alerts`); [`metrics`]: `vmscope_alert_*` and
//!   `vmscope_db_*`.
//!
//! Reads: snapshots from the collector's watch channel; the `[watchdog]`
//! config; usage totals from the ledger's [`UsageReader`] (usage rules
//! only, through [`usage`]); the state database the serve command opened (`[store]`, see
//! [`crate::store::config`]) at start (open episodes, the outbox of
//! undelivered notifications). Emits: notifications, episode and outbox
//! rows, metrics. Fails: only at [`start`], for a bad config or an unusable
//! CA file (a state database held by another running vmscope stops the
//! serve command before the watchdog starts). A state
//! database that cannot be used (no path, unwritable, full, not ours, newer
//! schema) does not stop the agent: the watchdog runs in memory (rules
//! evaluate and notify; nothing survives a restart) and says so in a warning,
//! in `vmscope_watchdog_persistence_enabled 0` and in `/healthz`. Afterwards
//! a failing store write or sink is logged (with its cause) and counted, and
//! evaluation goes on.
//!
//! Time is the snapshot's `collected_at`, so the engine sees exactly the
//! timeline the collector measured.

pub mod config;
pub mod context;
pub mod engine;
pub mod history;
pub mod metrics;
pub mod notification;
pub mod rules;
pub mod setting;
pub mod sinks;
pub mod text;
pub mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ConfigError, WatchdogConfig};
pub use engine::{ActiveAlert, Engine, RestoredEpisode};
pub use history::{AlertHistory, HistoryError, NoStore};
pub use metrics::{AlertMetrics, DeliveryResult, Persistence};
pub use notification::{Alert, Notification, Status, Transition};
pub use rules::{Metric, Rule, Scope, Severity};
pub use sinks::SinkError;

use crate::error::ErrorChain;
use crate::export::MetricSource;
use crate::ledger::{NoLedger, UsageReader};
use crate::model::Snapshot;
use crate::store::{DbMetrics, EpisodeWrite, Opened, Store, StoreError};
use sinks::{Dispatcher, SinkSpec};

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long `shutdown` waits for the store to close (its lock released), so
/// that it can be opened again at once; a router still held elsewhere keeps
/// it open longer.
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How often resolved history older than `history_retention` is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A running watchdog.
pub struct Watchdog {
    metrics: Arc<AlertMetrics>,
    /// The store, or why there is none (disabled, or running in memory).
    store: Result<Store, NoStore>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Dispatcher>>,
    shutdown_timeout: Duration,
    evaluated: watch::Receiver<u64>,
    /// The usage rules' refresh task (none without usage rules).
    usage_task: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// `vmscope_alert_*` and `vmscope_db_*` for `/metrics`.
    pub fn metrics(&self) -> Arc<dyn MetricSource> {
        self.metrics.clone()
    }

    /// The same, typed (tests, other in-process readers).
    pub fn alert_metrics(&self) -> &Arc<AlertMetrics> {
        &self.metrics
    }

    /// The `seq` of the last snapshot evaluated (0: none yet), for health
    /// checks and for tests that must know a snapshot was seen.
    pub fn evaluated(&self) -> watch::Receiver<u64> {
        self.evaluated.clone()
    }

    /// The alert history (`GET /api/v1/alerts` reads it).
    pub fn history(&self) -> AlertHistory {
        AlertHistory::new(self.store.clone())
    }

    /// Stop evaluating, let sinks flush their queues for at most the
    /// configured `shutdown_timeout`, close the database.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.usage_task.take() {
            // A query in flight holds a store handle: do not wait for it.
            task.abort();
            let _ = task.await;
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(dispatcher) => dispatcher.shutdown(self.shutdown_timeout).await,
                Err(e) => tracing::error!(error = %e, "watchdog loop ended abnormally"),
            }
        }
        let store = std::mem::replace(&mut self.store, Err(NoStore::Disabled));
        if let Ok(store) = store
            && !store.close(STORE_CLOSE_WAIT).await
        {
            tracing::debug!("the state database is still in use after the watchdog stopped");
        }
    }
}

/// Start the watchdog on `snapshots`. Validates `cfg` against the
/// snapshots' collection interval, builds every sink and takes over the
/// episodes that were firing before a restart from `store`, which the
/// serve command opened ([`crate::store::open`]). Without a store (`None`,
/// or one that could not be opened) the watchdog runs in memory and says so.
pub async fn start(
    cfg: WatchdogConfig,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    store: Option<Opened>,
) -> Result<Watchdog, WatchdogError> {
    start_with_usage(
        cfg,
        snapshots,
        store,
        UsageReader::unavailable(NoLedger::Disabled),
    )
    .await
}

/// [`start`] with the usage ledger's reader, which usage rules
/// (`owner_usage_*`) read on a task of their own every `usage_refresh`.
pub async fn start_with_usage(
    cfg: WatchdogConfig,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    store: Option<Opened>,
    usage: UsageReader,
) -> Result<Watchdog, WatchdogError> {
    let interval = snapshots.borrow().interval;
    cfg.validate(interval)?;
    let (db_metrics, db_path, store) = match store {
        Some(o) => (o.metrics, o.path, o.store),
        None => (
            Arc::new(DbMetrics::new()),
            None,
            Err("no state database was opened for the watchdog".to_owned()),
        ),
    };
    let (stop, stop_rx) = watch::channel(false);
    let (evaluated_tx, evaluated) = watch::channel(0u64);
    if !cfg.enabled {
        tracing::info!("watchdog disabled in the configuration");
        return Ok(Watchdog {
            metrics: Arc::new(AlertMetrics::new(&[], db_metrics)),
            store: Err(NoStore::Disabled),
            stop,
            task: None,
            shutdown_timeout: cfg.shutdown_timeout,
            evaluated,
            usage_task: None,
        });
    }
    let rules = cfg.resolve_rules()?;
    let usage_keys = cfg.usage_keys()?;
    let sink_cfgs = cfg.effective_sinks();
    let mut specs = Vec::new();
    for (name, sc) in &sink_cfgs {
        specs.push(SinkSpec {
            name: name.clone(),
            sink: sinks::build(name, sc)?,
            delivery: sc.delivery(),
        });
    }
    let names: Vec<String> = sink_cfgs.keys().cloned().collect();
    let metrics = Arc::new(AlertMetrics::new(&names, db_metrics));
    metrics.set_usage_keys(&usage_keys);

    let mut engine = Engine::new(rules);
    let mut store = store;
    if let Err(why) = &store {
        warn_in_memory(db_path.as_ref(), why);
    }
    let mut outbox = Vec::new();
    if let Ok(s) = &store {
        match restore(s, &mut engine).await {
            Ok(rows) => outbox = rows,
            Err(e) => {
                // A database that opened but cannot be read is no better
                // than one that did not open.
                let why = ErrorChain(&e).to_string();
                warn_in_memory(db_path.as_ref(), &why);
                engine = Engine::new(engine.rules().to_vec());
                store = Err(why);
            }
        }
    }
    match &store {
        Ok(_) => metrics.set_persistence(Persistence::Database(
            db_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )),
        Err(why) => metrics.set_persistence(Persistence::InMemory(why.clone())),
    }
    let store = store.ok();
    let active = engine.active();
    if !active.is_empty() {
        tracing::info!(
            firing = active.len(),
            "watchdog restored firing alerts; only notifications not yet delivered are sent again"
        );
    }
    metrics.set_active(active);
    tracing::info!(
        rules = engine.rules().len(),
        sinks = %names.join(","),
        db = %db_path.as_ref().map_or_else(|| "none (in memory)".to_owned(), |p| p.display().to_string()),
        persistence = store.is_some(),
        "watchdog started"
    );

    let firing = engine
        .firing_alerts()
        .into_iter()
        .map(|a| {
            let sinks = engine
                .rules()
                .iter()
                .find(|r| r.name == a.rule)
                .and_then(|r| r.sinks.clone());
            (a, sinks)
        })
        .collect();
    let dispatcher = Dispatcher::start(specs, metrics.clone(), store.clone(), firing);
    // Before the loop starts: what was undelivered goes out first.
    dispatcher.requeue(outbox).await;
    let plan = usage::RefreshPlan {
        keys: usage_keys,
        every: cfg.usage_refresh,
        timeout: cfg.usage_timeout,
    };
    let (usage_view, usage_task) = if plan.keys.is_empty() {
        (
            watch::channel(Arc::new(usage::UsageView::default())).1,
            None,
        )
    } else {
        if let Some(why) = usage.why_unavailable() {
            tracing::warn!(
                reason = ?why,
                "the usage ledger cannot be read: usage rules hold (never fire) until it can"
            );
        }
        let (view, task) = usage::spawn(
            usage,
            plan,
            snapshots.clone(),
            metrics.clone(),
            stop_rx.clone(),
        );
        (view, Some(task))
    };
    let task = tokio::spawn(run(
        engine,
        snapshots,
        usage_view,
        store.clone(),
        dispatcher,
        metrics.clone(),
        stop_rx,
        evaluated_tx,
        cfg.history_retention,
    ));
    Ok(Watchdog {
        metrics,
        store: store.ok_or(NoStore::InMemory),
        stop,
        task: Some(task),
        shutdown_timeout: cfg.shutdown_timeout,
        evaluated,
        usage_task,
    })
}

fn warn_in_memory(path: Option<&PathBuf>, why: &str) {
    tracing::warn!(
        db = %path.map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        cause = %why,
        "the watchdog's state database cannot be used: the watchdog runs WITHOUT persistence \
         (rules evaluate and notify; alert state and undelivered notifications do not survive \
         a restart); /metrics and the API are not affected"
    );
}

/// Take over the episodes that were firing before a restart (closing
/// those of removed rules and unreadable ones) and return the outbox.
async fn restore(
    store: &Store,
    engine: &mut Engine,
) -> Result<Vec<crate::store::OutboxRow>, StoreError> {
    let mut unreadable = Vec::new();
    let mut restored = Vec::new();
    for row in store.open_episodes().await? {
        match serde_json::from_str::<Alert>(&row.payload) {
            Ok(alert) => restored.push(RestoredEpisode {
                alert,
                last_notified: row.last_notified_at,
            }),
            Err(e) => {
                tracing::warn!(rule = %row.rule, scope = %row.scope_key, error = %e, "stored episode unreadable; closing it");
                unreadable.push((row.rule, row.scope_key));
            }
        }
    }
    let orphans = engine.restore(restored);
    let now = SystemTime::now();
    let mut closes: Vec<EpisodeWrite> = unreadable
        .into_iter()
        .map(|(rule, scope_key)| EpisodeWrite::Resolve {
            rule,
            scope_key,
            at: now,
            payload: None,
        })
        .collect();
    for o in &orphans {
        tracing::info!(rule = %o.alert.rule, scope = %o.alert.scope_key, "rule no longer configured; closing its open episode without notifying");
        closes.push(EpisodeWrite::Resolve {
            rule: o.alert.rule.clone(),
            scope_key: o.alert.scope_key.clone(),
            at: now,
            payload: None,
        });
    }
    store.apply(closes).await?;
    store.outbox().await
}

/// What the store has to record for a notification's alerts.
fn writes_for(n: &Notification) -> Vec<EpisodeWrite> {
    n.alerts
        .iter()
        .map(|a| {
            let json = || serde_json::to_string(a).unwrap_or_else(|_| "{}".to_owned());
            match a.transition {
                Transition::Fired => EpisodeWrite::Open {
                    rule: a.rule.clone(),
                    scope_key: a.scope_key.clone(),
                    severity: a.severity.as_str().to_owned(),
                    started_at: a.started_at,
                    payload: json(),
                },
                Transition::Repeat => EpisodeWrite::Notified {
                    rule: a.rule.clone(),
                    scope_key: a.scope_key.clone(),
                    at: n.at,
                },
                Transition::Resolved => EpisodeWrite::Resolve {
                    rule: a.rule.clone(),
                    scope_key: a.scope_key.clone(),
                    at: a.resolved_at.unwrap_or(n.at),
                    payload: Some(json()),
                },
            }
        })
        .collect()
}

/// The watchdog loop: one evaluation per new snapshot. Returns the
/// dispatcher so `shutdown` can flush it.
#[allow(clippy::too_many_arguments)]
async fn run(
    mut engine: Engine,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    usage: watch::Receiver<Arc<usage::UsageView>>,
    store: Option<Store>,
    dispatcher: Dispatcher,
    metrics: Arc<AlertMetrics>,
    mut stop: watch::Receiver<bool>,
    evaluated: watch::Sender<u64>,
    retention: Duration,
) -> Dispatcher {
    let mut last_seq = 0;
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        let snap = snapshots.borrow_and_update().clone();
        // seq 0 is the placeholder published before the first tick.
        if snap.seq != 0 && snap.seq != last_seq {
            last_seq = snap.seq;
            let started = std::time::Instant::now();
            // The latest answers, never waited for (an Arc clone).
            let view = usage.borrow().clone();
            let notes = engine.evaluate_with(snap.collected_at, &snap, &view);
            let writes: Vec<EpisodeWrite> = notes.iter().flat_map(writes_for).collect();
            dispatcher.dispatch(&notes, writes).await;
            metrics.set_active(engine.active());
            crate::export::tasks::global()
                .succeeded(crate::export::tasks::RULE_EVALUATION, started.elapsed());
            evaluated.send_replace(snap.seq);
        }
        if let Some(store) = &store
            && last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
        {
            last_prune = Some(std::time::Instant::now());
            let before = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match store.prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned old alert history"),
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot prune alert history"),
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    tracing::info!("snapshot source closed; watchdog loop ends");
                    break;
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    dispatcher
}
