//! The text encoder ([`TextWriter`], the `Text` arm of
//! [`MetricWriter`](super::MetricWriter)): one writer, three wire formats.
//!
//! A [`MetricSource`](super::MetricSource) calls `family` with a static
//! [`Desc`], then `sample` (or `histogram`) once per series. The writer
//! appends straight into one `String` in the format chosen by the caller:
//!
//! - Prometheus text 0.0.4 (`# HELP`, `# TYPE`);
//! - OpenMetrics 1.0.0 (`# HELP`, `# TYPE`, `# UNIT`, counters as family `x`
//!   with sample `x_total`, `# EOF` at the end);
//! - JSON (`{"families":[{name,type,help,unit,samples:[{labels,value}]}]}`).
//!
//! Label sets that many series share (a VM's `vm_id` and `vm_name`) are
//! registered once with `label_set`: validated and escaped once per
//! exposition, then copied into each series by `sample_in`, which also
//! checks duplicates against the few series of that set rather than the
//! whole family.
//!
//! Design: nothing is allocated per series. Metadata lines are written on a
//! family's first sample, so an empty family costs nothing. Integers are
//! printed exactly; floats in the shortest round-trip form; NaN and the
//! infinities as `NaN`, `+Inf`, `-Inf` (JSON: the same spellings as strings,
//! since JSON numbers cannot hold them). No timestamps.
//!
//! Failure: the writer never produces invalid output and never panics. A
//! series whose label set was already written in the same family, a family
//! written twice, an invalid metric or label name, or a counter value that is
//! NaN or negative is left out and counted; `finish` exports
//! the counts as `vmscope_exposition_series_skipped{reason}` so the bug that
//! caused them is visible instead of breaking the scrape.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    Text,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// vmscope's JSON rendering of the same families (`/metrics.json`).
    Json,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Text, Format::OpenMetrics, Format::Json];

    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// The metric types vmscope emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    /// The name must end in `_total` (checked: otherwise the family is skipped).
    Counter,
    /// Samples go through [`MetricWriter::histogram`](super::MetricWriter::histogram).
    Histogram,
}

impl MetricType {
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Base units recognised as a name suffix; they become `# UNIT` lines.
const UNITS: [&str; 3] = ["seconds", "bytes", "ratio"];

/// A metric family's fixed description. Families are fixed in code, so these
/// are `static`s next to the code that writes them.
#[derive(Debug)]
pub struct Desc {
    /// The sample name: counters include `_total`; histograms are the base
    /// name (`_bucket`, `_sum`, `_count` are appended).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
}

impl Desc {
    pub const fn gauge(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            kind: MetricType::Gauge,
        }
    }
    pub const fn counter(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            kind: MetricType::Counter,
        }
    }
    pub const fn histogram(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            kind: MetricType::Histogram,
        }
    }

    /// The family name as OpenMetrics sees it (`_total` dropped for counters).
    pub fn family_name(&self) -> &'static str {
        match self.kind {
            MetricType::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        }
    }

    /// The unit, when the family name ends in one.
    pub fn unit(&self) -> Option<&'static str> {
        let fam = self.family_name();
        UNITS.into_iter().find(|u| {
            fam.strip_suffix(u)
                .is_some_and(|rest| rest.ends_with('_') && rest.len() > 1)
        })
    }
}

/// A sample value. Integers stay integers on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::U64(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::U64(u64::from(v))
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::U64(v as u64)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::U64(u64::from(v))
    }
}

impl Value {
    pub(super) fn is_nan_or_negative(self) -> bool {
        match self {
            Value::U64(_) => false,
            Value::I64(v) => v < 0,
            Value::F64(v) => v.is_nan() || v < 0.0,
        }
    }
}

/// Family names written: hashed with foldhash, not SipHash (a set is
/// filled for every request's tail: SipHash and the set's regrowth were
/// 1% of the server's CPU under a load of scrapes).
type NameSet = HashSet<&'static str, foldhash::fast::RandomState>;

/// What the prefix of an exposition left behind, so that a later writer can
/// append more families to it (the per-request tail after the cached
/// snapshot part) without repeating a family or a JSON comma mistake.
#[derive(Debug, Clone, Default)]
pub struct WriterState {
    families: NameSet,
    json_families: usize,
    skipped: Skipped,
}

/// One series' text as a [`TextWriter`] wrote it, kept by its source
/// for [`TextWriter::histogram_cached`]. Empty until the first write.
#[derive(Debug, Clone, Default)]
pub struct SeriesText {
    format: Option<Format>,
    /// The family it was written in (its name).
    family: Option<&'static str>,
    version: u64,
    text: String,
    /// Its identifying labels' byte range within `text`.
    labels: (usize, usize),
}

#[derive(Debug, Clone, Copy, Default)]
struct Skipped {
    duplicate: u64,
    invalid: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamState {
    /// `family()` was called; nothing written yet.
    Pending,
    /// Metadata written; at least one sample out.
    Open,
    /// A family written before: its samples are dropped and counted.
    Duplicate,
    /// A bad name (or a counter not ending in `_total`): likewise.
    Invalid,
}

/// Appends families and samples to one `String` in one [`Format`]: the
/// text arm of [`MetricWriter`](super::MetricWriter).
pub struct TextWriter<'a> {
    out: &'a mut String,
    format: Format,
    prior: Option<&'a WriterState>,
    families: NameSet,
    json_families: usize,
    skipped: Skipped,
    fam: Option<(&'static Desc, FamState)>,
    /// Label-block hash -> byte range of that block in `out`, for the
    /// current family: the exact duplicate check without copying labels.
    seen: HashMap<u64, (usize, usize), BuildHasherDefault<PreHashed>>,
    fam_samples: usize,
    sets: LabelSets,
    /// Where each family written so far starts in `out` (its metadata).
    starts: Vec<(&'static str, usize)>,
    /// How the current family's samples are labelled: one family uses
    /// either plain label slices or shared sets, so that each kind of
    /// duplicate check sees every series it must compare against.
    fam_mode: FamMode,
    /// Where the text goes in pieces ([`TextWriter::draining`]), and from
    /// how many bytes on.
    drain: Option<(Drain<'a>, usize)>,
    /// Bucket bounds as written, for the next series with the same ones.
    les: LeTexts,
}

/// Histogram bounds as `le` text, formatted once per writer: a histogram
/// family's series share their bounds, and formatting a float was a
/// tenth of the HTTP server's own histograms' share of every scrape.
#[derive(Default)]
struct LeTexts {
    text: String,
    /// (bound's bits, range in `text`); at most [`LeTexts::MAX`].
    spans: Vec<(u64, u32, u32)>,
}

impl LeTexts {
    const MAX: usize = 64;

    fn get(&self, le: f64) -> Option<&str> {
        let bits = le.to_bits();
        let &(_, a, b) = self.spans.iter().find(|s| s.0 == bits)?;
        self.text.get(a as usize..b as usize)
    }

    fn keep(&mut self, le: f64, text: &str) {
        if self.spans.len() >= Self::MAX {
            return;
        }
        if self.spans.is_empty() {
            self.spans.reserve(16);
            self.text.reserve(16 * 8);
        }
        let a = self.text.len();
        self.text.push_str(text);
        #[allow(clippy::cast_possible_truncation)] // 64 short numbers
        self.spans
            .push((le.to_bits(), a as u32, self.text.len() as u32));
    }
}

/// Takes a streaming writer's text ([`TextWriter::draining`]): whole
/// families, with where each begins in it.
pub type Drain<'a> = &'a mut dyn FnMut(&str, &[(&'static str, usize)]);

/// A label set registered with [`MetricWriter::label_set`](super::MetricWriter::label_set); valid only
/// with the writer that returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelSet(u32);

impl LabelSet {
    /// The handle of the `i`th set (the sample collector numbers its own).
    pub(super) fn from_index(i: usize) -> Self {
        LabelSet(u32::try_from(i).unwrap_or(u32::MAX))
    }

    pub(super) fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamMode {
    Unused,
    Plain,
    Shared,
}

/// The shared label sets of one writer.
#[derive(Default)]
struct LabelSets {
    /// Every set's rendered block (`k="v",k="v"` or `"k":"v","k":"v"`).
    buf: String,
    /// Per set: block range in `buf`, label-name range in `names`, and
    /// whether its names were valid.
    entries: Vec<SetEntry>,
    names: Vec<&'static str>,
    /// Block hash -> first set id with that hash (identical blocks share an id).
    by_hash: HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
    /// Per set: the family number it was last used in, so that a set that
    /// comes back after other sets in one family is caught (its earlier
    /// series are no longer in the per-run duplicate check).
    used_in: Vec<u32>,
    /// Number of the current family (starts at 1; 0 = never used).
    family_no: u32,
    /// The set whose samples are being written, and the byte ranges in
    /// `out` of the extra labels of its samples so far in this family.
    run: Option<u32>,
    run_extras: Vec<(usize, usize)>,
    /// Recently checked extra label names, see [`LabelSets::known_name`].
    valid_names: [(usize, usize); 4],
}

impl LabelSets {
    /// Whether `name` is a valid label name, remembering the last few
    /// names that were: extra label names are the same few `'static`
    /// strings on every series, so identity (address, length) is enough
    /// to know one was checked.
    fn known_name(&mut self, name: &'static str) -> bool {
        let key = (name.as_ptr() as usize, name.len());
        if self.valid_names.contains(&key) {
            return true;
        }
        let ok = valid_label_names(&[(name, "")], false);
        if ok {
            self.valid_names.rotate_right(1);
            self.valid_names[0] = key;
        }
        ok
    }
}

#[derive(Debug, Clone, Copy)]
struct SetEntry {
    block: (u32, u32),
    names: (u32, u32),
    valid: bool,
}

impl<'a> TextWriter<'a> {
    /// Starts a new exposition at the end of `out`.
    pub fn new(out: &'a mut String, format: Format) -> Self {
        if format == Format::Json {
            out.push_str("{\"families\":[");
        }
        Self::with_prior(out, format, None)
    }

    /// Continues an exposition whose beginning was written earlier (and
    /// described by `prior`); `out` holds only the continuation.
    pub fn resume(out: &'a mut String, format: Format, prior: &'a WriterState) -> Self {
        Self::with_prior(out, format, Some(prior))
    }

    /// Starts a new exposition in `out` that hands its text to `drain`
    /// as it goes: whenever a family is about to be written and `out`
    /// holds at least `at` bytes, `out` (whole families, the first with
    /// whatever preceded it) goes to `drain` and is cleared; the rest goes
    /// at [`TextWriter::suspend`]. What `drain` is given, one piece after
    /// the other, is the body [`TextWriter::new`] would have written, cut
    /// where [`TextWriter::family_starts`] would have said. Why: at 10 000
    /// VMs the exposition is 50 MB of text, which a gzip-only scraper
    /// never needs whole.
    pub fn draining(out: &'a mut String, format: Format, drain: Drain<'a>, at: usize) -> Self {
        let mut w = Self::new(out, format);
        w.drain = Some((drain, at));
        w
    }

    fn with_prior(out: &'a mut String, format: Format, prior: Option<&'a WriterState>) -> Self {
        TextWriter {
            out,
            format,
            prior,
            // The per-request tail writes about 15 families.
            families: NameSet::with_capacity_and_hasher(16, Default::default()),
            json_families: prior.map_or(0, |p| p.json_families),
            skipped: prior.map_or_else(Skipped::default, |p| p.skipped),
            fam: None,
            // Sized for a small family at once (not grown 0-3-7-14 again
            // by each of the per-request tail's writers).
            seen: HashMap::with_capacity_and_hasher(16, Default::default()),
            fam_samples: 0,
            sets: LabelSets::default(),
            starts: Vec::new(),
            fam_mode: FamMode::Unused,
            drain: None,
            les: LeTexts::default(),
        }
    }

    /// The families written so far, each with the offset in `out` where
    /// its metadata begins (the gzip cache cuts the body there).
    pub fn family_starts(&self) -> &[(&'static str, usize)] {
        &self.starts
    }

    /// Registers labels that many series of this exposition share and
    /// returns a handle for [`MetricWriter::sample_in`](super::MetricWriter::sample_in). The names are
    /// checked and the values escaped here, once. A set with invalid names
    /// is remembered as invalid: its samples are skipped and counted.
    pub fn label_set(&mut self, labels: &[(&'static str, &str)]) -> LabelSet {
        let sets = &mut self.sets;
        let valid = valid_label_names(labels, false);
        let start = sets.buf.len();
        label_pairs(&mut sets.buf, self.format, labels, false);
        let end = sets.buf.len();
        let block = sets.buf.as_bytes().get(start..end).unwrap_or_default();
        let h = hash_bytes(block) ^ u64::from(valid);
        if let Some(&id) = sets.by_hash.get(&h)
            && let Some(e) = sets.entries.get(id as usize)
            && e.valid == valid
            && sets
                .buf
                .as_bytes()
                .get(e.block.0 as usize..e.block.1 as usize)
                == Some(block)
        {
            sets.buf.truncate(start);
            return LabelSet(id);
        }
        // Offsets as u32: an exposition is far below 4 GiB; saturate rather
        // than wrap if a caller ever registers that much.
        let n0 = sets.names.len();
        sets.names.extend(labels.iter().map(|(k, _)| *k));
        let to32 = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        let id = to32(sets.entries.len());
        sets.entries.push(SetEntry {
            block: (to32(start), to32(end)),
            names: (to32(n0), to32(sets.names.len())),
            valid,
        });
        sets.used_in.push(0);
        sets.by_hash.entry(h).or_insert(id);
        LabelSet(id)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Starts a family. Samples until the next `family` call belong to it.
    pub fn family(&mut self, desc: &'static Desc) {
        self.close_family();
        let dup = self.families.contains(desc.name)
            || self.prior.is_some_and(|p| p.families.contains(desc.name));
        let valid = valid_metric_name(desc.name)
            && (desc.kind != MetricType::Counter
                || (desc.name.ends_with("_total") && desc.name.len() > "_total".len()));
        let state = if !valid {
            FamState::Invalid
        } else if dup {
            FamState::Duplicate
        } else {
            self.families.insert(desc.name);
            FamState::Pending
        };
        self.fam = Some((desc, state));
        self.seen.clear();
        self.fam_samples = 0;
        self.fam_mode = FamMode::Unused;
        self.sets.family_no = self.sets.family_no.wrapping_add(1).max(1);
        self.sets.run = None;
        self.sets.run_extras.clear();
    }

    /// Writes one series of the current (gauge or counter) family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) {
        let value = value.into();
        let Some(desc) = self.sample_family(labels, |d| match d.kind {
            MetricType::Gauge => true,
            MetricType::Counter => !value.is_nan_or_negative(),
            MetricType::Histogram => false,
        }) else {
            return;
        };
        if !self.enter_mode(FamMode::Plain) {
            self.skipped.invalid += 1;
            return;
        }
        let line_start = self.out.len();
        let (lb_start, lb_end) = match self.format {
            Format::Json => {
                self.json_sample_open();
                let r = self.json_labels(labels);
                self.out.push_str(",\"value\":");
                self.json_value(value);
                self.out.push('}');
                r
            }
            Format::Text | Format::OpenMetrics => {
                self.out.push_str(desc.name);
                let r = self.text_labels(labels, None);
                self.out.push(' ');
                self.text_value(value);
                self.out.push('\n');
                r
            }
        };
        self.commit_series(line_start, lb_start, lb_end);
    }

    /// Writes one series of the current (gauge or counter) family labelled
    /// with the shared `set` followed by `extra`. All samples of one set
    /// in a family must come together (a set that comes back after another
    /// set is skipped as a duplicate); a family takes either `sample_in` or
    /// `sample`, not both.
    pub fn sample_in(
        &mut self,
        set: LabelSet,
        extra: &[(&'static str, &str)],
        value: impl Into<Value>,
    ) {
        let value = value.into();
        let Some(entry) = self.sets.entries.get(set.0 as usize).copied() else {
            self.skipped.invalid += 1;
            return;
        };
        let names_ok = match extra {
            [] => true,
            [(k, _)] => self.sets.known_name(k),
            _ => valid_label_names(extra, false),
        };
        let set_names = self
            .sets
            .names
            .get(entry.names.0 as usize..entry.names.1 as usize)
            .unwrap_or_default();
        if !entry.valid
            || !names_ok
            || extra.iter().any(|(k, _)| set_names.iter().any(|n| n == k))
            || !self.enter_mode(FamMode::Shared)
        {
            self.skipped.invalid += 1;
            return;
        }
        // Label names checked above.
        let Some(desc) = self.sample_family(&[], |d| match d.kind {
            MetricType::Gauge => true,
            MetricType::Counter => !value.is_nan_or_negative(),
            MetricType::Histogram => false,
        }) else {
            return;
        };
        if self.sets.run != Some(set.0) {
            let fam = self.sets.family_no;
            match self.sets.used_in.get_mut(set.0 as usize) {
                Some(used) if *used != fam => *used = fam,
                _ => {
                    self.skipped.duplicate += 1;
                    return;
                }
            }
            self.sets.run = Some(set.0);
            self.sets.run_extras.clear();
        }
        // Taken out for the write so that `block` does not borrow `self`.
        let sets_buf = std::mem::take(&mut self.sets.buf);
        let block = sets_buf
            .get(entry.block.0 as usize..entry.block.1 as usize)
            .unwrap_or_default();
        let line_start = self.out.len();
        let (x_start, x_end) = match self.format {
            Format::Json => {
                self.json_sample_open();
                self.out.push('{');
                self.out.push_str(block);
                let start = self.out.len();
                label_pairs(self.out, self.format, extra, !block.is_empty());
                let end = self.out.len();
                self.out.push_str("},\"value\":");
                self.json_value(value);
                self.out.push('}');
                (start, end)
            }
            Format::Text | Format::OpenMetrics => {
                self.out.push_str(desc.name);
                let any = !block.is_empty() || !extra.is_empty();
                if any {
                    self.out.push('{');
                }
                self.out.push_str(block);
                let start = self.out.len();
                label_pairs(self.out, self.format, extra, !block.is_empty());
                let end = self.out.len();
                if any {
                    self.out.push('}');
                }
                self.out.push(' ');
                self.text_value(value);
                self.out.push('\n');
                (start, end)
            }
        };
        self.sets.buf = sets_buf;
        // Within a set, series differ only by their extra labels: compare
        // them with this run's earlier ones (a handful: vCPUs, interfaces).
        let bytes = self.out.as_bytes();
        let this = bytes.get(x_start..x_end).unwrap_or_default();
        let dup = self
            .sets
            .run_extras
            .iter()
            .any(|&(s, e)| bytes.get(s..e) == Some(this));
        if dup {
            self.out.truncate(line_start);
            self.skipped.duplicate += 1;
            return;
        }
        self.sets.run_extras.push((x_start, x_end));
        self.fam_samples += 1;
    }

    /// Records which kind of labels the current family uses; false (and
    /// nothing changes) when the family already used the other kind.
    fn enter_mode(&mut self, mode: FamMode) -> bool {
        match self.fam_mode {
            FamMode::Unused => {
                self.fam_mode = mode;
                true
            }
            m => m == mode,
        }
    }

    /// Writes one histogram series: `buckets` are (upper bound, cumulative
    /// count) in increasing order, without `+Inf` (added from `count`).
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        if let Some((line_start, _, range)) = self.histogram_series(labels, buckets, sum, count) {
            self.commit_series(line_start, range.0, range.1);
        }
    }

    /// [`TextWriter::histogram`], or a copy of the same series' text from
    /// `cache` when it was written there at the same `version` (the
    /// source's word that the values are unchanged: a histogram's count)
    /// for this format and family. Otherwise written and kept in `cache`.
    /// For a source that writes many histograms on every request of
    /// which few change between two requests (the HTTP server's own
    /// request durations: one series per route, method and status, and
    /// only the one being scraped moves). JSON is always written.
    pub fn histogram_cached(
        &mut self,
        cache: &mut SeriesText,
        version: u64,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        if self.format == Format::Json {
            return self.histogram(labels, buckets, sum, count);
        }
        let hit = cache.version == version
            && cache.format == Some(self.format)
            && self.fam.is_some_and(|(d, _)| cache.family == Some(d.name));
        if hit {
            // The series was valid when it was kept, with these labels and
            // values: only the family's state is checked again.
            if self
                .sample_family(&[], |d| d.kind == MetricType::Histogram)
                .is_none()
            {
                return;
            }
            let line_start = self.out.len();
            self.out.push_str(&cache.text);
            let (s, e) = cache.labels;
            self.commit_series(line_start, line_start + s, line_start + e);
            return;
        }
        let Some((line_start, desc, range)) = self.histogram_series(labels, buckets, sum, count)
        else {
            return;
        };
        cache.text.clear();
        cache
            .text
            .push_str(self.out.get(line_start..).unwrap_or_default());
        cache.labels = (
            range.0.saturating_sub(line_start),
            range.1.saturating_sub(line_start),
        );
        cache.version = version;
        cache.format = Some(self.format);
        cache.family = Some(desc.name);
        self.commit_series(line_start, range.0, range.1);
    }

    /// Checks a histogram series against the current family (writing the
    /// family's metadata before its first series) and writes its lines,
    /// not yet committed: where they start, the family, and the range of
    /// the identifying labels. `None`: skipped.
    fn histogram_series(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> Option<(usize, &'static Desc, (usize, usize))> {
        let ordered = buckets.windows(2).all(|w| match w {
            [a, b] => a.0 < b.0 && a.1 <= b.1,
            _ => true,
        });
        let finite = buckets.iter().all(|b| b.0.is_finite());
        let within = buckets.last().is_none_or(|b| b.1 <= count);
        let valid = ordered && finite && within && !sum.is_nan();
        let desc = self.sample_family(labels, |d| valid && d.kind == MetricType::Histogram)?;
        let line_start = self.out.len();
        let range = self.histogram_lines(desc, labels, buckets, sum, count);
        Some((line_start, desc, range))
    }

    /// The lines of one histogram series; returns the byte range of its
    /// identifying labels (for the duplicate check).
    fn histogram_lines(
        &mut self,
        desc: &'static Desc,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> (usize, usize) {
        match self.format {
            Format::Json => {
                self.json_sample_open();
                let r = self.json_labels(labels);
                self.out.push_str(",\"buckets\":[");
                for (i, (le, n)) in buckets.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.out.push_str("{\"le\":");
                    self.json_value(Value::F64(*le));
                    self.out.push_str(",\"count\":");
                    self.json_value(Value::U64(*n));
                    self.out.push('}');
                }
                if !buckets.is_empty() {
                    self.out.push(',');
                }
                self.out.push_str("{\"le\":\"+Inf\",\"count\":");
                self.json_value(Value::U64(count));
                self.out.push_str("}],\"sum\":");
                self.json_value(Value::F64(sum));
                self.out.push_str(",\"count\":");
                self.json_value(Value::U64(count));
                self.out.push('}');
                r
            }
            Format::Text | Format::OpenMetrics => {
                // The labels are escaped once, on the first line, and
                // copied onto the others (a histogram is 10-20 lines).
                let mut range = (0, 0);
                let mut pairs = String::new();
                for (i, (le, n)) in buckets
                    .iter()
                    .copied()
                    .chain(std::iter::once((f64::INFINITY, count)))
                    .enumerate()
                {
                    self.out.push_str(desc.name);
                    self.out.push_str("_bucket");
                    if i == 0 {
                        range = self.text_labels(labels, Some(le));
                        pairs = self
                            .out
                            .get(range.0 + 1..range.1)
                            .unwrap_or_default()
                            .to_owned();
                    } else {
                        self.out.push('{');
                        self.out.push_str(&pairs);
                        if !pairs.is_empty() {
                            self.out.push(',');
                        }
                        self.out.push_str("le=\"");
                        self.push_le(le);
                        self.out.push_str("\"}");
                    }
                    self.out.push(' ');
                    self.text_value(Value::U64(n));
                    self.out.push('\n');
                }
                for (suffix, v) in [("_sum", Value::F64(sum)), ("_count", Value::U64(count))] {
                    self.out.push_str(desc.name);
                    self.out.push_str(suffix);
                    if !pairs.is_empty() {
                        self.out.push('{');
                        self.out.push_str(&pairs);
                        self.out.push('}');
                    }
                    self.out.push(' ');
                    self.text_value(v);
                    self.out.push('\n');
                }
                range
            }
        }
    }

    /// Closes the current family and returns what a [`MetricWriter::resume`](super::MetricWriter::resume)
    /// needs to continue this exposition elsewhere.
    pub fn suspend(mut self) -> WriterState {
        self.close_family();
        if !self.out.is_empty() {
            self.hand_over();
        }
        let mut families = std::mem::take(&mut self.families);
        if let Some(p) = self.prior {
            families.extend(p.families.iter().copied());
        }
        WriterState {
            families,
            json_families: self.json_families,
            skipped: self.skipped,
        }
    }

    /// Writes the skip counts and the format's trailer (`# EOF`, `]}`).
    pub fn finish(mut self) {
        let Skipped { duplicate, invalid } = self.skipped;
        self.family(&SKIPPED);
        self.sample(&[("reason", "duplicate")], duplicate);
        self.sample(&[("reason", "invalid")], invalid);
        self.close_family();
        match self.format {
            Format::Text => {}
            Format::OpenMetrics => self.out.push_str("# EOF\n"),
            Format::Json => self.out.push_str("]}"),
        }
    }

    /// Checks the current family, the value (`valid`) and the label names,
    /// and writes the family's metadata before its first sample.
    fn sample_family(
        &mut self,
        labels: &[(&str, &str)],
        valid: impl FnOnce(&Desc) -> bool,
    ) -> Option<&'static Desc> {
        let Some((desc, state)) = self.fam else {
            self.skipped.invalid += 1;
            return None;
        };
        match state {
            FamState::Duplicate => {
                self.skipped.duplicate += 1;
                return None;
            }
            FamState::Invalid => {
                self.skipped.invalid += 1;
                return None;
            }
            FamState::Pending | FamState::Open => {}
        }
        if !valid(desc) || !valid_label_names(labels, desc.kind == MetricType::Histogram) {
            self.skipped.invalid += 1;
            return None;
        }
        if state == FamState::Pending {
            self.write_metadata(desc);
            self.fam = Some((desc, FamState::Open));
        }
        Some(desc)
    }

    /// A draining writer's text so far to its drain; `out` starts over.
    /// Nothing for a writer that does not drain.
    fn hand_over(&mut self) {
        if let Some((drain, _)) = self.drain.as_mut() {
            drain(self.out, &self.starts);
            self.out.clear();
            self.starts.clear();
        }
    }

    fn write_metadata(&mut self, desc: &'static Desc) {
        // Only here, before a family's first byte: the byte ranges the
        // duplicate checks keep are the current family's.
        let due = |(_, at): &(Drain<'a>, usize)| self.out.len() >= *at;
        if !self.starts.is_empty() && self.drain.as_ref().is_some_and(due) {
            self.hand_over();
        }
        self.starts.push((desc.name, self.out.len()));
        match self.format {
            Format::Text => {
                self.out.push_str("# HELP ");
                self.out.push_str(desc.name);
                self.out.push(' ');
                escape_help(self.out, desc.help, false);
                self.out.push_str("\n# TYPE ");
                self.out.push_str(desc.name);
                self.out.push(' ');
                self.out.push_str(desc.kind.as_str());
                self.out.push('\n');
            }
            Format::OpenMetrics => {
                let fam = desc.family_name();
                self.out.push_str("# HELP ");
                self.out.push_str(fam);
                self.out.push(' ');
                escape_help(self.out, desc.help, true);
                self.out.push_str("\n# TYPE ");
                self.out.push_str(fam);
                self.out.push(' ');
                self.out.push_str(desc.kind.as_str());
                self.out.push('\n');
                if let Some(unit) = desc.unit() {
                    self.out.push_str("# UNIT ");
                    self.out.push_str(fam);
                    self.out.push(' ');
                    self.out.push_str(unit);
                    self.out.push('\n');
                }
            }
            Format::Json => {
                if self.json_families > 0 {
                    self.out.push(',');
                }
                self.json_families += 1;
                self.out.push_str("{\"name\":");
                json_string(self.out, desc.name);
                self.out.push_str(",\"type\":\"");
                self.out.push_str(desc.kind.as_str());
                self.out.push_str("\",\"help\":");
                json_string(self.out, desc.help);
                self.out.push_str(",\"unit\":\"");
                self.out.push_str(desc.unit().unwrap_or(""));
                self.out.push_str("\",\"samples\":[");
            }
        }
    }

    fn close_family(&mut self) {
        if let Some((_, FamState::Open)) = self.fam
            && self.format == Format::Json
        {
            self.out.push_str("]}");
        }
        self.fam = None;
    }

    /// Keeps the series just written unless its label block repeats one
    /// already written in this family; then removes it and counts it.
    fn commit_series(&mut self, line_start: usize, lb_start: usize, lb_end: usize) {
        let block = self
            .out
            .as_bytes()
            .get(lb_start..lb_end)
            .unwrap_or_default();
        let h = hash_bytes(block);
        if let Some(&(s, e)) = self.seen.get(&h) {
            if self.out.as_bytes().get(s..e) == Some(block) {
                self.out.truncate(line_start);
                self.skipped.duplicate += 1;
                return;
            }
            // A true 64-bit hash collision between different label sets:
            // keep the series; only the first range stays remembered.
        } else {
            self.seen.insert(h, (lb_start, lb_end));
        }
        self.fam_samples += 1;
    }

    fn json_sample_open(&mut self) {
        if self.fam_samples > 0 {
            self.out.push(',');
        }
        self.out.push_str("{\"labels\":");
    }

    /// `{"k":"v",...}`; returns its byte range.
    fn json_labels(&mut self, labels: &[(&str, &str)]) -> (usize, usize) {
        let start = self.out.len();
        self.out.push('{');
        label_pairs(self.out, Format::Json, labels, false);
        self.out.push('}');
        (start, self.out.len())
    }

    /// `{k="v",...[,le="x"]}` (nothing when there are no labels); returns
    /// the byte range of the part that identifies the series (without `le`).
    fn text_labels(&mut self, labels: &[(&str, &str)], le: Option<f64>) -> (usize, usize) {
        let start = self.out.len();
        if labels.is_empty() && le.is_none() {
            return (start, start);
        }
        self.out.push('{');
        label_pairs(self.out, self.format, labels, false);
        let end = self.out.len();
        if let Some(le) = le {
            if !labels.is_empty() {
                self.out.push(',');
            }
            self.out.push_str("le=\"");
            self.push_le(le);
            self.out.push('"');
        }
        self.out.push('}');
        (start, end)
    }

    /// `le` as [`write_le`] writes it, from [`LeTexts`] when known.
    fn push_le(&mut self, le: f64) {
        if let Some(t) = self.les.get(le) {
            self.out.push_str(t);
            return;
        }
        let start = self.out.len();
        write_le(self.out, le, self.format);
        if let Some(t) = self.out.get(start..) {
            self.les.keep(le, t);
        }
    }

    fn text_value(&mut self, v: Value) {
        match v {
            Value::U64(n) => self.out.push_str(itoa::Buffer::new().format(n)),
            Value::I64(n) => self.out.push_str(itoa::Buffer::new().format(n)),
            Value::F64(f) if f.is_nan() => self.out.push_str("NaN"),
            Value::F64(f) if f == f64::INFINITY => self.out.push_str("+Inf"),
            Value::F64(f) if f == f64::NEG_INFINITY => self.out.push_str("-Inf"),
            Value::F64(f) => write_number(self.out, f),
        }
    }

    fn json_value(&mut self, v: Value) {
        match v {
            Value::F64(f) if f.is_nan() => self.out.push_str("\"NaN\""),
            Value::F64(f) if f == f64::INFINITY => self.out.push_str("\"+Inf\""),
            Value::F64(f) if f == f64::NEG_INFINITY => self.out.push_str("\"-Inf\""),
            other => self.text_value(other),
        }
    }
}

/// A finite float: as an integer when it is one exactly (|f| < 2^53), else
/// the shortest round-trip form (`0.25`, `1e-7`, `1e+20`; zmij), which Go's
/// `ParseFloat`, Python's `float` and JSON all read.
fn write_number(out: &mut String, f: f64) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.fract() == 0.0 && f.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)] // integral and < 2^53: exact
        out.push_str(itoa::Buffer::new().format(f as i64));
    } else {
        out.push_str(zmij::Buffer::new().format_finite(f));
    }
}

/// Label pairs, comma-separated (and after a comma when `after` is set):
/// `k="v"` in the text formats, `"k":"v"` in JSON, values escaped.
fn label_pairs(out: &mut String, format: Format, labels: &[(&str, &str)], after: bool) {
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 || after {
            out.push(',');
        }
        match format {
            Format::Json => {
                json_string(out, k);
                out.push(':');
                json_string(out, v);
            }
            Format::Text | Format::OpenMetrics => {
                out.push_str(k);
                out.push_str("=\"");
                escape_label_value(out, v);
                out.push('"');
            }
        }
    }
}

/// Label values: `\` `"` and newline escaped (identical in 0.0.4 and
/// OpenMetrics); everything else, UTF-8 included, passes through.
fn escape_label_value(out: &mut String, v: &str) {
    // Almost every value needs no escaping: one scan, one copy.
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    escape_with(out, v, |c| match c {
        '\\' => Some("\\\\"),
        '"' => Some("\\\""),
        '\n' => Some("\\n"),
        _ => None,
    });
}

/// HELP text: 0.0.4 escapes `\` and newline; OpenMetrics also `"`.
fn escape_help(out: &mut String, v: &str, quote: bool) {
    // HELP texts are ours and almost never need it: one scan, one copy
    // (the byte-by-byte escape was 1.3% of the server's CPU per scrape).
    if !v
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quote && b == b'"'))
    {
        out.push_str(v);
        return;
    }
    escape_with(out, v, |c| match c {
        '\\' => Some("\\\\"),
        '\n' => Some("\\n"),
        '"' if quote => Some("\\\""),
        _ => None,
    });
}

/// Escapes ASCII characters only, so scanning bytes is exact: a byte below
/// 0x80 is always a whole character in UTF-8.
fn escape_with(out: &mut String, v: &str, esc: impl Fn(char) -> Option<&'static str>) {
    let mut last = 0;
    for (i, b) in v.bytes().enumerate() {
        if b.is_ascii()
            && let Some(rep) = esc(char::from(b))
        {
            out.push_str(v.get(last..i).unwrap_or_default());
            out.push_str(rep);
            last = i + 1;
        }
    }
    out.push_str(v.get(last..).unwrap_or_default());
}

/// A JSON string literal.
fn json_string(out: &mut String, v: &str) {
    out.push('"');
    let mut last = 0;
    for (i, c) in v.char_indices() {
        let rep = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(v.get(last..i).unwrap_or_default());
        if rep.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(rep);
        }
        last = i + c.len_utf8();
    }
    out.push_str(v.get(last..).unwrap_or_default());
    out.push('"');
}

/// Written by every encoder's `finish`.
pub(super) static SKIPPED: Desc = Desc::gauge(
    "vmscope_exposition_series_skipped",
    "Series left out of this exposition, by reason: duplicate = same name and labels as an \
     earlier series; invalid = bad name or a counter that was NaN or negative. Non-zero means \
     a bug upstream.",
);

/// A bucket bound as the `le` label value in `format`.
fn write_le(out: &mut String, le: f64, format: Format) {
    if le == f64::INFINITY {
        out.push_str("+Inf");
    } else if format == Format::OpenMetrics {
        // OpenMetrics wants bucket bounds as floats ("1.0", not "1").
        let _ = write!(out, "{le:?}");
    } else {
        write_number(out, le);
    }
}

/// The same, as a string (the sample collector's `le`).
pub(super) fn le_text(le: f64, format: Format) -> String {
    let mut s = String::new();
    write_le(&mut s, le, format);
    s
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub(super) fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Label names match `[a-zA-Z_][a-zA-Z0-9_]*`, do not start with `__`, are
/// unique within the series, and (for histograms) are not `le`.
pub(super) fn valid_label_names(labels: &[(&str, &str)], histogram: bool) -> bool {
    labels.iter().enumerate().all(|(i, (k, _))| {
        let mut bytes = k.bytes();
        let ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.starts_with("__")
            && !(histogram && *k == "le");
        ok && labels
            .get(..i)
            .is_none_or(|before| before.iter().all(|(p, _)| p != k))
    })
}

/// A fast non-cryptographic hash (word at a time, FxHash-style mixing); the
/// inputs are our own label blocks and collisions are checked exactly.
fn hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    if let Some(dst) = w.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^ (h >> 29)
}

/// The map key is already a hash: pass it through.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MetricWriter;

    static G: Desc = Desc::gauge("t_temp_ratio", "A \"help\"\\ with\nnewline.");
    static C: Desc = Desc::counter("t_cpu_seconds_total", "Counter.");
    static H: Desc = Desc::histogram("t_dur_seconds", "Histogram.");
    static BADC: Desc = Desc::counter("t_not_suffixed", "Counter without _total.");

    fn enc(format: Format, mut f: impl FnMut(&mut MetricWriter<'_>)) -> String {
        let mut s = String::new();
        let mut w = MetricWriter::new(&mut s, format);
        f(&mut w);
        w.finish();
        s
    }

    #[test]
    fn text_escapes_and_numbers() {
        let s = enc(Format::Text, |w| {
            w.family(&G);
            w.sample(&[("vm_name", "a\"b\\c\nd é")], 0.5);
            w.sample(&[("vm_name", "x")], f64::NAN);
            w.sample(&[("vm_name", "y")], f64::INFINITY);
            w.sample(&[("vm_name", "z")], 3.0);
            w.sample(&[("vm_name", "big")], 1e20);
            w.sample(&[("vm_name", "tiny")], 1e-7);
            w.family(&C);
            w.sample(&[], u64::MAX);
        });
        assert!(s.contains("# HELP t_temp_ratio A \"help\"\\\\ with\\nnewline.\n"));
        assert!(s.contains("t_temp_ratio{vm_name=\"a\\\"b\\\\c\\nd é\"} 0.5\n"));
        assert!(s.contains("{vm_name=\"x\"} NaN\n"));
        assert!(s.contains("{vm_name=\"y\"} +Inf\n"));
        assert!(s.contains("{vm_name=\"z\"} 3\n"));
        assert!(s.contains("{vm_name=\"big\"} 1e+20\n"));
        assert!(s.contains("{vm_name=\"tiny\"} 1e-7\n"));
        assert!(s.contains(
            "# TYPE t_cpu_seconds_total counter\nt_cpu_seconds_total 18446744073709551615\n"
        ));
        assert!(!s.contains("# UNIT"));
    }

    #[test]
    fn openmetrics_counter_family_unit_and_eof() {
        let s = enc(Format::OpenMetrics, |w| {
            w.family(&C);
            w.sample(&[("mode", "user")], 1.5);
            w.family(&H);
            w.histogram(&[("route", "/x")], &[(0.5, 1), (1.0, 2)], 1.25, 3);
        });
        assert!(s.contains("# TYPE t_cpu_seconds counter\n# UNIT t_cpu_seconds seconds\n"));
        assert!(s.contains("t_cpu_seconds_total{mode=\"user\"} 1.5\n"));
        assert!(s.contains("t_dur_seconds_bucket{route=\"/x\",le=\"1.0\"} 2\n"));
        assert!(s.contains("t_dur_seconds_bucket{route=\"/x\",le=\"+Inf\"} 3\n"));
        assert!(s.contains(
            "t_dur_seconds_sum{route=\"/x\"} 1.25\nt_dur_seconds_count{route=\"/x\"} 3\n"
        ));
        assert!(s.ends_with("# EOF\n"));
    }

    /// A histogram's lines, whole: labels escaped (once, copied onto each
    /// line), none, and no finite buckets at all.
    #[test]
    fn histogram_lines_in_text() {
        let s = enc(Format::Text, |w| {
            w.family(&H);
            w.histogram(
                &[("route", "a\"b"), ("m", "GET")],
                &[(0.5, 1), (2.0, 2)],
                1.25,
                3,
            );
            w.histogram(&[], &[(0.5, 0)], 0.0, 0);
            w.histogram(&[("route", "none")], &[], 4.0, 1);
        });
        let want = "# HELP t_dur_seconds Histogram.\n# TYPE t_dur_seconds histogram\n\
            t_dur_seconds_bucket{route=\"a\\\"b\",m=\"GET\",le=\"0.5\"} 1\n\
            t_dur_seconds_bucket{route=\"a\\\"b\",m=\"GET\",le=\"2\"} 2\n\
            t_dur_seconds_bucket{route=\"a\\\"b\",m=\"GET\",le=\"+Inf\"} 3\n\
            t_dur_seconds_sum{route=\"a\\\"b\",m=\"GET\"} 1.25\n\
            t_dur_seconds_count{route=\"a\\\"b\",m=\"GET\"} 3\n\
            t_dur_seconds_bucket{le=\"0.5\"} 0\n\
            t_dur_seconds_bucket{le=\"+Inf\"} 0\n\
            t_dur_seconds_sum 0\n\
            t_dur_seconds_count 0\n\
            t_dur_seconds_bucket{route=\"none\",le=\"+Inf\"} 1\n\
            t_dur_seconds_sum{route=\"none\"} 4\n\
            t_dur_seconds_count{route=\"none\"} 1\n";
        assert!(s.starts_with(want), "{s}");
    }

    /// A kept series is copied while its version holds, byte for byte what
    /// writing it gives; a new version, another format or another family
    /// writes it again. A copy is still checked as a series: written twice
    /// in one family, the second is left out and counted.
    #[test]
    fn cached_histograms_copy_while_the_version_holds() {
        let labels = [("route", "/metrics"), ("m", "GET")];
        for format in [Format::Text, Format::OpenMetrics] {
            let mut cache = SeriesText::default();
            let plain = enc(format, |w| {
                w.family(&H);
                w.histogram(&labels, &[(0.5, 1), (2.0, 2)], 1.25, 3);
            });
            let mut write = |version: u64, buckets: &[(f64, u64)], sum: f64, count: u64| {
                let mut s = String::new();
                let mut w = MetricWriter::new(&mut s, format);
                w.family(&H);
                w.histogram_cached(&mut cache, version, &labels, buckets, sum, count);
                w.finish();
                s
            };
            assert_eq!(write(3, &[(0.5, 1), (2.0, 2)], 1.25, 3), plain);
            // Same version: the kept text, whatever the values say (the
            // caller vouches they are the same).
            assert_eq!(write(3, &[(0.5, 9), (2.0, 9)], 9.0, 9), plain);
            // A new version is written again.
            let moved = write(4, &[(0.5, 2), (2.0, 3)], 1.5, 4);
            assert!(
                moved.contains("_count{route=\"/metrics\",m=\"GET\"} 4\n"),
                "{moved}"
            );
            assert_eq!(write(4, &[], 0.0, 0), moved);
        }

        // Kept in text, asked in OpenMetrics: written in OpenMetrics.
        let mut cache = SeriesText::default();
        let mut s = String::new();
        let mut w = MetricWriter::new(&mut s, Format::Text);
        w.family(&H);
        w.histogram_cached(&mut cache, 1, &labels, &[(2.0, 1)], 1.0, 1);
        w.finish();
        let om = enc(Format::OpenMetrics, |w| {
            w.family(&H);
            w.histogram_cached(&mut cache.clone(), 1, &labels, &[(2.0, 1)], 1.0, 1);
        });
        assert!(om.contains("le=\"2.0\""), "{om}");

        // Another family: written there, not copied from the first.
        static H2: Desc = Desc::histogram("t_other_seconds", "Other.");
        let other = enc(Format::Text, |w| {
            w.family(&H2);
            w.histogram_cached(&mut cache.clone(), 1, &labels, &[(2.0, 1)], 1.0, 1);
        });
        assert!(other.contains("t_other_seconds_count{"), "{other}");
        assert!(!other.contains("t_dur_seconds"), "{other}");

        // Twice in one family: one series, one skipped duplicate.
        let twice = enc(Format::Text, |w| {
            w.family(&H);
            w.histogram_cached(&mut cache, 1, &labels, &[(2.0, 1)], 1.0, 1);
            w.histogram_cached(&mut cache, 1, &labels, &[(2.0, 1)], 1.0, 1);
        });
        assert_eq!(twice.matches("t_dur_seconds_count{").count(), 1, "{twice}");
        assert!(
            twice.contains("vmscope_exposition_series_skipped{reason=\"duplicate\"} 1"),
            "{twice}"
        );
    }

    /// Bounds are formatted once per writer and reused: each series, and
    /// each format, still gets its own spelling ("2" in text, "2.0" in
    /// OpenMetrics).
    #[test]
    fn shared_bucket_bounds_are_spelled_per_format() {
        for (format, two) in [(Format::Text, "2"), (Format::OpenMetrics, "2.0")] {
            let s = enc(format, |w| {
                w.family(&H);
                for r in ["a", "b"] {
                    w.histogram(&[("r", r)], &[(0.25, 1), (2.0, 1)], 1.0, 1);
                }
                w.histogram(&[("r", "c")], &[(2.0, 0), (3.0, 0)], 0.0, 0);
            });
            for r in ["a", "b", "c"] {
                let line = format!("t_dur_seconds_bucket{{r=\"{r}\",le=\"{two}\"}}");
                assert!(s.contains(&line), "{line} in {s}");
            }
            assert!(s.contains("r=\"b\",le=\"0.25\"} 1\n"), "{s}");
        }
    }

    #[test]
    fn duplicates_and_invalid_values_are_skipped_and_counted() {
        let s = enc(Format::Text, |w| {
            w.family(&C);
            w.sample(&[("a", "1")], 1u64);
            w.sample(&[("a", "1")], 2u64); // duplicate series
            w.sample(&[("a", "2")], -1.0); // negative counter
            w.sample(&[("a", "3")], f64::NAN); // NaN counter
            w.family(&C); // duplicate family
            w.sample(&[("a", "9")], 1u64);
            w.family(&BADC); // counter without _total
            w.sample(&[], 1u64);
            w.family(&G);
            w.sample(&[("bad-name", "x")], 1u64);
            w.sample(&[("a", "x"), ("a", "y")], 1u64);
        });
        assert!(s.contains("t_cpu_seconds_total{a=\"1\"} 1\n"));
        assert!(!s.contains("{a=\"1\"} 2\n"));
        assert!(!s.contains("a=\"9\""));
        assert!(!s.contains("t_not_suffixed"));
        assert!(
            !s.contains("t_temp_ratio"),
            "a family with no valid sample has no metadata"
        );
        assert!(
            s.contains("vmscope_exposition_series_skipped{reason=\"duplicate\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("vmscope_exposition_series_skipped{reason=\"invalid\"} 5\n"),
            "{s}"
        );
    }

    #[test]
    fn json_is_valid_and_keeps_values() {
        let s = enc(Format::Json, |w| {
            w.family(&G);
            w.sample(&[("vm_name", "q\"\\\n\u{1}ü")], f64::NEG_INFINITY);
            w.sample(&[("vm_name", "b")], 0.25);
            w.family(&H);
            w.histogram(&[], &[(0.5, 1)], 0.75, 2);
        });
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let fams = v["families"].as_array().unwrap();
        assert_eq!(fams[0]["name"], "t_temp_ratio");
        assert_eq!(fams[0]["unit"], "ratio");
        assert_eq!(fams[0]["samples"][0]["labels"]["vm_name"], "q\"\\\n\u{1}ü");
        assert_eq!(fams[0]["samples"][0]["value"], "-Inf");
        assert_eq!(fams[0]["samples"][1]["value"], 0.25);
        assert_eq!(fams[1]["samples"][0]["buckets"][1]["le"], "+Inf");
        assert_eq!(fams[1]["samples"][0]["count"], 2);
    }

    #[test]
    fn resume_continues_without_repeating_families() {
        let mut head = String::new();
        let mut w = MetricWriter::new(&mut head, Format::Json);
        w.family(&G);
        w.sample(&[], 1u64);
        let state = w.suspend();
        let mut tail = String::new();
        let mut w = MetricWriter::resume(&mut tail, Format::Json, &state);
        w.family(&G); // already in the head: skipped
        w.sample(&[], 2u64);
        w.family(&C);
        w.sample(&[], 3u64);
        w.finish();
        let v: serde_json::Value = serde_json::from_str(&(head + &tail)).unwrap();
        let names: Vec<_> = v["families"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "t_temp_ratio",
                "t_cpu_seconds_total",
                "vmscope_exposition_series_skipped"
            ]
        );
    }

    /// The same series written with plain labels and with a shared set
    /// plus extras give identical output, in every format.
    #[test]
    fn shared_label_sets_write_what_plain_labels_write() {
        let names = ["a\"b\\c\nd é", "plain", ""];
        for format in Format::ALL {
            let plain = enc(format, |w| {
                w.family(&C);
                for n in names {
                    w.sample(&[("vm_id", n), ("vm_name", "x"), ("mode", "user")], 1.5);
                    w.sample(&[("vm_id", n), ("vm_name", "x"), ("mode", "system")], 2u64);
                }
                w.family(&G);
                for n in names {
                    w.sample(&[("vm_id", n), ("vm_name", "x")], 0.25);
                }
            });
            let shared = enc(format, |w| {
                let sets: Vec<_> = names
                    .iter()
                    .map(|n| w.label_set(&[("vm_id", n), ("vm_name", "x")]))
                    .collect();
                w.family(&C);
                for set in &sets {
                    w.sample_in(*set, &[("mode", "user")], 1.5);
                    w.sample_in(*set, &[("mode", "system")], 2u64);
                }
                w.family(&G);
                for set in &sets {
                    w.sample_in(*set, &[], 0.25);
                }
            });
            assert_eq!(plain, shared, "{format:?}");
        }
        // No labels at all: no braces.
        let s = enc(Format::Text, |w| {
            let empty = w.label_set(&[]);
            w.family(&G);
            w.sample_in(empty, &[], 1u64);
        });
        assert!(s.contains("\nt_temp_ratio 1\n"), "{s}");
    }

    #[test]
    fn shared_label_sets_skip_duplicates_and_misuse() {
        let s = enc(Format::Text, |w| {
            let a = w.label_set(&[("vm_id", "a")]);
            let b = w.label_set(&[("vm_id", "b")]);
            let a2 = w.label_set(&[("vm_id", "a")]); // same block: same set
            assert_eq!(a, a2);
            let bad = w.label_set(&[("bad-name", "x")]);
            w.family(&C);
            w.sample_in(a, &[("vcpu", "0")], 1u64);
            w.sample_in(a, &[("vcpu", "1")], 1u64);
            w.sample_in(a, &[("vcpu", "0")], 9u64); // duplicate in the run
            w.sample_in(b, &[("vcpu", "0")], 2u64);
            w.sample_in(a, &[("vcpu", "7")], 9u64); // set back after another: duplicate
            w.sample_in(bad, &[], 1u64); // invalid set
            w.sample_in(b, &[("vm_id", "z")], 1u64); // extra repeats a set label: invalid
            w.sample(&[("vm_id", "c")], 1u64); // plain labels in a shared family: invalid
            w.family(&G);
            w.sample(&[("vm_id", "c")], 1u64);
            w.sample_in(a, &[], 1u64); // shared set in a plain family: invalid
            w.sample_in(b, &[], 1u64); // same again
            w.family(&H);
            w.sample_in(a, &[], 1u64); // not for histograms: invalid
        });
        assert!(
            s.contains("t_cpu_seconds_total{vm_id=\"a\",vcpu=\"0\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("t_cpu_seconds_total{vm_id=\"a\",vcpu=\"1\"} 1\n"),
            "{s}"
        );
        assert!(
            s.contains("t_cpu_seconds_total{vm_id=\"b\",vcpu=\"0\"} 2\n"),
            "{s}"
        );
        assert!(!s.contains(" 9\n"), "{s}");
        assert!(!s.contains("vm_id=\"z\""), "{s}");
        assert!(s.contains("t_temp_ratio{vm_id=\"c\"} 1\n"), "{s}");
        assert!(!s.contains("t_cpu_seconds_total{vm_id=\"c\"}"), "{s}");
        assert!(
            s.contains("vmscope_exposition_series_skipped{reason=\"duplicate\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("vmscope_exposition_series_skipped{reason=\"invalid\"} 6\n"),
            "{s}"
        );
    }

    #[test]
    fn units_come_from_the_name() {
        assert_eq!(C.unit(), Some("seconds"));
        assert_eq!(G.unit(), Some("ratio"));
        assert_eq!(Desc::gauge("vmscope_host_load1", "").unit(), None);
        assert_eq!(Desc::counter("x_packets_total", "").unit(), None);
        assert_eq!(Desc::gauge("bytes", "").unit(), None);
    }
}
