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
//! Keeps each VM's vCPU threads (with their held files) and rescan marks,
//! dropped when the VM leaves.

use std::path::Path;

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, VmKey, record_vm_error};
use crate::host::{CollectError, ProcFile, read_once};
use crate::model::VcpuStats;

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_vcpu",
    per_vm: true,
    enabled: |c| c.vm_vcpu,
    new: |_| Box::new(VmVcpu::default()),
};

/// At most one vCPU thread rescan per VM in this many ticks.
pub const RESCAN_MIN_TICKS: u64 = 3;

#[derive(Default)]
pub struct VmVcpu {
    buf: Vec<u8>,
    /// One VM's readings, copied into its `VmStats::vcpus` (whose
    /// allocation is kept): no vector allocated per VM per tick.
    out: Vec<VcpuStats>,
}

/// One vCPU thread being followed.
#[derive(Debug)]
struct VcpuThread {
    index: u32,
    tid: u32,
    schedstat: ProcFile,
    /// Used when the kernel has no schedstat (no CONFIG_SCHED_INFO).
    stat: ProcFile,
}

/// What is kept for one VM across ticks (in its entry's `Held`).
#[derive(Debug)]
pub(super) struct Threads {
    vcpus: Vec<VcpuThread>,
    /// The process's thread count when last looked at (from `vm_process`).
    num_threads: u64,
    /// The vCPU thread list must be read again (new VM, thread count
    /// changed, a vCPU thread vanished).
    rescan_due: bool,
    /// Earliest tick for the next rescan (rate limit for VMs whose I/O
    /// worker threads come and go).
    rescan_tick: u64,
}

impl Default for Threads {
    fn default() -> Self {
        Threads {
            vcpus: Vec::new(),
            num_threads: 0,
            rescan_due: true,
            rescan_tick: 0,
        }
    }
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
            // Out of the entry while the entry is updated, then back.
            let mut st = vm.held.vcpu.take().unwrap_or_default();
            self.one(ctx, vm, &mut st, errors);
            vm.held.vcpu = Some(st);
        }
    }

    /// Nothing: the VM's threads are in its entry.
    fn forget(&mut self, _: VmKey) {}
}

impl VmVcpu {
    fn one(
        &mut self,
        ctx: &Ctx<'_>,
        vm: &mut VmEntry,
        st: &mut Threads,
        errors: &mut Vec<CollectError>,
    ) {
        if vm.num_threads != st.num_threads {
            // Cheap signal that vCPU threads may have come or gone.
            st.num_threads = vm.num_threads;
            st.rescan_due = true;
        }
        if st.rescan_due && ctx.tick >= st.rescan_tick {
            match Self::threads(ctx, vm, std::mem::take(&mut st.vcpus), &mut self.buf) {
                Ok(t) => st.vcpus = t,
                Err(e) => {
                    record_vm_error(vm, e, errors);
                    return;
                }
            }
            st.rescan_due = false;
            st.rescan_tick = ctx.tick + RESCAN_MIN_TICKS;
        }
        let out = &mut self.out;
        out.clear();
        let mut vanished = false;
        for t in st.vcpus.iter_mut() {
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
            st.rescan_due = true;
            st.rescan_tick = ctx.tick + 1;
        }
        if !vm.failed || !out.is_empty() {
            crate::model::clone_vec_exact(&mut vm.stats.vcpus, out);
        }
    }

    /// The VM's vCPU threads now, keeping the held files of `old` threads that
    /// are still there.
    fn threads(
        ctx: &Ctx<'_>,
        vm: &VmEntry,
        mut old: Vec<VcpuThread>,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<VcpuThread>, CollectError> {
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
                if read_once(&task_dir.join(tid.to_string()).join("comm"), buf).is_err() {
                    continue; // thread exited meanwhile
                }
                if let Some(idx) = vcpu_index_from_thread_name(buf) {
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::vcpu_index_from_thread_name as idx;
    use super::*;
    use crate::collectors::testing::{ctx, entry};
    use crate::host::{FdBudget, Roots};

    fn thread(root: &Path, tid: u32, comm: &str) {
        let dir = root.join("proc/7/task").join(tid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        std::fs::write(
            dir.join("schedstat"),
            format!("{}000000000 5000000 9\n", tid - 99),
        )
        .unwrap();
    }

    fn indexes(vm: &VmEntry) -> Vec<(u32, u32, f64)> {
        vm.stats
            .vcpus
            .iter()
            .map(|v| (v.index, v.tid, v.cpu_seconds))
            .collect()
    }

    #[test]
    fn threads_are_rescanned_when_the_count_moves_at_most_every_few_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(16);
        thread(dir.path(), 100, "CPU 0/KVM");
        thread(dir.path(), 101, "qemu-system-x86");
        thread(dir.path(), 102, "CPU 1/KVM");
        let mut c = VmVcpu::default();
        let mut vms = [entry(7, 70)];
        vms[0].num_threads = 3;
        let mut errors = Vec::new();
        c.collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(indexes(&vms[0]), [(0, 100, 1.0), (1, 102, 3.0)]);
        assert_eq!(vms[0].stats.vcpus[0].wait_seconds, Some(0.005));

        // A vCPU is hot-plugged: vm_process sees 4 threads at tick 2, but
        // the list is read again only from tick 1 + RESCAN_MIN_TICKS.
        thread(dir.path(), 103, "CPU 2/KVM");
        vms[0].num_threads = 4;
        for tick in 2..1 + RESCAN_MIN_TICKS {
            c.collect(&ctx(&roots, &budget, tick), &mut vms, &mut errors);
            assert_eq!(vms[0].stats.vcpus.len(), 2, "tick {tick}");
        }
        c.collect(
            &ctx(&roots, &budget, 1 + RESCAN_MIN_TICKS),
            &mut vms,
            &mut errors,
        );
        assert_eq!(
            indexes(&vms[0]),
            [(0, 100, 1.0), (1, 102, 3.0), (2, 103, 4.0)]
        );
        assert_eq!(budget.in_use(), 3);

        // The VM left: the pipeline drops its entry, and its threads'
        // descriptors go back to the budget.
        drop(vms);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn libvirt_thread_ids_are_used_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(16);
        thread(dir.path(), 100, "unnamed");
        thread(dir.path(), 101, "unnamed");
        let mut vms = [entry(7, 70)];
        vms[0].known_vcpu_tids = vec![(1, 101), (0, 100)];
        let mut errors = Vec::new();
        VmVcpu::default().collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert_eq!(indexes(&vms[0]), [(0, 100, 1.0), (1, 101, 2.0)]);
    }

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
