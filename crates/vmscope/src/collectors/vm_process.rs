//! CPU time, memory and run state of each hypervisor process.
//!
//! Reads `/proc/PID/stat` (one `pread` on a held descriptor): user, system and
//! guest CPU ticks, RSS pages, virtual size, state and start time. This is the
//! collector that notices a VM is gone: the read fails with `ESRCH`/`ENOENT`,
//! the process is a zombie, or its start time changed (the PID was reused).

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, record_vm_error};
use crate::host::CollectError;
use crate::model::{Source, VmState};

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_process",
    enabled: |_| true,
    new: |_| Box::new(VmProcess::default()),
};

#[derive(Default)]
pub struct VmProcess {
    buf: Vec<u8>,
}

impl VmCollector for VmProcess {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        for vm in vms.iter_mut() {
            if let Err(e) = self.one(ctx, vm) {
                record_vm_error(vm, e, errors);
            }
        }
    }
}

impl VmProcess {
    fn one(&mut self, ctx: &Ctx<'_>, vm: &mut VmEntry) -> Result<(), CollectError> {
        let pid = vm.pid;
        let data = vm
            .stat_file
            .read(&mut self.buf)
            .map_err(|e| CollectError::from_proc_io(pid, vm.stat_file.path(), e))?;
        let st = vmscope_proc::parse_stat(data)
            .map_err(|e| CollectError::parse(vm.stat_file.path(), e))?;
        if st.starttime_ticks != vm.starttime_ticks || matches!(st.state, b'Z' | b'X' | b'x') {
            return Err(CollectError::Gone { pid });
        }
        if st.num_threads != vm.num_threads {
            // Cheap signal that vCPU threads may have come or gone.
            vm.num_threads = st.num_threads;
            vm.vcpu_rescan_due = true;
        }
        let s = &mut vm.stats;
        s.cpu.user = ctx.ticks_to_seconds(st.utime_ticks);
        s.cpu.system = ctx.ticks_to_seconds(st.stime_ticks);
        s.cpu.guest = st.guest_time_ticks.map(|t| ctx.ticks_to_seconds(t));
        s.memory_rss_bytes = st.rss_pages.saturating_mul(ctx.page_size);
        s.memory_virtual_bytes = st.vsize_bytes;
        s.memory_utilization_ratio = s
            .allocated_memory_bytes
            .filter(|a| *a > 0)
            .map(|a| s.memory_rss_bytes as f64 / a as f64);
        // libvirt's own state is authoritative for its domains (a paused
        // domain's QEMU still sleeps in state S); for bare processes only a
        // SIGSTOP'd process is known to be paused.
        if s.source == Source::Process {
            s.state = if st.state == b'T' {
                VmState::Paused
            } else {
                VmState::Running
            };
        }
        Ok(())
    }
}
