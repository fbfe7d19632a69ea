//! `vmscope serve`: the agent, and the composition root: the one place
//! that starts the parts and hands each what it needs (the snapshot
//! channel, the store, opened once, the watchdog, the list of metric
//! sources, the API state).
//!
//! Fails: with a usage error for a bad configuration, a runtime error when
//! a part cannot start (collector, store lock, watchdog, listener).

use std::sync::Arc;

use anyhow::Context;

use super::{Failure, ServeArgs, init_logging_to};
use tokio::sync::watch;

use crate::access::tls::TlsState;
use crate::access::{Gate, WebConfig};
use crate::alert::Watchdog;
use crate::api::{AppState, DEFAULT_REQUEST_TIMEOUT, HttpMetrics, Parts, router_with_access};
use crate::config::Config;
use crate::export::{MetricSource, SnapshotAge, Sources, tasks};
use crate::ledger::{NoLedger, UsageReader};
use crate::model::Snapshot;
use crate::pipeline::{Collector, spawn};
use crate::store::DbMetrics;

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    // First, before any thread allocates (cli/malloc.rs says why).
    let (arenas, mmap_threshold) = super::malloc::tune();
    // Flags override the file and the environment, and the whole is checked
    // after that: `--interval 1` may be what makes a 3 s rule valid.
    let mut cfg = Config::load_unvalidated(args.common.config.as_deref(), std::env::vars())
        .map_err(Failure::usage)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(i) = args.interval {
        cfg.interval = i;
    }
    if let Some(w) = args.web_config_file {
        cfg.http.web_config_file = Some(w);
    }
    if let Some(f) = args.log_file {
        cfg.log.file = Some(f);
    }
    if let Some(m) = args.log_max_size {
        cfg.log.max_size = m;
    }
    if let Some(k) = args.log_keep {
        cfg.log.keep = k;
    }
    cfg.validate().map_err(Failure::usage)?;
    let web = web_config(&cfg).map_err(Failure::usage)?;
    let push_destinations = cfg
        .push
        .destinations(cfg.interval())
        .map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
    // Opened before anything runs: a log directory that is missing or not
    // writable is a usage error now, not lines silently lost later.
    let log_file = match &cfg.log.file {
        Some(p) => Some(
            super::logfile::LogFile::open(p, cfg.log.max_size.0, cfg.log.keep)
                .map_err(Failure::usage)?,
        ),
        None => None,
    };
    init_logging_to(&cfg, log_file.clone());
    tracing::debug!(
        ?arenas,
        max = super::malloc::ARENAS,
        ?mmap_threshold,
        bytes = super::malloc::MMAP_THRESHOLD,
        "glibc malloc settings"
    );
    let (web, tls) = match web {
        Some((w, t)) => (Some(w), t.map(|t| Arc::new(TlsState::new(t)))),
        None => (None, None),
    };
    if let (Some(w), Some(path)) = (&web, &cfg.http.web_config_file) {
        tracing::info!(
            file = %path.display(),
            users = w.users.len(),
            tokens = w.tokens.len(),
            tls = tls.is_some(),
            "access control from the web config"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vmscope-worker")
        .build()
        .context("starting the async runtime")
        .map_err(Failure::runtime)?;
    rt.block_on(async move {
        let mut collector = Collector::new(&cfg)
            .context("setting up collection")
            .map_err(Failure::runtime)?;
        // The ledger publishes its counter totals here; each snapshot
        // carries the newest into /metrics.
        let counters = crate::model::counters::CounterSlot::default();
        collector.attach_counters(counters.clone());
        let owner_metrics: Arc<dyn MetricSource> = Arc::new(collector.owner_metrics());
        let pacer = crate::model::pace::Pacer::new();
        let snapshots = spawn(collector, cfg.interval(), pacer.clone())
            .context("starting the collector thread")
            .map_err(Failure::runtime)?;
        // The store is opened once, here, for everything that keeps state
        // (the watchdog today, the ledger next); only if something uses it.
        let store = if cfg.watchdog.enabled || cfg.ledger.enabled {
            let opened = crate::store::open(&cfg.store, Arc::new(DbMetrics::new()))
                .await
                .context("opening the state database")
                .map_err(Failure::runtime)?;
            Some(opened)
        } else {
            None
        };
        // The ledger shares the store (a clone of the handle: one thread,
        // one connection) and reads the same snapshots, on its own thread.
        let ledger = match &store {
            Some(o) => crate::ledger::start(
                &cfg.ledger,
                &cfg.roots(),
                snapshots.clone(),
                o.store.clone(),
                o.path.clone(),
                counters,
                cfg.owners.max_owners,
            ),
            None => crate::ledger::Ledger::disabled(),
        };
        let gate = Arc::new(Gate::new(web.clone()));
        if let (Some(w), Some(path)) = (&web, &cfg.http.web_config_file) {
            crate::access::reload::spawn(path.clone(), w, Arc::clone(&gate), tls.clone());
        }
        // SIGHUP must never end the agent (`systemctl reload`): without a
        // web config nothing else watches it, and its default action is exit.
        spawn_sighup_note(cfg.http.web_config_file.is_some());
        let mut collector_sources = vec![owner_metrics, gate.metrics() as Arc<dyn MetricSource>];
        // Every background task's health, one family set (export::tasks).
        // Registered here so their series exist before the first run; the
        // owner refresh appears with the first fetch of a fetched source.
        tasks::global().register(tasks::COLLECTION);
        if cfg.watchdog.enabled {
            tasks::global().register(tasks::RULE_EVALUATION);
        }
        if ledger.metrics().is_some() {
            tasks::global().register(tasks::LEDGER_FLUSH);
        }
        collector_sources.push(Arc::new(tasks::TaskMetrics));
        if let Some(f) = &log_file {
            collector_sources.push(f.metrics());
        }
        if let Some(m) = ledger.metrics() {
            collector_sources.push(m);
        }
        if let Some(m) = ledger.ship_metrics() {
            collector_sources.push(m);
        }
        // With `[store] database_url` the watchdog keeps its state in
        // PostgreSQL (a fleet's one database), scoped to this host; the
        // ledger stays in the SQLite store above.
        // The host name the ledger's rows carry (`ledger.host`, else the
        // collector's, read from the configured procfs).
        let host = cfg
            .ledger
            .host
            .clone()
            .or_else(|| snapshots.borrow().host.hostname.clone())
            .or_else(|| {
                std::fs::read_to_string(cfg.roots().proc.join("sys/kernel/hostname"))
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default();
        let watchdog_store = if cfg.watchdog.enabled {
            crate::store::config::open_alerts_pg(
                &cfg.store,
                &host,
                store.as_ref().map_or_else(|| Arc::new(DbMetrics::new()), |o| o.metrics.clone()),
            )
            .await
            .context("opening the PostgreSQL alert store")
            .map_err(Failure::runtime)?
        } else {
            None
        };
        let store = watchdog_store.or(store);
        // Usage rules read the ledger through its reader, off the loop.
        let watchdog = crate::alert::start_with_usage(
            cfg.watchdog.clone(),
            snapshots.clone(),
            store,
            ledger.usage(),
        )
        .await
        .context("starting the watchdog")
        .map_err(Failure::runtime)?;
        // Pushers: their metrics follow the other sources in /metrics, and
        // they push those same sources after each snapshot's families.
        let push_metrics = Arc::new(crate::push::PushMetrics::new());
        if !push_destinations.is_empty() {
            collector_sources.push(Arc::clone(&push_metrics) as Arc<dyn MetricSource>);
        }
        let push_snapshots = snapshots.clone();
        if cfg.proxy.owner_labels {
            crate::export::owner_labels::enable(&cfg.proxy.user_label, &cfg.proxy.project_label);
        }
        let proxy = crate::proxy::Proxy::new(cfg.proxy.clone())
            .context("building the query proxy's Prometheus client")
            .map_err(Failure::runtime)?;
        let state = state_with_usage(
            snapshots,
            &watchdog,
            collector_sources,
            ledger.usage(),
            pacer,
        )
        .with_proxy(Arc::new(proxy));
        let pushers = crate::push::start(
            push_destinations,
            push_snapshots,
            Sources::new(state.sources().to_vec()),
            &push_metrics,
        )
        .context("starting the pushers")
        .map_err(Failure::runtime)?;
        let http_metrics = state.shared_http_metrics();
        let app = router_with_access(state, Arc::clone(&gate));
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))
            .map_err(Failure::runtime)?;
        let addr = listener
            .local_addr()
            .context("reading the bound address")
            .map_err(Failure::runtime)?;
        tracing::info!(address = %addr, tls = tls.is_some(), interval = %humantime::format_duration(cfg.interval), version = crate::BuildInfo::VERSION, "listening");
        crate::server::serve_tls(
            listener,
            app,
            &cfg.http,
            http_metrics,
            tls,
            Some(gate),
            shutdown_signal(),
        )
        .await;
        pushers.shutdown().await;
        // The ledger's last flush first: the watchdog's shutdown closes the store.
        ledger.shutdown().await;
        // Let the sinks flush what is queued (bounded by watchdog.shutdown_timeout).
        watchdog.shutdown().await;
        tracing::info!("stopped");
        if let Some(f) = &log_file {
            f.flush(std::time::Duration::from_secs(1));
        }
        Ok(())
    })
}

/// Logs each SIGHUP: what it reloads (the web config and its certificates,
/// see `access::reload`) or that nothing is reloaded. Installing the
/// handler is what keeps SIGHUP from terminating the process.
fn spawn_sighup_note(web_config: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; a SIGHUP would stop vmscope");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if web_config {
                tracing::info!(
                    "SIGHUP: reloading the web config and its TLS certificates; other settings need a restart"
                );
            } else {
                tracing::info!(
                    "SIGHUP: no web config to reload (http.web_config_file is unset); other settings need a restart"
                );
            }
        }
    });
}

/// The web configuration `serve` runs with (`http.web_config_file`), loaded
/// and checked, with its TLS configuration built (certificates read): also
/// what `check-config` checks.
pub(crate) fn web_config(
    cfg: &Config,
) -> anyhow::Result<Option<(WebConfig, Option<Arc<rustls::ServerConfig>>)>> {
    let Some(path) = &cfg.http.web_config_file else {
        return Ok(None);
    };
    crate::access::reload::load(path)
        .map(Some)
        .map_err(anyhow::Error::msg)
}

/// The API's state: the metric sources, built once here, in exposition
/// order (after the snapshot's families): the watchdog's, the snapshot
/// age, the HTTP self-metrics (with the server's connection counters).
/// Pushers take the same `Sources` (`vmscope serve` hands them over).
pub fn state(snapshots: watch::Receiver<Arc<Snapshot>>, watchdog: &Watchdog) -> AppState {
    state_with(snapshots, watchdog, Vec::new())
}

/// [`state`] with the sources that live with the collector (the owner
/// sources' health), written after the watchdog's.
pub fn state_with(
    snapshots: watch::Receiver<Arc<Snapshot>>,
    watchdog: &Watchdog,
    collector_sources: Vec<Arc<dyn MetricSource>>,
) -> AppState {
    state_with_usage(
        snapshots,
        watchdog,
        collector_sources,
        UsageReader::unavailable(NoLedger::Disabled),
        crate::model::pace::Pacer::new(),
    )
}

/// [`state_with`] and the usage ledger's reader for `/api/v1/usage`.
pub fn state_with_usage(
    snapshots: watch::Receiver<Arc<Snapshot>>,
    watchdog: &Watchdog,
    collector_sources: Vec<Arc<dyn MetricSource>>,
    usage: UsageReader,
    pacer: crate::model::pace::Pacer,
) -> AppState {
    let http = Arc::new(HttpMetrics::new());
    let mut list = vec![watchdog.metrics()];
    list.extend(collector_sources);
    list.push(Arc::new(SnapshotAge::new(snapshots.clone())));
    list.push(Arc::clone(&http) as Arc<dyn MetricSource>);
    let sources = Sources::new(list);
    AppState::from_parts(Parts {
        snapshots,
        sources,
        http,
        alerts: watchdog.history(),
        usage,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        pacer,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
