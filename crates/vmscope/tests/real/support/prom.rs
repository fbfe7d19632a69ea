//! A real Prometheus server (Debian's `/usr/bin/prometheus`) that scrapes
//! the agent every second, with its config and TSDB in a temp dir, and a
//! client for its query API. Killed and its files removed on drop; its log is
//! printed if the test is failing.
//!
//! Prometheus delays the first scrape by its discovery update interval (~5 s
//! after start), so callers poll queries for up to ~20 s.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{PROMETHEUS, free_port, http};

pub struct Prometheus {
    pub base: String,
    child: Child,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, path `/metrics`) as
    /// job `vmscope` every second, and waits until it is ready.
    pub fn start(target: &str) -> Prometheus {
        Prometheus::start_jobs(&[("vmscope", target, "")])
    }

    /// Starts Prometheus with one scrape job per (job name, target, extra
    /// YAML lines of the job, indented four spaces: `authorization:` ...).
    pub fn start_jobs(jobs: &[(&str, &str, &str)]) -> Prometheus {
        Prometheus::start_with(None, jobs, &[])
    }

    /// [`Prometheus::start_jobs`] on a given loopback port (for an agent
    /// configured with Prometheus' address before Prometheus starts).
    pub fn start_jobs_at(port: Option<u16>, jobs: &[(&str, &str, &str)]) -> Prometheus {
        Prometheus::start_with(port, jobs, &[])
    }

    /// Starts Prometheus scraping nothing, accepting remote_write at
    /// `{base}/api/v1/write` (`--web.enable-remote-write-receiver`).
    pub fn start_remote_write_receiver() -> Prometheus {
        Prometheus::start_with(None, &[], &["--web.enable-remote-write-receiver"])
    }

    fn start_with(port: Option<u16>, jobs: &[(&str, &str, &str)], flags: &[&str]) -> Prometheus {
        Prometheus::start_full(port, jobs, flags, &[])
    }

    /// [`Prometheus::start_jobs_at`] with extra command-line `flags` and
    /// `rule_files` (recording and alerting rules, evaluated every second).
    pub fn start_full(
        port: Option<u16>,
        jobs: &[(&str, &str, &str)],
        flags: &[&str],
        rule_files: &[&std::path::Path],
    ) -> Prometheus {
        let mut last_err = String::new();
        for _ in 0..3 {
            match Prometheus::try_start(port, jobs, flags, rule_files) {
                Ok(p) => return p,
                Err(e) => last_err = e,
            }
        }
        panic!("prometheus did not come up: {last_err}");
    }

    fn try_start(
        port: Option<u16>,
        jobs: &[(&str, &str, &str)],
        flags: &[&str],
        rule_files: &[&std::path::Path],
    ) -> Result<Prometheus, String> {
        let dir = tempfile::Builder::new()
            .prefix("vmscope-e2e-prom-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let config = dir.path().join("prometheus.yml");
        let mut text =
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                .to_owned();
        if !rule_files.is_empty() {
            text.push_str("rule_files:\n");
            for f in rule_files {
                text.push_str(&format!("  - '{}'\n", f.display()));
            }
        }
        text.push_str("scrape_configs:\n");
        for (job, target, extra) in jobs {
            text.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n{extra}"
            ));
        }
        fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
        let log = fs::File::create(dir.path().join("prometheus.log"))
            .map_err(|e| format!("create prometheus.log: {e}"))?;
        let addr = format!("127.0.0.1:{}", port.unwrap_or_else(free_port));
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {PROMETHEUS}: {e}"))?;
        let mut prom = Prometheus {
            base: format!("http://{addr}"),
            child,
            dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = prom.child.try_wait() {
                return Err(format!("prometheus exited with {status}: {}", prom.log()));
            }
            if http::get(&format!("{}/-/ready", prom.base)).is_ok_and(|r| r.status == 200) {
                return Ok(prom);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("prometheus not ready within 30 s: {}", prom.log()))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; returns the `data.result` array (empty if no series).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        query(&self.base, expr, None)
    }

    /// The scrape targets' health and last error, for failure messages.
    pub fn targets(&self) -> String {
        http::get(&format!("{}/api/v1/targets", self.base))
            .map(|r| r.body)
            .unwrap_or_else(|e| e)
    }
}

/// An instant query against a Prometheus-compatible API at `base`
/// (Prometheus, VictoriaMetrics): the `data.result` array.
pub fn query(base: &str, expr: &str, time: Option<&str>) -> Vec<serde_json::Value> {
    let url = format!("{base}/api/v1/query");
    let mut params = vec![("query", expr)];
    if let Some(t) = time {
        params.push(("time", t));
    }
    let resp = http::get_with_query(&url, &params).expect("prometheus query");
    assert_eq!(resp.status, 200, "query {expr}: {}", resp.body);
    let body: serde_json::Value =
        serde_json::from_str(&resp.body).expect("prometheus answer is JSON");
    assert_eq!(body["status"], "success", "query {expr}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}
