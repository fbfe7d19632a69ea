//! `/proc/<pid>/io`: the I/O counters of a process.
//!
//! Reads `key: value` lines and emits [`ProcIo`]. For a hypervisor process,
//! `read_bytes`/`write_bytes` are what its disk images cost the host's block
//! layer (page-cache hits excluded), the closest host-side view of guest disk
//! I/O. Fails on empty input, when `read_bytes` or `write_bytes` is missing
//! (kernel without `CONFIG_TASK_IO_ACCOUNTING`), or when a known key has a
//! non-number value. Unknown keys are ignored; other known keys default to 0.
//! A last line without a newline is taken as cut by a short read and ignored.
//! Reading another user's `io` needs ptrace access: that is the caller's IO error.

use crate::error::{FileKind, ParseError, complete_lines, field_u64};

const KIND: FileKind = FileKind::Io;

/// I/O counters of one process, cumulative since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcIo {
    /// Bytes passed to read-like syscalls (includes page-cache hits, pipes, sockets).
    pub rchar: u64,
    /// Bytes passed to write-like syscalls.
    pub wchar: u64,
    /// Read syscalls.
    pub syscr: u64,
    /// Write syscalls.
    pub syscw: u64,
    /// Bytes fetched from the storage layer.
    pub read_bytes: u64,
    /// Bytes sent to the storage layer.
    pub write_bytes: u64,
    /// Bytes whose writeback was cancelled (truncated dirty pages).
    pub cancelled_write_bytes: u64,
}

/// Parse `/proc/<pid>/io`.
pub fn parse_io(buf: &[u8]) -> Result<ProcIo, ParseError> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    let mut io = ProcIo::default();
    let (mut have_read, mut have_write) = (false, false);
    // A last line without '\n' may be cut by a short read: not trusted.
    let (lines, cut) = complete_lines(buf);
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let key = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        let (slot, name): (&mut u64, &'static str) = match key {
            b"rchar" => (&mut io.rchar, "rchar"),
            b"wchar" => (&mut io.wchar, "wchar"),
            b"syscr" => (&mut io.syscr, "syscr"),
            b"syscw" => (&mut io.syscw, "syscw"),
            b"read_bytes" => {
                have_read = true;
                (&mut io.read_bytes, "read_bytes")
            }
            b"write_bytes" => {
                have_write = true;
                (&mut io.write_bytes, "write_bytes")
            }
            b"cancelled_write_bytes" => (&mut io.cancelled_write_bytes, "cancelled_write_bytes"),
            _ => continue,
        };
        *slot = field_u64(KIND, name, value)?;
    }
    let missing = |field| {
        if cut {
            ParseError::Truncated { kind: KIND, field }
        } else {
            ParseError::missing(KIND, field)
        }
    };
    if !have_read {
        return Err(missing("read_bytes"));
    }
    if !have_write {
        return Err(missing("write_bytes"));
    }
    Ok(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = b"rchar: 323934931\nwchar: 323929600\nsyscr: 632687\nsyscw: 632675\nread_bytes: 4096\nwrite_bytes: 323932160\ncancelled_write_bytes: 12288\n";

    #[test]
    fn real_file() {
        let io = parse_io(REAL).unwrap();
        assert_eq!(
            io,
            ProcIo {
                rchar: 323_934_931,
                wchar: 323_929_600,
                syscr: 632_687,
                syscw: 632_675,
                read_bytes: 4096,
                write_bytes: 323_932_160,
                cancelled_write_bytes: 12288,
            }
        );
    }

    #[test]
    fn required_fields() {
        assert!(matches!(parse_io(b""), Err(ParseError::Empty { .. })));
        assert!(matches!(
            parse_io(b"rchar: 1\nwchar: 2\n"),
            Err(ParseError::MissingField {
                field: "read_bytes",
                ..
            })
        ));
        assert!(matches!(
            parse_io(b"read_bytes: 1\n"),
            Err(ParseError::MissingField {
                field: "write_bytes",
                ..
            })
        ));
        let io = parse_io(b"read_bytes: 1\nwrite_bytes: 2\nnew_counter: 9\n").unwrap();
        assert_eq!((io.read_bytes, io.write_bytes, io.rchar), (1, 2, 0));
        assert!(matches!(
            parse_io(b"read_bytes: 1\nwrite_bytes: 2"),
            Err(ParseError::Truncated {
                field: "write_bytes",
                ..
            })
        ));
        assert!(matches!(
            parse_io(b"read_bytes: 1\nwrite_bytes: 2x\n"),
            Err(ParseError::InvalidValue {
                field: "write_bytes",
                ..
            })
        ));
    }
}
