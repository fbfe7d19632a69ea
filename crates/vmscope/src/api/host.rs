//! `/api/v1/host`: the host's part of the latest snapshot.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::{ApiError, AppState, json, rfc3339};
use crate::model::HostStats;

#[derive(Serialize)]
struct HostResponse<'a> {
    seq: u64,
    collected_at: String,
    #[serde(flatten)]
    host: &'a HostStats,
}

pub async fn get(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = state.snapshot();
    json(&HostResponse {
        seq: snap.seq,
        collected_at: rfc3339(snap.collected_at),
        host: &snap.host,
    })
}
