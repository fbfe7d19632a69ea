//! Finds libvirt QEMU domains from their live status files.
//!
//! Reads: `<run>/libvirt/qemu/*.xml`, which libvirtd writes for every running
//! domain (pid, uuid, vCPU thread ids, TAP devices, Nova metadata). No libvirt
//! client library or daemon connection is needed, so discovery keeps working
//! while libvirtd restarts.
//!
//! Cost: one directory listing and one `stat` per domain per tick; a file is
//! parsed again only when its modification time or size changed.
//!
//! Failure: a missing directory means "no libvirt here" (not an error); an
//! unparsable file is counted and skipped, and retried when it changes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use vmscope_proc::{LibvirtDomain, parse_libvirt_status};

use crate::host::{CollectError, read_once};

#[derive(Debug)]
struct Cached {
    mtime: Option<SystemTime>,
    len: u64,
    parsed: Option<Arc<LibvirtDomain>>,
}

#[derive(Debug, Default)]
pub struct LibvirtScanner {
    cache: HashMap<PathBuf, Cached>,
    buf: Vec<u8>,
}

impl LibvirtScanner {
    /// Returns the running domains with a pid, plus the errors met.
    pub fn scan(&mut self, dir: &Path, errors: &mut Vec<CollectError>) -> Vec<Arc<LibvirtDomain>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.cache.clear();
                return Vec::new();
            }
            Err(e) => {
                errors.push(CollectError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                });
                return Vec::new();
            }
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
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
            if let Some(d) = self.cache.get(&path).and_then(|c| c.parsed.clone())
                && d.pid.is_some()
            {
                out.push(d);
            }
            seen.insert(path);
        }
        self.cache.retain(|p, _| seen.contains(p));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
