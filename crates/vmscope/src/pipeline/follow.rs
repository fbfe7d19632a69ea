//! Following VMs across ticks.
//!
//! Reads discovery's list of VMs each tick and the VMs followed so far;
//! emits which VMs are kept (their identity rebuilt only when discovery
//! handed out a new record), which left and which are new. A VM is one
//! process: the key is (pid, process start time), so a PID reused by a new
//! process is a VM that left and a new one, never the old VM continued.
//! After the collectors ran, VMs they found gone are dropped and the rest are
//! dated and given rates. No IO and no failure here; reading a new VM's
//! start time when discovery did not is the caller's job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use vmscope_proc::LibvirtDomain;

use super::health;
use super::identity::apply_identity;
use super::rates::{self, RateSample};
use crate::collectors::{VmEntry, VmKey};
use crate::discovery::{DiscoveredVm, ProcVm};
use crate::host::Clock;
use crate::model::VmStats;

/// The discovery records a VM's identity was last built from. Discovery
/// hands out the same `Arc`s until something changes (a libvirt status file
/// is rewritten), so identity is rebuilt only then, not every tick.
pub type AppliedIdentity = (Option<Arc<ProcVm>>, Option<Arc<LibvirtDomain>>);

/// What the pipeline keeps about a VM between ticks, besides its entry.
#[derive(Debug)]
pub struct Memo {
    pub prev: Option<RateSample>,
    pub applied: AppliedIdentity,
}

/// One VM being followed.
#[derive(Debug)]
pub struct Followed {
    pub entry: VmEntry,
    pub memo: Memo,
}

impl Followed {
    /// A VM seen for the first time: identity applied, nothing measured yet.
    /// `truncated` counts identity strings cut to the label-value cap.
    pub fn new(d: &DiscoveredVm, starttime_ticks: u64, clock: &Clock, truncated: &mut u64) -> Self {
        let key = VmKey {
            pid: d.pid,
            starttime_ticks,
        };
        let mut entry = VmEntry::new(
            key,
            VmStats {
                start_time_seconds: clock.start_time(starttime_ticks),
                ..VmStats::unmeasured(d.pid, d.source)
            },
        );
        *truncated += apply_identity(&mut entry, d);
        tracing::debug!(vm_id = %entry.stats.id, vm_name = %entry.stats.name, pid = d.pid, source = d.source.as_str(), "following a new VM");
        Followed {
            entry,
            memo: Memo {
                prev: None,
                applied: (d.process.clone(), d.libvirt.clone()),
            },
        }
    }
}

fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The followed VMs set against what discovery found this tick.
#[derive(Debug)]
pub struct Reconciled {
    /// Still there, in their previous order, identity up to date.
    pub kept: Vec<Followed>,
    /// No longer there (not discovered, or the PID now belongs to another
    /// process): whatever collectors keep for them can go.
    pub left: Vec<VmKey>,
    /// Discovered and not followed yet, by pid.
    pub new: Vec<DiscoveredVm>,
    /// Identity strings cut to the label-value cap while refreshing.
    pub truncated: u64,
}

/// Follows new VMs, forgets vanished ones, refreshes identities.
pub fn reconcile(mut followed: Vec<Followed>, found: Vec<DiscoveredVm>) -> Reconciled {
    let mut by_pid: HashMap<u32, DiscoveredVm> = found.into_iter().map(|d| (d.pid, d)).collect();
    let mut left = Vec::new();
    let mut truncated = 0;
    // In place: the vector (and its capacity) stays from tick to tick.
    followed.retain_mut(|f| {
        let Some(d) = by_pid.remove(&f.entry.pid) else {
            tracing::debug!(vm_id = %f.entry.stats.id, vm_name = %f.entry.stats.name, pid = f.entry.pid, "VM gone");
            left.push(f.entry.key());
            return false;
        };
        // Without a process record (a libvirt domain whose QEMU the scan
        // does not list) the start time cannot be compared; the held `stat`
        // descriptor of vm_process still notices a reused PID.
        let same_process = d
            .process
            .as_ref()
            .is_none_or(|p| p.starttime_ticks == f.entry.starttime_ticks);
        if !same_process {
            left.push(f.entry.key());
            by_pid.insert(d.pid, d);
            return false;
        }
        if !(same_arc(&f.memo.applied.0, &d.process) && same_arc(&f.memo.applied.1, &d.libvirt)) {
            truncated += apply_identity(&mut f.entry, &d);
            f.memo.applied = (d.process.clone(), d.libvirt.clone());
        }
        true
    });
    let mut new: Vec<DiscoveredVm> = by_pid.into_values().collect();
    new.sort_by_key(|d| d.pid);
    Reconciled {
        kept: followed,
        left,
        new,
        truncated,
    }
}

/// Splits the followed VMs into the entries the collectors work on and the
/// pipeline's memos, in the same order; the marks of the last tick cleared.
/// `entries` and `memos` come in empty and are filled (vectors kept from
/// tick to tick: at 1000 VMs they are half a megabyte each).
pub fn split(followed: &mut Vec<Followed>, entries: &mut Vec<VmEntry>, memos: &mut Vec<Memo>) {
    entries.clear();
    memos.clear();
    room_for(entries, followed.len());
    room_for(memos, followed.len());
    for f in followed.drain(..) {
        let mut e = f.entry;
        health::reset_marks(&mut e);
        entries.push(e);
        memos.push(f.memo);
    }
}

/// Makes `v` hold at least `n` elements, growing it to `n` and a
/// sixteenth, not by doubling as `push` and `reserve` do: the tick's VM
/// vectors are kept from tick to tick at about 600 bytes a VM, and
/// doubling left up to half of each empty (6400 slots, 3.7 MB, for the
/// followed VMs at 10 000). Growth stays amortised: a vector is copied
/// once per sixteenth more VMs.
pub fn room_for<T>(v: &mut Vec<T>, n: usize) {
    if n > v.capacity() {
        v.reserve_exact(n.saturating_add(n / 16).saturating_sub(v.len()));
    }
}

/// After the collectors ran: drops the VMs found gone (returned, for their
/// collectors' state and discovery to forget), dates the rest and computes
/// their rates; they are pushed onto `into` in order. `entries` and
/// `memos` are left empty, their capacity kept.
pub fn settle(
    entries: &mut Vec<VmEntry>,
    memos: &mut Vec<Memo>,
    now: Instant,
    into: &mut Vec<Followed>,
) -> Vec<VmKey> {
    let mut gone = Vec::new();
    for (mut entry, mut memo) in entries.drain(..).zip(memos.drain(..)) {
        if entry.gone {
            gone.push(entry.key());
            continue;
        }
        let fresh = health::settle(&mut entry, now);
        memo.prev = rates::advance(&mut entry.stats, memo.prev, fresh, now);
        into.push(Followed { entry, memo });
    }
    gone
}

/// The VMs to publish: all but those never read successfully (no values
/// worth showing yet).
pub fn published(followed: &[Followed]) -> Vec<VmStats> {
    // Sized up front: a filtered `collect` grew it by doubling, copying
    // the VMs' stats each time.
    let mut out = Vec::with_capacity(followed.len());
    out.extend(
        followed
            .iter()
            .filter(|f| f.entry.last_success.is_some())
            .map(|f| f.entry.stats.clone()),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmscope_proc::{HypervisorKind, VmCmdline};

    use super::*;
    use crate::model::Source;

    const CLOCK: Clock = Clock {
        ticks_per_second: 100,
        boot_time: 1_000,
        now: 2_000.0,
    };

    fn cmdline(name: &str) -> VmCmdline {
        VmCmdline {
            name: Some(name.into()),
            vcpus: Some(2),
            ..VmCmdline::new(HypervisorKind::Qemu)
        }
    }

    fn proc_vm(pid: u32, start: u64, name: &str) -> DiscoveredVm {
        DiscoveredVm {
            pid,
            kind: HypervisorKind::Qemu,
            source: Source::Process,
            process: Some(Arc::new(ProcVm {
                pid,
                starttime_ticks: start,
                cmdline: cmdline(name),
                command_line: String::new(),
            })),
            libvirt: None,
        }
    }

    fn libvirt_vm(pid: u32, name: &str) -> DiscoveredVm {
        DiscoveredVm {
            pid,
            kind: HypervisorKind::Qemu,
            source: Source::Libvirt,
            process: None,
            libvirt: Some(Arc::new(LibvirtDomain {
                name: name.into(),
                pid: Some(pid),
                ..LibvirtDomain::default()
            })),
        }
    }

    fn key(pid: u32, starttime_ticks: u64) -> VmKey {
        VmKey {
            pid,
            starttime_ticks,
        }
    }

    fn follow(found: &[DiscoveredVm]) -> Vec<Followed> {
        found
            .iter()
            .map(|d| {
                let start = d.process.as_ref().map_or(0, |p| p.starttime_ticks);
                Followed::new(d, start, &CLOCK, &mut 0)
            })
            .collect()
    }

    fn pids(f: &[Followed]) -> Vec<u32> {
        f.iter().map(|f| f.entry.pid).collect()
    }

    #[test]
    fn a_new_vm_has_identity_and_start_time_but_no_values() {
        let f = Followed::new(&proc_vm(7, 250, "a"), 250, &CLOCK, &mut 0);
        assert_eq!(f.entry.key(), key(7, 250));
        assert_eq!(f.entry.stats.name, "a");
        assert_eq!(f.entry.stats.start_time_seconds, 1_002.5);
        assert_eq!(f.entry.last_success, None);
        assert!(f.memo.prev.is_none());
        assert!(published(&[f]).is_empty());
    }

    #[test]
    fn kept_left_and_new() {
        let a = proc_vm(1, 10, "a");
        let followed = follow(&[a.clone(), proc_vm(2, 20, "b"), proc_vm(3, 30, "c")]);
        // Tick 2: 1 is unchanged, 2's PID now belongs to a new process,
        // 3 is gone, 9 and 4 are new.
        let b2 = proc_vm(2, 21, "b2");
        let r = reconcile(
            followed,
            vec![proc_vm(9, 90, "i"), b2, a, proc_vm(4, 40, "d")],
        );
        assert_eq!(pids(&r.kept), [1]);
        assert_eq!(r.left, [key(2, 20), key(3, 30)]);
        let new: Vec<(u32, u64)> = r
            .new
            .iter()
            .map(|d| (d.pid, d.process.as_ref().map_or(0, |p| p.starttime_ticks)))
            .collect();
        assert_eq!(new, [(2, 21), (4, 40), (9, 90)]);
    }

    #[test]
    fn identity_is_rebuilt_only_when_discovery_has_a_new_record() {
        let a = proc_vm(1, 10, "a");
        let mut followed = follow(std::slice::from_ref(&a));
        // Anything the collectors or a previous identity wrote stays while
        // discovery hands out the same record...
        followed[0].entry.stats.name = "kept".into();
        let r = reconcile(followed, vec![a.clone()]);
        assert_eq!(r.kept[0].entry.stats.name, "kept");
        // ...and is rebuilt from a new one (same process, new Arc).
        let renamed = proc_vm(1, 10, "renamed");
        let r = reconcile(r.kept, vec![renamed]);
        assert_eq!(r.kept[0].entry.stats.name, "renamed");
        assert!(r.left.is_empty() && r.new.is_empty());
    }

    #[test]
    fn a_libvirt_domain_without_process_record_is_kept_and_reidentified() {
        let d = libvirt_vm(5, "dom");
        let followed = vec![Followed::new(&d, 55, &CLOCK, &mut 0)];
        let r = reconcile(followed, vec![libvirt_vm(5, "dom-renamed")]);
        assert_eq!(pids(&r.kept), [5]);
        assert_eq!(r.kept[0].entry.key(), key(5, 55));
        assert_eq!(r.kept[0].entry.stats.name, "dom-renamed");
    }

    #[test]
    fn settle_drops_the_gone_and_dates_and_rates_the_rest() {
        let t0 = Instant::now();
        let mut followed = follow(&[
            proc_vm(1, 10, "a"),
            proc_vm(2, 20, "b"),
            proc_vm(3, 30, "c"),
        ]);
        // Tick 1: every VM read fine.
        let (mut entries, mut memos) = (Vec::new(), Vec::new());
        split(&mut followed, &mut entries, &mut memos);
        for e in &mut entries {
            e.stats.cpu.user = 1.0;
        }
        assert!(settle(&mut entries, &mut memos, t0, &mut followed).is_empty());
        assert!(entries.is_empty() && memos.is_empty());
        assert_eq!(published(&followed).len(), 3);
        assert!(followed.iter().all(|f| f.entry.stats.rates.is_none()));

        // Tick 2, one second later: 1 used a core, 2 failed, 3 exited.
        split(&mut followed, &mut entries, &mut memos);
        assert!(entries.iter().all(|e| !e.gone && !e.failed));
        entries[0].stats.cpu.user = 2.0;
        entries[1].failed = true;
        entries[2].gone = true;
        let t1 = t0 + Duration::from_secs(1);
        let gone = settle(&mut entries, &mut memos, t1, &mut followed);
        assert_eq!(gone, [key(3, 30)]);
        assert_eq!(pids(&followed), [1, 2]);
        let a = &followed[0].entry.stats;
        assert!(a.collect_success);
        assert_eq!(a.rates.map(|r| r.cpu_cores), Some(1.0));
        assert_eq!(a.rates.and_then(|r| r.cpu_utilization_ratio), Some(0.5));
        let b = &followed[1].entry.stats;
        assert!(!b.collect_success);
        assert_eq!(b.collect_age_seconds, 1.0);
        assert_eq!(b.rates, None);
        // The failed VM keeps its tick-1 sample for its next good read.
        assert_eq!(followed[1].memo.prev.map(|p| p.at), Some(t0));
    }
}
