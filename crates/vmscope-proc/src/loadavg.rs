//! `/proc/loadavg`.
//!
//! Reads `"0.42 0.37 0.30 2/345 6789\n"` and emits the 1, 5 and 15 minute load
//! averages. Fails on empty input, fewer than three numbers, or a value that is
//! not a finite, non-negative decimal.

use crate::error::{FileKind, ParseError};

const KIND: FileKind = FileKind::LoadAvg;

/// Parse `/proc/loadavg` into `(load1, load5, load15)`.
pub fn parse_loadavg(buf: &[u8]) -> Result<(f64, f64, f64), ParseError> {
    let mut it = buf.split(u8::is_ascii_whitespace).filter(|t| !t.is_empty());
    let Some(first) = it.next() else {
        return Err(ParseError::Empty { kind: KIND });
    };
    let one = load(first, "load1")?;
    let five = load(
        it.next().ok_or(ParseError::missing(KIND, "load5"))?,
        "load5",
    )?;
    let fifteen = load(
        it.next().ok_or(ParseError::missing(KIND, "load15"))?,
        "load15",
    )?;
    Ok((one, five, fifteen))
}

fn load(tok: &[u8], field: &'static str) -> Result<f64, ParseError> {
    // Only digits and '.', so "inf", "NaN" and exponents are refused.
    if !tok.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return Err(ParseError::invalid(KIND, field, tok));
    }
    std::str::from_utf8(tok)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .ok_or_else(|| ParseError::invalid(KIND, field, tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_line() {
        assert_eq!(
            parse_loadavg(b"0.42 1.37 12.30 2/345 6789\n").unwrap(),
            (0.42, 1.37, 12.30)
        );
    }

    #[test]
    fn bad_lines() {
        assert!(matches!(parse_loadavg(b""), Err(ParseError::Empty { .. })));
        assert!(matches!(
            parse_loadavg(b"0.1 0.2"),
            Err(ParseError::MissingField {
                field: "load15",
                ..
            })
        ));
        assert!(matches!(
            parse_loadavg(b"NaN 0.2 0.3"),
            Err(ParseError::InvalidValue { field: "load1", .. })
        ));
        assert!(matches!(
            parse_loadavg(b"0.1 -0.2 0.3"),
            Err(ParseError::InvalidValue { field: "load5", .. })
        ));
        assert!(matches!(
            parse_loadavg(b"0.1 0.2 1e3"),
            Err(ParseError::InvalidValue {
                field: "load15",
                ..
            })
        ));
        assert!(matches!(
            parse_loadavg(b"0.1 0.2 ."),
            Err(ParseError::InvalidValue {
                field: "load15",
                ..
            })
        ));
    }
}
