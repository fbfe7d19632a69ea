//! The kernel's process-events connector: which processes forked, exec'd or
//! exited since the last tick, so that discovery need not list `/proc`.
//!
//! Reads: a `NETLINK_CONNECTOR` socket bound to the `CN_IDX_PROC` group and
//! subscribed with `PROC_CN_MCAST_LISTEN`. Needs the initial PID and user
//! namespaces (the kernel reports PIDs as the initial PID namespace sees
//! them and ignores subscriptions from any other), and on older kernels
//! `CAP_NET_ADMIN` (6.18 lets any user subscribe).
//!
//! Emits: a [`Batch`] per tick ([`ProcEvents::take`]): process forks
//! (parent, child), execs and exits in kernel order, how many tasks were
//! created (threads too: the proof that events flow), and whether any were
//! lost.
//!
//! Design: one thread per agent blocks in `recv` and files each event into
//! the batch, filtered to whole processes. A thread rather than a
//! non-blocking socket drained by the tick, because the socket's queue is
//! the kernel's and fixed in size: a burst of process creations between
//! two ticks (a 15 s interval on a busy host: thousands of events of ~1 KiB
//! of socket memory each) would overflow it and force the very /proc
//! listing this exists to avoid. Drained continuously, the queue only has
//! to absorb what arrives while the thread is not scheduled. The batch is
//! bounded ([`MAX_PENDING`]); past it, the events are dropped and the batch
//! says "lost", like a socket overrun.
//!
//! Fails: [`ProcEvents::start`] returns an error when the socket cannot be
//! made, bound or subscribed, or when the kernel does not acknowledge the
//! subscription within [`ACK_TIMEOUT`]; discovery then lists /proc. A socket
//! overrun (`ENOBUFS`), an `NLMSG_OVERRUN` or an unparsable datagram marks
//! the batch lost; any other receive error ends the thread and is reported
//! through [`Batch::failed`].

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, sockopt};
use vmscope_proc::{
    CN_IDX_PROC, PROC_CN_MCAST_IGNORE, PROC_CN_MCAST_LISTEN, ProcEvent, parse_proc_events,
    subscribe_message,
};

/// Changes kept between two ticks at most; past this the batch is lost
/// (a full listing follows) rather than memory growing with the host's
/// process churn.
pub const MAX_PENDING: usize = 65_536;

/// How long [`ProcEvents::start`] waits for the kernel's answer to the
/// subscription. The answer is queued while the subscription is sent, so
/// only a kernel that ignores the request (another PID or user namespace)
/// makes this wait whole.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Socket receive buffer asked for: room for a few thousand events while
/// the thread is not scheduled.
const RECV_BUFFER_BYTES: usize = 4 << 20;

/// How often the receiving thread wakes with nothing to read, to see
/// whether it should stop.
pub const POLL_STOP: Duration = Duration::from_secs(1);

/// Ticks in a row on which processes were created (the kernel's last PID
/// moved) but no event came, after which the subscription counts as broken.
pub const SILENT_TICKS: u32 = 3;

/// Tells a subscription that stopped delivering from a quiet host: on a
/// quiet host no event comes and no PID is handed out either.
#[derive(Debug, Default)]
pub struct Silence {
    last_pid: Option<u64>,
    ticks: u32,
}

impl Silence {
    /// One tick: the last PID handed out (`/proc/loadavg`, read before the
    /// batch was taken) and the batch's task creations. True once
    /// processes were created on [`SILENT_TICKS`] ticks in a row without a
    /// single fork event.
    pub fn broken(&mut self, last_pid: Option<u64>, forks: u64) -> bool {
        let moved = last_pid.is_some() && self.last_pid.is_some() && last_pid != self.last_pid;
        self.last_pid = last_pid;
        if forks > 0 {
            self.ticks = 0;
        } else if moved {
            self.ticks += 1;
        }
        self.ticks >= SILENT_TICKS
    }
}

/// One change to the set of processes, in kernel order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Process `parent` (a tgid) created process `child`.
    Fork { parent: u32, child: u32 },
    /// Process `pid` exec'd a new program.
    Exec(u32),
    /// Process `pid` exited (its thread-group leader did).
    Exit(u32),
}

/// What happened since the last [`ProcEvents::take`].
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// Tasks created, threads included.
    pub forks: u64,
    /// Some events were lost: only a listing knows the truth now.
    pub lost: bool,
    /// The receiving thread stopped for good, with this error.
    pub failed: Option<String>,
}

impl Batch {
    /// Files one event as discovery needs it: whole processes only.
    fn file(&mut self, ev: ProcEvent) {
        let change = match ev {
            ProcEvent::Fork {
                parent_tgid,
                child_pid,
                child_tgid,
                ..
            } => {
                self.forks += 1;
                if child_pid != child_tgid {
                    return; // a new thread
                }
                Change::Fork {
                    parent: parent_tgid,
                    child: child_pid,
                }
            }
            ProcEvent::Exec { pid, tgid } if pid == tgid => Change::Exec(pid),
            // A thread other than the leader ending leaves the process.
            ProcEvent::Exit { pid, tgid } if pid == tgid => Change::Exit(pid),
            ProcEvent::Overrun => {
                self.lose();
                return;
            }
            ProcEvent::NetlinkError { errno } if errno == Errno::NOBUFS.raw_os_error() => {
                self.lose();
                return;
            }
            _ => return,
        };
        if self.lost {
            return; // a listing follows anyway
        }
        if self.changes.len() >= MAX_PENDING {
            self.lose();
            return;
        }
        self.changes.push(change);
    }

    fn lose(&mut self) {
        self.lost = true;
        self.changes = Vec::new();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open a process-events connector socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot join the process-events group (older kernels need CAP_NET_ADMIN)")]
    Bind(#[source] std::io::Error),
    #[error("cannot subscribe to process events")]
    Subscribe(#[source] std::io::Error),
    #[error("the kernel refused the process-events subscription (errno {0})")]
    Refused(u32),
    #[error(
        "no answer to the process-events subscription within {ACK_TIMEOUT:?} (not in the initial PID or user namespace?)"
    )]
    NoAck,
    #[error("cannot start the process-events thread")]
    Thread(#[source] std::io::Error),
}

struct Shared {
    batch: Mutex<Batch>,
    stop: AtomicBool,
}

/// A running subscription; the thread stops (within [`POLL_STOP`]) when
/// this is dropped.
pub struct ProcEvents {
    shared: Arc<Shared>,
}

impl ProcEvents {
    /// Subscribes and starts the receiving thread. Events from the moment
    /// this returns are in the batches: a /proc listing made after it
    /// misses nothing.
    pub fn start() -> Result<ProcEvents, StartError> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::CONNECTOR),
        )
        .map_err(|e| StartError::Socket(e.into()))?;
        // Root may exceed rmem_max; anyone else gets what the limit allows.
        if sockopt::set_socket_recv_buffer_size_force(&fd, RECV_BUFFER_BYTES).is_err() {
            let _ = sockopt::set_socket_recv_buffer_size(&fd, RECV_BUFFER_BYTES);
        }
        // Port 0: the kernel picks one.
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, CN_IDX_PROC))
            .map_err(|e| StartError::Bind(e.into()))?;
        let port = match rustix::net::getsockname(&fd) {
            Ok(addr) => SocketAddrNetlink::try_from(addr).map_or(0, |a| a.pid()),
            Err(_) => 0,
        };
        let msg = subscribe_message(PROC_CN_MCAST_LISTEN, port);
        rustix::net::sendto(&fd, &msg, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))
            .map_err(|e| StartError::Subscribe(e.into()))?;
        let mut batch = Batch::default();
        wait_for_ack(&fd, &mut batch)?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(POLL_STOP))
            .map_err(|e| StartError::Subscribe(e.into()))?;
        let shared = Arc::new(Shared {
            batch: Mutex::new(batch),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("vmscope-procev".into())
            .spawn(move || receive(&fd, &s))
            .map_err(StartError::Thread)?;
        Ok(ProcEvents { shared })
    }

    /// Everything since the last call; a poisoned lock (the thread
    /// panicked) reads as a failure.
    pub fn take(&self) -> Batch {
        match self.shared.batch.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(_) => Batch {
                failed: Some("the process-events thread panicked".into()),
                ..Batch::default()
            },
        }
    }
}

impl Drop for ProcEvents {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads until the kernel's answer to our subscription; events that come
/// before it are kept.
fn wait_for_ack(fd: &OwnedFd, batch: &mut Batch) -> Result<(), StartError> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut buf = vec![0u8; 8192];
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StartError::NoAck);
        }
        sockopt::set_socket_timeout(fd, sockopt::Timeout::Recv, Some(left))
            .map_err(|e| StartError::Subscribe(e.into()))?;
        match rustix::net::recv(fd, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => {
                events.clear();
                let parsed = parse_proc_events(buf.get(..n).unwrap_or(&[]), &mut events);
                for ev in events.drain(..) {
                    match ev {
                        ProcEvent::Ack { err: 0 } => return Ok(()),
                        ProcEvent::Ack { err } => return Err(StartError::Refused(err)),
                        ev => batch.file(ev),
                    }
                }
                if parsed.is_err() {
                    batch.lose();
                }
            }
            Err(Errno::NOBUFS) => batch.lose(),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Err(StartError::NoAck),
            Err(e) => return Err(StartError::Subscribe(e.into())),
        }
    }
}

/// The receiving thread: one datagram at a time into the shared batch.
/// On the way out it unsubscribes: kernels before 6.6 count listeners by
/// subscriptions, and keep building events for a closed socket otherwise.
fn receive(fd: &OwnedFd, shared: &Shared) {
    receive_until_stopped(fd, shared);
    let port = match rustix::net::getsockname(fd) {
        Ok(addr) => SocketAddrNetlink::try_from(addr).map_or(0, |a| a.pid()),
        Err(_) => 0,
    };
    let msg = subscribe_message(PROC_CN_MCAST_IGNORE, port);
    let _ = rustix::net::sendto(fd, &msg, SendFlags::empty(), &SocketAddrNetlink::new(0, 0));
}

fn receive_until_stopped(fd: &OwnedFd, shared: &Shared) {
    let mut buf = vec![0u8; 8192];
    let mut events = Vec::with_capacity(16);
    while !shared.stop.load(Ordering::Relaxed) {
        let got = rustix::net::recv(fd, &mut buf[..], RecvFlags::empty());
        let Ok(mut batch) = shared.batch.lock() else {
            return;
        };
        match got {
            Ok((n, _)) => {
                events.clear();
                let parsed = parse_proc_events(buf.get(..n).unwrap_or(&[]), &mut events);
                for ev in events.drain(..) {
                    batch.file(ev);
                }
                if let Err(e) = parsed {
                    tracing::debug!(error = %e, "unparsable process-events datagram");
                    batch.lose();
                }
            }
            // The socket's queue overflowed: events were dropped.
            Err(Errno::NOBUFS) => batch.lose(),
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(e) => {
                batch.failed = Some(std::io::Error::from(e).to_string());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork(parent: u32, child_pid: u32, child_tgid: u32) -> ProcEvent {
        ProcEvent::Fork {
            parent_pid: parent,
            parent_tgid: parent,
            child_pid,
            child_tgid,
        }
    }

    #[test]
    fn batch_keeps_whole_processes_and_counts_threads() {
        let mut b = Batch::default();
        b.file(fork(1, 10, 10));
        b.file(fork(10, 11, 10)); // a thread of 10
        b.file(ProcEvent::Exec { pid: 10, tgid: 10 });
        b.file(ProcEvent::Exit { pid: 11, tgid: 10 }); // the thread ends
        b.file(ProcEvent::Exit { pid: 10, tgid: 10 });
        b.file(ProcEvent::Other);
        b.file(ProcEvent::Ack { err: 0 });
        assert_eq!(
            b.changes,
            vec![
                Change::Fork {
                    parent: 1,
                    child: 10
                },
                Change::Exec(10),
                Change::Exit(10)
            ]
        );
        assert_eq!(b.forks, 2);
        assert!(!b.lost);
    }

    #[test]
    fn silence_is_new_pids_without_events_on_three_ticks_in_a_row() {
        let mut s = Silence::default();
        // A quiet host: nothing moves, nothing comes.
        for _ in 0..10 {
            assert!(!s.broken(Some(100), 0));
        }
        // PIDs move and events come.
        assert!(!s.broken(Some(110), 10));
        // Two silent ticks, then an event (late, from the previous tick).
        assert!(!s.broken(Some(111), 0));
        assert!(!s.broken(Some(112), 0));
        assert!(!s.broken(Some(112), 1));
        // Three in a row: broken.
        assert!(!s.broken(Some(113), 0));
        assert!(!s.broken(Some(114), 0));
        assert!(s.broken(Some(115), 0));
        // An unreadable loadavg proves nothing.
        let mut s = Silence::default();
        for _ in 0..5 {
            assert!(!s.broken(None, 0));
        }
    }

    #[test]
    fn overruns_and_a_full_batch_are_losses() {
        let mut b = Batch::default();
        b.file(ProcEvent::Exec { pid: 5, tgid: 5 });
        b.file(ProcEvent::NetlinkError { errno: 105 });
        assert!(b.lost && b.changes.is_empty());
        let mut b = Batch::default();
        b.file(ProcEvent::Overrun);
        b.file(ProcEvent::Exec { pid: 5, tgid: 5 });
        assert!(b.lost && b.changes.is_empty(), "nothing kept after a loss");
        let mut b = Batch::default();
        for pid in 0..=MAX_PENDING as u32 {
            b.file(ProcEvent::Exec { pid, tgid: pid });
        }
        assert!(b.lost && b.changes.is_empty());
        // Another errno is not a loss.
        let mut b = Batch::default();
        b.file(ProcEvent::NetlinkError { errno: 1 });
        assert!(!b.lost);
    }
}
