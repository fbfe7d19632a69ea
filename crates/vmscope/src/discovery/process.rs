//! Finds hypervisor processes in /proc.
//!
//! Reads: the `/proc` directory listing every tick; `/proc/PID/stat` once for
//! each PID it has not classified yet; `/proc/PID/cmdline` (and a Firecracker
//! `--config-file`, through `/proc/PID/root` so jailed VMs work) once per
//! hypervisor process.
//!
//! Cost: the listing is one `getdents` stream; everything else is paid once
//! per new process, so a tick's cost follows the number of VMs and of *new*
//! processes, not the number of processes on the host. A process that is not
//! a hypervisor is remembered by PID and not read again while that PID stays
//! listed, except while it is young: libvirt forks and then execs QEMU, so a
//! process younger than [`EXEC_GRACE_SECS`] is looked at again next tick.
//! A full rescan every `rescan` interval bounds any staleness (for example a
//! long-lived process that execs a hypervisor).
//!
//! The listing itself is skipped when no process was created since the last
//! one (the last PID handed out, in `/proc/loadavg`, did not move), at most
//! [`MAX_SKIPPED_LISTINGS`] ticks in a row: on a quiet host the tick then
//! costs nothing per unrelated process.
//!
//! With process events ([`super::events`], the kernel's connector), no
//! listing runs per tick: [`ProcessScanner::scan`] is handed the tick's
//! [`Batch`] and classifies only the processes that exec'd since the last
//! tick, plus the children forked by a hypervisor (or by a process that
//! exec'd in the same batch): `qemu -daemonize` forks the VM's process,
//! which never execs. Exit events drop processes, a hypervisor only once
//! its `stat` says it is gone or a zombie (a leader thread that exits
//! alone leaves its process running). The young-process grace is not
//! needed then: a process that execs QEMU later sends its own exec event.
//! A lost batch (socket overrun) and the periodic rescan list /proc as
//! before; [`ScanStats::listing`] says when and why.
//!
//! Failure: a process that exits mid-read is skipped silently (it is not a
//! VM we knew); unreadable hypervisor command lines are counted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmscope_proc::{
    VmCmdline, classify_argv0, classify_comm, parse_firecracker_config, parse_stat,
    parse_vm_cmdline, split_cmdline,
};

use super::events::{Batch, Change};
use crate::host::{Clock, Roots, read_once};
use crate::model::ListingReason;

/// A process younger than this is classified again on the next tick.
pub const EXEC_GRACE_SECS: f64 = 10.0;

/// One hypervisor process, with what its command line says.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcVm {
    pub pid: u32,
    pub starttime_ticks: u64,
    pub cmdline: VmCmdline,
    /// The arguments joined by spaces, for the `cmdline` owner source's
    /// pattern (owners/cmdline.rs); empty unless that source matches over
    /// it ([`ProcessScanner::keep_command_line`]: ~1 KiB per VM, 10 MB at
    /// 10 000 VMs, kept for nothing otherwise).
    pub command_line: String,
}

#[derive(Debug, Default)]
pub struct ScanStats {
    /// PIDs read this tick because they were new or young.
    pub examined: usize,
    /// Hypervisor processes whose command line could not be used.
    pub unusable: usize,
    /// Whether /proc was listed this tick, and why.
    pub listing: Option<ListingReason>,
}

#[derive(Debug)]
pub struct ProcessScanner {
    /// PIDs known not to be hypervisors (settled: old enough not to exec),
    /// with the inode of their /proc directory: a PID reused by a new
    /// process between two listings comes with another inode, so it is
    /// classified afresh instead of being taken for the old one.
    others: HashMap<u32, u64, foldhash::fast::RandomState>,
    /// PIDs known to be hypervisors.
    vms: HashMap<u32, Arc<ProcVm>, foldhash::fast::RandomState>,
    /// PIDs seen but too young to settle: looked at again every tick.
    young: HashSet<u32>,
    /// Hypervisors forgotten since the last batch (their process was
    /// found gone): their forks in the next batch are still looked at.
    /// `qemu -daemonize` forks the VM and exits; when the tick reads the
    /// parent gone before the fork event is handled, the VM would
    /// otherwise wait for the periodic rescan to be found.
    forgotten: HashSet<u32>,
    /// The last PID the kernel handed out (`/proc/loadavg`), at the last
    /// listing: unchanged means no process was created since.
    last_pid: Option<u64>,
    /// Listings skipped in a row.
    skipped: u32,
    listed: HashSet<u32>,
    rescan: Duration,
    last_full: Option<Instant>,
    buf: Vec<u8>,
    /// Whether [`ProcVm::command_line`] is filled.
    keep_command_line: bool,
}

impl ProcessScanner {
    pub fn new(rescan: Duration) -> Self {
        ProcessScanner {
            // PIDs, looked up for every process of every listing: foldhash.
            others: HashMap::default(),
            young: HashSet::new(),
            forgotten: HashSet::new(),
            last_pid: None,
            skipped: 0,
            vms: HashMap::default(),
            listed: HashSet::new(),
            rescan,
            last_full: None,
            buf: Vec::with_capacity(4096),
            keep_command_line: true,
        }
    }

    /// Whether each VM keeps its joined command line (the `cmdline` owner
    /// source over `cmdline` needs it; nothing else reads it).
    pub fn keep_command_line(mut self, keep: bool) -> Self {
        self.keep_command_line = keep;
        self
    }

    /// Forget a PID (its process exited or was replaced), so that it is
    /// classified afresh if it is listed again.
    pub fn forget(&mut self, pid: u32) {
        if self.vms.remove(&pid).is_some() {
            self.forgotten.insert(pid);
        }
        self.others.remove(&pid);
        // Look at it again next tick even if no listing runs: the PID may
        // already belong to a new process (it is dropped if it is gone).
        self.young.insert(pid);
    }

    /// Returns the hypervisor processes found: from `events` (what changed
    /// since the last tick) when given, else by listing /proc.
    pub fn scan(
        &mut self,
        roots: &Roots,
        clock: &Clock,
        now: Instant,
        events: Option<&Batch>,
        stats: &mut ScanStats,
    ) -> std::io::Result<Vec<Arc<ProcVm>>> {
        let full = self
            .last_full
            .is_none_or(|t| now.saturating_duration_since(t) >= self.rescan);
        if full {
            self.others.clear();
            self.last_full = Some(now);
        }
        match events {
            Some(batch) => self.scan_events(roots, clock, full, batch, stats),
            None => self.scan_listing(roots, clock, full, stats),
        }
    }

    /// One tick with process events: apply the batch, then classify what
    /// exec'd (or list /proc when the batch was lost or a rescan is due).
    fn scan_events(
        &mut self,
        roots: &Roots,
        clock: &Clock,
        full: bool,
        batch: &Batch,
        stats: &mut ScanStats,
    ) -> std::io::Result<Vec<Arc<ProcVm>>> {
        // In kernel order, so that a PID reused within the batch (exit,
        // then fork and exec of a new process) ends up a candidate. A set:
        // a busy host's batch holds thousands of changes.
        let mut candidates: HashSet<u32> = HashSet::new();
        for change in &batch.changes {
            match *change {
                Change::Exec(pid) => {
                    self.others.remove(&pid);
                    self.vms.remove(&pid);
                    candidates.insert(pid);
                }
                Change::Fork { parent, child } => {
                    if self.vms.contains_key(&parent)
                        || candidates.contains(&parent)
                        || self.forgotten.contains(&parent)
                    {
                        self.others.remove(&child);
                        candidates.insert(child);
                    }
                }
                Change::Exit(pid) => {
                    candidates.remove(&pid);
                    self.others.remove(&pid);
                    if self.vms.contains_key(&pid) && !self.still_running(roots, pid) {
                        self.vms.remove(&pid);
                    }
                }
            }
        }
        // Exec events stand for the grace period; `forget` adds a PID here
        // for the listing path only.
        self.young.clear();
        self.forgotten.clear();
        if full || batch.lost {
            stats.listing = Some(if full {
                ListingReason::Rescan
            } else {
                ListingReason::EventsLost
            });
            self.list(roots, clock, stats)?;
            self.young.clear();
            return Ok(self.found());
        }
        let mut candidates: Vec<u32> = candidates.into_iter().collect();
        candidates.sort_unstable();
        for pid in candidates {
            stats.examined += 1;
            let found = self.classify(roots, clock, pid, stats);
            self.record(pid, found, || {
                std::fs::metadata(roots.pid(pid))
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            });
        }
        self.young.clear();
        Ok(self.found())
    }

    /// Whether `pid` still runs (not gone, not a zombie): a hypervisor's
    /// exit event came from its leader thread, which can exit alone.
    fn still_running(&mut self, roots: &Roots, pid: u32) -> bool {
        if read_once(&roots.pid(pid).join("stat"), &mut self.buf).is_err() {
            return false;
        }
        parse_stat(&self.buf).is_ok_and(|s| !matches!(s.state, b'Z' | b'X' | b'x'))
    }

    /// One tick without process events: list /proc unless no process was
    /// created since the last listing.
    fn scan_listing(
        &mut self,
        roots: &Roots,
        clock: &Clock,
        full: bool,
        stats: &mut ScanStats,
    ) -> std::io::Result<Vec<Arc<ProcVm>>> {
        let last_pid = read_once(&roots.proc.join("loadavg"), &mut self.buf)
            .ok()
            .and_then(|()| last_pid_from_loadavg(&self.buf));
        let quiet = !full
            && last_pid.is_some()
            && last_pid == self.last_pid
            && self.skipped < MAX_SKIPPED_LISTINGS;
        self.last_pid = last_pid;
        if quiet {
            // No process was created since the last listing: nothing new
            // can be listed. Exits are seen by the collectors' reads; only
            // young processes may still exec a hypervisor.
            self.skipped += 1;
            let young: Vec<u32> = self.young.iter().copied().collect();
            for pid in young {
                stats.examined += 1;
                let found = self.classify(roots, clock, pid, stats);
                self.record(pid, found, || {
                    std::fs::metadata(roots.pid(pid))
                        .ok()
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                });
            }
            return Ok(self.found());
        }
        self.skipped = 0;
        stats.listing = Some(if full {
            ListingReason::Rescan
        } else {
            ListingReason::Tick
        });
        self.list(roots, clock, stats)?;
        Ok(self.found())
    }

    /// Lists /proc: classifies every PID not known yet, and forgets the
    /// known ones that are no longer listed.
    fn list(&mut self, roots: &Roots, clock: &Clock, stats: &mut ScanStats) -> std::io::Result<()> {
        self.young.clear();
        self.listed.clear();
        for entry in std::fs::read_dir(&roots.proc)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            self.listed.insert(pid);
            let ino = std::os::unix::fs::DirEntryExt::ino(&entry);
            if self.others.get(&pid) == Some(&ino) || self.vms.contains_key(&pid) {
                continue;
            }
            stats.examined += 1;
            let found = self.classify(roots, clock, pid, stats);
            self.record(pid, found, || Some(ino));
        }
        let listed = &self.listed;
        self.others.retain(|p, _| listed.contains(p));
        self.vms.retain(|p, _| listed.contains(p));
        Ok(())
    }

    /// Files what `classify` said about `pid`. `ino` gives the inode of its
    /// /proc directory, asked only when the PID settles as a non-hypervisor.
    fn record(&mut self, pid: u32, found: Classified, ino: impl FnOnce() -> Option<u64>) {
        match found {
            Classified::Vm(vm) => {
                self.young.remove(&pid);
                self.vms.insert(pid, Arc::from(vm));
            }
            Classified::Other { settled: true } => {
                self.young.remove(&pid);
                if let Some(ino) = ino() {
                    self.others.insert(pid, ino);
                }
            }
            Classified::Other { settled: false } => {
                self.young.insert(pid);
            }
            Classified::Vanished => {
                self.young.remove(&pid);
            }
        }
    }

    /// The hypervisor processes known now, by PID.
    fn found(&self) -> Vec<Arc<ProcVm>> {
        let mut out: Vec<Arc<ProcVm>> = self.vms.values().cloned().collect();
        out.sort_by_key(|v| v.pid);
        out
    }

    fn classify(
        &mut self,
        roots: &Roots,
        clock: &Clock,
        pid: u32,
        stats: &mut ScanStats,
    ) -> Classified {
        let dir = roots.pid(pid);
        if read_once(&dir.join("stat"), &mut self.buf).is_err() {
            return Classified::Vanished;
        }
        let Ok(stat) = parse_stat(&self.buf) else {
            return Classified::Vanished;
        };
        let starttime_ticks = stat.starttime_ticks;
        // Kernel threads (children of kthreadd) never become hypervisors.
        let kernel_thread = pid == 2 || stat.ppid == 2;
        let age = clock.now - clock.start_time(starttime_ticks);
        let settled = kernel_thread || age >= EXEC_GRACE_SECS;
        if kernel_thread || (classify_comm(stat.comm).is_none() && !hypervisor_executable(&dir)) {
            return Classified::Other { settled };
        }
        if read_once(&dir.join("cmdline"), &mut self.buf).is_err() {
            return Classified::Vanished;
        }
        let args = split_cmdline(&self.buf);
        // `qemu-system-x86_64 --version` and friends run no VM.
        let informational = args.iter().skip(1).any(|a| {
            matches!(
                a.as_str(),
                "-version" | "--version" | "-h" | "-help" | "--help"
            )
        });
        let parsed = if informational {
            None
        } else {
            parse_vm_cmdline(&args)
        };
        let Some(mut cmdline) = parsed else {
            // A hypervisor binary name without a VM command line (e.g.
            // `qemu-system-x86_64 --version`, or a zombie with no cmdline).
            if !args.is_empty() {
                stats.unusable += 1;
            }
            return Classified::Other { settled };
        };
        if let Some(cfg) = cmdline.fc_config_file.clone() {
            self.merge_firecracker_config(&dir, &cfg, &mut cmdline);
        }
        Classified::Vm(Box::new(ProcVm {
            pid,
            starttime_ticks,
            cmdline,
            command_line: if self.keep_command_line {
                args.join(" ")
            } else {
                String::new()
            },
        }))
    }

    /// Firecracker keeps vCPUs, memory and TAPs in its JSON config file. The
    /// path is the process's own view: resolve it through /proc/PID/root
    /// (absolute) or /proc/PID/cwd (relative) so jailed VMs work too.
    fn merge_firecracker_config(&mut self, dir: &Path, path: &str, cmdline: &mut VmCmdline) {
        let file = if let Some(abs) = path.strip_prefix('/') {
            dir.join("root").join(abs)
        } else {
            dir.join("cwd").join(path)
        };
        if read_once(&file, &mut self.buf).is_err() {
            tracing::debug!(path = %file.display(), "firecracker config file unreadable");
            return;
        }
        match parse_firecracker_config(&self.buf) {
            Ok(fc) => {
                cmdline.vcpus = cmdline.vcpus.or(fc.vcpus);
                cmdline.memory_bytes = cmdline.memory_bytes.or(fc.memory_bytes);
                if cmdline.taps.is_empty() {
                    cmdline.taps = fc.taps;
                }
            }
            Err(e) => {
                tracing::debug!(path = %file.display(), error = %e, "firecracker config file unparsable")
            }
        }
    }
}

/// A listing is never skipped more than this many ticks in a row (bounds
/// any case where the last-PID shortcut could be wrong, e.g. a /proc from
/// another PID namespace than the reader's).
pub const MAX_SKIPPED_LISTINGS: u32 = 9;

/// The last PID handed out by the kernel: the 5th field of /proc/loadavg
/// (`0.50 0.75 1.00 2/300 4242`).
pub fn last_pid_from_loadavg(buf: &[u8]) -> Option<u64> {
    std::str::from_utf8(buf)
        .ok()?
        .split_ascii_whitespace()
        .nth(4)?
        .parse()
        .ok()
}

enum Classified {
    Vm(Box<ProcVm>),
    Other { settled: bool },
    Vanished,
}

/// Whether the process runs a hypervisor binary although its name says
/// otherwise: QEMU's `-name ...,process=NAME` renames the process (its
/// `comm`), not the executable. One `readlink` of `/proc/PID/exe`, made once
/// per process that is not classified yet; unreadable (another user's
/// process when vmscope is not root) means no.
fn hypervisor_executable(dir: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(dir.join("exe")) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    // A binary replaced by a package upgrade while the VM runs.
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    classify_argv0(exe).is_some()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::discovery::events::{Batch, Change};

    /// A /proc tree in a temporary directory, with processes added and
    /// removed by hand: what the scanner sees is exactly what the test wrote.
    struct Tree {
        _dir: tempfile::TempDir,
        roots: Roots,
    }

    impl Tree {
        fn new() -> Tree {
            let dir = tempfile::tempdir().unwrap();
            let roots = Roots::under(dir.path());
            std::fs::create_dir_all(&roots.proc).unwrap();
            std::fs::write(roots.proc.join("loadavg"), "0.1 0.1 0.1 1/100 500\n").unwrap();
            Tree { _dir: dir, roots }
        }

        /// A process started `starttime` ticks after boot, in `state`.
        fn add(&self, pid: u32, comm: &str, state: char, argv: &[&str]) {
            let d = self.roots.pid(pid);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) {state} 1 1 1 0 -1 4194560 100 0 0 0 1500 500 0 0 20 0 4 0 1000 1073741824 32768 0\n"),
            )
            .unwrap();
            let mut cmdline = argv.join("\0");
            cmdline.push('\0');
            std::fs::write(d.join("cmdline"), cmdline).unwrap();
        }

        fn qemu(&self, pid: u32, name: &str) {
            self.add(
                pid,
                "qemu-system-x86",
                'S',
                &[
                    "/usr/bin/qemu-system-x86_64",
                    "-name",
                    &format!("guest={name}"),
                    "-m",
                    "512",
                ],
            );
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.roots.pid(pid)).unwrap();
        }
    }

    /// Every process started long ago (no young-process grace).
    fn clock() -> Clock {
        Clock {
            ticks_per_second: 100,
            boot_time: 1_000_000,
            now: 2_000_000.0,
        }
    }

    fn batch(changes: &[Change]) -> Batch {
        Batch {
            changes: changes.to_vec(),
            forks: changes.len() as u64,
            ..Batch::default()
        }
    }

    fn pids(found: &[Arc<ProcVm>]) -> Vec<u32> {
        found.iter().map(|v| v.pid).collect()
    }

    /// The joined command line is kept only when asked for (the `cmdline`
    /// owner source): 1 KiB per VM otherwise held for nothing.
    #[test]
    fn the_command_line_is_kept_only_when_asked_for() {
        let t = Tree::new();
        t.qemu(200, "a");
        for keep in [true, false] {
            let mut s = ProcessScanner::new(Duration::from_secs(300)).keep_command_line(keep);
            let found = s
                .scan(
                    &t.roots,
                    &clock(),
                    Instant::now(),
                    None,
                    &mut ScanStats::default(),
                )
                .unwrap();
            assert_eq!(pids(&found), vec![200]);
            let vm = &found[0];
            assert_eq!(vm.cmdline.name.as_deref(), Some("a"), "parsed either way");
            if keep {
                assert!(vm.command_line.contains("guest=a"), "{}", vm.command_line);
            } else {
                assert_eq!(vm.command_line, "");
            }
        }
    }

    /// One tick's scan with event batch `b`, `at` seconds after `t0`:
    /// the hypervisor pids found and the scan's stats.
    fn scan_events(
        s: &mut ProcessScanner,
        t: &Tree,
        t0: Instant,
        b: &Batch,
        at: u64,
    ) -> (Vec<u32>, ScanStats) {
        let mut st = ScanStats::default();
        let found = s
            .scan(
                &t.roots,
                &clock(),
                t0 + Duration::from_secs(at),
                Some(b),
                &mut st,
            )
            .unwrap();
        (pids(&found), st)
    }

    #[test]
    fn events_classify_only_what_changed() {
        let t = Tree::new();
        t.add(100, "bash", 'S', &["bash"]);
        t.qemu(200, "a");
        let mut s = ProcessScanner::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let scan = |s: &mut ProcessScanner, b: &Batch, at: u64| scan_events(s, &t, t0, b, at);

        // The first tick lists (it is the first rescan).
        let (found, st) = scan(&mut s, &batch(&[]), 0);
        assert_eq!(found, vec![200]);
        assert_eq!(st.listing, Some(ListingReason::Rescan));

        // A VM that appears without an event is not seen: no listing runs.
        t.qemu(300, "b");
        let (found, st) = scan(&mut s, &batch(&[]), 1);
        assert_eq!((found, st.listing, st.examined), (vec![200], None, 0));

        // Its exec event makes it found, reading only it.
        let (found, st) = scan(&mut s, &batch(&[Change::Exec(300)]), 2);
        assert_eq!((found, st.listing, st.examined), (vec![200, 300], None, 1));

        // `qemu -daemonize`: the exec'd process forks the VM and exits,
        // all between two ticks; the child never execs.
        t.qemu(401, "c");
        let (found, _) = scan(
            &mut s,
            &batch(&[
                Change::Exec(400),
                Change::Fork {
                    parent: 400,
                    child: 401,
                },
                Change::Exit(400),
            ]),
            3,
        );
        assert_eq!(found, vec![200, 300, 401]);

        // A child forked by a known VM in a later batch is looked at too;
        // one forked by anything else is not read at all.
        t.qemu(402, "d");
        t.add(101, "bash", 'S', &["bash"]);
        let (found, st) = scan(
            &mut s,
            &batch(&[
                Change::Fork {
                    parent: 401,
                    child: 402,
                },
                Change::Fork {
                    parent: 100,
                    child: 101,
                },
            ]),
            4,
        );
        assert_eq!((found, st.examined), (vec![200, 300, 401, 402], 1));

        // Exits: a gone process and a zombie are dropped; a hypervisor whose
        // stat still says running (its leader thread exited alone) stays.
        t.remove(300);
        t.add(402, "qemu-system-x86", 'Z', &[]);
        let (found, _) = scan(
            &mut s,
            &batch(&[Change::Exit(300), Change::Exit(402), Change::Exit(401)]),
            5,
        );
        assert_eq!(found, vec![200, 401]);

        // A VM that exec's something else is no VM any more.
        t.add(200, "sh", 'S', &["/bin/sh", "-c", "true"]);
        let (found, _) = scan(&mut s, &batch(&[Change::Exec(200)]), 6);
        assert_eq!(found, vec![401]);
    }

    /// `qemu -daemonize` whose parent the tick found gone (and forgot)
    /// before the batch with its fork came: the VM it forked is found at
    /// the next tick, not at the next rescan.
    #[test]
    fn a_forgotten_hypervisors_fork_is_still_followed() {
        let t = Tree::new();
        let mut s = ProcessScanner::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let scan = |s: &mut ProcessScanner, b: &Batch, at: u64| scan_events(s, &t, t0, b, at).0;
        assert!(scan(&mut s, &batch(&[]), 0).is_empty());
        t.qemu(500, "parent");
        assert_eq!(scan(&mut s, &batch(&[Change::Exec(500)]), 1), vec![500]);
        // The tick read 500 gone: the pipeline forgets it.
        t.remove(500);
        s.forget(500);
        t.qemu(501, "vm");
        let fork = Change::Fork {
            parent: 500,
            child: 501,
        };
        assert_eq!(
            scan(&mut s, &batch(&[fork, Change::Exit(500)]), 2),
            vec![501]
        );
    }

    #[test]
    fn lost_events_and_the_rescan_list_proc() {
        let t = Tree::new();
        t.qemu(200, "a");
        let mut s = ProcessScanner::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut st = ScanStats::default();
        s.scan(&t.roots, &clock(), t0, Some(&batch(&[])), &mut st)
            .unwrap();
        assert_eq!(st.listing, Some(ListingReason::Rescan));

        // Events were lost: the listing finds what they would have said,
        // and drops what exited meanwhile.
        t.qemu(300, "b");
        t.remove(200);
        let lost = Batch {
            lost: true,
            ..Batch::default()
        };
        let mut st = ScanStats::default();
        let found = s
            .scan(
                &t.roots,
                &clock(),
                t0 + Duration::from_secs(1),
                Some(&lost),
                &mut st,
            )
            .unwrap();
        assert_eq!(pids(&found), vec![300]);
        assert_eq!(st.listing, Some(ListingReason::EventsLost));

        // The rescan interval passed: a listing, though no event was lost.
        t.qemu(500, "c");
        let mut st = ScanStats::default();
        let found = s
            .scan(
                &t.roots,
                &clock(),
                t0 + Duration::from_secs(61),
                Some(&batch(&[])),
                &mut st,
            )
            .unwrap();
        assert_eq!(pids(&found), vec![300, 500]);
        assert_eq!(st.listing, Some(ListingReason::Rescan));
    }

    #[test]
    fn without_events_every_tick_with_new_processes_lists() {
        let t = Tree::new();
        t.qemu(200, "a");
        let mut s = ProcessScanner::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let mut st = ScanStats::default();
        s.scan(&t.roots, &clock(), t0, None, &mut st).unwrap();
        assert_eq!(st.listing, Some(ListingReason::Rescan));
        t.qemu(300, "b");
        std::fs::write(t.roots.proc.join("loadavg"), "0.1 0.1 0.1 1/100 501\n").unwrap();
        let mut st = ScanStats::default();
        let found = s
            .scan(
                &t.roots,
                &clock(),
                t0 + Duration::from_secs(1),
                None,
                &mut st,
            )
            .unwrap();
        assert_eq!(pids(&found), vec![200, 300]);
        assert_eq!(st.listing, Some(ListingReason::Tick));
        // The last PID did not move: the listing is skipped.
        let mut st = ScanStats::default();
        s.scan(
            &t.roots,
            &clock(),
            t0 + Duration::from_secs(2),
            None,
            &mut st,
        )
        .unwrap();
        assert_eq!(st.listing, None);
    }

    #[test]
    fn last_pid() {
        assert_eq!(
            last_pid_from_loadavg(b"0.50 0.75 1.00 2/300 4242\n"),
            Some(4242)
        );
        assert_eq!(last_pid_from_loadavg(b"0.50 0.75 1.00 2/300\n"), None);
        assert_eq!(last_pid_from_loadavg(b""), None);
        assert_eq!(last_pid_from_loadavg(&[0xff, b' ']), None);
    }
}
