//! Which VMs exist on this host right now.
//!
//! Two sources, merged so that every VM is reported once:
//! - [`process`]: hypervisor processes (QEMU, Cloud Hypervisor, Firecracker)
//!   found in /proc and identified by their command lines;
//! - [`libvirt`]: libvirt's live status XML, which adds the domain's UUID,
//!   vCPU thread ids, TAP names and Nova metadata.
//!
//! A libvirt domain is a QEMU process too: when both sources see the same
//! PID, the VM is reported once with source `libvirt` and the command line
//! fills whatever the XML lacks.

pub mod libvirt;
pub mod process;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmscope_proc::{HypervisorKind, LibvirtDomain};

use crate::host::{Clock, CollectError, Roots};
use crate::model::Source;
pub use process::ProcVm;

/// One VM as discovery sees it: who it is, not how it is doing.
#[derive(Debug, Clone)]
pub struct DiscoveredVm {
    pub pid: u32,
    pub kind: HypervisorKind,
    pub source: Source,
    pub process: Option<Arc<ProcVm>>,
    pub libvirt: Option<Arc<LibvirtDomain>>,
}

#[derive(Debug, Default)]
pub struct DiscoveryOutcome {
    pub vms: Vec<DiscoveredVm>,
    pub errors: Vec<CollectError>,
    /// PIDs read this tick (new or young processes).
    pub examined: usize,
}

#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub process: bool,
    pub libvirt: bool,
    /// Full re-classification of all processes this often.
    pub rescan: Duration,
}

pub struct Discovery {
    opts: DiscoveryOptions,
    process: process::ProcessScanner,
    libvirt: libvirt::LibvirtScanner,
    libvirt_dir: PathBuf,
}

impl Discovery {
    pub fn new(roots: &Roots, opts: DiscoveryOptions) -> Self {
        Discovery {
            process: process::ProcessScanner::new(opts.rescan),
            libvirt: libvirt::LibvirtScanner::default(),
            libvirt_dir: roots.run.join("libvirt").join("qemu"),
            opts,
        }
    }

    /// The process with this PID exited or was replaced.
    pub fn forget(&mut self, pid: u32) {
        self.process.forget(pid);
    }

    pub fn discover(&mut self, roots: &Roots, clock: &Clock, now: Instant) -> DiscoveryOutcome {
        let mut out = DiscoveryOutcome::default();
        let mut stats = process::ScanStats::default();
        // The process listing runs even when process discovery is off: it
        // tells which libvirt pids are alive.
        let procs = match self.process.scan(roots, clock, now, &mut stats) {
            Ok(p) => p,
            Err(e) => {
                out.errors.push(CollectError::Io {
                    path: roots.proc.clone(),
                    source: e,
                });
                Vec::new()
            }
        };
        out.examined = stats.examined;
        let domains = if self.opts.libvirt {
            self.libvirt.scan(&self.libvirt_dir, &mut out.errors)
        } else {
            Vec::new()
        };
        let alive = |pid: u32| roots.pid(pid).join("stat").exists();
        let by_pid: HashMap<u32, &Arc<ProcVm>> = procs.iter().map(|p| (p.pid, p)).collect();
        for d in domains {
            let Some(pid) = d.pid else { continue };
            // A status file left behind by a crashed libvirtd names a dead pid.
            let process = by_pid.get(&pid).map(|p| Arc::clone(p));
            if process.is_none() && !alive(pid) {
                continue;
            }
            out.vms.push(DiscoveredVm {
                pid,
                kind: HypervisorKind::Qemu,
                source: Source::Libvirt,
                process,
                libvirt: Some(d),
            });
        }
        if self.opts.process {
            let mut claimed: Vec<u32> = out.vms.iter().map(|v| v.pid).collect();
            claimed.sort_unstable();
            for p in procs {
                if claimed.binary_search(&p.pid).is_ok() {
                    continue;
                }
                out.vms.push(DiscoveredVm {
                    pid: p.pid,
                    kind: p.cmdline.kind,
                    source: Source::Process,
                    process: Some(p),
                    libvirt: None,
                });
            }
        }
        out
    }
}
