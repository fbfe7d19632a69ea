//! The status page's static files (`/ui/{file}`): its script and style
//! sheet, embedded in the binary, and the HTML of `/` (`super::index`).
//!
//! Reads: nothing at run time: the files are `include_str!`'d. Emits: each
//! file with an `ETag` (the first 16 hex digits of its SHA-256, computed
//! once); requested as `ui/<file>?v=<that hash>`, as the page does, it is
//! cached for a year (`immutable`: a new binary has new hashes, so new
//! URLs); otherwise the browser revalidates (`no-cache`) and gets 304 when
//! its `If-None-Match` matches. Every URL in these files is relative, and
//! nothing is fetched from any other host (a pure test checks both, and
//! the size budget: [`BUDGET_GZIP_BYTES`]).
//!
//! Failure: an unknown file is the API's 404 (`not_found`, as an unknown
//! route).

use std::sync::OnceLock;

use axum::extract::{Path, RawQuery};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;

/// The page's HTML template (`super::index` fills it).
pub(super) const INDEX_HTML: &str = include_str!("ui/index.html");

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file under `/ui/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/app.css"),
    },
];

/// What the page may weigh, all files gzip'd (issue 15: 300 KB).
pub const BUDGET_GZIP_BYTES: usize = 300 * 1024;

/// A year: the longest `max-age` caches honour.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The content hashes, in [`ASSETS`]' order, computed once.
fn hashes() -> &'static [String] {
    static H: OnceLock<Vec<String>> = OnceLock::new();
    H.get_or_init(|| ASSETS.iter().map(|a| content_hash(a.body)).collect())
}

/// The first 16 hex digits of the SHA-256 of `body`.
pub fn content_hash(body: &str) -> String {
    Sha256::digest(body.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash of the asset `name` (`None`: no such asset).
pub fn hash_of(name: &str) -> Option<&'static str> {
    ASSETS
        .iter()
        .position(|a| a.name == name)
        .and_then(|i| hashes().get(i))
        .map(String::as_str)
}

pub async fn get(
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some((asset, hash)) = ASSETS.iter().zip(hashes()).find(|(a, _)| a.name == file) else {
        return Err(ApiError::RouteNotFound);
    };
    let etag = format!("\"{hash}\"");
    let versioned = query.as_deref() == Some(&format!("v={hash}"));
    let cache = if versioned { IMMUTABLE } else { "no-cache" };
    let mut resp = if headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(ETAG, v);
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(resp)
}
