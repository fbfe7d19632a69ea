//! Exposition: the snapshot (and any other metric source) as Prometheus text
//! 0.0.4, OpenMetrics 1.0.0 and JSON.
//!
//! Reads: an `&Snapshot` plus any number of extra [`MetricSource`]s (HTTP
//! self-metrics, the watchdog, the store). Emits: bytes in one [`Format`].
//!
//! - [`encoder`]: what every source writes into, [`MetricWriter`], an enum
//!   of encoders: text ([`writer`]: text 0.0.4, OpenMetrics, JSON) or
//!   structured samples for pushers ([`SampleCollector`]);
//! - [`snapshot`]: the per-VM, host and self catalogue from one `Snapshot`
//!   (names per `docs`/METRICS.md);
//! - `devices`: per-disk and balloon families from each VM's hypervisor
//!   API (`VmStats::devices`), one call from the per-VM catalogue;
//! - [`usage`]: the per-owner (`vmscope_user_*`, `vmscope_project_*`) and
//!   VM-inventory families, from the totals the snapshot carries;
//! - `counters`: the usage ledger's counters (`vmscope_*_total` kept by
//!   the ledger), from the committed totals the snapshot carries;
//! - [`cache`]: encode once per snapshot, gzip once per snapshot, then only
//!   the small live tail (extra sources) per request;
//! - [`scoped`]: a tenant's (or anonymous `host_only`) view and exposition,
//!   built once per snapshot per view.
//!
//! Failure: encoding cannot fail. Anything that would make the output
//! invalid (duplicate series, bad names, NaN counters) is left out and
//! counted in `vmscope_exposition_series_skipped{reason}`; gzip errors
//! surface as [`cache::CacheError`].

pub mod cache;
mod counters;
mod devices;
pub mod encoder;
#[doc(hidden)]
pub mod fixture;
pub mod histogram;
pub mod owner_labels;
pub mod scoped;
pub mod snapshot;
pub mod snapshot_age;
pub mod tasks;
pub mod usage;
pub mod writer;

pub(crate) use cache::gzip_parts;
pub use cache::{CacheError, Exposition, ExpositionCache};
pub use encoder::{
    Encode, Families, Family, Fingerprint, MetricWriter, Sample, SampleCollector, SeriesLabels,
    SeriesSink,
};
pub(crate) use encoder::{same_bytes, same_labels, same_str};
pub use histogram::Histogram;
pub use snapshot_age::SnapshotAge;
pub use writer::{Desc, Drain, Format, MetricType, SeriesText, TextWriter, Value, WriterState};

/// Anything that can write metric families. Implementations write each of
/// their families once, all samples of a family together, and must not
/// block: they run on the request path.
pub trait MetricSource: Send + Sync {
    fn encode(&self, out: &mut MetricWriter<'_>);

    /// A component behind this source reporting its condition under
    /// `/healthz` `components.<name>` (e.g. the watchdog's store running
    /// degraded). `None`: nothing to report. Must not block.
    fn health(&self) -> Option<(&'static str, ComponentHealth)> {
        None
    }

    /// True when what the source writes changes from one request to the
    /// next (the HTTP server's own request counts, an age computed from
    /// the clock): the exposition cache writes it afresh on every request,
    /// after the other sources. Any other source is written once and kept
    /// for as long as its [`Fingerprint`] does not change, so `false` is
    /// never wrong, only slower for such a source.
    fn volatile(&self) -> bool {
        false
    }
}

impl<T: MetricSource + ?Sized> MetricSource for std::sync::Arc<T> {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        (**self).encode(out);
    }

    fn health(&self) -> Option<(&'static str, ComponentHealth)> {
        (**self).health()
    }

    fn volatile(&self) -> bool {
        (**self).volatile()
    }
}

/// The live metric sources, in the order they follow the snapshot's
/// families: built once at start-up (by `vmscope serve`) and shared by
/// everything that exports (`/metrics` now, pushers next), so that each
/// sees the same families. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sources(std::sync::Arc<[std::sync::Arc<dyn MetricSource>]>);

impl Sources {
    pub fn new(sources: Vec<std::sync::Arc<dyn MetricSource>>) -> Self {
        Sources(sources.into())
    }

    pub fn as_slice(&self) -> &[std::sync::Arc<dyn MetricSource>] {
        &self.0
    }
}

/// One component's condition in `/healthz`. A degraded component does not
/// fail the health check (metrics are still served); it says what is lost.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentHealth {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// For people: what is wrong and what it costs, or what is in use.
    pub detail: String,
}

/// Encodes `sources` in order into one complete exposition (uncached; the
/// HTTP path goes through [`ExpositionCache`]).
pub fn encode(format: Format, sources: &[&dyn MetricSource]) -> String {
    let mut out = String::new();
    let mut w = MetricWriter::new(&mut out, format);
    for s in sources {
        s.encode(&mut w);
    }
    w.finish();
    out
}
