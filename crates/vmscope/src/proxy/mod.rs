//! The tenant query proxy: PromQL scoping ([`scope`], pure) and the
//! upstream Prometheus client ([`upstream`]). See `docs/proxy.md`.
//!
//! Reads: queries and their parameters as plain values (the HTTP edge,
//! `crate::api::prometheus`, hands them in; this module knows no web
//! framework), the `[proxy]` configuration. Emits: the rewritten query and
//! Prometheus' answer. Fails: a refused query is a [`scope::ScopeError`]
//! (400), an upstream failure an [`upstream::UpstreamError`] (502/504).

pub mod config;
pub mod grafana;
pub mod scope;
pub mod upstream;

pub use config::{GrafanaConfig, ProxyConfig};
pub use scope::{ScopeError, TenantMatcher};
pub use upstream::{Answer, Endpoint, Upstream, UpstreamError};
