//! A hung mount cannot hang the agent: a FUSE filesystem whose daemon never
//! answers (statvfs on it blocks forever, like a dead NFS server) is mounted
//! while `vmscope serve` runs. Collection must go on every interval, the
//! other filesystems must still be reported, the hung one must not, and the
//! timeout must be counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require(cond: bool, why: &str) -> bool {
    if !cond {
        assert!(std::env::var("CI").is_err(), "required under CI: {why}");
        eprintln!("skipped: {why}");
    }
    cond
}

struct HungMount {
    holder: Child,
    mountpoint: PathBuf,
}

impl Drop for HungMount {
    fn drop(&mut self) {
        // Abort the FUSE connection first: blocked statvfs calls then return.
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            for l in mi
                .lines()
                .filter(|l| l.contains(self.mountpoint.to_str().unwrap_or("-")))
            {
                if let Some(minor) = l
                    .split_whitespace()
                    .nth(2)
                    .and_then(|d| d.split(':').nth(1))
                {
                    let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
                }
            }
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        drop(self.holder.stdin.take());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn hung_statvfs_does_not_stop_collection() {
    let root = rustix::process::geteuid().is_root();
    if !require(
        root && Path::new("/dev/fuse").exists(),
        "needs root and /dev/fuse",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("hung");
    std::fs::create_dir(&mountpoint).unwrap();
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/hang_mount.py");
    let mut holder = Command::new("python3")
        .arg(&tool)
        .arg(&mountpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _mount = HungMount {
        holder,
        mountpoint: mountpoint.clone(),
    };
    assert_eq!(line.trim(), "mounted", "{line}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_vmscope"))
        .args(["serve", "--interval", "1", "--listen", &addr])
        .env("VMSCOPE_WATCHDOG__ENABLED", "false")
        .env("VMSCOPE_COLLECTORS__FILESYSTEM__TIMEOUT_SECS", "0.3")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut seq_at_3s = None;
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(s) = std::panic::catch_unwind(|| get(&addr, "/metrics")) {
            last = s;
        }
        if seq_at_3s.is_none() && started.elapsed() >= Duration::from_secs(3) {
            seq_at_3s = sample(&last, "vmscope_snapshot_sequence");
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let seq_end = sample(&last, "vmscope_snapshot_sequence").expect("metrics were served");
    let seq_3 = seq_at_3s.expect("metrics at 3 s");
    assert!(
        seq_end >= seq_3 + 2.0,
        "collection stalled: seq {seq_3} at 3 s, {seq_end} at 6 s"
    );
    let hung = mountpoint.to_str().unwrap();
    assert!(
        !last
            .lines()
            .any(|l| l.starts_with("vmscope_host_filesystem") && l.contains(hung)),
        "the hung mount must not be reported"
    );
    assert!(
        last.lines()
            .any(|l| l.starts_with("vmscope_host_filesystem_size_bytes")
                && l.contains("mountpoint=\"/\"")),
        "other filesystems are still reported"
    );
    let timeouts = sample(
        &last,
        "vmscope_collector_errors_total{collector=\"host_filesystem\",kind=\"timeout\"}",
    )
    .unwrap_or(0.0);
    assert!(timeouts >= 1.0, "timeout counted: {timeouts}");
}
