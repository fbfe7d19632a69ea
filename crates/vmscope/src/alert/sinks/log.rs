//! `type = "log"`: one structured `tracing` event per notification, target
//! `vmscope::alert`. Firing: `warn` (`error` for critical); resolved: `info`.
//! Never fails. On by default as the sink named `log`.

use serde::Deserialize;

use super::{BoxFuture, Delivery, DeliveryError, Sink, SinkError, SinkSettings};
use crate::alert::notification::{Notification, Status};
use crate::alert::rules::Severity;
use crate::alert::setting::default_true;
use crate::alert::text;

/// `type = "log"`: structured `tracing` events (target `vmscope::alert`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl SinkSettings for LogSinkConfig {
    const KIND: &'static str = "log";

    /// Nothing is sent anywhere: only `enabled` means something.
    fn delivery(&self) -> Delivery {
        Delivery {
            enabled: self.enabled,
            ..Delivery::default()
        }
    }

    fn build(&self, _name: &str) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(LogSink))
    }
}

pub struct LogSink;

impl Sink for LogSink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let scopes: Vec<&str> = n.alerts.iter().map(|a| a.scope_key.as_str()).collect();
            let scopes = scopes.join(",");
            let message = text::render(n);
            match (n.status(), n.severity) {
                (Status::Firing, Severity::Critical) => tracing::error!(
                    target: "vmscope::alert", rule = %n.rule, severity = %n.severity,
                    status = "firing", host = %n.host, scopes = %scopes, "{message}"
                ),
                (Status::Firing, _) => tracing::warn!(
                    target: "vmscope::alert", rule = %n.rule, severity = %n.severity,
                    status = "firing", host = %n.host, scopes = %scopes, "{message}"
                ),
                (Status::Resolved, _) => tracing::info!(
                    target: "vmscope::alert", rule = %n.rule, severity = %n.severity,
                    status = "resolved", host = %n.host, scopes = %scopes, "{message}"
                ),
            }
            Ok(())
        })
    }
}
