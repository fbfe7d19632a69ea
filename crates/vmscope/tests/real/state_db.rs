//! The watchdog's state database under faults, through the real binary:
//! notifications for a sink that is down survive a restart (the outbox);
//! a full sink queue leaves a row in the notification log; two agents
//! cannot share one database; and a database that cannot be used (an
//! unprivileged user with an unwritable home or no home at all, a foreign
//! file, a newer schema, a full disk) never takes `/metrics` down: the
//! watchdog runs without persistence and says so in the log, in
//! `/healthz` and in `vmscope_watchdog_persistence_enabled`.
//!
//! Rules that fire without VMs: `host_memory_used_ratio >= 0.0001` holds on
//! any running host. Receivers are plain HTTP servers on 127.0.0.1 run by
//! the test. Needs root (to drop to `nobody`, and to mount a tiny tmpfs).
//! No CPU measurements: these run in parallel with other tests.

use crate::support::metrics::sample;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

// ---------------------------------------------------------------- receiver

/// A minimal HTTP/1.1 server on 127.0.0.1:`port` answering 200 to every
/// request and keeping the JSON bodies in order.
struct Receiver {
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start_on(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve_one(conn, &s));
            }
        });
        Receiver { seen }
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the bodies so far, or `within` passed.
    fn wait_for(&self, within: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let b = self.bodies();
            if pred(&b) || Instant::now() > deadline {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve_one(conn: TcpStream, seen: &Mutex<Vec<Value>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    seen.lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let mut conn = reader.into_inner();
    let text = r#"{"ok":true}"#;
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.flush();
}

fn statuses(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["status"].as_str().unwrap_or("?").to_owned())
        .collect()
}

// ------------------------------------------------------------------- agent

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Who runs the agent.
#[derive(Clone, Copy, PartialEq)]
enum User {
    Root,
    /// `nobody:nogroup` via util-linux `setpriv`, no supplementary groups.
    Nobody,
}

/// A running `vmscope serve`, killed on drop.
struct Agent {
    child: Child,
    base: String,
    stderr: PathBuf,
}

/// `vmscope serve` on a free port, with a clean environment (`PATH` plus
/// `env`), logging to `<dir>/<tag>.stderr`. Does not wait.
fn spawn(dir: &Path, tag: &str, config: Option<&Path>, user: User, env: &[(&str, &str)]) -> Agent {
    let addr = format!("127.0.0.1:{}", free_port());
    let stderr = dir.join(format!("{tag}.stderr"));
    let bin = env!("CARGO_BIN_EXE_vmscope");
    let mut cmd = match user {
        User::Root => Command::new(bin),
        User::Nobody => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", bin]);
            c
        }
    };
    cmd.args(["serve", "--interval", "1", "--listen", &addr]);
    if let Some(c) = config {
        cmd.args(["--config", c.to_str().unwrap()]);
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    Agent {
        child: cmd.spawn().unwrap(),
        base: format!("http://{addr}"),
        stderr,
    }
}

impl Agent {
    /// Spawn and wait until `/metrics` answers 200.
    fn start(
        dir: &Path,
        tag: &str,
        config: Option<&Path>,
        user: User,
        env: &[(&str, &str)],
    ) -> Agent {
        let mut agent = spawn(dir, tag, config, user, env);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("vmscope exited with {status}: {}", agent.log());
            }
            if agent.get("/metrics").is_ok_and(|(s, _)| s == 200) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "vmscope not serving within 30 s: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        get(&format!("{}{path}", self.base))
    }

    fn get_ok(&self, path: &str) -> String {
        let (status, body) = self.get(path).unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {within:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/metrics` has `series` with a value for which `pred` holds.
    fn wait_metric(&self, series: &str, within: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let text = self.get_ok("/metrics");
            if let Some(v) = sample(&text, series).filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} not as expected within {within:?}: {:?}\n{}",
                sample(&text, series),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "vmscope still running after {within:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (the graceful path), then the whole log.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "vmscope exited with {status}: {}",
            self.log()
        );
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET over loopback (the lab's client); any status is returned.
fn get(url: &str) -> Result<(u16, String), String> {
    crate::support::http::get(url).map(|r| (r.status, r.body))
}

/// `[watchdog]` with the given database, no built-in rules, and `rest`.
fn write_config(dir: &Path, name: &str, db: &Path, rest: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[watchdog]\nstate_db_path = \"{}\"\nbuiltin_rules = false\nshutdown_timeout = \"2s\"\n{rest}",
            db.display()
        ),
    )
    .unwrap();
    path
}

/// A rule on host memory: `threshold` 0.0001 holds on any host, 0.99999
/// on none.
fn mem_rule(name: &str, threshold: f64) -> String {
    format!(
        "[watchdog.rules.{name}]\nmetric = \"host_memory_used_ratio\"\nthreshold = {threshold}\nsustained = \"1s\"\nrecovery = \"1s\"\n"
    )
}

fn webhook(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[watchdog.sinks.{name}]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"1s\"\nmax_backoff = \"1s\"\n{extra}"
    )
}

fn healthz_store(agent: &Agent) -> Value {
    // /metrics answers before the first tick completes; /healthz says
    // not_ready (503) until then, so wait for it to be ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.get("/healthz").is_ok_and(|(s, _)| s == 503) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = agent.get_ok("/healthz");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["components"]["watchdog_store"].clone()
}

/// The checks every "database unusable" case shares: metrics served, the
/// gauge at 0, `/healthz` 200 with the store degraded, the alerts API a
/// clear 503, the warning in the log; returns the `/healthz` detail.
fn assert_runs_in_memory(agent: &Agent, detail_has: &str) -> String {
    agent.wait_metric(
        "vmscope_watchdog_persistence_enabled",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    let store = healthz_store(agent);
    assert_eq!(store["status"], "degraded", "{store}");
    let detail = store["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains(detail_has),
        "{detail:?} lacks {detail_has:?}"
    );
    let (status, body) = agent.get("/api/v1/alerts").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("without its state database"), "{body}");
    let log = agent.log();
    assert!(
        log.contains("WARN") && log.contains("WITHOUT persistence") && log.contains(detail_has),
        "{log}"
    );
    detail
}

/// A directory `nobody` can read and enter but not write.
fn readonly_dir(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A temporary directory `nobody` can traverse (tempdir makes 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

// ------------------------------------------------------------------- tests

#[test]
fn a_sink_down_across_a_restart_gets_the_firing_notice_once_then_the_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let port = free_port(); // closed: connections are refused
    let sinks = webhook("hook", port, "");
    let firing = write_config(
        dir.path(),
        "firing.toml",
        &db,
        &(mem_rule("mem", 0.0001) + &sinks),
    );

    // 1. The rule fires while the receiver is down; the agent stops.
    let a = Agent::start(dir.path(), "first", Some(&firing), User::Root, &[]);
    a.wait_log("sink delivery failed; retrying", Duration::from_secs(20));
    let first_log = a.stop();

    // 2. The receiver comes up, the agent starts again: FIRING, once.
    let rx = Receiver::start_on(port);
    let b = Agent::start(dir.path(), "second", Some(&firing), User::Root, &[]);
    let got = rx.wait_for(Duration::from_secs(20), |b| !b.is_empty());
    assert_eq!(statuses(&got), ["firing"], "{}", b.log());
    assert_eq!(got[0]["rule"], "mem");
    assert_eq!(got[0]["alerts"][0]["transition"], "fired");
    // Graceful stop flushes everything queued: nothing more was pending.
    let log = b.stop();
    assert_eq!(statuses(&rx.bodies()), ["firing"], "{log}");
    assert!(first_log.contains("kept in the outbox"), "{first_log}");

    // 3. The condition clears (a threshold no host reaches): RESOLVED.
    let clear = write_config(
        dir.path(),
        "clear.toml",
        &db,
        &(mem_rule("mem", 0.99999) + &sinks),
    );
    let c = Agent::start(dir.path(), "third", Some(&clear), User::Root, &[]);
    let got = rx.wait_for(Duration::from_secs(20), |b| b.len() >= 2);
    let log = c.stop();
    assert_eq!(statuses(&got), ["firing", "resolved"], "{log}");
    assert_eq!(statuses(&rx.bodies()), ["firing", "resolved"], "{log}");
}

#[test]
fn a_full_sink_queue_leaves_a_dropped_queue_full_row_in_the_notification_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let port = free_port(); // closed
    // Three rules fire at once into a queue of one while the sink is down.
    let rules: String = ["m1", "m2", "m3"]
        .iter()
        .map(|n| mem_rule(n, 0.0001))
        .collect();
    let sinks = webhook("hook", port, "queue_capacity = 1\n");
    let config = write_config(dir.path(), "vmscope.toml", &db, &(rules + &sinks));
    let a = Agent::start(dir.path(), "agent", Some(&config), User::Root, &[]);
    let dropped = a.wait_metric(
        "vmscope_alert_notifications_total{sink=\"hook\",result=\"dropped\"}",
        Duration::from_secs(20),
        |v| v >= 1.0,
    );
    a.wait_log("sink queue full", Duration::from_secs(5));
    a.stop();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let logged: Vec<(String, String)> = conn
        .prepare("SELECT rule, result FROM notification_log WHERE sink = 'hook' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let full = logged
        .iter()
        .filter(|(_, r)| r == "dropped_queue_full")
        .count();
    assert_eq!(full as f64, dropped, "{logged:?}");
    // Every notification has either its final outcome or its outbox row.
    let kept: i64 = conn
        .query_row("SELECT COUNT(*) FROM notification_outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(full as i64 + kept, 3, "{logged:?}, {kept} kept");
}

#[test]
fn a_second_agent_on_the_same_database_fails_naming_the_first_and_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let config = write_config(dir.path(), "vmscope.toml", &db, &mem_rule("mem", 0.0001));
    let first = Agent::start(dir.path(), "first", Some(&config), User::Root, &[]);
    let first_pid = first.child.id().to_string();

    let mut second = spawn(dir.path(), "second", Some(&config), User::Root, &[]);
    let status = second.wait_exit(Duration::from_secs(20));
    let log = second.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("pid {first_pid}")), "{log}");
    assert!(log.contains("watchdog.state_db_path"), "{log}");
    assert!(log.contains("VMSCOPE_WATCHDOG__STATE_DB_PATH"), "{log}");

    // The first one is unharmed: still serving, still recording.
    first.get_ok("/metrics");
    first.wait_metric(
        "vmscope_alert_active{alert=\"mem\",severity=\"warning\",scope=\"host\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    let alerts: Value = serde_json::from_str(&first.get_ok("/api/v1/alerts")).unwrap();
    assert_eq!(alerts["active"][0]["rule"], "mem", "{alerts}");
    let text = first.get_ok("/metrics");
    assert_eq!(
        sample(&text, "vmscope_watchdog_persistence_enabled"),
        Some(1.0)
    );
    first.stop();
}

#[test]
fn unprivileged_with_an_unwritable_home_serves_metrics_and_runs_in_memory() {
    let dir = open_tempdir();
    let home = readonly_dir(dir.path(), "home");
    let want = home.join(".local/state/vmscope/state.db");
    let a = Agent::start(
        dir.path(),
        "agent",
        None,
        User::Nobody,
        &[("HOME", home.to_str().unwrap())],
    );
    let detail = assert_runs_in_memory(&a, &want.display().to_string());
    assert!(detail.contains("Permission denied"), "{detail}");
    a.stop();
    assert!(!want.exists());
}

#[test]
fn unprivileged_with_no_home_never_touches_roots_path() {
    let dir = open_tempdir();
    let a = Agent::start(dir.path(), "agent", None, User::Nobody, &[]);
    let detail = assert_runs_in_memory(&a, "no state database path");
    assert!(detail.contains("HOME"), "{detail}");
    let log = a.stop();
    assert!(!log.contains("/var/lib/vmscope"), "{log}");
    assert!(!detail.contains("/var/lib/vmscope"), "{detail}");
}

#[test]
fn a_foreign_file_at_the_database_path_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        "these are someone's notes, not a database\n".repeat(100),
    )
    .unwrap();
    let config = write_config(dir.path(), "junk.toml", &junk, &mem_rule("mem", 0.0001));
    let a = Agent::start(dir.path(), "junk", Some(&config), User::Root, &[]);
    let detail = assert_runs_in_memory(&a, &junk.display().to_string());
    assert!(detail.contains("not a database"), "{detail}");
    // Rules still evaluate in memory.
    a.wait_metric(
        "vmscope_alert_active{alert=\"mem\",severity=\"warning\",scope=\"host\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    a.stop();

    // Another program's SQLite database: not written into.
    let other = dir.path().join("other.db");
    let c = rusqlite::Connection::open(&other).unwrap();
    c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ann');")
        .unwrap();
    drop(c);
    let config = write_config(dir.path(), "other.toml", &other, &mem_rule("mem", 0.0001));
    let a = Agent::start(dir.path(), "other", Some(&config), User::Root, &[]);
    let detail = assert_runs_in_memory(&a, "did not create");
    assert!(detail.contains("users"), "{detail}");
    a.stop();
    let c = rusqlite::Connection::open(&other).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["users"]);
}

#[test]
fn a_database_from_a_newer_vmscope_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let config = write_config(dir.path(), "vmscope.toml", &db, &mem_rule("mem", 0.0001));
    // Made by this build, then stamped as a later schema.
    Agent::start(dir.path(), "make", Some(&config), User::Root, &[]).stop();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("INSERT INTO schema_migrations VALUES (99, 0)", [])
        .unwrap();
    drop(c);
    let a = Agent::start(dir.path(), "agent", Some(&config), User::Root, &[]);
    assert_runs_in_memory(&a, "schema version 99");
    a.stop();
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs (needs root)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_logged_with_its_cause_and_evaluation_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("small"), "256k");
    let db = fs.0.join("state.db");
    // Sustained long enough to fill the disk after the database is made.
    let rule = "[watchdog.rules.mem]\nmetric = \"host_memory_used_ratio\"\nthreshold = 0.0001\nsustained = \"4s\"\n";
    let config = write_config(dir.path(), "vmscope.toml", &db, rule);
    let a = Agent::start(dir.path(), "agent", Some(&config), User::Root, &[]);
    // Fill the rest of the filesystem.
    let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
    let block = vec![0xA5u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();

    // The watchdog's own line (the ledger, flushing when a VM of a
    // parallel test appears, may hit the full disk first).
    let log = a.wait_log("cannot record alert state", Duration::from_secs(30));
    assert!(
        log.lines()
            .any(|l| l.contains("cannot record alert state")
                && l.contains("database or disk is full")),
        "{log}"
    );
    // Evaluation goes on in memory, and /metrics says the writes fail.
    a.wait_metric(
        "vmscope_alert_active{alert=\"mem\",severity=\"warning\",scope=\"host\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    a.wait_metric(
        "vmscope_db_errors_total{op=\"apply\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    // The database did open: persistence is on, its writes fail.
    let text = a.get_ok("/metrics");
    assert_eq!(
        sample(&text, "vmscope_watchdog_persistence_enabled"),
        Some(1.0)
    );
    a.stop();
}

#[test]
fn check_config_reports_a_state_path_the_agent_could_not_write() {
    let dir = open_tempdir();
    let ro = readonly_dir(dir.path(), "ro");
    let db = ro.join("sub/state.db");
    let config = write_config(dir.path(), "vmscope.toml", &db, "");
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_vmscope"))
        .arg("check-config")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: watchdog.state_db_path: "), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        !db.parent().unwrap().exists(),
        "check-config created {}",
        db.display()
    );

    // The same file is fine for root, who can write there.
    let out = Command::new(env!("CARGO_BIN_EXE_vmscope"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
