//! `/api/v1/vms`, `/api/v1/vms/{id}`, `/api/v1/vms/{id}/stats`.
//!
//! Reads the latest snapshot. The list is one summary per VM; `{id}` is the
//! full `VmStats` as the model serializes it; `{id}/stats` is a flat view
//! (totals and rates) for dashboards and the older per-VM stats clients.
//! Absent optional values are `null` in the list and the flat view.
//!
//! Failure: an unknown id is 404 `not_found` (the id is echoed, truncated);
//! an id that is not valid percent-encoded UTF-8 is 400 `bad_request`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;

use super::access::Viewer;
use super::{ApiError, AppState, json, rfc3339};
use crate::model::{Hypervisor, Owner, Source, VmRates, VmState, VmStats};

#[derive(Serialize)]
struct VmList<'a> {
    seq: u64,
    collected_at: String,
    vms: Vec<VmSummary<'a>>,
}

/// One VM in a list (`/api/v1/vms`, an owner's VMs).
#[derive(Serialize)]
pub(super) struct VmSummary<'a> {
    id: &'a str,
    name: &'a str,
    hypervisor: Hypervisor,
    source: Source,
    pid: u32,
    uuid: Option<&'a str>,
    state: VmState,
    owner: Option<&'a Owner>,
    /// The owner source that attributed the VM (`nova`, `file`, ...).
    owner_source: Option<&'static str>,
    allocated_vcpus: Option<u32>,
    allocated_memory_bytes: Option<u64>,
    /// Host CPU cores in use (rate over the last interval).
    cpu_cores: Option<f64>,
    memory_rss_bytes: u64,
    network_rx_bytes_per_second: Option<f64>,
    network_tx_bytes_per_second: Option<f64>,
    collect_success: bool,
}

impl<'a> From<&'a VmStats> for VmSummary<'a> {
    fn from(vm: &'a VmStats) -> Self {
        VmSummary {
            id: &vm.id,
            name: &vm.name,
            hypervisor: vm.hypervisor,
            source: vm.source,
            pid: vm.pid,
            uuid: vm.uuid.as_deref(),
            state: vm.state,
            owner: vm.owner.as_deref(),
            owner_source: vm.owner_source,
            allocated_vcpus: vm.allocated_vcpus,
            allocated_memory_bytes: vm.allocated_memory_bytes,
            cpu_cores: vm.rates.map(|r| r.cpu_cores),
            memory_rss_bytes: vm.memory_rss_bytes,
            network_rx_bytes_per_second: vm.rates.map(|r| r.network_rx_bytes_per_second),
            network_tx_bytes_per_second: vm.rates.map(|r| r.network_tx_bytes_per_second),
            collect_success: vm.collect_success,
        }
    }
}

/// The flat per-VM view.
#[derive(Serialize)]
struct VmStatsFlat<'a> {
    id: &'a str,
    name: &'a str,
    /// user + system, seconds since the hypervisor process started.
    cpu_seconds: f64,
    memory_rss_bytes: u64,
    /// Virtual size (the older clients' name).
    memory_vms_bytes: u64,
    /// Sums over all interfaces, in the VM's direction.
    network_rx_bytes: u64,
    network_tx_bytes: u64,
    allocated_vcpus: Option<u32>,
    allocated_memory_bytes: Option<u64>,
    memory_utilization_ratio: Option<f64>,
    rates: Option<&'a VmRates>,
    collected_at: String,
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> Result<Response, ApiError> {
    let snap = state.snapshot_for(&viewer)?;
    json(&VmList {
        seq: snap.seq,
        collected_at: rfc3339(snap.collected_at),
        vms: snap.vms.iter().map(VmSummary::from).collect(),
    })
}

pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) =
        id.map_err(|_| ApiError::BadRequest("the VM id in the path is not valid UTF-8".into()))?;
    let snap = state.snapshot_for(&viewer)?;
    let vm = snap.vm(&id).ok_or_else(|| ApiError::vm_not_found(&id))?;
    json(vm)
}

pub async fn stats(
    State(state): State<AppState>,
    viewer: Viewer,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) =
        id.map_err(|_| ApiError::BadRequest("the VM id in the path is not valid UTF-8".into()))?;
    let snap = state.snapshot_for(&viewer)?;
    let vm = snap.vm(&id).ok_or_else(|| ApiError::vm_not_found(&id))?;
    let (network_rx_bytes, network_tx_bytes) = vm.network_totals();
    json(&VmStatsFlat {
        id: &vm.id,
        name: &vm.name,
        cpu_seconds: vm.cpu.total(),
        memory_rss_bytes: vm.memory_rss_bytes,
        memory_vms_bytes: vm.memory_virtual_bytes,
        network_rx_bytes,
        network_tx_bytes,
        allocated_vcpus: vm.allocated_vcpus,
        allocated_memory_bytes: vm.allocated_memory_bytes,
        memory_utilization_ratio: vm.memory_utilization_ratio,
        rates: vm.rates.as_ref(),
        collected_at: rfc3339(snap.collected_at),
    })
}
