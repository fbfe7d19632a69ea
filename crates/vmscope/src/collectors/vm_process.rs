//! CPU time, memory and run state of each hypervisor process.
//!
//! Reads `/proc/PID/stat` (one `pread` on a held descriptor): user, system and
//! guest CPU ticks, virtual size, state, thread count and start time; and
//! `/proc/PID/statm` (another held `pread`) for the RSS. `stat`'s own RSS
//! (field 24) reads the kernel's per-CPU RSS counters without summing
//! their per-CPU deltas and is some pages low on current kernels (measured
//! here: 10 to 150 pages on busy processes); `statm` gives the exact sum.
//! Where `statm` is missing (a fixture tree) `stat`'s value is used; where
//! it cannot be read or parsed the error is counted and `stat`'s value
//! stands in for that tick.
//! This is the collector that notices a VM is gone: the read fails with
//! `ESRCH`/`ENOENT`, the process is a zombie, or its start time changed (the
//! PID was reused). Keeps one held `stat` and `statm` per VM, dropped when
//! the VM leaves.

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, VmKey, record_vm_error};
use crate::host::{CollectError, ProcFile};
use crate::model::{Source, VmState};

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_process",
    per_vm: true,
    enabled: |_| true,
    new: |_| Box::new(VmProcess::default()),
};

#[derive(Default)]
pub struct VmProcess {
    buf: Vec<u8>,
}

/// A VM's `/proc/PID/stat` and `statm` (`None`: there is no statm file,
/// use stat's RSS), held open: they also pin the process. In its entry's
/// `Held`.
#[derive(Debug)]
pub(super) struct Files {
    stat: ProcFile,
    statm: Option<ProcFile>,
}

impl VmCollector for VmProcess {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        for vm in vms.iter_mut() {
            // Out of the entry while the entry is updated, then back.
            let mut files = vm.held.process.take().unwrap_or_else(|| {
                let dir = ctx.roots.pid(vm.pid);
                Files {
                    stat: ProcFile::new(dir.join("stat"), ctx.budget),
                    statm: Some(ProcFile::new(dir.join("statm"), ctx.budget)),
                }
            });
            self.read(ctx, vm, &mut files, errors);
            vm.held.process = Some(files);
        }
    }

    /// Nothing: the VM's files are in its entry.
    fn forget(&mut self, _: VmKey) {}
}

impl VmProcess {
    fn read(
        &mut self,
        ctx: &Ctx<'_>,
        vm: &mut VmEntry,
        files: &mut Files,
        errors: &mut Vec<CollectError>,
    ) {
        let Files { stat, statm } = files;
        if let Err(e) = one(ctx, vm, stat, &mut self.buf) {
            record_vm_error(vm, e, errors);
            return;
        }
        if let Some(file) = statm {
            match rss(ctx, vm.pid, file, &mut self.buf) {
                Ok(bytes) => set_rss(&mut vm.stats, bytes),
                // No statm at all (not a real procfs): stat's RSS, and
                // no further tries.
                Err(CollectError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    *statm = None;
                }
                Err(e @ CollectError::Gone { .. }) => record_vm_error(vm, e, errors),
                // Counted; stat's RSS stands in for this tick.
                Err(e) => errors.push(e),
            }
        }
    }
}

/// RSS in bytes from `statm`. A missing file is an `Io` error of kind
/// `NotFound` here (not `Gone`: `stat` was just read, so the process is
/// there and the file is what is missing).
fn rss(
    ctx: &Ctx<'_>,
    pid: u32,
    file: &mut ProcFile,
    buf: &mut Vec<u8>,
) -> Result<u64, CollectError> {
    let data = match file.read(buf) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CollectError::Io {
                path: file.path().to_path_buf(),
                source: e,
            });
        }
        Err(e) => return Err(CollectError::from_proc_io(pid, file.path(), e)),
    };
    let m = vmscope_proc::parse_statm(data).map_err(|e| CollectError::parse(file.path(), e))?;
    Ok(m.resident_pages.saturating_mul(ctx.page_size))
}

fn set_rss(s: &mut crate::model::VmStats, bytes: u64) {
    s.memory_rss_bytes = bytes;
    s.memory_utilization_ratio = s
        .allocated_memory_bytes
        .filter(|a| *a > 0)
        .map(|a| bytes as f64 / a as f64);
}

fn one(
    ctx: &Ctx<'_>,
    vm: &mut VmEntry,
    file: &mut ProcFile,
    buf: &mut Vec<u8>,
) -> Result<(), CollectError> {
    let pid = vm.pid;
    let data = file
        .read(buf)
        .map_err(|e| CollectError::from_proc_io(pid, file.path(), e))?;
    let st = vmscope_proc::parse_stat(data).map_err(|e| CollectError::parse(file.path(), e))?;
    if st.starttime_ticks != vm.starttime_ticks || matches!(st.state, b'Z' | b'X' | b'x') {
        return Err(CollectError::Gone { pid });
    }
    // A cheap signal that vCPU threads may have come or gone (vm_vcpu).
    vm.num_threads = st.num_threads;
    let s = &mut vm.stats;
    s.cpu.user = ctx.ticks_to_seconds(st.utime_ticks);
    s.cpu.system = ctx.ticks_to_seconds(st.stime_ticks);
    s.cpu.guest = st.guest_time_ticks.map(|t| ctx.ticks_to_seconds(t));
    // Replaced by statm's exact value when there is one (the caller).
    set_rss(s, st.rss_pages.saturating_mul(ctx.page_size));
    s.memory_virtual_bytes = st.vsize_bytes;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::collectors::testing::{ctx, entry};
    use crate::host::{FdBudget, Roots};

    /// A `/proc/PID/stat` line: state, utime, stime, threads, start, vsize, rss.
    fn stat_line(pid: u32, state: char, threads: u32, start: u64) -> String {
        format!(
            "{pid} (qemu-system-x86) {state} 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 {threads} 0 {start} 8192000 100 \
             18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 120 0 0 0 0 0 0 0 0 0\n"
        )
    }

    fn write_stat(root: &std::path::Path, pid: u32, line: &str) {
        let dir = root.join("proc").join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), line).unwrap();
    }

    #[test]
    fn reads_values_notices_reuse_and_forgets_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(8);
        write_stat(dir.path(), 7, &stat_line(7, 'S', 5, 700));
        write_stat(dir.path(), 8, &stat_line(8, 'T', 1, 800));
        let mut c = VmProcess::default();
        let mut vms = [entry(7, 700), entry(8, 800)];
        let mut errors = Vec::new();
        c.collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let s = &vms[0].stats;
        assert_eq!(
            (s.cpu.user, s.cpu.system, s.cpu.guest),
            (2.5, 0.5, Some(1.2))
        );
        assert_eq!(s.memory_rss_bytes, 100 * 4096);
        assert_eq!(s.memory_virtual_bytes, 8_192_000);
        assert_eq!(s.state, VmState::Running);
        assert_eq!(vms[0].num_threads, 5);
        assert_eq!(vms[1].stats.state, VmState::Paused);
        assert_eq!(budget.in_use(), 2);

        // Pid 8 now belongs to another process: the VM is gone.
        write_stat(dir.path(), 8, &stat_line(8, 'S', 1, 999));
        c.collect(&ctx(&roots, &budget, 2), &mut vms, &mut errors);
        assert!(!vms[0].gone && vms[1].gone);
        assert!(matches!(errors[..], [CollectError::Gone { pid: 8 }]));

        // The pipeline drops it: its descriptor goes back to the budget.
        let [kept, left] = vms;
        drop(left);
        assert_eq!(budget.in_use(), 1);
        assert!(kept.held.process.is_some());
        // A new process on pid 8 is a new VM with its own file.
        let mut vms = [kept, entry(8, 999)];
        errors.clear();
        c.collect(&ctx(&roots, &budget, 3), &mut vms, &mut errors);
        assert!(errors.is_empty() && !vms[1].gone);
        assert_eq!(budget.in_use(), 2);
    }

    #[test]
    fn rss_comes_from_statm_and_falls_back_to_stat_without_failing_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(8);
        // stat says 100 pages resident, statm (exact) 150.
        write_stat(dir.path(), 7, &stat_line(7, 'S', 5, 700));
        std::fs::write(dir.path().join("proc/7/statm"), "2000 150 20 5 0 90 0\n").unwrap();
        let mut c = VmProcess::default();
        let mut vms = [entry(7, 700)];
        vms[0].stats.allocated_memory_bytes = Some(300 * 4096);
        let mut errors = Vec::new();
        c.collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(vms[0].stats.memory_rss_bytes, 150 * 4096);
        assert_eq!(vms[0].stats.memory_utilization_ratio, Some(0.5));
        assert_eq!(budget.in_use(), 2, "stat and statm held");
        // A statm that does not parse: counted, stat's RSS stands in, and
        // the VM's other values are fresh (not failed).
        std::fs::write(dir.path().join("proc/7/statm"), "x y z\n").unwrap();
        c.collect(&ctx(&roots, &budget, 2), &mut vms, &mut errors);
        assert!(
            matches!(errors[..], [CollectError::Parse { .. }]),
            "{errors:?}"
        );
        assert!(!vms[0].failed && !vms[0].gone);
        assert_eq!(vms[0].stats.memory_rss_bytes, 100 * 4096);
    }

    #[test]
    fn a_zombie_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(8);
        write_stat(dir.path(), 7, &stat_line(7, 'Z', 1, 700));
        let mut vms = [entry(7, 700)];
        let mut errors = Vec::new();
        VmProcess::default().collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(vms[0].gone);
    }
}
