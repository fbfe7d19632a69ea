//! What the host's VMs add up to, per owner and in all, once per tick.
//!
//! Reads: one tick's VMs ([`VmStats`]: owner, state, hypervisor,
//! allocation, RSS, rates). Emits: a [`Usage`], stored in the immutable
//! [`Snapshot`](super::Snapshot): for users and for projects, every owner
//! with at least one VM and its [`Totals`]; and the VMs by state and
//! hypervisor ([`VmCounts`]). The exposition (`vmscope_user_*`,
//! `vmscope_project_*`, `vmscope_vms`), `/api/v1/owners` and, next, the
//! usage ledger read these numbers; none of them sums VMs again. Pure, no
//! IO, never fails; one pass over the VMs per kind.
//!
//! - **Grouping** is the one identity rule ([`identity`]): an owner is its
//!   key (id, else name; a name-only VM joins the one id its name carries).
//!   Its display name is the name its VMs carry (the smallest, if they
//!   disagree, so that it does not flip between ticks).
//! - **What is summed**: every VM of the owner, whatever its state (a paused
//!   VM still holds its allocation and its memory), except `vms_running`,
//!   which counts VMs in state running. Optional per-VM values (allocation,
//!   rates) are summed over the VMs that have them and are `None` when no
//!   VM of the owner has one: absent, as the per-VM series are, rather than
//!   a 0 that looks like a measurement.
//! - **Cardinality**: past `max_owners` owners of one kind, the owners with
//!   the least resident memory (then the fewest CPU cores in use, then by
//!   key) are *folded*: summed into one [`OTHER`] series. RSS leads the
//!   ranking because it moves slowly, so the set of owners with their own
//!   series rarely changes between ticks (CPU in use is noisy). A real
//!   owner whose key reads as the overflow (`__other__`, or any
//!   `__other__` behind more underscores) is exported with one more
//!   leading underscore ([`series_label`]): it never merges into the
//!   overflow, and no two owners share a label value.
//! - An owner with no VM left is not in the next tick's [`Usage`]: each
//!   snapshot is built whole, so nothing is removed by hand and nothing
//!   races a scrape.

use std::collections::HashMap;

use serde::Serialize;

use super::identity::{self, OwnerIndex, OwnerKind};
use super::{Hypervisor, VmState, VmStats};

/// The owner label value of the overflow series.
pub const OTHER: &str = "__other__";

/// What one owner's VMs (or the folded owners') add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    /// VMs of the owner, in any state.
    pub vms: u32,
    /// VMs in state running (`vmscope_user_vms`).
    pub vms_running: u32,
    /// vCPUs allocated, over the VMs whose count is known.
    pub allocated_vcpus: Option<u64>,
    /// Memory allocated, over the VMs whose allocation is known.
    pub memory_allocated_bytes: Option<u64>,
    /// Host CPU cores in use over the last interval, over the VMs that
    /// have a rate (none on a VM's first tick).
    pub cpu_cores: Option<f64>,
    /// Resident memory of the VMs' hypervisor processes.
    pub memory_rss_bytes: u64,
    /// Bytes per second the VMs received, over the VMs that have a rate.
    pub network_rx_bytes_per_second: Option<f64>,
    /// Bytes per second the VMs sent, over the VMs that have a rate.
    pub network_tx_bytes_per_second: Option<f64>,
}

fn add_u64(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.saturating_add(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn add_f64(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Totals {
    /// Adds one VM.
    pub fn add_vm(&mut self, vm: &VmStats) {
        self.vms = self.vms.saturating_add(1);
        if vm.state == VmState::Running {
            self.vms_running = self.vms_running.saturating_add(1);
        }
        self.allocated_vcpus = add_u64(self.allocated_vcpus, vm.allocated_vcpus.map(u64::from));
        self.memory_allocated_bytes =
            add_u64(self.memory_allocated_bytes, vm.allocated_memory_bytes);
        self.memory_rss_bytes = self.memory_rss_bytes.saturating_add(vm.memory_rss_bytes);
        if let Some(r) = vm.rates {
            self.cpu_cores = add_f64(self.cpu_cores, Some(r.cpu_cores));
            self.network_rx_bytes_per_second = add_f64(
                self.network_rx_bytes_per_second,
                Some(r.network_rx_bytes_per_second),
            );
            self.network_tx_bytes_per_second = add_f64(
                self.network_tx_bytes_per_second,
                Some(r.network_tx_bytes_per_second),
            );
        }
    }

    /// Adds another owner's totals (folding it into the overflow).
    pub fn add(&mut self, o: &Totals) {
        self.vms = self.vms.saturating_add(o.vms);
        self.vms_running = self.vms_running.saturating_add(o.vms_running);
        self.allocated_vcpus = add_u64(self.allocated_vcpus, o.allocated_vcpus);
        self.memory_allocated_bytes =
            add_u64(self.memory_allocated_bytes, o.memory_allocated_bytes);
        self.cpu_cores = add_f64(self.cpu_cores, o.cpu_cores);
        self.memory_rss_bytes = self.memory_rss_bytes.saturating_add(o.memory_rss_bytes);
        self.network_rx_bytes_per_second = add_f64(
            self.network_rx_bytes_per_second,
            o.network_rx_bytes_per_second,
        );
        self.network_tx_bytes_per_second = add_f64(
            self.network_tx_bytes_per_second,
            o.network_tx_bytes_per_second,
        );
    }
}

/// One owner (of one kind) and its totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnerTotals {
    /// The grouping key ([`OwnerIndex::key`]): the id, else the name.
    pub key: String,
    /// The display name, when any of its VMs carries one.
    pub name: Option<String>,
    /// The owner label value of the series that carries this owner:
    /// [`series_label`] of the key, or [`OTHER`] when folded.
    pub series: String,
    /// Summed into the overflow series rather than a series of its own.
    pub folded: bool,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Every owner of one kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindUsage {
    /// Sorted by key; keys are unique.
    pub owners: Vec<OwnerTotals>,
    /// The folded owners, summed; `None` when none was folded.
    pub other: Option<Totals>,
    /// Owners folded into [`KindUsage::other`].
    pub folded: usize,
    /// Owners with at least one running VM (folded ones included).
    pub with_running_vms: usize,
}

impl KindUsage {
    /// The owner with this key.
    pub fn get(&self, key: &str) -> Option<&OwnerTotals> {
        self.owners
            .binary_search_by(|o| o.key.as_str().cmp(key))
            .ok()
            .and_then(|i| self.owners.get(i))
    }

    /// The owners with a series of their own, by key.
    pub fn exported(&self) -> impl Iterator<Item = &OwnerTotals> {
        self.owners.iter().filter(|o| !o.folded)
    }
}

/// VMs by state and by hypervisor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmCounts {
    /// `[state][hypervisor]`, in [`VmState::ALL`] and [`Hypervisor::ALL`] order.
    counts: [[u32; Hypervisor::ALL.len()]; VmState::ALL.len()],
}

impl VmCounts {
    pub fn of(vms: &[VmStats]) -> Self {
        let mut c = VmCounts::default();
        for vm in vms {
            let s = VmState::ALL.iter().position(|s| *s == vm.state);
            let h = Hypervisor::ALL.iter().position(|h| *h == vm.hypervisor);
            if let (Some(s), Some(h)) = (s, h)
                && let Some(n) = c.counts.get_mut(s).and_then(|row| row.get_mut(h))
            {
                *n = n.saturating_add(1);
            }
        }
        c
    }

    /// Every (state, hypervisor) pair with its count, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (VmState, Hypervisor, u32)> + '_ {
        VmState::ALL
            .into_iter()
            .zip(&self.counts)
            .flat_map(|(s, row)| {
                Hypervisor::ALL
                    .into_iter()
                    .zip(row)
                    .map(move |(h, n)| (s, h, *n))
            })
    }
}

/// One tick's per-owner totals and VM counts (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub users: KindUsage,
    pub projects: KindUsage,
    pub vms: VmCounts,
}

impl Usage {
    /// Sums `vms` per owner; past `max_owners` owners of a kind, the
    /// smallest are folded (a `max_owners` of 0 counts as 1).
    pub fn of(vms: &[VmStats], max_owners: usize) -> Self {
        Usage {
            users: by_owner(vms, OwnerKind::User, max_owners),
            projects: by_owner(vms, OwnerKind::Project, max_owners),
            vms: VmCounts::of(vms),
        }
    }

    pub fn kind(&self, kind: OwnerKind) -> &KindUsage {
        match kind {
            OwnerKind::User => &self.users,
            OwnerKind::Project => &self.projects,
        }
    }
}

/// The owner label value a key is exported as: the key itself, unless it
/// would read as the overflow series ([`OTHER`] behind any number of
/// underscores, `_*__other__…`), which gets one more leading underscore.
/// One-to-one: escaped values still match that form, other keys stay
/// as they are, so they cannot meet.
pub fn series_label(key: &str) -> String {
    let rest = key.trim_start_matches('_');
    if key.len() - rest.len() >= 2 && rest.starts_with("other__") {
        format!("_{key}")
    } else {
        key.to_owned()
    }
}

/// The VMs of the owner `key` of `kind`, by the same rule [`Usage::of`]
/// groups them (for `/api/v1/owners/{kind}/{id}`).
pub fn vms_of<'a>(
    vms: &'a [VmStats],
    kind: OwnerKind,
    key: &'a str,
) -> impl Iterator<Item = &'a VmStats> + 'a {
    let index = OwnerIndex::new(kind, vms.iter().filter_map(|v| v.owner.as_deref()));
    vms.iter().filter(move |v| {
        v.owner
            .as_ref()
            .and_then(|o| index.key(o))
            .is_some_and(|k| k == key)
    })
}

fn by_owner(vms: &[VmStats], kind: OwnerKind, max_owners: usize) -> KindUsage {
    let index = OwnerIndex::new(kind, vms.iter().filter_map(|v| v.owner.as_deref()));
    // Sized for one owner per VM (the worst case) so the map never regrows.
    let mut slot: HashMap<&str, usize> = HashMap::with_capacity(vms.len());
    let mut groups: Vec<(&str, Option<&str>, Totals)> = Vec::new();
    for vm in vms {
        let Some(owner) = vm.owner.as_ref() else {
            continue;
        };
        let Some(key) = index.key(owner) else {
            continue;
        };
        let i = *slot.entry(key).or_insert_with(|| {
            groups.push((key, None, Totals::default()));
            groups.len() - 1
        });
        if let Some((_, name, totals)) = groups.get_mut(i) {
            totals.add_vm(vm);
            if let Some(n) = identity::name(owner, kind)
                && name.is_none_or(|seen| n < seen)
            {
                *name = Some(n);
            }
        }
    }

    // Rank: most RSS first, then most CPU, then by key (see module docs).
    groups.sort_by(|(ka, _, ta), (kb, _, tb)| {
        tb.memory_rss_bytes
            .cmp(&ta.memory_rss_bytes)
            .then_with(|| {
                tb.cpu_cores
                    .unwrap_or(0.0)
                    .total_cmp(&ta.cpu_cores.unwrap_or(0.0))
            })
            .then_with(|| ka.cmp(kb))
    });
    let keep = max_owners.max(1);
    let mut usage = KindUsage::default();
    let mut other = Totals::default();
    for (rank, (key, name, totals)) in groups.into_iter().enumerate() {
        let folded = rank >= keep;
        if totals.vms_running > 0 {
            usage.with_running_vms += 1;
        }
        if folded {
            usage.folded += 1;
            other.add(&totals);
        }
        usage.owners.push(OwnerTotals {
            key: key.to_owned(),
            name: name.map(str::to_owned),
            series: if folded {
                OTHER.to_owned()
            } else {
                series_label(key)
            },
            folded,
            totals,
        });
    }
    usage.owners.sort_by(|a, b| a.key.cmp(&b.key));
    usage.other = (usage.folded > 0).then_some(other);
    usage
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Owner, Source, VmRates};

    fn vm(id: &str, user: (Option<&str>, Option<&str>), project: Option<&str>) -> VmStats {
        let s = |v: Option<&str>| v.map(str::to_owned);
        VmStats {
            id: id.to_owned(),
            name: id.to_owned(),
            state: VmState::Running,
            owner: Some(std::sync::Arc::new(Owner {
                user_id: s(user.0),
                user_name: s(user.1),
                project_id: s(project),
                project_name: None,
            })),
            allocated_vcpus: Some(2),
            allocated_memory_bytes: Some(1 << 30),
            memory_rss_bytes: 100,
            rates: Some(VmRates {
                cpu_cores: 0.5,
                network_rx_bytes_per_second: 10.0,
                network_tx_bytes_per_second: 1.0,
                ..VmRates::default()
            }),
            ..VmStats::unmeasured(1, Source::Process)
        }
    }

    fn keys(k: &KindUsage) -> Vec<(&str, Option<&str>, &str, u32)> {
        k.owners
            .iter()
            .map(|o| {
                (
                    o.key.as_str(),
                    o.name.as_deref(),
                    o.series.as_str(),
                    o.totals.vms,
                )
            })
            .collect()
    }

    #[test]
    fn sums_each_owners_vms_and_only_what_they_have() {
        let mut paused = vm("c", (Some("u1"), Some("alice")), Some("p1"));
        paused.state = VmState::Paused;
        paused.rates = None;
        paused.allocated_vcpus = None;
        paused.memory_rss_bytes = 7;
        let vms = [
            vm("a", (Some("u1"), Some("alice")), Some("p1")),
            vm("b", (Some("u2"), None), Some("p1")),
            paused,
            // No owner at all: in no group, but counted by state.
            VmStats {
                owner: None,
                ..vm("d", (None, None), None)
            },
        ];
        let u = Usage::of(&vms, 1000);
        let alice = u.users.get("u1").unwrap();
        assert_eq!(alice.name.as_deref(), Some("alice"));
        assert_eq!(
            alice.totals,
            Totals {
                vms: 2,
                vms_running: 1,
                allocated_vcpus: Some(2),
                memory_allocated_bytes: Some(2 << 30),
                cpu_cores: Some(0.5),
                memory_rss_bytes: 107,
                network_rx_bytes_per_second: Some(10.0),
                network_tx_bytes_per_second: Some(1.0),
            }
        );
        let p1 = u.projects.get("p1").unwrap();
        assert_eq!((p1.totals.vms, p1.totals.vms_running), (3, 2));
        assert_eq!(p1.totals.cpu_cores, Some(1.0));
        assert_eq!(p1.name, None);
        assert_eq!(u.users.with_running_vms, 2);
        assert_eq!(u.users.folded, 0);
        assert_eq!(u.users.other, None);

        // An owner whose VMs have no rate yet has no CPU figure, not 0.
        let first_tick = [VmStats {
            rates: None,
            allocated_vcpus: None,
            ..vm("a", (Some("u1"), None), None)
        }];
        let t = Usage::of(&first_tick, 10).users.owners[0].totals;
        assert_eq!(t.cpu_cores, None);
        assert_eq!(t.network_rx_bytes_per_second, None);
        assert_eq!(t.allocated_vcpus, None);
        assert_eq!(t.memory_rss_bytes, 100);

        let n = |s, h| u.vms.iter().find(|(a, b, _)| *a == s && *b == h).unwrap().2;
        assert_eq!(n(VmState::Running, Hypervisor::Qemu), 3);
        assert_eq!(n(VmState::Paused, Hypervisor::Qemu), 1);
        assert_eq!(n(VmState::Running, Hypervisor::Firecracker), 0);
        assert_eq!(
            u.vms.iter().count(),
            VmState::ALL.len() * Hypervisor::ALL.len()
        );
    }

    #[test]
    fn a_name_only_vm_joins_the_id_its_name_carries() {
        let vms = [
            vm("a", (Some("u1"), Some("alice")), None),
            vm("b", (None, Some("alice")), None),
            // carol has two ids: her name-only VM is not guessed into either.
            vm("c", (Some("u8"), Some("carol")), None),
            vm("d", (Some("u9"), Some("carol")), None),
            vm("e", (None, Some("carol")), None),
        ];
        let u = Usage::of(&vms, 1000);
        assert_eq!(
            keys(&u.users),
            [
                ("carol", Some("carol"), "carol", 1),
                ("u1", Some("alice"), "u1", 2),
                ("u8", Some("carol"), "u8", 1),
                ("u9", Some("carol"), "u9", 1),
            ]
        );
        // The API's member list uses the same rule.
        let ids: Vec<&str> = vms_of(&vms, OwnerKind::User, "u1")
            .map(|v| v.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn past_the_cap_the_smallest_owners_fold_into_other() {
        let mut vms = Vec::new();
        for (i, rss) in [(1, 500), (2, 100), (3, 300), (4, 100), (5, 200)] {
            let mut v = vm(&format!("vm{i}"), (Some(&format!("u{i}")), None), None);
            v.memory_rss_bytes = rss;
            vms.push(v);
        }
        // u2 and u4 tie on RSS: u4 uses more CPU and ranks higher.
        vms[3].rates.as_mut().unwrap().cpu_cores = 2.0;
        let u = Usage::of(&vms, 2).users;
        let series: Vec<(&str, &str)> = u
            .owners
            .iter()
            .map(|o| (o.key.as_str(), o.series.as_str()))
            .collect();
        assert_eq!(
            series,
            [
                ("u1", "u1"),
                ("u2", OTHER),
                ("u3", "u3"),
                ("u4", OTHER),
                ("u5", OTHER)
            ]
        );
        assert_eq!(u.folded, 3);
        let other = u.other.unwrap();
        assert_eq!(other.vms, 3);
        assert_eq!(other.memory_rss_bytes, 400);
        assert_eq!(other.cpu_cores, Some(3.0));
        assert_eq!(u.with_running_vms, 5);
        let exported: Vec<&str> = u.exported().map(|o| o.key.as_str()).collect();
        assert_eq!(exported, ["u1", "u3"]);

        // Same usage on a tie: by key, so the same owners win every tick.
        let tie: Vec<VmStats> = ["b", "a", "c"]
            .iter()
            .map(|k| vm(k, (Some(k), None), None))
            .collect();
        for _ in 0..3 {
            let u = Usage::of(&tie, 2).users;
            let kept: Vec<&str> = u.exported().map(|o| o.key.as_str()).collect();
            assert_eq!(kept, ["a", "b"]);
        }
        // A cap of 0 (refused by the config) still keeps one owner.
        assert_eq!(Usage::of(&tie, 0).users.folded, 2);
    }

    #[test]
    fn an_owner_called_other_is_not_the_overflow() {
        assert_eq!(series_label("alice"), "alice");
        assert_eq!(series_label("_other__"), "_other__");
        assert_eq!(series_label(OTHER), "___other__");
        assert_eq!(series_label("___other__"), "____other__");
        assert_eq!(series_label("__other__x"), "___other__x");
        // One-to-one over keys that could meet.
        let keys = [
            "__other__",
            "___other__",
            "____other__",
            "_other__",
            "other__",
            "__other__x",
            "___other__x",
        ];
        let mut labels: Vec<String> = keys.iter().map(|k| series_label(k)).collect();
        assert!(labels.iter().all(|l| l != OTHER));
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), keys.len());

        // Through the aggregation: the real `__other__` keeps its own
        // series next to the overflow.
        let mut vms = vec![vm("a", (Some(OTHER), Some(OTHER)), None)];
        vms[0].memory_rss_bytes = 1 << 30;
        vms.push(vm("b", (Some("u2"), None), None));
        vms.push(vm("c", (Some("u3"), None), None));
        let u = Usage::of(&vms, 1).users;
        let real = u.get(OTHER).unwrap();
        assert!(!real.folded);
        assert_eq!(real.series, "___other__");
        assert_eq!(u.folded, 2);
        assert_eq!(u.other.unwrap().vms, 2);
    }

    #[test]
    fn an_owner_with_no_vm_left_is_gone_from_the_next_tick() {
        let mut vms = vec![
            vm("a", (Some("u1"), None), Some("p1")),
            vm("b", (Some("u2"), None), Some("p1")),
        ];
        let before = Usage::of(&vms, 1000);
        assert!(before.users.get("u2").is_some());
        vms.pop();
        let after = Usage::of(&vms, 1000);
        assert!(after.users.get("u2").is_none());
        assert_eq!(after.users.owners.len(), 1);
        // The project is still there, with one VM fewer.
        assert_eq!(after.projects.get("p1").unwrap().totals.vms, 1);
    }
}
