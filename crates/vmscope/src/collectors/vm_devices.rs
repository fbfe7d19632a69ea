//! Per-disk I/O and balloon memory from each VM's hypervisor API.
//!
//! Reads nothing itself on the tick: it hands every VM to the `hypervisor`
//! poller, through its API where the command line names one
//! (`VmEntry::device_api`: QMP, Cloud Hypervisor's socket, libvirtd's
//! read-only socket for libvirt domains, Firecracker's metrics file) and
//! else through the
//! host block devices its process holds open, and copies the poller's
//! latest answer for each VM into `VmStats::devices` (one `Arc` clone per
//! VM; none for a VM with neither). Emits: `VmStats::devices`; a failed poll since the last
//! tick as one `vmscope_collector_errors_total{collector="vm_devices"}`
//! error of its kind (`timeout`, `io` for connect/io/protocol, `parse`).
//! Fails: never on the tick. A VM's API that is slow, stuck or garbled
//! leaves its last good figures in place with `up = false` and their time.
//! Keeps per VM: which API it was registered with and how many errors the
//! poller had counted, dropped when the VM leaves.

use std::path::PathBuf;

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, VmKey, VmMap};
use crate::host::CollectError;
use crate::hypervisor::{DeviceApi, Poller};

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_devices",
    per_vm: false,
    enabled: |c| c.vm_devices.enabled,
    new: |c| {
        Box::new(VmDevicesCollector::new(
            c.vm_devices.timeout,
            c.vm_devices.workers,
        ))
    },
};

pub struct VmDevicesCollector {
    /// `None` when the poller thread could not be started (logged once).
    poller: Option<Poller>,
    vms: VmMap<Registered>,
    /// One VM's poll deadline, for the error messages.
    timeout: std::time::Duration,
}

struct Registered {
    /// The VM's `device_api` it was registered with (compared each tick
    /// without building paths: the tick's cost stays one compare per VM).
    from: Option<DeviceApi>,
    /// Errors the poller had counted for this VM at the last tick.
    errors_seen: u64,
}

impl VmDevicesCollector {
    pub fn new(timeout: std::time::Duration, workers: usize) -> Self {
        let poller = Poller::start(timeout, workers)
            .inspect_err(|e| tracing::error!(error = %e, "cannot start the device poller thread; no per-device figures"))
            .ok();
        VmDevicesCollector {
            poller,
            vms: VmMap::default(),
            timeout,
        }
    }
}

fn key(k: VmKey) -> (u32, u64) {
    (k.pid, k.starttime_ticks)
}

/// A poll error as the collector's error kinds count it.
fn collect_error(kind: &str, vm: &VmEntry, timeout: std::time::Duration) -> CollectError {
    let what = format!("the hypervisor API of pid {}", vm.pid);
    match kind {
        "timeout" => CollectError::Timeout {
            what,
            secs: timeout.as_secs_f64(),
        },
        "parse" => CollectError::Parse {
            path: PathBuf::from(what),
            source: vmscope_proc::ParseError::Malformed {
                kind: vmscope_proc::FileKind::QmpReply,
                what: "see the log for the poll's error",
            },
        },
        _ => CollectError::Io {
            path: PathBuf::from(what),
            source: std::io::Error::other(format!("{kind} error")),
        },
    }
}

impl VmCollector for VmDevicesCollector {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        let Some(poller) = &self.poller else { return };
        // Register new VMs (and VMs whose API changed) before the wake, so
        // a new VM is asked in this very round.
        for vm in vms.iter().filter(|v| !v.gone) {
            let k = vm.key();
            let same = |r: &Registered| match (&r.from, &vm.device_api) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_as(b),
                _ => false,
            };
            if self.vms.get(&k).is_some_and(same) {
                continue;
            }
            let api = match &vm.device_api {
                Some(DeviceApi::Qmp(p)) => {
                    DeviceApi::Qmp(ctx.roots.host_path(&p.to_string_lossy()))
                }
                Some(DeviceApi::CloudHypervisor(p)) => {
                    DeviceApi::CloudHypervisor(ctx.roots.host_path(&p.to_string_lossy()))
                }
                // The process's own view of the path (jailed VMs too).
                Some(DeviceApi::Firecracker(p)) => DeviceApi::Firecracker(
                    ctx.roots
                        .pid(vm.pid)
                        .join("root")
                        .join(p.strip_prefix("/").unwrap_or(p)),
                ),
                Some(DeviceApi::Libvirt { socket, uuid }) => DeviceApi::Libvirt {
                    socket: ctx.roots.run.join(socket),
                    uuid: uuid.clone(),
                },
                // No API: the host block devices it holds open.
                Some(DeviceApi::Block { .. }) | None => DeviceApi::Block {
                    fd_dir: ctx.roots.pid(vm.pid).join("fd"),
                    sys: ctx.roots.sys.clone(),
                },
            };
            poller.set(key(k), api);
            self.vms.insert(
                k,
                Registered {
                    from: vm.device_api.clone(),
                    errors_seen: 0,
                },
            );
        }
        poller.wake();
        // Contended (the poller is inserting a result right now): the VMs
        // keep the figures of the last tick.
        let Some(results) = poller.results() else {
            return;
        };
        for vm in vms.iter_mut().filter(|v| !v.gone) {
            let Some(reg) = self.vms.get_mut(&vm.key()) else {
                continue;
            };
            let Some(d) = results.get(&key(vm.key())) else {
                vm.stats.devices = None;
                continue;
            };
            // The poller publishes a new `Arc` per answer: the same one is
            // the same figures and errors, and nothing of it is read (its
            // memory is cold by now, on every VM of every tick).
            if vm
                .stats
                .devices
                .as_ref()
                .is_some_and(|cur| std::sync::Arc::ptr_eq(cur, d))
            {
                continue;
            }
            let total: u64 = d.errors_total.iter().map(|(_, n)| n).sum();
            if total > reg.errors_seen {
                // One error per tick at most, of the newest poll's kind.
                let kind = d.last_error.unwrap_or("io");
                errors.push(collect_error(kind, vm, self.timeout));
                reg.errors_seen = total;
            }
            vm.stats.devices = Some(std::sync::Arc::clone(d));
        }
    }

    fn forget(&mut self, vm: VmKey) {
        if self.vms.remove(&vm).is_some()
            && let Some(p) = &self.poller
        {
            p.remove(key(vm));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::{Duration, Instant};

    use super::*;
    use crate::collectors::testing::{ctx, entry};
    use crate::host::{FdBudget, Roots};
    use crate::hypervisor::qmp::tests::{GREETING, monitor, qemu_like};

    #[test]
    fn copies_the_latest_figures_counts_failures_and_forgets() {
        let (_g, good) = monitor(Some(GREETING), qemu_like);
        let (_s, silent) = monitor(None, |_| None);
        let dir = tempfile::tempdir().unwrap();
        // Sockets are absolute host paths: resolve them below "/".
        let roots = Roots {
            rootfs: "/".into(),
            ..Roots::under(dir.path())
        };
        let budget = FdBudget::new(8);
        let mut c = VmDevicesCollector::new(Duration::from_millis(200), 2);
        let mut vms = [entry(7, 70), entry(8, 80), entry(9, 90)];
        vms[0].device_api = Some(DeviceApi::Qmp(good));
        vms[1].device_api = Some(DeviceApi::Qmp(silent));
        // vms[2]: no API and no /proc/9/fd in the fixture: nothing.
        let mut errors = Vec::new();
        let t = Instant::now();
        let mut ticks = 0;
        while t.elapsed() < Duration::from_secs(5)
            && (vms[0].stats.devices.is_none() || vms[1].stats.devices.is_none())
        {
            let started = Instant::now();
            c.collect(&ctx(&roots, &budget, ticks), &mut vms, &mut errors);
            // The tick never waits for a poll.
            assert!(started.elapsed() < Duration::from_millis(50));
            ticks += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        let good = vms[0]
            .stats
            .devices
            .clone()
            .expect("figures for the good VM");
        assert!(good.up);
        assert_eq!(good.disks[0].device, "vd0");
        let silent = vms[1]
            .stats
            .devices
            .clone()
            .expect("a state for the silent VM");
        assert!(!silent.up && silent.disks.is_empty());
        assert_eq!(vms[2].stats.devices, None);
        assert!(errors.iter().any(|e| e.kind() == "timeout"), "{errors:?}");
        c.forget(vms[0].key());
        assert!(!c.vms.contains_key(&vms[0].key()));
        assert_eq!(c.vms.len(), 2);
    }
}
