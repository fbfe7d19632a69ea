//! Host CPU busy ratio and online CPU count.
//!
//! Reads `/proc/stat`: the aggregate `cpu` line (busy = everything but idle
//! and iowait, over the interval since the previous tick) and the `cpuN`
//! lines (online CPUs). The first tick has no previous sample and reports no
//! ratio rather than a made-up one.

use vmscope_proc::{CpuTicks, parse_proc_stat_cpu};

use super::{Ctx, HostCollector, HostCollectorSpec};
use crate::host::{CollectError, HostFile};
use crate::model::HostStats;

pub const SPEC: HostCollectorSpec = HostCollectorSpec {
    name: "host_cpu",
    enabled: |_| true,
    new: |_| {
        Box::new(HostCpu {
            file: HostFile::new("stat"),
            prev: None,
        })
    },
};

pub struct HostCpu {
    file: HostFile,
    prev: Option<CpuTicks>,
}

/// Busy share of all CPUs between two samples; `None` when no time passed
/// or the counters went backwards (they never should).
pub fn busy_ratio(prev: &CpuTicks, cur: &CpuTicks) -> Option<f64> {
    let total = cur.total().checked_sub(prev.total())?;
    let idle = cur.idle_all().checked_sub(prev.idle_all())?;
    if total == 0 {
        return None;
    }
    Some((total.saturating_sub(idle) as f64 / total as f64).clamp(0.0, 1.0))
}

/// Number of `cpuN` lines in /proc/stat.
pub fn online_cpus(stat: &[u8]) -> u32 {
    stat.split(|b| *b == b'\n')
        .filter(|l| l.len() > 3 && l.starts_with(b"cpu") && l[3].is_ascii_digit())
        .count() as u32
}

impl HostCollector for HostCpu {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError> {
        let (data, path) = self.file.read(&ctx.roots.proc, ctx.budget)?;
        let cur = parse_proc_stat_cpu(data).map_err(|e| CollectError::parse(path, e))?;
        host.cpus = online_cpus(data);
        host.cpu_ratio = self.prev.as_ref().and_then(|p| busy_ratio(p, &cur));
        self.prev = Some(cur);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_over_interval() {
        let a = CpuTicks {
            user: 100,
            system: 50,
            idle: 850,
            ..Default::default()
        };
        let b = CpuTicks {
            user: 150,
            system: 100,
            idle: 900,
            iowait: 0,
            ..Default::default()
        };
        // 150 ticks passed, 50 idle -> 2/3 busy
        let r = busy_ratio(&a, &b).unwrap_or(-1.0);
        assert!((r - 2.0 / 3.0).abs() < 1e-9, "{r}");
        assert_eq!(busy_ratio(&a, &a), None);
        assert_eq!(busy_ratio(&b, &a), None);
    }

    #[test]
    fn counts_cpu_lines() {
        let s = b"cpu  1 2 3 4\ncpu0 1 2 3 4\ncpu1 1 2 3 4\nintr 5\ncpufreq x\n";
        assert_eq!(online_cpus(s), 2);
    }
}
