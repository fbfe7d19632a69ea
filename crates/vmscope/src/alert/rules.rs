//! Rule definitions: which value of a snapshot a rule watches, per which
//! scope, and which side of the threshold is bad.
//!
//! Reads: one [`Snapshot`] (usage rules: one ledger answer's groups).
//! Emits: one [`Observation`] per scope the rule covers (the host, each
//! matching filesystem, each VM, each owner group).
//! Pure: no IO, no clock. A value that is missing this tick (the first tick
//! has no CPU rate; a VM without a known vCPU count has no CPU share)
//! observes as "condition false", so it never fires and lets a firing alert
//! recover.
//!
//! Owner rules group the VMs by user or project ([`OwnerKind`], the rule's
//! `group_by`). The group key is the owner identity rule's
//! ([`crate::model::identity`]: id, else the name joined to the one id it
//! carries on the host); a VM with neither (or no owner at all) belongs to
//! no group of that kind. A group's value is a sum over its
//! VMs; VMs whose part is unknown this tick (no CPU rate yet, no known
//! allocation) add nothing, and a group where no VM's part is known has no
//! value.
//!
//! Usage rules (`owner_usage_*`) are owner rules over the usage ledger
//! rather than the snapshot: their value is what the owner group used over
//! the rule's `window` up to now, from a cached ledger answer
//! ([`super::usage`]); [`usage_observations`] turns one answer into
//! observations. A group with no ledger rows in the window used nothing
//! (value 0), while no answer at all is "unknown": the engine then holds
//! the rule's states rather than count it as "condition false".
//!
//! Adding a metric = one [`Metric`] variant, its row in the `match`es below,
//! and a line in `ALL`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::identity::OwnerIndex;
pub use crate::model::identity::{OwnerKind, id as owner_id, name as owner_name};
use crate::model::{FilesystemStats, Snapshot, VmStats};

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// How loud an alert is; a label on every notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
    pub fn from_name(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of the threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// value >= threshold fires (usage).
    AtOrAbove,
    /// value <= threshold fires (free space).
    AtOrBelow,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Share of all host CPUs busy (0..1).
    HostCpuRatio,
    /// Host memory in use, (total - available) / total (0..1).
    HostMemoryUsedRatio,
    /// Free bytes (for root) on a filesystem, in GiB.
    FilesystemFreeGib,
    /// Bytes available to unprivileged users on a filesystem, in GiB.
    FilesystemAvailGib,
    /// A VM's host CPU use as a share of its allocated vCPUs (0..1).
    VmCpuUtilizationRatio,
    /// A VM's RSS as a share of its allocated memory (0..1).
    VmMemoryUtilizationRatio,
    /// Host CPU cores in use by an owner's VMs together (1.0 = one core).
    OwnerCpuCores,
    /// vCPUs allocated to an owner's VMs together.
    OwnerAllocatedVcpus,
    /// RSS of an owner's VMs together, in GiB.
    OwnerMemoryRssGib,
    /// Memory allocated to an owner's VMs together, in GiB.
    OwnerMemoryAllocatedGib,
    /// CPU seconds the owner's VMs used over the rule's window (ledger).
    OwnerUsageCpuSeconds,
    /// vCPU-hours allocated to the owner's VMs over the window (ledger;
    /// while running and observed).
    OwnerUsageVcpuHours,
    /// GiB-hours of memory allocated to the owner's VMs over the window.
    OwnerUsageMemoryGibHours,
    /// GiB the owner's VMs received and sent together over the window.
    OwnerUsageNetworkGib,
}

/// What kind of thing a metric is measured per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Host,
    Filesystem,
    Vm,
    Owner,
}

impl Metric {
    pub const ALL: [Metric; 14] = [
        Metric::HostCpuRatio,
        Metric::HostMemoryUsedRatio,
        Metric::FilesystemFreeGib,
        Metric::FilesystemAvailGib,
        Metric::VmCpuUtilizationRatio,
        Metric::VmMemoryUtilizationRatio,
        Metric::OwnerCpuCores,
        Metric::OwnerAllocatedVcpus,
        Metric::OwnerMemoryRssGib,
        Metric::OwnerMemoryAllocatedGib,
        Metric::OwnerUsageCpuSeconds,
        Metric::OwnerUsageVcpuHours,
        Metric::OwnerUsageMemoryGibHours,
        Metric::OwnerUsageNetworkGib,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Metric::HostCpuRatio => "host_cpu_ratio",
            Metric::HostMemoryUsedRatio => "host_memory_used_ratio",
            Metric::FilesystemFreeGib => "filesystem_free_gib",
            Metric::FilesystemAvailGib => "filesystem_avail_gib",
            Metric::VmCpuUtilizationRatio => "vm_cpu_utilization_ratio",
            Metric::VmMemoryUtilizationRatio => "vm_memory_utilization_ratio",
            Metric::OwnerCpuCores => "owner_cpu_cores",
            Metric::OwnerAllocatedVcpus => "owner_allocated_vcpus",
            Metric::OwnerMemoryRssGib => "owner_memory_rss_gib",
            Metric::OwnerMemoryAllocatedGib => "owner_memory_allocated_gib",
            Metric::OwnerUsageCpuSeconds => "owner_usage_cpu_seconds",
            Metric::OwnerUsageVcpuHours => "owner_usage_vcpu_hours",
            Metric::OwnerUsageMemoryGibHours => "owner_usage_memory_gib_hours",
            Metric::OwnerUsageNetworkGib => "owner_usage_network_gib",
        }
    }

    pub fn from_name(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }

    pub const fn scope_kind(self) -> ScopeKind {
        match self {
            Metric::HostCpuRatio | Metric::HostMemoryUsedRatio => ScopeKind::Host,
            Metric::FilesystemFreeGib | Metric::FilesystemAvailGib => ScopeKind::Filesystem,
            Metric::VmCpuUtilizationRatio | Metric::VmMemoryUtilizationRatio => ScopeKind::Vm,
            Metric::OwnerCpuCores
            | Metric::OwnerAllocatedVcpus
            | Metric::OwnerMemoryRssGib
            | Metric::OwnerMemoryAllocatedGib
            | Metric::OwnerUsageCpuSeconds
            | Metric::OwnerUsageVcpuHours
            | Metric::OwnerUsageMemoryGibHours
            | Metric::OwnerUsageNetworkGib => ScopeKind::Owner,
        }
    }

    pub const fn is_filesystem(self) -> bool {
        matches!(self.scope_kind(), ScopeKind::Filesystem)
    }

    pub const fn is_owner(self) -> bool {
        matches!(self.scope_kind(), ScopeKind::Owner)
    }

    /// Owner usage over a window, read from the ledger (not the snapshot).
    pub const fn is_usage(self) -> bool {
        matches!(
            self,
            Metric::OwnerUsageCpuSeconds
                | Metric::OwnerUsageVcpuHours
                | Metric::OwnerUsageMemoryGibHours
                | Metric::OwnerUsageNetworkGib
        )
    }

    pub const fn direction(self) -> Direction {
        match self {
            Metric::FilesystemFreeGib | Metric::FilesystemAvailGib => Direction::AtOrBelow,
            _ => Direction::AtOrAbove,
        }
    }

    /// Inclusive range a threshold must lie in.
    pub const fn threshold_range(self) -> (f64, f64) {
        match self {
            Metric::FilesystemFreeGib
            | Metric::FilesystemAvailGib
            | Metric::OwnerMemoryRssGib
            | Metric::OwnerMemoryAllocatedGib => (0.0, 1.0e9),
            Metric::OwnerCpuCores | Metric::OwnerAllocatedVcpus => (0.0, 1.0e6),
            Metric::OwnerUsageCpuSeconds
            | Metric::OwnerUsageVcpuHours
            | Metric::OwnerUsageMemoryGibHours
            | Metric::OwnerUsageNetworkGib => (0.0, 1.0e12),
            Metric::HostCpuRatio
            | Metric::HostMemoryUsedRatio
            | Metric::VmCpuUtilizationRatio
            | Metric::VmMemoryUtilizationRatio => (0.0, 1.0),
        }
    }

    pub const fn threshold_unit_hint(self) -> &'static str {
        match self {
            Metric::FilesystemFreeGib
            | Metric::FilesystemAvailGib
            | Metric::OwnerMemoryRssGib
            | Metric::OwnerMemoryAllocatedGib => " GiB",
            Metric::OwnerCpuCores => " cores",
            Metric::OwnerAllocatedVcpus => " vCPUs",
            Metric::OwnerUsageCpuSeconds => " CPU seconds",
            Metric::OwnerUsageVcpuHours => " vCPU-hours",
            Metric::OwnerUsageMemoryGibHours => " GiB-hours",
            Metric::OwnerUsageNetworkGib => " GiB",
            Metric::HostCpuRatio
            | Metric::HostMemoryUsedRatio
            | Metric::VmCpuUtilizationRatio
            | Metric::VmMemoryUtilizationRatio => ", a ratio: 0.8 = 80 %",
        }
    }

    /// True when `value` is on the bad side of `threshold`.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self.direction() {
            Direction::AtOrAbove => value >= threshold,
            Direction::AtOrBelow => value <= threshold,
        }
    }

    /// A value of this metric for people: "93%", "3.2 GiB", "6.50 cores",
    /// "24 vCPUs".
    pub fn format_value(self, v: f64) -> String {
        match self {
            Metric::FilesystemFreeGib
            | Metric::FilesystemAvailGib
            | Metric::OwnerMemoryRssGib
            | Metric::OwnerMemoryAllocatedGib => format!("{v:.1} GiB"),
            Metric::OwnerCpuCores => format!("{v:.2} cores"),
            Metric::OwnerAllocatedVcpus => format!("{v:.0} vCPUs"),
            Metric::OwnerUsageCpuSeconds => format!("{v:.0} CPU seconds"),
            Metric::OwnerUsageVcpuHours => format!("{v:.1} vCPU-hours"),
            Metric::OwnerUsageMemoryGibHours => format!("{v:.1} GiB-hours"),
            Metric::OwnerUsageNetworkGib => format!("{v:.2} GiB"),
            Metric::HostCpuRatio
            | Metric::HostMemoryUsedRatio
            | Metric::VmCpuUtilizationRatio
            | Metric::VmMemoryUtilizationRatio => format!("{:.0}%", v * 100.0),
        }
    }
}

/// Which scopes a rule covers beyond what its metric implies: for
/// filesystem metrics, all filesystems or one device or mountpoint; for
/// owner metrics, whether VMs are grouped by user or by project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeSelector {
    /// Every scope of the metric's kind (owner metrics: user groups and
    /// project groups both; the config always names one kind).
    All,
    /// Exactly as the device appears in /proc/mounts.
    Device(String),
    Mountpoint(String),
    /// Owner metrics: one group per owner of this kind.
    GroupBy(OwnerKind),
    /// Usage metrics: one group per owner of this kind, summing the
    /// ledger over `window` up to now.
    Usage {
        by: OwnerKind,
        window: Duration,
    },
}

/// The selector's name from before owner rules, when it only chose
/// filesystems; kept so existing callers compile.
pub type FsSelector = ScopeSelector;

impl ScopeSelector {
    pub fn matches(&self, fs: &FilesystemStats) -> bool {
        match self {
            ScopeSelector::All => true,
            ScopeSelector::Device(d) => fs.device == *d,
            ScopeSelector::Mountpoint(m) => fs.mountpoint == *m,
            ScopeSelector::GroupBy(_) | ScopeSelector::Usage { .. } => false,
        }
    }

    /// The owner kinds an owner rule groups by.
    pub fn owner_kinds(&self) -> &'static [OwnerKind] {
        match self {
            ScopeSelector::GroupBy(OwnerKind::User)
            | ScopeSelector::Usage {
                by: OwnerKind::User,
                ..
            } => &[OwnerKind::User],
            ScopeSelector::GroupBy(OwnerKind::Project)
            | ScopeSelector::Usage {
                by: OwnerKind::Project,
                ..
            } => &[OwnerKind::Project],
            ScopeSelector::All => &OwnerKind::ALL,
            ScopeSelector::Device(_) | ScopeSelector::Mountpoint(_) => &[],
        }
    }
}

/// One resolved, validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub metric: Metric,
    pub threshold: f64,
    pub sustained: std::time::Duration,
    pub recovery: std::time::Duration,
    pub repeat_interval: Option<std::time::Duration>,
    pub severity: Severity,
    /// `None`: every sink.
    pub sinks: Option<Vec<String>>,
    pub selector: ScopeSelector,
}

/// What an alert is about. The key (`Scope::key`) identifies an episode
/// across ticks and restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    Host,
    Filesystem {
        mountpoint: String,
        device: String,
        fstype: String,
    },
    Vm {
        vm_id: String,
        vm_name: String,
    },
    /// Per-owner rules (a user's or project's VMs together).
    Owner {
        owner_kind: OwnerKind,
        /// The group key: the owner's id, or its name when no VM of the
        /// group carries an id ([`OwnerIndex::key`]).
        owner_id: String,
        /// The owner's name where the metadata has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_name: Option<String>,
    },
}

/// Which owner group each VM of `snap` belongs to, for one kind: the
/// identity rule's index over the snapshot's owners.
fn owner_index(snap: &Snapshot, kind: OwnerKind) -> OwnerIndex<'_> {
    OwnerIndex::new(kind, snap.vms.iter().filter_map(|vm| vm.owner.as_deref()))
}

/// The key of the owner group `vm` belongs to; `None` when the VM has no
/// owner of the index's kind.
fn owner_key<'a>(index: &OwnerIndex<'a>, vm: &'a VmStats) -> Option<&'a str> {
    vm.owner.as_ref().and_then(|o| index.key(o))
}

/// The VMs of `snap` in the owner group (`kind`, `key`), in id order.
pub fn owner_vms<'a>(
    snap: &'a Snapshot,
    kind: OwnerKind,
    key: &'a str,
) -> impl Iterator<Item = &'a VmStats> + 'a {
    let index = owner_index(snap, kind);
    snap.vms
        .iter()
        .filter(move |vm| owner_key(&index, vm) == Some(key))
}

impl Scope {
    /// Stable identity: `host`, `filesystem:/var`, `vm:<id>`, `owner:user:<id>`.
    pub fn key(&self) -> String {
        match self {
            Scope::Host => "host".to_owned(),
            Scope::Filesystem { mountpoint, .. } => format!("filesystem:{mountpoint}"),
            Scope::Vm { vm_id, .. } => format!("vm:{vm_id}"),
            Scope::Owner {
                owner_kind,
                owner_id,
                ..
            } => format!("owner:{owner_kind}:{owner_id}"),
        }
    }

    /// Short name for text: "host", "/var (/dev/sda2)", "VM web1",
    /// "user alice (u-1)".
    pub fn describe(&self) -> String {
        match self {
            Scope::Host => "host".to_owned(),
            Scope::Filesystem {
                mountpoint, device, ..
            } => format!("{mountpoint} ({device})"),
            Scope::Vm { vm_name, .. } => format!("VM {vm_name}"),
            Scope::Owner {
                owner_kind,
                owner_id,
                owner_name,
            } => match owner_name {
                Some(name) if name != owner_id => format!("{owner_kind} {name} ({owner_id})"),
                _ => format!("{owner_kind} {owner_id}"),
            },
        }
    }
}

impl Metric {
    /// One VM's part of an owner metric; `None` when unknown this tick.
    pub fn owner_part(self, vm: &VmStats) -> Option<f64> {
        match self {
            Metric::OwnerCpuCores => vm.rates.map(|r| r.cpu_cores),
            Metric::OwnerAllocatedVcpus => vm.allocated_vcpus.map(f64::from),
            Metric::OwnerMemoryRssGib => Some(vm.memory_rss_bytes as f64 / GIB),
            Metric::OwnerMemoryAllocatedGib => vm.allocated_memory_bytes.map(|b| b as f64 / GIB),
            _ => None,
        }
    }
}

/// One scope's reading of one rule at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub scope: Scope,
    /// `None` when the value is unknown this tick (treated as not breaching).
    pub value: Option<f64>,
}

impl Observation {
    pub fn breaches(&self, rule: &Rule) -> bool {
        self.value
            .is_some_and(|v| rule.metric.breaches(v, rule.threshold))
    }
}

impl Rule {
    /// The ledger query a usage rule reads (group kind, window); `None`
    /// for every other rule.
    pub fn usage_key(&self) -> Option<UsageKey> {
        match self.selector {
            ScopeSelector::Usage { by, window } if self.metric.is_usage() => {
                Some(UsageKey { by, window })
            }
            _ => None,
        }
    }

    /// Every scope this rule covers in `snap`, with its value. Usage rules
    /// observe nothing here: their values come from
    /// [`usage_observations`].
    pub fn observe(&self, snap: &Snapshot) -> Vec<Observation> {
        match self.metric {
            Metric::HostCpuRatio => vec![Observation {
                scope: Scope::Host,
                value: snap.host.cpu_ratio,
            }],
            Metric::HostMemoryUsedRatio => vec![Observation {
                scope: Scope::Host,
                // A zero total means memory was not read this tick.
                value: (snap.host.memory_total_bytes > 0).then_some(snap.host.memory_used_ratio),
            }],
            Metric::FilesystemFreeGib | Metric::FilesystemAvailGib => snap
                .host
                .filesystems
                .iter()
                .filter(|fs| self.selector.matches(fs))
                .map(|fs| Observation {
                    scope: fs_scope(fs),
                    value: Some(
                        if self.metric == Metric::FilesystemFreeGib {
                            fs.free_bytes
                        } else {
                            fs.avail_bytes
                        } as f64
                            / GIB,
                    ),
                })
                .collect(),
            Metric::VmCpuUtilizationRatio => snap
                .vms
                .iter()
                .map(|vm| Observation {
                    scope: vm_scope(vm),
                    value: vm.rates.and_then(|r| r.cpu_utilization_ratio),
                })
                .collect(),
            Metric::VmMemoryUtilizationRatio => snap
                .vms
                .iter()
                .map(|vm| Observation {
                    scope: vm_scope(vm),
                    value: vm.memory_utilization_ratio,
                })
                .collect(),
            Metric::OwnerCpuCores
            | Metric::OwnerAllocatedVcpus
            | Metric::OwnerMemoryRssGib
            | Metric::OwnerMemoryAllocatedGib => self
                .selector
                .owner_kinds()
                .iter()
                .flat_map(|kind| owner_observations(self.metric, *kind, snap))
                .collect(),
            Metric::OwnerUsageCpuSeconds
            | Metric::OwnerUsageVcpuHours
            | Metric::OwnerUsageMemoryGibHours
            | Metric::OwnerUsageNetworkGib => Vec::new(),
        }
    }
}

/// Which ledger answer a usage rule reads: owners of one kind, usage over
/// `window` up to now. Rules with the same key share one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub by: OwnerKind,
    pub window: Duration,
}

/// One owner group's usage over a window, as the ledger sums it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageGroup {
    /// The group's label (name, else id) in its newest ledger row.
    pub label: Option<String>,
    pub cpu_seconds: f64,
    pub vcpu_allocated_seconds: f64,
    pub memory_allocated_byte_seconds: f64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl Metric {
    /// A usage metric's value for one group (0 for other metrics).
    pub fn usage_value(self, g: &UsageGroup) -> f64 {
        match self {
            Metric::OwnerUsageCpuSeconds => g.cpu_seconds,
            Metric::OwnerUsageVcpuHours => g.vcpu_allocated_seconds / 3600.0,
            Metric::OwnerUsageMemoryGibHours => g.memory_allocated_byte_seconds / 3600.0 / GIB,
            Metric::OwnerUsageNetworkGib => {
                g.net_rx_bytes.saturating_add(g.net_tx_bytes) as f64 / GIB
            }
            _ => 0.0,
        }
    }
}

/// A usage rule's observations from one answer: one per group of the
/// answer's kind, in key order, its value what the group used.
pub fn usage_observations(
    metric: Metric,
    by: OwnerKind,
    groups: &BTreeMap<String, UsageGroup>,
) -> Vec<Observation> {
    groups
        .iter()
        .map(|(key, g)| Observation {
            scope: usage_scope(by, key, g.label.as_deref()),
            value: Some(metric.usage_value(g)),
        })
        .collect()
}

/// The owner scope of a ledger group: the same key as the owner rules'
/// (the ledger stores the identity rule's key), named by its label when
/// that says more than the key.
pub fn usage_scope(by: OwnerKind, key: &str, label: Option<&str>) -> Scope {
    Scope::Owner {
        owner_kind: by,
        owner_id: key.to_owned(),
        owner_name: label.filter(|l| *l != key).map(str::to_owned),
    }
}

/// One observation per owner group of `kind` in `snap`, in key order.
fn owner_observations(metric: Metric, kind: OwnerKind, snap: &Snapshot) -> Vec<Observation> {
    struct Group<'a> {
        name: Option<&'a str>,
        sum: Option<f64>,
    }
    let mut groups: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    let index = owner_index(snap, kind);
    for vm in &snap.vms {
        let (Some(owner), Some(key)) = (vm.owner.as_ref(), owner_key(&index, vm)) else {
            continue;
        };
        let g = groups.entry(key).or_insert(Group {
            name: None,
            sum: None,
        });
        // The first name seen (VMs are in id order) names the group.
        if g.name.is_none() {
            g.name = owner_name(owner, kind);
        }
        if let Some(part) = metric.owner_part(vm) {
            g.sum = Some(g.sum.unwrap_or(0.0) + part);
        }
    }
    groups
        .into_iter()
        .map(|(key, g)| Observation {
            scope: Scope::Owner {
                owner_kind: kind,
                owner_id: key.to_owned(),
                owner_name: g.name.map(str::to_owned),
            },
            value: g.sum,
        })
        .collect()
}

pub fn fs_scope(fs: &FilesystemStats) -> Scope {
    Scope::Filesystem {
        mountpoint: fs.mountpoint.clone(),
        device: fs.device.clone(),
        fstype: fs.fstype.clone(),
    }
}

pub fn vm_scope(vm: &VmStats) -> Scope {
    Scope::Vm {
        vm_id: vm.id.clone(),
        vm_name: vm.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
        assert_eq!(Metric::from_name("cpu"), None);
    }

    #[test]
    fn direction_is_inclusive() {
        assert!(Metric::HostCpuRatio.breaches(0.8, 0.8));
        assert!(!Metric::HostCpuRatio.breaches(0.79, 0.8));
        assert!(Metric::FilesystemFreeGib.breaches(5.0, 5.0));
        assert!(!Metric::FilesystemFreeGib.breaches(5.1, 5.0));
    }

    fn owned(id: &str, user: Option<&str>, cores: Option<f64>, vcpus: Option<u32>) -> VmStats {
        VmStats {
            id: id.to_owned(),
            name: id.to_owned(),
            state: crate::model::VmState::Running,
            owner: user.map(|u| {
                std::sync::Arc::new(Owner {
                    user_id: Some(format!("u-{u}")),
                    user_name: Some(u.to_owned()),
                    ..Owner::default()
                })
            }),
            allocated_vcpus: vcpus,
            memory_rss_bytes: 1 << 30,
            rates: cores.map(|c| crate::model::VmRates {
                cpu_cores: c,
                ..crate::model::VmRates::default()
            }),
            collect_success: true,
            ..VmStats::unmeasured(1, crate::model::Source::Libvirt)
        }
    }

    fn owner_rule(metric: Metric) -> Rule {
        Rule {
            name: "o".to_owned(),
            metric,
            threshold: 1.0,
            sustained: std::time::Duration::from_secs(5),
            recovery: std::time::Duration::from_secs(5),
            repeat_interval: None,
            severity: Severity::Warning,
            sinks: None,
            selector: ScopeSelector::GroupBy(OwnerKind::User),
        }
    }

    fn values(rule: &Rule, vms: Vec<VmStats>) -> Vec<(String, Option<f64>)> {
        let mut snap = Snapshot::empty(std::time::Duration::from_secs(5));
        snap.vms = vms;
        rule.observe(&snap)
            .into_iter()
            .map(|o| (o.scope.key(), o.value))
            .collect()
    }

    /// A VM whose metadata names its owner without the id joins the group
    /// of the one id other VMs carry with that name; an ambiguous name (two
    /// ids) stays a group of its own.
    #[test]
    fn name_only_vms_join_the_id_group_of_their_name() {
        let with = |vm: &str, id: Option<&str>, name: &str| {
            let mut v = owned(vm, Some(name), None, Some(1));
            if let Some(o) = v.owner.as_mut().map(std::sync::Arc::make_mut) {
                o.user_id = id.map(str::to_owned);
            }
            v
        };
        let vms = vec![
            with("a1", Some("u1"), "alice"),
            with("a2", None, "alice"),
            with("b1", None, "bob"),
            with("c1", Some("u8"), "carol"),
            with("c2", Some("u9"), "carol"),
            with("c3", None, "carol"),
        ];
        assert_eq!(
            values(&owner_rule(Metric::OwnerAllocatedVcpus), vms),
            vec![
                ("owner:user:bob".to_owned(), Some(1.0)),
                ("owner:user:carol".to_owned(), Some(1.0)),
                ("owner:user:u1".to_owned(), Some(2.0)),
                ("owner:user:u8".to_owned(), Some(1.0)),
                ("owner:user:u9".to_owned(), Some(1.0)),
            ]
        );
    }

    #[test]
    fn owner_sums_count_known_parts_and_skip_unowned_vms() {
        let vms = || {
            vec![
                owned("a1", Some("alice"), Some(1.5), Some(4)),
                owned("a2", Some("alice"), None, None), // first tick, no metadata
                owned("b1", Some("bob"), None, None),
                owned("x1", None, Some(9.0), Some(64)),
            ]
        };
        assert_eq!(
            values(&owner_rule(Metric::OwnerCpuCores), vms()),
            vec![
                ("owner:user:u-alice".to_owned(), Some(1.5)),
                ("owner:user:u-bob".to_owned(), None),
            ]
        );
        assert_eq!(
            values(&owner_rule(Metric::OwnerAllocatedVcpus), vms()),
            vec![
                ("owner:user:u-alice".to_owned(), Some(4.0)),
                ("owner:user:u-bob".to_owned(), None),
            ]
        );
        assert_eq!(
            values(&owner_rule(Metric::OwnerMemoryRssGib), vms()),
            vec![
                ("owner:user:u-alice".to_owned(), Some(2.0)),
                ("owner:user:u-bob".to_owned(), Some(1.0)),
            ]
        );
        // An owner group with no known value never breaches.
        let bob = Observation {
            scope: Scope::Host,
            value: None,
        };
        assert!(!bob.breaches(&owner_rule(Metric::OwnerCpuCores)));
    }

    #[test]
    fn scope_keys() {
        assert_eq!(Scope::Host.key(), "host");
        let vm = Scope::Vm {
            vm_id: "u-1".into(),
            vm_name: "web".into(),
        };
        assert_eq!(vm.key(), "vm:u-1");
        let o = Scope::Owner {
            owner_kind: OwnerKind::Project,
            owner_id: "p1".into(),
            owner_name: Some("research".into()),
        };
        assert_eq!(o.key(), "owner:project:p1");
        assert_eq!(o.describe(), "project research (p1)");
    }
}
