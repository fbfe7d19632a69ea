//! The tick: discovery, then every collector, then one immutable snapshot.
//!
//! [`Collector::tick`] is synchronous and does blocking file IO; the server
//! runs it on a dedicated thread ([`spawn`]) and publishes each snapshot on a
//! `tokio::sync::watch` channel, so HTTP handlers never wait for /proc.
//!
//! One tick, in order, each step in its own file:
//! - discovery says which VMs exist; [`follow`] sets that against the VMs
//!   followed so far, keyed by (pid, process start time): kept, left, new;
//! - [`identity`] builds who a new (or re-described) VM is;
//! - the collectors run over all followed VMs, each wrapped by [`health`]
//!   (timed, errors counted by kind, warnings rate-limited); a collector
//!   keeps its own per-VM state (held descriptors, thread lists) and is
//!   told, through `forget`, which VMs left;
//! - [`follow::settle`] drops the VMs found gone, dates the rest (a VM whose
//!   read failed keeps its last good values, marked with their age) and
//!   [`rates`] turns two samples into per-second rates;
//! - [`dedup`] makes VM ids unique, and the snapshot is built.
//!
//! Reads: `/proc/stat` (`btime`) and the hostname once at start; per tick,
//! only what discovery and the collectors read. Fails only at start
//! ([`InitError`]: no readable procfs); after that a tick always yields a
//! snapshot and failures show in it.

pub mod dedup;
pub mod follow;
pub mod health;
pub mod identity;
pub mod rates;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::collectors::{Ctx, HOST_COLLECTORS, HostCollector, VM_COLLECTORS, VmCollector, VmKey};
use crate::config::Config;
use crate::discovery::{DiscoveredVm, Discovery, DiscoveryOptions};
use crate::host::{Clock, CollectError, FdBudget, Roots, read_once};
use crate::model::counters::CounterSlot;
use crate::model::usage::Usage;
use crate::model::{HostStats, Snapshot, Source, VmStats, unix_seconds};
use follow::Followed;
use health::Counters;

/// Kept here for the modules that still name it so; new code imports
/// [`crate::error::ErrorChain`].
pub use crate::error::ErrorChain;

/// How many VMs the per-VM collectors (`vm_process`, `vm_vcpu`, `vm_io`)
/// take at a time: each reads all of its files for these VMs before any
/// collector moves on to the next ones. Reading one process's files back to
/// back finds the kernel's structures for it (task, signal, mm, creds,
/// proc inodes) still in the CPU's caches; one collector over every VM and
/// then the next, as before, walks them all again from memory. The floor
/// program read its files in each order at 1000 VMs, same lab: 11.2-11.5 ms
/// VM by VM, 12.4-13.1 ms file kind by file kind, 11.8-11.9 ms kind by kind
/// in groups of 16 VMs. 16 VMs' worth of those structures fit in a core's
/// L2 cache, and the collectors' calls and timings are paid once per 16.
/// Only collectors at the head of `VM_COLLECTORS` take turns this way; a
/// `per_vm` one listed after a batch one would run over the whole batch.
pub const VM_CHUNK: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read the boot time from {path}")]
    BootTime { path: String },
    #[error("{} is not a readable procfs", .0)]
    NoProc(String),
}

pub struct Collector {
    roots: Roots,
    interval: Duration,
    discovery: Discovery,
    discovery_counters: Counters,
    /// Name, `per_vm` (see [`VM_CHUNK`]), the collector, its counts.
    vm_collectors: Vec<(&'static str, bool, Box<dyn VmCollector>, Counters)>,
    /// [`VM_CHUNK`] (smaller in tests).
    vm_chunk: usize,
    host_collectors: Vec<(&'static str, Box<dyn HostCollector>, Counters)>,
    /// The VMs followed: entries and memos, kept from tick to tick.
    vms: Followed,
    host: HostStats,
    tick: u64,
    ticks_per_second: u64,
    boot_time: u64,
    page_size: u64,
    budget: FdBudget,
    buf: Vec<u8>,
    owners: crate::owners::Owners,
    /// `[owners] max_owners`: owners of a kind with series of their own.
    max_owners: usize,
    /// Identity strings cut to MAX_LABEL_VALUE_BYTES since start.
    label_values_truncated: u64,
    /// Where the usage ledger publishes its counter totals (`None`: no
    /// ledger), carried into each snapshot.
    counters: Option<CounterSlot>,
    /// VMs the discovery no longer lists this tick (for `Snapshot::departed`).
    left: Vec<(u32, u64)>,
    /// The VMs of a snapshot no one reads any more ([`Collector::recycle`]),
    /// reused by the next tick's.
    spare: Vec<VmStats>,
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

/// How many VMs each discovery source found (every source listed, even at 0).
fn discovered_per_source(vms: &[DiscoveredVm]) -> Vec<(Source, usize)> {
    let mut per_source: Vec<(Source, usize)> = Source::ALL.iter().map(|s| (*s, 0)).collect();
    for d in vms {
        if let Some(slot) = per_source.iter_mut().find(|(s, _)| *s == d.source) {
            slot.1 += 1;
        }
    }
    per_source
}

impl Collector {
    pub fn new(cfg: &Config) -> Result<Self, InitError> {
        Self::with_budget(cfg, FdBudget::from_rlimit(cfg.http.fd_reserve()))
    }

    pub fn with_budget(cfg: &Config, budget: FdBudget) -> Result<Self, InitError> {
        let roots = cfg.roots();
        let boot = boot_time(&roots)?;
        let discovery = Discovery::new(
            &roots,
            DiscoveryOptions {
                process: cfg.discovery.process,
                libvirt: cfg.discovery.libvirt,
                rescan: cfg.discovery.rescan,
                process_events: cfg.discovery.process_events == crate::config::ProcessEvents::Auto,
                keep_command_line: cfg.owners.cmdline.reads_command_lines(),
            },
        );
        // A hung mount may cost at most half a tick.
        let mut c = cfg.collectors.clone();
        c.host_filesystem.timeout = c.host_filesystem.timeout.min(cfg.interval / 2);
        // Nor may a poll of a hypervisor API outlast half a tick (it runs
        // off the tick; this keeps its figures at most one interval old).
        c.vm_devices.timeout = c.vm_devices.timeout.min(cfg.interval / 2);
        let c = &c;
        let vm_collectors = VM_COLLECTORS
            .iter()
            .filter(|s| (s.enabled)(c))
            .map(|s| (s.name, s.per_vm, (s.new)(c), Counters::default()))
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
        // Sources that check a platform's PID read the configured procfs.
        let owners = crate::owners::Owners::start(&crate::owners::OwnersConfig {
            proc_root: roots.proc.clone(),
            ..cfg.owners.clone()
        });
        Ok(Collector {
            interval: cfg.interval(),
            discovery,
            discovery_counters: Counters::default(),
            vm_collectors,
            vm_chunk: VM_CHUNK,
            host_collectors,
            vms: Followed::default(),
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
            owners,
            max_owners: cfg.owners.max_owners,
            label_values_truncated: 0,
            counters: None,
            left: Vec::new(),
            spare: Vec::new(),
        })
    }

    /// The owner sources' self-metrics (`vmscope_owner_source_*`), for the
    /// metric-source list; take it before the collector moves to its thread.
    pub fn owner_metrics(&self) -> crate::owners::OwnerSourceMetrics {
        self.owners.metrics()
    }

    /// Carry the usage ledger's counter totals published in `slot` into
    /// every snapshot from now on.
    pub fn attach_counters(&mut self, slot: CounterSlot) {
        self.counters = Some(slot);
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
        let discovered = discovered_per_source(&found.vms);
        self.follow(found.vms, &clock);
        self.vms.sort_by_id();
        // Owners (owners/): one resolve step over discovery's records and
        // the owner sources' latest maps.
        self.label_values_truncated += self.owners.resolve(
            self.vms
                .entries
                .iter_mut()
                .zip(&self.vms.memos)
                .map(|(e, m)| (&mut e.stats, &m.applied)),
        );

        // VM collectors.
        let ctx = Ctx {
            roots: &self.roots,
            clock,
            page_size: self.page_size,
            budget: &self.budget,
            tick: self.tick,
            now: started,
        };
        follow::begin(&mut self.vms);
        let entries = &mut self.vms.entries;
        // The leading per-VM collectors, a few VMs at a time (VM_CHUNK).
        let lead = self.vm_collectors.iter().take_while(|c| c.1).count();
        let mut spent = vec![Duration::ZERO; lead];
        let mut errs: Vec<Vec<CollectError>> = (0..lead).map(|_| Vec::new()).collect();
        for chunk in entries.chunks_mut(self.vm_chunk.max(1)) {
            for (i, (_, _, c, _)) in self.vm_collectors[..lead].iter_mut().enumerate() {
                let t = Instant::now();
                c.collect(&ctx, chunk, &mut errs[i]);
                spent[i] += t.elapsed();
            }
        }
        for (i, (name, _, _, counters)) in self.vm_collectors[..lead].iter_mut().enumerate() {
            let ok = counters.absorb(name, &errs[i], started);
            statuses.push(counters.status(name, spent[i], ok));
        }
        // The rest over the whole batch (vm_net: one net/dev per namespace).
        let mut errors = Vec::new();
        for (name, _, c, counters) in self.vm_collectors[lead..].iter_mut() {
            let t = Instant::now();
            errors.clear();
            c.collect(&ctx, entries, &mut errors);
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
        let gone = follow::settle(&mut self.vms, started);
        for key in &gone {
            self.discovery.forget(key.pid);
            self.forget(*key);
        }
        let mut departed = std::mem::take(&mut self.left);
        departed.extend(gone.iter().map(|k| (k.pid, k.starttime_ticks)));
        let mut vms = follow::published(&self.vms, std::mem::take(&mut self.spare));
        dedup::dedupe_ids(&mut vms);
        // Per-owner totals here, once per tick, so that a scrape never sums.
        let usage = Usage::of(&vms, self.max_owners);

        Snapshot {
            seq: self.tick,
            collected_at: wall,
            interval: self.interval,
            tick_duration_seconds: started.elapsed().as_secs_f64(),
            host: self.host.clone(),
            vms,
            collectors: statuses,
            discovered,
            discovery: self.discovery.stats(),
            label_values_truncated_total: self.label_values_truncated,
            usage,
            counters: self.counters.as_ref().and_then(CounterSlot::get),
            departed,
        }
    }

    /// Follows new VMs, forgets vanished ones, refreshes identities.
    fn follow(&mut self, found: Vec<DiscoveredVm>, clock: &Clock) {
        let r = follow::reconcile(&mut self.vms, found);
        self.label_values_truncated += r.truncated;
        for key in r.left {
            self.forget(key);
            self.left.push((key.pid, key.starttime_ticks));
        }
        self.vms.room_for(self.vms.len() + r.new.len());
        for d in r.new {
            if let Some(start) = self.start_time_ticks(&d) {
                let vm = follow::new_vm(&d, start, clock, &mut self.label_values_truncated);
                self.vms.push(vm);
            }
        }
    }

    /// A new VM's process start time: from discovery's record, else from
    /// its `stat` (a libvirt domain the process scan did not report). `None`
    /// when the process is already gone: it is looked at again next tick.
    fn start_time_ticks(&mut self, d: &DiscoveredVm) -> Option<u64> {
        if let Some(p) = &d.process {
            return Some(p.starttime_ticks);
        }
        read_once(&self.roots.pid(d.pid).join("stat"), &mut self.buf).ok()?;
        Some(vmscope_proc::parse_stat(&self.buf).ok()?.starttime_ticks)
    }

    /// Takes back a snapshot no one else holds: its VMs' strings and
    /// vectors are reused by the next tick's snapshot.
    pub fn recycle(&mut self, snap: Snapshot) {
        self.spare = snap.vms;
    }

    /// A VM left: every collector drops what it kept for it.
    fn forget(&mut self, key: VmKey) {
        for (_, _, c, _) in self.vm_collectors.iter_mut() {
            c.forget(key);
        }
    }
}

/// Runs the collector on its own thread every `interval`, publishing each
/// snapshot, its phase moved toward the scrapes `pacer` predicts (see
/// [`crate::model::pace`]). Returns the receiving side; the thread stops when every
/// receiver is dropped.
pub fn spawn(
    mut collector: Collector,
    interval: Duration,
    pacer: crate::model::pace::Pacer,
) -> std::io::Result<watch::Receiver<Arc<Snapshot>>> {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(interval)));
    std::thread::Builder::new()
        .name("vmscope-collect".into())
        .spawn(move || {
            let mut next = Instant::now();
            let mut recent = crate::model::pace::RecentTicks::default();
            // The last two snapshots sent. The channel and its readers hold
            // the newest; the one before is usually free by the next tick
            // and, if no one holds it, lends its memory to the next one.
            let mut sent_before: Option<Arc<Snapshot>> = None;
            let mut sent_last: Option<Arc<Snapshot>> = None;
            loop {
                let started = Instant::now();
                pacer.set_ticking(true);
                if let Some(Ok(old)) = sent_before.take().map(Arc::try_unwrap) {
                    collector.recycle(old);
                }
                let snap = collector.tick();
                crate::export::tasks::global().succeeded(
                    crate::export::tasks::COLLECTION,
                    Duration::try_from_secs_f64(snap.tick_duration_seconds).unwrap_or_default(),
                );
                tracing::debug!(
                    seq = snap.seq,
                    vms = snap.vms.len(),
                    secs = snap.tick_duration_seconds,
                    "tick"
                );
                let snap = Arc::new(snap);
                sent_before = sent_last.replace(Arc::clone(&snap));
                let sent = tx.send(snap);
                pacer.set_ticking(false);
                if sent.is_err() {
                    return;
                }
                let now = Instant::now();
                let mut regular = next + interval;
                if regular <= now {
                    // Fell behind (a slow tick): skip missed ticks rather than burst.
                    regular = now + interval;
                }
                let slowest = recent.push(now.saturating_duration_since(started));
                let lead = crate::model::pace::lead(slowest, interval);
                next = pacer.plan(regular, now, interval, lead);
                tracing::trace!(
                    in_ms = next.saturating_duration_since(now).as_millis() as u64,
                    regular_ms = regular.saturating_duration_since(now).as_millis() as u64,
                    "next tick"
                );
                std::thread::sleep(next.saturating_duration_since(now));
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashSet;
    use std::path::Path;
    use std::sync::Mutex;

    use vmscope_proc::{HypervisorKind, LibvirtDomain};

    use super::*;
    use crate::collectors::VmEntry;

    fn found(pid: u32, source: Source) -> DiscoveredVm {
        DiscoveredVm {
            pid,
            kind: HypervisorKind::Qemu,
            source,
            process: None,
            libvirt: Some(Arc::new(LibvirtDomain::default())),
        }
    }

    #[test]
    fn discovered_counts_every_source() {
        let none = discovered_per_source(&[]);
        assert_eq!(none.len(), Source::ALL.len());
        assert!(none.iter().all(|(_, n)| *n == 0));
        let some = discovered_per_source(&[
            found(1, Source::Libvirt),
            found(2, Source::Process),
            found(3, Source::Libvirt),
        ]);
        let count = |s| some.iter().find(|(x, _)| *x == s).map(|(_, n)| *n);
        assert_eq!(count(Source::Libvirt), Some(2));
        assert_eq!(count(Source::Process), Some(1));
    }

    /// A collector that keeps a note per VM, as real ones keep files.
    #[derive(Default, Clone)]
    struct Spy(Arc<Mutex<HashSet<VmKey>>>);

    impl VmCollector for Spy {
        fn collect(&mut self, _: &Ctx<'_>, vms: &mut [VmEntry], _: &mut Vec<CollectError>) {
            let mut kept = self.0.lock().unwrap();
            kept.extend(vms.iter().map(|v| v.key()));
        }
        fn forget(&mut self, vm: VmKey) {
            assert!(self.0.lock().unwrap().remove(&vm), "{vm:?} forgotten twice");
        }
    }

    /// A collector that notes each call: its name and how many VMs it got.
    struct Log(&'static str, Arc<Mutex<Vec<(&'static str, usize)>>>);

    impl VmCollector for Log {
        fn collect(&mut self, _: &Ctx<'_>, vms: &mut [VmEntry], _: &mut Vec<CollectError>) {
            self.1.lock().unwrap().push((self.0, vms.len()));
        }
        fn forget(&mut self, _: VmKey) {}
    }

    /// A collector over the `host1` fixture tree, holding no descriptors.
    fn host1_collector() -> Collector {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host1");
        let cfg = Config {
            paths: Roots::under(&fixture).into(),
            interval: Duration::from_secs(1),
            ..Config::default()
        };
        Collector::with_budget(&cfg, FdBudget::new(0)).unwrap()
    }

    #[test]
    fn per_vm_collectors_take_turns_a_few_vms_at_a_time_and_the_rest_see_all() {
        let mut c = host1_collector();
        let log = Arc::new(Mutex::new(Vec::new()));
        c.vm_collectors.clear();
        for (name, per_vm) in [("a", true), ("b", true), ("net", false)] {
            let l = Box::new(Log(name, Arc::clone(&log)));
            c.vm_collectors.push((name, per_vm, l, Counters::default()));
        }
        c.vm_chunk = 4;
        let snap = c.tick();
        assert_eq!(c.followed(), 6);
        // a and b read all they need for four VMs before either goes on.
        assert_eq!(
            *log.lock().unwrap(),
            [("a", 4), ("b", 4), ("a", 2), ("b", 2), ("net", 6)]
        );
        let named: Vec<&str> = snap.collectors.iter().map(|s| s.name).collect();
        assert_eq!(named[..4], ["discovery", "a", "b", "net"]);
    }

    /// The tick's kept VM vectors grow to the VMs and a sixteenth, not by
    /// doubling (at 10 000 VMs doubling left 3.7 MB of empty slots).
    #[test]
    fn kept_vm_vectors_are_sized_to_the_vms_not_doubled() {
        let mut c = host1_collector();
        c.tick();
        // Six VMs found (one is dropped at its first read); pushed one by
        // one they made a capacity of 8.
        assert_eq!(c.vms.entries.capacity(), 6);
        assert_eq!(c.vms.memos.capacity(), 6);
    }

    #[test]
    fn room_for_grows_by_a_sixteenth_and_keeps_what_it_has() {
        let mut v: Vec<u64> = Vec::new();
        follow::room_for(&mut v, 1000);
        assert_eq!(v.capacity(), 1062);
        v.extend(0..1000);
        follow::room_for(&mut v, 1050);
        assert_eq!(v.capacity(), 1062, "enough already");
        v.extend(0..62);
        follow::room_for(&mut v, 1063);
        assert_eq!(v.capacity(), 1063 + 1063 / 16);
    }

    fn followed_keys(c: &Collector) -> HashSet<VmKey> {
        c.vms.entries.iter().map(|e| e.key()).collect()
    }

    #[test]
    fn collectors_forget_every_vm_that_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host1");
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(fixture)
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success());
        let cfg = Config {
            paths: Roots::under(&root).into(),
            interval: Duration::from_secs(1),
            ..Config::default()
        };
        // No held descriptors: a deleted fixture file then reads as gone.
        let mut c = Collector::with_budget(&cfg, FdBudget::new(0)).unwrap();
        let spy = Spy::default();
        c.vm_collectors
            .push(("spy", false, Box::new(spy.clone()), Counters::default()));
        c.tick();
        assert!(c.followed() >= 5);
        assert_eq!(*spy.0.lock().unwrap(), followed_keys(&c));

        // One VM exits, another's PID is reused by a new process.
        std::fs::remove_dir_all(root.join("proc/1001")).unwrap();
        let p = root.join("proc/1002/stat");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace(" 600000 ", " 600777 ")).unwrap();
        for _ in 0..3 {
            c.tick();
            assert_eq!(*spy.0.lock().unwrap(), followed_keys(&c));
        }
        let kept = spy.0.lock().unwrap();
        assert!(!kept.iter().any(|k| k.pid == 1001));
        assert!(!kept.contains(&VmKey {
            pid: 1002,
            starttime_ticks: 600_000
        }));
    }
}
