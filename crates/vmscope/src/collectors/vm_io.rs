//! Storage I/O of each hypervisor process.
//!
//! Reads `/proc/PID/io` (`read_bytes`, `write_bytes`: what the process caused
//! to be fetched from or sent to the block layer, all of the VM's disks
//! together). Per-device counters need the hypervisor's own API and are not
//! read here. The file needs ptrace-read rights: when refused (not root) it
//! is counted once per VM and not asked again.

use super::{Ctx, VmCollector, VmCollectorSpec, VmEntry, record_vm_error};
use crate::host::CollectError;
use crate::model::DiskIo;

pub const SPEC: VmCollectorSpec = VmCollectorSpec {
    name: "vm_io",
    enabled: |c| c.disk,
    new: |_| Box::new(VmIo::default()),
};

#[derive(Default)]
pub struct VmIo {
    buf: Vec<u8>,
}

impl VmCollector for VmIo {
    fn collect(&mut self, _ctx: &Ctx<'_>, vms: &mut [VmEntry], errors: &mut Vec<CollectError>) {
        for vm in vms.iter_mut().filter(|v| !v.gone && !v.io_denied) {
            let pid = vm.pid;
            let res = match vm.io_file.read(&mut self.buf) {
                Ok(data) => vmscope_proc::parse_io(data)
                    .map_err(|e| CollectError::parse(vm.io_file.path(), e)),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    vm.io_denied = true;
                    Err(CollectError::from_proc_io(pid, vm.io_file.path(), e))
                }
                Err(e) => Err(CollectError::from_proc_io(pid, vm.io_file.path(), e)),
            };
            match res {
                Ok(io) => {
                    vm.stats.disk = Some(DiskIo {
                        read_bytes: io.read_bytes,
                        write_bytes: io.write_bytes,
                    })
                }
                Err(e) if vm.io_denied => errors.push(e),
                Err(e) => record_vm_error(vm, e, errors),
            }
        }
    }
}
