//! The access counters: authentication outcomes by result and bcrypt
//! verifications (what a password check cost, so that an operator and the
//! tests can see that rate limits come before hashing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::export::{Desc, MetricSource, MetricWriter};

static AUTH: Desc = Desc::counter(
    "vmscope_http_auth_total",
    "Requests checked by vmscope's access control, by result (ok, missing, invalid, forbidden, rate_limited, expired); /healthz and open servers are not counted.",
);
static BCRYPT: Desc = Desc::counter(
    "vmscope_http_auth_bcrypt_total",
    "bcrypt password verifications vmscope ran for basic auth (repeat clients are answered from a cache).",
);

static RELOAD_OK: Desc = Desc::gauge(
    "vmscope_web_config_last_reload_successful",
    "1 if the last load of the web config file (and its certificates) succeeded; 0 if the running config is older than the file. Only with a web config.",
);
static RELOAD_TS: Desc = Desc::gauge(
    "vmscope_web_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful load of the web config file. Only with a web config.",
);

/// The `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Ok,
    /// No credentials where they are required.
    Missing,
    /// Malformed or wrong credentials.
    Invalid,
    /// Outside the IP allow-list or the credentials' scope.
    Forbidden,
    RateLimited,
    /// A token past its `expires`.
    Expired,
}

impl AuthResult {
    pub const ALL: [AuthResult; 6] = [
        AuthResult::Ok,
        AuthResult::Missing,
        AuthResult::Invalid,
        AuthResult::Forbidden,
        AuthResult::RateLimited,
        AuthResult::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Missing => "missing",
            AuthResult::Invalid => "invalid",
            AuthResult::Forbidden => "forbidden",
            AuthResult::RateLimited => "rate_limited",
            AuthResult::Expired => "expired",
        }
    }
}

#[derive(Debug, Default)]
pub struct AccessMetrics {
    results: [AtomicU64; AuthResult::ALL.len()],
    bcrypt: AtomicU64,
    /// A web config is in use: the reload gauges are exported.
    configured: AtomicBool,
    reload_ok: AtomicBool,
    /// Seconds since the epoch, as f64 bits.
    reload_ts: AtomicU64,
}

impl AccessMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn count(&self, r: AuthResult) {
        self.results[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A load of the web config succeeded at `unix_seconds`.
    pub fn loaded(&self, unix_seconds: f64) {
        self.configured.store(true, Ordering::Relaxed);
        self.reload_ok.store(true, Ordering::Relaxed);
        self.reload_ts
            .store(unix_seconds.to_bits(), Ordering::Relaxed);
    }

    /// A reload failed: the running config stays.
    pub fn reload_failed(&self) {
        self.reload_ok.store(false, Ordering::Relaxed);
    }

    pub fn bcrypt_ran(&self) {
        self.bcrypt.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, r: AuthResult) -> u64 {
        self.results[r as usize].load(Ordering::Relaxed)
    }

    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt.load(Ordering::Relaxed)
    }
}

impl MetricSource for AccessMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        out.family(&AUTH);
        for r in AuthResult::ALL {
            out.sample(&[("result", r.as_str())], self.get(r));
        }
        out.family(&BCRYPT);
        out.sample(&[], self.bcrypt_runs());
        if self.configured.load(Ordering::Relaxed) {
            out.family(&RELOAD_OK);
            out.sample(&[], u64::from(self.reload_ok.load(Ordering::Relaxed)));
            out.family(&RELOAD_TS);
            out.sample(&[], f64::from_bits(self.reload_ts.load(Ordering::Relaxed)));
        }
    }

    /// With a web config, every request moves `vmscope_http_auth_total`.
    /// Without one nothing is counted: written once and kept, like the
    /// steady sources (whose check would still see a count that moved).
    fn volatile(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_only_with_a_web_config() {
        let m = AccessMetrics::new();
        assert!(!m.volatile(), "an open server counts nothing per request");
        m.loaded(1.0);
        assert!(m.volatile());
        // A reload that fails keeps the config, and the counting.
        m.reload_failed();
        assert!(m.volatile());
    }
}
