//! `GET /api/v1/alerts`: firing alerts and the history of resolved ones,
//! from the state database.
//!
//! Query parameters (all optional; unknown or repeated ones are a 400):
//! - `rule`: a rule name; `scope`: a scope key (`vm:<id>`, `host`,
//!   `filesystem:/var`, `owner:user:<id>`) or a scope kind (`vm`, `filesystem`, `host`, `owner`);
//! - `since`, `until`: RFC 3339 or Unix seconds; episodes overlapping the
//!   window (started at or before `until`, not resolved before `since`);
//! - `limit` (1..=1000, default 50): history page size;
//! - `cursor` (from the previous page's `next_cursor`) or `page` (1-based):
//!   pagination of the history; `active` is always complete.
//!
//! Reads: the watchdog's [`AlertHistory`] (from [`AppState`]); the query
//! string is parsed here, the episodes rendered here: the watchdog knows
//! nothing of HTTP. Errors are [`ApiError`]s: `bad_request` (400, naming the
//! parameter), `unavailable` (503: watchdog disabled, or running without its
//! state database, as the message says), `internal` (500: the database
//! failed; details only in the log).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Query, State};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::access::Viewer;
use super::{ApiError, AppState};
use crate::alert::notification::format_time;
use crate::alert::{AlertHistory, HistoryError, NoStore};
use crate::error::ErrorChain;
use crate::model::identity::OwnerKind;
use crate::store::{EpisodeQuery, EpisodeRow, Position};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

/// The handler, for its row in [`super::ROUTES`]: scoped by the caller.
pub(super) fn handler() -> MethodRouter<AppState> {
    get(list_scoped)
}

/// This resource alone, over `history`, unscoped (tests, and embedding it
/// without the snapshot resources or access control); its path is the
/// table's.
pub fn router(history: AlertHistory) -> Router {
    super::ROUTES
        .iter()
        .filter(|r| r.reads == super::Reads::AlertHistory)
        .fold(Router::new(), |app, r| app.route(r.path, get(list)))
        .with_state(history)
}

impl FromRef<AppState> for AlertHistory {
    fn from_ref(state: &AppState) -> Self {
        state.alerts().clone()
    }
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::BadRequest(m.into().into())
}

/// The watchdog's answer, as the API's: the messages are fixed (they say
/// where to look, never echo the cause).
fn unavailable(e: HistoryError) -> ApiError {
    match e {
        HistoryError::Unavailable(NoStore::Disabled) => {
            ApiError::Unavailable("the watchdog is disabled in the configuration")
        }
        HistoryError::Unavailable(NoStore::InMemory) => ApiError::Unavailable(
            "the watchdog runs without its state database (see /healthz and the agent's log): \
             it evaluates and notifies, but keeps no alert history to list",
        ),
        HistoryError::Store(e) => {
            tracing::warn!(error = %ErrorChain(&e), "alert API query failed");
            ApiError::Failed("the alert store failed; see the agent's log")
        }
    }
}

fn parse_time(name: &str, v: &str) -> Result<SystemTime, ApiError> {
    if let Ok(secs) = v.parse::<f64>() {
        if (0.0..1.0e11).contains(&secs) {
            return Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
        return Err(bad(format!("{name}: {v:?} is not a plausible Unix time")));
    }
    crate::alert::notification::parse_time(v).ok_or_else(|| {
        bad(format!(
            "{name}: {v:?} is neither RFC 3339 (2026-01-02T03:04:05Z) nor Unix seconds"
        ))
    })
}

fn encode_cursor(p: Position) -> Option<String> {
    match p {
        Position::After { started_ms, id } => Some(format!("{started_ms}.{id}")),
        _ => None,
    }
}

fn decode_cursor(v: &str) -> Result<Position, ApiError> {
    let err = || bad(format!("cursor: {v:?} is not a cursor from next_cursor"));
    let (a, b) = v.split_once('.').ok_or_else(err)?;
    Ok(Position::After {
        started_ms: a.parse().map_err(|_| err())?,
        id: b.parse().map_err(|_| err())?,
    })
}

/// Turn the raw pairs into a store query.
pub fn parse_query(pairs: &[(String, String)]) -> Result<EpisodeQuery, ApiError> {
    let mut q = EpisodeQuery {
        limit: DEFAULT_LIMIT,
        ..EpisodeQuery::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut cursor = None;
    let mut page = None;
    for (k, v) in pairs {
        if seen.contains(&k.as_str()) {
            return Err(bad(format!("{k}: given more than once")));
        }
        seen.push(k);
        match k.as_str() {
            "rule" => q.rule = Some(v.clone()),
            "scope" => q.scope = Some(v.clone()),
            "since" => q.since = Some(parse_time("since", v)?),
            "until" => q.until = Some(parse_time("until", v)?),
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit: {v:?} is not a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "cursor" => cursor = Some(decode_cursor(v)?),
            "page" => {
                page = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad(format!("page: {v:?} is not a number from 1 up")))?,
                );
            }
            other => {
                return Err(bad(format!(
                    "{other}: unknown parameter (known: rule, scope, since, until, limit, cursor, page)"
                )));
            }
        }
    }
    if let (Some(s), Some(u)) = (q.since, q.until)
        && s > u
    {
        return Err(bad("since: is after until"));
    }
    q.position = match (cursor, page) {
        (Some(_), Some(_)) => return Err(bad("cursor: give either cursor or page, not both")),
        (Some(c), None) => c,
        (None, Some(p)) => Position::Page(p),
        (None, None) => Position::First,
    };
    Ok(q)
}

fn payload(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

fn episode_json(e: &EpisodeRow) -> Value {
    json!({
        "id": e.id,
        "rule": e.rule,
        "scope": e.scope_key,
        "severity": e.severity,
        "status": if e.resolved_at.is_some() { "resolved" } else { "firing" },
        "started_at": format_time(e.started_at),
        "resolved_at": e.resolved_at.map(format_time),
        "last_notified_at": format_time(e.last_notified_at),
        "alert": payload(&e.payload),
        "resolution": e.resolved_payload.as_deref().map(payload),
    })
}

async fn list(
    State(history): State<AlertHistory>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|e| bad(format!("query string: {}", e.body_text())))?;
    answer(&history, parse_query(&pairs)?).await
}

/// A tenant sees the episodes about its VMs on this host now and about
/// its owners, whatever the filters say (they narrow within that). An
/// episode about a VM that is gone is not shown to tenants: the agent no
/// longer knows whose it was.
async fn list_scoped(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|e| bad(format!("query string: {}", e.body_text())))?;
    let mut q = parse_query(&pairs)?;
    if let Some(tenant) = viewer.tenant() {
        let view = state.snapshot_for(&viewer)?;
        let mut keys: Vec<String> = view.vms.iter().map(|vm| format!("vm:{}", vm.id)).collect();
        for kind in OwnerKind::ALL {
            keys.extend(
                tenant
                    .keys(kind)
                    .iter()
                    .map(|k| format!("owner:{kind}:{k}")),
            );
        }
        q.only_scopes = Some(keys);
    } else if viewer != Viewer::All {
        return Err(ApiError::Unauthorized("credentials required"));
    }
    answer(state.alerts(), q).await
}

async fn answer(history: &AlertHistory, q: EpisodeQuery) -> Result<Json<Value>, ApiError> {
    let page_mode = matches!(q.position, Position::Page(_));
    let page = history.query(q).await.map_err(unavailable)?;
    let next_page = match page.next {
        Some(Position::Page(p)) if page_mode => Some(p),
        _ => None,
    };
    Ok(Json(json!({
        "active": page.active.iter().map(episode_json).collect::<Vec<_>>(),
        "history": page.history.iter().map(episode_json).collect::<Vec<_>>(),
        "next_cursor": page.next.and_then(encode_cursor),
        "next_page": next_page,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn bad_params_name_themselves() {
        for (p, want) in [
            (vec![("limit", "0")], "limit:"),
            (vec![("limit", "abc")], "limit:"),
            (vec![("page", "0")], "page:"),
            (vec![("cursor", "x")], "cursor:"),
            (vec![("since", "yesterday")], "since:"),
            (
                vec![("rule", "a"), ("rule", "b")],
                "rule: given more than once",
            ),
            (vec![("sort", "asc")], "sort: unknown parameter"),
            (
                vec![("cursor", "1.2"), ("page", "2")],
                "cursor: give either",
            ),
            (
                vec![
                    ("since", "2026-01-02T00:00:00Z"),
                    ("until", "2026-01-01T00:00:00Z"),
                ],
                "since: is after until",
            ),
        ] {
            match parse_query(&pairs(&p)) {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with(want), "{p:?}: {m}"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn good_params() {
        let q = parse_query(&pairs(&[
            ("rule", "vm_cpu"),
            ("scope", "vm"),
            ("since", "1800000000"),
            ("until", "2028-01-01T00:00:00Z"),
            ("limit", "10"),
            ("cursor", "1800000000000.7"),
        ]))
        .unwrap();
        assert_eq!(q.limit, 10);
        assert_eq!(
            q.position,
            Position::After {
                started_ms: 1_800_000_000_000,
                id: 7
            }
        );
        assert_eq!(
            q.since,
            Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        assert!(q.until.is_some());
    }
}
