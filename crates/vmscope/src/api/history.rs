//! `/api/v1/history` (every VM's last hour and the host's, for the status
//! page's sparklines in one request) and `/api/v1/vms/{id}/history` (one
//! VM's, for its graphs).
//!
//! Reads: the in-memory [`crate::model::history::History`] (fed by a
//! subscriber of the snapshot channel, see [`super::AppState`]) and the
//! caller's view of the latest snapshot: a tenant gets the series of the
//! VMs its view holds and no host series; another tenant's VM is a 404,
//! as on `/api/v1/vms/{id}`. Emits: columnar JSON (`t` and one array per
//! measure, oldest first), each point the mean of a 15 s step.
//!
//! Query: `points` (1..=240) coarsens each series to at most that many
//! points (default 60 for the list, 240 for one VM); anything else is a 400
//! naming the parameter. Failure: as `/api/v1/vms/{id}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Serialize;

use super::access::Viewer;
use super::{ApiError, AppState, json, rfc3339};
use crate::model::history::{HostPoint, POINTS, STEP_SECS, VmPoint, WINDOW_SECS, downsample};

/// Default points per VM in the list: enough for a sparkline.
pub const LIST_POINTS: usize = 60;

#[derive(Serialize)]
struct VmSeries<'a> {
    id: &'a str,
    name: &'a str,
    t: Vec<u64>,
    cpu_cores: Vec<f32>,
    memory_rss_bytes: Vec<f32>,
    network_rx_bytes_per_second: Vec<f32>,
    network_tx_bytes_per_second: Vec<f32>,
}

impl<'a> VmSeries<'a> {
    fn new(id: &'a str, name: &'a str, points: &[VmPoint]) -> Self {
        let col = |i: usize| points.iter().map(|p| p.v[i]).collect();
        VmSeries {
            id,
            name,
            t: points.iter().map(|p| u64::from(p.t)).collect(),
            cpu_cores: col(0),
            memory_rss_bytes: col(1),
            network_rx_bytes_per_second: col(2),
            network_tx_bytes_per_second: col(3),
        }
    }
}

#[derive(Serialize)]
struct HostSeries {
    t: Vec<u64>,
    cpu_cores: Vec<f32>,
    memory_used_bytes: Vec<f32>,
}

impl HostSeries {
    fn new(points: &[HostPoint]) -> Self {
        HostSeries {
            t: points.iter().map(|p| u64::from(p.t)).collect(),
            cpu_cores: points.iter().map(|p| p.v[0]).collect(),
            memory_used_bytes: points.iter().map(|p| p.v[1]).collect(),
        }
    }
}

#[derive(Serialize)]
struct ListResponse<'a> {
    collected_at: String,
    step_seconds: u32,
    window_seconds: u32,
    /// `null` for tenants: the host is the operator's.
    host: Option<HostSeries>,
    vms: Vec<VmSeries<'a>>,
}

#[derive(Serialize)]
struct OneResponse<'a> {
    collected_at: String,
    step_seconds: u32,
    window_seconds: u32,
    #[serde(flatten)]
    vm: VmSeries<'a>,
}

/// `points` from the query: the only parameter.
fn parse_points(pairs: &[(String, String)], default: usize) -> Result<usize, ApiError> {
    let mut points = None;
    for (k, v) in pairs {
        match k.as_str() {
            "points" if points.is_some() => {
                return Err(ApiError::BadRequest("points: given more than once".into()));
            }
            "points" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=POINTS).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            format!("points: {v:?} is not a number from 1 to {POINTS}").into(),
                        )
                    })?;
                points = Some(n);
            }
            other => {
                return Err(ApiError::BadRequest(
                    format!(
                        "{}: unknown parameter (known: points)",
                        other.chars().take(64).collect::<String>()
                    )
                    .into(),
                ));
            }
        }
    }
    Ok(points.unwrap_or(default))
}

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn pairs(q: Pairs) -> Result<Vec<(String, String)>, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text()).into()))
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Pairs,
) -> Result<Response, ApiError> {
    let max = parse_points(&pairs(query)?, LIST_POINTS)?;
    let snap = state.snapshot_for(&viewer)?;
    let history = state.history();
    // The viewer's snapshot decides which VMs: a tenant's view holds only
    // its own, so no other VM's id is ever looked up.
    let series = history.vms(snap.vms.iter().map(|v| v.id.as_str()));
    let vms = series
        .iter()
        .filter_map(|(id, pts)| {
            let vm = snap.vm(id)?;
            Some(VmSeries::new(&vm.id, &vm.name, &downsample(pts, max)))
        })
        .collect();
    let host =
        matches!(viewer, Viewer::All).then(|| HostSeries::new(&downsample(&history.host(), max)));
    json(&ListResponse {
        collected_at: rfc3339(snap.collected_at),
        step_seconds: STEP_SECS,
        window_seconds: WINDOW_SECS,
        host,
        vms,
    })
}

pub async fn vm(
    State(state): State<AppState>,
    viewer: Viewer,
    id: Result<Path<String>, PathRejection>,
    query: Pairs,
) -> Result<Response, ApiError> {
    let Path(id) =
        id.map_err(|_| ApiError::BadRequest("the VM id in the path is not valid UTF-8".into()))?;
    let max = parse_points(&pairs(query)?, POINTS)?;
    let snap = state.snapshot_for(&viewer)?;
    let vm = snap.vm(&id).ok_or_else(|| ApiError::vm_not_found(&id))?;
    // Known but without history yet (its first tick): empty series.
    let points = state.history().vm(&vm.id).unwrap_or_default();
    json(&OneResponse {
        collected_at: rfc3339(snap.collected_at),
        step_seconds: STEP_SECS,
        window_seconds: WINDOW_SECS,
        vm: VmSeries::new(&vm.id, &vm.name, &downsample(&points, max)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn points_is_checked_and_named() {
        assert_eq!(parse_points(&q(&[]), 60).unwrap(), 60);
        assert_eq!(parse_points(&q(&[("points", "240")]), 60).unwrap(), 240);
        for (bad, want) in [
            (
                q(&[("points", "0")]),
                "points: \"0\" is not a number from 1 to 240",
            ),
            (q(&[("points", "241")]), "points: \"241\" is not"),
            (q(&[("points", "x")]), "points: \"x\""),
            (
                q(&[("points", "5"), ("points", "6")]),
                "points: given more than once",
            ),
            (q(&[("vm", "a")]), "vm: unknown parameter"),
        ] {
            match parse_points(&bad, 60) {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with(want), "{bad:?}: {m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
