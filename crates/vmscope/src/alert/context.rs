//! The facts attached to an alert: top VMs by CPU or RSS for host alerts,
//! device/mountpoint/fstype/free/size for disk alerts, the VM's allocation
//! for VM alerts, the owner's name, id, totals and top VMs (by the rule's
//! metric) for owner alerts. Pure: reads a [`Snapshot`], no IO. A scope
//! that is no longer in the snapshot gets an (almost) empty context.

use super::notification::{Context, FsContext, OwnerContext, TopVm, VmContext};
use super::rules::{self, Metric, Scope};
use crate::model::{Snapshot, VmStats};

/// How many VMs the "top VMs" lists hold.
pub const TOP_VMS: usize = 5;

pub fn build(metric: Metric, scope: &Scope, snap: &Snapshot) -> Context {
    let mut ctx = Context::default();
    match scope {
        Scope::Host => {
            ctx.vm_count = Some(snap.vms.len());
            match metric {
                Metric::HostMemoryUsedRatio => {
                    ctx.hypervisor_rss_bytes = Some(
                        snap.vms
                            .iter()
                            .fold(0u64, |acc, vm| acc.saturating_add(vm.memory_rss_bytes)),
                    );
                    ctx.top_vms = top_vms(&snap.vms, |vm| vm.memory_rss_bytes as f64);
                }
                _ => {
                    ctx.top_vms = top_vms(&snap.vms, |vm| vm.rates.map_or(0.0, |r| r.cpu_cores));
                }
            }
        }
        Scope::Filesystem { mountpoint, .. } => {
            ctx.filesystem = snap
                .host
                .filesystems
                .iter()
                .find(|fs| fs.mountpoint == *mountpoint)
                .map(|fs| FsContext {
                    device: fs.device.clone(),
                    mountpoint: fs.mountpoint.clone(),
                    fstype: fs.fstype.clone(),
                    free_bytes: fs.free_bytes,
                    avail_bytes: fs.avail_bytes,
                    size_bytes: fs.size_bytes,
                });
        }
        Scope::Vm { vm_id, .. } => {
            ctx.vm = snap.vm(vm_id).map(|vm| VmContext {
                allocated_vcpus: vm.allocated_vcpus,
                cpu_cores: vm.rates.map(|r| r.cpu_cores),
                memory_rss_bytes: vm.memory_rss_bytes,
                allocated_memory_bytes: vm.allocated_memory_bytes,
                owner_user: vm
                    .owner
                    .as_ref()
                    .and_then(|o| o.user_label().map(str::to_owned)),
                owner_project: vm
                    .owner
                    .as_ref()
                    .and_then(|o| o.project_label().map(str::to_owned)),
            });
        }
        Scope::Owner {
            owner_kind,
            owner_id,
            owner_name,
        } => {
            let vms: Vec<&VmStats> = rules::owner_vms(snap, *owner_kind, owner_id).collect();
            if vms.is_empty() {
                return ctx;
            }
            let id = vms.iter().find_map(|vm| {
                vm.owner
                    .as_ref()
                    .and_then(|o| rules::owner_id(o, *owner_kind))
            });
            let opt_sum = |part: &dyn Fn(&VmStats) -> Option<u64>| {
                vms.iter()
                    .filter_map(|vm| part(vm))
                    .reduce(u64::saturating_add)
            };
            ctx.owner = Some(OwnerContext {
                id: id.map(str::to_owned),
                name: owner_name.clone(),
                vm_count: vms.len(),
                cpu_cores: vms
                    .iter()
                    .filter_map(|vm| vm.rates.map(|r| r.cpu_cores))
                    .reduce(|a, b| a + b),
                allocated_vcpus: opt_sum(&|vm| vm.allocated_vcpus.map(u64::from)),
                memory_rss_bytes: vms
                    .iter()
                    .fold(0u64, |acc, vm| acc.saturating_add(vm.memory_rss_bytes)),
                allocated_memory_bytes: opt_sum(&|vm| vm.allocated_memory_bytes),
            });
            // Ranked by what the rule measures; VMs whose part is unknown last.
            ctx.top_vms = top_vms(vms, |vm| metric.owner_part(vm).unwrap_or(-1.0));
        }
    }
    ctx
}

/// The [`TOP_VMS`] largest of `vms` by `key`, ties by id.
fn top_vms<'a>(
    vms: impl IntoIterator<Item = &'a VmStats>,
    key: impl Fn(&VmStats) -> f64,
) -> Vec<TopVm> {
    let mut vms: Vec<&VmStats> = vms.into_iter().collect();
    vms.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.id.cmp(&b.id)));
    vms.into_iter()
        .take(TOP_VMS)
        .map(|vm| TopVm {
            vm_id: vm.id.clone(),
            vm_name: vm.name.clone(),
            cpu_cores: vm.rates.map(|r| r.cpu_cores),
            memory_rss_bytes: vm.memory_rss_bytes,
            allocated_vcpus: vm.allocated_vcpus,
            allocated_memory_bytes: vm.allocated_memory_bytes,
        })
        .collect()
}
