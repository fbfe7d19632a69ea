//! The HTTP API through `tower::ServiceExt::oneshot` (no socket), on
//! literal snapshots: routes vs `docs/openapi.yaml`, JSON bodies vs the
//! documented schemas, errors, content negotiation, gzip, HEAD.
//!
//! `GET /api/v1/alerts` is served as `vmscope serve` serves it (the API
//! router merged with a real watchdog's, `alert::start` on a temporary
//! state database), fed hand-made snapshots through a watch channel.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt;
use vmscope::api::{AppState, ROUTES, Reads, router};
use vmscope::export::fixture;
use vmscope::model::{CpuSeconds, NetStats, Owner, Snapshot, Source, VmState, VmStats};

const SPEC: &str = include_str!("../../../../docs/openapi.yaml");

/// A VM built by hand with a name that needs escaping everywhere.
fn odd_vm() -> VmStats {
    VmStats {
        id: "odd id/ü".into(),
        name: "a \"quoted\" \\ name\nwith newline, ünïcødé 🚀".into(),
        state: VmState::Paused,
        start_time_seconds: 1_700_000_000.25,
        cpu: CpuSeconds {
            user: 2.0,
            system: 0.5,
            guest: None,
        },
        memory_rss_bytes: 1 << 20,
        memory_virtual_bytes: 1 << 30,
        network: vec![
            NetStats {
                interface: "tap-a".into(),
                rx_bytes: 10,
                tx_bytes: 20,
                ..NetStats::default()
            },
            NetStats {
                interface: "tap-b".into(),
                rx_bytes: 1,
                tx_bytes: 2,
                ..NetStats::default()
            },
        ],
        collect_success: true,
        ..VmStats::unmeasured(77, Source::Libvirt)
    }
}

/// An owner id that needs escaping in JSON, a URL and a label.
const ODD_OWNER: &str = "odd \"owner\"/ü\n";

fn snapshot() -> Snapshot {
    let mut snap = fixture::snapshot(5);
    let mut odd = odd_vm();
    odd.owner = Some(std::sync::Arc::new(Owner {
        user_id: Some(ODD_OWNER.into()),
        project_id: Some("p0".into()),
        ..Owner::default()
    }));
    snap.vms.push(odd);
    snap.vms.sort_by(|a, b| a.id.cmp(&b.id));
    snap.with_usage(1000)
}

fn app(snap: Snapshot) -> (Router, watch::Sender<Arc<Snapshot>>) {
    let (tx, rx) = watch::channel(Arc::new(snap));
    (router(AppState::new(rx, Vec::new())), tx)
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(header::HeaderName, &str)],
) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Resp {
    call(app, Method::GET, uri, &[]).await
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn spec() -> Value {
    serde_yaml::from_str(SPEC).unwrap()
}

/// A concrete URI for a route template.
fn concrete(path: &str) -> String {
    if path.contains("{kind}") {
        // fixture: vm-000000 belongs to user u0.
        return path.replace("{kind}", "user").replace("{id}", "u0");
    }
    path.replace("{id}", "vm-000001")
        .replace("{file}", "app.js")
}

// ---- a small OpenAPI 3.0 schema checker: enough for our own spec ----

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut node = spec;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "dangling $ref {r}");
            resolve(spec, node)
        }
        None => schema,
    }
}

fn check(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if v.is_null() {
        return if schema["nullable"] == true {
            Ok(())
        } else {
            Err(format!("{at}: null but not nullable"))
        };
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(spec, s, v, at)?;
        }
    }
    if let Some(any) = schema["oneOf"].as_array()
        && !any.iter().any(|s| check(spec, s, v, at).is_ok())
    {
        return Err(format!("{at}: {v} matches no oneOf branch"));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{at}: {v} not in {values:?}"));
    }
    let ok = match schema["type"].as_str() {
        None => true,
        Some("string") => v.is_string(),
        Some("number") => v.is_number(),
        Some("integer") => v.is_u64() || v.is_i64(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        Some(t) => return Err(format!("{at}: unsupported schema type {t}")),
    };
    if !ok {
        return Err(format!("{at}: {v} is not a {}", schema["type"]));
    }
    if let Some(obj) = v.as_object()
        && (schema.get("properties").is_some() || schema.get("additionalProperties").is_some())
    {
        for req in schema["required"].as_array().into_iter().flatten() {
            let key = req.as_str().unwrap();
            if !obj.contains_key(key) {
                return Err(format!("{at}: required field {key} missing"));
            }
        }
        for (k, val) in obj {
            match (
                schema["properties"].get(k),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => check(spec, s, val, &format!("{at}.{k}"))?,
                (None, Some(s)) => check(spec, s, val, &format!("{at}.{k}"))?,
                (None, None) => return Err(format!("{at}: field {k} is not documented")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(spec, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a response against the spec entry for its path and status.
fn check_documented(spec: &Value, template: &str, r: &Resp) {
    let status = r.status.as_str();
    let doc = &spec["paths"][template]["get"]["responses"][status];
    assert!(
        !doc.is_null(),
        "{template}: status {status} is not documented"
    );
    let doc = resolve(spec, doc);
    let content_type = r.header(header::CONTENT_TYPE).to_owned();
    let media = doc["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{template} {status}: no content documented"));
    assert!(
        media.keys().any(|k| content_type.starts_with(k.as_str())),
        "{template} {status}: content type {content_type} not among {:?}",
        media.keys().collect::<Vec<_>>()
    );
    if content_type.starts_with("application/json") {
        let schema = &media["application/json"]["schema"];
        check(spec, schema, &r.json(), template)
            .unwrap_or_else(|e| panic!("{template} {status}: {e}"));
    }
}

// ---- tests ----

#[tokio::test]
async fn spec_paths_are_exactly_the_router_routes() {
    let spec = spec();
    let documented: BTreeSet<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // `vmscope serve` serves every row of the table, the watchdog's too.
    let watchdog = watchdog_routes();
    assert!(watchdog.contains("/api/v1/alerts"), "{watchdog:?}");
    let routed: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).chain(watchdog).collect();
    assert_eq!(documented, routed);
    // Each one is a real route of the app as `serve` builds it, even with
    // the watchdog disabled: not the JSON 404 fallback, not axum's bare 404.
    let dir = tempfile::tempdir().unwrap();
    let (app, _tx, wd) = served_app(snapshot(), disabled_watchdog(dir.path())).await;
    for path in routed {
        let r = get(&app, &concrete(path)).await;
        assert_ne!(r.status, StatusCode::NOT_FOUND, "{path} is not served");
    }
    wd.shutdown().await;
}

#[tokio::test]
async fn every_route_is_served_under_its_template_and_matches_the_spec() {
    let spec = spec();
    let (app, _tx) = app(snapshot());
    // The resources that read the snapshot (the watchdog's are 503 without
    // one; they are checked against a real watchdog below).
    let snapshot_routes = || ROUTES.iter().filter(|r| r.reads == Reads::Snapshot);
    for r in snapshot_routes() {
        let resp = get(&app, &concrete(r.path)).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", r.path);
        check_documented(&spec, r.path, &resp);
    }
    // The router labels each request with the route it matched: every
    // route in the table (hence the spec) is a real route of the router.
    let families = get(&app, "/metrics.json").await.json();
    let hist = families["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "vmscope_http_request_duration_seconds")
        .unwrap();
    let labelled: BTreeSet<&str> = hist["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["labels"]["route"].as_str().unwrap())
        .collect();
    let routed: BTreeSet<&str> = snapshot_routes().map(|r| r.path).collect();
    assert_eq!(labelled, routed);
}

#[tokio::test]
async fn error_responses_match_the_spec() {
    let spec = spec();
    let (app, tx) = app(snapshot());
    let r = get(&app, "/api/v1/vms/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    check_documented(&spec, "/api/v1/vms/{id}", &r);
    let r = get(&app, "/api/v1/vms/nope/stats").await;
    check_documented(&spec, "/api/v1/vms/{id}/stats", &r);
    let r = get(&app, "/api/v1/vms/%FF").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    check_documented(&spec, "/api/v1/vms/{id}", &r);
    for (uri, status) in [
        ("/api/v1/owners/user/nobody", StatusCode::NOT_FOUND),
        ("/api/v1/owners/tenant/u0", StatusCode::NOT_FOUND),
        ("/api/v1/owners/user/%FF", StatusCode::BAD_REQUEST),
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, status, "{uri}");
        check_documented(&spec, "/api/v1/owners/{kind}/{id}", &r);
    }
    let r = get(&app, "/api/v1/owners?kind=tenant").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    check_documented(&spec, "/api/v1/owners", &r);
    tx.send(Arc::new(Snapshot::empty(Duration::from_secs(15))))
        .unwrap();
    let r = get(&app, "/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    check_documented(&spec, "/healthz", &r);
    // Empty snapshot: list and host still answer, as documented.
    for path in [
        "/api/v1/vms",
        "/api/v1/owners",
        "/api/v1/host",
        "/metrics.json",
    ] {
        let r = get(&app, path).await;
        assert_eq!(r.status, StatusCode::OK);
        check_documented(&spec, path, &r);
    }
}

#[tokio::test]
async fn unknown_vm_is_404_with_a_json_error() {
    let (app, _tx) = app(snapshot());
    let r = get(&app, "/api/v1/vms/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header(header::CONTENT_TYPE), "application/json");
    assert_eq!(
        r.json(),
        serde_json::json!({"error": {"code": "not_found", "message": "no VM with id \"x\""}})
    );
    // A long id is echoed truncated, and quotes stay valid JSON.
    let long = format!("{}%22", "a".repeat(500));
    let r = get(&app, &format!("/api/v1/vms/{long}/stats")).await;
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.len() < 200, "{msg}");
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json_errors() {
    let (app, _tx) = app(snapshot());
    let r = get(&app, "/nope/../etc/passwd").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = call(&app, Method::POST, "/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    let r = call(
        &app,
        Method::GET,
        "/api/v1/vms",
        &[(header::CONTENT_LENGTH, "10000000")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn http_metrics_label_the_route_template_never_the_raw_path() {
    let (app, _tx) = app(snapshot());
    get(&app, "/api/v1/vms/secret-id-123").await;
    get(&app, "/no/such/place").await;
    let text = get(&app, "/metrics").await.text();
    assert!(!text.contains("secret-id-123"));
    assert!(!text.contains("/no/such/place"));
    assert!(text.contains(r#"route="/api/v1/vms/{id}",method="GET",status="404""#));
    assert!(text.contains(r#"route="unmatched",method="GET",status="404""#));
    // This very request is in flight while the exposition is written.
    assert!(text.contains("\nvmscope_http_requests_in_flight 1\n"));
}

#[tokio::test]
async fn metrics_content_negotiation() {
    let (app, _tx) = app(snapshot());
    let text = get(&app, "/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    assert_eq!(
        text.header(header::CONTENT_TYPE),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(text.header(header::VARY), "Accept, Accept-Encoding");
    assert!(text.header(header::CONTENT_ENCODING).is_empty());
    assert!(!text.text().contains("# EOF"));
    assert!(
        text.text()
            .contains("# TYPE vmscope_vm_cpu_seconds_total counter\n")
    );

    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let om = call(
        &app,
        Method::GET,
        "/metrics",
        &[(header::ACCEPT, prometheus)],
    )
    .await;
    assert_eq!(
        om.header(header::CONTENT_TYPE),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = om.text();
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains(
        "# TYPE vmscope_vm_cpu_seconds counter\n# UNIT vmscope_vm_cpu_seconds seconds\n"
    ));
    assert_eq!(om.header(header::CONTENT_LENGTH), body.len().to_string());

    let plain = call(
        &app,
        Method::GET,
        "/metrics",
        &[(header::ACCEPT, "text/plain")],
    )
    .await;
    assert!(plain.header(header::CONTENT_TYPE).starts_with("text/plain"));
}

/// Everything but the live self-metrics (HTTP, snapshot age), which move
/// with every request.
fn without_http_metrics(body: &str) -> String {
    body.lines()
        .filter(|l| !l.contains("vmscope_http_") && !l.starts_with("vmscope_snapshot_age_seconds "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn gzip_decodes_to_the_same_body() {
    let (app, _tx) = app(snapshot());
    for accept in ["text/plain", "application/openmetrics-text"] {
        let plain = call(&app, Method::GET, "/metrics", &[(header::ACCEPT, accept)]).await;
        let gz = call(
            &app,
            Method::GET,
            "/metrics",
            &[
                (header::ACCEPT, accept),
                (header::ACCEPT_ENCODING, "deflate, gzip;q=0.8"),
            ],
        )
        .await;
        assert_eq!(gz.header(header::CONTENT_ENCODING), "gzip");
        assert_eq!(
            gz.header(header::CONTENT_TYPE),
            plain.header(header::CONTENT_TYPE)
        );
        let unzipped = String::from_utf8(gunzip(&gz.body)).unwrap();
        assert_eq!(
            without_http_metrics(&unzipped),
            without_http_metrics(&plain.text())
        );
        assert!(unzipped.contains("vmscope_http_request_duration_seconds"));
    }
    let no = call(
        &app,
        Method::GET,
        "/metrics",
        &[(header::ACCEPT_ENCODING, "gzip;q=0")],
    )
    .await;
    assert!(no.header(header::CONTENT_ENCODING).is_empty());

    // The JSON resources are compressed too, on request.
    let plain = get(&app, "/api/v1/vms").await;
    let gz = call(
        &app,
        Method::GET,
        "/api/v1/vms",
        &[(header::ACCEPT_ENCODING, "gzip")],
    )
    .await;
    assert_eq!(gz.header(header::CONTENT_ENCODING), "gzip");
    assert_eq!(gunzip(&gz.body), plain.body.to_vec());
}

#[tokio::test]
async fn head_has_the_headers_of_get_and_no_body() {
    let (app, _tx) = app(snapshot());
    for path in [
        "/metrics",
        "/metrics.json",
        "/api/v1/vms",
        "/api/v1/vms/vm-000002",
        "/healthz",
        "/",
    ] {
        let g = get(&app, path).await;
        let h = call(&app, Method::HEAD, path, &[]).await;
        assert_eq!(h.status, g.status, "{path}");
        assert_eq!(
            h.header(header::CONTENT_TYPE),
            g.header(header::CONTENT_TYPE),
            "{path}"
        );
        assert!(h.body.is_empty(), "{path}");
        assert!(!g.body.is_empty(), "{path}");
    }
}

#[tokio::test]
async fn vm_resources_carry_the_snapshot_values() {
    let (app, _tx) = app(snapshot());
    let list = get(&app, "/api/v1/vms").await.json();
    let vms = list["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 6);
    let odd = vms.iter().find(|v| v["id"] == "odd id/ü").unwrap();
    assert_eq!(
        odd["name"],
        "a \"quoted\" \\ name\nwith newline, ünïcødé 🚀"
    );
    assert_eq!(odd["cpu_cores"], Value::Null);
    let v1 = vms.iter().find(|v| v["id"] == "vm-000001").unwrap();
    assert_eq!(v1["cpu_cores"], 0.25);
    assert_eq!(v1["network_rx_bytes_per_second"], 100.0);

    // Percent-encoded id with a space, a slash and UTF-8.
    let full = get(&app, "/api/v1/vms/odd%20id%2F%C3%BC").await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.json()["state"], "paused");
    assert_eq!(full.json()["network"][1]["interface"], "tap-b");

    let stats = get(&app, "/api/v1/vms/odd%20id%2F%C3%BC/stats")
        .await
        .json();
    assert_eq!(stats["cpu_seconds"], 2.5);
    assert_eq!(stats["memory_vms_bytes"], 1u64 << 30);
    assert_eq!(stats["network_rx_bytes"], 11);
    assert_eq!(stats["network_tx_bytes"], 22);
    assert_eq!(stats["rates"], Value::Null);
    let at = stats["collected_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");

    let host = get(&app, "/api/v1/host").await.json();
    assert_eq!(host["cpus"], 64);
    assert_eq!(host["filesystems"][0]["mountpoint"], "/");
}

#[tokio::test]
async fn owner_resources_carry_the_snapshot_totals() {
    let spec = spec();
    let (app, _tx) = app(snapshot());
    let r = get(&app, "/api/v1/owners").await;
    check_documented(&spec, "/api/v1/owners", &r);
    let list = r.json();
    let owners = list["owners"].as_array().unwrap();
    let keys: Vec<(&str, &str)> = owners
        .iter()
        .map(|o| (o["kind"].as_str().unwrap(), o["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [
            ("user", ODD_OWNER),
            ("user", "u0"),
            ("user", "u3"),
            ("project", "p0"),
            ("project", "p3")
        ]
    );
    // p0: vm-000000 (fixture, 2 vCPUs, 0.25 cores) and the odd VM (paused,
    // no allocation known, no rate yet, 1 MiB RSS).
    let p0 = &owners[3];
    assert_eq!(p0["vms"], 2);
    assert_eq!(p0["vms_running"], 1);
    assert_eq!(p0["allocated_vcpus"], 2);
    assert_eq!(p0["cpu_cores"], 0.25);
    assert_eq!(p0["memory_rss_bytes"], (1u64 << 30) + (1 << 20));
    assert_eq!(p0["folded"], false);
    assert_eq!(p0["series"], "p0");
    assert_eq!(owners[1]["name"], "user0");
    assert_eq!(owners[0]["name"], Value::Null);

    let projects = get(&app, "/api/v1/owners?kind=project").await.json();
    assert_eq!(projects["owners"].as_array().unwrap().len(), 2);
    assert!(
        projects["owners"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["kind"] == "project")
    );

    let r = get(&app, "/api/v1/owners/project/p0").await;
    check_documented(&spec, "/api/v1/owners/{kind}/{id}", &r);
    let detail = r.json();
    assert_eq!(detail["owner"], *p0);
    let ids: Vec<&str> = detail["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["odd id/ü", "vm-000000"]);

    // A hostile id, percent-encoded, is found; one that is not there is
    // echoed, truncated, in valid JSON.
    let r = get(&app, "/api/v1/owners/user/odd%20%22owner%22%2F%C3%BC%0A").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["vms"][0]["id"], "odd id/ü");
    let long = format!("{}%22%0A", "x".repeat(500));
    let r = get(&app, &format!("/api/v1/owners/user/{long}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.starts_with("no user with id \"xxx"), "{msg}");
    assert!(msg.len() < 200, "{msg}");
    let r = get(&app, "/api/v1/owners/tenant/u0").await;
    assert_eq!(
        r.json()["error"]["message"],
        "no owner kind \"tenant\" (user or project)"
    );
}

#[tokio::test]
async fn healthz_follows_the_snapshot_age() {
    let (app, tx) = app(Snapshot::empty(Duration::from_secs(15)));
    let r = get(&app, "/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "not_ready");

    tx.send(Arc::new(snapshot())).unwrap();
    let r = get(&app, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    assert!(r.json()["snapshot_age_seconds"].as_f64().unwrap() < 5.0);

    let mut old = snapshot();
    old.collected_at = SystemTime::now() - Duration::from_secs(46);
    tx.send(Arc::new(old)).unwrap();
    let r = get(&app, "/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "stale");
}

#[tokio::test]
async fn index_lists_every_route() {
    let (app, _tx) = app(snapshot());
    let r = get(&app, "/").await;
    assert!(r.header(header::CONTENT_TYPE).starts_with("text/html"));
    let page = r.text();
    // The watchdog's routes too: `serve` always mounts them.
    for path in ROUTES.iter().map(|r| r.path).chain(watchdog_routes()) {
        assert!(page.contains(&format!("<code>{path}</code>")), "{path}");
    }
    // Relative links: the page works under a reverse proxy's prefix.
    assert!(page.contains("<a href=\"api/v1/alerts\">"), "{page}");
    assert!(!page.contains("href=\"/"), "{page}");
}

#[test]
fn the_schema_checker_catches_missing_and_undocumented_fields() {
    let spec = spec();
    let schema = serde_json::json!({"$ref": "#/components/schemas/Health"});
    let good = serde_json::json!({"status": "ok", "snapshot_age_seconds": 1.5, "seq": 3});
    assert!(check(&spec, &schema, &good, "h").is_ok());
    let missing = serde_json::json!({"status": "ok", "seq": 3});
    assert!(
        check(&spec, &schema, &missing, "h")
            .unwrap_err()
            .contains("snapshot_age_seconds")
    );
    let extra = serde_json::json!({"status": "ok", "snapshot_age_seconds": 1, "seq": 3, "x": 1});
    assert!(
        check(&spec, &schema, &extra, "h")
            .unwrap_err()
            .contains("not documented")
    );
    let wrong = serde_json::json!({"status": "bad", "snapshot_age_seconds": 1, "seq": 3});
    assert!(check(&spec, &schema, &wrong, "h").is_err());
}

// ---- the watchdog's route, GET /api/v1/alerts, served as `vmscope serve` does ----

/// Route templates the watchdog answers.
fn watchdog_routes() -> BTreeSet<&'static str> {
    ROUTES
        .iter()
        .filter(|r| r.reads == Reads::AlertHistory)
        .map(|r| r.path)
        .collect()
}

/// The app exactly as `vmscope serve` builds it (src/cli/serve.rs).
async fn served_app(
    snap: Snapshot,
    cfg: vmscope::alert::WatchdogConfig,
) -> (
    Router,
    watch::Sender<Arc<Snapshot>>,
    vmscope::alert::Watchdog,
) {
    let (tx, rx) = watch::channel(Arc::new(snap));
    // serve opens the store once, when the watchdog uses it.
    let store = match (&cfg.state_db_path, cfg.enabled) {
        (Some(path), true) => {
            let c = vmscope::store::StoreConfig {
                path: Some(path.clone()),
                ..Default::default()
            };
            let metrics = Arc::new(vmscope::store::DbMetrics::new());
            Some(vmscope::store::open(&c, metrics).await.unwrap())
        }
        _ => None,
    };
    let wd = vmscope::alert::start(cfg, rx.clone(), store).await.unwrap();
    let app = router(vmscope::cli::serve::state(rx, &wd));
    (app, tx, wd)
}

fn watchdog_config(dir: &std::path::Path, rest: &str) -> vmscope::alert::WatchdogConfig {
    toml::from_str(&format!(
        "state_db_path = \"{}\"\nbuiltin_rules = false\nshutdown_timeout = \"1s\"\n{rest}",
        dir.join("state.db").display()
    ))
    .unwrap()
}

fn disabled_watchdog(dir: &std::path::Path) -> vmscope::alert::WatchdogConfig {
    watchdog_config(dir, "enabled = false")
}

const T0: u64 = 1_800_000_000; // 2027-01-15T08:00:00Z

/// The fixture host (three VMs, one filesystem) at `T0 + secs`, one 5 s
/// tick each, with the host CPU busy at `cpu_ratio`.
fn tick(secs: u64, cpu_ratio: f64) -> Snapshot {
    let mut s = fixture::snapshot(3);
    s.interval = Duration::from_secs(5);
    s.seq = secs / 5 + 1;
    s.collected_at = SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs);
    s.host.cpu_ratio = Some(cpu_ratio);
    s
}

/// Publish each snapshot and wait until the watchdog has evaluated it.
async fn feed(
    tx: &watch::Sender<Arc<Snapshot>>,
    wd: &vmscope::alert::Watchdog,
    snaps: impl IntoIterator<Item = Snapshot>,
) {
    let mut evaluated = wd.evaluated();
    for s in snaps {
        let seq = s.seq;
        tx.send(Arc::new(s)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), evaluated.wait_for(|e| *e == seq))
            .await
            .expect("the watchdog evaluates every snapshot within 5 s")
            .unwrap();
    }
}

fn time_of(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

/// Every `*_at` field of an episode and of its alerts is RFC 3339 (the
/// schema checker does not look at `format`).
fn check_times(episode: &Value) {
    for k in ["started_at", "last_notified_at"] {
        time_of(&episode[k]);
    }
    for part in ["alert", "resolution"] {
        if !episode[part].is_null() {
            time_of(&episode[part]["started_at"]);
        }
    }
}

#[tokio::test]
async fn alerts_json_of_a_real_watchdog_matches_the_spec_while_firing_and_after_recovery() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let cfg = watchdog_config(
        dir.path(),
        "[rules.host_cpu]\nmetric = \"host_cpu_ratio\"\nthreshold = 0.8\nsustained = \"10s\"",
    );
    let (app, tx, wd) = served_app(Snapshot::empty(Duration::from_secs(5)), cfg).await;

    // Busy from t=0: fires at t=10, after the 10 s sustained time.
    feed(&tx, &wd, [0, 5].map(|t| tick(t, 0.95))).await;
    let r = get(&app, "/api/v1/alerts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["active"],
        serde_json::json!([]),
        "not yet: 5 s only"
    );
    feed(&tx, &wd, [tick(10, 0.95)]).await;
    let r = get(&app, "/api/v1/alerts").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(header::CONTENT_TYPE), "application/json");
    check_documented(&spec, "/api/v1/alerts", &r);
    let page = r.json();
    assert_eq!(page["active"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["history"], serde_json::json!([]));
    let e = &page["active"][0];
    check_times(e);
    assert_eq!(e["rule"], "host_cpu");
    assert_eq!(e["scope"], "host");
    assert_eq!(e["status"], "firing");
    assert_eq!(e["severity"], "warning");
    assert_eq!(time_of(&e["started_at"]), at(10));
    assert_eq!(e["resolved_at"], Value::Null);
    assert_eq!(e["resolution"], Value::Null);
    assert_eq!(e["alert"]["transition"], "fired");
    assert_eq!(e["alert"]["scope"], serde_json::json!({"kind": "host"}));
    assert_eq!(e["alert"]["value"], 0.95);
    assert_eq!(e["alert"]["threshold"], 0.8);
    assert_eq!(e["alert"]["host"], "hv1");
    assert_eq!(e["alert"]["context"]["vm_count"], 3);
    assert!(
        !e["alert"]["context"]["top_vms"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Idle from t=15: clear for the 10 s recovery time at t=25.
    feed(&tx, &wd, [15, 20, 25].map(|t| tick(t, 0.1))).await;
    let r = get(&app, "/api/v1/alerts").await;
    assert_eq!(r.status, StatusCode::OK);
    check_documented(&spec, "/api/v1/alerts", &r);
    let page = r.json();
    assert_eq!(page["active"], serde_json::json!([]));
    assert_eq!(page["history"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(page["next_page"], Value::Null);
    let h = &page["history"][0];
    check_times(h);
    assert_eq!(h["id"], e["id"], "the same episode, now resolved");
    assert_eq!(h["status"], "resolved");
    assert_eq!(time_of(&h["started_at"]), at(10));
    assert_eq!(time_of(&h["resolved_at"]), at(25));
    assert_eq!(h["alert"]["transition"], "fired");
    assert_eq!(h["resolution"]["transition"], "resolved");
    assert_eq!(h["resolution"]["status"], "resolved");
    assert_eq!(time_of(&h["resolution"]["resolved_at"]), at(25));

    // Page mode: next_page, and no next_cursor.
    let r = get(
        &app,
        "/api/v1/alerts?page=1&limit=1&rule=host_cpu&scope=host",
    )
    .await;
    check_documented(&spec, "/api/v1/alerts", &r);
    assert_eq!(r.json()["history"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["next_page"], Value::Null);
    wd.shutdown().await;
}

#[tokio::test]
async fn alerts_json_of_every_scope_kind_matches_the_spec() {
    // One rule per scope kind with thresholds the fixture host always
    // breaches, so every kind of scope and context is in the JSON.
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let cfg = watchdog_config(
        dir.path(),
        r#"
        [rules.mem]
        metric = "host_memory_used_ratio"
        threshold = 0.5
        sustained = "5s"
        [rules.disk]
        metric = "filesystem_avail_gib"
        threshold = 1000
        sustained = "5s"
        severity = "critical"
        [rules.vm_cpu]
        metric = "vm_cpu_utilization_ratio"
        threshold = 0.0
        sustained = "5s"
        severity = "info"
        [rules.project_rss]
        metric = "owner_memory_rss_gib"
        group_by = "project"
        threshold = 0.0
        sustained = "5s"
        "#,
    );
    let (app, tx, wd) = served_app(Snapshot::empty(Duration::from_secs(5)), cfg).await;
    feed(&tx, &wd, [0, 5].map(|t| tick(t, 0.1))).await;
    let r = get(&app, "/api/v1/alerts").await;
    check_documented(&spec, "/api/v1/alerts", &r);
    let page = r.json();
    let active = page["active"].as_array().unwrap();
    let kinds: BTreeSet<&str> = active
        .iter()
        .map(|e| e["alert"]["scope"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["filesystem", "host", "owner", "vm"]),
        "{page}"
    );
    let owner = active.iter().find(|e| e["rule"] == "project_rss").unwrap();
    assert!(
        owner["scope"]
            .as_str()
            .unwrap()
            .starts_with("owner:project:")
    );
    assert!(
        owner["alert"]["context"]["owner"]["vm_count"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let disk = active.iter().find(|e| e["rule"] == "disk").unwrap();
    assert_eq!(disk["scope"], "filesystem:/");
    assert_eq!(
        disk["alert"]["context"]["filesystem"]["device"],
        "/dev/sda1"
    );
    let mem = active.iter().find(|e| e["rule"] == "mem").unwrap();
    assert!(
        mem["alert"]["context"]["hypervisor_rss_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let vm = active
        .iter()
        .find(|e| e["scope"] == "vm:vm-000001")
        .unwrap();
    assert_eq!(vm["severity"], "info");
    assert!(
        vm["alert"]["context"]["vm"]["memory_rss_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    // A scope kind filters on the key's prefix.
    let r = get(&app, "/api/v1/alerts?scope=vm").await;
    check_documented(&spec, "/api/v1/alerts", &r);
    let vms = r.json()["active"].as_array().unwrap().len();
    assert!(vms >= 1 && vms < active.len(), "{vms} of {}", active.len());
    wd.shutdown().await;
}

#[tokio::test]
async fn alerts_errors_are_documented_json_naming_the_parameter() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let cfg = watchdog_config(
        dir.path(),
        "[rules.host_cpu]\nmetric = \"host_cpu_ratio\"\nthreshold = 0.8",
    );
    let (app, _tx, wd) = served_app(Snapshot::empty(Duration::from_secs(5)), cfg).await;
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("bogus=1", "bogus"),
        ("page=0", "page"),
        ("cursor=x", "cursor"),
        ("since=yesterday", "since"),
        ("rule=a&rule=b", "rule"),
    ] {
        let r = get(&app, &format!("/api/v1/alerts?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        check_documented(&spec, "/api/v1/alerts", &r);
        let body = r.json();
        assert_eq!(body["error"]["code"], "bad_request", "{query}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{name}: ")), "{query}: {msg}");
    }

    // The state database fails under the running agent: 500, no SQL text.
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    db.execute_batch("DROP TABLE alert_episodes").unwrap();
    let r = get(&app, "/api/v1/alerts").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    check_documented(&spec, "/api/v1/alerts", &r);
    assert_eq!(r.json()["error"]["code"], "internal");
    assert!(!r.text().contains("alert_episodes"), "{}", r.text());
    wd.shutdown().await;

    // Watchdog disabled: the route still answers, with 503.
    let dir = tempfile::tempdir().unwrap();
    let (app, _tx, wd) = served_app(snapshot(), disabled_watchdog(dir.path())).await;
    let r = get(&app, "/api/v1/alerts").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    check_documented(&spec, "/api/v1/alerts", &r);
    assert_eq!(r.json()["error"]["code"], "unavailable");
    assert!(
        !dir.path().join("state.db").exists(),
        "a disabled watchdog creates no database"
    );
    wd.shutdown().await;
}

// ---- the status page and its history ----

/// Sends `snap` and waits until the history subscriber has recorded it
/// (its series for `id` has `points` points).
/// (The watch channel keeps only the newest snapshot: a subscriber that
/// lags skips ticks, so each tick here is awaited.)
async fn feed_history(
    app: &Router,
    tx: &watch::Sender<Arc<Snapshot>>,
    snap: Snapshot,
    id: &str,
    points: usize,
) {
    feed_until(app, tx, snap, id, |h| {
        h["t"].as_array().unwrap().len() == points
    })
    .await;
}

async fn feed_until(
    app: &Router,
    tx: &watch::Sender<Arc<Snapshot>>,
    snap: Snapshot,
    id: &str,
    done: impl Fn(&Value) -> bool,
) {
    tx.send(Arc::new(snap)).unwrap();
    let mut last = Value::Null;
    for _ in 0..200 {
        let r = get(app, &format!("/api/v1/vms/{id}/history")).await;
        if r.status == StatusCode::OK {
            last = r.json();
            if done(&last) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the history of {id} never got there: {last}");
}

#[tokio::test]
async fn history_follows_the_snapshots_and_matches_the_spec() {
    let spec = spec();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |secs: u64, cpu: f64| {
        let mut s = snapshot();
        s.seq = secs + 1;
        s.collected_at = start + Duration::from_secs(secs);
        for v in &mut s.vms {
            if let Some(r) = v.rates.as_mut() {
                r.cpu_cores = cpu;
            }
        }
        s
    };
    let (app, tx) = app(at(0, 1.0));
    // Two ticks in the first 15 s step (averaged), one in each of the next two.
    feed_history(&app, &tx, at(0, 1.0), "vm-000001", 1).await;
    feed_until(&app, &tx, at(5, 3.0), "vm-000001", |h| {
        h["cpu_cores"][0] == 2.0
    })
    .await;
    feed_history(&app, &tx, at(15, 4.0), "vm-000001", 2).await;
    feed_history(&app, &tx, at(30, 5.0), "vm-000001", 3).await;

    let one = get(&app, "/api/v1/vms/vm-000001/history").await;
    assert_eq!(one.status, StatusCode::OK);
    check_documented(&spec, "/api/v1/vms/{id}/history", &one);
    let one = one.json();
    assert_eq!(one["id"], "vm-000001");
    assert_eq!(one["step_seconds"], 15);
    assert_eq!(one["window_seconds"], 3600);
    assert_eq!(
        one["t"],
        serde_json::json!([1_800_000_000u64, 1_800_000_015u64, 1_800_000_030u64])
    );
    assert_eq!(one["cpu_cores"], serde_json::json!([2.0, 4.0, 5.0]));
    assert_eq!(one["network_rx_bytes_per_second"][0], 100.0);

    let all = get(&app, "/api/v1/history?points=2").await;
    check_documented(&spec, "/api/v1/history", &all);
    let all = all.json();
    // The odd VM has no rates: no history, not listed.
    let ids: Vec<&str> = all["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(!ids.contains(&"odd id/ü"));
    let v1 = all["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "vm-000001")
        .unwrap();
    // Coarsened to 2 points: steps {0, 15} (3 ticks: 1, 3, 4) and {30}.
    // Finished steps are kept as bfloat16: within 2^-8 of the mean.
    let near = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() <= want.max(1.0) / 256.0;
    assert!(
        near(&v1["cpu_cores"][0], 8.0 / 3.0) && near(&v1["cpu_cores"][1], 5.0),
        "{v1}"
    );
    // The host: 0.35 of 64 CPUs, 156 GiB used.
    assert!(near(&all["host"]["cpu_cores"][0], 22.4), "{}", all["host"]);
    assert!(
        near(&all["host"]["memory_used_bytes"][0], (156u64 << 30) as f64),
        "{}",
        all["host"]
    );

    // Errors, as documented.
    for (uri, status) in [
        ("/api/v1/vms/nope/history", StatusCode::NOT_FOUND),
        (
            "/api/v1/vms/vm-000001/history?points=0",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/history?points=241", StatusCode::BAD_REQUEST),
        ("/api/v1/history?vm=vm-000001", StatusCode::BAD_REQUEST),
    ] {
        let r = get(&app, uri).await;
        assert_eq!(r.status, status, "{uri}: {}", r.text());
        let template = if uri.starts_with("/api/v1/vms/") {
            "/api/v1/vms/{id}/history"
        } else {
            "/api/v1/history"
        };
        check_documented(&spec, template, &r);
    }
    let r = get(&app, "/api/v1/history?points=241").await;
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("points:"),
        "{}",
        r.text()
    );

    // A VM that left the snapshot leaves the history.
    let mut fewer = at(45, 1.0);
    fewer.vms.retain(|v| v.id != "vm-000002");
    tx.send(Arc::new(fewer)).unwrap();
    feed_history(&app, &tx, at(45, 1.0), "vm-000001", 4).await;
    let mut fewer = at(46, 1.0);
    fewer.vms.retain(|v| v.id != "vm-000002");
    feed_history(&app, &tx, fewer, "vm-000001", 4).await;
    let all = get(&app, "/api/v1/history").await.json();
    assert!(
        all["vms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["id"] != "vm-000002"),
        "{all}"
    );
}

fn gzip_len(b: &[u8]) -> usize {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(b).unwrap();
    e.finish().unwrap().len()
}

#[tokio::test]
async fn the_status_page_fits_its_budget_gzipped() {
    let (app, _tx) = app(snapshot());
    let page = get(&app, "/").await.body;
    let mut total = gzip_len(&page);
    for a in vmscope::api::ui::ASSETS {
        total += gzip_len(a.body.as_bytes());
    }
    println!(
        "status page: {total} bytes gzipped (budget {})",
        vmscope::api::ui::BUDGET_GZIP_BYTES
    );
    assert!(
        total <= vmscope::api::ui::BUDGET_GZIP_BYTES,
        "{total} bytes"
    );
    assert!(total > 1000, "{total}: the files are embedded");
}

/// Every URL the page and its files name is relative to the page (so the
/// page works under a reverse proxy's path prefix) and on this host: no
/// scheme, no `//host`, no root-relative path, no font or import.
#[tokio::test]
async fn every_url_of_the_status_page_is_relative() {
    let (app, _tx) = app(snapshot());
    let page = get(&app, "/").await.text();
    let mut sources: Vec<(&str, String)> = vec![("index", page)];
    for a in vmscope::api::ui::ASSETS {
        sources.push((a.name, a.body.to_owned()));
    }
    let mut urls = 0;
    for (name, text) in &sources {
        // The SVG namespace is a name, never fetched.
        let text = text.replace("'http://www.w3.org/2000/svg'", "SVGNS");
        for bad in [
            "http://",
            "https://",
            "ws://",
            "wss://",
            "@import",
            "@font-face",
            "url(",
            "XMLHttpRequest",
            "WebSocket",
            "EventSource",
            "sendBeacon",
            "location.origin",
        ] {
            assert!(!text.contains(bad), "{name} contains {bad}");
        }
        // Attribute URLs and the script's fetches.
        for marker in [
            "href=\"",
            "src=\"",
            "getJSON('",
            "fetch('",
            "fetch(\"",
            "'api/",
            "+ 'api/",
        ] {
            for (i, _) in text.match_indices(marker) {
                let rest = &text[i + marker.len()..];
                urls += 1;
                assert!(
                    !rest.starts_with('/') && !rest.starts_with("//"),
                    "{name}: {marker}{} is not relative",
                    rest.chars().take(40).collect::<String>()
                );
            }
        }
    }
    assert!(
        urls >= 10,
        "found only {urls} URLs: the scan looks at nothing"
    );
    // The script fetches exactly these, all relative.
    let js = vmscope::api::ui::ASSETS[0].body;
    for want in [
        "getJSON('api/v1/host')",
        "getJSON('api/v1/vms')",
        "getJSON('api/v1/history')",
        "getJSON('api/v1/alerts?limit=10')",
    ] {
        assert!(js.contains(want), "app.js lacks {want}");
    }
}

#[tokio::test]
async fn status_page_files_are_cached_by_content_hash() {
    let (app, _tx) = app(snapshot());
    let page = get(&app, "/").await;
    assert_eq!(page.header(header::CACHE_CONTROL), "no-cache");
    let csp = page.header(header::CONTENT_SECURITY_POLICY).to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    assert!(
        html.contains("data-viewer=\"all\"") && html.contains("data-alerts=\"off\""),
        "{html}"
    );
    for a in vmscope::api::ui::ASSETS {
        let hash = vmscope::api::ui::hash_of(a.name).unwrap();
        assert_eq!(hash, vmscope::api::ui::content_hash(a.body));
        let url = format!("ui/{}?v={hash}", a.name);
        assert!(html.contains(&url), "the page does not load {url}");
        let r = get(&app, &format!("/{url}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, a.body.as_bytes());
        assert!(
            r.header(header::CONTENT_TYPE)
                .starts_with(a.content_type.split(';').next().unwrap())
        );
        assert_eq!(
            r.header(header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        let etag = r.header(header::ETAG).to_owned();
        assert_eq!(etag, format!("\"{hash}\""));
        // Without the hash: revalidated, and 304 when unchanged.
        let plain = get(&app, &format!("/ui/{}", a.name)).await;
        assert_eq!(plain.header(header::CACHE_CONTROL), "no-cache");
        let again = call(
            &app,
            Method::GET,
            &format!("/ui/{}", a.name),
            &[(header::IF_NONE_MATCH, etag.as_str())],
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
        assert!(again.body.is_empty());
        let stale = call(
            &app,
            Method::GET,
            &format!("/ui/{}", a.name),
            &[(header::IF_NONE_MATCH, "\"0000\"")],
        )
        .await;
        assert_eq!(stale.status, StatusCode::OK);
    }
    let r = get(&app, "/ui/secret.txt").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = get(&app, "/ui/..%2FCargo.toml").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// The history list, one other VM's history and the page, as `token`.
async fn as_(app: &Router, token: &str) -> (Resp, Resp, Resp) {
    let auth = format!("Bearer {token}");
    let h = [(header::AUTHORIZATION, auth.as_str())];
    (
        call(app, Method::GET, "/api/v1/history", &h).await,
        call(app, Method::GET, "/api/v1/vms/vm-000001/history", &h).await,
        call(app, Method::GET, "/", &h).await,
    )
}

/// The history and the page behind the access gate: a tenant gets its own
/// VMs' series and no host, another VM's is a 404, and the page tells its
/// script what this caller may see.
#[tokio::test]
async fn history_and_page_are_scoped_by_the_callers_token() {
    use vmscope::access::{Gate, WebConfig};
    let sha = vmscope::access::token::sha256_hex;
    let (admin, tenant) = ("vms_pure_history_admin_0001", "vms_pure_history_tenant_002");
    let web = WebConfig::parse(
        &format!(
            "vmscope:\n  tokens:\n    - {{name: admin, sha256: {}, scope: admin}}\n    - {{name: u0, sha256: {}, scope: \"user:u0\"}}\n",
            sha(admin),
            sha(tenant)
        ),
        std::path::Path::new("/nonexistent"),
    )
    .unwrap();
    let (tx, rx) = watch::channel(Arc::new(snapshot()));
    let app = vmscope::api::router_with_access(
        AppState::new(rx, Vec::new()),
        Arc::new(Gate::new(Some(web))),
    );
    // Wait for the subscriber to record the first snapshot.
    let mut snap = snapshot();
    snap.seq = 2;
    tx.send(Arc::new(snap)).unwrap();
    let mut admin_ids = Vec::new();
    for _ in 0..200 {
        let (h, _, _) = as_(&app, admin).await;
        admin_ids = h.json()["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        if admin_ids.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(admin_ids.len(), 5, "{admin_ids:?}");
    let (h, one, page) = as_(&app, admin).await;
    assert!(h.json()["host"].is_object());
    assert_eq!(one.status, StatusCode::OK);
    assert!(page.text().contains("data-viewer=\"all\""));

    let (h, one, page) = as_(&app, tenant).await;
    let h = h.json();
    let ids: Vec<&str> = h["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["vm-000000"], "{h}");
    assert!(h["host"].is_null(), "{h}");
    assert_eq!(one.status, StatusCode::NOT_FOUND, "{}", one.text());
    assert!(!one.text().contains("cpu_cores"));
    assert!(page.text().contains("data-viewer=\"tenant\""));
    let none = call(&app, Method::GET, "/api/v1/history", &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
}
