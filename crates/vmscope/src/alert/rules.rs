//! Rule definitions: which value of a snapshot a rule watches, per which
//! scope, and which side of the threshold is bad.
//!
//! Reads: one [`Snapshot`]. Emits: one [`Observation`] per scope the rule
//! covers (the host, each matching filesystem, each VM). Pure: no IO, no
//! clock. A value that is missing this tick (the first tick has no CPU rate;
//! a VM without a known vCPU count has no CPU share) observes as "condition
//! false", so it never fires and lets a firing alert recover.
//!
//! Adding a metric = one [`Metric`] variant, its row in the `match`es below,
//! and a line in `ALL`. [`Scope`] already has an `Owner` variant for
//! per-owner rules.

use std::fmt;

use serde::{Deserialize, Serialize};

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
}

/// What kind of thing a metric is measured per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Host,
    Filesystem,
    Vm,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::HostCpuRatio,
        Metric::HostMemoryUsedRatio,
        Metric::FilesystemFreeGib,
        Metric::FilesystemAvailGib,
        Metric::VmCpuUtilizationRatio,
        Metric::VmMemoryUtilizationRatio,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Metric::HostCpuRatio => "host_cpu_ratio",
            Metric::HostMemoryUsedRatio => "host_memory_used_ratio",
            Metric::FilesystemFreeGib => "filesystem_free_gib",
            Metric::FilesystemAvailGib => "filesystem_avail_gib",
            Metric::VmCpuUtilizationRatio => "vm_cpu_utilization_ratio",
            Metric::VmMemoryUtilizationRatio => "vm_memory_utilization_ratio",
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
        }
    }

    pub const fn is_filesystem(self) -> bool {
        matches!(self.scope_kind(), ScopeKind::Filesystem)
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
            Metric::FilesystemFreeGib | Metric::FilesystemAvailGib => (0.0, 1.0e9),
            _ => (0.0, 1.0),
        }
    }

    pub const fn threshold_unit_hint(self) -> &'static str {
        match self {
            Metric::FilesystemFreeGib | Metric::FilesystemAvailGib => " GiB",
            _ => ", a ratio: 0.8 = 80 %",
        }
    }

    /// True when `value` is on the bad side of `threshold`.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self.direction() {
            Direction::AtOrAbove => value >= threshold,
            Direction::AtOrBelow => value <= threshold,
        }
    }

    /// A value of this metric for people: "93%" or "3.2 GiB".
    pub fn format_value(self, v: f64) -> String {
        match self {
            Metric::FilesystemFreeGib | Metric::FilesystemAvailGib => format!("{v:.1} GiB"),
            _ => format!("{:.0}%", v * 100.0),
        }
    }
}

/// Which filesystems a filesystem rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsSelector {
    All,
    /// Exactly as the device appears in /proc/mounts.
    Device(String),
    Mountpoint(String),
}

impl FsSelector {
    pub fn matches(&self, fs: &FilesystemStats) -> bool {
        match self {
            FsSelector::All => true,
            FsSelector::Device(d) => fs.device == *d,
            FsSelector::Mountpoint(m) => fs.mountpoint == *m,
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
    pub selector: FsSelector,
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
    /// Per-owner rules (a user or project's VMs together).
    Owner {
        owner_kind: OwnerKind,
        owner_id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    User,
    Project,
}

impl Scope {
    /// Stable identity: `host`, `filesystem:/var`, `vm:<id>`, `owner:user:<id>`.
    pub fn key(&self) -> String {
        match self {
            Scope::Host => "host".to_owned(),
            Scope::Filesystem { mountpoint, .. } => format!("filesystem:{mountpoint}"),
            Scope::Vm { vm_id, .. } => format!("vm:{vm_id}"),
            Scope::Owner {
                owner_kind: OwnerKind::User,
                owner_id,
            } => format!("owner:user:{owner_id}"),
            Scope::Owner {
                owner_kind: OwnerKind::Project,
                owner_id,
            } => format!("owner:project:{owner_id}"),
        }
    }

    /// Short name for text: "host", "/var (/dev/sda2)", "VM web1".
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
            } => format!(
                "{} {owner_id}",
                match owner_kind {
                    OwnerKind::User => "user",
                    OwnerKind::Project => "project",
                }
            ),
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
    /// Every scope this rule covers in `snap`, with its value.
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
        }
    }
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
        };
        assert_eq!(o.key(), "owner:project:p1");
    }
}
