//! Per-vCPU CPU time and run-queue wait (the guest's steal time).
//!
//! Reads `/proc/PID/task/TID/schedstat` for each vCPU thread (run and wait
//! nanoseconds), falling back to the thread's `stat` when the kernel has no
//! schedstat. vCPU threads are known from libvirt's status XML, or found by
//! their names: QEMU names them `CPU N/KVM` (or `/TCG`) when started with
//! `-name ...,debug-threads=on`, Cloud Hypervisor `vcpuN`, Firecracker
//! `fc_vcpu N`. The thread list is read again only when the process's thread
//! count changed (seen for free in its `stat`) or a vCPU thread vanished,
//! at most once per [`RESCAN_MIN_TICKS`] ticks, keeping the open files of
//! threads that remain; a QEMU without debug-threads has no per-vCPU series.

use std::path::Path;

use super::{Ctx, VcpuThread, VmCollector, VmCollectorSpec, VmEntry, record_vm_error};
use crate::host::{CollectError, ProcFile, read_once};
use crate::model::VcpuStats;

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_vcpu",
    enabled: |c| c.vcpu,
    new: |_| Box::new(VmVcpu::default()),
};

/// At most one vCPU thread rescan per VM in this many ticks.
pub const RESCAN_MIN_TICKS: u64 = 3;

#[derive(Default)]
pub struct VmVcpu {
    buf: Vec<u8>,
}

/// The vCPU index encoded in a thread name, for the hypervisors that name
/// their vCPU threads.
pub fn vcpu_index_from_thread_name(comm: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(comm).ok()?.trim_end();
    let digits = if let Some(rest) = s.strip_prefix("CPU ") {
        // QEMU: "CPU 3/KVM", "CPU 3/TCG", "CPU 3/HVF"
        rest.split('/').next().unwrap_or_default()
    } else if let Some(rest) = s.strip_prefix("fc_vcpu") {
        rest.trim_start()
    } else {
        s.strip_prefix("vcpu")?
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl VmCollector for VmVcpu {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        for vm in vms.iter_mut().filter(|v| !v.gone) {
            if vm.vcpu_rescan_due && ctx.tick >= vm.vcpu_rescan_tick {
                match self.threads(ctx, vm) {
                    Ok(t) => vm.vcpus = t,
                    Err(e) => {
                        record_vm_error(vm, e, errors);
                        continue;
                    }
                }
                vm.vcpu_rescan_due = false;
                vm.vcpu_rescan_tick = ctx.tick + RESCAN_MIN_TICKS;
            }
            let mut out = Vec::with_capacity(vm.vcpus.len());
            let mut vanished = false;
            for t in vm.vcpus.iter_mut() {
                match read_thread(ctx, t, &mut self.buf) {
                    Ok(v) => out.push(v),
                    Err(CollectError::Gone { .. }) => vanished = true,
                    Err(e) => {
                        vm.failed = true;
                        errors.push(e);
                    }
                }
            }
            if vanished {
                // Either the VM is exiting (vm_process will see it next
                // tick) or a vCPU was unplugged: look again next tick.
                vm.vcpu_rescan_due = true;
                vm.vcpu_rescan_tick = ctx.tick + 1;
            }
            if !vm.failed || !out.is_empty() {
                vm.stats.vcpus = out;
            }
        }
    }
}

impl VmVcpu {
    fn threads(
        &mut self,
        ctx: &Ctx<'_>,
        vm: &mut VmEntry,
    ) -> Result<Vec<VcpuThread>, CollectError> {
        let mut old = std::mem::take(&mut vm.vcpus);
        let task_dir = ctx.roots.pid(vm.pid).join("task");
        let mut found: Vec<(u32, u32)> = if !vm.known_vcpu_tids.is_empty() {
            vm.known_vcpu_tids.clone()
        } else {
            let entries = std::fs::read_dir(&task_dir)
                .map_err(|e| CollectError::from_proc_io(vm.pid, &task_dir, e))?;
            let mut v = Vec::new();
            for entry in entries.flatten() {
                let Some(tid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if read_once(&task_dir.join(tid.to_string()).join("comm"), &mut self.buf).is_err() {
                    continue; // thread exited meanwhile
                }
                if let Some(idx) = vcpu_index_from_thread_name(&self.buf) {
                    v.push((idx, tid));
                }
            }
            v
        };
        found.sort_unstable();
        found.dedup_by_key(|(idx, _)| *idx);
        Ok(found
            .into_iter()
            .map(|(index, tid)| {
                // Keep the held descriptors of threads that are still there.
                if let Some(pos) = old.iter().position(|t| t.tid == tid) {
                    let mut t = old.swap_remove(pos);
                    t.index = index;
                    return t;
                }
                let dir = task_dir.join(tid.to_string());
                VcpuThread {
                    index,
                    tid,
                    schedstat: ProcFile::new(dir.join("schedstat"), ctx.budget),
                    stat: ProcFile::new(dir.join("stat"), ctx.budget),
                }
            })
            .collect())
    }
}

fn read_thread(
    ctx: &Ctx<'_>,
    t: &mut VcpuThread,
    buf: &mut Vec<u8>,
) -> Result<VcpuStats, CollectError> {
    match t.schedstat.read(buf) {
        Ok(data) => {
            let s = vmscope_proc::parse_schedstat(data)
                .map_err(|e| CollectError::parse(t.schedstat.path(), e))?;
            return Ok(VcpuStats {
                index: t.index,
                tid: t.tid,
                cpu_seconds: s.run_ns as f64 / 1e9,
                wait_seconds: Some(s.wait_ns as f64 / 1e9),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && thread_alive(t.stat.path()) => {}
        Err(e) => return Err(CollectError::from_proc_io(t.tid, t.schedstat.path(), e)),
    }
    let data = t
        .stat
        .read(buf)
        .map_err(|e| CollectError::from_proc_io(t.tid, t.stat.path(), e))?;
    let st = vmscope_proc::parse_stat(data).map_err(|e| CollectError::parse(t.stat.path(), e))?;
    Ok(VcpuStats {
        index: t.index,
        tid: t.tid,
        cpu_seconds: ctx.ticks_to_seconds(st.utime_ticks + st.stime_ticks),
        wait_seconds: None,
    })
}

fn thread_alive(stat: &Path) -> bool {
    stat.exists()
}

#[cfg(test)]
mod tests {
    use super::vcpu_index_from_thread_name as idx;

    #[test]
    fn thread_names() {
        assert_eq!(idx(b"CPU 0/KVM"), Some(0));
        assert_eq!(idx(b"CPU 12/TCG\n"), Some(12));
        assert_eq!(idx(b"vcpu3"), Some(3));
        assert_eq!(idx(b"fc_vcpu 1"), Some(1));
        assert_eq!(idx(b"qemu-system-x86"), None);
        assert_eq!(idx(b"CPU /KVM"), None);
        assert_eq!(idx(b"vcpu"), None);
        assert_eq!(idx(b"CPU -1/KVM"), None);
        assert_eq!(idx(b"IO mon_iothread"), None);
        assert_eq!(idx(&[0xff, 0xfe]), None);
    }
}
