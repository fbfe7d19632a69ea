//! Prometheus remote_write 1.0: a protobuf `WriteRequest`, snappy
//! (block format) compressed.
//!
//! Reads: one [`Collected`] snapshot and the destination's external
//! labels. Emits: the request body and its headers (`Content-Encoding:
//! snappy`, `Content-Type: application/x-protobuf`,
//! `X-Prometheus-Remote-Write-Version: 0.1.0`). Never fails.
//!
//! Per series: labels sorted by name, `__name__` among them, one sample
//! with the snapshot's collection time in milliseconds (the moment the
//! values were read, as a scrape of that snapshot would see them), then
//! one `MetricMetadata` per family (type and help).
//!
//! The messages are hand-written prost structs (the field numbers and
//! types of `prometheus/prompb/{remote,types}.proto`): five small messages
//! do not justify a `build.rs` that needs `protoc` on every build machine.
//! The real-component tests push into Prometheus and VictoriaMetrics,
//! which decode them with the upstream definitions.

use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use smallvec::SmallVec;

use super::collect::Collected;
use super::reuse::SeriesKeys;
use super::wire::{put_fixed64, put_len, put_str, put_varint, str_field_len, varint_len};
use crate::export::{Desc, MetricSource, MetricType, SeriesLabels, SeriesSink, Value};
use crate::model::Snapshot;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    /// `MetricMetadata.MetricType`: 1 counter, 2 gauge, 3 histogram.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// The uncompressed request for `c`; `labels` are added to every series
/// that does not carry a label of that name itself.
pub fn write_request(c: &Collected, labels: &[(String, String)]) -> WriteRequest {
    let ts =
        c.at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
    let mut timeseries = Vec::with_capacity(c.samples);
    let mut metadata = Vec::with_capacity(c.families.len());
    for f in &c.families {
        for s in &f.samples {
            let mut l = Vec::with_capacity(s.labels.len() + labels.len() + 1);
            l.push(Label {
                name: "__name__".to_owned(),
                value: s.name.clone(),
            });
            for (k, v) in &s.labels {
                l.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
            for (k, v) in labels {
                if !s.labels.iter().any(|(n, _)| n == k) {
                    l.push(Label {
                        name: k.clone(),
                        value: v.clone(),
                    });
                }
            }
            l.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            timeseries.push(TimeSeries {
                labels: l,
                samples: vec![Sample {
                    value: super::as_f64(s.value),
                    timestamp: ts,
                }],
            });
        }
        metadata.push(MetricMetadata {
            r#type: match f.desc.kind {
                MetricType::Counter => 1,
                MetricType::Gauge => 2,
                MetricType::Histogram => 3,
            },
            metric_family_name: f.desc.name.to_owned(),
            help: f.desc.help.to_owned(),
            unit: String::new(),
        });
    }
    WriteRequest {
        timeseries,
        metadata,
    }
}

/// The external labels of a destination: `job="vmscope"` and
/// `instance=<host name>` unless the config sets them, then the config's.
pub fn external_labels(configured: &[(String, String)], host: &str) -> Vec<(String, String)> {
    let mut out = configured.to_vec();
    for (k, v) in [("job", "vmscope"), ("instance", host)] {
        if !v.is_empty() && !out.iter().any(|(n, _)| n == k) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// The compressed body for `c`.
pub fn encode(c: &Collected, configured: &[(String, String)]) -> Vec<u8> {
    let labels = external_labels(configured, &c.host);
    let raw = write_request(c, &labels).encode_to_vec();
    // Compressing a buffer we own cannot fail but for a size limit far
    // above any request (snap's is ~4 GiB); an empty body is then sent
    // and refused, which is counted.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

/// The compressed body for a snapshot, written straight from the
/// snapshot and `sources` (in `/metrics` order) as protobuf bytes: the
/// push path. Returns the body and its number of series.
///
/// Why not [`write_request`]: that builds every series as owned strings
/// twice (a [`Collected`], then prost structs) before encoding, some
/// 650 000 small allocations for 1000 VMs (6.7 ticks per push, measured).
/// Here the structured encoder's rules ([`SampleCollector`](crate::export::SampleCollector), the same
/// families and series as the text exposition) hand each admitted series
/// to [`WireSink`], which sorts its labels on the stack and appends the
/// bytes: nothing is allocated per series. [`write_request`] stays as
/// the readable reference that the tests compare this with.
///
/// `last` is what the destination kept from its previous push: when the
/// series are the same ones in the same order (a steady host), their bytes
/// are reused and only values and timestamps rewritten ([`Template`]).
pub fn encode_snapshot(
    snap: &Snapshot,
    sources: &[Arc<dyn MetricSource>],
    configured: &[(String, String)],
    last: &mut Template,
) -> (Vec<u8>, usize) {
    let host = snap.host.hostname.clone().unwrap_or_default();
    let mut sink = WireSink::with_vms(
        snap.collected_at,
        external_labels(configured, &host),
        snap.vms.len(),
    );
    let replay = last.keys.replayable();
    sink.reuse(std::mem::take(last));
    let Some((sink, walk)) = super::collect::walk_push(snap, sources, sink, replay) else {
        return (Vec::new(), 0);
    };
    let samples = sink.samples;
    let mut template = sink.into_template();
    template.keys.set_walk(walk);
    // The request is the series then the metadata; the series part stays
    // for the next push.
    let series_end = template.body.len();
    template.body.extend_from_slice(&template.meta);
    let body = template.compress();
    template.body.truncate(series_end);
    *last = template;
    (body, samples)
}

/// What a destination keeps from its last push: the series' bytes and
/// what each series was ([`SeriesKeys`]: the value's position in the
/// bytes with each). The next push reuses the bytes of every series that
/// is the one at the same place last time, rewriting its value and
/// timestamp in place (timestamps of the same varint width: until 2109).
///
/// Memory: the series' bytes (about 4.5 KB per VM) and about 30 bytes per
/// series, held between pushes.
#[derive(Default)]
pub struct Template {
    /// `WriteRequest.timeseries` fields, back to back.
    body: Vec<u8>,
    /// `WriteRequest.metadata` fields (written every push; a few KB).
    meta: Vec<u8>,
    /// The series in `body`; each one's position is its value's 8 bytes
    /// (the timestamp's key and varint follow).
    keys: SeriesKeys,
    /// The external labels and timestamp width the bytes were written
    /// with: a change in either means writing afresh.
    external: Vec<(String, String)>,
    ts_len: usize,
    /// Series of the last push whose bytes came from the one before.
    reused: usize,
    /// Snappy's output buffer, kept so that it is not allocated and
    /// faulted in every push: the worst case (5 MB at 1000 VMs, 50 MB at
    /// 10 000), of which only the part written is resident.
    compressed: Vec<u8>,
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

    /// Snappy over `body`, into the kept buffer; the compressed bytes.
    fn compress(&mut self) -> Vec<u8> {
        let need = snap::raw::max_compress_len(self.body.len());
        if self.compressed.len() < need {
            // Zeroed by the allocator, not written: a mapping of its own
            // (above `vmscope serve`'s mmap threshold) whose pages become
            // resident only where snappy writes, about a tenth of the
            // worst case it must be sized for. `resize` wrote all of it.
            self.compressed = vec![0; need];
        }
        // Compressing cannot fail below snap's ~4 GiB input limit (and
        // the output is sized by `max_compress_len`); an empty body is
        // then sent and refused, which is counted.
        match snap::raw::Encoder::new().compress(&self.body, &mut self.compressed) {
            Ok(n) => self.compressed.get(..n).unwrap_or_default().to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// Forgets series `i..` and their bytes.
    fn cut(&mut self, i: usize) {
        if let Some(start) = self.keys.cut(i) {
            self.body.truncate(start);
        }
    }
}

/// A `WriteRequest` written as series arrive ([`SeriesSink`]).
pub struct WireSink {
    /// Milliseconds since the epoch: every sample's timestamp.
    ts: i64,
    /// The timestamp as its varint bytes (the same for every series).
    ts_bytes: Vec<u8>,
    /// External labels, added to a series without a label of that name.
    external: Vec<(String, String)>,
    /// The bytes written (`timeseries` fields, then the `metadata`
    /// fields apart) and what each series was: the next push's template.
    t: Template,
    /// While the series so far were last push's: the next one's number
    /// in the template.
    replay: Option<usize>,
    /// While replaying: the family whose metadata was written last (the
    /// collector announces no families then).
    replayed_family: Option<&'static Desc>,
    samples: usize,
    /// Each shared label set's labels, written once, by set number.
    sets: Vec<Option<SetBytes>>,
    shapes: Vec<Shape>,
}

/// A shared label set with the external labels it lacks, sorted by name
/// and written once as `Label` fields: each of its series (a VM's dozens)
/// copies them in one or a few runs instead of sorting and writing them
/// label by label (measured: sorting and per-label writes were half of a
/// push's time).
struct SetBytes {
    bytes: Vec<u8>,
    /// Where each label (in its shape's order) starts in `bytes`.
    starts: Vec<usize>,
    /// Its label names, in [`WireSink::shapes`].
    shape: usize,
}

/// The sorted label names of shared sets (external ones marked), and
/// where their series put their own labels. Every VM's set usually has
/// the same names, so a push has one or a few shapes: kept apart from the
/// per-VM bytes, the plans stay in cache while the walk goes VM by VM
/// (per-VM plans were a cache miss per series).
struct Shape {
    names: Vec<(String, bool)>,
    plans: Vec<Plan>,
}

/// Where the series with one list of own-label names put them among a
/// shape's labels: worked out (by comparing names) at the first such
/// series, then only looked up by the names' addresses (they are fixed in
/// the program: [`SeriesLabels::extra`]). Comparing names per series was
/// a fifth of a push (memcmp).
struct Plan {
    /// The own labels' names, as (address, length).
    key: SmallVec<[(usize, usize); 4]>,
    /// The own labels (0: `__name__`; i: own label i - 1) in name order,
    /// each with the index of the set label it goes before.
    order: SmallVec<[(usize, usize); 4]>,
    /// Set labels left out: external labels the series has itself.
    skip: SmallVec<[usize; 2]>,
}

impl Plan {
    fn new(shape: &Shape, key: SmallVec<[(usize, usize); 4]>, names: &[&str]) -> Self {
        let mut order: SmallVec<[(usize, usize); 4]> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let before = shape.names.partition_point(|(n, _)| n.as_str() < *name);
                (i, before)
            })
            .collect();
        order.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| names[a.0].cmp(names[b.0])));
        let skip = shape
            .names
            .iter()
            .enumerate()
            .filter(|(_, (n, external))| *external && names.contains(&n.as_str()))
            .map(|(i, _)| i)
            .collect();
        Plan { key, order, skip }
    }
}

impl SetBytes {
    fn new(
        set: &[(&'static str, String)],
        external: &[(String, String)],
        shapes: &mut Vec<Shape>,
    ) -> Self {
        let mut all: SmallVec<[(&str, &str, bool); 24]> =
            set.iter().map(|(k, v)| (*k, v.as_str(), false)).collect();
        for (k, v) in external {
            if !set.iter().any(|(n, _)| n == k) {
                all.push((k.as_str(), v.as_str(), true));
            }
        }
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut bytes = Vec::new();
        let mut starts = Vec::with_capacity(all.len());
        for &(k, v, _) in &all {
            starts.push(bytes.len());
            put_label(&mut bytes, k, v, "");
        }
        let same = |shape: &Shape| {
            shape.names.len() == all.len()
                && shape
                    .names
                    .iter()
                    .zip(&all)
                    .all(|((n, e), (k, _, x))| n == k && e == x)
        };
        let shape = match shapes.iter().position(same) {
            Some(i) => i,
            None => {
                shapes.push(Shape {
                    names: all.iter().map(|&(k, _, e)| (k.to_owned(), e)).collect(),
                    plans: Vec::new(),
                });
                shapes.len() - 1
            }
        };
        SetBytes {
            bytes,
            starts,
            shape,
        }
    }

    /// Where label `i` starts (the end for `i` past the last).
    fn start(&self, i: usize) -> usize {
        self.starts.get(i).copied().unwrap_or(self.bytes.len())
    }

    /// The bytes written of the set: all but `skip`.
    fn len_without(&self, skip: &[usize]) -> usize {
        self.bytes.len()
            - skip
                .iter()
                .map(|&i| self.start(i + 1) - self.start(i))
                .sum::<usize>()
    }

    /// Copies labels `from..to` (but `skip`) to `out`.
    fn copy(&self, out: &mut Vec<u8>, from: usize, to: usize, skip: &[usize]) {
        if skip.iter().all(|&i| i < from || i >= to) {
            out.extend_from_slice(
                self.bytes
                    .get(self.start(from)..self.start(to))
                    .unwrap_or_default(),
            );
            return;
        }
        for i in (from..to).filter(|i| !skip.contains(i)) {
            out.extend_from_slice(
                self.bytes
                    .get(self.start(i)..self.start(i + 1))
                    .unwrap_or_default(),
            );
        }
    }
}

/// The sample field's size: value (key + 8 bytes), timestamp (key +
/// varint).
fn sample_len(ts: u64) -> usize {
    9 + 1 + varint_len(ts)
}

/// Starts a `TimeSeries` field whose labels take `labels_len` bytes; the
/// caller writes them, then [`close_series`].
fn open_series(out: &mut Vec<u8>, ts: i64, labels_len: usize) {
    let sample_len = sample_len(u64::try_from(ts).unwrap_or(0));
    let body_len = labels_len + 1 + varint_len(sample_len as u64) + sample_len;
    put_len(out, 1, body_len);
}

/// Writes the series' one sample.
fn close_series(out: &mut Vec<u8>, ts: i64, value: Value) {
    let ts = u64::try_from(ts).unwrap_or(0);
    put_len(out, 2, sample_len(ts));
    put_fixed64(out, 1, super::as_f64(value).to_bits()); // value, double
    out.push(2 << 3); // timestamp, varint
    put_varint(out, ts);
}

/// The size of a `Label` message (without its own key and length):
/// name, and a value written in two pieces.
fn label_len(k: &str, v: &str, w: &str) -> usize {
    str_field_len(k.len()) + str_field_len(v.len() + w.len())
}

/// A `TimeSeries.labels` field: key, length, the `Label` message.
fn put_label(out: &mut Vec<u8>, k: &str, v: &str, w: &str) {
    put_len(out, 1, label_len(k, v, w));
    put_str(out, 1, k);
    put_len(out, 2, v.len() + w.len());
    out.extend_from_slice(v.as_bytes());
    out.extend_from_slice(w.as_bytes());
}

/// The encoded size of a `TimeSeries.labels` field.
fn label_field_len(k: &str, v: &str, w: &str) -> usize {
    let n = label_len(k, v, w);
    1 + varint_len(n as u64) + n
}

impl WireSink {
    pub fn new(at: SystemTime, external: Vec<(String, String)>) -> Self {
        Self::with_vms(at, external, 0)
    }

    /// A sink for a snapshot of `vms` VMs: its buffer is sized for them at
    /// once (about 4.5 KB per VM, measured at 1000; growing by doubling
    /// from 1 MiB copied 7 MB per push). Capacity not written to is not
    /// touched, so it costs address space, not memory.
    pub fn with_vms(at: SystemTime, external: Vec<(String, String)>, vms: usize) -> Self {
        let ts = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut ts_bytes = Vec::with_capacity(10);
        put_varint(&mut ts_bytes, u64::try_from(ts).unwrap_or(0));
        let mut t = Template::default();
        t.body.reserve((64 << 10) + vms.saturating_mul(5 << 10));
        WireSink {
            ts,
            ts_bytes,
            external,
            t,
            replay: None,
            replayed_family: None,
            samples: 0,
            sets: Vec::new(),
            shapes: Vec::new(),
        }
    }

    /// Continues from `last`, the template of the previous push: its
    /// series are reused while this push's are the same ones.
    pub fn reuse(&mut self, mut last: Template) {
        let ts_len = self.ts_bytes.len();
        let keep = last.external == self.external && last.ts_len == ts_len;
        last.external.clone_from(&self.external);
        last.ts_len = ts_len;
        let want = self.t.body.capacity();
        last.body.reserve(want.saturating_sub(last.body.len()));
        self.t = last;
        self.begin(keep);
    }

    /// Starts this push on the template: nothing of it written yet, the
    /// template's series reused while they match, or forgotten (`keep`
    /// false: written with other external labels or timestamp width).
    fn begin(&mut self, keep: bool) {
        self.t.meta.clear();
        self.t.reused = 0;
        self.t.keys.begin(keep);
        if self.t.keys.is_empty() {
            self.t.body.clear();
        }
        self.replay = (!self.t.keys.is_empty()).then_some(0);
    }

    /// Whether series `i` of the template is this one; if so, its value
    /// and timestamp are rewritten in place.
    fn replays(
        &mut self,
        i: usize,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
        value: Value,
    ) -> bool {
        let Some(at) = self.t.keys.matches(i, desc, suffix, labels) else {
            return false;
        };
        // The value's 8 bytes, the timestamp's key, its varint.
        let Some(slot) = self.t.body.get_mut(at..at + 9 + self.ts_bytes.len()) else {
            return false;
        };
        let (v, rest) = slot.split_at_mut(8);
        v.copy_from_slice(&super::as_f64(value).to_le_bytes());
        if let Some(t) = rest.get_mut(1..) {
            t.copy_from_slice(&self.ts_bytes);
        }
        true
    }

    /// Records a series just written (from `start`) in the template.
    fn kept(
        &mut self,
        start: usize,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
    ) {
        let value_at = self.t.body.len() - self.ts_bytes.len() - 9;
        self.t.keys.record(start, value_at, desc, suffix, labels);
    }

    /// The template for the next push (this push's series).
    pub fn into_template(mut self) -> Template {
        if let Some(i) = self.replay {
            // Fewer series than last time: the rest are gone.
            self.t.cut(i);
        }
        self.t
    }

    /// A series of shared set `id`: the set's prepared labels with
    /// `__name__` and the series' own labels put in, in name order.
    fn series_in_set(
        &mut self,
        id: usize,
        set: &[(&'static str, String)],
        desc: &'static Desc,
        suffix: &'static str,
        labels: SeriesLabels<'_>,
        value: Value,
    ) {
        if self.sets.len() <= id {
            self.sets.resize_with(id + 1, || None);
        }
        let Some(slot) = self.sets.get_mut(id) else {
            return;
        };
        let shapes = &mut self.shapes;
        let prepared = slot.get_or_insert_with(|| SetBytes::new(set, &self.external, shapes));
        let Some(shape) = shapes.get_mut(prepared.shape) else {
            return;
        };
        let extra = labels.extra();
        let key: SmallVec<[(usize, usize); 4]> = extra
            .iter()
            .map(|(k, _)| (k.as_ptr() as usize, k.len()))
            .collect();
        let i = match shape.plans.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                let mut names: SmallVec<[&str; 4]> = SmallVec::new();
                names.push("__name__");
                names.extend(extra.iter().map(|(k, _)| *k));
                let plan = Plan::new(shape, key, &names);
                shape.plans.push(plan);
                shape.plans.len() - 1
            }
        };
        let Some(plan) = shape.plans.get(i) else {
            return;
        };
        // Own label i: 0 is `__name__` (the family's name and suffix,
        // written without joining them), i > 0 the series' label i - 1.
        let own = |i: usize| match i.checked_sub(1) {
            None => ("__name__", desc.name, suffix),
            Some(j) => extra.get(j).map_or(("", "", ""), |&(k, v)| (k, v, "")),
        };
        let labels_len = prepared.len_without(&plan.skip)
            + plan
                .order
                .iter()
                .map(|&(i, _)| {
                    let (k, v, w) = own(i);
                    label_field_len(k, v, w)
                })
                .sum::<usize>();
        let out = &mut self.t.body;
        let start = out.len();
        open_series(out, self.ts, labels_len);
        let mut from = 0;
        for &(i, before) in &plan.order {
            prepared.copy(out, from, before, &plan.skip);
            let (k, v, w) = own(i);
            put_label(out, k, v, w);
            from = before;
        }
        prepared.copy(out, from, prepared.starts.len(), &plan.skip);
        close_series(out, self.ts, value);
        self.kept(start, desc, suffix, &labels);
        self.samples += 1;
    }

    /// The uncompressed `WriteRequest`.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut t = self.into_template();
        t.body.extend_from_slice(&t.meta);
        t.body
    }
}

impl SeriesSink for WireSink {
    fn family(&mut self, desc: &'static Desc) {
        let kind: u64 = match desc.kind {
            MetricType::Counter => 1,
            MetricType::Gauge => 2,
            MetricType::Histogram => 3,
        };
        let len =
            1 + varint_len(kind) + str_field_len(desc.name.len()) + str_field_len(desc.help.len());
        let meta = &mut self.t.meta;
        put_len(meta, 3, len);
        meta.push(1 << 3); // type, varint
        put_varint(meta, kind);
        put_str(meta, 2, desc.name);
        put_str(meta, 4, desc.help);
    }

    fn series(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: SeriesLabels<'_>,
        value: Value,
    ) {
        if let Some(i) = self.replay {
            if self.replays(i, desc, suffix, &labels, value) {
                self.replay = Some(i + 1);
                self.t.reused += 1;
                self.samples += 1;
                return;
            }
            // The first series that differs from last push's: from here
            // on, written afresh.
            self.replay = None;
            self.t.cut(i);
        }
        if let Some((id, set)) = labels.set() {
            return self.series_in_set(id, set, desc, suffix, labels, value);
        }
        // (name, value, value continued): `__name__` is the family's name
        // and its suffix, written without joining them.
        let mut l: SmallVec<[(&str, &str, &str); 24]> = SmallVec::new();
        l.push(("__name__", desc.name, suffix));
        l.extend(labels.iter().map(|(k, v)| (k, v, "")));
        for (k, v) in &self.external {
            if !labels.iter().any(|(n, _)| n == k) {
                l.push((k.as_str(), v.as_str(), ""));
            }
        }
        l.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let labels_len: usize = l.iter().map(|&(k, v, w)| label_field_len(k, v, w)).sum();
        let out = &mut self.t.body;
        let start = out.len();
        open_series(out, self.ts, labels_len);
        for &(k, v, w) in &l {
            put_label(out, k, v, w);
        }
        close_series(out, self.ts, value);
        drop(l);
        self.kept(start, desc, suffix, &labels);
        self.samples += 1;
    }

    fn replay(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
        value: Value,
    ) -> bool {
        let Some(i) = self.replay else {
            return false;
        };
        if !self.replays(i, desc, suffix, labels, value) {
            return false;
        }
        if !self.replayed_family.is_some_and(|d| std::ptr::eq(d, desc)) {
            self.family(desc);
            self.replayed_family = Some(desc);
        }
        self.replay = Some(i + 1);
        self.t.reused += 1;
        self.samples += 1;
        true
    }

    fn restart(&mut self) {
        // The template's bytes are as they were (a replay only rewrote
        // values, which the next walk rewrites again).
        self.begin(true);
        self.replayed_family = None;
        self.samples = 0;
        self.sets.clear();
        self.shapes.clear();
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Extra headers of a remote_write request.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixture;
    use crate::push::collect::collect;

    #[test]
    fn every_series_of_the_exposition_with_sorted_labels_and_the_snapshot_time() {
        let snap = fixture::snapshot(3);
        let c = collect(&snap, &[]);
        let body = encode(&c, &[("region".to_owned(), "eu".to_owned())]);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), c.samples);
        let at_ms = snap
            .collected_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted);
            assert!(names.contains(&"__name__") && names.contains(&"region"));
            assert!(names.contains(&"job") && names.contains(&"instance"));
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, at_ms);
        }
        // A known series: the first VM's user CPU seconds.
        let want = snap.vms[0].cpu.user;
        let found = req.timeseries.iter().find(|ts| {
            let has = |k: &str, v: &str| ts.labels.iter().any(|l| l.name == k && l.value == v);
            has("__name__", "vmscope_vm_cpu_seconds_total")
                && has("vm_id", &snap.vms[0].id)
                && has("mode", "user")
        });
        assert_eq!(found.map(|t| t.samples[0].value), Some(want));
        let cpu_meta = req
            .metadata
            .iter()
            .find(|m| m.metric_family_name == "vmscope_vm_cpu_seconds_total")
            .unwrap();
        assert_eq!(cpu_meta.r#type, 1);
        assert!(!cpu_meta.help.is_empty());
    }

    /// The request as a comparable value: series (sorted labels, value,
    /// time) in order, and the metadata.
    type Decoded = (
        Vec<(Vec<(String, String)>, String, i64)>,
        Vec<MetricMetadata>,
    );

    fn decoded(raw: &[u8]) -> Decoded {
        let req = WriteRequest::decode(raw).unwrap();
        let series = req
            .timeseries
            .into_iter()
            .map(|t| {
                let l = t.labels.into_iter().map(|l| (l.name, l.value)).collect();
                // Bits, so that NaN equals NaN.
                (
                    l,
                    format!("{:x}", t.samples[0].value.to_bits()),
                    t.samples[0].timestamp,
                )
            })
            .collect();
        (series, req.metadata)
    }

    #[test]
    fn the_wire_encoder_writes_what_the_reference_encoder_builds() {
        // The encoder tests' source that breaks each rule the text writer
        // counts: the wire encoder must skip exactly what the reference does.
        use crate::export::encoder::tests::Odd;
        let mut snap = fixture::snapshot(5);
        snap.vms[1].name = "a \"quoted\" \\ näme\nwith newline".into();
        let sources: Vec<Arc<dyn MetricSource>> = vec![Arc::new(Odd)];
        let ext = [
            ("region".to_owned(), "eu".to_owned()),
            ("vm_id".to_owned(), "never-over-a-series-label".to_owned()),
            // Names that per-VM series carry as their own labels (beside
            // the VM's shared set) and others do not: left out of the
            // first, added to the second. `aaa` sorts before every label.
            ("vcpu".to_owned(), "never-over-a-vcpu".to_owned()),
            ("mode".to_owned(), "never-over-a-mode".to_owned()),
            ("aaa".to_owned(), "first".to_owned()),
            ("zzz".to_owned(), "last".to_owned()),
        ];
        let (body, n) = encode_snapshot(&snap, &sources, &ext, &mut Template::default());
        let wire = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let c = collect(&snap, &sources);
        let reference = write_request(&c, &external_labels(&ext, &c.host)).encode_to_vec();
        assert_eq!(n, c.samples);
        let (got, got_meta) = decoded(&wire);
        let (want, want_meta) = decoded(&reference);
        assert!(got.len() > 200, "{}", got.len());
        assert_eq!(got, want);
        assert_eq!(got_meta, want_meta);
        // Histogram buckets are there, with `le`.
        assert!(got.iter().any(|(l, _, _)| l.iter().any(|(k, _)| k == "le")));
        // The shadowing was exercised: some series kept their own `vcpu`,
        // others got the external one.
        let vcpu = |v: &str| {
            got.iter()
                .filter(|(l, _, _)| l.iter().any(|(k, x)| k == "vcpu" && x == v))
                .count()
        };
        assert!(vcpu("never-over-a-vcpu") > 0 && got.len() > vcpu("never-over-a-vcpu"));
        assert!(got.iter().all(|(l, _, _)| l.is_sorted_by(|a, b| a.0 < b.0)));
    }

    /// Encodes `snap` with `template` and checks the request equals a
    /// fresh encoding of the same snapshot; the number of series reused.
    /// Pushes `snap` and the test sources in `mode`
    /// ([`sources`](crate::push::reuse::tests::sources)) with `template`,
    /// checks the request is byte for byte a fresh encoding's, and
    /// returns how many series were reused.
    fn push_with(
        snap: &Snapshot,
        ext: &[(String, String)],
        template: &mut Template,
        mode: u8,
    ) -> usize {
        let sources = crate::push::reuse::tests::sources(mode, snap.seq);
        let (body, n) = encode_snapshot(snap, &sources, ext, template);
        let (fresh, fresh_n) = encode_snapshot(snap, &sources, ext, &mut Template::default());
        assert_eq!(n, fresh_n);
        let got = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let want = snap::raw::Decoder::new().decompress_vec(&fresh).unwrap();
        assert_eq!(decoded(&got), decoded(&want));
        // Byte for byte, too: a reused series is exactly what writing it
        // afresh gives.
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
        let ext = [("region".to_owned(), "eu".to_owned())];
        let mut snap = fixture::snapshot(20);
        let mut t = Template::default();
        assert_eq!(
            push_with(&snap, &ext, &mut t, mode),
            0,
            "nothing to reuse at first"
        );
        let series = t.keys.len();
        assert!(series > 500, "{series}");
        // The next tick: new values, a later time, the same series.
        for (i, vm) in snap.vms.iter_mut().enumerate() {
            vm.cpu.user += 1.5 * i as f64;
            vm.memory_rss_bytes += 4096;
        }
        snap.collected_at += std::time::Duration::from_secs(15);
        snap.seq += 1;
        assert_eq!(push_with(&snap, &ext, &mut t, mode), series);
        assert_eq!(t.replayed(), replays);
        // NaN and a negative gauge are values like any other.
        snap.host.load1 = f64::NAN;
        assert_eq!(push_with(&snap, &ext, &mut t, mode), series);
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
        let ext = [("region".to_owned(), "eu".to_owned())];
        let mut snap = fixture::snapshot(20);
        let mut t = Template::default();
        push_with(&snap, &ext, &mut t, mode);
        let all = t.keys.len();

        // A VM renamed: its shared set changed.
        snap.vms[7].name = "renamed".into();
        let reused = push_with(&snap, &ext, &mut t, mode);
        assert!(reused < all, "{reused} of {all}");
        assert!(!t.replayed());
        assert_eq!(push_with(&snap, &ext, &mut t, mode), all);
        assert_eq!(t.replayed(), replays);

        // A vCPU more on one VM: a series' own labels differ.
        let mut v = snap.vms[3].vcpus[0];
        v.index = 9;
        snap.vms[3].vcpus.push(v);
        let reused = push_with(&snap, &ext, &mut t, mode);
        assert!(reused < t.keys.len());
        assert!(!t.replayed());
        let all = t.keys.len();
        assert!(all > 0);
        assert_eq!(push_with(&snap, &ext, &mut t, mode), all);
        assert_eq!(t.replayed(), replays);

        // A VM gone (fewer series), a VM more (more series).
        snap.vms.pop();
        push_with(&snap, &ext, &mut t, mode);
        snap.vms.push(fixture::snapshot(21).vms.pop().unwrap());
        push_with(&snap, &ext, &mut t, mode);
        assert_eq!(push_with(&snap, &ext, &mut t, mode), t.keys.len());
        assert_eq!(t.replayed(), replays);

        // The host renamed: the `instance` label of every series.
        snap.host.hostname = Some("hv2".into());
        assert_eq!(push_with(&snap, &ext, &mut t, mode), 0);
        // Other external labels.
        let ext2 = [("region".to_owned(), "us".to_owned())];
        assert_eq!(push_with(&snap, &ext2, &mut t, mode), 0);
        // No VMs at all, then back.
        let vms = std::mem::take(&mut snap.vms);
        push_with(&snap, &ext2, &mut t, mode);
        snap.vms = vms;
        push_with(&snap, &ext2, &mut t, mode);
        assert_eq!(push_with(&snap, &ext2, &mut t, mode), t.keys.len());
        assert_eq!(t.replayed(), replays);
    }

    #[test]
    fn a_replay_ends_where_a_rule_or_the_series_differ_and_the_push_is_what_writing_afresh_gives() {
        use crate::push::reuse::tests::BREAKS;
        let ext = [("region".to_owned(), "eu".to_owned())];
        let mut snap = fixture::snapshot(5);
        let mut t = Template::default();
        for (mode, clean) in BREAKS {
            // Twice the same series: the second push replays the first.
            push_with(&snap, &ext, &mut t, 0);
            snap.seq += 1;
            push_with(&snap, &ext, &mut t, 0);
            assert!(t.replayed(), "mode {mode}");
            // Each push is compared with a fresh encoding (`push_with`):
            // what a rule refuses is left out and counted as when every
            // rule runs.
            snap.seq += 1;
            push_with(&snap, &ext, &mut t, mode);
            assert!(!t.replayed(), "mode {mode}");
            assert_eq!(t.keys.walk().clean, clean, "mode {mode}");
            // Back: not replayed (refused series last time, or other
            // series), and then replayed again.
            push_with(&snap, &ext, &mut t, 0);
            assert!(!t.replayed(), "mode {mode}");
        }
    }

    #[test]
    fn a_series_label_wins_over_an_external_label() {
        let l = external_labels(&[("instance".to_owned(), "h-conf".to_owned())], "h-kernel");
        assert_eq!(
            l,
            [
                ("instance".to_owned(), "h-conf".to_owned()),
                ("job".to_owned(), "vmscope".to_owned())
            ]
        );
        assert_eq!(
            external_labels(&[], ""),
            [("job".to_owned(), "vmscope".to_owned())]
        );
    }
}
