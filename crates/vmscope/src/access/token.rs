//! New bearer tokens: 32 random bytes from the OS, written as `vms_` and
//! URL-safe base64 (the prefix lets secret scanners spot a leaked one), and
//! the `vmscope.tokens` entry that configures it (its SHA-256, never the
//! token). Used by `vmscope token new`.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::config::Scope;

/// A new token and its configuration entry.
pub struct NewToken {
    /// Shown once to the operator; never stored by vmscope.
    pub token: String,
    pub sha256_hex: String,
}

/// Makes a token; fails only when the OS has no randomness to give.
pub fn generate() -> Result<NewToken, String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("cannot read random bytes from the OS: {e}"))?;
    let token = format!(
        "vms_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    Ok(NewToken {
        sha256_hex: sha256_hex(&token),
        token,
    })
}

/// The hex SHA-256 of a token as presented in `Authorization: Bearer`.
pub fn sha256_hex(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}

/// The YAML lines of a `vmscope.tokens` entry (indented for the list).
pub fn yaml_entry(
    name: &str,
    sha256_hex: &str,
    scopes: &[Scope],
    expires: Option<std::time::SystemTime>,
) -> String {
    let scope = if scopes.len() == 1 {
        format!("\"{}\"", scopes[0])
    } else {
        let items: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
        format!("[{}]", items.join(", "))
    };
    let mut s = format!("    - name: {name}\n      sha256: {sha256_hex}\n      scope: {scope}\n");
    if let Some(e) = expires {
        s.push_str(&format!(
            "      expires: {}\n",
            humantime::format_rfc3339_seconds(e)
        ));
    }
    s
}
