//! `type = "log"`: one structured `tracing` event per notification, target
//! `vmscope::alert`. Firing: `warn` (`error` for critical); resolved: `info`.
//! Never fails. On by default as the sink named `log`.

use super::{BoxFuture, DeliveryError, Sink, SinkError, SinkKind, wrong_type};
use crate::alert::config::SinkConfig;
use crate::alert::notification::{Notification, Status};
use crate::alert::rules::Severity;
use crate::alert::text;

pub const KIND: SinkKind = SinkKind { name: "log", build };

fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    match cfg {
        SinkConfig::Log(_) => Ok(Box::new(LogSink)),
        _ => Err(wrong_type(name, "log")),
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
