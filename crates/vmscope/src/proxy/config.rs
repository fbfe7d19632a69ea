//! The `[proxy]` section: where Prometheus is, how long to wait for it,
//! who may query it, the owner labels on per-VM series, and Grafana
//! embedding (`[proxy.grafana]`).
//!
//! Reads: the merged configuration tree (`crate::config`). Emits: a
//! checked [`ProxyConfig`]. Fails: [`ProxyConfig::validate`] names the key.

use std::time::Duration;

use serde::Deserialize;

use crate::outbound::Secret;

/// Label names a per-VM series already carries (or one of its families
/// adds): an owner label may not take one of them.
const TAKEN_LABELS: &[&str] = &[
    "vm_id",
    "vm_name",
    "mode",
    "vcpu",
    "interface",
    "state",
    "device",
    "__name__",
];

/// Longest time `[proxy] timeout` may be: the HTTP request limit is 10 s
/// (`crate::api::DEFAULT_REQUEST_TIMEOUT`), and the proxy must answer its
/// own 504 before the edge answers 503.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(9);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Prometheus' base URL (the HTTP API is under `/api/v1`); also from
    /// `PROM_URL`.
    pub prometheus_url: String,
    /// Whole-request timeout towards Prometheus (504 past it).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
    /// Anonymous callers (no credentials, and the `api` group allows
    /// anonymous access) may query, unscoped. Off: they get 401.
    pub anonymous: bool,
    /// Put the owner labels on every per-VM series (tenancy): without them
    /// a tenant's matcher selects nothing but `vmscope_vm_info` and the
    /// per-owner families.
    pub owner_labels: bool,
    /// The label a user's key is exported and matched under.
    pub user_label: String,
    /// The label a project's key is exported and matched under.
    pub project_label: String,
    pub grafana: GrafanaConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            prometheus_url: "http://localhost:9090".to_owned(),
            timeout: Duration::from_secs(8),
            anonymous: false,
            owner_labels: false,
            user_label: "user".to_owned(),
            project_label: "project".to_owned(),
            grafana: GrafanaConfig::default(),
        }
    }
}

/// `[proxy.grafana]`: the iframe URL builder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrafanaConfig {
    /// Path (or absolute URL) Grafana is served under, same-origin.
    pub base: String,
    /// The dashboard template variable fixed to a tenant's owner key
    /// (`var-<name>=<key>`); empty: the label name of the tenant's kind.
    pub owner_variable: String,
    /// HS256 key for Grafana's JWT URL login (`auth.jwt` with
    /// `url_login = true`); unset: no token in the URL.
    pub jwt_key: Option<Secret>,
    /// Lifetime of a URL token (at most 5 minutes).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub jwt_ttl: Duration,
    /// The JWT's `aud` claim (Grafana's `expect_claims`); empty: none.
    pub jwt_audience: String,
    /// The URL parameter Grafana reads the token from
    /// (`auth.jwt.url_login` uses `auth_token`).
    pub jwt_param: String,
}

impl Default for GrafanaConfig {
    fn default() -> Self {
        GrafanaConfig {
            base: "/grafana".to_owned(),
            owner_variable: String::new(),
            jwt_key: None,
            jwt_ttl: Duration::from_secs(60),
            jwt_audience: String::new(),
            jwt_param: "auth_token".to_owned(),
        }
    }
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

impl ProxyConfig {
    /// Checks values; the message starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.prometheus_url.trim_end_matches('/');
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' '])) {
            return Err(format!(
                "proxy.prometheus_url: {:?} is not an http(s) URL without query (e.g. \"http://localhost:9090\")",
                self.prometheus_url
            ));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > MAX_TIMEOUT {
            return Err(format!(
                "proxy.timeout: {} is out of range (100ms to 9s, below the HTTP request limit)",
                humantime::format_duration(self.timeout)
            ));
        }
        for (key, v) in [
            ("user_label", &self.user_label),
            ("project_label", &self.project_label),
        ] {
            if !is_label_name(v) || TAKEN_LABELS.contains(&v.as_str()) {
                return Err(format!(
                    "proxy.{key}: {v:?} is not a free label name (letters, digits, _; not {})",
                    TAKEN_LABELS.join(", ")
                ));
            }
        }
        if self.user_label == self.project_label {
            return Err(format!(
                "proxy.project_label: {:?} is also proxy.user_label; they must differ",
                self.project_label
            ));
        }
        let g = &self.grafana;
        if g.base.is_empty() || g.base.contains(['?', '#', ' ', '"', '<', '>']) {
            return Err(format!(
                "proxy.grafana.base: {:?} must be a path like \"/grafana\" or an URL without query",
                g.base
            ));
        }
        if !g.owner_variable.is_empty() && !is_label_name(&g.owner_variable) {
            return Err(format!(
                "proxy.grafana.owner_variable: {:?} is not a variable name (letters, digits, _)",
                g.owner_variable
            ));
        }
        if g.jwt_ttl < Duration::from_secs(1) || g.jwt_ttl > Duration::from_secs(300) {
            return Err(format!(
                "proxy.grafana.jwt_ttl: {} is out of range (1s to 5m)",
                humantime::format_duration(g.jwt_ttl)
            ));
        }
        if g.jwt_key.as_ref().is_some_and(|k| k.expose().len() < 32) {
            return Err(
                "proxy.grafana.jwt_key: shorter than 32 bytes; use a random key of at least 32 bytes"
                    .to_owned(),
            );
        }
        if !is_label_name(&g.jwt_param) {
            return Err(format!(
                "proxy.grafana.jwt_param: {:?} is not a parameter name (letters, digits, _)",
                g.jwt_param
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        ProxyConfig::default().validate().unwrap();
        let bad = |f: fn(&mut ProxyConfig), key: &str| {
            let mut c = ProxyConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{e}");
        };
        bad(
            |c| c.prometheus_url = "localhost:9090".into(),
            "proxy.prometheus_url",
        );
        bad(
            |c| c.prometheus_url = "http://x/?a=b".into(),
            "proxy.prometheus_url",
        );
        bad(|c| c.timeout = Duration::from_secs(10), "proxy.timeout");
        bad(|c| c.user_label = "vm_id".into(), "proxy.user_label");
        bad(|c| c.project_label = "user".into(), "proxy.project_label");
        bad(|c| c.project_label = "9x".into(), "proxy.project_label");
        bad(
            |c| c.grafana.jwt_ttl = Duration::from_secs(301),
            "proxy.grafana.jwt_ttl",
        );
        bad(
            |c| c.grafana.jwt_key = Some(Secret::new("short")),
            "proxy.grafana.jwt_key",
        );
        bad(|c| c.grafana.base = "/g?x".into(), "proxy.grafana.base");
    }

    #[test]
    fn prom_url_is_read_when_nothing_else_sets_the_key() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let load = |file: Option<&str>, vars: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            if let Some(text) = file {
                std::fs::write(&path, text).unwrap();
            }
            crate::config::Config::load_with_env(file.map(|_| path.as_path()), env(vars)).unwrap()
        };
        let c = load(None, &[]);
        assert_eq!(c.proxy.prometheus_url, "http://localhost:9090");
        let c = load(None, &[("PROM_URL", "http://prom:9090")]);
        assert_eq!(c.proxy.prometheus_url, "http://prom:9090");
        assert!(c.is_from_env("proxy.prometheus_url"));
        let c = load(
            None,
            &[
                ("PROM_URL", "http://a:1"),
                ("VMSCOPE_PROXY__PROMETHEUS_URL", "http://b:2"),
            ],
        );
        assert_eq!(c.proxy.prometheus_url, "http://b:2");
        let c = load(
            Some("[proxy]\nprometheus_url = \"http://file:3\"\n"),
            &[("PROM_URL", "http://a:1")],
        );
        assert_eq!(c.proxy.prometheus_url, "http://file:3");
        // A bad value from PROM_URL names the variable.
        let e = crate::config::Config::load_with_env(None, env(&[("PROM_URL", "prom:9090")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("proxy.prometheus_url") && e.contains("PROM_URL"),
            "{e}"
        );
    }
}
