//! `vmscope token new`: a new bearer token, printed once, and the lines to
//! paste under `vmscope: tokens:` in the web config file. The token itself
//! goes to stdout first so that `| head -1` captures it; the entry holds
//! only its SHA-256.
//!
//! Fails: with a usage error (exit 2) naming the flag for a bad scope, name
//! or expiry.

use std::time::{Duration, SystemTime};

use super::{Failure, TokenNewArgs, print_stdout};
use crate::access::{Scope, token};

pub fn new(args: TokenNewArgs) -> Result<(), Failure> {
    let mut scopes = Vec::new();
    for s in &args.scope {
        scopes.push(Scope::parse(s).map_err(|e| Failure::usage(anyhow::anyhow!("--scope: {e}")))?);
    }
    if scopes.contains(&Scope::Admin) && scopes.len() > 1 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--scope: admin sees everything; do not combine it with tenants"
        )));
    }
    let name_ok = !args.name.is_empty()
        && args.name.len() <= 64
        && args
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(Failure::usage(anyhow::anyhow!(
            "--name: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        )));
    }
    let expires = match args.expires.as_deref() {
        None => None,
        Some(s) => Some(
            parse_expiry(s, SystemTime::now())
                .map_err(|e| Failure::usage(anyhow::anyhow!("--expires: {e}")))?,
        ),
    };
    let t = token::generate().map_err(|e| Failure::runtime(anyhow::anyhow!(e)))?;
    let entry = token::yaml_entry(&args.name, &t.sha256_hex, &scopes, expires);
    print_stdout(&format!(
        "{}\n\n# Shown once: vmscope keeps only its SHA-256. Add under `vmscope:` in the web config file:\n#   vmscope:\n#     tokens:\n{entry}",
        t.token
    ))
}

/// A lifetime from now (`90d`) or an RFC 3339 time in UTC.
fn parse_expiry(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        if d < Duration::from_secs(60) {
            return Err(format!("{s:?} is less than a minute"));
        }
        return now
            .checked_add(d)
            .ok_or_else(|| format!("{s:?} is too far in the future"));
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| {
        format!("{s:?} is neither a duration (90d) nor an RFC 3339 time (2027-01-31T00:00:00Z)")
    })
}
