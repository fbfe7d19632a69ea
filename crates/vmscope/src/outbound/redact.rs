//! Secrets that must never print, and scrubbing them from text that does.
//!
//! Reads: config values and, for secrets a file leaves out, `VMSCOPE_*`
//! environment variables ([`Secret::from_env`]). Emits: [`Secret`], whose
//! `Debug` and `Display` print `***`, and error text with every known
//! secret replaced by `***` ([`redact`], [`snippet`]). Never fails.
//!
//! `Secret` lives here rather than in `config/`: it is one concern with the
//! scrubbing (a value that must not print, and removing it from what does
//! print), and `config/` aggregates every section (it imports `alert`,
//! `owners`, `server`), so a `Secret` there would make those modules import
//! `config` back. `outbound/` imports nothing of the agent: anything may use it.

use std::fmt;

use serde::Deserialize;

/// A secret string (token, DSN, auth header, URL with a token in it). Its
/// `Debug` and `Display` print `***`, so it cannot leak through logs,
/// errors or `{:?}` of a config.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself: only for building a request.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The variable `name`, when set and not blank.
    pub fn from_env(name: &str) -> Option<Secret> {
        env_string(name).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The variable `name`, when set and not blank (not a secret: chat ids).
pub fn env_string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Secrets shorter than this are not scrubbed: replacing every "/" or "a"
/// would make error text unreadable, and such short values guard nothing.
const MIN_SECRET_LEN: usize = 4;

/// Remove every secret (of at least 4 bytes) from `s`.
pub fn redact(mut s: String, secrets: &[&str]) -> String {
    for secret in secrets.iter().filter(|x| x.len() >= MIN_SECRET_LEN) {
        if s.contains(secret) {
            s = s.replace(secret, "***");
        }
    }
    s
}

/// The parts of a URL that may carry a secret on their own, besides the
/// whole URL: chat-service webhooks keep their token in the path
/// (`/hooks/<token>`) or the query, and a receiver may echo just those.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    if let Ok(u) = reqwest::Url::parse(url) {
        out.push(u.path().to_owned());
        out.extend(u.query().map(str::to_owned));
    }
    out
}

/// At most `max` characters of `text` on one line, secrets scrubbed
/// *before* the cut: a secret straddling the cut would otherwise survive in
/// part and no longer match.
pub fn snippet(text: String, max: usize, secrets: &[&str]) -> String {
    let text = redact(text, secrets);
    let cut: String = text.chars().take(max).collect();
    cut.replace(['\n', '\r'], " ").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_secrets_and_ignores_short_ones() {
        assert_eq!(
            redact(
                "bad token 123:ABC in /bot123:ABC/x".to_owned(),
                &["123:ABC", "", "/"]
            ),
            "bad token *** in /bot***/x"
        );
    }

    #[test]
    fn a_secret_split_by_the_cut_leaves_no_part_behind() {
        let secret = "123456789:AAHsecretsecretsecret";
        for pad in 160..200 {
            let body = format!("{}/bot{secret}/sendMessage", "x".repeat(pad));
            let s = snippet(body, 200, &[secret]);
            assert!(!s.contains("123456789"), "pad {pad}: {s}");
            assert!(s.chars().count() <= 200);
        }
    }

    #[test]
    fn snippet_is_one_line() {
        assert_eq!(snippet(" a\nb\r\n".to_owned(), 100, &[]), "a b");
    }

    #[test]
    fn url_secrets_include_path_and_query() {
        let s = url_secrets("https://hooks.example/T0/SECRET?token=QUERYSECRET");
        assert!(s.contains(&"/T0/SECRET".to_owned()), "{s:?}");
        assert!(s.contains(&"token=QUERYSECRET".to_owned()), "{s:?}");
        assert_eq!(s[0], "https://hooks.example/T0/SECRET?token=QUERYSECRET");
        // Not a URL: still the whole text.
        assert_eq!(url_secrets("nonsense"), ["nonsense"]);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter22");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter22");
    }
}
