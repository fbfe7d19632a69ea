//! One file per thing measured, registered in the two tables below.
//!
//! Adding a collector is one new file plus one line in [`VM_COLLECTORS`] or
//! [`HOST_COLLECTORS`]. The tick (see `pipeline/`) wraps every collector run:
//! it times it, counts its errors by kind and never lets one failure stop the
//! others. VM collectors work on a batch of VMs at once, so that a
//! collector like `vm_net` can read one `/proc/net/dev` per network namespace
//! instead of one file per interface; those that read only each process's
//! own files ([`VmCollectorSpec::per_vm`]) get the VMs a few at a time,
//! all of them for one group of VMs before the next group.
//!
//! **One name per collector.** A collector's `name` is its file name, its
//! `collector` label on the `vmscope_collector_*` self-metrics and its key
//! under `[collectors]` in the configuration (`vm_io = false`,
//! `[collectors.host_filesystem]`). Collectors that cannot be turned off
//! (`vm_process`, `host_cpu`, `host_memory`, `host_load`) have no key. The
//! metric names keep their older subsystems where they differ (`vm_net`
//! fills `vmscope_vm_network_*`, `vm_devices` fills `vmscope_vm_disk_*`
//! and `vmscope_vm_guest_*`): a metric name is an interface, renamed only
//! with a deprecation cycle (`vm_io`'s process-wide bytes moved to
//! `vmscope_vm_io_*` to free `vmscope_vm_disk_*` for the per-disk family).
//!
//! **State.** A [`VmEntry`] is what the pipeline and every collector share
//! about one VM: its identity, its published values and its health for this
//! tick. What a collector keeps across ticks for a VM (held descriptors,
//! thread lists, its network namespace, a refusal to remember) rides in the
//! entry's [`Held`], private to the collectors, and is dropped with the
//! entry when the VM leaves; what must also be undone elsewhere (the
//! device poller's registration) is kept by the collector, keyed by the
//! VM's [`VmKey`] ([`VmMap`]), and dropped in [`VmCollector::forget`].
//!
//! Collectors import `host` (roots, file reads, clock), `model` and
//! `hypervisor` (the API clients `vm_devices` drives), never `discovery`.

pub mod host_cpu;
pub mod host_filesystem;
pub mod host_load;
pub mod host_memory;
pub mod vm_devices;
pub mod vm_io;
pub mod vm_net;
pub mod vm_process;
pub mod vm_vcpu;

use std::time::Instant;

use crate::config::CollectorsConfig;
use crate::host::{Clock, CollectError, FdBudget, Roots};
use crate::hypervisor::DeviceApi;
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

/// Per-VM state of a collector, looked up for every VM at every tick:
/// foldhash (seeded per process) instead of SipHash, whose hashing of
/// these keys was 1% of the collect thread at 10 000 VMs. The keys are
/// PIDs and start times: nothing a guest chooses.
pub type VmMap<V> = std::collections::HashMap<VmKey, V, foldhash::fast::RandomState>;

/// Which VM: one hypervisor process, told apart from a later process that
/// reuses its pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmKey {
    pub pid: u32,
    pub starttime_ticks: u64,
}

/// A VM being followed across ticks: its identity, its last good values and
/// this tick's health. Owned by the pipeline; collectors update it in place.
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
    /// The hypervisor's own API, where the command line names one
    /// (`vm_devices` polls it).
    pub device_api: Option<DeviceApi>,
    /// Thread count at the last good `stat` read (set by `vm_process`): when
    /// it changes, `vm_vcpu` looks for vCPU threads again.
    pub num_threads: u64,
    /// Set by `vm_process` when the process has exited.
    pub gone: bool,
    /// Some read failed this tick: values are (partly) the last good ones.
    pub failed: bool,
    pub last_success: Option<Instant>,
    /// The per-VM collectors' own state for this VM.
    pub held: Held,
}

/// What the collectors keep for one VM between ticks, carried in its
/// [`VmEntry`] and dropped with it (which closes its files and gives their
/// descriptors back to the budget). Each collector kept this in a map of
/// its own keyed by [`VmKey`]: at 10 000 VMs every lookup found its bucket
/// and value cold (the kernel's reads in between evict them), 8% of the
/// collect thread's user time in `vm_process`'s lookup alone; the entry is
/// in cache already. The fields are private to the collectors.
#[derive(Debug, Default)]
pub struct Held {
    process: Option<vm_process::Files>,
    vcpu: Option<vm_vcpu::Threads>,
    io: Option<vm_io::IoFile>,
    /// `vm_net`: the process's network namespace (`None` inside: not
    /// readable), read once.
    netns: Option<Option<String>>,
}

impl VmEntry {
    /// A VM not measured yet.
    pub fn new(key: VmKey, stats: VmStats) -> Self {
        VmEntry {
            pid: key.pid,
            starttime_ticks: key.starttime_ticks,
            stats,
            taps: Vec::new(),
            known_vcpu_tids: Vec::new(),
            device_api: None,
            num_threads: 0,
            gone: false,
            failed: false,
            last_success: None,
            held: Held::default(),
        }
    }

    pub fn key(&self) -> VmKey {
        VmKey {
            pid: self.pid,
            starttime_ticks: self.starttime_ticks,
        }
    }
}

/// A collector over all followed VMs.
pub trait VmCollector: Send {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>);

    /// The VM left (exited, PID reused, no longer discovered): drop what is
    /// kept for it. Called once per VM, after the tick that saw it leave.
    fn forget(&mut self, vm: VmKey);
}

/// A collector of host-wide values.
pub trait HostCollector: Send {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError>;
}

pub struct VmCollectorSpec {
    /// The collector's one name (see the module doc).
    pub name: &'static str,
    /// Its work for one VM needs nothing of the others' (one process's own
    /// files): the tick may hand it the VMs a few at a time, interleaved
    /// with the other such collectors (`pipeline::VM_CHUNK` says why).
    pub per_vm: bool,
    pub enabled: fn(&CollectorsConfig) -> bool,
    pub new: fn(&CollectorsConfig) -> Box<dyn VmCollector>,
}

pub struct HostCollectorSpec {
    /// The collector's one name (see the module doc).
    pub name: &'static str,
    pub enabled: fn(&CollectorsConfig) -> bool,
    pub new: fn(&CollectorsConfig) -> Box<dyn HostCollector>,
}

/// Order matters: `vm_process` runs first and marks exited VMs, which the
/// others then skip.
pub const VM_COLLECTORS: &[VmCollectorSpec] = &[
    vm_process::SPEC,
    vm_vcpu::SPEC,
    vm_io::SPEC,
    vm_net::SPEC,
    vm_devices::SPEC,
];

pub const HOST_COLLECTORS: &[HostCollectorSpec] = &[
    host_cpu::SPEC,
    host_memory::SPEC,
    host_load::SPEC,
    host_filesystem::SPEC,
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

/// Test helpers shared by the collectors' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::model::Source;

    /// A followed VM as the pipeline hands it to collectors.
    pub fn entry(pid: u32, starttime_ticks: u64) -> VmEntry {
        VmEntry::new(
            VmKey {
                pid,
                starttime_ticks,
            },
            VmStats::unmeasured(pid, Source::Process),
        )
    }

    pub fn ctx<'a>(roots: &'a Roots, budget: &'a FdBudget, tick: u64) -> Ctx<'a> {
        Ctx {
            roots,
            clock: Clock {
                ticks_per_second: 100,
                boot_time: 1_000,
                now: 2_000.0,
            },
            page_size: 4096,
            budget,
            tick,
            now: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn enabled(c: &CollectorsConfig) -> Vec<&'static str> {
        VM_COLLECTORS
            .iter()
            .filter(|s| (s.enabled)(c))
            .map(|s| s.name)
            .chain(
                HOST_COLLECTORS
                    .iter()
                    .filter(|s| (s.enabled)(c))
                    .map(|s| s.name),
            )
            .collect()
    }

    #[test]
    fn names_are_unique_and_every_config_key_is_a_name() {
        let mut names = enabled(&CollectorsConfig::default());
        let n = names.len();
        assert_eq!(n, VM_COLLECTORS.len() + HOST_COLLECTORS.len());
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "{names:?}");
        let keys = toml::Value::try_from(CollectorsConfig::default()).unwrap();
        let keys = keys.as_table().unwrap();
        assert_eq!(keys.len(), 5);
        for key in keys.keys() {
            assert!(
                names.contains(&key.as_str()),
                "[collectors] {key} names no collector"
            );
        }
    }

    #[test]
    fn each_key_turns_its_own_collector_off() {
        for (key, toml) in [
            ("vm_vcpu", "vm_vcpu = false"),
            ("vm_io", "vm_io = false"),
            ("vm_net", "vm_net = false"),
            ("vm_devices", "vm_devices.enabled = false"),
            ("host_filesystem", "host_filesystem.enabled = false"),
        ] {
            let c: CollectorsConfig = toml::from_str(toml).unwrap();
            let on = enabled(&c);
            assert!(!on.contains(&key), "{key} still on: {on:?}");
            assert_eq!(on.len(), VM_COLLECTORS.len() + HOST_COLLECTORS.len() - 1);
        }
    }
}
