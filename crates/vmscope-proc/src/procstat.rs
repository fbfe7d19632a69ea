//! `/proc/stat`: the aggregate `cpu ` line (all CPUs summed), in clock ticks.
//!
//! Emits [`CpuTicks`]; the caller divides by `sysconf(_SC_CLK_TCK)`. Kernels
//! before 2.6.11 lack the later columns (steal, guest, guest_nice): those read
//! as 0. Fails on empty input, when there is no `cpu ` line, when it has fewer
//! than four numbers, or when a column is not a number. Per-CPU `cpuN` lines
//! and the other lines are ignored. A last line without a newline is taken as
//! cut by a short read and ignored.

use crate::error::{FileKind, ParseError, complete_lines, field_u64};

const KIND: FileKind = FileKind::ProcStat;

/// Cumulative CPU time of the whole host, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    /// Time running guests; already counted in `user`.
    pub guest: u64,
    /// Time running niced guests; already counted in `nice`.
    pub guest_nice: u64,
}

impl CpuTicks {
    /// All time. Leaves out `guest` and `guest_nice`, which the kernel already
    /// adds to `user` and `nice`.
    pub fn total(&self) -> u64 {
        [
            self.user,
            self.nice,
            self.system,
            self.idle,
            self.iowait,
            self.irq,
            self.softirq,
            self.steal,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }

    /// Time the CPUs had nothing to run: idle plus iowait.
    pub fn idle_all(&self) -> u64 {
        self.idle.saturating_add(self.iowait)
    }
}

const NAMES: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// Parse the `cpu ` line out of `/proc/stat`.
pub fn parse_proc_stat_cpu(buf: &[u8]) -> Result<CpuTicks, ParseError> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    // A last line without '\n' may be cut by a short read: not trusted.
    let (lines, cut) = complete_lines(buf);
    let line = lines
        .split(|&b| b == b'\n')
        .find(|l| l.starts_with(b"cpu ") || l.starts_with(b"cpu\t"))
        .ok_or(if cut {
            ParseError::Truncated {
                kind: KIND,
                field: "cpu",
            }
        } else {
            ParseError::missing(KIND, "cpu")
        })?;
    let mut values = [0u64; 10];
    let mut count = 0;
    for (i, tok) in line[3..]
        .split(u8::is_ascii_whitespace)
        .filter(|t| !t.is_empty())
        .take(10)
        .enumerate()
    {
        values[i] = field_u64(KIND, NAMES[i], tok)?;
        count = i + 1;
    }
    if count < 4 {
        return Err(ParseError::missing(KIND, NAMES[count]));
    }
    let [
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
        guest,
        guest_nice,
    ] = values;
    Ok(CpuTicks {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
        guest,
        guest_nice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = b"cpu  10132153 290696 3084719 46828483 16683 0 25195 175 5000 10\ncpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\nintr 199292052 35 0 0\nctxt 28012004\nbtime 1700000000\n";

    #[test]
    fn real_file() {
        let c = parse_proc_stat_cpu(REAL).unwrap();
        assert_eq!(c.user, 10_132_153);
        assert_eq!(c.idle, 46_828_483);
        assert_eq!(c.steal, 175);
        assert_eq!(c.guest, 5000);
        assert_eq!(c.guest_nice, 10);
        assert_eq!(
            c.total(),
            10_132_153 + 290_696 + 3_084_719 + 46_828_483 + 16_683 + 25_195 + 175
        );
        assert_eq!(c.idle_all(), 46_828_483 + 16_683);
    }

    #[test]
    fn old_kernel_four_columns() {
        let c = parse_proc_stat_cpu(b"cpu 1 2 3 4\n").unwrap();
        assert_eq!((c.user, c.idle, c.iowait, c.steal), (1, 4, 0, 0));
        assert_eq!(c.total(), 10);
    }

    #[test]
    fn bad_files() {
        assert!(matches!(
            parse_proc_stat_cpu(b""),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse_proc_stat_cpu(b"cpu0 1 2 3 4\n"),
            Err(ParseError::MissingField { field: "cpu", .. })
        ));
        assert!(matches!(
            parse_proc_stat_cpu(b"cpu 1 2 3 4 5 6 7 8 9 1"),
            Err(ParseError::Truncated { field: "cpu", .. })
        ));
        assert!(matches!(
            parse_proc_stat_cpu(b"cpu 1 2 3\n"),
            Err(ParseError::MissingField { field: "idle", .. })
        ));
        assert!(matches!(
            parse_proc_stat_cpu(b"cpu 1 2 x 4\n"),
            Err(ParseError::InvalidValue {
                field: "system",
                ..
            })
        ));
    }
}
