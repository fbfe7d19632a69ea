//! OTLP metrics over HTTP: an `ExportMetricsServiceRequest` in protobuf,
//! gzip-compressed, POSTed to the receiver's `/v1/metrics`.
//!
//! Reads: one [`Collected`] snapshot, when this process started, and the
//! destination's extra resource attributes. Emits: the request body and
//! its headers. Never fails.
//!
//! Mapping (docs/push.md has the table):
//! - one resource: `service.name` = `vmscope`, `service.version`,
//!   `host.name` (the host's name), `os.type` = `linux`, then the
//!   configured `labels`; one scope, `vmscope`;
//! - one metric per family, named as in Prometheus (so dashboards and
//!   rules written for `/metrics` work after a collector's Prometheus
//!   exporter), with the family's help as description and the UCUM unit
//!   of its name's unit suffix (`_seconds` `s`, `_bytes` `By`, `_ratio`
//!   `1`);
//! - counters: cumulative, monotonic `Sum`s whose start time is the VM's
//!   start for per-VM series (their counters are the hypervisor process'
//!   own, from zero at its start) and this process' start otherwise;
//!   gauges: `Gauge`s; histograms: cumulative explicit-bucket
//!   `Histogram`s, with this process' start;
//! - labels become attributes, renamed per the OpenTelemetry semantic
//!   conventions where one exists ([`ATTRIBUTES`]), kept otherwise.
//!
//! The messages are hand-written prost structs carrying the field numbers
//! of `opentelemetry/proto/{collector/metrics,metrics,common,resource}/v1`:
//! the `opentelemetry-proto` crate would bring `opentelemetry` and its SDK
//! into the agent, and generating code needs `protoc` at build time. A
//! test decodes our requests with that crate (the official definitions).

use std::any::Any;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::collect::Collected;
use super::reuse::SeriesKeys;
use super::wire::{put_fixed64, put_len, put_str, put_varint, str_field_len, varint_len};
use crate::export::{
    Desc, Family, MetricSource, MetricType, Sample, SeriesLabels, SeriesSink, Value,
};
use crate::model::{Snapshot, VmStats};

#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeMetrics {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// Only the string arm of `AnyValue`'s oneof is ever sent.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(string, tag = "1")]
    pub string_value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(string, tag = "3")]
    pub unit: String,
    #[prost(oneof = "Data", tags = "5, 7, 9")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
pub const CUMULATIVE: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// The `as_double` arm of the value oneof: every value is sent as a
    /// double (as in Prometheus), so a metric never mixes the two arms.
    #[prost(double, tag = "4")]
    pub as_double: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
}

/// Prometheus label -> OpenTelemetry attribute, where the semantic
/// conventions name one, on the families whose name contains the third
/// part (`""`: every family). Labels not listed keep their name (`vm_id`,
/// `vm_name`, `vcpu`, `state`, ...: the conventions have no VM-on-a-host
/// attributes; `host.*` describe the resource, the hypervisor host).
/// `mode` is `cpu.mode` only on CPU families: `vmscope_discovery_mode`'s
/// `mode` (events or listing) is no CPU mode.
pub const ATTRIBUTES: &[(&str, &str, &str)] = &[
    ("interface", "network.interface.name", ""),
    ("device", "system.device", ""),
    ("mountpoint", "system.filesystem.mountpoint", ""),
    ("fstype", "system.filesystem.type", ""),
    ("mode", "cpu.mode", "_cpu_"),
    ("route", "http.route", ""),
    ("method", "http.request.method", ""),
    ("status", "http.response.status_code", ""),
];

/// The attribute name of the Prometheus label `label` on family `family`.
pub fn attribute_name<'a>(family: &str, label: &'a str) -> &'a str {
    ATTRIBUTES
        .iter()
        .find(|(l, _, on)| *l == label && family.contains(on))
        .map_or(label, |(_, a, _)| a)
}

/// The UCUM unit of a metric name's unit suffix (METRICS.md: base units,
/// the unit as a plural suffix before `_total`); empty when it has none.
pub fn unit_of(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else if base.ends_with("_ratio") {
        "1"
    } else {
        ""
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            string_value: value.to_owned(),
        }),
    }
}

fn attributes(family: &str, labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| kv(attribute_name(family, k), v))
        .collect()
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn secs_to_nanos(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e9) as u64
    } else {
        0
    }
}

/// The start of a counter series: its VM's start when it is a VM's.
fn start_of(s: &Sample, c: &Collected, process_start: u64) -> u64 {
    s.labels
        .iter()
        .find(|(k, _)| k == "vm_id")
        .and_then(|(_, id)| c.vm_starts.get(id))
        .map(|&secs| secs_to_nanos(secs))
        .filter(|&n| n > 0)
        .unwrap_or(process_start)
}

fn number_points(f: &Family, c: &Collected, start: Option<u64>, now: u64) -> Vec<NumberDataPoint> {
    f.samples
        .iter()
        .map(|s| NumberDataPoint {
            attributes: attributes(f.desc.name, &s.labels),
            start_time_unix_nano: start.map_or(0, |p| start_of(s, c, p)),
            time_unix_nano: now,
            as_double: super::as_f64(s.value),
        })
        .collect()
}

/// A histogram family's samples (per series: `_bucket`s in `le` order,
/// `_sum`, `_count`, as the sample encoder writes them) as data points.
fn histogram_points(f: &Family, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    let bucket = format!("{}_bucket", f.desc.name);
    let sum = format!("{}_sum", f.desc.name);
    let count = format!("{}_count", f.desc.name);
    let mut out = Vec::new();
    let mut bounds = Vec::new();
    let mut cumulative = Vec::new();
    let mut total_sum = None;
    for s in &f.samples {
        if s.name == bucket {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| v.parse::<f64>().ok());
            if let Some(le) = le.filter(|l| l.is_finite()) {
                bounds.push(le);
            }
            cumulative.push(super::as_f64(s.value) as u64);
        } else if s.name == sum {
            total_sum = Some(super::as_f64(s.value));
        } else if s.name == count {
            let n = super::as_f64(s.value) as u64;
            let mut counts = Vec::with_capacity(cumulative.len());
            let mut prev = 0;
            for &c in &cumulative {
                counts.push(c.saturating_sub(prev));
                prev = c;
            }
            out.push(HistogramDataPoint {
                attributes: attributes(f.desc.name, &s.labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: n,
                sum: total_sum.take(),
                bucket_counts: counts,
                explicit_bounds: std::mem::take(&mut bounds),
            });
            cumulative.clear();
        }
    }
    out
}

/// The request for `c`; `attrs` are extra resource attributes.
pub fn request(
    c: &Collected,
    process_start: SystemTime,
    attrs: &[(String, String)],
) -> ExportMetricsServiceRequest {
    let now = nanos(c.at);
    let started = nanos(process_start);
    let metrics = c
        .families
        .iter()
        .map(|f| Metric {
            name: f.desc.name.to_owned(),
            description: f.desc.help.to_owned(),
            unit: unit_of(f.desc.name).to_owned(),
            data: Some(match f.desc.kind {
                MetricType::Gauge => Data::Gauge(Gauge {
                    data_points: number_points(f, c, None, now),
                }),
                MetricType::Counter => Data::Sum(Sum {
                    data_points: number_points(f, c, Some(started), now),
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                }),
                MetricType::Histogram => Data::Histogram(Histogram {
                    data_points: histogram_points(f, started, now),
                    aggregation_temporality: CUMULATIVE,
                }),
            }),
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(&c.host, attrs)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
            }],
        }],
    }
}

/// The one resource: the agent on its host, then the configured
/// attributes (which may replace those).
fn resource(host: &str, attrs: &[(String, String)]) -> Resource {
    let mut resource = vec![
        kv("service.name", "vmscope"),
        kv("service.version", crate::BuildInfo::VERSION),
        kv("os.type", "linux"),
    ];
    if !host.is_empty() {
        resource.push(kv("host.name", host));
    }
    for (k, v) in attrs {
        match resource.iter_mut().find(|a| a.key == *k) {
            Some(a) => *a = kv(k, v),
            None => resource.push(kv(k, v)),
        }
    }
    Resource {
        attributes: resource,
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "vmscope".to_owned(),
        version: crate::BuildInfo::VERSION.to_owned(),
    }
}

/// The gzip'd body for `c`.
pub fn encode(c: &Collected, process_start: SystemTime, attrs: &[(String, String)]) -> Vec<u8> {
    gzip(&[&request(c, process_start, attrs).encode_to_vec()])
}

/// `parts`, one after the other, gzip'd.
fn gzip(parts: &[&[u8]]) -> Vec<u8> {
    // Level 1, as for the cached /metrics gzip: the agent's CPU matters
    // more than bytes on the wire. Deflating into a Vec does not fail.
    crate::export::gzip_parts(parts).unwrap_or_default()
}

/// The body for a snapshot (gzip'd when `gzip`), written straight from the snapshot and
/// `sources` (in `/metrics` order) as protobuf bytes: the push path.
/// Returns the body and its number of series.
///
/// Why not [`request`]: that builds every series as owned strings twice
/// (a [`Collected`], then prost structs), 3.5 ticks per push at 1000 VMs
/// (measured). As for remote_write ([`super::remote_write::WireSink`]),
/// the structured encoder's rules hand each admitted series to
/// [`OtlpSink`], which writes each VM's attributes once per push and its
/// series' points as bytes. [`request`] stays as the readable reference
/// the tests compare this with.
///
/// `last` is what the destination kept from its previous push: the series
/// that are the same ones in the same order (a steady host) reuse its
/// bytes with their values and times rewritten ([`Template`]).
pub fn encode_snapshot(
    snap: &Snapshot,
    sources: &[Arc<dyn MetricSource>],
    process_start: SystemTime,
    attrs: &[(String, String)],
    gzip_it: bool,
    last: &mut Template,
) -> (Vec<u8>, usize) {
    let mut sink = OtlpSink::new(snap, process_start);
    let replay = last.keys.replayable();
    sink.reuse(std::mem::take(last));
    sink.starts_from(&snap.vms);
    let Some((mut sink, walk)) = super::collect::walk_push(snap, sources, sink, replay) else {
        return (Vec::new(), 0);
    };
    sink.end();
    let host = snap.host.hostname.clone().unwrap_or_default();
    // The envelope around the metrics: ExportMetricsServiceRequest {
    // resource_metrics { resource, scope_metrics { scope, metrics... } } }.
    let resource = resource(&host, attrs).encode_to_vec();
    let scope = scope().encode_to_vec();
    let scope_metrics_len = str_field_len(scope.len()) + sink.metrics.len();
    let resource_metrics_len = str_field_len(resource.len()) + str_field_len(scope_metrics_len);
    let mut head = Vec::with_capacity(64 + resource.len() + scope.len());
    put_len(&mut head, 1, resource_metrics_len);
    put_len(&mut head, 1, resource.len());
    head.extend_from_slice(&resource);
    put_len(&mut head, 2, scope_metrics_len);
    put_len(&mut head, 1, scope.len());
    head.extend_from_slice(&scope);
    let body = if gzip_it {
        gzip(&[&head, &sink.metrics])
    } else {
        let mut body = head;
        body.extend_from_slice(&sink.metrics);
        body
    };
    let samples = sink.samples;
    *last = sink.into_template();
    last.keys.set_walk(walk);
    (body, samples)
}

/// What a destination keeps from its last push: the `Metric` fields, what
/// each series was and where its value sits ([`SeriesKeys`]), and where
/// each family's `Metric` and points start. The next push rewrites, for
/// every series that is the one at the same place last time, only its
/// value, time and start time (fixed 64-bit fields: the bytes keep their
/// size). Memory: the fields (about 3 KB per VM) and about 30 bytes per
/// series, held between pushes.
#[derive(Default)]
pub struct Template {
    metrics: Vec<u8>,
    keys: SeriesKeys,
    families: Vec<KeptFamily>,
    /// The process start the bytes were written with.
    started: u64,
    reused: usize,
    /// The VMs' starts (`OtlpSink::vm_starts`).
    vm_starts: Vec<(String, u64)>,
}

impl Template {
    /// How many series of the last push reused the bytes of the push
    /// before (all of them on a steady host).
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// Whether the last push replayed the one before it
    /// ([`SampleCollector::replaying`](crate::export::SampleCollector::replaying)).
    pub fn replayed(&self) -> bool {
        self.keys.walk().replayed
    }
}

/// One family's `Metric` in [`Template::metrics`].
#[derive(Clone, Copy)]
struct KeptFamily {
    desc: &'static Desc,
    /// Where its `Metric` field and its first point start.
    metric: usize,
    points: usize,
    /// Its first series' number in the keys.
    first_key: usize,
}

/// Where the reuse is: the next series' number in the keys, and the
/// family being reused (`None` before the first).
#[derive(Clone, Copy)]
struct Replay {
    key: usize,
    family: Option<usize>,
}

/// `ScopeMetrics.metrics` written as series arrive ([`SeriesSink`]).
pub struct OtlpSink {
    /// The snapshot's time and this process' start, Unix nanoseconds.
    now: u64,
    started: u64,
    /// Each VM's `vm_id` and start (Unix nanoseconds, 0 unknown), sorted
    /// by id: its counters' start. Kept between pushes and rebuilt only
    /// when the VMs changed (a map of copied ids built every push was 7%
    /// of a replayed push).
    vm_starts: Vec<(String, u64)>,
    /// `Metric` fields (`ScopeMetrics.metrics`), back to back.
    metrics: Vec<u8>,
    /// The current family's data points.
    points: Vec<u8>,
    current: Option<&'static Desc>,
    /// Each shared label set's labels as `NumberDataPoint.attributes`
    /// fields, written once, by set number.
    sets: Vec<Option<Vec<u8>>>,
    /// The histogram series being gathered (buckets come one by one).
    hist: HistogramParts,
    samples: usize,
    /// This push's series (positions in `metrics`; the current family's
    /// in `points` until it is closed) and families: the next push's
    /// template, the last push's while reusing it.
    keys: SeriesKeys,
    families: Vec<KeptFamily>,
    /// The current family's first series in `keys` (written afresh).
    first_key: usize,
    /// While the series so far were last push's.
    replay: Option<Replay>,
    reused: usize,
    /// Counter starts by shared set number this push (0: not looked up).
    set_starts: Vec<u64>,
    /// Where in `vm_starts` the last VM looked up was: families list VMs
    /// in the snapshot's order (by id), so the next one is usually this
    /// one or the one after it (a binary search per VM and family, comparing ids,
    /// was 2% of a replayed push).
    start_hint: usize,
}

#[derive(Default)]
struct HistogramParts {
    bounds: Vec<f64>,
    cumulative: Vec<u64>,
    sum: Option<f64>,
}

/// `NumberDataPoint.attributes` and `HistogramDataPoint.attributes`.
const NUMBER_ATTRIBUTES: u8 = 7;
const HISTOGRAM_ATTRIBUTES: u8 = 9;

/// A data point's attribute: a `KeyValue` with a string `AnyValue`, the
/// label renamed per the conventions ([`attribute_name`]).
fn put_attribute(out: &mut Vec<u8>, field: u8, family: &str, label: &str, value: &str) {
    let key = attribute_name(family, label);
    let any_len = str_field_len(value.len());
    let kv_len = str_field_len(key.len()) + 1 + varint_len(any_len as u64) + any_len;
    put_len(out, field, kv_len);
    put_str(out, 1, key);
    put_len(out, 2, any_len);
    put_str(out, 1, value);
}

/// The bytes a `Metric`'s data arm has after its points: temporality
/// (sums and histograms) and monotonicity (sums), written by
/// `OtlpSink::close_metric`.
fn data_trailer(kind: MetricType) -> usize {
    match kind {
        MetricType::Gauge => 0,
        MetricType::Counter => 4,
        MetricType::Histogram => 2,
    }
}

/// Overwrites the 8 bytes at `at` with `bits` (little-endian); false if
/// they are not there.
fn put_at(buf: &mut [u8], at: usize, bits: u64) -> bool {
    match buf.get_mut(at..at.saturating_add(8)) {
        Some(b) if b.len() == 8 => {
            b.copy_from_slice(&bits.to_le_bytes());
            true
        }
        _ => false,
    }
}

impl OtlpSink {
    pub fn new(snap: &Snapshot, process_start: SystemTime) -> Self {
        OtlpSink {
            now: nanos(snap.collected_at),
            started: nanos(process_start),
            vm_starts: Vec::new(),
            // About 3 KB per VM (measured at 1000), sized at once as for
            // remote_write (`WireSink::with_vms`).
            metrics: Vec::with_capacity((64 << 10) + snap.vms.len().saturating_mul(4 << 10)),
            points: Vec::new(),
            current: None,
            sets: Vec::new(),
            hist: HistogramParts::default(),
            samples: 0,
            keys: SeriesKeys::default(),
            families: Vec::new(),
            first_key: 0,
            replay: None,
            reused: 0,
            set_starts: Vec::new(),
            start_hint: 0,
        }
    }

    /// The VMs' starts, from `vms` (a snapshot's, sorted by id): kept
    /// as they are when they are the same VMs with the same starts.
    fn starts_from(&mut self, vms: &[VmStats]) {
        let start = |v: &VmStats| secs_to_nanos(v.start_time_seconds);
        let same = self.vm_starts.len() == vms.len()
            && (self.vm_starts.iter().zip(vms)).all(|((id, s), v)| *s == start(v) && *id == v.id);
        if same {
            return;
        }
        self.vm_starts.clear();
        self.vm_starts
            .extend(vms.iter().map(|v| (v.id.clone(), start(v))));
        // Stable: of VMs with the same id (a discovery bug) the first in
        // the snapshot is found, the one the exposition keeps.
        self.vm_starts.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// Continues from `last`, the previous push's template.
    fn reuse(&mut self, mut last: Template) {
        let keep = last.started == self.started;
        let want = self.metrics.capacity();
        last.metrics
            .reserve(want.saturating_sub(last.metrics.len()));
        self.metrics = last.metrics;
        self.keys = last.keys;
        self.families = last.families;
        self.vm_starts = last.vm_starts;
        self.begin(keep);
    }

    /// Starts this push on the template: its series reused while they
    /// match, or forgotten (`keep` false: another process start).
    fn begin(&mut self, keep: bool) {
        self.keys.begin(keep);
        if self.keys.is_empty() {
            self.metrics.clear();
            self.families.clear();
        }
        self.replay = (!self.keys.is_empty()).then_some(Replay {
            key: 0,
            family: None,
        });
    }

    /// The template for the next push.
    fn into_template(self) -> Template {
        Template {
            metrics: self.metrics,
            keys: self.keys,
            families: self.families,
            started: self.started,
            reused: self.reused,
            vm_starts: self.vm_starts,
        }
    }

    /// Where family `f`'s series end in the keys.
    fn end_of(&self, f: usize) -> usize {
        self.families
            .get(f + 1)
            .map_or(self.keys.len(), |n| n.first_key)
    }

    /// Ends the reuse after template family `f` (all of it reused; `None`:
    /// before the first): what follows it is forgotten.
    fn cut_after(&mut self, f: Option<usize>) {
        self.replay = None;
        let next = f.map_or(0, |f| f + 1);
        let (metric, key) = match self.families.get(next) {
            Some(n) => (n.metric, n.first_key),
            None => (self.metrics.len(), self.keys.len()),
        };
        self.metrics.truncate(metric);
        self.keys.cut(key);
        self.families.truncate(next);
        self.first_key = key;
        // Family `f` is in the bytes already.
        self.current = None;
    }

    /// Ends the reuse inside template family `f`, at series `key`: the
    /// family's points reused so far go back to `points`, its series'
    /// positions become positions there, and the family is written afresh
    /// from here on (its `Metric` and everything after it forgotten).
    fn reopen(&mut self, f: usize, key: usize) {
        self.replay = None;
        let Some(fam) = self.families.get(f).copied() else {
            return self.cut_after(None);
        };
        // Its points end where its next series starts, or (all of them
        // reused, a series more) before its temporality and monotonicity,
        // which end it where the next family's `Metric` starts.
        let upto = if key < self.end_of(f) {
            self.keys.start(key)
        } else {
            let end = self
                .families
                .get(f + 1)
                .map_or(self.metrics.len(), |n| n.metric);
            Some(end.saturating_sub(data_trailer(fam.desc.kind)))
        }
        .unwrap_or(self.metrics.len());
        self.points.clear();
        self.points
            .extend_from_slice(self.metrics.get(fam.points..upto).unwrap_or_default());
        self.keys.cut(key);
        self.keys.shift(fam.first_key, fam.points, 0);
        self.metrics.truncate(fam.metric);
        self.families.truncate(f);
        self.first_key = fam.first_key;
        self.current = Some(fam.desc);
    }

    /// Ends the push: a reuse that got here saw exactly last push's
    /// series, or fewer.
    fn end(&mut self) {
        let Some(r) = self.replay else {
            return self.close_metric();
        };
        match r.family {
            Some(f) if r.key < self.end_of(f) => {
                self.reopen(f, r.key);
                self.close_metric();
            }
            f => self.cut_after(f),
        }
    }

    /// A counter series' start: its VM's (from its set's `vm_id`, looked
    /// up once per set and push, else its own `vm_id`), else this
    /// process'. Written afresh and reused alike.
    fn counter_start(&mut self, labels: &SeriesLabels<'_>) -> u64 {
        fn vm_id<'x>(labels: &SeriesLabels<'x>) -> Option<&'x str> {
            labels.iter().find(|(k, _)| *k == "vm_id").map(|(_, v)| v)
        }
        let Some((id, set)) = labels.set() else {
            return self.start_of(vm_id(labels));
        };
        if let Some(&s) = self.set_starts.get(id).filter(|s| **s != 0) {
            return s;
        }
        let start = match set.iter().find(|(k, _)| *k == "vm_id") {
            Some((_, v)) => self.start_of(Some(v)),
            None => return self.start_of(vm_id(labels)),
        };
        if self.set_starts.len() <= id {
            self.set_starts.resize(id + 1, 0);
        }
        if let Some(s) = self.set_starts.get_mut(id) {
            *s = start;
        }
        start
    }

    /// Rewrites the value (and time, and start) of a reused series whose
    /// value sits at `at`; a histogram's parts are gathered as when
    /// writing, and its point rewritten at `_count`. False if the bytes
    /// are not where they should be (then the series is written afresh).
    fn patch(
        &mut self,
        at: usize,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
        value: Value,
    ) -> bool {
        let v = super::as_f64(value);
        let now = self.now;
        if desc.kind == MetricType::Histogram {
            match suffix {
                "_bucket" => {
                    self.gather_bucket(labels, v);
                    return true;
                }
                "_sum" => {
                    self.hist.sum = Some(v);
                    return true;
                }
                _ => {}
            }
            let (started, m, parts) = (self.started, &mut self.metrics, &self.hist);
            let mut ok = put_at(m, at, v as u64)
                && put_at(m, at.wrapping_sub(9), now)
                && put_at(m, at.wrapping_sub(18), started);
            let mut p = at + 8;
            if let Some(sum) = parts.sum {
                ok &= put_at(m, p + 1, sum.to_bits());
                p += 9;
            }
            let n = parts.cumulative.len();
            p += 1 + varint_len((8 * n) as u64);
            let mut prev = 0;
            for (i, &c) in parts.cumulative.iter().enumerate() {
                ok &= put_at(m, p + 8 * i, c.saturating_sub(prev));
                prev = c;
            }
            if ok {
                self.hist = HistogramParts::default();
            }
            return ok;
        }
        let start = if desc.kind == MetricType::Counter {
            Some(self.counter_start(labels))
        } else {
            None
        };
        let m = &mut self.metrics;
        put_at(m, at, v.to_bits())
            && put_at(m, at.wrapping_sub(9), now)
            && start.is_none_or(|s| put_at(m, at.wrapping_sub(18), s))
    }

    /// Writes the current family's `Metric` (if any) from its points.
    fn close_metric(&mut self) {
        let Some(desc) = self.current.take() else {
            return;
        };
        // The data arm: its points, then temporality (and monotonicity).
        let field = match desc.kind {
            MetricType::Gauge => 5,
            MetricType::Counter => 7,
            MetricType::Histogram => 9,
        };
        let data_len = self.points.len() + data_trailer(desc.kind);
        let unit = unit_of(desc.name);
        let metric_len = str_field_len(desc.name.len())
            + str_field_len(desc.help.len())
            + str_field_len(unit.len())
            + str_field_len(data_len);
        let out = &mut self.metrics;
        let metric = out.len();
        put_len(out, 2, metric_len);
        put_str(out, 1, desc.name);
        put_str(out, 2, desc.help);
        put_str(out, 3, unit);
        put_len(out, field, data_len);
        let points = out.len();
        out.extend_from_slice(&self.points);
        // The family's series were recorded at positions in `points`.
        self.keys.shift(self.first_key, 0, points);
        self.families.push(KeptFamily {
            desc,
            metric,
            points,
            first_key: self.first_key,
        });
        if desc.kind != MetricType::Gauge {
            out.push(2 << 3); // aggregation_temporality, varint
            put_varint(out, CUMULATIVE as u64);
        }
        if desc.kind == MetricType::Counter {
            out.push(3 << 3); // is_monotonic, varint
            out.push(1);
        }
        self.points.clear();
    }

    /// The start of a counter series: its VM's when it has a `vm_id`.
    fn start_of(&mut self, vm_id: Option<&str>) -> u64 {
        let found = vm_id.and_then(|id| {
            let hint = self.start_hint;
            // The hint first: of VMs with the same id the first is found.
            let at = [hint, hint.wrapping_add(1)]
                .into_iter()
                .find(|&i| self.vm_starts.get(i).is_some_and(|(k, _)| k == id))
                .unwrap_or_else(|| self.vm_starts.partition_point(|(k, _)| k.as_str() < id));
            let found = self.vm_starts.get(at).filter(|(k, _)| k == id)?;
            self.start_hint = at;
            Some(found)
        });
        found
            .map(|&(_, s)| s)
            .filter(|&s| s > 0)
            .unwrap_or(self.started)
    }

    /// A number point: `attrs` (written `NumberDataPoint.attributes`
    /// fields) and the series' other labels.
    fn number_point<'a>(
        &mut self,
        desc: &'static Desc,
        attrs: &[u8],
        own: impl Iterator<Item = (&'a str, &'a str)> + Clone,
        start: u64,
        value: Value,
    ) {
        let own_len: usize = own
            .clone()
            .map(|(k, v)| {
                let key = attribute_name(desc.name, k);
                let any = str_field_len(v.len());
                str_field_len(str_field_len(key.len()) + 1 + varint_len(any as u64) + any)
            })
            .sum();
        let with_start = desc.kind == MetricType::Counter;
        let point_len = attrs.len() + own_len + if with_start { 9 } else { 0 } + 9 + 9;
        let out = &mut self.points;
        put_len(out, 1, point_len);
        out.extend_from_slice(attrs);
        for (k, v) in own {
            put_attribute(out, NUMBER_ATTRIBUTES, desc.name, k, v);
        }
        if with_start {
            put_fixed64(out, 2, start);
        }
        put_fixed64(out, 3, self.now);
        put_fixed64(out, 4, super::as_f64(value).to_bits());
        self.samples += 1;
    }

    /// A histogram bucket's series: its bound and cumulative count.
    fn gather_bucket(&mut self, labels: &SeriesLabels<'_>, v: f64) {
        let le = labels
            .own()
            .find(|(k, _)| *k == "le")
            .and_then(|(_, v)| v.parse::<f64>().ok());
        if let Some(le) = le.filter(|l| l.is_finite()) {
            self.hist.bounds.push(le);
        }
        self.hist.cumulative.push(v as u64);
    }

    /// A histogram's `_bucket`, `_sum` or `_count` series: the point is
    /// written at `_count`, the last of them.
    fn histogram_part(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: SeriesLabels<'_>,
        value: Value,
    ) {
        let v = super::as_f64(value);
        // Every part is recorded at the point's start (where it will be
        // written); `_count` with its count's position.
        let start = self.points.len();
        match suffix {
            "_bucket" => {
                self.gather_bucket(&labels, v);
                self.keys.record(start, start, desc, suffix, &labels);
            }
            "_sum" => {
                self.hist.sum = Some(v);
                self.keys.record(start, start, desc, suffix, &labels);
            }
            _ => {
                let parts = std::mem::take(&mut self.hist);
                let mut attrs = Vec::new();
                for (k, v) in labels.iter() {
                    put_attribute(&mut attrs, HISTOGRAM_ATTRIBUTES, desc.name, k, v);
                }
                let n = parts.cumulative.len();
                let point_len = attrs.len()
                    + 9 * 3
                    + if parts.sum.is_some() { 9 } else { 0 }
                    + str_field_len(8 * n)
                    + str_field_len(8 * parts.bounds.len());
                let out = &mut self.points;
                put_len(out, 1, point_len);
                out.extend_from_slice(&attrs);
                put_fixed64(out, 2, self.started);
                put_fixed64(out, 3, self.now);
                put_fixed64(out, 4, v as u64);
                let count_at = out.len() - 8;
                if let Some(sum) = parts.sum {
                    put_fixed64(out, 5, sum.to_bits());
                }
                // Per-bucket counts from the cumulative ones (packed).
                put_len(out, 6, 8 * n);
                let mut prev = 0;
                for &c in &parts.cumulative {
                    out.extend_from_slice(&c.saturating_sub(prev).to_le_bytes());
                    prev = c;
                }
                put_len(out, 7, 8 * parts.bounds.len());
                for b in &parts.bounds {
                    out.extend_from_slice(&b.to_bits().to_le_bytes());
                }
                self.keys.record(start, count_at, desc, suffix, &labels);
            }
        }
    }
}

impl SeriesSink for OtlpSink {
    fn family(&mut self, desc: &'static Desc) {
        self.hist = HistogramParts::default();
        if let Some(r) = self.replay {
            match r.family {
                // The last family was not over: written afresh.
                Some(f) if r.key < self.end_of(f) => {
                    self.reopen(f, r.key);
                }
                f => {
                    let next = f.map_or(0, |f| f + 1);
                    let same = self
                        .families
                        .get(next)
                        .is_some_and(|n| std::ptr::eq(n.desc, desc) && n.first_key == r.key);
                    if same {
                        self.replay = Some(Replay {
                            key: r.key,
                            family: Some(next),
                        });
                        self.current = Some(desc);
                        return;
                    }
                    self.cut_after(f);
                }
            }
        }
        self.close_metric();
        self.current = Some(desc);
        self.first_key = self.keys.len();
    }

    fn series(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: SeriesLabels<'_>,
        value: Value,
    ) {
        if let Some(r) = self.replay {
            // Counted as Prometheus series (each bucket, `_sum`,
            // `_count`), as remote_write counts them.
            self.samples += 1;
            if let Some(at) = self.keys.matches(r.key, desc, suffix, &labels)
                && self.patch(at, desc, suffix, &labels, value)
            {
                self.replay = Some(Replay {
                    key: r.key + 1,
                    family: r.family,
                });
                self.reused += 1;
                return;
            }
            self.samples -= 1;
            match r.family {
                Some(f) => self.reopen(f, r.key),
                None => self.cut_after(None),
            }
        }
        if desc.kind == MetricType::Histogram {
            self.samples += 1;
            return self.histogram_part(desc, suffix, labels, value);
        }
        let start = self.points.len();
        self.number(desc, labels, value);
        let at = self.points.len().saturating_sub(8);
        self.keys.record(start, at, desc, suffix, &labels);
    }

    fn replay(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
        value: Value,
    ) -> bool {
        let Some(r) = self.replay else {
            return false;
        };
        // The family being replayed, or (it is over) the template's next
        // one, which this series must begin.
        let family = match r.family {
            Some(f) if r.key < self.end_of(f) => f,
            f => {
                let next = f.map_or(0, |f| f + 1);
                let begins = self
                    .families
                    .get(next)
                    .is_some_and(|n| std::ptr::eq(n.desc, desc) && n.first_key == r.key);
                if !begins {
                    return false;
                }
                self.hist = HistogramParts::default();
                next
            }
        };
        let Some(at) = self.keys.matches(r.key, desc, suffix, labels) else {
            return false;
        };
        if !self.patch(at, desc, suffix, labels, value) {
            return false;
        }
        self.replay = Some(Replay {
            key: r.key + 1,
            family: Some(family),
        });
        self.current = Some(desc);
        self.samples += 1;
        self.reused += 1;
        true
    }

    fn restart(&mut self) {
        // The template's bytes are as they were: a replay only rewrote
        // values (which the next walk rewrites again), never cut.
        self.begin(true);
        self.points.clear();
        self.current = None;
        self.sets.clear();
        self.hist = HistogramParts::default();
        self.samples = 0;
        self.first_key = 0;
        self.reused = 0;
        self.set_starts.clear();
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl OtlpSink {
    /// A gauge's or counter's series, written afresh.
    fn number(&mut self, desc: &'static Desc, labels: SeriesLabels<'_>, value: Value) {
        // Only a counter's point carries its start.
        let start = if desc.kind == MetricType::Counter {
            self.counter_start(&labels)
        } else {
            0
        };
        let Some((id, set)) = labels.set() else {
            return self.number_point(desc, &[], labels.iter(), start, value);
        };
        if self.sets.len() <= id {
            self.sets.resize_with(id + 1, || None);
        }
        let mut slot = self.sets.get_mut(id).and_then(Option::take);
        let prepared = slot.get_or_insert_with(|| {
            let mut bytes = Vec::new();
            // Written once for every family the set's series are in: so
            // only the renames that hold on every family apply (a set's
            // labels are a VM's identity; none is family-scoped).
            for (k, v) in set {
                put_attribute(&mut bytes, NUMBER_ATTRIBUTES, "", k, v);
            }
            bytes
        });
        self.number_point(desc, prepared, labels.own(), start, value);
        if let Some(s) = self.sets.get_mut(id) {
            *s = slot;
        }
    }
}

/// Extra headers of an OTLP/HTTP request.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "gzip"),
];

/// [`HEADERS`] of a request sent uncompressed (`compression = "none"`).
pub const HEADERS_PLAIN: &[(&str, &str)] = &[("content-type", "application/x-protobuf")];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixture;
    use crate::push::collect::collect;

    #[test]
    fn units_from_name_suffixes() {
        assert_eq!(unit_of("vmscope_vm_cpu_seconds_total"), "s");
        assert_eq!(unit_of("vmscope_vm_memory_rss_bytes"), "By");
        assert_eq!(unit_of("vmscope_vm_network_receive_bytes_total"), "By");
        assert_eq!(unit_of("vmscope_host_memory_used_ratio"), "1");
        assert_eq!(unit_of("vmscope_vm_network_receive_packets_total"), "");
        assert_eq!(unit_of("vmscope_vm_info"), "");
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut raw)
            .unwrap();
        raw
    }

    #[test]
    fn the_wire_encoder_writes_what_the_reference_encoder_builds() {
        // The encoder tests' source breaks each rule the text writer
        // counts, and has a histogram: the wire encoder must skip exactly
        // what the reference does and rebuild histograms the same way.
        use crate::export::encoder::tests::Odd;
        let mut snap = fixture::snapshot(5);
        snap.vms[1].name = "a \"quoted\" \\ näme\nwith newline".into();
        snap.vms[2].start_time_seconds = 0.0;
        let sources: Vec<Arc<dyn MetricSource>> =
            vec![Arc::new(Odd), Arc::new(crate::api::HttpMetrics::new())];
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let attrs = [
            ("deployment.environment".to_owned(), "lab".to_owned()),
            ("service.name".to_owned(), "vmscope-eu".to_owned()),
        ];
        let (body, n) = encode_snapshot(
            &snap,
            &sources,
            started,
            &attrs,
            true,
            &mut Template::default(),
        );
        let got = ExportMetricsServiceRequest::decode(gunzip(&body).as_slice()).unwrap();
        // `compression = "none"`: the same request, as is.
        let (plain, _) = encode_snapshot(
            &snap,
            &sources,
            started,
            &attrs,
            false,
            &mut Template::default(),
        );
        assert_eq!(plain, gunzip(&body));
        let c = collect(&snap, &sources);
        let want = request(&c, started, &attrs);
        assert_eq!(n, c.samples);
        let metrics = &got.resource_metrics[0].scope_metrics[0].metrics;
        assert!(metrics.len() > 20, "{}", metrics.len());
        assert!(
            metrics
                .iter()
                .any(|m| matches!(m.data, Some(Data::Histogram(_))))
        );
        assert_eq!(got, want);
    }

    /// Encodes `snap` with `template` and checks the request is byte for
    /// byte a fresh encoding's; the number of series reused.
    /// The sources are the test ones in `mode`
    /// ([`sources`](crate::push::reuse::tests::sources)).
    fn push_with(snap: &Snapshot, started: SystemTime, template: &mut Template, mode: u8) -> usize {
        let sources = crate::push::reuse::tests::sources(mode, snap.seq);
        let attrs = [("deployment.environment".to_owned(), "lab".to_owned())];
        let (body, n) = encode_snapshot(snap, &sources, started, &attrs, true, template);
        let (fresh, fresh_n) = encode_snapshot(
            snap,
            &sources,
            started,
            &attrs,
            true,
            &mut Template::default(),
        );
        assert_eq!(n, fresh_n);
        let (got, want) = (gunzip(&body), gunzip(&fresh));
        let metrics = |raw: &[u8]| {
            let r = ExportMetricsServiceRequest::decode(raw).unwrap();
            r.resource_metrics[0].scope_metrics[0].metrics.clone()
        };
        let (g, w) = (metrics(&got), metrics(&want));
        for (a, b) in g.iter().zip(&w) {
            // As bytes: NaN is not equal to itself.
            assert_eq!(a.encode_to_vec(), b.encode_to_vec(), "{a:?}\n{b:?}");
        }
        assert_eq!(g.len(), w.len());
        assert_eq!(got, want);
        template.reused()
    }

    #[test]
    fn a_steady_host_reuses_every_series_and_the_request_is_what_writing_afresh_gives() {
        // With a source that breaks rules (never replayed) and without
        // (replayed from the second push on).
        for mode in [u8::MAX, 0] {
            steady(mode);
        }
    }

    fn steady(mode: u8) {
        let replays = mode != u8::MAX;
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut snap = fixture::snapshot(20);
        let mut t = Template::default();
        assert_eq!(push_with(&snap, started, &mut t, mode), 0);
        let all = t.keys.len();
        assert!(all > 500, "{all}");
        for (i, vm) in snap.vms.iter_mut().enumerate() {
            vm.cpu.user += 1.5 * i as f64;
            vm.memory_rss_bytes += 4096;
        }
        snap.collected_at += std::time::Duration::from_secs(15);
        snap.seq += 1;
        assert_eq!(push_with(&snap, started, &mut t, mode), all);
        assert_eq!(t.replayed(), replays);
        // A VM restarted under the same identity: its counters' start.
        snap.vms[4].start_time_seconds += 100.0;
        assert_eq!(push_with(&snap, started, &mut t, mode), all);
        assert_eq!(t.replayed(), replays);
        snap.host.load1 = f64::NAN;
        assert_eq!(push_with(&snap, started, &mut t, mode), all);
        assert_eq!(t.replayed(), replays);
    }

    #[test]
    fn what_changes_between_pushes_is_written_afresh_from_there_on() {
        for mode in [u8::MAX, 0] {
            changes(mode);
        }
    }

    fn changes(mode: u8) {
        let replays = mode != u8::MAX;
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut snap = fixture::snapshot(20);
        let mut t = Template::default();
        push_with(&snap, started, &mut t, mode);
        let all = t.keys.len();
        // A VM renamed: its shared set changed, in the middle of families.
        snap.vms[7].name = "renamed".into();
        let reused = push_with(&snap, started, &mut t, mode);
        assert!(0 < reused && reused < all, "{reused} of {all}");
        assert!(!t.replayed());
        assert_eq!(push_with(&snap, started, &mut t, mode), all);
        assert_eq!(t.replayed(), replays);
        // A vCPU more on one VM: a family longer than last time.
        let mut v = snap.vms[3].vcpus[0];
        v.index = 9;
        snap.vms[3].vcpus.push(v);
        assert!(push_with(&snap, started, &mut t, mode) < t.keys.len());
        assert!(!t.replayed());
        assert_eq!(push_with(&snap, started, &mut t, mode), t.keys.len());
        assert_eq!(t.replayed(), replays);
        // The last VM gone: every per-VM family one VM shorter.
        snap.vms.pop();
        assert!(push_with(&snap, started, &mut t, mode) < t.keys.len());
        assert!(!t.replayed());
        assert_eq!(push_with(&snap, started, &mut t, mode), t.keys.len());
        assert_eq!(t.replayed(), replays);
        // The first VM gone, a VM more at the end.
        snap.vms.remove(0);
        push_with(&snap, started, &mut t, mode);
        snap.vms.push(fixture::snapshot(21).vms.pop().unwrap());
        push_with(&snap, started, &mut t, mode);
        assert_eq!(push_with(&snap, started, &mut t, mode), t.keys.len());
        assert_eq!(t.replayed(), replays);
        // Another process start: every counter's start time.
        let later = started + std::time::Duration::from_secs(60);
        assert_eq!(push_with(&snap, later, &mut t, mode), 0);
        // No VMs at all, then back.
        let vms = std::mem::take(&mut snap.vms);
        push_with(&snap, later, &mut t, mode);
        snap.vms = vms;
        push_with(&snap, later, &mut t, mode);
        assert_eq!(push_with(&snap, later, &mut t, mode), t.keys.len());
        assert_eq!(t.replayed(), replays);
    }

    #[test]
    fn a_replay_ends_where_a_rule_or_the_series_differ_and_the_push_is_what_writing_afresh_gives() {
        use crate::push::reuse::tests::BREAKS;
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut snap = fixture::snapshot(5);
        let mut t = Template::default();
        for (mode, clean) in BREAKS {
            push_with(&snap, started, &mut t, 0);
            snap.seq += 1;
            push_with(&snap, started, &mut t, 0);
            assert!(t.replayed(), "mode {mode}");
            // Compared with a fresh encoding (`push_with`).
            snap.seq += 1;
            push_with(&snap, started, &mut t, mode);
            assert!(!t.replayed(), "mode {mode}");
            assert_eq!(t.keys.walk().clean, clean, "mode {mode}");
            push_with(&snap, started, &mut t, 0);
            assert!(!t.replayed(), "mode {mode}");
        }
    }

    #[test]
    fn a_vms_start_is_found_whatever_order_vms_are_looked_up_in() {
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut sink = OtlpSink::new(&fixture::snapshot(0), started);
        // Sorted by id, as `starts_from` keeps them; "b" twice (a discovery
        // bug: the first is the one the exposition keeps); "d" unknown (0).
        let kept = [
            ("a", 10),
            ("b", 20),
            ("b", 30),
            ("c", 40),
            ("d", 0),
            ("e", 50),
        ];
        sink.vm_starts = kept.iter().map(|&(k, s)| (k.to_owned(), s)).collect();
        let expected = |id: &str| {
            kept.iter()
                .find(|(k, _)| *k == id)
                .map(|&(_, s)| s)
                .filter(|&s| s > 0)
                .unwrap_or(nanos(started))
        };
        let ids = ["a", "b", "c", "d", "e", "x", ""];
        // Every sequence of three lookups, so each id follows each other.
        for i in ids {
            for j in ids {
                for k in ids {
                    for id in [i, j, k] {
                        assert_eq!(sink.start_of(Some(id)), expected(id), "{i} {j} {k}: {id}");
                    }
                }
            }
        }
        assert_eq!(sink.start_of(None), nanos(started));
    }

    #[test]
    fn vm_counters_start_at_the_vm_start_and_labels_follow_the_conventions() {
        let snap = fixture::snapshot(2);
        let c = collect(&snap, &[]);
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let req = request(
            &c,
            started,
            &[("deployment.environment".into(), "lab".into())],
        );
        let rm = &req.resource_metrics[0];
        let res = &rm.resource.as_ref().unwrap().attributes;
        let attr = |k: &str| {
            res.iter()
                .find(|a| a.key == k)
                .map(|a| a.value.as_ref().unwrap().string_value.clone())
        };
        assert_eq!(attr("service.name").as_deref(), Some("vmscope"));
        assert_eq!(attr("deployment.environment").as_deref(), Some("lab"));
        let metrics = &rm.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), c.families.len());
        let cpu = metrics
            .iter()
            .find(|m| m.name == "vmscope_vm_cpu_seconds_total")
            .unwrap();
        assert_eq!(cpu.unit, "s");
        let Some(Data::Sum(sum)) = &cpu.data else {
            panic!("{cpu:?}")
        };
        assert!(sum.is_monotonic && sum.aggregation_temporality == CUMULATIVE);
        let p = &sum.data_points[0];
        assert_eq!(
            p.start_time_unix_nano,
            (snap.vms[0].start_time_seconds * 1e9) as u64
        );
        assert!(p.attributes.iter().any(|a| a.key == "cpu.mode"));
        // `mode` elsewhere is no CPU mode.
        let discovery = metrics
            .iter()
            .find(|m| m.name == "vmscope_discovery_mode")
            .unwrap();
        let Some(Data::Gauge(g)) = &discovery.data else {
            panic!("{discovery:?}")
        };
        assert!(g.data_points[0].attributes.iter().any(|a| a.key == "mode"));
        assert!(p.attributes.iter().any(|a| a.key == "vm_id"));
        // A host counter starts with the process.
        let host_counter = metrics
            .iter()
            .find_map(|m| match &m.data {
                Some(Data::Sum(s)) if !m.name.starts_with("vmscope_vm_") => Some(s),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            host_counter.data_points[0].start_time_unix_nano,
            1_800_000_000 * 1_000_000_000
        );
    }
}
