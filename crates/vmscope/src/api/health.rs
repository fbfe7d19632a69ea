//! `/healthz`: is collection current?
//!
//! 200 `{"status":"ok","snapshot_age_seconds":..,"seq":..,"components":{..}}`
//! once a tick has completed and the published snapshot is younger than
//! three intervals; `components` holds what the extra metric sources report
//! through [`MetricSource::health`] (e.g. `watchdog_store` `degraded` when
//! the watchdog runs without its database): a degraded component is shown,
//! not failed, because collection and `/metrics` are fine;
//! 503 with the usual JSON error (`not_ready` before the first tick, `stale`
//! when ticks stopped) otherwise. A snapshot stamped in the future (clock
//! step) counts as age 0.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::{ApiError, AppState, json};
use crate::export::{ComponentHealth, MetricSource};

/// Intervals a snapshot may age before the agent reports itself unhealthy.
const STALE_AFTER_INTERVALS: f64 = 3.0;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    snapshot_age_seconds: f64,
    seq: u64,
    components: BTreeMap<&'static str, ComponentHealth>,
}

pub async fn get(State(state): State<AppState>) -> Result<Response, ApiError> {
    let snap = state.snapshot();
    if snap.seq == 0 {
        return Err(ApiError::NotReady);
    }
    let age = SystemTime::now()
        .duration_since(snap.collected_at)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    // A zero interval would make every snapshot stale; treat it as 1 s.
    let limit = STALE_AFTER_INTERVALS * snap.interval.as_secs_f64().max(1.0);
    if age > limit {
        return Err(ApiError::Stale {
            age_seconds: age,
            limit_seconds: limit,
        });
    }
    json(&Health {
        status: "ok",
        snapshot_age_seconds: age,
        seq: snap.seq,
        components: state.sources().iter().filter_map(|s| s.health()).collect(),
    })
}
