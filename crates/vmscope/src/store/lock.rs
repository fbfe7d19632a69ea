//! One agent per state database: an exclusive `flock` on `<db>.lock`.
//!
//! Two agents writing one database would close each other's open episodes
//! and deliver each other's outbox. The first to start takes the lock and
//! writes its PID into the lock file; a second one fails at start naming
//! that PID. The lock is released by the kernel when the holder exits, even
//! on a crash or `kill -9`, so a stale lock file never blocks a restart.
//!
//! Reads/writes: `<db>.lock` beside the database (created, mode 0644).
//! Fails: [`StoreError::Locked`] (held by another process) or
//! [`StoreError::Open`] (the lock file cannot be created or locked).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use super::StoreError;

/// Held for as long as the store is open; dropping it releases the lock.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
    path: PathBuf,
}

impl DbLock {
    /// `<db>.lock`: `state.db` -> `state.db.lock`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Take the lock for `db` or say who holds it. Never waits.
    pub fn acquire(db: &Path) -> Result<DbLock, StoreError> {
        let path = Self::path_for(db);
        let open_err = |e: std::io::Error| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(open_err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                // The holder writes its PID right after locking; an empty
                // file means it has not yet (or is not a vmscope).
                let mut text = String::new();
                let _ = file.take(32).read_to_string(&mut text);
                return Err(StoreError::Locked {
                    path: db.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(open_err(e.into())),
        }
        // Ours now: replace whatever PID a previous holder left.
        file.set_len(0).map_err(open_err)?;
        file.rewind().map_err(open_err)?;
        writeln!(file, "{}", std::process::id()).map_err(open_err)?;
        Ok(DbLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_lock_can_be_retaken() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = DbLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("state.db.lock"));
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        let err = DbLock::acquire(&db).unwrap_err();
        match &err {
            StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        assert!(msg.contains("watchdog.state_db_path"), "{msg}");
        drop(first);
        DbLock::acquire(&db).unwrap();
    }
}
