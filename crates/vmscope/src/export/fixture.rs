//! Synthetic snapshots for tests and benchmarks (not used by the agent).
//!
//! Values are deterministic functions of the VM index so that tests can
//! assert them; names include the awkward characters real VM names carry.

use std::time::{Duration, SystemTime};

use crate::model::{
    CollectorStatus, CpuSeconds, DiskIo, FilesystemStats, HostStats, Hypervisor, NetStats, Owner,
    Snapshot, Source, VcpuStats, VmRates, VmState, VmStats,
};

/// One VM; `i` picks the id (`vm-00000i`), values and a varied shape.
pub fn vm(i: usize) -> VmStats {
    let n = i as u64;
    let libvirt = i.is_multiple_of(3);
    VmStats {
        id: format!("vm-{i:06}"),
        name: format!("instance-{i:06}"),
        hypervisor: if libvirt {
            Hypervisor::Qemu
        } else {
            Hypervisor::CloudHypervisor
        },
        source: if libvirt {
            Source::Libvirt
        } else {
            Source::Process
        },
        pid: 1000 + i as u32,
        uuid: libvirt.then(|| format!("00000000-0000-4000-8000-{i:012}")),
        state: if i % 7 == 6 {
            VmState::Paused
        } else {
            VmState::Running
        },
        start_time_seconds: 1_700_000_000.0 + n as f64,
        owner: libvirt.then(|| {
            std::sync::Arc::new(Owner {
                user_id: Some(format!("u{}", i % 50)),
                user_name: Some(format!("user{}", i % 50)),
                project_id: Some(format!("p{}", i % 10)),
                project_name: None,
            })
        }),
        owner_source: libvirt.then_some("nova"),
        flavor: libvirt.then(|| "m1.small".to_owned()),
        display_name: None,
        allocated_vcpus: Some(2),
        allocated_memory_bytes: Some(2 << 30),
        cpu: CpuSeconds {
            user: 100.0 + n as f64 * 0.5,
            system: 10.25,
            guest: Some(90.0),
        },
        vcpus: (0..2)
            .map(|v| VcpuStats {
                index: v,
                tid: 20_000 + v,
                cpu_seconds: 45.5,
                wait_seconds: Some(0.125),
            })
            .collect(),
        memory_rss_bytes: (1 << 30) + n * 4096,
        memory_virtual_bytes: 3 << 30,
        memory_utilization_ratio: Some(0.5),
        network: vec![NetStats {
            interface: format!("tap{i}"),
            rx_bytes: 1_000_000 + n,
            rx_packets: 1000,
            rx_errors: 0,
            rx_drops: 1,
            tx_bytes: 500_000,
            tx_packets: 800,
            tx_errors: 0,
            tx_drops: 0,
        }],
        disk: Some(DiskIo {
            read_bytes: 4096 * n,
            write_bytes: 8192,
        }),
        devices: None,
        rates: Some(VmRates {
            window_seconds: 15.0,
            cpu_cores: 0.25,
            cpu_utilization_ratio: Some(0.125),
            network_rx_bytes_per_second: 100.0,
            network_tx_bytes_per_second: 50.0,
            disk_read_bytes_per_second: 0.0,
            disk_write_bytes_per_second: 10.0,
        }),
        collect_success: true,
        collect_age_seconds: 0.0,
        id_suffixed: false,
    }
}

/// A snapshot of `n` VMs (sorted by id), a host with one filesystem and
/// two collectors, collected now, seq 1.
pub fn snapshot(n: usize) -> Snapshot {
    let vms: Vec<VmStats> = (0..n).map(vm).collect();
    let libvirt = vms.iter().filter(|v| v.source == Source::Libvirt).count();
    Snapshot {
        seq: 1,
        collected_at: SystemTime::now(),
        interval: Duration::from_secs(15),
        tick_duration_seconds: 0.05,
        host: HostStats {
            hostname: Some("hv1".into()),
            cpus: 64,
            cpu_ratio: Some(0.35),
            memory_total_bytes: 256 << 30,
            memory_available_bytes: 100 << 30,
            memory_used_ratio: 0.609375,
            load1: 12.5,
            load5: 11.0,
            load15: 10.0,
            filesystems: vec![FilesystemStats {
                device: "/dev/sda1".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                size_bytes: 100 << 30,
                free_bytes: 50 << 30,
                avail_bytes: 45 << 30,
            }],
        },
        collectors: vec![
            CollectorStatus {
                name: "vm_process",
                duration_seconds: 0.02,
                success: true,
                errors_total: vec![("gone", 3), ("parse", 0)],
            },
            CollectorStatus {
                name: "host_memory",
                duration_seconds: 0.0001,
                success: true,
                errors_total: vec![],
            },
        ],
        discovered: vec![(Source::Process, n - libvirt), (Source::Libvirt, libvirt)],
        discovery: crate::model::DiscoveryStats {
            process_events: true,
            libvirt_inotify: Some(true),
            listings: [0, 1, 0],
        },
        label_values_truncated_total: 0,
        vms,
        usage: Default::default(),
        counters: None,
        departed: Vec::new(),
    }
    .with_usage(1000)
}

/// The snapshot one tick after `prev` on a busy host: every VM used CPU on
/// every vCPU, touched memory, moved packets and did I/O, so every family
/// that can change between ticks did (the worst case for the gzip cache's
/// chunk reuse).
pub fn next_tick(prev: &Snapshot) -> Snapshot {
    let mut s = prev.clone();
    s.seq += 1;
    s.collected_at += Duration::from_secs(1);
    for vm in &mut s.vms {
        vm.cpu.user += 0.75;
        vm.cpu.system += 0.125;
        vm.cpu.guest = vm.cpu.guest.map(|g| g + 0.5);
        for v in &mut vm.vcpus {
            v.cpu_seconds += 0.375;
            v.wait_seconds = v.wait_seconds.map(|w| w + 0.001);
        }
        vm.memory_rss_bytes += 4096;
        for n in &mut vm.network {
            n.rx_bytes += 1500;
            n.rx_packets += 1;
            n.tx_bytes += 60;
            n.tx_packets += 1;
        }
        if let Some(d) = vm.disk.as_mut() {
            d.read_bytes += 4096;
            d.write_bytes += 4096;
        }
    }
    s.with_usage(1000)
}
