//! `type = "webhook"`: POSTs one JSON document per notification to `url`,
//! with an optional `Authorization` header (config `auth_header` or env
//! `VMSCOPE_WEBHOOK_AUTH_HEADER`). The body's schema, version "1", is
//! [`body`] and is documented in docs/watchdog.md.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{BoxFuture, Delivery, DeliveryError, Sink, SinkError, SinkSettings, check_url, key};
use crate::alert::notification::{Notification, format_time};
use crate::alert::setting::ConfigError;
use crate::alert::text;
use crate::outbound::Secret;

/// The `Authorization` header when the file leaves it out.
pub const ENV_AUTH_HEADER: &str = "VMSCOPE_WEBHOOK_AUTH_HEADER";

/// Version of the JSON body; bumped only on incompatible changes.
pub const SCHEMA_VERSION: &str = "1";

http_sink_fields! {
    /// `type = "webhook"`: POST of the documented JSON body to `url`.
    pub struct WebhookSinkConfig {
        /// A secret: chat-service webhook URLs carry their token in the path.
        pub url: Secret,
        /// Value of the `Authorization` header (env `VMSCOPE_WEBHOOK_AUTH_HEADER`).
        #[serde(default)]
        pub auth_header: Option<Secret>,
    }
}

impl WebhookSinkConfig {
    pub fn auth_header(&self) -> Option<Secret> {
        self.auth_header
            .clone()
            .or_else(|| Secret::from_env(ENV_AUTH_HEADER))
    }
}

impl SinkSettings for WebhookSinkConfig {
    const KIND: &'static str = "webhook";
    const ENV_VARS: &'static [&'static str] = &[ENV_AUTH_HEADER];

    fn delivery(&self) -> Delivery {
        self.http_delivery()
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        check_url(&key(name, "url"), self.url.expose())
    }

    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(WebhookSink {
            client: super::http_client(name, &self.delivery())?,
            url: self.url.clone(),
            auth: self.auth_header(),
        }))
    }
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
