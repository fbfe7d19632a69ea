//! Access control for the HTTP edge: who may call which endpoint group, as
//! configured in the exporter-toolkit web configuration file
//! (`--web.config.file`, `http.web_config_file`) and vmscope's `vmscope:`
//! extension in the same file. See `docs/access.md`.
//!
//! Reads: the web configuration file (YAML, [`config`]), the client's IP
//! address and its `Authorization` header, handed in by the HTTP edge
//! (`crate::api::access`) as plain values: this module knows no web
//! framework. Emits: a [`Decision`] per request (an [`Access`] for the
//! handlers, or a refusal with its status), and the
//! `vmscope_http_auth_total{result}` and `vmscope_http_auth_bcrypt_total`
//! counters ([`AccessMetrics`]).
//!
//! Fails: loading names the file and the key that is wrong; deciding never
//! fails (a refusal is an answer). Secrets (passwords, tokens, inline TLS
//! keys) never reach a log, an error or a metric: only a token's or a
//! user's name does.
//!
//! Also here: the rustls configuration from `tls_server_config` ([`tls`]),
//! reloading the file and certificates ([`reload`]), and new tokens
//! ([`token`]).
//!
//! Order of the checks ([`Gate::check`], cheapest first, so that a flood of
//! bad credentials is stopped before it costs a password hash): IP
//! allow-list of the endpoint group -> rate limit per client IP (and the
//! toolkit's global `rate_limit`) -> credentials (Bearer: one SHA-256 and a
//! constant-time lookup; Basic: bcrypt, cached per presented credentials)
//! -> rate limit per token or user -> scope.

pub mod config;
mod gate;
mod limiter;
mod metrics;
pub mod reload;
pub mod tls;
pub mod token;

pub use config::{
    Anonymous, CipherSuite, ClientAuth, Curve, Group, Scope, TlsSettings, TlsVersion, WebConfig,
};
pub use gate::{Credentials, Decision, Gate, PendingBasic, Refusal, Verdict, tenant};
pub use metrics::{AccessMetrics, AuthResult};

use std::sync::Arc;

/// What a request may see, handed to handlers as a request extension.
/// A route whose handler does not scope by it refuses everything but
/// `Admin` and `Anonymous` (see `crate::api::Resource::scoped`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything: an `admin` token, a basic-auth user, or any client when
    /// no authentication is configured.
    Admin { who: Principal },
    /// Only the VMs and owners of these users and projects.
    Tenant {
        who: Principal,
        users: Arc<[String]>,
        projects: Arc<[String]>,
    },
    /// No credentials, and the endpoint group allows anonymous access.
    Anonymous,
    /// No credentials, and the group allows host-level aggregates only
    /// (`anonymous: {scrape: host_only}`): no user, project or VM name.
    HostOnly,
}

/// Who a request authenticated as, for logs (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Authentication is not configured: everyone is admin.
    Open,
    /// A bearer token, by its configured name.
    Token(Arc<str>),
    /// A basic-auth user.
    User(Arc<str>),
}

impl Principal {
    /// For logs: `token:portal`, `user:alice`, `open`.
    pub fn describe(&self) -> String {
        match self {
            Principal::Open => "open".to_owned(),
            Principal::Token(n) => format!("token:{n}"),
            Principal::User(n) => format!("user:{n}"),
        }
    }
}
