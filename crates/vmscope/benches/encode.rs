//! Encoding one 1000-VM snapshot, and serving it.
//!
//! - `encode/*`: a full uncached encode per format (what happens once per
//!   tick per format);
//! - `gzip_prefix`: encoding and compressing the text prefix from nothing;
//! - `gzip_next_tick`: the same one tick later on a busy host (every VM
//!   changed), with the previous tick's compressed chunks to reuse: the
//!   per-tick cost when something scrapes gzip;
//! - `request/*`: one /metrics request through the whole router with the
//!   cache warm (no socket), plain and gzip.
//!
//! Then, if `wrk` is installed, a short HTTP load test against the router
//! served on loopback by a single-threaded runtime (one core): requests per
//! second and latency percentiles. Run with
//! `cargo bench -p vmscope --bench encode -- --warm-up-time 1 --measurement-time 3`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use criterion::{Criterion, Throughput};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;
use vmscope::api::{AppState, HttpMetrics, router};
use vmscope::export::{ExpositionCache, Format, MetricSource, encode, fixture};

const VMS: usize = 1000;

fn benches(c: &mut Criterion) {
    let snap = Arc::new(fixture::snapshot(VMS));
    let mut g = c.benchmark_group("encode");
    for format in Format::ALL {
        let len = encode(format, &[&*snap]).len();
        eprintln!("{format:?}: {len} bytes for {VMS} VMs");
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("{format:?}_{VMS}_vms"), |b| {
            b.iter(|| black_box(encode(format, &[&*snap])))
        });
    }
    g.finish();

    let extra: Vec<Arc<dyn MetricSource>> = vec![Arc::new(HttpMetrics::new())];
    c.bench_function("gzip_prefix_text_1000_vms", |b| {
        b.iter(|| {
            // A fresh cache each time: encode + compress, the per-tick cost.
            let cache = ExpositionCache::new();
            black_box(cache.render(&snap, &extra, Format::Text, true).unwrap())
        })
    });

    // Steady state on a busy host: the cache holds the previous tick's
    // gzip; every VM changed, so every per-VM family that can change did
    // and only the quiet ones (facts, states, allocations, zero error
    // counters) are reused. Two snapshots alternate, each a new tick.
    let ticks = [
        Arc::new(fixture::next_tick(&snap)),
        Arc::new(fixture::next_tick(&fixture::next_tick(&snap))),
    ];
    c.bench_function("gzip_next_tick_text_1000_vms", |b| {
        let cache = ExpositionCache::new();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let s = &ticks[i % 2];
            black_box(cache.render(s, &extra, Format::Text, true).unwrap())
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_tx, rx) = watch::channel(Arc::clone(&snap));
    let app = router(AppState::new(rx, Vec::new()));
    let mut g = c.benchmark_group("request");
    for (name, enc) in [("metrics_plain", "identity"), ("metrics_gzip", "gzip")] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::get("/metrics")
                        .header(header::ACCEPT_ENCODING, enc)
                        .body(Body::empty())
                        .unwrap();
                    let resp = app.clone().oneshot(req).await.unwrap();
                    black_box(resp.into_body().collect().await.unwrap().to_bytes().len())
                })
            })
        });
    }
    g.finish();
}

/// `wrk` against the router on one core; prints wrk's summary.
fn http_load() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk not installed: skipping the HTTP load test");
        return;
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (_tx, rx) = watch::channel(Arc::new(fixture::snapshot(VMS)));
            let app = router(AppState::new(rx, Vec::new()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ready_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for (label, headers) in [
        ("plain text", vec![]),
        (
            "gzip (as Prometheus asks)",
            vec!["-H", "Accept-Encoding: gzip"],
        ),
    ] {
        let url = format!("http://{addr}/metrics");
        let out = Command::new("wrk")
            .args(["-t1", "-c8", "-d3s", "--latency"])
            .args(&headers)
            .arg(&url)
            .output()
            .unwrap();
        eprintln!("--- wrk, {VMS} VMs, server on one core, {label} ---");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The per-owner families' share of an encode: the fixture (50 users, 10
/// projects on a third of 1000 VMs), every VM attributed to 250 users and
/// 50 projects, and the worst case (every VM its own user and project:
/// 2000 owners, none folded), each against the same snapshot without any
/// per-owner series; and summing the owners on the tick.
fn owners(c: &mut Criterion) {
    use vmscope::model::usage::Usage;
    use vmscope::model::{Owner, Snapshot};
    let attributed = |users: usize, projects: usize| -> Snapshot {
        let mut s = fixture::snapshot(VMS);
        for (i, vm) in s.vms.iter_mut().enumerate() {
            vm.owner = Some(std::sync::Arc::new(Owner {
                user_id: Some(format!("user-{:06}", i % users)),
                user_name: Some(format!("User Number {}", i % users)),
                project_id: Some(format!("project-{:06}", i % projects)),
                project_name: None,
            }));
        }
        s.with_usage(1000)
    };
    let cases = [
        ("fixture", fixture::snapshot(VMS)),
        ("250_users_50_projects", attributed(250, 50)),
        ("2000_owners", attributed(VMS, VMS)),
    ];
    let mut g = c.benchmark_group("owners");
    for (name, snap) in &cases {
        let mut bare = snap.clone();
        bare.usage = Usage::default();
        // Best of interleaved runs: on a shared machine the minimum is the
        // figure that load from elsewhere does not move.
        let best = |s: &Snapshot, best: &mut Duration| {
            let t = std::time::Instant::now();
            black_box(encode(Format::Text, &[s]));
            *best = (*best).min(t.elapsed());
        };
        let (mut with, mut without) = (Duration::MAX, Duration::MAX);
        for _ in 0..300 {
            best(snap, &mut with);
            best(&bare, &mut without);
        }
        eprintln!(
            "owners {name}: Text encode best of 300 interleaved: {:.3} ms with the per-owner families, \
             {:.3} ms without ({:+.1}%); {} bytes vs {}",
            with.as_secs_f64() * 1e3,
            without.as_secs_f64() * 1e3,
            (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0,
            encode(Format::Text, &[snap]).len(),
            encode(Format::Text, &[&bare]).len()
        );
        for (variant, s) in [("with", snap), ("without", &bare)] {
            g.bench_function(
                format!("Text_{VMS}_vms_{name}_{variant}_owner_families"),
                |b| b.iter(|| black_box(encode(Format::Text, &[s]))),
            );
        }
        g.bench_function(format!("usage_of_{VMS}_vms_{name}"), |b| {
            b.iter(|| black_box(Usage::of(&snap.vms, 1000)))
        });
    }
    g.finish();
}

/// The usage ledger's counters (`vmscope_{user,project}_*_total`,
/// `vmscope_vm_ledger_*_total`) on 1000 VMs attributed to 250 users and 50
/// projects: text encode with and without them (best of interleaved runs),
/// and the gzip of the next tick on a busy host when the counters did not
/// change since the last flush (their chunks are reused) and when they did.
fn ledger_counters(c: &mut Criterion) {
    use vmscope::model::counters::{CounterTotals, KindCounters, Quantities};
    use vmscope::model::{Owner, Snapshot};
    let q = |x: f64| Quantities {
        cpu_seconds: 1234.5 + x,
        vcpu_allocated_seconds: 86400.0 * 2.0 + x,
        memory_allocated_byte_seconds: 86400.0 * 4294967296.0 + x,
        net_rx_bytes: 123_456_789 + x as u64,
        net_tx_bytes: 98_765_432 + x as u64,
    };
    let with_owners = |mut s: Snapshot| -> Snapshot {
        for (i, vm) in s.vms.iter_mut().enumerate() {
            vm.owner = Some(Arc::new(Owner {
                user_id: Some(format!("user-{:06}", i % 250)),
                user_name: Some(format!("User Number {}", i % 250)),
                project_id: Some(format!("project-{:06}", i % 50)),
                project_name: None,
            }));
        }
        s.with_usage(1000)
    };
    let counters = |s: &Snapshot, bump: f64| -> Arc<CounterTotals> {
        let kind = |n: usize, prefix: &str| KindCounters {
            owners: (0..n)
                .map(|i| (format!("{prefix}-{i:06}"), q(i as f64 + bump)))
                .collect(),
            other: Some(q(bump)),
        };
        Arc::new(CounterTotals {
            users: kind(250, "user"),
            projects: kind(50, "project"),
            vms: s
                .vms
                .iter()
                .enumerate()
                .map(|(i, v)| (v.id.clone(), q(i as f64 + bump)))
                .collect(),
        })
    };
    let bare = with_owners(fixture::snapshot(VMS));
    let mut snap = bare.clone();
    snap.counters = Some(counters(&snap, 0.0));
    let best = |s: &Snapshot, best: &mut Duration| {
        let t = std::time::Instant::now();
        black_box(encode(Format::Text, &[s]));
        *best = (*best).min(t.elapsed());
    };
    let (mut with, mut without) = (Duration::MAX, Duration::MAX);
    for _ in 0..300 {
        best(&snap, &mut with);
        best(&bare, &mut without);
    }
    eprintln!(
        "ledger counters: Text encode best of 300 interleaved: {:.3} ms with, {:.3} ms without \
         ({:+.1}%); {} bytes vs {}",
        with.as_secs_f64() * 1e3,
        without.as_secs_f64() * 1e3,
        (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0,
        encode(Format::Text, &[&snap]).len(),
        encode(Format::Text, &[&bare]).len()
    );
    let mut g = c.benchmark_group("ledger_counters");
    for (variant, s) in [("with", &snap), ("without", &bare)] {
        g.bench_function(format!("Text_{VMS}_vms_{variant}_counters"), |b| {
            b.iter(|| black_box(encode(Format::Text, &[s])))
        });
    }
    // Next tick on a busy host, gzip'd with the previous tick's chunks:
    // counters as they were (no flush in between) or all changed (a flush).
    let extra: Vec<Arc<dyn MetricSource>> = vec![Arc::new(HttpMetrics::new())];
    let ticks = |changed: bool| -> [Arc<Snapshot>; 2] {
        let a = snap.clone();
        let mut b = fixture::next_tick(&a);
        b.counters = if changed {
            Some(counters(&b, 60.0))
        } else {
            a.counters.clone()
        };
        [Arc::new(a), Arc::new(b)]
    };
    for (variant, changed) in [("unchanged", false), ("after_a_flush", true)] {
        let pair = ticks(changed);
        let cache = ExpositionCache::new();
        let mut i = 0usize;
        g.bench_function(
            format!("gzip_next_tick_text_{VMS}_vms_counters_{variant}"),
            |b| {
                b.iter(|| {
                    i += 1;
                    black_box(
                        cache
                            .render(&pair[i % 2], &extra, Format::Text, true)
                            .unwrap(),
                    )
                })
            },
        );
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    owners(&mut c);
    ledger_counters(&mut c);
    c.final_summary();
    http_load();
}
