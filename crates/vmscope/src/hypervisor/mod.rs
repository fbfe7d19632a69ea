//! What each hypervisor's own API knows and `/proc` does not: per-disk I/O
//! and the guest's memory as its balloon driver reports it.
//!
//! Reads: each VM's API ([`DeviceApi`]): QEMU's QMP socket or Cloud
//! Hypervisor's API socket as the command line names it ([`qmp`], [`ch`]),
//! libvirtd for libvirt domains ([`libvirt`]: one call per round for all
//! of them, on a thread beside the workers), Firecracker's metrics file
//! ([`firecracker`]), else the host block devices
//! the process holds ([`block`]). Emits: one [`VmDevices`] per VM and poll,
//! shared (`Arc`) into every snapshot until the next poll. Fails: per VM,
//! counted by kind in that VM's `errors_total` and logged once per change
//! of state; the last good figures stay, marked `up = false`.
//!
//! **Off the tick's hot path.** The [`Poller`] runs on a thread of its own
//! (`vmscope-devices`). The tick registers and drops VMs, wakes the poller
//! once per tick (never blocking: a wake while a round runs is coalesced)
//! and takes the latest results with `try_lock` (never waiting: a lock is
//! held only to insert one finished result). A round polls the VMs on up to
//! `workers` scoped threads, each VM's whole conversation bounded by
//! `timeout` (connect without blocking, a timeout on every read and write):
//! a stuck monitor holds one worker for at most `timeout` and never delays
//! the tick, which keeps showing that VM's last good figures with their time
//! (`last_success_seconds`).
//!
//! **A socket that is not there costs nothing per tick.** A VM whose API
//! socket cannot even be connected to (missing, or nobody listening: a
//! command line naming a monitor that was never created) is asked again
//! only after a delay that doubles with each failed connect, from
//! [`RETRY_FIRST`] to [`RETRY_MAX`], spread per VM so that VMs that failed
//! together do not retry together ([`Backoff`]). Meanwhile it keeps its
//! published state (`up = false`, `errors_total{kind="connect"}` counting
//! the attempts, not the ticks) and the tick gets no new error for it; the
//! first failures of a round are logged at `warn`, at most
//! [`WARN_PER_ROUND`] of them, the rest summed in one line. A VM that
//! restarts (new PID or start time) or whose API changes is a new target
//! and is asked at once; a socket that appears is found at the next retry.

pub mod block;
pub mod ch;
pub mod firecracker;
pub mod libvirt;
pub mod qmp;

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use crate::model::{
    DeviceSource, DiskStats, GuestMemory, VmDevices, cap_label_value, unix_seconds,
};
use qmp::{ApiError, BalloonPath};

/// How to reach a VM's API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceApi {
    /// A QMP monitor listening on this unix socket (below the host's root).
    Qmp(PathBuf),
    /// Cloud Hypervisor's API socket (`--api-socket`), below the host's root.
    CloudHypervisor(PathBuf),
    /// A libvirt domain, by UUID, asked through libvirtd's read-only
    /// socket (relative to the run root until the collector resolves it).
    Libvirt { socket: PathBuf, uuid: String },
    /// Firecracker's metrics file (`--metrics-path`), as the process sees
    /// it until the collector resolves it through `/proc/PID/root`.
    Firecracker(PathBuf),
    /// No API: the block devices among the process's descriptors
    /// (`fd_dir` = `/proc/PID/fd`), read from `sys` (`/sys`).
    Block { fd_dir: PathBuf, sys: PathBuf },
}

impl DeviceApi {
    /// The same API, paths compared byte for byte. `PathBuf`'s `==`
    /// compares components, and `vm_devices` asks this for every VM on
    /// every tick (2.6% of the collect thread's user time at 10 000 VMs);
    /// two spellings of one path only cost a re-registration.
    pub fn same_as(&self, other: &DeviceApi) -> bool {
        fn b(p: &Path) -> &[u8] {
            p.as_os_str().as_encoded_bytes()
        }
        match (self, other) {
            (DeviceApi::Qmp(x), DeviceApi::Qmp(y))
            | (DeviceApi::CloudHypervisor(x), DeviceApi::CloudHypervisor(y))
            | (DeviceApi::Firecracker(x), DeviceApi::Firecracker(y)) => b(x) == b(y),
            (
                DeviceApi::Libvirt { socket, uuid },
                DeviceApi::Libvirt {
                    socket: s2,
                    uuid: u2,
                },
            ) => uuid == u2 && b(socket) == b(s2),
            (
                DeviceApi::Block { fd_dir, sys },
                DeviceApi::Block {
                    fd_dir: f2,
                    sys: s2,
                },
            ) => b(fd_dir) == b(f2) && b(sys) == b(s2),
            _ => false,
        }
    }

    pub fn source(&self) -> DeviceSource {
        match self {
            DeviceApi::Qmp(_) => DeviceSource::Qmp,
            DeviceApi::CloudHypervisor(_) => DeviceSource::CloudHypervisor,
            DeviceApi::Libvirt { .. } => DeviceSource::Libvirt,
            DeviceApi::Firecracker(_) => DeviceSource::Firecracker,
            DeviceApi::Block { .. } => DeviceSource::Sysfs,
        }
    }
}

/// Which VM: (pid, process start time), the same key the collectors use.
pub type Key = (u32, u64);

/// First delay before a VM whose API could not be connected to is asked
/// again: a QEMU that is still starting has its monitor within this.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest delay between two connects to a missing socket: a socket that
/// appears later is found within this (plus the spread).
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Failed polls logged at `warn` per round; the rest are summed in one line
/// (10 000 VMs naming a missing socket are one line, not 10 000).
pub const WARN_PER_ROUND: usize = 5;

/// When a VM whose API could not be connected to is asked again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed connects in a row.
    failures: u32,
    /// Not asked before this (None: asked every round).
    until: Option<Instant>,
}

impl Backoff {
    /// Whether the VM is asked in a round starting at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    /// A connect failed at `now`: the next try waits [`retry_delay`].
    pub fn failed(&mut self, now: Instant, key: Key, first: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.until = Some(now + retry_delay(self.failures, key, first));
    }

    /// The API answered (or failed after connecting): asked every round.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// The delay after `failures` failed connects in a row: `first` doubled
/// per failure up to [`RETRY_MAX`], plus up to a quarter more chosen by
/// `key` (deterministic per VM and failure count), so that the 10 000 VMs
/// of one host that failed in the same round spread their retries over
/// the next ones instead of coming back in one burst.
pub fn retry_delay(failures: u32, key: Key, first: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = first
        .saturating_mul(1 << doublings)
        .min(RETRY_MAX.max(first));
    let quarter = u64::try_from(base.as_millis() / 4).unwrap_or(u64::MAX);
    // A fixed-key hasher: the spread must not depend on the process.
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one((key, failures));
    base + Duration::from_millis(h % (quarter + 1))
}

/// One VM the poller asks.
struct Target {
    key: Key,
    api: DeviceApi,
    /// Only the worker polling this VM locks it (rounds never overlap).
    state: Mutex<TargetState>,
}

/// The figures of one good poll, whatever the source.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reading {
    /// Set when the source is not the API's own (block devices: cgroup
    /// or sysfs, decided per poll).
    source: Option<DeviceSource>,
    disks: Vec<DiskStats>,
    balloon_bytes: Option<u64>,
    guest: Option<GuestMemory>,
}

#[derive(Default)]
struct TargetState {
    balloon: BalloonPath,
    block: block::BlockState,
    /// Boxed, like `last_good`: a target is followed for every VM (10 000
    /// on a dense host), most of them never Firecracker's, and many never
    /// answer (no socket): the state of one that does not was 488 bytes,
    /// now 216.
    fc: Option<Box<firecracker::FcState>>,
    last_good: Option<Box<Reading>>,
    last_success: Option<f64>,
    errors: [u64; ApiError::KINDS.len()],
    /// The last poll failed (to log once per change of state).
    down: bool,
    last_error: Option<&'static str>,
    /// Connect failures: when to ask again.
    retry: Backoff,
}

struct Shared {
    targets: Mutex<HashMap<Key, Arc<Target>>>,
    results: Mutex<HashMap<Key, Arc<VmDevices>>>,
    stop: AtomicBool,
    timeout: Duration,
    workers: usize,
    /// libvirtd's client, made on the first round with a libvirt domain;
    /// only the round's libvirt thread locks it.
    libvirt: Mutex<Option<libvirt::LibvirtClient>>,
    /// [`RETRY_FIRST`] (shorter in tests).
    retry_first: Duration,
    /// Failed polls of the current round logged at `warn` so far.
    warned: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (maps of values), still consistent: carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The poller thread and the tick's handle on it. Dropping it stops the
/// thread after its current round.
pub struct Poller {
    shared: Arc<Shared>,
    wake: SyncSender<()>,
}

impl Poller {
    /// Starts the poller thread. `timeout` bounds one VM's conversation;
    /// `workers` VMs are asked at once.
    pub fn start(timeout: Duration, workers: usize) -> std::io::Result<Poller> {
        Self::start_with_retry(timeout, workers, RETRY_FIRST)
    }

    /// [`Poller::start`] with another first retry delay (tests).
    fn start_with_retry(
        timeout: Duration,
        workers: usize,
        retry_first: Duration,
    ) -> std::io::Result<Poller> {
        let shared = Arc::new(Shared {
            targets: Mutex::new(HashMap::new()),
            results: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            timeout,
            workers: workers.max(1),
            libvirt: Mutex::new(None),
            retry_first,
            warned: AtomicUsize::new(0),
        });
        let (wake, rx) = sync_channel(1);
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("vmscope-devices".into())
            .spawn(move || run(&s, &rx))?;
        Ok(Poller { shared, wake })
    }

    /// Follows `key` through `api` (replacing what it was followed through).
    pub fn set(&self, key: Key, api: DeviceApi) {
        let mut targets = lock(&self.shared.targets);
        if targets.get(&key).is_some_and(|t| t.api == api) {
            return;
        }
        targets.insert(
            key,
            Arc::new(Target {
                key,
                api,
                state: Mutex::new(TargetState::default()),
            }),
        );
        drop(targets);
        lock(&self.shared.results).remove(&key);
    }

    /// Stops following `key` and drops its results.
    pub fn remove(&self, key: Key) {
        lock(&self.shared.targets).remove(&key);
        lock(&self.shared.results).remove(&key);
    }

    /// Asks for a round; never blocks (a round already asked for or running
    /// absorbs this one).
    pub fn wake(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::warn!("the device poller thread is gone; per-device figures stop");
            }
        }
    }

    /// The latest results, if nobody is inserting one right now.
    pub fn results(&self) -> Option<MutexGuard<'_, HashMap<Key, Arc<VmDevices>>>> {
        match self.shared.results.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // The thread sees the flag, or the closed channel, and returns.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn run(shared: &Shared, wake: &Receiver<()>) {
    while wake.recv().is_ok() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        round(shared);
    }
}

/// Polls every target that is due once, on up to `workers` threads.
fn round(shared: &Shared) {
    let now = Instant::now();
    // Rounds never overlap, so no worker holds a target's state here.
    let targets: Vec<Arc<Target>> = lock(&shared.targets)
        .values()
        .filter(|t| lock(&t.state).retry.due(now))
        .cloned()
        .collect();
    if targets.is_empty() {
        return;
    }
    shared.warned.store(0, Ordering::Relaxed);
    // libvirt domains: one call for all of them, on a thread of its own
    // beside the workers (a stuck libvirtd holds only that thread).
    let (lv, targets): (Vec<_>, Vec<_>) = targets
        .into_iter()
        .partition(|t| matches!(t.api, DeviceApi::Libvirt { .. }));
    let next = AtomicUsize::new(0);
    let workers = shared.workers.min(targets.len());
    std::thread::scope(|s| {
        if let Some(DeviceApi::Libvirt { socket, .. }) = lv.first().map(|t| &t.api) {
            s.spawn(|| {
                let answer = libvirt_round(shared, socket);
                for t in &lv {
                    publish(shared, t, poll_one(t, shared, Some(&answer)));
                }
            });
        }
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(t) = targets.get(next.fetch_add(1, Ordering::Relaxed)) {
                    publish(shared, t, poll_one(t, shared, None));
                }
            });
        }
    });
    let warned = shared.warned.load(Ordering::Relaxed);
    if warned > WARN_PER_ROUND {
        tracing::warn!(
            more = warned - WARN_PER_ROUND,
            "more VMs' hypervisor APIs failed this round (logged at debug; each VM's vmscope_vm_device_stats_up is 0)"
        );
    }
}

/// Publishes a poll's outcome, only while the VM is still followed through
/// this target (it may have left during the poll).
fn publish(shared: &Shared, t: &Arc<Target>, devices: Option<Arc<VmDevices>>) {
    let still = lock(&shared.targets)
        .get(&t.key)
        .is_some_and(|cur| Arc::ptr_eq(cur, t));
    if still {
        let mut results = lock(&shared.results);
        match devices {
            Some(d) => results.insert(t.key, d),
            None => results.remove(&t.key),
        };
    }
}

/// One round's answer from libvirtd: every running domain by UUID.
type LibvirtAnswer =
    Result<HashMap<String, vmscope_proc::libvirt_rpc::LibvirtDomainStats>, ApiError>;

fn libvirt_round(shared: &Shared, socket: &std::path::Path) -> LibvirtAnswer {
    let deadline = Instant::now() + shared.timeout;
    let mut client = lock(&shared.libvirt);
    if client.as_ref().is_none_or(|c| c.path() != socket) {
        *client = Some(libvirt::LibvirtClient::new(socket.to_path_buf()));
    }
    let Some(c) = client.as_mut() else {
        return Err(ApiError::Protocol {
            step: "connect",
            what: "no libvirt client".into(),
        });
    };
    let answer = c.all_domain_stats(deadline);
    // Logged here once per change of state, not once per domain (each
    // domain's own failure is logged at debug).
    match (&answer, c.down) {
        (Err(e), false) => {
            tracing::warn!(socket = %socket.display(), error = %e, "libvirtd does not answer; libvirt domains keep their last good disk and balloon figures");
            c.down = true;
        }
        (Ok(_), true) => {
            tracing::info!(socket = %socket.display(), "libvirtd answers again");
            c.down = false;
        }
        _ => {}
    }
    answer
}

/// A copy of the round's error for one domain (same kind and text).
fn copy_error(e: &ApiError) -> ApiError {
    let copy_io = |s: &std::io::Error| std::io::Error::new(s.kind(), s.to_string());
    match e {
        ApiError::Connect { path, source } => ApiError::Connect {
            path: path.clone(),
            source: copy_io(source),
        },
        ApiError::Timeout { step } => ApiError::Timeout { step },
        ApiError::Io { step, source } => ApiError::Io {
            step,
            source: copy_io(source),
        },
        ApiError::Parse { step, .. } => ApiError::Parse {
            step,
            source: vmscope_proc::ParseError::Malformed {
                kind: vmscope_proc::FileKind::LibvirtRpc,
                what: "see the log for libvirt's answer",
            },
        },
        ApiError::Protocol { step, what } => ApiError::Protocol {
            step,
            what: what.clone(),
        },
    }
}

/// Polls one VM; `None` when it has nothing to publish (no block device
/// and no API, never a good answer).
fn poll_one(
    t: &Target,
    shared: &Shared,
    libvirt: Option<&LibvirtAnswer>,
) -> Option<Arc<VmDevices>> {
    let mut st = lock(&t.state);
    let deadline = Instant::now() + shared.timeout;
    let st = &mut *st;
    // The parsers never panic (property-tested); if a bug proves
    // otherwise, the poller still lives and counts it.
    let res: Result<Option<Reading>, ApiError> =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &t.api {
            DeviceApi::Qmp(path) => qmp::poll(path, deadline, &mut st.balloon).map(|r| {
                Some(Reading {
                    source: None,
                    disks: disks(&r.disks),
                    balloon_bytes: r.balloon_bytes,
                    guest: r.guest.as_ref().map(guest_memory),
                })
            }),
            DeviceApi::Libvirt { uuid, .. } => match libvirt {
                Some(Ok(all)) => match all.get(uuid) {
                    Some(d) => Ok(Some(Reading {
                        source: None,
                        disks: disks(&d.disks),
                        balloon_bytes: d.balloon_bytes,
                        guest: d.guest.as_ref().map(guest_memory),
                    })),
                    None => Err(ApiError::Protocol {
                        step: "getting the domain stats",
                        what: "libvirtd did not list this domain among its running ones".into(),
                    }),
                },
                Some(Err(e)) => Err(copy_error(e)),
                None => Err(ApiError::Protocol {
                    step: "poll",
                    what: "no libvirt answer this round".into(),
                }),
            },
            DeviceApi::Firecracker(path) => firecracker::poll(path, st.fc.get_or_insert_default())
                .map(|d| {
                    d.map(|disks| Reading {
                        disks,
                        ..Reading::default()
                    })
                }),
            DeviceApi::CloudHypervisor(path) => ch::poll(path, deadline).map(|d| {
                Some(Reading {
                    disks: ch_disks(&d),
                    ..Reading::default()
                })
            }),
            DeviceApi::Block { fd_dir, sys } => block::poll(fd_dir, sys, deadline, &mut st.block)
                .map(|d| {
                    d.map(|disks| Reading {
                        source: Some(st.block.source()),
                        disks,
                        ..Reading::default()
                    })
                }),
        }))
        .unwrap_or_else(|_| {
            Err(ApiError::Protocol {
                step: "poll",
                what: "the poll panicked".into(),
            })
        });
    match res {
        Ok(Some(reading)) => {
            if st.down && libvirt.is_none() {
                tracing::info!(pid = t.key.0, api = ?t.api, "hypervisor API answers again");
            }
            st.down = false;
            st.last_error = None;
            st.last_good = Some(Box::new(reading));
            st.last_success = Some(unix_seconds(SystemTime::now()));
            st.retry.reset();
        }
        Ok(None) => {
            st.down = false;
            st.last_error = None;
            st.last_good = None;
            st.retry.reset();
            return None;
        }
        Err(e) => {
            if let Some(i) = ApiError::KINDS.iter().position(|k| *k == e.kind()) {
                st.errors[i] += 1;
            }
            // Nothing to talk to: back off. libvirt domains are asked in
            // one call per round whatever happens, so they never back off.
            if matches!(e, ApiError::Connect { .. }) && libvirt.is_none() {
                st.retry.failed(Instant::now(), t.key, shared.retry_first);
            } else {
                st.retry.reset();
            }
            // A libvirtd that failed the whole round is logged once by
            // libvirt_round, not once per domain.
            if !st.down
                && !matches!(libvirt, Some(Err(_)))
                && shared.warned.fetch_add(1, Ordering::Relaxed) < WARN_PER_ROUND
            {
                tracing::warn!(pid = t.key.0, api = ?t.api, error = %e, "hypervisor API poll failed; keeping the last good figures");
            } else {
                tracing::debug!(pid = t.key.0, error = %e, "hypervisor API poll failed again");
            }
            st.down = true;
            st.last_error = Some(e.kind());
        }
    }
    Some(Arc::new(devices(t.api.source(), st)))
}

/// The published value of one target's state.
fn devices(source: DeviceSource, st: &TargetState) -> VmDevices {
    let reading = st.last_good.as_deref();
    VmDevices {
        source: reading.and_then(|r| r.source).unwrap_or(source),
        up: !st.down,
        last_success_seconds: st.last_success,
        errors_total: ApiError::KINDS
            .iter()
            .zip(st.errors)
            .map(|(k, n)| (*k, n))
            .collect(),
        last_error: st.last_error,
        disks: reading.map(|r| r.disks.clone()).unwrap_or_default(),
        balloon_bytes: reading.and_then(|r| r.balloon_bytes),
        guest_memory: reading.and_then(|r| r.guest),
    }
}

/// QMP's disks as published: names capped like every label value, a name
/// seen twice (after the cap) kept once.
fn disks(list: &[vmscope_proc::QmpBlockStats]) -> Vec<DiskStats> {
    const NS: f64 = 1e-9;
    let mut out: Vec<DiskStats> = Vec::with_capacity(list.len());
    for d in list {
        let mut device = d.device.clone();
        cap_label_value(&mut device);
        if out.iter().any(|o| o.device == device) {
            continue;
        }
        out.push(DiskStats {
            device,
            read_bytes: d.read_bytes,
            write_bytes: d.write_bytes,
            read_requests: d.read_requests,
            write_requests: d.write_requests,
            flush_requests: d.flush_requests,
            read_time_seconds: d.read_time_ns as f64 * NS,
            write_time_seconds: d.write_time_ns as f64 * NS,
            flush_time_seconds: d.flush_time_ns as f64 * NS,
        });
    }
    out
}

/// Cloud Hypervisor's disks as published (no flush or time counters).
fn ch_disks(list: &[vmscope_proc::ChDiskCounters]) -> Vec<DiskStats> {
    list.iter()
        .map(|d| {
            let mut device = d.device.clone();
            cap_label_value(&mut device);
            DiskStats {
                device,
                read_bytes: d.read_bytes,
                write_bytes: d.write_bytes,
                read_requests: d.read_requests,
                write_requests: d.write_requests,
                ..DiskStats::default()
            }
        })
        .collect()
}

fn guest_memory(g: &vmscope_proc::GuestMemStats) -> GuestMemory {
    GuestMemory {
        updated_at_seconds: g.last_update as f64,
        total_bytes: g.total_bytes,
        available_bytes: g.available_bytes,
        unused_bytes: g.free_bytes,
        disk_caches_bytes: g.disk_caches_bytes,
        used_bytes: g.used_bytes(),
        swap_in_bytes: g.swap_in_bytes,
        swap_out_bytes: g.swap_out_bytes,
        major_faults: g.major_faults,
        minor_faults: g.minor_faults,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::qmp::tests::{GREETING, monitor, monitor_at, qemu_like};
    use super::*;

    #[test]
    fn same_api_is_the_same_variant_and_the_same_bytes() {
        let libvirt = |uuid: &str| DeviceApi::Libvirt {
            socket: "libvirt/libvirt-sock-ro".into(),
            uuid: uuid.into(),
        };
        let block = |sys: &str| DeviceApi::Block {
            fd_dir: "/proc/7/fd".into(),
            sys: sys.into(),
        };
        let qmp = DeviceApi::Qmp("/run/vm.qmp".into());
        for a in [&qmp, &libvirt("u1"), &block("/sys")] {
            assert!(a.same_as(&a.clone()), "{a:?}");
        }
        assert!(!qmp.same_as(&DeviceApi::CloudHypervisor("/run/vm.qmp".into())));
        assert!(!qmp.same_as(&DeviceApi::Qmp("/run/vm2.qmp".into())));
        assert!(!libvirt("u1").same_as(&libvirt("u2")));
        assert!(!block("/sys").same_as(&block("/host/sys")));
        assert!(!block("/sys").same_as(&qmp));
    }

    #[test]
    fn the_retry_delay_doubles_up_to_the_cap_spread_by_vm() {
        let first = Duration::from_secs(2);
        let key = (4242, 17);
        // Each delay is its base (2, 4, 8, ... capped at 60 s) plus at most
        // a quarter of it.
        let bases = [2, 4, 8, 16, 32, 60, 60, 60];
        for (i, base) in bases.iter().enumerate() {
            let d = retry_delay(i as u32 + 1, key, first);
            let base = Duration::from_secs(*base);
            assert!(
                d >= base && d <= base + base / 4,
                "failure {}: {d:?}",
                i + 1
            );
        }
        // A huge count neither overflows nor passes the cap.
        let d = retry_delay(u32::MAX, key, first);
        assert!(d >= RETRY_MAX && d <= RETRY_MAX + RETRY_MAX / 4, "{d:?}");
        // The same VM and count: the same delay; 1000 VMs that failed in
        // the same round: spread over the quarter, not one burst.
        assert_eq!(retry_delay(3, key, first), retry_delay(3, key, first));
        let mut at: Vec<Duration> = (0..1000u32)
            .map(|pid| retry_delay(6, (pid, 1), first))
            .collect();
        at.sort();
        at.dedup();
        assert!(at.len() > 900, "{} distinct delays of 1000", at.len());
        assert!(at[at.len() - 1] - at[0] > Duration::from_secs(12), "{at:?}");
    }

    #[test]
    fn a_backoff_is_due_again_after_its_delay_and_reset_by_an_answer() {
        let t0 = Instant::now();
        let first = Duration::from_secs(2);
        let mut b = Backoff::default();
        assert!(b.due(t0), "a new VM is asked at once");
        b.failed(t0, (1, 1), first);
        assert!(!b.due(t0));
        assert!(!b.due(t0 + Duration::from_millis(1999)));
        assert!(b.due(t0 + Duration::from_millis(2500)));
        // The second failure waits at least twice as long.
        let t1 = t0 + Duration::from_millis(2500);
        b.failed(t1, (1, 1), first);
        assert!(!b.due(t1 + Duration::from_millis(3999)));
        assert!(b.due(t1 + Duration::from_secs(5)));
        b.reset();
        assert!(b.due(t1), "answered: asked every round again");
        assert_eq!(b, Backoff::default());
    }

    /// 10 000 VMs naming a monitor socket that does not exist cost one
    /// connect each, then nothing per round until their retry; the socket
    /// appearing is found at the next retry.
    #[test]
    fn a_missing_socket_backs_off_and_recovers_when_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let p = Poller::start_with_retry(Duration::from_millis(300), 2, Duration::from_millis(700))
            .unwrap();
        p.set((5, 5), DeviceApi::Qmp(path.clone()));
        let t0 = Instant::now();
        p.wake();
        let d = wait_for(&p, (5, 5), |_| true);
        assert!(!d.up);
        assert_eq!(d.last_error, Some("connect"));
        assert!(
            d.errors_total.contains(&("connect", 1)),
            "{:?}",
            d.errors_total
        );
        // Rounds within the backoff: nobody connects, nothing is published
        // again (the tick sees the same Arc, hence no new error).
        while t0.elapsed() < Duration::from_millis(500) {
            p.wake();
            std::thread::sleep(Duration::from_millis(20));
        }
        let same = wait_for(&p, (5, 5), |_| true);
        assert!(
            Arc::ptr_eq(&d, &same),
            "republished during the backoff: {same:?}"
        );
        // The socket appears: the next retry finds it.
        monitor_at(&path, Some(GREETING), qemu_like);
        let up = loop {
            p.wake();
            let d = wait_for(&p, (5, 5), |_| true);
            if d.up {
                break d;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "never recovered: {d:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // 0.7 s, plus at most a quarter: one or (if the socket came after
        // the retry) two failed connects, never one per round.
        let connects = up
            .errors_total
            .iter()
            .find(|(k, _)| *k == "connect")
            .map(|(_, n)| *n);
        assert!(matches!(connects, Some(1 | 2)), "{:?}", up.errors_total);
        assert_eq!(up.disks[0].read_bytes, 2560);
    }

    fn wait_for(p: &Poller, key: Key, ok: impl Fn(&VmDevices) -> bool) -> Arc<VmDevices> {
        let t = Instant::now();
        loop {
            if let Some(d) = p.results().and_then(|r| r.get(&key).cloned())
                && ok(&d)
            {
                return d;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no result for {key:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One target per VM, answered or not: what a dense host of VMs whose
    /// API never answers (or that have none) holds per VM stays small.
    #[test]
    fn a_target_that_never_answered_is_small() {
        let size = std::mem::size_of::<Target>();
        assert!(size <= 320, "{size} bytes");
    }

    #[test]
    fn a_stuck_monitor_holds_one_worker_and_keeps_the_last_good_figures() {
        let (_g, good) = monitor(Some(GREETING), qemu_like);
        let (_s, stuck) = monitor(None, |_| None);
        let p = Poller::start(Duration::from_millis(300), 2).unwrap();
        p.set((1, 1), DeviceApi::Qmp(good.clone()));
        p.set((2, 2), DeviceApi::Qmp(stuck));
        let t = Instant::now();
        p.wake();
        // The good VM's figures come while the stuck one holds its worker.
        let d = wait_for(&p, (1, 1), |_| true);
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert!(d.up);
        assert_eq!(d.source, DeviceSource::Qmp);
        assert_eq!(d.disks[0].read_bytes, 2560);
        assert_eq!(d.balloon_bytes, Some(128 << 20));
        assert_eq!(d.guest_memory.unwrap().used_bytes, Some(30_000_000));
        // Waking while a round runs never blocks.
        let w = Instant::now();
        for _ in 0..100 {
            p.wake();
            let _ = p.results();
        }
        assert!(w.elapsed() < Duration::from_millis(50));
        let s = wait_for(&p, (2, 2), |_| true);
        assert!(!s.up);
        assert_eq!(s.last_error, Some("timeout"));
        assert!(
            s.errors_total.contains(&("timeout", 1)),
            "{:?}",
            s.errors_total
        );
        assert_eq!(s.last_success_seconds, None);

        // The good VM's monitor goes away: its last good figures stay,
        // marked down, with the time they were read.
        let first = d.last_success_seconds.unwrap();
        drop(_g);
        let down = loop {
            p.wake();
            let d = wait_for(&p, (1, 1), |_| true);
            if !d.up {
                break d;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(down.last_error, Some("connect"));
        assert_eq!(down.disks, d.disks);
        assert!(down.last_success_seconds.unwrap() >= first);

        // A VM that left is not published again.
        p.remove((1, 1));
        p.wake();
        std::thread::sleep(Duration::from_millis(400));
        assert!(p.results().unwrap().get(&(1, 1)).is_none());
    }

    #[test]
    fn a_stuck_libvirtd_fails_its_domains_by_timeout_and_delays_nobody() {
        let (_g, good) = monitor(Some(GREETING), qemu_like);
        // A libvirtd that accepts connections (the backlog does) and never
        // answers.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("libvirt-sock-ro");
        let _stuck = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let p = Poller::start(Duration::from_millis(300), 2).unwrap();
        p.set((1, 1), DeviceApi::Qmp(good));
        for (i, uuid) in [
            "aaaaaaaa-0000-0000-0000-000000000001",
            "aaaaaaaa-0000-0000-0000-000000000002",
        ]
        .iter()
        .enumerate()
        {
            p.set(
                (10 + i as u32, 1),
                DeviceApi::Libvirt {
                    socket: sock.clone(),
                    uuid: (*uuid).into(),
                },
            );
        }
        let t = Instant::now();
        p.wake();
        let d = wait_for(&p, (1, 1), |_| true);
        assert!(d.up);
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "the QMP VM waited for libvirtd: {:?}",
            t.elapsed()
        );
        for key in [(10, 1), (11, 1)] {
            let s = wait_for(&p, key, |_| true);
            assert!(!s.up);
            assert_eq!(s.source, DeviceSource::Libvirt);
            assert_eq!(s.last_error, Some("timeout"));
        }
        // One call for all domains: both failed within one deadline.
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    }
}
