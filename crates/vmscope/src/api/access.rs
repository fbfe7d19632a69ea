//! The access middleware: hands each request's path, client address and
//! `Authorization` header to [`crate::access::Gate`], runs a bcrypt check
//! (when one is needed) on a blocking thread, answers refusals, and sets
//! `http_server_config.headers` on every response.
//!
//! Reads: the client address the server stores in the request
//! (`ConnectInfo<SocketAddr>`, see `crate::server`). Emits: the request with
//! an [`Access`] extension for the handlers, or 401 (with
//! `WWW-Authenticate`), 403 or 429 (with `Retry-After`) as the API's JSON
//! error. Logs refusals at debug with the client address, the path and the
//! token's or user's name, never a secret.
//!
//! Fails: never; a bcrypt check that cannot run (the blocking pool gone)
//! is a refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::access::{Access, AuthResult, Credentials, Decision, Gate, Verdict};
use crate::export::scoped::View;
use crate::model::scope::TenantScope;

/// Set on the response of a route that refused the caller's scope
/// ([`admit`]), for [`enforce`] to count the outcome.
#[derive(Debug, Clone, Copy)]
struct NotForScope(AuthResult);

/// Both schemes vmscope takes, as RFC 9110 lists challenges.
const CHALLENGE: &str = "Bearer realm=\"vmscope\", Basic realm=\"vmscope\"";

/// At most this many bcrypt checks run at once: each takes a core for tens
/// of milliseconds, and the rate limits already bound how many arrive.
const BCRYPT_PARALLEL: usize = 2;
static BCRYPT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BCRYPT_PARALLEL);

pub async fn enforce(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let creds = Credentials::parse(
        req.headers()
            .get_all(AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let verdict = gate.check(
        req.uri().path(),
        ip,
        creds,
        (Instant::now(), SystemTime::now()),
    );
    let decision = match verdict {
        Verdict::Decided(d) => d,
        Verdict::Bcrypt(pending) => {
            // Held across the blocking call: bounds bcrypt's CPU.
            let permit = BCRYPT_SLOTS.acquire().await;
            let (pending, ok) = match tokio::task::spawn_blocking(move || {
                let ok = pending.verify();
                (pending, ok)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "a password check failed to run");
                    return with_headers(
                        &gate,
                        ApiError::Failed("password check failed").into_response(),
                    );
                }
            };
            drop(permit);
            gate.finish(pending, ok, Instant::now())
        }
    };
    let resp = match decision {
        Decision::Allow(access) => {
            // The gate counted admins and anonymous callers; a tenant or
            // host-only caller is counted here, by what the route did.
            let counted_here = matches!(access, Access::Tenant { .. } | Access::HostOnly);
            req.extensions_mut().insert::<Access>(access);
            let resp = next.run(req).await;
            if counted_here {
                gate.metrics()
                    .count(match resp.extensions().get::<NotForScope>() {
                        Some(NotForScope(r)) => *r,
                        None => AuthResult::Ok,
                    });
            }
            resp
        }
        Decision::Refuse(r) => {
            tracing::debug!(
                result = r.result.as_str(),
                client = %ip.map(|i| i.to_string()).unwrap_or_default(),
                path = req.uri().path(),
                who = r.who.as_deref().unwrap_or(""),
                "request refused: {}",
                r.message
            );
            let err = match r.status {
                401 => ApiError::Unauthorized(r.message),
                429 => ApiError::RateLimited(r.message),
                _ => ApiError::Forbidden(r.message),
            };
            let mut resp = err.into_response();
            if r.status == 401 {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
            }
            if let Some(s) = r.retry_after {
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
            }
            resp
        }
    };
    with_headers(&gate, resp)
}

fn with_headers(gate: &Gate, mut resp: Response) -> Response {
    for (name, value) in gate.headers() {
        // Checked at load (names from a fixed list, no control characters).
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

/// The guard of a route whose handler does not scope by [`Access`]: only
/// admins and plain anonymous callers get through. A tenant is refused
/// (403: it is authenticated, but this endpoint is not for tenants); a
/// `host_only` caller is asked for credentials (401).
pub async fn admit(req: Request, next: Next) -> Response {
    match req.extensions().get::<Access>() {
        Some(Access::Tenant { who, .. }) => {
            tracing::debug!(
                path = req.uri().path(),
                who = %who.describe(),
                "request refused: endpoint not available to tenant tokens"
            );
            let mut resp = ApiError::Forbidden("this endpoint is not available to tenant tokens")
                .into_response();
            resp.extensions_mut()
                .insert(NotForScope(AuthResult::Forbidden));
            resp
        }
        Some(Access::HostOnly) => {
            let mut resp = ApiError::Unauthorized("credentials required").into_response();
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
            resp.extensions_mut()
                .insert(NotForScope(AuthResult::Missing));
            resp
        }
        _ => next.run(req).await,
    }
}

/// What a request may see, for the handlers of routes that scope
/// (`Resource::scoped`): taken from the [`Access`] the gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Everything: admins, and anonymous callers where the group allows
    /// them in full.
    All,
    /// A tenant's view, or the host-only one.
    Scoped(View),
}

impl Viewer {
    pub fn of(access: &Access) -> Viewer {
        match access {
            Access::Admin { .. } | Access::Anonymous => Viewer::All,
            Access::Tenant {
                users, projects, ..
            } => Viewer::Scoped(View::Tenant(TenantScope::new(users, projects))),
            Access::HostOnly => Viewer::Scoped(View::HostOnly),
        }
    }

    /// The tenant, if the request is one's.
    pub fn tenant(&self) -> Option<&TenantScope> {
        match self {
            Viewer::Scoped(View::Tenant(t)) => Some(t),
            _ => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // The gate sets an Access on every request it lets through; a
        // handler reached without one is a router built without the gate:
        // fail closed.
        match parts.extensions.get::<Access>() {
            Some(a) => Ok(Viewer::of(a)),
            None => {
                tracing::error!(
                    path = parts.uri.path(),
                    "request reached a handler without an access decision"
                );
                Err(ApiError::Failed(
                    "access control is not set up for this route",
                ))
            }
        }
    }
}

/// The client's address and port, when the server recorded it (the TCP
/// peer; `None` in routers served without `ConnectInfo`, such as tests).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}
