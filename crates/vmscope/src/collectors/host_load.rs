//! Host load averages, from `/proc/loadavg`.

use super::{Ctx, HostCollector, HostCollectorSpec};
use crate::host::{CollectError, HostFile};
use crate::model::HostStats;

pub const SPEC: HostCollectorSpec = HostCollectorSpec {
    name: "host_load",
    enabled: |_| true,
    new: |_| Box::new(HostLoad(HostFile::new("loadavg"))),
};

pub struct HostLoad(HostFile);

impl HostCollector for HostLoad {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError> {
        let (data, path) = self.0.read(&ctx.roots.proc, ctx.budget)?;
        let (l1, l5, l15) =
            vmscope_proc::parse_loadavg(data).map_err(|e| CollectError::parse(path, e))?;
        host.load1 = l1;
        host.load5 = l5;
        host.load15 = l15;
        Ok(())
    }
}
