//! Watchdog sinks against real local HTTP(S) receivers started here, and the
//! running watchdog (`alert::start`) driven through a real watch channel.
//!
//! Receivers record every request (method, path, headers, body) and answer
//! from a script (status codes, `Retry-After`, or never answering). HTTPS
//! receivers use a certificate from a throwaway CA made with rcgen; the sink
//! trusts it only through its `ca_file`. Notifications come from the real
//! rule engine fed with synthetic snapshots, so payloads are checked
//! end-to-end from snapshot to bytes on the wire.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::support::tls::{Pki, pki};
use vmscope::alert::config::{SinkConfig, WatchdogConfig};
use vmscope::alert::sinks::{self, DeliveryError, Dispatcher, SinkSpec};
use vmscope::alert::{
    AlertMetrics, DeliveryResult, Engine, Metric, Notification, Rule, Severity, Watchdog,
    rules::FsSelector,
};
use vmscope::model::{FilesystemStats, Snapshot, Source, VmRates, VmState, VmStats};
use vmscope::store::DbMetrics;

// ---------------------------------------------------------------- receivers

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

#[derive(Debug, Clone)]
enum Reply {
    Status(u16, Option<u64>, &'static str),
    Hang,
}

#[derive(Clone, Default)]
struct Shared {
    reqs: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    scheme: &'static str,
}

async fn record(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.reqs.lock().unwrap().push(Recorded {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(200, None, "{\"ok\":true}"));
    match reply {
        Reply::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
        Reply::Status(code, retry_after, body) => {
            let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
            if let Some(secs) = retry_after {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            r
        }
    }
}

impl Receiver {
    fn router(shared: &Shared) -> Router {
        Router::new().fallback(record).with_state(shared.clone())
    }

    async fn http() -> Receiver {
        let shared = Shared::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Self::router(&shared);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            addr,
            shared,
            scheme: "http",
        }
    }

    async fn https(pki: &Pki) -> Receiver {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let shared = Shared::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            pki.leaf_pem.clone().into_bytes(),
            pki.leaf_key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
        let app = Self::router(&shared);
        let server = axum_server::from_tcp_rustls(listener, config).unwrap();
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        Receiver {
            addr,
            shared,
            scheme: "https",
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.reqs.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.requests();
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ------------------------------------------------------ snapshots and rules

const T0: u64 = 1_800_000_000; // 2027-01-15T08:00:00Z

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn vm(id: &str, name: &str, cpu_ratio: f64) -> VmStats {
    VmStats {
        id: id.to_owned(),
        name: name.to_owned(),
        state: VmState::Running,
        allocated_vcpus: Some(2),
        allocated_memory_bytes: Some(2 << 30),
        memory_rss_bytes: 512 << 20,
        memory_utilization_ratio: Some(0.25),
        rates: Some(VmRates {
            window_seconds: 5.0,
            cpu_cores: cpu_ratio * 2.0,
            cpu_utilization_ratio: Some(cpu_ratio),
            ..VmRates::default()
        }),
        collect_success: true,
        ..VmStats::unmeasured(4242, Source::Process)
    }
}

fn snap(secs: u64, vms: Vec<VmStats>) -> Snapshot {
    let mut s = Snapshot::empty(Duration::from_secs(5));
    s.seq = secs / 5 + 1;
    s.collected_at = at(secs);
    s.host.hostname = Some("hv-test".to_owned());
    s.host.cpu_ratio = Some(0.1);
    s.host.memory_total_bytes = 64 << 30;
    s.host.memory_used_ratio = 0.3;
    s.host.filesystems = vec![FilesystemStats {
        device: "/dev/vda2".to_owned(),
        mountpoint: "/".to_owned(),
        fstype: "ext4".to_owned(),
        size_bytes: 40 << 30,
        free_bytes: 30 << 30,
        avail_bytes: 28 << 30,
    }];
    let mut vms = vms;
    vms.sort_by(|a, b| a.id.cmp(&b.id));
    s.vms = vms;
    s
}

fn vm_cpu_rule() -> Rule {
    Rule {
        name: "vm_cpu".to_owned(),
        metric: Metric::VmCpuUtilizationRatio,
        threshold: 0.9,
        sustained: Duration::from_secs(10),
        recovery: Duration::from_secs(10),
        repeat_interval: None,
        severity: Severity::Critical,
        sinks: None,
        selector: FsSelector::All,
    }
}

/// The real engine's fired and resolved notifications for VM "web-1"
/// burning 97 % of its 2 vCPUs from t=0 to t=20, gone from t=25.
fn fired_and_resolved() -> (Notification, Notification) {
    let mut e = Engine::new(vec![vm_cpu_rule()]);
    let mut out = Vec::new();
    for t in (0..=40).step_by(5) {
        let vms = if t <= 20 {
            vec![vm("vm-1", "web-1", 0.97)]
        } else {
            Vec::new()
        };
        out.extend(e.evaluate(at(t), &snap(t, vms)));
    }
    assert_eq!(out.len(), 2, "{out:#?}");
    let resolved = out.pop().unwrap();
    let fired = out.pop().unwrap();
    (fired, resolved)
}

fn sink_config(toml_text: &str) -> SinkConfig {
    let cfg: WatchdogConfig = toml::from_str(toml_text).unwrap();
    cfg.sinks.into_values().next().unwrap()
}

fn parse_time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

/// The `alerts[0]` every JSON sink carries for the fired VM alert.
fn expected_fired_alert() -> Value {
    json!({
        "rule": "vm_cpu",
        "host": "hv-test",
        "metric": "vm_cpu_utilization_ratio",
        "severity": "critical",
        "scope": {"kind": "vm", "vm_id": "vm-1", "vm_name": "web-1"},
        "scope_key": "vm:vm-1",
        "status": "firing",
        "transition": "fired",
        "value": 0.97,
        "threshold": 0.9,
        "started_at": "2027-01-15T08:00:10.000Z",
        "resolved_at": null,
        "summary": "VM web-1 (vm-1) uses 97% of its 2 vCPUs, 1.94 cores (>= 90%) for 10s",
        "context": {"vm": {
            "allocated_vcpus": 2,
            "cpu_cores": 1.94,
            "memory_rss_bytes": 536870912u64,
            "allocated_memory_bytes": 2147483648u64
        }}
    })
}

// -------------------------------------------------------------- the sinks

#[tokio::test]
async fn webhook_posts_the_documented_schema_over_https_with_the_sinks_ca() {
    let pki = pki();
    let rx = Receiver::https(&pki).await;
    let cfg = sink_config(&format!(
        "[sinks.ops]\ntype = \"webhook\"\nurl = \"{}\"\nauth_header = \"Bearer s3cr3t-token\"\nca_file = \"{}\"",
        rx.url("/hooks/vmscope"),
        pki.ca_file.display()
    ));
    let sink = sinks::build("ops", &cfg).unwrap();
    let (fired, resolved) = fired_and_resolved();
    let before = SystemTime::now();
    sink.deliver(&fired).await.unwrap();
    sink.deliver(&resolved).await.unwrap();

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/hooks/vmscope");
    assert_eq!(r.header("authorization"), "Bearer s3cr3t-token");
    assert_eq!(r.header("content-type"), "application/json");
    let mut body = r.json();
    let sent_at = parse_time(&body["sent_at"]);
    assert!(sent_at >= before - Duration::from_secs(1), "{body}");
    body.as_object_mut().unwrap().remove("sent_at");
    assert_eq!(
        body,
        json!({
            "version": "1",
            "source": "vmscope",
            "host": "hv-test",
            "rule": "vm_cpu",
            "severity": "critical",
            "status": "firing",
            "evaluated_at": "2027-01-15T08:00:10.000Z",
            "title": "[FIRING critical] vm_cpu on hv-test: 1 fired",
            "text": "[FIRING critical] vm_cpu on hv-test: 1 fired\n- VM web-1 (vm-1) uses 97% of its 2 vCPUs, 1.94 cores (>= 90%) for 10s",
            "alerts": [expected_fired_alert()],
        })
    );

    let body = reqs[1].json();
    assert_eq!(body["status"], "resolved");
    let a = &body["alerts"][0];
    assert_eq!(a["transition"], "resolved");
    assert_eq!(a["status"], "resolved");
    assert_eq!(a["started_at"], "2027-01-15T08:00:10.000Z");
    // Gone at t=25, clear for the 10 s recovery time at t=35.
    assert_eq!(a["resolved_at"], "2027-01-15T08:00:35.000Z");
    assert_eq!(a["value"], Value::Null);
    assert_eq!(a["scope_key"], "vm:vm-1");
}

#[tokio::test]
async fn https_without_the_ca_file_is_refused_and_retried_not_delivered() {
    let pki = pki();
    let rx = Receiver::https(&pki).await;
    let cfg = sink_config(&format!(
        "[sinks.ops]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"3s\"",
        rx.url("/x")
    ));
    let sink = sinks::build("ops", &cfg).unwrap();
    let (fired, _) = fired_and_resolved();
    match sink.deliver(&fired).await {
        Err(DeliveryError::Retryable { message, .. }) => {
            assert!(
                !message.contains(&rx.addr.to_string()),
                "URL leaked: {message}"
            );
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert!(rx.requests().is_empty());
}

#[tokio::test]
async fn telegram_send_message_and_a_401_that_never_shows_the_token() {
    let pki = pki();
    let rx = Receiver::https(&pki).await;
    let token = "123456:AAH-very-secret-token";
    let cfg = sink_config(&format!(
        "[sinks.tg]\ntype = \"telegram\"\nbot_token = \"{token}\"\nchat_id = \"-1001234567\"\napi_url = \"{}\"\nca_file = \"{}\"",
        rx.url(""),
        pki.ca_file.display()
    ));
    assert!(!format!("{cfg:?}").contains("very-secret"));
    let sink = sinks::build("tg", &cfg).unwrap();
    let (fired, _) = fired_and_resolved();
    sink.deliver(&fired).await.unwrap();
    let r = &rx.requests()[0];
    assert_eq!(r.path, format!("/bot{token}/sendMessage"));
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.json(),
        json!({
            "chat_id": -1001234567i64,
            "text": "[FIRING critical] vm_cpu on hv-test: 1 fired\n- VM web-1 (vm-1) uses 97% of its 2 vCPUs, 1.94 cores (>= 90%) for 10s",
            "disable_web_page_preview": true,
        })
    );

    // Telegram answers 401 for a bad token; a receiver echoing the token
    // (or a proxy error page quoting the URL) must not leak it.
    rx.script([Reply::Status(
        401,
        None,
        "{\"ok\":false,\"description\":\"Unauthorized /bot123456:AAH-very-secret-token/sendMessage\"}",
    )]);
    match sink.deliver(&fired).await {
        Err(DeliveryError::Rejected(msg)) => {
            assert!(msg.starts_with("HTTP 401"), "{msg}");
            assert!(!msg.contains("very-secret"), "token leaked: {msg}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn sentry_envelope_with_level_tags_and_auth_header() {
    let rx = Receiver::http().await;
    let cfg = sink_config(&format!(
        "[sinks.sentry]\ntype = \"sentry\"\ndsn = \"http://pubkey123@{}/42\"\nenvironment = \"lab\"",
        rx.addr
    ));
    let sink = sinks::build("sentry", &cfg).unwrap();
    let (fired, resolved) = fired_and_resolved();
    sink.deliver(&fired).await.unwrap();
    sink.deliver(&resolved).await.unwrap();
    let reqs = rx.requests();
    let r = &reqs[0];
    assert_eq!(r.path, "/api/42/envelope/");
    assert_eq!(r.header("content-type"), "application/x-sentry-envelope");
    assert_eq!(
        r.header("x-sentry-auth"),
        format!(
            "Sentry sentry_version=7, sentry_client=vmscope/{}, sentry_key=pubkey123",
            env!("CARGO_PKG_VERSION")
        )
    );
    let body = std::str::from_utf8(&r.body).unwrap();
    let lines: Vec<&str> = body.trim_end_matches('\n').split('\n').collect();
    assert_eq!(lines.len(), 3, "{body}");
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    let item: Value = serde_json::from_str(lines[1]).unwrap();
    let mut event: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(item["type"], "event");
    assert_eq!(item["length"].as_u64().unwrap() as usize, lines[2].len());
    let id = header["event_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(event["event_id"], id.as_str());
    let obj = event.as_object_mut().unwrap();
    obj.remove("event_id");
    parse_time(&obj.remove("timestamp").unwrap());
    assert_eq!(
        event,
        json!({
            "platform": "other",
            "level": "error",
            "logger": "vmscope.watchdog",
            "server_name": "hv-test",
            "release": format!("vmscope@{}", env!("CARGO_PKG_VERSION")),
            "environment": "lab",
            "message": {"formatted": "[FIRING critical] vm_cpu on hv-test: 1 fired\n- VM web-1 (vm-1) uses 97% of its 2 vCPUs, 1.94 cores (>= 90%) for 10s"},
            "tags": {"rule": "vm_cpu", "severity": "critical", "status": "firing", "host": "hv-test", "scope": "vm:vm-1"},
            "fingerprint": ["vmscope", "vm_cpu", "firing"],
            "extra": {"alerts": [expected_fired_alert()]},
        })
    );

    let body = std::str::from_utf8(&reqs[1].body).unwrap();
    let event: Value = serde_json::from_str(body.lines().nth(2).unwrap()).unwrap();
    assert_eq!(event["level"], "info");
    assert_eq!(event["tags"]["status"], "resolved");
}

#[tokio::test]
async fn alertmanager_labels_annotations_and_ends_at() {
    let rx = Receiver::http().await;
    let cfg = sink_config(&format!(
        "[sinks.am]\ntype = \"alertmanager\"\nurl = \"http://{}/\"\nresend_interval = \"30s\"",
        rx.addr
    ));
    let sink = sinks::build("am", &cfg).unwrap();
    assert_eq!(sink.resend_interval(), Some(Duration::from_secs(30)));
    let (fired, resolved) = fired_and_resolved();
    let before = SystemTime::now();
    sink.deliver(&fired).await.unwrap();
    sink.deliver(&resolved).await.unwrap();
    let reqs = rx.requests();
    assert_eq!(reqs[0].path, "/api/v2/alerts");
    let mut body = reqs[0].json();
    let ends = parse_time(&body[0]["endsAt"]);
    // Firing: valid for 4 x the re-send interval, as Prometheus does.
    let want = before + Duration::from_secs(120);
    assert!(
        ends >= want - Duration::from_secs(1) && ends <= want + Duration::from_secs(5),
        "{body}"
    );
    body[0].as_object_mut().unwrap().remove("endsAt");
    let labels = json!({
        "alertname": "vm_cpu",
        "severity": "critical",
        "instance": "hv-test",
        "job": "vmscope",
        "scope": "vm:vm-1",
        "metric": "vm_cpu_utilization_ratio",
        "vm_id": "vm-1",
        "vm_name": "web-1",
    });
    assert_eq!(
        body,
        json!([{
            "labels": labels,
            "annotations": {
                "summary": "VM web-1 (vm-1) uses 97% of its 2 vCPUs, 1.94 cores (>= 90%) for 10s",
                "threshold": "0.9",
                "value": "0.97",
            },
            "startsAt": "2027-01-15T08:00:10.000Z",
        }])
    );
    let res = reqs[1].json();
    assert_eq!(
        res[0]["labels"], labels,
        "same labels, so it resolves the same alert"
    );
    assert_eq!(res[0]["endsAt"], "2027-01-15T08:00:35.000Z");
    assert_eq!(res[0]["startsAt"], "2027-01-15T08:00:10.000Z");
}

// ---------------------------------------------------- retries and isolation

fn webhook_spec(name: &str, url: &str, timeout: &str) -> SinkSpec {
    let cfg = sink_config(&format!(
        "[sinks.{name}]\ntype = \"webhook\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\nmax_backoff = \"2s\""
    ));
    SinkSpec {
        name: name.to_owned(),
        sink: sinks::build(name, &cfg).unwrap(),
        delivery: cfg.delivery(),
    }
}

async fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test]
async fn server_errors_and_429_are_retried_other_4xx_are_not() {
    let retried = Receiver::http().await;
    retried.script([
        Reply::Status(503, None, "down for maintenance"),
        Reply::Status(429, Some(1), "slow down"),
        Reply::Status(200, None, "ok"),
    ]);
    let refused = Receiver::http().await;
    refused.script([Reply::Status(400, None, "bad payload")]);
    let names = vec!["retried".to_owned(), "refused".to_owned()];
    let metrics = Arc::new(AlertMetrics::new(&names, Arc::new(DbMetrics::new())));
    let d = Dispatcher::start(
        vec![
            webhook_spec("retried", &retried.url("/"), "5s"),
            webhook_spec("refused", &refused.url("/"), "5s"),
        ],
        metrics.clone(),
        None,
        Vec::new(),
    );
    let (fired, _) = fired_and_resolved();
    d.dispatch(std::slice::from_ref(&fired), Vec::new()).await;

    let reqs = retried.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(reqs.len(), 3);
    // Backoff 1 s after the 503, then the 429's Retry-After of 1 s.
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(900));
    assert!(reqs[2].at - reqs[1].at >= Duration::from_millis(900));
    let without_sent_at = |r: &Recorded| {
        let mut v = r.json();
        v.as_object_mut().unwrap().remove("sent_at");
        v
    };
    assert_eq!(
        without_sent_at(&reqs[0]),
        without_sent_at(&reqs[2]),
        "the same notification is re-sent"
    );
    assert!(
        wait_until(Duration::from_secs(2), || metrics
            .notifications("retried", DeliveryResult::Success)
            == 1)
        .await
    );
    assert_eq!(metrics.notifications("retried", DeliveryResult::Retry), 2);

    // The 400 was tried once, counted as rejected, and not repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused.requests().len(), 1);
    assert_eq!(
        metrics.notifications("refused", DeliveryResult::Rejected),
        1
    );
    assert_eq!(metrics.notifications("refused", DeliveryResult::Retry), 0);
    d.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_unreachable_sink_keeps_retrying_and_delivers_when_it_comes_back() {
    // Reserve a port, close it: connections are refused until we listen.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let names = vec!["later".to_owned()];
    let metrics = Arc::new(AlertMetrics::new(&names, Arc::new(DbMetrics::new())));
    let d = Dispatcher::start(
        vec![webhook_spec(
            "later",
            &format!("http://127.0.0.1:{port}/"),
            "2s",
        )],
        metrics.clone(),
        None,
        Vec::new(),
    );
    let (fired, _) = fired_and_resolved();
    d.dispatch(std::slice::from_ref(&fired), Vec::new()).await;
    assert!(
        wait_until(Duration::from_secs(5), || metrics
            .notifications("later", DeliveryResult::Retry)
            >= 2)
        .await
    );
    // Now the receiver appears on that port.
    let shared = Shared::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = Receiver::router(&shared);
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert!(
        wait_until(Duration::from_secs(6), || metrics
            .notifications("later", DeliveryResult::Success)
            == 1)
        .await
    );
    let reqs = shared.reqs.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].json()["alerts"][0]["scope_key"], "vm:vm-1");
    d.shutdown(Duration::from_secs(1)).await;
}

// ------------------------------------------------- the running watchdog

fn watchdog_config(db: &Path, sinks_toml: &str) -> WatchdogConfig {
    toml::from_str(&format!(
        r#"
        state_db_path = "{}"
        builtin_rules = false
        shutdown_timeout = "1s"
        [rules.vm_cpu]
        metric = "vm_cpu_utilization_ratio"
        threshold = 0.9
        sustained = "10s"
        severity = "critical"
        {sinks_toml}
        "#,
        db.display()
    ))
    .unwrap()
}

/// Open the store from the config's (old) `state_db_path` as `serve` does
/// (src/cli/serve.rs), then start the watchdog with it.
async fn start_watchdog(
    cfg: WatchdogConfig,
    rx: watch::Receiver<Arc<Snapshot>>,
) -> Result<Watchdog, vmscope::alert::WatchdogError> {
    let store = match &cfg.state_db_path {
        Some(path) => {
            let c = vmscope::store::StoreConfig {
                path: Some(path.clone()),
                ..Default::default()
            };
            Some(vmscope::store::open(&c, Arc::new(DbMetrics::new())).await?)
        }
        None => None,
    };
    vmscope::alert::start(cfg, rx, store).await
}

/// A watch channel like the collector's, and a way to publish simulated
/// 5 s ticks one at a time, each awaited until the watchdog evaluated it.
struct Feed {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Feed {
    fn new() -> (Feed, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::empty(Duration::from_secs(5))));
        (Feed { tx }, rx)
    }

    async fn ticks(&self, wd: &Watchdog, ts: impl IntoIterator<Item = u64>, hot: bool) {
        let mut evaluated = wd.evaluated();
        for t in ts {
            let vms = if hot {
                vec![vm("vm-1", "web-1", 0.99), vm("vm-2", "web-2", 0.95)]
            } else {
                vec![vm("vm-1", "web-1", 0.05), vm("vm-2", "web-2", 0.05)]
            };
            let s = snap(t, vms);
            let seq = s.seq;
            self.tx.send(Arc::new(s)).unwrap();
            tokio::time::timeout(Duration::from_secs(5), evaluated.wait_for(|e| *e == seq))
                .await
                .expect("the watchdog evaluates every snapshot within 5 s")
                .unwrap();
        }
    }
}

async fn get_json(router: &Router, uri: &str) -> (StatusCode, Value) {
    use http_body_util::BodyExt;
    let resp = router
        .clone()
        .oneshot(
            axum::http::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_hanging_sink_delays_neither_evaluation_nor_the_other_sinks() {
    let hang = Receiver::http().await;
    hang.script((0..10).map(|_| Reply::Hang));
    let good = Receiver::http().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = watchdog_config(
        &dir.path().join("state.db"),
        &format!(
            "[sinks.hang]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"60s\"\n\
             [sinks.good]\ntype = \"webhook\"\nurl = \"{}\"\n",
            hang.url("/"),
            good.url("/")
        ),
    );
    let (feed, rx) = Feed::new();
    let wd = start_watchdog(cfg, rx).await.unwrap();

    // Two VMs cross the line together: one notification, two alerts.
    feed.ticks(&wd, (0..=10).step_by(5), true).await;
    let pushed = Instant::now();
    let reqs = good.wait_for(1, Duration::from_secs(3)).await;
    assert_eq!(reqs.len(), 1, "the good sink got the alert");
    assert!(reqs[0].at - pushed < Duration::from_secs(2));
    let body = reqs[0].json();
    assert_eq!(body["alerts"].as_array().unwrap().len(), 2);
    assert_eq!(hang.wait_for(1, Duration::from_secs(2)).await.len(), 1);

    // Evaluation goes on while "hang" is stuck on its first request.
    feed.ticks(&wd, (15..=35).step_by(5), false).await;
    let pushed = Instant::now();
    let reqs = good.wait_for(2, Duration::from_secs(3)).await;
    assert_eq!(reqs.len(), 2, "the recovery reached the good sink");
    assert!(reqs[1].at - pushed < Duration::from_secs(2));
    assert_eq!(reqs[1].json()["status"], "resolved");
    assert_eq!(
        hang.requests().len(),
        1,
        "hang is still on its first request"
    );

    let (status, page) = get_json(
        &vmscope::api::alerts::router(wd.history()),
        "/api/v1/alerts?rule=vm_cpu",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["active"], json!([]));
    assert_eq!(page["history"].as_array().unwrap().len(), 2);

    let started = Instant::now();
    wd.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown is bounded by shutdown_timeout"
    );
}

#[tokio::test]
async fn restart_mid_episode_does_not_notify_again_and_the_api_shows_it() {
    let good = Receiver::http().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let sinks = format!(
        "[sinks.good]\ntype = \"webhook\"\nurl = \"{}\"\n",
        good.url("/")
    );

    let (feed, rx) = Feed::new();
    let wd = start_watchdog(watchdog_config(&db, &sinks), rx)
        .await
        .unwrap();
    feed.ticks(&wd, (0..=20).step_by(5), true).await;
    assert_eq!(good.wait_for(1, Duration::from_secs(3)).await.len(), 1);
    wd.shutdown().await;

    // A new agent on the same database; the VMs are still hot.
    let (feed, rx) = Feed::new();
    let wd = start_watchdog(watchdog_config(&db, &sinks), rx)
        .await
        .unwrap();
    let text = vmscope::export::encode(vmscope::export::Format::Text, &[&wd.metrics()]);
    assert!(
        text.contains(
            "vmscope_alert_active{alert=\"vm_cpu\",severity=\"critical\",scope=\"vm:vm-1\"} 1"
        ),
        "{text}"
    );
    let (_, page) = get_json(
        &vmscope::api::alerts::router(wd.history()),
        "/api/v1/alerts",
    )
    .await;
    let active: Vec<&str> = page["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["scope"].as_str().unwrap())
        .collect();
    assert_eq!(active.len(), 2);
    assert!(active.contains(&"vm:vm-1") && active.contains(&"vm:vm-2"));
    assert_eq!(page["active"][0]["started_at"], "2027-01-15T08:00:10.000Z");

    feed.ticks(&wd, (100..=160).step_by(5), true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        good.requests().len(),
        1,
        "no second alert for the same episode"
    );

    feed.ticks(&wd, (165..=185).step_by(5), false).await;
    let reqs = good.wait_for(2, Duration::from_secs(3)).await;
    assert_eq!(reqs.len(), 2);
    let body = reqs[1].json();
    assert_eq!(body["status"], "resolved");
    assert_eq!(body["alerts"].as_array().unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(good.requests().len(), 2, "exactly one recovery");

    let (_, page) = get_json(
        &vmscope::api::alerts::router(wd.history()),
        "/api/v1/alerts?scope=vm:vm-1",
    )
    .await;
    assert_eq!(page["active"], json!([]));
    let h = &page["history"][0];
    assert_eq!(h["status"], "resolved");
    assert_eq!(h["started_at"], "2027-01-15T08:00:10.000Z");
    // Cold from t=165, clear for the 10 s recovery time at t=175.
    assert_eq!(h["resolved_at"], "2027-01-15T08:02:55.000Z");
    assert_eq!(h["alert"]["transition"], "fired");
    assert_eq!(h["resolution"]["transition"], "resolved");
    wd.shutdown().await;
}

#[tokio::test]
async fn alerts_api_paginates_filters_and_rejects_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = watchdog_config(&dir.path().join("state.db"), "");
    let (feed, rx) = Feed::new();
    let wd = start_watchdog(cfg, rx).await.unwrap();
    // Five episodes for two VMs each: hot 15 s, cold 15 s.
    let mut t = 0;
    for _ in 0..5 {
        feed.ticks(&wd, (t..=t + 15).step_by(5), true).await;
        feed.ticks(&wd, (t + 20..=t + 35).step_by(5), false).await;
        t += 40;
    }
    let router = vmscope::api::alerts::router(wd.history());

    let mut seen = 0;
    let mut uri = "/api/v1/alerts?limit=3".to_owned();
    loop {
        let (status, page) = get_json(&router, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen += page["history"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/alerts?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, 10);

    let (_, p2) = get_json(&router, "/api/v1/alerts?limit=4&page=3").await;
    assert_eq!(p2["history"].as_array().unwrap().len(), 2);
    assert_eq!(p2["next_page"], Value::Null);

    let (_, vm2) = get_json(&router, "/api/v1/alerts?scope=vm:vm-2&limit=100").await;
    assert_eq!(vm2["history"].as_array().unwrap().len(), 5);

    // The third episode ran from t=90 (fired) to t=110 (resolved).
    let (_, win) = get_json(
        &router,
        "/api/v1/alerts?since=2027-01-15T08:01:40Z&until=2027-01-15T08:01:45Z",
    )
    .await;
    assert_eq!(win["history"].as_array().unwrap().len(), 2, "{win}");

    for bad in [
        "/api/v1/alerts?limit=0",
        "/api/v1/alerts?page=x",
        "/api/v1/alerts?since=tomorrow",
        "/api/v1/alerts?cursor=nope",
        "/api/v1/alerts?colour=red",
    ] {
        let (status, body) = get_json(&router, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
    wd.shutdown().await;
}

#[tokio::test]
async fn start_rejects_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: WatchdogConfig = toml::from_str(&format!(
        "state_db_path = \"{}\"\n[rules.vm_cpu]\nmetric = \"vm_cpu_utilization_ratio\"\nthreshold = 0.9\nsustained = \"2s\"",
        dir.path().join("s.db").display()
    ))
    .unwrap();
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::empty(Duration::from_secs(5))));
    let err = vmscope::alert::start(cfg, rx, None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "watchdog.rules.vm_cpu.sustained: 2s is shorter than the collection interval 5s"
    );
    assert!(
        !dir.path().join("s.db").exists(),
        "nothing created on a bad config"
    );
}
