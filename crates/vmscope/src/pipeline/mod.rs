//! The tick: discovery, then every collector, then one immutable snapshot.
//!
//! [`Collector::tick`] is synchronous and does blocking file IO; the server
//! runs it on a dedicated thread ([`spawn`]) and publishes each snapshot on a
//! `tokio::sync::watch` channel, so HTTP handlers never wait for /proc.
//!
//! Every VM is followed across ticks in a [`VmEntry`] keyed by (pid, process
//! start time); its identity and command line are read once, and only the
//! files that change (stat, schedstat, io, net/dev) are read again. A VM
//! whose read fails keeps its last good values, marked with their age; a VM
//! whose process is gone is dropped from the very next snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::collectors::{Ctx, HOST_COLLECTORS, HostCollector, VM_COLLECTORS, VmCollector, VmEntry};
use crate::config::Config;
use crate::discovery::{DiscoveredVm, Discovery, DiscoveryOptions, ProcVm};
use crate::host::{Clock, CollectError, FdBudget, ProcFile, Roots, read_once};
use vmscope_proc::LibvirtDomain;

type AppliedIdentity = (Option<Arc<ProcVm>>, Option<Arc<LibvirtDomain>>);
use crate::model::{
    CollectorStatus, HostStats, Hypervisor, Owner, Snapshot, Source, VmRates, VmState, VmStats,
    unix_seconds,
};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read the boot time from {path}")]
    BootTime { path: String },
    #[error("{} is not a readable procfs", .0)]
    NoProc(String),
}

/// Error counts and timing of one collector, kept across ticks.
#[derive(Debug, Default, Clone)]
struct Counters {
    errors: Vec<(&'static str, u64)>,
    last_warn: Option<Instant>,
}

impl Counters {
    fn count(&mut self, kind: &'static str) {
        match self.errors.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((kind, 1)),
        }
    }

    /// Counts `errors`; logs the first real one at most once a minute per
    /// collector (a stuck VM would otherwise log every tick).
    fn absorb(&mut self, name: &'static str, errors: &[CollectError], now: Instant) -> bool {
        let mut ok = true;
        for e in errors {
            self.count(e.kind());
            if matches!(e, CollectError::Gone { .. }) {
                continue;
            }
            ok = false;
            if self
                .last_warn
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60))
            {
                self.last_warn = Some(now);
                tracing::warn!(collector = name, error = %ErrorChain(e), "collection error (further ones this minute are only counted)");
            } else {
                tracing::debug!(collector = name, error = %ErrorChain(e), "collection error");
            }
        }
        ok
    }

    fn status(&self, name: &'static str, duration: Duration, success: bool) -> CollectorStatus {
        CollectorStatus {
            name,
            duration_seconds: duration.as_secs_f64(),
            success,
            errors_total: self.errors.clone(),
        }
    }
}

/// Prints an error with its sources: `reading /proc/1/stat: No such file`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

/// A previous sample, for rates.
#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    cpu: f64,
    rx: u64,
    tx: u64,
    rd: u64,
    wr: u64,
}

struct Followed {
    entry: VmEntry,
    prev: Option<RateSample>,
    /// The discovery records the identity was last built from. Discovery
    /// hands out the same `Arc`s until something changes (a libvirt status
    /// file is rewritten), so identity is rebuilt only then, not every tick.
    applied: AppliedIdentity,
}

fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

pub struct Collector {
    roots: Roots,
    interval: Duration,
    discovery: Discovery,
    discovery_counters: Counters,
    vm_collectors: Vec<(&'static str, Box<dyn VmCollector>, Counters)>,
    host_collectors: Vec<(&'static str, Box<dyn HostCollector>, Counters)>,
    vms: Vec<Followed>,
    host: HostStats,
    tick: u64,
    ticks_per_second: u64,
    boot_time: u64,
    page_size: u64,
    budget: FdBudget,
    buf: Vec<u8>,
}

/// Reads `btime` from /proc/stat.
pub fn boot_time(roots: &Roots) -> Result<u64, InitError> {
    let path = roots.proc.join("stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| InitError::NoProc(roots.proc.display().to_string()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        .ok_or(InitError::BootTime {
            path: path.display().to_string(),
        })
}

impl Collector {
    pub fn new(cfg: &Config) -> Result<Self, InitError> {
        Self::with_budget(cfg, FdBudget::from_rlimit())
    }

    pub fn with_budget(cfg: &Config, budget: FdBudget) -> Result<Self, InitError> {
        let roots = cfg.roots();
        let boot = boot_time(&roots)?;
        let discovery = Discovery::new(
            &roots,
            DiscoveryOptions {
                process: cfg.discovery.process,
                libvirt: cfg.discovery.libvirt,
                rescan: Duration::from_secs_f64(cfg.discovery.rescan_secs),
            },
        );
        // A hung mount may cost at most half a tick.
        let mut c = cfg.collectors.clone();
        c.filesystem.timeout_secs = c.filesystem.timeout_secs.min(cfg.interval_secs / 2.0);
        let c = &c;
        let vm_collectors = VM_COLLECTORS
            .iter()
            .filter(|s| (s.enabled)(c))
            .map(|s| (s.name, (s.new)(c), Counters::default()))
            .collect();
        let host_collectors = HOST_COLLECTORS
            .iter()
            .filter(|s| (s.enabled)(c))
            .map(|s| (s.name, (s.new)(c), Counters::default()))
            .collect();
        let hostname = std::fs::read_to_string(roots.proc.join("sys/kernel/hostname"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Ok(Collector {
            interval: cfg.interval(),
            discovery,
            discovery_counters: Counters::default(),
            vm_collectors,
            host_collectors,
            vms: Vec::new(),
            host: HostStats {
                hostname,
                ..HostStats::default()
            },
            tick: 0,
            ticks_per_second: rustix::param::clock_ticks_per_second(),
            boot_time: boot,
            page_size: rustix::param::page_size() as u64,
            budget,
            buf: Vec::new(),
            roots,
        })
    }

    /// Number of VMs followed right now.
    pub fn followed(&self) -> usize {
        self.vms.len()
    }

    /// Runs one collection and returns its snapshot.
    pub fn tick(&mut self) -> Snapshot {
        let started = Instant::now();
        let wall = SystemTime::now();
        self.tick += 1;
        let clock = Clock {
            ticks_per_second: self.ticks_per_second,
            boot_time: self.boot_time,
            now: unix_seconds(wall),
        };
        let mut statuses =
            Vec::with_capacity(1 + self.vm_collectors.len() + self.host_collectors.len());

        // Discovery.
        let t0 = Instant::now();
        let found = self.discovery.discover(&self.roots, &clock, started);
        let ok = self
            .discovery_counters
            .absorb("discovery", &found.errors, started);
        statuses.push(
            self.discovery_counters
                .status("discovery", t0.elapsed(), ok),
        );
        let mut discovered_per_source: Vec<(Source, usize)> =
            Source::ALL.iter().map(|s| (*s, 0)).collect();
        for d in &found.vms {
            if let Some(slot) = discovered_per_source
                .iter_mut()
                .find(|(s, _)| *s == d.source)
            {
                slot.1 += 1;
            }
        }
        self.reconcile(found.vms, &clock);

        // VM collectors.
        let ctx = Ctx {
            roots: &self.roots,
            clock,
            page_size: self.page_size,
            budget: &self.budget,
            tick: self.tick,
            now: started,
        };
        let mut entries: Vec<VmEntry> = Vec::new();
        let mut prevs: Vec<(Option<RateSample>, AppliedIdentity)> = Vec::new();
        for f in self.vms.drain(..) {
            let mut e = f.entry;
            e.gone = false;
            e.failed = false;
            entries.push(e);
            prevs.push((f.prev, f.applied));
        }
        let mut errors = Vec::new();
        for (name, c, counters) in self.vm_collectors.iter_mut() {
            let t = Instant::now();
            errors.clear();
            c.collect(&ctx, &mut entries, &mut errors);
            let ok = counters.absorb(name, &errors, started);
            statuses.push(counters.status(name, t.elapsed(), ok));
        }

        // Host collectors.
        for (name, c, counters) in self.host_collectors.iter_mut() {
            let t = Instant::now();
            let res = c.collect(&ctx, &mut self.host);
            let errs: Vec<CollectError> = res.err().into_iter().collect();
            let ok = counters.absorb(name, &errs, started);
            statuses.push(counters.status(name, t.elapsed(), ok));
        }

        // Finish VMs: drop the gone, date the rest, compute rates.
        let mut vms = Vec::with_capacity(entries.len());
        for (mut e, (prev, applied)) in entries.into_iter().zip(prevs) {
            if e.gone {
                self.discovery.forget(e.pid);
                continue;
            }
            let mut prev = prev;
            if !e.failed {
                e.last_success = Some(started);
                let cur = rate_sample(&e.stats, started);
                e.stats.rates = prev.and_then(|p| rates(&p, &cur, e.stats.allocated_vcpus));
                prev = Some(cur);
            }
            e.stats.collect_success = !e.failed;
            e.stats.collect_age_seconds = e
                .last_success
                .map(|t| started.saturating_duration_since(t).as_secs_f64())
                .unwrap_or(0.0);
            self.vms.push(Followed {
                entry: e,
                prev,
                applied,
            });
        }
        for f in &self.vms {
            // A VM never read successfully has no values worth publishing.
            if f.entry.last_success.is_some() {
                vms.push(f.entry.stats.clone());
            }
        }
        dedupe_ids(&mut vms);

        Snapshot {
            seq: self.tick,
            collected_at: wall,
            interval: self.interval,
            tick_duration_seconds: started.elapsed().as_secs_f64(),
            host: self.host.clone(),
            vms,
            collectors: statuses,
            discovered: discovered_per_source,
        }
    }

    /// Follows new VMs, forgets vanished ones, refreshes identities.
    fn reconcile(&mut self, found: Vec<DiscoveredVm>, clock: &Clock) {
        let mut by_pid: HashMap<u32, DiscoveredVm> =
            found.into_iter().map(|d| (d.pid, d)).collect();
        let mut kept = Vec::with_capacity(by_pid.len());
        for mut f in self.vms.drain(..) {
            let Some(d) = by_pid.remove(&f.entry.pid) else {
                continue;
            };
            let same_process = d
                .process
                .as_ref()
                .is_none_or(|p| p.starttime_ticks == f.entry.starttime_ticks);
            if !same_process {
                by_pid.insert(d.pid, d);
                continue;
            }
            if !(same_arc(&f.applied.0, &d.process) && same_arc(&f.applied.1, &d.libvirt)) {
                apply_identity(&mut f.entry, &d);
                f.applied = (d.process.clone(), d.libvirt.clone());
            }
            kept.push(f);
        }
        self.vms = kept;
        let mut new: Vec<DiscoveredVm> = by_pid.into_values().collect();
        new.sort_by_key(|d| d.pid);
        for d in new {
            if let Some(entry) = self.new_entry(&d, clock) {
                self.vms.push(Followed {
                    entry,
                    prev: None,
                    applied: (d.process.clone(), d.libvirt.clone()),
                });
            }
        }
    }

    fn new_entry(&mut self, d: &DiscoveredVm, clock: &Clock) -> Option<VmEntry> {
        let dir = self.roots.pid(d.pid);
        let starttime = match &d.process {
            Some(p) => p.starttime_ticks,
            None => {
                read_once(&dir.join("stat"), &mut self.buf).ok()?;
                vmscope_proc::parse_stat(&self.buf).ok()?.starttime_ticks
            }
        };
        let netns = std::fs::read_link(dir.join("ns").join("net"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let mut entry = VmEntry {
            pid: d.pid,
            starttime_ticks: starttime,
            stats: VmStats {
                start_time_seconds: clock.start_time(starttime),
                ..VmStats::unmeasured(d.pid, d.source)
            },
            taps: Vec::new(),
            known_vcpu_tids: Vec::new(),
            stat_file: ProcFile::new(dir.join("stat"), &self.budget),
            io_file: ProcFile::new(dir.join("io"), &self.budget),
            io_denied: false,
            vcpus: Vec::new(),
            vcpu_rescan_due: true,
            vcpu_rescan_tick: 0,
            num_threads: 0,
            netns,
            gone: false,
            failed: false,
            last_success: None,
        };
        apply_identity(&mut entry, d);
        Some(entry)
    }
}

fn hypervisor(kind: vmscope_proc::HypervisorKind) -> Hypervisor {
    match kind {
        vmscope_proc::HypervisorKind::Qemu => Hypervisor::Qemu,
        vmscope_proc::HypervisorKind::CloudHypervisor => Hypervisor::CloudHypervisor,
        vmscope_proc::HypervisorKind::Firecracker => Hypervisor::Firecracker,
    }
}

fn libvirt_state(state: Option<&str>) -> VmState {
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
/// the command line, which fills the gaps.
fn apply_identity(e: &mut VmEntry, d: &DiscoveredVm) {
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
        if let Some(n) = &l.nova {
            let owner = Owner {
                user_id: n.user_id.clone(),
                user_name: n.user_name.clone(),
                project_id: n.project_id.clone(),
                project_name: n.project_name.clone(),
            };
            s.owner = (owner != Owner::default()).then_some(owner);
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
    e.taps = taps;
}

fn rate_sample(s: &VmStats, at: Instant) -> RateSample {
    let (rx, tx) = s.network_totals();
    let disk = s.disk.unwrap_or_default();
    RateSample {
        at,
        cpu: s.cpu.total(),
        rx,
        tx,
        rd: disk.read_bytes,
        wr: disk.write_bytes,
    }
}

fn rates(prev: &RateSample, cur: &RateSample, vcpus: Option<u32>) -> Option<VmRates> {
    let window = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    if window <= 0.0 {
        return None;
    }
    // A counter that went backwards (TAP re-created) gives 0, not a spike.
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / window;
    let cpu_cores = ((cur.cpu - prev.cpu) / window).max(0.0);
    Some(VmRates {
        window_seconds: window,
        cpu_cores,
        cpu_utilization_ratio: vcpus.filter(|v| *v > 0).map(|v| cpu_cores / v as f64),
        network_rx_bytes_per_second: per_s(prev.rx, cur.rx),
        network_tx_bytes_per_second: per_s(prev.tx, cur.tx),
        disk_read_bytes_per_second: per_s(prev.rd, cur.rd),
        disk_write_bytes_per_second: per_s(prev.wr, cur.wr),
    })
}

/// Sorts by id and makes ids unique. Two processes can claim one UUID (an
/// incoming live migration on the same host): the older keeps the id, the
/// other gets `-pidN` appended, so no series is ever duplicated.
fn dedupe_ids(vms: &mut [VmStats]) {
    vms.sort_by(|a, b| {
        a.id.cmp(&b.id)
            .then(a.start_time_seconds.total_cmp(&b.start_time_seconds))
            .then(a.pid.cmp(&b.pid))
    });
    let mut prev: Option<String> = None;
    for v in vms.iter_mut() {
        if prev.as_deref() == Some(v.id.as_str()) {
            v.id = format!("{}-pid{}", v.id, v.pid);
        } else {
            prev = Some(v.id.clone());
        }
    }
    vms.sort_by(|a, b| a.id.cmp(&b.id));
}

/// Runs the collector on its own thread every `interval`, publishing each
/// snapshot. Returns the receiving side; the thread stops when every
/// receiver is dropped.
pub fn spawn(
    mut collector: Collector,
    interval: Duration,
) -> std::io::Result<watch::Receiver<Arc<Snapshot>>> {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(interval)));
    std::thread::Builder::new()
        .name("vmscope-collect".into())
        .spawn(move || {
            let mut next = Instant::now();
            loop {
                let snap = collector.tick();
                tracing::debug!(
                    seq = snap.seq,
                    vms = snap.vms.len(),
                    secs = snap.tick_duration_seconds,
                    "tick"
                );
                if tx.send(Arc::new(snap)).is_err() {
                    return;
                }
                next += interval;
                let now = Instant::now();
                if next <= now {
                    // Fell behind (a slow tick): skip missed ticks rather than burst.
                    next = now + interval;
                }
                std::thread::sleep(next.saturating_duration_since(now));
            }
        })?;
    Ok(rx)
}
