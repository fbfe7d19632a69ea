//! `vmscope serve`: the agent.

use std::sync::Arc;

use anyhow::Context;

use super::{Failure, ServeArgs, init_logging};
use crate::api::{AppState, DEFAULT_REQUEST_TIMEOUT, router};
use crate::config::Config;
use crate::export::MetricSource;
use crate::pipeline::{Collector, spawn};

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    // Flags override the file and the environment, and the whole is checked
    // after that: `--interval 1` may be what makes a 3 s rule valid.
    let mut cfg = Config::load_unvalidated(args.common.config.as_deref(), std::env::vars())
        .map_err(Failure::usage)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(i) = args.interval {
        cfg.interval_secs = i;
    }
    cfg.validate().map_err(Failure::usage)?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vmscope-worker")
        .build()
        .context("starting the async runtime")
        .map_err(Failure::runtime)?;
    rt.block_on(async move {
        let collector = Collector::new(&cfg)
            .context("setting up collection")
            .map_err(Failure::runtime)?;
        let snapshots = spawn(collector, cfg.interval())
            .context("starting the collector thread")
            .map_err(Failure::runtime)?;
        let watchdog = crate::alert::start(cfg.watchdog.clone(), snapshots.clone())
            .await
            .context("starting the watchdog")
            .map_err(Failure::runtime)?;
        let extra: Vec<Arc<dyn MetricSource>> = vec![watchdog.metrics()];
        let state = AppState::serving(
            snapshots,
            extra,
            DEFAULT_REQUEST_TIMEOUT,
            watchdog.history(),
        );
        let http_metrics = state.shared_http_metrics();
        let app = router(state);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))
            .map_err(Failure::runtime)?;
        let addr = listener
            .local_addr()
            .context("reading the bound address")
            .map_err(Failure::runtime)?;
        tracing::info!(address = %addr, interval_secs = cfg.interval_secs, version = crate::BuildInfo::VERSION, "listening");
        crate::server::serve(listener, app, &cfg.http, http_metrics, shutdown_signal()).await;
        // Let the sinks flush what is queued (bounded by watchdog.shutdown_timeout).
        watchdog.shutdown().await;
        tracing::info!("stopped");
        Ok(())
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
