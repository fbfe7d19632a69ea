//! Who a VM is: id, name, UUID, hypervisor, allocation and TAPs, from
//! what discovery found.
//!
//! Reads the discovery records of one VM (its command line, its libvirt
//! status XML) and writes the identity fields of its [`VmEntry`]; the
//! collectors fill in the measured ones. No IO and no failure: a VM with no
//! name or UUID gets one derived from its hypervisor, pid and start time.
//! Runs when a VM is first followed and when discovery hands out a new
//! record for it (a rewritten libvirt status file), not every tick.

use crate::collectors::VmEntry;
use crate::discovery::DiscoveredVm;
use crate::hypervisor::DeviceApi;
use crate::model::{Hypervisor, VmState, VmStats, cap_label_value};

/// libvirtd's read-only socket, relative to the run root (`/run`).
const LIBVIRT_SOCKET: &str = "libvirt/libvirt-sock-ro";

pub fn hypervisor(kind: vmscope_proc::HypervisorKind) -> Hypervisor {
    match kind {
        vmscope_proc::HypervisorKind::Qemu => Hypervisor::Qemu,
        vmscope_proc::HypervisorKind::CloudHypervisor => Hypervisor::CloudHypervisor,
        vmscope_proc::HypervisorKind::Firecracker => Hypervisor::Firecracker,
    }
}

/// A libvirt domain state (`<domstatus state=...>`) as a [`VmState`].
pub fn libvirt_state(state: Option<&str>) -> VmState {
    match state {
        Some("running") | Some("blocked") => VmState::Running,
        Some("paused") => VmState::Paused,
        Some("shutdown") | Some("shutoff") => VmState::ShuttingDown,
        Some("crashed") => VmState::Crashed,
        Some("pmsuspended") => VmState::Suspended,
        _ => VmState::Unknown,
    }
}

/// The last path component without extension: `/run/ch/web1.sock` -> `web1`.
fn file_stem(path: &str) -> Option<String> {
    std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// Sets who a VM is from what discovery knows; the libvirt record wins over
/// the command line, which fills the gaps. Returns how many strings were cut
/// to [`MAX_LABEL_VALUE_BYTES`](crate::model::MAX_LABEL_VALUE_BYTES).
///
/// The cap is applied here, where the identity is built (and for owners
/// where they are resolved, `owners::Owners::resolve`), and nowhere else:
/// every consumer (exposition, JSON API, watchdog, `vmscope vms`, logs)
/// reads these fields from the snapshot, so all of them see the same capped
/// name, and the encoder's hot path needs no length checks.
pub fn apply_identity(e: &mut VmEntry, d: &DiscoveredVm) -> u64 {
    let s = &mut e.stats;
    s.source = d.source;
    s.hypervisor = hypervisor(d.kind);
    let cmd = d.process.as_ref().map(|p| &p.cmdline);
    let lv = d.libvirt.as_deref();
    let uuid = lv
        .and_then(|l| l.uuid.clone())
        .or_else(|| cmd.and_then(|c| c.uuid.clone()))
        .map(|u| u.to_ascii_lowercase());
    let name = lv
        .map(|l| l.name.clone())
        .or_else(|| cmd.and_then(|c| c.name.clone()))
        .or_else(|| cmd.and_then(|c| c.fc_id.clone()))
        .or_else(|| cmd.and_then(|c| c.api_socket.as_deref().and_then(file_stem)))
        .unwrap_or_else(|| format!("{}-{}", s.hypervisor.as_str(), e.pid));
    s.id = match (&uuid, cmd.and_then(|c| c.fc_id.clone())) {
        (Some(u), _) => u.clone(),
        (None, Some(fc)) if d.kind == vmscope_proc::HypervisorKind::Firecracker => fc,
        // No identity from the hypervisor: pid + start time survives PID reuse.
        _ => format!("pid{}-{}", e.pid, e.starttime_ticks),
    };
    s.uuid = uuid;
    s.name = name;
    s.allocated_vcpus = lv
        .and_then(|l| l.vcpus)
        .or_else(|| cmd.and_then(|c| c.vcpus));
    s.allocated_memory_bytes = lv
        .and_then(|l| l.memory_bytes)
        .or_else(|| cmd.and_then(|c| c.memory_bytes));
    if let Some(l) = lv {
        s.state = libvirt_state(l.state.as_deref());
        // The owner comes from the owner sources (owners/nova.rs), at tick time.
        if let Some(n) = &l.nova {
            s.flavor = n.flavor.clone();
            s.display_name = n.instance_name.clone();
        }
        e.known_vcpu_tids = l.vcpu_tids.clone();
    }
    let mut taps: Vec<String> = lv.map(|l| l.interfaces.clone()).unwrap_or_default();
    if let Some(c) = cmd {
        for t in &c.taps {
            if !taps.contains(t) {
                taps.push(t.clone());
            }
        }
    }
    // Pushed one by one (room for four): held as long as the VM is.
    taps.shrink_to_fit();
    e.taps = taps;
    // A libvirt domain: libvirt holds its monitor, so libvirt's API.
    let libvirt_api = lv.and(s.uuid.clone()).map(|uuid| DeviceApi::Libvirt {
        socket: LIBVIRT_SOCKET.into(),
        uuid,
    });
    e.device_api = libvirt_api.or_else(|| {
        cmd.and_then(|c| match c.kind {
            vmscope_proc::HypervisorKind::Qemu => {
                c.qmp_socket.as_deref().map(|p| DeviceApi::Qmp(p.into()))
            }
            vmscope_proc::HypervisorKind::CloudHypervisor => c
                .api_socket
                .as_deref()
                .filter(|p| p.starts_with('/'))
                .map(|p| DeviceApi::CloudHypervisor(p.into())),
            // Absolute only: a relative path is relative to a working
            // directory that may have changed since.
            vmscope_proc::HypervisorKind::Firecracker => c
                .fc_metrics_path
                .as_deref()
                .filter(|p| p.starts_with('/'))
                .map(|p| DeviceApi::Firecracker(p.into())),
        })
    });
    cap_identity(&mut e.stats)
}

/// Caps every identity string of `s` that ends up in a label value.
fn cap_identity(s: &mut VmStats) -> u64 {
    let mut values: Vec<&mut String> = vec![&mut s.id, &mut s.name];
    values.extend(s.uuid.as_mut());
    values.extend(s.flavor.as_mut());
    values.extend(s.display_name.as_mut());
    values
        .into_iter()
        .map(|v| u64::from(cap_label_value(v)))
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use vmscope_proc::{HypervisorKind, LibvirtDomain, NovaMeta, VmCmdline};

    use super::*;
    use crate::collectors::VmKey;
    use crate::discovery::ProcVm;
    use crate::model::{Source, VmStats};

    const KEY: VmKey = VmKey {
        pid: 4242,
        starttime_ticks: 777,
    };

    fn cmdline(kind: HypervisorKind) -> VmCmdline {
        VmCmdline::new(kind)
    }

    fn process(kind: HypervisorKind, cmdline: VmCmdline) -> DiscoveredVm {
        DiscoveredVm {
            pid: KEY.pid,
            kind,
            source: Source::Process,
            process: Some(Arc::new(ProcVm {
                pid: KEY.pid,
                starttime_ticks: KEY.starttime_ticks,
                cmdline,
                command_line: String::new(),
            })),
            libvirt: None,
        }
    }

    fn identify(d: &DiscoveredVm) -> VmEntry {
        let mut e = VmEntry::new(KEY, VmStats::unmeasured(KEY.pid, d.source));
        apply_identity(&mut e, d);
        e
    }

    #[test]
    fn qemu_command_line_gives_name_uuid_allocation_and_taps() {
        let c = VmCmdline {
            name: Some("web1".into()),
            uuid: Some("5EED0000-0000-4000-8000-00000000000A".into()),
            vcpus: Some(4),
            memory_bytes: Some(2 << 30),
            taps: vec!["tap0".into(), "tap1".into()],
            ..cmdline(HypervisorKind::Qemu)
        };
        let e = identify(&process(HypervisorKind::Qemu, c));
        let s = &e.stats;
        assert_eq!(s.hypervisor, Hypervisor::Qemu);
        assert_eq!(s.source, Source::Process);
        // UUIDs are lower-cased, and the UUID is the id.
        assert_eq!(s.id, "5eed0000-0000-4000-8000-00000000000a");
        assert_eq!(s.uuid.as_deref(), Some(s.id.as_str()));
        assert_eq!(s.name, "web1");
        assert_eq!(s.allocated_vcpus, Some(4));
        assert_eq!(s.allocated_memory_bytes, Some(2 << 30));
        assert_eq!(e.taps, ["tap0", "tap1"]);
        // Bare processes have no state from their records: vm_process sets it.
        assert_eq!(s.state, VmState::Unknown);
        assert_eq!(s.owner, None);
    }

    #[test]
    fn no_identity_at_all_falls_back_to_pid_and_start_time() {
        let e = identify(&process(
            HypervisorKind::Qemu,
            cmdline(HypervisorKind::Qemu),
        ));
        assert_eq!(e.stats.id, "pid4242-777");
        assert_eq!(e.stats.name, "qemu-4242");
        assert_eq!(e.stats.uuid, None);
        assert!(e.taps.is_empty());
    }

    #[test]
    fn firecracker_id_is_id_and_name_cloud_hypervisor_name_is_the_socket() {
        let fc = VmCmdline {
            fc_id: Some("fc-7".into()),
            api_socket: Some("/run/fc/other.sock".into()),
            ..cmdline(HypervisorKind::Firecracker)
        };
        let e = identify(&process(HypervisorKind::Firecracker, fc));
        assert_eq!(
            (e.stats.id.as_str(), e.stats.name.as_str()),
            ("fc-7", "fc-7")
        );
        assert_eq!(e.stats.hypervisor, Hypervisor::Firecracker);
        // No --metrics-path: no per-disk source.
        assert_eq!(e.device_api, None);
        let fc = VmCmdline {
            fc_metrics_path: Some("/run/fc/fc-7.metrics".into()),
            ..cmdline(HypervisorKind::Firecracker)
        };
        let e = identify(&process(HypervisorKind::Firecracker, fc));
        assert_eq!(
            e.device_api,
            Some(DeviceApi::Firecracker("/run/fc/fc-7.metrics".into()))
        );
        let fc = VmCmdline {
            fc_metrics_path: Some("relative.metrics".into()),
            ..cmdline(HypervisorKind::Firecracker)
        };
        assert_eq!(
            identify(&process(HypervisorKind::Firecracker, fc)).device_api,
            None
        );

        let ch = VmCmdline {
            api_socket: Some("/run/ch/web1.sock".into()),
            ..cmdline(HypervisorKind::CloudHypervisor)
        };
        let e = identify(&process(HypervisorKind::CloudHypervisor, ch));
        assert_eq!(e.stats.name, "web1");
        assert_eq!(e.stats.id, "pid4242-777");
        // An --id on something that is not Firecracker is no id.
        let ch_with_id = VmCmdline {
            fc_id: Some("x".into()),
            ..cmdline(HypervisorKind::CloudHypervisor)
        };
        let e = identify(&process(HypervisorKind::CloudHypervisor, ch_with_id));
        assert_eq!(e.stats.id, "pid4242-777");
        assert_eq!(e.stats.name, "x");
    }

    #[test]
    fn libvirt_wins_and_the_command_line_fills_gaps() {
        let c = VmCmdline {
            name: Some("from-argv".into()),
            uuid: Some("11111111-1111-1111-1111-111111111111".into()),
            vcpus: Some(8),
            memory_bytes: Some(1 << 30),
            taps: vec!["vnet1".into(), "tap-extra".into()],
            ..cmdline(HypervisorKind::Qemu)
        };
        let mut d = process(HypervisorKind::Qemu, c);
        d.source = Source::Libvirt;
        d.libvirt = Some(Arc::new(LibvirtDomain {
            name: "instance-0000002a".into(),
            uuid: Some("AAAAAAAA-0000-0000-0000-000000000001".into()),
            pid: Some(KEY.pid),
            state: Some("paused".into()),
            vcpus: Some(2),
            memory_bytes: None,
            vcpu_tids: vec![(0, 5000), (1, 5001)],
            interfaces: vec!["vnet0".into(), "vnet1".into()],
            nova: Some(NovaMeta {
                instance_name: Some("my-server".into()),
                flavor: Some("m1.small".into()),
                user_id: Some("u-1".into()),
                user_name: None,
                project_id: Some("p-1".into()),
                project_name: Some("demo".into()),
            }),
            ..LibvirtDomain::default()
        }));
        let e = identify(&d);
        let s = &e.stats;
        assert_eq!(s.source, Source::Libvirt);
        assert_eq!(s.id, "aaaaaaaa-0000-0000-0000-000000000001");
        assert_eq!(s.name, "instance-0000002a");
        assert_eq!(s.allocated_vcpus, Some(2));
        assert_eq!(s.allocated_memory_bytes, Some(1 << 30));
        assert_eq!(s.state, VmState::Paused);
        assert_eq!(s.display_name.as_deref(), Some("my-server"));
        assert_eq!(s.flavor.as_deref(), Some("m1.small"));
        // The owner is the owner sources' business (owners/nova.rs).
        assert_eq!(s.owner, None);
        assert_eq!(e.known_vcpu_tids, [(0, 5000), (1, 5001)]);
        // libvirt's interfaces first, then command-line TAPs not yet listed.
        assert_eq!(e.taps, ["vnet0", "vnet1", "tap-extra"]);
        // libvirt holds the monitor: per-disk figures come from its API.
        assert_eq!(
            e.device_api,
            Some(DeviceApi::Libvirt {
                socket: "libvirt/libvirt-sock-ro".into(),
                uuid: "aaaaaaaa-0000-0000-0000-000000000001".into(),
            })
        );
    }

    #[test]
    fn empty_nova_metadata_is_no_owner() {
        let mut d = process(HypervisorKind::Qemu, cmdline(HypervisorKind::Qemu));
        d.libvirt = Some(Arc::new(LibvirtDomain {
            name: "d".into(),
            nova: Some(NovaMeta::default()),
            ..LibvirtDomain::default()
        }));
        let e = identify(&d);
        assert_eq!(e.stats.owner, None);
        assert_eq!(e.stats.state, VmState::Unknown);
    }

    #[test]
    fn overlong_identity_strings_are_capped_and_counted() {
        let c = VmCmdline {
            name: Some(format!("é{}", "x".repeat(100_000))),
            uuid: None,
            ..cmdline(HypervisorKind::Qemu)
        };
        let d = process(HypervisorKind::Qemu, c);
        let mut e = VmEntry::new(KEY, VmStats::unmeasured(d.pid, d.source));
        let cut = apply_identity(&mut e, &d);
        assert_eq!(cut, 1);
        assert!(e.stats.name.len() <= crate::model::MAX_LABEL_VALUE_BYTES);
        assert!(e.stats.name.starts_with('é'));
        // A short identity is left alone and not counted.
        let d = process(HypervisorKind::Qemu, cmdline(HypervisorKind::Qemu));
        assert_eq!(apply_identity(&mut e, &d), 0);
    }

    #[test]
    fn libvirt_states() {
        for (s, want) in [
            ("running", VmState::Running),
            ("blocked", VmState::Running),
            ("paused", VmState::Paused),
            ("shutdown", VmState::ShuttingDown),
            ("shutoff", VmState::ShuttingDown),
            ("crashed", VmState::Crashed),
            ("pmsuspended", VmState::Suspended),
            ("nostate", VmState::Unknown),
        ] {
            assert_eq!(libvirt_state(Some(s)), want, "{s}");
        }
        assert_eq!(libvirt_state(None), VmState::Unknown);
    }
}
