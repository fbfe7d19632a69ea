//! Notification sinks: one file per sink (its config struct, implementing
//! [`SinkSettings`], and the sink), one line per sink in the sink table
//! (which generates [`SinkConfig`]), and the [`Dispatcher`] that runs each
//! sink isolated.
//!
//! Each configured sink gets its own tokio task and its own bounded queue.
//! The watchdog loop only ever pushes onto queues (never awaits a sink), so
//! a slow or dead sink delays neither collection, nor evaluation, nor the
//! other sinks. Per notification a sink's task:
//! - delivers it; HTTP sinks time out every request (`timeout`);
//! - on a retryable failure (connect error, timeout, HTTP 5xx or 429)
//!   retries with exponential backoff from 1 s up to `max_backoff`,
//!   honouring `Retry-After`, until it succeeds: nothing is given up while
//!   the sink is merely unreachable (queue, backoff, client and redaction
//!   are [`crate::outbound`]'s, shared with the metric pushers);
//! - on any other 4xx gives up at once (`result="rejected"`, logged once):
//!   the request itself is wrong and repeating it cannot help.
//!
//! Every notification is first written to the state database's outbox, one
//! row per sink, in the same transaction as the episode change that caused
//! it; the row goes when the sink's final outcome is recorded in the
//! notification log. A notification still undelivered at shutdown (the
//! sink is down) stays in the outbox and is queued again, in order, when
//! the agent starts ([`Dispatcher::requeue`]): an unreachable sink loses
//! nothing across restarts either. Without a database (the watchdog runs in
//! memory) queues are all there is.
//!
//! While a sink is down its queue fills; beyond `queue_capacity` the oldest
//! queued notification is dropped (resolved-only notifications first),
//! counted as `result="dropped"` and logged as `dropped_queue_full`. Sinks that want the firing set re-sent
//! (Alertmanager, [`Sink::resend_interval`]) get it re-sent from the task's
//! own view of what is firing, which is seeded at start with the episodes
//! restored from the store.
//!
//! Emits: `vmscope_alert_notifications_total{sink,result}` via
//! [`AlertMetrics`], a `notification_log` row per final outcome, and logs
//! that never hold a URL or a secret (see [`crate::outbound::client::describe_error`]).

/// Fields shared by the HTTP sinks, for a sink file's config struct;
/// repeated in each struct because serde's `flatten` does not combine with
/// `deny_unknown_fields`. Adds `http_delivery()`.
macro_rules! http_sink_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            #[serde(default = "crate::alert::setting::default_true")]
            pub enabled: bool,
            /// Notifications waiting for this sink; beyond it the oldest go.
            #[serde(default = "crate::alert::sinks::default_queue_capacity")]
            pub queue_capacity: usize,
            /// Whole-request timeout.
            #[serde(
                default = "crate::alert::sinks::default_http_timeout",
                deserialize_with = "crate::alert::setting::de_duration"
            )]
            pub timeout: std::time::Duration,
            /// Retry backoff doubles from 1s up to this.
            #[serde(
                default = "crate::alert::sinks::default_max_backoff",
                deserialize_with = "crate::alert::setting::de_duration"
            )]
            pub max_backoff: std::time::Duration,
            /// Extra PEM CA certificate(s) trusted for this sink, on top of
            /// the system roots.
            #[serde(default)]
            pub ca_file: Option<std::path::PathBuf>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }
        impl $name {
            pub fn http_delivery(&self) -> crate::alert::sinks::Delivery {
                crate::alert::sinks::Delivery {
                    enabled: self.enabled,
                    queue_capacity: self.queue_capacity,
                    timeout: self.timeout,
                    max_backoff: self.max_backoff,
                    ca_file: self.ca_file.clone(),
                }
            }
        }
    };
}

pub mod alertmanager;
pub mod log;
pub mod sentry;
pub mod telegram;
pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use serde::{Deserialize, Deserializer};

use super::metrics::{AlertMetrics, DeliveryResult};
use super::notification::{Alert, Notification, Status, Transition};
use super::setting::ConfigError;
use crate::error::ErrorChain;
use crate::outbound::{self, Backoff, BoundedQueue, ClientError, ClientOptions};
use crate::store::{EpisodeWrite, NotificationLogEntry, OutboxRow, OutboxWrite, Store};

/// A notification waiting for its sink, and its outbox row (`None` when it
/// is not persisted: no database, or the write failed).
#[derive(Debug, Clone)]
struct Queued {
    n: Notification,
    outbox_id: Option<i64>,
}

/// The `notification_log.result` of a notification given up without
/// delivery; the metric counts all of them as `dropped`.
pub mod dropped {
    /// The sink's queue overflowed.
    pub const QUEUE_FULL: &str = "dropped_queue_full";
    /// Shutdown came first and there was no outbox to keep it in.
    pub const SHUTDOWN: &str = "dropped_shutdown";
    /// Found in the outbox for a sink that is no longer configured.
    pub const SINK_REMOVED: &str = "dropped_sink_removed";
    /// Found in the outbox but unreadable (written by a different build).
    pub const UNREADABLE: &str = "dropped_unreadable";
}

fn log_entry(
    sink: &str,
    n: &Notification,
    result: &str,
    error: Option<String>,
) -> NotificationLogEntry {
    NotificationLogEntry {
        at: SystemTime::now(),
        sink: sink.to_owned(),
        rule: n.rule.clone(),
        status: n.status().as_str().to_owned(),
        result: result.to_owned(),
        alerts: u32::try_from(n.alerts.len()).unwrap_or(u32::MAX),
        error,
    }
}

/// Record a final outcome (and release its outbox row); failures are
/// logged with their cause, never fatal.
async fn finish(store: Option<&Store>, outbox_id: Option<i64>, entry: NotificationLogEntry) {
    let Some(store) = store else { return };
    let sink = entry.sink.clone();
    if let Err(e) = store.finish_delivery(outbox_id, entry).await {
        tracing::warn!(sink = %sink, error = %ErrorChain(&e), "cannot record the delivery in the state database");
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use crate::outbound::DeliveryError;

/// Building a sink failed (bad CA file, bad URL, missing secret).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("watchdog.sinks.{sink}.ca_file: cannot use {path}: {reason}")]
    CaFile {
        sink: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("watchdog.sinks.{sink}: cannot build the HTTP client: {reason}")]
    Client { sink: String, reason: String },
}

/// A place notifications go.
pub trait Sink: Send + Sync {
    /// One attempt to deliver `n`. Must finish in bounded time.
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Re-send the firing set this often (receivers that expire alerts
    /// they are not reminded of). `None`: only transitions are sent.
    fn resend_interval(&self) -> Option<Duration> {
        None
    }
}

/// Settings every sink shares: queue, retries, HTTP timeout, extra CA.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub enabled: bool,
    pub queue_capacity: usize,
    pub timeout: Duration,
    pub max_backoff: Duration,
    pub ca_file: Option<PathBuf>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            enabled: true,
            queue_capacity: default_queue_capacity(),
            timeout: default_http_timeout(),
            max_backoff: default_max_backoff(),
            ca_file: None,
        }
    }
}

pub(crate) fn default_queue_capacity() -> usize {
    256
}
pub(crate) fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

/// What a sink's config struct (in the sink's own file) provides.
pub trait SinkSettings: Sized + serde::de::DeserializeOwned {
    /// The `type` value that selects this sink.
    const KIND: &'static str;
    /// Environment variables the sink reads secrets from: the config loader
    /// must not take them for configuration keys.
    const ENV_VARS: &'static [&'static str] = &[];
    fn delivery(&self) -> Delivery;
    /// Checks beyond serde's (URLs, secrets from the file or the
    /// environment) for the enabled sink `name`.
    fn validate(&self, _name: &str) -> Result<(), ConfigError> {
        Ok(())
    }
    /// The running sink. Fails like `validate`, or on an unusable CA file.
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError>;
}

/// The one table of sinks: `Variant(config struct)`, the struct
/// implementing [`SinkSettings`] in the sink's own file. Generates
/// [`SinkConfig`] and its dispatch, so that adding a sink is its file and
/// one line here.
macro_rules! sink_table {
    ($($variant:ident($ty:ty),)*) => {
        /// `[watchdog.sinks.NAME]`, selected by `type`.
        #[derive(Debug, Clone)]
        pub enum SinkConfig {
            $($variant($ty),)*
        }

        impl SinkConfig {
            /// Every `type` value, in table order.
            pub const KINDS: &'static [&'static str] = &[$(<$ty as SinkSettings>::KIND,)*];

            pub fn kind(&self) -> &'static str {
                match self {
                    $(SinkConfig::$variant(_) => <$ty as SinkSettings>::KIND,)*
                }
            }

            pub fn delivery(&self) -> Delivery {
                match self {
                    $(SinkConfig::$variant(c) => c.delivery(),)*
                }
            }

            fn check(&self, name: &str) -> Result<(), ConfigError> {
                match self {
                    $(SinkConfig::$variant(c) => c.validate(name),)*
                }
            }

            fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
                match self {
                    $(SinkConfig::$variant(c) => c.build(name),)*
                }
            }

            fn parse(kind: &str, table: toml::Table) -> Result<SinkConfig, String> {
                $(if kind == <$ty as SinkSettings>::KIND {
                    return parse_settings::<$ty>(table).map(SinkConfig::$variant);
                })*
                Err(format!(
                    "unknown sink type {kind:?} (known: {})",
                    Self::KINDS.join(", ")
                ))
            }
        }

        /// Every environment variable the sinks read themselves.
        pub fn env_vars() -> Vec<&'static str> {
            [$(<$ty as SinkSettings>::ENV_VARS,)*].concat()
        }
    };
}

sink_table! {
    Log(log::LogSinkConfig),
    Webhook(webhook::WebhookSinkConfig),
    Telegram(telegram::TelegramSinkConfig),
    Sentry(sentry::SentrySinkConfig),
    Alertmanager(alertmanager::AlertmanagerSinkConfig),
}

impl SinkConfig {
    pub fn enabled(&self) -> bool {
        self.delivery().enabled
    }
}

/// Read `type` first, then the variant's own struct, so that an error
/// names the field (`queue_capacity: invalid value: integer -1, expected
/// usize`): serde's internally tagged enums lose the path inside the variant.
impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "type: expected a string such as \"webhook\", found {}",
                    other.type_str()
                )));
            }
            None => return Err(D::Error::missing_field("type")),
        };
        SinkConfig::parse(&kind, table).map_err(D::Error::custom)
    }
}

/// Deserialize one sink's struct, the failing field's path in front.
fn parse_settings<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim_end();
        if path.is_empty() || path == "." {
            message.to_owned()
        } else {
            format!("{path}: {message}")
        }
    })
}

/// The dotted key of `field` of the sink `name`.
pub(crate) fn key(name: &str, field: &str) -> String {
    format!("watchdog.sinks.{name}.{field}")
}

/// A secret (or chat id) given neither in the file nor in `env`.
pub(crate) fn missing(name: &str, field: &str, env: &str) -> ConfigError {
    ConfigError::new(
        key(name, field),
        format!("missing (set it here or in {env})"),
    )
}

/// An `http(s)` URL with a host.
pub(crate) fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        Ok(u) => Err(ConfigError::new(
            key,
            format!("{:?} is not an http(s) URL with a host", u.scheme()),
        )),
        Err(e) => Err(ConfigError::new(key, format!("not a URL: {e}"))),
    }
}

/// Every check of the sink `name` that serde cannot do: its name, the
/// shared delivery settings, then the sink's own.
pub fn validate(name: &str, sink: &SinkConfig) -> Result<(), ConfigError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ConfigError::new(
            format!("watchdog.sinks.{name}"),
            "a sink name is 1-64 characters of A-Z, a-z, 0-9, '_', '-'",
        ));
    }
    if !sink.enabled() {
        return Ok(());
    }
    let d = sink.delivery();
    if d.queue_capacity == 0 {
        return Err(ConfigError::new(
            key(name, "queue_capacity"),
            "must be at least 1",
        ));
    }
    if d.timeout.is_zero() {
        return Err(ConfigError::new(
            key(name, "timeout"),
            "must be longer than 0s",
        ));
    }
    if d.max_backoff < Duration::from_secs(1) {
        return Err(ConfigError::new(
            key(name, "max_backoff"),
            "must be at least 1s",
        ));
    }
    if let Some(ca) = &d.ca_file
        && let Err(e) = std::fs::metadata(ca)
    {
        return Err(ConfigError::new(
            key(name, "ca_file"),
            format!("cannot read {}: {e}", ca.display()),
        ));
    }
    sink.check(name)
}

/// Build the sink `name` from its config.
pub fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    cfg.build(name)
}

/// The HTTP client of the sink `name` (see [`crate::outbound::client`]).
fn http_client(name: &str, d: &Delivery) -> Result<reqwest::Client, SinkError> {
    let opts = ClientOptions {
        timeout: d.timeout,
        ca_file: d.ca_file.clone(),
        insecure_skip_verify: false,
    };
    outbound::client::client(&opts).map_err(|e| match e {
        ClientError::CaFile { path, reason } => SinkError::CaFile {
            sink: name.to_owned(),
            path,
            reason,
        },
        ClientError::Build { reason } => SinkError::Client {
            sink: name.to_owned(),
            reason,
        },
    })
}

/// A sink's queue: recovery notices are the cheapest to lose.
type Queue = BoundedQueue<Queued>;

fn new_queue(capacity: usize) -> Queue {
    BoundedQueue::new(capacity, |q: &Queued| q.n.status() == Status::Resolved)
}

struct Running {
    name: String,
    queue: Arc<Queue>,
    task: JoinHandle<()>,
}

/// Fans notifications out to the sinks' queues.
pub struct Dispatcher {
    sinks: Vec<Running>,
    stopping: watch::Sender<bool>,
    metrics: Arc<AlertMetrics>,
    store: Option<Store>,
}

/// A built sink ready to run.
pub struct SinkSpec {
    pub name: String,
    pub sink: Box<dyn Sink>,
    pub delivery: Delivery,
}

impl Dispatcher {
    /// Start one task per sink. `firing` seeds re-sending sinks with what
    /// was firing before a restart, each alert with the sinks its rule
    /// notifies (`None`: all).
    pub fn start(
        specs: Vec<SinkSpec>,
        metrics: Arc<AlertMetrics>,
        store: Option<Store>,
        firing: Vec<(Alert, Option<Vec<String>>)>,
    ) -> Dispatcher {
        let (stopping, stop_rx) = watch::channel(false);
        let sinks = specs
            .into_iter()
            .map(|spec| {
                let queue = Arc::new(new_queue(spec.delivery.queue_capacity));
                let worker = Worker {
                    name: spec.name.clone(),
                    sink: spec.sink,
                    max_backoff: spec.delivery.max_backoff,
                    queue: queue.clone(),
                    metrics: metrics.clone(),
                    store: store.clone(),
                    stopping: stop_rx.clone(),
                    firing: firing
                        .iter()
                        .filter(|(_, sinks)| sinks.as_ref().is_none_or(|l| l.contains(&spec.name)))
                        .map(|(a, _)| ((a.rule.clone(), a.scope_key.clone()), a.clone()))
                        .collect(),
                };
                Running {
                    name: spec.name,
                    queue,
                    task: tokio::spawn(worker.run()),
                }
            })
            .collect();
        Dispatcher {
            sinks,
            stopping,
            metrics,
            store,
        }
    }

    /// Record `writes` and the outbox rows for `notes` in one transaction,
    /// then hand each notification to every sink it is meant for. Waits for
    /// the database only, never for a sink. If the database write fails the
    /// notifications are still queued (in memory only) and the failure is
    /// logged with its cause.
    pub async fn dispatch(&self, notes: &[Notification], writes: Vec<EpisodeWrite>) {
        let mut targets: Vec<(usize, &Running)> = Vec::new();
        let mut outbox = Vec::new();
        for (i, n) in notes.iter().enumerate() {
            let payload = match serde_json::to_string(n) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(rule = %n.rule, error = %e, "cannot serialize a notification for the outbox; it is queued in memory only");
                    None
                }
            };
            for s in self.sinks.iter().filter(|s| n.goes_to(&s.name)) {
                if let Some(p) = &payload {
                    outbox.push((
                        targets.len(),
                        OutboxWrite {
                            sink: s.name.clone(),
                            created_at: n.at,
                            payload: p.clone(),
                        },
                    ));
                }
                targets.push((i, s));
            }
        }
        let mut ids: Vec<Option<i64>> = vec![None; targets.len()];
        if let Some(store) = &self.store {
            let (slots, rows): (Vec<usize>, Vec<OutboxWrite>) = outbox.into_iter().unzip();
            match store.record(writes, rows).await {
                Ok(got) => {
                    for (slot, id) in slots.into_iter().zip(got) {
                        if let Some(x) = ids.get_mut(slot) {
                            *x = Some(id);
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    error = %ErrorChain(&e),
                    "cannot record alert state and queued notifications; a restart may notify again or lose them"
                ),
            }
        }
        for ((i, s), outbox_id) in targets.into_iter().zip(ids) {
            if let Some(n) = notes.get(i) {
                self.enqueue(s, n.clone(), outbox_id).await;
            }
        }
    }

    /// Queue what the outbox held at start, oldest first, ahead of
    /// anything new. Rows for sinks no longer configured, or that cannot be
    /// read, get their final outcome recorded instead.
    pub async fn requeue(&self, rows: Vec<OutboxRow>) {
        let mut queued = 0usize;
        for row in rows {
            let parsed = serde_json::from_str::<Notification>(&row.payload);
            let sink = self.sinks.iter().find(|s| s.name == row.sink);
            match (parsed, sink) {
                (Ok(n), Some(s)) => {
                    self.enqueue(s, n, Some(row.id)).await;
                    queued += 1;
                }
                (Ok(n), None) => {
                    tracing::info!(sink = %row.sink, rule = %n.rule, "undelivered notification for a sink that is no longer configured; dropped");
                    let entry = log_entry(&row.sink, &n, dropped::SINK_REMOVED, None);
                    finish(self.store.as_ref(), Some(row.id), entry).await;
                }
                (Err(e), _) => {
                    tracing::warn!(sink = %row.sink, outbox_id = row.id, error = %e, "undelivered notification unreadable; dropped");
                    let entry = NotificationLogEntry {
                        at: SystemTime::now(),
                        sink: row.sink.clone(),
                        rule: String::new(),
                        status: String::new(),
                        result: dropped::UNREADABLE.to_owned(),
                        alerts: 0,
                        error: Some(e.to_string()),
                    };
                    finish(self.store.as_ref(), Some(row.id), entry).await;
                }
            }
        }
        if queued > 0 {
            tracing::info!(
                notifications = queued,
                "queued undelivered notifications from before the restart"
            );
        }
    }

    /// Push onto one sink's queue; a notification pushed out of a full
    /// queue gets its final outcome recorded.
    async fn enqueue(&self, s: &Running, n: Notification, outbox_id: Option<i64>) {
        let Some(dropped) = s.queue.push(Queued { n, outbox_id }) else {
            return;
        };
        self.metrics.count(&s.name, DeliveryResult::Dropped);
        tracing::warn!(
            sink = %s.name,
            rule = %dropped.n.rule,
            queued = s.queue.len(),
            "sink queue full: dropped the oldest notification"
        );
        let entry = log_entry(
            &s.name,
            &dropped.n,
            dropped::QUEUE_FULL,
            Some("sink queue full".to_owned()),
        );
        finish(self.store.as_ref(), dropped.outbox_id, entry).await;
    }

    /// Names of the running sinks.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.name.clone()).collect()
    }

    /// Let every sink deliver what is queued (one attempt each, no more
    /// backoff), for at most `timeout`; then stop them.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stopping.send(true);
        for s in &self.sinks {
            s.queue.close();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for s in self.sinks {
            let mut task = s.task;
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(_) => {}
                Err(_) => {
                    let left = s.queue.len();
                    task.abort();
                    tracing::warn!(
                        sink = %s.name,
                        queued = left,
                        "sink did not finish within the shutdown timeout; stopped"
                    );
                }
            }
        }
    }
}

struct Worker {
    name: String,
    sink: Box<dyn Sink>,
    max_backoff: Duration,
    queue: Arc<Queue>,
    metrics: Arc<AlertMetrics>,
    store: Option<Store>,
    stopping: watch::Receiver<bool>,
    /// What this sink was last told is firing, for re-sending.
    firing: BTreeMap<(String, String), Alert>,
}

impl Worker {
    async fn run(mut self) {
        let resend = self.sink.resend_interval();
        let mut ticker = tokio::time::interval(resend.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: re-send restored alerts at once.
        loop {
            tokio::select! {
                q = self.queue.pop() => match q {
                    Some(q) => {
                        self.track(&q.n);
                        self.deliver_with_retry(&q).await;
                        // The receiver just heard the latest state.
                        ticker.reset();
                    }
                    None => break,
                },
                _ = ticker.tick(), if resend.is_some() && !self.firing.is_empty() => {
                    self.resend().await;
                }
            }
        }
    }

    fn track(&mut self, n: &Notification) {
        for a in &n.alerts {
            let key = (a.rule.clone(), a.scope_key.clone());
            match a.status {
                Status::Firing => {
                    self.firing.insert(key, a.clone());
                }
                Status::Resolved => {
                    self.firing.remove(&key);
                }
            }
        }
    }

    /// Re-send everything firing, one notification per rule, one attempt:
    /// the next re-send is the retry.
    async fn resend(&mut self) {
        let now = SystemTime::now();
        let mut by_rule: BTreeMap<&str, Vec<Alert>> = BTreeMap::new();
        for a in self.firing.values() {
            by_rule.entry(a.rule.as_str()).or_default().push(Alert {
                transition: Transition::Repeat,
                ..a.clone()
            });
        }
        let notes: Vec<Notification> = by_rule
            .into_iter()
            .filter_map(|(rule, alerts)| {
                let first = alerts.first()?;
                Some(Notification {
                    rule: rule.to_owned(),
                    severity: first.severity,
                    host: first.host.clone(),
                    at: now,
                    sinks: None,
                    alerts,
                })
            })
            .collect();
        for n in &notes {
            match self.sink.deliver(n).await {
                Ok(()) => self.metrics.count(&self.name, DeliveryResult::Success),
                Err(e) => {
                    self.metrics.count(&self.name, DeliveryResult::Retry);
                    tracing::debug!(sink = %self.name, rule = %n.rule, error = %e, "re-send failed; next re-send retries");
                }
            }
        }
    }

    async fn deliver_with_retry(&mut self, q: &Queued) {
        let n = &q.n;
        let mut backoff = Backoff::new(self.max_backoff);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let (result, error) = match self.sink.deliver(n).await {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(sink = %self.name, rule = %n.rule, attempts = attempt, "sink delivered after retrying");
                    }
                    (DeliveryResult::Success, None)
                }
                Err(DeliveryError::Rejected(msg)) => {
                    tracing::warn!(sink = %self.name, rule = %n.rule, error = %msg, "sink rejected the notification; not retrying");
                    (DeliveryResult::Rejected, Some(msg))
                }
                Err(DeliveryError::Retryable {
                    message,
                    retry_after,
                }) => {
                    self.metrics.count(&self.name, DeliveryResult::Retry);
                    if *self.stopping.borrow() {
                        if q.outbox_id.is_some() {
                            // Not a final outcome: the next start delivers it.
                            tracing::warn!(sink = %self.name, rule = %n.rule, error = %message, "sink failed during shutdown; notification kept in the outbox for the next start");
                            return;
                        }
                        tracing::warn!(sink = %self.name, rule = %n.rule, error = %message, "sink failed during shutdown; notification dropped");
                        (DeliveryResult::Dropped, Some(message))
                    } else {
                        if attempt == 1 {
                            tracing::warn!(sink = %self.name, rule = %n.rule, error = %message, "sink delivery failed; retrying with backoff");
                        } else {
                            tracing::debug!(sink = %self.name, rule = %n.rule, attempt, error = %message, "sink delivery failed again");
                        }
                        let pause = backoff.pause(retry_after);
                        let mut stop = self.stopping.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                        continue;
                    }
                }
            };
            self.metrics.count(&self.name, result);
            let logged = match result {
                DeliveryResult::Dropped => dropped::SHUTDOWN,
                other => other.as_str(),
            };
            let entry = log_entry(&self.name, n, logged, error);
            finish(self.store.as_ref(), q.outbox_id, entry).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::alert::notification::Context;
    use crate::alert::rules::{Scope, Severity};

    fn note(rule: &str, status: Status) -> Notification {
        Notification {
            rule: rule.to_owned(),
            severity: Severity::Warning,
            host: "h".to_owned(),
            at: UNIX_EPOCH,
            sinks: None,
            alerts: vec![Alert {
                rule: rule.to_owned(),
                host: "h".to_owned(),
                metric: "host_cpu_ratio".to_owned(),
                severity: Severity::Warning,
                scope: Scope::Host,
                scope_key: "host".to_owned(),
                status,
                transition: match status {
                    Status::Firing => Transition::Fired,
                    Status::Resolved => Transition::Resolved,
                },
                value: Some(1.0),
                threshold: 0.8,
                started_at: UNIX_EPOCH,
                resolved_at: None,
                summary: String::new(),
                context: Context::default(),
            }],
        }
    }

    fn queued(rule: &str, status: Status) -> Queued {
        Queued {
            n: note(rule, status),
            outbox_id: None,
        }
    }

    #[tokio::test]
    async fn full_queue_drops_resolved_notices_first_then_the_oldest() {
        let q = new_queue(3);
        assert!(q.push(queued("a", Status::Firing)).is_none());
        assert!(q.push(queued("b", Status::Resolved)).is_none());
        assert!(q.push(queued("c", Status::Firing)).is_none());
        assert_eq!(q.push(queued("d", Status::Firing)).unwrap().n.rule, "b");
        assert_eq!(q.push(queued("e", Status::Firing)).unwrap().n.rule, "a");
        q.close();
        let mut left = Vec::new();
        while let Some(q) = q.pop().await {
            left.push(q.n.rule);
        }
        assert_eq!(left, ["c", "d", "e"]);
    }
}
