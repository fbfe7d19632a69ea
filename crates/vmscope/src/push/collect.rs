//! One snapshot's series as values, collected once for every destination.
//!
//! Reads: an `Arc<Snapshot>` and the live metric sources (`Sources`, the
//! same list `/metrics` writes after the snapshot's families). Emits:
//! [`Collected`]: the families through the structured-sample encoder
//! ([`SampleCollector`]), so a push carries exactly the families and
//! series `/metrics` serves, plus what the encoders need besides (time,
//! host name, each VM's start). Never fails: encoding cannot.
//!
//! Two destinations pushing the same snapshot share one collection
//! ([`SampleCache`]) while either is still encoding it; the sources' live
//! families (HTTP self-metrics) are then as of the first of them. The
//! cache holds it weakly: a collection of 1000 VMs is some MiB of strings,
//! and it is garbage as soon as the last destination has its body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use crate::export::{Family, MetricSource, MetricWriter, SampleCollector, Sources};
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
/// finishes it (the skip counts).
pub fn write_all(snap: &Snapshot, sources: &[Arc<dyn MetricSource>], c: &mut SampleCollector) {
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

/// The last collection, shared by the destinations.
pub struct SampleCache {
    sources: Sources,
    last: Mutex<Weak<Collected>>,
}

impl SampleCache {
    pub fn new(sources: Sources) -> Self {
        SampleCache {
            sources,
            last: Mutex::new(Weak::new()),
        }
    }

    /// The live sources, in `/metrics` order (after the snapshot).
    pub fn sources(&self) -> &[Arc<dyn MetricSource>] {
        self.sources.as_slice()
    }

    /// `snap` collected, or the collection another destination is still
    /// using. Blocking work: call it off the async workers.
    pub fn get(&self, snap: &Snapshot) -> Arc<Collected> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = last.upgrade().filter(|c| c.seq == snap.seq) {
            return c;
        }
        let c = Arc::new(collect(snap, self.sources.as_slice()));
        *last = Arc::downgrade(&c);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixture;

    #[test]
    fn destinations_share_a_collection_only_while_one_holds_it() {
        let cache = SampleCache::new(Sources::default());
        let snap = fixture::snapshot(2);
        let a = cache.get(&snap);
        let b = cache.get(&snap);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.samples,
            a.families.iter().map(|f| f.samples.len()).sum::<usize>()
        );
        assert_eq!(a.vm_starts.len(), 2);
        drop((a, b));
        // Nobody holds it: the cache does not keep it alive.
        assert!(cache.last.lock().unwrap().upgrade().is_none());
        let mut next = fixture::snapshot(2);
        next.seq += 1;
        assert_eq!(cache.get(&next).seq, next.seq);
    }
}
