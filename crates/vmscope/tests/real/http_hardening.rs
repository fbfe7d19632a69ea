//! The HTTP server under abuse, on the real binary over loopback: a flood
//! of idle connections under a low descriptor limit, slow clients, SIGTERM
//! while a client dribbles its request, and requests too broken to route.
//! Every client here is this test's own, on 127.0.0.1; every count bounded.

use crate::support::{http, metrics};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Exposition;

/// A `vmscope serve` on a free loopback port, killed on drop.
struct Agent {
    addr: String,
    child: Child,
    log: Arc<Mutex<String>>,
    _state: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent (through `prlimit --nofile=N:N` when `nofile` is
    /// given) with `env` on top of a clean environment, and waits for a 200
    /// from `/healthz`.
    fn start(nofile: Option<u32>, env: &[(&str, &str)]) -> Agent {
        let mut last = String::new();
        for _ in 0..3 {
            match Agent::try_start(nofile, env) {
                Ok(a) => return a,
                Err(e) => last = e,
            }
        }
        panic!("vmscope serve did not come up: {last}");
    }

    fn try_start(nofile: Option<u32>, env: &[(&str, &str)]) -> Result<Agent, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let state = tempfile::tempdir().unwrap();
        let bin = env!("CARGO_BIN_EXE_vmscope");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VMSCOPE_") {
                cmd.env_remove(key);
            }
        }
        let db = state.path().join("state.db");
        cmd.args(["serve", "--listen", &addr, "--interval", "1"])
            .env("VMSCOPE_LOG", "info")
            .env("VMSCOPE_STORE__PATH", &db)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
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
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = agent.child.try_wait() {
                return Err(format!("exited with {st}: {}", agent.log()));
            }
            if agent.get("/healthz").is_ok_and(|r| r.status == 200) {
                return Ok(agent);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no 200 from /healthz in 30 s: {}", agent.log()))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn get(&self, path: &str) -> Result<http::Response, String> {
        http::get(&format!("http://{}{path}", self.addr))
    }

    fn metrics(&self) -> Exposition {
        let r = self.get("/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        Exposition::parse(&r.body).unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Waits for the process to exit, up to `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("agent log:\n{}", self.log());
        }
    }
}

fn value(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.value(name, labels)
        .unwrap_or_else(|| panic!("{name}{labels:?} missing"))
}

/// Sum of every sample of `name` carrying `labels`.
fn sum(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.all(name, labels).iter().map(|s| s.value).sum()
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `code` of a JSON error body; panics if the body is not one.
    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Reads one response (Content-Length or chunked) from `r`.
fn read_response(r: &mut BufReader<&TcpStream>) -> std::io::Result<Raw> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut resp = Raw {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(n) = resp.header("content-length") {
        let mut body = vec![0; n.parse().unwrap()];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Sends `request` on a new connection and reads one response. The write
/// may fail part-way (the server may stop reading a huge head): that is
/// fine, the answer is what counts.
fn raw_exchange(agent: &Agent, request: &[u8]) -> Raw {
    let s = agent.connect();
    let _ = (&s).write_all(request);
    read_response(&mut BufReader::new(&s)).expect("a response")
}

#[test]
fn idle_connection_flood_does_not_blind_the_agent() {
    // 256 descriptors, as a small `ulimit -n`: the default cap (128
    // connections) plus the reserve fit; the flood is twice that.
    const NOFILE: u32 = 256;
    const FLOOD: usize = 2 * NOFILE as usize;
    let agent = Agent::start(Some(NOFILE), &[]);

    // A scraper's kept-alive connection, opened before the flood.
    let scraper = agent.connect();
    let mut scraper_rd = BufReader::new(&scraper);
    let scrape = b"GET /healthz HTTP/1.1\r\nHost: vmscope\r\n\r\n";
    (&scraper).write_all(scrape).unwrap();
    assert_eq!(read_response(&mut scraper_rd).unwrap().status, 200);

    // Baseline: a few ticks in, so that allocations have settled.
    let start = agent.metrics();
    let seq0 = value(&start, "vmscope_snapshot_sequence", &[]);
    let io_errors0 = sum(&start, "vmscope_collector_errors_total", &[("kind", "io")]);
    let rss0 = agent.rss_kib();

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        // Connect succeeds as soon as the kernel queues the connection,
        // whether or not the agent ever accepts it.
        flood.push(TcpStream::connect(&agent.addr).unwrap());
    }

    // During the flood: /healthz answers, collection goes on (the sequence
    // advances, no read fails), and the agent holds no more than its cap.
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let during = loop {
        let h = agent.get("/healthz").expect("/healthz during the flood");
        assert_eq!(h.status, 200, "/healthz during the flood: {}", h.body);
        peak_rss = peak_rss.max(agent.rss_kib());
        peak_fds = peak_fds.max(agent.open_fds());
        let m = agent.metrics();
        if value(&m, "vmscope_snapshot_sequence", &[]) >= seq0 + 3.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "collection stalled during the flood"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        sum(&during, "vmscope_collector_errors_total", &[("kind", "io")]),
        io_errors0,
        "collection failed reading during the flood"
    );
    let limit = value(&during, "vmscope_http_connections_limit", &[]);
    assert_eq!(limit, 128.0);
    assert!(value(&during, "vmscope_http_connections", &[]) <= limit);
    assert!(
        value(
            &during,
            "vmscope_http_connections_closed_total",
            &[("reason", "evicted")]
        ) >= (FLOOD as f64 - limit),
        "idle connections were not evicted"
    );
    assert!(
        peak_fds < NOFILE as usize - 16,
        "{peak_fds} descriptors open"
    );
    // The scraper's kept-alive connection outlived the flood's.
    (&scraper).write_all(scrape).unwrap();
    assert_eq!(read_response(&mut scraper_rd).unwrap().status, 200);
    assert!(
        !agent.log().contains("Too many open files"),
        "{}",
        agent.log()
    );

    // After: connections go, memory returns.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&agent.metrics(), "vmscope_http_connections", &[]) > 2.0 {
        assert!(Instant::now() < deadline, "flood connections still open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss1 = agent.rss_kib();
    eprintln!("RSS KiB: before {rss0}, peak during {peak_rss}, after {rss1}; peak fds {peak_fds}");
    assert!(
        rss1 <= rss0 + rss0 / 2 + 2048,
        "RSS {rss0} KiB before the flood, {rss1} KiB after"
    );
}

#[test]
fn sigterm_does_not_wait_for_a_slow_client() {
    let mut agent = Agent::start(None, &[]);
    let slow = agent.connect();
    let stop = Arc::new(Mutex::new(false));
    let dribbler = {
        let slow = slow.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut s = slow;
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
            // One byte every 100 ms for up to a minute: longer than any
            // grace period, shorter than the test's patience.
            for _ in 0..600 {
                if *stop.lock().unwrap() || s.write_all(b"a").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    agent.sigterm();
    // Default grace 5 s, plus the watchdog's flush and a margin.
    let status = agent.wait_exit(Duration::from_secs(8));
    *stop.lock().unwrap() = true;
    dribbler.join().unwrap();
    let status =
        status.unwrap_or_else(|| panic!("still running 8 s after SIGTERM: {}", agent.log()));
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());
    assert!(status.success(), "{status}: {}", agent.log());
}

#[test]
fn slow_and_idle_clients_are_dropped_after_their_timeouts() {
    let agent = Agent::start(
        None,
        &[
            ("VMSCOPE_HTTP__HEADER_READ_TIMEOUT", "1s"),
            ("VMSCOPE_HTTP__IDLE_TIMEOUT", "2s"),
        ],
    );
    // A head one byte at a time: closed about 1 s after the connection opened.
    let slow = agent.connect();
    let opened = Instant::now();
    let _ = (&slow).write_all(b"GET /healthz HTTP/1.1\r\n");
    let mut closed_after = None;
    for _ in 0..100 {
        if (&slow).write_all(b"X").is_err() {
            closed_after = Some(opened.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_after = closed_after.expect("a dribbling client still connected after 10 s");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&closed_after),
        "{closed_after:?}"
    );

    // Kept alive after one request, then silent: closed after ~2 s.
    let idle = agent.connect();
    (&idle)
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rd = BufReader::new(&idle);
    assert_eq!(read_response(&mut rd).unwrap().status, 200);
    let answered = Instant::now();
    let mut rest = Vec::new();
    rd.read_to_end(&mut rest).unwrap(); // EOF when the agent closes
    let idle_for = answered.elapsed();
    assert!(rest.is_empty());
    assert!(
        (Duration::from_millis(1800)..Duration::from_secs(5)).contains(&idle_for),
        "{idle_for:?}"
    );

    let m = agent.metrics();
    assert!(
        value(
            &m,
            "vmscope_http_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 1.0
    );
    assert!(
        value(
            &m,
            "vmscope_http_connections_closed_total",
            &[("reason", "idle_timeout")]
        ) >= 1.0
    );
}

#[test]
fn broken_requests_get_the_json_error_body() {
    let agent = Agent::start(None, &[]);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20 * 1024));
    let big_headers = {
        let mut h = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..1100 {
            h.push_str(&format!("X-Filler-{i:04}: {}\r\n", "v".repeat(80)));
        }
        h + "\r\n"
    };
    assert!(big_headers.len() >= 100 * 1024);
    let cases: [(&str, &[u8], u16, &str); 5] = [
        (
            "malformed request line",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            400,
            "bad_request",
        ),
        ("not HTTP", b"HELLO THERE\r\n\r\n", 400, "bad_request"),
        (
            "bad Content-Length",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            400,
            "bad_request",
        ),
        ("20 KB URI", long_uri.as_bytes(), 414, "uri_too_long"),
        (
            "100 KB of headers",
            big_headers.as_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (what, req, status, code) in cases {
        let r = raw_exchange(&agent, req);
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        assert_eq!(r.error_code(), code, "{what}");
    }
    let m = agent.metrics();
    assert_eq!(
        value(
            &m,
            "vmscope_http_connections_closed_total",
            &[("reason", "bad_request")]
        ),
        5.0
    );
}

#[test]
fn keep_alive_pipelining_and_bodies_still_work() {
    let agent = Agent::start(None, &[]);
    let s = agent.connect();
    let mut rd = BufReader::new(&s);
    // Two requests one after the other, then three in one write (one with a
    // body, one chunked), then a broken one after a good one: every good
    // request is answered in order on the same connection, and the broken
    // one gets its JSON error after them.
    for _ in 0..2 {
        (&s).write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut rd).unwrap().status, 200);
    }
    (&s).write_all(
        b"GET /api/v1/host HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
          GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    )
    .unwrap();
    let host = read_response(&mut rd).unwrap();
    assert_eq!(host.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&host.body).is_ok());
    assert_eq!(read_response(&mut rd).unwrap().status, 200);
    let nope = read_response(&mut rd).unwrap();
    assert_eq!(
        (nope.status, nope.error_code().as_str()),
        (404, "not_found")
    );
    let bad = read_response(&mut rd).unwrap();
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "bad_request")
    );
}
