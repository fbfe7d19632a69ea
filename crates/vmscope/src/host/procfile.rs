//! Reading /proc and /sys files cheaply and with typed failures.
//!
//! A [`ProcFile`] keeps its file descriptor open between ticks and re-reads
//! with `pread(fd, buf, 0)`: procfs regenerates `stat`, `schedstat`, `io` and
//! `net/dev` on every read at offset 0, so one tick costs one syscall per file
//! instead of open+read+close. A held descriptor also pins the identity of
//! the process: once it exits, reads fail with `ESRCH` even if the PID has
//! been reused, which is how a vanished VM is told apart from a new one.
//!
//! The number of descriptors kept open is bounded by a shared [`FdBudget`];
//! past it, files are opened per read (slower, never wrong).
//!
//! `open`, `pread` and `close` are rustix's direct system calls, not
//! glibc's wrappers (which `std::fs::File` uses): in a multi-threaded
//! process each of those wrappers is a cancellation point that switches
//! asynchronous cancellation on and off around the call, 1.2% of the
//! collect thread's profile at 10 000 VMs (300 000 files a tick past the
//! descriptor budget) for nothing: this process never cancels a thread.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vmscope_proc::ParseError;

/// Why a read for one VM or one host file failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The process (or thread) exited between discovery and the read.
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("{what} did not answer within {secs:.1}s")]
    Timeout { what: String, secs: f64 },
}

impl CollectError {
    /// The bounded `kind` label of `vmscope_collector_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            CollectError::Gone { .. } => "gone",
            CollectError::Io { .. } => "io",
            CollectError::Parse { .. } => "parse",
            CollectError::Timeout { .. } => "timeout",
        }
    }

    pub fn parse(path: &Path, source: ParseError) -> Self {
        CollectError::Parse {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Maps an IO error on a per-process file: a missing file or `ESRCH`
    /// means the process exited, anything else is a real IO error.
    pub fn from_proc_io(pid: u32, path: &Path, e: io::Error) -> Self {
        if is_gone(&e) {
            CollectError::Gone { pid }
        } else {
            CollectError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    }
}

/// True when an IO error means "the process is no longer there".
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

/// How many descriptors the collector may keep open at once.
#[derive(Debug, Clone)]
pub struct FdBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl FdBudget {
    pub fn new(limit: usize) -> Self {
        FdBudget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Raises the soft `RLIMIT_NOFILE` to the hard limit and sizes the
    /// budget to leave `reserve` descriptors for HTTP connections, the
    /// database, logs and files opened per read (`HttpConfig::fd_reserve`).
    pub fn from_rlimit(reserve: usize) -> Self {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if let Some(max) = lim.maximum
            && lim.current != Some(max)
        {
            lim.current = Some(max);
            if setrlimit(Resource::Nofile, lim).is_err() {
                lim = getrlimit(Resource::Nofile);
            }
        }
        let soft = lim.current.unwrap_or(1 << 20) as usize;
        FdBudget::new(soft.saturating_sub(reserve).min(1 << 18))
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One /proc file, re-read with `pread` while its descriptor is held.
#[derive(Debug)]
pub struct ProcFile {
    path: FilePath,
    file: Option<OwnedFd>,
    budget: FdBudget,
    /// The file is one record produced whole by each read (`stat`, `io`,
    /// `schedstat`, `meminfo`): a read that does not fill the buffer has
    /// read it all, and no second `pread` is needed to see EOF.
    single_record: bool,
}

/// A file's path, kept NUL-terminated: past the descriptor budget the file
/// is opened on every read (about 30 000 files a tick at 10 000 VMs), and a
/// `PathBuf` was copied into a C string and searched for NUL bytes on each
/// of those opens.
#[derive(Debug)]
enum FilePath {
    C(CString),
    /// A path with a NUL byte in it (from a configured root): no such file
    /// can exist; reads fail with `InvalidInput`, naming it.
    Nul(PathBuf),
}

impl FilePath {
    fn new(path: PathBuf) -> Self {
        match CString::new(path.into_os_string().into_vec()) {
            Ok(c) => FilePath::C(c),
            Err(e) => FilePath::Nul(PathBuf::from(OsString::from_vec(e.into_vec()))),
        }
    }

    fn as_path(&self) -> &Path {
        match self {
            FilePath::C(c) => Path::new(OsStr::from_bytes(c.to_bytes())),
            FilePath::Nul(p) => p,
        }
    }

    fn open(&self) -> io::Result<OwnedFd> {
        match self {
            FilePath::C(c) => open(c.as_c_str()),
            FilePath::Nul(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path contains a NUL byte",
            )),
        }
    }
}

impl ProcFile {
    pub fn new(path: PathBuf, budget: &FdBudget) -> Self {
        ProcFile {
            path: FilePath::new(path),
            file: None,
            budget: budget.clone(),
            single_record: true,
        }
    }

    /// A file of many records that procfs hands out a page at a time
    /// (`net/dev`): read until EOF.
    pub fn streaming(path: PathBuf, budget: &FdBudget) -> Self {
        let mut f = ProcFile::new(path, budget);
        f.single_record = false;
        f
    }

    pub fn path(&self) -> &Path {
        self.path.as_path()
    }

    /// Reads the whole file and returns it (a prefix of `buf`, which is
    /// reused across calls and only ever grows).
    pub fn read<'b>(&mut self, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
        if let Some(f) = &self.file {
            let n = pread_all(f, buf, self.single_record)?;
            return Ok(&buf[..n]);
        }
        let f = self.path.open()?;
        // Over budget the file is read the same way and then closed: open,
        // pread, close, as the floor does. `read_to_end` added a `statx`, an
        // `lseek` and a 32-byte probe read per file: at 10 000 VMs about
        // 30 000 files are opened per tick, and those were 4 of its 7
        // syscalls per file. The budget is taken only once a read worked,
        // so a failed first read (process gone, `io` refused) keeps none.
        let n = match pread_all(&f, buf, self.single_record) {
            Ok(n) => n,
            Err(e) => {
                close(f);
                return Err(e);
            }
        };
        if self.budget.try_take() {
            self.file = Some(f);
        } else {
            close(f);
        }
        Ok(&buf[..n])
    }
}

impl Drop for ProcFile {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            close(f);
            self.budget.give_back();
        }
    }
}

/// Closes `fd` with the system call itself. Dropping an `OwnedFd` calls
/// glibc's `close`, a cancellation point that switches asynchronous
/// cancellation on and off around the call (see the module doc): 6% of
/// the collect thread's user time at 10 000 VMs, where about 30 000 files
/// past the descriptor budget are closed per tick.
#[allow(unsafe_code)]
fn close(fd: OwnedFd) {
    use std::os::fd::IntoRawFd;
    // SAFETY: `into_raw_fd` takes the descriptor out of its owner, so it
    // is closed once, here, and never used again.
    unsafe { rustix::io::close(fd.into_raw_fd()) }
}

/// Reads from offset 0 into `buf`, growing it as needed; returns the
/// length read. `buf` stays initialized between calls (no zeroing per read).
fn pread_all(f: &OwnedFd, buf: &mut Vec<u8>, single_record: bool) -> io::Result<usize> {
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    let mut filled = 0usize;
    loop {
        if buf.len() - filled < 1024 {
            let grown = buf.len() * 2;
            buf.resize(grown, 0);
        }
        let n = match rustix::io::pread(f, &mut buf[filled..], filled as u64) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        filled += n;
        if n == 0 || (single_record && filled < buf.len()) {
            return Ok(filled);
        }
    }
}

/// Opens `path` read-only (close-on-exec), as `File::open` does.
fn open<P: rustix::path::Arg>(path: P) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A host-wide file below the proc root (`stat`, `meminfo`, `loadavg`),
/// opened on first use and re-read with `pread` after that.
#[derive(Debug)]
pub struct HostFile {
    rel: &'static str,
    file: Option<ProcFile>,
    buf: Vec<u8>,
}

impl HostFile {
    pub const fn new(rel: &'static str) -> Self {
        HostFile {
            rel,
            file: None,
            buf: Vec::new(),
        }
    }

    /// The file's current contents and its path (for error messages).
    pub fn read(
        &mut self,
        proc_root: &Path,
        budget: &FdBudget,
    ) -> Result<(&[u8], &Path), CollectError> {
        let file = self
            .file
            .get_or_insert_with(|| ProcFile::new(proc_root.join(self.rel), budget));
        match file.read(&mut self.buf) {
            Ok(data) => Ok((data, file.path())),
            Err(e) => Err(CollectError::Io {
                path: file.path().to_path_buf(),
                source: e,
            }),
        }
    }
}

/// Reads a small file once (for files read once per VM or rarely): open,
/// `pread` until EOF, close, without the `statx` and `lseek` that
/// `read_to_end` adds to size its buffer (a procfs file has no size).
pub fn read_once(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    let f = open(path)?;
    let n = pread_all(&f, buf, false)?;
    buf.truncate(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_see_new_content_and_budget_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"first").unwrap();
        let budget = FdBudget::new(1);
        let mut buf = Vec::new();
        let mut f = ProcFile::new(p.clone(), &budget);
        assert_eq!(f.read(&mut buf).unwrap(), b"first");
        assert_eq!(budget.in_use(), 1);
        std::fs::write(&p, b"second, longer").unwrap();
        assert_eq!(f.read(&mut buf).unwrap(), b"second, longer");
        // Over budget: still reads, without keeping the descriptor.
        let mut g = ProcFile::new(p.clone(), &budget);
        assert_eq!(g.read(&mut buf).unwrap(), b"second, longer");
        assert_eq!(budget.in_use(), 1);
        drop(f);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_path_with_a_nul_byte_fails_its_reads_and_keeps_its_name() {
        use std::os::unix::ffi::OsStringExt;
        let budget = FdBudget::new(4);
        let path = PathBuf::from(OsString::from_vec(b"/proc/1/st\0at".to_vec()));
        let mut f = ProcFile::new(path.clone(), &budget);
        let mut buf = Vec::new();
        let e = f.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(f.path(), path);
        assert_eq!(budget.in_use(), 0);
        // And an ordinary path round-trips through its C string.
        let ok = ProcFile::new(PathBuf::from("/proc/self/stat"), &budget);
        assert_eq!(ok.path(), Path::new("/proc/self/stat"));
    }

    #[test]
    fn a_failed_first_read_takes_no_budget() {
        // A directory opens but does not read (EISDIR): the descriptor is
        // not kept, and the budget must not count it either, or every VM
        // whose first read fails (it exited, `io` was refused) would shrink
        // the budget for good.
        let dir = tempfile::tempdir().unwrap();
        let budget = FdBudget::new(4);
        let mut buf = Vec::new();
        let mut d = ProcFile::new(dir.path().to_path_buf(), &budget);
        for _ in 0..3 {
            assert!(d.read(&mut buf).is_err());
        }
        assert_eq!(budget.in_use(), 0);
        let p = dir.path().join("f");
        std::fs::write(&p, b"held").unwrap();
        let mut f = ProcFile::new(p, &budget);
        assert_eq!(f.read(&mut buf).unwrap(), b"held");
        assert_eq!(budget.in_use(), 1);
    }

    #[test]
    fn over_budget_reads_whole_files_and_streams() {
        // Files opened per read go through the same pread loop as held
        // ones: a file larger than the first buffer comes whole.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let big: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &big).unwrap();
        let budget = FdBudget::new(0);
        let mut buf = Vec::new();
        let mut single = ProcFile::new(p.clone(), &budget);
        let mut streaming = ProcFile::streaming(p.clone(), &budget);
        for _ in 0..2 {
            assert_eq!(single.read(&mut buf).unwrap(), &big[..]);
            assert_eq!(streaming.read(&mut buf).unwrap(), &big[..]);
        }
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(single.read(&mut buf).unwrap(), b"short");
        assert_eq!(budget.in_use(), 0);
        let mut net = ProcFile::streaming(PathBuf::from("/proc/self/net/dev"), &budget);
        let text = String::from_utf8(net.read(&mut buf).unwrap().to_vec()).unwrap();
        let want = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        assert_eq!(text.lines().count(), want.lines().count());
    }

    #[test]
    fn large_files_are_read_whole_and_shorter_rereads_are_not_padded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &big).unwrap();
        let budget = FdBudget::new(8);
        let mut buf = Vec::new();
        let mut single = ProcFile::new(p.clone(), &budget);
        let mut streaming = ProcFile::streaming(p.clone(), &budget);
        assert_eq!(single.read(&mut buf).unwrap(), &big[..]);
        assert_eq!(streaming.read(&mut buf).unwrap(), &big[..]);
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(single.read(&mut buf).unwrap(), b"short");
        assert_eq!(streaming.read(&mut buf).unwrap(), b"short");
    }

    #[test]
    fn proc_net_dev_streams_whole() {
        let budget = FdBudget::new(8);
        let mut f = ProcFile::streaming(PathBuf::from("/proc/self/net/dev"), &budget);
        let mut buf = Vec::new();
        let text = String::from_utf8(f.read(&mut buf).unwrap().to_vec()).unwrap();
        let want = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        assert_eq!(text.lines().count(), want.lines().count());
    }

    #[test]
    fn proc_stat_of_this_process_rereads() {
        let budget = FdBudget::new(8);
        let mut f = ProcFile::new(PathBuf::from("/proc/self/stat"), &budget);
        let mut buf = Vec::new();
        let a = f.read(&mut buf).unwrap().to_vec();
        let b = f.read(&mut buf).unwrap().to_vec();
        assert!(!a.is_empty() && !b.is_empty());
        assert!(vmscope_proc::parse_stat(&b).is_ok());
    }

    #[test]
    fn missing_process_is_gone() {
        let e = io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error());
        assert!(is_gone(&e));
        let e = io::Error::from(io::ErrorKind::NotFound);
        assert!(matches!(
            CollectError::from_proc_io(7, Path::new("/proc/7/stat"), e),
            CollectError::Gone { pid: 7 }
        ));
    }
}
