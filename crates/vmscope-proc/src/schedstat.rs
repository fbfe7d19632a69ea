//! `/proc/<pid>/schedstat` and `/proc/<pid>/task/<tid>/schedstat`.
//!
//! Reads `"<run_ns> <wait_ns> <timeslices>\n"` and emits [`SchedStat`]: time on
//! CPU and time runnable but waiting for a CPU (for a vCPU thread, the steal
//! time the guest suffers from host contention). Fails on empty input, fewer
//! than three numbers, or a non-number. The file exists only with
//! `CONFIG_SCHEDSTATS`/`CONFIG_SCHED_INFO`; a missing file is the caller's IO error.

use crate::error::{FileKind, ParseError, field_u64};

const KIND: FileKind = FileKind::SchedStat;

/// Scheduler statistics of one task (or, for a process, its main thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedStat {
    /// Time spent on a CPU, in nanoseconds.
    pub run_ns: u64,
    /// Time spent runnable on a run queue, in nanoseconds.
    pub wait_ns: u64,
    /// Number of times the task ran on a CPU.
    pub timeslices: u64,
}

/// Parse a schedstat line.
pub fn parse_schedstat(buf: &[u8]) -> Result<SchedStat, ParseError> {
    let mut it = buf.split(u8::is_ascii_whitespace).filter(|t| !t.is_empty());
    let Some(run) = it.next() else {
        return Err(ParseError::Empty { kind: KIND });
    };
    let wait = it.next().ok_or(ParseError::missing(KIND, "wait_ns"))?;
    let slices = it.next().ok_or(ParseError::missing(KIND, "timeslices"))?;
    Ok(SchedStat {
        run_ns: field_u64(KIND, "run_ns", run)?,
        wait_ns: field_u64(KIND, "wait_ns", wait)?,
        timeslices: field_u64(KIND, "timeslices", slices)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_line() {
        let s = parse_schedstat(b"2346790185 118620305 8912\n").unwrap();
        assert_eq!(
            s,
            SchedStat {
                run_ns: 2_346_790_185,
                wait_ns: 118_620_305,
                timeslices: 8912
            }
        );
    }

    #[test]
    fn bad_inputs_name_the_field() {
        assert!(matches!(
            parse_schedstat(b""),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse_schedstat(b" \n"),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse_schedstat(b"1 2"),
            Err(ParseError::MissingField {
                field: "timeslices",
                ..
            })
        ));
        assert!(matches!(
            parse_schedstat(b"1"),
            Err(ParseError::MissingField {
                field: "wait_ns",
                ..
            })
        ));
        assert!(matches!(
            parse_schedstat(b"1 -2 3"),
            Err(ParseError::InvalidValue {
                field: "wait_ns",
                ..
            })
        ));
    }
}
