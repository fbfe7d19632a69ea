//! The web configuration file: the Prometheus exporter-toolkit format
//! (`tls_server_config`, `http_server_config`, `basic_auth_users`,
//! `rate_limit`), read unchanged, plus vmscope's extension under a
//! top-level `vmscope:` key (bearer tokens with scopes, IP allow-lists,
//! anonymous access and rate limits per endpoint group).
//!
//! Reads: one YAML file; relative paths in `tls_server_config` are relative
//! to the file's directory, as the toolkit resolves them. Emits: a checked
//! [`WebConfig`]. Fails: with a message naming the file and the key (`web
//! config /etc/vmscope/web.yml: vmscope.tokens[1].sha256: ...`); unknown
//! keys are errors, as in the toolkit (which reads with `UnmarshalStrict`).
//! Secret values (bcrypt hashes, inline TLS keys) are never part of a
//! message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Deserialize;

/// Longest user or project key in a scope (owner keys are bounded likewise).
const MAX_SCOPE_KEY: usize = 256;
/// Longest token name (it appears in logs).
const MAX_NAME: usize = 64;
/// Most tokens, users, CIDRs per group: a config, not a database.
const MAX_ENTRIES: usize = 10_000;
/// Default and largest size of the rate limiters' client tables.
const DEFAULT_MAX_CLIENTS: usize = 10_000;
const MAX_MAX_CLIENTS: usize = 1_000_000;

/// An endpoint group: what an allow-list, an anonymous rule or a scope
/// check applies to. `/healthz` is in none: it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// `/metrics`, `/metrics.json`.
    Scrape,
    /// `/`, `/api/*` and unknown paths.
    Api,
    /// Operations that change the agent (none yet: reserved for reload).
    Admin,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Scrape, Group::Api, Group::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Scrape => "scrape",
            Group::Api => "api",
            Group::Admin => "admin",
        }
    }

    /// The group of a request path; `None` for `/healthz`, which is open.
    pub fn of_path(path: &str) -> Option<Group> {
        match path {
            "/healthz" => None,
            "/metrics" | "/metrics.json" => Some(Group::Scrape),
            _ => Some(Group::Api),
        }
    }
}

/// What a request without credentials gets in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymous {
    Deny,
    Allow,
    /// `/metrics` with host-level aggregates only. Accepted in the file;
    /// enforced by the tenant-scoping step, denied until then.
    HostOnly,
}

/// A token's or user's scope, parsed from `admin`, `user:<key>`,
/// `project:<key>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Admin,
    User(String),
    Project(String),
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, String> {
        if s == "admin" {
            return Ok(Scope::Admin);
        }
        let (kind, key) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not a scope (admin, user:<key> or project:<key>)"))?;
        if key.is_empty() || key.len() > MAX_SCOPE_KEY || key.chars().any(char::is_control) {
            return Err(format!(
                "{s:?}: the key after {kind}: must be 1 to {MAX_SCOPE_KEY} printable characters"
            ));
        }
        match kind {
            "user" => Ok(Scope::User(key.to_owned())),
            "project" => Ok(Scope::Project(key.to_owned())),
            _ => Err(format!(
                "{s:?}: unknown scope kind {kind:?} (admin, user:<key> or project:<key>)"
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::User(k) => write!(f, "user:{k}"),
            Scope::Project(k) => write!(f, "project:{k}"),
        }
    }
}

/// One bearer token: its SHA-256, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: Arc<str>,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
    pub expires: Option<SystemTime>,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A token bucket's shape: `rate` requests per second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The `rate_limit` settings, vmscope's and the toolkit's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimits {
    /// The toolkit's top-level `rate_limit`: one bucket for the whole server.
    pub global: Option<Rate>,
    pub per_ip: Option<Rate>,
    pub per_token: Option<Rate>,
    /// Size bound of each per-client table.
    pub max_clients: usize,
}

/// TLS protocol versions vmscope (rustls) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `client_auth_type`, all the toolkit's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// Cipher suites rustls implements, by their Go (toolkit) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    EcdheEcdsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305Sha256,
    EcdheRsaAes128GcmSha256,
    EcdheRsaAes256GcmSha384,
    EcdheRsaChacha20Poly1305Sha256,
    Tls13Aes128GcmSha256,
    Tls13Aes256GcmSha384,
    Tls13Chacha20Poly1305Sha256,
}

impl CipherSuite {
    /// Go's names (crypto/tls), both spellings Go accepts for ChaCha20.
    const NAMES: &[(&str, CipherSuite)] = &[
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            CipherSuite::EcdheEcdsaAes128GcmSha256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            CipherSuite::EcdheEcdsaAes256GcmSha384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            CipherSuite::EcdheEcdsaChacha20Poly1305Sha256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            CipherSuite::EcdheEcdsaChacha20Poly1305Sha256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            CipherSuite::EcdheRsaAes128GcmSha256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            CipherSuite::EcdheRsaAes256GcmSha384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            CipherSuite::EcdheRsaChacha20Poly1305Sha256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            CipherSuite::EcdheRsaChacha20Poly1305Sha256,
        ),
        ("TLS_AES_128_GCM_SHA256", CipherSuite::Tls13Aes128GcmSha256),
        ("TLS_AES_256_GCM_SHA384", CipherSuite::Tls13Aes256GcmSha384),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            CipherSuite::Tls13Chacha20Poly1305Sha256,
        ),
    ];

    fn parse(name: &str) -> Result<CipherSuite, String> {
        if let Some((_, s)) = Self::NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(*s);
        }
        if name.starts_with("TLS_")
            && (name.contains("_CBC_")
                || name.contains("_RSA_WITH_")
                || name.contains("RC4")
                || name.contains("3DES"))
        {
            Err(format!(
                "{name} is not supported (vmscope's TLS library, rustls, has only AEAD suites with forward secrecy); remove it"
            ))
        } else {
            Err(format!("unknown cipher suite {name:?}"))
        }
    }
}

/// `curve_preferences`, the toolkit's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
    X25519,
}

impl Curve {
    fn parse(name: &str) -> Result<Curve, String> {
        match name {
            "CurveP256" => Ok(Curve::P256),
            "CurveP384" => Ok(Curve::P384),
            "CurveP521" => Ok(Curve::P521),
            "X25519" => Ok(Curve::X25519),
            _ => Err(format!(
                "unknown curve {name:?} (CurveP256, CurveP384, CurveP521, X25519)"
            )),
        }
    }
}

/// PEM from a file or written inline in the config.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => f.debug_tuple("File").field(p).finish(),
            // May be a private key.
            Pem::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

/// The checked `tls_server_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Empty: rustls's defaults.
    pub cipher_suites: Vec<CipherSuite>,
    /// Empty: rustls's defaults.
    pub curves: Vec<Curve>,
    pub client_allowed_sans: Vec<String>,
}

/// The whole checked file.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    pub tls: Option<TlsSettings>,
    /// `http_server_config.headers`, set on every response.
    pub headers: Vec<(String, String)>,
    /// `http_server_config.http2` (vmscope serves HTTP/1.1 only; accepted).
    pub http2: bool,
    /// user -> bcrypt hash.
    pub users: BTreeMap<String, BcryptHash>,
    pub tokens: Vec<TokenEntry>,
    /// Per group: the CIDRs allowed (none listed: everyone).
    pub allow: BTreeMap<Group, Vec<IpNet>>,
    pub anonymous: BTreeMap<Group, Anonymous>,
    pub rate_limits: RateLimits,
}

/// A bcrypt hash from `basic_auth_users`, kept out of `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct BcryptHash(pub String);

impl fmt::Debug for BcryptHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<bcrypt hash>")
    }
}

// ---- the file as written ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RawToolkitRate>,
    #[serde(default)]
    vmscope: Option<RawExt>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    cert_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<String>,
    #[serde(default)]
    cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    curve_preferences: Option<Vec<String>>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    /// Go's crypto/tls ignores it since Go 1.18; accepted for compatibility.
    #[serde(default)]
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolkitRate {
    #[serde(default)]
    burst: u32,
    /// A Go duration (`1s`, `100ms`): one request per interval.
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExt {
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    allow: RawGroups<Vec<String>>,
    #[serde(default)]
    anonymous: RawGroups<Anonymous>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound = "T: Deserialize<'de>")]
struct RawGroups<T> {
    #[serde(default)]
    scrape: Option<T>,
    #[serde(default)]
    api: Option<T>,
    #[serde(default)]
    admin: Option<T>,
}

impl<T> Default for RawGroups<T> {
    fn default() -> Self {
        RawGroups {
            scrape: None,
            api: None,
            admin: None,
        }
    }
}

impl<T> RawGroups<T> {
    fn into_iter(self) -> impl Iterator<Item = (Group, T)> {
        [
            (Group::Scrape, self.scrape),
            (Group::Api, self.api),
            (Group::Admin, self.admin),
        ]
        .into_iter()
        .filter_map(|(g, v)| v.map(|v| (g, v)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    scope: OneOrMany,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default)]
    per_ip: Option<RawRate>,
    #[serde(default)]
    per_token: Option<RawRate>,
    #[serde(default)]
    max_clients: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    /// Requests per second, sustained.
    rate: f64,
    /// Requests at once [default: rate, at least 1].
    #[serde(default)]
    burst: Option<f64>,
}

/// A load error: the file and the message (which starts with the key).
#[derive(Debug, thiserror::Error)]
#[error("web config {}: {message}", path.display())]
pub struct WebConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl WebConfig {
    /// Reads and checks `path`; relative TLS file paths are resolved from
    /// its directory and must be readable.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let err = |message: String| WebConfigError {
            path: path.to_owned(),
            message,
        };
        // A web config is small; a huge file is a mistake, not a config.
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > 4 * 1024 * 1024 {
            return Err(err("larger than 4 MiB".to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir)
            .map(|mut c| {
                c.path = path.to_owned();
                c
            })
            .map_err(err)
    }

    /// Parses and checks `text`; `dir` resolves relative TLS paths. The
    /// error starts with the key.
    pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, String> {
        // An empty file is a valid toolkit config (nothing configured).
        let raw: RawFile = if text.trim().is_empty() {
            RawFile::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let inner = redact_quoted(&e.into_inner().to_string());
                // serde_yaml appends " at line N column M" (kept: it helps)
                // and sometimes starts with a path of its own.
                let own_path = inner
                    .split_once(": ")
                    .is_some_and(|(p, _)| !p.contains(' ') && key.starts_with(p));
                if key == "." || own_path {
                    inner
                } else {
                    format!("{key}: {inner}")
                }
            })?
        };
        let mut cfg = WebConfig {
            path: PathBuf::new(),
            tls: None,
            headers: Vec::new(),
            http2: true,
            users: BTreeMap::new(),
            tokens: Vec::new(),
            allow: BTreeMap::new(),
            anonymous: BTreeMap::new(),
            rate_limits: RateLimits {
                max_clients: DEFAULT_MAX_CLIENTS,
                ..RateLimits::default()
            },
        };
        if let Some(t) = raw.tls_server_config {
            cfg.tls = tls(t, dir)?;
        }
        if let Some(h) = raw.http_server_config {
            cfg.http2 = h.http2.unwrap_or(true);
            for (name, value) in h.headers.unwrap_or_default() {
                check_header(&name, &value)?;
                cfg.headers.push((name, value));
            }
        }
        for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
            let key = format!("basic_auth_users.{user}");
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                return Err(format!(
                    "{key}: a user name must be non-empty, without ':' or control characters"
                ));
            }
            // Only the cost and shape are checked: the hash itself stays secret.
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!(
                    "{key}: not a bcrypt hash (write one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                ));
            }
            cfg.users.insert(user, BcryptHash(hash));
        }
        if cfg.users.len() > MAX_ENTRIES {
            return Err(format!("basic_auth_users: more than {MAX_ENTRIES} users"));
        }
        if let Some(r) = raw.rate_limit {
            cfg.rate_limits.global = toolkit_rate(&r)?;
        }
        if let Some(ext) = raw.vmscope {
            extension(ext, &mut cfg)?;
        }
        Ok(cfg)
    }

    /// Whether any credentials are configured (then anonymous access is
    /// denied unless a group allows it).
    pub fn has_credentials(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }

    /// What an anonymous request gets in `group`.
    pub fn anonymous_in(&self, group: Group) -> Anonymous {
        match self.anonymous.get(&group) {
            Some(a) => *a,
            None if self.has_credentials() => Anonymous::Deny,
            None => Anonymous::Allow,
        }
    }

    /// Whether `ip` may reach `group` (true when the group has no list).
    pub fn ip_allowed(&self, group: Group, ip: Option<IpAddr>) -> bool {
        match self.allow.get(&group) {
            None => true,
            Some(nets) => ip.is_some_and(|ip| {
                let ip = canonical(ip);
                nets.iter().any(|n| n.contains(&ip))
            }),
        }
    }
}

/// serde quotes a value of the wrong type (`invalid type: string "..."`):
/// a value longer than a key name may be a password hash or a PEM key put
/// in the wrong place, so it is replaced.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut parts = msg.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        // Odd pieces (0, 2, ... after the first) are inside quotes.
        if i % 2 == 0 && part.chars().count() > 24 {
            out.push_str("<redacted>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack
/// listener reports) as the IPv4 address they are, so v4 CIDRs match.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn tls(t: RawTls, dir: &Path) -> Result<Option<TlsSettings>, String> {
    let k = |name: &str| format!("tls_server_config.{name}");
    let enabled = t.cert_file.is_some()
        || t.cert.is_some()
        || t.key_file.is_some()
        || t.key.is_some()
        || t.client_ca_file.is_some()
        || t.client_ca.is_some()
        || t.client_auth_type.is_some();
    if !enabled {
        // The toolkit serves plain HTTP then; so does vmscope.
        return Ok(None);
    }
    let file_or_inline = |file: Option<String>,
                          inline: Option<String>,
                          fkey: &str,
                          ikey: &str|
     -> Result<Option<Pem>, String> {
        match (
            file.filter(|f| !f.is_empty()),
            inline.filter(|i| !i.is_empty()),
        ) {
            (Some(_), Some(_)) => Err(format!(
                "{}: set either {fkey} or {ikey}, not both",
                k(fkey)
            )),
            (Some(f), None) => {
                let p = dir.join(f);
                std::fs::File::open(&p)
                    .map_err(|e| format!("{}: cannot read {}: {e}", k(fkey), p.display()))?;
                Ok(Some(Pem::File(p)))
            }
            (None, Some(i)) => Ok(Some(Pem::Inline(i))),
            (None, None) => Ok(None),
        }
    };
    let cert = file_or_inline(t.cert_file, t.cert, "cert_file", "cert")?
        .ok_or_else(|| format!("{}: missing one of cert or cert_file", k("cert_file")))?;
    let key = file_or_inline(t.key_file, t.key, "key_file", "key")?
        .ok_or_else(|| format!("{}: missing one of key or key_file", k("key_file")))?;
    let client_ca = file_or_inline(t.client_ca_file, t.client_ca, "client_ca_file", "client_ca")?;
    let client_auth = match t.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        // The second spelling is the toolkit's, kept for compatibility.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => {
            return Err(format!(
                "{}: unknown value {other:?} (NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)",
                k("client_auth_type")
            ));
        }
    };
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(format!(
            "{}: a client CA is configured but client_auth_type is NoClientCert",
            k("client_auth_type")
        ));
    }
    // VerifyClientCertIfGiven / RequireAndVerifyClientCert without a client
    // CA load, as in the toolkit (Go then verifies against the system's
    // roots); the TLS serving step decides what rustls verifies against.
    let version = |v: Option<String>, key: &str, default: TlsVersion| match v.as_deref() {
        None | Some("") => Ok(default),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some(old @ ("TLS10" | "TLS11")) => Err(format!(
            "{}: {old} is not supported (rustls speaks TLS 1.2 and 1.3)",
            k(key)
        )),
        Some(other) => Err(format!(
            "{}: unknown TLS version {other:?} (TLS12 or TLS13)",
            k(key)
        )),
    };
    let min_version = version(t.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(t.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(format!("{}: above max_version", k("min_version")));
    }
    let mut cipher_suites = Vec::new();
    for (i, name) in t.cipher_suites.unwrap_or_default().iter().enumerate() {
        cipher_suites.push(
            CipherSuite::parse(name).map_err(|e| format!("{}[{i}]: {e}", k("cipher_suites")))?,
        );
    }
    let mut curves = Vec::new();
    for (i, name) in t.curve_preferences.unwrap_or_default().iter().enumerate() {
        curves
            .push(Curve::parse(name).map_err(|e| format!("{}[{i}]: {e}", k("curve_preferences")))?);
    }
    let client_allowed_sans = t.client_allowed_sans.unwrap_or_default();
    if !client_allowed_sans.is_empty()
        && !matches!(
            client_auth,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    {
        return Err(format!(
            "{}: needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert",
            k("client_allowed_sans")
        ));
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites,
        curves,
        client_allowed_sans,
    }))
}

/// The toolkit's rule for `http_server_config.headers`: only these
/// headers, and two of them with fixed values.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    let key = format!("http_server_config.headers.{name}");
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "strict-transport-security" | "x-xss-protection" | "content-security-policy" => {}
        "x-content-type-options" if value == "nosniff" => {}
        "x-content-type-options" => {
            return Err(format!("{key}: the only allowed value is nosniff"));
        }
        "x-frame-options"
            if value.eq_ignore_ascii_case("deny") || value.eq_ignore_ascii_case("sameorigin") => {}
        "x-frame-options" => {
            return Err(format!("{key}: allowed values are deny and sameorigin"));
        }
        _ => {
            return Err(format!(
                "{key}: not an allowed header (Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, Content-Security-Policy)"
            ));
        }
    }
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(format!("{key}: control characters in the value"));
    }
    Ok(())
}

fn toolkit_rate(r: &RawToolkitRate) -> Result<Option<Rate>, String> {
    let Some(interval) = r.interval.as_deref().filter(|s| !s.is_empty()) else {
        // The toolkit's limiter is off when interval is 0 or unset.
        return Ok(None);
    };
    let d = humantime::parse_duration(interval)
        .map_err(|e| format!("rate_limit.interval: {interval:?}: {e}"))?;
    if d.is_zero() {
        return Ok(None);
    }
    if r.burst == 0 {
        return Err("rate_limit.burst: must be at least 1 when interval is set".to_owned());
    }
    Ok(Some(Rate {
        per_second: 1.0 / d.as_secs_f64(),
        burst: f64::from(r.burst),
    }))
}

fn extension(ext: RawExt, cfg: &mut WebConfig) -> Result<(), String> {
    if ext.tokens.len() > MAX_ENTRIES {
        return Err(format!("vmscope.tokens: more than {MAX_ENTRIES} tokens"));
    }
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, t) in ext.tokens.into_iter().enumerate() {
        let key = format!("vmscope.tokens[{i}]");
        if t.name.is_empty()
            || t.name.len() > MAX_NAME
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "{key}.name: 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, '-', '_', '.'"
            ));
        }
        if !names.insert(t.name.clone()) {
            return Err(format!("{key}.name: {:?} is used twice", t.name));
        }
        let sha256 = parse_hex32(&t.sha256).ok_or_else(|| {
            format!("{key}.sha256: not 64 hex digits (the SHA-256 of the token; `vmscope token new` prints it)")
        })?;
        if !hashes.insert(sha256) {
            return Err(format!("{key}.sha256: the same token is configured twice"));
        }
        let list = match t.scope {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if list.is_empty() {
            return Err(format!("{key}.scope: empty"));
        }
        let mut scopes = Vec::new();
        for s in &list {
            scopes.push(Scope::parse(s).map_err(|e| format!("{key}.scope: {e}"))?);
        }
        if scopes.contains(&Scope::Admin) && scopes.len() > 1 {
            return Err(format!(
                "{key}.scope: admin sees everything; do not combine it with tenants"
            ));
        }
        scopes.sort();
        scopes.dedup();
        let expires = match t.expires.as_deref() {
            None => None,
            Some(s) => Some(humantime::parse_rfc3339_weak(s).map_err(|e| {
                format!("{key}.expires: {s:?} is not an RFC 3339 time in UTC (2027-01-31T00:00:00Z): {e}")
            })?),
        };
        cfg.tokens.push(TokenEntry {
            name: t.name.into(),
            sha256,
            scopes,
            expires,
        });
    }
    for (group, list) in ext.allow.into_iter() {
        let key = format!("vmscope.allow.{}", group.as_str());
        if list.len() > MAX_ENTRIES {
            return Err(format!("{key}: more than {MAX_ENTRIES} entries"));
        }
        let mut nets = Vec::new();
        for (i, s) in list.iter().enumerate() {
            // A bare address is a /32 or /128.
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{key}[{i}]: {s:?} is not an IP address or CIDR"))?;
            nets.push(net.trunc());
        }
        cfg.allow.insert(group, nets);
    }
    for (group, a) in ext.anonymous.into_iter() {
        if a == Anonymous::HostOnly && group != Group::Scrape {
            return Err(format!(
                "vmscope.anonymous.{}: host_only applies to scrape only",
                group.as_str()
            ));
        }
        cfg.anonymous.insert(group, a);
    }
    if let Some(r) = ext.rate_limit {
        let rate = |r: RawRate, key: &str| -> Result<Rate, String> {
            if !(r.rate.is_finite() && r.rate > 0.0 && r.rate <= 1e6) {
                return Err(format!(
                    "vmscope.rate_limit.{key}.rate: must be above 0 and at most 1000000 (requests per second)"
                ));
            }
            let burst = r.burst.unwrap_or(r.rate.max(1.0));
            if !(burst.is_finite() && (1.0..=1e6).contains(&burst)) {
                return Err(format!(
                    "vmscope.rate_limit.{key}.burst: must be 1 to 1000000"
                ));
            }
            Ok(Rate {
                per_second: r.rate,
                burst,
            })
        };
        cfg.rate_limits.per_ip = r.per_ip.map(|x| rate(x, "per_ip")).transpose()?;
        cfg.rate_limits.per_token = r.per_token.map(|x| rate(x, "per_token")).transpose()?;
        if let Some(m) = r.max_clients {
            if !(1..=MAX_MAX_CLIENTS).contains(&m) {
                return Err(format!(
                    "vmscope.rate_limit.max_clients: must be 1 to {MAX_MAX_CLIENTS}"
                ));
            }
            cfg.rate_limits.max_clients = m;
        }
    }
    Ok(())
}

/// 64 hex digits (either case) as 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}
