//! The metric catalogue of one [`Snapshot`]: per VM, host, and vmscope itself.
//!
//! Reads only the snapshot (and [`BuildInfo`]). Every per-VM series carries
//! `vm_id` and `vm_name`; everything else about a VM is on
//! `vmscope_vm_info{...} 1`. Families are written family-major (all VMs for
//! one family, then the next), as both text formats require.
//!
//! Failure: a VM whose `id` repeats an earlier VM's is left out (ids are
//! unique by construction; this guards the join on `vm_id`) and counted in
//! `vmscope_export_vms_skipped`. Optional values that are absent this tick
//! (a rate on the first tick, a vCPU count hypervisors do not report) are
//! absent from the output rather than exported as 0.

use std::collections::HashSet;

use super::MetricSource;
use super::encoder::{Encode, MetricWriter};
use super::writer::{Desc, LabelSet};
use crate::BuildInfo;
use crate::model::counters::CounterTotals;
use crate::model::identity::{OwnerIndex, OwnerKind, label};
use crate::model::usage::series_label;
use crate::model::{ListingReason, NetStats, Snapshot, Source, VmState, VmStats};

macro_rules! desc {
    ($id:ident, $kind:ident, $name:literal, $help:expr) => {
        static $id: Desc = Desc::$kind($name, $help);
    };
}

// Per VM.
desc!(
    VM_INFO,
    gauge,
    "vmscope_vm_info",
    "Facts about a VM as labels; always 1. owner_user/owner_project: the owner's name (else id); user/project: its key, as on vmscope_user_*/vmscope_project_*. Join on vm_id: metric * on(vm_id) group_left(user) vmscope_vm_info."
);
desc!(
    VM_STATE,
    gauge,
    "vmscope_vm_state",
    "VM run state as seen by the hypervisor: 1 for the current state, 0 for the others."
);
desc!(
    VM_START,
    gauge,
    "vmscope_vm_start_time_seconds",
    "Unix time the VM's hypervisor process started."
);
desc!(
    VM_CPU,
    counter,
    "vmscope_vm_cpu_seconds_total",
    concat!(
        "CPU time used by the VM's hypervisor process (all threads: vCPUs, I/O, emulation) by mode (user, system), ",
        "measured from the host (the hypervisor process), not inside the guest."
    )
);
desc!(
    VM_CPU_GUEST,
    counter,
    "vmscope_vm_cpu_guest_seconds_total",
    concat!(
        "CPU time the hypervisor process spent running guest code (KVM), already included in mode=\"user\" of ",
        "vmscope_vm_cpu_seconds_total; measured from the host (the hypervisor process), not inside the guest."
    )
);
desc!(
    VM_VCPU,
    counter,
    "vmscope_vm_vcpu_seconds_total",
    "CPU time each vCPU thread ran on a host CPU, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    VM_VCPU_WAIT,
    counter,
    "vmscope_vm_vcpu_wait_seconds_total",
    concat!(
        "Time each vCPU thread was runnable but waiting for a host CPU: the scheduler's run delay, what the guest sees as steal, libvirt's vcpu.N.delay (not libvirt's vcpu.N.wait), ",
        "measured from the host (the hypervisor process), not inside the guest."
    )
);
desc!(
    VM_VCPUS,
    gauge,
    "vmscope_vm_allocated_vcpus",
    "vCPUs allocated to the VM."
);
desc!(
    VM_MEM_ALLOC,
    gauge,
    "vmscope_vm_memory_allocated_bytes",
    "Memory allocated to the VM."
);
desc!(
    VM_RSS,
    gauge,
    "vmscope_vm_memory_rss_bytes",
    concat!(
        "Resident memory of the VM's hypervisor process (guest memory touched plus hypervisor overhead), ",
        "measured from the host (the hypervisor process), not inside the guest."
    )
);
desc!(
    VM_VIRT,
    gauge,
    "vmscope_vm_memory_virtual_bytes",
    "Virtual memory size of the VM's hypervisor process, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    VM_MEM_UTIL,
    gauge,
    "vmscope_vm_memory_utilization_ratio",
    concat!(
        "Resident memory divided by allocated memory (can exceed 1 slightly: RSS includes hypervisor overhead), ",
        "measured from the host (the hypervisor process), not inside the guest."
    )
);
desc!(
    NET_RX_BYTES,
    counter,
    "vmscope_vm_network_receive_bytes_total",
    "Bytes the VM received on an interface (the TAP's host-side tx), measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_RX_PACKETS,
    counter,
    "vmscope_vm_network_receive_packets_total",
    "Packets the VM received on an interface, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_RX_ERRORS,
    counter,
    "vmscope_vm_network_receive_errors_total",
    "Receive errors on the VM's interface, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_RX_DROPS,
    counter,
    "vmscope_vm_network_receive_drops_total",
    "Packets dropped on their way to the VM, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_TX_BYTES,
    counter,
    "vmscope_vm_network_transmit_bytes_total",
    "Bytes the VM sent on an interface (the TAP's host-side rx), measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_TX_PACKETS,
    counter,
    "vmscope_vm_network_transmit_packets_total",
    "Packets the VM sent on an interface, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_TX_ERRORS,
    counter,
    "vmscope_vm_network_transmit_errors_total",
    "Transmit errors on the VM's interface, measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    NET_TX_DROPS,
    counter,
    "vmscope_vm_network_transmit_drops_total",
    "Packets the VM sent that were dropped, measured from the host (the hypervisor process), not inside the guest."
);
// Named vmscope_vm_disk_*_bytes_total until 0.x: that name is now the
// per-disk family (export/devices.rs); see README "Renamed metrics".
desc!(
    IO_READ,
    counter,
    "vmscope_vm_io_read_bytes_total",
    "Bytes the hypervisor process caused to be read from the host's block layer (/proc/PID/io read_bytes: all of the VM's disks and the hypervisor's own files), measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    IO_WRITE,
    counter,
    "vmscope_vm_io_write_bytes_total",
    "Bytes the hypervisor process caused to be written to the host's block layer (/proc/PID/io write_bytes: all of the VM's disks and the hypervisor's own files), measured from the host (the hypervisor process), not inside the guest."
);
desc!(
    VM_COLLECT_OK,
    gauge,
    "vmscope_vm_collect_success",
    "1 if this VM's values were read this tick; 0 if the read failed and the values are the last good ones."
);
desc!(
    VM_COLLECT_AGE,
    gauge,
    "vmscope_vm_collect_age_seconds",
    "Seconds since this VM's values were last read successfully (0 when fresh)."
);

// Host.
desc!(
    HOST_CPUS,
    gauge,
    "vmscope_host_cpus",
    "Online CPUs on the host."
);
desc!(
    HOST_CPU_RATIO,
    gauge,
    "vmscope_host_cpu_ratio",
    "Share of all host CPUs busy over the last collection interval (0..1)."
);
desc!(
    HOST_MEM_TOTAL,
    gauge,
    "vmscope_host_memory_total_bytes",
    "Host memory (MemTotal)."
);
desc!(
    HOST_MEM_AVAIL,
    gauge,
    "vmscope_host_memory_available_bytes",
    "Host memory available for new work (MemAvailable)."
);
desc!(
    HOST_MEM_USED,
    gauge,
    "vmscope_host_memory_used_ratio",
    "1 - available / total host memory."
);
desc!(
    HOST_LOAD1,
    gauge,
    "vmscope_host_load1",
    "Host load average over 1 minute."
);
desc!(
    HOST_LOAD5,
    gauge,
    "vmscope_host_load5",
    "Host load average over 5 minutes."
);
desc!(
    HOST_LOAD15,
    gauge,
    "vmscope_host_load15",
    "Host load average over 15 minutes."
);
desc!(
    FS_SIZE,
    gauge,
    "vmscope_host_filesystem_size_bytes",
    "Size of a host filesystem."
);
desc!(
    FS_FREE,
    gauge,
    "vmscope_host_filesystem_free_bytes",
    "Free space on a host filesystem (including root's reserve)."
);
desc!(
    FS_AVAIL,
    gauge,
    "vmscope_host_filesystem_avail_bytes",
    "Space on a host filesystem available to unprivileged users."
);

// vmscope itself.
desc!(
    BUILD_INFO,
    gauge,
    "vmscope_build_info",
    "vmscope's version and the Rust version it was built with; always 1."
);
desc!(
    COLLECTOR_DURATION,
    gauge,
    "vmscope_collector_duration_seconds",
    "Time one collector took on the last tick."
);
desc!(
    COLLECTOR_SUCCESS,
    gauge,
    "vmscope_collector_success",
    "1 if the collector succeeded on the last tick, else 0."
);
desc!(
    COLLECTOR_ERRORS,
    counter,
    "vmscope_collector_errors_total",
    "Errors per collector and kind (gone, io, parse, timeout) since vmscope started."
);
desc!(
    VMS_DISCOVERED,
    gauge,
    "vmscope_vms_discovered",
    "VMs found on the last tick, by discovery source."
);
desc!(
    DISCOVERY_MODE,
    gauge,
    "vmscope_discovery_mode",
    "1 for how each discovery source learns of changes now (process: events from the kernel or listing /proc; libvirt: inotify or listing its status directory), 0 for the other way."
);
desc!(
    PROC_LISTINGS,
    counter,
    "vmscope_discovery_proc_listings_total",
    "/proc listings made by discovery since vmscope started, by reason (tick: no process events; rescan: the periodic full re-classification, and the first; events_lost: process events were lost)."
);
desc!(
    VMS_SKIPPED,
    gauge,
    "vmscope_export_vms_skipped",
    "VMs left out of this exposition because an earlier VM had the same id (a discovery bug; should be 0)."
);
desc!(
    LABELS_TRUNCATED,
    counter,
    "vmscope_label_values_truncated_total",
    "VM names, ids and owner names cut to 256 bytes since vmscope started (counted each time a VM identity is built)."
);
desc!(
    SNAPSHOT_TS,
    gauge,
    "vmscope_snapshot_timestamp_seconds",
    "Unix time the exported snapshot was collected; time() - this is its age."
);
desc!(
    TICK_DURATION,
    gauge,
    "vmscope_tick_duration_seconds",
    "Wall time the last collection tick took."
);
desc!(
    SNAPSHOT_SEQ,
    gauge,
    "vmscope_snapshot_sequence",
    "Number of the exported collection tick (0 before the first tick completes; restarts at 0 with vmscope)."
);

impl MetricSource for Snapshot {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        SnapshotPart(self, Part::All).encode(out);
    }
}

/// Which families of a snapshot an exposition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Everything (admins, open access).
    All,
    /// A tenant's view ([`Snapshot::for_tenant`]): its VMs' families, its
    /// owners' families and the VM counts, then the build and the
    /// snapshot's sequence and time. No host and no collector families:
    /// those are the operator's.
    Tenant,
    /// Anonymous `host_only` access: host-level aggregates with no user,
    /// project or VM name: the host's families, the VM counts by state and
    /// hypervisor, and the agent's own health (a public status endpoint).
    HostOnly,
}

/// A snapshot's families of one [`Part`], as a metric source.
pub struct SnapshotPart<'a>(pub &'a Snapshot, pub Part);

impl MetricSource for SnapshotPart<'_> {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        // One dispatch per snapshot, not per series: the text path runs
        // the text writer's own code (the encode benchmark's hot loop).
        match out {
            MetricWriter::Text(w) => encode_snapshot(self.0, self.1, w),
            MetricWriter::Samples(c) => encode_snapshot(self.0, self.1, &mut **c),
            MetricWriter::Fingerprint(f) => encode_snapshot(self.0, self.1, &mut **f),
            MetricWriter::Tee(t) => encode_snapshot(self.0, self.1, t),
        }
    }
}

fn encode_snapshot(snap: &Snapshot, part: Part, out: &mut impl Encode) {
    let (vms, skipped) = unique_vms(&snap.vms);
    if snap.seq > 0 {
        if part == Part::HostOnly {
            super::usage::encode_inventory(&snap.usage, out);
        } else {
            encode_vms(&vms, snap.counters.as_deref(), out);
            super::usage::encode_usage(&snap.usage, out);
            if let Some(c) = &snap.counters {
                super::counters::encode_owner_counters(c, out);
            }
        }
        if part != Part::Tenant {
            encode_host(snap, out);
        }
    }
    encode_self(snap, skipped, part, out);
}

/// The VMs to export: the first of each id, in snapshot order.
fn unique_vms(vms: &[VmStats]) -> (Vec<&VmStats>, usize) {
    // The collector sorts snapshots by id: strictly increasing ids are
    // unique without hashing them. The set covers any other order.
    if vms.windows(2).all(|w| matches!(w, [a, b] if a.id < b.id)) {
        return (vms.iter().collect(), 0);
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(vms.len());
    let unique: Vec<&VmStats> = vms.iter().filter(|v| seen.insert(v.id.as_str())).collect();
    let skipped = vms.len() - unique.len();
    (unique, skipped)
}

fn encode_vms(vms: &[&VmStats], counters: Option<&CounterTotals>, out: &mut impl Encode) {
    // The owner keys by the one identity rule (a name-only VM joins the id
    // its name goes with), escaped like the per-owner families' labels, so
    // `sum by (user)` over a join with vm_info meets `vmscope_user_*{user}`.
    let owners = || vms.iter().filter_map(|v| v.owner.as_deref());
    let users = OwnerIndex::new(OwnerKind::User, owners());
    let projects = OwnerIndex::new(OwnerKind::Project, owners());
    out.family(&VM_INFO);
    for vm in vms {
        let mut pid = itoa::Buffer::new();
        let owner = vm.owner.as_ref();
        let user = owner.and_then(|o| users.key(o)).map(series_label);
        let project = owner.and_then(|o| projects.key(o)).map(series_label);
        let optional = [
            ("uuid", vm.uuid.as_deref()),
            ("pid", Some(pid.format(vm.pid))),
            ("owner_user", owner.and_then(|o| label(o, OwnerKind::User))),
            (
                "owner_project",
                owner.and_then(|o| label(o, OwnerKind::Project)),
            ),
            ("owner_source", vm.owner_source),
            ("user", user.as_deref()),
            ("project", project.as_deref()),
            ("flavor", vm.flavor.as_deref()),
            ("display_name", vm.display_name.as_deref()),
        ];
        let mut labels = [("", ""); 13];
        let [a, b] = id(vm);
        labels[0] = a;
        labels[1] = b;
        labels[2] = ("hypervisor", vm.hypervisor.as_str());
        labels[3] = ("source", vm.source.as_str());
        let mut n = 4;
        for (k, v) in optional {
            if let (Some(v), Some(slot)) = (v.filter(|v| !v.is_empty()), labels.get_mut(n)) {
                *slot = (k, v);
                n += 1;
            }
        }
        out.sample(labels.get(..n).unwrap_or_default(), 1u64);
    }

    // Every other per-VM series carries the same two labels: escape them
    // once per VM, not once per series.
    // (With tenancy on, the owner keys too: `super::owner_labels`.)
    let vms: Vec<(&VmStats, LabelSet)> = (vms.iter())
        .map(|vm| {
            (
                *vm,
                super::owner_labels::vm_label_set(out, vm, &users, &projects),
            )
        })
        .collect();
    let vms = vms.as_slice();

    out.family(&VM_STATE);
    for (vm, set) in vms {
        for s in VmState::ALL {
            out.sample_in(*set, &[("state", s.as_str())], s == vm.state);
        }
    }

    per_vm(out, &VM_START, vms, |vm| Some(vm.start_time_seconds));

    out.family(&VM_CPU);
    for (vm, set) in vms {
        out.sample_in(*set, &[("mode", "user")], vm.cpu.user);
        out.sample_in(*set, &[("mode", "system")], vm.cpu.system);
    }
    per_vm(out, &VM_CPU_GUEST, vms, |vm| vm.cpu.guest);

    for (desc, wait) in [(&VM_VCPU, false), (&VM_VCPU_WAIT, true)] {
        out.family(desc);
        for (vm, set) in vms {
            for vcpu in &vm.vcpus {
                let value = if wait {
                    vcpu.wait_seconds
                } else {
                    Some(vcpu.cpu_seconds)
                };
                if let Some(v) = value {
                    let mut idx = itoa::Buffer::new();
                    out.sample_in(*set, &[("vcpu", idx.format(vcpu.index))], v);
                }
            }
        }
    }

    per_vm(out, &VM_VCPUS, vms, |vm| vm.allocated_vcpus.map(f64::from));
    per_vm_u64(out, &VM_MEM_ALLOC, vms, |vm| vm.allocated_memory_bytes);
    per_vm_u64(out, &VM_RSS, vms, |vm| Some(vm.memory_rss_bytes));
    per_vm_u64(out, &VM_VIRT, vms, |vm| Some(vm.memory_virtual_bytes));
    per_vm(out, &VM_MEM_UTIL, vms, |vm| vm.memory_utilization_ratio);

    let net: [NetFamily; 8] = [
        (&NET_RX_BYTES, |n| n.rx_bytes),
        (&NET_RX_PACKETS, |n| n.rx_packets),
        (&NET_RX_ERRORS, |n| n.rx_errors),
        (&NET_RX_DROPS, |n| n.rx_drops),
        (&NET_TX_BYTES, |n| n.tx_bytes),
        (&NET_TX_PACKETS, |n| n.tx_packets),
        (&NET_TX_ERRORS, |n| n.tx_errors),
        (&NET_TX_DROPS, |n| n.tx_drops),
    ];
    for (desc, get) in net {
        out.family(desc);
        for (vm, set) in vms {
            for n in &vm.network {
                out.sample_in(*set, &[("interface", n.interface.as_str())], get(n));
            }
        }
    }

    per_vm_u64(out, &IO_READ, vms, |vm| vm.disk.map(|d| d.read_bytes));
    per_vm_u64(out, &IO_WRITE, vms, |vm| vm.disk.map(|d| d.write_bytes));
    super::devices::encode_devices(vms, out);
    per_vm_u64(out, &VM_COLLECT_OK, vms, |vm| {
        Some(u64::from(vm.collect_success))
    });
    per_vm(out, &VM_COLLECT_AGE, vms, |vm| Some(vm.collect_age_seconds));
    if let Some(c) = counters {
        super::counters::encode_vm_counters(c, vms, out);
    }
}

/// A network family and the counter it reads from an interface.
type NetFamily = (&'static Desc, fn(&NetStats) -> u64);

/// The two labels every per-VM series carries.
fn id(vm: &VmStats) -> [(&'static str, &str); 2] {
    [("vm_id", vm.id.as_str()), ("vm_name", vm.name.as_str())]
}

/// One family with one `{vm_id, vm_name}` series per VM that has a value
/// (works for counters too: the name decides the type).
fn per_vm(
    out: &mut impl Encode,
    desc: &'static Desc,
    vms: &[(&VmStats, LabelSet)],
    get: impl Fn(&VmStats) -> Option<f64>,
) {
    out.family(desc);
    for (vm, set) in vms {
        if let Some(v) = get(vm) {
            out.sample_in(*set, &[], v);
        }
    }
}

fn per_vm_u64(
    out: &mut impl Encode,
    desc: &'static Desc,
    vms: &[(&VmStats, LabelSet)],
    get: impl Fn(&VmStats) -> Option<u64>,
) {
    out.family(desc);
    for (vm, set) in vms {
        if let Some(v) = get(vm) {
            out.sample_in(*set, &[], v);
        }
    }
}

fn encode_host(snap: &Snapshot, out: &mut impl Encode) {
    let h = &snap.host;
    out.family(&HOST_CPUS);
    out.sample(&[], h.cpus);
    if let Some(r) = h.cpu_ratio {
        out.family(&HOST_CPU_RATIO);
        out.sample(&[], r);
    }
    for (desc, v) in [
        (&HOST_MEM_TOTAL, h.memory_total_bytes),
        (&HOST_MEM_AVAIL, h.memory_available_bytes),
    ] {
        out.family(desc);
        out.sample(&[], v);
    }
    for (desc, v) in [
        (&HOST_MEM_USED, h.memory_used_ratio),
        (&HOST_LOAD1, h.load1),
        (&HOST_LOAD5, h.load5),
        (&HOST_LOAD15, h.load15),
    ] {
        out.family(desc);
        out.sample(&[], v);
    }
    for (desc, field) in [(&FS_SIZE, 0), (&FS_FREE, 1), (&FS_AVAIL, 2)] {
        out.family(desc);
        for fs in &h.filesystems {
            let v = match field {
                0 => fs.size_bytes,
                1 => fs.free_bytes,
                _ => fs.avail_bytes,
            };
            let labels = [
                ("device", fs.device.as_str()),
                ("mountpoint", fs.mountpoint.as_str()),
                ("fstype", fs.fstype.as_str()),
            ];
            out.sample(&labels, v);
        }
    }
}

fn encode_self(snap: &Snapshot, vms_skipped: usize, part: Part, out: &mut impl Encode) {
    out.family(&BUILD_INFO);
    out.sample(
        &[
            ("version", BuildInfo::VERSION),
            ("rustc", BuildInfo::RUST_VERSION),
        ],
        1u64,
    );

    out.family(&SNAPSHOT_SEQ);
    out.sample(&[], snap.seq);
    if snap.seq == 0 {
        // Nothing measured yet: no zeros that look like measurements.
        return;
    }
    out.family(&SNAPSHOT_TS);
    out.sample(&[], snap.collected_at_unix());
    out.family(&TICK_DURATION);
    out.sample(&[], snap.tick_duration_seconds);
    if part == Part::Tenant {
        return;
    }

    out.family(&COLLECTOR_DURATION);
    for c in &snap.collectors {
        out.sample(&[("collector", c.name)], c.duration_seconds);
    }
    out.family(&COLLECTOR_SUCCESS);
    for c in &snap.collectors {
        out.sample(&[("collector", c.name)], c.success);
    }
    out.family(&COLLECTOR_ERRORS);
    for c in &snap.collectors {
        for (kind, n) in &c.errors_total {
            out.sample(&[("collector", c.name), ("kind", kind)], *n);
        }
    }

    out.family(&VMS_DISCOVERED);
    for source in Source::ALL {
        let n: usize = snap
            .discovered
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, n)| *n)
            .sum();
        out.sample(&[("source", source.as_str())], n);
    }
    out.family(&DISCOVERY_MODE);
    let d = &snap.discovery;
    for (mode, on) in [("events", d.process_events), ("listing", !d.process_events)] {
        out.sample(&[("source", "process"), ("mode", mode)], u64::from(on));
    }
    if let Some(inotify) = d.libvirt_inotify {
        for (mode, on) in [("inotify", inotify), ("listing", !inotify)] {
            out.sample(&[("source", "libvirt"), ("mode", mode)], u64::from(on));
        }
    }
    out.family(&PROC_LISTINGS);
    for reason in ListingReason::ALL {
        out.sample(&[("reason", reason.as_str())], d.listings(reason));
    }
    out.family(&VMS_SKIPPED);
    out.sample(&[], vms_skipped);
    out.family(&LABELS_TRUNCATED);
    out.sample(&[], snap.label_values_truncated_total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Format, encode, fixture};

    #[test]
    fn duplicate_vm_ids_are_skipped_and_counted() {
        let mut snap = fixture::snapshot(2);
        let mut dup = snap.vms[0].clone();
        dup.name = "impostor".into();
        snap.vms.push(dup);
        let text = encode(Format::Text, &[&snap]);
        assert!(!text.contains("impostor"));
        assert!(text.contains("\nvmscope_export_vms_skipped 1\n"));
    }

    #[test]
    fn empty_snapshot_exports_only_self_facts() {
        let snap = Snapshot::empty(std::time::Duration::from_secs(15));
        let text = encode(Format::Text, &[&snap]);
        assert!(text.contains("vmscope_build_info{version=\""));
        assert!(text.contains("\nvmscope_snapshot_sequence 0\n"));
        assert!(!text.contains("vmscope_host_"));
        assert!(!text.contains("vmscope_vms_discovered"));
    }

    #[test]
    fn every_source_is_listed_in_discovered() {
        let snap = fixture::snapshot(1);
        let text = encode(Format::Text, &[&snap]);
        for s in Source::ALL {
            assert!(text.contains(&format!(
                "vmscope_vms_discovered{{source=\"{}\"}}",
                s.as_str()
            )));
        }
    }
}
