//! The status page's in-memory history (`model::history`) at 1000 VMs.
//!
//! - `history/record_1000_vms`: recording one snapshot into a full hour of
//!   history (every ring full, the oldest point dropped): the per-tick cost
//!   of the subscriber, off the collector's thread;
//! - `history/request_list_1000_vms_{plain,gzip}`: `GET /api/v1/history`
//!   (60 points per VM) through the whole router, no socket: what one
//!   status page refresh costs the agent. The body sizes are printed.
//!
//! Run with
//! `cargo bench -p vmscope --bench history -- --warm-up-time 1 --measurement-time 3`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, header};
use criterion::Criterion;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;
use vmscope::api::{AppState, router};
use vmscope::export::fixture;
use vmscope::model::Snapshot;
use vmscope::model::history::{History, POINTS, STEP_SECS};

const VMS: usize = 1000;
const START: u64 = 1_800_000_000;

fn at(base: &Snapshot, step: u64) -> Snapshot {
    let mut s = base.clone();
    s.seq = step + 1;
    s.collected_at = UNIX_EPOCH + Duration::from_secs(START + step * u64::from(STEP_SECS));
    s
}

fn benches(c: &mut Criterion) {
    let base = fixture::snapshot(VMS);
    let with_rates = base.vms.iter().filter(|v| v.rates.is_some()).count();
    eprintln!("{with_rates} of {VMS} VMs have rates (get a history)");

    let h = History::new();
    for step in 0..POINTS as u64 {
        h.record(&at(&base, step));
    }
    eprintln!(
        "history: {} bytes per VM for {} VMs",
        h.heap_bytes() / h.len().max(1),
        h.len()
    );
    let ticks = [at(&base, POINTS as u64), at(&base, POINTS as u64 + 1)];
    let mut g = c.benchmark_group("history");
    g.bench_function("record_1000_vms", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            // Alternating steps: each call starts a new point and drops the oldest.
            h.record(black_box(&ticks[i % 2]));
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(async {
        let (tx, rx) = watch::channel(Arc::new(at(&base, 0)));
        let app = router(AppState::new(rx, Vec::new()));
        // A full hour through the subscriber, one step at a time.
        for step in 0..POINTS as u64 {
            tx.send(Arc::new(at(&base, step))).unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The sender must outlive the benchmark: the subscriber ends with it.
        std::mem::forget(tx);
        app
    });
    for (name, enc) in [
        ("request_list_1000_vms_plain", "identity"),
        ("request_list_1000_vms_gzip", "gzip"),
    ] {
        let get = || {
            rt.block_on(async {
                let req = Request::get("/api/v1/history")
                    .header(header::ACCEPT_ENCODING, enc)
                    .body(Body::empty())
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes().len()
            })
        };
        eprintln!("{name}: {} bytes", get());
        g.bench_function(name, |b| b.iter(|| black_box(get())));
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
