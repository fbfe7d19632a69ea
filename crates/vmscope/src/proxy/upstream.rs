//! The upstream Prometheus HTTP API client of the query proxy.
//!
//! Reads: `[proxy] prometheus_url` and `timeout`. Emits: one request per
//! proxied call (POST form for query, query_range, series and labels, so
//! that long queries do not meet URL limits; GET for label values, which
//! Prometheus serves on GET only), and Prometheus' answer as status plus
//! JSON bytes, unchanged.
//!
//! Fails ([`UpstreamError`]): Prometheus unreachable (502), an answer that
//! is not JSON or larger than [`MAX_ANSWER_BYTES`] (502), no answer within
//! the timeout (504). Error text has no URL credentials (`outbound`'s
//! redaction).

use std::time::Duration;

use bytes::Bytes;

use super::config::ProxyConfig;
use crate::outbound::client::{self, ClientOptions, describe_error};
use crate::outbound::redact::snippet;

/// Largest answer passed on (a tenant's query over a whole fleet's
/// history is bounded by Prometheus' own limits; this bounds our memory).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// One Prometheus API endpoint the proxy forwards to, with the parameters
/// Prometheus documents for it (everything else is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Query,
    QueryRange,
    Series,
    Labels,
    /// `/api/v1/label/<name>/values`; the name is checked by the caller
    /// ([`is_label_name`]).
    LabelValues(String),
}

impl Endpoint {
    /// Parameters forwarded; `match[]` may repeat.
    pub fn params(&self) -> &'static [&'static str] {
        match self {
            Endpoint::Query => &["query", "time", "timeout", "limit"],
            Endpoint::QueryRange => &["query", "start", "end", "step", "timeout", "limit"],
            Endpoint::Series | Endpoint::Labels | Endpoint::LabelValues(_) => {
                &["match[]", "start", "end", "limit"]
            }
        }
    }

    fn path(&self) -> String {
        match self {
            Endpoint::Query => "/api/v1/query".to_owned(),
            Endpoint::QueryRange => "/api/v1/query_range".to_owned(),
            Endpoint::Series => "/api/v1/series".to_owned(),
            Endpoint::Labels => "/api/v1/labels".to_owned(),
            Endpoint::LabelValues(n) => format!("/api/v1/label/{n}/values"),
        }
    }
}

/// A classic label name (`[a-zA-Z_][a-zA-Z0-9_]*`): what may go into the
/// upstream path.
pub fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Prometheus' answer: its status and its JSON body, as sent.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "Prometheus at {url} is unreachable ({reason}); check [proxy] prometheus_url and that Prometheus runs"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "Prometheus at {url} did not answer within {timeout:?} ([proxy] timeout); narrow the query or its range"
    )]
    Timeout { url: String, timeout: Duration },
    #[error(
        "Prometheus at {url} answered HTTP {status} with a body that is not JSON ({snippet}); check [proxy] prometheus_url points at Prometheus itself"
    )]
    NotJson {
        url: String,
        status: u16,
        snippet: String,
    },
    #[error(
        "Prometheus' answer is larger than {MAX_ANSWER_BYTES} bytes; narrow the query or its range"
    )]
    TooLarge,
}

impl UpstreamError {
    /// 504 for a timeout, 502 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Timeout { .. } => 504,
            _ => 502,
        }
    }
}

/// The client towards one Prometheus.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    base: String,
    /// `prometheus_url` without credentials, for messages.
    shown: String,
    secrets: Vec<String>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &ProxyConfig) -> Result<Upstream, client::ClientError> {
        let client = client::client(&ClientOptions {
            timeout: cfg.timeout,
            ca_file: None,
            insecure_skip_verify: false,
        })?;
        let base = cfg.prometheus_url.trim_end_matches('/').to_owned();
        let (shown, secrets) = shown_url(&base);
        Ok(Upstream {
            client,
            base,
            shown,
            secrets,
            timeout: cfg.timeout,
        })
    }

    /// Sends `params` (already filtered and scoped) to `endpoint`.
    pub async fn call(
        &self,
        endpoint: &Endpoint,
        params: &[(String, String)],
    ) -> Result<Answer, UpstreamError> {
        // (A block: the serializer is not Send and must not live across
        // the awaits below.)
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (k, v) in params {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let url = format!("{}{}", self.base, endpoint.path());
        let req = match endpoint {
            Endpoint::LabelValues(_) => self.client.get(format!("{url}?{form}")),
            _ => self
                .client
                .post(url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form),
        };
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let fail = |e: reqwest::Error| {
            if e.is_timeout() {
                UpstreamError::Timeout {
                    url: self.shown.clone(),
                    timeout: self.timeout,
                }
            } else {
                UpstreamError::Unreachable {
                    url: self.shown.clone(),
                    reason: describe_error(&e.without_url(), &secrets),
                }
            }
        };
        let mut resp = req.send().await.map_err(fail)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(UpstreamError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(UpstreamError::NotJson {
                url: self.shown.clone(),
                status,
                snippet: snippet(String::from_utf8_lossy(&body).into_owned(), 80, &secrets),
            });
        }
        Ok(Answer {
            status,
            body: Bytes::from(body),
        })
    }
}

/// The URL for messages, with a password (`http://user:pw@host`) replaced
/// by `***`, and the password as the secret to scrub from error text. The
/// rest of a Prometheus URL is not secret, and naming it says where vmscope
/// looked.
fn shown_url(base: &str) -> (String, Vec<String>) {
    match reqwest::Url::parse(base) {
        Ok(mut u) => match u.password().map(str::to_owned) {
            Some(pw) => {
                let _ = u.set_password(Some("***"));
                (u.as_str().trim_end_matches('/').to_owned(), vec![pw])
            }
            None => (base.to_owned(), Vec::new()),
        },
        Err(_) => (base.to_owned(), Vec::new()),
    }
}

/// Keeps the parameters `endpoint` documents, in order (repeated
/// `match[]` kept).
pub fn documented(endpoint: &Endpoint, params: Vec<(String, String)>) -> Vec<(String, String)> {
    let allowed = endpoint.params();
    params
        .into_iter()
        .filter(|(k, _)| allowed.contains(&k.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_parameters_are_kept() {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let kept = documented(
            &Endpoint::QueryRange,
            vec![
                p("query", "up"),
                p("start", "1"),
                p("end", "2"),
                p("step", "15"),
                p("stats", "all"),
                p("match[]", "x"),
                p("nocache", "1"),
            ],
        );
        assert_eq!(
            kept,
            vec![
                p("query", "up"),
                p("start", "1"),
                p("end", "2"),
                p("step", "15")
            ]
        );
        let kept = documented(
            &Endpoint::Series,
            vec![p("match[]", "a"), p("match[]", "b"), p("query", "c")],
        );
        assert_eq!(kept, vec![p("match[]", "a"), p("match[]", "b")]);
    }

    #[test]
    fn messages_name_the_url_without_its_password() {
        assert_eq!(
            shown_url("http://prom:9090"),
            ("http://prom:9090".to_owned(), vec![])
        );
        let (shown, secrets) = shown_url("https://ops:s3cret-pw@prom.example/p");
        assert_eq!(shown, "https://ops:***@prom.example/p");
        assert_eq!(secrets, vec!["s3cret-pw".to_owned()]);
    }

    #[test]
    fn label_names_for_the_path() {
        assert!(is_label_name("project") && is_label_name("_x1"));
        for bad in ["", "1a", "a/b", "..", "a b", "é"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
