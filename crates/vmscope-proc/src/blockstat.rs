//! Host block-device counters: `/sys/dev/block/MAJ:MIN/stat`, the device's
//! name from its `uevent`, and a cgroup v2 `io.stat`.
//!
//! `stat` is one line of 11, 15 or 17 decimal fields (kernels before 4.18
//! have 11, before 5.5 have 15; see the kernel's
//! Documentation/block/stat.rst). Sectors there are always 512 bytes,
//! whatever the device's block size. `io.stat` is one line per device,
//! `MAJ:MIN key=value ...` (`rbytes`, `wbytes`, `rios`, `wios`, `dbytes`,
//! `dios`; Documentation/admin-guide/cgroup-v2.rst); keys a kernel does not
//! know yet are ignored, lines that do not parse are skipped.

use crate::error::{FileKind, ParseError, complete_lines, parse_u64};

/// `stat`'s sector unit.
pub const SECTOR_BYTES: u64 = 512;

/// One block device's counters from `/sys/dev/block/MAJ:MIN/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStat {
    pub read_requests: u64,
    pub read_bytes: u64,
    /// Milliseconds read requests took, summed over requests.
    pub read_ms: u64,
    pub write_requests: u64,
    pub write_bytes: u64,
    pub write_ms: u64,
    /// `None` before Linux 5.5.
    pub flush_requests: Option<u64>,
    pub flush_ms: Option<u64>,
}

/// Parses `/sys/dev/block/MAJ:MIN/stat` (or `/sys/block/NAME/stat`).
pub fn parse_block_stat(buf: &[u8]) -> Result<BlockStat, ParseError> {
    const KIND: FileKind = FileKind::BlockStat;
    const NAMES: [&str; 17] = [
        "read_ios",
        "read_merges",
        "read_sectors",
        "read_ticks",
        "write_ios",
        "write_merges",
        "write_sectors",
        "write_ticks",
        "in_flight",
        "io_ticks",
        "time_in_queue",
        "discard_ios",
        "discard_merges",
        "discard_sectors",
        "discard_ticks",
        "flush_ios",
        "flush_ticks",
    ];
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    if !buf.ends_with(b"\n") {
        return Err(ParseError::Truncated {
            kind: KIND,
            field: "stat line",
        });
    }
    let mut v = [0u64; 17];
    let mut n = 0;
    for (i, f) in buf
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .enumerate()
    {
        let Some(slot) = v.get_mut(i) else { break };
        let name = NAMES.get(i).copied().unwrap_or("stat field");
        *slot = parse_u64(f).ok_or_else(|| ParseError::invalid(KIND, name, f))?;
        n = i + 1;
    }
    if n < 11 {
        return Err(ParseError::missing(
            KIND,
            NAMES.get(n).copied().unwrap_or("stat field"),
        ));
    }
    let sectors = |s: u64| s.saturating_mul(SECTOR_BYTES);
    Ok(BlockStat {
        read_requests: v[0],
        read_bytes: sectors(v[2]),
        read_ms: v[3],
        write_requests: v[4],
        write_bytes: sectors(v[6]),
        write_ms: v[7],
        flush_requests: (n >= 17).then_some(v[15]),
        flush_ms: (n >= 17).then_some(v[16]),
    })
}

/// `DEVNAME=` of a block device's `uevent` (`sda1`, `dm-3`, `nvme0n1`).
pub fn parse_uevent_devname(buf: &[u8]) -> Option<String> {
    buf.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"DEVNAME="))
        .filter(|n| !n.is_empty())
        .and_then(|n| std::str::from_utf8(n).ok())
        .map(str::to_string)
}

/// One device's line of a cgroup v2 `io.stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupIoStat {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
}

/// Parses a cgroup v2 `io.stat`: the devices whose line parses; a cut last
/// line (no newline) is dropped.
pub fn parse_cgroup_io_stat(buf: &[u8]) -> Vec<CgroupIoStat> {
    let (lines, _) = complete_lines(buf);
    let mut out = Vec::new();
    for line in lines.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let Some(dev) = fields.next() else { continue };
        let Some((maj, min)) = dev
            .iter()
            .position(|&b| b == b':')
            .map(|i| (&dev[..i], &dev[i + 1..]))
        else {
            continue;
        };
        let (Some(major), Some(minor)) = (
            parse_u64(maj).and_then(|v| u32::try_from(v).ok()),
            parse_u64(min).and_then(|v| u32::try_from(v).ok()),
        ) else {
            continue;
        };
        let mut s = CgroupIoStat {
            major,
            minor,
            ..CgroupIoStat::default()
        };
        let mut ok = true;
        for kv in fields {
            let Some(eq) = kv.iter().position(|&b| b == b'=') else {
                ok = false;
                break;
            };
            let (k, v) = (&kv[..eq], &kv[eq + 1..]);
            let slot = match k {
                b"rbytes" => &mut s.read_bytes,
                b"wbytes" => &mut s.write_bytes,
                b"rios" => &mut s.read_requests,
                b"wios" => &mut s.write_requests,
                _ => continue, // dbytes, dios, and keys of later kernels
            };
            match parse_u64(v) {
                Some(n) => *slot = n,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn stat_of_current_and_older_kernels() {
        // Linux 6.1, a loop device QEMU read 2560 bytes from.
        let s = parse_block_stat(
            b"       5        0       10        4        1        0        1        0        0       12        4        0        0        0        0        2        3\n",
        )
        .unwrap();
        assert_eq!(
            s,
            BlockStat {
                read_requests: 5,
                read_bytes: 5120,
                read_ms: 4,
                write_requests: 1,
                write_bytes: 512,
                write_ms: 0,
                flush_requests: Some(2),
                flush_ms: Some(3),
            }
        );
        // 4.18 .. 5.4: 15 fields, no flushes; before: 11.
        let s15 = parse_block_stat(b"1 0 8 0 2 0 16 0 0 0 0 0 0 0 0\n").unwrap();
        assert_eq!(
            (s15.read_bytes, s15.write_bytes, s15.flush_requests),
            (4096, 8192, None)
        );
        let s11 = parse_block_stat(b"1 0 8 0 2 0 16 0 0 0 0\n").unwrap();
        assert_eq!(s11.write_requests, 2);
        // Later kernels' extra fields are ignored.
        assert!(parse_block_stat(b"1 0 8 0 2 0 16 0 0 0 0 0 0 0 0 0 0 9 9\n").is_ok());
    }

    #[test]
    fn stat_malformed() {
        for bad in [
            &b""[..],
            b"\n",
            b"1 0 8 0 2 0 16 0 0 0\n",
            b"1 0 8 0 2 0 16 0 0 0 0",
            b"1 0 x 0 2 0 16 0 0 0 0\n",
            b"-1 0 8 0 2 0 16 0 0 0 0\n",
            b"99999999999999999999999 0 8 0 2 0 16 0 0 0 0\n",
        ] {
            assert!(parse_block_stat(bad).is_err(), "{bad:?}");
        }
        // Sectors near u64::MAX saturate instead of overflowing.
        let big = format!("0 0 {} 0 0 0 0 0 0 0 0\n", u64::MAX);
        assert_eq!(
            parse_block_stat(big.as_bytes()).unwrap().read_bytes,
            u64::MAX
        );
    }

    #[test]
    fn uevent_devname() {
        assert_eq!(
            parse_uevent_devname(b"MAJOR=7\nMINOR=0\nDEVNAME=loop0\nDEVTYPE=disk\nDISKSEQ=1\n")
                .as_deref(),
            Some("loop0")
        );
        assert_eq!(parse_uevent_devname(b"MAJOR=7\nDEVNAME=\n"), None);
        assert_eq!(parse_uevent_devname(b""), None);
        assert_eq!(parse_uevent_devname(b"DEVNAME=\xff\n"), None);
    }

    #[test]
    fn cgroup_io_stat() {
        let text = b"8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
253:1 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0 newkey=5\n\
junk line\n\
8:x rbytes=1\n\
259:0 rbytes=abc wios=1\n\
7:0 rbytes=99";
        let s = parse_cgroup_io_stat(text);
        assert_eq!(
            s,
            vec![
                CgroupIoStat {
                    major: 8,
                    minor: 16,
                    read_bytes: 1_459_200,
                    write_bytes: 314_773_504,
                    read_requests: 192,
                    write_requests: 353
                },
                CgroupIoStat {
                    major: 253,
                    minor: 1,
                    read_bytes: 4096,
                    read_requests: 1,
                    ..CgroupIoStat::default()
                },
            ]
        );
        assert!(parse_cgroup_io_stat(b"").is_empty());
    }
}
