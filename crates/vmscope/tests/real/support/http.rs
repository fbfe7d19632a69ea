//! A blocking HTTP GET client for the lab's loopback servers (the agent and
//! Prometheus). Built on `ureq` with no proxy (a proxy from the environment
//! must never see loopback test traffic) and a short timeout, so a hung
//! server fails a test instead of stalling it.

use std::time::Duration;

/// Status and body of one response; non-2xx statuses are returned, not errors.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url` with optional query parameters (encoded here).
pub fn get_with_query(url: &str, query: &[(&str, &str)]) -> Result<Response, String> {
    get_full(url, query, None)
}

/// GET `url` asking for `accept` (e.g. `text/csv`).
pub fn get_accepting(url: &str, query: &[(&str, &str)], accept: &str) -> Result<Response, String> {
    get_full(url, query, Some(accept))
}

fn get_full(url: &str, query: &[(&str, &str)], accept: Option<&str>) -> Result<Response, String> {
    let mut req = agent().get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading body: {e}"))?;
    Ok(Response {
        status,
        content_type,
        body,
    })
}

pub fn get(url: &str) -> Result<Response, String> {
    get_with_query(url, &[])
}

/// GET `url`, require 200 and parse the body as JSON.
pub fn get_json(url: &str) -> Result<serde_json::Value, String> {
    let resp = get(url)?;
    if resp.status != 200 {
        return Err(format!("GET {url}: status {}: {}", resp.status, resp.body));
    }
    serde_json::from_str(&resp.body).map_err(|e| format!("GET {url}: body is not JSON: {e}"))
}
