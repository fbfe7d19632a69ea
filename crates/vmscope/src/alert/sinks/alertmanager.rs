//! `type = "alertmanager"`: Alertmanager API v2, `POST {url}/api/v2/alerts`
//! with a JSON list of alerts. Labels identify an alert (alertname = the
//! rule, severity, instance = the host, scope, and vm_id/vm_name,
//! device/mountpoint/fstype or owner_kind/owner_id/owner_name where
//! relevant) and stay the same across its episode so Alertmanager matches
//! the recovery to the firing alert.
//! Firing alerts carry `endsAt = now + 4 x resend interval` and are re-sent
//! every `resend_interval` (at most 1 m), as Prometheus does, so
//! Alertmanager neither times them out while vmscope runs nor keeps them
//! forever if vmscope dies; a recovery carries `endsAt` = its resolve time.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::{BoxFuture, Delivery, DeliveryError, Sink, SinkError, SinkSettings, check_url, key};
use crate::alert::notification::{Alert, Notification, Status, format_time};
use crate::alert::rules::{OwnerKind, Scope};
use crate::alert::setting::{ConfigError, de_duration};
use crate::outbound::Secret;

/// The `Authorization` header when the file leaves it out.
pub const ENV_AUTH_HEADER: &str = "VMSCOPE_ALERTMANAGER_AUTH_HEADER";

fn default_resend_interval() -> Duration {
    Duration::from_secs(60)
}

http_sink_fields! {
    /// `type = "alertmanager"`: Alertmanager API v2.
    pub struct AlertmanagerSinkConfig {
        /// Base URL, e.g. `http://127.0.0.1:9093`.
        pub url: String,
        /// Firing alerts are re-sent this often (capped at 1m, as Prometheus
        /// does) so Alertmanager does not time them out.
        #[serde(default = "default_resend_interval", deserialize_with = "de_duration")]
        pub resend_interval: Duration,
        /// Env `VMSCOPE_ALERTMANAGER_AUTH_HEADER` when absent.
        #[serde(default)]
        pub auth_header: Option<Secret>,
    }
}

impl AlertmanagerSinkConfig {
    pub fn auth_header(&self) -> Option<Secret> {
        self.auth_header
            .clone()
            .or_else(|| Secret::from_env(ENV_AUTH_HEADER))
    }
    /// What is actually used: at most one minute, as Prometheus re-sends.
    pub fn effective_resend_interval(&self) -> Duration {
        self.resend_interval.min(Duration::from_secs(60))
    }
}

impl SinkSettings for AlertmanagerSinkConfig {
    const KIND: &'static str = "alertmanager";
    const ENV_VARS: &'static [&'static str] = &[ENV_AUTH_HEADER];

    fn delivery(&self) -> Delivery {
        self.http_delivery()
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        check_url(&key(name, "url"), &self.url)?;
        if self.resend_interval.is_zero() {
            return Err(ConfigError::new(
                key(name, "resend_interval"),
                "must be longer than 0s",
            ));
        }
        Ok(())
    }

    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(AlertmanagerSink {
            client: super::http_client(name, &self.delivery())?,
            url: format!("{}/api/v2/alerts", self.url.trim_end_matches('/')),
            resend: self.effective_resend_interval(),
            auth: self.auth_header(),
        }))
    }
}

pub struct AlertmanagerSink {
    client: reqwest::Client,
    url: String,
    resend: Duration,
    auth: Option<Secret>,
}

/// The labels of `a`: fixed for the whole episode.
pub fn labels(a: &Alert) -> Map<String, Value> {
    let mut l = Map::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            l.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("alertname", &a.rule);
    put("severity", a.severity.as_str());
    put("instance", &a.host);
    put("job", "vmscope");
    put("scope", &a.scope_key);
    put("metric", &a.metric);
    match &a.scope {
        Scope::Host => {}
        Scope::Filesystem {
            mountpoint,
            device,
            fstype,
        } => {
            put("mountpoint", mountpoint);
            put("device", device);
            put("fstype", fstype);
        }
        Scope::Vm { vm_id, vm_name } => {
            put("vm_id", vm_id);
            put("vm_name", vm_name);
        }
        Scope::Owner {
            owner_kind,
            owner_id,
            owner_name,
        } => {
            put(
                "owner_kind",
                match owner_kind {
                    OwnerKind::User => "user",
                    OwnerKind::Project => "project",
                },
            );
            put("owner_id", owner_id);
            put("owner_name", owner_name.as_deref().unwrap_or_default());
        }
    }
    l
}

/// The POST body for `n` at `now`.
pub fn body(n: &Notification, now: SystemTime, resend: Duration) -> Value {
    let valid_until = now + resend * 4;
    let alerts: Vec<Value> = n
        .alerts
        .iter()
        .map(|a| {
            let ends = match (a.status, a.resolved_at) {
                (Status::Resolved, Some(t)) => t,
                (Status::Resolved, None) => now,
                (Status::Firing, _) => valid_until,
            };
            let mut annotations = Map::new();
            annotations.insert("summary".to_owned(), json!(a.summary));
            annotations.insert("threshold".to_owned(), json!(a.threshold.to_string()));
            if let Some(v) = a.value {
                annotations.insert("value".to_owned(), json!(v.to_string()));
            }
            json!({
                "labels": labels(a),
                "annotations": annotations,
                "startsAt": format_time(a.started_at),
                "endsAt": format_time(ends),
            })
        })
        .collect();
    Value::Array(alerts)
}

impl Sink for AlertmanagerSink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body(n, SystemTime::now(), self.resend).to_string());
            let mut secrets = Vec::new();
            if let Some(a) = &self.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a.expose());
                secrets.push(a.expose());
            }
            crate::outbound::client::send(req, &secrets).await
        })
    }

    fn resend_interval(&self) -> Option<Duration> {
        Some(self.resend)
    }
}
