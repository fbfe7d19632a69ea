//! Sink secrets given in the environment, through the real binary:
//! `vmscope serve` reads the Telegram bot token, the Sentry DSN and the
//! webhook `Authorization` header from `VMSCOPE_*` variables set on the
//! child process, uses each one on the wire (checked by an HTTP receiver
//! this test runs on 127.0.0.1), and shows none of them (nor the webhook
//! URL, a secret of the config file) in its log on stderr, on `/metrics`,
//! `/metrics.json` or `/api/v1/alerts`. The first delivery is answered with
//! a 500 whose body echoes the request path, so the retry path and its
//! error text (the place a URL-borne token leaks first) are exercised.
//!
//! A sink whose secret is in neither the file nor the environment is a
//! configuration error (exit 2) naming the key and the variable, from
//! `check-config` and from `serve`.
//!
//! Each agent gets its own temporary state database; the child's
//! environment is cleared of every inherited `VMSCOPE_*` variable.

use crate::support::metrics::sample;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

// ---------------------------------------------------------------- receiver

/// One request as the receiver read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1: one thread per connection,
/// `Connection: close`, requests recorded in order. The first request whose
/// path starts with `fail_first` gets a 500 whose body echoes the request
/// line, token and all, as a misbehaving proxy might; everything else 200
/// `{"ok":true}`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    fn start(fail_first: &'static str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve_one(conn, &s, fail_first));
            }
        });
        Receiver { addr, seen }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the requests so far, or `within` passed.
    fn wait_for(&self, within: Duration, pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.requests();
            if pred(&r) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve_one(conn: TcpStream, seen: &Mutex<Vec<Seen>>, fail_first: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let mut seen = seen.lock().unwrap();
    let fail = path.starts_with(fail_first) && !seen.iter().any(|s| s.path.starts_with(fail_first));
    let (status, text) = if fail {
        (
            "500 Internal Server Error",
            format!(r#"{{"ok":false,"description":"upstream failed: {method} {path}"}}"#),
        )
    } else {
        ("200 OK", r#"{"ok":true}"#.to_owned())
    };
    seen.push(Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    drop(seen);
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.flush();
}

// ------------------------------------------------------------------- agent

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vmscope ARGS` with no inherited `VMSCOPE_*` variable, plus `env`.
fn vmscope(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmscope"));
    c.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("VMSCOPE_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A running `vmscope serve`, stopped (and its stderr read) on `stop`.
struct Agent {
    child: Child,
    base: String,
    stderr: PathBuf,
}

impl Agent {
    fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Agent {
        let addr = format!("127.0.0.1:{}", free_port());
        let stderr = dir.join("vmscope.stderr");
        let child = vmscope(
            &[
                "serve",
                "--interval",
                "1",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                &addr,
            ],
            env,
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
        let mut agent = Agent {
            child,
            base: format!("http://{addr}"),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("vmscope exited with {status}: {}", agent.log());
            }
            // Listening, with the watchdog started. Not /healthz: on a host
            // busy enough that a tick takes over three intervals (1 s here)
            // it says "stale", and that is not what this test is about.
            if get(&format!("{}/api/v1/alerts", agent.base)).is_ok_and(|(s, _)| s == 200) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "vmscope not serving within 20 s: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, path: &str) -> String {
        let (status, body) = get(&format!("{}{path}", self.base)).unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM (the graceful path: sinks flush, the log says "stopped"),
    /// then the whole log.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "vmscope ignored SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// A value unique to this run, so a match can only come from this test.
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}{}x{nanos}", std::process::id())
}

// ------------------------------------------------------------------- tests

#[test]
fn secrets_from_the_environment_reach_the_sinks_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start("/bot");
    // Shaped like the real thing: "<bot id>:<key>", a DSN key, a bearer token.
    let token = format!("987654321:{}", unique("TgSecret"));
    let sentry_key = unique("sentrykey");
    let dsn = format!("http://{sentry_key}@{}/42", rx.addr);
    let auth = format!("Bearer {}", unique("HookSecret"));
    let hook_path = format!("/hooks/{}", unique("PathSecret"));
    let config = dir.path().join("vmscope.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[watchdog]
state_db_path = "{db}"
builtin_rules = false
shutdown_timeout = "2s"

# Used memory is above 1 % on any running host: fires on the second tick.
[watchdog.rules.host_mem]
metric = "host_memory_used_ratio"
threshold = 0.01
sustained = "1s"

[watchdog.sinks.tg]
type = "telegram"
chat_id = "42"
api_url = "{base}"
max_backoff = "1s"

[watchdog.sinks.sentry]
type = "sentry"

[watchdog.sinks.hook]
type = "webhook"
url = "{base}{hook_path}"
"#,
            db = dir.path().join("state.db").display(),
            base = rx.base(),
        ),
    )
    .unwrap();
    let agent = Agent::start(
        &config,
        dir.path(),
        &[
            ("VMSCOPE_TELEGRAM_BOT_TOKEN", &token),
            ("VMSCOPE_SENTRY_DSN", &dsn),
            ("VMSCOPE_WEBHOOK_AUTH_HEADER", &auth),
            ("VMSCOPE_LOG", "debug"),
        ],
    );

    // Telegram: the 500 and its retry, then Sentry and the webhook.
    let tg_path = format!("/bot{token}/sendMessage");
    let reqs = rx.wait_for(Duration::from_secs(30), |r| {
        r.iter().filter(|s| s.path == tg_path).count() >= 2
            && r.iter().any(|s| s.path == "/api/42/envelope/")
            && r.iter().any(|s| s.path == hook_path)
    });
    let tg: Vec<&Seen> = reqs.iter().filter(|s| s.path.starts_with("/bot")).collect();
    assert!(tg.len() >= 2, "{reqs:#?}\n{}", agent.log());
    for s in &tg {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, tg_path, "the token from the environment");
        let body: Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body["chat_id"], 42);
        assert!(
            body["text"].as_str().unwrap().contains("host_mem"),
            "{body}"
        );
    }
    let sentry = reqs
        .iter()
        .find(|s| s.path == "/api/42/envelope/")
        .unwrap_or_else(|| panic!("no Sentry event: {reqs:#?}"));
    assert!(
        sentry
            .header("x-sentry-auth")
            .unwrap()
            .contains(&format!("sentry_key={sentry_key}")),
        "{sentry:?}"
    );
    let hook = reqs
        .iter()
        .find(|s| s.path == hook_path)
        .unwrap_or_else(|| panic!("no webhook call: {reqs:#?}"));
    assert_eq!(hook.header("authorization"), Some(auth.as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&hook.body).unwrap()["rule"],
        "host_mem"
    );

    let metrics = agent.get("/metrics");
    let json = agent.get("/metrics.json");
    let alerts = agent.get("/api/v1/alerts");
    let page: Value = serde_json::from_str(&alerts).unwrap();
    assert_eq!(page["active"][0]["rule"], "host_mem", "{page}");
    assert_eq!(
        sample(
            &metrics,
            r#"vmscope_alert_notifications_total{sink="tg",result="retry"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"vmscope_alert_notifications_total{sink="tg",result="success"}"#
        ),
        Some(1.0)
    );
    let log = agent.stop();
    // The failed attempt was logged, with the token scrubbed from the echo.
    assert!(
        log.contains("sink delivery failed; retrying with backoff"),
        "{log}"
    );
    assert!(log.contains("/bot***/sendMessage"), "{log}");
    assert!(log.contains("stopped"), "{log}");

    let secret_key = token.split_once(':').unwrap().1;
    let bearer = auth.strip_prefix("Bearer ").unwrap();
    for (what, text) in [
        ("stderr", &log),
        ("/metrics", &metrics),
        ("/metrics.json", &json),
        ("/api/v1/alerts", &alerts),
    ] {
        for (name, secret) in [
            ("bot token", secret_key),
            ("Sentry key", sentry_key.as_str()),
            ("webhook auth header", bearer),
            ("webhook URL", hook_path.as_str()),
        ] {
            assert!(!text.contains(secret), "the {name} appears in {what}");
        }
    }
}

/// Runs `cmd` to its end; a command still running after 20 s (a `serve`
/// that accepted the config) is killed and fails the test.
fn run(cmd: &mut Command, dir: &Path) -> (Option<i32>, String) {
    let err = dir.join("run.stderr");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after 20 s: {cmd:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&err).unwrap())
}

#[test]
fn a_sink_without_its_secret_is_a_config_error_naming_the_key_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    for (sink, want) in [
        (
            "type = \"telegram\"\nchat_id = \"42\"",
            "watchdog.sinks.s.bot_token: missing (set it here or in VMSCOPE_TELEGRAM_BOT_TOKEN)",
        ),
        (
            "type = \"sentry\"",
            "watchdog.sinks.s.dsn: missing (set it here or in VMSCOPE_SENTRY_DSN)",
        ),
    ] {
        let config = dir.path().join("vmscope.toml");
        std::fs::write(
            &config,
            format!(
                "[watchdog]\nstate_db_path = \"{}\"\n[watchdog.sinks.s]\n{sink}\n",
                db.display()
            ),
        )
        .unwrap();
        let file = config.to_str().unwrap();
        let check = run(&mut vmscope(&["check-config", file], &[]), dir.path());
        let port = format!("127.0.0.1:{}", free_port());
        let serve = run(
            &mut vmscope(
                &[
                    "serve",
                    "--interval",
                    "1",
                    "--config",
                    file,
                    "--listen",
                    &port,
                ],
                &[],
            ),
            dir.path(),
        );
        for (cmd, (code, stderr)) in [("check-config", check), ("serve", serve)] {
            assert_eq!(code, Some(2), "{cmd} {sink:?}: {stderr}");
            assert!(stderr.contains(want), "{cmd} {sink:?}: {stderr}");
        }
        assert!(!db.exists(), "nothing is started on a bad config");
    }
}
