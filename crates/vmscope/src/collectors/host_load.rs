//! Host load averages, from `/proc/loadavg`.

use super::procfile::{CollectError, ProcFile};
use super::{Ctx, HostCollector, HostCollectorSpec};
use crate::model::HostStats;

pub const SPEC: HostCollectorSpec = HostCollectorSpec {
    name: "host_load",
    enabled: |_| true,
    new: |_| Box::new(HostLoad::default()),
};

#[derive(Default)]
pub struct HostLoad {
    file: Option<ProcFile>,
    buf: Vec<u8>,
}

impl HostCollector for HostLoad {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError> {
        let file = self
            .file
            .get_or_insert_with(|| ProcFile::new(ctx.roots.proc.join("loadavg"), ctx.budget));
        let data = file.read(&mut self.buf).map_err(|e| CollectError::Io {
            path: file.path().to_path_buf(),
            source: e,
        })?;
        let (l1, l5, l15) =
            vmscope_proc::parse_loadavg(data).map_err(|e| CollectError::parse(file.path(), e))?;
        host.load1 = l1;
        host.load5 = l5;
        host.load15 = l15;
        Ok(())
    }
}
