//! Host memory: total, available and the used ratio (1 - available/total).
//!
//! Reads `/proc/meminfo`. "Used" follows the kernel's MemAvailable estimate,
//! as `free` does, so page cache does not count as used.

use super::{Ctx, HostCollector, HostCollectorSpec};
use crate::host::{CollectError, HostFile};
use crate::model::HostStats;

pub const SPEC: HostCollectorSpec = HostCollectorSpec {
    name: "host_memory",
    enabled: |_| true,
    new: |_| Box::new(HostMemory(HostFile::new("meminfo"))),
};

pub struct HostMemory(HostFile);

impl HostCollector for HostMemory {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError> {
        let (data, path) = self.0.read(&ctx.roots.proc, ctx.budget)?;
        let m = vmscope_proc::parse_meminfo(data).map_err(|e| CollectError::parse(path, e))?;
        host.memory_total_bytes = m.total_bytes;
        host.memory_available_bytes = m.available_bytes.min(m.total_bytes);
        host.memory_used_ratio = if m.total_bytes == 0 {
            0.0
        } else {
            1.0 - host.memory_available_bytes as f64 / m.total_bytes as f64
        };
        Ok(())
    }
}
