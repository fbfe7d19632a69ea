//! What a [`MetricSource`](super::MetricSource) writes into: one vocabulary
//! (`family`, `sample`, `label_set`, `sample_in`, `histogram`), more than
//! one encoder behind it, in the style of prometheus/client_rust's
//! `DescriptorEncoder` (an enum with one arm per encoding).
//!
//! - [`MetricWriter::Text`]: the hand-written, cached text path
//!   ([`TextWriter`]: Prometheus text 0.0.4, OpenMetrics 1.0.0, JSON).
//! - [`MetricWriter::Samples`]: a [`SampleCollector`] that keeps each family
//!   and its series as values, `(name, labels, value)`, for a pusher
//!   (remote_write, OTLP) that builds its own messages.
//! - [`MetricWriter::Fingerprint`]: a [`Fingerprint`] that hashes every
//!   call and writes nothing: what a source would write has changed exactly
//!   when its fingerprint has (the exposition cache keeps the text of the
//!   sources that did not change between scrapes).
//! - [`MetricWriter::Tee`]: text and its fingerprint from one walk.
//!
//! Each call is one `match` on the arm; the text arm then runs exactly the
//! code it ran before there were arms (the encode benchmark holds this).
//!
//! Both arms apply the same rules: a family written twice, a bad name, a
//! counter that is NaN or negative, a repeated series or a mix of plain and
//! shared labels in one family are left out and counted, and `finish` adds
//! `vmscope_exposition_series_skipped`. So a collector sees exactly the
//! families and series the text encoder writes (a test holds this over the
//! fixture snapshot). Neither fails.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use smallvec::SmallVec;

use super::writer::{
    Desc, Drain, Format, LabelSet, MetricType, SeriesText, TextWriter, Value, WriterState, le_text,
    valid_label_names, valid_metric_name,
};

/// The encoder a source writes into (see the module docs).
// The text arm is the large and the hot one: boxing it would allocate per
// exposition for the sake of the rare collector.
#[allow(clippy::large_enum_variant)]
pub enum MetricWriter<'a> {
    /// Text formats, appended to a `String`.
    Text(TextWriter<'a>),
    /// Structured samples, for pushers.
    Samples(&'a mut SampleCollector),
    /// A hash of the calls, for caches.
    Fingerprint(&'a mut Fingerprint),
    /// Text and the hash of the calls that wrote it, in one walk (a source
    /// read twice could change in between).
    Tee(Tee<'a>),
}

impl<'a> MetricWriter<'a> {
    /// Starts a new text exposition at the end of `out`.
    pub fn new(out: &'a mut String, format: Format) -> Self {
        MetricWriter::Text(TextWriter::new(out, format))
    }

    /// Starts a new text exposition that hands its text to `drain` in
    /// pieces of at least `at` bytes; see [`TextWriter::draining`].
    pub fn draining(out: &'a mut String, format: Format, drain: Drain<'a>, at: usize) -> Self {
        MetricWriter::Text(TextWriter::draining(out, format, drain, at))
    }

    /// Continues a text exposition whose beginning was written earlier.
    pub fn resume(out: &'a mut String, format: Format, prior: &'a WriterState) -> Self {
        MetricWriter::Text(TextWriter::resume(out, format, prior))
    }

    /// Continues a text exposition like [`MetricWriter::resume`] and
    /// hashes the calls into `fingerprint` as they are written.
    pub fn resume_tee(
        out: &'a mut String,
        format: Format,
        prior: &'a WriterState,
        fingerprint: &'a mut Fingerprint,
    ) -> Self {
        MetricWriter::Tee(Tee {
            text: TextWriter::resume(out, format, prior),
            fp: fingerprint,
        })
    }

    /// Collects samples into `into` instead of writing text.
    pub fn samples(into: &'a mut SampleCollector) -> Self {
        MetricWriter::Samples(into)
    }

    /// The text families written so far with their offsets (none when
    /// collecting samples).
    pub fn family_starts(&self) -> &[(&'static str, usize)] {
        match self {
            MetricWriter::Text(w) | MetricWriter::Tee(Tee { text: w, .. }) => w.family_starts(),
            MetricWriter::Samples(_) | MetricWriter::Fingerprint(_) => &[],
        }
    }

    /// The text format being written (Prometheus text or OpenMetrics),
    /// `None` for JSON and for the arms that write no text.
    pub fn text_format(&self) -> Option<Format> {
        match self {
            MetricWriter::Text(w) | MetricWriter::Tee(Tee { text: w, .. }) => {
                Some(w.format()).filter(|f| *f != Format::Json)
            }
            MetricWriter::Samples(_) | MetricWriter::Fingerprint(_) => None,
        }
    }

    /// See [`TextWriter::label_set`].
    pub fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        match self {
            MetricWriter::Text(w) => w.label_set(labels),
            MetricWriter::Samples(c) => c.label_set(labels),
            MetricWriter::Fingerprint(f) => f.label_set(labels),
            MetricWriter::Tee(t) => t.label_set(labels),
        }
    }

    /// Starts a family. Samples until the next `family` call belong to it.
    pub fn family(&mut self, desc: &'static Desc) {
        match self {
            MetricWriter::Text(w) => w.family(desc),
            MetricWriter::Samples(c) => c.family(desc),
            MetricWriter::Fingerprint(f) => f.family(desc),
            MetricWriter::Tee(t) => t.family(desc),
        }
    }

    /// One series of the current (gauge or counter) family.
    #[inline]
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        let value = value.into();
        match self {
            MetricWriter::Text(w) => w.sample(labels, value),
            MetricWriter::Samples(c) => c.sample(labels, value),
            MetricWriter::Fingerprint(f) => f.sample(labels, value),
            MetricWriter::Tee(t) => t.sample(labels, value),
        }
    }

    /// One series labelled with the shared `set` followed by `extra`; see
    /// [`TextWriter::sample_in`] for the rules.
    #[inline]
    pub fn sample_in(
        &mut self,
        set: LabelSet,
        extra: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        let value = value.into();
        match self {
            MetricWriter::Text(w) => w.sample_in(set, extra, value),
            MetricWriter::Samples(c) => c.sample_in(set, extra, value),
            MetricWriter::Fingerprint(f) => f.sample_in(set, extra, value),
            MetricWriter::Tee(t) => t.sample_in(set, extra, value),
        }
    }

    /// One histogram series; see [`TextWriter::histogram`].
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        match self {
            MetricWriter::Text(w) => w.histogram(labels, buckets, sum, count),
            MetricWriter::Samples(c) => c.histogram(labels, buckets, sum, count),
            MetricWriter::Fingerprint(f) => f.histogram(labels, buckets, sum, count),
            MetricWriter::Tee(t) => t.histogram(labels, buckets, sum, count),
        }
    }

    /// One histogram series, copied from `cache` when it holds this
    /// series at `version` already; see [`TextWriter::histogram_cached`].
    /// The other arms write it as [`MetricWriter::histogram`] does.
    pub fn histogram_cached(
        &mut self,
        cache: &mut SeriesText,
        version: u64,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        match self {
            MetricWriter::Text(w) => {
                w.histogram_cached(cache, version, labels, buckets, sum, count)
            }
            MetricWriter::Samples(c) => c.histogram(labels, buckets, sum, count),
            MetricWriter::Fingerprint(f) => f.histogram(labels, buckets, sum, count),
            MetricWriter::Tee(t) => {
                t.fp.histogram(labels, buckets, sum, count);
                t.text
                    .histogram_cached(cache, version, labels, buckets, sum, count);
            }
        }
    }

    /// Closes the current family; for text, what [`MetricWriter::resume`]
    /// needs to continue the exposition elsewhere.
    pub fn suspend(self) -> WriterState {
        match self {
            MetricWriter::Text(w) => w.suspend(),
            MetricWriter::Samples(c) => {
                c.close_family();
                WriterState::default()
            }
            MetricWriter::Fingerprint(_) => WriterState::default(),
            MetricWriter::Tee(t) => t.text.suspend(),
        }
    }

    /// Adds the skip counts and ends the exposition.
    pub fn finish(self) {
        match self {
            MetricWriter::Text(w) => w.finish(),
            MetricWriter::Samples(c) => c.finish(),
            MetricWriter::Fingerprint(_) => {}
            MetricWriter::Tee(t) => t.text.finish(),
        }
    }
}

/// The five calls of the vocabulary, implemented by each encoder. Most
/// sources write through [`MetricWriter`] (one `match` per call); a hot
/// source (the snapshot: every VM's series) matches once and runs code
/// made for the arm, so the text path is exactly the text writer's.
pub trait Encode {
    fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet;
    fn family(&mut self, desc: &'static Desc);
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>);
    fn sample_in(&mut self, set: LabelSet, extra: &[(&'static str, &str)], value: impl Into<Value>);
    fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64);
}

impl Encode for TextWriter<'_> {
    #[inline]
    fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        TextWriter::label_set(self, labels)
    }
    #[inline]
    fn family(&mut self, desc: &'static Desc) {
        TextWriter::family(self, desc);
    }
    #[inline]
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        TextWriter::sample(self, labels, value);
    }
    #[inline]
    fn sample_in(
        &mut self,
        set: LabelSet,
        extra: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        TextWriter::sample_in(self, set, extra, value);
    }
    #[inline]
    fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        TextWriter::histogram(self, labels, buckets, sum, count);
    }
}

impl Encode for SampleCollector {
    fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        SampleCollector::label_set(self, labels)
    }
    fn family(&mut self, desc: &'static Desc) {
        SampleCollector::family(self, desc);
    }
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        SampleCollector::sample(self, labels, value.into());
    }
    fn sample_in(
        &mut self,
        set: LabelSet,
        extra: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        SampleCollector::sample_in(self, set, extra, value.into());
    }
    fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        SampleCollector::histogram(self, labels, buckets, sum, count);
    }
}

/// A hash of every call a source makes, in order, and nothing written: two
/// runs of a source with equal fingerprints write the same text (given the
/// same format and the same writer state before them). Not a guard against
/// an adversary: a 64-bit foldhash with a fixed seed, over values the
/// process itself produced.
pub struct Fingerprint {
    h: foldhash::fast::FoldHasher<'static>,
    /// The hash of each label set's labels, by the set's number in the
    /// writer that numbered it: `sample_in` hashes the labels, not the
    /// number (the text writer numbers repeated sets once, this does not).
    sets: Vec<u64>,
}

impl Default for Fingerprint {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        static SEED: foldhash::fast::FixedState =
            foldhash::fast::FixedState::with_seed(0x0076_6d73_636f_7065);
        Fingerprint {
            h: SEED.build_hasher(),
            sets: Vec::new(),
        }
    }
}

impl Fingerprint {
    /// The hash of the calls so far.
    pub fn finish(&self) -> u64 {
        std::hash::Hasher::finish(&self.h)
    }

    fn str(&mut self, s: &str) {
        use std::hash::Hasher as _;
        // Length first: ("ab", "c") and ("a", "bc") differ.
        self.h.write_usize(s.len());
        self.h.write(s.as_bytes());
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        use std::hash::Hasher as _;
        self.h.write_usize(labels.len());
        for (k, v) in labels {
            self.str(k);
            self.str(v);
        }
    }

    fn value(&mut self, v: Value) {
        use std::hash::Hasher as _;
        match v {
            Value::U64(v) => {
                self.h.write_u8(0);
                self.h.write_u64(v);
            }
            Value::I64(v) => {
                self.h.write_u8(1);
                self.h.write_i64(v);
            }
            Value::F64(v) => {
                self.h.write_u8(2);
                self.h.write_u64(v.to_bits());
            }
        }
    }

    fn tag(&mut self, t: u8) {
        std::hash::Hasher::write_u8(&mut self.h, t);
    }

    /// Notes the labels of `set`, numbered by another writer.
    fn register(&mut self, set: LabelSet, labels: &[(&'static str, &str)]) {
        use std::hash::{BuildHasher as _, Hasher as _};
        // The labels alone: the two writers number the same set differently.
        let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
        h.write_usize(labels.len());
        for (k, v) in labels {
            h.write_usize(k.len());
            h.write(k.as_bytes());
            h.write_usize(v.len());
            h.write(v.as_bytes());
        }
        let i = set.index();
        if self.sets.len() <= i {
            self.sets.resize(i + 1, 0);
        }
        if let Some(slot) = self.sets.get_mut(i) {
            *slot = h.finish();
        }
    }
}

impl Encode for Fingerprint {
    fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        let set = LabelSet::from_index(self.sets.len());
        self.register(set, labels);
        set
    }

    fn family(&mut self, desc: &'static Desc) {
        self.tag(b'F');
        self.str(desc.name);
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        let value = value.into();
        self.tag(b'S');
        self.labels(labels);
        self.value(value);
    }

    fn sample_in(
        &mut self,
        set: LabelSet,
        extra: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        use std::hash::Hasher as _;
        let value = value.into();
        self.tag(b'I');
        let labels = self.sets.get(set.index()).copied().unwrap_or(u64::MAX);
        self.h.write_u64(labels);
        self.h.write_usize(extra.len());
        for (k, v) in extra {
            self.str(k);
            self.str(v);
        }
        self.value(value);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        use std::hash::Hasher as _;
        self.tag(b'H');
        self.labels(labels);
        self.h.write_usize(buckets.len());
        for (le, n) in buckets {
            self.h.write_u64(le.to_bits());
            self.h.write_u64(*n);
        }
        self.h.write_u64(sum.to_bits());
        self.h.write_u64(count);
    }
}

/// The [`MetricWriter::Tee`] arm: a text writer and a fingerprint of
/// what it was asked to write.
pub struct Tee<'a> {
    text: TextWriter<'a>,
    fp: &'a mut Fingerprint,
}

impl Encode for Tee<'_> {
    fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        let set = self.text.label_set(labels);
        self.fp.register(set, labels);
        set
    }
    fn family(&mut self, desc: &'static Desc) {
        self.fp.family(desc);
        self.text.family(desc);
    }
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        let value = value.into();
        self.fp.sample(labels, value);
        self.text.sample(labels, value);
    }
    fn sample_in(
        &mut self,
        set: LabelSet,
        extra: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        let value = value.into();
        self.fp.sample_in(set, extra, value);
        self.text.sample_in(set, extra, value);
    }
    fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        self.fp.histogram(labels, buckets, sum, count);
        self.text.histogram(labels, buckets, sum, count);
    }
}

/// One series as a value: a histogram gives one per bucket (`_bucket` with
/// `le`), `_sum` and `_count`, named as in the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: Value,
}

/// One family with at least one series (as in the text, a family without
/// series is not there).
#[derive(Debug, Clone)]
pub struct Family {
    pub desc: &'static Desc,
    pub samples: Vec<Sample>,
}

/// The labels of one admitted series, lent to a [`SeriesSink`]: a shared
/// set's labels, then the series' own, then a histogram bucket's `le`.
/// Names are distinct (the rules refuse a collision); not sorted.
#[derive(Debug, Clone, Copy)]
pub struct SeriesLabels<'x> {
    /// The shared set's number within this collection (the same set
    /// always has the same number), when the series has one: a sink may
    /// prepare a set's labels once for all of its series.
    set_id: Option<usize>,
    set: &'x [(&'static str, String)],
    /// A set's series' own labels (names fixed in the program).
    extra: &'x [(&'static str, &'x str)],
    /// A plain series' or histogram's labels.
    own: &'x [(&'x str, &'x str)],
    le: Option<&'x str>,
}

impl<'x> SeriesLabels<'x> {
    /// A plain series' or histogram's labels (`le`: a bucket's bound).
    fn plain(own: &'x [(&'x str, &'x str)], le: Option<&'x str>) -> Self {
        SeriesLabels {
            set_id: None,
            set: &[],
            extra: &[],
            own,
            le,
        }
    }

    /// A series of shared set `id` (its labels `set`) with its own `extra`.
    fn in_set(
        id: usize,
        set: &'x [(&'static str, String)],
        extra: &'x [(&'static str, &'x str)],
    ) -> Self {
        SeriesLabels {
            set_id: Some(id),
            set,
            extra,
            own: &[],
            le: None,
        }
    }

    /// The shared set (its number and labels), if the series has one.
    pub fn set(&self) -> Option<(usize, &'x [(&'static str, String)])> {
        self.set_id.map(|i| (i, self.set))
    }

    /// The labels that are not a shared set's: the series' own, then a
    /// histogram bucket's `le`.
    pub fn own(&self) -> impl Iterator<Item = (&'x str, &'x str)> + Clone + 'x {
        let (extra, own, le) = (self.extra, self.own, self.le);
        extra
            .iter()
            .map(|&(k, v)| (k, v))
            .chain(own.iter().copied())
            .chain(le.map(|v| ("le", v)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'x str, &'x str)> + Clone + 'x {
        let (set, extra, own, le) = (self.set, self.extra, self.own, self.le);
        set.iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra.iter().map(|&(k, v)| (k, v)))
            .chain(own.iter().copied())
            .chain(le.map(|v| ("le", v)))
    }

    pub fn len(&self) -> usize {
        self.set.len() + self.extra.len() + self.own.len() + usize::from(self.le.is_some())
    }

    /// A set's series' own labels, whose names are fixed in the program
    /// (a sink may key a cache on the names' addresses); empty for other
    /// series.
    pub fn extra(&self) -> &'x [(&'static str, &'x str)] {
        self.extra
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a [`SampleCollector`] puts the series its rules admit: as values
/// ([`Families`], the default), or straight into a wire format (the
/// remote_write encoder writes protobuf bytes as the series come, with no
/// per-series allocation).
pub trait SeriesSink: Send + 'static {
    /// A family's first admitted series follows.
    fn family(&mut self, desc: &'static Desc);
    /// One admitted series of the family last announced, named
    /// `desc.name` followed by `suffix` (`""`, `"_bucket"`, `"_sum"`,
    /// `"_count"`).
    fn series(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: SeriesLabels<'_>,
        value: Value,
    );
    /// While the collector replays the sink's last push
    /// ([`SampleCollector::replaying`]): if this is the series at the same
    /// place last time (name, suffix, labels; families follow from the
    /// series, [`family`](Self::family) is not called), take `value` for it
    /// and return true. Otherwise return false: the collector then
    /// [`restart`](Self::restart)s the whole push. A sink that keeps no
    /// last push returns false.
    fn replay(
        &mut self,
        _desc: &'static Desc,
        _suffix: &'static str,
        _labels: &SeriesLabels<'_>,
        _value: Value,
    ) -> bool {
        false
    }
    /// Back to where the push began (its last push kept, nothing of this
    /// one), after a replay that failed: the series come again, from the
    /// first, through every rule.
    fn restart(&mut self) {}
    /// For [`SampleCollector::into_sink`].
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// The default sink: families and series as values.
#[derive(Debug, Default)]
pub struct Families(pub Vec<Family>);

impl SeriesSink for Families {
    fn family(&mut self, desc: &'static Desc) {
        self.0.push(Family {
            desc,
            samples: Vec::new(),
        });
    }

    fn series(
        &mut self,
        desc: &'static Desc,
        suffix: &'static str,
        labels: SeriesLabels<'_>,
        value: Value,
    ) {
        let name = if suffix.is_empty() {
            desc.name.to_owned()
        } else {
            format!("{}{suffix}", desc.name)
        };
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if let Some(f) = self.0.last_mut() {
            f.samples.push(Sample {
                name,
                labels,
                value,
            });
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ok,
    Duplicate,
    Invalid,
}

/// A histogram's series in order (each bucket with its `le`, then `_sum`
/// and `_count`) given to `each` (suffix, labels, value) while it returns
/// true.
fn histogram_series(
    labels: &[(&str, &str)],
    buckets: &[(f64, u64)],
    sum: f64,
    count: u64,
    mut each: impl FnMut(&'static str, &SeriesLabels<'_>, Value) -> bool,
) {
    for (le, n) in buckets
        .iter()
        .copied()
        .chain(std::iter::once((f64::INFINITY, count)))
    {
        let le = le_text(le, Format::Text);
        if !each(
            "_bucket",
            &SeriesLabels::plain(labels, Some(&le)),
            Value::U64(n),
        ) {
            return;
        }
    }
    for (suffix, v) in [("_sum", Value::F64(sum)), ("_count", Value::U64(count))] {
        if !each(suffix, &SeriesLabels::plain(labels, None), v) {
            return;
        }
    }
}

/// Whether a replayed series passes: the current family's rules and
/// `value_ok`, then the sink's check that it is last push's series. Over
/// the collector's fields, not the collector, so that labels borrowing its
/// sets can be replayed.
fn passes_replay(
    current: Option<(&'static Desc, State)>,
    sink: &mut dyn SeriesSink,
    value_ok: impl FnOnce(&Desc) -> bool,
    suffix: &'static str,
    labels: &SeriesLabels<'_>,
    value: Value,
) -> bool {
    match current {
        Some((desc, State::Ok)) => value_ok(desc) && sink.replay(desc, suffix, labels, value),
        _ => false,
    }
}

/// Where a collector is with a replay of its sink's last push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Every rule runs (no replay asked, or after a restart).
    Off,
    /// Every series so far was the sink's last push's.
    On,
    /// One was not: the rest of the walk is ignored, and the push done
    /// again ([`SampleCollector::restart`]).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unused,
    Plain,
    Shared,
}

/// Whether two short byte strings (label names and values) are equal,
/// compared inline: the structured encoder and the push encoders compare
/// a few hundred thousand of a few bytes each per push, and the call to
/// the C library's `bcmp` that `==` makes was a tenth of a push in the
/// benchmark's agent, and 47% of a reused push in criterion (`perf`).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes at a time, then the rest byte by byte: a push compares
    // each VM's info labels (UUIDs, names: 200 bytes a VM) with last
    // push's, and byte by byte that was 9% of a replayed OTLP push (perf,
    // criterion's loop).
    let (x, y) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = x.remainder().iter().zip(y.remainder());
    let word = |c: &[u8]| c.first_chunk::<8>().map_or(0, |w| u64::from_ne_bytes(*w));
    let words = x.zip(y).fold(0u64, |d, (p, q)| d | (word(p) ^ word(q)));
    words == 0 && tail.fold(0u8, |d, (p, q)| d | (p ^ q)) == 0
}

/// [`same_bytes`] for strings.
#[inline]
pub(crate) fn same_str(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Whether two label lists are the same names and values in the same
/// order ([`same_str`] for each).
pub(crate) fn same_labels<V: AsRef<str>, W: AsRef<str>>(a: &[(&str, V)], b: &[(&str, W)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((k, v), (l, w))| same_str(k, l) && same_str(v.as_ref(), w.as_ref()))
}

/// The collector's hasher: label values come from outside (VM names,
/// owners), so randomly seeded, but not SipHash (a push hashes every
/// VM's label set).
type Hasher = foldhash::fast::RandomState;

/// A label set registered with `label_set`.
#[derive(Debug)]
struct SharedSet {
    labels: Vec<(&'static str, String)>,
    valid: bool,
    /// The number of the family it was last used in (0: never).
    used_in: u32,
}

/// Label blocks (one per series) kept back to back in buffers reused
/// from one check to the next: no allocation per series (a push writes
/// some 50 000). The storage of both duplicate checks below.
#[derive(Debug, Default)]
struct LabelBlocks {
    /// All names and values, back to back.
    text: String,
    /// (end of the name, end of the value) in `text`, per label, block
    /// after block.
    labels: Vec<(usize, usize)>,
    /// Where each block's labels start in `labels` (and the previous
    /// block's end).
    blocks: Vec<usize>,
}

impl LabelBlocks {
    fn clear(&mut self) {
        self.text.clear();
        self.labels.clear();
        self.blocks.clear();
    }

    fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Block `i`'s labels.
    fn get(&self, i: usize) -> impl Iterator<Item = (&str, &str)> {
        let from = self.blocks.get(i).copied().unwrap_or(0);
        let to = self.blocks.get(i + 1).copied().unwrap_or(self.labels.len());
        let mut at = if from == 0 {
            0
        } else {
            self.labels.get(from - 1).map_or(0, |l| l.1)
        };
        self.labels
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .map(move |&(name_end, value_end)| {
                let k = self.text.get(at..name_end).unwrap_or_default();
                let v = self.text.get(name_end..value_end).unwrap_or_default();
                at = value_end;
                (k, v)
            })
    }

    /// Whether block `i` is `labels`.
    fn is(&self, i: usize, labels: &[(&str, &str)]) -> bool {
        let mut mine = self.get(i);
        labels.iter().all(|(k, v)| {
            mine.next()
                .is_some_and(|(a, b)| same_str(a, k) && same_str(b, v))
        }) && mine.next().is_none()
    }

    /// Appends `labels` as a block; its number.
    fn push(&mut self, labels: &[(&str, &str)]) -> usize {
        self.blocks.push(self.labels.len());
        for (k, v) in labels {
            self.text.push_str(k);
            let name_end = self.text.len();
            self.text.push_str(v);
            self.labels.push((name_end, self.text.len()));
        }
        self.blocks.len() - 1
    }
}

/// The label blocks of a family's plain series and histograms, for the
/// duplicate check: found by hash (a family may have thousands), equal
/// labels decide.
#[derive(Debug, Default)]
struct SeenLabels {
    by_hash: HashMap<u64, SmallVec<[usize; 1]>, Hasher>,
    hasher: Hasher,
    seen: LabelBlocks,
}

impl SeenLabels {
    fn clear(&mut self) {
        self.by_hash.clear();
        self.seen.clear();
    }

    /// Adds `labels` unless the family has a series with the same ones;
    /// `false` if it has.
    fn insert(&mut self, labels: &[(&str, &str)]) -> bool {
        let h = self.hasher.hash_one(labels);
        if let Some(candidates) = self.by_hash.get(&h)
            && candidates.iter().any(|&i| self.seen.is(i, labels))
        {
            return false;
        }
        let i = self.seen.push(labels);
        self.by_hash.entry(h).or_default().push(i);
        true
    }
}

/// The extra labels of the series of one run of `sample_in` calls, for
/// the duplicate check: a run is a handful of series (vCPUs, interfaces,
/// modes), compared one by one.
#[derive(Debug, Default)]
struct RunExtras(LabelBlocks);

impl RunExtras {
    fn clear(&mut self) {
        self.0.clear();
    }

    /// Adds `extra` unless the run has a series with the same labels;
    /// `false` if it has.
    fn insert(&mut self, extra: &[(&'static str, &str)]) -> bool {
        if (0..self.0.len()).any(|i| self.0.is(i, extra)) {
            return false;
        }
        self.0.push(extra);
        true
    }
}

/// The structured encoder (the `Samples` arm): applies the text writer's
/// rules to each call and hands what they admit to its [`SeriesSink`].
pub struct SampleCollector {
    sink: Box<dyn SeriesSink>,
    names: HashSet<&'static str, Hasher>,
    current: Option<(&'static Desc, State)>,
    /// Whether the sink was told of the current family (first series).
    opened: bool,
    mode: Option<Mode>,
    /// Label blocks of the current family's plain series and histograms,
    /// for the duplicate check.
    seen: SeenLabels,
    sets: Vec<SharedSet>,
    /// Registered sets by the hash of their labels (as the text writer
    /// finds an equal set again: one set per distinct label block). By
    /// hash, not by an owned key: a push registers every VM's set, and a
    /// key was a second copy of each set's strings (measured: malloc was
    /// 7% of a push).
    set_index: HashMap<u64, SmallVec<[usize; 1]>, Hasher>,
    hasher: Hasher,
    family_no: u32,
    /// The set of the current run of `sample_in` calls, and the extra
    /// labels of the run's series so far: within a run, series differ only
    /// by those (the text writer's duplicate check, without keys).
    run: Option<usize>,
    run_extras: RunExtras,
    duplicate: u64,
    invalid: u64,
    replay: Replay,
}

impl std::fmt::Debug for SampleCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleCollector")
            .field("sets", &self.sets.len())
            .field("duplicate", &self.duplicate)
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

impl Default for SampleCollector {
    fn default() -> Self {
        Self::with_sink(Box::new(Families::default()))
    }
}

impl SampleCollector {
    /// A collector keeping series as values ([`Families`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A collector handing admitted series to `sink`.
    pub fn with_sink(sink: Box<dyn SeriesSink>) -> Self {
        SampleCollector {
            sink,
            names: HashSet::default(),
            current: None,
            opened: false,
            mode: None,
            seen: SeenLabels::default(),
            sets: Vec::new(),
            set_index: HashMap::default(),
            hasher: Hasher::default(),
            family_no: 0,
            run: None,
            run_extras: RunExtras::default(),
            duplicate: 0,
            invalid: 0,
            replay: Replay::Off,
        }
    }

    /// Replays the sink's last push: while each series is the one at the
    /// same place last time ([`SeriesSink::replay`]), the rules that
    /// depend only on labels and on the series before (label names, a
    /// set's collisions, repeated series) are not run again: the same
    /// series in the same order get the same verdicts, and a push that
    /// had none refused is the only kind replayed. Those that depend on
    /// values (a counter's sign, a histogram's buckets) and on the family
    /// (its name, a name repeated) still run. The first series that is
    /// not last push's, or that a rule refuses, ends the replay: the
    /// caller sees [`replay_failed`](Self::replay_failed) and walks again
    /// after [`restart`](Self::restart), with every rule.
    ///
    /// Why: on a steady host the push's series are last push's, and these
    /// rules were a third of a push's CPU (32 000 series at 1000 VMs,
    /// perf of the benchmark's agent).
    pub fn replaying(mut self) -> Self {
        self.replay = Replay::On;
        self
    }

    /// Whether a replay ended before the walk did (then [`restart`](Self::restart)).
    pub fn replay_failed(&self) -> bool {
        self.replay == Replay::Failed
    }

    /// Whether the walk was a replay that held to its end.
    pub fn replayed(&self) -> bool {
        self.replay == Replay::On
    }

    /// Forgets the walk so far and tells the sink to ([`SeriesSink::restart`]):
    /// the next walk runs every rule.
    pub fn restart(&mut self) {
        let sink = std::mem::replace(&mut self.sink, Box::new(Families::default()));
        *self = Self::with_sink(sink);
        self.sink.restart();
    }

    /// Series refused so far: (repeated, invalid).
    pub fn skipped(&self) -> (u64, u64) {
        (self.duplicate, self.invalid)
    }

    /// A replayed series: the family's and the value's rules
    /// (`value_ok`), then the sink's check that it is last push's.
    fn replay_one(
        &mut self,
        value_ok: impl FnOnce(&Desc) -> bool,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
        value: Value,
    ) -> bool {
        let ok = passes_replay(
            self.current,
            self.sink.as_mut(),
            value_ok,
            suffix,
            labels,
            value,
        );
        if !ok {
            self.replay = Replay::Failed;
        }
        ok
    }

    /// The sink, if it is a `T`.
    pub fn into_sink<T: SeriesSink>(self) -> Option<T> {
        self.sink.into_any().downcast::<T>().ok().map(|b| *b)
    }

    /// The families collected (empty when the sink is not [`Families`]),
    /// in the order they were written.
    pub fn into_families(self) -> Vec<Family> {
        self.into_sink::<Families>()
            .map(|f| f.0)
            .unwrap_or_default()
    }

    fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        if self.replay == Replay::Failed {
            // The walk is done again; its sets are not needed.
            return LabelSet::from_index(usize::MAX);
        }
        let h = self.hasher.hash_one(labels);
        let same = |s: &SharedSet| same_labels(&s.labels, labels);
        if let Some(&i) = self
            .set_index
            .get(&h)
            .and_then(|c| c.iter().find(|&&i| self.sets.get(i).is_some_and(same)))
        {
            return LabelSet::from_index(i);
        }
        self.sets.push(SharedSet {
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            valid: valid_label_names(labels, false),
            used_in: 0,
        });
        let i = self.sets.len() - 1;
        self.set_index.entry(h).or_default().push(i);
        LabelSet::from_index(i)
    }

    fn close_family(&mut self) {
        self.current = None;
    }

    fn family(&mut self, desc: &'static Desc) {
        if self.replay == Replay::Failed {
            return;
        }
        self.close_family();
        let valid = valid_metric_name(desc.name)
            && (desc.kind != MetricType::Counter
                || (desc.name.ends_with("_total") && desc.name.len() > "_total".len()));
        let state = if !valid {
            State::Invalid
        } else if !self.names.insert(desc.name) {
            State::Duplicate
        } else {
            State::Ok
        };
        self.current = Some((desc, state));
        self.opened = false;
        self.mode = Some(Mode::Unused);
        self.seen.clear();
        self.family_no = self.family_no.wrapping_add(1).max(1);
        self.run = None;
    }

    /// The current family if a series with `labels` may go into it; counts
    /// why not otherwise (the text writer's checks, in its order).
    fn admit(&mut self, labels: &[(&str, &str)], valid: impl FnOnce(&Desc) -> bool) -> bool {
        let Some((desc, state)) = self.current else {
            self.invalid += 1;
            return false;
        };
        match state {
            State::Duplicate => {
                self.duplicate += 1;
                false
            }
            State::Invalid => {
                self.invalid += 1;
                false
            }
            State::Ok => {
                let ok =
                    valid(desc) && valid_label_names(labels, desc.kind == MetricType::Histogram);
                if !ok {
                    self.invalid += 1;
                }
                ok
            }
        }
    }

    fn enter_mode(&mut self, mode: Mode) -> bool {
        match self.mode {
            Some(Mode::Unused) | None => {
                self.mode = Some(mode);
                true
            }
            Some(m) => m == mode,
        }
    }

    fn counter_or_gauge_ok(value: Value) -> impl FnOnce(&Desc) -> bool {
        move |d| match d.kind {
            MetricType::Gauge => true,
            MetricType::Counter => !value.is_nan_or_negative(),
            MetricType::Histogram => false,
        }
    }

    /// The current family, announced to the sink at its first series.
    fn open(&mut self) -> Option<&'static Desc> {
        let (desc, _) = self.current?;
        if !self.opened {
            self.sink.family(desc);
            self.opened = true;
        }
        Some(desc)
    }

    /// False (and counted) when a plain series or histogram repeats the
    /// labels of one of this family's.
    fn first_time(&mut self, labels: &[(&str, &str)]) -> bool {
        if self.seen.insert(labels) {
            true
        } else {
            self.duplicate += 1;
            false
        }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: Value) {
        match self.replay {
            Replay::Off => {}
            Replay::Failed => return,
            Replay::On => {
                let l = SeriesLabels::plain(labels, None);
                self.replay_one(Self::counter_or_gauge_ok(value), "", &l, value);
                return;
            }
        }
        if !self.admit(labels, Self::counter_or_gauge_ok(value)) {
            return;
        }
        if !self.enter_mode(Mode::Plain) {
            self.invalid += 1;
            return;
        }
        if !self.first_time(labels) {
            return;
        }
        let Some(desc) = self.open() else {
            return;
        };
        self.sink
            .series(desc, "", SeriesLabels::plain(labels, None), value);
    }

    fn sample_in(&mut self, set: LabelSet, extra: &[(&'static str, &str)], value: Value) {
        if self.replay == Replay::Failed {
            return;
        }
        let Some(shared) = self.sets.get(set.index()) else {
            self.invalid += 1;
            return;
        };
        if self.replay == Replay::On {
            // Of the set's rules only its validity runs (kept per set): the
            // extra labels' names, collisions and repeats are last push's.
            let l = SeriesLabels::in_set(set.index(), &shared.labels, extra);
            let value_ok = |d: &Desc| shared.valid && Self::counter_or_gauge_ok(value)(d);
            // Not `replay_one`: `l` borrows `self.sets`.
            if !passes_replay(self.current, self.sink.as_mut(), value_ok, "", &l, value) {
                self.replay = Replay::Failed;
            }
            return;
        }
        let set_valid = shared.valid;
        let collides = extra
            .iter()
            .any(|(k, _)| shared.labels.iter().any(|(n, _)| same_str(n, k)));
        if !set_valid
            || !valid_label_names(extra, false)
            || collides
            || !self.enter_mode(Mode::Shared)
        {
            self.invalid += 1;
            return;
        }
        if !self.admit(&[], Self::counter_or_gauge_ok(value)) {
            return;
        }
        if self.run != Some(set.index()) {
            let fam = self.family_no;
            match self.sets.get_mut(set.index()) {
                Some(s) if s.used_in != fam => s.used_in = fam,
                _ => {
                    self.duplicate += 1;
                    return;
                }
            }
            self.run = Some(set.index());
            self.run_extras.clear();
        }
        // Within a run, series differ only by their extra labels (a
        // handful: vCPUs, interfaces, modes).
        if !self.run_extras.insert(extra) {
            self.duplicate += 1;
            return;
        }
        let Some(desc) = self.open() else {
            return;
        };
        let Some(shared) = self.sets.get(set.index()) else {
            return;
        };
        let l = SeriesLabels::in_set(set.index(), &shared.labels, extra);
        self.sink.series(desc, "", l, value);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        let ordered = buckets.windows(2).all(|w| match w {
            [a, b] => a.0 < b.0 && a.1 <= b.1,
            _ => true,
        });
        let finite = buckets.iter().all(|b| b.0.is_finite());
        let within = buckets.last().is_none_or(|b| b.1 <= count);
        let valid = ordered && finite && within && !sum.is_nan();
        match self.replay {
            Replay::Off => {}
            Replay::Failed => return,
            Replay::On => return self.replay_histogram(labels, buckets, sum, count, valid),
        }
        if !self.admit(labels, |d| valid && d.kind == MetricType::Histogram) {
            return;
        }
        if !self.first_time(labels) {
            return;
        }
        let Some(desc) = self.open() else {
            return;
        };
        histogram_series(labels, buckets, sum, count, |suffix, l, v| {
            self.sink.series(desc, suffix, *l, v);
            true
        });
    }

    /// A histogram's series replayed ([`replaying`](Self::replaying)):
    /// `valid` is what its values make of it.
    fn replay_histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
        valid: bool,
    ) {
        // The family's and the values' rules once; the sink's check for
        // each series.
        if !(valid
            && self
                .current
                .is_some_and(|(d, _)| d.kind == MetricType::Histogram))
        {
            self.replay = Replay::Failed;
            return;
        }
        histogram_series(labels, buckets, sum, count, |suffix, l, v| {
            self.replay_one(|_| true, suffix, l, v)
        });
    }

    fn finish(&mut self) {
        let (duplicate, invalid) = (self.duplicate, self.invalid);
        self.family(&super::writer::SKIPPED);
        self.sample(&[("reason", "duplicate")], Value::U64(duplicate));
        self.sample(&[("reason", "invalid")], Value::U64(invalid));
        self.close_family();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::{Histogram, MetricSource, encode, fixture};

    #[test]
    fn a_family_refuses_exactly_the_repeated_label_blocks() {
        let mut s = SeenLabels::default();
        assert!(s.insert(&[("a", "1"), ("b", "2")]));
        assert!(!s.insert(&[("a", "1"), ("b", "2")]));
        // Same bytes, other boundaries: other labels.
        assert!(s.insert(&[("a", "12"), ("b", "")]));
        assert!(s.insert(&[("a1", ""), ("b", "2")]));
        assert!(s.insert(&[("b", "2"), ("a", "1")]));
        assert!(s.insert(&[("a", "1")]));
        assert!(s.insert(&[]));
        assert!(!s.insert(&[]));
        assert!(!s.insert(&[("a", "1")]));
        assert!(!s.insert(&[("a", "12"), ("b", "")]));
        assert!(s.seen.get(0).eq([("a", "1"), ("b", "2")]));
        assert!(s.seen.get(2).eq([("a1", ""), ("b", "2")]));
        s.clear();
        assert!(s.insert(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn same_bytes_sees_a_difference_at_any_place_and_any_length() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert!(same_bytes(&a, &a.clone()), "{len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_bytes(&a, &b), "{len} {at}");
            }
            // A prefix is not the same.
            if len > 0 {
                assert!(!same_bytes(&a, &a[..len - 1]), "{len}");
            }
        }
        assert!(same_str("vm-000001", "vm-000001"));
        assert!(!same_str("instance-000001", "instance-000002"));
    }

    #[test]
    fn a_run_refuses_exactly_the_repeated_extra_labels() {
        let mut r = RunExtras::default();
        assert!(r.insert(&[("vcpu", "1")]));
        assert!(!r.insert(&[("vcpu", "1")]));
        // Values are compared whole, not as prefixes of the buffer.
        assert!(r.insert(&[("vcpu", "12")]));
        assert!(r.insert(&[("vcpu", "")]));
        assert!(!r.insert(&[("vcpu", "")]));
        assert!(r.insert(&[("vcpu", "1"), ("mode", "")]));
        assert!(!r.insert(&[("vcpu", "1"), ("mode", "")]));
        assert!(r.insert(&[("mode", "1")]));
        assert!(r.insert(&[]));
        assert!(!r.insert(&[]));
        assert!(!r.insert(&[("vcpu", "12")]));
        r.clear();
        assert!(r.insert(&[("vcpu", "1")]));
    }

    type Series = (String, Vec<(String, String)>, f64);

    /// The families (`# TYPE` lines) and series of a Prometheus text
    /// exposition, parsed back.
    fn parse_text(text: &str) -> (Vec<String>, Vec<Series>) {
        let mut families = Vec::new();
        let mut series = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap();
            let name = line[..name_end].to_owned();
            let mut labels = Vec::new();
            let mut rest = &line[name_end..];
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                while !rest.starts_with('}') {
                    let eq = rest.find("=\"").unwrap();
                    let key = rest[..eq].to_owned();
                    let mut chars = rest[eq + 2..].char_indices();
                    let mut value = String::new();
                    let end = loop {
                        let (i, c) = chars.next().unwrap();
                        match c {
                            '"' => break eq + 2 + i + 1,
                            '\\' => match chars.next().unwrap().1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            c => value.push(c),
                        }
                    };
                    labels.push((key, value));
                    rest = rest[end..].strip_prefix(',').unwrap_or(&rest[end..]);
                }
                rest = &rest[1..];
            }
            let value = match rest.trim() {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap(),
            };
            series.push((name, labels, value));
        }
        (families, series)
    }

    fn as_f64(v: Value) -> f64 {
        match v {
            Value::U64(n) => n as f64,
            Value::I64(n) => n as f64,
            Value::F64(f) => f,
        }
    }

    static DUR: Desc = Desc::histogram("t_duration_seconds", "A histogram.");
    static TWICE: Desc = Desc::gauge("t_twice", "Written twice.");
    static NEG: Desc = Desc::counter("t_events_total", "A counter.");

    /// A source that uses the rest of the vocabulary, and breaks the rules
    /// in each way the writer counts.
    pub(crate) struct Odd;

    impl MetricSource for Odd {
        fn encode(&self, out: &mut MetricWriter<'_>) {
            static BOUNDS: [f64; 3] = [0.005, 0.25, 1.0];
            let mut h = Histogram::new(&BOUNDS);
            for v in [0.001, 0.1, 0.3, 7.0] {
                h.observe(v);
            }
            out.family(&DUR);
            h.write(out, &[("route", "/a \"b\"\\\n")]);
            h.write(out, &[("route", "/a \"b\"\\\n")]); // a repeated series
            h.write(out, &[("le", "x")]); // `le` is the histogram's own
            out.family(&TWICE);
            out.sample(&[], 1u64);
            out.family(&TWICE); // the family again
            out.sample(&[], 2u64);
            out.family(&NEG);
            out.sample(&[("k", "v")], -1i64); // a negative counter
            out.sample(&[("k", "w")], 3u64);
            let set = out.label_set(&[("vm_id", "a")]);
            out.sample_in(set, &[("cpu", "0")], 1.5);
            out.sample(&[("k", "x")], 1u64); // plain after shared labels
        }
    }

    #[test]
    fn the_sample_collector_sees_what_the_text_encoder_writes() {
        let mut snap = fixture::snapshot(7);
        snap.vms[1].name = "a \"quoted\" \\ name\nwith newline".into();
        let series = collected_as_written(&[&snap, &Odd]);
        assert!(series.len() > 200, "{}", series.len());
        // The skips were counted alike: 1 duplicate series + 1 duplicate
        // family; `le`, the negative counter and the mixed labels invalid.
        let skipped: Vec<&Series> = series
            .iter()
            .filter(|s| s.0 == "vmscope_exposition_series_skipped")
            .collect();
        assert_eq!(skipped[0].2, 2.0, "{skipped:?}");
        assert_eq!(skipped[1].2, 3.0, "{skipped:?}");
    }

    /// The name checks of shared sets give the text writer's verdicts in
    /// any order: a valid name list after a colliding one, the same extra
    /// names with a set whose own names collide with them.
    #[test]
    fn name_checks_of_shared_sets_agree_with_the_text_writer_in_any_order() {
        static SHARED: Desc = Desc::gauge("t_shared", "Shared sets.");
        struct Names;
        impl MetricSource for Names {
            fn encode(&self, out: &mut MetricWriter<'_>) {
                out.family(&SHARED);
                let a = out.label_set(&[("vm_id", "a"), ("vm_name", "x")]);
                let b = out.label_set(&[("vm_id", "b"), ("mode", "m")]);
                // (A set's series come together: `a`'s first, then `b`'s.)
                out.sample_in(a, &[("mode", "user")], 1u64);
                out.sample_in(a, &[("vm_name", "y")], 2u64); // collides
                out.sample_in(a, &[("mode", "system")], 3u64);
                out.sample_in(a, &[("__x", "1")], 4u64); // reserved name
                out.sample_in(a, &[("cpu", "0")], 5u64);
                out.sample_in(a, &[("cpu", "1"), ("cpu", "2")], 6u64); // repeated name
                out.sample_in(a, &[("mode", "idle")], 7u64);
                out.sample_in(b, &[("mode", "user")], 8u64); // collides with b's
                out.sample_in(b, &[("cpu", "0")], 9u64);
            }
        }
        let series = collected_as_written(&[&Names]);
        let values: Vec<f64> = series
            .iter()
            .filter(|s| s.0 == "t_shared")
            .map(|s| s.2)
            .collect();
        assert_eq!(values, [1.0, 3.0, 5.0, 7.0, 9.0]);
        let invalid = series.iter().find(|s| {
            s.0 == "vmscope_exposition_series_skipped"
                && s.1 == [("reason".to_owned(), "invalid".to_owned())]
        });
        assert_eq!(invalid.map(|s| s.2), Some(4.0), "{series:?}");
    }

    /// What a sample collector gets from `sources`, checked to be what the
    /// text writer writes (families, series, values, in order).
    fn collected_as_written(sources: &[&dyn MetricSource]) -> Vec<Series> {
        let text = encode(Format::Text, sources);

        let mut collector = SampleCollector::new();
        let mut w = MetricWriter::samples(&mut collector);
        for s in sources {
            s.encode(&mut w);
        }
        w.finish();

        let (text_families, text_series) = parse_text(&text);
        let collected = collector.into_families();
        let families: Vec<String> = collected.iter().map(|f| f.desc.name.to_owned()).collect();
        assert_eq!(families, text_families);
        let series: Vec<Series> = collected
            .iter()
            .flat_map(|f| &f.samples)
            .map(|s| (s.name.clone(), s.labels.clone(), as_f64(s.value)))
            .collect();
        assert_eq!(series.len(), text_series.len());
        for (got, want) in series.iter().zip(&text_series) {
            let same_value = got.2 == want.2 || (got.2.is_nan() && want.2.is_nan());
            assert!(
                got.0 == want.0 && got.1 == want.1 && same_value,
                "{got:?} != {want:?}"
            );
        }
        series
    }
}
