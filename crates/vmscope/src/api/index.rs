//! `/`: the status page. Its HTML is a template embedded in the binary
//! (`ui/index.html`) filled with the content hashes of the script and style
//! sheet it loads (`super::ui`), what the caller may see, whether the
//! watchdog keeps an alert history, and the index of every endpoint (from
//! [`super::ROUTES`]). The script then reads the JSON API with the
//! browser's own credentials, by relative URLs only.
//!
//! Reads: the table, the caller's [`Viewer`], the alert history's
//! availability. Emits: HTML, `no-cache` (it differs by caller) and a
//! Content-Security-Policy allowing this origin only, so the browser
//! itself refuses any request to another host. Cannot fail.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::response::{Html, IntoResponse, Response};

use super::access::Viewer;
use super::{AppState, ROUTES, ui};
use crate::export::scoped::View;

/// Only this origin, no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The route index, one `<li>` per row of [`ROUTES`]: relative links, so
/// that they work under a reverse proxy's path prefix.
pub(super) fn route_list() -> String {
    let mut list = String::new();
    for r in ROUTES {
        // Paths and summaries are fixed strings without markup characters.
        let href = match r.path.trim_start_matches('/') {
            "" => "./",
            rel => rel,
        };
        if r.path.contains('{') {
            list.push_str(&format!(
                "    <li><code>{}</code> - {}</li>\n",
                r.path, r.summary
            ));
        } else {
            list.push_str(&format!(
                "    <li><a href=\"{href}\"><code>{}</code></a> - {}</li>\n",
                r.path, r.summary
            ));
        }
    }
    list
}

/// The page for `viewer` (`all`, `tenant` or `none`), the watchdog's
/// history on or off.
pub(super) fn page(viewer: &Viewer, alerts: bool) -> String {
    let who = match viewer {
        Viewer::All => "all",
        Viewer::Scoped(View::Tenant(_)) => "tenant",
        Viewer::Scoped(View::HostOnly) => "none",
    };
    ui::INDEX_HTML
        .replace("{{JS_HASH}}", ui::hash_of("app.js").unwrap_or_default())
        .replace("{{CSS_HASH}}", ui::hash_of("app.css").unwrap_or_default())
        .replace("{{VIEWER}}", who)
        .replace("{{ALERTS}}", if alerts { "on" } else { "off" })
        .replace("{{ROUTES}}", &route_list())
}

pub async fn get(State(state): State<AppState>, viewer: Viewer) -> Response {
    let mut resp = Html(page(&viewer, state.alerts().available())).into_response();
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    resp
}
