//! `/api/v1/owners` and `/api/v1/owners/{kind}/{id}`: who uses this host.
//!
//! Reads the latest snapshot's per-owner totals
//! ([`Snapshot::usage`](crate::model::Snapshot::usage), summed on the
//! collector thread: the same numbers as `vmscope_user_*` and
//! `vmscope_project_*`). The list is every owner of both kinds (or of
//! `?kind=user|project`), folded ones included with `folded: true` and the
//! `series` that carries them; it is bounded by the host's VMs, not by
//! `max_owners`, which bounds only the exposition. `{kind}/{id}` is one
//! owner's totals and its VMs (the `/api/v1/vms` summaries), `id` being the
//! owner's key: its id, else its name.
//!
//! Failure: an unknown kind or owner is 404 `not_found` (the id echoed,
//! truncated); a path that is not valid UTF-8, an unknown or repeated query
//! parameter or a bad `kind=` is 400 `bad_request` naming it.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Serialize;

use super::access::Viewer;
use super::vms::VmSummary;
use super::{ApiError, AppState, json, rfc3339};
use crate::model::identity::OwnerKind;
use crate::model::usage::{OwnerTotals, vms_of};

#[derive(Serialize)]
struct OwnerEntry<'a> {
    kind: OwnerKind,
    #[serde(flatten)]
    totals: &'a OwnerTotals,
}

#[derive(Serialize)]
struct OwnerList<'a> {
    seq: u64,
    collected_at: String,
    owners: Vec<OwnerEntry<'a>>,
}

#[derive(Serialize)]
struct OwnerDetail<'a> {
    seq: u64,
    collected_at: String,
    owner: OwnerEntry<'a>,
    vms: Vec<VmSummary<'a>>,
}

fn bad(m: String) -> ApiError {
    ApiError::BadRequest(m.into())
}

/// `?kind=` (optional, once); nothing else is accepted.
fn kinds(pairs: &[(String, String)]) -> Result<Vec<OwnerKind>, ApiError> {
    let mut kind = None;
    for (k, v) in pairs {
        match k.as_str() {
            "kind" if kind.is_some() => return Err(bad("kind: given twice".to_owned())),
            "kind" => {
                let parsed = OwnerKind::from_name(v).ok_or_else(|| {
                    let v: String = v.chars().take(64).collect();
                    bad(format!("kind: {v:?} is not an owner kind (user, project)"))
                })?;
                kind = Some(parsed);
            }
            other => {
                let other: String = other.chars().take(64).collect();
                return Err(bad(format!(
                    "{other:?} is not a parameter of this resource (kind)"
                )));
            }
        }
    }
    Ok(kind.map_or_else(|| OwnerKind::ALL.to_vec(), |k| vec![k]))
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| bad(format!("query string: {}", e.body_text())))?;
    let kinds = kinds(&pairs)?;
    let snap = state.snapshot_for(&viewer)?;
    let owners = kinds
        .into_iter()
        .flat_map(|kind| {
            snap.usage
                .kind(kind)
                .owners
                .iter()
                .map(move |totals| OwnerEntry { kind, totals })
        })
        .collect();
    json(&OwnerList {
        seq: snap.seq,
        collected_at: rfc3339(snap.collected_at),
        owners,
    })
}

pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, id)) = path.map_err(|_| {
        ApiError::BadRequest("the owner kind or id in the path is not valid UTF-8".into())
    })?;
    let kind = OwnerKind::from_name(&kind).ok_or_else(|| ApiError::owner_kind_not_found(&kind))?;
    let snap = state.snapshot_for(&viewer)?;
    let totals = snap
        .usage
        .kind(kind)
        .get(&id)
        .ok_or_else(|| ApiError::owner_not_found(kind.as_str(), &id))?;
    json(&OwnerDetail {
        seq: snap.seq,
        collected_at: rfc3339(snap.collected_at),
        owner: OwnerEntry { kind, totals },
        vms: vms_of(&snap.vms, kind, &id).map(VmSummary::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn kind_parameter_is_optional_checked_and_named_in_errors() {
        assert_eq!(kinds(&[]).unwrap(), OwnerKind::ALL);
        assert_eq!(
            kinds(&pairs(&[("kind", "project")])).unwrap(),
            [OwnerKind::Project]
        );
        for (q, want) in [
            (
                vec![("kind", "tenant")],
                "kind: \"tenant\" is not an owner kind",
            ),
            (
                vec![("kind", "user"), ("kind", "user")],
                "kind: given twice",
            ),
            (vec![("user", "u1")], "\"user\" is not a parameter"),
        ] {
            let e = kinds(&pairs(&q)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{q:?}: {e}");
        }
    }
}
