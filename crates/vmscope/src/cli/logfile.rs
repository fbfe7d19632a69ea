//! `log.file`: `serve`'s log written to a file as well as to stderr, with
//! size-based rotation (`log.max_size`, `log.keep`): `FILE` is renamed to
//! `FILE.1` (older ones shift to `FILE.2` ..) before a line would take it
//! past `max_size`, and `FILE.{keep+1}` is removed.
//!
//! The file must never stop the agent: each log line is handed to the
//! writer thread through a bounded queue without waiting (a full queue
//! drops the line for the file only), and the thread counts what fails
//! (open, write, rotate: a full disk, a removed directory) instead of
//! failing. stderr gets every line regardless, so journald keeps the full
//! log. After a failed write the file is reopened on the next line; after
//! a failed rotation the writer goes on appending and tries again one
//! `max_size` later (so a read-only rename cannot cost one syscall storm
//! per line).
//!
//! Reads: nothing. Writes: the log file and its rotated copies. Emits:
//! `vmscope_log_file_errors_total{operation}` (open, write, rotate),
//! `vmscope_log_file_dropped_lines_total`, `vmscope_log_file_rotations_total`.
//! Fails: only at start ([`LogFile::open`]), naming `log.file` and the
//! cause.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::export::{Desc, MetricSource, MetricWriter};

/// Lines waiting for the writer thread; past this they are dropped (for
/// the file only). With [`MAX_LINE`] this bounds the queue's memory.
const QUEUE: usize = 1024;
/// A longer log line is cut here in the file (stderr has it whole).
const MAX_LINE: usize = 16 * 1024;

static ERRORS: Desc = Desc::counter(
    "vmscope_log_file_errors_total",
    "Failures writing the log file (log.file), by operation: open, write, rotate. The log still goes to stderr.",
);
static DROPPED: Desc = Desc::counter(
    "vmscope_log_file_dropped_lines_total",
    "Log lines not written to the log file because its writer fell behind (they still went to stderr).",
);
static ROTATIONS: Desc = Desc::counter(
    "vmscope_log_file_rotations_total",
    "Rotations of the log file at log.max_size.",
);

/// What the writer thread and the senders count.
#[derive(Debug, Default)]
pub struct LogFileMetrics {
    open_errors: AtomicU64,
    write_errors: AtomicU64,
    rotate_errors: AtomicU64,
    dropped: AtomicU64,
    rotations: AtomicU64,
}

impl MetricSource for LogFileMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        out.family(&ERRORS);
        for (op, n) in [
            ("open", &self.open_errors),
            ("write", &self.write_errors),
            ("rotate", &self.rotate_errors),
        ] {
            out.sample(&[("operation", op)], n.load(Ordering::Relaxed));
        }
        out.family(&DROPPED);
        out.sample(&[], self.dropped.load(Ordering::Relaxed));
        out.family(&ROTATIONS);
        out.sample(&[], self.rotations.load(Ordering::Relaxed));
    }
}

enum Msg {
    Line(Vec<u8>),
    /// Answer once every line before this one was written.
    Flush(SyncSender<()>),
}

/// The sending side: a `MakeWriter` for a `tracing` fmt layer.
#[derive(Clone)]
pub struct LogFile {
    tx: SyncSender<Msg>,
    metrics: Arc<LogFileMetrics>,
}

impl LogFile {
    /// Opens (creates, appends to) `path` now, so that a directory that is
    /// missing or not writable is an error at start, and starts the writer
    /// thread.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> anyhow::Result<LogFile> {
        let file = open_append(path)
            .map_err(|e| anyhow::anyhow!("log.file: cannot open {}: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let metrics = Arc::new(LogFileMetrics::default());
        let (tx, rx) = sync_channel(QUEUE);
        let mut w = Rotating {
            path: path.to_owned(),
            max_size,
            keep,
            file: Some(file),
            size,
            metrics: Arc::clone(&metrics),
        };
        std::thread::Builder::new()
            .name("vmscope-logfile".into())
            .spawn(move || w.run(&rx))
            .map_err(|e| anyhow::anyhow!("log.file: cannot start its writer thread: {e}"))?;
        Ok(LogFile { tx, metrics })
    }

    pub fn metrics(&self) -> Arc<LogFileMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Waits at most `timeout` for the lines queued so far to be written:
    /// at shutdown, so the last lines ("stopped") reach the file.
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = sync_channel(1);
        if self.tx.try_send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// One event's bytes, sent on as one line.
pub struct LineWriter<'a>(&'a LogFile);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut line = buf[..buf.len().min(MAX_LINE)].to_vec();
        if line.len() < buf.len() {
            line.extend_from_slice(b"...\n");
        }
        match self.0.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            // Full: the writer is behind (a slow disk); never wait for it.
            // Disconnected: its thread is gone; stderr still has the line.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.0.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `FILE.n`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Removes or renames, a missing source being no error.
fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The writer thread's state.
struct Rotating {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    file: Option<File>,
    /// Bytes in the current file (as far as the writer knows).
    size: u64,
    metrics: Arc<LogFileMetrics>,
}

impl Rotating {
    fn run(&mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Line(line) => self.write_line(&line),
                Msg::Flush(done) => {
                    let _ = done.try_send(());
                }
            }
        }
    }

    fn write_line(&mut self, line: &[u8]) {
        if self.size > 0 && self.size.saturating_add(line.len() as u64) > self.max_size {
            match self.rotate() {
                Ok(()) => {
                    self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // Append on; try again one max_size later.
                    self.metrics.rotate_errors.fetch_add(1, Ordering::Relaxed);
                    self.size = 0;
                }
            }
        }
        if self.file.is_none() {
            match open_append(&self.path) {
                Ok(f) => {
                    self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(_) => {
                    self.metrics.open_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some(f) = self.file.as_mut() else { return };
        match f.write_all(line) {
            Ok(()) => self.size = self.size.saturating_add(line.len() as u64),
            Err(_) => {
                // A full disk or a file gone bad: reopen on the next line.
                self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                self.file = None;
            }
        }
    }

    /// FILE.{keep-1} -> FILE.{keep} .. FILE -> FILE.1; with keep 0 the
    /// file is removed. FILE.{keep+1} is removed too (left from a larger
    /// `keep` before a restart). The next line opens a new FILE.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        ignore_missing(std::fs::remove_file(numbered(&self.path, self.keep + 1)))?;
        if self.keep == 0 {
            return ignore_missing(std::fs::remove_file(&self.path));
        }
        for n in (1..self.keep).rev() {
            ignore_missing(std::fs::rename(
                numbered(&self.path, n),
                numbered(&self.path, n + 1),
            ))?;
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn write(log: &LogFile, line: &str) {
        log.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn rotates_before_max_size_and_keeps_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmscope.log");
        let log = LogFile::open(&path, 1000, 2).unwrap();
        // 100-byte lines: 10 fit in 1000 bytes, the 11th starts a new file.
        let line = format!("{}\n", "x".repeat(99));
        for i in 0..35 {
            write(&log, &line.replacen('x', &(i % 10).to_string(), 1));
        }
        log.flush(Duration::from_secs(5));
        // 35 lines: 3 full files of 10, the current one has 5; keep=2 left
        // FILE.1 and FILE.2 and removed the oldest.
        assert_eq!(
            files(dir.path()),
            vec![
                ("vmscope.log".into(), 500),
                ("vmscope.log.1".into(), 1000),
                ("vmscope.log.2".into(), 1000),
            ]
        );
        // The newest lines are in FILE, the ones before in FILE.1.
        let cur = std::fs::read_to_string(&path).unwrap();
        assert!(cur.starts_with("0x"), "{cur}");
        let m = log.metrics();
        assert_eq!(m.rotations.load(Ordering::Relaxed), 3);
        assert_eq!(m.write_errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn keep_zero_keeps_no_old_file_and_appends_to_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "y".repeat(900)).unwrap();
        let log = LogFile::open(&path, 1000, 0).unwrap();
        write(&log, &format!("{}\n", "z".repeat(49)));
        write(&log, &format!("{}\n", "z".repeat(99)));
        log.flush(Duration::from_secs(5));
        // 900 + 50 fit; the next 100 would not: the file starts again.
        assert_eq!(files(dir.path()), vec![("a.log".into(), 100)]);
    }

    #[test]
    fn a_full_disk_is_counted_per_line_and_never_rotates() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let log = LogFile::open(Path::new("/dev/full"), 1024, 1).unwrap();
        for _ in 0..50 {
            write(&log, &format!("{}\n", "f".repeat(99)));
        }
        log.flush(Duration::from_secs(5));
        let m = log.metrics();
        assert_eq!(m.write_errors.load(Ordering::Relaxed), 50);
        assert_eq!(m.rotations.load(Ordering::Relaxed), 0);
        assert!(Path::new("/dev/full").exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_key_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/vmscope.log");
        let e = LogFile::open(&path, 1000, 1).err().unwrap().to_string();
        assert!(e.starts_with("log.file: cannot open "), "{e}");
        assert!(e.contains("nope/vmscope.log"), "{e}");
    }

    #[test]
    fn a_failing_file_is_counted_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("v.log");
        let log = LogFile::open(&path, 1000, 1).unwrap();
        write(&log, "first\n");
        log.flush(Duration::from_secs(5));
        // The directory disappears (as a full or unmounted disk would make
        // every write fail): rotation and reopening fail, counted, no panic.
        std::fs::remove_dir_all(&sub).unwrap();
        for _ in 0..300 {
            write(&log, &format!("{}\n", "w".repeat(99)));
        }
        log.flush(Duration::from_secs(5));
        let m = log.metrics();
        let failed =
            m.open_errors.load(Ordering::Relaxed) + m.rotate_errors.load(Ordering::Relaxed);
        assert!(failed > 0, "no failure counted");
        // The directory comes back: the writer picks up again.
        std::fs::create_dir(&sub).unwrap();
        write(&log, "back\n");
        log.flush(Duration::from_secs(5));
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("back\n"));
    }
}
