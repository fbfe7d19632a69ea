//! Golden and behaviour tests over recorded /proc and /run fixture trees.
//!
//! `tests/fixtures/host1` (written by `tests/fixtures/make_fixtures.py`) holds
//! two bare QEMU VMs (one with a name full of characters that need
//! escaping), a libvirt domain with Nova metadata, a Cloud Hypervisor and a
//! Firecracker VM, a stale libvirt status file, a `qemu --version` process and
//! a VM whose files vanish mid-tick. The exposition and the JSON of the VMs
//! are compared with `tests/golden/host1.{prom,json}`; regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p vmscope --test pure fixtures::`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmscope::config::Config;
use vmscope::export::{Format, encode};
use vmscope::host::FdBudget;
use vmscope::host::Roots;
use vmscope::model::{Snapshot, Source, VmStats};
use vmscope::pipeline::Collector;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A private copy of a fixture tree (symlinks kept), for tests that change it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(fixture(name))
        .arg(dir.path().join("t"))
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

fn config_for(root: &Path) -> Config {
    let mut cfg = Config {
        paths: Roots::under(root).into(),
        interval: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    cfg.collectors.host_filesystem.timeout = std::time::Duration::from_millis(500);
    // The API poller answers on its own thread, whenever it gets there: a
    // golden file cannot hold its timing (it has tests of its own, and
    // tests/real/vm_disk.rs runs it against real QEMU).
    cfg.collectors.vm_devices.enabled = false;
    cfg
}

fn collector(root: &Path) -> Collector {
    Collector::with_budget(&config_for(root), FdBudget::new(256)).unwrap()
}

/// A new process was created: the kernel's last PID (5th field of
/// /proc/loadavg) moves, which is what tells discovery to list /proc again.
fn bump_last_pid(root: &Path) {
    let p = root.join("proc/loadavg");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut f: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    f[4] = (f[4].parse::<u64>().unwrap() + 1).to_string();
    std::fs::write(&p, f.join(" ") + "\n").unwrap();
}

fn two_ticks(root: &Path) -> Snapshot {
    let mut c = collector(root);
    c.tick();
    c.tick()
}

fn by_name<'a>(s: &'a Snapshot, name: &str) -> &'a VmStats {
    s.vms.iter().find(|v| v.name == name).unwrap_or_else(|| {
        panic!(
            "no VM named {name:?} in {:?}",
            s.vms.iter().map(|v| &v.name).collect::<Vec<_>>()
        )
    })
}

/// Lines of the exposition that do not depend on timing or the build.
fn stable_exposition(s: &Snapshot) -> String {
    const VOLATILE: &[&str] = &[
        "vmscope_collector_duration_seconds",
        "vmscope_tick_duration_seconds",
        "vmscope_snapshot_timestamp_seconds",
        "vmscope_build_info",
        "vmscope_host_cpu_ratio",
    ];
    encode(Format::Text, &[s])
        .lines()
        .filter(|l| !VOLATILE.iter().any(|v| l.contains(v)))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn stable_json(s: &Snapshot) -> String {
    let mut vms = s.vms.clone();
    for v in &mut vms {
        if let Some(r) = v.rates.as_mut() {
            r.window_seconds = 0.0;
        }
    }
    serde_json::to_string_pretty(&vms).unwrap() + "\n"
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{} differs from this run ({} vs {} lines); first differences:\n{}\n(UPDATE_GOLDEN=1 regenerates)",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn host1_golden_exposition_and_json() {
    let s = two_ticks(&fixture("host1"));
    golden("host1.prom", &stable_exposition(&s));
    golden("host1.json", &stable_json(&s));
}

#[test]
fn host1_finds_every_vm_once_with_its_identity() {
    let s = two_ticks(&fixture("host1"));
    let names: Vec<&str> = s.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(s.vms.len(), 5, "{names:?}");
    for absent in ["ghost", "vanishing"] {
        assert!(
            !names.contains(&absent),
            "{absent} must not be reported: {names:?}"
        );
    }

    let a = by_name(&s, "alpha");
    assert_eq!(a.id, "6f1b3c2a-0000-4000-8000-000000000001");
    assert_eq!(a.source, Source::Process);
    assert_eq!(a.allocated_vcpus, Some(2));
    assert_eq!(a.allocated_memory_bytes, Some(512 << 20));
    assert_eq!(
        a.memory_rss_bytes,
        32768 * rustix::param::page_size() as u64
    );
    assert_eq!(a.vcpus.len(), 2);
    assert_eq!(a.vcpus[0].cpu_seconds, 7.0);
    assert_eq!(a.vcpus[0].wait_seconds, Some(0.25));
    // TAP host tx (5000) is what the guest received.
    assert_eq!(a.network[0].interface, "tap-a");
    assert_eq!(a.network[0].rx_bytes, 5000);
    assert_eq!(a.network[0].tx_bytes, 1000);
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    assert_eq!(a.cpu.user, 1500.0 / ticks);
    assert_eq!(a.start_time_seconds, 1_700_000_000.0 + 500_000.0 / ticks);

    let b = by_name(&s, "b \"quoted\", back\\slash ünï");
    assert!(b.id.starts_with("pid1002-"), "derived id: {}", b.id);
    assert_eq!(b.allocated_vcpus, Some(4));
    assert_eq!(b.allocated_memory_bytes, Some(1 << 30));
    assert_eq!(b.network[0].tx_bytes, 99_999_999_999);

    let c = by_name(&s, "instance-00000007");
    assert_eq!(
        c.source,
        Source::Libvirt,
        "a libvirt VM is one VM, from libvirt"
    );
    assert_eq!(c.id, "a1b2c3d4-0000-4000-8000-0000000000c3");
    let owner = c.owner.as_ref().unwrap();
    assert_eq!(owner.user_name.as_deref(), Some("alice"));
    assert_eq!(owner.project_name.as_deref(), Some("demo"));
    assert_eq!(c.flavor.as_deref(), Some("m1.tiny"));
    assert_eq!(c.display_name.as_deref(), Some("web-frontend-1"));
    assert_eq!(c.network[0].interface, "vnet7");
    assert_eq!(c.vcpus.len(), 1);
    assert_eq!(c.allocated_memory_bytes, Some(256 << 20));

    let d = by_name(&s, "web1");
    assert_eq!(d.hypervisor.as_str(), "cloud_hypervisor");
    assert_eq!(
        (d.allocated_vcpus, d.allocated_memory_bytes),
        (Some(2), Some(1 << 30))
    );
    assert_eq!(d.vcpus.len(), 2);
    assert_eq!(d.network[0].interface, "chtap0");

    let e = by_name(&s, "fc-vm-1");
    assert_eq!(e.id, "fc-vm-1");
    assert_eq!(
        (e.allocated_vcpus, e.allocated_memory_bytes),
        (Some(1), Some(128 << 20))
    );
    assert_eq!(e.network[0].interface, "fctap0");
    assert_eq!(e.vcpus[0].index, 0);

    assert_eq!(s.host.hostname.as_deref(), Some("hv01.example"));
    assert_eq!(s.host.cpus, 2);
    assert_eq!(s.host.memory_total_bytes, 16_384_000 * 1024);
    assert!((s.host.memory_used_ratio - 0.5).abs() < 1e-9);
    assert_eq!(
        s.discovered,
        vec![(Source::Process, 5), (Source::Libvirt, 1)],
        "the vanishing VM was discovered, then found gone"
    );
}

#[test]
fn vm_gone_between_ticks_is_gone_from_the_next_snapshot() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    // No held descriptors: on a fixture a held descriptor of a deleted file
    // still reads, where procfs answers ESRCH; opening the path again gives
    // ENOENT, which is how this test sees the exit.
    let mut c = Collector::with_budget(&config_for(&root), FdBudget::new(0)).unwrap();
    let first = c.tick();
    assert!(first.vms.iter().any(|v| v.name == "alpha"));
    std::fs::remove_dir_all(root.join("proc/1001")).unwrap();
    let second = c.tick();
    assert!(!second.vms.iter().any(|v| v.name == "alpha"));
    assert_eq!(second.vms.len(), first.vms.len() - 1);
}

#[test]
fn pid_reuse_is_a_new_vm() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    let mut c = collector(&root);
    let old_id = by_name(&c.tick(), "b \"quoted\", back\\slash ünï")
        .id
        .clone();
    // Same pid, later start time: another process now.
    let p = root.join("proc/1002/stat");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(" 600000 ", " 600777 ");
    std::fs::write(&p, text).unwrap();
    bump_last_pid(&root);
    let s = c.tick();
    assert!(
        s.vms.iter().all(|v| v.id != old_id),
        "old identity must be gone"
    );
    let s = c.tick();
    let b = by_name(&s, "b \"quoted\", back\\slash ünï");
    assert_eq!(b.id, "pid1002-600777");
}

#[test]
fn failed_read_keeps_last_good_values_with_age() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    let mut c = collector(&root);
    let before = by_name(&c.tick(), "alpha").clone();
    std::fs::write(
        root.join("proc/1001/stat"),
        "1001 (qemu-system-x86) S 1 garbage\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let s = c.tick();
    let after = by_name(&s, "alpha");
    assert!(!after.collect_success);
    assert!(after.collect_age_seconds > 0.0);
    assert_eq!(after.cpu, before.cpu);
    assert_eq!(after.memory_rss_bytes, before.memory_rss_bytes);
    let status = s
        .collectors
        .iter()
        .find(|c| c.name == "vm_process")
        .unwrap();
    assert!(!status.success);
    assert!(
        status
            .errors_total
            .iter()
            .any(|(k, n)| *k == "parse" && *n >= 1)
    );
    // Other VMs are unaffected.
    assert!(by_name(&s, "fc-vm-1").collect_success);
    let text = encode(Format::Text, &[&s]);
    assert!(text.contains("vmscope_vm_collect_success{vm_id=\"6f1b3c2a-0000-4000-8000-000000000001\",vm_name=\"alpha\"} 0"), "{text}");
}

#[test]
fn exposition_of_fixture_passes_promtool() {
    let s = two_ticks(&fixture("host1"));
    crate::exposition::promtool_passes(&encode(Format::Text, &[&s]));
}

#[test]
fn a_new_vcpu_thread_is_picked_up_when_the_thread_count_changes() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    let mut c = collector(&root);
    assert_eq!(by_name(&c.tick(), "fc-vm-1").vcpus.len(), 1);
    // Hot-plug: a second vCPU thread, and the process's thread count moves.
    let t = root.join("proc/1007/task/1014");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("comm"), "fc_vcpu 1\n").unwrap();
    std::fs::write(t.join("schedstat"), "1000000000 5000000 7\n").unwrap();
    let stat = root.join("proc/1007/stat");
    let fields: Vec<String> = std::fs::read_to_string(&stat)
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect();
    // Field 20 (1-based) is num_threads.
    let mut fields = fields;
    fields[19] = (fields[19].parse::<u64>().unwrap() + 1).to_string();
    std::fs::write(&stat, fields.join(" ")).unwrap();
    let mut seen = 0;
    for _ in 0..4 {
        seen = by_name(&c.tick(), "fc-vm-1").vcpus.len();
        if seen == 2 {
            break;
        }
    }
    assert_eq!(
        seen, 2,
        "the new vCPU thread must be found within the rescan rate limit"
    );
    let s = c.tick();
    let e = by_name(&s, "fc-vm-1");
    assert_eq!(e.vcpus[1].index, 1);
    assert_eq!(e.vcpus[1].cpu_seconds, 1.0);
}

#[test]
fn a_pid_reused_by_a_new_vm_is_found_at_the_next_tick() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    let mut c = collector(&root);
    let before = c.tick();
    assert!(
        !before.vms.iter().any(|v| v.pid == 77),
        "`qemu --version` is no VM"
    );
    // PID 77 exits and a new process with the same PID runs a VM: a new
    // /proc/77 directory (another inode), like the kernel gives it.
    let old = root.join("proc/77");
    let tmpl = root.join("proc/1008");
    // Move the old directory aside instead of deleting it first, so the new
    // one cannot get the freed inode back (procfs numbers /proc/PID inodes
    // from a counter; a disk filesystem may reuse a freed one at once).
    let aside = dir.path().join("old-77");
    std::fs::rename(&old, &aside).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(&tmpl)
        .arg(&old)
        .status()
        .unwrap();
    assert!(st.success());
    let stat = std::fs::read_to_string(old.join("stat"))
        .unwrap()
        .replacen("1008 ", "77 ", 1);
    std::fs::write(old.join("stat"), stat).unwrap();
    std::fs::write(
        old.join("io"),
        "rchar: 1\nwchar: 1\nsyscr: 1\nsyscw: 1\nread_bytes: 0\nwrite_bytes: 0\ncancelled_write_bytes: 0\n",
    )
    .unwrap();
    std::fs::create_dir_all(old.join("task/77")).unwrap();
    std::fs::write(old.join("task/77/comm"), "qemu-system-x86\n").unwrap();
    bump_last_pid(&root);
    let after = c.tick();
    let vm = after
        .vms
        .iter()
        .find(|v| v.pid == 77)
        .expect("the new VM on the reused PID");
    assert_eq!(vm.name, "vanishing");
}

/// QEMU's `-name NAME,process=PNAME` renames the process: its `comm` is no
/// longer `qemu-system-*`. Discovery then goes by the executable
/// (`/proc/PID/exe`), also when a package upgrade replaced the binary.
#[test]
fn a_qemu_renamed_with_process_is_found_by_its_executable() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    let make = |pid: u32, exe: &str| {
        let p = root.join(format!("proc/{pid}"));
        std::fs::create_dir_all(p.join(format!("task/{pid}"))).unwrap();
        let stat = std::fs::read_to_string(root.join("proc/1008/stat"))
            .unwrap()
            .replacen("1008 (qemu-system-x86)", &format!("{pid} (web-{pid})"), 1);
        std::fs::write(p.join("stat"), stat).unwrap();
        std::fs::write(p.join(format!("task/{pid}/comm")), format!("web-{pid}\n")).unwrap();
        std::fs::write(
            p.join("cmdline"),
            format!(
                "/usr/bin/qemu-system-x86_64\0-name\0guest=web{pid},process=web-{pid}\0-m\0256\0"
            ),
        )
        .unwrap();
        // (1008's own `io` is missing on purpose: that VM vanishes mid-tick.)
        std::fs::write(
            p.join("io"),
            "rchar: 1\nwchar: 1\nsyscr: 1\nsyscw: 1\nread_bytes: 0\nwrite_bytes: 0\ncancelled_write_bytes: 0\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(exe, p.join("exe")).unwrap();
    };
    make(1500, "/usr/bin/qemu-system-x86_64");
    make(1501, "/usr/libexec/qemu-kvm (deleted)");
    // Something else that happens to carry a QEMU-like command line.
    make(1502, "/usr/bin/python3.11");
    let snap = two_ticks(&root);
    assert_eq!(by_name(&snap, "web1500").pid, 1500);
    assert_eq!(by_name(&snap, "web1501").pid, 1501);
    assert_eq!(
        by_name(&snap, "web1501").allocated_memory_bytes,
        Some(256 << 20)
    );
    assert!(
        !snap.vms.iter().any(|v| v.pid == 1502),
        "not a hypervisor binary"
    );
}

/// Counters move between ticks: each snapshot carries the new ones (in the
/// guest's direction) under the same interface name, tick after tick.
#[test]
fn network_counters_follow_net_dev_from_tick_to_tick() {
    let dir = copy_fixture("host1");
    let root = dir.path().join("t");
    let mut c = collector(&root);
    let set_tap_a = |host_rx: u64, host_tx: u64| {
        for pid in ["1001", "1002", "1003", "1004", "1007"] {
            let p = root.join(format!("proc/{pid}/net/dev"));
            let text = std::fs::read_to_string(&p).unwrap();
            let lines: Vec<String> = text
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("tap-a:") {
                        format!(
                            "  tap-a: {host_rx} {} 1 2 0 0 0 0 {host_tx} {} 3 4 0 0 0 0",
                            host_rx / 100,
                            host_tx / 100
                        )
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        }
    };
    let tap_a = |s: &Snapshot| {
        let n = &by_name(s, "alpha").network;
        assert_eq!(n.len(), 1, "{n:?}");
        (
            n[0].interface.clone(),
            n[0].rx_bytes,
            n[0].tx_bytes,
            n[0].rx_packets,
        )
    };
    c.tick();
    // tap-a: host side rx 1000 / tx 5000 = guest received 5000, sent 1000.
    assert_eq!(tap_a(&c.tick()), ("tap-a".to_owned(), 5000, 1000, 50));
    for (host_rx, host_tx) in [(1500, 9000), (2500, 12000), (2600, 12100)] {
        set_tap_a(host_rx, host_tx);
        let got = tap_a(&c.tick());
        assert_eq!(got, ("tap-a".to_owned(), host_tx, host_rx, host_tx / 100));
    }
}
