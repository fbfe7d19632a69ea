//! What the HTTP sinks share: the client (rustls, system roots plus an
//! optional extra CA file, a timeout on every request, no redirects, no
//! proxies), and the mapping of an HTTP outcome to retry / reject.
//!
//! Error text is built from reqwest errors with `.without_url()` and then
//! has every secret of the sink scrubbed from it, because a Telegram bot
//! token lives in the request URL and a receiver may echo a header back.

use std::time::Duration;

use super::{DeliveryError, SinkError};
use crate::alert::config::Delivery;

/// Longest part of a response body kept in an error message.
const BODY_SNIPPET: usize = 200;

/// A client for one sink.
pub fn client(sink: &str, d: &Delivery) -> Result<reqwest::Client, SinkError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("vmscope/", env!("CARGO_PKG_VERSION")))
        .timeout(d.timeout)
        .connect_timeout(d.timeout.min(Duration::from_secs(5)))
        // A redirect could carry the request (and its auth header) elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(path) = &d.ca_file {
        let ca_err = |reason: String| SinkError::CaFile {
            sink: sink.to_owned(),
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_err(describe_error(&e, &[])))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in the file".to_owned()));
        }
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| SinkError::Client {
        sink: sink.to_owned(),
        reason: describe_error(&e, &[]),
    })
}

/// Remove every non-empty secret from `s`.
pub fn redact(mut s: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|x| x.len() >= 4) {
        if s.contains(secret) {
            s = s.replace(secret, "***");
        }
    }
    s
}

/// A reqwest error as text: its kind without the URL, plus its causes
/// ("error sending request: client error (Connect): tcp connect error:
/// Connection refused"), secrets scrubbed.
pub fn describe_error(e: &reqwest::Error, secrets: &[&str]) -> String {
    let mut parts = Vec::new();
    if e.is_timeout() {
        parts.push("timed out".to_owned());
    }
    parts.push(e.to_string());
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if parts.last() != Some(&t) {
            parts.push(t);
        }
        src = s.source();
    }
    redact(parts.join(": "), secrets)
}

/// `HTTP <status>: <start of the body>`, one line, secrets scrubbed before
/// the body is cut (a secret straddling the cut would otherwise survive in
/// part).
fn error_message(status: u16, body: String, secrets: &[&str]) -> String {
    let body = redact(body, secrets);
    let snippet: String = body.chars().take(BODY_SNIPPET).collect();
    format!(
        "HTTP {status}: {}",
        snippet.replace(['\n', '\r'], " ").trim()
    )
}

/// Send `req` (whose client has a timeout) and classify the outcome:
/// 2xx ok; 429, 5xx and transport errors retryable; other statuses rejected.
pub async fn send(req: reqwest::RequestBuilder, secrets: &[&str]) -> Result<(), DeliveryError> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Err(DeliveryError::Retryable {
                message: describe_error(&e.without_url(), secrets),
                retry_after: None,
            });
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // The body explains the refusal; it is read under the same timeout.
    let body = resp.text().await.unwrap_or_default();
    let message = error_message(status.as_u16(), body, secrets);
    if status.as_u16() == 429 || status.is_server_error() {
        Err(DeliveryError::Retryable {
            message,
            retry_after,
        })
    } else {
        Err(DeliveryError::Rejected(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_never_keeps_part_of_a_secret() {
        let secret = "123456789:AAHsecretsecretsecret";
        for pad in BODY_SNIPPET - 40..BODY_SNIPPET {
            let body = format!("{}/bot{secret}/sendMessage", "x".repeat(pad));
            let m = error_message(500, body, &[secret]);
            assert!(!m.contains("123456789"), "pad {pad}: {m}");
            assert!(m.starts_with("HTTP 500: "));
        }
    }

    #[test]
    fn redact_removes_secrets() {
        assert_eq!(
            redact(
                "bad token 123:ABC in /bot123:ABC/x".to_owned(),
                &["123:ABC", ""]
            ),
            "bad token *** in /bot***/x"
        );
    }
}
