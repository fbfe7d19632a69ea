//! The snapshot: one immutable picture of the host and its VMs per tick.
//!
//! The collector builds a [`Snapshot`] once per interval and publishes it as an
//! `Arc<Snapshot>`; every consumer (the `/metrics` encoder, the JSON API, the
//! watchdog, later the usage ledger) reads that same value and never blocks
//! the collector. Nothing in here does IO.
//!
//! Units are base units everywhere: seconds, bytes, ratios in 0..1. Counters
//! are the kernel's own cumulative values, passed through.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use serde::Serialize;

pub mod counters;
pub mod history;
pub mod identity;
pub mod pace;
pub mod scope;
pub mod usage;

/// Which hypervisor runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hypervisor {
    Qemu,
    CloudHypervisor,
    Firecracker,
}

impl Hypervisor {
    pub const ALL: [Hypervisor; 3] = [
        Hypervisor::Qemu,
        Hypervisor::CloudHypervisor,
        Hypervisor::Firecracker,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            Hypervisor::Qemu => "qemu",
            Hypervisor::CloudHypervisor => "cloud_hypervisor",
            Hypervisor::Firecracker => "firecracker",
        }
    }
}

/// Where a VM was discovered. A libvirt domain is also a process; it is
/// reported once, with source `libvirt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Process,
    Libvirt,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Process, Source::Libvirt];
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Process => "process",
            Source::Libvirt => "libvirt",
        }
    }
}

/// Why discovery listed /proc on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListingReason {
    /// No process events: the listing is how new processes are found.
    Tick,
    /// The periodic full re-classification (`discovery.rescan`), and the
    /// first listing at start.
    Rescan,
    /// Process events were lost (the kernel's queue overflowed): only a
    /// listing knows which processes exist now.
    EventsLost,
}

impl ListingReason {
    pub const ALL: [ListingReason; 3] = [
        ListingReason::Tick,
        ListingReason::Rescan,
        ListingReason::EventsLost,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            ListingReason::Tick => "tick",
            ListingReason::Rescan => "rescan",
            ListingReason::EventsLost => "events_lost",
        }
    }
}

/// How discovery finds VMs right now, and what it cost since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// New processes come from the kernel's process events (else from
    /// listing /proc).
    pub process_events: bool,
    /// libvirt's status directory is watched with inotify (else listed
    /// every tick); `None` when libvirt discovery is off.
    pub libvirt_inotify: Option<bool>,
    /// /proc listings since start, by [`ListingReason::ALL`] index.
    pub listings: [u64; 3],
}

impl DiscoveryStats {
    pub fn listings(&self, reason: ListingReason) -> u64 {
        let i = ListingReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.listings.get(i).copied().unwrap_or(0)
    }

    pub fn count_listing(&mut self, reason: ListingReason) {
        if let Some(i) = ListingReason::ALL.iter().position(|r| *r == reason)
            && let Some(n) = self.listings.get_mut(i)
        {
            *n += 1;
        }
    }
}

/// VM run state, exposed as one 0/1 series per state (StateSet style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
    Crashed,
    Suspended,
    Unknown,
}

impl VmState {
    pub const ALL: [VmState; 6] = [
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Crashed,
        VmState::Suspended,
        VmState::Unknown,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting_down",
            VmState::Crashed => "crashed",
            VmState::Suspended => "suspended",
            VmState::Unknown => "unknown",
        }
    }
}

/// Who a VM belongs to, as far as the host can tell (Nova metadata today;
/// platform records later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Owner {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
}

impl Owner {
    /// The user's display label ([`identity::label`]: name, else id).
    pub fn user_label(&self) -> Option<&str> {
        identity::label(self, identity::OwnerKind::User)
    }
    /// The project's display label ([`identity::label`]: name, else id).
    pub fn project_label(&self) -> Option<&str> {
        identity::label(self, identity::OwnerKind::Project)
    }
}

/// CPU time of the whole hypervisor process (all threads), in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuSeconds {
    pub user: f64,
    pub system: f64,
    /// Time spent running guest code, where the kernel reports it (KVM).
    /// Part of `user` already: not to be added on top.
    pub guest: Option<f64>,
}

impl CpuSeconds {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// One vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VcpuStats {
    /// vCPU index inside the guest (0-based).
    pub index: u32,
    /// Host thread id (JSON API only; never a metric label).
    pub tid: u32,
    /// CPU seconds the thread ran on a host CPU.
    pub cpu_seconds: f64,
    /// Seconds the thread was runnable but waiting for a host CPU
    /// (the guest's steal time), from schedstat when the kernel has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<f64>,
}

/// One TAP interface, counted in the VM's direction: `rx` is what the guest
/// received (the TAP's host-side tx), `tx` is what the guest sent.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetStats {
    pub interface: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// Storage I/O the hypervisor process caused, from `/proc/PID/io`
/// (all of the VM's disks together; per-device needs the hypervisor's API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Where a VM's per-device figures ([`VmDevices`]) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSource {
    /// QEMU's QMP monitor socket (`query-blockstats`, the balloon).
    Qmp,
    /// Cloud Hypervisor's API socket (`vm.counters`).
    CloudHypervisor,
    /// libvirt's API (`virConnectGetAllDomainStats`), for libvirt domains.
    Libvirt,
    /// Firecracker's metrics file (`--metrics-path`), its deltas added up.
    Firecracker,
    /// No API: the VM's own cgroup v2 `io.stat`, for the host block
    /// devices its process holds open (only the VM's I/O on them).
    Cgroup,
    /// No API: the host block devices the hypervisor process holds open,
    /// from `/sys/dev/block/MAJ:MIN/stat` (named by the host: `loop0`, `dm-3`).
    Sysfs,
}

impl DeviceSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceSource::Qmp => "qmp",
            DeviceSource::CloudHypervisor => "cloud_hypervisor",
            DeviceSource::Libvirt => "libvirt",
            DeviceSource::Firecracker => "firecracker",
            DeviceSource::Cgroup => "cgroup",
            DeviceSource::Sysfs => "sysfs",
        }
    }
}

/// One of a VM's disks, as the hypervisor counts it (the guest's requests,
/// after the hypervisor's own caching is irrelevant: these are what the
/// guest asked for).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiskStats {
    /// The disk's name in the VM's configuration (QEMU: drive id, else the
    /// device id); capped like every label value.
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    pub read_time_seconds: f64,
    pub write_time_seconds: f64,
    pub flush_time_seconds: f64,
}

/// Memory as the guest's balloon driver reports it, in bytes and counts;
/// `None` where the guest did not report a statistic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GuestMemory {
    /// Unix seconds of the guest's last report.
    pub updated_at_seconds: f64,
    pub total_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub unused_bytes: Option<u64>,
    pub disk_caches_bytes: Option<u64>,
    /// total - unused - disk caches: in use without buffers and cache.
    pub used_bytes: Option<u64>,
    pub swap_in_bytes: Option<u64>,
    pub swap_out_bytes: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
}

/// What the hypervisor's own API said about a VM's devices, read off the
/// tick by `hypervisor/`'s poller and shared (`Arc`) into every snapshot
/// until the next read: last good figures, plus whether the last read
/// worked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmDevices {
    pub source: DeviceSource,
    /// The last read worked (false: the figures are the last good ones).
    pub up: bool,
    /// Unix seconds of the last read that worked (`None`: none yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_seconds: Option<f64>,
    /// Failed reads since vmscope started following the VM, by kind
    /// (`connect`, `timeout`, `io`, `parse`, `protocol`).
    pub errors_total: Vec<(&'static str, u64)>,
    /// The kind of the last read's error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<&'static str>,
    pub disks: Vec<DiskStats>,
    /// The balloon's current size: memory the guest has with the balloon
    /// applied (QMP `query-balloon` `actual`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_memory: Option<GuestMemory>,
}

/// Rates over the last interval, computed from two consecutive samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct VmRates {
    /// Seconds the rate is computed over.
    pub window_seconds: f64,
    /// Host CPU cores in use by the hypervisor process (1.0 = one core).
    pub cpu_cores: f64,
    /// `cpu_cores / allocated_vcpus`, when the vCPU count is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_utilization_ratio: Option<f64>,
    pub network_rx_bytes_per_second: f64,
    pub network_tx_bytes_per_second: f64,
    pub disk_read_bytes_per_second: f64,
    pub disk_write_bytes_per_second: f64,
}

/// The longest VM name, id, display name, flavor or owner name vmscope
/// keeps, in bytes (cut on a UTF-8 character boundary). These strings come
/// from command lines and platform metadata that a VM's owner may control,
/// and every per-VM series carries `vm_name`: one 100 000-character name
/// would otherwise grow every scrape twentyfold. Cuts are counted in
/// `vmscope_label_values_truncated_total`.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Cuts `s` to at most [`MAX_LABEL_VALUE_BYTES`] on a character boundary;
/// true when it did.
pub fn cap_label_value(s: &mut String) -> bool {
    if s.len() <= MAX_LABEL_VALUE_BYTES {
        return false;
    }
    let mut end = MAX_LABEL_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// Everything vmscope knows about one VM at one tick.
#[derive(Debug, PartialEq, Serialize)]
pub struct VmStats {
    /// Stable identity: the UUID when the hypervisor has one, else an id
    /// derived from (pid, process start time) that survives PID reuse.
    pub id: String,
    pub name: String,
    pub hypervisor: Hypervisor,
    pub source: Source,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub state: VmState,
    /// Unix seconds when the hypervisor process started.
    pub start_time_seconds: f64,
    /// Shared: the snapshot of every tick copies each VM's stats, and an
    /// owner changes far less often than once per tick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Arc<Owner>>,
    /// The owner source that attributed the VM (`[owners]` key: `nova`,
    /// `file`, ...): the highest in precedence that gave any field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_source: Option<&'static str>,
    /// Flavor or machine type, where the platform says (Nova).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// The platform's display name when it differs from `name` (Nova).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_memory_bytes: Option<u64>,
    pub cpu: CpuSeconds,
    pub vcpus: Vec<VcpuStats>,
    pub memory_rss_bytes: u64,
    pub memory_virtual_bytes: u64,
    /// RSS / allocated memory. Can exceed 1 slightly: RSS includes the
    /// hypervisor's own overhead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_utilization_ratio: Option<f64>,
    pub network: Vec<NetStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskIo>,
    /// Per-disk and balloon figures from the hypervisor's API. One shared
    /// value per poll, not per tick: the poller runs on its own rhythm and
    /// every snapshot until its next answer points at the same figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Arc<VmDevices>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<VmRates>,
    /// False when this tick's read failed and the values are the last good ones.
    pub collect_success: bool,
    /// Seconds since the values were last read successfully (0 when fresh).
    pub collect_age_seconds: f64,
    /// `id` had `-pid<pid>` appended because an older process claims the
    /// same id in this snapshot (see `pipeline::dedup`). Not served: the
    /// suffixed `id` is what the series carry.
    #[serde(skip)]
    pub id_suffixed: bool,
}

// `Clone` by hand for `clone_from`: each tick's snapshot copies every VM's
// stats into the vector of a snapshot no reader holds any more
// (`pipeline::follow::published`), and a derived `clone_from` allocates
// each string and vector anew (about five allocations per VM per tick).
impl Clone for NetStats {
    fn clone(&self) -> Self {
        NetStats {
            interface: self.interface.clone(),
            ..*self
        }
    }

    fn clone_from(&mut self, src: &Self) {
        // The counters are `Copy` (a field that is not would not compile
        // here): only the name has an allocation to keep.
        let interface = std::mem::take(&mut self.interface);
        *self = NetStats { interface, ..*src };
        self.interface.clone_from(&src.interface);
    }
}

/// `to` made a copy of `from`, keeping the elements (and their strings)
/// it has. Grown to exactly `from.len()` when it must grow: `Vec`'s own
/// `clone_from` and `extend` give a first allocation room for at least 4
/// elements, and most VMs have one TAP: a `NetStats` is 88 bytes, so each
/// VM's network took 352, in each of the three copies of every VM the
/// agent holds between ticks (the followed VMs, the snapshot being
/// served and the one kept for reuse): 7.9 MB at 10 000 VMs.
pub fn clone_vec_exact<T: Clone>(to: &mut Vec<T>, from: &[T]) {
    to.truncate(from.len());
    if to.capacity() < from.len() {
        to.reserve_exact(from.len() - to.len());
    }
    let (same, rest) = from.split_at(to.len());
    to.clone_from_slice(same);
    to.extend_from_slice(rest);
}

/// `to.clone_from(from)` without touching the counts when both are the
/// same `Arc` already (a steady VM's owner, a device answer not renewed):
/// those counters live in memory shared with other threads and are cold.
fn clone_arc_from<T>(to: &mut Option<Arc<T>>, from: &Option<Arc<T>>) {
    match (&*to, from) {
        (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
        _ => to.clone_from(from),
    }
}

impl Clone for VmStats {
    fn clone(&self) -> Self {
        let mut v = VmStats::unmeasured(self.pid, self.source);
        v.clone_from(self);
        v
    }

    fn clone_from(&mut self, src: &Self) {
        // Destructured so that a new field cannot be forgotten here.
        let VmStats {
            id,
            name,
            hypervisor,
            source,
            pid,
            uuid,
            state,
            start_time_seconds,
            owner,
            owner_source,
            flavor,
            display_name,
            allocated_vcpus,
            allocated_memory_bytes,
            cpu,
            vcpus,
            memory_rss_bytes,
            memory_virtual_bytes,
            memory_utilization_ratio,
            network,
            disk,
            devices,
            rates,
            collect_success,
            collect_age_seconds,
            id_suffixed,
        } = src;
        self.id.clone_from(id);
        self.name.clone_from(name);
        self.hypervisor = *hypervisor;
        self.source = *source;
        self.pid = *pid;
        self.uuid.clone_from(uuid);
        self.state = *state;
        self.start_time_seconds = *start_time_seconds;
        clone_arc_from(&mut self.owner, owner);
        self.owner_source = *owner_source;
        self.flavor.clone_from(flavor);
        self.display_name.clone_from(display_name);
        self.allocated_vcpus = *allocated_vcpus;
        self.allocated_memory_bytes = *allocated_memory_bytes;
        self.cpu = *cpu;
        clone_vec_exact(&mut self.vcpus, vcpus);
        self.memory_rss_bytes = *memory_rss_bytes;
        self.memory_virtual_bytes = *memory_virtual_bytes;
        self.memory_utilization_ratio = *memory_utilization_ratio;
        clone_vec_exact(&mut self.network, network);
        self.disk = *disk;
        clone_arc_from(&mut self.devices, devices);
        self.rates = *rates;
        self.collect_success = *collect_success;
        self.collect_age_seconds = *collect_age_seconds;
        self.id_suffixed = *id_suffixed;
    }
}

impl VmStats {
    /// A VM known only by its hypervisor process: no identity, nothing
    /// measured or attributed yet. A new collector entry starts from this;
    /// tests fill in the fields they care about.
    pub fn unmeasured(pid: u32, source: Source) -> Self {
        VmStats {
            id: String::new(),
            name: String::new(),
            hypervisor: Hypervisor::Qemu,
            source,
            pid,
            uuid: None,
            state: VmState::Unknown,
            start_time_seconds: 0.0,
            owner: None,
            owner_source: None,
            flavor: None,
            display_name: None,
            allocated_vcpus: None,
            allocated_memory_bytes: None,
            cpu: CpuSeconds::default(),
            vcpus: Vec::new(),
            memory_rss_bytes: 0,
            memory_virtual_bytes: 0,
            memory_utilization_ratio: None,
            network: Vec::new(),
            disk: None,
            devices: None,
            rates: None,
            collect_success: false,
            collect_age_seconds: 0.0,
            id_suffixed: false,
        }
    }

    /// The id this VM's process claims, without the `-pid<pid>` that
    /// keeps series unique while another process claims it too: the id a
    /// record that outlives the overlap (the usage ledger, which tells
    /// processes apart by incarnation) is kept under. `qemu -daemonize`'s
    /// first process and an incoming migration overlap their VM's process
    /// briefly; keyed by `id`, the ledger billed the whole life of the
    /// newer process to `<uuid>-pid<N>` once a tick saw them together.
    pub fn claimed_id(&self) -> &str {
        if !self.id_suffixed {
            // Every VM of every snapshot, twice: no search unless marked.
            return &self.id;
        }
        match self.id.rfind("-pid") {
            Some(at) => &self.id[..at],
            None => &self.id,
        }
    }

    pub fn network_totals(&self) -> (u64, u64) {
        self.network.iter().fold((0, 0), |(rx, tx), n| {
            (rx.saturating_add(n.rx_bytes), tx.saturating_add(n.tx_bytes))
        })
    }
}

/// Space on one real (non-pseudo) filesystem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilesystemStats {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub size_bytes: u64,
    /// Free for root.
    pub free_bytes: u64,
    /// Free for unprivileged users.
    pub avail_bytes: u64,
}

/// The host itself: just what the watchdog and the VMs-per-host picture need.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Online CPUs.
    pub cpus: u32,
    /// Share of all CPUs busy over the last interval (absent on the first tick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ratio: Option<f64>,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub memory_used_ratio: f64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub filesystems: Vec<FilesystemStats>,
}

/// How one collector did on this tick, plus its running error counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectorStatus {
    pub name: &'static str,
    pub duration_seconds: f64,
    pub success: bool,
    /// Cumulative errors by kind since start (`gone`, `io`, `parse`, `timeout`).
    pub errors_total: Vec<(&'static str, u64)>,
}

/// One tick's worth of everything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Increases by one per tick; 0 is the empty snapshot before the first tick.
    pub seq: u64,
    #[serde(serialize_with = "ser_unix")]
    pub collected_at: SystemTime,
    /// Collection interval.
    #[serde(serialize_with = "ser_secs")]
    pub interval: Duration,
    /// Wall time the whole tick took.
    pub tick_duration_seconds: f64,
    pub host: HostStats,
    /// Sorted by `id`; ids are unique.
    pub vms: Vec<VmStats>,
    pub collectors: Vec<CollectorStatus>,
    /// VMs found per source this tick.
    pub discovered: Vec<(Source, usize)>,
    /// How discovery worked (events or listing) and its listing counts.
    #[serde(skip)]
    pub discovery: DiscoveryStats,
    /// Identity strings cut to [`MAX_LABEL_VALUE_BYTES`] since start.
    #[serde(skip)]
    pub label_values_truncated_total: u64,
    /// What `vms` add up to per owner and by state ([`usage::Usage::of`]
    /// over `vms`, on the collector thread): what the per-owner gauges and
    /// `/api/v1/owners` read.
    #[serde(skip)]
    pub usage: usage::Usage,
    /// The usage ledger's counter totals, as its last flush committed them
    /// (`None`: no ledger); see [`counters`].
    #[serde(skip)]
    pub counters: Option<std::sync::Arc<counters::CounterTotals>>,
    /// The hypervisor processes (PID, start time in clock ticks since
    /// boot) that this tick found gone: the collection stopped following
    /// them, so the usage ledger can let go of their cursors once their
    /// last rows are written, rather than keep them for `forget_after`.
    #[serde(skip)]
    pub departed: Vec<(u32, u64)>,
}

impl Snapshot {
    /// The placeholder published before the first tick completes.
    pub fn empty(interval: Duration) -> Self {
        Snapshot {
            seq: 0,
            collected_at: UNIX_EPOCH,
            interval,
            tick_duration_seconds: 0.0,
            host: HostStats::default(),
            vms: Vec::new(),
            collectors: Vec::new(),
            discovered: Vec::new(),
            discovery: DiscoveryStats::default(),
            label_values_truncated_total: 0,
            usage: usage::Usage::default(),
            counters: None,
            departed: Vec::new(),
        }
    }

    /// Sums `vms` again into [`Snapshot::usage`] (for snapshots built or
    /// changed by hand: tests, benches).
    pub fn with_usage(mut self, max_owners: usize) -> Self {
        self.usage = usage::Usage::of(&self.vms, max_owners);
        self
    }

    pub fn vm(&self, id: &str) -> Option<&VmStats> {
        self.vms
            .binary_search_by(|v| v.id.as_str().cmp(id))
            .ok()
            .and_then(|i| self.vms.get(i))
    }

    pub fn collected_at_unix(&self) -> f64 {
        unix_seconds(self.collected_at)
    }
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ser_unix<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A duration as a humantime string (`"30s"`, `"5m"`, `"1h 30m"`, `"500ms"`):
/// the one duration style of the configuration.
pub fn de_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?}: {e} (write e.g. \"5s\", \"500ms\", \"2m\")"
        ))
    })
}

#[cfg(test)]
mod label_cap_tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let mut short = "web-1".to_owned();
        assert!(!cap_label_value(&mut short));
        assert_eq!(short, "web-1");
        let mut exact = "x".repeat(MAX_LABEL_VALUE_BYTES);
        assert!(!cap_label_value(&mut exact));
        // 'é' is 2 bytes: 255 ASCII bytes then 'é' would end at byte 257.
        let mut s = format!(
            "{}é{}",
            "x".repeat(MAX_LABEL_VALUE_BYTES - 1),
            "y".repeat(99_000)
        );
        assert!(cap_label_value(&mut s));
        assert_eq!(s.len(), MAX_LABEL_VALUE_BYTES - 1);
        assert!(s.chars().all(|c| c == 'x'));
    }
}

#[cfg(test)]
mod claimed_id_tests {
    use super::*;

    /// Only dedup's own suffix comes off: a VM whose name merely looks
    /// like one keeps it.
    #[test]
    fn only_a_marked_suffix_comes_off() {
        let mut v = VmStats::unmeasured(7, Source::Process);
        v.id = "web-pid7".into();
        assert_eq!(v.claimed_id(), "web-pid7");
        let mut both = vec![
            VmStats {
                id: "u".into(),
                start_time_seconds: 1.0,
                ..VmStats::unmeasured(3, Source::Process)
            },
            VmStats {
                id: "u".into(),
                start_time_seconds: 2.0,
                ..VmStats::unmeasured(7, Source::Process)
            },
        ];
        crate::pipeline::dedup::dedupe_ids(&mut both);
        let ids: Vec<(&str, &str)> = both
            .iter()
            .map(|v| (v.id.as_str(), v.claimed_id()))
            .collect();
        assert_eq!(ids, [("u", "u"), ("u-pid7", "u")]);
    }
}

#[cfg(test)]
mod clone_tests {
    use super::*;

    #[test]
    fn clone_vec_exact_copies_into_what_it_has_and_grows_to_the_length() {
        let name = |s: &str| NetStats {
            interface: s.into(),
            ..NetStats::default()
        };
        let mut to: Vec<NetStats> = Vec::new();
        clone_vec_exact(&mut to, &[name("tap0")]);
        assert_eq!(to, [name("tap0")]);
        assert_eq!(to.capacity(), 1, "not Vec's first growth of 4");
        // Longer: grows to exactly the new length, the kept element's
        // string buffer reused.
        to[0].interface.reserve(64);
        let buf = to[0].interface.as_ptr();
        clone_vec_exact(&mut to, &[name("tap1"), name("tap2"), name("tap3")]);
        assert_eq!(to, [name("tap1"), name("tap2"), name("tap3")]);
        assert_eq!(to.capacity(), 3);
        assert_eq!(to[0].interface.as_ptr(), buf);
        // Shorter: truncated, the buffer kept for the next.
        clone_vec_exact(&mut to, &[name("x")]);
        assert_eq!(to, [name("x")]);
        assert_eq!(to.capacity(), 3);
        clone_vec_exact(&mut to, &[]);
        assert!(to.is_empty());
    }
}
