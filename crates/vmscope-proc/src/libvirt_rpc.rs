//! The few messages of libvirt's remote protocol that vmscope speaks: XDR
//! (RFC 4506) over libvirtd's unix socket, as `remote_protocol.x` and
//! `virnetprotocol.x` define them.
//!
//! Writes: the calls `REMOTE_PROC_AUTH_LIST`, `REMOTE_PROC_CONNECT_OPEN`,
//! `REMOTE_PROC_CONNECT_GET_ALL_DOMAIN_STATS` and
//! `REMOTE_PROC_CONNECT_CLOSE`. Reads: a message header, an error reply's
//! text, the auth list and the all-domain-stats answer, and turns each
//! domain's typed parameters into [`LibvirtDomainStats`] (per-disk counters
//! and balloon figures, in bytes). Fails: [`ParseError`] of kind
//! [`FileKind::LibvirtRpc`]; never panics, never allocates more than the
//! input could hold (counts are checked against the bytes left before any
//! list grows).
//!
//! Why a hand-written client instead of libvirt's C library: see
//! `docs/hypervisor-apis.md` ("libvirt: why the wire protocol").

use crate::error::{FileKind, ParseError};
use crate::qmp::{GuestMemStats, QmpBlockStats};

const KIND: FileKind = FileKind::LibvirtRpc;

/// `REMOTE_PROGRAM`.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
/// `REMOTE_PROTOCOL_VERSION`.
pub const REMOTE_PROTOCOL_VERSION: u32 = 1;
pub const PROC_CONNECT_OPEN: i32 = 1;
pub const PROC_CONNECT_CLOSE: i32 = 2;
pub const PROC_AUTH_LIST: i32 = 66;
pub const PROC_CONNECT_GET_ALL_DOMAIN_STATS: i32 = 344;
/// `VIR_CONNECT_RO`.
pub const CONNECT_RO: u32 = 1;
/// `VIR_DOMAIN_STATS_BALLOON`.
pub const STATS_BALLOON: u32 = 4;
/// `VIR_DOMAIN_STATS_BLOCK`.
pub const STATS_BLOCK: u32 = 32;
/// `VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE`: running domains only.
pub const STATS_ACTIVE: u32 = 1;
/// `VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT`: a domain busy with another
/// job gives what it has at once instead of making the call wait.
pub const STATS_NOWAIT: u32 = 1 << 29;
/// `REMOTE_AUTH_NONE`.
pub const AUTH_NONE: i32 = 0;
/// The largest message accepted (libvirt's own `VIR_NET_MESSAGE_MAX`).
pub const MAX_MESSAGE: usize = 32 << 20;
/// `REMOTE_STRING_MAX`.
const MAX_STRING: usize = 1 << 20;

/// `VIR_NET_CALL`, `VIR_NET_REPLY`.
pub const TYPE_CALL: u32 = 0;
pub const TYPE_REPLY: u32 = 1;
/// `VIR_NET_OK`, `VIR_NET_ERROR`.
pub const STATUS_OK: u32 = 0;
pub const STATUS_ERROR: u32 = 1;

/// A message header (`virNetMessageHeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub program: u32,
    pub version: u32,
    pub procedure: i32,
    pub kind: u32,
    pub serial: u32,
    pub status: u32,
}

/// The header's size on the wire.
pub const HEADER_LEN: usize = 24;

/// One whole call: length word, header, body.
pub fn encode_call(procedure: i32, serial: u32, body: &[u8]) -> Vec<u8> {
    let len = 4 + HEADER_LEN + body.len();
    let mut out = Vec::with_capacity(len);
    // Calls are small (at most a URI): the length fits.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    for w in [
        REMOTE_PROGRAM,
        REMOTE_PROTOCOL_VERSION,
        procedure as u32,
        TYPE_CALL,
        serial,
        STATUS_OK,
    ] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (4 - s.len() % 4) % 4, 0);
}

/// `remote_connect_open_args`: a URI (a present `remote_string`) and flags.
pub fn connect_open_args(uri: &str, flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + uri.len());
    out.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut out, uri);
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// `remote_connect_get_all_domain_stats_args` for every domain.
pub fn get_all_domain_stats_args(stats: u32, flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&stats.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// The length a message's first word announces (the word included),
/// checked against [`MAX_MESSAGE`].
pub fn message_len(word: [u8; 4]) -> Result<usize, ParseError> {
    let n = u32::from_be_bytes(word) as usize;
    if n < 4 + HEADER_LEN {
        return Err(malformed("a message shorter than its header"));
    }
    if n > MAX_MESSAGE {
        return Err(malformed("a message larger than 32 MiB"));
    }
    Ok(n)
}

/// Splits a message (without its length word) into header and body.
pub fn parse_header(msg: &[u8]) -> Result<(Header, &[u8]), ParseError> {
    let mut r = Reader::new(msg);
    let h = Header {
        program: r.u32("program")?,
        version: r.u32("version")?,
        procedure: r.u32("procedure")? as i32,
        kind: r.u32("type")?,
        serial: r.u32("serial")?,
        status: r.u32("status")?,
    };
    Ok((h, r.rest()))
}

/// The text of an error reply (`virNetMessageError`): its message, else
/// its code and domain.
pub fn parse_error(body: &[u8]) -> Result<String, ParseError> {
    let mut r = Reader::new(body);
    let code = r.u32("error code")? as i32;
    let domain = r.u32("error domain")? as i32;
    let message = if r.u32("error message")? != 0 {
        Some(r.string("error message")?)
    } else {
        None
    };
    let mut text = message.unwrap_or_else(|| format!("libvirt error {code} (domain {domain})"));
    // Bounded for logs: libvirt's messages are one line, but a hostile
    // peer's need not be.
    if text.len() > 512 {
        let mut cut = 512;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Ok(text)
}

/// `remote_auth_list_ret`: the authentication types the server wants.
pub fn parse_auth_list(body: &[u8]) -> Result<Vec<i32>, ParseError> {
    let mut r = Reader::new(body);
    let n = r.count("auth types", 4, 20)?;
    (0..n)
        .map(|_| r.u32("auth type").map(|t| t as i32))
        .collect()
}

/// A typed parameter's value (`remote_typed_param_value`).
#[derive(Debug, Clone, PartialEq)]
pub enum TypedValue {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    Double(f64),
    Boolean(bool),
    String(String),
}

impl TypedValue {
    /// The value as a non-negative integer (counters come as `ullong`,
    /// some as `uint` or `llong` depending on the version).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            TypedValue::UInt(v) => Some(u64::from(v)),
            TypedValue::ULLong(v) => Some(v),
            TypedValue::Int(v) => u64::try_from(v).ok(),
            TypedValue::LLong(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One domain's record of `virConnectGetAllDomainStats`, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStatsRecord {
    pub name: String,
    pub uuid: [u8; 16],
    pub params: Vec<(String, TypedValue)>,
}

/// `remote_connect_get_all_domain_stats_ret`.
pub fn parse_all_domain_stats(body: &[u8]) -> Result<Vec<DomainStatsRecord>, ParseError> {
    let mut r = Reader::new(body);
    // A record is at least a name (4), a uuid (16), an id (4) and a count (4).
    let n = r.count("domain records", 28, 16_384)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string("domain name")?;
        let uuid = r.uuid()?;
        let _id = r.u32("domain id")?;
        // A parameter is at least a field name (4) and a type (4) + 4.
        let np = r.count("typed parameters", 12, 262_144)?;
        let mut params = Vec::with_capacity(np);
        for _ in 0..np {
            let field = r.string("parameter name")?;
            let value = match r.u32("parameter type")? {
                1 => TypedValue::Int(r.u32("int")? as i32),
                2 => TypedValue::UInt(r.u32("uint")?),
                3 => TypedValue::LLong(r.u64("llong")? as i64),
                4 => TypedValue::ULLong(r.u64("ullong")?),
                5 => TypedValue::Double(f64::from_bits(r.u64("double")?)),
                6 => TypedValue::Boolean(r.u32("boolean")? != 0),
                7 => TypedValue::String(r.string("string")?),
                _ => return Err(malformed("a typed parameter of unknown type")),
            };
            params.push((field, value));
        }
        out.push(DomainStatsRecord { name, uuid, params });
    }
    Ok(out)
}

/// What vmscope takes from one domain's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibvirtDomainStats {
    pub name: String,
    /// The domain's UUID, lower-case and hyphenated as libvirt prints it.
    pub uuid: String,
    /// Per disk, `device` = the guest's target name (`vda`, `sdb`).
    pub disks: Vec<QmpBlockStats>,
    /// `balloon.current`: the memory the guest has with the balloon applied.
    pub balloon_bytes: Option<u64>,
    /// What the guest's balloon driver reported; `None` when it never did.
    pub guest: Option<GuestMemStats>,
}

/// The most disks taken from one domain (bounded label values).
pub const MAX_DISKS: usize = 64;

/// Formats a UUID as libvirt does.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// Reads one record's `block.*` and `balloon.*` parameters. Disks without a
/// name or without their four read/write counters (an empty CD-ROM drive)
/// are left out; balloon sizes come in KiB and leave in bytes.
pub fn domain_stats(rec: &DomainStatsRecord) -> LibvirtDomainStats {
    let mut disks: Vec<QmpBlockStats> = Vec::new();
    // Index -> (name, counters seen) while reading.
    let mut seen: Vec<(u32, Option<String>, [Option<u64>; 8])> = Vec::new();
    let mut balloon: [Option<u64>; 11] = [None; 11];
    const BALLOON: [&str; 11] = [
        "current",
        "last-update",
        "available",
        "usable",
        "unused",
        "disk_caches",
        "swap_in",
        "swap_out",
        "major_fault",
        "minor_fault",
        "maximum",
    ];
    const BLOCK: [&str; 8] = [
        "rd.bytes", "wr.bytes", "rd.reqs", "wr.reqs", "fl.reqs", "rd.times", "wr.times", "fl.times",
    ];
    for (field, value) in &rec.params {
        if let Some(rest) = field.strip_prefix("balloon.") {
            if let Some(i) = BALLOON.iter().position(|b| *b == rest) {
                balloon[i] = value.as_u64();
            }
        } else if let Some(rest) = field.strip_prefix("block.") {
            let Some((idx, key)) = rest.split_once('.') else {
                continue;
            };
            let Ok(idx) = idx.parse::<u32>() else {
                continue;
            };
            let slot = match seen.iter().position(|s| s.0 == idx) {
                Some(p) => p,
                None if seen.len() < MAX_DISKS => {
                    seen.push((idx, None, [None; 8]));
                    seen.len() - 1
                }
                None => continue,
            };
            if key == "name" {
                if let TypedValue::String(s) = value {
                    seen[slot].1 = Some(s.clone());
                }
            } else if let Some(i) = BLOCK.iter().position(|b| *b == key) {
                seen[slot].2[i] = value.as_u64();
            }
        }
    }
    for (_, name, c) in seen {
        let (Some(device), Some(rb), Some(wb), Some(rr), Some(wr)) = (name, c[0], c[1], c[2], c[3])
        else {
            continue;
        };
        if disks.iter().any(|d| d.device == device) {
            continue;
        }
        disks.push(QmpBlockStats {
            device,
            read_bytes: rb,
            write_bytes: wb,
            read_requests: rr,
            write_requests: wr,
            flush_requests: c[4].unwrap_or(0),
            read_time_ns: c[5].unwrap_or(0),
            write_time_ns: c[6].unwrap_or(0),
            flush_time_ns: c[7].unwrap_or(0),
        });
    }
    let kib = |v: Option<u64>| v.map(|k| k.saturating_mul(1024));
    // libvirt leaves out what the guest did not report; no report at all
    // (no driver, no stats period) leaves out `last-update`.
    let guest = balloon[1]
        .filter(|t| *t > 0)
        .map(|last_update| GuestMemStats {
            last_update,
            total_bytes: kib(balloon[2]),
            available_bytes: kib(balloon[3]),
            free_bytes: kib(balloon[4]),
            disk_caches_bytes: kib(balloon[5]),
            swap_in_bytes: kib(balloon[6]),
            swap_out_bytes: kib(balloon[7]),
            major_faults: balloon[8],
            minor_faults: balloon[9],
        });
    LibvirtDomainStats {
        name: rec.name.clone(),
        uuid: format_uuid(&rec.uuid),
        disks,
        balloon_bytes: kib(balloon[0]),
        guest,
    }
}

fn malformed(what: &'static str) -> ParseError {
    ParseError::Malformed { kind: KIND, what }
}

/// A cursor over XDR data that never reads past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn rest(self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(ParseError::Truncated { kind: KIND, field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        let hi = u64::from(self.u32(field)?);
        let lo = u64::from(self.u32(field)?);
        Ok(hi << 32 | lo)
    }

    /// A list's length, refused when `max` is passed or when the bytes
    /// left cannot hold that many items of at least `min_item` bytes.
    fn count(
        &mut self,
        field: &'static str,
        min_item: usize,
        max: usize,
    ) -> Result<usize, ParseError> {
        let n = self.u32(field)? as usize;
        if n > max || n.saturating_mul(min_item) > self.buf.len() {
            return Err(ParseError::InvalidValue {
                kind: KIND,
                field,
                value: n.to_string(),
            });
        }
        Ok(n)
    }

    fn string(&mut self, field: &'static str) -> Result<String, ParseError> {
        let n = self.u32(field)? as usize;
        if n > MAX_STRING {
            return Err(ParseError::InvalidValue {
                kind: KIND,
                field,
                value: n.to_string(),
            });
        }
        let padded = n + (4 - n % 4) % 4;
        let b = self.take(padded, field)?;
        std::str::from_utf8(&b[..n])
            .map(str::to_owned)
            .map_err(|source| ParseError::NotUtf8 { kind: KIND, source })
    }

    fn uuid(&mut self) -> Result<[u8; 16], ParseError> {
        let b = self.take(16, "domain uuid")?;
        let mut u = [0u8; 16];
        u.copy_from_slice(b);
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An encoder for the replies a libvirtd sends, for the tests.
    pub(crate) struct W(pub Vec<u8>);
    impl W {
        pub fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn s(&mut self, v: &str) -> &mut Self {
            put_string(&mut self.0, v);
            self
        }
        pub fn ull(&mut self, name: &str, v: u64) -> &mut Self {
            self.s(name).u32(4).u64(v)
        }
    }

    fn record(w: &mut W, name: &str, params: &dyn Fn(&mut W) -> u32) {
        w.s(name);
        w.0.extend_from_slice(&[0x12; 16]);
        w.u32(3);
        let mut p = W(Vec::new());
        let n = params(&mut p);
        w.u32(n);
        w.0.extend_from_slice(&p.0);
    }

    #[test]
    fn encodes_calls_as_libvirt_reads_them() {
        let c = encode_call(
            PROC_CONNECT_OPEN,
            7,
            &connect_open_args("qemu:///system", CONNECT_RO),
        );
        // length word, header, then a present string padded to 4 bytes.
        assert_eq!(c.len(), 4 + 24 + 4 + 4 + 16 + 4);
        assert_eq!(&c[0..4], &(c.len() as u32).to_be_bytes());
        assert_eq!(&c[4..8], &[0x20, 0x00, 0x80, 0x86]);
        assert_eq!(&c[12..16], &1u32.to_be_bytes());
        assert_eq!(&c[20..24], &7u32.to_be_bytes());
        assert_eq!(&c[32..36], &14u32.to_be_bytes());
        assert_eq!(&c[36..50], b"qemu:///system");
        assert_eq!(&c[50..52], &[0, 0]);
        assert_eq!(&c[52..56], &1u32.to_be_bytes());
        assert_eq!(
            get_all_domain_stats_args(36, 1),
            [0, 0, 0, 0, 0, 0, 0, 36, 0, 0, 0, 1]
        );
    }

    #[test]
    fn reads_headers_errors_and_lengths() {
        let mut w = W(Vec::new());
        w.u32(REMOTE_PROGRAM)
            .u32(1)
            .u32(344)
            .u32(TYPE_REPLY)
            .u32(9)
            .u32(STATUS_ERROR);
        w.u32(1).u32(10).u32(1).s("Domain not found: nope").u32(2);
        let (h, body) = parse_header(&w.0).unwrap();
        assert_eq!(h.procedure, 344);
        assert_eq!(h.serial, 9);
        assert_eq!(h.status, STATUS_ERROR);
        assert_eq!(parse_error(body).unwrap(), "Domain not found: nope");
        // No message: code and domain.
        let mut e = W(Vec::new());
        e.u32(38).u32(7).u32(0);
        assert_eq!(parse_error(&e.0).unwrap(), "libvirt error 38 (domain 7)");
        assert!(parse_header(&[0; 20]).is_err());
        assert!(message_len(28u32.to_be_bytes()).is_ok());
        assert!(message_len(27u32.to_be_bytes()).is_err());
        assert!(message_len(u32::MAX.to_be_bytes()).is_err());
        let mut a = W(Vec::new());
        a.u32(2).u32(0).u32(2);
        assert_eq!(parse_auth_list(&a.0).unwrap(), vec![0, 2]);
    }

    #[test]
    fn reads_disks_and_balloon_from_a_stats_answer() {
        let mut w = W(Vec::new());
        w.u32(2);
        record(&mut w, "web1", &|p| {
            p.s("balloon.current").u32(4).u64(131_072);
            p.ull("balloon.maximum", 131_072);
            p.ull("balloon.swap_in", 8);
            p.ull("balloon.major_fault", 5);
            p.ull("balloon.available", 100_000);
            p.ull("balloon.unused", 60_000);
            p.ull("balloon.usable", 80_000);
            p.ull("balloon.disk_caches", 10_000);
            p.s("balloon.last-update").u32(3).u64(1_700_000_000);
            p.s("block.count").u32(2).u32(2);
            p.s("block.0.name").u32(7).s("vda");
            p.s("block.0.path").u32(7).s("/img/a.qcow2");
            p.ull("block.0.rd.reqs", 10);
            p.ull("block.0.rd.bytes", 5120);
            p.ull("block.0.rd.times", 1_000_000);
            p.ull("block.0.wr.reqs", 2);
            p.ull("block.0.wr.bytes", 1024);
            p.ull("block.0.fl.reqs", 1);
            // An empty CD-ROM: a name, no counters.
            p.s("block.1.name").u32(7).s("sda");
            p.s("some.future.double").u32(5).u64(1.5f64.to_bits());
            p.s("some.flag").u32(6).u32(1);
            p.s("some.int").u32(1).u32(-3i32 as u32);
            22
        });
        record(&mut w, "idle", &|_| 0);
        let recs = parse_all_domain_stats(&w.0).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].params.len(), 22);
        let s = domain_stats(&recs[0]);
        assert_eq!(s.name, "web1");
        assert_eq!(s.uuid, "12121212-1212-1212-1212-121212121212");
        assert_eq!(s.balloon_bytes, Some(128 << 20));
        assert_eq!(s.disks.len(), 1);
        let d = &s.disks[0];
        assert_eq!(d.device, "vda");
        assert_eq!((d.read_bytes, d.write_bytes), (5120, 1024));
        assert_eq!(
            (d.read_requests, d.write_requests, d.flush_requests),
            (10, 2, 1)
        );
        assert_eq!((d.read_time_ns, d.write_time_ns), (1_000_000, 0));
        let g = s.guest.unwrap();
        assert_eq!(g.last_update, 1_700_000_000);
        assert_eq!(g.total_bytes, Some(100_000 * 1024));
        assert_eq!(g.available_bytes, Some(80_000 * 1024));
        assert_eq!(g.used_bytes(), Some(30_000 * 1024));
        assert_eq!(g.swap_in_bytes, Some(8 * 1024));
        assert_eq!(g.swap_out_bytes, None);
        assert_eq!(g.major_faults, Some(5));
        let idle = domain_stats(&recs[1]);
        assert!(idle.disks.is_empty() && idle.guest.is_none() && idle.balloon_bytes.is_none());
    }

    #[test]
    fn refuses_bad_answers_without_allocating_for_them() {
        // A count far beyond the bytes that follow.
        let mut w = W(Vec::new());
        w.u32(16_000);
        assert!(matches!(
            parse_all_domain_stats(&w.0),
            Err(ParseError::InvalidValue { .. })
        ));
        // Cut inside a record.
        let mut w = W(Vec::new());
        w.u32(1);
        record(&mut w, "a", &|p| {
            p.ull("block.0.rd.bytes", 1);
            1
        });
        for cut in 0..w.0.len() {
            assert!(parse_all_domain_stats(&w.0[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_all_domain_stats(&w.0).is_ok());
        // An unknown parameter type.
        let mut w = W(Vec::new());
        w.u32(1);
        record(&mut w, "a", &|p| {
            p.s("x").u32(99).u32(0).u32(0);
            1
        });
        assert!(parse_all_domain_stats(&w.0).is_err());
        // A string that is not UTF-8.
        let mut w = W(Vec::new());
        w.u32(1).u32(2);
        w.0.extend_from_slice(&[0xff, 0xfe, 0, 0]);
        assert!(parse_all_domain_stats(&w.0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(recs) = parse_all_domain_stats(&data) {
                for r in &recs {
                    let s = domain_stats(r);
                    proptest::prop_assert!(s.disks.len() <= MAX_DISKS);
                }
            }
            let _ = parse_header(&data);
            let _ = parse_error(&data);
            let _ = parse_auth_list(&data);
        }
    }
}
