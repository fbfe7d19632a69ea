//! Filesystem roots as values, never globals.
//!
//! Every collector and discovery source takes a [`Roots`] so that tests run
//! on fixture trees (`tests/fixtures/<scenario>/{proc,sys,run}`) and so that
//! vmscope can run in a container with the host's `/proc` mounted elsewhere.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// procfs, `/proc` on a host.
    pub proc: PathBuf,
    /// sysfs, `/sys` on a host.
    pub sys: PathBuf,
    /// runtime state, `/run` on a host (libvirt's live status XML lives here).
    pub run: PathBuf,
    /// The host's root filesystem; mountpoints are resolved below it when
    /// measuring free space (`/` on a host, `/host` in a container).
    pub rootfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            run: PathBuf::from("/run"),
            rootfs: PathBuf::from("/"),
        }
    }
}

impl Roots {
    /// Roots of a fixture tree laid out as `<dir>/{proc,sys,run,rootfs}`.
    pub fn under(dir: &Path) -> Self {
        Roots {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            run: dir.join("run"),
            rootfs: dir.join("rootfs"),
        }
    }

    pub fn pid(&self, pid: u32) -> PathBuf {
        self.proc.join(pid.to_string())
    }

    /// `mountpoint` (an absolute path as the host sees it) below `rootfs`.
    pub fn host_path(&self, mountpoint: &str) -> PathBuf {
        self.rootfs.join(mountpoint.trim_start_matches('/'))
    }
}
