//! The access decision for one request, in the order the module docs give:
//! allow-list, IP (and global) rate limit, credentials, token rate limit,
//! scope. Framework-free: the HTTP edge hands in the path, the client IP and
//! the `Authorization` header, and runs the one slow step (a bcrypt
//! verification, [`PendingBasic::verify`]) on a blocking thread.
//!
//! Bearer tokens are looked up by their SHA-256 in a map and the stored
//! hash is then compared in constant time. The map lookup's timing depends
//! on the SHA-256 of the presented token only, which tells nothing about a
//! configured token (finding a token from its hash is a preimage attack).
//!
//! Basic auth: a verified (user, password, stored hash) is remembered under
//! the SHA-256 of a per-process random key and those three, in a table
//! bounded like the rate limiters' ([`super::limiter`]), so a scraper that
//! sends the same credentials every 15 s pays bcrypt once. Wrong passwords
//! are not remembered (that would let a flood evict the good entries); they
//! are bounded by the rate limits, which come first.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{Anonymous, Group, Scope, TokenEntry, WebConfig, canonical};
use super::limiter::Limiter;
use super::metrics::{AccessMetrics, AuthResult};
use super::{Access, Principal};

/// Remembered basic-auth verifications, at most.
const BCRYPT_CACHE_MAX: usize = 10_000;

/// A valid bcrypt hash of nothing anyone sends, verified against when the
/// user is unknown, so that the answer takes as long as for a known user
/// (no user enumeration by timing). Computed once, on first use.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    bcrypt::hash("vmscope: no such user", 10).unwrap_or_else(|_| {
        // Only fails on a bad cost; 10 is valid. A literal as the fallback.
        "$2b$10$abcdefghijklmnopqrstuu5Gm6tH6cQ6mF3pT3b1Y0m5mV1cAj6q6".to_owned()
    })
});

/// The `Authorization` header as presented.
#[derive(PartialEq, Eq)]
pub enum Credentials {
    None,
    Bearer(String),
    Basic {
        user: String,
        password: String,
    },
    /// Not a scheme vmscope takes, bad base64, or several headers.
    Malformed,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, <redacted>)"),
            Credentials::Malformed => f.write_str("Malformed"),
        }
    }
}

impl Credentials {
    /// From every `Authorization` header value of the request.
    pub fn parse<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Credentials {
        let Some(v) = values.next() else {
            return Credentials::None;
        };
        if values.next().is_some() {
            return Credentials::Malformed;
        }
        let Ok(v) = std::str::from_utf8(v) else {
            return Credentials::Malformed;
        };
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if rest.is_empty() {
            return Credentials::Malformed;
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            Credentials::Bearer(rest.to_owned())
        } else if scheme.eq_ignore_ascii_case("basic") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                return Credentials::Malformed;
            };
            let Ok(text) = String::from_utf8(raw) else {
                return Credentials::Malformed;
            };
            match text.split_once(':') {
                Some((u, p)) => Credentials::Basic {
                    user: u.to_owned(),
                    password: p.to_owned(),
                },
                None => Credentials::Malformed,
            }
        } else {
            Credentials::Malformed
        }
    }
}

/// Why a request is refused, with what to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub result: AuthResult,
    /// 401, 403 or 429.
    pub status: u16,
    /// For the client and the log: never a secret.
    pub message: &'static str,
    /// Seconds, for `Retry-After` (429 only).
    pub retry_after: Option<u64>,
    /// The token or user name, when known (for the log).
    pub who: Option<String>,
}

impl Refusal {
    fn new(result: AuthResult, message: &'static str) -> Refusal {
        let status = match result {
            AuthResult::Missing | AuthResult::Invalid | AuthResult::Expired => 401,
            AuthResult::RateLimited => 429,
            AuthResult::Forbidden | AuthResult::Ok => 403,
        };
        Refusal {
            result,
            status,
            message,
            retry_after: None,
            who: None,
        }
    }

    fn limited(wait_seconds: f64) -> Refusal {
        let mut r = Refusal::new(AuthResult::RateLimited, "rate limit exceeded; retry later");
        r.retry_after = Some(wait_seconds.ceil().clamp(1.0, 3600.0) as u64);
        r
    }

    fn by(mut self, who: &Principal) -> Refusal {
        self.who = Some(who.describe());
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Access),
    Refuse(Refusal),
}

/// The first step's outcome: decided, or a bcrypt verification to run (on
/// a blocking thread) and hand to [`Gate::finish`].
pub enum Verdict {
    Decided(Decision),
    Bcrypt(PendingBasic),
}

/// A basic-auth check waiting for its bcrypt verification.
pub struct PendingBasic {
    policy: Arc<Policy>,
    group: Group,
    user: Arc<str>,
    known: bool,
    password: String,
    hash: String,
    cache_key: [u8; 32],
}

impl PendingBasic {
    /// Runs bcrypt (tens of milliseconds at cost 10: call it off the async
    /// threads). False for a wrong password or an unknown user.
    pub fn verify(&self) -> bool {
        self.policy.metrics.bcrypt_ran();
        let hash = if self.known {
            self.hash.as_str()
        } else {
            DUMMY_HASH.as_str()
        };
        let ok = bcrypt::verify(&self.password, hash).unwrap_or(false);
        ok && self.known
    }
}

/// The verified-credentials cache: current and previous generation.
type Generations = (HashSet<[u8; 32]>, HashSet<[u8; 32]>);

/// One loaded web config, with its limiters and cache (a reload starts
/// them afresh).
struct Policy {
    cfg: Option<WebConfig>,
    tokens: HashMap<[u8; 32], TokenEntry>,
    users: HashMap<String, (Arc<str>, String)>,
    global: Option<Limiter<()>>,
    per_ip: Option<Limiter<IpAddr>>,
    per_token: Option<Limiter<Principal>>,
    cache_secret: [u8; 32],
    verified: Mutex<Generations>,
    metrics: Arc<AccessMetrics>,
}

impl Policy {
    fn new(cfg: Option<WebConfig>, metrics: Arc<AccessMetrics>) -> Policy {
        let mut cache_secret = [0u8; 32];
        // Without randomness the cache key is still a SHA-256 of the
        // credentials: weaker (guessable offline from a memory dump), not wrong.
        let _ = getrandom::fill(&mut cache_secret);
        let (mut tokens, mut users) = (HashMap::new(), HashMap::new());
        let (mut global, mut per_ip, mut per_token) = (None, None, None);
        if let Some(c) = &cfg {
            for t in &c.tokens {
                tokens.insert(t.sha256, t.clone());
            }
            for (u, h) in &c.users {
                users.insert(u.clone(), (Arc::from(u.as_str()), h.0.clone()));
            }
            let max = c.rate_limits.max_clients;
            global = c.rate_limits.global.map(|r| Limiter::new(r, 2));
            per_ip = c.rate_limits.per_ip.map(|r| Limiter::new(r, max));
            per_token = c.rate_limits.per_token.map(|r| Limiter::new(r, max));
        }
        Policy {
            cfg,
            tokens,
            users,
            global,
            per_ip,
            per_token,
            cache_secret,
            verified: Mutex::new((HashSet::new(), HashSet::new())),
            metrics,
        }
    }

    fn cache_key(&self, user: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_secret);
        for part in [user, password, hash] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let g = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        g.0.contains(key) || g.1.contains(key)
    }

    fn remember(&self, key: [u8; 32]) {
        let mut g = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= BCRYPT_CACHE_MAX / 2 {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(key);
    }
}

/// The access control of a running server: the current policy and the
/// counters. Cheap to share (`Arc<Gate>`).
pub struct Gate {
    policy: RwLock<Arc<Policy>>,
    metrics: Arc<AccessMetrics>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// No web config: everyone is admin, nothing is counted.
    pub fn open() -> Gate {
        Gate::new(None)
    }

    pub fn new(cfg: Option<WebConfig>) -> Gate {
        let metrics = Arc::new(AccessMetrics::new());
        if cfg.is_some() {
            metrics.loaded(super::reload::unix_now());
        }
        Gate {
            policy: RwLock::new(Arc::new(Policy::new(cfg, Arc::clone(&metrics)))),
            metrics,
        }
    }

    /// Replaces the policy (a reloaded file); limiters and cache restart.
    pub fn replace(&self, cfg: Option<WebConfig>) {
        if cfg.is_some() {
            self.metrics.loaded(super::reload::unix_now());
        }
        let p = Arc::new(Policy::new(cfg, Arc::clone(&self.metrics)));
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = p;
    }

    pub fn metrics(&self) -> Arc<AccessMetrics> {
        Arc::clone(&self.metrics)
    }

    fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// `http_server_config.headers`, for every response.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.current()
            .cfg
            .as_ref()
            .map(|c| c.headers.clone())
            .unwrap_or_default()
    }

    /// The first step for a request to `path` from `ip` (None: unknown,
    /// which no allow-list admits).
    pub fn check(
        &self,
        path: &str,
        ip: Option<IpAddr>,
        credentials: Credentials,
        now: (Instant, SystemTime),
    ) -> Verdict {
        let policy = self.current();
        let decided = |d: Decision| {
            if let Decision::Refuse(r) = &d {
                policy.metrics.count(r.result);
            }
            Verdict::Decided(d)
        };
        let Some(group) = Group::of_path(path) else {
            return Verdict::Decided(Decision::Allow(Access::Anonymous));
        };
        let Some(cfg) = &policy.cfg else {
            return Verdict::Decided(Decision::Allow(Access::Admin {
                who: Principal::Open,
            }));
        };
        if !cfg.ip_allowed(group, ip) {
            return decided(Decision::Refuse(Refusal::new(
                AuthResult::Forbidden,
                "client address not allowed",
            )));
        }
        if let Some(l) = &policy.global
            && let Err(wait) = l.take(&(), now.0)
        {
            return decided(Decision::Refuse(Refusal::limited(wait)));
        }
        if let Some(l) = &policy.per_ip {
            let key = ip.map_or(IpAddr::from([0u8; 4]), canonical);
            if let Err(wait) = l.take(&key, now.0) {
                return decided(Decision::Refuse(Refusal::limited(wait)));
            }
        }
        match credentials {
            Credentials::None => {
                if !cfg.has_credentials() {
                    // Only allow-lists or limits configured: everyone who
                    // got this far sees everything.
                    return Verdict::Decided(Decision::Allow(Access::Admin {
                        who: Principal::Open,
                    }));
                }
                match cfg.anonymous_in(group) {
                    Anonymous::Allow => {
                        policy.metrics.count(AuthResult::Ok);
                        Verdict::Decided(Decision::Allow(Access::Anonymous))
                    }
                    // Counted by the HTTP edge once the route has taken or
                    // refused it (`crate::api::access`).
                    Anonymous::HostOnly => Verdict::Decided(Decision::Allow(Access::HostOnly)),
                    Anonymous::Deny => decided(Decision::Refuse(Refusal::new(
                        AuthResult::Missing,
                        "credentials required",
                    ))),
                }
            }
            Credentials::Malformed => decided(Decision::Refuse(Refusal::new(
                AuthResult::Invalid,
                "malformed Authorization header (Bearer or Basic)",
            ))),
            Credentials::Bearer(token) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let found = policy
                    .tokens
                    .get(&digest)
                    .filter(|t| bool::from(t.sha256.ct_eq(&digest)));
                let Some(t) = found else {
                    return decided(Decision::Refuse(Refusal::new(
                        AuthResult::Invalid,
                        "invalid credentials",
                    )));
                };
                let who = Principal::Token(Arc::clone(&t.name));
                if t.expires.is_some_and(|e| e <= now.1) {
                    return decided(Decision::Refuse(
                        Refusal::new(AuthResult::Expired, "token expired").by(&who),
                    ));
                }
                let scopes = t.scopes.clone();
                decided(after_credentials(&policy, group, who, &scopes, now.0))
            }
            Credentials::Basic { user, password } => {
                if policy.users.is_empty() {
                    // No users: nothing to enumerate, no bcrypt to spend.
                    return decided(Decision::Refuse(Refusal::new(
                        AuthResult::Invalid,
                        "invalid credentials",
                    )));
                }
                // An unknown user is checked against the dummy hash (in
                // `verify`, on the blocking thread).
                let (name, hash, known) = match policy.users.get(&user) {
                    Some((n, h)) => (Arc::clone(n), h.clone(), true),
                    None => (Arc::from("?"), String::new(), false),
                };
                let cache_key = policy.cache_key(&user, &password, &hash);
                if known && policy.cached(&cache_key) {
                    let who = Principal::User(name);
                    return decided(after_credentials(
                        &policy,
                        group,
                        who,
                        &[Scope::Admin],
                        now.0,
                    ));
                }
                Verdict::Bcrypt(PendingBasic {
                    policy: Arc::clone(&policy),
                    group,
                    user: name,
                    known,
                    password,
                    hash,
                    cache_key,
                })
            }
        }
    }

    /// The second step of a basic-auth check, with [`PendingBasic::verify`]'s
    /// result.
    pub fn finish(&self, pending: PendingBasic, verified: bool, now: Instant) -> Decision {
        let policy = pending.policy;
        let d = if verified {
            policy.remember(pending.cache_key);
            // Basic-auth users are the toolkit's: they see everything.
            after_credentials(
                &policy,
                pending.group,
                Principal::User(pending.user),
                &[Scope::Admin],
                now,
            )
        } else {
            Decision::Refuse(Refusal::new(AuthResult::Invalid, "invalid credentials"))
        };
        if let Decision::Refuse(r) = &d {
            policy.metrics.count(r.result);
        }
        d
    }
}

/// Token rate limit and scope, for an authenticated principal. Counts `ok`.
fn after_credentials(
    policy: &Policy,
    group: Group,
    who: Principal,
    scopes: &[Scope],
    now: Instant,
) -> Decision {
    if let Some(l) = &policy.per_token
        && let Err(wait) = l.take(&who, now)
    {
        return Decision::Refuse(Refusal::limited(wait).by(&who));
    }
    if scopes.contains(&Scope::Admin) {
        policy.metrics.count(AuthResult::Ok);
        return Decision::Allow(Access::Admin { who });
    }
    // A tenant: the handlers scope what it sees (each route says whether
    // it does; the others refuse tenants, see `crate::api::Resource`). The
    // HTTP edge counts the outcome (ok or forbidden) once the route has
    // decided, so that a request is counted once.
    let _ = group;
    Decision::Allow(tenant(who, scopes))
}

/// What [`Access::Tenant`] a list of tenant scopes makes (for the
/// tenant-scoping step and its tests).
pub fn tenant(who: Principal, scopes: &[Scope]) -> Access {
    let users: Vec<String> = scopes
        .iter()
        .filter_map(|s| match s {
            Scope::User(k) => Some(k.clone()),
            _ => None,
        })
        .collect();
    let projects: Vec<String> = scopes
        .iter()
        .filter_map(|s| match s {
            Scope::Project(k) => Some(k.clone()),
            _ => None,
        })
        .collect();
    Access::Tenant {
        who,
        users: users.into(),
        projects: projects.into(),
    }
}
