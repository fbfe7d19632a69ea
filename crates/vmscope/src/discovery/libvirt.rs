//! Finds libvirt QEMU domains from their live status files.
//!
//! Reads: `<run>/libvirt/qemu/*.xml`, which libvirtd writes for every running
//! domain (pid, uuid, vCPU thread ids, TAP devices, Nova metadata). No libvirt
//! client library or daemon connection is needed, so discovery keeps working
//! while libvirtd restarts.
//!
//! Cost: with an inotify watch on the directory (the normal case), a tick
//! reads the watch's queue (one `read` that finds it empty on a quiet host)
//! and re-reads only the files named in its events; libvirtd rewrites a
//! status file by renaming a new one over it, which the watch reports.
//! Without a watch, one directory listing and one `stat` per domain per
//! tick; a file is parsed again only when its modification time or size
//! changed. Either way, a full listing runs when asked (the periodic
//! rescan), when the watch is set up (whatever happened before it), when
//! its queue overflowed, and when the directory itself went away.
//!
//! Failure: a missing directory means "no libvirt here" (not an error; the
//! watch is tried again each tick until it exists); an unparsable file is
//! counted and skipped, and retried when it changes. If inotify itself
//! cannot be used (no instances left), that is logged once and the
//! directory is listed every tick, as without it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustix::fs::inotify;
use rustix::io::Errno;
use vmscope_proc::{LibvirtDomain, parse_libvirt_status};

use crate::host::{CollectError, read_once};

#[derive(Debug)]
struct Cached {
    mtime: Option<SystemTime>,
    len: u64,
    parsed: Option<Arc<LibvirtDomain>>,
}

#[derive(Debug)]
pub struct LibvirtScanner {
    cache: HashMap<PathBuf, Cached>,
    buf: Vec<u8>,
    /// The inotify instance watching the directory, when there is one.
    watch: Option<OwnedFd>,
    /// Use inotify at all (`false`: list every tick).
    inotify: bool,
    /// inotify could not be set up for a reason other than a missing
    /// directory: not tried again.
    inotify_failed: bool,
}

impl Default for LibvirtScanner {
    fn default() -> Self {
        LibvirtScanner::new(true)
    }
}

/// What a watch's queue said since the last tick.
enum Drained {
    /// These directory entries changed.
    Names(HashSet<OsString>),
    /// Events were lost, or the watch ended: list the directory.
    Relist,
}

impl LibvirtScanner {
    /// `inotify`: watch the directory (falls back to listing by itself).
    pub fn new(inotify: bool) -> Self {
        LibvirtScanner {
            cache: HashMap::new(),
            buf: Vec::new(),
            watch: None,
            inotify,
            inotify_failed: false,
        }
    }

    /// Whether the directory is watched right now.
    pub fn watching(&self) -> bool {
        self.watch.is_some()
    }

    /// Returns the running domains with a pid, plus the errors met. `full`
    /// lists the directory even when the watch says nothing changed.
    pub fn scan(
        &mut self,
        dir: &Path,
        full: bool,
        errors: &mut Vec<CollectError>,
    ) -> Vec<Arc<LibvirtDomain>> {
        let mut relist = full;
        if self.watch.is_none() && self.inotify && !self.inotify_failed {
            match watch(dir) {
                Ok(fd) => {
                    // What happened before the watch existed is unknown.
                    self.watch = Some(fd);
                    relist = true;
                }
                // No libvirt (yet): listed below, tried again next tick.
                Err(Errno::NOENT | Errno::NOTDIR) => {}
                Err(e) => {
                    self.inotify_failed = true;
                    tracing::warn!(
                        path = %dir.display(),
                        error = %std::io::Error::from(e),
                        "cannot watch libvirt's status directory: listing it every tick"
                    );
                }
            }
        }
        let changed = match self.watch.as_ref().map(drain) {
            Some(Drained::Names(names)) => names,
            Some(Drained::Relist) => {
                // A lost queue or a watch that ended (directory removed):
                // set up again next tick.
                self.watch = None;
                relist = true;
                HashSet::new()
            }
            None => {
                relist = true;
                HashSet::new()
            }
        };
        if relist {
            self.list(dir, errors);
        } else {
            for name in changed {
                let path = dir.join(&name);
                if path.extension().and_then(|e| e.to_str()) == Some("xml") {
                    self.reread(&path, errors);
                }
            }
        }
        let mut out: Vec<Arc<LibvirtDomain>> = self
            .cache
            .values()
            .filter_map(|c| c.parsed.clone())
            .filter(|d| d.pid.is_some())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Reads `path` again whatever its mtime says (an event named it).
    fn reread(&mut self, path: &Path, errors: &mut Vec<CollectError>) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            // Removed (or renamed away): the domain stopped.
            Err(_) => {
                self.cache.remove(path);
                return;
            }
        };
        let parsed = match read_once(path, &mut self.buf) {
            Ok(()) => match parse_libvirt_status(&self.buf) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    errors.push(CollectError::parse(path, e));
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.cache.remove(path);
                return;
            }
            Err(e) => {
                errors.push(CollectError::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
                None
            }
        };
        self.cache.insert(
            path.to_path_buf(),
            Cached {
                mtime: meta.modified().ok(),
                len: meta.len(),
                parsed,
            },
        );
    }

    /// Lists the directory: parses new and changed files, forgets removed ones.
    fn list(&mut self, dir: &Path, errors: &mut Vec<CollectError>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.cache.clear();
                return;
            }
            Err(e) => {
                errors.push(CollectError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                });
                // Keep what was known: a listing error is no proof that
                // the domains stopped.
                return;
            }
        };
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let mtime = meta.modified().ok();
            let len = meta.len();
            let fresh = self
                .cache
                .get(&path)
                .is_some_and(|c| c.mtime == mtime && c.len == len);
            if !fresh {
                let parsed = match read_once(&path, &mut self.buf) {
                    Ok(()) => match parse_libvirt_status(&self.buf) {
                        Ok(d) => Some(Arc::new(d)),
                        Err(e) => {
                            errors.push(CollectError::parse(&path, e));
                            None
                        }
                    },
                    // Removed between listing and reading: the domain stopped.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        errors.push(CollectError::Io {
                            path: path.clone(),
                            source: e,
                        });
                        None
                    }
                };
                self.cache
                    .insert(path.clone(), Cached { mtime, len, parsed });
            }
            seen.insert(path);
        }
        self.cache.retain(|p, _| seen.contains(p));
    }
}

/// An inotify instance watching `dir` for entries created, written,
/// renamed or removed, and for the directory's own end.
fn watch(dir: &Path) -> Result<OwnedFd, Errno> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    let flags = inotify::WatchFlags::CREATE
        | inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::MODIFY
        | inotify::WatchFlags::MOVED_FROM
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::DELETE
        | inotify::WatchFlags::DELETE_SELF
        | inotify::WatchFlags::MOVE_SELF
        | inotify::WatchFlags::ONLYDIR;
    inotify::add_watch(&fd, dir, flags)?;
    Ok(fd)
}

/// Reads the watch's queue until it is empty.
fn drain(fd: &OwnedFd) -> Drained {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    let mut names = HashSet::new();
    loop {
        match reader.next() {
            Ok(ev) => {
                let flags = ev.events();
                if flags.intersects(
                    inotify::ReadFlags::QUEUE_OVERFLOW
                        | inotify::ReadFlags::IGNORED
                        | inotify::ReadFlags::DELETE_SELF
                        | inotify::ReadFlags::MOVE_SELF
                        | inotify::ReadFlags::UNMOUNT,
                ) {
                    return Drained::Relist;
                }
                if let Some(name) = ev.file_name() {
                    names.insert(OsString::from(std::ffi::OsStr::from_bytes(name.to_bytes())));
                }
            }
            Err(Errno::AGAIN) => return Drained::Names(names),
            Err(Errno::INTR) => {}
            Err(_) => return Drained::Relist,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn status(name: &str, pid: u32) -> String {
        format!(
            "<domstatus state='running' reason='booted' pid='{pid}'>\n  <domain type='kvm' id='1'>\n    <name>{name}</name><uuid>9d1b8a33-52c7-4f5e-9f6a-0c2d3e4f5a6b</uuid>\n    <memory unit='KiB'>1048576</memory><vcpu placement='static'>2</vcpu>\n  </domain>\n</domstatus>\n"
        )
    }

    /// libvirtd's way: write a new file, rename it over the old one.
    fn rewrite(dir: &Path, name: &str, pid: u32) {
        let tmp = dir.join(format!("{name}.xml.new"));
        std::fs::write(&tmp, status(name, pid)).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.xml"))).unwrap();
    }

    fn found(s: &mut LibvirtScanner, dir: &Path) -> Vec<(String, Option<u32>)> {
        let mut errors = Vec::new();
        let d = s.scan(dir, false, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        d.iter().map(|d| (d.name.clone(), d.pid)).collect()
    }

    #[test]
    fn inotify_reads_what_changed_and_survives_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("qemu");
        let mut s = LibvirtScanner::new(true);
        // No directory: no libvirt, no watch, no error.
        assert!(found(&mut s, &dir).is_empty());
        assert!(!s.watching());

        std::fs::create_dir(&dir).unwrap();
        rewrite(&dir, "a", 10);
        assert_eq!(found(&mut s, &dir), vec![("a".into(), Some(10))]);
        assert!(s.watching());

        rewrite(&dir, "b", 20);
        assert_eq!(
            found(&mut s, &dir),
            vec![("a".into(), Some(10)), ("b".into(), Some(20))]
        );

        // Rewritten in place with the same size and modification time: the
        // mtime check alone would keep the old pid; the event says changed.
        let a = dir.join("a.xml");
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, status("a", 11)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(
            found(&mut s, &dir),
            vec![("a".into(), Some(11)), ("b".into(), Some(20))]
        );

        std::fs::remove_file(dir.join("b.xml")).unwrap();
        assert_eq!(found(&mut s, &dir), vec![("a".into(), Some(11))]);

        // The directory goes away (libvirt uninstalled, /run remounted):
        // the watch ends, and is set up again when it comes back.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found(&mut s, &dir).is_empty());
        assert!(!s.watching());
        std::fs::create_dir(&dir).unwrap();
        rewrite(&dir, "c", 30);
        assert_eq!(found(&mut s, &dir), vec![("c".into(), Some(30))]);
        assert!(s.watching());
    }

    #[test]
    fn without_inotify_the_directory_is_listed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let mut s = LibvirtScanner::new(false);
        rewrite(&dir, "a", 10);
        assert_eq!(found(&mut s, &dir), vec![("a".into(), Some(10))]);
        assert!(!s.watching());
        rewrite(&dir, "b", 20);
        assert_eq!(found(&mut s, &dir).len(), 2);
    }
}
