//! `type = "telegram"`: Bot API `sendMessage` (POST
//! `{api_url}/bot<token>/sendMessage`, JSON `{chat_id, text,
//! disable_web_page_preview}`), plain text (no parse mode, so no escaping
//! rules to get wrong). The token is in the URL: errors are logged without
//! it (`.without_url()` and scrubbing). TLS is always verified.

use serde_json::{Value, json};

use super::{BoxFuture, DeliveryError, Sink, SinkError, SinkKind, wrong_type};
use crate::alert::config::{ConfigError, Secret, SinkConfig};
use crate::alert::notification::Notification;
use crate::alert::text;

pub const KIND: SinkKind = SinkKind {
    name: "telegram",
    build,
};

/// Telegram's limit on a message's text, in characters.
pub const MAX_TEXT: usize = 4096;

fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    let SinkConfig::Telegram(c) = cfg else {
        return Err(wrong_type(name, "telegram"));
    };
    let missing = |field: &str, env: &str| {
        SinkError::Config(ConfigError {
            key: format!("watchdog.sinks.{name}.{field}"),
            message: format!("missing (set it here or in {env})"),
        })
    };
    let token = c
        .bot_token()
        .ok_or_else(|| missing("bot_token", crate::alert::config::ENV_TELEGRAM_BOT_TOKEN))?;
    let chat_id = c
        .chat_id()
        .ok_or_else(|| missing("chat_id", crate::alert::config::ENV_TELEGRAM_CHAT_ID))?;
    Ok(Box::new(TelegramSink {
        client: super::http_client(name, &c.delivery())?,
        api_url: c.api_url.trim_end_matches('/').to_owned(),
        token,
        chat_id,
    }))
}

pub struct TelegramSink {
    client: reqwest::Client,
    api_url: String,
    token: Secret,
    chat_id: String,
}

/// The `sendMessage` body. A numeric chat id is sent as a number, a
/// `@channel` name as a string, as the Bot API documents.
pub fn body(chat_id: &str, n: &Notification) -> Value {
    let chat: Value = match chat_id.parse::<i64>() {
        Ok(id) => json!(id),
        Err(_) => json!(chat_id),
    };
    let mut msg = text::render(n);
    if msg.chars().count() > MAX_TEXT {
        msg = msg.chars().take(MAX_TEXT - 1).collect();
        msg.push('…');
    }
    json!({
        "chat_id": chat,
        "text": msg,
        "disable_web_page_preview": true,
    })
}

impl Sink for TelegramSink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let url = format!("{}/bot{}/sendMessage", self.api_url, self.token.expose());
            let req = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body(&self.chat_id, n).to_string());
            crate::outbound::client::send(req, &[self.token.expose()]).await
        })
    }
}
