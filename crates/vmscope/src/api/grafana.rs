//! Grafana panel embedding: `GET /grafana/panel_iframe_src` (the iframe
//! URL, [`crate::proxy::grafana`]) and `GET /grafana/panel.png` (410: no
//! image rendering).
//!
//! Reads: the request's parameters and its [`Access`] (a tenant's owner
//! variable comes from its token), `[proxy.grafana]`. Emits: `{"src": ...}`.
//! Fails: 400 naming the parameter; 401/403 as the query proxy refuses
//! (`super::prometheus::mode`); 503 when the proxy is not set up.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::access::Access;
use crate::proxy::grafana::{FixedVariable, Subject, iframe_src, jwt};

pub async fn panel_iframe_src(
    State(state): State<AppState>,
    access: Option<Extension<Access>>,
    uri: Uri,
) -> Response {
    let Some(proxy) = state.proxy() else {
        return ApiError::Unavailable("the query proxy (and Grafana embedding) is not set up")
            .into_response();
    };
    let access = access.map(|e| e.0);
    let fixed = match &access {
        Some(Access::Tenant {
            users, projects, ..
        }) => match proxy.tenant_matcher(users, projects) {
            Ok(t) => {
                let g = &proxy.config().grafana;
                let name = if g.owner_variable.is_empty() {
                    t.label().to_owned()
                } else {
                    g.owner_variable.clone()
                };
                let c = proxy.config();
                Some(FixedVariable {
                    name,
                    values: t.values().to_vec(),
                    reserved: vec![c.user_label.clone(), c.project_label.clone()],
                })
            }
            Err(m) => return ApiError::BadRequest(m.into()).into_response(),
        },
        other => {
            if let Err(r) = super::prometheus::mode(&proxy, other.as_ref()) {
                return r.into_response();
            }
            None
        }
    };
    let params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let g = &proxy.config().grafana;
    let token = g.jwt_key.as_ref().map(|key| {
        let subject = subject(access.as_ref());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        jwt(
            key.expose().as_bytes(),
            &subject,
            &g.jwt_audience,
            now,
            g.jwt_ttl.as_secs(),
        )
    });
    match iframe_src(g, &params, fixed.as_ref(), token.as_deref()) {
        Ok(src) => axum::Json(serde_json::json!({ "src": src })).into_response(),
        Err(e) => ApiError::BadRequest(e.0.into()).into_response(),
    }
}

fn subject(access: Option<&Access>) -> Subject {
    match access {
        Some(Access::Admin { who }) => Subject {
            name: who.describe(),
            scopes: Vec::new(),
        },
        Some(Access::Tenant {
            who,
            users,
            projects,
        }) => Subject {
            name: who.describe(),
            scopes: users
                .iter()
                .map(|u| format!("user:{u}"))
                .chain(projects.iter().map(|p| format!("project:{p}")))
                .collect(),
        },
        _ => Subject {
            name: "anonymous".into(),
            scopes: Vec::new(),
        },
    }
}

/// 410 Gone: image rendering is not offered.
pub async fn panel_png() -> Response {
    let body = serde_json::json!({"error": {
        "code": "gone",
        "message": "panel images are not rendered; embed the URL from GET /grafana/panel_iframe_src?uid=<dashboard>&panelId=<panel> in an iframe instead",
    }});
    (StatusCode::GONE, axum::Json(body)).into_response()
}
