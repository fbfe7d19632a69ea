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
//!
//! **Its own cgroup first.** When the process sits alone in a cgroup v2
//! group (`/proc/PID/cgroup`'s `0::` line names a group other than the
//! root whose `cgroup.procs` lists exactly this process, checked at every
//! rescan), that group's `io.stat` gives the same devices' bytes and
//! requests counting only the VM's own I/O (source `cgroup`; no flush or
//! time counters there). A group shared with other processes would count
//! theirs too, so it is not used: no guessing from group names.
//!
//! Fails: [`ApiError`] (`io`, `parse`, `timeout` past the deadline); a
//! process whose descriptors vmscope may not read (not root) has no
//! figures, silently, like `vm_io`'s refused `/proc/PID/io`.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::qmp::ApiError;
use crate::model::{DeviceSource, DiskStats, cap_label_value};

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
    /// The process's own cgroup v2 directory, when it is alone in it.
    cgroup: Option<PathBuf>,
    /// Where the last published figures came from.
    source: Option<DeviceSource>,
}

impl BlockState {
    /// `cgroup` when the last poll read the VM's own cgroup, else `sysfs`.
    pub fn source(&self) -> DeviceSource {
        self.source.unwrap_or(DeviceSource::Sysfs)
    }
}

/// The cgroup v2 directory `pid` has to itself: the group named by the
/// `0::` line of `proc_pid/cgroup`, below `sys/fs/cgroup` (unified) or
/// `sys/fs/cgroup/unified` (hybrid), if it is not the root and its
/// `cgroup.procs` lists `pid` and nothing else.
pub fn own_cgroup(proc_pid: &Path, sys: &Path) -> Option<PathBuf> {
    let pid: u32 = proc_pid.file_name()?.to_str()?.parse().ok()?;
    let text = std::fs::read_to_string(proc_pid.join("cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let rel = rel.strip_prefix('/')?;
    // The root group holds everything not placed elsewhere; a path that
    // climbs out (`..`) is not a group.
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    let dir = ["fs/cgroup", "fs/cgroup/unified"]
        .iter()
        .map(|m| sys.join(m).join(rel))
        .find(|d| d.join("io.stat").is_file())?;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let mut members = procs.lines().filter(|l| !l.trim().is_empty());
    let alone = members.next().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid)
        && members.next().is_none();
    alone.then_some(dir)
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
        st.cgroup = fd_dir.parent().and_then(|p| own_cgroup(p, sys));
    }
    if st.devices.is_empty() {
        return Ok(None);
    }
    if let Some(dir) = &st.cgroup {
        match std::fs::read(dir.join("io.stat")) {
            Ok(buf) => {
                let stats = vmscope_proc::parse_cgroup_io_stat(&buf);
                st.source = Some(DeviceSource::Cgroup);
                // A device the group has done no I/O on has no line: 0.
                return Ok(Some(
                    st.devices
                        .iter()
                        .map(|((major, minor), device)| {
                            let s = stats
                                .iter()
                                .find(|s| (s.major, s.minor) == (*major, *minor));
                            DiskStats {
                                device: device.clone(),
                                read_bytes: s.map_or(0, |s| s.read_bytes),
                                write_bytes: s.map_or(0, |s| s.write_bytes),
                                read_requests: s.map_or(0, |s| s.read_requests),
                                write_requests: s.map_or(0, |s| s.write_requests),
                                ..DiskStats::default()
                            }
                        })
                        .collect(),
                ));
            }
            // The group went away (the VM moved or left): the devices'
            // own counters until the next rescan looks again.
            Err(_) => st.cgroup = None,
        }
    }
    st.source = Some(DeviceSource::Sysfs);
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

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_cgroup_of_its_own_is_used_and_a_shared_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_pid, sys) = (dir.path().join("proc/4242"), dir.path().join("sys"));
        let group = sys.join("fs/cgroup/machine.slice/vm1.scope");
        write(&proc_pid.join("cgroup"), "0::/machine.slice/vm1.scope\n");
        write(&group.join("cgroup.procs"), "4242\n");
        write(
            &group.join("io.stat"),
            "7:3 rbytes=4096 wbytes=1024 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=9 wbytes=9 rios=9 wios=9 dbytes=0 dios=0\n",
        );
        assert_eq!(own_cgroup(&proc_pid, &sys), Some(group.clone()));

        // Polled: the VM's held devices from its group's io.stat, a held
        // device with no line is 0, a line for a device it does not hold
        // is not a disk of it.
        let soon = Instant::now() + Duration::from_secs(2);
        let mut st = BlockState {
            devices: vec![((7, 3), "loop3".into()), ((7, 4), "loop4".into())],
            scanned: Some(Instant::now()),
            cgroup: own_cgroup(&proc_pid, &sys),
            ..BlockState::default()
        };
        let disks = poll(&proc_pid.join("fd"), &sys, soon, &mut st)
            .unwrap()
            .unwrap();
        assert_eq!(st.source(), DeviceSource::Cgroup);
        assert_eq!(disks.len(), 2);
        assert_eq!(
            (
                disks[0].device.as_str(),
                disks[0].read_bytes,
                disks[0].write_bytes
            ),
            ("loop3", 4096, 1024)
        );
        assert_eq!((disks[0].read_requests, disks[0].write_requests), (1, 2));
        assert_eq!(
            (disks[1].device.as_str(), disks[1].read_bytes),
            ("loop4", 0)
        );

        // The group gone: the devices' own counters (sysfs) from then on.
        std::fs::remove_file(group.join("io.stat")).unwrap();
        for d in ["7:3", "7:4"] {
            write(
                &sys.join(format!("dev/block/{d}/stat")),
                "1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
            );
        }
        let disks = poll(&proc_pid.join("fd"), &sys, soon, &mut st)
            .unwrap()
            .unwrap();
        assert_eq!(st.source(), DeviceSource::Sysfs);
        assert_eq!(disks[0].read_bytes, 1024);
        write(&group.join("io.stat"), "");

        // Shared with another process, the root group, a v1-only host, a
        // path that climbs out: none is the VM's own.
        write(&group.join("cgroup.procs"), "4242\n4243\n");
        assert_eq!(own_cgroup(&proc_pid, &sys), None);
        write(&group.join("cgroup.procs"), "4243\n");
        assert_eq!(own_cgroup(&proc_pid, &sys), None);
        write(&group.join("cgroup.procs"), "4242\n");
        assert!(own_cgroup(&proc_pid, &sys).is_some());
        write(&proc_pid.join("cgroup"), "0::/\n");
        assert_eq!(own_cgroup(&proc_pid, &sys), None);
        write(
            &proc_pid.join("cgroup"),
            "7:blkio:/machine.slice/vm1.scope\n",
        );
        assert_eq!(own_cgroup(&proc_pid, &sys), None);
        write(
            &proc_pid.join("cgroup"),
            "0::/machine.slice/../machine.slice/vm1.scope\n",
        );
        assert_eq!(own_cgroup(&proc_pid, &sys), None);
        // Hybrid hosts mount v2 at fs/cgroup/unified.
        let hybrid = sys.join("fs/cgroup/unified/vm2.scope");
        write(
            &proc_pid.join("cgroup"),
            "1:name=systemd:/x\n0::/vm2.scope\n",
        );
        write(&hybrid.join("cgroup.procs"), "4242\n");
        write(&hybrid.join("io.stat"), "");
        assert_eq!(own_cgroup(&proc_pid, &sys), Some(hybrid));
    }
}
