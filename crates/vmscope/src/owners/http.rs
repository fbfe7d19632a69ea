//! The HTTP JSON owner source: `[owners.http] url = "..."`, an endpoint of
//! the platform's control plane listing its VMs and their owners.
//!
//! Reads: one `GET url` every `interval` on the source's own thread, with
//! `Authorization: Bearer <token>` when `bearer_token` (or
//! `bearer_token_file`, re-read on each fetch so a rotated token is picked
//! up) is set, through the agent's outbound client
//! ([`crate::outbound::client`]: rustls, system roots plus `ca_file`, no
//! redirects so the token never goes to another origin, no proxies, the
//! whole request within `timeout`). The body is read up to `max_bytes`.
//! The async client runs on a current-thread runtime the source owns: the
//! fetch thread is blocking by design, and reqwest's own `blocking` client
//! would start a runtime thread of its own anyway, and a second client
//! build (CA handling) besides the one the sinks use.
//!
//! Emits: an [`OwnerMap`]. `rows` is a JSON pointer to the array of rows
//! (`""`: the document is the array); in each row the pointers `vm_id`,
//! `vm_name`, `pid` give the VM keys and `user_id`, `user_name`,
//! `project_id`, `project_name` the owner (strings or numbers). A row is
//! inserted under each VM key it has; its PID only when that process's
//! command line names the row's VM id or name (the rule of the Redis
//! source, [`super::redis::cmdline_names`]), or as given when the row has
//! no id nor name to check it against.
//!
//! Fails: `connect` (no connection, TLS or a broken body), `timeout`,
//! `status` (an answer other than 2xx, redirects included), `too_large`
//! (more than `max_bytes`), `parse` (not JSON, or `rows` is not an array),
//! `read` (the token file cannot be read). The runner keeps the last good
//! rows. A row without a VM key or without any owner field is skipped and
//! counted, logged once when that count goes from zero to some or back.
//! Neither the token nor the URL (it may carry one in its query) is ever
//! logged or put in an error.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{FetchError, OwnerMap, OwnerSource, OwnersConfig, RunOptions, Source, VmKey};
use crate::model::Owner;
use crate::outbound::Secret;
use crate::outbound::client::{ClientOptions, client, describe_error, error_message};
use crate::outbound::redact::url_secrets;

/// `[owners.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `http://` or `https://`; the source is off without this or `url_env`.
    pub url: Option<Secret>,
    /// The environment variable holding the URL instead.
    pub url_env: Option<String>,
    pub bearer_token: Option<Secret>,
    /// A file holding the token (trimmed), read on each fetch.
    pub bearer_token_file: Option<PathBuf>,
    /// Extra PEM CA certificate(s) to trust, besides the system's.
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
    /// Longest response body read (`too_large` beyond).
    pub max_bytes: u64,
    /// JSON pointer to the array of rows; `""` = the whole document.
    pub rows: String,
    /// JSON pointers within a row.
    pub vm_id: Option<String>,
    pub vm_name: Option<String>,
    pub pid: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            url_env: None,
            bearer_token: None,
            bearer_token_file: None,
            ca_file: None,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_bytes: 64 * 1024 * 1024,
            rows: String::new(),
            vm_id: None,
            vm_name: None,
            pid: None,
            user_id: None,
            user_name: None,
            project_id: None,
            project_name: None,
        }
    }
}

impl Config {
    /// The URL from `url` or the variable `url_env` names; `Ok(None)` when
    /// the source is off.
    pub fn url(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<Secret>, String> {
        super::url_or_env("http", self.url.as_ref(), self.url_env.as_deref(), env)
    }

    /// The pointers in [`Field`] order.
    fn pointers(&self) -> [(&'static str, &Option<String>); 7] {
        [
            ("vm_id", &self.vm_id),
            ("vm_name", &self.vm_name),
            ("pid", &self.pid),
            ("user_id", &self.user_id),
            ("user_name", &self.user_name),
            ("project_id", &self.project_id),
            ("project_name", &self.project_name),
        ]
    }

    /// Checks that `serve` could start the source (for `validate`).
    pub fn validate(&self) -> Result<(), String> {
        self.check(|v| std::env::var(v).ok())
    }

    fn check(&self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let Some(url) = self.url(env)? else {
            return Ok(());
        };
        let key = if self.url.is_some() {
            "owners.http.url"
        } else {
            "owners.http.url_env"
        };
        match reqwest::Url::parse(url.expose()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            // The URL may hold a token: it is not repeated.
            _ => return Err(format!("{key}: not an http:// or https:// URL")),
        }
        if self.bearer_token.is_some() && self.bearer_token_file.is_some() {
            return Err("owners.http: set bearer_token or bearer_token_file, not both".to_owned());
        }
        if let Some(path) = &self.bearer_token_file {
            read_token(path).map_err(|e| format!("owners.http.bearer_token_file: {e}"))?;
        }
        if !pointer_ok(&self.rows) {
            return Err(format!(
                "owners.http.rows: {:?} is not a JSON pointer (\"\" or starting with /)",
                self.rows
            ));
        }
        for (name, p) in self.pointers() {
            if let Some(p) = p
                && (p.is_empty() || !pointer_ok(p))
            {
                return Err(format!(
                    "owners.http.{name}: {p:?} is not a JSON pointer within a row (e.g. \"/owner/id\")"
                ));
            }
        }
        let has = |names: &[&str]| {
            self.pointers()
                .iter()
                .any(|(n, p)| names.contains(n) && p.is_some())
        };
        if !has(&["vm_id", "vm_name", "pid"]) {
            return Err("owners.http: set at least one of vm_id, vm_name, pid (JSON pointers to the VM key in a row)".to_owned());
        }
        if !has(&["user_id", "user_name", "project_id", "project_name"]) {
            return Err("owners.http: set at least one of user_id, user_name, project_id, project_name (JSON pointers to the owner in a row)".to_owned());
        }
        if self.max_bytes == 0 {
            return Err("owners.http.max_bytes: must be at least 1".to_owned());
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("owners.http: interval and timeout must be above 0".to_owned());
        }
        client(&self.client_options()).map_err(|e| format!("owners.http.ca_file: {e}"))?;
        Ok(())
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            timeout: self.timeout,
            ca_file: self.ca_file.clone(),
            insecure_skip_verify: false,
        }
    }
}

fn pointer_ok(p: &str) -> bool {
    p.is_empty() || p.starts_with('/')
}

/// Longest token file read.
const TOKEN_MAX: u64 = 16 * 1024;

fn read_token(path: &std::path::Path) -> Result<Secret, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKEN_MAX).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(token))
}

/// The runner waits this much longer than the request's own timeout, so
/// that the request's timeout (which closes its connection and reports
/// `timeout` itself) fires first.
const RUNNER_MARGIN: Duration = Duration::from_secs(1);

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    let c = &cfg.http;
    // `validate` refused what would fail here.
    let url = c.url(|v| std::env::var(v).ok()).ok().flatten()?;
    let http = client(&c.client_options()).ok()?;
    let mut secrets = url_secrets(url.expose());
    if let Some(t) = &c.bearer_token {
        secrets.push(t.expose().to_owned());
    }
    Some(Source::Fetched(
        Box::new(Endpoint {
            url,
            token: match (&c.bearer_token, &c.bearer_token_file) {
                (Some(t), _) => Token::Value(t.clone()),
                (None, Some(p)) => Token::File(p.clone()),
                (None, None) => Token::None,
            },
            client: http,
            runtime: None,
            max_bytes: c.max_bytes,
            pointers: Pointers {
                rows: c.rows.clone(),
                fields: c.pointers().map(|(_, p)| p.clone()),
            },
            secrets,
            proc_root: cfg.proc_root.clone(),
            skipped_logged: false,
        }),
        RunOptions {
            every: c.interval,
            timeout: c.timeout + RUNNER_MARGIN,
        },
    ))
}

enum Token {
    None,
    Value(Secret),
    File(PathBuf),
}

/// Where the values are in the document.
#[derive(Debug, Clone, Default)]
struct Pointers {
    rows: String,
    /// In [`Field`] order.
    fields: [Option<String>; 7],
}

#[derive(Clone, Copy)]
enum Field {
    VmId = 0,
    VmName,
    Pid,
    UserId,
    UserName,
    ProjectId,
    ProjectName,
}

struct Endpoint {
    url: Secret,
    token: Token,
    client: reqwest::Client,
    /// Built on the first fetch, on the fetch thread.
    runtime: Option<tokio::runtime::Runtime>,
    max_bytes: u64,
    pointers: Pointers,
    /// The URL, its path and query, the token: scrubbed from error text.
    secrets: Vec<String>,
    proc_root: PathBuf,
    skipped_logged: bool,
}

impl Endpoint {
    async fn get(&self, token: Option<Secret>) -> Result<Vec<u8>, FetchError> {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let mut req = self
            .client
            .get(self.url.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = &token {
            req = req.bearer_auth(t.expose());
        }
        let transport = |e: reqwest::Error| {
            let kind = if e.is_timeout() { "timeout" } else { "connect" };
            let mut secrets = secrets.clone();
            if let Some(t) = &token {
                secrets.push(t.expose());
            }
            FetchError::new(kind, describe_error(&e.without_url(), &secrets))
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            // A little of the body explains the refusal.
            let mut body = Vec::new();
            while body.len() < 4096 {
                match resp.chunk().await {
                    Ok(Some(c)) => body.extend_from_slice(&c),
                    _ => break,
                }
            }
            let mut secrets = secrets.clone();
            if let Some(t) = &token {
                secrets.push(t.expose());
            }
            return Err(FetchError::new(
                "status",
                error_message(
                    status.as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                    &secrets,
                ),
            ));
        }
        let too_large = || {
            FetchError::new(
                "too_large",
                format!("the response is larger than max_bytes = {}", self.max_bytes),
            )
        };
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl OwnerSource for Endpoint {
    fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
        let token = match &self.token {
            Token::None => None,
            Token::Value(t) => Some(t.clone()),
            Token::File(p) => Some(read_token(p).map_err(|e| FetchError::new("read", e))?),
        };
        if self.runtime.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| FetchError::new("connect", e))?;
            self.runtime = Some(rt);
        }
        let Some(rt) = &self.runtime else {
            return Err(FetchError::new("connect", "no runtime"));
        };
        let body = rt.block_on(self.get(token))?;
        let doc: Value = serde_json::from_slice(&body).map_err(|e| FetchError::new("parse", e))?;
        drop(body);
        let root = self.proc_root.clone();
        let (map, skipped) = rows(&doc, &self.pointers, |pid, vm| {
            super::redis::pid_runs_vm(&root, pid, vm)
        })
        .map_err(|e| FetchError::new("parse", e))?;
        if (skipped > 0) != self.skipped_logged {
            self.skipped_logged = skipped > 0;
            if skipped > 0 {
                tracing::warn!(
                    source = "http",
                    skipped,
                    "owner rows without a VM key or without any owner field were skipped"
                );
            } else {
                tracing::info!(source = "http", "no owner rows skipped any more");
            }
        }
        Ok(map)
    }
}

/// A string or a number, as text; anything else (or blank) is missing.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A PID as a number or a numeric string.
fn pid(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| *p > 0)
}

/// The rows of a document and how many were skipped; an error when `rows`
/// does not point at an array. `runs_vm(pid, id_or_name)` checks a PID.
fn rows(
    doc: &Value,
    p: &Pointers,
    runs_vm: impl Fn(u32, &str) -> bool,
) -> Result<(OwnerMap, usize), String> {
    let Some(Value::Array(rows)) = doc.pointer(&p.rows) else {
        return Err(format!(
            "the rows pointer {:?} does not name an array in the response",
            p.rows
        ));
    };
    let at = |row: &'_ Value, f: Field| -> Option<Value> {
        p.fields[f as usize]
            .as_deref()
            .and_then(|ptr| row.pointer(ptr))
            .cloned()
    };
    let mut map = OwnerMap::default();
    let mut skipped = 0;
    for row in rows {
        let get = |f| text(at(row, f).as_ref());
        let owner = Owner {
            user_id: get(Field::UserId),
            user_name: get(Field::UserName),
            project_id: get(Field::ProjectId),
            project_name: get(Field::ProjectName),
        };
        let (id, name, pid) = (
            get(Field::VmId),
            get(Field::VmName),
            pid(at(row, Field::Pid).as_ref()),
        );
        if owner == Owner::default() || (id.is_none() && name.is_none() && pid.is_none()) {
            skipped += 1;
            continue;
        }
        if let Some(pid) = pid {
            let vouched = match (&id, &name) {
                (None, None) => true,
                _ => [&id, &name]
                    .into_iter()
                    .flatten()
                    .any(|vm| runs_vm(pid, vm)),
            };
            if vouched {
                map.insert(VmKey::Pid(pid), owner.clone());
            }
        }
        if let Some(name) = name {
            map.insert(VmKey::Name(name), owner.clone());
        }
        if let Some(id) = id {
            map.insert(VmKey::Id(id), owner);
        }
    }
    Ok((map, skipped))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::owners::VmFacts;

    fn facts<'a>(id: &'a str, name: &'a str, pid: u32) -> VmFacts<'a> {
        VmFacts {
            id,
            uuid: None,
            name,
            pid,
            process: None,
            libvirt: None,
        }
    }

    fn cfg(toml: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(toml).map_err(|e| e.to_string())?;
        c.check(|_| None)?;
        Ok(c)
    }

    const MIN: &str =
        "url = 'https://cp.example/api/vms?token=QSECRET1'\nvm_id = '/id'\nuser_id = '/owner/id'\n";

    #[test]
    fn config_needs_a_vm_key_and_an_owner_and_names_the_key() {
        let c = cfg(MIN).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(!format!("{c:?}").contains("QSECRET1"));
        let e = cfg("url = 'https://cp.example/'\nuser_id = '/u'\n").unwrap_err();
        assert!(e.contains("vm_id, vm_name, pid"), "{e}");
        let e = cfg("url = 'https://cp.example/'\nvm_id = '/v'\n").unwrap_err();
        assert!(e.contains("user_id, user_name"), "{e}");
        let e = cfg(&format!("{MIN}user_name = 'owner.name'\n")).unwrap_err();
        assert!(e.starts_with("owners.http.user_name:"), "{e}");
        let e = cfg(&format!("{MIN}rows = 'data'\n")).unwrap_err();
        assert!(e.starts_with("owners.http.rows:"), "{e}");
        let e = cfg("url = 'ftp://u:QSECRET2@cp/'\nvm_id = '/v'\nuser_id = '/u'\n").unwrap_err();
        assert_eq!(e, "owners.http.url: not an http:// or https:// URL");
        let e = cfg(&format!(
            "{MIN}bearer_token = 'x'\nbearer_token_file = '/x'\n"
        ))
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = cfg(&format!("{MIN}bearer_token_file = '/nonexistent/token'\n")).unwrap_err();
        assert!(
            e.starts_with("owners.http.bearer_token_file: cannot read /nonexistent/token"),
            "{e}"
        );
        let e = cfg(&format!("{MIN}ca_file = '/nonexistent/ca.pem'\n")).unwrap_err();
        assert!(
            e.starts_with("owners.http.ca_file: cannot use /nonexistent/ca.pem"),
            "{e}"
        );
        let e = cfg(&format!("{MIN}max_bytes = 0\n")).unwrap_err();
        assert!(e.starts_with("owners.http.max_bytes"), "{e}");
        let e = cfg(&format!("{MIN}token = 'x'\n")).unwrap_err();
        assert!(e.contains("token"), "unknown key: {e}");
        let mut c = cfg("").unwrap();
        assert!(c.url(|_| None).unwrap().is_none(), "off without a URL");
        c.url_env = Some("CP_URL".into());
        assert_eq!(
            c.check(|_| None).unwrap_err(),
            "owners.http.url_env: the environment variable CP_URL is not set"
        );
    }

    fn pointers(rows: &str, fields: [Option<&str>; 7]) -> Pointers {
        Pointers {
            rows: rows.to_owned(),
            fields: fields.map(|f| f.map(str::to_owned)),
        }
    }

    #[test]
    fn rows_at_a_pointer_strings_or_numbers_bad_rows_skipped() {
        let doc: Value = serde_json::from_str(
            r#"{"data": {"vms": [
                {"id": "AAAA-1", "owner": {"id": 17, "name": "alice"}, "project": {"id": "p-1"}},
                {"name": "web-2", "pid": "4242", "owner": {"id": "u-2", "name": " "}},
                {"pid": 99, "owner": {"name": "carol"}},
                {"id": "no-owner"},
                {"owner": {"id": "no-vm"}},
                {"id": ["not", "text"], "owner": {"id": "u-x"}},
                "not an object"
            ]}}"#,
        )
        .unwrap();
        let p = pointers(
            "/data/vms",
            [
                Some("/id"),
                Some("/name"),
                Some("/pid"),
                Some("/owner/id"),
                Some("/owner/name"),
                Some("/project/id"),
                None,
            ],
        );
        // PID 4242 runs web-2; no other PID runs anything.
        let (map, skipped) = rows(&doc, &p, |pid, vm| pid == 4242 && vm == "web-2").unwrap();
        assert_eq!(skipped, 4);
        let o = map.lookup(&facts("aaaa-1", "x", 1)).unwrap();
        assert_eq!(o.user_id.as_deref(), Some("17"));
        assert_eq!(o.user_name.as_deref(), Some("alice"));
        assert_eq!(o.project_id.as_deref(), Some("p-1"));
        let o = map.lookup(&facts("x", "y", 4242)).unwrap();
        assert_eq!(o.user_id.as_deref(), Some("u-2"));
        assert_eq!(o.user_name, None, "blank is missing");
        assert!(map.lookup(&facts("x", "web-2", 1)).is_some());
        // A PID alone is taken as the platform says.
        let o = map.lookup(&facts("x", "y", 99)).unwrap();
        assert_eq!(o.user_name.as_deref(), Some("carol"));
    }

    #[test]
    fn a_stale_pid_is_not_a_row() {
        let doc: Value =
            serde_json::from_str(r#"[{"id": "vm-a", "pid": 100, "user": "alice"}]"#).unwrap();
        let p = pointers(
            "",
            [
                Some("/id"),
                None,
                Some("/pid"),
                None,
                Some("/user"),
                None,
                None,
            ],
        );
        let (map, _) = rows(&doc, &p, |_, _| false).unwrap();
        assert!(map.lookup(&facts("x", "y", 100)).is_none());
        assert!(map.lookup(&facts("vm-a", "y", 100)).is_some());
        let (map, _) = rows(&doc, &p, |pid, vm| pid == 100 && vm == "vm-a").unwrap();
        assert!(map.lookup(&facts("x", "y", 100)).is_some());
    }

    #[test]
    fn rows_must_be_an_array() {
        let p = pointers(
            "/vms",
            [Some("/id"), None, None, Some("/u"), None, None, None],
        );
        for doc in [r#"{"vms": {"a": 1}}"#, r#"{"other": []}"#, "[]"] {
            let doc: Value = serde_json::from_str(doc).unwrap();
            let e = rows(&doc, &p, |_, _| true).unwrap_err();
            assert!(e.contains("\"/vms\""), "{e}");
        }
    }
}
