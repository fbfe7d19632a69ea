//! `[[push.remote_write]]` and `[[push.otlp]]`: one table per destination.
//!
//! Reads: the `[push]` section and, for secrets the file leaves out, the
//! environment variables it names (`bearer_token_env`,
//! `basic_auth.password_env`). Emits: [`PushConfig`] and, per destination,
//! its resolved [`Destination`] (name, headers, auth, client options).
//! Fails: [`PushConfig::validate`] returns a message naming the dotted key
//! (`push.remote_write[0].url: ...`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::outbound::{ClientOptions, Secret};

use super::Kind;

/// `[push]`: where the agent pushes each snapshot, besides serving it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Prometheus remote_write v1 receivers (Prometheus, Mimir, Thanos
    /// receive, VictoriaMetrics, ...).
    pub remote_write: Vec<DestinationConfig>,
    /// OTLP/HTTP protobuf receivers (an OpenTelemetry collector, ...).
    pub otlp: Vec<DestinationConfig>,
}

/// One destination. Both kinds take the same keys; `labels` are external
/// labels for remote_write and extra resource attributes for OTLP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The `destination` label of the push metrics and the name in logs
    /// (default: the kind, then `_2`, `_3`, ... for further ones).
    #[serde(default)]
    pub name: Option<String>,
    /// Where to POST (`https://mimir.example/api/v1/push`,
    /// `http://collector:4318/v1/metrics`). Never logged: it may carry a
    /// token.
    pub url: String,
    /// Extra request headers, e.g. `X-Scope-OrgID` (the tenant of Mimir,
    /// Cortex, Loki). Not secrets: put tokens in `bearer_token`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// The environment variable holding `bearer_token` instead.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Extra PEM CA certificate(s) trusted for this destination.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For a lab only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Push at most this often (default: every snapshot, the collection
    /// interval). At least the collection interval.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
    /// Whole-request timeout.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::model::de_duration"
    )]
    pub timeout: Duration,
    /// Retry backoff doubles from 1 s up to this (also the longest
    /// `Retry-After` honoured).
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::model::de_duration"
    )]
    pub max_backoff: Duration,
    /// Pushes waiting for this destination, the one being retried
    /// included; beyond it the oldest is dropped (and counted).
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// remote_write: labels added to every series (a series' own label of
    /// the same name wins); `job` defaults to `vmscope` and `instance` to
    /// the host name, as a scrape would set them. OTLP: extra resource
    /// attributes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The body's encoding. OTLP: `gzip` (default) or `none` (for a
    /// collector on the same host, where compressing costs CPU and saves
    /// nothing: about a third of a push's CPU at 1000 VMs). remote_write:
    /// `snappy`, the protocol's only one.
    #[serde(default)]
    pub compression: Option<String>,
}

/// How a request body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Snappy's block format (remote_write).
    Snappy,
    /// `Content-Encoding: gzip` (OTLP's default).
    Gzip,
    /// As is.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The environment variable holding `password` instead.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}
/// 10 pushes: 150 s of a 15 s interval. A push of 1000 VMs is about
/// 490 KiB (remote_write, snappy; benches/push.rs), so a full queue is
/// some 5 MiB per destination.
fn default_max_queue() -> usize {
    10
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::model::de_duration(d).map(Some)
}

/// How a destination authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

/// One destination, checked and with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Destination {
    pub kind: Kind,
    pub name: String,
    pub url: String,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub auth: Auth,
    pub client: ClientOptions,
    pub interval: Duration,
    pub max_backoff: Duration,
    pub max_queue: usize,
    pub labels: Vec<(String, String)>,
    pub compression: Compression,
}

impl Destination {
    /// Every string that must not appear in error text or logs.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = crate::outbound::redact::url_secrets(&self.url);
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(t) => out.push(t.expose().to_owned()),
            Auth::Basic { password, .. } => out.push(password.expose().to_owned()),
        }
        out
    }
}

impl PushConfig {
    /// The enabled destinations, named and in order (remote_write first).
    /// `collection` is the collection interval (the default interval).
    pub fn destinations(&self, collection: Duration) -> Result<Vec<Destination>, String> {
        let mut out: Vec<Destination> = Vec::new();
        for (kind, list) in [
            (Kind::RemoteWrite, &self.remote_write),
            (Kind::Otlp, &self.otlp),
        ] {
            for (i, d) in list.iter().enumerate() {
                let key = format!("push.{}[{i}]", kind.key());
                if !d.enabled {
                    continue;
                }
                let dest = d.resolve(kind, i, &key, collection)?;
                if out.iter().any(|o| o.name == dest.name) {
                    return Err(format!(
                        "{key}.name: {:?} is used by another destination; give each a unique name",
                        dest.name
                    ));
                }
                out.push(dest);
            }
        }
        Ok(out)
    }

    /// Every check serde cannot do, secrets from the environment included.
    pub fn validate(&self, collection: Duration) -> Result<(), String> {
        self.destinations(collection).map(|_| ())
    }
}

fn env_secret(key: &str, var: &str) -> Result<Secret, String> {
    Secret::from_env(var)
        .ok_or_else(|| format!("{key}: environment variable {var} is not set or empty"))
}

impl DestinationConfig {
    fn resolve(
        &self,
        kind: Kind,
        index: usize,
        key: &str,
        collection: Duration,
    ) -> Result<Destination, String> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None if index == 0 => kind.key().to_owned(),
            None => format!("{}_{}", kind.key(), index + 1),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!(
                "{key}.name: {name:?}: a destination name is 1-64 characters of A-Z, a-z, 0-9, '_', '-'"
            ));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            Ok(u) => {
                return Err(format!(
                    "{key}.url: {:?} is not an http(s) URL with a host",
                    u.scheme()
                ));
            }
            Err(e) => return Err(format!("{key}.url: not a URL: {e}")),
        }
        let mut headers = Vec::new();
        for (k, v) in &self.headers {
            let hk = format!("{key}.headers.{k}");
            let n = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{hk}: not a valid HTTP header name"))?;
            if RESERVED_HEADERS.contains(&n.as_str()) {
                return Err(format!(
                    "{hk}: set by vmscope itself (use bearer_token or basic_auth for Authorization)"
                ));
            }
            let v = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| format!("{hk}: not a valid HTTP header value"))?;
            headers.push((n, v));
        }
        let bearer = match (&self.bearer_token, &self.bearer_token_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{key}.bearer_token_env: set bearer_token or bearer_token_env, not both"
                ));
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(var)) => Some(env_secret(&format!("{key}.bearer_token_env"), var)?),
            (None, None) => None,
        };
        let basic = match &self.basic_auth {
            None => None,
            Some(b) => {
                let password = match (&b.password, &b.password_env) {
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "{key}.basic_auth.password_env: set password or password_env, not both"
                        ));
                    }
                    (Some(p), None) => p.clone(),
                    (None, Some(var)) => {
                        env_secret(&format!("{key}.basic_auth.password_env"), var)?
                    }
                    (None, None) => {
                        return Err(format!(
                            "{key}.basic_auth.password: missing (set it or password_env)"
                        ));
                    }
                };
                Some(Auth::Basic {
                    username: b.username.clone(),
                    password,
                })
            }
        };
        let auth = match (bearer, basic) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{key}.basic_auth: use bearer_token or basic_auth, not both"
                ));
            }
            (Some(t), None) => Auth::Bearer(t),
            (None, Some(b)) => b,
            (None, None) => Auth::None,
        };
        let interval = self.interval.unwrap_or(collection);
        if interval < collection {
            return Err(format!(
                "{key}.interval: {} is shorter than the collection interval ({}): there would be nothing new to push",
                humantime::format_duration(interval),
                humantime::format_duration(collection)
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!("{key}.timeout: must be longer than 0s"));
        }
        if self.max_backoff < Duration::from_secs(1) {
            return Err(format!("{key}.max_backoff: must be at least 1s"));
        }
        if self.max_queue == 0 {
            return Err(format!("{key}.max_queue: must be at least 1"));
        }
        let compression = match (kind, self.compression.as_deref()) {
            (Kind::RemoteWrite, None | Some("snappy")) => Compression::Snappy,
            (Kind::RemoteWrite, Some(other)) => {
                return Err(format!(
                    "{key}.compression: {other:?}: remote_write bodies are always \"snappy\" (the protocol has no other)"
                ));
            }
            (Kind::Otlp, None | Some("gzip")) => Compression::Gzip,
            (Kind::Otlp, Some("none")) => Compression::None,
            (Kind::Otlp, Some(other)) => {
                return Err(format!(
                    "{key}.compression: {other:?}: one of \"gzip\" (the default) or \"none\""
                ));
            }
        };
        let mut labels = Vec::new();
        for (k, v) in &self.labels {
            if !kind.valid_label(k) {
                return Err(format!(
                    "{key}.labels.{k}: not a valid {} name",
                    kind.label_word()
                ));
            }
            labels.push((k.clone(), v.clone()));
        }
        Ok(Destination {
            kind,
            name,
            url: self.url.clone(),
            headers,
            auth,
            client: ClientOptions {
                timeout: self.timeout,
                ca_file: self.ca_file.clone(),
                insecure_skip_verify: self.insecure_skip_verify,
            },
            interval,
            max_backoff: self.max_backoff,
            max_queue: self.max_queue,
            labels,
            compression,
        })
    }
}

/// Headers the pushers set themselves.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-encoding",
    "content-length",
    "host",
    "x-prometheus-remote-write-version",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> PushConfig {
        toml::from_str(toml_text).unwrap()
    }

    const FIVE: Duration = Duration::from_secs(5);

    #[test]
    fn destinations_get_names_defaults_and_resolved_secrets() {
        let c = parse(
            r#"
            [[remote_write]]
            url = "https://mimir.example/api/v1/push"
            headers = { "X-Scope-OrgID" = "tenant-1" }
            bearer_token = "tok-123456"
            [[remote_write]]
            url = "http://vm.example:8428/api/v1/write"
            interval = "15s"
            labels = { region = "eu-1" }
            [[otlp]]
            name = "collector"
            url = "http://127.0.0.1:4318/v1/metrics"
            basic_auth = { username = "u", password = "p4ssword" }
            "#,
        );
        let d = c.destinations(FIVE).unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["remote_write", "remote_write_2", "collector"]);
        assert_eq!(d[0].interval, FIVE);
        assert_eq!(d[1].interval, Duration::from_secs(15));
        assert_eq!(d[0].headers[0].0.as_str(), "x-scope-orgid");
        assert_eq!(d[0].auth, Auth::Bearer(Secret::new("tok-123456")));
        assert!(d[0].secrets().contains(&"tok-123456".to_owned()));
        assert_eq!(d[1].labels, [("region".to_owned(), "eu-1".to_owned())]);
        assert_eq!(d[2].kind, Kind::Otlp);
        assert_eq!(d[2].max_queue, 10);
        assert_eq!(d[2].client.timeout, Duration::from_secs(10));
        // Secrets never print.
        assert!(!format!("{d:?}").contains("p4ssword"));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (r#"url = "ftp://x/""#, "push.remote_write[0].url: \"ftp\""),
            (r#"url = "nope""#, "push.remote_write[0].url: not a URL"),
            (
                "url = \"http://x/\"\nheaders = { \"Bad Header\" = \"v\" }",
                "push.remote_write[0].headers.Bad Header: not a valid HTTP header name",
            ),
            (
                "url = \"http://x/\"\nheaders = { Authorization = \"v\" }",
                "push.remote_write[0].headers.Authorization: set by vmscope",
            ),
            (
                "url = \"http://x/\"\ninterval = \"1s\"",
                "push.remote_write[0].interval: 1s is shorter than the collection interval (5s)",
            ),
            (
                "url = \"http://x/\"\nmax_queue = 0",
                "push.remote_write[0].max_queue: must be at least 1",
            ),
            (
                "url = \"http://x/\"\nbearer_token_env = \"VMSCOPE_TEST_SURELY_UNSET_VAR\"",
                "push.remote_write[0].bearer_token_env: environment variable VMSCOPE_TEST_SURELY_UNSET_VAR is not set",
            ),
            (
                "url = \"http://x/\"\nbearer_token = \"abcd\"\nbasic_auth = { username = \"u\", password = \"p\" }",
                "push.remote_write[0].basic_auth: use bearer_token or basic_auth, not both",
            ),
            (
                "url = \"http://x/\"\nbasic_auth = { username = \"u\" }",
                "push.remote_write[0].basic_auth.password: missing",
            ),
            (
                "url = \"http://x/\"\nname = \"a b\"",
                "push.remote_write[0].name: \"a b\"",
            ),
            (
                "url = \"http://x/\"\nlabels = { \"1x\" = \"v\" }",
                "push.remote_write[0].labels.1x: not a valid label name",
            ),
        ];
        for (body, want) in cases {
            let c = parse(&format!("[[remote_write]]\n{body}\n"));
            let e = c.validate(FIVE).unwrap_err();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        for (kind, value, want) in [
            (
                "remote_write",
                "gzip",
                "push.remote_write[0].compression: \"gzip\": remote_write bodies are always \"snappy\"",
            ),
            (
                "otlp",
                "zstd",
                "push.otlp[0].compression: \"zstd\": one of \"gzip\" (the default) or \"none\"",
            ),
        ] {
            let c = parse(&format!(
                "[[{kind}]]\nurl = \"http://x/\"\ncompression = \"{value}\"\n"
            ));
            let e = c.validate(FIVE).unwrap_err();
            assert!(e.starts_with(want), "{kind} {value}: {e}");
        }
        let ok = parse(
            "[[remote_write]]\nurl = \"http://x/\"\ncompression = \"snappy\"\n\
             [[otlp]]\nurl = \"http://y/\"\n[[otlp]]\nurl = \"http://z/\"\ncompression = \"none\"\n",
        );
        let d = ok.destinations(FIVE).unwrap();
        let got: Vec<Compression> = d.iter().map(|d| d.compression).collect();
        assert_eq!(
            got,
            [Compression::Snappy, Compression::Gzip, Compression::None]
        );
        let twice = parse(
            "[[remote_write]]\nurl = \"http://x/\"\nname = \"a\"\n[[otlp]]\nurl = \"http://y/\"\nname = \"a\"\n",
        );
        let e = twice.validate(FIVE).unwrap_err();
        assert!(e.starts_with("push.otlp[0].name: \"a\" is used"), "{e}");
    }

    #[test]
    fn disabled_destinations_are_not_checked_or_started() {
        let c = parse("[[otlp]]\nenabled = false\nurl = \"nope\"\n");
        assert!(c.destinations(FIVE).unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<PushConfig>("[[otlp]]\nurl = \"http://x/\"\nurll = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `urll`"), "{e}");
    }
}
