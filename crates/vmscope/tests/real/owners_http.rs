//! The HTTP JSON owner source through the real binary, against a control
//! plane the test runs: a std `TcpListener` speaking HTTP/1.1 (one request
//! per connection) that checks the bearer token, and can answer slowly or
//! with broken JSON, and an HTTPS one (axum-server with a throwaway CA)
//! that can redirect or answer too much. Real QEMU VMs are attributed from
//! the rows; a refused token (401), a timeout, a malformed body, a
//! redirect and an oversized body each keep the last good rows, set `up`
//! 0 with their error kind, and never delay the tick.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::metrics::Exposition;
use crate::support::{lab_available, poll_until, unique_name, unique_uuid};

const APPEAR: Duration = Duration::from_secs(20);

/// How the control plane answers next.
#[derive(Clone)]
enum Answer {
    /// 200 with this body, if the token is right (401 otherwise).
    Json(String),
    /// The same after a pause.
    Slow(Duration, String),
}

struct ControlPlane {
    url: String,
    answer: Arc<Mutex<Answer>>,
    token: Arc<Mutex<String>>,
    requests: Arc<AtomicU32>,
}

impl ControlPlane {
    fn start(token: &str, answer: Answer) -> ControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/api/v1/instances",
            listener.local_addr().unwrap().port()
        );
        let cp = ControlPlane {
            url,
            answer: Arc::new(Mutex::new(answer)),
            token: Arc::new(Mutex::new(token.to_owned())),
            requests: Arc::new(AtomicU32::new(0)),
        };
        let (answer, token, requests) = (
            Arc::clone(&cp.answer),
            Arc::clone(&cp.token),
            Arc::clone(&cp.requests),
        );
        // The thread ends with the test process (nextest: one per test).
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (answer, token, requests) = (
                    answer.lock().unwrap().clone(),
                    token.lock().unwrap().clone(),
                    Arc::clone(&requests),
                );
                std::thread::spawn(move || {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(stream, &answer, &token);
                });
            }
        });
        cp
    }

    fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    fn set_token(&self, t: &str) {
        *self.token.lock().unwrap() = t.to_owned();
    }
}

fn serve(stream: TcpStream, answer: &Answer, token: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut auth = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_owned());
        }
    }
    let mut out = stream;
    if auth.as_deref() != Some(&format!("Bearer {token}")) {
        let body = r#"{"error":"unauthorized"}"#;
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let body = match answer {
        Answer::Json(b) => b,
        Answer::Slow(pause, b) => {
            std::thread::sleep(*pause);
            b
        }
    };
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn vm(roms: &Roms, role: &str) -> QemuVm {
    let spec = VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 32,
        firmware: Firmware::Idle,
        process_name: None,
    };
    QemuVm::start(roms, spec, None)
}

/// The control plane's document: A by UUID (upper case, as some platforms
/// write it), B by name; ids as numbers and strings.
fn document(a: &QemuVm, b: &QemuVm, a_user: &str) -> String {
    serde_json::json!({
        "data": {"instances": [
            {"vm": {"uuid": a.spec.uuid.to_uppercase()}, "owner": {"id": 1001, "name": a_user}, "project": {"name": "web"}},
            {"vm": {"name": b.spec.name}, "owner": {"id": "u-bob"}},
            {"vm": {}, "owner": {"id": "no-vm-key"}}
        ]}
    })
    .to_string()
}

fn config(cp: &ControlPlane, token_file: &std::path::Path) -> String {
    format!(
        r#"[owners.http]
url = {:?}
bearer_token_file = {token_file:?}
interval = "300ms"
timeout = "1s"
rows = "/data/instances"
vm_id = "/vm/uuid"
vm_name = "/vm/name"
user_id = "/owner/id"
user_name = "/owner/name"
project_name = "/project/name"
"#,
        cp.url
    )
}

fn until(agent: &Agent, what: &str, ok: impl Fn(&Exposition) -> bool) -> Exposition {
    poll_until(APPEAR, Duration::from_millis(100), || {
        let e = agent.metrics();
        ok(&e).then_some(e)
    })
    .map(|(e, _)| e)
    .unwrap_or_else(|| {
        panic!(
            "{what}: not seen within {APPEAR:?}; agent log:\n{}",
            agent.log()
        )
    })
}

fn info<'a>(e: &'a Exposition, vm: &QemuVm, label: &str) -> Option<&'a str> {
    let found = e.all("vmscope_vm_info", &[("vm_id", &vm.spec.uuid)]);
    found.first().and_then(|s| s.label(label))
}

fn up(e: &Exposition) -> Option<f64> {
    e.value("vmscope_owner_source_up", &[("source", "http")])
}

fn errors(e: &Exposition, kind: &str) -> f64 {
    e.value(
        "vmscope_owner_source_errors_total",
        &[("source", "http"), ("kind", kind)],
    )
    .unwrap_or(0.0)
}

fn rows(e: &Exposition) -> Option<f64> {
    e.value("vmscope_owner_source_rows", &[("source", "http")])
}

#[test]
fn rows_at_a_pointer_attribute_vms_and_a_refused_token_keeps_them() {
    if !lab_available("rows_at_a_pointer_attribute_vms_and_a_refused_token_keeps_them") {
        return;
    }
    let roms = Roms::new();
    let (a, b) = (vm(&roms, "hp-a"), vm(&roms, "hp-b"));
    let token = "tok-1-a9f3e2c1d0";
    let cp = ControlPlane::start(token, Answer::Json(document(&a, &b, "alice")));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let agent = Agent::start_with(1, &config(&cp, &token_file));
    let e = until(&agent, "A and B attributed", |e| {
        info(e, &a, "owner_user") == Some("alice") && info(e, &b, "owner_user") == Some("u-bob")
    });
    assert_eq!(info(&e, &a, "owner_source"), Some("http"));
    assert_eq!(info(&e, &a, "owner_project"), Some("web"));
    assert_eq!(up(&e), Some(1.0));
    assert_eq!(rows(&e), Some(2.0), "the row without a VM key is skipped");
    let api = agent.api_vms_with_id(&a.spec.uuid);
    assert_eq!(api[0]["owner_source"], "http");
    assert_eq!(api[0]["owner"]["user_id"], "1001", "a number is an id");
    assert_eq!(api[0]["owner"]["user_name"], "alice");

    // The control plane rotates its token; ours is now refused.
    let rotated = "tok-2-77b0c4e5f6";
    cp.set_token(rotated);
    let e = until(&agent, "the 401", |e| up(e) == Some(0.0));
    assert!(errors(&e, "status") >= 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let e = agent.metrics();
    assert_eq!(
        info(&e, &a, "owner_user"),
        Some("alice"),
        "last good rows kept"
    );
    assert_eq!(rows(&e), Some(2.0));

    // The new token lands in the file: read on the next fetch.
    std::fs::write(&token_file, rotated).unwrap();
    cp.set(Answer::Json(document(&a, &b, "alice2")));
    until(&agent, "up again with the new rows", |e| {
        up(e) == Some(1.0) && info(e, &a, "owner_user") == Some("alice2")
    });

    let log = agent.log();
    assert!(log.contains("owner source down"), "{log}");
    for secret in [token, rotated] {
        assert!(!log.contains(secret), "a token leaked:\n{log}");
    }
    assert!(log.contains("skipped"), "the skipped row is said: {log}");
}

#[test]
fn a_slow_or_broken_endpoint_keeps_the_rows_and_never_delays_the_tick() {
    if !lab_available("a_slow_or_broken_endpoint_keeps_the_rows_and_never_delays_the_tick") {
        return;
    }
    let roms = Roms::new();
    let (a, b) = (vm(&roms, "hs-a"), vm(&roms, "hs-b"));
    let good = document(&a, &b, "alice");
    let cp = ControlPlane::start("t0k3n-slow-test", Answer::Json(good.clone()));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0k3n-slow-test").unwrap();
    let agent = Agent::start_with(1, &config(&cp, &token_file));
    until(&agent, "A attributed", |e| {
        info(e, &a, "owner_user") == Some("alice") && up(e) == Some(1.0)
    });

    // 5 s per answer, the timeout is 1 s.
    cp.set(Answer::Slow(Duration::from_secs(5), good.clone()));
    let seq = |agent: &Agent| {
        let v: Value = crate::support::http::get_json(&agent.url("/api/v1/vms")).unwrap();
        v["seq"].as_u64().unwrap()
    };
    let e = until(&agent, "the timeout", |e| errors(e, "timeout") >= 1.0);
    assert_eq!(up(&e), Some(0.0));
    // While it hangs, ticks go on at their interval: 3 s see >= 2 ticks,
    // and the served snapshot is never older than a tick or two.
    let before = seq(&agent);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let e = agent.metrics();
        let age = e.value("vmscope_snapshot_age_seconds", &[]).unwrap();
        assert!(age < 2.5, "snapshot {age} s old while the source hangs");
        assert_eq!(info(&e, &a, "owner_user"), Some("alice"), "rows kept");
        let slowest = e
            .all("vmscope_collector_duration_seconds", &[])
            .iter()
            .map(|s| s.value)
            .fold(0.0, f64::max);
        assert!(slowest < 0.5, "a collector took {slowest} s");
    }
    assert!(seq(&agent) >= before + 2, "ticks stalled");

    // Broken JSON: a parse error, rows kept.
    cp.set(Answer::Json(
        r#"{"data": {"instances": [{"vm": "#.to_owned(),
    ));
    let e = until(&agent, "the parse error", |e| errors(e, "parse") >= 1.0);
    assert_eq!(up(&e), Some(0.0));
    assert_eq!(info(&e, &a, "owner_user"), Some("alice"));
    assert_eq!(rows(&e), Some(2.0));
    // `rows` no longer an array: a parse error too.
    cp.set(Answer::Json(
        r#"{"data": {"instances": {"a": 1}}}"#.to_owned(),
    ));
    let n = errors(&agent.metrics(), "parse");
    until(&agent, "another parse error", |e| errors(e, "parse") > n);

    cp.set(Answer::Json(document(&a, &b, "alice3")));
    until(&agent, "up again", |e| {
        up(e) == Some(1.0) && info(e, &a, "owner_user") == Some("alice3")
    });
    assert!(cp.requests.load(Ordering::SeqCst) >= 4);
}

/// What the HTTPS control plane answers.
#[derive(Clone, Copy, PartialEq)]
enum Tls {
    Rows,
    /// 302 to another origin (the plain-HTTP [`ControlPlane`]).
    Redirect,
    /// A body longer than `max_bytes`.
    Big,
}

/// An HTTPS control plane (axum-server, rustls) with a certificate from a
/// throwaway CA, on a runtime of its own.
struct HttpsPlane {
    url: String,
    mode: Arc<Mutex<Tls>>,
    _rt: tokio::runtime::Runtime,
}

impl HttpsPlane {
    fn start(pki: &crate::support::tls::Pki, elsewhere: String) -> HttpsPlane {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "https://127.0.0.1:{}/instances",
            listener.local_addr().unwrap().port()
        );
        let mode = Arc::new(Mutex::new(Tls::Rows));
        let m = Arc::clone(&mode);
        let app = axum::Router::new().fallback(move || {
            let mode = *m.lock().unwrap();
            let elsewhere = elsewhere.clone();
            async move {
                use axum::http::{StatusCode, header};
                use axum::response::IntoResponse;
                match mode {
                    Tls::Rows => r#"[{"id": "vm-tls-1", "user": "u-tls"}]"#.into_response(),
                    Tls::Redirect => {
                        (StatusCode::FOUND, [(header::LOCATION, elsewhere)]).into_response()
                    }
                    Tls::Big => format!(r#"[{{"id": "vm-big", "user": "{}"}}]"#, "x".repeat(4096))
                        .into_response(),
                }
            }
        });
        let (cert, key) = (pki.leaf_pem.clone(), pki.leaf_key_pem.clone());
        rt.spawn(async move {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                cert.into_bytes(),
                key.into_bytes(),
            )
            .await
            .unwrap();
            let server = axum_server::from_tcp_rustls(listener, config).unwrap();
            server.serve(app.into_make_service()).await
        });
        HttpsPlane { url, mode, _rt: rt }
    }

    fn set(&self, m: Tls) {
        *self.mode.lock().unwrap() = m;
    }
}

#[test]
fn https_with_a_ca_file_no_redirect_no_token_elsewhere_and_a_size_cap() {
    let pki = crate::support::tls::pki();
    // The other origin a redirect points at: it must never see a request.
    let elsewhere = ControlPlane::start("never", Answer::Json("[]".to_owned()));
    let cp = HttpsPlane::start(&pki, elsewhere.url.clone());
    let token = "tls-token-5c0ffee1";
    let config = |ca: Option<&std::path::Path>| {
        format!(
            "[owners.http]\nurl = {:?}\nbearer_token = {token:?}\n{}interval = \"300ms\"\ntimeout = \"2s\"\nmax_bytes = 1024\nvm_id = \"/id\"\nuser_id = \"/user\"\n",
            cp.url,
            ca.map(|p| format!("ca_file = {p:?}\n")).unwrap_or_default()
        )
    };

    // Without the CA the certificate is refused: a connect error.
    let agent = Agent::start_with(1, &config(None));
    let e = until(&agent, "the TLS refusal", |e| errors(e, "connect") >= 1.0);
    assert_eq!(up(&e), Some(0.0));
    drop(agent);

    let agent = Agent::start_with(1, &config(Some(&pki.ca_file)));
    let e = until(&agent, "rows over HTTPS", |e| up(e) == Some(1.0));
    assert_eq!(rows(&e), Some(1.0));

    // A redirect to another origin is not followed: the token stays home.
    cp.set(Tls::Redirect);
    let e = until(&agent, "the redirect refused", |e| {
        errors(e, "status") >= 1.0
    });
    assert_eq!(up(&e), Some(0.0));
    assert_eq!(rows(&e), Some(1.0), "last good rows kept");
    assert_eq!(elsewhere.requests.load(Ordering::SeqCst), 0);

    // Over max_bytes: too_large, rows kept.
    cp.set(Tls::Big);
    let e = until(&agent, "too_large", |e| errors(e, "too_large") >= 1.0);
    assert_eq!(rows(&e), Some(1.0));

    cp.set(Tls::Rows);
    until(&agent, "up again", |e| up(e) == Some(1.0));
    let log = agent.log();
    assert!(!log.contains(token), "the token leaked:\n{log}");
}
