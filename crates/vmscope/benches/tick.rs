//! One collection tick over a host with 1000 QEMU VMs.
//!
//! The bench writes a fixture tree into a temp dir, shaped like the one of
//! `tests/fixtures/make_fixtures.py`: `proc/<pid>/{stat,cmdline,comm,io,
//! ns/net,task/<tid>/{comm,schedstat,stat}}` per VM (a libvirt-style QEMU
//! command line with `-name guest=...,debug-threads=on`, two vCPU threads
//! named `CPU N/KVM`, one TAP each), one shared `net/dev` listing every TAP
//! (each `proc/<pid>/net` links to it, as all VMs share one namespace),
//! `proc/{stat,meminfo,loadavg}` and `proc/1/mountinfo`, plus 200 non-VM
//! processes. Then it measures:
//! - `tick/steady/1000`: a tick once every VM is followed (the steady state:
//!   held descriptors re-read with `pread`, nothing re-parsed but values);
//! - `tick/first/1000`: the first tick of a fresh collector (discovery of
//!   1000 VMs: command lines parsed, files opened).
//!
//! The files are regular files, so this measures vmscope's own work (parsing,
//! bookkeeping, building the snapshot) plus cheap reads; the kernel's cost of
//! generating real procfs files is measured by `bench/run.sh` instead.
//!
//! The `owners` group measures the same steady tick with owner sources
//! holding a 100 000-row mapping (1000 rows for the fixture's VMs, 99 000
//! for VMs on other hosts), against the tick with no fetched source, in
//! the same run:
//! - `owners/none`: `[owners]` defaults (Nova only: no fetched source);
//! - `owners/file-100k`: a CSV mapping file, parsed once;
//! - `owners/sqlite-100k`: the SQL source over a SQLite database;
//! - `owners/redis-100k`: 100 000 sessions in a real `redis-server` the
//!   bench starts on a free port (skipped without `redis-server`);
//! - `owners/redis-100k-refreshing`: the same while the source re-reads all
//!   100 000 sessions back to back on its own thread (the tick never waits
//!   for it; on a 2-core machine the two compete for CPU);
//! - `owners/file-100k-remap`: the tick that applies a new map (every VM
//!   resolved again), measured alone.
//!
//! Run with `cargo bench -p vmscope --bench tick`.

// Setup failures here are bugs in the bench itself: panicking is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use vmscope::config::Config;
use vmscope::host::FdBudget;
use vmscope::host::Roots;
use vmscope::pipeline::Collector;

const VMS: u32 = 1000;
const OTHERS: u32 = 200;
const FIRST_VM_PID: u32 = 10_000;

/// A `/proc/PID/stat` line, field for field as `make_fixtures.py` writes it.
#[allow(clippy::too_many_arguments)]
fn stat(
    pid: u32,
    comm: &str,
    utime: u64,
    stime: u64,
    threads: u32,
    start: u64,
    vsize: u64,
    rss: u64,
) -> String {
    format!(
        "{pid} ({comm}) S 1 1 1 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 {threads} 0 {start} {vsize} {rss} \
         18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 {guest} 0 0 0 0 0 0 0 0 0\n",
        guest = utime / 2
    )
}

fn cmdline(i: u32) -> Vec<u8> {
    let name = format!("bench-{i}");
    let args = [
        "/usr/bin/qemu-system-x86_64".to_string(),
        "-name".into(),
        format!("guest={name},debug-threads=on"),
        "-S".into(),
        "-machine".into(),
        "pc-q35-7.2,usb=off,dump-guest-core=off".into(),
        "-accel".into(),
        "kvm".into(),
        "-m".into(),
        "512".into(),
        "-smp".into(),
        "2".into(),
        "-uuid".into(),
        format!("5eed0000-0000-4000-8000-{i:012x}"),
        "-no-user-config".into(),
        "-nodefaults".into(),
        "-chardev".into(),
        format!(
            "socket,id=charmonitor,path=/var/lib/libvirt/qemu/domain-{i}-{name}/monitor.sock,server=on,wait=off"
        ),
        "-netdev".into(),
        format!("tap,id=n0,ifname=vmsb{i},script=no,downscript=no"),
        "-device".into(),
        format!(
            r#"{{"driver":"virtio-net-pci","netdev":"n0","id":"net0","mac":"52:54:00:00:{:02x}:{:02x}"}}"#,
            i >> 8 & 0xff,
            i & 0xff
        ),
        "-display".into(),
        "none".into(),
    ];
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

fn write(path: &Path, data: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Writes the fixture tree under `root` (which gets `proc/` and `run/`).
fn make_tree(root: &Path) {
    let proc = root.join("proc");
    write(
        &proc.join("stat"),
        "cpu  10000 100 5000 80000 500 0 200 0 3000 0\ncpu0 5000 50 2500 40000 250 0 100 0 1500 0\n\
         cpu1 5000 50 2500 40000 250 0 100 0 1500 0\nintr 1 2 3\nctxt 12345\nbtime 1700000000\n\
         processes 4242\nprocs_running 2\nprocs_blocked 0\n",
    );
    write(
        &proc.join("meminfo"),
        "MemTotal:       16384000 kB\nMemFree:         4096000 kB\nMemAvailable:    8192000 kB\n",
    );
    write(&proc.join("loadavg"), "0.50 0.75 1.00 2/300 4242\n");
    write(&proc.join("sys/kernel/hostname"), "bench-host\n");
    write(&proc.join("1/stat"), stat(1, "init", 100, 100, 1, 1, 0, 0));
    write(&proc.join("1/cmdline"), b"/sbin/init\0");
    write(
        &proc.join("1/mountinfo"),
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n23 1 0:22 / /sys rw - sysfs sysfs rw\n",
    );
    write(&proc.join("2/stat"), stat(2, "kthreadd", 0, 0, 1, 1, 0, 0));
    // Ordinary processes, old enough to be classified once and skipped.
    for p in 100..100 + OTHERS {
        write(
            &proc.join(format!("{p}/stat")),
            stat(p, "bash", 5, 5, 1, 1000, 1 << 24, 500),
        );
        write(&proc.join(format!("{p}/cmdline")), b"-bash\0");
    }
    // One network namespace for all VMs: one net/dev listing every TAP.
    let mut netdev = String::from(
        "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
         \x20   lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0\n",
    );
    for i in 0..VMS {
        let b = 1_000_003u64 * u64::from(i + 1);
        writeln!(
            netdev,
            "{:>8}: {b:>10} {:>7}    0    0    0     0          0         0 {:>10} {:>7}    0    0    0     0       0          0",
            format!("vmsb{i}"),
            b / 1000,
            b / 2,
            b / 2000
        )
        .unwrap();
    }
    write(&proc.join("netns-host/dev"), netdev);
    for i in 0..VMS {
        let pid = FIRST_VM_PID + i * 4;
        let dir = proc.join(pid.to_string());
        let start = 500_000 + u64::from(i);
        write(
            &dir.join("stat"),
            stat(
                pid,
                "qemu-system-x86",
                1500 + u64::from(i),
                500,
                3,
                start,
                1 << 30,
                32768,
            ),
        );
        write(&dir.join("cmdline"), cmdline(i));
        write(&dir.join("comm"), "qemu-system-x86\n");
        write(
            &dir.join("io"),
            format!(
                "rchar: 1000\nwchar: 2000\nsyscr: 10\nsyscw: 20\nread_bytes: {}\nwrite_bytes: {}\ncancelled_write_bytes: 0\n",
                u64::from(pid) * 4096,
                u64::from(pid) * 8192
            ),
        );
        fs::create_dir_all(dir.join("ns")).unwrap();
        std::os::unix::fs::symlink("net:[4026531840]", dir.join("ns/net")).unwrap();
        std::os::unix::fs::symlink("../netns-host", dir.join("net")).unwrap();
        let threads = [
            (pid, "qemu-system-x86"),
            (pid + 1, "CPU 0/KVM"),
            (pid + 2, "CPU 1/KVM"),
        ];
        for (n, (tid, comm)) in threads.into_iter().enumerate() {
            let t = dir.join(format!("task/{tid}"));
            let run_ns = 1_000_000_000u64 * n as u64 + u64::from(i);
            write(&t.join("comm"), format!("{comm}\n"));
            write(
                &t.join("stat"),
                stat(tid, comm, run_ns / 10_000_000, 0, 1, start, 0, 0),
            );
            write(
                &t.join("schedstat"),
                format!("{run_ns} {} 42\n", run_ns / 40),
            );
        }
    }
    fs::create_dir_all(root.join("run/libvirt/qemu")).unwrap();
}

fn config(root: &Path) -> Config {
    Config {
        paths: Roots::under(root).into(),
        interval: std::time::Duration::from_secs(1),
        ..Config::default()
    }
}

fn bench_tick(c: &mut Criterion) {
    // On tmpfs when there is one: on a disk filesystem every read would
    // also pay for an atime update, which /proc never does.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    make_tree(dir.path());
    let cfg = config(dir.path());
    // 4 held files per VM (stat, io, 2 x schedstat) plus net/dev.
    let budget = || FdBudget::new(8 * VMS as usize);

    let mut g = c.benchmark_group("tick");
    g.sample_size(30).measurement_time(Duration::from_secs(10));

    let mut steady = Collector::with_budget(&cfg, budget()).unwrap();
    let first = steady.tick();
    assert_eq!(
        first.vms.len(),
        VMS as usize,
        "the fixture's VMs must all be found"
    );
    assert!(
        first
            .vms
            .iter()
            .all(|v| v.vcpus.len() == 2 && v.network.len() == 1),
        "every VM must have its vCPU threads and its TAP read"
    );
    g.bench_function("steady/1000", |b| b.iter(|| black_box(steady.tick())));

    g.bench_function("first/1000", |b| {
        b.iter_batched(
            || Collector::with_budget(&cfg, budget()).unwrap(),
            |mut c| black_box(c.tick()),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Rows of the 100 000-row owner mapping: the fixture's 1000 VMs by UUID
/// first, then VMs that live on other hosts.
const MAPPING_ROWS: u32 = 100_000;

fn vm_uuid(i: u32) -> String {
    format!("5eed0000-0000-4000-8000-{i:012x}")
}

/// The mapping as CSV; `variant` changes VM 0's user (a new map).
fn mapping_csv(variant: u32) -> String {
    let mut csv = String::from("id,user_id,user_name,project_id,project_name\n");
    for i in 0..MAPPING_ROWS {
        let user = if i == 0 { variant } else { i % 5000 };
        writeln!(
            csv,
            "{},u-{user},user {user},p-{},project {}",
            vm_uuid(i),
            i % 300,
            i % 300
        )
        .unwrap();
    }
    csv
}

/// A steady collector over the fixture with `owners` as its `[owners]`
/// table, ticked until every VM carries an owner from `source`.
fn owned_collector(root: &Path, owners: &str, source: &str) -> Collector {
    let mut cfg = config(root);
    cfg.owners = toml::from_str(owners).unwrap();
    let mut c = Collector::with_budget(&cfg, FdBudget::new(8 * VMS as usize)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let snap = c.tick();
        if snap.vms.len() == VMS as usize && snap.vms.iter().all(|v| v.owner_source == Some(source))
        {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the {source} source never attributed every VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ticks each collector once per round, 300 rounds, and prints each one's
/// median and 10th percentile against the first's.
fn interleaved(cases: &mut [(&str, &mut Collector)]) {
    const ROUNDS: usize = 300;
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, c)) in cases.iter_mut().enumerate() {
            let t = std::time::Instant::now();
            black_box(c.tick());
            times[i].push(t.elapsed());
        }
    }
    let stat = |t: &mut Vec<Duration>, q: usize| {
        t.sort_unstable();
        t[t.len() * q / 100].as_secs_f64() * 1e3
    };
    let base = (stat(&mut times[0], 50), stat(&mut times[0], 10));
    for (i, (name, _)) in cases.iter().enumerate() {
        let (p50, p10) = (stat(&mut times[i], 50), stat(&mut times[i], 10));
        eprintln!(
            "owners interleaved {name}: p50 {p50:.3} ms ({:+.1}%), p10 {p10:.3} ms ({:+.1}%) over {ROUNDS} rounds",
            (p50 / base.0 - 1.0) * 100.0,
            (p10 / base.1 - 1.0) * 100.0
        );
    }
}

/// A `redis-server` on a free port, killed on drop.
struct Redis(std::process::Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child, port);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        if let Ok(c) = client.get_connection() {
            break c;
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for chunk in (0..MAPPING_ROWS).collect::<Vec<_>>().chunks(5000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.hset_multiple(
                format!("session:{i}"),
                &[
                    ("user_id", format!("u-{}", i % 5000)),
                    ("vm_id", vm_uuid(i)),
                    ("pid", (FIRST_VM_PID + i).to_string()),
                ],
            )
            .ignore();
        }
        pipe.query::<()>(&mut conn).unwrap();
    }
    Some(redis)
}

fn bench_owners(c: &mut Criterion) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    make_tree(dir.path());
    let mapping = dir.path().join("owners.csv");
    fs::write(&mapping, mapping_csv(0)).unwrap();

    let mut g = c.benchmark_group("owners");
    g.sample_size(30).measurement_time(Duration::from_secs(10));

    let mut none =
        Collector::with_budget(&config(dir.path()), FdBudget::new(8 * VMS as usize)).unwrap();
    none.tick();
    g.bench_function("none", |b| b.iter(|| black_box(none.tick())));

    let file = format!("[file]\npath = {mapping:?}\ninterval = \"1h\"\n");
    let mut with_file = owned_collector(dir.path(), &file, "file");
    g.bench_function("file-100k", |b| b.iter(|| black_box(with_file.tick())));

    // SQL: the same 100 000 rows in a SQLite database (the PostgreSQL
    // backend publishes the same map; its fetch cost is off the tick).
    let db = dir.path().join("platform.db");
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE vms (uuid TEXT, owner_id TEXT, owner TEXT, project TEXT, project_name TEXT)",
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO vms VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            for i in 0..MAPPING_ROWS {
                let user = i % 5000;
                insert
                    .execute((
                        vm_uuid(i),
                        format!("u-{user}"),
                        format!("user {user}"),
                        format!("p-{}", i % 300),
                        format!("project {}", i % 300),
                    ))
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let sql = format!(
        "[sql]\nurl = \"sqlite://{}\"\nquery = \"SELECT uuid AS vm_id, owner_id AS user_id, owner AS user_name, project AS project_id, project_name FROM vms\"\ninterval = \"1h\"\ntimeout = \"60s\"\n",
        db.display()
    );
    let mut with_sql = owned_collector(dir.path(), &sql, "sql");
    g.bench_function("sqlite-100k", |b| b.iter(|| black_box(with_sql.tick())));

    match start_redis() {
        None => eprintln!("owners/redis-*: skipped (no redis-server)"),
        Some(redis) => {
            let url = format!("redis://127.0.0.1:{}/", redis.1);
            let quiet = format!(
                "[redis]\nurl = {url:?}\ninterval = \"1h\"\ntimeout = \"60s\"\nmax_keys = 200000\n"
            );
            let mut quiet = owned_collector(dir.path(), &quiet, "redis");
            g.bench_function("redis-100k", |b| b.iter(|| black_box(quiet.tick())));
            // Criterion's cases run one after the other, minutes apart, on
            // a shared machine whose speed drifts by more than the 5% the
            // issue allows. Interleaved rounds compare like with like.
            interleaved(&mut [
                ("none", &mut none),
                ("file-100k", &mut with_file),
                ("sqlite-100k", &mut with_sql),
                ("redis-100k", &mut quiet),
            ]);
            drop(quiet);
            // Refreshing back to back: the shortest interval the source
            // takes, far below one read of 100 000 sessions.
            let busy = format!(
                "[redis]\nurl = {url:?}\ninterval = \"1ms\"\ntimeout = \"60s\"\nmax_keys = 200000\n"
            );
            let mut busy = owned_collector(dir.path(), &busy, "redis");
            g.bench_function("redis-100k-refreshing", |b| {
                b.iter(|| black_box(busy.tick()))
            });
        }
    }

    // A new map: the tick that applies it, alone. The file is looked at
    // every 20 ms; ticks before the new map arrives are not counted.
    let fast = format!("[file]\npath = {mapping:?}\ninterval = \"20ms\"\n");
    let mut remap = owned_collector(dir.path(), &fast, "file");
    let mut variant = 0;
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("file-100k-remap", |b| {
        b.iter_custom(|iters| {
            let mut applying = Duration::ZERO;
            for _ in 0..iters {
                variant += 1;
                let want = format!("u-{}", 100_000 + variant);
                // Replaced whole (rename), as a platform should write it.
                let next = mapping.with_extension("csv.new");
                fs::write(&next, mapping_csv(100_000 + variant)).unwrap();
                fs::rename(&next, &mapping).unwrap();
                loop {
                    let t = std::time::Instant::now();
                    let snap = remap.tick();
                    let took = t.elapsed();
                    let vm0 = snap.vms.iter().find(|v| v.name == "bench-0");
                    if vm0.and_then(|v| v.owner.as_ref()?.user_id.as_deref()) == Some(&want) {
                        applying += took;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            applying
        })
    });
    g.finish();
}

criterion_group!(benches, bench_tick, bench_owners);
criterion_main!(benches);
