//! Access control on the real binary over loopback: a `vmscope serve` with
//! a web config file (bearer tokens, a toolkit bcrypt user, an allow-list,
//! rate limits), answered by status, `WWW-Authenticate` and `Retry-After`,
//! counted in `vmscope_http_auth_total`, logged (at debug) without any
//! secret; and a real Prometheus scraping it with a bearer token.

use crate::support::{metrics::Exposition, prom::Prometheus};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "vms_real_test_admin_token_0123456789";
const EXPIRED: &str = "vms_real_test_expired_token_0123456789";
const TENANT: &str = "vms_real_test_tenant_token_0123456789";
/// The toolkit's test user (exporter-toolkit web/testdata, cost 10).
const CAROL_HASH: &str = "$2y$10$qRTBuFoULoYNA7AQ/F3ck.trZBPyjV64.oA4ZsSBCIWvXuvQlQTuu";

fn sha(t: &str) -> String {
    vmscope::access::token::sha256_hex(t)
}

/// A `vmscope serve` with `web_yaml` as its web config, killed on drop.
pub(crate) struct Agent {
    pub(crate) addr: String,
    child: Child,
    log: Arc<Mutex<String>>,
    pub(crate) dir: tempfile::TempDir,
}

impl Agent {
    fn start(web_yaml: &str) -> Agent {
        let agent = Agent::start_with(&[], web_yaml);
        agent.wait_healthy();
        agent
    }

    /// Writes `files` (name, contents) next to the web config, starts the
    /// agent and waits for its "listening" line (the scheme may be https).
    pub(crate) fn start_with(files: &[(&str, &str)], web_yaml: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let web = dir.path().join("web.yml");
        std::fs::write(&web, web_yaml).unwrap();
        let port = crate::support::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscope"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VMSCOPE_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["serve", "--listen", &addr, "--interval", "1"])
            .arg("--web.config.file")
            .arg(&web)
            // debug: every refusal is logged, so the log can be searched for secrets.
            .env("VMSCOPE_LOG", "debug")
            .env("VMSCOPE_STORE__PATH", dir.path().join("state.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut agent = Agent {
            addr,
            child,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = agent.child.try_wait() {
                panic!("vmscope exited with {st}: {}", agent.log());
            }
            if agent.log().contains("listening") {
                return agent;
            }
            assert!(Instant::now() < deadline, "not listening: {}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a 200 from `/healthz` over plain HTTP (open whatever the
    /// web config says).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !try_get(&format!("http://{}/healthz", self.addr), None)
            .is_ok_and(|r| r.status == 200)
        {
            assert!(
                Instant::now() < deadline,
                "no 200 from /healthz: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGHUP (reload the web config).
    pub(crate) fn hangup(&self) {
        let st = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn get(&self, path: &str, auth: Option<&str>) -> Reply {
        get(&format!("http://{}{path}", self.addr), auth)
    }

    fn metrics(&self) -> Exposition {
        let r = self.get("/metrics", Some(&format!("Bearer {ADMIN}")));
        assert_eq!(r.status, 200, "{}", r.body);
        Exposition::parse(&r.body).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    nosniff: Option<String>,
    body: String,
}

fn get(url: &str, auth: Option<&str>) -> Reply {
    try_get(url, auth).unwrap()
}

fn try_get(url: &str, auth: Option<&str>) -> Result<Reply, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let mut resp = req.call()?;
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (www_authenticate, retry_after, nosniff) = (
        h("www-authenticate"),
        h("retry-after"),
        h("x-content-type-options"),
    );
    Ok(Reply {
        status: resp.status().as_u16(),
        www_authenticate,
        retry_after,
        nosniff,
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    })
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn auth_count(m: &Exposition, result: &str) -> f64 {
    m.value("vmscope_http_auth_total", &[("result", result)])
        .unwrap_or(-1.0)
}

#[test]
fn each_failure_has_its_status_and_the_log_holds_no_secret() {
    let web = format!(
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  carol: {CAROL_HASH}\n\
         vmscope:\n  tokens:\n    - {{name: ops, sha256: {}, scope: admin}}\n    - {{name: stale, sha256: {}, scope: admin, expires: 2020-01-01T00:00:00Z}}\n    - {{name: portal, sha256: {}, scope: project:acme}}\n\
         \x20 allow:\n    api: [10.0.0.0/8]\n",
        sha(ADMIN),
        sha(EXPIRED),
        sha(TENANT)
    );
    let agent = Agent::start(&web);
    let admin = format!("Bearer {ADMIN}");

    let ok = agent.get("/metrics", Some(&admin));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("vmscope_build_info"));
    assert_eq!(
        ok.nosniff.as_deref(),
        Some("nosniff"),
        "configured headers on every response"
    );

    for (auth, why) in [
        (None, "missing"),
        (
            Some("Bearer vms_not_a_configured_token".to_owned()),
            "wrong token",
        ),
        (Some(format!("Bearer {EXPIRED}")), "expired token"),
        (Some("Digest abc".to_owned()), "malformed"),
        (
            Some(basic("carol", "not-carols-password")),
            "wrong password",
        ),
    ] {
        let r = agent.get("/metrics", auth.as_deref());
        assert_eq!(r.status, 401, "{why}: {}", r.body);
        assert_eq!(
            r.www_authenticate.as_deref(),
            Some("Bearer realm=\"vmscope\", Basic realm=\"vmscope\""),
            "{why}"
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{why}");
        assert_eq!(r.nosniff.as_deref(), Some("nosniff"), "{why}");
    }
    // An answer the server writes itself (an unparsable request, before
    // any route) carries the configured headers too.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&agent.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        let _ = c.read_to_string(&mut raw);
        assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("\r\nx-content-type-options: nosniff\r\n"),
            "{raw}"
        );
    }
    // The API allows 10.0.0.0/8 only: the loopback admin is refused 403.
    let r = agent.get("/api/v1/vms", Some(&admin));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("\"forbidden\""), "{}", r.body);
    // A tenant token is served its own view (no host families; it owns
    // no VM here, so no VM either).
    let r = agent.get("/metrics", Some(&format!("Bearer {TENANT}")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("vmscope_build_info"), "{}", r.body);
    assert!(!r.body.contains("vmscope_host_"), "{}", r.body);
    assert!(!r.body.contains("vmscope_vm_info{"), "{}", r.body);
    // The toolkit's bcrypt user, twice: one bcrypt, then the cache.
    for _ in 0..2 {
        let r = agent.get("/metrics.json", Some(&basic("carol", "carol123")));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    let m = agent.metrics();
    // ok: the first scrape, the tenant, carol twice, this scrape.
    assert_eq!(auth_count(&m, "ok"), 5.0);
    assert_eq!(auth_count(&m, "missing"), 1.0);
    assert_eq!(auth_count(&m, "invalid"), 3.0);
    assert_eq!(auth_count(&m, "expired"), 1.0);
    assert_eq!(auth_count(&m, "forbidden"), 1.0);
    assert_eq!(auth_count(&m, "rate_limited"), 0.0);
    // carol's right password once, the wrong one once: two bcrypt runs.
    assert_eq!(m.value("vmscope_http_auth_bcrypt_total", &[]), Some(2.0));

    let log = agent.log();
    assert!(
        log.contains("token:stale"),
        "the expired token is named: {log}"
    );
    for secret in [
        ADMIN,
        EXPIRED,
        TENANT,
        "vms_not_a_configured_token",
        "carol123",
        "not-carols-password",
        &basic("carol", "carol123")["Basic ".len()..],
        CAROL_HASH,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn a_flood_of_bad_passwords_is_limited_before_any_bcrypt() {
    let web = format!(
        "basic_auth_users:\n  carol: {CAROL_HASH}\n\
         vmscope:\n  tokens:\n    - {{name: ops, sha256: {}, scope: admin}}\n\
         \x20 rate_limit:\n    per_ip: {{rate: 2, burst: 5}}\n",
        sha(ADMIN)
    );
    let agent = Agent::start(&web);
    let (mut unauthorized, mut limited) = (0, 0);
    let start = Instant::now();
    for i in 0..60 {
        let r = agent.get("/metrics", Some(&basic("carol", &format!("guess{i}"))));
        match r.status {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                let wait: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
                assert!((1..=3).contains(&wait), "Retry-After {wait}");
                assert!(r.body.contains("\"rate_limited\""), "{}", r.body);
            }
            s => panic!("status {s}: {}", r.body),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // At most the burst plus what the rate let in meanwhile got as far as
    // a password check.
    let allowed = 5.0 + 2.0 * secs + 1.0;
    assert!(
        f64::from(unauthorized) <= allowed,
        "{unauthorized} checked in {secs:.1} s"
    );
    assert!(limited >= 60 - allowed as i32, "{limited} limited");
    // Let the bucket refill for the scrape below (it is limited too).
    std::thread::sleep(Duration::from_millis(1500));
    let m = agent.metrics();
    assert_eq!(auth_count(&m, "rate_limited"), f64::from(limited));
    assert_eq!(auth_count(&m, "invalid"), f64::from(unauthorized));
    // Every password check that ran is one bcrypt; the limited ones ran none.
    assert_eq!(
        m.value("vmscope_http_auth_bcrypt_total", &[]),
        Some(f64::from(unauthorized))
    );
}

#[test]
fn prometheus_scrapes_with_a_bearer_token_and_is_refused_without() {
    let web = format!(
        "vmscope:\n  tokens:\n    - {{name: prometheus, sha256: {}, scope: admin}}\n",
        sha(ADMIN)
    );
    let agent = Agent::start(&web);
    let with = format!("    authorization:\n      type: Bearer\n      credentials: {ADMIN}\n");
    let prom = Prometheus::start_jobs(&[
        ("with_token", &agent.addr, &with),
        ("without_token", &agent.addr, ""),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = |job: &str| {
            prom.query(&format!("up{{job=\"{job}\"}}"))
                .first()
                .and_then(|s| s["value"][1].as_str().map(str::to_owned))
        };
        let built = prom.query("vmscope_build_info{job=\"with_token\"}");
        if up("with_token").as_deref() == Some("1")
            && up("without_token").as_deref() == Some("0")
            && !built.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets: {}\nagent log: {}",
            prom.targets(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = agent.metrics();
    assert!(
        auth_count(&m, "missing") >= 1.0,
        "the tokenless scrapes were refused"
    );
    assert!(!agent.log().contains(ADMIN));
}
