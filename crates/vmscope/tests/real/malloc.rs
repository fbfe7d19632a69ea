//! glibc's malloc arenas: a serving agent keeps to two (`cli/malloc.rs`:
//! each thread's own arena kept memory the others could not reuse, 3-4 MiB
//! at 1000 VMs), unless the operator chose through the environment.
//!
//! Arenas are counted from outside, in `/proc/PID/maps`: every arena but
//! the main one lives in heaps that glibc maps at a 64 MiB boundary, 64 MiB
//! each (the used part read-write, the rest reserved with no access).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, http, poll_until};

const HEAP_MAX: u64 = 64 << 20;

/// glibc's non-main arena heaps in the process's address space.
fn arena_heaps(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let regions: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let anonymous = f.nth(3).is_none();
            let (a, b) = range.split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            Some((a, b, perms.to_string(), anonymous))
        })
        .collect();
    let mut heaps = 0;
    for (i, (start, end, perms, anonymous)) in regions.iter().enumerate() {
        if !anonymous || !perms.starts_with("rw") || start % HEAP_MAX != 0 {
            continue;
        }
        // The reserved rest of the heap, if any, follows directly.
        let end = match regions.get(i + 1) {
            Some((s, e, p, true)) if s == end && p == "---p" => *e,
            _ => *end,
        };
        if end - start == HEAP_MAX {
            heaps += 1;
        }
    }
    heaps
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vmscope serve` with `env`, loads it from 4 connections at once
/// for 3 s (the HTTP workers, the collector and the ledger all allocate),
/// and counts its arena heaps.
fn arena_heaps_under_load(env: &[(&str, &str)]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_vmscope"))
        .args(["serve", "--listen", &addr, "--interval", "1"])
        .env("VMSCOPE_STORE__PATH", dir.path().join("state.db"))
        .env_remove("MALLOC_ARENA_MAX")
        .env_remove("GLIBC_TUNABLES")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Running(child);
    let base = format!("http://{addr}");
    poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
        http::get(&format!("{base}/healthz"))
            .ok()
            .filter(|r| r.status == 200)
    })
    .expect("the agent answers /healthz");
    std::thread::scope(|s| {
        for path in ["/metrics", "/api/v1/vms", "/metrics", "/api/v1/host"] {
            let url = format!("{base}{path}");
            s.spawn(move || {
                let end = std::time::Instant::now() + Duration::from_secs(3);
                while std::time::Instant::now() < end {
                    assert_eq!(http::get(&url).unwrap().status, 200, "{url}");
                }
            });
        }
    });
    arena_heaps(agent.0.id())
}

#[test]
fn the_agent_keeps_to_two_malloc_arenas_unless_the_operator_chose() {
    // The main arena and at most one more.
    let ours = arena_heaps_under_load(&[]);
    assert!(ours <= 1, "{ours} arena heaps besides the main arena");
    // The operator's setting stands, and the count does see more arenas
    // where there are more.
    let theirs = arena_heaps_under_load(&[("MALLOC_ARENA_MAX", "8")]);
    assert!(theirs >= 3, "with MALLOC_ARENA_MAX=8: {theirs} arena heaps");
    let tunable = arena_heaps_under_load(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=8")]);
    assert!(
        tunable >= 3,
        "with glibc.malloc.arena_max=8: {tunable} arena heaps"
    );
}
