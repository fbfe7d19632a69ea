//! `/proc/meminfo`: host memory.
//!
//! Reads `Key:   value kB` lines and emits [`MemInfo`] in bytes (the kernel's
//! "kB" means KiB). `MemAvailable` appeared in Linux 3.14; without it,
//! `available_bytes` is estimated as free + buffers + cached, as `free` did.
//! Fails on empty input, when `MemTotal` or `MemFree` is missing, or when a
//! used key has a non-number value. Unknown keys are ignored. A last line
//! without a newline is taken as cut by a short read and ignored.

use crate::error::{FileKind, ParseError, complete_lines, field_u64};

const KIND: FileKind = FileKind::MemInfo;

/// Host memory totals, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// `MemAvailable`, or free + buffers + cached on kernels without it.
    pub available_bytes: u64,
    pub buffers_bytes: u64,
    pub cached_bytes: u64,
}

/// Parse `/proc/meminfo`.
pub fn parse_meminfo(buf: &[u8]) -> Result<MemInfo, ParseError> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    let (mut total, mut free, mut avail, mut buffers, mut cached) = (None, None, None, None, None);
    // A last line without '\n' may be cut by a short read: not trusted.
    let (lines, cut) = complete_lines(buf);
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (slot, name) = match line[..colon].trim_ascii() {
            b"MemTotal" => (&mut total, "MemTotal"),
            b"MemFree" => (&mut free, "MemFree"),
            b"MemAvailable" => (&mut avail, "MemAvailable"),
            b"Buffers" => (&mut buffers, "Buffers"),
            b"Cached" => (&mut cached, "Cached"),
            _ => continue,
        };
        let rest = line[colon + 1..].trim_ascii();
        let (number, unit) = match rest.iter().position(u8::is_ascii_whitespace) {
            Some(sp) => (&rest[..sp], rest[sp..].trim_ascii()),
            None => (rest, &b""[..]),
        };
        let value = field_u64(KIND, name, number)?;
        let bytes = match unit {
            b"kB" => value.saturating_mul(1024),
            b"" => value,
            _ => return Err(ParseError::invalid(KIND, name, rest)),
        };
        *slot = Some(bytes);
    }
    let missing = |field| {
        if cut {
            ParseError::Truncated { kind: KIND, field }
        } else {
            ParseError::missing(KIND, field)
        }
    };
    let total = total.ok_or_else(|| missing("MemTotal"))?;
    let free = free.ok_or_else(|| missing("MemFree"))?;
    let buffers = buffers.unwrap_or(0);
    let cached = cached.unwrap_or(0);
    let available = avail.unwrap_or_else(|| {
        free.saturating_add(buffers)
            .saturating_add(cached)
            .min(total)
    });
    Ok(MemInfo {
        total_bytes: total,
        free_bytes: free,
        available_bytes: available,
        buffers_bytes: buffers,
        cached_bytes: cached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = b"MemTotal:       24609036 kB\nMemFree:        20123456 kB\nMemAvailable:   22334455 kB\nBuffers:          123456 kB\nCached:          1987654 kB\nSwapCached:            0 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";

    #[test]
    fn real_file_in_bytes() {
        let m = parse_meminfo(REAL).unwrap();
        assert_eq!(m.total_bytes, 24_609_036 * 1024);
        assert_eq!(m.free_bytes, 20_123_456 * 1024);
        assert_eq!(m.available_bytes, 22_334_455 * 1024);
        assert_eq!(m.buffers_bytes, 123_456 * 1024);
        assert_eq!(m.cached_bytes, 1_987_654 * 1024);
    }

    #[test]
    fn old_kernel_without_memavailable() {
        let m =
            parse_meminfo(b"MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n")
                .unwrap();
        assert_eq!(m.available_bytes, 420 * 1024);
    }

    #[test]
    fn missing_and_bad() {
        assert!(matches!(parse_meminfo(b""), Err(ParseError::Empty { .. })));
        assert!(matches!(
            parse_meminfo(b"MemFree: 1 kB\n"),
            Err(ParseError::MissingField {
                field: "MemTotal",
                ..
            })
        ));
        assert!(matches!(
            parse_meminfo(b"MemTotal: 1 kB\n"),
            Err(ParseError::MissingField {
                field: "MemFree",
                ..
            })
        ));
        assert!(matches!(
            parse_meminfo(b"MemTotal: 1 kB\nMemFree: 12"),
            Err(ParseError::Truncated {
                field: "MemFree",
                ..
            })
        ));
        assert!(matches!(
            parse_meminfo(b"MemTotal: 1 kB\nMemFree: x kB\n"),
            Err(ParseError::InvalidValue {
                field: "MemFree",
                ..
            })
        ));
        assert!(matches!(
            parse_meminfo(b"MemTotal: 1 MB\nMemFree: 1 kB\n"),
            Err(ParseError::InvalidValue {
                field: "MemTotal",
                ..
            })
        ));
    }
}
