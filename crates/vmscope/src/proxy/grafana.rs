//! Grafana panel embedding: the same-origin `/d-solo/<uid>/view` iframe URL,
//! and an optional short-lived HS256 JWT for Grafana's JWT URL login.
//!
//! Reads: the request's parameters as plain pairs, the caller's tenant
//! variable (fixed from its token, never from the request), the
//! `[proxy.grafana]` settings and the time (handed in). Emits: the URL.
//! Pure: no IO.
//!
//! Fails ([`PanelError`], a 400 naming the parameter): a missing or
//! invalid `uid`/`panelId`, a time, refresh, theme or org that is not of
//! Grafana's forms, a template variable with a bad name, or a tenant
//! setting its own owner variable.
//!
//! Why hand-rolled HS256: the token is one HMAC-SHA256 over two base64url
//! JSON objects; `hmac` + `sha2` (already in the tree) do it in a few lines
//! that are tested here, where `jsonwebtoken` would add its own crypto
//! stack for one algorithm.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::config::GrafanaConfig;

/// A bad request parameter; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PanelError(pub String);

/// The owner template variable fixed by a tenant token: `var-<name>` once
/// per value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedVariable {
    pub name: String,
    pub values: Vec<String>,
    /// Other variables a tenant may not set: every owner variable (the
    /// user's and the project's label names), so that a user's tenant
    /// cannot ask a panel for another project, or the reverse.
    pub reserved: Vec<String>,
}

/// Who the URL is for, for the JWT's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The token's or user's name (`sub`).
    pub name: String,
    /// `project:acme` style scopes of a tenant; empty for an admin.
    pub scopes: Vec<String>,
}

/// Percent-encodes everything but RFC 3986's unreserved characters
/// (space is `%20`, never `+`, which Grafana would read as a plus in a
/// path and as a space in a query).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn bad(m: String) -> PanelError {
    PanelError(m)
}

fn one<'a>(params: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, PanelError> {
    let mut it = params.iter().filter(|(k, _)| k == key);
    let first = it.next().map(|(_, v)| v.as_str());
    if it.next().is_some() {
        return Err(bad(format!("{key}: given more than once")));
    }
    Ok(first)
}

/// Grafana's relative (`now`, `now-1h`, `now-7d/d`) or absolute (epoch
/// milliseconds) times.
fn is_time(v: &str) -> bool {
    if !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    let Some(rest) = v.strip_prefix("now") else {
        return false;
    };
    let (offset, round) = match rest.split_once('/') {
        Some((o, r)) => (o, Some(r)),
        None => (rest, None),
    };
    let unit = |u: &str| matches!(u, "s" | "m" | "h" | "d" | "w" | "M" | "y");
    let offset_ok = offset.is_empty()
        || offset
            .strip_prefix(['-', '+'])
            .and_then(|o| {
                let digits = o.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let u = &o[digits.len()..];
                (!digits.is_empty()
                    && digits.len() <= 6
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && unit(u))
                .then_some(())
            })
            .is_some();
    offset_ok && round.is_none_or(unit)
}

fn is_refresh(v: &str) -> bool {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let u = &v[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 5
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(u, "ms" | "s" | "m" | "h" | "d")
}

fn is_uid(v: &str) -> bool {
    (1..=40).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_var_name(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn positive(key: &str, v: &str) -> Result<u64, PanelError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && *n < 1 << 53)
        .ok_or_else(|| bad(format!("{key}: {:?} is not a positive integer", short(v))))
}

fn short(v: &str) -> String {
    v.chars().take(64).collect()
}

/// The iframe `src` for the request's parameters (`uid`, `panelId`,
/// optional `from`, `to`, `refresh`, `theme`, `orgId`, `var-<name>`), with
/// `fixed` (a tenant's owner variable) overriding the request, and `jwt`
/// (a token, when signing is configured) appended as `cfg.jwt_param`.
pub fn iframe_src(
    cfg: &GrafanaConfig,
    params: &[(String, String)],
    fixed: Option<&FixedVariable>,
    jwt: Option<&str>,
) -> Result<String, PanelError> {
    let uid =
        one(params, "uid")?.ok_or_else(|| bad("uid: required (the dashboard's UID)".into()))?;
    if !is_uid(uid) {
        return Err(bad(format!(
            "uid: {:?} is not a dashboard UID (1 to 40 of letters, digits, - and _)",
            short(uid)
        )));
    }
    let panel = one(params, "panelId")?
        .ok_or_else(|| bad("panelId: required (the panel's numeric id)".into()))?;
    let panel = positive("panelId", panel)?;
    let org = one(params, "orgId")?.map_or(Ok(1), |v| positive("orgId", v))?;
    let from = one(params, "from")?.unwrap_or("now-1h");
    let to = one(params, "to")?.unwrap_or("now");
    for (key, v) in [("from", from), ("to", to)] {
        if !is_time(v) {
            return Err(bad(format!(
                "{key}: {:?} is not a Grafana time (now, now-6h, now-7d/d or epoch milliseconds)",
                short(v)
            )));
        }
    }
    let refresh = one(params, "refresh")?.unwrap_or("10s");
    if !is_refresh(refresh) {
        return Err(bad(format!(
            "refresh: {:?} is not an interval such as 10s, 1m, 1h",
            short(refresh)
        )));
    }
    let theme = one(params, "theme")?.unwrap_or("dark");
    if !matches!(theme, "dark" | "light") {
        return Err(bad(format!(
            "theme: {:?} is not dark or light",
            short(theme)
        )));
    }
    let mut url = format!(
        "{}/d-solo/{}/view?orgId={org}&panelId={panel}&from={}&to={}&refresh={}&theme={theme}&kiosk",
        cfg.base.trim_end_matches('/'),
        encode(uid),
        encode(from),
        encode(to),
        encode(refresh),
    );
    for (k, v) in params {
        let Some(name) = k.strip_prefix("var-") else {
            continue;
        };
        if !is_var_name(name) {
            return Err(bad(format!(
                "{}: not a template variable name (letters, digits, - and _)",
                short(k)
            )));
        }
        if fixed.is_some_and(|f| f.name == name || f.reserved.iter().any(|r| r == name)) {
            return Err(bad(format!(
                "{k}: fixed by this token's scope; leave it out"
            )));
        }
        if v.len() > 1024 {
            return Err(bad(format!("{k}: longer than 1024 bytes")));
        }
        let _ = write!(url, "&var-{}={}", encode(name), encode(v));
    }
    if let Some(f) = fixed {
        for v in &f.values {
            let _ = write!(url, "&var-{}={}", encode(&f.name), encode(v));
        }
    }
    if let Some(t) = jwt {
        let _ = write!(url, "&{}={}", encode(&cfg.jwt_param), encode(t));
    }
    Ok(url)
}

/// An HS256 JWT for `subject`: `iat` and `nbf` now, `exp` after `ttl_secs`
/// (at most 300, as checked at load), `aud` when configured.
pub fn jwt(key: &[u8], subject: &Subject, audience: &str, now_secs: u64, ttl_secs: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let mut claims = serde_json::json!({
        "sub": subject.name,
        "iat": now_secs,
        "nbf": now_secs,
        "exp": now_secs + ttl_secs.min(300),
        "iss": "vmscope",
    });
    if !subject.scopes.is_empty() {
        claims["scopes"] = serde_json::json!(subject.scopes);
    }
    if !audience.is_empty() {
        claims["aud"] = serde_json::json!(audience);
    }
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let sig = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; kept total all the same.
        Err(_) => String::new(),
    };
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cfg() -> GrafanaConfig {
        GrafanaConfig::default()
    }

    #[test]
    fn golden_defaults() {
        let src = iframe_src(
            &cfg(),
            &p(&[("uid", "vm-overview"), ("panelId", "4")]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            src,
            "/grafana/d-solo/vm-overview/view?orgId=1&panelId=4&from=now-1h&to=now&refresh=10s&theme=dark&kiosk"
        );
    }

    #[test]
    fn golden_encoding_of_variables() {
        let src = iframe_src(
            &cfg(),
            &p(&[
                ("uid", "abc_DEF-1"),
                ("panelId", "12"),
                ("from", "now-7d/d"),
                ("to", "1700000000000"),
                ("refresh", "1m"),
                ("theme", "light"),
                ("orgId", "3"),
                ("var-vm", "web-1|web-2"),
                ("var-filter", "name=~\"db.*\""),
                ("var-note", "a b+c&d"),
                ("var-who", "Zoë 東京"),
            ]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            src,
            "/grafana/d-solo/abc_DEF-1/view?orgId=3&panelId=12&from=now-7d%2Fd&to=1700000000000&refresh=1m&theme=light&kiosk\
             &var-vm=web-1%7Cweb-2&var-filter=name%3D~%22db.%2A%22&var-note=a%20b%2Bc%26d&var-who=Zo%C3%AB%20%E6%9D%B1%E4%BA%AC"
        );
    }

    #[test]
    fn a_tenant_gets_its_own_variable_and_cannot_set_it() {
        let fixed = FixedVariable {
            name: "project".into(),
            values: vec!["acme".into(), "be ta".into()],
            reserved: vec!["user".into()],
        };
        let src = iframe_src(
            &cfg(),
            &p(&[("uid", "u"), ("panelId", "1"), ("var-vm", "x")]),
            Some(&fixed),
            Some("h.c.s"),
        )
        .unwrap();
        assert!(
            src.ends_with("&kiosk&var-vm=x&var-project=acme&var-project=be%20ta&auth_token=h.c.s"),
            "{src}"
        );
        let e = iframe_src(
            &cfg(),
            &p(&[("uid", "u"), ("panelId", "1"), ("var-project", "beta")]),
            Some(&fixed),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.0,
            "var-project: fixed by this token's scope; leave it out"
        );
        // Nor the other owner variable: a project's tenant asking for a
        // user's panels.
        let e = iframe_src(
            &cfg(),
            &p(&[("uid", "u"), ("panelId", "1"), ("var-user", "bob")]),
            Some(&fixed),
            None,
        )
        .unwrap_err();
        assert_eq!(e.0, "var-user: fixed by this token's scope; leave it out");
    }

    #[test]
    fn invalid_parameters_name_themselves() {
        for (pairs, key) in [
            (vec![("panelId", "1")], "uid:"),
            (vec![("uid", "a/b"), ("panelId", "1")], "uid:"),
            (vec![("uid", "a")], "panelId:"),
            (vec![("uid", "a"), ("panelId", "x")], "panelId:"),
            (vec![("uid", "a"), ("panelId", "0")], "panelId:"),
            (
                vec![("uid", "a"), ("panelId", "1"), ("from", "yesterday")],
                "from:",
            ),
            (
                vec![("uid", "a"), ("panelId", "1"), ("to", "now-1x")],
                "to:",
            ),
            (
                vec![("uid", "a"), ("panelId", "1"), ("refresh", "fast")],
                "refresh:",
            ),
            (
                vec![("uid", "a"), ("panelId", "1"), ("theme", "blue")],
                "theme:",
            ),
            (
                vec![("uid", "a"), ("panelId", "1"), ("orgId", "-1")],
                "orgId:",
            ),
            (vec![("uid", "a"), ("uid", "b"), ("panelId", "1")], "uid:"),
            (
                vec![("uid", "a"), ("panelId", "1"), ("var-a b", "x")],
                "var-a b:",
            ),
        ] {
            let e = iframe_src(&cfg(), &p(&pairs), None, None).unwrap_err();
            assert!(e.0.starts_with(key), "{pairs:?}: {}", e.0);
        }
        for t in ["now", "now-5m", "now+1d", "now/d", "now-1y/M", "0"] {
            assert!(is_time(t), "{t}");
        }
    }

    #[test]
    fn jwt_claims_expiry_and_signature() {
        let key = b"0123456789abcdef0123456789abcdef";
        let subject = Subject {
            name: "portal".into(),
            scopes: vec!["project:acme".into()],
        };
        let t = jwt(key, &subject, "grafana", 1_700_000_000, 60);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "sub": "portal", "iat": 1_700_000_000u64, "nbf": 1_700_000_000u64,
                "exp": 1_700_000_060u64, "iss": "vmscope", "aud": "grafana",
                "scopes": ["project:acme"],
            })
        );
        // The signature verifies with the key and not with another.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        let mut other = <Hmac<Sha256> as KeyInit>::new_from_slice(b"another key").unwrap();
        other.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert!(
            other
                .verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
                .is_err()
        );
        // Expiry is capped at 5 minutes whatever is asked.
        let t = jwt(key, &subject, "", 100, 10_000);
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["exp"], 400);
        assert!(claims.get("aud").is_none());
    }
}
