//! The tenant query proxy's HTTP edge: `/api/v1/prometheus/{query,
//! query_range, series, labels, label/{name}/values}` (GET and POST form)
//! and the dual mode of `GET /metrics?query=...`.
//!
//! Reads: the request's parameters (query string, and the form body of a
//! POST), its [`Access`], and the `[proxy]` state ([`crate::proxy::Proxy`]).
//! Emits: Prometheus' answer with its status and JSON, unchanged; or an
//! error in Prometheus' own shape (`{"status":"error","errorType":...,
//! "error":...}`), so that Grafana's Prometheus data source shows its
//! message: 400 `bad_data` (missing `query`, invalid PromQL with the
//! parser's message, a scope conflict), 401/403 (anonymous or unscoped
//! callers), 502 `unavailable` (Prometheus unreachable, or not JSON), 504
//! `timeout`, 503 when the proxy is not set up.
//!
//! Who gets what (docs/proxy.md): an admin's query passes unchanged; a
//! tenant's is rewritten with its matcher ([`crate::proxy::scope`]) on a
//! blocking thread (parsing a 64 KiB query is not for the async workers);
//! an anonymous caller is refused unless `[proxy] anonymous = true`, and a
//! `host_only` one always (answers name VMs and owners).

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use super::AppState;
use crate::access::Access;
use crate::proxy::scope::{ScopeError, scope_query, scope_selector};
use crate::proxy::upstream::{Endpoint, documented, is_label_name};
use crate::proxy::{Proxy, TenantMatcher};

pub fn query() -> MethodRouter<AppState> {
    get(query_h).post(query_h)
}
pub fn query_range() -> MethodRouter<AppState> {
    get(query_range_h).post(query_range_h)
}
pub fn series() -> MethodRouter<AppState> {
    get(series_h).post(series_h)
}
pub fn labels() -> MethodRouter<AppState> {
    get(labels_h).post(labels_h)
}
pub fn label_values() -> MethodRouter<AppState> {
    get(label_values_h).post(label_values_h)
}

type Caller = Option<Extension<Access>>;

async fn query_h(State(s): State<AppState>, a: Caller, uri: Uri, body: Bytes) -> Response {
    forward(&s, a, Endpoint::Query, params(&uri, &body)).await
}
async fn query_range_h(State(s): State<AppState>, a: Caller, uri: Uri, body: Bytes) -> Response {
    forward(&s, a, Endpoint::QueryRange, params(&uri, &body)).await
}
async fn series_h(State(s): State<AppState>, a: Caller, uri: Uri, body: Bytes) -> Response {
    forward(&s, a, Endpoint::Series, params(&uri, &body)).await
}
async fn labels_h(State(s): State<AppState>, a: Caller, uri: Uri, body: Bytes) -> Response {
    forward(&s, a, Endpoint::Labels, params(&uri, &body)).await
}
async fn label_values_h(
    State(s): State<AppState>,
    a: Caller,
    Path(name): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Response {
    if !is_label_name(&name) {
        return prom_error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            format!(
                "label name: {:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                name.chars().take(64).collect::<String>()
            ),
        );
    }
    forward(&s, a, Endpoint::LabelValues(name), params(&uri, &body)).await
}

/// True when a `/metrics` request is a query (the dual mode): its query
/// string has a `query` parameter. Without one it is the normal scrape.
pub fn is_query(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "query"))
}

/// `GET /metrics?query=...`: a range query when `start`, `end` or `step`
/// is given, an instant query otherwise.
pub async fn metrics_query(state: &AppState, access: Caller, uri: &Uri) -> Response {
    let p = params(uri, &[]);
    let range = p
        .iter()
        .any(|(k, _)| matches!(k.as_str(), "start" | "end" | "step"));
    let endpoint = if range {
        Endpoint::QueryRange
    } else {
        Endpoint::Query
    };
    forward(state, access, endpoint, p).await
}

/// The query string's pairs followed by the form body's (Prometheus reads
/// both for a POST).
fn params(uri: &Uri, body: &[u8]) -> Vec<(String, String)> {
    let q = uri.query().unwrap_or_default().as_bytes();
    form_urlencoded::parse(q)
        .chain(form_urlencoded::parse(body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What the caller may do with the proxy.
pub(crate) enum Mode {
    Pass,
    Scoped(TenantMatcher),
}

/// A caller the proxy refuses: status, Prometheus `errorType`, message.
pub(crate) struct Refused(StatusCode, &'static str, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        prom_error(self.0, self.1, self.2)
    }
}

/// The caller's mode, or why it is refused.
pub(crate) fn mode(proxy: &Proxy, access: Option<&Access>) -> Result<Mode, Refused> {
    match access {
        // No access layer (a router built without one): as open.
        None | Some(Access::Admin { .. }) => Ok(Mode::Pass),
        Some(Access::Anonymous) if proxy.config().anonymous => Ok(Mode::Pass),
        Some(Access::Anonymous | Access::HostOnly) => Err(Refused(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "credentials required: the query proxy answers admin and tenant tokens ([proxy] anonymous is off)".into(),
        )),
        Some(Access::Tenant {
            users, projects, ..
        }) => proxy
            .tenant_matcher(users, projects)
            .map(Mode::Scoped)
            .map_err(|m| Refused(StatusCode::BAD_REQUEST, "bad_data", m.to_owned())),
    }
}

async fn forward(
    state: &AppState,
    access: Caller,
    endpoint: Endpoint,
    raw: Vec<(String, String)>,
) -> Response {
    let Some(proxy) = state.proxy() else {
        return prom_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the query proxy is not set up in this agent".into(),
        );
    };
    let mode = match mode(&proxy, access.as_ref().map(|e| &e.0)) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let params = documented(&endpoint, raw);
    let ep = endpoint.clone();
    // Parsing and printing a query is CPU work bounded by its size: off
    // the async workers.
    let scoped = match tokio::task::spawn_blocking(move || prepare(&ep, params, &mode)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "a query scoping task failed");
            return prom_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "scoping the query failed; see the agent's log".into(),
            );
        }
    };
    let params = match scoped {
        Ok(p) => p,
        Err(m) => return prom_error(StatusCode::BAD_REQUEST, "bad_data", m),
    };
    match proxy.upstream().call(&endpoint, &params).await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut resp = (status, answer.body).into_response();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            tracing::debug!(error = %e, "query proxy: upstream failed");
            let (status, kind) = match e.status() {
                504 => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                _ => (StatusCode::BAD_GATEWAY, "unavailable"),
            };
            prom_error(status, kind, e.to_string())
        }
    }
}

/// Checks the required parameters and scopes them (pure; on a blocking
/// thread). The message starts with the parameter's name.
pub(crate) fn prepare(
    endpoint: &Endpoint,
    mut params: Vec<(String, String)>,
    mode: &Mode,
) -> Result<Vec<(String, String)>, String> {
    let scope_err = |e: ScopeError| e.to_string();
    match endpoint {
        Endpoint::Query | Endpoint::QueryRange => {
            let n = params.iter().filter(|(k, _)| k == "query").count();
            if n > 1 {
                return Err("query: given more than once".into());
            }
            let Some((_, q)) = params.iter_mut().find(|(k, _)| k == "query") else {
                return Err("query: required (a PromQL expression)".into());
            };
            if q.trim().is_empty() {
                return Err("query: required (a PromQL expression)".into());
            }
            if let Mode::Scoped(t) = mode {
                *q = scope_query(q, t).map_err(scope_err)?;
            }
        }
        Endpoint::Series | Endpoint::Labels | Endpoint::LabelValues(_) => {
            let n = params.iter().filter(|(k, _)| k == "match[]").count();
            if n == 0 && *endpoint == Endpoint::Series {
                return Err("match[]: at least one series selector is required".into());
            }
            if let Mode::Scoped(t) = mode {
                for (k, v) in params.iter_mut() {
                    if k == "match[]" {
                        *v = scope_selector(v, t).map_err(|e| match e {
                            ScopeError::NotASelector => e.to_string(),
                            other => format!(
                                "match[]: {}",
                                other.to_string().trim_start_matches("query: ")
                            ),
                        })?;
                    }
                }
                if n == 0 {
                    params.push(("match[]".into(), format!("{{{}}}", t.promql())));
                }
            }
        }
    }
    Ok(params)
}

/// An error in the shape of Prometheus' API (`errorType`, `error`).
pub(crate) fn prom_error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = serde_json::json!({"status": "error", "errorType": kind, "error": message});
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn acme() -> Mode {
        Mode::Scoped(TenantMatcher::new("project", &["acme".into()]).unwrap())
    }

    #[test]
    fn queries_are_required_and_scoped() {
        let e = prepare(&Endpoint::Query, p(&[("time", "1")]), &acme()).unwrap_err();
        assert!(e.starts_with("query: required"), "{e}");
        let e = prepare(&Endpoint::Query, p(&[("query", " ")]), &Mode::Pass).unwrap_err();
        assert!(e.starts_with("query: required"), "{e}");
        let out = prepare(
            &Endpoint::QueryRange,
            p(&[("query", "up"), ("step", "5")]),
            &acme(),
        )
        .unwrap();
        assert_eq!(out, p(&[("query", r#"up{project="acme"}"#), ("step", "5")]));
        let out = prepare(&Endpoint::Query, p(&[("query", "up")]), &Mode::Pass).unwrap();
        assert_eq!(out, p(&[("query", "up")]));
        let e = prepare(&Endpoint::Query, p(&[("query", "sum(")]), &acme()).unwrap_err();
        assert!(e.starts_with("query: invalid PromQL"), "{e}");
    }

    #[test]
    fn selectors_get_the_matcher_or_one_is_added() {
        let out = prepare(
            &Endpoint::Series,
            p(&[("match[]", "up"), ("match[]", r#"{job="x"}"#)]),
            &acme(),
        )
        .unwrap();
        assert_eq!(
            out,
            p(&[
                ("match[]", r#"up{project="acme"}"#),
                ("match[]", r#"{job="x",project="acme"}"#)
            ])
        );
        let e = prepare(&Endpoint::Series, p(&[]), &acme()).unwrap_err();
        assert!(e.starts_with("match[]:"), "{e}");
        let out = prepare(&Endpoint::Labels, p(&[("start", "1")]), &acme()).unwrap();
        assert_eq!(
            out,
            p(&[("start", "1"), ("match[]", r#"{project="acme"}"#)])
        );
        let e = prepare(&Endpoint::Labels, p(&[("match[]", "rate(x[1m])")]), &acme()).unwrap_err();
        assert!(e.starts_with("match[]:"), "{e}");
        let e = prepare(
            &Endpoint::LabelValues("vm_name".into()),
            p(&[("match[]", r#"up{project="beta"}"#)]),
            &acme(),
        )
        .unwrap_err();
        assert!(e.starts_with("match[]: the matcher"), "{e}");
    }
}
