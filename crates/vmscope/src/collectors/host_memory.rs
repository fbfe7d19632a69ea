//! Host memory: total, available and the used ratio (1 - available/total).
//!
//! Reads `/proc/meminfo`. "Used" follows the kernel's MemAvailable estimate,
//! as `free` does, so page cache does not count as used.

use super::procfile::{CollectError, ProcFile};
use super::{Ctx, HostCollector, HostCollectorSpec};
use crate::model::HostStats;

pub const SPEC: HostCollectorSpec = HostCollectorSpec {
    name: "host_memory",
    enabled: |_| true,
    new: |_| Box::new(HostMemory::default()),
};

#[derive(Default)]
pub struct HostMemory {
    file: Option<ProcFile>,
    buf: Vec<u8>,
}

impl HostCollector for HostMemory {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError> {
        let file = self
            .file
            .get_or_insert_with(|| ProcFile::new(ctx.roots.proc.join("meminfo"), ctx.budget));
        let data = file.read(&mut self.buf).map_err(|e| CollectError::Io {
            path: file.path().to_path_buf(),
            source: e,
        })?;
        let m =
            vmscope_proc::parse_meminfo(data).map_err(|e| CollectError::parse(file.path(), e))?;
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
