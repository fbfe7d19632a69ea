//! What the engine emits and every sink consumes: [`Notification`]s, each
//! one rule's transitions at one evaluation, holding one [`Alert`] per scope.
//!
//! These types are also the webhook body's `alerts[]` items and the JSON
//! payload stored per episode, so their serde form is a public schema
//! (documented in docs/watchdog.md): add fields, never rename them.
//! Times are RFC 3339 strings in UTC with milliseconds.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::rules::{Scope, Severity};

/// Where an alert is in its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// Why this alert is in this notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// The condition has held for the sustained time: a new episode.
    Fired,
    /// Still firing; the rule's repeat interval (or a sink's re-send) came due.
    Repeat,
    /// The condition has been clear for the recovery time: the episode ends.
    Resolved,
}

impl Transition {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transition::Fired => "fired",
            Transition::Repeat => "repeat",
            Transition::Resolved => "resolved",
        }
    }
}

/// One scope's alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    /// The host's name, as in the snapshot.
    pub host: String,
    /// The rule's metric name (`vm_cpu_utilization_ratio`, ...).
    pub metric: String,
    pub severity: Severity,
    pub scope: Scope,
    /// `host`, `filesystem:/var`, `vm:<id>`: stable across ticks and restarts.
    pub scope_key: String,
    pub status: Status,
    pub transition: Transition,
    /// The value at this evaluation; `null` when the scope is gone (a VM
    /// that stopped) or the value was not measured.
    pub value: Option<f64>,
    pub threshold: f64,
    /// When the episode fired.
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339_opt", default)]
    pub resolved_at: Option<SystemTime>,
    /// One line for people.
    pub summary: String,
    pub context: Context,
}

/// Facts around an alert, so the message alone tells what is going on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FsContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmContext>,
    /// Host memory alerts: RSS of all hypervisor processes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor_rss_bytes: Option<u64>,
    /// Host alerts: VMs running on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_count: Option<usize>,
    /// Host CPU alerts: top VMs by CPU; host memory alerts: by RSS; owner
    /// alerts: the owner's VMs by the rule's metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_vms: Vec<TopVm>,
    /// Owner alerts: who, and the totals over the owner's VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerContext>,
    /// Usage alerts: the window and what the owner used in it (ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageContext>,
}

/// An owner group's usage over a rule's window, from the usage ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageContext {
    /// The rule's window, as configured (`24h`).
    pub window: String,
    pub window_seconds: u64,
    /// The window the ledger answer covered: rows whose interval starts in
    /// `[from, to)` (RFC 3339).
    #[serde(with = "rfc3339")]
    pub from: SystemTime,
    #[serde(with = "rfc3339")]
    pub to: SystemTime,
    /// The group's label in the ledger (name, else id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub cpu_seconds: f64,
    pub vcpu_allocated_hours: f64,
    pub memory_allocated_gib_hours: f64,
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
}

/// An owner group's identity and totals at one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnerContext {
    /// The owner's id, when the metadata has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The owner's VMs on this host.
    pub vm_count: usize,
    /// Host CPU cores in use by the owner's VMs (those with a rate this tick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// vCPUs allocated (VMs with a known count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_vcpus: Option<u64>,
    pub memory_rss_bytes: u64,
    /// Memory allocated (VMs with a known size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsContext {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_vcpus: Option<u32>,
    /// Host CPU cores the VM's process used over the last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    pub memory_rss_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopVm {
    pub vm_id: String,
    pub vm_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    pub memory_rss_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_memory_bytes: Option<u64>,
}

/// One rule's transitions at one evaluation: many VMs crossing the line at
/// once make one notification, not one each. Its serde form is what the
/// outbox stores until a sink confirms (add fields with defaults only: rows
/// written by an older vmscope must still load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub rule: String,
    pub severity: Severity,
    /// The host's name (from the snapshot), for messages and labels.
    pub host: String,
    /// Evaluation time (the snapshot's collection time).
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Sinks to deliver to; `None` means every sink.
    pub sinks: Option<Vec<String>>,
    pub alerts: Vec<Alert>,
}

impl Notification {
    /// Firing when any alert in it is firing.
    pub fn status(&self) -> Status {
        if self.alerts.iter().any(|a| a.status == Status::Firing) {
            Status::Firing
        } else {
            Status::Resolved
        }
    }

    pub fn goes_to(&self, sink: &str) -> bool {
        self.sinks
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == sink))
    }

    pub fn count(&self, t: Transition) -> usize {
        self.alerts.iter().filter(|a| a.transition == t).count()
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}")))
    }
}

pub(crate) mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(*t)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_time(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}"))),
        }
    }
}
