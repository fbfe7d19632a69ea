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
//!
//! How new processes are noticed: with `discovery.process_events = "auto"`
//! and the rights for it, from the kernel's process events ([`events`]),
//! so a tick does not list /proc; else, or once the events fail, by
//! listing /proc ([`process`]). Events that stop arriving while the
//! kernel's last PID (`/proc/loadavg`) keeps moving for
//! [`events::SILENT_TICKS`] ticks count as failed. Either way a full listing runs
//! every `discovery.rescan`. [`DiscoveryStats`] says which mode runs and
//! counts the listings by reason.
//!
//! Fails: never at start; a /proc that cannot be listed is a collection
//! error of the tick (`discovery`), as before.

pub mod events;
pub mod libvirt;
pub mod process;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmscope_proc::{HypervisorKind, LibvirtDomain};

use crate::host::{Clock, CollectError, Roots, read_once};
use crate::model::{DiscoveryStats, Source};
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
    /// Follow the kernel's process events where possible (else list /proc
    /// every tick); libvirt's status directory is watched with inotify
    /// likewise.
    pub process_events: bool,
    /// Keep each hypervisor's joined command line (`ProcVm::command_line`)
    /// for the `cmdline` owner source.
    pub keep_command_line: bool,
}

pub struct Discovery {
    opts: DiscoveryOptions,
    process: process::ProcessScanner,
    libvirt: libvirt::LibvirtScanner,
    libvirt_dir: PathBuf,
    /// The process-events subscription, while it works.
    events: Option<events::ProcEvents>,
    /// Whether the subscription still delivers.
    silence: events::Silence,
    /// The libvirt listing follows the process scanner's rescan clock.
    libvirt_last_full: Option<Instant>,
    stats: DiscoveryStats,
    buf: Vec<u8>,
}

impl Discovery {
    pub fn new(roots: &Roots, opts: DiscoveryOptions) -> Self {
        let events = if opts.process_events {
            start_events(roots)
        } else {
            None
        };
        Discovery {
            process: process::ProcessScanner::new(opts.rescan)
                .keep_command_line(opts.keep_command_line),
            libvirt: libvirt::LibvirtScanner::new(opts.process_events),
            libvirt_dir: roots.run.join("libvirt").join("qemu"),
            events,
            silence: events::Silence::default(),
            libvirt_last_full: None,
            stats: DiscoveryStats::default(),
            buf: Vec::new(),
            opts,
        }
    }

    /// Which mode discovery is in, and its listings since start.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats.clone()
    }

    /// This tick's process events, or `None` (list /proc) when there is no
    /// subscription or it just failed.
    fn take_events(&mut self, roots: &Roots) -> Option<events::Batch> {
        let events = self.events.as_ref()?;
        // The last PID before the batch: a fork that moved it has queued its
        // event by then (the kernel sends it from the fork), so the batch
        // holds it unless the thread is that far behind.
        let last_pid = read_once(&roots.proc.join("loadavg"), &mut self.buf)
            .ok()
            .and_then(|()| process::last_pid_from_loadavg(&self.buf));
        let batch = events.take();
        let failed = if let Some(e) = &batch.failed {
            Some(e.clone())
        } else {
            // Processes were created but no event came: the events do not
            // reach us (or no longer), whatever the socket says.
            self.silence.broken(last_pid, batch.forks).then(|| {
                format!(
                    "no process event in {} ticks while processes were created",
                    events::SILENT_TICKS
                )
            })
        };
        if let Some(error) = failed {
            tracing::warn!(
                error = %error,
                "process events stopped: discovery lists /proc every tick from now on"
            );
            self.events = None;
            return None;
        }
        Some(batch)
    }

    /// The process with this PID exited or was replaced.
    pub fn forget(&mut self, pid: u32) {
        self.process.forget(pid);
    }

    pub fn discover(&mut self, roots: &Roots, clock: &Clock, now: Instant) -> DiscoveryOutcome {
        let mut out = DiscoveryOutcome::default();
        let mut stats = process::ScanStats::default();
        let batch = self.take_events(roots);
        // The process scan runs even when process discovery is off: it
        // tells which libvirt pids are alive.
        let scanned = self
            .process
            .scan(roots, clock, now, batch.as_ref(), &mut stats);
        if let Some(reason) = stats.listing {
            self.stats.count_listing(reason);
        }
        self.stats.process_events = self.events.is_some();
        let procs = match scanned {
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
            let full = self
                .libvirt_last_full
                .is_none_or(|t| now.saturating_duration_since(t) >= self.opts.rescan);
            if full {
                self.libvirt_last_full = Some(now);
            }
            let d = self.libvirt.scan(&self.libvirt_dir, full, &mut out.errors);
            self.stats.libvirt_inotify = Some(self.libvirt.watching());
            d
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

/// Subscribes to process events when `roots.proc` is this process's own
/// procfs: the kernel reports PIDs as the initial PID namespace sees them,
/// which a fixture tree or another namespace's /proc would not match.
fn start_events(roots: &Roots) -> Option<events::ProcEvents> {
    let own = std::fs::read_link(roots.proc.join("self"))
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id());
    if !own {
        tracing::info!(
            path = %roots.proc.display(),
            "procfs is not this process's own: discovery lists it every tick"
        );
        return None;
    }
    match events::ProcEvents::start() {
        Ok(ev) => {
            tracing::info!("discovery follows the kernel's process events");
            Some(ev)
        }
        Err(e) => {
            // The chain by hand: discovery stands on host and model only.
            let mut error = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                error.push_str(": ");
                error.push_str(&s.to_string());
                src = s.source();
            }
            tracing::warn!(
                error = %error,
                "process events unavailable: discovery lists /proc every tick"
            );
            None
        }
    }
}
