//! `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat`.
//!
//! Reads one stat line and emits a [`ProcStat`] with times in clock ticks and
//! RSS in pages: the caller converts with `sysconf(_SC_CLK_TCK)` and
//! `sysconf(_SC_PAGESIZE)`, which this crate never guesses.
//!
//! The `comm` field is whatever the process set with `prctl(PR_SET_NAME)`, so
//! it may hold spaces, `(`, `)`, newlines and non-UTF-8 bytes; the line is
//! therefore split after the *last* `)`. Fails with [`ParseError`] when the
//! line is empty, has no `(...)`, or ends before `rss` (field 24); `processor`
//! (39) and `guest_time` (43) are optional because a short read may cut them.
//! Without the final newline the kernel always writes, the last number is
//! taken as possibly cut and ignored ([`ParseError::Truncated`] if needed).

use crate::error::{FileKind, ParseError, field_u32, field_u64, parse_i64};

const KIND: FileKind = FileKind::Stat;
/// The highest man-page field number used (guest_time).
const LAST_FIELD: usize = 43;

/// The fields of one stat line that vmscope uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcStat<'a> {
    pub pid: u32,
    /// Raw `comm` bytes (at most 15 bytes on a normal kernel), without the
    /// parentheses: borrowed from the line, since the collectors parse every
    /// VM's stat on every tick and only discovery looks at the name.
    pub comm: &'a [u8],
    /// State letter (`R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`, ...).
    pub state: u8,
    pub ppid: u32,
    /// Field 14, user time in clock ticks (includes guest time).
    pub utime_ticks: u64,
    /// Field 15, system time in clock ticks.
    pub stime_ticks: u64,
    /// Field 20.
    pub num_threads: u64,
    /// Field 22, start time after boot in clock ticks. With `pid` it identifies
    /// a process across PID reuse.
    pub starttime_ticks: u64,
    /// Field 23, virtual memory size in bytes.
    pub vsize_bytes: u64,
    /// Field 24, resident set size in pages (a negative value reads as 0).
    pub rss_pages: u64,
    /// Field 39, CPU last run on.
    pub processor: Option<u32>,
    /// Field 43, time spent running a guest (vCPU) in clock ticks.
    pub guest_time_ticks: Option<u64>,
}

impl ProcStat<'_> {
    /// `comm` as text, non-UTF-8 bytes replaced.
    pub fn comm_lossy(&self) -> String {
        String::from_utf8_lossy(self.comm).into_owned()
    }
}

/// Parse one stat line. See the module docs for what fails.
pub fn parse_stat(buf: &[u8]) -> Result<ProcStat<'_>, ParseError> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    let open = buf
        .iter()
        .position(|&b| b == b'(')
        .ok_or(ParseError::Malformed {
            kind: KIND,
            what: "no '(' before comm",
        })?;
    let close = memchr::memrchr(b')', buf)
        .filter(|&c| c > open)
        .ok_or(ParseError::Malformed {
            kind: KIND,
            what: "no ')' after comm",
        })?;

    let pid_text = buf[..open].trim_ascii();
    let pid = field_u32(KIND, "pid", pid_text)?;
    let comm = &buf[open + 1..close];

    // tokens[0] is man-page field 3 (state), so field n is tokens[n - 3].
    // Up to field 43 (guest_time) plus one, which tells whether the line
    // goes on past the fields used.
    // On the stack: this runs for every VM on every tick.
    // A plain loop over the bytes: the iterator chain (split, filter, zip)
    // was a third of this parser's time.
    let mut slots: [&[u8]; LAST_FIELD - 1] = [&[]; LAST_FIELD - 1];
    let mut len = 0;
    let rest = &buf[close + 1..];
    let mut i = 0;
    while len < slots.len() {
        while rest.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let start = i;
        while rest.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
            i += 1;
        }
        if i == start {
            break;
        }
        slots[len] = &rest[start..i];
        len += 1;
    }
    // The kernel ends the line with '\n'; without it the last number may be
    // cut by a short read ("4867" read as "48"), so it is not used.
    let cut = !buf.last().is_some_and(u8::is_ascii_whitespace);
    if cut && len < LAST_FIELD - 1 {
        len = len.saturating_sub(1);
    }
    let tokens = &slots[..len];
    let get = |n: usize, name: &'static str| -> Result<&[u8], ParseError> {
        tokens
            .get(n - 3)
            .copied()
            // Built only on failure: this runs for seven fields of every
            // VM on every tick.
            .ok_or_else(|| {
                if cut && n - 3 == tokens.len() {
                    ParseError::Truncated {
                        kind: KIND,
                        field: name,
                    }
                } else {
                    ParseError::missing(KIND, name)
                }
            })
    };
    let num = |n: usize, name: &'static str| -> Result<u64, ParseError> {
        field_u64(KIND, name, get(n, name)?)
    };
    let opt = |n: usize, name: &'static str| -> Result<Option<u64>, ParseError> {
        match tokens.get(n - 3) {
            None => Ok(None),
            Some(t) => field_u64(KIND, name, t).map(Some),
        }
    };

    let state = match get(3, "state")? {
        [c] if c.is_ascii_alphabetic() => *c,
        other => return Err(ParseError::invalid(KIND, "state", other)),
    };
    // Fields are read in man-page order so a short line reports the first
    // field it lacks.
    let ppid = field_u32(KIND, "ppid", get(4, "ppid")?)?;
    let utime_ticks = num(14, "utime")?;
    let stime_ticks = num(15, "stime")?;
    let num_threads = num(20, "num_threads")?;
    let starttime_ticks = num(22, "starttime")?;
    let vsize_bytes = num(23, "vsize")?;
    let rss_text = get(24, "rss")?;
    let rss = parse_i64(rss_text).ok_or_else(|| ParseError::invalid(KIND, "rss", rss_text))?;
    let processor = match tokens.get(39 - 3) {
        None => None,
        Some(t) => Some(field_u32(KIND, "processor", t)?),
    };

    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid,
        utime_ticks,
        stime_ticks,
        num_threads,
        starttime_ticks,
        vsize_bytes,
        rss_pages: u64::try_from(rss).unwrap_or(0),
        processor,
        guest_time_ticks: opt(43, "guest_time")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line from a QEMU process (kernel 6.1), 52 fields.
    const QEMU: &[u8] = b"4242 (qemu-system-x86) S 1 4241 4241 0 -1 138412352 9010 0 3 0 1234 567 0 0 20 0 5 0 98765 1324752896 4867 18446744073709551615 94386305486848 94386311620237 140730398467712 0 0 0 0 4096 17544 0 0 0 17 1 0 0 0 321 0 94386313932784 94386314667729 94386340573184 140730398474627 140730398474992 140730398474992 140730398478301 0\n";

    #[test]
    fn real_qemu_line() {
        let s = parse_stat(QEMU).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, b"qemu-system-x86");
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.utime_ticks, 1234);
        assert_eq!(s.stime_ticks, 567);
        assert_eq!(s.num_threads, 5);
        assert_eq!(s.starttime_ticks, 98765);
        assert_eq!(s.vsize_bytes, 1_324_752_896);
        assert_eq!(s.rss_pages, 4867);
        assert_eq!(s.processor, Some(1));
        assert_eq!(s.guest_time_ticks, Some(321));
    }

    fn with_comm(comm: &[u8]) -> Vec<u8> {
        let mut v = b"77 (".to_vec();
        v.extend_from_slice(comm);
        v.extend_from_slice(&QEMU[b"4242 (qemu-system-x86".len()..]);
        v
    }

    #[test]
    fn comm_with_spaces_parens_and_newline() {
        for comm in [
            &b"a b c"[..],
            b") S 1 2 (",
            b"x)y",
            b"((",
            b"))",
            b"line\nbreak",
            b"CPU 0/KVM",
            b"",
        ] {
            let line = with_comm(comm);
            let s = parse_stat(&line).unwrap();
            assert_eq!(s.comm, comm, "comm {:?}", String::from_utf8_lossy(comm));
            assert_eq!(s.pid, 77);
            assert_eq!(s.utime_ticks, 1234);
            assert_eq!(s.rss_pages, 4867);
        }
    }

    #[test]
    fn non_utf8_comm() {
        let line = with_comm(b"\xff\xfe(\x80)");
        let s = parse_stat(&line).unwrap();
        assert_eq!(s.comm, b"\xff\xfe(\x80)");
        assert_eq!(s.comm_lossy(), "\u{fffd}\u{fffd}(\u{fffd})");
    }

    #[test]
    fn negative_rss_reads_zero() {
        let line = b"9 (x) Z 1 0 0 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 100 0 -3\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.rss_pages, 0);
        assert_eq!(s.state, b'Z');
        assert_eq!(s.processor, None);
        assert_eq!(s.guest_time_ticks, None);
    }

    #[test]
    fn truncated_lines() {
        // Cut anywhere up to the end of rss: error naming a field.
        let rss_end = QEMU.windows(6).position(|w| w == b" 4867 ").unwrap() + 5;
        for cut in 0..=rss_end {
            let r = parse_stat(&QEMU[..cut]);
            assert!(r.is_err(), "cut at {cut} should fail: {r:?}");
        }
        assert!(matches!(
            parse_stat(&QEMU[..rss_end - 1]),
            Err(ParseError::Truncated {
                field: "rss",
                kind: FileKind::Stat
            })
        ));
        // Cut after the space that ends rss: fine, optional fields missing.
        let s = parse_stat(&QEMU[..rss_end + 1]).unwrap();
        assert_eq!(s.rss_pages, 4867);
        assert_eq!(s.processor, None);
        // Cut inside guest_time: it is dropped, not misread.
        let gt = QEMU.windows(5).position(|w| w == b" 321 ").unwrap() + 3;
        let s = parse_stat(&QEMU[..gt]).unwrap();
        assert_eq!((s.processor, s.guest_time_ticks), (Some(1), None));
        match parse_stat(b"1 (init) S 1 1 1 0 -1 0 0 0 0 0 1 2\n") {
            Err(ParseError::MissingField {
                field: "num_threads",
                kind: FileKind::Stat,
            }) => {}
            other => panic!("expected missing num_threads, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_garbage() {
        assert!(matches!(parse_stat(b""), Err(ParseError::Empty { .. })));
        assert!(matches!(parse_stat(b"\n"), Err(ParseError::Empty { .. })));
        assert!(matches!(
            parse_stat(b"12 no parens"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_stat(b")12 ("),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_stat(&QEMU[4..]),
            Err(ParseError::InvalidValue { field: "pid", .. })
        ));
        let bad = String::from_utf8_lossy(QEMU).replace(" 1234 ", " 12x4 ");
        assert!(matches!(
            parse_stat(bad.as_bytes()),
            Err(ParseError::InvalidValue { field: "utime", .. })
        ));
    }
}
