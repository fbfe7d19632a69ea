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

/// The VMs being followed, kept from tick to tick: each VM's entry (what
/// the collectors work on) and the pipeline's memo of it, in two vectors
/// of the same length and order. The collectors get `entries` as it is:
/// no per-tick move into a vector of their own and back (at 10 000 VMs
/// that was a second 6 MB vector, and 12 MB copied per tick).
#[derive(Debug, Default)]
pub struct Followed {
    pub entries: Vec<VmEntry>,
    pub memos: Vec<Memo>,
    /// A VM was added or re-identified since [`Followed::sort_by_id`].
    unsorted: bool,
}

impl Followed {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Room for `n` VMs ([`room_for`]).
    pub fn room_for(&mut self, n: usize) {
        room_for(&mut self.entries, n);
        room_for(&mut self.memos, n);
    }

    pub fn push(&mut self, (entry, memo): (VmEntry, Memo)) {
        self.entries.push(entry);
        self.memos.push(memo);
        self.unsorted = true;
    }

    /// Puts the VMs in the order snapshots list them (`dedup::claim_order`),
    /// so that each tick's snapshot comes out sorted and is not sorted
    /// again. Only after a VM was added or re-identified; dropping VMs
    /// keeps the order.
    pub fn sort_by_id(&mut self) {
        if !std::mem::take(&mut self.unsorted) {
            return;
        }
        let by_claim = |a: &VmEntry, b: &VmEntry| super::dedup::claim_order(&a.stats, &b.stats);
        if self.entries.is_sorted_by(|a, b| by_claim(a, b).is_le()) {
            return;
        }
        let mut pairs: Vec<(VmEntry, Memo)> =
            self.entries.drain(..).zip(self.memos.drain(..)).collect();
        pairs.sort_unstable_by(|a, b| by_claim(&a.0, &b.0));
        for (e, m) in pairs {
            self.entries.push(e);
            self.memos.push(m);
        }
    }

    /// Keeps the VMs `keep` says to, in order (both vectors in step).
    fn retain(&mut self, mut keep: impl FnMut(&mut VmEntry, &mut Memo) -> bool) {
        let mut kept = 0;
        let n = self.entries.len().min(self.memos.len());
        for i in 0..n {
            let (Some(e), Some(m)) = (self.entries.get_mut(i), self.memos.get_mut(i)) else {
                break;
            };
            if keep(e, m) {
                // Kept VMs move down over the dropped ones, in order. Not
                // onto themselves: a swap in place still copied each VM's
                // 700 bytes twice, twice a tick.
                if kept != i {
                    self.entries.swap(kept, i);
                    self.memos.swap(kept, i);
                }
                kept += 1;
            }
        }
        self.entries.truncate(kept);
        self.memos.truncate(kept);
    }
}

/// A VM seen for the first time: identity applied, nothing measured yet.
/// `truncated` counts identity strings cut to the label-value cap.
pub fn new_vm(
    d: &DiscoveredVm,
    starttime_ticks: u64,
    clock: &Clock,
    truncated: &mut u64,
) -> (VmEntry, Memo) {
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
    let memo = Memo {
        prev: None,
        applied: (d.process.clone(), d.libvirt.clone()),
    };
    (entry, memo)
}

fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// What discovery found this tick against the VMs followed.
#[derive(Debug)]
pub struct Reconciled {
    /// No longer there (not discovered, or the PID now belongs to another
    /// process): whatever collectors keep for them can go.
    pub left: Vec<VmKey>,
    /// Discovered and not followed yet, by pid.
    pub new: Vec<DiscoveredVm>,
    /// Identity strings cut to the label-value cap while refreshing.
    pub truncated: u64,
}

/// Drops the followed VMs that are gone (kept ones stay in their order,
/// identity up to date) and returns them, and the new ones.
pub fn reconcile(followed: &mut Followed, found: Vec<DiscoveredVm>) -> Reconciled {
    // foldhash: PIDs, every VM, every tick.
    let mut by_pid: HashMap<u32, DiscoveredVm, foldhash::fast::RandomState> =
        found.into_iter().map(|d| (d.pid, d)).collect();
    let mut left = Vec::new();
    let mut truncated = 0;
    let mut reidentified = false;
    followed.retain(|entry, memo| {
        let Some(d) = by_pid.remove(&entry.pid) else {
            tracing::debug!(vm_id = %entry.stats.id, vm_name = %entry.stats.name, pid = entry.pid, "VM gone");
            left.push(entry.key());
            return false;
        };
        // Without a process record (a libvirt domain whose QEMU the scan
        // does not list) the start time cannot be compared; the held `stat`
        // descriptor of vm_process still notices a reused PID.
        let same_process = d
            .process
            .as_ref()
            .is_none_or(|p| p.starttime_ticks == entry.starttime_ticks);
        if !same_process {
            left.push(entry.key());
            by_pid.insert(d.pid, d);
            return false;
        }
        if !(same_arc(&memo.applied.0, &d.process) && same_arc(&memo.applied.1, &d.libvirt)) {
            reidentified = true;
            truncated += apply_identity(entry, &d);
            memo.applied = (d.process.clone(), d.libvirt.clone());
        }
        true
    });
    followed.unsorted |= reidentified;
    let mut new: Vec<DiscoveredVm> = by_pid.into_values().collect();
    new.sort_by_key(|d| d.pid);
    Reconciled {
        left,
        new,
        truncated,
    }
}

/// Before the collectors run: the marks of the last tick cleared.
pub fn begin(followed: &mut Followed) {
    for e in &mut followed.entries {
        health::reset_marks(e);
    }
}

/// Makes `v` hold at least `n` elements, growing it to `n` and a
/// sixteenth, not by doubling as `push` and `reserve` do: the followed
/// VMs are kept from tick to tick at about 600 bytes a VM, and doubling
/// left up to half of them empty (6400 slots, 3.7 MB, at 10 000 VMs).
/// Growth stays amortised: a vector is copied once per sixteenth more VMs.
pub fn room_for<T>(v: &mut Vec<T>, n: usize) {
    if n > v.capacity() {
        v.reserve_exact(n.saturating_add(n / 16).saturating_sub(v.len()));
    }
}

/// After the collectors ran: drops the VMs found gone (returned, for their
/// collectors' state and discovery to forget), dates the rest and computes
/// their rates, in place.
pub fn settle(followed: &mut Followed, now: Instant) -> Vec<VmKey> {
    let mut gone = Vec::new();
    followed.retain(|entry, memo| {
        if entry.gone {
            gone.push(entry.key());
            return false;
        }
        let fresh = health::settle(entry, now);
        memo.prev = rates::advance(&mut entry.stats, memo.prev, fresh, now);
        true
    });
    gone
}

/// The VMs to publish: all but those never read successfully (no values
/// worth showing yet), copied into `spare` (the VMs of a snapshot no one
/// reads any more, or empty): `clone_from` keeps the strings and vectors
/// it already has, so a steady host allocates nothing here.
pub fn published(followed: &Followed, spare: Vec<VmStats>) -> Vec<VmStats> {
    let mut out = spare;
    // Sized up front: growing by doubling copied the VMs' stats each time.
    out.reserve(followed.len().saturating_sub(out.len()));
    let mut n = 0;
    for e in followed.entries.iter().filter(|e| e.last_success.is_some()) {
        match out.get_mut(n) {
            Some(slot) => slot.clone_from(&e.stats),
            None => out.push(e.stats.clone()),
        }
        n += 1;
    }
    out.truncate(n);
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

    fn follow(found: &[DiscoveredVm]) -> Followed {
        let mut f = Followed::default();
        for d in found {
            let start = d.process.as_ref().map_or(0, |p| p.starttime_ticks);
            f.push(new_vm(d, start, &CLOCK, &mut 0));
        }
        f
    }

    fn pids(f: &Followed) -> Vec<u32> {
        f.entries.iter().map(|e| e.pid).collect()
    }

    #[test]
    fn a_new_vm_has_identity_and_start_time_but_no_values() {
        let (entry, memo) = new_vm(&proc_vm(7, 250, "a"), 250, &CLOCK, &mut 0);
        assert_eq!(entry.key(), key(7, 250));
        assert_eq!(entry.stats.name, "a");
        assert_eq!(entry.stats.start_time_seconds, 1_002.5);
        assert_eq!(entry.last_success, None);
        assert!(memo.prev.is_none());
        let mut f = Followed::default();
        f.push((entry, memo));
        assert!(published(&f, Vec::new()).is_empty());
    }

    #[test]
    fn kept_left_and_new() {
        let a = proc_vm(1, 10, "a");
        let mut followed = follow(&[
            proc_vm(5, 50, "e"),
            a.clone(),
            proc_vm(2, 20, "b"),
            proc_vm(3, 30, "c"),
            proc_vm(6, 60, "f"),
        ]);
        // Tick 2: 1, 5 and 6 are unchanged, 2's PID now belongs to a new
        // process, 3 is gone, 9 and 4 are new.
        let b2 = proc_vm(2, 21, "b2");
        let r = reconcile(
            &mut followed,
            vec![
                proc_vm(9, 90, "i"),
                proc_vm(6, 60, "f"),
                b2,
                a,
                proc_vm(4, 40, "d"),
                proc_vm(5, 50, "e"),
            ],
        );
        // In their order, entries and memos in step.
        assert_eq!(pids(&followed), [5, 1, 6]);
        let applied: Vec<u32> = followed
            .memos
            .iter()
            .map(|m| m.applied.0.as_ref().map_or(0, |p| p.pid))
            .collect();
        assert_eq!(applied, [5, 1, 6]);
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
        followed.entries[0].stats.name = "kept".into();
        reconcile(&mut followed, vec![a.clone()]);
        assert_eq!(followed.entries[0].stats.name, "kept");
        // ...and is rebuilt from a new one (same process, new Arc).
        let renamed = proc_vm(1, 10, "renamed");
        let r = reconcile(&mut followed, vec![renamed]);
        assert_eq!(followed.entries[0].stats.name, "renamed");
        assert!(r.left.is_empty() && r.new.is_empty());
    }

    #[test]
    fn a_libvirt_domain_without_process_record_is_kept_and_reidentified() {
        let d = libvirt_vm(5, "dom");
        let mut followed = Followed::default();
        followed.push(new_vm(&d, 55, &CLOCK, &mut 0));
        reconcile(&mut followed, vec![libvirt_vm(5, "dom-renamed")]);
        assert_eq!(pids(&followed), [5]);
        assert_eq!(followed.entries[0].key(), key(5, 55));
        assert_eq!(followed.entries[0].stats.name, "dom-renamed");
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
        begin(&mut followed);
        for e in &mut followed.entries {
            e.stats.cpu.user = 1.0;
        }
        assert!(settle(&mut followed, t0).is_empty());
        assert_eq!(published(&followed, Vec::new()).len(), 3);
        assert!(followed.entries.iter().all(|e| e.stats.rates.is_none()));

        // Tick 2, one second later: 1 used a core, 2 exited, 3 failed.
        begin(&mut followed);
        assert!(followed.entries.iter().all(|e| !e.gone && !e.failed));
        followed.entries[0].stats.cpu.user = 2.0;
        followed.entries[1].gone = true;
        followed.entries[2].failed = true;
        let t1 = t0 + Duration::from_secs(1);
        let gone = settle(&mut followed, t1);
        assert_eq!(gone, [key(2, 20)]);
        assert_eq!(pids(&followed), [1, 3]);
        assert_eq!(followed.memos.len(), 2);
        let a = &followed.entries[0].stats;
        assert!(a.collect_success);
        assert_eq!(a.rates.map(|r| r.cpu_cores), Some(1.0));
        assert_eq!(a.rates.and_then(|r| r.cpu_utilization_ratio), Some(0.5));
        let c = &followed.entries[1].stats;
        assert!(!c.collect_success);
        assert_eq!(c.collect_age_seconds, 1.0);
        assert_eq!(c.rates, None);
        // The failed VM keeps its tick-1 sample for its next good read
        // (its memo moved down with it).
        assert_eq!(followed.memos[1].prev.map(|p| p.at), Some(t0));
        assert_eq!(followed.memos[0].prev.map(|p| p.at), Some(t1));
    }

    #[test]
    fn published_reuses_a_spare_snapshot_and_copies_every_field() {
        use crate::model::{NetStats, Owner, VcpuStats};
        let t0 = Instant::now();
        let mut followed = follow(&[proc_vm(1, 10, "a"), proc_vm(2, 20, "b")]);
        begin(&mut followed);
        for (i, e) in followed.entries.iter_mut().enumerate() {
            let s = &mut e.stats;
            s.uuid = Some(format!("uuid-{i}"));
            s.owner = Some(std::sync::Arc::new(Owner {
                user_id: Some(format!("u{i}")),
                ..Owner::default()
            }));
            s.flavor = Some("m1.small".into());
            s.cpu.user = 1.5 + i as f64;
            s.vcpus = vec![VcpuStats {
                index: 0,
                tid: 100 + i as u32,
                cpu_seconds: 2.0,
                wait_seconds: Some(0.5),
            }];
            s.network = vec![NetStats {
                interface: format!("tap{i}"),
                rx_bytes: 7,
                ..NetStats::default()
            }];
            s.memory_rss_bytes = 4096;
        }
        assert!(settle(&mut followed, t0).is_empty());
        // A spare from another tick: three VMs with other values, longer
        // vectors, and one more VM than is published now.
        let mut spare = published(&followed, Vec::new());
        // Fresh copies hold their vectors at their length: one TAP is 88
        // bytes, not the 352 of `Vec`'s smallest growth (4 elements).
        assert_eq!(
            spare
                .iter()
                .map(|s| (s.network.capacity(), s.vcpus.capacity()))
                .collect::<Vec<_>>(),
            [(1, 1), (1, 1)]
        );
        spare.push(spare[0].clone());
        for s in &mut spare {
            s.id.push_str("-an-older-and-longer-id");
            s.uuid = None;
            s.flavor = None;
            s.vcpus.extend_from_slice(&[s.vcpus[0]; 3]);
            s.network[0].interface.push_str("-old");
            s.cpu.user = 99.0;
        }
        let vcpus_buffer = spare[0].vcpus.as_ptr();
        let out = published(&followed, spare);
        let fresh: Vec<VmStats> = followed.entries.iter().map(|e| e.stats.clone()).collect();
        assert_eq!(out, fresh);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].network[0].interface, "tap1");
        assert_eq!(out[1].uuid.as_deref(), Some("uuid-1"));
        assert_eq!(
            out[0].vcpus.as_ptr(),
            vcpus_buffer,
            "the spare's vector is reused"
        );
    }

    #[test]
    fn the_followed_vms_are_kept_in_snapshot_order_with_their_memos() {
        let t0 = Instant::now();
        let found = [
            proc_vm(30, 300, "c"),
            proc_vm(10, 100, "a"),
            proc_vm(20, 200, "b"),
        ];
        let mut followed = follow(&found);
        let ids = |f: &Followed| {
            f.entries
                .iter()
                .map(|e| e.stats.id.clone())
                .collect::<Vec<_>>()
        };
        let unsorted = ids(&followed);
        followed.sort_by_id();
        let sorted = ids(&followed);
        assert!(sorted.is_sorted(), "{sorted:?}");
        assert_ne!(unsorted, sorted, "the fixture must start out of order");
        // Each memo moved with its VM.
        for (e, m) in followed.entries.iter().zip(&followed.memos) {
            assert_eq!(m.applied.0.as_ref().map(|p| p.pid), Some(e.pid));
        }
        // The snapshot comes out in that order: dedupe_ids has nothing to move.
        begin(&mut followed);
        assert!(settle(&mut followed, t0).is_empty());
        let mut vms = published(&followed, Vec::new());
        let before: Vec<String> = vms.iter().map(|v| v.id.clone()).collect();
        super::super::dedup::dedupe_ids(&mut vms);
        assert_eq!(vms.iter().map(|v| v.id.clone()).collect::<Vec<_>>(), before);
        // A VM found later, whose id sorts first, is put in its place.
        let r = reconcile(&mut followed, [&found[..], &[proc_vm(5, 1, "0")]].concat());
        for d in &r.new {
            followed.push(new_vm(d, 1, &CLOCK, &mut 0));
        }
        followed.sort_by_id();
        assert!(ids(&followed).is_sorted(), "{:?}", ids(&followed));
        assert_eq!(followed.len(), 4);
        for (e, m) in followed.entries.iter().zip(&followed.memos) {
            assert_eq!(m.applied.0.as_ref().map(|p| p.pid), Some(e.pid));
        }
    }
}
