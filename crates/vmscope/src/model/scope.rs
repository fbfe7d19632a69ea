//! What a tenant sees of a snapshot: the one rule for every endpoint.
//!
//! Reads: a [`Snapshot`] and a [`TenantScope`] (the user and project keys
//! of a tenant token, `user:<key>` / `project:<key>` in the web
//! configuration). Emits: a smaller [`Snapshot`] holding only what the
//! tenant may see, which every reader (the exposition, `/api/v1/vms*`,
//! `/api/v1/owners*`) then serves unchanged, so no endpoint filters by
//! itself and a new endpoint reading the view cannot leak. Pure, no IO,
//! never fails.
//!
//! - **Which VMs**: those whose user key is one of the tenant's users or
//!   whose project key is one of its projects. Keys are the grouping keys
//!   of [`super::identity`] (id, else name; a name-only VM joins the one id its
//!   name carries), computed over the *whole* host, as on
//!   `vmscope_vm_info{user,project}` and `vmscope_user_*{user}`, so a VM is
//!   the tenant's exactly when the unscoped exposition says it is.
//! - **Which owners**: the tenant's own (its keys), with totals over all of
//!   their VMs, which are all visible to it by the rule above. Other owners
//!   that share one of its VMs (the user of a VM in its project) are not
//!   listed: their totals would count VMs the tenant cannot see. The same
//!   holds for the ledger's per-owner counters.
//! - **What else**: the VM counts by state (of its VMs), the snapshot's
//!   sequence and time. Not the host's measurements, the collectors' health
//!   or the discovery counts: those describe the host, which is the
//!   operator's.

use std::sync::Arc;

use super::counters::{CounterTotals, KindCounters};
use super::identity::{OwnerIndex, OwnerKind};
use super::usage::{KindUsage, OwnerTotals, Usage, VmCounts, series_label};
use super::{HostStats, Snapshot, VmStats};

/// A tenant: the owner keys whose VMs it sees. Sorted and de-duplicated,
/// so that two tokens with the same keys share one cached view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantScope {
    users: Arc<[String]>,
    projects: Arc<[String]>,
}

impl TenantScope {
    pub fn new(users: &[String], projects: &[String]) -> Self {
        let norm = |keys: &[String]| -> Arc<[String]> {
            let mut v = keys.to_vec();
            v.sort();
            v.dedup();
            v.into()
        };
        TenantScope {
            users: norm(users),
            projects: norm(projects),
        }
    }

    pub fn users(&self) -> &[String] {
        &self.users
    }

    pub fn projects(&self) -> &[String] {
        &self.projects
    }

    pub fn keys(&self, kind: OwnerKind) -> &[String] {
        match kind {
            OwnerKind::User => &self.users,
            OwnerKind::Project => &self.projects,
        }
    }

    /// Whether the owner of this kind and key is the tenant's.
    pub fn owns(&self, kind: OwnerKind, key: &str) -> bool {
        self.keys(kind)
            .binary_search_by(|k| k.as_str().cmp(key))
            .is_ok()
    }

    /// A VM with these owner keys is the tenant's.
    pub fn sees(&self, user_key: Option<&str>, project_key: Option<&str>) -> bool {
        user_key.is_some_and(|k| self.owns(OwnerKind::User, k))
            || project_key.is_some_and(|k| self.owns(OwnerKind::Project, k))
    }

    /// The VMs of `vms` the tenant sees, in order.
    pub fn visible<'a>(&self, vms: &'a [VmStats]) -> Vec<&'a VmStats> {
        let owners = || vms.iter().filter_map(|v| v.owner.as_deref());
        let users = OwnerIndex::new(OwnerKind::User, owners());
        let projects = OwnerIndex::new(OwnerKind::Project, owners());
        vms.iter()
            .filter(|vm| {
                vm.owner
                    .as_deref()
                    .is_some_and(|o| self.sees(users.key(o), projects.key(o)))
            })
            .collect()
    }
}

impl Snapshot {
    /// The part of this snapshot `scope` may see (see the module docs).
    pub fn for_tenant(&self, scope: &TenantScope) -> Snapshot {
        let vms: Vec<VmStats> = scope.visible(&self.vms).into_iter().cloned().collect();
        // The host's per-owner totals, as summed on the collector thread
        // (every VM of a tenant's owner is the tenant's, so these are
        // totals over its VMs). Regrouping `vms` instead could key a
        // name-only VM differently than the whole host does.
        let usage = Usage {
            users: own(&self.usage.users, scope, OwnerKind::User),
            projects: own(&self.usage.projects, scope, OwnerKind::Project),
            vms: VmCounts::of(&vms),
        };
        let counters = self.counters.as_deref().map(|c| {
            Arc::new(CounterTotals {
                users: own_counters(&c.users, scope, OwnerKind::User),
                projects: own_counters(&c.projects, scope, OwnerKind::Project),
                vms: c
                    .vms
                    .iter()
                    .filter(|(id, _)| vms.binary_search_by(|v| v.id.cmp(id)).is_ok())
                    .cloned()
                    .collect(),
            })
        });
        Snapshot {
            seq: self.seq,
            collected_at: self.collected_at,
            interval: self.interval,
            tick_duration_seconds: self.tick_duration_seconds,
            host: HostStats::default(),
            vms,
            collectors: Vec::new(),
            discovered: Vec::new(),
            discovery: Default::default(),
            label_values_truncated_total: 0,
            usage,
            counters,
            departed: Vec::new(),
        }
    }
}

/// The tenant's owners of one kind, each with a series of its own: one
/// folded into `__other__` on the host's exposition is the tenant's only
/// owner-level view of itself (a tenant names a handful of owners).
fn own(k: &KindUsage, scope: &TenantScope, kind: OwnerKind) -> KindUsage {
    let owners: Vec<OwnerTotals> = k
        .owners
        .iter()
        .filter(|o| scope.owns(kind, &o.key))
        .map(|o| OwnerTotals {
            series: series_label(&o.key),
            folded: false,
            ..o.clone()
        })
        .collect();
    let with_running_vms = owners.iter().filter(|o| o.totals.vms_running > 0).count();
    KindUsage {
        owners,
        other: None,
        folded: 0,
        with_running_vms,
    }
}

/// The ledger's counters carry the owner's *series label*
/// ([`series_label`] of the key): compare with that.
fn own_counters(k: &KindCounters, scope: &TenantScope, kind: OwnerKind) -> KindCounters {
    KindCounters {
        owners: k
            .owners
            .iter()
            .filter(|(label, _)| {
                scope
                    .keys(kind)
                    .iter()
                    .any(|key| series_label(key) == *label)
            })
            .cloned()
            .collect(),
        other: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::export::fixture;
    use crate::model::Owner;
    use crate::model::counters::Quantities;

    fn owner(user: (Option<&str>, Option<&str>), project: Option<&str>) -> Option<Arc<Owner>> {
        Some(Arc::new(Owner {
            user_id: user.0.map(str::to_owned),
            user_name: user.1.map(str::to_owned),
            project_id: project.map(str::to_owned),
            project_name: None,
        }))
    }

    fn ids(s: &Snapshot) -> Vec<&str> {
        s.vms.iter().map(|v| v.id.as_str()).collect()
    }

    fn scope(users: &[&str], projects: &[&str]) -> TenantScope {
        let v = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        TenantScope::new(&v(users), &v(projects))
    }

    /// vm-0: u1/p1, vm-1: u2/p1, vm-2: u2/p2, vm-3: nobody's, vm-4: a
    /// name-only "alice" that joins u1 (the one id named alice).
    fn host() -> Snapshot {
        let mut s = fixture::snapshot(5);
        s.vms[0].owner = owner((Some("u1"), Some("alice")), Some("p1"));
        s.vms[1].owner = owner((Some("u2"), None), Some("p1"));
        s.vms[2].owner = owner((Some("u2"), None), Some("p2"));
        s.vms[3].owner = None;
        s.vms[4].owner = owner((None, Some("alice")), None);
        s.with_usage(1)
    }

    #[test]
    fn a_tenant_sees_the_vms_of_its_keys_by_the_hosts_grouping() {
        let h = host();
        assert_eq!(
            ids(&h.for_tenant(&scope(&["u1"], &[]))),
            ["vm-000000", "vm-000004"],
            "the name-only VM is u1's, as vmscope_vm_info{{user}} says"
        );
        assert_eq!(
            ids(&h.for_tenant(&scope(&[], &["p1"]))),
            ["vm-000000", "vm-000001"]
        );
        // A user and a project: the union.
        assert_eq!(
            ids(&h.for_tenant(&scope(&["u2"], &["p1"]))),
            ["vm-000000", "vm-000001", "vm-000002"]
        );
        // Keys are exact: no prefix, no name for an id, nothing for nobody.
        for s in [scope(&["u"], &[]), scope(&["alice"], &[]), scope(&[], &[])] {
            assert!(h.for_tenant(&s).vms.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn a_tenant_sees_its_own_owners_whole_and_unfolded_and_no_host() {
        let h = host();
        // max_owners 1 folded all but one user on the host.
        assert!(h.usage.users.folded > 0);
        let v = h.for_tenant(&scope(&[], &["p1"]));
        assert!(v.usage.users.owners.is_empty(), "u2 also has a VM in p2");
        let p1 = &v.usage.projects.owners;
        assert_eq!(p1.len(), 1);
        assert_eq!(
            (p1[0].key.as_str(), p1[0].series.as_str(), p1[0].folded),
            ("p1", "p1", false)
        );
        assert_eq!(p1[0].totals, h.usage.projects.get("p1").unwrap().totals);
        assert_eq!(v.usage.vms, crate::model::usage::VmCounts::of(&v.vms));
        assert_eq!(v.host, HostStats::default());
        assert!(v.collectors.is_empty() && v.discovered.is_empty());
        assert_eq!((v.seq, v.collected_at), (h.seq, h.collected_at));
    }

    #[test]
    fn ledger_counters_are_the_tenants_own() {
        let mut h = host();
        let q = Quantities {
            cpu_seconds: 1.0,
            ..Quantities::default()
        };
        h.counters = Some(Arc::new(CounterTotals {
            users: KindCounters {
                owners: vec![("u1".into(), q), ("u2".into(), q)],
                other: Some(q),
            },
            projects: KindCounters {
                owners: vec![("p1".into(), q), ("p2".into(), q)],
                other: None,
            },
            vms: ids(&h).iter().map(|i| ((*i).to_owned(), q)).collect(),
        }));
        let v = h.for_tenant(&scope(&["u2"], &[]));
        let c = v.counters.unwrap();
        assert_eq!(c.users.owners, [("u2".to_owned(), q)]);
        assert_eq!(c.users.other, None);
        assert!(c.projects.owners.is_empty());
        let vm_ids: Vec<&str> = c.vms.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(vm_ids, ["vm-000001", "vm-000002"]);
    }

    #[test]
    fn scopes_are_normalised_so_equal_tenants_share_a_view() {
        assert_eq!(scope(&["b", "a", "a"], &[]), scope(&["a", "b"], &[]));
        assert_ne!(scope(&["a"], &[]), scope(&[], &["a"]));
    }
}
