//! `GET /api/v1/usage`: usage totals from the ledger, grouped by user,
//! project or VM, over a window, optionally in steps.
//!
//! Query parameters (unknown or repeated ones are a 400 naming them):
//! - `from`, `to`: RFC 3339 (`2026-11-01T00:00:00Z`), a date (`2026-11-01`,
//!   UTC midnight) or Unix seconds; rows whose interval *starts* in
//!   `[from, to)` are summed. Default: the last 24 hours up to now.
//! - `by`: `user`, `project` or `vm` (default `vm`); groups are the owner
//!   keys of `model/identity.rs` (id, else name), shown with their label.
//! - `step`: a duration (`1h`, `1d`, `3600s`), whole seconds: one total per
//!   group per step from `from`; absent: one total per group for the whole
//!   window. At most [`MAX_BUCKETS`] steps.
//! - `host`: only the rows of this host (a fleet ledger in PostgreSQL
//!   holds every host's; the local one only this host's).
//!
//! A tenant token sums only the rows the ledger measured as its owners'
//! (whatever `by`, `host` or the window say).
//!
//! JSON by default; CSV (one line per total, a header line first) when
//! `Accept` asks for `text/csv`.
//!
//! Reads: the ledger's [`UsageReader`] (from [`AppState`]). Errors are
//! [`ApiError`]s: `bad_request` (400, naming the parameter; also an answer
//! that would exceed [`MAX_TOTALS`]), `unavailable` (503: the ledger is
//! disabled or has no database, or the fleet ledger's PostgreSQL cannot be
//! reached), `internal` (500: the database failed; details only in the
//! log).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Value, json};

use super::access::Viewer;
use super::{ApiError, AppState, json as json_response, rfc3339};
use crate::error::ErrorChain;
use crate::export::scoped::View;
use crate::ledger::{NoLedger, UsageError, UsageReader};
use crate::store::{OwnerKeys, UsageBy, UsageQuery, UsageTotal, from_ms, to_ms};

/// Most steps in one answer.
pub const MAX_BUCKETS: i64 = 10_000;
/// Most totals (groups x steps) in one answer.
pub const MAX_TOTALS: usize = 100_000;

const DAY: Duration = Duration::from_secs(86_400);

/// The handler, for its row in [`super::ROUTES`].
pub(super) fn handler() -> MethodRouter<AppState> {
    get(list)
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::BadRequest(m.into().into())
}

fn parse_time(name: &str, v: &str) -> Result<SystemTime, ApiError> {
    if let Ok(secs) = v.parse::<f64>() {
        if (0.0..1.0e11).contains(&secs) {
            return Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
        return Err(bad(format!("{name}: {v:?} is not a plausible Unix time")));
    }
    let full = if v.len() == 10 && v.as_bytes().get(4) == Some(&b'-') {
        format!("{v}T00:00:00Z")
    } else {
        v.to_owned()
    };
    // The same reading as /api/v1/alerts' since/until.
    crate::alert::notification::parse_time(&full).ok_or_else(|| {
        bad(format!(
            "{name}: {v:?} is neither RFC 3339 in UTC (2026-11-01T00:00:00Z), \
                 a date (2026-11-01) nor Unix seconds"
        ))
    })
}

/// The raw pairs as a store query; `now` ends the default window.
pub fn parse_query(pairs: &[(String, String)], now: SystemTime) -> Result<UsageQuery, ApiError> {
    let mut seen: Vec<&str> = Vec::new();
    let (mut from, mut to, mut by, mut step) = (None, None, UsageBy::Vm, None);
    let mut host = None;
    for (k, v) in pairs {
        if seen.contains(&k.as_str()) {
            return Err(bad(format!("{k}: given more than once")));
        }
        seen.push(k);
        match k.as_str() {
            "from" => from = Some(parse_time("from", v)?),
            "to" => to = Some(parse_time("to", v)?),
            "by" => {
                by = UsageBy::ALL
                    .into_iter()
                    .find(|b| b.as_str() == v)
                    .ok_or_else(|| bad(format!("by: {v:?} is not one of user, project, vm")))?;
            }
            "step" => {
                let d = humantime::parse_duration(v)
                    .ok()
                    .filter(|d| d.subsec_nanos() == 0 && d.as_secs() > 0)
                    .ok_or_else(|| {
                        bad(format!(
                            "step: {v:?} is not a whole number of seconds (e.g. \"1h\", \"1d\")"
                        ))
                    })?;
                step = Some(d);
            }
            "host" => {
                if v.is_empty() || v.len() > 253 || v.chars().any(char::is_control) {
                    return Err(bad(format!("host: {v:?} is not a host name")));
                }
                host = Some(v.clone());
            }
            other => {
                return Err(bad(format!(
                    "{other}: unknown parameter (known: from, to, by, step, host)"
                )));
            }
        }
    }
    let to = to.unwrap_or(now);
    let from = match from {
        Some(f) => f,
        None => to.checked_sub(DAY).unwrap_or(UNIX_EPOCH),
    };
    if from >= to {
        return Err(bad("from: must be before to"));
    }
    let (from_ms, to_ms) = (to_ms(from), to_ms(to));
    let step_ms = step.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    if step_ms > 0 && (to_ms - from_ms).saturating_add(step_ms - 1) / step_ms > MAX_BUCKETS {
        return Err(bad(format!(
            "step: more than {MAX_BUCKETS} steps between from and to; take a larger step"
        )));
    }
    Ok(UsageQuery {
        from_ms,
        to_ms,
        step_ms,
        by,
        resolution_s: 0,
        host,
        limit: MAX_TOTALS,
        owners: None,
    })
}

fn unavailable(e: UsageError) -> ApiError {
    match e {
        UsageError::Unavailable(NoLedger::Disabled) => {
            ApiError::Unavailable("the usage ledger is disabled in the configuration")
        }
        UsageError::Unavailable(NoLedger::NoDatabase) => ApiError::Unavailable(
            "the usage ledger has no state database (see /healthz and the agent's log)",
        ),
        UsageError::TooMany(n) => bad(format!(
            "from: the answer would hold more than {n} totals; narrow from/to, take a larger \
             step, or group by project"
        )),
        UsageError::Store(e) => {
            tracing::warn!(error = %ErrorChain(&e), "usage API query failed");
            ApiError::Failed("the ledger store failed; see the agent's log")
        }
        UsageError::Fleet(e) => {
            // The text names host and database, never the password.
            tracing::warn!(error = %e, "usage API query of the fleet ledger failed");
            if e.unreachable() {
                ApiError::Unavailable(
                    "the fleet ledger's PostgreSQL cannot be reached (see /healthz and the agent's log)",
                )
            } else {
                ApiError::Failed("the fleet ledger's database failed; see the agent's log")
            }
        }
    }
}

/// The end of the bucket that starts at `start_ms`.
fn bucket_end(q: &UsageQuery, start_ms: i64) -> i64 {
    if q.step_ms > 0 {
        (start_ms + q.step_ms).min(q.to_ms)
    } else {
        q.to_ms
    }
}

fn total_json(q: &UsageQuery, t: &UsageTotal) -> Value {
    json!({
        "start": rfc3339(from_ms(t.start_ms)),
        "end": rfc3339(from_ms(bucket_end(q, t.start_ms))),
        "key": t.key,
        "label": t.label,
        "cpu_seconds": t.cpu_seconds,
        "guest_seconds": t.guest_seconds,
        "vcpu_allocated_seconds": t.vcpu_allocated_seconds,
        "memory_allocated_byte_seconds": t.memory_allocated_byte_seconds,
        "rss_byte_seconds": t.rss_byte_seconds,
        "net_rx_bytes": t.net_rx_bytes,
        "net_tx_bytes": t.net_tx_bytes,
        "observed_seconds": t.observed_seconds,
        "gap_seconds": t.gap_seconds,
        "rows": t.rows,
    })
}

/// A CSV field: quoted when it holds a comma, quote or line break (RFC
/// 4180), and with a leading `=+-@` neutralised so that a spreadsheet does
/// not run a VM name as a formula.
fn csv_field(out: &mut String, v: &str) {
    let v = if v.starts_with(['=', '+', '-', '@']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&v);
    }
}

/// CSV columns: the period in FOCUS's names (`ChargePeriodStart`,
/// `ChargePeriodEnd`), then ours.
pub const CSV_HEADER: &str = "ChargePeriodStart,ChargePeriodEnd,by,key,label,cpu_seconds,\
     guest_seconds,vcpu_allocated_seconds,memory_allocated_byte_seconds,rss_byte_seconds,\
     net_rx_bytes,net_tx_bytes,observed_seconds,gap_seconds,rows";

pub fn csv(q: &UsageQuery, totals: &[UsageTotal]) -> String {
    let mut out = String::with_capacity(128 * (totals.len() + 1));
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for t in totals {
        let _ = write!(
            out,
            "{},{},{},",
            rfc3339(from_ms(t.start_ms)),
            rfc3339(from_ms(bucket_end(q, t.start_ms))),
            q.by.as_str()
        );
        csv_field(&mut out, t.key.as_deref().unwrap_or_default());
        out.push(',');
        csv_field(&mut out, t.label.as_deref().unwrap_or_default());
        let guest = t.guest_seconds.map(|g| g.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            ",{},{},{},{},{},{},{},{},{},{}\r\n",
            t.cpu_seconds,
            guest,
            t.vcpu_allocated_seconds,
            t.memory_allocated_byte_seconds,
            t.rss_byte_seconds,
            t.net_rx_bytes,
            t.net_tx_bytes,
            t.observed_seconds,
            t.gap_seconds,
            t.rows
        );
    }
    out
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/csv"))
}

async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| bad(format!("query string: {}", e.body_text())))?;
    let mut q = parse_query(&pairs, SystemTime::now())?;
    match &viewer {
        Viewer::All => {}
        // The rows the ledger measured as the tenant's: by VM, by user or
        // by project, only those rows are summed (a project's tenant
        // grouping by user sees its project's usage per user).
        Viewer::Scoped(View::Tenant(t)) => {
            q.owners = Some(OwnerKeys {
                users: t.users().to_vec(),
                projects: t.projects().to_vec(),
            });
        }
        Viewer::Scoped(View::HostOnly) => {
            return Err(ApiError::Unauthorized("credentials required"));
        }
    }
    let reader: &UsageReader = state.usage();
    let (q, totals) = reader.query(q).await.map_err(unavailable)?;
    if wants_csv(&headers) {
        let mut resp = csv(&q, &totals).into_response();
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
        );
        return Ok(resp);
    }
    json_response(&answer_json(&q, &totals))
}

/// The JSON answer (also `vmscope usage --output json`).
pub fn answer_json(q: &UsageQuery, totals: &[UsageTotal]) -> Value {
    json!({
        "from": rfc3339(from_ms(q.from_ms)),
        "to": rfc3339(from_ms(q.to_ms)),
        "by": q.by.as_str(),
        "step_seconds": (q.step_ms > 0).then_some(q.step_ms / 1000),
        "resolution_seconds": q.resolution_s,
        "usage": totals.iter().map(|t| total_json(q, t)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn err(p: &[(&str, &str)]) -> String {
        match parse_query(&pairs(p), now()) {
            Err(ApiError::BadRequest(m)) => m.into_owned(),
            other => panic!("{p:?}: {:?}", other.map(|q| q.from_ms)),
        }
    }

    #[test]
    fn parameters_parse_and_default_to_the_last_day_by_vm() {
        let q = parse_query(&[], now()).unwrap();
        assert_eq!(
            (q.to_ms - q.from_ms, q.by, q.step_ms),
            (86_400_000, UsageBy::Vm, 0)
        );
        let q = parse_query(
            &pairs(&[
                ("from", "2026-11-01"),
                ("to", "2026-12-01T00:00:00Z"),
                ("by", "project"),
                ("step", "1d"),
            ]),
            now(),
        )
        .unwrap();
        assert_eq!(q.by, UsageBy::Project);
        assert_eq!(q.step_ms, 86_400_000);
        assert_eq!(q.to_ms - q.from_ms, 30 * 86_400_000);
        assert_eq!(
            parse_query(&pairs(&[("from", "100"), ("to", "200")]), now())
                .unwrap()
                .from_ms,
            100_000
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(err(&[("by", "host")]).starts_with("by: "));
        assert!(err(&[("from", "yesterday")]).starts_with("from: "));
        assert!(err(&[("to", "2026-13-45")]).starts_with("to: "));
        assert!(err(&[("step", "1.5s")]).starts_with("step: "));
        assert!(err(&[("step", "1s"), ("from", "0")]).starts_with("step: more than"));
        assert!(err(&[("from", "200"), ("to", "100")]).starts_with("from: "));
        assert!(err(&[("by", "vm"), ("by", "vm")]).contains("more than once"));
        assert!(err(&[("limit", "3")]).starts_with("limit: unknown parameter"));
        assert!(err(&[("host", "")]).starts_with("host: "));
        let q = parse_query(&pairs(&[("host", "hv-7")]), now()).unwrap();
        assert_eq!(q.host.as_deref(), Some("hv-7"));
    }

    #[test]
    fn csv_quotes_and_defuses_hostile_names() {
        let q = parse_query(&pairs(&[("from", "0"), ("to", "60")]), now()).unwrap();
        let t = UsageTotal {
            start_ms: 0,
            key: Some("vm-1".into()),
            label: Some("=cmd|' /C calc'!A0,\"x\"".into()),
            cpu_seconds: 1.5,
            rows: 2,
            ..UsageTotal::default()
        };
        let text = csv(&q, &[t]);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        assert_eq!(
            lines.next(),
            Some(
                "1970-01-01T00:00:00.000Z,1970-01-01T00:01:00.000Z,vm,vm-1,\
                 \"'=cmd|' /C calc'!A0,\"\"x\"\"\",1.5,,0,0,0,0,0,0,0,2"
            )
        );
    }
}
