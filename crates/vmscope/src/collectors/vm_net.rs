//! TAP traffic of each VM, in the VM's direction.
//!
//! Reads `/proc/PID/net/dev` once per network namespace that holds VMs (one
//! read covers every TAP in it; usually all VMs share the host namespace), not
//! one sysfs file per interface. A TAP's host-side `tx` is what the guest
//! received and its `rx` what the guest sent, so the counters are swapped
//! here, once. A TAP that has disappeared is simply not reported. Keeps each
//! VM's namespace (the `/proc/PID/ns/net` link, read once when the VM is
//! first seen) and one held `net/dev` per namespace.

use std::collections::HashMap;

use vmscope_proc::{NetDevStats, parse_net_dev};

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, VmKey};
use crate::host::{CollectError, ProcFile};
use crate::model::NetStats;

/// The per-tick maps below are keyed by namespace and interface names:
/// foldhash, as the collectors' `VmMap` is.
type Fast = foldhash::fast::RandomState;

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_net",
    per_vm: false,
    enabled: |c| c.vm_net,
    new: |_| Box::new(VmNet::default()),
};

#[derive(Default)]
pub struct VmNet {
    buf: Vec<u8>,
    /// One held `net/dev` per namespace, opened through a member VM's pid.
    files: HashMap<String, (u32, ProcFile)>,
}

/// Converts host-side TAP counters into the guest's direction.
pub fn guest_view(d: &NetDevStats) -> NetStats {
    NetStats {
        interface: d.name.clone().into_owned(),
        ..guest_counters(d)
    }
}

/// The counters of [`guest_view`], without the interface name.
fn guest_counters(d: &NetDevStats) -> NetStats {
    NetStats {
        interface: String::new(),
        rx_bytes: d.tx_bytes,
        rx_packets: d.tx_packets,
        rx_errors: d.tx_errors,
        rx_drops: d.tx_drops,
        tx_bytes: d.rx_bytes,
        tx_packets: d.rx_packets,
        tx_errors: d.rx_errors,
        tx_drops: d.rx_drops,
    }
}

impl VmCollector for VmNet {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        for vm in vms.iter_mut().filter(|v| !v.gone) {
            let pid = vm.pid;
            vm.held.netns.get_or_insert_with(|| {
                std::fs::read_link(ctx.roots.pid(pid).join("ns").join("net"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            });
        }
        // Group VM indexes by namespace (one key copy per namespace, not
        // per VM: usually every VM shares the host's).
        let groups: Vec<(String, Vec<usize>)> = {
            let mut by_ns: HashMap<&str, Vec<usize>, Fast> = HashMap::default();
            let mut live: std::collections::HashSet<&str, Fast> = Default::default();
            for (i, vm) in vms.iter().enumerate() {
                if vm.gone {
                    continue;
                }
                let ns = vm.held.netns.as_ref().and_then(|n| n.as_deref());
                if let Some(ns) = ns {
                    live.insert(ns);
                }
                if vm.taps.is_empty() {
                    continue;
                }
                by_ns.entry(ns.unwrap_or_default()).or_default().push(i);
            }
            // Namespaces without a live VM: their held files go.
            self.files
                .retain(|ns, _| ns.is_empty() || live.contains(ns.as_str()));
            by_ns
                .into_iter()
                .map(|(ns, members)| (ns.to_owned(), members))
                .collect()
        };
        // Each namespace's table is applied before the next is read: its
        // interface names borrow the read buffer.
        for (ns, members) in groups {
            match self.read_ns(ctx, &ns, &members, vms) {
                Ok(devs) => apply(&devs, &members, vms),
                Err(e) => {
                    for &i in &members {
                        if let Some(vm) = vms.get_mut(i) {
                            vm.failed = true;
                        }
                    }
                    errors.push(e);
                }
            }
        }
    }

    /// Nothing: the VM's namespace is in its entry.
    fn forget(&mut self, _: VmKey) {}
}

impl VmNet {
    fn read_ns(
        &mut self,
        ctx: &Ctx<'_>,
        ns: &str,
        members: &[usize],
        vms: &[VmEntry],
    ) -> Result<Vec<NetDevStats<'_>>, CollectError> {
        // Reuse the held file if its pid is still a member; else try members
        // in turn (one may be exiting).
        let mut last_err = None;
        let held = self.files.get(ns).map(|(pid, _)| *pid);
        let pids = held.into_iter().chain(
            members
                .iter()
                .filter_map(|&i| vms.get(i))
                .filter(|v| !v.gone && Some(v.pid) != held)
                .map(|v| v.pid),
        );
        let mut read = None;
        for pid in pids {
            if self.files.get(ns).is_none_or(|(p, _)| *p != pid) {
                let path = ctx.roots.pid(pid).join("net").join("dev");
                self.files
                    .insert(ns.to_string(), (pid, ProcFile::streaming(path, ctx.budget)));
            }
            let Some((_, file)) = self.files.get_mut(ns) else {
                continue;
            };
            // The length only: a borrow of the buffer returned from inside
            // the loop would last past the loop for the borrow checker.
            match file.read(&mut self.buf).map(<[u8]>::len) {
                Ok(n) => {
                    read = Some(n);
                    break;
                }
                Err(e) => {
                    last_err = Some(CollectError::from_proc_io(pid, file.path(), e));
                    self.files.remove(ns);
                }
            }
        }
        match read {
            Some(n) => Ok(parse_net_dev(self.buf.get(..n).unwrap_or_default())),
            None => Err(last_err.unwrap_or(CollectError::Gone { pid: 0 })),
        }
    }
}

/// One namespace's interfaces into its VMs' `network`, in the order of
/// each VM's TAPs (those that exist).
fn apply(devs: &[NetDevStats<'_>], members: &[usize], vms: &mut [VmEntry]) {
    // Every interface of the host (10 000 TAPs at 10 000 VMs), looked up a
    // few times per VM: foldhash, not SipHash.
    let by_name: HashMap<&str, &NetDevStats<'_>, Fast> =
        devs.iter().map(|d| (d.name.as_ref(), d)).collect();
    for &i in members {
        let Some(vm) = vms.get_mut(i) else { continue };
        // The interfaces to report: the VM's TAPs that exist now.
        let present = || vm.taps.iter().filter(|t| by_name.contains_key(t.as_str()));
        let same_taps = vm.stats.network.len() == present().count()
            && vm
                .stats
                .network
                .iter()
                .zip(present())
                .all(|(n, t)| n.interface == *t);
        if same_taps {
            // The usual tick: same interfaces, new counters; no interface
            // names copied again.
            for n in &mut vm.stats.network {
                if let Some(d) = by_name.get(n.interface.as_str()) {
                    *n = NetStats {
                        interface: std::mem::take(&mut n.interface),
                        ..guest_counters(d)
                    };
                }
            }
        } else {
            // Sized exactly: collected from a filter, one TAP got room for
            // four (`model::clone_vec_exact` says what that costs).
            let mut network = Vec::with_capacity(present().count());
            network.extend(
                (vm.taps.iter()).filter_map(|t| by_name.get(t.as_str()).map(|d| guest_view(d))),
            );
            vm.stats.network = network;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::collectors::testing::{ctx, entry};
    use crate::host::{FdBudget, Roots};

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0
  tap0: 100 2 0 0 0 0 0 0 200 4 0 0 0 0 0 0
  tap1: 300 6 0 0 0 0 0 0 400 8 0 0 0 0 0 0
";

    fn vm_dir(root: &std::path::Path, pid: u32) {
        let dir = root.join("proc").join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::os::unix::fs::symlink("net:[4026531840]", dir.join("ns/net")).unwrap();
        std::fs::write(dir.join("net/dev"), NET_DEV).unwrap();
    }

    #[test]
    fn one_namespace_one_file_and_state_goes_with_the_vms() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(8);
        vm_dir(dir.path(), 7);
        vm_dir(dir.path(), 8);
        let mut vms = [entry(7, 70), entry(8, 80)];
        vms[0].taps = vec!["tap0".into(), "gone-tap".into()];
        vms[1].taps = vec!["tap1".into()];
        let mut c = VmNet::default();
        let mut errors = Vec::new();
        c.collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let net: Vec<(&str, u64, u64)> = vms
            .iter()
            .flat_map(|v| &v.stats.network)
            .map(|n| (n.interface.as_str(), n.rx_bytes, n.tx_bytes))
            .collect();
        // The guest's direction: rx is the TAP's tx.
        assert_eq!(net, [("tap0", 200, 100), ("tap1", 400, 300)]);
        // One interface each (vm 7's other TAP is gone), held in a vector
        // of one: the VMs' stats are copied into every snapshot.
        let caps: Vec<usize> = vms.iter().map(|v| v.stats.network.capacity()).collect();
        assert_eq!(caps, [1, 1]);
        // Both VMs share a namespace: one held file.
        assert_eq!(budget.in_use(), 1);
        assert!(vms.iter().all(|v| v.held.netns.is_some()));

        // The VMs left (the pipeline drops their entries); the namespace's
        // file goes with its last VM, at the next tick.
        drop(vms);
        c.collect(&ctx(&roots, &budget, 2), &mut [], &mut errors);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn direction_is_the_guests() {
        let d = NetDevStats {
            name: "tap0".into(),
            rx_bytes: 1,
            rx_packets: 2,
            rx_errors: 3,
            rx_drops: 4,
            tx_bytes: 10,
            tx_packets: 20,
            tx_errors: 30,
            tx_drops: 40,
        };
        let g = guest_view(&d);
        assert_eq!(
            (g.rx_bytes, g.rx_packets, g.rx_errors, g.rx_drops),
            (10, 20, 30, 40)
        );
        assert_eq!(
            (g.tx_bytes, g.tx_packets, g.tx_errors, g.tx_drops),
            (1, 2, 3, 4)
        );
    }
}
