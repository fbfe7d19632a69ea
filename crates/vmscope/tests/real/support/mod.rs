//! The end-to-end test lab: real QEMU VMs, TAP devices, a running `vmscope
//! serve`, a real Prometheus and a real libvirtd, each behind a guard that
//! tears it down on drop, so a failing (panicking) test still cleans up.
//!
//! - [`lab`]: ROMs, TAP devices, QEMU processes, frame injection, the agent.
//! - [`http`]: a small blocking GET client.
//! - [`metrics`]: a Prometheus text-format parser good enough to find a
//!   sample by name and labels.
//! - [`prom`]: a real Prometheus server scraping the agent.
//! - [`libvirt`]: libvirtd/virtlogd start-up and a transient test domain.
//! - [`redis`]: a real `redis-server` on a private port, restartable.
//! - [`victoria`]: a real VictoriaMetrics accepting remote_write.
//!
//! Everything here needs root (TAP devices, AF_PACKET, libvirt) and a QEMU
//! binary; [`lab_available`] decides whether a test runs, skips, or (under
//! `CI=true`) fails loudly because the lab is missing. See `docs/lab.md`.

pub mod chromium;
pub mod hook;
pub mod http;
pub mod lab;
pub mod libvirt;
pub mod metrics;
pub mod postgres;
pub mod prom;
pub mod qmp;
pub mod redis;
pub mod tls;
pub mod victoria;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The QEMU binary every lab VM runs (Debian's `qemu-system-x86`).
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
pub const IP: &str = "/usr/sbin/ip";
pub const PYTHON: &str = "/usr/bin/python3";
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// True when this process can run the lab. When it cannot: under `CI=true`
/// this panics with the reason (a CI run must not silently skip its
/// end-to-end tests); otherwise it prints the reason and returns false, and
/// the test returns early.
pub fn lab_available(test: &str) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("not running as root (TAP devices, AF_PACKET and libvirt need it)".to_owned());
    }
    for tool in [QEMU, IP, PYTHON] {
        if !Path::new(tool).exists() {
            missing.push(format!("{tool} is missing (run scripts/install-deps.sh)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if in_ci() {
        panic!("{test}: the e2e lab cannot run under CI=true: {why}");
    }
    eprintln!("{test}: skipped: {why}");
    false
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A number unique within this test process (for names, TAPs, UUIDs).
pub fn next_serial() -> u32 {
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A fresh lowercase UUID unique to this process and call; the first group
/// spells "e2e" so leftovers on a host are easy to recognise.
pub fn unique_uuid() -> String {
    let n = next_serial();
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "e2e{:05x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid & 0xf_ffff,
        n & 0xffff,
        (nanos >> 48) & 0xfff,
        (nanos >> 36) & 0xfff,
        nanos & 0xffff_ffff_ffff,
    )
}

/// A VM/domain name unique to this test process: `vst-<pid>-<n>-<role>`.
pub fn unique_name(role: &str) -> String {
    format!("vst-{}-{}-{role}", std::process::id(), next_serial())
}

/// Calls `probe` every `every` until it returns `Some` or `timeout` passes.
/// Returns the value and when it was seen, or `None` on timeout.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<(T, Instant)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some((v, Instant::now()));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A loopback port nobody listens on right now. The port is released before
/// the caller binds it, so a race is possible: callers retry on bind failure.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// `[paths]` reading the recorded fixture host (`tests/fixtures/host1`,
/// five VMs): a config that runs the same everywhere.
pub fn fixture_paths() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host1");
    format!(
        "[paths]\nproc = {:?}\nrun = {:?}\nrootfs = {:?}\n",
        root.join("proc"),
        root.join("run"),
        root.join("rootfs")
    )
}
