//! Per-disk I/O and the balloon of real libvirt domains, from libvirt's API
//! (vmscope's own client of libvirtd's read-only socket): vmscope's figures
//! equal what `virsh domblkstat` and `virsh dommemstat` say at the same
//! moment, and equal what the guest is known to have done or says itself.
//!
//! Two domains of this test's libvirtd (support/libvirt.rs):
//! - SeaBIOS booting a 1 MiB raw disk on virtio-blk (`vda`) whose boot
//!   sector writes 512 bytes in one request and reads 2048 in one (the
//!   boot sector of vm_disk.rs): with SeaBIOS' own read of the boot sector
//!   the disk has read 2560 bytes in 2 requests and written 512 in 1.
//! - The lab's Linux guest (kernel + busybox initramfs, TCG) with a
//!   virtio balloon and `<stats period='4'/>`: its init prints MemTotal.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::lab::{Agent, kvm_usable};
use crate::support::libvirt::{self, Domain, virsh};
use crate::support::{QEMU, lab_available, poll_until, unique_name, unique_uuid};
use crate::vm_disk::{boot_disk, linux_guest};

/// `virsh domblkstat D vda` ("vda rd_req 2") or `virsh dommemstat D`
/// ("actual 131072") as name -> value.
fn virsh_figures(args: &[&str]) -> HashMap<String, f64> {
    let out = virsh(args).unwrap_or_else(|e| panic!("virsh {args:?}: {e}"));
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().rev();
            let v = w.next()?.parse().ok()?;
            Some((w.next()?.to_owned(), v))
        })
        .collect()
}

fn libvirt_ready(test: &str) -> bool {
    if !lab_available(test) {
        return false;
    }
    if !libvirt::installed() {
        assert!(
            !crate::support::in_ci(),
            "{test}: libvirt is not installed (scripts/install-deps.sh)"
        );
        eprintln!("{test}: skipped: libvirt is not installed");
        return false;
    }
    libvirt::ensure_daemons().expect("libvirtd up");
    true
}

#[test]
fn per_disk_figures_equal_virsh_domblkstat() {
    if !libvirt_ready("vm_disk_libvirt") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("boot.img");
    boot_disk(&disk);
    let name = unique_name("lvdisk");
    let uuid = unique_uuid();
    let kind = if kvm_usable() { "kvm" } else { "qemu" };
    let xml = format!(
        r#"<domain type='{kind}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='virtio'/>
  </devices>
</domain>
"#,
        disk = disk.display()
    );
    let _dom = Domain::start_xml(dir.path(), &name, &xml);
    let blk = || virsh_figures(&["domblkstat", &name, "vda"]);
    poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let s = blk();
        (s.get("wr_req") == Some(&1.0) && s.get("rd_req") == Some(&2.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("the guest never did its I/O: {:?}", blk()));

    let agent = Agent::start(1);
    let vm = [("vm_id", uuid.as_str())];
    let vda = [("vm_id", uuid.as_str()), ("device", "vda")];
    agent.wait_for_series(
        "vmscope_vm_disk_read_bytes_total",
        &vda,
        Duration::from_secs(20),
    );
    // The same moment: virsh before and after one scrape, unchanged.
    let (m, direct) = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let before = blk();
        let m = agent.metrics();
        let after = blk();
        (before == after).then_some((m, after))
    })
    .expect("virsh's figures never held still across a scrape")
    .0;
    let got = |metric: &str| {
        m.value(metric, &vda)
            .unwrap_or_else(|| panic!("{metric}{vda:?} missing:\n{}", agent.log()))
    };
    let want = |k: &str| {
        *direct
            .get(k)
            .unwrap_or_else(|| panic!("virsh {k}: {direct:?}"))
    };
    for (metric, key, scale) in [
        ("vmscope_vm_disk_read_bytes_total", "rd_bytes", 1.0),
        ("vmscope_vm_disk_write_bytes_total", "wr_bytes", 1.0),
        ("vmscope_vm_disk_read_requests_total", "rd_req", 1.0),
        ("vmscope_vm_disk_write_requests_total", "wr_req", 1.0),
        (
            "vmscope_vm_disk_flush_requests_total",
            "flush_operations",
            1.0,
        ),
        (
            "vmscope_vm_disk_read_time_seconds_total",
            "rd_total_times",
            1e-9,
        ),
        (
            "vmscope_vm_disk_write_time_seconds_total",
            "wr_total_times",
            1e-9,
        ),
        (
            "vmscope_vm_disk_flush_time_seconds_total",
            "flush_total_times",
            1e-9,
        ),
    ] {
        let (g, w) = (got(metric), want(key) * scale);
        assert!(
            (g - w).abs() <= w.abs() * 1e-12,
            "{metric} = {g}, virsh {key} = {w}"
        );
    }
    // What the guest is known to have done.
    assert_eq!(got("vmscope_vm_disk_read_bytes_total"), 2560.0);
    assert_eq!(got("vmscope_vm_disk_read_requests_total"), 2.0);
    assert_eq!(got("vmscope_vm_disk_write_bytes_total"), 512.0);
    assert_eq!(got("vmscope_vm_disk_write_requests_total"), 1.0);
    // The balloon's size, as virsh dommemstat's `actual` (KiB).
    let mem = virsh_figures(&["dommemstat", &name]);
    assert_eq!(
        m.value("vmscope_vm_balloon_bytes", &vm),
        Some(mem["actual"] * 1024.0)
    );
    assert_eq!(mem["actual"], 64.0 * 1024.0);
    // Where the figures came from.
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_info",
            &[("vm_id", uuid.as_str()), ("source", "libvirt")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("vmscope_vm_device_stats_up", &vm), Some(1.0));
}

#[test]
fn balloon_figures_equal_virsh_dommemstat_and_the_guests_memtotal() {
    if !libvirt_ready("vm_disk_libvirt") {
        return;
    }
    let Some((kernel, initrd)) = linux_guest("vm_disk_libvirt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let name = unique_name("lvballoon");
    let uuid = unique_uuid();
    // TCG: a real guest kernel under this lab's nested KVM crawls (LAB.md).
    let xml = format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 rdinit=/init quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{QEMU}</emulator>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio'>
      <stats period='4'/>
    </memballoon>
  </devices>
</domain>
"#,
        kernel = kernel.display(),
        initrd = initrd.display(),
        serial = serial.display(),
    );
    let _dom = Domain::start_xml(dir.path(), &name, &xml);
    let console = poll_until(Duration::from_secs(120), Duration::from_millis(250), || {
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        log.contains("vmscope-guest: ready").then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "the guest did not boot: {}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        )
    })
    .0;
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

    let agent = Agent::start(1);
    let vm = [("vm_id", uuid.as_str())];
    agent.wait_for_series(
        "vmscope_vm_guest_memory_total_bytes",
        &vm,
        Duration::from_secs(40),
    );
    // The same report: vmscope's and virsh's carry the same update time
    // (the guest reports every 4 s, vmscope polls every second).
    let (m, mem) = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let m = agent.metrics();
        let t = m.value("vmscope_vm_guest_memory_updated_timestamp_seconds", &vm)?;
        let mem = virsh_figures(&["dommemstat", &name]);
        (mem.get("last_update") == Some(&t)).then_some((m, mem))
    })
    .expect("vmscope's guest report never matched virsh dommemstat's")
    .0;
    let kib = |k: &str| mem.get(k).map(|v| v * 1024.0);
    for (metric, key) in [
        ("vmscope_vm_balloon_bytes", "actual"),
        ("vmscope_vm_guest_memory_total_bytes", "available"),
        ("vmscope_vm_guest_memory_available_bytes", "usable"),
        ("vmscope_vm_guest_memory_unused_bytes", "unused"),
        ("vmscope_vm_guest_memory_disk_caches_bytes", "disk_caches"),
        ("vmscope_vm_guest_swap_in_bytes_total", "swap_in"),
        ("vmscope_vm_guest_swap_out_bytes_total", "swap_out"),
    ] {
        assert_eq!(m.value(metric, &vm), kib(key), "{metric} vs virsh {key}");
    }
    for (metric, key) in [
        ("vmscope_vm_guest_major_faults_total", "major_fault"),
        ("vmscope_vm_guest_minor_faults_total", "minor_fault"),
    ] {
        assert_eq!(
            m.value(metric, &vm),
            mem.get(key).copied(),
            "{metric} vs virsh {key}"
        );
    }
    // The guest's own word on its memory, and nothing ballooned away.
    assert_eq!(
        m.value("vmscope_vm_guest_memory_total_bytes", &vm),
        Some(memtotal_kib * 1024.0)
    );
    assert_eq!(
        m.value("vmscope_vm_balloon_bytes", &vm),
        Some((128u64 << 20) as f64)
    );
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_info",
            &[("vm_id", uuid.as_str()), ("source", "libvirt")]
        ),
        Some(1.0)
    );
}
