//! Storage I/O of each hypervisor process.
//!
//! Reads `/proc/PID/io` (`read_bytes`, `write_bytes`: what the process caused
//! to be fetched from or sent to the block layer, all of the VM's disks
//! together). Per-device counters need the hypervisor's own API and are not
//! read here. The file needs ptrace-read rights: when refused (not root) it
//! is counted once per VM and not asked again. Keeps one held `io` per VM
//! (and whether it was refused), dropped when the VM leaves.

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, VmKey, record_vm_error};
use crate::host::{CollectError, ProcFile};
use crate::model::DiskIo;

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_io",
    per_vm: true,
    enabled: |c| c.vm_io,
    new: |_| Box::new(VmIo::default()),
};

#[derive(Default)]
pub struct VmIo {
    buf: Vec<u8>,
}

/// One VM's `/proc/PID/io` (in its entry's `Held`).
#[derive(Debug)]
pub(super) struct IoFile {
    file: ProcFile,
    /// The file needs ptrace-read rights: stop asking once refused.
    denied: bool,
}

impl VmCollector for VmIo {
    fn collect(&mut self, ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        for vm in vms.iter_mut().filter(|v| !v.gone) {
            let pid = vm.pid;
            let io = vm.held.io.get_or_insert_with(|| IoFile {
                file: ProcFile::new(ctx.roots.pid(pid).join("io"), ctx.budget),
                denied: false,
            });
            if io.denied {
                continue;
            }
            let res = match io.file.read(&mut self.buf) {
                Ok(data) => {
                    vmscope_proc::parse_io(data).map_err(|e| CollectError::parse(io.file.path(), e))
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    io.denied = true;
                    Err(CollectError::from_proc_io(pid, io.file.path(), e))
                }
                Err(e) => Err(CollectError::from_proc_io(pid, io.file.path(), e)),
            };
            match res {
                Ok(c) => {
                    vm.stats.disk = Some(DiskIo {
                        read_bytes: c.read_bytes,
                        write_bytes: c.write_bytes,
                    })
                }
                Err(e) if io.denied => errors.push(e),
                Err(e) => record_vm_error(vm, e, errors),
            }
        }
    }

    /// Nothing: the VM's file is in its entry.
    fn forget(&mut self, _: VmKey) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::collectors::testing::{ctx, entry};
    use crate::host::{FdBudget, Roots};

    #[test]
    fn reads_counters_skips_the_gone_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(8);
        let pdir = dir.path().join("proc/7");
        std::fs::create_dir_all(&pdir).unwrap();
        std::fs::write(
            pdir.join("io"),
            "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n",
        )
        .unwrap();
        let mut c = VmIo::default();
        let mut vms = [entry(7, 70), entry(9, 90)];
        vms[1].gone = true;
        let mut errors = Vec::new();
        c.collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            vms[0].stats.disk,
            Some(DiskIo {
                read_bytes: 4096,
                write_bytes: 8192
            })
        );
        // Nothing is kept for a VM already gone when it was first seen.
        assert!(vms[0].held.io.is_some() && vms[1].held.io.is_none());
        assert_eq!(vms[1].stats.disk, None);
        assert_eq!(budget.in_use(), 1);
        // The pipeline drops a VM that left: its file goes with it.
        drop(vms);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_vanished_file_is_a_gone_vm() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let budget = FdBudget::new(8);
        let mut vms = [entry(7, 70)];
        let mut errors = Vec::new();
        VmIo::default().collect(&ctx(&roots, &budget, 1), &mut vms, &mut errors);
        assert!(vms[0].gone);
        assert!(matches!(errors[..], [CollectError::Gone { pid: 7 }]));
    }
}
