//! Encode once per snapshot, not once per scrape.
//!
//! Reads: the current `Arc<Snapshot>` and the extra sources. Emits an
//! [`Exposition`]: the response body as chunks of `Bytes`.
//!
//! Design: an exposition is a cached *prefix* (the snapshot's families,
//! encoded on the first request for that snapshot, at most once per format
//! even under concurrent scrapes) plus a small live *tail* (the extra
//! sources: HTTP self-metrics, watchdog, ...; then the skip counts and the
//! format's trailer) encoded on each request, so those stay current between
//! ticks. The body is sent as chunks, never concatenated.
//!
//! The tail itself has a *steady* part: the sources whose text is the same
//! as at the last request (the watchdog's, the ledger's, the database's
//! histograms: 20 KiB that change a few times per tick, not per request).
//! Each request hashes what those sources would write
//! ([`Fingerprint`]: every call, no formatting) and reuses the kept text
//! when the hash is the one it was written with; the text is written
//! afresh, and hashed in the same walk, when it is not. Only the
//! [`volatile`](MetricSource::volatile) sources (the HTTP server's own
//! counts, the snapshot's age) and the trailer are written per request.
//! Under a load of scrapes the tail was a quarter of the server's CPU.
//!
//! Gzip keeps the same split: the prefix is compressed once into a gzip
//! header plus a raw deflate stream ended with a sync flush (byte-aligned,
//! not final); each request appends its tail as stored (uncompressed)
//! deflate blocks, the last one final, and the gzip trailer (CRC-32
//! continued from the cached prefix state, total length). The result is
//! one ordinary gzip member. The volatile tail is a few KiB: storing it
//! costs that much on the wire and saves a compressor per request. The
//! steady part is stored the first time it is served and compressed (once,
//! kept with it) from the second on: a part that changes at every request
//! never pays for a compressor.
//!
//! The prefix is compressed in chunks of whole families, each starting
//! from an empty dictionary and ending byte-aligned, so a chunk can be
//! moved between streams. A chunk whose text is the one the previous
//! snapshot had (VM facts, states, allocations, error counters that stay
//! 0) reuses that snapshot's compressed bytes; only the chunks that
//! changed are compressed again. "The same text" is the same length and
//! the same 64-bit hash (foldhash, seeded at random per process): comparing
//! with the old text itself would keep the previous snapshot's whole body
//! alive between ticks (50 MB at 10 000 VMs) for the comparison.
//!
//! A scraper that asks only for gzip (Prometheus does) never needs the
//! prefix's text whole: while nobody asked for plain text within the
//! prewarm window, the prefix is written and compressed in one walk, a
//! chunk of whole families at a time
//! ([`TextWriter::draining`](super::TextWriter::draining)), and only its
//! compressed bytes are kept (the same bytes, chunk for chunk). At 10 000
//! VMs that is 50 MB of text, and the pool's buffers for the next one,
//! the agent does not hold. A plain request for such a snapshot encodes
//! its text then; prefixes are encoded whole again from there on.
//!
//! Failure: a deflate error (which would be a bug) is a [`CacheError`]; the
//! cache keeps no partial state, so the next request tries again.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

use super::MetricSource;
use super::encoder::{Fingerprint, MetricWriter};
use super::writer::{Format, WriterState};
use crate::model::Snapshot;

/// Deflate level for the cached prefix (compressed once per tick per format).
/// Measured on 1000 VMs (2.9 MB of text): level 1 = 260 KB in 8 ms, level 3
/// = 203 KB in 28 ms, level 6 = 216 KB in 49 ms. The agent's CPU on a busy
/// host matters more than 60 KB per scrape.
const PREFIX_LEVEL: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("gzip compression of the exposition failed")]
    Deflate(#[source] flate2::CompressError),
    #[error("gzip compression of the exposition stalled")]
    DeflateStalled,
}

/// A response body ready to send: `chunks` in order.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub format: Format,
    /// True when `chunks` form a gzip stream.
    pub gzip: bool,
    pub chunks: Vec<Bytes>,
    /// The snapshot sequence the prefix was encoded from.
    pub seq: u64,
}

impl Exposition {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The body as one buffer (copies; for tests and small consumers).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for c in &self.chunks {
            v.extend_from_slice(c);
        }
        v
    }
}

/// Per-snapshot cache of encoded prefixes. Cheap to share behind an `Arc`.
pub struct ExpositionCache {
    current: Mutex<Option<Arc<Entry>>>,
    /// Per format, the chunks of the last gzip'd prefix.
    deflated: [Mutex<Option<Deflated>>; 3],
    /// Body buffers of snapshots no longer served, for the next encoding.
    bodies: Arc<BodyPool>,
    /// Hashes the chunks' text for the reuse comparison.
    chunk_hasher: foldhash::quality::RandomState,
    /// When each (format, gzip) variant was last asked for, in milliseconds
    /// since `born` (0 = never): [`ExpositionCache::prewarm`] encodes the
    /// variants scrapers actually use, so that a scrape arriving after a
    /// new snapshot does not pay for encoding it.
    last_asked: [AtomicU64; 6],
    /// Milliseconds between the last two requests of each variant (0 =
    /// not known yet): used to predict whether a scrape will come before
    /// the next snapshot.
    gap: [AtomicU64; 6],
    born: Instant,
}

impl Default for ExpositionCache {
    fn default() -> Self {
        ExpositionCache {
            current: Mutex::new(None),
            deflated: Default::default(),
            bodies: Arc::default(),
            chunk_hasher: foldhash::quality::RandomState::default(),
            last_asked: Default::default(),
            gap: Default::default(),
            born: Instant::now(),
        }
    }
}

/// A variant not asked for within this long is no longer pre-encoded
/// (covers scrape intervals up to a couple of minutes).
const PREWARM_WINDOW_MS: u64 = 180_000;

fn format_slot(format: Format) -> usize {
    match format {
        Format::Text => 0,
        Format::OpenMetrics => 1,
        Format::Json => 2,
    }
}

fn variant(format: Format, gzip: bool) -> usize {
    format_slot(format) * 2 + usize::from(gzip)
}

const VARIANTS: [(Format, bool); 6] = [
    (Format::Text, false),
    (Format::Text, true),
    (Format::OpenMetrics, false),
    (Format::OpenMetrics, true),
    (Format::Json, false),
    (Format::Json, true),
];

/// Everything cached for one snapshot.
struct Entry {
    /// Held so that the pointer identity check below cannot be fooled by a
    /// new snapshot allocated at a freed one's address.
    snapshot: Arc<Snapshot>,
    text: OnceLock<Prefix>,
    openmetrics: OnceLock<Prefix>,
    json: OnceLock<Prefix>,
}

impl Entry {
    fn slot(&self, format: Format) -> &OnceLock<Prefix> {
        match format {
            Format::Text => &self.text,
            Format::OpenMetrics => &self.openmetrics,
            Format::Json => &self.json,
        }
    }
}

struct Prefix {
    /// The text; only ever set for a prefix encoded whole (a plain
    /// request, or gzip while plain ones come too): a prefix encoded for
    /// gzip only has none ([`ExpositionCache::encode_gzip_only`]), and a
    /// plain request for its snapshot encodes it then.
    body: OnceLock<Bytes>,
    state: WriterState,
    /// Offsets in `body` where families begin, with their names.
    starts: Vec<(&'static str, usize)>,
    gzip: OnceLock<GzipPrefix>,
    /// The steady sources' text last written after this prefix.
    steady: Mutex<Option<Arc<Steady>>>,
}

/// What the steady (not volatile) sources wrote after a prefix, with the
/// fingerprint of the calls that wrote it.
struct Steady {
    fingerprint: u64,
    text: Bytes,
    /// The writer after `text`: the volatile sources continue from here.
    state: WriterState,
    /// Requests served this text so far.
    served: AtomicU64,
    /// `text` compressed (from the second request on).
    gzip: OnceLock<DeflatedText>,
}

/// A text as raw deflate from an empty dictionary, sync-flushed (so it can
/// follow any byte-aligned deflate data), with its CRC-32.
struct DeflatedText {
    deflated: Bytes,
    crc: crc32fast::Hasher,
}

/// A gzip'd prefix kept chunk by chunk for the next snapshot to reuse.
#[derive(Default)]
struct Deflated {
    chunks: Vec<DeflatedChunk>,
    /// How many of `chunks` were compressed anew (the rest were reused).
    compressed: usize,
}

struct DeflatedChunk {
    /// The first family in the chunk: how the next snapshot finds it.
    key: &'static str,
    /// Length and hash of the chunk's text (not the text: that would keep
    /// its snapshot's body alive).
    len: usize,
    hash: u64,
    /// Raw deflate of `text` from an empty dictionary, sync-flushed: a
    /// slice of the gzip'd prefix it went into ([`Chunker::finish`]).
    deflated: Bytes,
    crc: crc32fast::Hasher,
}

/// Families are grouped into chunks of at least this much text: large
/// enough that a fresh dictionary per chunk costs little ratio, small
/// enough that one busy family does not drag quiet ones into recompression.
const MIN_CHUNK: usize = 16 * 1024;

struct GzipPrefix {
    /// Gzip header + raw deflate of `body`, sync-flushed.
    head: Bytes,
    crc: crc32fast::Hasher,
    len: u64,
}

/// The fixed 10-byte gzip member header: deflate, no name, no mtime, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

impl ExpositionCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The exposition of `snapshot` plus `extra`, in `format`, gzip'd when
    /// `gzip`. Encodes the snapshot part only on the first call per snapshot
    /// and format.
    pub fn render(
        &self,
        snapshot: &Arc<Snapshot>,
        extra: &[Arc<dyn MetricSource>],
        format: Format,
        gzip: bool,
    ) -> Result<Exposition, CacheError> {
        let v = variant(format, gzip);
        if let (Some(slot), Some(gap)) = (self.last_asked.get(v), self.gap.get(v)) {
            // +1 so that a request in the first millisecond is not "never".
            let now = self.born.elapsed().as_millis() as u64 + 1;
            let prev = slot.swap(now, Ordering::Relaxed);
            if prev != 0 && now > prev {
                gap.store(now - prev, Ordering::Relaxed);
            }
        }
        let entry = self.entry(snapshot);
        // Concurrent first requests wait here for the one encoder.
        let prefix = entry
            .slot(format)
            .get_or_init(|| self.encode(&entry.snapshot, format, gzip));

        let steady = steady(prefix, extra, format);
        // The volatile tail is 5-10 KiB (the HTTP server's histograms
        // with their HELP texts): one allocation, no regrowth.
        let mut tail = String::with_capacity(16 * 1024);
        let mut w = MetricWriter::resume(&mut tail, format, &steady.state);
        for s in extra.iter().filter(|s| s.volatile()) {
            s.encode(&mut w);
        }
        w.finish();

        let chunks = if gzip {
            let gz = built_once(&prefix.gzip, || self.gzip_prefix(format, prefix))?;
            let mut crc = gz.crc.clone();
            let len = gz.len + steady.text.len() as u64 + tail.len() as u64;
            // The first request with this text stores it (it may change by
            // the next); a second one compresses it for every one after.
            let middle = if steady.served.fetch_add(1, Ordering::Relaxed) == 0 {
                crc.update(&steady.text);
                stored_blocks(&steady.text)
            } else {
                let d = built_once(&steady.gzip, || deflate_text(&steady.text))?;
                crc.combine(&d.crc);
                d.deflated.clone()
            };
            vec![
                gz.head.clone(),
                middle,
                gzip_tail(crc, len, tail.as_bytes()),
            ]
        } else {
            let body = built_once(&prefix.body, || {
                Ok(encode_prefix(&entry.snapshot, format, &self.bodies).0)
            })?;
            vec![body.clone(), steady.text.clone(), Bytes::from(tail)]
        };
        Ok(Exposition {
            format,
            gzip,
            chunks,
            seq: entry.snapshot.seq,
        })
    }

    /// Encodes `snapshot`, off the request path, in every variant whose
    /// next scrape is expected before the next snapshot (`horizon` from
    /// now): a scraper every 15 s on a 5 s collection interval costs one
    /// encoding per scrape, not one per tick. A variant whose rhythm is
    /// not known yet is encoded. Call it from a blocking thread when a
    /// snapshot is published. Returns how many variants were encoded.
    pub fn prewarm(
        &self,
        snapshot: &Arc<Snapshot>,
        horizon: std::time::Duration,
    ) -> Result<usize, CacheError> {
        let now = self.born.elapsed().as_millis() as u64;
        let horizon = horizon.as_millis() as u64;
        let entry = self.entry(snapshot);
        let mut n = 0;
        if !VARIANTS
            .iter()
            .any(|(f, gzip)| !gzip && self.wanted(*f, false))
        {
            // Nobody asks for a plain body any more: let go of the buffers
            // kept for the next (a body each: 50 MB at 10 000 VMs).
            self.bodies
                .free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        for (i, (format, gzip)) in VARIANTS.iter().enumerate() {
            let Some(asked) = self.asked_lately(i, now) else {
                if *gzip {
                    // Nobody gzips this format any more: let go of the
                    // chunks kept for reuse (a tenth of a body).
                    if let Some(slot) = self.deflated.get(format_slot(*format)) {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                }
                continue;
            };
            let gap = self.gap.get(i).map_or(0, |g| g.load(Ordering::Relaxed));
            // 10 % slack: scrapes jitter.
            if gap != 0 && asked + gap > now + horizon + gap / 10 {
                continue;
            }
            let prefix = entry
                .slot(*format)
                .get_or_init(|| self.encode(&entry.snapshot, *format, *gzip));
            if *gzip {
                built_once(&prefix.gzip, || self.gzip_prefix(*format, prefix))?;
            }
            n += 1;
        }
        Ok(n)
    }

    /// When variant `v` was last asked for, if within the prewarm window
    /// of `now` (milliseconds since `born`).
    fn asked_lately(&self, v: usize, now: u64) -> Option<u64> {
        let asked = self
            .last_asked
            .get(v)
            .map_or(0, |a| a.load(Ordering::Relaxed));
        (asked != 0 && now.saturating_sub(asked) <= PREWARM_WINDOW_MS).then_some(asked)
    }

    /// Whether `format`, gzip'd or not, was asked for lately (what
    /// [`ExpositionCache::prewarm`] encodes).
    fn wanted(&self, format: Format, gzip: bool) -> bool {
        // + 1 as `render` stamps it.
        let now = self.born.elapsed().as_millis() as u64 + 1;
        self.asked_lately(variant(format, gzip), now).is_some()
    }

    /// Runs `gzip` against the chunks kept from `format`'s last gzip'd
    /// prefix and keeps the chunks it returns for the next.
    fn gzip_after_last(
        &self,
        format: Format,
        gzip: impl FnOnce(Option<&Deflated>) -> Result<(GzipPrefix, Deflated), CacheError>,
    ) -> Result<GzipPrefix, CacheError> {
        let slot = self
            .deflated
            .get(format_slot(format))
            .ok_or(CacheError::DeflateStalled)?;
        let mut last = slot.lock().unwrap_or_else(|p| p.into_inner());
        let (gz, chunks) = gzip(last.as_ref())?;
        tracing::trace!(
            format = ?format,
            chunks = chunks.chunks.len(),
            compressed = chunks.compressed,
            bytes = gz.head.len(),
            "prefix gzip'd, unchanged chunks reused"
        );
        *last = Some(chunks);
        Ok(gz)
    }

    /// The prefix of `snapshot` in `format`, for a request (or a prewarm)
    /// that wants it gzip'd or not: without its text when nobody asks for
    /// it plain.
    fn encode(&self, snapshot: &Snapshot, format: Format, gzip: bool) -> Prefix {
        if gzip && !self.wanted(format, false) {
            match self.encode_gzip_only(snapshot, format) {
                Ok(p) => return p,
                // A deflate error (a bug): the whole text, whose gzip
                // will say what failed.
                Err(e) => tracing::debug!(error = %e, "gzip-only encoding failed"),
            }
        }
        let (body, starts, state) = encode_prefix(snapshot, format, &self.bodies);
        Prefix {
            body: OnceLock::from(body),
            state,
            starts,
            gzip: OnceLock::new(),
            steady: Mutex::new(None),
        }
    }

    /// The prefix gzip'd as it is written, chunk by chunk, its text never
    /// whole: what a gzip-only scraper (Prometheus) costs in memory is a
    /// chunk of text (a family or a few; 16 KiB at least) and the
    /// compressed prefix, not the whole text (3.6 MB at 1000 VMs, 50 MB
    /// at 10 000) and the pool's buffers for the next. The gzip is byte
    /// for byte the one the whole text would give ([`Chunker`]).
    fn encode_gzip_only(&self, snapshot: &Snapshot, format: Format) -> Result<Prefix, CacheError> {
        let mut state = WriterState::default();
        let gz = self.gzip_after_last(format, |last| {
            let mut chunker = Chunker::new(last, &self.chunk_hasher);
            let mut text = String::with_capacity(2 * MIN_CHUNK);
            let mut drain = |piece: &str, starts: &[(&'static str, usize)]| {
                let key = starts.first().map_or("", |s| s.0);
                chunker.add(key, piece.as_bytes());
            };
            let mut w = MetricWriter::draining(&mut text, format, &mut drain, MIN_CHUNK);
            snapshot.encode(&mut w);
            state = w.suspend();
            chunker.finish()
        })?;
        Ok(Prefix {
            body: OnceLock::new(),
            state,
            starts: Vec::new(),
            gzip: OnceLock::from(gz),
            steady: Mutex::new(None),
        })
    }

    /// Gzips `prefix`, reusing the compressed chunks of the last gzip'd
    /// prefix of `format` whose text did not change.
    fn gzip_prefix(&self, format: Format, prefix: &Prefix) -> Result<GzipPrefix, CacheError> {
        let body = prefix.body.get().ok_or(CacheError::DeflateStalled)?;
        self.gzip_after_last(format, |last| {
            gzip_chunked(body, &prefix.starts, last, &self.chunk_hasher)
        })
    }

    fn entry(&self, snapshot: &Arc<Snapshot>) -> Arc<Entry> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cur.as_ref()
            && Arc::ptr_eq(&e.snapshot, snapshot)
        {
            return Arc::clone(e);
        }
        let e = Arc::new(Entry {
            snapshot: Arc::clone(snapshot),
            text: OnceLock::new(),
            openmetrics: OnceLock::new(),
            json: OnceLock::new(),
        });
        *cur = Some(Arc::clone(&e));
        e
    }
}

/// The multi-megabyte body buffers, kept for reuse instead of freed: a new
/// snapshot every tick would otherwise allocate and fault in a fresh body
/// each time, and leave the allocator's arenas holding freed megabytes
/// wherever the last one happened to land (RSS that wanders with VM churn).
#[derive(Default)]
struct BodyPool {
    free: Mutex<Vec<String>>,
}

/// Buffers kept: one per text format being served plus one in flight.
const POOLED_BODIES: usize = 3;

impl BodyPool {
    fn take(&self) -> String {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.pop().unwrap_or_default()
    }
}

/// A body that goes back to its pool when the last `Bytes` of it is dropped
/// (the cache replaced the snapshot and every response using it is sent).
struct PooledBody {
    buf: String,
    pool: std::sync::Weak<BodyPool>,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_bytes()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut free = pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < POOLED_BODIES {
                let mut buf = std::mem::take(&mut self.buf);
                buf.clear();
                free.push(buf);
            }
        }
    }
}

/// The snapshot's text in `format`, where its families start, and the
/// writer's state after it.
fn encode_prefix(
    snapshot: &Snapshot,
    format: Format,
    pool: &Arc<BodyPool>,
) -> (Bytes, Vec<(&'static str, usize)>, WriterState) {
    let mut body = pool.take();
    // ~120 bytes per series, ~32 series per VM: start close to the final size.
    body.reserve(4096 + snapshot.vms.len() * 4000);
    let mut w = MetricWriter::new(&mut body, format);
    snapshot.encode(&mut w);
    let starts = w.family_starts().to_vec();
    let state = w.suspend();
    let body = Bytes::from_owner(PooledBody {
        buf: body,
        pool: Arc::downgrade(pool),
    });
    (body, starts, state)
}

/// `cell`'s value, built by `make` when it has none. Not under a lock: a
/// concurrent caller may build it too and win the race; either copy is
/// fine (both come from the same input).
fn built_once<T>(
    cell: &OnceLock<T>,
    make: impl FnOnce() -> Result<T, CacheError>,
) -> Result<&T, CacheError> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let _ = cell.set(make()?);
    cell.get().ok_or(CacheError::DeflateStalled)
}

/// The steady sources' text after `prefix`: the kept one when what they
/// would write now hashes as it did then, else written afresh (and kept).
fn steady(prefix: &Prefix, extra: &[Arc<dyn MetricSource>], format: Format) -> Arc<Steady> {
    let mut fp = Fingerprint::default();
    {
        let mut w = MetricWriter::Fingerprint(&mut fp);
        for s in extra.iter().filter(|s| !s.volatile()) {
            s.encode(&mut w);
        }
    }
    let fingerprint = fp.finish();
    let kept = prefix
        .steady
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(k) = kept
        && k.fingerprint == fingerprint
    {
        return k;
    }
    let mut text = String::with_capacity(32 * 1024);
    let mut fp = Fingerprint::default();
    let mut w = MetricWriter::resume_tee(&mut text, format, &prefix.state, &mut fp);
    for s in extra.iter().filter(|s| !s.volatile()) {
        s.encode(&mut w);
    }
    let state = w.suspend();
    // The hash of this walk, not the one above: the sources may have
    // moved in between, and the text must be kept under its own calls.
    let made = Arc::new(Steady {
        fingerprint: fp.finish(),
        text: Bytes::from(text),
        state,
        served: AtomicU64::new(0),
        gzip: OnceLock::new(),
    });
    *prefix.steady.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&made));
    made
}

/// Where `body` is cut into chunks: at family starts, once a chunk holds
/// at least [`MIN_CHUNK`] bytes. Returns (first family, range) pairs.
fn chunk_ranges(
    body_len: usize,
    starts: &[(&'static str, usize)],
) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let mut out: Vec<(&'static str, std::ops::Range<usize>)> = Vec::new();
    for &(name, at) in starts {
        let at = at.min(body_len);
        match out.last_mut() {
            Some((_, r)) if at.saturating_sub(r.start) < MIN_CHUNK => {}
            Some((_, r)) => {
                r.end = at.max(r.start);
                out.push((name, at..body_len));
            }
            // Whatever precedes the first family (JSON's opening) goes
            // with it.
            None => out.push((name, 0..body_len)),
        }
    }
    if out.is_empty() && body_len > 0 {
        out.push(("", 0..body_len));
    }
    out
}

/// Gzip header + the deflated chunks of `body`, and the chunks for next time.
fn gzip_chunked(
    body: &Bytes,
    starts: &[(&'static str, usize)],
    last: Option<&Deflated>,
    hasher: &impl BuildHasher,
) -> Result<(GzipPrefix, Deflated), CacheError> {
    let mut chunker = Chunker::new(last, hasher);
    for (key, range) in chunk_ranges(body.len(), starts) {
        chunker.add(key, body.get(range).unwrap_or_default());
    }
    chunker.finish()
}

/// Compresses a prefix chunk by chunk, in order, reusing the last gzip'd
/// prefix's compressed chunk where the text is the same; for a whole body
/// ([`gzip_chunked`]) and for one that is never whole
/// ([`ExpositionCache::encode_gzip_only`]): the same chunks give the same
/// bytes.
struct Chunker<'l, H> {
    last: Option<&'l Deflated>,
    hasher: &'l H,
    /// Where in `last` the next chunk is looked for first (chunks keep
    /// their order).
    hint: usize,
    chunks: Vec<DeflatedChunk>,
    compressed: usize,
    compressor: Option<Compress>,
    len: u64,
    /// The first deflate error; the chunks after it are not compressed.
    failed: Option<CacheError>,
}

impl<'l, H: BuildHasher> Chunker<'l, H> {
    fn new(last: Option<&'l Deflated>, hasher: &'l H) -> Self {
        Chunker {
            last,
            hasher,
            hint: 0,
            chunks: Vec::new(),
            compressed: 0,
            compressor: None,
            len: 0,
            failed: None,
        }
    }

    /// The next chunk: `text`, whose first family is `key`.
    fn add(&mut self, key: &'static str, text: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.len += text.len() as u64;
        let hash = self.hasher.hash_one(text);
        let hint = self.hint;
        let old = self.last.and_then(|l| {
            let at = l
                .chunks
                .get(hint..)
                .and_then(|rest| rest.iter().position(|c| c.key == key))
                .map(|i| i + hint)
                .or_else(|| l.chunks.iter().position(|c| c.key == key))?;
            Some((at, l.chunks.get(at)?))
        });
        if let Some((at, _)) = old {
            self.hint = at + 1;
        }
        let chunk = match old {
            Some((_, old)) if old.len == text.len() && old.hash == hash => DeflatedChunk {
                key,
                len: old.len,
                hash,
                deflated: old.deflated.clone(),
                crc: old.crc.clone(),
            },
            _ => {
                let c = match self.compressor.as_mut() {
                    Some(c) => {
                        c.reset();
                        c
                    }
                    None => self
                        .compressor
                        .insert(Compress::new(Compression::new(PREFIX_LEVEL), false)),
                };
                let mut out = Vec::with_capacity(text.len() / 8 + 64);
                if let Err(e) = deflate(c, text, &mut out, FlushCompress::Sync) {
                    self.failed = Some(e);
                    return;
                }
                let mut crc = crc32fast::Hasher::new();
                crc.update(text);
                self.compressed += 1;
                DeflatedChunk {
                    key,
                    len: text.len(),
                    hash,
                    deflated: Bytes::from(out),
                    crc,
                }
            }
        };
        self.chunks.push(chunk);
    }

    /// The gzip'd prefix, and its chunks for the next one. The chunks
    /// kept are slices of the prefix, not copies beside it: the compressed
    /// prefix is held once (4 MB at 10 000 VMs), and a chunk compressed
    /// for it, or the previous prefix a reused one came from, is let go
    /// here.
    fn finish(mut self) -> Result<(GzipPrefix, Deflated), CacheError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let size: usize = self.chunks.iter().map(|c| c.deflated.len()).sum();
        let mut head = Vec::with_capacity(GZIP_HEADER.len() + size);
        head.extend_from_slice(&GZIP_HEADER);
        let mut crc = crc32fast::Hasher::new();
        let mut ranges = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            let at = head.len();
            head.extend_from_slice(&c.deflated);
            ranges.push(at..head.len());
            crc.combine(&c.crc);
        }
        let head = Bytes::from(head);
        for (c, r) in self.chunks.iter_mut().zip(ranges) {
            c.deflated = head.slice(r);
        }
        let gz = GzipPrefix {
            head,
            crc,
            len: self.len,
        };
        Ok((
            gz,
            Deflated {
                chunks: self.chunks,
                compressed: self.compressed,
            },
        ))
    }
}

/// `data` as stored (uncompressed) deflate blocks, none of them final.
/// What comes before ended byte-aligned (a sync flush or stored blocks),
/// so each block header is one byte: BFINAL = 0, BTYPE = 00.
fn stored_blocks(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + (data.len() / MAX_STORED + 1) * 5);
    put_stored(&mut out, data, false);
    Bytes::from(out)
}

/// The most a stored deflate block holds.
const MAX_STORED: usize = 65_535;

/// Appends `data` as stored blocks; the last one final when `last`.
fn put_stored(out: &mut Vec<u8>, data: &[u8], last: bool) {
    let mut rest = data;
    loop {
        let n = rest.len().min(MAX_STORED);
        let (block, after) = rest.split_at(n);
        out.push(u8::from(last && after.is_empty()));
        #[allow(clippy::cast_possible_truncation)] // n <= 65535
        let len = n as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
        rest = after;
        if rest.is_empty() {
            break;
        }
    }
}

/// `text` deflated on its own (level [`PREFIX_LEVEL`]), sync-flushed.
fn deflate_text(text: &[u8]) -> Result<DeflatedText, CacheError> {
    let mut c = Compress::new(Compression::new(PREFIX_LEVEL), false);
    let mut out = Vec::with_capacity(text.len() / 4 + 64);
    deflate(&mut c, text, &mut out, FlushCompress::Sync)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(text);
    Ok(DeflatedText {
        deflated: Bytes::from(out),
        crc,
    })
}

/// The request's tail as stored deflate blocks (the last one final), then
/// the gzip trailer: `crc` is the CRC-32 of everything before the tail,
/// `len` the length of the whole uncompressed body.
fn gzip_tail(mut crc: crc32fast::Hasher, len: u64, tail: &[u8]) -> Bytes {
    let blocks = tail.len() / MAX_STORED + 1;
    let mut out = Vec::with_capacity(tail.len() + blocks * 5 + 8);
    put_stored(&mut out, tail, true);
    crc.update(tail);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32 by definition.
    #[allow(clippy::cast_possible_truncation)]
    let isize = len as u32;
    out.extend_from_slice(&isize.to_le_bytes());
    Bytes::from(out)
}

/// `parts`, one after the other, as one gzip member at level 1.
///
/// Why not `flate2`'s `GzEncoder`: its CRC-32 is zlib-rs' (the input copied
/// into the window and folded as it goes), about a tenth of the whole
/// gzip on a 3 MB OTLP push; `crc32fast` over the same bytes costs a fifth
/// of that (measured on the OTLP request of 1000 VMs: 0.27 against 0.065
/// ms). The deflate stream is the same.
pub(crate) fn gzip_parts(parts: &[&[u8]]) -> Result<Vec<u8>, CacheError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(GZIP_HEADER.len() + len / 4 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    let mut c = Compress::new(Compression::new(PREFIX_LEVEL), false);
    let mut crc = crc32fast::Hasher::new();
    for p in parts {
        deflate(&mut c, p, &mut out, FlushCompress::None)?;
        crc.update(p);
    }
    deflate(&mut c, &[], &mut out, FlushCompress::Finish)?;
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32 by definition.
    #[allow(clippy::cast_possible_truncation)]
    let isize = len as u32;
    out.extend_from_slice(&isize.to_le_bytes());
    Ok(out)
}

/// Runs `input` through `c` into `out` until the flush completes.
fn deflate(
    c: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> Result<(), CacheError> {
    // Each round either consumes input or produces output; a round that
    // does neither twice in a row means the stream is stuck.
    let mut idle_rounds = 0;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let (in0, out0) = (c.total_in(), c.total_out());
        let spare_before = out.capacity() - out.len();
        let status = c
            .compress_vec(input, out, flush)
            .map_err(CacheError::Deflate)?;
        let consumed = usize::try_from(c.total_in() - in0).unwrap_or(input.len());
        input = input.get(consumed..).unwrap_or_default();
        let produced = c.total_out() - out0;
        match status {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError => {
                // A sync flush is complete once all input is in and the
                // compressor stopped short of filling the buffer.
                if flush != FlushCompress::Finish
                    && input.is_empty()
                    && (produced as usize) < spare_before
                {
                    return Ok(());
                }
            }
        }
        if consumed == 0 && produced == 0 {
            idle_rounds += 1;
            if idle_rounds > 2 {
                return Err(CacheError::DeflateStalled);
            }
        } else {
            idle_rounds = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::export::{Desc, fixture};

    struct Live(u64);
    static LIVE: Desc = Desc::gauge("t_live", "A per-request value.");
    impl MetricSource for Live {
        fn encode(&self, out: &mut MetricWriter<'_>) {
            out.family(&LIVE);
            out.sample(&[], self.0);
        }
    }

    fn gunzip(b: &[u8]) -> String {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b)
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn prewarm_encodes_only_the_variants_scrapers_ask_for() {
        let cache = ExpositionCache::new();
        let first = Arc::new(fixture::snapshot(5));
        // Nobody has asked for anything yet: nothing to pre-encode.
        let tick = std::time::Duration::from_secs(5);
        assert_eq!(cache.prewarm(&first, tick).unwrap(), 0);
        cache
            .render(&first, &[], Format::OpenMetrics, true)
            .unwrap();
        let mut next = fixture::snapshot(6);
        next.seq = first.seq + 1;
        let next = Arc::new(next);
        assert_eq!(cache.prewarm(&next, tick).unwrap(), 1);
        let entry = cache.entry(&next);
        let om = entry.slot(Format::OpenMetrics).get().expect("pre-encoded");
        assert!(om.gzip.get().is_some(), "gzip prefix pre-built");
        assert!(
            entry.slot(Format::Text).get().is_none(),
            "text was never asked for"
        );
        // The request after pre-encoding serves the same bytes as an uncached one.
        let warm = cache.render(&next, &[], Format::OpenMetrics, true).unwrap();
        let cold = ExpositionCache::new()
            .render(&next, &[], Format::OpenMetrics, true)
            .unwrap();
        assert_eq!(gunzip(&warm.to_vec()), gunzip(&cold.to_vec()));
    }

    #[test]
    fn prewarm_waits_for_the_tick_before_the_expected_scrape() {
        let mut cache = ExpositionCache::new();
        cache.born = Instant::now()
            .checked_sub(std::time::Duration::from_secs(60))
            .unwrap();
        let v = variant(Format::OpenMetrics, true);
        let now = cache.born.elapsed().as_millis() as u64;
        let tick = std::time::Duration::from_secs(5);
        // Scraped every 15 s, last scrape just now: the next one is 15 s
        // away, beyond this 5 s tick: no encoding now.
        cache.last_asked[v].store(now, Ordering::Relaxed);
        cache.gap[v].store(15_000, Ordering::Relaxed);
        assert_eq!(
            cache
                .prewarm(&Arc::new(fixture::snapshot(3)), tick)
                .unwrap(),
            0
        );
        // Last scrape 12 s ago: the next is due within this tick.
        cache.last_asked[v].store(now - 12_000, Ordering::Relaxed);
        assert_eq!(
            cache
                .prewarm(&Arc::new(fixture::snapshot(3)), tick)
                .unwrap(),
            1
        );
        // Two real requests teach the gap.
        let snap = Arc::new(fixture::snapshot(2));
        cache.render(&snap, &[], Format::Text, false).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        cache.render(&snap, &[], Format::Text, false).unwrap();
        let g = cache.gap[variant(Format::Text, false)].load(Ordering::Relaxed);
        assert!((30..5_000).contains(&g), "{g}");
    }

    #[test]
    fn gzip_parts_is_one_gzip_member_of_the_parts_in_order() {
        // Parts of every size around the deflater's buffers, an empty one,
        // and text that does not compress (the CRC and ISIZE are checked
        // by the decoder).
        let mut noise = Vec::new();
        let mut x: u32 = 1;
        for _ in 0..300_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            noise.push((x >> 24) as u8);
        }
        let text = "vm_cpu_seconds_total{vm_id=\"a\"} 1\n".repeat(50_000);
        let parts: Vec<&[u8]> = vec![b"", text.as_bytes(), &noise, b"x", b"", &noise[..7]];
        let gz = gzip_parts(&parts).unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, parts.concat());
        assert!(
            gz.len() < plain.len() / 2,
            "{} of {}",
            gz.len(),
            plain.len()
        );
        let mut empty = Vec::new();
        flate2::read::GzDecoder::new(&gzip_parts(&[]).unwrap()[..])
            .read_to_end(&mut empty)
            .unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn gzip_body_decodes_to_the_plain_body_for_every_format() {
        let snap = Arc::new(fixture::snapshot(300));
        let cache = ExpositionCache::new();
        let extra: Vec<Arc<dyn MetricSource>> = vec![Arc::new(Live(7))];
        for format in Format::ALL {
            let plain = cache.render(&snap, &extra, format, false).unwrap();
            let gz = cache.render(&snap, &extra, format, true).unwrap();
            let plain = String::from_utf8(plain.to_vec()).unwrap();
            assert_eq!(gunzip(&gz.to_vec()), plain);
            assert!(
                gz.len() * 5 < plain.len(),
                "compressed {} of {}",
                gz.len(),
                plain.len()
            );
        }
    }

    #[test]
    fn prefix_is_shared_and_tail_is_live() {
        let snap = Arc::new(fixture::snapshot(3));
        let cache = ExpositionCache::new();
        let a = cache
            .render(&snap, &[Arc::new(Live(1))], Format::Text, false)
            .unwrap();
        let b = cache
            .render(&snap, &[Arc::new(Live(2))], Format::Text, false)
            .unwrap();
        assert_eq!(
            a.chunks[0].as_ptr(),
            b.chunks[0].as_ptr(),
            "prefix encoded once"
        );
        assert!(
            String::from_utf8(b.to_vec())
                .unwrap()
                .contains("\nt_live 2\n")
        );
        // A new snapshot (even with the same seq) replaces the entry.
        let snap2 = Arc::new(fixture::snapshot(1));
        let c = cache.render(&snap2, &[], Format::Text, false).unwrap();
        assert!(!String::from_utf8(c.to_vec()).unwrap().contains("vm-000002"));
    }

    /// A source read from shared state, steady (kept between requests
    /// while it writes the same) or volatile (written every request).
    struct Shared {
        desc: &'static Desc,
        value: Arc<AtomicU64>,
        volatile: bool,
    }
    static STEADY: Desc = Desc::gauge("t_steady", "Moves now and then.");
    static VOLATILE: Desc = Desc::counter("t_requests_total", "Moves every request.");
    impl MetricSource for Shared {
        fn encode(&self, out: &mut MetricWriter<'_>) {
            out.family(self.desc);
            // Two series through a shared label set written twice (the
            // text writer numbers it once, the fingerprint must agree).
            let a = out.label_set(&[("vm_id", "a")]);
            let again = out.label_set(&[("vm_id", "a")]);
            out.sample_in(a, &[("k", "x")], self.value.load(Ordering::Relaxed));
            out.sample_in(again, &[("k", "y")], 1u64);
        }
        fn volatile(&self) -> bool {
            self.volatile
        }
    }

    fn text(e: &Exposition) -> String {
        if e.gzip {
            gunzip(&e.to_vec())
        } else {
            String::from_utf8(e.to_vec()).unwrap()
        }
    }

    /// The steady sources' text is written once and served until what
    /// they would write changes, including back to an earlier value; the
    /// volatile ones are current on every request; gzip decodes to the
    /// same text whether the steady part went stored or compressed.
    #[test]
    fn steady_sources_are_kept_until_they_change_and_volatile_ones_are_always_current() {
        let snap = Arc::new(fixture::snapshot(3));
        let cache = ExpositionCache::new();
        let steady = Arc::new(AtomicU64::new(5));
        let requests = Arc::new(AtomicU64::new(0));
        let extra: Vec<Arc<dyn MetricSource>> = vec![
            Arc::new(Shared {
                desc: &VOLATILE,
                value: Arc::clone(&requests),
                volatile: true,
            }),
            Arc::new(Shared {
                desc: &STEADY,
                value: Arc::clone(&steady),
                volatile: false,
            }),
        ];
        let serve = |format, gzip| {
            requests.fetch_add(1, Ordering::Relaxed);
            cache.render(&snap, &extra, format, gzip).unwrap()
        };
        let line = |v: u64| format!("\nt_steady{{vm_id=\"a\",k=\"x\"}} {v}\n");
        let a = serve(Format::Text, false);
        let b = serve(Format::Text, false);
        assert_eq!(
            a.chunks[1].as_ptr(),
            b.chunks[1].as_ptr(),
            "steady text kept"
        );
        assert!(text(&b).contains(&line(5)), "{}", text(&b));
        assert!(text(&b).contains("\nt_requests_total{vm_id=\"a\",k=\"x\"} 2\n"));
        // The volatile family comes after the steady one, whatever the order given.
        assert!(text(&b).find("t_steady").unwrap() < text(&b).find("t_requests_total").unwrap());
        steady.store(6, Ordering::Relaxed);
        let c = serve(Format::Text, false);
        assert_ne!(b.chunks[1].as_ptr(), c.chunks[1].as_ptr(), "written afresh");
        assert!(text(&c).contains(&line(6)));
        steady.store(5, Ordering::Relaxed);
        assert!(
            text(&serve(Format::Text, false)).contains(&line(5)),
            "back to 5"
        );

        // Gzip: stored the first time, compressed from then on; both are
        // the plain text (volatile counts aside), and compressing shrinks it.
        steady.store(7, Ordering::Relaxed);
        let plain = text(&serve(Format::Text, false));
        let first = serve(Format::Text, true);
        let second = serve(Format::Text, true);
        let third = serve(Format::Text, true);
        let n = requests.load(Ordering::Relaxed);
        for (e, at) in [(&first, n - 2), (&second, n - 1), (&third, n)] {
            let want = plain.replace(
                &format!("k=\"x\"}} {}\n", n - 3),
                &format!("k=\"x\"}} {at}\n"),
            );
            assert_eq!(text(e), want);
        }
        assert!(
            second.chunks[1].len() < first.chunks[1].len(),
            "compressed {} stored {}",
            second.chunks[1].len(),
            first.chunks[1].len()
        );
        assert_eq!(
            second.chunks[1].as_ptr(),
            third.chunks[1].as_ptr(),
            "compressed once"
        );
        // Each format keeps its own.
        for format in Format::ALL {
            let e = serve(format, false);
            assert!(text(&e).contains("t_steady"), "{format:?}");
        }
    }

    /// A label set is part of what a fingerprint covers: the same
    /// values under another set are not the kept text.
    #[test]
    fn a_fingerprint_covers_label_sets() {
        struct Sets(Arc<AtomicU64>);
        impl MetricSource for Sets {
            fn encode(&self, out: &mut MetricWriter<'_>) {
                out.family(&STEADY);
                let name = format!("vm-{}", self.0.load(Ordering::Relaxed));
                let set = out.label_set(&[("vm_id", name.as_str())]);
                out.sample_in(set, &[], 1u64);
            }
        }
        let snap = Arc::new(fixture::snapshot(1));
        let cache = ExpositionCache::new();
        let which = Arc::new(AtomicU64::new(1));
        let extra: Vec<Arc<dyn MetricSource>> = vec![Arc::new(Sets(Arc::clone(&which)))];
        let a = cache.render(&snap, &extra, Format::Text, false).unwrap();
        which.store(2, Ordering::Relaxed);
        let b = cache.render(&snap, &extra, Format::Text, false).unwrap();
        assert!(text(&a).contains("t_steady{vm_id=\"vm-1\"} 1"));
        assert!(
            text(&b).contains("t_steady{vm_id=\"vm-2\"} 1"),
            "{}",
            text(&b)
        );
    }

    /// A cache made ten minutes ago, so that a request can be dated
    /// before the prewarm window.
    fn aged_cache() -> ExpositionCache {
        let mut cache = ExpositionCache::new();
        cache.born = Instant::now()
            .checked_sub(std::time::Duration::from_secs(600))
            .unwrap();
        cache
    }

    /// Variant `v` last asked for a second before the prewarm window.
    fn asked_long_ago(cache: &ExpositionCache, v: usize) {
        let long_ago = cache.born.elapsed().as_millis() as u64 - PREWARM_WINDOW_MS - 1000;
        cache.last_asked[v].store(long_ago, Ordering::Relaxed);
    }

    /// The gzip chunks kept for reuse go when nobody has asked for gzip in
    /// that format for the prewarm window: they are a tenth of a body.
    #[test]
    fn reuse_chunks_are_dropped_when_gzip_is_no_longer_asked_for() {
        let cache = aged_cache();
        let snap = Arc::new(fixture::snapshot(20));
        cache.render(&snap, &[], Format::Text, true).unwrap();
        assert!(cache.deflated[0].lock().unwrap().is_some());
        let tick = std::time::Duration::from_secs(5);
        cache.prewarm(&snap, tick).unwrap();
        assert!(
            cache.deflated[0].lock().unwrap().is_some(),
            "asked just now"
        );
        let v = variant(Format::Text, true);
        asked_long_ago(&cache, v);
        cache.prewarm(&snap, tick).unwrap();
        assert!(cache.deflated[0].lock().unwrap().is_none());
    }

    /// A body whose snapshot is no longer served (and no response holds)
    /// is reused for a later snapshot instead of freed.
    #[test]
    fn body_buffers_are_reused_across_snapshots() {
        let cache = ExpositionCache::new();
        let mut snaps = Vec::new();
        let mut s = fixture::snapshot(50);
        for _ in 0..4 {
            s = fixture::next_tick(&s);
            snaps.push(Arc::new(s.clone()));
        }
        let first = cache.render(&snaps[0], &[], Format::Text, false).unwrap();
        let first_ptr = first.chunks[0].as_ptr();
        // Still held by a response: the next snapshot gets another buffer.
        let second = cache.render(&snaps[1], &[], Format::Text, false).unwrap();
        let second_ptr = second.chunks[0].as_ptr();
        assert_ne!(second_ptr, first_ptr);
        drop(first);
        drop(second);
        // Snapshot 0's body went back to the pool when its last response
        // was dropped, snapshot 1's when the cache moved on: snapshot 2 is
        // written into one of them.
        let third = cache.render(&snaps[2], &[], Format::Text, false).unwrap();
        let third_ptr = third.chunks[0].as_ptr();
        assert!(third_ptr == first_ptr || third_ptr == second_ptr);
        let plain = String::from_utf8(third.to_vec()).unwrap();
        assert_eq!(plain, crate::export::encode(Format::Text, &[&*snaps[2]]));
    }

    /// The chunks kept for the next gzip do not keep their snapshot's
    /// body: once the cache moves on, that body goes back to the pool and
    /// the next snapshot is written into it (one body alive, not two).
    /// (With plain requests too: gzip alone keeps no body at all.)
    #[test]
    fn kept_gzip_chunks_do_not_hold_the_previous_body() {
        let cache = ExpositionCache::new();
        let a = Arc::new(fixture::snapshot(200));
        let b = Arc::new(fixture::next_tick(&a));
        let body_ptr = |s: &Arc<Snapshot>| {
            let e = cache.entry(s);
            e.slot(Format::Text)
                .get()
                .and_then(|p| p.body.get())
                .map(|b| b.as_ptr())
        };
        drop(cache.render(&a, &[], Format::Text, false).unwrap());
        let gz_a = cache.render(&a, &[], Format::Text, true).unwrap();
        let a_body = body_ptr(&a).expect("encoded");
        drop(gz_a);
        let gz_b = cache.render(&b, &[], Format::Text, true).unwrap();
        assert_eq!(
            body_ptr(&b),
            Some(a_body),
            "b got a new buffer: a's is still held"
        );
        let plain = cache.render(&b, &[], Format::Text, false).unwrap();
        assert_eq!(
            gunzip(&gz_b.to_vec()),
            String::from_utf8(plain.to_vec()).unwrap()
        );
    }

    /// A scraper that asks only for gzip gets, snapshot after snapshot
    /// (chunks reused and compressed again), the bytes the whole text
    /// would give, in every format, and no text body is kept for it; a
    /// plain request for the same snapshot still gets the whole text.
    #[test]
    fn gzip_only_scrapes_stream_the_prefix_and_get_the_same_bytes() {
        for format in [Format::Text, Format::OpenMetrics, Format::Json] {
            for n in [0, 3, 300] {
                let streamed = ExpositionCache::new();
                let whole = ExpositionCache::new();
                let mut s = fixture::snapshot(n);
                // Asked for plain once: `whole` encodes each prefix whole.
                drop(
                    whole
                        .render(&Arc::new(s.clone()), &[], format, false)
                        .unwrap(),
                );
                let prefix_body = |c: &ExpositionCache, snap: &Arc<Snapshot>| {
                    c.entry(snap)
                        .slot(format)
                        .get()
                        .map(|p| p.body.get().is_some())
                };
                for i in 0..4 {
                    let snap = Arc::new(s.clone());
                    let a = streamed.render(&snap, &[], format, true).unwrap();
                    let b = whole.render(&snap, &[], format, true).unwrap();
                    assert!(
                        a.to_vec() == b.to_vec(),
                        "{format:?}, {n} VMs, snapshot {i}"
                    );
                    assert_eq!(prefix_body(&streamed, &snap), Some(false));
                    assert_eq!(prefix_body(&whole, &snap), Some(true));
                    s = fixture::next_tick(&s);
                }
                let snap = Arc::new(s);
                let gz = streamed.render(&snap, &[], format, true).unwrap();
                let plain = streamed.render(&snap, &[], format, false).unwrap();
                let plain = String::from_utf8(plain.to_vec()).unwrap();
                assert_eq!(gunzip(&gz.to_vec()), plain, "{format:?}, {n} VMs");
                assert_eq!(plain, crate::export::encode(format, &[&*snap]));
            }
        }
    }

    /// The pool's body buffers go once nobody asks for plain text (a
    /// Prometheus scrapes gzip): they are a body each.
    #[test]
    fn body_buffers_are_let_go_when_nobody_asks_for_plain_text() {
        let cache = aged_cache();
        let a = Arc::new(fixture::snapshot(50));
        let b = Arc::new(fixture::next_tick(&a));
        drop(cache.render(&a, &[], Format::Text, false).unwrap());
        asked_long_ago(&cache, variant(Format::Text, false));
        // b is encoded for gzip only; a's body went back to the pool.
        cache.render(&b, &[], Format::Text, true).unwrap();
        let pooled = || cache.bodies.free.lock().unwrap().len();
        assert_eq!(pooled(), 1);
        cache
            .prewarm(&b, std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(pooled(), 0);
    }

    fn gzip_once(body: &[u8], tail: &[u8]) -> String {
        let hasher = foldhash::quality::RandomState::default();
        let (gz, _) = gzip_chunked(&Bytes::copy_from_slice(body), &[], None, &hasher).unwrap();
        let len = gz.len + tail.len() as u64;
        gunzip(&[&gz.head[..], &gzip_tail(gz.crc.clone(), len, tail)[..]].concat())
    }

    #[test]
    fn tiny_empty_and_long_tails_gzip_correctly() {
        assert_eq!(gzip_once(b"", b""), "");
        assert_eq!(gzip_once(b"a", b"bc"), "abc");
        // A tail longer than one stored block (65535 bytes), and one that
        // fills blocks exactly.
        for n in [200_000, 131_070] {
            let tail: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert_eq!(
                gzip_once(b"head\n", tail.as_bytes()),
                format!("head\n{tail}")
            );
        }
    }

    /// The compressed prefix is held once: the chunks kept for the next
    /// snapshot are slices of the gzip body being served, not copies.
    #[test]
    fn kept_chunks_are_slices_of_the_served_gzip_body() {
        let cache = ExpositionCache::new();
        let a = Arc::new(fixture::snapshot(300));
        let gz = cache.render(&a, &[], Format::Text, true).unwrap();
        let head = &gz.chunks[0];
        let served = head.as_ptr() as usize..head.as_ptr() as usize + head.len();
        let kept = cache.deflated[0].lock().unwrap();
        let chunks = &kept.as_ref().unwrap().chunks;
        assert!(chunks.len() > 10, "{}", chunks.len());
        for c in chunks {
            let p = c.deflated.as_ptr() as usize;
            assert!(served.contains(&p) && served.contains(&(p + c.deflated.len() - 1)));
        }
    }

    /// A new snapshot reuses the compressed chunks whose text did not
    /// change and still decodes to exactly its plain body, also when
    /// families come and go between snapshots.
    #[test]
    fn next_snapshot_reuses_unchanged_chunks() {
        let cache = ExpositionCache::new();
        let a = Arc::new(fixture::snapshot(300));
        let mut b = fixture::snapshot(300);
        b.seq = a.seq + 1;
        if let Some(vm) = b.vms.get_mut(7) {
            vm.cpu.user += 1.0;
        }
        let mut c = b.clone();
        c.seq = b.seq + 1;
        for vm in &mut c.vms {
            vm.disk = None; // two families disappear
        }
        let mut d = c.clone();
        d.seq = c.seq + 1;
        for vm in &mut d.vms {
            vm.cpu.guest = None; // another one
        }
        let mut chunk_sets = Vec::new();
        for snap in [a, Arc::new(b), Arc::new(c), Arc::new(d)] {
            for format in Format::ALL {
                let gz = cache.render(&snap, &[], format, true).unwrap();
                let plain = cache.render(&snap, &[], format, false).unwrap();
                assert_eq!(
                    gunzip(&gz.to_vec()),
                    String::from_utf8(plain.to_vec()).unwrap(),
                    "{format:?} seq {}",
                    snap.seq
                );
            }
            let text = cache.deflated[0].lock().unwrap();
            let d = text.as_ref().unwrap();
            chunk_sets.push((d.chunks.len(), d.compressed));
        }
        let reused = |i: usize| chunk_sets[i].0 - chunk_sets[i].1;
        let n = chunk_sets[1].0;
        assert!(n > 10, "{n} chunks");
        // One VM's CPU changed: only the chunk holding that family is new,
        // and the last one (host and self: the snapshot sequence moved).
        assert_eq!(reused(1), n - 2, "{:?}", chunk_sets[1]);
        // Families removed and added: the untouched ones are still reused.
        assert!(reused(2) >= n - 4, "{} of {n}", reused(2));
        assert!(reused(3) >= chunk_sets[3].0 - 2, "{}", reused(3));
    }
}
