//! `type = "webhook"`: POSTs one JSON document per notification to `url`,
//! with an optional `Authorization` header (config `auth_header` or env
//! `VMSCOPE_WEBHOOK_AUTH_HEADER`). The body's schema, version "1", is
//! [`body`] and is documented in docs/watchdog.md.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{BoxFuture, DeliveryError, Sink, SinkError, SinkKind, wrong_type};
use crate::alert::config::{Secret, SinkConfig};
use crate::alert::notification::{Notification, format_time};
use crate::alert::text;

pub const KIND: SinkKind = SinkKind {
    name: "webhook",
    build,
};

/// Version of the JSON body; bumped only on incompatible changes.
pub const SCHEMA_VERSION: &str = "1";

fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    let SinkConfig::Webhook(c) = cfg else {
        return Err(wrong_type(name, "webhook"));
    };
    Ok(Box::new(WebhookSink {
        client: super::http_client(name, &c.delivery())?,
        url: c.url.clone(),
        auth: c.auth_header(),
    }))
}

pub struct WebhookSink {
    client: reqwest::Client,
    url: Secret,
    auth: Option<Secret>,
}

/// The webhook body for `n`, sent at `sent_at`.
pub fn body(n: &Notification, sent_at: SystemTime) -> Value {
    json!({
        "version": SCHEMA_VERSION,
        "source": "vmscope",
        "host": n.host,
        "rule": n.rule,
        "severity": n.severity,
        "status": n.status(),
        "evaluated_at": format_time(n.at),
        "sent_at": format_time(sent_at),
        "title": text::headline(n),
        "text": text::render(n),
        "alerts": n.alerts,
    })
}

impl Sink for WebhookSink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let payload = body(n, SystemTime::now()).to_string();
            let mut req = self
                .client
                .post(self.url.expose())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload);
            // The URL's path and query often carry the secret themselves
            // (`/hooks/<token>`): a receiver echoing them must not leak it.
            let url_secrets = crate::outbound::redact::url_secrets(self.url.expose());
            let mut secrets: Vec<&str> = url_secrets.iter().map(String::as_str).collect();
            if let Some(a) = &self.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a.expose());
                secrets.push(a.expose());
            }
            crate::outbound::client::send(req, &secrets).await
        })
    }
}
