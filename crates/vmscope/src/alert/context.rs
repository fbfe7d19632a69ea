//! The facts attached to an alert: top VMs by CPU or RSS for host alerts,
//! device/mountpoint/fstype/free/size for disk alerts, the VM's allocation
//! for VM alerts. Pure: reads a [`Snapshot`], no IO.

use super::notification::{Context, FsContext, TopVm, VmContext};
use super::rules::{Metric, Scope};
use crate::model::Snapshot;

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
                    ctx.top_vms = top_vms(snap, |vm| vm.memory_rss_bytes as f64);
                }
                _ => {
                    ctx.top_vms = top_vms(snap, |vm| vm.rates.map_or(0.0, |r| r.cpu_cores));
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
        Scope::Owner { .. } => {}
    }
    ctx
}

fn top_vms(snap: &Snapshot, key: impl Fn(&crate::model::VmStats) -> f64) -> Vec<TopVm> {
    let mut vms: Vec<&crate::model::VmStats> = snap.vms.iter().collect();
    vms.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.id.cmp(&b.id)));
    vms.into_iter()
        .take(TOP_VMS)
        .map(|vm| TopVm {
            vm_id: vm.id.clone(),
            vm_name: vm.name.clone(),
            cpu_cores: vm.rates.map(|r| r.cpu_cores),
            memory_rss_bytes: vm.memory_rss_bytes,
        })
        .collect()
}
