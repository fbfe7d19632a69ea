//! A libvirt client for one question: every running domain's disk and
//! balloon statistics, in one `virConnectGetAllDomainStats(BLOCK|BALLOON)`
//! per poll.
//!
//! Reads: libvirtd's read-only socket (`/run/libvirt/libvirt-sock-ro`),
//! speaking libvirt's remote protocol (messages in
//! `vmscope_proc::libvirt_rpc`). Emits: [`LibvirtDomainStats`] per running
//! domain, keyed by UUID. Fails: [`ApiError`] by kind (`connect`, `timeout`,
//! `io`, `parse`, `protocol` for an error reply or an authentication
//! libvirtd wants and vmscope does not speak); never waits past the
//! deadline it is given (the connect does not block, every read and write
//! has a timeout of what is left).
//!
//! The connection is made on the first poll and held: libvirtd serves many
//! clients at once (unlike a QEMU monitor), and holding it saves the three
//! round trips of opening. A connection that failed in any way is dropped
//! and the next poll opens a new one, so a restarted libvirtd is picked up
//! on the poll after (or on the same poll, when the failure was the old
//! connection's and time is left).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmscope_proc::libvirt_rpc::{self as rpc, LibvirtDomainStats};

use super::qmp::{ApiError, connect_nonblocking};

/// The connection URI opened on the socket.
pub const URI: &str = "qemu:///system";
/// `REMOTE_AUTH_POLKIT`: libvirtd lets root through without asking polkit.
const AUTH_POLKIT: i32 = 2;
const PROC_AUTH_POLKIT: i32 = 70;
/// Messages that are not the answer (events, keepalives) skipped while
/// waiting for it.
const MAX_SKIPPED: usize = 64;

/// The client: where libvirtd listens and the connection, when open.
pub struct LibvirtClient {
    path: PathBuf,
    conn: Option<Conn>,
    /// The last call failed (for the poller's log-once-per-change).
    pub down: bool,
}

struct Conn {
    stream: UnixStream,
    serial: u32,
}

impl LibvirtClient {
    pub fn new(path: PathBuf) -> Self {
        LibvirtClient {
            path,
            conn: None,
            down: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every running domain's figures, by UUID.
    pub fn all_domain_stats(
        &mut self,
        deadline: Instant,
    ) -> Result<HashMap<String, LibvirtDomainStats>, ApiError> {
        let held = self.conn.is_some();
        match self.try_stats(deadline) {
            Ok(s) => Ok(s),
            // A held connection that broke (libvirtd restarted): open a
            // new one at once if time is left.
            Err(ApiError::Io { .. } | ApiError::Protocol { .. })
                if held && self.conn.is_none() && Instant::now() < deadline =>
            {
                self.try_stats(deadline)
            }
            Err(e) => Err(e),
        }
    }

    fn try_stats(
        &mut self,
        deadline: Instant,
    ) -> Result<HashMap<String, LibvirtDomainStats>, ApiError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path, deadline)?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(ApiError::Protocol {
                step: "connect",
                what: "no connection".into(),
            });
        };
        let body = rpc::get_all_domain_stats_args(
            rpc::STATS_BLOCK | rpc::STATS_BALLOON,
            rpc::STATS_ACTIVE | rpc::STATS_NOWAIT,
        );
        let res = conn
            .call(
                rpc::PROC_CONNECT_GET_ALL_DOMAIN_STATS,
                &body,
                deadline,
                "getting the domain stats",
            )
            .and_then(|reply| {
                rpc::parse_all_domain_stats(&reply).map_err(|source| ApiError::Parse {
                    step: "the domain stats",
                    source,
                })
            });
        match res {
            Ok(records) => Ok(records
                .iter()
                .map(rpc::domain_stats)
                .map(|s| (s.uuid.clone(), s))
                .collect()),
            Err(e) => {
                // Out of step (a half-read answer) or broken: start afresh.
                self.conn = None;
                Err(e)
            }
        }
    }
}

impl Drop for LibvirtClient {
    fn drop(&mut self) {
        // Say goodbye when it costs nothing (libvirtd logs an unclosed
        // connection otherwise); never wait for it.
        if let Some(c) = self.conn.as_mut() {
            let _ = c.stream.set_write_timeout(Some(Duration::from_millis(50)));
            let msg = rpc::encode_call(rpc::PROC_CONNECT_CLOSE, c.serial, &[]);
            let _ = c.stream.write_all(&msg);
        }
    }
}

/// Connects, authenticates (none, or polkit which libvirtd waives for
/// root) and opens the read-only connection.
fn open(path: &Path, deadline: Instant) -> Result<Conn, ApiError> {
    let stream = connect_nonblocking(path).map_err(|source| ApiError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    let mut c = Conn { stream, serial: 0 };
    let auth = c.call(rpc::PROC_AUTH_LIST, &[], deadline, "auth list")?;
    let types = rpc::parse_auth_list(&auth).map_err(|source| ApiError::Parse {
        step: "auth list",
        source,
    })?;
    if !types.is_empty() && !types.contains(&rpc::AUTH_NONE) {
        if types.contains(&AUTH_POLKIT) {
            c.call(PROC_AUTH_POLKIT, &[], deadline, "polkit auth")?;
        } else {
            return Err(ApiError::Protocol {
                step: "auth list",
                what: format!(
                    "libvirtd asks for authentication types {types:?} on this socket; vmscope speaks none and polkit"
                ),
            });
        }
    }
    c.call(
        rpc::PROC_CONNECT_OPEN,
        &rpc::connect_open_args(URI, rpc::CONNECT_RO),
        deadline,
        "connect open",
    )?;
    Ok(c)
}

fn remaining(deadline: Instant, step: &'static str) -> Result<Duration, ApiError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(ApiError::Timeout { step })
}

fn io_err(step: &'static str, e: std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ApiError::Timeout { step },
        _ => ApiError::Io { step, source: e },
    }
}

impl Conn {
    /// One call and its reply's body.
    fn call(
        &mut self,
        procedure: i32,
        body: &[u8],
        deadline: Instant,
        step: &'static str,
    ) -> Result<Vec<u8>, ApiError> {
        self.serial = self.serial.wrapping_add(1);
        let serial = self.serial;
        let msg = rpc::encode_call(procedure, serial, body);
        self.stream
            .set_write_timeout(Some(remaining(deadline, step)?))
            .map_err(|e| io_err(step, e))?;
        self.stream.write_all(&msg).map_err(|e| io_err(step, e))?;
        for _ in 0..=MAX_SKIPPED {
            let mut word = [0u8; 4];
            self.read_full(&mut word, deadline, step)?;
            let len = rpc::message_len(word).map_err(|source| ApiError::Parse { step, source })?;
            let mut msg = vec![0u8; len - 4];
            self.read_full(&mut msg, deadline, step)?;
            let (h, reply) =
                rpc::parse_header(&msg).map_err(|source| ApiError::Parse { step, source })?;
            if h.program != rpc::REMOTE_PROGRAM
                || h.kind != rpc::TYPE_REPLY
                || h.serial != serial
                || h.procedure != procedure
            {
                // An event or a keepalive: not ours.
                continue;
            }
            return match h.status {
                rpc::STATUS_OK => Ok(reply.to_vec()),
                rpc::STATUS_ERROR => Err(ApiError::Protocol {
                    step,
                    what: rpc::parse_error(reply)
                        .unwrap_or_else(|_| "an error reply that does not parse".into()),
                }),
                s => Err(ApiError::Protocol {
                    step,
                    what: format!("reply status {s}"),
                }),
            };
        }
        Err(ApiError::Protocol {
            step,
            what: format!("more than {MAX_SKIPPED} other messages before the answer"),
        })
    }

    fn read_full(
        &mut self,
        mut buf: &mut [u8],
        deadline: Instant,
        step: &'static str,
    ) -> Result<(), ApiError> {
        while !buf.is_empty() {
            self.stream
                .set_read_timeout(Some(remaining(deadline, step)?))
                .map_err(|e| io_err(step, e))?;
            match self.stream.read(buf) {
                Ok(0) => {
                    return Err(ApiError::Protocol {
                        step,
                        what: "libvirtd closed the connection".into(),
                    });
                }
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(step, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::net::UnixListener;

    use super::*;

    fn put(out: &mut Vec<u8>, words: &[u32]) {
        for w in words {
            out.extend_from_slice(&w.to_be_bytes());
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        put(out, &[s.len() as u32]);
        out.extend_from_slice(s.as_bytes());
        out.resize(out.len() + (4 - s.len() % 4) % 4, 0);
    }

    /// A server speaking the protocol as libvirtd does, answering each call
    /// with `answer(procedure)` (`None`: say nothing).
    fn server(
        answer: impl Fn(i32) -> Option<(u32, Vec<u8>)> + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf) {
        server_closing(answer, usize::MAX)
    }

    /// [`server`] that drops each connection after `calls` answers, as a
    /// libvirtd that restarts between two polls.
    fn server_closing(
        answer: impl Fn(i32) -> Option<(u32, Vec<u8>)> + Send + 'static,
        calls: usize,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libvirt-sock-ro");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                for _ in 0..calls {
                    let mut w = [0u8; 4];
                    if s.read_exact(&mut w).is_err() {
                        break;
                    }
                    let mut m = vec![0u8; u32::from_be_bytes(w) as usize - 4];
                    if s.read_exact(&mut m).is_err() {
                        break;
                    }
                    let (h, _) = rpc::parse_header(&m).unwrap();
                    let Some((status, body)) = answer(h.procedure) else {
                        std::thread::sleep(Duration::from_secs(5));
                        break;
                    };
                    let mut out = Vec::new();
                    // An event first, which the client must skip.
                    put(&mut out, &[28, rpc::REMOTE_PROGRAM, 1, 107, 2, 0, 0]);
                    let len = 4 + 24 + body.len() as u32;
                    put(
                        &mut out,
                        &[
                            len,
                            rpc::REMOTE_PROGRAM,
                            1,
                            h.procedure as u32,
                            rpc::TYPE_REPLY,
                            h.serial,
                            status,
                        ],
                    );
                    out.extend_from_slice(&body);
                    if s.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
        (dir, path)
    }

    fn stats_body() -> Vec<u8> {
        let mut b = Vec::new();
        put(&mut b, &[1]);
        put_str(&mut b, "web1");
        b.extend_from_slice(&[0xab; 16]);
        // id 1, five parameters.
        put(&mut b, &[1, 5]);
        put_str(&mut b, "block.0.name");
        put(&mut b, &[7]);
        put_str(&mut b, "vda");
        for (k, v) in [("rd.bytes", 4096u64), ("wr.bytes", 512), ("rd.reqs", 8)] {
            put_str(&mut b, &format!("block.0.{k}"));
            put(&mut b, &[4, 0, v as u32]);
        }
        put_str(&mut b, "block.0.wr.reqs");
        put(&mut b, &[4, 0, 1]);
        b
    }

    #[test]
    fn opens_once_asks_and_reads_every_domain() {
        let (_d, path) = server(|p| match p {
            rpc::PROC_AUTH_LIST => Some((0, vec![0, 0, 0, 1, 0, 0, 0, 0])),
            rpc::PROC_CONNECT_OPEN => Some((0, vec![])),
            rpc::PROC_CONNECT_GET_ALL_DOMAIN_STATS => Some((0, stats_body())),
            _ => Some((0, vec![])),
        });
        let mut c = LibvirtClient::new(path);
        let soon = || Instant::now() + Duration::from_secs(2);
        let s = c.all_domain_stats(soon()).unwrap();
        let d = &s["abababab-abab-abab-abab-abababababab"];
        assert_eq!(d.name, "web1");
        assert_eq!(d.disks[0].device, "vda");
        assert_eq!(d.disks[0].read_bytes, 4096);
        assert_eq!(d.disks[0].write_requests, 1);
        assert!(c.conn.is_some());
        // The held connection serves the next poll.
        let serial = c.conn.as_ref().unwrap().serial;
        c.all_domain_stats(soon()).unwrap();
        assert_eq!(c.conn.as_ref().unwrap().serial, serial + 1);
    }

    #[test]
    fn a_restarted_libvirtd_is_reconnected_to_within_the_same_poll() {
        // Three answers per connection: auth list, open, one stats call.
        let (_d, path) = server_closing(
            |p| match p {
                rpc::PROC_AUTH_LIST => Some((0, vec![0, 0, 0, 1, 0, 0, 0, 0])),
                rpc::PROC_CONNECT_OPEN => Some((0, vec![])),
                _ => Some((0, stats_body())),
            },
            3,
        );
        let mut c = LibvirtClient::new(path);
        let soon = || Instant::now() + Duration::from_secs(2);
        assert_eq!(c.all_domain_stats(soon()).unwrap().len(), 1);
        // The held connection is gone: the poll opens a new one and answers.
        assert_eq!(c.all_domain_stats(soon()).unwrap().len(), 1);
        assert_eq!(c.conn.as_ref().unwrap().serial, 3);
    }

    #[test]
    fn error_replies_sasl_and_silence_fail_by_kind_within_the_deadline() {
        let (_d, path) = server(|p| match p {
            rpc::PROC_AUTH_LIST => Some((0, vec![0, 0, 0, 1, 0, 0, 0, 0])),
            rpc::PROC_CONNECT_OPEN => {
                let mut e = Vec::new();
                put(&mut e, &[38, 7, 1]);
                put_str(&mut e, "authentication failed");
                put(&mut e, &[2, 0, 0, 0, 0, 0, 0, 0]);
                Some((1, e))
            }
            _ => None,
        });
        let mut c = LibvirtClient::new(path);
        let e = c
            .all_domain_stats(Instant::now() + Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(e.kind(), "protocol");
        assert!(e.to_string().contains("authentication failed"), "{e}");

        let (_d, path) = server(|p| match p {
            rpc::PROC_AUTH_LIST => Some((0, vec![0, 0, 0, 1, 0, 0, 0, 1])),
            _ => None,
        });
        let e = LibvirtClient::new(path)
            .all_domain_stats(Instant::now() + Duration::from_secs(2))
            .unwrap_err();
        assert!(e.to_string().contains("[1]"), "{e}");

        // A libvirtd that accepts and never answers.
        let (_d, path) = server(|_| None);
        let t = Instant::now();
        let e = LibvirtClient::new(path)
            .all_domain_stats(t + Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );

        // Nobody listening.
        let dir = tempfile::tempdir().unwrap();
        let e = LibvirtClient::new(dir.path().join("none"))
            .all_domain_stats(Instant::now() + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.kind(), "connect");
    }
}
