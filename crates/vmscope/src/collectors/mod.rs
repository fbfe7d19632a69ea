//! One file per thing measured, registered in the two tables below.
//!
//! Adding a collector is one new file plus one line in [`VM_COLLECTORS`] or
//! [`HOST_COLLECTORS`]. The tick (see `collect.rs`) wraps every collector run:
//! it times it, counts its errors by kind and never lets one failure stop the
//! others. VM collectors work on the whole batch of VMs at once, so that a
//! collector like `vm_net` can read one `/proc/net/dev` per network namespace
//! instead of one file per interface.

pub mod host_cpu;
pub mod host_fs;
pub mod host_load;
pub mod host_memory;
pub mod vm_io;
pub mod vm_net;
pub mod vm_process;
pub mod vm_vcpu;

use std::time::Instant;

use crate::config::CollectorsConfig;
use crate::host::{Clock, CollectError, FdBudget, ProcFile, Roots};
use crate::model::{HostStats, VmStats};

/// What every collector may read during one tick.
pub struct Ctx<'a> {
    pub roots: &'a Roots,
    pub clock: Clock,
    pub page_size: u64,
    pub budget: &'a FdBudget,
    pub tick: u64,
    pub now: Instant,
}

impl Ctx<'_> {
    pub fn ticks_to_seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.clock.ticks_per_second.max(1) as f64
    }
}

/// One vCPU thread being followed.
#[derive(Debug)]
pub struct VcpuThread {
    pub index: u32,
    pub tid: u32,
    pub schedstat: ProcFile,
    /// Used when the kernel has no schedstat (no CONFIG_SCHED_INFO).
    pub stat: ProcFile,
}

/// A VM being followed across ticks: its identity, its open files and its
/// last good values. Owned by the tick loop; collectors update it in place.
#[derive(Debug)]
pub struct VmEntry {
    pub pid: u32,
    pub starttime_ticks: u64,
    /// Last good values (and identity) as published.
    pub stats: VmStats,
    /// TAP devices, host-side names.
    pub taps: Vec<String>,
    /// vCPU thread ids known from the hypervisor's own records (libvirt).
    pub known_vcpu_tids: Vec<(u32, u32)>,
    pub stat_file: ProcFile,
    pub io_file: ProcFile,
    /// `/proc/PID/io` needs ptrace-read rights: stop asking once refused.
    pub io_denied: bool,
    pub vcpus: Vec<VcpuThread>,
    /// The vCPU thread list must be read again (new VM, thread count
    /// changed, a vCPU thread vanished).
    pub vcpu_rescan_due: bool,
    /// Earliest tick for the next rescan (rate limit for VMs whose I/O
    /// worker threads come and go).
    pub vcpu_rescan_tick: u64,
    /// Thread count at the last `stat` read.
    pub num_threads: u64,
    /// Network namespace (the `/proc/PID/ns/net` link text).
    pub netns: Option<String>,
    /// Set by `vm_process` when the process has exited.
    pub gone: bool,
    /// Some read failed this tick: values are (partly) the last good ones.
    pub failed: bool,
    pub last_success: Option<Instant>,
}

/// A collector over all followed VMs.
pub trait VmCollector: Send {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>);
}

/// A collector of host-wide values.
pub trait HostCollector: Send {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError>;
}

pub struct VmCollectorSpec {
    pub name: &'static str,
    pub enabled: fn(&CollectorsConfig) -> bool,
    pub new: fn(&CollectorsConfig) -> Box<dyn VmCollector>,
}

pub struct HostCollectorSpec {
    pub name: &'static str,
    pub enabled: fn(&CollectorsConfig) -> bool,
    pub new: fn(&CollectorsConfig) -> Box<dyn HostCollector>,
}

/// Order matters: `vm_process` runs first and marks exited VMs, which the
/// others then skip.
pub const VM_COLLECTORS: &[VmCollectorSpec] =
    &[vm_process::SPEC, vm_vcpu::SPEC, vm_io::SPEC, vm_net::SPEC];

pub const HOST_COLLECTORS: &[HostCollectorSpec] = &[
    host_cpu::SPEC,
    host_memory::SPEC,
    host_load::SPEC,
    host_fs::SPEC,
];

/// Read failures for one VM: gone processes end the VM, anything else keeps
/// its last good values and marks it failed.
pub fn record_vm_error(vm: &mut VmEntry, e: CollectError, errors: &mut Vec<CollectError>) {
    if matches!(e, CollectError::Gone { .. }) {
        vm.gone = true;
    } else {
        vm.failed = true;
    }
    errors.push(e);
}
