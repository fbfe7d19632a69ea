//! The watchdog: sustained-threshold alerts and recoveries over vmscope's own
//! snapshots, delivered to logs, webhooks, Telegram, Sentry and Alertmanager.
//!
//! ```text
//! watch<Arc<Snapshot>> --> engine (pure: rules x scopes -> notifications)
//!                            |--> store (episodes, on its own thread)
//!                            '--> dispatcher --> one task + bounded queue per sink
//! ```
//!
//! - [`rules`]: what each rule watches; [`engine`]: the state machine
//!   (sustained / recovery timers, repeat interval, grouping), no IO and no
//!   clock; [`context`] and [`text`]: what a message says.
//! - [`sinks`]: one file per sink behind a registry table; retries, backoff
//!   and isolation in `sinks/mod.rs`.
//! - [`api`]: `GET /api/v1/alerts`; [`metrics`]: `vmscope_alert_*` and
//!   `vmscope_db_*`.
//!
//! Reads: snapshots from the collector's watch channel; the `[watchdog]`
//! config; the state database at start (open episodes). Emits:
//! notifications, episode rows, metrics. Fails: only at [`start`] (bad
//! config, unusable CA file, state database that cannot be opened);
//! afterwards a failing store write or sink is logged and counted, and
//! evaluation goes on.
//!
//! Time is the snapshot's `collected_at`, so the engine sees exactly the
//! timeline the collector measured.

pub mod api;
pub mod config;
pub mod context;
pub mod engine;
pub mod metrics;
pub mod notification;
pub mod rules;
pub mod sinks;
pub mod text;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ConfigError, Secret, WatchdogConfig};
pub use engine::{ActiveAlert, Engine, RestoredEpisode};
pub use metrics::{AlertMetrics, DeliveryResult};
pub use notification::{Alert, Notification, Status, Transition};
pub use rules::{Metric, Rule, Scope, Severity};
pub use sinks::SinkError;

use crate::export::MetricSource;
use crate::model::Snapshot;
use crate::store::{DbMetrics, EpisodeWrite, Location, Store, StoreError};
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

/// How often resolved history older than `history_retention` is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A running watchdog.
pub struct Watchdog {
    metrics: Arc<AlertMetrics>,
    store: Option<Store>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Dispatcher>>,
    shutdown_timeout: Duration,
    evaluated: watch::Receiver<u64>,
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

    /// `GET /api/v1/alerts`, state applied.
    pub fn router(&self) -> axum::Router {
        api::router(self.store.clone())
    }

    /// Stop evaluating, let sinks flush their queues for at most the
    /// configured `shutdown_timeout`, close the database.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(dispatcher) => dispatcher.shutdown(self.shutdown_timeout).await,
                Err(e) => tracing::error!(error = %e, "watchdog loop ended abnormally"),
            }
        }
        self.store = None;
    }
}

/// Start the watchdog on `snapshots`. Validates `cfg` against the
/// snapshots' collection interval, builds every sink, opens the state
/// database and takes over the episodes that were firing before a restart.
pub async fn start(
    cfg: WatchdogConfig,
    snapshots: watch::Receiver<Arc<Snapshot>>,
) -> Result<Watchdog, WatchdogError> {
    let interval = snapshots.borrow().interval;
    cfg.validate(interval)?;
    let db_metrics = Arc::new(DbMetrics::new());
    let (stop, stop_rx) = watch::channel(false);
    let (evaluated_tx, evaluated) = watch::channel(0u64);
    if !cfg.enabled {
        tracing::info!("watchdog disabled in the configuration");
        return Ok(Watchdog {
            metrics: Arc::new(AlertMetrics::new(&[], db_metrics)),
            store: None,
            stop,
            task: None,
            shutdown_timeout: cfg.shutdown_timeout,
            evaluated,
        });
    }
    let rules = cfg.resolve_rules()?;
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
    let metrics = Arc::new(AlertMetrics::new(&names, db_metrics.clone()));

    let store = Store::open(Location::Sqlite(cfg.state_db_path.clone()), db_metrics).await?;
    let mut engine = Engine::new(rules);
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
    let active = engine.active();
    if !active.is_empty() {
        tracing::info!(
            firing = active.len(),
            "watchdog restored firing alerts; they are not notified again"
        );
    }
    metrics.set_active(active);
    tracing::info!(
        rules = engine.rules().len(),
        sinks = %names.join(","),
        db = %cfg.state_db_path.display(),
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
    let dispatcher = Dispatcher::start(specs, metrics.clone(), Some(store.clone()), firing);
    let task = tokio::spawn(run(
        engine,
        snapshots,
        store.clone(),
        dispatcher,
        metrics.clone(),
        stop_rx,
        evaluated_tx,
        cfg.history_retention,
    ));
    Ok(Watchdog {
        metrics,
        store: Some(store),
        stop,
        task: Some(task),
        shutdown_timeout: cfg.shutdown_timeout,
        evaluated,
    })
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
    store: Store,
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
            let notes = engine.evaluate(snap.collected_at, &snap);
            let writes: Vec<EpisodeWrite> = notes.iter().flat_map(writes_for).collect();
            if let Err(e) = store.apply(writes).await {
                tracing::warn!(error = %e, "cannot record alert state; a restart may notify again");
            }
            for n in &notes {
                dispatcher.dispatch(n);
            }
            metrics.set_active(engine.active());
            evaluated.send_replace(snap.seq);
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let before = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match store.prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned old alert history"),
                Err(e) => tracing::warn!(error = %e, "cannot prune alert history"),
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
