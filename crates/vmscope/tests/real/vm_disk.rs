//! Per-disk I/O and the balloon from QEMU's own QMP socket, for real QEMU
//! VMs: vmscope's figures equal what QMP says when asked directly at the
//! same moment, and equal the I/O the guest is known to have done; a
//! monitor that never answers, or answers garbage, keeps the tick on time
//! and shows as errors.
//!
//! The known I/O: the VM boots QEMU's SeaBIOS from a 1 MiB raw disk on
//! virtio-blk whose boot sector (below) writes itself to sector 2 (512
//! bytes, one request) and reads 4 sectors (2048 bytes, one request)
//! through BIOS int 13h, then halts. With SeaBIOS' read of the boot sector
//! (512 bytes, one request) the disk has read 2560 bytes in 2 requests and
//! written 512 bytes in 1, and then holds still.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::lab::{Agent, Boot, Firmware, QemuVm, Roms, VmSpec};
use crate::support::metrics::assert_promtool_clean;
use crate::support::qmp::Qmp;
use crate::support::{lab_available, poll_until, unique_name, unique_uuid};

/// Real-mode code at 0x7c00: `xor ax,ax; mov es,ax`; `int 13h` AH=03
/// (write) 1 sector from ES:7c00 to C0/H0/S2 of drive 80h; `int 13h` AH=02
/// (read) 4 sectors from C0/H0/S3 to ES:8000; then `hlt; jmp $-1`.
const BOOT_CODE: &str = "31c08ec0b80103b90200ba8000bb007ccd13b80402b90300ba8000bb0080cd13f4ebfd";

pub(crate) fn boot_disk(path: &Path) {
    let mut code: Vec<u8> = (0..BOOT_CODE.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&BOOT_CODE[i..i + 2], 16).unwrap())
        .collect();
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xAA]);
    code.resize(1 << 20, 0);
    std::fs::write(path, code).unwrap();
}

fn spec(prefix: &str) -> VmSpec {
    VmSpec {
        name: unique_name(prefix),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 64,
        firmware: Firmware::Idle,
        process_name: None,
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn per_disk_figures_and_balloon_equal_qmp_read_directly() {
    if !lab_available("vm_disk") {
        return;
    }
    let roms = Roms::new();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("boot.img");
    boot_disk(&disk);
    let ours = dir.path().join("agent-qmp.sock");
    let theirs = dir.path().join("test-qmp.sock");
    let spec = spec("disk");
    // Two monitors: the first (-qmp) is the one vmscope finds on the
    // command line; the test asks the second, so neither waits for the
    // other (a QEMU monitor serves one client at a time).
    let _vm = QemuVm::start_with(
        &roms,
        spec.clone(),
        None,
        Boot::SeaBios,
        &[args(&[
            "-drive",
            &format!("file={},format=raw,if=none,id=drive0", disk.display()),
            "-device",
            "virtio-blk-pci,drive=drive0,id=vd0",
            "-device",
            "virtio-balloon-pci,id=balloon0",
            "-qmp",
            &format!("unix:{},server=on,wait=off", ours.display()),
            "-chardev",
            &format!(
                "socket,id=test,path={},server=on,wait=off",
                theirs.display()
            ),
            "-mon",
            "chardev=test,mode=control",
        ])]
        .concat(),
    );
    let mut qmp = Qmp::connect(&theirs);
    // The guest has done its I/O once QMP counts the write and both reads.
    poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let s = qmp.blockstats("drive0");
        (s["wr_operations"] == 1 && s["rd_operations"] == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the guest never did its I/O: {}", qmp.blockstats("drive0")));

    let agent = Agent::start(1);
    let vm = [("vm_id", spec.uuid.as_str())];
    let disk0 = [("vm_id", spec.uuid.as_str()), ("device", "drive0")];
    agent.wait_for_series(
        "vmscope_vm_disk_read_bytes_total",
        &disk0,
        Duration::from_secs(15),
    );

    // The same moment: QMP read before and after one scrape, its counters
    // unchanged (`idle_time_ns`, time since the last request, always moves).
    let counters = |mut s: serde_json::Value| {
        if let Some(o) = s.as_object_mut() {
            o.remove("idle_time_ns");
        }
        s
    };
    let (m, direct, balloon) =
        poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
            let before = counters(qmp.blockstats("drive0"));
            let balloon = qmp.execute("query-balloon", None);
            let m = agent.metrics();
            let after = counters(qmp.blockstats("drive0"));
            (before == after).then_some((m, after, balloon))
        })
        .expect("QMP's figures never held still across a scrape")
        .0;
    let got = |name: &str| {
        m.value(name, &disk0)
            .unwrap_or_else(|| panic!("{name}{disk0:?} missing"))
    };
    let qmp_u64 = |k: &str| {
        direct[k]
            .as_u64()
            .unwrap_or_else(|| panic!("QMP {k}: {direct}")) as f64
    };
    for (metric, field, known) in [
        ("vmscope_vm_disk_read_bytes_total", "rd_bytes", Some(2560.0)),
        ("vmscope_vm_disk_write_bytes_total", "wr_bytes", Some(512.0)),
        (
            "vmscope_vm_disk_read_requests_total",
            "rd_operations",
            Some(2.0),
        ),
        (
            "vmscope_vm_disk_write_requests_total",
            "wr_operations",
            Some(1.0),
        ),
        (
            "vmscope_vm_disk_flush_requests_total",
            "flush_operations",
            None,
        ),
    ] {
        assert_eq!(got(metric), qmp_u64(field), "{metric} vs QMP {field}");
        if let Some(k) = known {
            assert_eq!(got(metric), k, "{metric}: the guest's known I/O");
        }
    }
    for (metric, field) in [
        (
            "vmscope_vm_disk_read_time_seconds_total",
            "rd_total_time_ns",
        ),
        (
            "vmscope_vm_disk_write_time_seconds_total",
            "wr_total_time_ns",
        ),
        (
            "vmscope_vm_disk_flush_time_seconds_total",
            "flush_total_time_ns",
        ),
    ] {
        let want = qmp_u64(field) / 1e9;
        assert!(
            (got(metric) - want).abs() <= 1e-9 * want.max(1.0),
            "{metric} {} vs QMP {field} {want}",
            got(metric)
        );
    }
    assert!(got("vmscope_vm_disk_read_time_seconds_total") > 0.0);

    // The balloon: QMP's `actual`, which is the whole 64 MiB (no guest
    // driver inflates it); no guest report without a guest driver.
    let actual = balloon["actual"].as_u64().unwrap() as f64;
    assert_eq!(actual, (64u64 << 20) as f64);
    assert_eq!(m.value("vmscope_vm_balloon_bytes", &vm), Some(actual));
    assert_eq!(m.value("vmscope_vm_guest_memory_total_bytes", &vm), None);

    // Where the figures came from, and that they are fresh.
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_info",
            &[("vm_id", spec.uuid.as_str()), ("source", "qmp")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("vmscope_vm_device_stats_up", &vm), Some(1.0));
    let last = m
        .value(
            "vmscope_vm_device_stats_last_success_timestamp_seconds",
            &vm,
        )
        .unwrap();
    assert!((now_unix() - last).abs() < 5.0, "last success {last}");
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_errors_total",
            &[("vm_id", spec.uuid.as_str()), ("kind", "timeout")]
        ),
        Some(0.0)
    );
    // The process-wide figure is its own family, without `device`.
    assert!(m.value("vmscope_vm_io_read_bytes_total", &vm).is_some());
    let body = crate::support::http::get(&agent.url("/metrics"))
        .unwrap()
        .body;
    assert_promtool_clean(&body);
}

/// A monitor that accepts and never says a word.
fn silent_monitor(path: &Path) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => return,
            }
        }
    });
}

/// A monitor that greets like QEMU and then answers with bytes that are
/// not JSON.
fn garbage_monitor(path: &Path) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = c.write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\r\n\x00\xff}{ not json\r\n",
            );
            held.push(c);
        }
    });
}

#[test]
fn a_silent_or_garbled_monitor_keeps_the_tick_on_time_and_is_counted() {
    if !lab_available("vm_disk") {
        return;
    }
    let roms = Roms::new();
    let dir = tempfile::tempdir().unwrap();
    let (silent, garbled) = (spec("qmpsilent"), spec("qmpgarbage"));
    let mut vms = Vec::new();
    for (s, sock, serve) in [
        (
            &silent,
            dir.path().join("silent.sock"),
            silent_monitor as fn(&Path),
        ),
        (&garbled, dir.path().join("garbage.sock"), garbage_monitor),
    ] {
        vms.push(QemuVm::start_with(
            &roms,
            s.clone(),
            None,
            Boot::Rom,
            &args(&[
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ]),
        ));
        // Real QEMU, its command line naming the socket; the socket itself
        // is now ours (QEMU's listener is unlinked and replaced).
        serve(&sock);
    }
    // Interval 1 s: a poll may take min(timeout 2 s, interval / 2) = 0.5 s.
    let agent = Agent::start(1);
    let timeout_errors = [("vm_id", silent.uuid.as_str()), ("kind", "timeout")];
    let parse_errors = [("vm_id", garbled.uuid.as_str()), ("kind", "parse")];
    let (m, waited) = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let m = agent.metrics();
        let n = |l: &[(&str, &str)]| {
            m.value("vmscope_vm_device_stats_errors_total", l)
                .unwrap_or(0.0)
        };
        (n(&timeout_errors) >= 2.0 && n(&parse_errors) >= 2.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("poll errors never counted; agent log:\n{}", agent.log()));
    eprintln!("errors counted after {waited:?}");
    for s in [&silent, &garbled] {
        let vm = [("vm_id", s.uuid.as_str())];
        assert_eq!(m.value("vmscope_vm_device_stats_up", &vm), Some(0.0));
        assert_eq!(
            m.value(
                "vmscope_vm_device_stats_info",
                &[("vm_id", s.uuid.as_str()), ("source", "qmp")]
            ),
            Some(1.0)
        );
        // Never a good answer: no figures, no success time.
        assert!(m.all("vmscope_vm_disk_read_bytes_total", &vm).is_empty());
        assert_eq!(
            m.value(
                "vmscope_vm_device_stats_last_success_timestamp_seconds",
                &vm
            ),
            None
        );
        // The VM's own figures are unaffected.
        assert_eq!(m.value("vmscope_vm_collect_success", &vm), Some(1.0));
    }
    for kind in ["timeout", "parse"] {
        let n = m
            .value(
                "vmscope_collector_errors_total",
                &[("collector", "vm_devices"), ("kind", kind)],
            )
            .unwrap_or(0.0);
        assert!(n >= 1.0, "collector errors of kind {kind}: {n}");
    }

    // The tick stays on time while every poll of the silent monitor runs
    // into its 0.5 s deadline: ticks are short and one per second.
    let start = Instant::now();
    let seq = |m: &crate::support::metrics::Exposition| {
        m.value("vmscope_snapshot_sequence", &[]).unwrap()
    };
    let first = seq(&agent.metrics());
    let mut longest: f64 = 0.0;
    while start.elapsed() < Duration::from_secs(5) {
        let m = agent.metrics();
        longest = longest.max(m.value("vmscope_tick_duration_seconds", &[]).unwrap());
        std::thread::sleep(Duration::from_millis(250));
    }
    let ticks = seq(&agent.metrics()) - first;
    assert!(
        longest < 0.25,
        "a tick took {longest} s: it waited for the stuck monitor"
    );
    assert!(ticks >= 4.0, "{ticks} ticks in 5 s at a 1 s interval");
}

/// Where `scripts/install-deps.sh` puts the Linux test guest.
const LINUX_GUEST: &str = "/var/cache/vmscope-lab/linux-guest";

/// The guest's kernel and initramfs, when install-deps.sh built them. Like
/// [`lab_available`]: missing under `CI=true` is a failure, elsewhere a skip.
pub(crate) fn linux_guest(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = Path::new(LINUX_GUEST);
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    if kernel.exists() && initrd.exists() {
        return Some((kernel, initrd));
    }
    let why = format!("{LINUX_GUEST} has no guest (run scripts/install-deps.sh)");
    assert!(!crate::support::in_ci(), "{test}: {why}");
    eprintln!("{test}: skipped: {why}");
    None
}

#[test]
fn guest_memory_equals_qmp_and_the_guests_own_memtotal() {
    if !lab_available("vm_disk") {
        return;
    }
    let Some((kernel, initrd)) = linux_guest("vm_disk") else {
        return;
    };
    let roms = Roms::new();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("agent-qmp.sock");
    let theirs = dir.path().join("test-qmp.sock");
    let serial = dir.path().join("serial.log");
    let spec = VmSpec {
        memory_mib: 128,
        ..spec("balloon")
    };
    let _vm = QemuVm::start_with(
        &roms,
        spec.clone(),
        None,
        Boot::Linux,
        &args(&[
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
            "-append",
            "console=ttyS0 rdinit=/init quiet",
            "-serial",
            &format!("file:{}", serial.display()),
            "-device",
            "virtio-balloon-pci,id=balloon0",
            "-qmp",
            &format!("unix:{},server=on,wait=off", ours.display()),
            "-chardev",
            &format!(
                "socket,id=test,path={},server=on,wait=off",
                theirs.display()
            ),
            "-mon",
            "chardev=test,mode=control",
        ]),
    );
    // What the guest itself says: its MemTotal, printed by its init once
    // the balloon driver is loaded.
    let (console, booted) =
        poll_until(Duration::from_secs(120), Duration::from_millis(250), || {
            let log = std::fs::read_to_string(&serial).unwrap_or_default();
            log.contains("vmscope-guest: ready").then_some(log)
        })
        .unwrap_or_else(|| {
            panic!(
                "the guest did not boot: {}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            )
        });
    eprintln!("guest ready {:?} after the boot began", booted.elapsed());
    assert!(
        !console.contains("insmod"),
        "guest driver failed: {console}"
    );
    let memtotal_kib: f64 = console
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal on the console: {console}"));

    // The stats period, as libvirt's <memballoon><stats period='4'/> sets
    // it: longer than vmscope's interval, so that vmscope's latest figures
    // (asked at one tick, published at the next) and a direct read can
    // carry the same report.
    let mut qmp = Qmp::connect(&theirs);
    qmp.execute(
        "qom-set",
        Some(serde_json::json!({
            "path": "/machine/peripheral/balloon0",
            "property": "guest-stats-polling-interval",
            "value": 4
        })),
    );
    let agent = Agent::start(1);
    let vm = [("vm_id", spec.uuid.as_str())];
    agent.wait_for_series(
        "vmscope_vm_guest_memory_total_bytes",
        &vm,
        Duration::from_secs(30),
    );

    // The same report: vmscope's and QMP's carry the same update time.
    let (m, stats) = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let m = agent.metrics();
        let t = m.value("vmscope_vm_guest_memory_updated_timestamp_seconds", &vm)?;
        let g = qmp.execute(
            "qom-get",
            Some(serde_json::json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats"})),
        );
        (g["last-update"].as_f64() == Some(t)).then_some((m, g["stats"].clone()))
    })
    .expect("vmscope's guest report never matched QMP's")
    .0;
    let stat = |k: &str| {
        stats[k]
            .as_f64()
            .unwrap_or_else(|| panic!("QMP {k}: {stats}"))
    };
    for (metric, key) in [
        ("vmscope_vm_guest_memory_total_bytes", "stat-total-memory"),
        (
            "vmscope_vm_guest_memory_available_bytes",
            "stat-available-memory",
        ),
        ("vmscope_vm_guest_memory_unused_bytes", "stat-free-memory"),
        (
            "vmscope_vm_guest_memory_disk_caches_bytes",
            "stat-disk-caches",
        ),
        ("vmscope_vm_guest_swap_in_bytes_total", "stat-swap-in"),
        ("vmscope_vm_guest_swap_out_bytes_total", "stat-swap-out"),
        ("vmscope_vm_guest_major_faults_total", "stat-major-faults"),
        ("vmscope_vm_guest_minor_faults_total", "stat-minor-faults"),
    ] {
        assert_eq!(
            m.value(metric, &vm),
            Some(stat(key)),
            "{metric} vs QMP {key}"
        );
    }
    assert_eq!(
        m.value("vmscope_vm_guest_memory_used_bytes", &vm),
        Some(stat("stat-total-memory") - stat("stat-free-memory") - stat("stat-disk-caches"))
    );
    // The guest's own word on its memory.
    assert_eq!(
        m.value("vmscope_vm_guest_memory_total_bytes", &vm),
        Some(memtotal_kib * 1024.0)
    );
    let free = m
        .value("vmscope_vm_guest_memory_unused_bytes", &vm)
        .unwrap();
    assert!(free > 0.0 && free < memtotal_kib * 1024.0, "unused {free}");
    // No balloon inflated: the guest has all of its 128 MiB.
    let actual = qmp.execute("query-balloon", None)["actual"]
        .as_f64()
        .unwrap();
    assert_eq!(actual, (128u64 << 20) as f64);
    assert_eq!(m.value("vmscope_vm_balloon_bytes", &vm), Some(actual));
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        if let Err(e) = crate::support::lab::run("/usr/sbin/losetup", &["-d", &self.0]) {
            eprintln!("vm_disk: detaching {}: {e}", self.0);
        }
    }
}

/// `/sys/block/NAME/stat` as (read bytes, read requests, write bytes, write requests).
fn kernel_block_stat(name: &str) -> (f64, f64, f64, f64) {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (f[2] * 512.0, f[0], f[6] * 512.0, f[4])
}

#[test]
fn without_an_api_the_held_block_devices_are_read_from_sysfs() {
    if !lab_available("vm_disk") {
        return;
    }
    let roms = Roms::new();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("boot.img");
    boot_disk(&img);
    let dev = crate::support::lab::run(
        "/usr/sbin/losetup",
        &["--find", "--show", &img.display().to_string()],
    )
    .expect("losetup")
    .trim()
    .to_owned();
    let _loop = Loop(dev.clone());
    let name = dev.trim_start_matches("/dev/").to_owned();
    let spec = spec("blockdev");
    // No QMP socket: the VM's disk is a host block device it holds open.
    let _vm = QemuVm::start_with(
        &roms,
        spec.clone(),
        None,
        Boot::SeaBios,
        &args(&[
            "-drive",
            &format!("file={dev},format=raw,if=none,id=drive0,cache=none"),
            "-device",
            "virtio-blk-pci,drive=drive0,id=vd0",
        ]),
    );
    // The guest's known I/O reached the device (plus whatever QEMU reads
    // itself when it opens it).
    poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let (rb, _, wb, _) = kernel_block_stat(&name);
        (rb >= 2560.0 && wb >= 512.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no I/O on {dev}: {:?}", kernel_block_stat(&name)));

    let agent = Agent::start(1);
    let disk0 = [("vm_id", spec.uuid.as_str()), ("device", name.as_str())];
    agent.wait_for_series(
        "vmscope_vm_disk_read_bytes_total",
        &disk0,
        Duration::from_secs(15),
    );
    let (m, kernel) = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let before = kernel_block_stat(&name);
        let m = agent.metrics();
        (kernel_block_stat(&name) == before).then_some((m, before))
    })
    .expect("the device's counters never held still across a scrape")
    .0;
    let got = |metric: &str| m.value(metric, &disk0).unwrap();
    assert_eq!(got("vmscope_vm_disk_read_bytes_total"), kernel.0);
    assert_eq!(got("vmscope_vm_disk_read_requests_total"), kernel.1);
    assert_eq!(got("vmscope_vm_disk_write_bytes_total"), kernel.2);
    assert_eq!(got("vmscope_vm_disk_write_requests_total"), kernel.3);
    assert!(got("vmscope_vm_disk_read_bytes_total") >= 2560.0);
    let vm = [("vm_id", spec.uuid.as_str())];
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_info",
            &[("vm_id", spec.uuid.as_str()), ("source", "sysfs")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("vmscope_vm_device_stats_up", &vm), Some(1.0));
    // Only the VM's block devices: no other disk for it.
    assert_eq!(m.all("vmscope_vm_disk_read_bytes_total", &vm).len(), 1);
    assert_eq!(m.value("vmscope_vm_balloon_bytes", &vm), None);
}

/// A process that is Cloud Hypervisor to discovery (`argv[0]` and `comm`
/// `cloud-hypervisor`, `--api-socket PATH`: python3 run through a symlink
/// of that name) and serves `GET /api/v1/vm.counters` on its API socket in
/// Cloud Hypervisor's format. Killed on drop.
struct FakeCloudHypervisor {
    child: std::process::Child,
}

impl Drop for FakeCloudHypervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fake API answers: two disks and a net device, as Cloud
/// Hypervisor's `vmm` serializes its devices' counters.
const CH_COUNTERS: &str = r#"{"_disk0":{"read_bytes":123456,"write_bytes":7890,"read_ops":30,"write_ops":7},"data":{"read_bytes":0,"write_bytes":4096,"read_ops":0,"write_ops":1},"_net0":{"rx_bytes":10,"rx_frames":1,"tx_bytes":20,"tx_frames":2},"__rng":{}}"#;

const CH_SERVER: &str = r#"
import socket, sys
path = sys.argv[sys.argv.index("--api-socket") + 1]
body = sys.stdin.readline().strip().encode()
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(16)
while True:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        d = c.recv(4096)
        if not d:
            break
        req += d
    if req.startswith(b"GET /api/v1/vm.counters "):
        head = "HTTP/1.1 200 \r\nServer: Cloud Hypervisor API\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        c.sendall(head.encode() + body)
    else:
        c.sendall(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")
    c.close()
"#;

fn ch_get_counters(path: &Path) -> serde_json::Value {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.write_all(b"GET /api/v1/vm.counters HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[test]
fn cloud_hypervisor_disks_come_from_its_api_socket() {
    if !lab_available("vm_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("cloud-hypervisor");
    std::os::unix::fs::symlink(crate::support::PYTHON, &exe).unwrap();
    let sock = dir.path().join("ch-api.sock");
    let mut child = std::process::Command::new(&exe)
        .args(["-c", CH_SERVER, "--api-socket", &sock.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{CH_COUNTERS}\n").as_bytes())
        .unwrap();
    let ch = FakeCloudHypervisor { child };
    let pid = ch.child.id().to_string();
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        sock.exists().then_some(())
    })
    .expect("the fake API socket never appeared");

    let agent = Agent::start(1);
    let m = agent.wait_for_series(
        "vmscope_vm_info",
        &[("pid", pid.as_str()), ("hypervisor", "cloud_hypervisor")],
        Duration::from_secs(15),
    );
    let info = m.all("vmscope_vm_info", &[("pid", pid.as_str())]);
    let vm_id = info[0].label("vm_id").unwrap().to_owned();
    let disk0 = [("vm_id", vm_id.as_str()), ("device", "_disk0")];
    let m = agent.wait_for_series(
        "vmscope_vm_disk_read_bytes_total",
        &disk0,
        Duration::from_secs(15),
    );
    // The API read directly says the same.
    let direct = ch_get_counters(&sock);
    let api = |dev: &str, k: &str| direct[dev][k].as_f64().unwrap();
    for (dev, metric, key) in [
        ("_disk0", "vmscope_vm_disk_read_bytes_total", "read_bytes"),
        ("_disk0", "vmscope_vm_disk_write_bytes_total", "write_bytes"),
        ("_disk0", "vmscope_vm_disk_read_requests_total", "read_ops"),
        (
            "_disk0",
            "vmscope_vm_disk_write_requests_total",
            "write_ops",
        ),
        ("data", "vmscope_vm_disk_write_bytes_total", "write_bytes"),
        ("data", "vmscope_vm_disk_write_requests_total", "write_ops"),
    ] {
        let labels = [("vm_id", vm_id.as_str()), ("device", dev)];
        assert_eq!(
            m.value(metric, &labels),
            Some(api(dev, key)),
            "{metric}{labels:?}"
        );
    }
    assert_eq!(
        m.value("vmscope_vm_disk_read_bytes_total", &disk0),
        Some(123_456.0)
    );
    let vm = [("vm_id", vm_id.as_str())];
    // Disks only: the net device and the RNG are not disks.
    assert_eq!(m.all("vmscope_vm_disk_read_bytes_total", &vm).len(), 2);
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_info",
            &[("vm_id", vm_id.as_str()), ("source", "cloud_hypervisor")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("vmscope_vm_device_stats_up", &vm), Some(1.0));
}
