//! `/proc/<pid>/statm`: memory sizes in pages.
//!
//! Reads the seven numbers `size resident shared text lib data dt` and emits
//! a [`Statm`] with the first three. `resident` here is the kernel's exact
//! sum of the process's RSS counters (`get_mm_counter_sum` since Linux 6.2's
//! per-CPU RSS counters), while `/proc/<pid>/stat` field 24 reads the same
//! counters without summing the per-CPU deltas and can be some pages low:
//! vmscope takes RSS from here. Fails with [`ParseError`] when the line is
//! empty or a value is not a number; a line cut after `resident` still
//! gives both values (only `shared` is then missing).

use crate::error::{FileKind, ParseError, parse_u64};

const KIND: FileKind = FileKind::Statm;

/// The sizes of one process, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statm {
    /// Virtual size.
    pub size_pages: u64,
    /// Resident set size (anonymous + file + shared memory pages).
    pub resident_pages: u64,
    /// Resident file and shared memory pages; `None` if the line was cut.
    pub shared_pages: Option<u64>,
}

/// Parse one statm line.
pub fn parse_statm(buf: &[u8]) -> Result<Statm, ParseError> {
    let mut fields = buf
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let size = fields.next().ok_or(ParseError::Empty { kind: KIND })?;
    let resident = fields.next().ok_or(ParseError::MissingField {
        kind: KIND,
        field: "resident",
    })?;
    // Without the final newline the kernel always writes, a last number
    // may be cut: only trust `resident` if something follows it.
    let complete = buf.last() == Some(&b'\n');
    let shared = fields.next();
    if shared.is_none() && !complete {
        return Err(ParseError::Truncated {
            kind: KIND,
            field: "resident",
        });
    }
    let num = |field: &'static str, v: &[u8]| {
        parse_u64(v).ok_or_else(|| ParseError::invalid(KIND, field, v))
    };
    Ok(Statm {
        size_pages: num("size", size)?,
        resident_pages: num("resident", resident)?,
        shared_pages: match shared {
            Some(s) if complete || fields.next().is_some() => Some(num("shared", s)?),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A QEMU's statm, as read on this machine.
    const QEMU: &[u8] = b"409046 18013 5094 2226 0 50720 0\n";

    #[test]
    fn reads_size_resident_and_shared() {
        assert_eq!(
            parse_statm(QEMU).unwrap(),
            Statm {
                size_pages: 409_046,
                resident_pages: 18_013,
                shared_pages: Some(5094),
            }
        );
    }

    #[test]
    fn a_cut_line_keeps_what_is_whole_and_never_a_cut_number() {
        // Cut inside `shared`: size and resident stand, shared is unknown.
        let s = parse_statm(b"409046 18013 50").unwrap();
        assert_eq!((s.resident_pages, s.shared_pages), (18_013, None));
        // Cut right after `resident` (no newline): resident may be cut.
        assert!(matches!(
            parse_statm(b"409046 1801"),
            Err(ParseError::Truncated { .. })
        ));
        assert!(matches!(parse_statm(b""), Err(ParseError::Empty { .. })));
        assert!(matches!(parse_statm(b" \n"), Err(ParseError::Empty { .. })));
        assert!(matches!(
            parse_statm(b"409046\n"),
            Err(ParseError::MissingField { .. })
        ));
        let e = parse_statm(b"409046 -5 1 1 0 1 0\n").unwrap_err();
        assert!(e.to_string().contains("resident"), "{e}");
    }
}
