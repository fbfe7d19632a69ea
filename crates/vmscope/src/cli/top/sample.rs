//! One read of what `vmscope top` shows: cumulative counters and gauges per
//! VM, the host's figures and the firing alerts, from either data source.
//!
//! Reads: a local [`Snapshot`] ([`Sample::from_snapshot`]) or the body of a
//! running agent's `/metrics.json` ([`Sample::from_metrics_json`], pure:
//! tested on literal documents) plus its `/api/v1/alerts` answer
//! ([`parse_alerts`]). Emits: a [`Sample`]; rates are the model's job
//! (`super::model`), from two samples, so both sources give the same
//! figures. Fails: [`ParseError`] for a document that is not the agent's
//! JSON exposition; series with unknown labels or odd values are skipped,
//! never fatal (a newer agent may add families).

use std::collections::HashMap;

use serde::Deserialize;

use crate::model::{Snapshot, VmStats, identity};

/// The longest string (VM name, owner, interface) kept from an agent's
/// answer, in bytes: the agent caps its labels at 256 already; a foreign
/// or broken server must not grow top's memory through one label.
const MAX_TEXT: usize = 256;
/// The most VMs, vCPUs per VM, TAPs per VM and alerts kept from one answer.
const MAX_VMS: usize = 100_000;
const MAX_PER_VM: usize = 1024;
const MAX_ALERTS: usize = 10_000;

/// Everything top knows after one read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Unix seconds the measurements were taken (the agent's snapshot time,
    /// not when top read them: two reads of one snapshot are one sample).
    pub at: f64,
    /// `None`: the source does not show the host (a tenant's token).
    pub host: Option<HostSample>,
    /// Sorted by id.
    pub vms: Vec<VmSample>,
    /// `None`: no alert list (local mode, or the agent's watchdog is off).
    pub alerts: Option<Vec<Alert>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    pub hostname: Option<String>,
    pub cpus: u32,
    /// Busy share of all CPUs over the agent's last interval.
    pub cpu_ratio: Option<f64>,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub load: [f64; 3],
}

/// One VM: identity, gauges, and the counters rates are made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSample {
    pub id: String,
    pub name: String,
    /// Owner labels (name, else id), as `vmscope vms` shows them.
    pub user: Option<String>,
    pub project: Option<String>,
    /// `running`, `paused`, ... (`crate::model::VmState::as_str`).
    pub state: String,
    pub hypervisor: String,
    pub vcpus_allocated: Option<u32>,
    pub memory_allocated_bytes: Option<u64>,
    pub memory_rss_bytes: u64,
    /// Unix seconds the hypervisor process started (0: unknown).
    pub start_time_seconds: f64,
    /// user + system, all threads of the hypervisor process.
    pub cpu_seconds: f64,
    /// Time running guest code (KVM), part of `cpu_seconds`.
    pub guest_seconds: Option<f64>,
    pub vcpus: Vec<VcpuSample>,
    pub taps: Vec<TapSample>,
    /// All disks: the hypervisor API's per-device sums when it has them,
    /// else what the process made the block layer read and write.
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
}

impl VmSample {
    /// `user/project`, `user`, `-/project` or `-`: the owner as one cell
    /// and one grouping key.
    pub fn owner(&self) -> String {
        match (&self.user, &self.project) {
            (Some(u), Some(p)) => format!("{u}/{p}"),
            (Some(u), None) => u.clone(),
            (None, Some(p)) => format!("-/{p}"),
            (None, None) => "-".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VcpuSample {
    pub index: u32,
    pub cpu_seconds: f64,
    /// Run-queue wait: the guest's steal.
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TapSample {
    pub interface: String,
    /// In the VM's direction: what the guest received.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A firing alert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alert {
    pub rule: String,
    /// `vm:<id>`, `host`, `owner:user:<key>`, ...
    pub scope: String,
    pub severity: String,
    pub started_at: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("not the agent's JSON exposition: {0}")]
    Json(String),
}

impl Sample {
    /// A local tick's snapshot.
    pub fn from_snapshot(snap: &Snapshot) -> Sample {
        let h = &snap.host;
        Sample {
            at: snap.collected_at_unix(),
            host: Some(HostSample {
                hostname: h.hostname.clone(),
                cpus: h.cpus,
                cpu_ratio: h.cpu_ratio,
                memory_total_bytes: h.memory_total_bytes,
                memory_available_bytes: h.memory_available_bytes,
                load: [h.load1, h.load5, h.load15],
            }),
            vms: snap.vms.iter().map(vm_from_stats).collect(),
            alerts: None,
        }
    }

    /// The body of `/metrics.json` (see `crate::export::writer`): the same
    /// families as `/metrics`, so a tenant's token gives the tenant's VMs.
    pub fn from_metrics_json(body: &[u8]) -> Result<Sample, ParseError> {
        let doc: Doc<'_> =
            serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
        let mut vms: HashMap<&str, VmSample> = HashMap::new();
        let mut host = HostSample::default();
        let mut host_seen = false;
        let mut at = 0.0;
        // Device sums, kept apart: they replace /proc/PID/io where present.
        let mut dev: HashMap<&str, (u64, u64)> = HashMap::new();
        for fam in &doc.families {
            for s in &fam.samples {
                let value = s.value.as_f64();
                let label = |k: &str| s.labels.get(k);
                let Some(id) = label("vm_id") else {
                    // Host and vmscope's own families.
                    host_seen |= fam.name.starts_with("vmscope_host_");
                    match fam.name.as_ref() {
                        "vmscope_snapshot_timestamp_seconds" => at = value.unwrap_or(0.0),
                        "vmscope_host_cpus" => host.cpus = value.map_or(0, |v| v as u32),
                        "vmscope_host_cpu_ratio" => host.cpu_ratio = value,
                        "vmscope_host_memory_total_bytes" => {
                            host.memory_total_bytes = value.map_or(0, |v| v as u64);
                        }
                        "vmscope_host_memory_available_bytes" => {
                            host.memory_available_bytes = value.map_or(0, |v| v as u64);
                        }
                        "vmscope_host_load1" => host.load[0] = value.unwrap_or(0.0),
                        "vmscope_host_load5" => host.load[1] = value.unwrap_or(0.0),
                        "vmscope_host_load15" => host.load[2] = value.unwrap_or(0.0),
                        "vmscope_build_info" | "vmscope_vms" => {}
                        _ => {}
                    }
                    continue;
                };
                if vms.len() >= MAX_VMS && !vms.contains_key(id) {
                    continue;
                }
                let vm = vms.entry(id).or_insert_with(|| VmSample {
                    id: capped(id),
                    name: capped(label("vm_name").unwrap_or(id)),
                    state: "unknown".to_owned(),
                    ..VmSample::default()
                });
                let Some(v) = value else { continue };
                match fam.name.as_ref() {
                    "vmscope_vm_info" => {
                        vm.hypervisor = capped(label("hypervisor").unwrap_or_default());
                        vm.user = label("owner_user").map(capped);
                        vm.project = label("owner_project").map(capped);
                    }
                    "vmscope_vm_state" if v > 0.5 => {
                        vm.state = capped(label("state").unwrap_or("unknown"));
                    }
                    "vmscope_vm_start_time_seconds" => vm.start_time_seconds = v,
                    "vmscope_vm_cpu_seconds_total" => vm.cpu_seconds += v,
                    "vmscope_vm_cpu_guest_seconds_total" => vm.guest_seconds = Some(v),
                    "vmscope_vm_vcpu_seconds_total" | "vmscope_vm_vcpu_wait_seconds_total" => {
                        let Some(index) = label("vcpu").and_then(|i| i.parse::<u32>().ok()) else {
                            continue;
                        };
                        let wait = fam.name == "vmscope_vm_vcpu_wait_seconds_total";
                        let slot = match vm.vcpus.iter().position(|c| c.index == index) {
                            Some(i) => vm.vcpus.get_mut(i),
                            None if vm.vcpus.len() < MAX_PER_VM => {
                                vm.vcpus.push(VcpuSample {
                                    index,
                                    ..VcpuSample::default()
                                });
                                vm.vcpus.last_mut()
                            }
                            None => None,
                        };
                        if let Some(c) = slot {
                            if wait {
                                c.wait_seconds = Some(v);
                            } else {
                                c.cpu_seconds = v;
                            }
                        }
                    }
                    "vmscope_vm_allocated_vcpus" => vm.vcpus_allocated = Some(v as u32),
                    "vmscope_vm_memory_allocated_bytes" => {
                        vm.memory_allocated_bytes = Some(v as u64);
                    }
                    "vmscope_vm_memory_rss_bytes" => vm.memory_rss_bytes = v as u64,
                    "vmscope_vm_network_receive_bytes_total"
                    | "vmscope_vm_network_transmit_bytes_total" => {
                        let Some(name) = label("interface") else {
                            continue;
                        };
                        let slot = match vm.taps.iter().position(|t| t.interface == name) {
                            Some(i) => vm.taps.get_mut(i),
                            None if vm.taps.len() < MAX_PER_VM => {
                                vm.taps.push(TapSample {
                                    interface: capped(name),
                                    ..TapSample::default()
                                });
                                vm.taps.last_mut()
                            }
                            None => None,
                        };
                        if let Some(t) = slot {
                            if fam.name == "vmscope_vm_network_receive_bytes_total" {
                                t.rx_bytes = v as u64;
                            } else {
                                t.tx_bytes = v as u64;
                            }
                        }
                    }
                    "vmscope_vm_io_read_bytes_total" => vm.disk_read_bytes = Some(v as u64),
                    "vmscope_vm_io_write_bytes_total" => vm.disk_write_bytes = Some(v as u64),
                    "vmscope_vm_disk_read_bytes_total" => {
                        let d = dev.entry(id).or_default();
                        d.0 = d.0.saturating_add(v as u64);
                    }
                    "vmscope_vm_disk_write_bytes_total" => {
                        let d = dev.entry(id).or_default();
                        d.1 = d.1.saturating_add(v as u64);
                    }
                    _ => {}
                }
            }
        }
        for (id, (r, w)) in dev {
            if let Some(vm) = vms.get_mut(id) {
                vm.disk_read_bytes = Some(r);
                vm.disk_write_bytes = Some(w);
            }
        }
        let mut vms: Vec<VmSample> = vms.into_values().collect();
        for vm in &mut vms {
            vm.vcpus.sort_by_key(|c| c.index);
            vm.taps.sort_by(|a, b| a.interface.cmp(&b.interface));
        }
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Sample {
            at,
            host: host_seen.then_some(host),
            vms,
            alerts: None,
        })
    }
}

fn vm_from_stats(v: &VmStats) -> VmSample {
    let owner = v.owner.as_deref();
    let (disk_read_bytes, disk_write_bytes) = match v.devices.as_deref() {
        Some(d) if !d.disks.is_empty() => (
            Some(
                d.disks
                    .iter()
                    .fold(0u64, |a, x| a.saturating_add(x.read_bytes)),
            ),
            Some(
                d.disks
                    .iter()
                    .fold(0u64, |a, x| a.saturating_add(x.write_bytes)),
            ),
        ),
        _ => (v.disk.map(|d| d.read_bytes), v.disk.map(|d| d.write_bytes)),
    };
    VmSample {
        id: v.id.clone(),
        name: v.name.clone(),
        user: owner
            .and_then(|o| identity::label(o, identity::OwnerKind::User))
            .map(str::to_owned),
        project: owner
            .and_then(|o| identity::label(o, identity::OwnerKind::Project))
            .map(str::to_owned),
        state: v.state.as_str().to_owned(),
        hypervisor: v.hypervisor.as_str().to_owned(),
        vcpus_allocated: v.allocated_vcpus,
        memory_allocated_bytes: v.allocated_memory_bytes,
        memory_rss_bytes: v.memory_rss_bytes,
        start_time_seconds: v.start_time_seconds,
        cpu_seconds: v.cpu.total(),
        guest_seconds: v.cpu.guest,
        vcpus: v
            .vcpus
            .iter()
            .map(|c| VcpuSample {
                index: c.index,
                cpu_seconds: c.cpu_seconds,
                wait_seconds: c.wait_seconds,
            })
            .collect(),
        taps: v
            .network
            .iter()
            .map(|n| TapSample {
                interface: n.interface.clone(),
                rx_bytes: n.rx_bytes,
                tx_bytes: n.tx_bytes,
            })
            .collect(),
        disk_read_bytes,
        disk_write_bytes,
    }
}

/// The firing alerts of an `/api/v1/alerts` answer (`active`).
pub fn parse_alerts(body: &[u8]) -> Result<Vec<Alert>, ParseError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        active: Vec<Episode>,
    }
    #[derive(Deserialize)]
    struct Episode {
        #[serde(default)]
        rule: String,
        #[serde(default)]
        scope: String,
        #[serde(default)]
        severity: String,
        #[serde(default)]
        started_at: String,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(a.active
        .into_iter()
        .take(MAX_ALERTS)
        .map(|e| Alert {
            rule: capped(&e.rule),
            scope: capped(&e.scope),
            severity: capped(&e.severity),
            started_at: capped(&e.started_at),
        })
        .collect())
}

fn capped(s: &str) -> String {
    let mut s = s.to_owned();
    crate::model::cap_label_value(&mut s);
    debug_assert!(s.len() <= MAX_TEXT);
    s
}

/// `/metrics.json`: `{"families":[{"name", "samples":[{"labels", "value"}]}]}`.
/// Strings borrow from the body where they can (no escapes): a 200-VM
/// document is parsed every second.
#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow)]
    families: Vec<Family<'a>>,
}

#[derive(Deserialize)]
struct Family<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    samples: Vec<JsonSample<'a>>,
}

#[derive(Deserialize)]
struct JsonSample<'a> {
    #[serde(borrow, default)]
    labels: Labels<'a>,
    #[serde(default)]
    value: Value,
}

/// A sample's labels, in document order: a few per sample, so a vector
/// (searched linearly) beats a map, and the strings borrow from the body.
#[derive(Default)]
struct Labels<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'a> Labels<'a> {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.0 == k)
            .map(|(_, v)| v.0.as_ref())
    }
}

/// A string borrowed from the body unless it had escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Labels<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of label names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Labels<'a>, A::Error> {
                let mut v = Vec::with_capacity(4);
                while let Some(pair) = m.next_entry::<Text<'de>, Text<'de>>()? {
                    v.push(pair);
                }
                Ok(Labels(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A sample's value: a number, or `"NaN"`/`"+Inf"`/`"-Inf"` as strings
/// (no figure); histograms have none.
#[derive(Default)]
struct Value(Option<f64>);

impl Value {
    fn as_f64(&self) -> Option<f64> {
        self.0.filter(|v| v.is_finite())
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value(Some(v as f64)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value(Some(v as f64)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Value, E> {
                Ok(Value(None))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value(None))
            }
        }
        d.deserialize_any(V)
    }
}
