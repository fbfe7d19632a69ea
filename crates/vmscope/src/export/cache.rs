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
//! ticks. The body is sent as the two chunks, never concatenated.
//!
//! Gzip keeps the same split: the prefix is compressed once into a gzip
//! header plus a raw deflate stream ended with a sync flush (byte-aligned,
//! not final); each request deflates only its tail as a new final block
//! sequence and appends the gzip trailer (CRC-32 continued from the cached
//! prefix state, total length). The result is one ordinary gzip member.
//!
//! Failure: a deflate error (which would be a bug) is a [`CacheError`]; the
//! cache keeps no partial state, so the next request tries again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

use super::MetricSource;
use super::writer::{Format, MetricWriter, WriterState};
use crate::model::Snapshot;

/// Deflate level for the cached prefix (compressed once per tick per format).
/// Measured on 1000 VMs (2.9 MB of text): level 1 = 260 KB in 8 ms, level 3
/// = 203 KB in 28 ms, level 6 = 216 KB in 49 ms. The agent's CPU on a busy
/// host matters more than 60 KB per scrape.
const PREFIX_LEVEL: u32 = 1;
/// Deflate level for the per-request tail (a few KiB, on the request path).
const TAIL_LEVEL: u32 = 1;

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
            last_asked: Default::default(),
            gap: Default::default(),
            born: Instant::now(),
        }
    }
}

/// A variant not asked for within this long is no longer pre-encoded
/// (covers scrape intervals up to a couple of minutes).
const PREWARM_WINDOW_MS: u64 = 180_000;

fn variant(format: Format, gzip: bool) -> usize {
    let f = match format {
        Format::Text => 0,
        Format::OpenMetrics => 1,
        Format::Json => 2,
    };
    f * 2 + usize::from(gzip)
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
    body: Bytes,
    state: WriterState,
    gzip: OnceLock<GzipPrefix>,
}

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
            .get_or_init(|| encode_prefix(&entry.snapshot, format));

        let mut tail = String::with_capacity(16 * 1024);
        let mut w = MetricWriter::resume(&mut tail, format, &prefix.state);
        for s in extra {
            s.encode(&mut w);
        }
        w.finish();

        let chunks = if gzip {
            let gz = match prefix.gzip.get() {
                Some(gz) => gz,
                None => {
                    let built = gzip_prefix(&prefix.body)?;
                    // A concurrent request may have won the race: either copy is fine.
                    let _ = prefix.gzip.set(built);
                    prefix.gzip.get().ok_or(CacheError::DeflateStalled)?
                }
            };
            vec![gz.head.clone(), gzip_tail(gz, tail.as_bytes())?]
        } else {
            vec![prefix.body.clone(), Bytes::from(tail)]
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
        for (i, (format, gzip)) in VARIANTS.iter().enumerate() {
            let asked = self
                .last_asked
                .get(i)
                .map_or(0, |a| a.load(Ordering::Relaxed));
            if asked == 0 || now.saturating_sub(asked) > PREWARM_WINDOW_MS {
                continue;
            }
            let gap = self.gap.get(i).map_or(0, |g| g.load(Ordering::Relaxed));
            // 10 % slack: scrapes jitter.
            if gap != 0 && asked + gap > now + horizon + gap / 10 {
                continue;
            }
            let prefix = entry
                .slot(*format)
                .get_or_init(|| encode_prefix(&entry.snapshot, *format));
            if *gzip && prefix.gzip.get().is_none() {
                let built = gzip_prefix(&prefix.body)?;
                let _ = prefix.gzip.set(built);
            }
            n += 1;
        }
        Ok(n)
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

fn encode_prefix(snapshot: &Snapshot, format: Format) -> Prefix {
    // ~130 bytes per series, ~32 series per VM: start close to the final size.
    let mut body = String::with_capacity(4096 + snapshot.vms.len() * 4600);
    let mut w = MetricWriter::new(&mut body, format);
    snapshot.encode(&mut w);
    let state = w.suspend();
    Prefix {
        body: Bytes::from(body),
        state,
        gzip: OnceLock::new(),
    }
}

fn gzip_prefix(body: &[u8]) -> Result<GzipPrefix, CacheError> {
    let mut out = Vec::with_capacity(body.len() / 8 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    let mut c = Compress::new(Compression::new(PREFIX_LEVEL), false);
    deflate(&mut c, body, &mut out, FlushCompress::Sync)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(body);
    Ok(GzipPrefix {
        head: Bytes::from(out),
        crc,
        len: body.len() as u64,
    })
}

fn gzip_tail(prefix: &GzipPrefix, tail: &[u8]) -> Result<Bytes, CacheError> {
    let mut out = Vec::with_capacity(tail.len() / 4 + 64);
    let mut c = Compress::new(Compression::new(TAIL_LEVEL), false);
    deflate(&mut c, tail, &mut out, FlushCompress::Finish)?;
    let mut crc = prefix.crc.clone();
    crc.update(tail);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32 by definition.
    #[allow(clippy::cast_possible_truncation)]
    let isize = (prefix.len + tail.len() as u64) as u32;
    out.extend_from_slice(&isize.to_le_bytes());
    Ok(Bytes::from(out))
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]
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

    #[test]
    fn tiny_and_empty_bodies_gzip_correctly() {
        let gz = gzip_prefix(b"").unwrap();
        assert_eq!(
            gunzip(&[&gz.head[..], &gzip_tail(&gz, b"").unwrap()[..]].concat()),
            ""
        );
        let gz = gzip_prefix(b"a").unwrap();
        assert_eq!(
            gunzip(&[&gz.head[..], &gzip_tail(&gz, b"bc").unwrap()[..]].concat()),
            "abc"
        );
    }
}
