//! Size and free space of the host's real filesystems.
//!
//! Reads `/proc/1/mountinfo` (the host's mount table even when vmscope runs in
//! a container with the host's pid namespace), skips pseudo and network
//! filesystems and bind mounts of an already listed device, then calls
//! `statvfs` on each mountpoint below `rootfs`.
//!
//! A hung mount (dead NFS, stuck FUSE) must not hang the agent: `statvfs`
//! runs on a worker thread and the tick waits at most `timeout` for all of
//! them. A call that does not return in time marks its mountpoint as stuck:
//! the worker is abandoned (it is blocked in the kernel, nothing can cancel
//! it), a new one serves the next tick, and the stuck mountpoint is skipped
//! until its call finally returns. Each timeout is counted.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmscope_proc::{MountInfo, is_network_fs, is_pseudo_fs, parse_mountinfo};

use super::{Ctx, HostCollector, HostCollectorSpec};
use crate::config::{CollectorsConfig, FilesystemConfig};
use crate::host::{CollectError, read_once};
use crate::model::{FilesystemStats, HostStats};

pub const SPEC: HostCollectorSpec = HostCollectorSpec {
    name: "host_filesystem",
    enabled: |c| c.host_filesystem.enabled,
    new: |c: &CollectorsConfig| Box::new(HostFs::new(c.host_filesystem.clone())),
};

type Answer = (usize, std::io::Result<rustix::fs::StatVfs>);

struct Worker {
    tx: Sender<(usize, PathBuf, String)>,
    rx: Receiver<Answer>,
}

impl Worker {
    fn spawn(stuck: Arc<Mutex<HashSet<String>>>) -> std::io::Result<Self> {
        let (tx, req_rx) = mpsc::channel::<(usize, PathBuf, String)>();
        let (ans_tx, rx) = mpsc::channel::<Answer>();
        std::thread::Builder::new()
            .name("vmscope-statvfs".into())
            .spawn(move || {
                for (i, path, mountpoint) in req_rx {
                    let res = rustix::fs::statvfs(&path).map_err(std::io::Error::from);
                    // If this call was given up on, the mountpoint was marked
                    // stuck: it answered now, so it may be asked again.
                    if let Ok(mut s) = stuck.lock() {
                        s.remove(&mountpoint);
                    }
                    if ans_tx.send((i, res)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker { tx, rx })
    }
}

pub struct HostFs {
    cfg: FilesystemConfig,
    worker: Option<Worker>,
    stuck: Arc<Mutex<HashSet<String>>>,
    buf: Vec<u8>,
}

impl HostFs {
    pub fn new(cfg: FilesystemConfig) -> Self {
        HostFs {
            cfg,
            worker: None,
            stuck: Arc::new(Mutex::new(HashSet::new())),
            buf: Vec::new(),
        }
    }

    fn wanted(&self, m: &MountInfo) -> bool {
        !is_pseudo_fs(&m.fstype)
            && !is_network_fs(&m.fstype)
            && !self.cfg.exclude_fstypes.iter().any(|t| t == &m.fstype)
            && !self.cfg.exclude_mountpoints.iter().any(|p| {
                m.mountpoint == *p
                    || m.mountpoint
                        .starts_with(&format!("{}/", p.trim_end_matches('/')))
            })
    }
}

/// Mounts worth measuring: real filesystems, first mount of each device.
pub fn select_mounts(
    mounts: Vec<MountInfo>,
    wanted: impl Fn(&MountInfo) -> bool,
) -> Vec<MountInfo> {
    let mut seen = HashSet::new();
    mounts
        .into_iter()
        .filter(|m| wanted(m) && seen.insert((m.major, m.minor)))
        .collect()
}

impl HostCollector for HostFs {
    fn collect(&mut self, ctx: &Ctx<'_>, host: &mut HostStats) -> Result<(), CollectError> {
        let path = ctx.roots.proc.join("1").join("mountinfo");
        let path = if path.exists() {
            path
        } else {
            ctx.roots.proc.join("self").join("mountinfo")
        };
        read_once(&path, &mut self.buf).map_err(|e| CollectError::Io {
            path: path.clone(),
            source: e,
        })?;
        let mounts = select_mounts(parse_mountinfo(&self.buf), |m| self.wanted(m));
        let stuck_now: HashSet<String> = self.stuck.lock().map(|s| s.clone()).unwrap_or_default();
        let worker = match self.worker.take() {
            Some(w) => w,
            None => Worker::spawn(self.stuck.clone()).map_err(|e| CollectError::Io {
                path: PathBuf::from("statvfs worker thread"),
                source: e,
            })?,
        };
        let mut asked = 0usize;
        for (i, m) in mounts.iter().enumerate() {
            if stuck_now.contains(&m.mountpoint) {
                continue;
            }
            if worker
                .tx
                .send((i, ctx.roots.host_path(&m.mountpoint), m.mountpoint.clone()))
                .is_ok()
            {
                asked += 1;
            }
        }
        let timeout = self.cfg.timeout;
        let deadline = Instant::now() + timeout;
        let mut answers: Vec<Option<std::io::Result<rustix::fs::StatVfs>>> =
            (0..mounts.len()).map(|_| None).collect();
        let mut got = 0usize;
        let mut timed_out = false;
        while got < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            match worker.rx.recv_timeout(left) {
                Ok((i, res)) => {
                    if let Some(slot) = answers.get_mut(i) {
                        *slot = Some(res);
                    }
                    got += 1;
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    timed_out = true;
                    break;
                }
            }
        }
        let mut err = None;
        if timed_out {
            // The worker answers in order, so the first unanswered asked
            // mount is the one it is blocked on.
            if let Some(m) = mounts
                .iter()
                .enumerate()
                .find(|(i, m)| {
                    !stuck_now.contains(&m.mountpoint)
                        && answers.get(*i).is_some_and(|a| a.is_none())
                })
                .map(|(_, m)| m)
            {
                if let Ok(mut s) = self.stuck.lock() {
                    s.insert(m.mountpoint.clone());
                }
                err = Some(CollectError::Timeout {
                    what: format!("statvfs({})", m.mountpoint),
                    secs: timeout.as_secs_f64(),
                });
            }
            // Abandon the blocked worker; a fresh one serves the next tick.
        } else {
            self.worker = Some(worker);
        }
        host.filesystems = mounts
            .iter()
            .zip(answers)
            .filter_map(|(m, a)| {
                let st = a?.ok()?;
                let frsize = if st.f_frsize > 0 {
                    st.f_frsize
                } else {
                    st.f_bsize
                };
                let size = st.f_blocks.saturating_mul(frsize);
                if size == 0 {
                    return None;
                }
                Some(FilesystemStats {
                    device: m.source.clone(),
                    mountpoint: m.mountpoint.clone(),
                    fstype: m.fstype.clone(),
                    size_bytes: size,
                    free_bytes: st.f_bfree.saturating_mul(frsize),
                    avail_bytes: st.f_bavail.saturating_mul(frsize),
                })
            })
            .collect();
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
