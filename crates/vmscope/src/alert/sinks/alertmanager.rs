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

use super::{BoxFuture, DeliveryError, Sink, SinkError, SinkKind, wrong_type};
use crate::alert::config::{Secret, SinkConfig};
use crate::alert::notification::{Alert, Notification, Status, format_time};
use crate::alert::rules::{OwnerKind, Scope};

pub const KIND: SinkKind = SinkKind {
    name: "alertmanager",
    build,
};

fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    let SinkConfig::Alertmanager(c) = cfg else {
        return Err(wrong_type(name, "alertmanager"));
    };
    Ok(Box::new(AlertmanagerSink {
        client: super::http_client(name, &c.delivery())?,
        url: format!("{}/api/v2/alerts", c.url.trim_end_matches('/')),
        resend: c.effective_resend_interval(),
        auth: c.auth_header(),
    }))
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
