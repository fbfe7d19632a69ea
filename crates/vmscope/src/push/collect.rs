//! One snapshot's series as values: the readable reference that the
//! push encoders' byte-writing sinks are tested against
//! (`remote_write::WireSink`, `otlp::OtlpSink`), and [`write_all`], the
//! walk both use.
//!
//! Reads: a `Snapshot` and the live metric sources (the same list
//! `/metrics` writes after the snapshot's families). Emits: [`Collected`]:
//! the families through the structured-sample encoder
//! ([`SampleCollector`]), so a push carries exactly the families and
//! series `/metrics` serves, plus what the encoders need besides (time,
//! host name, each VM's start). Never fails: encoding cannot.
//!
//! The pushers no longer share a collection between destinations: each
//! writes its bytes straight from the snapshot, which costs less than
//! building the values once (measured in `benches/push.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::export::{Family, MetricSource, MetricWriter, SampleCollector, SeriesSink};
use crate::model::Snapshot;

/// One snapshot as series values.
#[derive(Debug)]
pub struct Collected {
    pub seq: u64,
    /// When the snapshot was collected: every sample's timestamp.
    pub at: SystemTime,
    /// The host's name (`host.name`, `instance`); empty when unknown.
    pub host: String,
    pub families: Vec<Family>,
    /// `vm_id` -> the VM's start, Unix seconds (the start time of its
    /// counters in OTLP).
    pub vm_starts: HashMap<String, f64>,
    /// Series (histograms: one per bucket, `_sum`, `_count`).
    pub samples: usize,
}

/// Writes `snap` and then `sources` (the `/metrics` order) into `c`, and
/// finishes it (the skip counts). A replay ([`SampleCollector::replaying`])
/// that fails is done again with every rule: the second walk reads the
/// live sources again, which only makes their values newer.
pub fn write_all(snap: &Snapshot, sources: &[Arc<dyn MetricSource>], c: &mut SampleCollector) {
    walk(snap, sources, c);
    if c.replay_failed() {
        c.restart();
        walk(snap, sources, c);
    }
}

/// How a push's walk went: what the next push decides its replay on.
#[derive(Debug, Default, Clone, Copy)]
pub struct Walk {
    /// No series refused: only such a push is replayed (one that refused
    /// some would fail its replay at the same place every time).
    pub clean: bool,
    /// The walk replayed the push before it to its end (its label rules
    /// not run again).
    pub replayed: bool,
}

/// Walks `snap` and `sources` into `sink` ([`write_all`]), replaying the
/// sink's last push when `replay` ([`SampleCollector::replaying`]); the
/// sink back, and how the walk went.
pub fn walk_push<T: SeriesSink>(
    snap: &Snapshot,
    sources: &[Arc<dyn MetricSource>],
    sink: T,
    replay: bool,
) -> Option<(T, Walk)> {
    let mut c = SampleCollector::with_sink(Box::new(sink));
    if replay {
        c = c.replaying();
    }
    write_all(snap, sources, &mut c);
    let walk = Walk {
        clean: c.skipped() == (0, 0),
        replayed: c.replayed(),
    };
    c.into_sink::<T>().map(|sink| (sink, walk))
}

fn walk(snap: &Snapshot, sources: &[Arc<dyn MetricSource>], c: &mut SampleCollector) {
    let mut w = MetricWriter::samples(c);
    snap.encode(&mut w);
    for s in sources {
        s.encode(&mut w);
    }
    w.finish();
}

/// Collects `snap` and `sources` (in `/metrics` order).
pub fn collect(snap: &Snapshot, sources: &[Arc<dyn MetricSource>]) -> Collected {
    let mut c = SampleCollector::new();
    write_all(snap, sources, &mut c);
    let families = c.into_families();
    let samples = families.iter().map(|f| f.samples.len()).sum();
    Collected {
        seq: snap.seq,
        at: snap.collected_at,
        host: snap.host.hostname.clone().unwrap_or_default(),
        vm_starts: snap
            .vms
            .iter()
            .map(|v| (v.id.clone(), v.start_time_seconds))
            .collect(),
        families,
        samples,
    }
}
