//! Per-disk figures for VMs with no API: the host block devices the
//! hypervisor process holds open.
//!
//! Reads: `/proc/PID/fd` (which descriptors are block devices: only links
//! into `/dev/` are `stat`ed, so a descriptor on a hung network mount is
//! never touched), then per device `/sys/dev/block/MAJ:MIN/stat` and, once,
//! its `uevent` for the name. The descriptor list is read again every
//! [`RESCAN`] (disks are rarely hot-plugged). Emits: one [`DiskStats`] per
//! device, named by the host (`loop0`, `dm-3`, `sdb`): a block device the
//! VM shares with other processes counts their I/O too.
//! Fails: [`ApiError`] (`io`, `parse`, `timeout` past the deadline); a
//! process whose descriptors vmscope may not read (not root) has no
//! figures, silently, like `vm_io`'s refused `/proc/PID/io`.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::qmp::ApiError;
use crate::model::{DiskStats, cap_label_value};

/// How often the process's descriptors are listed again.
pub const RESCAN: Duration = Duration::from_secs(60);
/// The most block devices kept per VM (bounded label values).
pub const MAX_DEVICES: usize = 64;

/// What is kept per VM between polls.
#[derive(Debug, Default)]
pub struct BlockState {
    /// (major, minor) -> the device's name.
    devices: Vec<((u32, u32), String)>,
    scanned: Option<Instant>,
    /// Descriptors may not be read (not root): stop asking.
    denied: bool,
}

fn io(step: &'static str) -> impl Fn(std::io::Error) -> ApiError {
    move |source| ApiError::Io { step, source }
}

/// The block devices among `fd_dir`'s descriptors, each once.
fn scan(fd_dir: &Path, deadline: Instant) -> Result<Vec<(u32, u32)>, ApiError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fd_dir).map_err(io("listing the descriptors"))? {
        if Instant::now() >= deadline {
            return Err(ApiError::Timeout {
                step: "listing the descriptors",
            });
        }
        // A descriptor closed since the listing: skip it.
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.starts_with("/dev/") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.file_type().is_block_device() {
            let dev = meta.rdev();
            let id = (rustix::fs::major(dev), rustix::fs::minor(dev));
            if !out.contains(&id) && out.len() < MAX_DEVICES {
                out.push(id);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The device's kernel name, else `MAJ:MIN`.
fn name(sys: &Path, (major, minor): (u32, u32)) -> String {
    let uevent = sys.join(format!("dev/block/{major}:{minor}/uevent"));
    let mut n = std::fs::read(uevent)
        .ok()
        .and_then(|b| vmscope_proc::parse_uevent_devname(&b))
        .unwrap_or_else(|| format!("{major}:{minor}"));
    cap_label_value(&mut n);
    n
}

/// One poll of a VM's block devices. `Ok(None)`: the VM has none (or its
/// descriptors may not be read).
pub fn poll(
    fd_dir: &Path,
    sys: &Path,
    deadline: Instant,
    st: &mut BlockState,
) -> Result<Option<Vec<DiskStats>>, ApiError> {
    if st.denied {
        return Ok(None);
    }
    if st.scanned.is_none_or(|t| t.elapsed() >= RESCAN) {
        let ids = match scan(fd_dir, deadline) {
            Ok(ids) => ids,
            // The process exited (vm_process tells): nothing to say, and
            // nothing to look for again before the next rescan.
            Err(ApiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                st.devices.clear();
                st.scanned = Some(Instant::now());
                return Ok(None);
            }
            Err(ApiError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                tracing::debug!(dir = %fd_dir.display(), "descriptors not readable; no block-device figures for this VM");
                st.denied = true;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut names: HashMap<(u32, u32), String> = st.devices.drain(..).collect();
        st.devices = ids
            .into_iter()
            .map(|id| {
                let n = names.remove(&id).unwrap_or_else(|| name(sys, id));
                (id, n)
            })
            .collect();
        st.scanned = Some(Instant::now());
    }
    if st.devices.is_empty() {
        return Ok(None);
    }
    let mut disks = Vec::with_capacity(st.devices.len());
    for ((major, minor), device) in &st.devices {
        let path: PathBuf = sys.join(format!("dev/block/{major}:{minor}/stat"));
        let buf = std::fs::read(&path).map_err(io("reading a block device's stat"))?;
        let s = vmscope_proc::parse_block_stat(&buf).map_err(|source| ApiError::Parse {
            step: "a block device's stat",
            source,
        })?;
        const MS: f64 = 1e-3;
        disks.push(DiskStats {
            device: device.clone(),
            read_bytes: s.read_bytes,
            write_bytes: s.write_bytes,
            read_requests: s.read_requests,
            write_requests: s.write_requests,
            flush_requests: s.flush_requests.unwrap_or(0),
            read_time_seconds: s.read_ms as f64 * MS,
            write_time_seconds: s.write_ms as f64 * MS,
            flush_time_seconds: s.flush_ms.unwrap_or(0) as f64 * MS,
        });
    }
    Ok(Some(disks))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn no_block_devices_is_none_and_stats_are_read_by_device_number() {
        // This test process holds no block device: nothing.
        let dir = tempfile::tempdir().unwrap();
        let soon = Instant::now() + Duration::from_secs(2);
        let mut st = BlockState::default();
        let r = poll(Path::new("/proc/self/fd"), dir.path(), soon, &mut st).unwrap();
        assert_eq!(r, None);
        assert!(st.scanned.is_some());
        // No such process: nothing, and no new listing before RESCAN.
        let mut gone = BlockState::default();
        let none = poll(&dir.path().join("no/fd"), dir.path(), soon, &mut gone).unwrap();
        assert_eq!(none, None);
        assert!(gone.scanned.is_some());

        // A device list known, read from a fixture sysfs.
        let dev = dir.path().join("dev/block/7:3");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("uevent"), "MAJOR=7\nMINOR=3\nDEVNAME=loop3\n").unwrap();
        std::fs::write(dev.join("stat"), "5 0 10 4 1 0 1 0 0 12 4 0 0 0 0 2 3\n").unwrap();
        st.devices = vec![((7, 3), name(dir.path(), (7, 3)))];
        let disks = poll(Path::new("/proc/self/fd"), dir.path(), soon, &mut st)
            .unwrap()
            .unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].device, "loop3");
        assert_eq!(disks[0].read_bytes, 5120);
        assert_eq!(disks[0].write_bytes, 512);
        assert_eq!(disks[0].flush_requests, 2);
        assert!((disks[0].read_time_seconds - 0.004).abs() < 1e-12);

        // A stat that does not parse is a parse error; a vanished one io.
        std::fs::write(dev.join("stat"), "garbage\n").unwrap();
        let e = poll(Path::new("/proc/self/fd"), dir.path(), soon, &mut st).unwrap_err();
        assert_eq!(e.kind(), "parse");
        std::fs::remove_file(dev.join("stat")).unwrap();
        let e = poll(Path::new("/proc/self/fd"), dir.path(), soon, &mut st).unwrap_err();
        assert_eq!(e.kind(), "io");
        // No uevent: the device number names it.
        assert_eq!(name(dir.path(), (8, 1)), "8:1");
    }
}
