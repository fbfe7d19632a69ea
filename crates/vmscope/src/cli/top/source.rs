//! Where `vmscope top` gets its figures: a running agent's API (`--url`),
//! or, without one, the same collection `vmscope vms` runs, in-process.
//!
//! Reads: remote, `GET <url>/metrics.json` (one request for every VM's
//! counters, scoped by the token like `/metrics`) and `GET
//! <url>/api/v1/alerts?limit=1` (the firing alerts; a 503 there, a
//! watchdog that is off, just means no alert list); local, one
//! [`Collector`] tick per read. Emits: [`Sample`]s. Fails: a
//! [`SourceError`] per read, in words for the operator: bad address,
//! unreachable agent, refused token, a status, an answer that is not the
//! agent's. Every request has a timeout, and the interactive view reads on
//! its own thread ([`spawn`]), so a slow agent never freezes the screen.
//! The token never appears in an error (reqwest errors are printed without
//! the URL and scrubbed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use reqwest::Url;

use super::sample::{Sample, parse_alerts};
use crate::config::Config;
use crate::outbound::client::{ClientOptions, client, describe_error};
use crate::outbound::redact::redact;
use crate::pipeline::Collector;

/// One read of the figures.
pub trait Source: Send {
    fn read(&mut self) -> Result<Sample, SourceError>;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SourceError {
    #[error("cannot reach the agent at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the agent at {url} wants a token (401 Unauthorized): give one with --token-file FILE or VMSCOPE_TOKEN"
    )]
    NoToken { url: String },
    #[error(
        "the agent at {url} refused the token (401 Unauthorized): it is unknown, expired or mistyped"
    )]
    BadToken { url: String },
    #[error(
        "the agent at {url} does not let this client read its metrics (403 Forbidden): check the web config's allow-list and the token's scope"
    )]
    Forbidden { url: String },
    #[error("the agent at {url} answered HTTP {status} for {path}")]
    Status {
        url: String,
        status: u16,
        path: &'static str,
    },
    #[error("{url} did not answer like a vmscope agent: {reason}")]
    NotAnAgent { url: String, reason: String },
}

/// `--url`: an http(s) base address, optionally with a path prefix (an
/// agent behind a reverse proxy). Credentials in it are refused: they
/// would show in `ps` and in the header line.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let example = "write e.g. http://127.0.0.1:9847";
    let mut url =
        Url::parse(s).map_err(|e| format!("--url: {s:?} is not a URL ({e}); {example}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "--url: {s:?}: the scheme must be http or https, not {:?}; {example}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("--url: {s:?} has no host; {example}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "--url: {:?} carries credentials: give a token with --token-file or VMSCOPE_TOKEN instead",
            display_url(&url)
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "--url: {s:?}: give the agent's base address, without ?query or #fragment"
        ));
    }
    // A base path ends in '/', so that joins stay under it.
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// The URL as the screen and errors show it: no credentials, no query.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string().trim_end_matches('/').to_owned()
}

/// A running agent's API.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    metrics: Url,
    alerts: Url,
    token: Option<String>,
    shown: String,
}

impl Remote {
    pub fn new(
        base: &Url,
        token: Option<String>,
        ca_file: Option<std::path::PathBuf>,
        timeout: Duration,
    ) -> anyhow::Result<Remote> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = {
            // reqwest's client must be built inside a runtime.
            let _g = rt.enter();
            client(&ClientOptions {
                timeout,
                ca_file,
                insecure_skip_verify: false,
            })?
        };
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| anyhow::anyhow!("--url: cannot add {p} to it: {e}"))
        };
        Ok(Remote {
            metrics: join("metrics.json")?,
            alerts: join("api/v1/alerts?limit=1")?,
            rt,
            http,
            token,
            shown: display_url(base),
        })
    }

    async fn get(&self, url: &Url) -> Result<(u16, bytes::Bytes), SourceError> {
        let mut req = self.http.get(url.clone());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let secrets: Vec<&str> = self.token.iter().map(String::as_str).collect();
        let unreachable = |e: reqwest::Error| SourceError::Unreachable {
            url: self.shown.clone(),
            reason: describe_error(&e.without_url(), &secrets),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(unreachable)?;
        Ok((status, body))
    }

    async fn read_async(&self) -> Result<Sample, SourceError> {
        let (m, a) = tokio::join!(self.get(&self.metrics), self.get(&self.alerts));
        let (status, body) = m?;
        let url = self.shown.clone();
        match status {
            200 => {}
            401 if self.token.is_none() => return Err(SourceError::NoToken { url }),
            401 => return Err(SourceError::BadToken { url }),
            403 => return Err(SourceError::Forbidden { url }),
            status => {
                return Err(SourceError::Status {
                    url,
                    status,
                    path: "/metrics.json",
                });
            }
        }
        let mut sample = Sample::from_metrics_json(&body).map_err(|e| SourceError::NotAnAgent {
            url: url.clone(),
            reason: redact(e.to_string(), &[]),
        })?;
        if sample.at <= 0.0 {
            return Err(SourceError::NotAnAgent {
                url,
                reason: "no vmscope_snapshot_timestamp_seconds in /metrics.json".into(),
            });
        }
        // The alert list is extra: without it (watchdog off, an older
        // agent) the header says "-".
        sample.alerts = match a {
            Ok((200, body)) => parse_alerts(&body).ok(),
            _ => None,
        };
        Ok(sample)
    }
}

impl Source for Remote {
    fn read(&mut self) -> Result<Sample, SourceError> {
        self.rt.block_on(self.read_async())
    }
}

/// The collection `vmscope vms` runs, here once per read.
pub struct Local {
    collector: Collector,
}

impl Local {
    pub fn new(cfg: &Config) -> anyhow::Result<Local> {
        Ok(Local {
            collector: Collector::new(cfg)?,
        })
    }
}

impl Source for Local {
    fn read(&mut self) -> Result<Sample, SourceError> {
        Ok(Sample::from_snapshot(&self.collector.tick()))
    }
}

/// Reads `source` every `every` on its own thread and sends each outcome,
/// until `stop` is set or the receiver is gone.
pub fn spawn(
    mut source: Box<dyn Source>,
    every: Duration,
    tx: Sender<Result<Sample, SourceError>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("top-reader".into())
        .spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                // Sleep in short steps: quitting must not wait a long -d.
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next += every;
                if next < now {
                    // A read longer than the interval: start over from now.
                    next = now + every;
                }
                if tx.send(source.read()).is_err() {
                    break;
                }
            }
        })
}
