//! Per-disk figures of Firecracker VMs, from their metrics file
//! (`--metrics-path`).
//!
//! Reads: the file's lines added since the last poll (at most
//! [`MAX_READ`] bytes a poll; a long backlog is caught up over several).
//! Emits: per drive, running totals ([`DiskStats`]) of the increments each
//! line carries. Firecracker's block counters are deltas since its previous
//! flush, so vmscope adds them up: the only family vmscope builds from
//! deltas (METRICS.md passes counters through otherwise). Read from the
//! file's start, the totals are exact since the VM started, and the same
//! again after a vmscope restart.
//!
//! A regular file only: a FIFO hands each line to one reader, so vmscope
//! reading it would take the lines from whoever else does (and they from
//! vmscope): both would undercount, silently. A metrics path that is a FIFO
//! gives no figures and says so once (log); point `--metrics-path` at a
//! file, or `tee` the FIFO into one, for vmscope to read.
//!
//! Rotation: a file replaced (another inode at the path) is read from its
//! start; a file cut shorter than what was read (copy-and-truncate) too.
//! The totals carry on over both (the lines before are gone from the file,
//! their increments stay counted); only a vmscope restart after a rotation
//! makes them restart lower, which Prometheus reads as a counter reset.
//!
//! Fails: [`ApiError`]: `io` (unreadable), `parse` (a line that is not a
//! metrics line: skipped, the others counted, the poll reported failed).
//! A line cut short (a writer that stalls mid-line) waits for its end;
//! one longer than [`MAX_LINE`] is dropped.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::qmp::ApiError;
use crate::model::{DiskStats, cap_label_value};

/// Bytes read from the file per poll at most.
pub const MAX_READ: u64 = 4 << 20;
/// The longest line kept while waiting for its end.
pub const MAX_LINE: usize = 1 << 20;
/// The most drives followed per VM (bounded label values).
pub const MAX_DRIVES: usize = 64;

/// What is kept per VM between polls.
#[derive(Debug, Default)]
pub struct FcState {
    /// (device, inode) of the file being read.
    file: Option<(u64, u64)>,
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// The partial line grew past MAX_LINE: drop bytes up to the next newline.
    skipping: bool,
    totals: Vec<Totals>,
    /// The path was a FIFO (logged once).
    fifo: bool,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    device: String,
    read_bytes: u64,
    write_bytes: u64,
    read_requests: u64,
    write_requests: u64,
    flush_requests: u64,
    read_time_us: u64,
    write_time_us: u64,
}

fn io(step: &'static str) -> impl Fn(std::io::Error) -> ApiError {
    move |source| ApiError::Io { step, source }
}

/// One poll. `Ok(None)`: no figures from this file (none yet, or a FIFO).
pub fn poll(path: &Path, st: &mut FcState) -> Result<Option<Vec<DiskStats>>, ApiError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // Not written yet (Firecracker creates it on its first flush), or
        // the VM is gone: nothing to say.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(published(st)),
        Err(e) => return Err(io("reading the metrics file's status")(e)),
    };
    if meta.file_type().is_fifo() {
        if !st.fifo {
            tracing::info!(path = %path.display(), "the Firecracker metrics path is a FIFO, which has one reader: vmscope does not read it (docs/hypervisor-apis.md)");
            st.fifo = true;
        }
        return Ok(None);
    }
    st.fifo = false;
    if !meta.is_file() {
        return Ok(None);
    }
    // O_NONBLOCK: never wait at open, whatever the path turns out to be.
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(io("opening the metrics file"))?
    };
    let meta = f
        .metadata()
        .map_err(io("reading the metrics file's status"))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let id = (meta.dev(), meta.ino());
    if st.file != Some(id) || meta.len() < st.offset {
        // Another file at the path (rotated), or this one cut: from its start.
        st.file = Some(id);
        st.offset = 0;
        st.partial.clear();
        st.skipping = false;
    }
    let mut chunk = Vec::new();
    f.seek(SeekFrom::Start(st.offset))
        .map_err(io("reading the metrics file"))?;
    (&mut f)
        .take(MAX_READ)
        .read_to_end(&mut chunk)
        .map_err(io("reading the metrics file"))?;
    st.offset += chunk.len() as u64;
    let mut first_error: Option<ApiError> = None;
    let mut rest: &[u8] = &chunk;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let (piece, tail) = rest.split_at(nl);
        rest = &tail[1..];
        if st.skipping {
            st.skipping = false;
            st.partial.clear();
            continue;
        }
        let line: std::borrow::Cow<'_, [u8]> = if st.partial.is_empty() {
            piece.into()
        } else {
            let mut l = std::mem::take(&mut st.partial);
            l.extend_from_slice(piece);
            l.into()
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match vmscope_proc::parse_firecracker_metrics_line(&line) {
            Ok(deltas) => add(&mut st.totals, &deltas),
            Err(source) => {
                first_error.get_or_insert(ApiError::Parse {
                    step: "a metrics line",
                    source,
                });
            }
        }
    }
    if !st.skipping {
        st.partial.extend_from_slice(rest);
        if st.partial.len() > MAX_LINE {
            st.partial.clear();
            st.skipping = true;
            first_error.get_or_insert(ApiError::Protocol {
                step: "a metrics line",
                what: format!("a line longer than {MAX_LINE} bytes"),
            });
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(published(st)),
    }
}

fn add(totals: &mut Vec<Totals>, deltas: &[vmscope_proc::FcBlockDelta]) {
    for d in deltas {
        let i = match totals.iter().position(|t| t.device == d.device) {
            Some(i) => i,
            None if totals.len() < MAX_DRIVES => {
                let mut device = d.device.clone();
                cap_label_value(&mut device);
                totals.push(Totals {
                    device,
                    ..Totals::default()
                });
                totals.len() - 1
            }
            None => continue,
        };
        let t = &mut totals[i];
        t.read_bytes = t.read_bytes.saturating_add(d.read_bytes);
        t.write_bytes = t.write_bytes.saturating_add(d.write_bytes);
        t.read_requests = t.read_requests.saturating_add(d.read_requests);
        t.write_requests = t.write_requests.saturating_add(d.write_requests);
        t.flush_requests = t.flush_requests.saturating_add(d.flush_requests);
        t.read_time_us = t.read_time_us.saturating_add(d.read_time_us);
        t.write_time_us = t.write_time_us.saturating_add(d.write_time_us);
    }
}

/// The totals as published; `None` before any line gave a drive.
fn published(st: &FcState) -> Option<Vec<DiskStats>> {
    if st.totals.is_empty() {
        return None;
    }
    const US: f64 = 1e-6;
    Some(
        st.totals
            .iter()
            .map(|t| DiskStats {
                device: t.device.clone(),
                read_bytes: t.read_bytes,
                write_bytes: t.write_bytes,
                read_requests: t.read_requests,
                write_requests: t.write_requests,
                flush_requests: t.flush_requests,
                read_time_seconds: t.read_time_us as f64 * US,
                write_time_seconds: t.write_time_us as f64 * US,
                flush_time_seconds: 0.0,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::io::Write;

    use super::*;

    /// A flush as Firecracker 1.x writes it, with `n` times the I/O.
    fn line(n: u64) -> String {
        format!(
            r#"{{"utc_timestamp_ms":1700000000000,"api_server":{{"process_startup_time_us":12}},"block_rootfs":{{"activate_fails":0,"cfg_fails":0,"no_avail_buffer":0,"event_fails":0,"execute_fails":0,"invalid_reqs_count":0,"flush_count":{n},"queue_event_count":40,"read_bytes":{rb},"write_bytes":{wb},"read_count":{n},"write_count":{n},"read_agg":{{"min_us":3,"max_us":90,"sum_us":{n}00}},"write_agg":{{"min_us":7,"max_us":7,"sum_us":{n}0}},"rate_limiter_throttled_events":0,"io_engine_throttled_events":0,"remaining_reqs_count":0}},"block":{{"read_bytes":{rb},"write_bytes":{wb},"read_count":{n},"write_count":{n}}},"net_eth0":{{"rx_bytes_count":100}}}}"#,
            rb = n * 4096,
            wb = n * 512,
        ) + "\n"
    }

    fn append(path: &Path, s: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    fn rootfs(d: &Option<Vec<DiskStats>>) -> DiskStats {
        d.as_ref()
            .and_then(|v| v.iter().find(|d| d.device == "rootfs").cloned())
            .expect("rootfs figures")
    }

    #[test]
    fn adds_up_the_deltas_of_new_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fc.metrics");
        let mut st = FcState::default();
        // Not written yet: nothing, no error.
        assert_eq!(poll(&p, &mut st).unwrap(), None);
        append(&p, &line(1));
        append(&p, &line(2));
        let d = rootfs(&poll(&p, &mut st).unwrap());
        assert_eq!(d.read_bytes, 3 * 4096);
        assert_eq!(d.write_bytes, 3 * 512);
        assert_eq!(
            (d.read_requests, d.write_requests, d.flush_requests),
            (3, 3, 3)
        );
        assert!((d.read_time_seconds - 300e-6).abs() < 1e-12);
        // Only the per-drive section, never the aggregate besides it.
        assert_eq!(poll(&p, &mut st).unwrap().unwrap().len(), 1);
        // Nothing new: the same totals, not added twice.
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 3 * 4096);
        append(&p, &line(4));
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 7 * 4096);
    }

    #[test]
    fn a_stalled_writer_and_malformed_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fc.metrics");
        let mut st = FcState::default();
        let l = line(1);
        // The writer stops mid-line: the complete lines count, the cut one
        // waits for its end.
        append(&p, &line(2));
        append(&p, &l[..100]);
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 2 * 4096);
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 2 * 4096);
        append(&p, &l[100..]);
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 3 * 4096);
        // A garbled line fails the poll (parse) and is skipped; the good
        // line after it still counts.
        append(&p, "{\"block_rootfs\": nonsense\n");
        append(&p, &line(1));
        let e = poll(&p, &mut st).unwrap_err();
        assert_eq!(e.kind(), "parse");
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 4 * 4096);
        // A "line" that never ends is dropped past MAX_LINE, and reading
        // goes on after its newline.
        append(&p, &"x".repeat(MAX_LINE + 10));
        assert!(poll(&p, &mut st).is_err());
        assert!(st.partial.is_empty());
        append(&p, &format!("yyy\n{}", line(1)));
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 5 * 4096);
    }

    #[test]
    fn truncated_and_rotated_files_are_read_from_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fc.metrics");
        let mut st = FcState::default();
        append(&p, &line(1));
        append(&p, &line(1));
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 2 * 4096);
        // copytruncate: the same file, cut to nothing, then written again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&p, &line(3));
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 5 * 4096);
        // Rotated: renamed away, a new file at the path.
        std::fs::rename(&p, dir.path().join("fc.metrics.1")).unwrap();
        append(&p, &line(1));
        assert_eq!(rootfs(&poll(&p, &mut st).unwrap()).read_bytes, 6 * 4096);
    }

    #[test]
    fn a_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fc.fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let mut st = FcState::default();
        let t = std::time::Instant::now();
        assert_eq!(poll(&p, &mut st).unwrap(), None);
        assert!(st.fifo);
        // Never opened, so never waited for a writer.
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }
}
