//! A real VictoriaMetrics (Debian's `/usr/bin/victoria-metrics`) accepting
//! remote_write at `{base}/api/v1/write`, with its data in a temp dir.
//! Killed and its files removed on drop; its log is printed if the test is
//! failing.
//!
//! `-search.latencyOffset=0s`: by default it hides the newest 30 s from
//! queries (shared/LAB.md); `-search.disableCache`: a query repeated while
//! waiting for a push must not be answered from a cached empty result.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, http};

pub const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";

pub struct VictoriaMetrics {
    pub base: String,
    child: Child,
    dir: TempDir,
}

impl VictoriaMetrics {
    pub fn start() -> VictoriaMetrics {
        let mut last_err = String::new();
        for _ in 0..3 {
            match VictoriaMetrics::try_start() {
                Ok(v) => return v,
                Err(e) => last_err = e,
            }
        }
        panic!("victoria-metrics did not come up: {last_err}");
    }

    fn try_start() -> Result<VictoriaMetrics, String> {
        let dir = tempfile::Builder::new()
            .prefix("vmscope-e2e-victoria-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let log = fs::File::create(dir.path().join("victoria.log"))
            .map_err(|e| format!("create victoria.log: {e}"))?;
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(VICTORIA_METRICS)
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr={addr}"))
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {VICTORIA_METRICS}: {e}"))?;
        let mut v = VictoriaMetrics {
            base: format!("http://{addr}"),
            child,
            dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = v.child.try_wait() {
                return Err(format!(
                    "victoria-metrics exited with {status}: {}",
                    v.log()
                ));
            }
            if http::get(&format!("{}/health", v.base)).is_ok_and(|r| r.status == 200) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "victoria-metrics not ready within 30 s: {}",
            v.log()
        ))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("victoria.log")).unwrap_or_default()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- victoria-metrics log ---\n{}", self.log());
        }
    }
}
