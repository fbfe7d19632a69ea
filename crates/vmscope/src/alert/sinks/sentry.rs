//! `type = "sentry"`: one Sentry event per notification, posted straight to
//! the DSN's envelope endpoint (`{scheme}://{host}{path}/api/{project}/envelope/`)
//! with an `X-Sentry-Auth` header, instead of pulling in the sentry crate
//! and its transport. Firing alerts become `warning` events (`error` for
//! critical, `info` for info rules), recoveries `info` events; tags carry
//! rule, severity, status, host and the scope; the fingerprint groups by
//! (rule, status). The DSN (config `dsn` or env `VMSCOPE_SENTRY_DSN`) holds
//! the project key and is never logged.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::{BoxFuture, Delivery, DeliveryError, Sink, SinkError, SinkSettings, key, missing};
use crate::alert::notification::{Notification, Status, format_time};
use crate::alert::rules::Severity;
use crate::alert::setting::ConfigError;
use crate::alert::text;
use crate::outbound::Secret;

/// The DSN when the file leaves it out.
pub const ENV_DSN: &str = "VMSCOPE_SENTRY_DSN";

http_sink_fields! {
    /// `type = "sentry"`: events posted to the DSN's envelope endpoint.
    pub struct SentrySinkConfig {
        /// Env `VMSCOPE_SENTRY_DSN` when absent.
        #[serde(default)]
        pub dsn: Option<Secret>,
        #[serde(default)]
        pub environment: Option<String>,
    }
}

impl SentrySinkConfig {
    pub fn dsn(&self) -> Option<Secret> {
        self.dsn.clone().or_else(|| Secret::from_env(ENV_DSN))
    }

    /// The DSN, present and parsed, or the error naming `dsn`.
    fn parsed_dsn(&self, name: &str) -> Result<Dsn, ConfigError> {
        let dsn = self.dsn().ok_or_else(|| missing(name, "dsn", ENV_DSN))?;
        Dsn::parse(&dsn).map_err(|e| ConfigError::new(key(name, "dsn"), e.to_string()))
    }
}

impl SinkSettings for SentrySinkConfig {
    const KIND: &'static str = "sentry";
    const ENV_VARS: &'static [&'static str] = &[ENV_DSN];

    fn delivery(&self) -> Delivery {
        self.http_delivery()
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        self.parsed_dsn(name).map(|_| ())
    }

    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        let dsn = self.parsed_dsn(name)?;
        Ok(Box::new(SentrySink {
            client: super::http_client(name, &self.delivery())?,
            dsn,
            environment: self.environment.clone(),
        }))
    }
}

/// A parsed DSN. `Debug` hides the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    pub public_key: String,
    pub secret_key: Option<String>,
    /// `{scheme}://{host}[:{port}]{path}/api/{project}/envelope/`
    pub envelope_url: String,
    pub project_id: String,
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dsn")
            .field("envelope_url", &self.envelope_url)
            .field("public_key", &"***")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("the DSN is not a URL")]
    NotUrl,
    #[error("the DSN must use http or https")]
    Scheme,
    #[error("the DSN has no public key (https://KEY@host/PROJECT)")]
    NoKey,
    #[error("the DSN has no project id at the end of its path")]
    NoProject,
}

impl Dsn {
    /// Parse without echoing the DSN in errors (it holds the key).
    pub fn parse(dsn: &Secret) -> Result<Dsn, DsnError> {
        let url = reqwest::Url::parse(dsn.expose()).map_err(|_| DsnError::NotUrl)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(DsnError::Scheme);
        }
        let host = url.host_str().ok_or(DsnError::NotUrl)?;
        if url.username().is_empty() {
            return Err(DsnError::NoKey);
        }
        let path = url.path().trim_end_matches('/');
        let (prefix, project) = path.rsplit_once('/').ok_or(DsnError::NoProject)?;
        if project.is_empty() {
            return Err(DsnError::NoProject);
        }
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        Ok(Dsn {
            public_key: url.username().to_owned(),
            secret_key: url.password().map(str::to_owned),
            envelope_url: format!(
                "{}://{host}{port}{prefix}/api/{project}/envelope/",
                url.scheme()
            ),
            project_id: project.to_owned(),
        })
    }

    /// The `X-Sentry-Auth` header value.
    pub fn auth_header(&self) -> String {
        let mut h = format!(
            "Sentry sentry_version=7, sentry_client=vmscope/{}, sentry_key={}",
            env!("CARGO_PKG_VERSION"),
            self.public_key
        );
        if let Some(s) = &self.secret_key {
            h.push_str(", sentry_secret=");
            h.push_str(s);
        }
        h
    }
}

pub struct SentrySink {
    client: reqwest::Client,
    dsn: Dsn,
    environment: Option<String>,
}

/// Sentry's level for a notification.
pub fn level(n: &Notification) -> &'static str {
    match (n.status(), n.severity) {
        (Status::Resolved, _) => "info",
        (Status::Firing, Severity::Critical) => "error",
        (Status::Firing, Severity::Warning) => "warning",
        (Status::Firing, Severity::Info) => "info",
    }
}

/// A fresh 32-hex-digit event id.
pub fn event_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(32);
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// The event for `n`.
pub fn event(
    n: &Notification,
    event_id: &str,
    environment: Option<&str>,
    now: SystemTime,
) -> Value {
    let scopes: Vec<&str> = n.alerts.iter().map(|a| a.scope_key.as_str()).collect();
    let mut tags = json!({
        "rule": n.rule,
        "severity": n.severity,
        "status": n.status(),
        "host": n.host,
    });
    if let ([only], Some(map)) = (scopes.as_slice(), tags.as_object_mut()) {
        map.insert("scope".to_owned(), json!(only));
    }
    let mut ev = json!({
        "event_id": event_id,
        "timestamp": format_time(now),
        "platform": "other",
        "level": level(n),
        "logger": "vmscope.watchdog",
        "server_name": n.host,
        "release": concat!("vmscope@", env!("CARGO_PKG_VERSION")),
        "message": { "formatted": text::render(n) },
        "tags": tags,
        "fingerprint": ["vmscope", n.rule, n.status()],
        "extra": { "alerts": n.alerts },
    });
    if let (Some(env), Some(map)) = (environment, ev.as_object_mut()) {
        map.insert("environment".to_owned(), json!(env));
    }
    ev
}

/// An envelope holding one event: header line, item header, payload.
pub fn envelope(event_id: &str, event: &Value, now: SystemTime) -> String {
    let payload = event.to_string();
    let header = json!({ "event_id": event_id, "sent_at": format_time(now) });
    let item =
        json!({ "type": "event", "length": payload.len(), "content_type": "application/json" });
    format!("{header}\n{item}\n{payload}\n")
}

impl Sink for SentrySink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let id = event_id();
            let ev = event(n, &id, self.environment.as_deref(), now);
            let auth = self.dsn.auth_header();
            let req = self
                .client
                .post(&self.dsn.envelope_url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-sentry-envelope",
                )
                .header("X-Sentry-Auth", &auth)
                .body(envelope(&id, &ev, now));
            let mut secrets = vec![self.dsn.public_key.as_str()];
            if let Some(s) = &self.dsn.secret_key {
                secrets.push(s);
            }
            crate::outbound::client::send(req, &secrets).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_forms() {
        let d = Dsn::parse(&Secret::new("https://abc123@o1.ingest.sentry.io/42")).unwrap();
        assert_eq!(
            d.envelope_url,
            "https://o1.ingest.sentry.io/api/42/envelope/"
        );
        assert_eq!(d.public_key, "abc123");
        let d = Dsn::parse(&Secret::new("http://k:s@127.0.0.1:9000/sub/path/7")).unwrap();
        assert_eq!(
            d.envelope_url,
            "http://127.0.0.1:9000/sub/path/api/7/envelope/"
        );
        assert!(d.auth_header().ends_with("sentry_key=k, sentry_secret=s"));
        assert_eq!(
            Dsn::parse(&Secret::new("https://o1.ingest.sentry.io/42")),
            Err(DsnError::NoKey)
        );
        assert_eq!(
            Dsn::parse(&Secret::new("https://k@host/")),
            Err(DsnError::NoProject)
        );
        let e = Dsn::parse(&Secret::new("nonsense secretkey")).unwrap_err();
        assert!(!e.to_string().contains("secretkey"));
        assert!(!format!("{d:?}").contains("k:s"));
    }

    #[test]
    fn event_ids_are_32_hex_and_differ() {
        let a = event_id();
        let b = event_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
