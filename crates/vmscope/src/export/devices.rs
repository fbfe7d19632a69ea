//! Per-device families: each VM's disks and balloon as its hypervisor's API
//! reports them (`VmStats::devices`, filled by `collectors/vm_devices`).
//!
//! Reads only the snapshot's VMs (their figures come from QMP, or from the
//! host block devices of VMs with no API; see docs/hypervisor-apis.md). Every series carries `vm_id` and
//! `vm_name` (the VM's shared label set); disks add `device`, the disk's
//! name in the VM's configuration. Which source gave a VM's figures is
//! `vmscope_vm_device_stats_info{source}`; whether the last read worked,
//! and when one last did, are `vmscope_vm_device_stats_up` and
//! `vmscope_vm_device_stats_last_success_timestamp_seconds` (the figures of
//! a VM whose API stopped answering stay, as its last good values). A VM
//! with no API has none of these series; a statistic the guest does not
//! report is absent, not 0. Nothing here fails.

use super::encoder::Encode;
use super::writer::{Desc, LabelSet};
use crate::model::{DiskStats, GuestMemory, VmDevices, VmStats};

macro_rules! desc {
    ($id:ident, $kind:ident, $name:literal, $help:expr) => {
        static $id: Desc = Desc::$kind($name, $help);
    };
}

desc!(
    SOURCE_INFO,
    gauge,
    "vmscope_vm_device_stats_info",
    "Where a VM's per-disk and balloon figures come from (source: qmp = QEMU's QMP socket named on its command line; cloud_hypervisor = its --api-socket vm.counters; libvirt = libvirtd's GetAllDomainStats for libvirt domains; firecracker = its --metrics-path file, deltas added up; cgroup = the VM's own cgroup v2 io.stat for the host block devices it holds; sysfs = the host block devices the hypervisor process holds open); always 1."
);
desc!(
    SOURCE_UP,
    gauge,
    "vmscope_vm_device_stats_up",
    "1 if the last read of the VM's hypervisor API worked; 0 if it failed and the per-device figures are the last good ones."
);
desc!(
    SOURCE_LAST_SUCCESS,
    gauge,
    "vmscope_vm_device_stats_last_success_timestamp_seconds",
    "Unix time of the last read of the VM's hypervisor API that worked: time() - this is the per-device figures' age."
);
desc!(
    SOURCE_ERRORS,
    counter,
    "vmscope_vm_device_stats_errors_total",
    "Failed reads of the VM's hypervisor API by kind (connect, timeout, io, parse, protocol) since vmscope started following the VM."
);
desc!(
    DISK_READ_BYTES,
    counter,
    "vmscope_vm_disk_read_bytes_total",
    "Bytes read from this disk: the guest's reads as the hypervisor counts them (QMP rd_bytes; libvirt's block.N.rd.bytes), or, for VMs with no API, the host block device's (sysfs)."
);
desc!(
    DISK_WRITE_BYTES,
    counter,
    "vmscope_vm_disk_write_bytes_total",
    "Bytes written to this disk: the guest's writes as the hypervisor counts them (QMP wr_bytes; libvirt's block.N.wr.bytes), or, for VMs with no API, the host block device's (sysfs)."
);
desc!(
    DISK_READ_REQ,
    counter,
    "vmscope_vm_disk_read_requests_total",
    "Read requests to this disk (QMP rd_operations, or the host block device's reads completed)."
);
desc!(
    DISK_WRITE_REQ,
    counter,
    "vmscope_vm_disk_write_requests_total",
    "Write requests to this disk (QMP wr_operations, or the host block device's writes completed)."
);
desc!(
    DISK_FLUSH_REQ,
    counter,
    "vmscope_vm_disk_flush_requests_total",
    "Flush requests to this disk (QMP flush_operations, or the host block device's flushes)."
);
desc!(
    DISK_READ_TIME,
    counter,
    "vmscope_vm_disk_read_time_seconds_total",
    "Time this disk's read requests took, summed over requests (QMP rd_total_time_ns): rate() over read requests' rate is the mean latency."
);
desc!(
    DISK_WRITE_TIME,
    counter,
    "vmscope_vm_disk_write_time_seconds_total",
    "Time this disk's write requests took, summed over requests (QMP wr_total_time_ns)."
);
desc!(
    DISK_FLUSH_TIME,
    counter,
    "vmscope_vm_disk_flush_time_seconds_total",
    "Time this disk's flush requests took, summed over requests (QMP flush_total_time_ns)."
);
desc!(
    BALLOON,
    gauge,
    "vmscope_vm_balloon_bytes",
    "Memory the guest has with its balloon applied, as the hypervisor reports it (QMP query-balloon actual; libvirt's balloon.current)."
);
desc!(
    GUEST_UPDATED,
    gauge,
    "vmscope_vm_guest_memory_updated_timestamp_seconds",
    "Unix time of the guest balloon driver's last memory report (the guest-stats below are as old as this)."
);
desc!(
    GUEST_TOTAL,
    gauge,
    "vmscope_vm_guest_memory_total_bytes",
    "Memory the guest's kernel sees (its MemTotal), as its balloon driver reports it (libvirt's balloon.available)."
);
desc!(
    GUEST_AVAILABLE,
    gauge,
    "vmscope_vm_guest_memory_available_bytes",
    "Memory the guest could use without swapping (its MemAvailable), as its balloon driver reports it (libvirt's balloon.usable)."
);
desc!(
    GUEST_UNUSED,
    gauge,
    "vmscope_vm_guest_memory_unused_bytes",
    "Memory the guest leaves completely unused (its MemFree), as its balloon driver reports it (libvirt's balloon.unused)."
);
desc!(
    GUEST_CACHES,
    gauge,
    "vmscope_vm_guest_memory_disk_caches_bytes",
    "Guest page cache that the guest could drop, as its balloon driver reports it (libvirt's balloon.disk_caches)."
);
desc!(
    GUEST_USED,
    gauge,
    "vmscope_vm_guest_memory_used_bytes",
    "Guest memory in use without buffers and page cache: total - unused - disk caches, from the guest's balloon report."
);
desc!(
    GUEST_SWAP_IN,
    counter,
    "vmscope_vm_guest_swap_in_bytes_total",
    "Bytes the guest swapped in since it booted, as its balloon driver reports it."
);
desc!(
    GUEST_SWAP_OUT,
    counter,
    "vmscope_vm_guest_swap_out_bytes_total",
    "Bytes the guest swapped out since it booted, as its balloon driver reports it."
);
desc!(
    GUEST_MAJOR,
    counter,
    "vmscope_vm_guest_major_faults_total",
    "Major page faults inside the guest since it booted, as its balloon driver reports them."
);
desc!(
    GUEST_MINOR,
    counter,
    "vmscope_vm_guest_minor_faults_total",
    "Minor page faults inside the guest since it booted, as its balloon driver reports them."
);

/// A disk counter family and the count it reads (integers on the wire).
type DiskCount = (&'static Desc, fn(&DiskStats) -> u64);
/// A disk time family and the seconds it reads.
type DiskTime = (&'static Desc, fn(&DiskStats) -> f64);
/// A guest-memory family and the figure it reads.
type GuestFamily = (&'static Desc, fn(&GuestMemory) -> Option<u64>);

/// Every per-device family, for the VMs that have device figures; nothing
/// at all when none has (a host without hypervisor APIs pays no bytes).
pub(super) fn encode_devices(vms: &[(&VmStats, LabelSet)], out: &mut impl Encode) {
    let with: Vec<(&VmDevices, LabelSet)> = vms
        .iter()
        .filter_map(|(vm, set)| vm.devices.as_deref().map(|d| (d, *set)))
        .collect();
    if with.is_empty() {
        return;
    }

    out.family(&SOURCE_INFO);
    for (d, set) in &with {
        out.sample_in(*set, &[("source", d.source.as_str())], 1u64);
    }
    out.family(&SOURCE_UP);
    for (d, set) in &with {
        out.sample_in(*set, &[], u64::from(d.up));
    }
    out.family(&SOURCE_LAST_SUCCESS);
    for (d, set) in &with {
        if let Some(t) = d.last_success_seconds {
            out.sample_in(*set, &[], t);
        }
    }
    out.family(&SOURCE_ERRORS);
    for (d, set) in &with {
        for (kind, n) in &d.errors_total {
            out.sample_in(*set, &[("kind", kind)], *n);
        }
    }

    let counts: [DiskCount; 5] = [
        (&DISK_READ_BYTES, |x| x.read_bytes),
        (&DISK_WRITE_BYTES, |x| x.write_bytes),
        (&DISK_READ_REQ, |x| x.read_requests),
        (&DISK_WRITE_REQ, |x| x.write_requests),
        (&DISK_FLUSH_REQ, |x| x.flush_requests),
    ];
    for (desc, get) in counts {
        out.family(desc);
        for (d, set) in &with {
            for x in &d.disks {
                out.sample_in(*set, &[("device", x.device.as_str())], get(x));
            }
        }
    }
    let times: [DiskTime; 3] = [
        (&DISK_READ_TIME, |x| x.read_time_seconds),
        (&DISK_WRITE_TIME, |x| x.write_time_seconds),
        (&DISK_FLUSH_TIME, |x| x.flush_time_seconds),
    ];
    for (desc, get) in times {
        out.family(desc);
        for (d, set) in &with {
            for x in &d.disks {
                out.sample_in(*set, &[("device", x.device.as_str())], get(x));
            }
        }
    }

    out.family(&BALLOON);
    for (d, set) in &with {
        if let Some(b) = d.balloon_bytes {
            out.sample_in(*set, &[], b);
        }
    }
    out.family(&GUEST_UPDATED);
    for (d, set) in &with {
        if let Some(g) = &d.guest_memory {
            out.sample_in(*set, &[], g.updated_at_seconds);
        }
    }
    let guest: [GuestFamily; 9] = [
        (&GUEST_TOTAL, |g| g.total_bytes),
        (&GUEST_AVAILABLE, |g| g.available_bytes),
        (&GUEST_UNUSED, |g| g.unused_bytes),
        (&GUEST_CACHES, |g| g.disk_caches_bytes),
        (&GUEST_USED, |g| g.used_bytes),
        (&GUEST_SWAP_IN, |g| g.swap_in_bytes),
        (&GUEST_SWAP_OUT, |g| g.swap_out_bytes),
        (&GUEST_MAJOR, |g| g.major_faults),
        (&GUEST_MINOR, |g| g.minor_faults),
    ];
    for (desc, get) in guest {
        out.family(desc);
        for (d, set) in &with {
            if let Some(v) = d.guest_memory.as_ref().and_then(get) {
                out.sample_in(*set, &[], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use crate::export::{Format, encode, fixture};
    use crate::model::{DeviceSource, DiskStats, GuestMemory, VmDevices};

    fn devices() -> VmDevices {
        VmDevices {
            source: DeviceSource::Qmp,
            up: false,
            last_success_seconds: Some(1_764_590_000.5),
            errors_total: vec![("connect", 0), ("timeout", 2)],
            last_error: Some("timeout"),
            disks: vec![
                DiskStats {
                    device: "drive0".into(),
                    read_bytes: 2560,
                    write_bytes: 512,
                    read_requests: 2,
                    write_requests: 1,
                    flush_requests: 0,
                    read_time_seconds: 0.000207158,
                    write_time_seconds: 0.5,
                    flush_time_seconds: 0.0,
                },
                DiskStats {
                    device: "disk\"1\\".into(),
                    ..DiskStats::default()
                },
            ],
            balloon_bytes: Some(64 << 20),
            guest_memory: Some(GuestMemory {
                updated_at_seconds: 1_764_589_999.0,
                total_bytes: Some(120_000_000),
                unused_bytes: Some(80_000_000),
                major_faults: Some(12),
                ..GuestMemory::default()
            }),
        }
    }

    #[test]
    fn families_for_vms_with_devices_only() {
        let mut snap = fixture::snapshot(3);
        snap.vms[1].devices = Some(Arc::new(devices()));
        let text = encode(Format::Text, &[&snap]);
        let vm = format!(
            "vm_id=\"{}\",vm_name=\"{}\"",
            snap.vms[1].id,
            snap.vms[1].name.replace('\\', "\\\\").replace('"', "\\\"")
        );
        for line in [
            format!("vmscope_vm_device_stats_info{{{vm},source=\"qmp\"}} 1"),
            format!("vmscope_vm_device_stats_up{{{vm}}} 0"),
            format!("vmscope_vm_device_stats_last_success_timestamp_seconds{{{vm}}} 1764590000.5"),
            format!("vmscope_vm_device_stats_errors_total{{{vm},kind=\"timeout\"}} 2"),
            format!("vmscope_vm_disk_read_bytes_total{{{vm},device=\"drive0\"}} 2560"),
            format!("vmscope_vm_disk_write_bytes_total{{{vm},device=\"drive0\"}} 512"),
            format!("vmscope_vm_disk_read_requests_total{{{vm},device=\"drive0\"}} 2"),
            format!("vmscope_vm_disk_write_requests_total{{{vm},device=\"drive0\"}} 1"),
            format!("vmscope_vm_disk_flush_requests_total{{{vm},device=\"drive0\"}} 0"),
            format!("vmscope_vm_disk_write_time_seconds_total{{{vm},device=\"drive0\"}} 0.5"),
            format!("vmscope_vm_disk_read_bytes_total{{{vm},device=\"disk\\\"1\\\\\"}} 0"),
            format!("vmscope_vm_balloon_bytes{{{vm}}} 67108864"),
            format!("vmscope_vm_guest_memory_total_bytes{{{vm}}} 120000000"),
            format!("vmscope_vm_guest_memory_unused_bytes{{{vm}}} 80000000"),
            format!("vmscope_vm_guest_major_faults_total{{{vm}}} 12"),
        ] {
            assert!(
                text.contains(&format!("\n{line}\n")),
                "missing {line}:\n{text}"
            );
        }
        // Only VM 1 has figures; what the guest did not report is absent.
        assert_eq!(text.matches("vmscope_vm_device_stats_up{").count(), 1);
        assert!(!text.contains("vmscope_vm_guest_memory_available_bytes{"));
        assert!(!text.contains("vmscope_vm_guest_memory_used_bytes{"));
        // The process-wide figures are their own family, with no device.
        assert!(text.contains("vmscope_vm_io_read_bytes_total{"));
    }

    #[test]
    fn nothing_without_devices() {
        let text = encode(Format::Text, &[&fixture::snapshot(3)]);
        assert!(!text.contains("vmscope_vm_device_stats"));
        assert!(!text.contains("vmscope_vm_disk_"));
        assert!(!text.contains("vmscope_vm_guest_"));
    }

    #[test]
    fn openmetrics_is_valid_with_devices() {
        let mut snap = fixture::snapshot(2);
        snap.vms[0].devices = Some(Arc::new(devices()));
        let text = encode(Format::OpenMetrics, &[&snap]);
        assert!(text.contains("# TYPE vmscope_vm_disk_read_bytes counter\n"));
        assert!(text.contains("# UNIT vmscope_vm_disk_read_bytes bytes\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
