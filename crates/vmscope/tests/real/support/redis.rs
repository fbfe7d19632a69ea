//! A real Redis (Debian's `redis-server`) the test owns: its own loopback
//! port and working directory, no persistence, in the foreground as our
//! child, stopped by PID on drop and startable again on the same port (to
//! play a session store that goes away and comes back).
//!
//! [`Redis::cli`] runs `redis-cli` against it, [`Redis::load`] writes many
//! commands at once through `redis-cli --pipe`.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, poll_until};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// True when `redis-server` and `redis-cli` are installed; otherwise the
/// test prints why and skips (under `CI=true` it fails: see
/// [`super::lab_available`]).
pub fn redis_available(test: &str) -> bool {
    let missing: Vec<&str> = [REDIS_SERVER, REDIS_CLI]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{} missing (scripts/install-deps.sh)", missing.join(", "));
    assert!(!super::in_ci(), "{test}: {why}");
    eprintln!("{test}: skipped: {why}");
    false
}

/// A running `redis-server`; killed on drop.
pub struct Redis {
    pub port: u16,
    password: Option<String>,
    /// Listening on `<dir>/redis.sock` only (port 0).
    unix: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        Redis::start_with_password(None)
    }

    /// [`Redis::start`] with `requirepass`.
    pub fn start_with_password(password: Option<&str>) -> Redis {
        Redis::start_on(password, false)
    }

    /// A server on a unix socket in its directory, no TCP port.
    pub fn start_unix() -> Redis {
        Redis::start_on(None, true)
    }

    fn start_on(password: Option<&str>, unix: bool) -> Redis {
        let mut last = String::new();
        for _ in 0..3 {
            let mut r = Redis {
                port: if unix { 0 } else { free_port() },
                password: password.map(str::to_owned),
                unix,
                dir: tempfile::Builder::new()
                    .prefix("vmscope-redis-")
                    .tempdir()
                    .expect("temp dir for redis"),
                child: None,
            };
            match r.spawn() {
                Ok(()) => return r,
                // Someone took the free port first: another one.
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not come up: {last}");
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`, or `unix:///dir/redis.sock`.
    pub fn url(&self) -> String {
        if self.unix {
            return format!("unix://{}", self.socket().display());
        }
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// How `redis-cli` reaches it.
    fn endpoint(&self) -> Vec<String> {
        if self.unix {
            vec!["-s".to_owned(), self.socket().display().to_string()]
        } else {
            ["-h", "127.0.0.1", "-p", &self.port.to_string()]
                .map(str::to_owned)
                .to_vec()
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ])
        .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        if self.unix {
            cmd.arg("--unixsocket")
                .arg(self.socket())
                .args(["--unixsocketperm", "700"]);
        }
        let log = std::fs::File::create(self.dir.path().join("redis.log"))
            .map_err(|e| format!("redis log: {e}"))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let up = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("redis-server exited: {status}")));
            }
            self.try_cli(&["PING"])
                .ok()
                .filter(|o| o.trim() == "PONG")
                .map(Ok)
        });
        match up {
            Some((Ok(_), _)) => {
                self.child = Some(child);
                Ok(())
            }
            Some((Err(e), _)) => Err(format!("{e}: {}", self.server_log())),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("no PONG within 10 s: {}", self.server_log()))
            }
        }
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Stops the server (SIGKILL by PID: a store that vanishes).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused server dies of SIGKILL too; CONT first is harmless.
            let _ = rustix::process::Pid::from_raw(c.id() as i32)
                .map(|p| rustix::process::kill_process(p, rustix::process::Signal::CONT));
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: a store that
    /// accepts connections and answers nothing.
    pub fn pause(&self, paused: bool) {
        let child = self.child.as_ref().expect("redis-server is running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let sig = if paused {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let ok = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            self.spawn().ok()
        });
        assert!(
            ok.is_some(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(REDIS_CLI);
        cmd.args(self.endpoint());
        if let Some(p) = &self.password {
            // Through the environment: not on a command line others can read.
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("ERR") || text.starts_with("WRONGTYPE") {
            return Err(format!(
                "redis-cli {}: {text}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(text)
    }

    /// Runs one command; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `HSET key field value ...`.
    pub fn hset(&self, key: &str, fields: &[(&str, &str)]) {
        let mut args = vec!["HSET", key];
        for (f, v) in fields {
            args.extend([*f, *v]);
        }
        self.cli(&args);
    }

    /// Sends many commands (each a list of arguments) in one
    /// `redis-cli --pipe` (the RESP protocol, so any bytes are fine).
    pub fn load(&self, commands: impl IntoIterator<Item = Vec<String>>) {
        let mut resp = Vec::new();
        for args in commands {
            write!(resp, "*{}\r\n", args.len()).unwrap();
            for a in args {
                write!(resp, "${}\r\n{a}\r\n", a.len()).unwrap();
            }
        }
        let mut cmd = Command::new(REDIS_CLI);
        cmd.args(self.endpoint()).arg("--pipe");
        if let Some(p) = &self.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli --pipe");
        child.stdin.take().unwrap().write_all(&resp).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("errors: 0"),
            "redis-cli --pipe: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- redis-server log ---\n{}", self.server_log());
        }
    }
}
