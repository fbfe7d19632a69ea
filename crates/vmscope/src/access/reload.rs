//! Reloading the web config file and its certificates while serving: the
//! files' modification times and sizes are polled every [`POLL`] and a
//! SIGHUP reloads at once. A good new file replaces the access policy (rate
//! limiters and the bcrypt cache start afresh) and the TLS configuration
//! used by new handshakes; open connections keep theirs and are not
//! dropped. A bad one (or a certificate that does not load) keeps the
//! running configuration, logs why (naming the file and the key, never a
//! secret) and sets `vmscope_web_config_last_reload_successful` to 0.
//!
//! Reads: the web config file and the files its `tls_server_config` names,
//! on a blocking thread. Fails: never; switching TLS on or off needs a
//! restart and is refused like a bad file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;

use super::config::{Pem, WebConfig};
use super::gate::Gate;
use super::tls::{TlsState, server_config};

/// How often the files' modification times are compared.
pub const POLL: Duration = Duration::from_secs(5);

/// Loads `path` and builds its TLS configuration (reading the certificates):
/// what start-up, check-config and every reload do. The message names the
/// file and the key.
pub fn load(path: &Path) -> Result<(WebConfig, Option<Arc<ServerConfig>>), String> {
    let web = WebConfig::load(path).map_err(|e| e.to_string())?;
    let tls = match &web.tls {
        Some(t) => {
            Some(server_config(t).map_err(|e| format!("web config {}: {e}", path.display()))?)
        }
        None => None,
    };
    Ok((web, tls))
}

/// (file, modification time and size) of the config and its TLS files.
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stamp(path: &Path, web: Option<&WebConfig>) -> Stamp {
    let mut files = vec![path.to_owned()];
    if let Some(t) = web.and_then(|w| w.tls.as_ref()) {
        for pem in [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Pem::File(p) = pem {
                files.push(p.clone());
            }
        }
    }
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (f, m)
        })
        .collect()
}

/// Watches `path` until the runtime ends: polls every [`POLL`], reloads on
/// SIGHUP. `initial` is the config in force.
pub fn spawn(path: PathBuf, initial: &WebConfig, gate: Arc<Gate>, tls: Option<Arc<TlsState>>) {
    let mut last = stamp(&path, Some(initial));
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; the web config is reloaded when its files change");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let p = path.clone();
            let seen = last.clone();
            let res = tokio::task::spawn_blocking(move || {
                // Compare before parsing: an unchanged file costs a stat.
                if !forced && refresh(&seen) == seen {
                    return None;
                }
                Some(load(&p).map(|(w, t)| {
                    let s = stamp(&p, Some(&w));
                    (w, t, s)
                }))
            })
            .await;
            match res {
                Ok(None) => {}
                Ok(Some(Ok((web, server, new_stamp)))) => {
                    last = new_stamp;
                    match (&tls, server) {
                        (Some(state), Some(cfg)) => state.replace(cfg),
                        (None, None) => {}
                        _ => {
                            gate.metrics().reload_failed();
                            tracing::warn!(file = %path.display(), "reloading the web config failed: tls_server_config: switching TLS on or off needs a restart; the running config stays");
                            continue;
                        }
                    }
                    gate.replace(Some(web));
                    tracing::info!(file = %path.display(), "web config reloaded");
                }
                Ok(Some(Err(e))) => {
                    // Not retried until the files change again (or SIGHUP).
                    last = refresh(&last);
                    gate.metrics().reload_failed();
                    tracing::warn!(error = %e, "reloading the web config failed; the running config stays");
                }
                Err(e) => tracing::warn!(error = %e, "the web config reload task failed"),
            }
        }
    });
}

/// `seen` with every file's current stamp.
fn refresh(seen: &Stamp) -> Stamp {
    seen.iter()
        .map(|(f, _)| {
            let m = std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (f.clone(), m)
        })
        .collect()
}

/// Seconds since the epoch, for the reload timestamp.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
