//! The fleet ledger under a fleet's load: simulated hosts, each on its own
//! thread with its own [`PgLedger`] (one connection, as an agent's shipper
//! has), upserting 60 s usage rows for its VMs into one throwaway
//! PostgreSQL 15 cluster on this machine, through the agent's real upsert
//! path ([`PgLedger::upsert_rows`]: dictionary ids, then one `unnest`
//! upsert per batch).
//!
//! Time is compressed: host h flushes its simulated minute m as soon as its
//! minute m - 1 is written (hosts start staggered). Each flush carries what
//! an agent's 60 s flush carries: per VM the new minute's row and the final
//! totals of the minute before (an upsert that updates), so 2 x VMS rows,
//! half of them new. Prints rows/s sustained, per-flush latency p50 / p99
//! over all hosts, the database size after the run (tables + indexes, after
//! VACUUM) and per month, extrapolated per resolution (60 s rows, plus the
//! hourly and daily rollups at 1/60 and 1/1440 of their count), and the
//! time of the usage API's query (by project) over everything written,
//! for one host and for the fleet.
//!
//! Needs root (the cluster runs as the `postgres` user) and Debian's
//! PostgreSQL 15. Knobs (environment): `FLEET_HOSTS` (100), `FLEET_VMS`
//! (1000), `FLEET_MINUTES` (15), `FLEET_WARMUP_MINUTES` (2, not timed),
//! `FLEET_PACE_MS` (6000) and `FLEET_PACED_FLUSHES` (3): after the
//! saturated run, each host flushes once per pace (spread over it), which
//! gives the latency of a fleet that is not saturating the server.
//! Run with `cargo bench -p vmscope --bench ledger_fleet`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vmscope::outbound::redact::Secret;
use vmscope::store::postgres::{PgLedger, PgTarget};
use vmscope::store::{DbMetrics, LedgerKey, LedgerUsage, UsageBy, UsageQuery};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const T0_MS: i64 = 1_800_000_000_000 / 60_000 * 60_000;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_postgres(tool: &str, args: &[&str]) {
    let bin = format!("{BIN}/{tool}");
    let mut all = vec!["-u", "postgres", "--", bin.as_str()];
    all.extend_from_slice(args);
    run("/usr/sbin/runuser", &all);
}

/// A throwaway cluster: trust auth on a private port, settings a small
/// dedicated database host would have (durable commits: fsync on).
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("vmscope-fleet-")
            .tempdir()
            .unwrap();
        run(
            "/usr/bin/chown",
            &["postgres:postgres", &dir.path().display().to_string()],
        );
        let data = dir.path().join("data");
        as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth=trust",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 \
             -c shared_buffers=1GB -c max_wal_size=4GB -c synchronous_commit=on",
            dir.path().display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &dir.path().join("log").display().to_string(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        Cluster { dir, port }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn sql(&self, q: &str) -> String {
        let out = Command::new("/usr/sbin/runuser")
            .args(["-u", "postgres", "--", &format!("{BIN}/psql")])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-Atc", q])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        if Path::new(&data).exists() {
            as_postgres(
                "pg_ctl",
                &["-D", &data.display().to_string(), "-m", "immediate", "stop"],
            );
        }
    }
}

fn row(host: usize, vm: usize, minute: i64, complete: bool) -> (LedgerKey, LedgerUsage) {
    let seconds = if complete { 60.0 } else { 31.0 };
    (
        LedgerKey {
            host: format!("hv-{host:03}.dc1.example.net"),
            vm_id: format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", host, vm),
            incarnation: format!(
                "3f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6f:{}:{}",
                10_000 + vm,
                4242 + vm
            ),
            resolution_s: 60,
            interval_start_ms: T0_MS + minute * 60_000,
        },
        LedgerUsage {
            vm_name: format!("instance-{host:03}-{vm:04}"),
            user_key: Some(format!("user-{}", vm % 50)),
            user_label: Some(format!("User {}", vm % 50)),
            project_key: Some(format!("project-{}", vm % 20)),
            project_label: Some(format!("Project {}", vm % 20)),
            cpu_seconds: seconds * 0.37 + vm as f64 * 1e-3,
            guest_seconds: Some(seconds * 0.33),
            vcpu_allocated_seconds: seconds * 2.0,
            memory_allocated_byte_seconds: seconds * 4.0 * 1_073_741_824.0,
            rss_byte_seconds: seconds * 1.7 * 1_073_741_824.0,
            net_rx_bytes: 120_000 + vm as u64,
            net_tx_bytes: 80_000 + vm as u64,
            observed_seconds: seconds,
            gap_seconds: 0.0,
        },
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if !rustix::process::geteuid().is_root() || !Path::new(BIN).join("pg_ctl").exists() {
        eprintln!("ledger_fleet: skipped: needs root and PostgreSQL 15 ({BIN})");
        return;
    }
    let hosts = knob("FLEET_HOSTS", 100);
    let vms = knob("FLEET_VMS", 1000);
    let minutes = knob("FLEET_MINUTES", 15) as i64;
    let warmup = knob("FLEET_WARMUP_MINUTES", 2) as i64;
    let pace = Duration::from_millis(knob("FLEET_PACE_MS", 6000) as u64);
    let paced = knob("FLEET_PACED_FLUSHES", 3) as i64;
    let cluster = Cluster::start();
    let url = cluster.url();
    let target = PgTarget::parse("bench", &Secret::new(url)).unwrap();
    let metrics = Arc::new(DbMetrics::new());
    PgLedger::new(target.clone(), 1, Duration::from_secs(60), metrics.clone())
        .migrate()
        .unwrap();
    println!(
        "ledger_fleet: {hosts} hosts x {vms} VMs, {warmup} warm-up + {minutes} timed simulated minutes, \
         {} rows per flush",
        2 * vms
    );
    let barrier = Arc::new(Barrier::new(hosts + 1));
    let saturated_done = Arc::new(Barrier::new(hosts + 1));
    let threads: Vec<_> = (0..hosts)
        .map(|h| {
            let target = target.clone();
            let metrics = metrics.clone();
            let barrier = barrier.clone();
            let saturated_done = saturated_done.clone();
            std::thread::spawn(move || {
                let pg = PgLedger::new(target, 1, Duration::from_secs(60), metrics);
                // Built once, re-dated per minute: the client's own work
                // stays small next to the server's on shared cores.
                let mut rows = Vec::with_capacity(2 * vms);
                for vm in 0..vms {
                    rows.push(row(h, vm, 1, false));
                    rows.push(row(h, vm, 0, true));
                }
                let mut flush = |m: i64| {
                    for pair in rows.chunks_mut(2) {
                        pair[0].0.interval_start_ms = T0_MS + m * 60_000;
                        pair[1].0.interval_start_ms = T0_MS + (m - 1) * 60_000;
                    }
                    let t = Instant::now();
                    pg.upsert_rows(&rows).unwrap();
                    (t.elapsed().as_secs_f64(), rows.len())
                };
                // Staggered: hosts do not all flush at the same instant.
                std::thread::sleep(Duration::from_millis((h as u64 * 7) % 500));
                for m in 1..=warmup {
                    flush(m);
                }
                barrier.wait();
                let mut lat = Vec::new();
                let mut rows = 0;
                for m in warmup + 1..=warmup + minutes {
                    let (s, n) = flush(m);
                    lat.push(s);
                    rows += n;
                }
                saturated_done.wait();
                // Paced: each host flushes once per `pace`, hosts spread
                // over it, as a real fleet's flushes spread over a minute.
                let base = Instant::now() + pace.mul_f64(h as f64 / hosts as f64);
                let mut paced_lat = Vec::new();
                for k in 0..paced {
                    let at = base + pace.mul_f64(k as f64);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    paced_lat.push(flush(warmup + minutes + 1 + k).0);
                }
                (lat, rows, paced_lat)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    saturated_done.wait();
    let wall = start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    let mut paced_lat = Vec::new();
    let mut rows = 0;
    for t in threads {
        let (l, n, p) = t.join().unwrap();
        lat.extend(l);
        rows += n;
        paced_lat.extend(p);
    }
    paced_lat.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    let flushes = lat.len();
    println!(
        "  sustained: {:.0} rows/s upserted ({:.0} new 60 s rows/s), {flushes} flushes in {wall:.1} s",
        rows as f64 / wall,
        rows as f64 / 2.0 / wall
    );
    println!(
        "  flush latency per host ({} rows), saturated: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        2 * vms,
        pct(&lat, 0.5) * 1000.0,
        pct(&lat, 0.99) * 1000.0,
        lat.last().copied().unwrap_or(0.0) * 1000.0
    );
    if !paced_lat.is_empty() {
        println!(
            "  flush latency per host, paced (each host every {} ms, {:.0}x real time, {} flushes): \
             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pace.as_millis(),
            60.0 / pace.as_secs_f64(),
            paced_lat.len(),
            pct(&paced_lat, 0.5) * 1000.0,
            pct(&paced_lat, 0.99) * 1000.0,
            paced_lat.last().copied().unwrap_or(0.0) * 1000.0
        );
    }
    // Simulated minutes per wall second: how much faster than real time
    // the fleet's flushes go, i.e. how many such fleets one server takes.
    let sim_speed = minutes as f64 * 60.0 / wall;
    println!(
        "  {sim_speed:.1}x real time: one PostgreSQL here keeps up with about {:.0} hosts of {vms} VMs at 60 s rows",
        sim_speed * hosts as f64
    );
    cluster.sql("VACUUM ANALYZE");
    // Reading: the API's query over everything written, by project, for
    // one host and for the fleet (best of three, warm cache).
    let reader = PgLedger::new(target.clone(), 1, Duration::from_secs(300), metrics.clone());
    for host in [Some(format!("hv-{:03}.dc1.example.net", 0)), None] {
        let q = UsageQuery {
            from_ms: T0_MS,
            to_ms: T0_MS + (warmup + minutes + paced + 1) * 60_000,
            step_ms: 0,
            by: UsageBy::Project,
            resolution_s: 0,
            host: host.clone(),
            limit: 100_000,
            owners: None,
        };
        let best = (0..3)
            .map(|_| {
                let t = Instant::now();
                let n = reader.usage(&q).unwrap().len();
                (t.elapsed().as_secs_f64(), n)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        println!(
            "  usage by project, {}: {:.0} ms ({} totals)",
            if host.is_some() {
                "one host"
            } else {
                "whole fleet"
            },
            best.0 * 1000.0,
            best.1
        );
    }
    let size = |rel: &str| -> f64 {
        cluster
            .sql(&format!("SELECT pg_total_relation_size('{rel}')"))
            .parse()
            .unwrap_or(0.0)
    };
    let facts: f64 = cluster
        .sql("SELECT count(*) FROM ledger_facts")
        .parse()
        .unwrap_or(0.0);
    let dicts = size("ledger_series") + size("ledger_labels");
    let on_disk = size("ledger_facts");
    // Every row was written twice (the update of its completion): after a
    // plain VACUUM the old versions' space is free for the next minutes'
    // rows but still in the file. Compacted is the steady state's floor.
    cluster.sql("VACUUM FULL ledger_facts");
    let compact = size("ledger_facts");
    let per_row = compact / facts.max(1.0);
    // A 30-day month of 60 s rows, plus hourly (1/60) and daily (1/1440)
    // rollup rows of the same width; dictionaries once.
    let month_rows = (hosts * vms) as f64 * 30.0 * 1440.0;
    let month = month_rows * per_row;
    let rollups = month_rows * (1.0 / 60.0 + 1.0 / 1440.0) * per_row;
    println!(
        "  facts: {facts:.0} rows, {:.1} MB after VACUUM, {:.1} MB compacted ({per_row:.0} bytes per row \
         with its indexes); dictionaries {:.1} MB",
        on_disk / 1e6,
        compact / 1e6,
        dicts / 1e6
    );
    println!(
        "  per month ({hosts} x {vms} VMs): 60 s rows {:.0} GB, hourly + daily rollups {:.1} GB; \
         per VM per day {:.0} KB",
        month / 1e9,
        rollups / 1e9,
        1440.0 * per_row / 1e3
    );
}
