//! The query proxy's overhead: the same query answered by Prometheus
//! directly and through vmscope as a tenant (parse, rewrite, re-check,
//! forward, pass the answer back), interleaved in one run, p50 and p99 of
//! each and of the difference. The issue's bound: at most 2 ms at p99 for
//! queries up to 4 KiB, rewrite included.
//!
//! Starts a real Prometheus (`/usr/bin/prometheus`, scraping itself every
//! second so that queries read real series) and the API router in process
//! behind the access gate with a tenant token, on loopback. The direct
//! request sends the query as the proxy rewrites it, so both ask
//! Prometheus for the same work.
//!
//! First, what tenancy costs the exposition: one text encode of a
//! 1000-VM fixture snapshot (owners on its libvirt VMs) without and with the owner
//! labels on every per-VM series (`[proxy] owner_labels`; a process-wide
//! switch, so "off" is measured first), median of 101 encodes each.
//!
//! Run with `cargo bench -p vmscope --bench proxy` (the proxy part is
//! skipped without Prometheus). Not criterion: the figure is a tail latency of two paths
//! measured side by side, not a mean of one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vmscope::access::{Gate, WebConfig, token};
use vmscope::api::{AppState, router_with_access};
use vmscope::proxy::{Proxy, ProxyConfig, TenantMatcher, scope::scope_query};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const TOKEN: &str = "vms_bench_proxy_tenant_token_0123456789";
const ROUNDS: usize = 2000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A query of about `bytes` bytes: `or` of selectors with regex matchers.
fn query(bytes: usize) -> String {
    let mut q = String::from(
        r#"sum by (job) (rate(prometheus_http_requests_total{handler=~"/api/v1/.*"}[1m]))"#,
    );
    let mut i = 0;
    while q.len() < bytes {
        q.push_str(&format!(
            r#" or max by (job) (prometheus_tsdb_head_series{{instance!="x{i}",job=~"prom.*"}})"#
        ));
        i += 1;
    }
    q
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median_encode_ms(snap: &vmscope::model::Snapshot) -> (f64, usize) {
    use vmscope::export::{Format, encode};
    let mut t = Vec::new();
    let mut len = 0;
    for _ in 0..101 {
        let s = Instant::now();
        len = std::hint::black_box(encode(Format::Text, &[snap])).len();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    (pct(&mut t, 0.5), len)
}

fn main() {
    let snap = vmscope::export::fixture::snapshot(1000);
    let (off, off_len) = median_encode_ms(&snap);
    vmscope::export::owner_labels::enable("user", "project");
    let (on, on_len) = median_encode_ms(&snap);
    println!(
        "text encode, 1000 VMs: {off:.3} ms ({off_len} bytes) without owner labels, {on:.3} ms ({on_len} bytes) with ({:+.0}% time, {:+.0}% bytes)",
        (on / off - 1.0) * 100.0,
        (on_len as f64 / off_len as f64 - 1.0) * 100.0
    );
    if !Path::new(PROMETHEUS).exists() {
        eprintln!("proxy bench: skipped: {PROMETHEUS} is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    let prom_addr = format!("127.0.0.1:{prom_port}");
    std::fs::write(
        dir.path().join("p.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['{prom_addr}']\n"),
    )
    .unwrap();
    let mut prom = Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.path().join("p.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let prom_base = format!("http://{prom_addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Ready, and a few self-scrapes stored.
    while c
        .get(format!("{prom_base}/api/v1/query"))
        .query("query", "count(up)")
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .is_none_or(|b| !b.contains(r#""1"]"#))
    {
        assert!(Instant::now() < deadline, "prometheus not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));

    // vmscope's API, as `serve` builds it, on its own runtime.
    let web = WebConfig::parse(
        &format!(
            "vmscope:\n  tokens:\n    - {{name: portal, sha256: {}, scope: project:acme}}\n",
            token::sha256_hex(TOKEN)
        ),
        Path::new("."),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let cfg = ProxyConfig {
        prometheus_url: prom_base.clone(),
        ..ProxyConfig::default()
    };
    rt.spawn(async move {
        let (_tx, rx) = watch::channel(Arc::new(vmscope::export::fixture::snapshot(1)));
        let state = AppState::new(rx, Vec::new()).with_proxy(Arc::new(Proxy::new(cfg).unwrap()));
        let app = router_with_access(state, Arc::new(Gate::new(Some(web))));
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        axum::serve(l, app).await.unwrap();
        std::mem::forget(_tx);
    });
    std::thread::sleep(Duration::from_millis(300));
    let proxy_url = format!("http://127.0.0.1:{port}/api/v1/prometheus/query");
    let direct_url = format!("{prom_base}/api/v1/query");
    let tenant = TenantMatcher::new("project", &["acme".to_owned()]).unwrap();

    println!("proxy overhead, {ROUNDS} interleaved rounds per size (ms):");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "query", "direct p50", "direct p99", "proxy p50", "proxy p99", "p99 overhead"
    );
    for size in [100, 1024, 4096] {
        let q = query(size);
        let scoped = scope_query(&q, &tenant).unwrap();
        // The rewrite alone, in process (parse, add, print, check).
        let mut rewrite: Vec<f64> = (0..300)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(scope_query(&q, &tenant).unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        println!(
            "rewrite alone, {} B: p50 {:.3} ms, p99 {:.3} ms",
            q.len(),
            pct(&mut rewrite, 0.5),
            pct(&mut rewrite, 0.99)
        );
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS + 100 {
            let t = Instant::now();
            let mut r = c
                .post(&direct_url)
                .send_form([("query", scoped.as_str())])
                .unwrap();
            let _ = r.body_mut().read_to_string().unwrap();
            let d = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let mut r = c
                .post(&proxy_url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .send_form([("query", q.as_str())])
                .unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.body_mut().read_to_string().unwrap();
            let p = t.elapsed().as_secs_f64() * 1e3;
            // The first 100 warm connections and caches.
            if i >= 100 {
                direct.push(d);
                through.push(p);
            }
        }
        let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
        let (p50, p99) = (pct(&mut through, 0.5), pct(&mut through, 0.99));
        println!(
            "{:>7}B {d50:>10.3} {d99:>10.3} {p50:>10.3} {p99:>10.3} {:>12.3}",
            q.len(),
            p99 - d99
        );
    }
    let _ = prom.kill();
    let _ = prom.wait();
}
