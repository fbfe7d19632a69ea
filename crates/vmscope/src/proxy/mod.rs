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

use crate::model::usage::series_label;
use crate::outbound::ClientError;

/// The proxy's configuration and its upstream client, built once by
/// `vmscope serve`.
#[derive(Debug)]
pub struct Proxy {
    cfg: ProxyConfig,
    upstream: Upstream,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Result<Proxy, ClientError> {
        let upstream = Upstream::new(&cfg)?;
        Ok(Proxy { cfg, upstream })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The matcher a tenant's queries get: its project keys under
    /// `project_label`, or its user keys under `user_label`, as the keys
    /// are exported (`series_label`).
    ///
    /// A token with both user and project scopes is refused: a VM is the
    /// tenant's when its user *or* its project is, which one selector
    /// cannot say, and the `or` of two rewritten queries changes what
    /// aggregations and binary operations compute (`sum(x)` would become
    /// `sum(x{user}) or sum(x{project})`, which is the first sum alone).
    /// One token per kind answers exactly.
    pub fn tenant_matcher(
        &self,
        users: &[String],
        projects: &[String],
    ) -> Result<TenantMatcher, &'static str> {
        let (label, keys) = match (users.is_empty(), projects.is_empty()) {
            (false, false) => {
                return Err(
                    "this token has both user and project scopes; the query proxy needs a token scoped to users only or to projects only",
                );
            }
            (false, true) => (&self.cfg.user_label, users),
            (true, false) => (&self.cfg.project_label, projects),
            (true, true) => return Err("this token has no user or project scope"),
        };
        let values: Vec<String> = keys.iter().map(|k| series_label(k)).collect();
        TenantMatcher::new(label, &values).ok_or("this token has no user or project scope")
    }
}
