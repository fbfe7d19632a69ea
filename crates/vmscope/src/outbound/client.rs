//! The HTTP client every outbound sender uses, and one request's outcome.
//!
//! Reads: an optional extra CA file (PEM, on top of the system roots).
//! Emits: a `reqwest::Client` (rustls, a timeout on every request, no
//! redirects, no proxies) and, per request, `Ok` or a [`DeliveryError`]
//! classified by [`super::retry`]. Fails: [`ClientError`], naming the CA
//! file's path.
//!
//! Error text is built from reqwest errors with `.without_url()` and then
//! has every secret of the sender scrubbed from it, because a Telegram bot
//! token lives in the request URL and a receiver may echo a header back.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::redact::{redact, snippet};
use super::retry::{DeliveryError, is_retryable, parse_retry_after};

/// Longest part of a response body kept in an error message.
pub const BODY_SNIPPET: usize = 200;

/// What a client is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Whole-request timeout (the connect timeout is at most 5 s of it).
    pub timeout: Duration,
    /// Extra PEM CA certificate(s) to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate (a lab receiver with a self-signed
    /// certificate nobody distributed). Off unless a config says so.
    pub insecure_skip_verify: bool,
}

/// Building a client failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot use {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot build the HTTP client: {reason}")]
    Build { reason: String },
}

/// A client for one sender.
pub fn client(opts: &ClientOptions) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("vmscope/", env!("CARGO_PKG_VERSION")))
        .timeout(opts.timeout)
        .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
        // A redirect could carry the request (and its auth header) elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(path) = &opts.ca_file {
        let ca_err = |reason: String| ClientError::CaFile {
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
    if opts.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ClientError::Build {
        reason: describe_error(&e, &[]),
    })
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

/// `HTTP <status>: <start of the body>`, one line, secrets scrubbed.
pub fn error_message(status: u16, body: String, secrets: &[&str]) -> String {
    format!("HTTP {status}: {}", snippet(body, BODY_SNIPPET, secrets))
}

/// Send `req` (whose client has a timeout) and classify the outcome:
/// 2xx ok; 429, 5xx and transport errors retryable (with the receiver's
/// `Retry-After`); other statuses rejected.
pub async fn send(req: reqwest::RequestBuilder, secrets: &[&str]) -> Result<(), DeliveryError> {
    send_classified(req, secrets).await.map_err(|(e, _)| e)
}

/// What went wrong with one attempt, for counting failures by kind (the
/// message of a [`DeliveryError`] is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// No connection, or the connection broke.
    Unreachable,
    /// The receiver answered with this non-2xx status.
    Status(u16),
}

impl FailureKind {
    /// A bounded label value: `timeout`, `unreachable`, `http_429`,
    /// `http_5xx`, `http_4xx`, `http_other`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Status(429) => "http_429",
            FailureKind::Status(500..=599) => "http_5xx",
            FailureKind::Status(400..=499) => "http_4xx",
            FailureKind::Status(_) => "http_other",
        }
    }
}

/// [`send`], also saying what kind of failure it was.
pub async fn send_classified(
    req: reqwest::RequestBuilder,
    secrets: &[&str],
) -> Result<(), (DeliveryError, FailureKind)> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_timeout() {
                FailureKind::Timeout
            } else {
                FailureKind::Unreachable
            };
            let message = describe_error(&e.without_url(), secrets);
            return Err((
                DeliveryError::Retryable {
                    message,
                    retry_after: None,
                },
                kind,
            ));
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let kind = FailureKind::Status(status.as_u16());
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // The body explains the refusal; it is read under the same timeout.
    let body = resp.text().await.unwrap_or_default();
    let message = error_message(status.as_u16(), body, secrets);
    if is_retryable(status.as_u16()) {
        Err((
            DeliveryError::Retryable {
                message,
                retry_after,
            },
            kind,
        ))
    } else {
        Err((DeliveryError::Rejected(message), kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(ca_file: Option<PathBuf>) -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(1),
            ca_file,
            insecure_skip_verify: false,
        }
    }

    #[test]
    fn a_client_without_a_ca_file_builds() {
        client(&opts(None)).unwrap();
    }

    #[test]
    fn ca_file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client(&opts(Some(missing.clone()))).unwrap_err();
        assert!(matches!(&e, ClientError::CaFile { path, .. } if *path == missing));
        let text = e.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("No such file"), "{text}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let text = client(&opts(Some(empty.clone()))).unwrap_err().to_string();
        assert!(text.contains(&empty.display().to_string()), "{text}");
        assert!(text.contains("no PEM certificate"), "{text}");
    }

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
}
