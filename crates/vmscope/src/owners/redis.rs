//! The Redis session-store owner source: `[owners.redis] url = "..."`, the
//! live sessions a web VM platform keeps in Redis, one hash per session.
//!
//! Reads: the keys matching `key_pattern`, walked with `SCAN MATCH ...
//! COUNT scan_count` (never `KEYS`, which blocks the server), and from each
//! the hash fields `user_field`, `vm_field`, `pid_field` and the optional
//! name/project fields, fetched with `HMGET` in pipelines (one round trip
//! per SCAN page, not per key); on the source's own thread every
//! `interval`, with `timeout` as the connect, read and write timeout of
//! every call (the whole refresh, many calls for a big store, may take up
//! to `interval`). Also `/proc/PID/cmdline` (under the configured proc root)
//! of each session's PID, to check that PID is that VM's hypervisor.
//!
//! Emits: an [`OwnerMap`] with, per session that names a user and a VM:
//! - `VmKey::Id(vm)`: matches the VM whose UUID or exported `vm_id` is the
//!   platform's VM id;
//! - `VmKey::Name(vm)`: platforms that run QEMU with `-name <vm id>` (and
//!   find their VM's process by grepping for it);
//! - `VmKey::Pid(pid)` **only** when that PID is alive and its command
//!   line names the VM id ([`cmdline_names`]). The session store is
//!   platform-wide and PIDs are per host and reused: a PID from another
//!   host, or one reused by another VM since the session was written, must
//!   never attribute that other process to the session. A session whose
//!   PID is missing or stale is still matched by VM id (the platform's own
//!   "find the QEMU PID by VM id" fallback).
//!
//! When two sessions name the same VM, the one whose key sorts first wins
//! (SCAN's order is arbitrary; the result must not flip between refreshes).
//! The number of live sessions (matched keys that are hashes with a user)
//! goes to [`Inventory::sessions`](super::Inventory).
//!
//! Fails: `connect` (cannot connect or authenticate, or the connection
//! dropped), `timeout` (a call took longer than `timeout`, or the refresh
//! longer than `interval`), `command` (the
//! server refused a command, e.g. an ACL), `too_many_keys` (more than
//! `max_keys` keys match: the fetch stops rather than grow without bound).
//! The runner keeps the last good rows; the connection is dropped and made
//! again on the next fetch. A key of another type, a hash without a user,
//! or a session without a VM id is skipped and counted, logged once when
//! the kinds of skipped keys change. The URL (it may hold a password) is
//! never logged nor put in an error: it is a [`Secret`] and scrubbed from
//! the client's error text.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{FetchError, OwnerMap, OwnerSource, OwnersConfig, RunOptions, Source, VmKey};
use crate::model::Owner;
use crate::outbound::Secret;
use crate::outbound::redact::redact;

/// `[owners.redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `redis://[:password@]host:port/db` or `unix:///path/redis.sock`; the
    /// source is off without this or `url_env`.
    pub url: Option<Secret>,
    /// The environment variable holding the URL instead.
    pub url_env: Option<String>,
    /// `SCAN MATCH` pattern of the session keys.
    pub key_pattern: String,
    /// `SCAN COUNT`: keys the server looks at per call (a hint).
    pub scan_count: u32,
    /// More matching keys than this fail the fetch (`too_many_keys`).
    pub max_keys: usize,
    pub user_field: String,
    pub vm_field: String,
    pub pid_field: String,
    pub user_name_field: Option<String>,
    pub project_field: Option<String>,
    pub project_name_field: Option<String>,
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub interval: Duration,
    /// Connect, read and write timeout of every call (the whole refresh
    /// may take up to `interval`).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            url_env: None,
            key_pattern: "session:*".to_owned(),
            scan_count: 1000,
            max_keys: 200_000,
            user_field: "user_id".to_owned(),
            vm_field: "vm_id".to_owned(),
            pid_field: "pid".to_owned(),
            user_name_field: None,
            project_field: None,
            project_name_field: None,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The URL from `url` or the variable `url_env` names (`env` reads
    /// the environment: a parameter so that tests need not set variables);
    /// `Ok(None)` when the source is off.
    pub fn url(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<Secret>, String> {
        super::url_or_env("redis", self.url.as_ref(), self.url_env.as_deref(), env)
    }

    /// Checks that `serve` could start the source (for `validate`).
    pub fn validate(&self) -> Result<(), String> {
        let Some(url) = self.url(|v| std::env::var(v).ok())? else {
            return Ok(());
        };
        let key = if self.url.is_some() {
            "owners.redis.url"
        } else {
            "owners.redis.url_env"
        };
        client(&url).map_err(|e| format!("{key}: {e}"))?;
        if self.key_pattern.is_empty() {
            return Err("owners.redis.key_pattern: must not be empty".to_owned());
        }
        for (name, value) in [
            ("user_field", Some(&self.user_field)),
            ("vm_field", Some(&self.vm_field)),
            ("pid_field", Some(&self.pid_field)),
            ("user_name_field", self.user_name_field.as_ref()),
            ("project_field", self.project_field.as_ref()),
            ("project_name_field", self.project_name_field.as_ref()),
        ] {
            if value.is_some_and(|v| v.is_empty()) {
                return Err(format!("owners.redis.{name}: must not be empty"));
            }
        }
        if self.scan_count == 0 {
            return Err("owners.redis.scan_count: must be at least 1".to_owned());
        }
        if self.max_keys == 0 {
            return Err("owners.redis.max_keys: must be at least 1".to_owned());
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("owners.redis: interval and timeout must be above 0".to_owned());
        }
        Ok(())
    }

    /// The hash fields to ask for: the configured ones only.
    fn fields(&self) -> Vec<(Field, String)> {
        [
            (Field::User, Some(&self.user_field)),
            (Field::Vm, Some(&self.vm_field)),
            (Field::Pid, Some(&self.pid_field)),
            (Field::UserName, self.user_name_field.as_ref()),
            (Field::Project, self.project_field.as_ref()),
            (Field::ProjectName, self.project_name_field.as_ref()),
        ]
        .into_iter()
        .filter_map(|(f, name)| Some((f, name?.clone())))
        .collect()
    }
}

/// A client for `url`, or why not, without the URL in the text.
fn client(url: &Secret) -> Result<redis::Client, String> {
    let text = url.expose();
    if text.starts_with("rediss://") || text.starts_with("valkeys://") {
        return Err(
            "TLS (rediss://) is not supported; reach Redis over a local unix socket (unix:///path) or a TLS tunnel"
                .to_owned(),
        );
    }
    redis::Client::open(text).map_err(|e| {
        let secrets = url_secrets(text);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        format!(
            "not a Redis URL (redis://[:password@]host:port/db or unix:///path): {}",
            redact(e.to_string(), &secrets)
        )
    })
}

/// The URL and its password (as written and percent-decoded): what must
/// never show in a log line or an error.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    if let Ok(u) = reqwest::Url::parse(url)
        && let Some(p) = u.password()
    {
        out.push(p.to_owned());
        if let Ok(decoded) = percent_decode(p) {
            out.push(decoded);
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
}

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    let c = &cfg.redis;
    // `validate` refused a URL that is missing or does not parse.
    let url = c.url(|v| std::env::var(v).ok()).ok().flatten()?;
    let client = client(&url).ok()?;
    Some(Source::Fetched(
        Box::new(SessionStore {
            client,
            con: None,
            secrets: url_secrets(url.expose()),
            pattern: c.key_pattern.clone(),
            scan_count: c.scan_count,
            max_keys: c.max_keys,
            fields: c.fields(),
            timeout: c.timeout,
            proc_root: cfg.proc_root.clone(),
            logged: None,
        }),
        RunOptions {
            every: c.interval,
            // Each call is bounded by `timeout`; a refresh of a big store
            // is many calls, and one that the runner gave up on is thrown
            // away: so the whole refresh may take up to the interval.
            timeout: c.interval.max(c.timeout),
        },
    ))
}

struct SessionStore {
    client: redis::Client,
    /// Kept between fetches; dropped after an error, made again next time.
    con: Option<redis::Connection>,
    secrets: Vec<String>,
    pattern: String,
    scan_count: u32,
    max_keys: usize,
    /// What to ask `HMGET` for, and what each answer is.
    fields: Vec<(Field, String)>,
    timeout: Duration,
    proc_root: PathBuf,
    /// Which kinds of keys were skipped when that was last logged.
    logged: Option<[bool; 3]>,
}

/// What one value of an `HMGET` answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    User,
    Vm,
    Pid,
    UserName,
    Project,
    ProjectName,
}

/// One session hash, as read.
#[derive(Debug, Clone, Default, PartialEq)]
struct Session {
    key: Vec<u8>,
    user_id: Option<String>,
    user_name: Option<String>,
    project_id: Option<String>,
    project_name: Option<String>,
    vm_id: Option<String>,
    pid: Option<u32>,
}

/// Keys that gave no row, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Skipped {
    /// Not a hash.
    wrong_type: u64,
    /// A hash without the user field.
    no_user: u64,
    /// A session (it has a user) that names no VM.
    no_vm: u64,
}

impl SessionStore {
    fn error(&self, e: &redis::RedisError, connecting: bool) -> FetchError {
        let kind = if e.is_timeout() {
            "timeout"
        } else if connecting || e.is_io_error() || e.is_connection_dropped() {
            "connect"
        } else {
            "command"
        };
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        FetchError::new(kind, redact(e.to_string(), &secrets))
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, FetchError> {
        if self.con.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(self.timeout)
                .and_then(|c| {
                    c.set_read_timeout(Some(self.timeout))?;
                    c.set_write_timeout(Some(self.timeout))?;
                    Ok(c)
                })
                .map_err(|e| self.error(&e, true))?;
            self.con = Some(con);
        }
        self.con
            .as_mut()
            .ok_or_else(|| FetchError::new("connect", "no connection"))
    }

    /// Every matching key's session, by SCAN pages, each page's hashes
    /// fetched in one pipeline.
    fn read(&mut self) -> Result<(Vec<Session>, Skipped), FetchError> {
        let (pattern, count, max_keys) = (self.pattern.clone(), self.scan_count, self.max_keys);
        let fields = self.fields.clone();
        let names: Vec<&str> = fields.iter().map(|(_, n)| n.as_str()).collect();
        let order: Vec<Field> = fields.iter().map(|(f, _)| *f).collect();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut sessions = Vec::new();
        let mut skipped = Skipped::default();
        let mut cursor: u64 = 0;
        loop {
            let con = self.connection()?;
            let page: redis::RedisResult<(u64, Vec<Vec<u8>>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(count)
                .query(con);
            let (next, keys) = page.map_err(|e| self.error(&e, false))?;
            // SCAN may return a key more than once: each is read once.
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .collect();
            if seen.len() > max_keys {
                return Err(FetchError::new(
                    "too_many_keys",
                    format!("more than max_keys = {max_keys} keys match the pattern"),
                ));
            }
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for k in &keys {
                    pipe.cmd("HMGET").arg(k).arg(&names);
                }
                let con = self.connection()?;
                let answers: redis::RedisResult<Vec<redis::Value>> = pipe.query(con);
                let answers = answers.map_err(|e| self.error(&e, false))?;
                for (key, answer) in keys.into_iter().zip(answers) {
                    match session(key, answer, &order) {
                        Ok(Some(s)) => sessions.push(s),
                        Ok(None) => skipped.wrong_type += 1,
                        Err(e) => return Err(self.error(&e, false)),
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok((sessions, skipped))
    }

    /// Logs the skipped keys when the kinds skipped changed since last time
    /// (not every refresh: sessions come and go).
    fn log_skipped(&mut self, s: Skipped) {
        let kinds = [s.wrong_type > 0, s.no_user > 0, s.no_vm > 0];
        let first = self.logged.is_none();
        if self.logged == Some(kinds) || (first && kinds == [false; 3]) {
            self.logged = Some(kinds);
            return;
        }
        self.logged = Some(kinds);
        if kinds == [false; 3] {
            tracing::info!(source = "redis", "no session keys skipped any more");
        } else {
            tracing::warn!(
                source = "redis",
                wrong_type = s.wrong_type,
                no_user = s.no_user,
                no_vm = s.no_vm,
                "session keys skipped: not a hash, a hash without the user field, or a session without a VM id"
            );
        }
    }
}

/// One `HMGET` answer (the values of `order`'s fields) as a session;
/// `Ok(None)` for a key of another type.
fn session(
    key: Vec<u8>,
    answer: redis::Value,
    order: &[Field],
) -> Result<Option<Session>, redis::RedisError> {
    let values = match answer {
        redis::Value::Array(values) => values,
        redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => return Ok(None),
        redis::Value::ServerError(e) => return Err(e.into()),
        // Not an answer HMGET gives: the key is not a session hash.
        _ => return Ok(None),
    };
    let get = |f: Field| -> Option<String> {
        let i = order.iter().position(|o| *o == f)?;
        match values.get(i) {
            Some(redis::Value::BulkString(b)) => {
                let s = String::from_utf8_lossy(b).trim().to_owned();
                (!s.is_empty()).then_some(s)
            }
            Some(redis::Value::SimpleString(s))
            | Some(redis::Value::VerbatimString { text: s, .. }) => {
                let s = s.trim();
                (!s.is_empty()).then(|| s.to_owned())
            }
            Some(redis::Value::Int(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    Ok(Some(Session {
        key,
        user_id: get(Field::User),
        user_name: get(Field::UserName),
        project_id: get(Field::Project),
        project_name: get(Field::ProjectName),
        vm_id: get(Field::Vm),
        // A PID that does not parse is a missing one: the VM id still works.
        pid: get(Field::Pid)
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0),
    }))
}

/// The rows of the sessions, the live-session count and what was skipped.
/// `runs_vm(pid, vm_id)` says whether `pid` is `vm_id`'s hypervisor.
fn build(
    mut sessions: Vec<Session>,
    mut skipped: Skipped,
    runs_vm: impl Fn(u32, &str) -> bool,
) -> (OwnerMap, u64, Skipped) {
    // First key wins: insert the last-sorting first, so that the first
    // replaces the others.
    sessions.sort_unstable_by(|a, b| b.key.cmp(&a.key));
    let mut map = OwnerMap::default();
    let mut live = 0;
    for s in sessions {
        if s.user_id.is_none() {
            skipped.no_user += 1;
            continue;
        }
        live += 1;
        let Some(vm) = s.vm_id else {
            skipped.no_vm += 1;
            continue;
        };
        let owner = Owner {
            user_id: s.user_id,
            user_name: s.user_name,
            project_id: s.project_id,
            project_name: s.project_name,
        };
        if let Some(pid) = s.pid
            && runs_vm(pid, &vm)
        {
            map.insert(VmKey::Pid(pid), owner.clone());
        }
        map.insert(VmKey::Name(vm.clone()), owner.clone());
        map.insert(VmKey::Id(vm), owner);
    }
    map.inventory.sessions = Some(live);
    (map, live, skipped)
}

/// At most this much of a command line is read (QEMU's are a few KiB).
const CMDLINE_MAX: u64 = 64 * 1024;

/// True when process `pid` (under `proc_root`) is alive and its command
/// line names `vm_id` ([`cmdline_names`]). A dead PID has no cmdline; a
/// zombie has an empty one.
pub(super) fn pid_runs_vm(proc_root: &Path, pid: u32, vm_id: &str) -> bool {
    let mut buf = Vec::new();
    let read = std::fs::File::open(proc_root.join(pid.to_string()).join("cmdline"))
        .and_then(|f| f.take(CMDLINE_MAX).read_to_end(&mut buf));
    read.is_ok() && cmdline_names(&buf, vm_id)
}

/// Does this NUL-separated command line name `vm_id`? Only as a whole
/// word inside one argument (`-uuid <id>`, `-name guest=<id>,...`,
/// `/var/lib/vms/<id>/disk.img`), compared ASCII case-insensitively (UUIDs
/// come in either case); the characters around it must not be letters,
/// digits, `-` or `_`, so `vm-1` is not found in `vm-12`. An id made only
/// of digits never counts: numbers are in every command line (`-m 1024`,
/// `-smp 2`), so such an id cannot vouch for a PID.
pub fn cmdline_names(cmdline: &[u8], vm_id: &str) -> bool {
    let id = vm_id.as_bytes();
    if id.is_empty() || id.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    cmdline.split(|b| *b == 0).any(|arg| {
        arg.len() >= id.len()
            && (0..=arg.len() - id.len()).any(|i| {
                arg[i..i + id.len()].eq_ignore_ascii_case(id)
                    && (i == 0 || !word(arg[i - 1]))
                    && arg.get(i + id.len()).is_none_or(|b| !word(*b))
            })
    })
}

impl OwnerSource for SessionStore {
    fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
        let (sessions, skipped) = match self.read() {
            Ok(r) => r,
            Err(e) => {
                // A half-read answer leaves the connection in an unknown
                // state: start afresh next time.
                self.con = None;
                return Err(e);
            }
        };
        let root = self.proc_root.clone();
        // One listing of procfs, so that a session PID not running here
        // (most of a platform-wide store's) costs no open().
        let running: Option<HashSet<u32>> = std::fs::read_dir(&root).ok().map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        });
        let (map, _, skipped) = build(sessions, skipped, |pid, vm| {
            running.as_ref().is_none_or(|r| r.contains(&pid)) && pid_runs_vm(&root, pid, vm)
        });
        self.log_skipped(skipped);
        Ok(map)
    }
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

    fn user_of(map: &OwnerMap, f: VmFacts<'_>) -> Option<String> {
        map.lookup(&f).and_then(|o| o.user_id.clone())
    }

    fn s(key: &str, user: Option<&str>, vm: Option<&str>, pid: Option<u32>) -> Session {
        Session {
            key: key.as_bytes().to_vec(),
            user_id: user.map(str::to_owned),
            vm_id: vm.map(str::to_owned),
            pid,
            ..Session::default()
        }
    }

    #[test]
    fn the_pid_counts_only_when_its_command_line_names_the_vm() {
        let qemu = b"qemu-system-x86_64\0-name\0guest=web-7,debug-threads=on\0-uuid\0AAAA-0001\0-m\x001024\0-smp\x002\0-drive\0file=/vms/vm-12/disk.img\0";
        assert!(cmdline_names(qemu, "web-7"));
        assert!(cmdline_names(qemu, "aaaa-0001"), "case-insensitive");
        assert!(cmdline_names(qemu, "vm-12"), "a path component");
        // Part of a longer word: another VM.
        assert!(!cmdline_names(qemu, "web"));
        assert!(!cmdline_names(qemu, "vm-1"));
        assert!(!cmdline_names(qemu, "eb-7"));
        // Digits only: `-m 1024` and `-smp 2` must not vouch for a PID.
        assert!(!cmdline_names(qemu, "1024"));
        assert!(!cmdline_names(qemu, "2"));
        assert!(!cmdline_names(qemu, ""));
        // Not across arguments.
        assert!(!cmdline_names(qemu, "-name\0guest"));
        assert!(!cmdline_names(b"", "web-7"));
    }

    #[test]
    fn a_stale_pid_is_not_a_row_the_vm_id_still_is() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path();
        // 100 runs vm-a; 200 was reused by another VM; 300 is gone; 400 is
        // a zombie (empty cmdline).
        for (pid, cmdline) in [
            (100, &b"qemu\0-uuid\0vm-a\0"[..]),
            (200, b"qemu\0-uuid\0vm-other\0"),
            (400, b""),
        ] {
            std::fs::create_dir(proc_root.join(pid.to_string())).unwrap();
            std::fs::write(proc_root.join(format!("{pid}/cmdline")), cmdline).unwrap();
        }
        let sessions = vec![
            s("session:1", Some("u-alice"), Some("vm-a"), Some(100)),
            s("session:2", Some("u-bob"), Some("vm-b"), Some(200)),
            s("session:3", Some("u-carol"), Some("vm-c"), Some(300)),
            s("session:4", Some("u-dan"), Some("vm-d"), Some(400)),
        ];
        let (map, live, _) = build(sessions, Skipped::default(), |pid, vm| {
            pid_runs_vm(proc_root, pid, vm)
        });
        assert_eq!(live, 4);
        assert_eq!(map.inventory.sessions, Some(4));
        // By PID: only the verified one.
        assert_eq!(
            user_of(&map, facts("x", "y", 100)).as_deref(),
            Some("u-alice")
        );
        for pid in [200, 300, 400] {
            assert_eq!(user_of(&map, facts("x", "y", pid)), None, "pid {pid}");
        }
        // By VM id (UUID or exported id) and by name, whatever the PID said.
        for (vm, user) in [("vm-b", "u-bob"), ("vm-c", "u-carol"), ("VM-D", "u-dan")] {
            assert_eq!(user_of(&map, facts(vm, "y", 1)).as_deref(), Some(user));
            let lower = vm.to_ascii_lowercase();
            assert_eq!(user_of(&map, facts("x", &lower, 1)).as_deref(), Some(user));
        }
    }

    #[test]
    fn sessions_skips_and_the_first_key_wins() {
        let sessions = vec![
            s("session:b", Some("u-2"), Some("vm-1"), None),
            s("session:a", Some("u-1"), Some("vm-1"), None),
            s("session:c", Some("u-3"), None, None),
            s("session:d", None, Some("vm-4"), None),
        ];
        let before = Skipped {
            wrong_type: 2,
            ..Skipped::default()
        };
        let (map, live, skipped) = build(sessions, before, |_, _| true);
        // Live sessions: those with a user, with or without a VM.
        assert_eq!(live, 3);
        assert_eq!(
            skipped,
            Skipped {
                wrong_type: 2,
                no_user: 1,
                no_vm: 1
            }
        );
        assert_eq!(user_of(&map, facts("vm-1", "x", 1)).as_deref(), Some("u-1"));
        assert_eq!(user_of(&map, facts("vm-4", "x", 1)), None);
    }

    #[test]
    fn hmget_answers_become_sessions() {
        use redis::Value::{Array, BulkString, Nil};
        let b = |s: &str| BulkString(s.as_bytes().to_vec());
        use Field::*;
        let all = [User, Vm, Pid, UserName, Project, ProjectName];
        let got = session(
            b"k".to_vec(),
            Array(vec![b(" u-1 "), b("vm-1"), b("4x"), Nil, b(""), b("Demo")]),
            &all,
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.user_id.as_deref(), Some("u-1"));
        assert_eq!(got.vm_id.as_deref(), Some("vm-1"));
        assert_eq!(got.pid, None, "a PID that does not parse is missing");
        assert_eq!(got.project_id, None, "blank is missing");
        assert_eq!(got.project_name.as_deref(), Some("Demo"));
        // Only the configured fields are asked for, in the order given.
        let got = session(
            b"k".to_vec(),
            Array(vec![b("alice"), b("u"), b("v"), b("42")]),
            &[UserName, User, Vm, Pid],
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.pid, Some(42));
        assert_eq!(got.user_name.as_deref(), Some("alice"));
        assert_eq!(got.project_id, None);
        assert!(
            session(b"k".to_vec(), Nil, &all).unwrap().is_none(),
            "not a hash answer"
        );
    }

    fn cfg(toml: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(toml).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn config_errors_name_the_key_and_never_the_password() {
        let c = cfg("url = 'redis://:hunter22pw@127.0.0.1:6390/2'\n").unwrap();
        assert_eq!(c.key_pattern, "session:*");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(!format!("{c:?}").contains("hunter22pw"));

        let e = cfg("url = 'rediss://:hunter22pw@db:6390'\n").unwrap_err();
        assert!(e.starts_with("owners.redis.url: TLS"), "{e}");
        assert!(!e.contains("hunter22pw"), "{e}");
        let e = cfg("url = 'http://:hunter22pw@db:6390'\n").unwrap_err();
        assert!(e.starts_with("owners.redis.url: not a Redis URL"), "{e}");
        assert!(!e.contains("hunter22pw"), "{e}");
        let e = cfg("url = 'redis://db'\nurl_env = 'X'\n").unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = cfg("url = 'redis://db'\nvm_field = ''\n").unwrap_err();
        assert_eq!(e, "owners.redis.vm_field: must not be empty");
        let e = cfg("url = 'redis://db'\nmax_keys = 0\n").unwrap_err();
        assert!(e.starts_with("owners.redis.max_keys"), "{e}");
        let e = cfg("url = 'redis://db'\nkey_pattern = ''\n").unwrap_err();
        assert!(e.starts_with("owners.redis.key_pattern"), "{e}");
        let e = cfg("url = 'redis://db'\ntimeout = '0s'\n").unwrap_err();
        assert!(e.contains("timeout"), "{e}");
        assert!(
            cfg("url = 'redis://db'\nkeys = 'x'\n").is_err(),
            "unknown key"
        );
        // Off without a URL.
        assert!(cfg("").unwrap().url(|_| None).unwrap().is_none());
        assert!(cfg("url = 'unix:///run/redis.sock'\n").is_ok());
    }

    #[test]
    fn url_env_names_the_variable() {
        let c = Config {
            url_env: Some("PLATFORM_REDIS".to_owned()),
            ..Config::default()
        };
        let url = c
            .url(|v| (v == "PLATFORM_REDIS").then(|| "redis://:pw@h:1/0".to_owned()))
            .unwrap()
            .unwrap();
        assert_eq!(url.expose(), "redis://:pw@h:1/0");
        let e = c.url(|_| None).unwrap_err();
        assert_eq!(
            e,
            "owners.redis.url_env: the environment variable PLATFORM_REDIS is not set"
        );
    }

    #[test]
    fn the_password_is_a_secret_as_written_and_decoded() {
        let s = url_secrets("redis://:p%40ss%2Fword@h:1/0");
        assert!(s.contains(&"p%40ss%2Fword".to_owned()), "{s:?}");
        assert!(s.contains(&"p@ss/word".to_owned()), "{s:?}");
        assert_eq!(url_secrets("unix:///x"), ["unix:///x"]);
    }
}
