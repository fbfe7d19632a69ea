//! `type = "telegram"`: Bot API `sendMessage` (POST
//! `{api_url}/bot<token>/sendMessage`, JSON `{chat_id, text,
//! disable_web_page_preview}`), plain text (no parse mode, so no escaping
//! rules to get wrong). The token is in the URL: errors are logged without
//! it (`.without_url()` and scrubbing). TLS is always verified.

use serde_json::{Value, json};

use super::{
    BoxFuture, Delivery, DeliveryError, Sink, SinkError, SinkSettings, check_url, key, missing,
};
use crate::alert::notification::Notification;
use crate::alert::setting::ConfigError;
use crate::alert::text;
use crate::outbound::Secret;
use crate::outbound::redact::env_string;

/// The bot token when the file leaves it out.
pub const ENV_BOT_TOKEN: &str = "VMSCOPE_TELEGRAM_BOT_TOKEN";
/// The chat id when the file leaves it out.
pub const ENV_CHAT_ID: &str = "VMSCOPE_TELEGRAM_CHAT_ID";

/// Telegram's limit on a message's text, in characters.
pub const MAX_TEXT: usize = 4096;

fn default_api_url() -> String {
    "https://api.telegram.org".to_owned()
}

http_sink_fields! {
    /// `type = "telegram"`: Bot API `sendMessage`.
    pub struct TelegramSinkConfig {
        /// Env `VMSCOPE_TELEGRAM_BOT_TOKEN` when absent.
        #[serde(default)]
        pub bot_token: Option<Secret>,
        /// Numeric chat id or `@channel` (env `VMSCOPE_TELEGRAM_CHAT_ID`).
        #[serde(default)]
        pub chat_id: Option<String>,
        #[serde(default = "default_api_url")]
        pub api_url: String,
    }
}

impl TelegramSinkConfig {
    pub fn bot_token(&self) -> Option<Secret> {
        self.bot_token
            .clone()
            .or_else(|| Secret::from_env(ENV_BOT_TOKEN))
    }
    pub fn chat_id(&self) -> Option<String> {
        self.chat_id.clone().or_else(|| env_string(ENV_CHAT_ID))
    }
}

impl SinkSettings for TelegramSinkConfig {
    const KIND: &'static str = "telegram";
    const ENV_VARS: &'static [&'static str] = &[ENV_BOT_TOKEN, ENV_CHAT_ID];

    fn delivery(&self) -> Delivery {
        self.http_delivery()
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        check_url(&key(name, "api_url"), &self.api_url)?;
        if self.bot_token().is_none() {
            return Err(missing(name, "bot_token", ENV_BOT_TOKEN));
        }
        if self.chat_id().is_none() {
            return Err(missing(name, "chat_id", ENV_CHAT_ID));
        }
        Ok(())
    }

    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        let token = self
            .bot_token()
            .ok_or_else(|| missing(name, "bot_token", ENV_BOT_TOKEN))?;
        let chat_id = self
            .chat_id()
            .ok_or_else(|| missing(name, "chat_id", ENV_CHAT_ID))?;
        Ok(Box::new(TelegramSink {
            client: super::http_client(name, &self.delivery())?,
            api_url: self.api_url.trim_end_matches('/').to_owned(),
            token,
            chat_id,
        }))
    }
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
