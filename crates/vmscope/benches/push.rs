//! One push of a 1000-VM snapshot: what a pusher's task spends per push,
//! to compare with one tick's CPU (`tick/steady/1000` in `benches/tick.rs`,
//! run in the same session; issue 14's target: at most 20% of a tick per
//! push and destination).
//!
//! - `push/collect_1000_vms`: the snapshot (and a live source, the HTTP
//!   self-metrics) through the structured-sample encoder: once per
//!   snapshot, shared by every destination;
//! - `push/remote_write_1000_vms`: building the `WriteRequest`, protobuf
//!   encoding and snappy, from a collection;
//! - `push/otlp_1000_vms`: building the OTLP request, protobuf encoding and
//!   gzip level 1, from a collection;
//! - `push/*_whole_1000_vms`: collection plus one protocol: the cost of a
//!   push when it is the only destination (OTLP's path);
//! - `push/remote_write_direct_1000_vms`: what a remote_write destination
//!   runs on a steady host: protobuf bytes written straight from the
//!   snapshot (`encode_snapshot`), reusing its last push's series, then
//!   snappy; `remote_write_direct_cold_1000_vms` writes every series
//!   afresh with the destination's buffers kept (a push after the series
//!   changed);
//!   `remote_write_snappy_only_1000_vms` is the snappy part alone;
//! - `push/otlp_direct_1000_vms`: what an OTLP destination runs, likewise
//!   (`otlp::encode_snapshot`, then gzip level 1; `otlp_direct_cold_1000_vms`
//!   without its last push);
//!   `otlp_gzip_only_1000_vms` is the gzip part alone.
//!
//! Sizes (raw and compressed) are printed once. Run with
//! `cargo bench -p vmscope --bench push -- --warm-up-time 1 --measurement-time 5`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use vmscope::api::HttpMetrics;
use vmscope::export::{MetricSource, fixture};
use vmscope::push::{collect, otlp, remote_write};

const VMS: usize = 1000;

fn benches(c: &mut Criterion) {
    let snap = fixture::snapshot(VMS);
    let sources: Vec<Arc<dyn MetricSource>> = vec![Arc::new(HttpMetrics::new())];
    let start = SystemTime::now() - Duration::from_secs(3600);
    let labels = vec![("region".to_owned(), "eu-1".to_owned())];

    let collected = collect(&snap, &sources);
    let rw_raw = remote_write::write_request(&collected, &labels).encoded_len();
    let rw = remote_write::encode(&collected, &labels).len();
    let ot_raw = otlp::request(&collected, start, &labels).encoded_len();
    let ot = otlp::encode(&collected, start, &labels).len();
    eprintln!(
        "{VMS} VMs: {} families, {} series; remote_write {rw_raw} bytes, {rw} snappy; otlp {ot_raw} bytes, {ot} gzip",
        collected.families.len(),
        collected.samples
    );

    let mut g = c.benchmark_group("push");
    g.bench_function(format!("collect_{VMS}_vms"), |b| {
        b.iter(|| black_box(collect(&snap, &sources)))
    });
    g.bench_function(format!("remote_write_{VMS}_vms"), |b| {
        b.iter(|| black_box(remote_write::encode(&collected, &labels)))
    });
    g.bench_function(format!("otlp_{VMS}_vms"), |b| {
        b.iter(|| black_box(otlp::encode(&collected, start, &labels)))
    });
    g.bench_function(format!("remote_write_whole_{VMS}_vms"), |b| {
        b.iter(|| {
            let c = collect(&snap, &sources);
            black_box(remote_write::encode(&c, &labels))
        })
    });
    // What a remote_write destination runs: protobuf written straight
    // from the snapshot, then snappy.
    // Steady: the destination's template from its last push is reused
    // (the same series; only values and timestamps rewritten).
    let mut last = remote_write::Template::default();
    g.bench_function(format!("remote_write_direct_{VMS}_vms"), |b| {
        b.iter(|| {
            black_box(remote_write::encode_snapshot(
                &snap, &sources, &labels, &mut last,
            ))
        })
    });
    assert_eq!(last.reused(), collected.samples);
    // Cold: every series written afresh (the first push, or one after the
    // series changed).
    // (The external labels alternate, so that nothing can be reused while
    // the destination's buffers are, as in an agent after a change.)
    let other = vec![("region".to_owned(), "eu-2".to_owned())];
    let mut flip = false;
    g.bench_function(format!("remote_write_direct_cold_{VMS}_vms"), |b| {
        b.iter(|| {
            flip = !flip;
            let l = if flip { &other } else { &labels };
            black_box(remote_write::encode_snapshot(&snap, &sources, l, &mut last))
        })
    });
    assert_eq!(last.reused(), 0);
    // Its two parts: the bytes alone, and snappy over them.
    let raw = {
        let host = snap.host.hostname.clone().unwrap_or_default();
        let mut c =
            vmscope::export::SampleCollector::with_sink(Box::new(remote_write::WireSink::new(
                snap.collected_at,
                remote_write::external_labels(&labels, &host),
            )));
        vmscope::push::collect::write_all(&snap, &sources, &mut c);
        c.into_sink::<remote_write::WireSink>()
            .unwrap()
            .into_bytes()
    };
    g.bench_function(format!("remote_write_snappy_only_{VMS}_vms"), |b| {
        b.iter(|| black_box(::snap::raw::Encoder::new().compress_vec(&raw).unwrap()))
    });
    // What an OTLP destination runs: protobuf written straight from the
    // snapshot (reusing its last push's series), then gzip.
    let mut last_otlp = otlp::Template::default();
    g.bench_function(format!("otlp_direct_{VMS}_vms"), |b| {
        b.iter(|| {
            black_box(otlp::encode_snapshot(
                &snap,
                &sources,
                start,
                &labels,
                true,
                &mut last_otlp,
            ))
        })
    });
    assert_eq!(last_otlp.reused(), collected.samples);
    // (The process start alternates: nothing reused, buffers kept.)
    let later = start + Duration::from_secs(1);
    g.bench_function(format!("otlp_direct_cold_{VMS}_vms"), |b| {
        b.iter(|| {
            flip = !flip;
            let s = if flip { later } else { start };
            black_box(otlp::encode_snapshot(
                &snap,
                &sources,
                s,
                &labels,
                true,
                &mut last_otlp,
            ))
        })
    });
    assert_eq!(last_otlp.reused(), 0);
    let ot_raw_direct = {
        use std::io::Read;
        let (body, _) = otlp::encode_snapshot(
            &snap,
            &sources,
            start,
            &labels,
            true,
            &mut otlp::Template::default(),
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        raw
    };
    g.bench_function(format!("otlp_gzip_only_{VMS}_vms"), |b| {
        b.iter(|| {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
            gz.write_all(&ot_raw_direct).unwrap();
            black_box(gz.finish().unwrap())
        })
    });
    g.bench_function(format!("otlp_whole_{VMS}_vms"), |b| {
        b.iter(|| {
            let c = collect(&snap, &sources);
            black_box(otlp::encode(&c, start, &labels))
        })
    });
    g.finish();
}

criterion_group! {
    name = push;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(push);
