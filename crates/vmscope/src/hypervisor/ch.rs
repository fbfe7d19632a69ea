//! Cloud Hypervisor's API: `GET /api/v1/vm.counters` over its `--api-socket`.
//!
//! Reads: the unix socket the VM's command line names (`--api-socket
//! PATH` or `path=PATH`). Emits: the disks' counters
//! ([`vmscope_proc::ChDiskCounters`]). Fails: [`ApiError`] by kind, within
//! the deadline it is given: the connect does not block, every read and
//! write has a timeout of what is left, the answer is refused past
//! [`MAX_RESPONSE`] bytes, a status other than 200 is a `protocol` error and
//! a body that is not the documented JSON a `parse` error. One request per
//! connection (`Connection: close`), like the QMP client.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use vmscope_proc::ChDiskCounters;

use super::qmp::{ApiError, connect_nonblocking};

/// The largest answer read (head and body).
pub const MAX_RESPONSE: usize = 1 << 20;

const REQUEST: &[u8] = b"GET /api/v1/vm.counters HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n";

fn left(deadline: Instant, step: &'static str) -> Result<std::time::Duration, ApiError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(ApiError::Timeout { step })
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One poll of a Cloud Hypervisor API socket.
pub fn poll(path: &Path, deadline: Instant) -> Result<Vec<ChDiskCounters>, ApiError> {
    const STEP: &str = "vm.counters";
    let mut s = connect_nonblocking(path).map_err(|source| ApiError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    let io = |source| ApiError::Io { step: STEP, source };
    s.set_write_timeout(Some(left(deadline, STEP)?))
        .map_err(io)?;
    s.write_all(REQUEST).map_err(|e| {
        if timed_out(&e) {
            ApiError::Timeout { step: STEP }
        } else {
            ApiError::Io {
                step: STEP,
                source: e,
            }
        }
    })?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // A complete answer (head + Content-Length body) ends the read
        // even if the server keeps the connection open.
        if let Some(body) = complete(&buf)? {
            return finish(body);
        }
        if buf.len() > MAX_RESPONSE {
            return Err(ApiError::Protocol {
                step: STEP,
                what: format!("an answer longer than {MAX_RESPONSE} bytes"),
            });
        }
        s.set_read_timeout(Some(left(deadline, STEP)?))
            .map_err(io)?;
        match s.read(&mut chunk) {
            Ok(0) => {
                // Closed: whatever came is the whole answer.
                return match complete_at_eof(&buf)? {
                    Some(body) => finish(body),
                    None => Err(ApiError::Protocol {
                        step: STEP,
                        what: "the API closed the connection before a whole answer".into(),
                    }),
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) => return Err(ApiError::Timeout { step: STEP }),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

fn finish(body: &[u8]) -> Result<Vec<ChDiskCounters>, ApiError> {
    vmscope_proc::parse_ch_counters(body).map_err(|source| ApiError::Parse {
        step: "vm.counters",
        source,
    })
}

/// The head of `buf` if it has arrived: (status, header length, Content-Length).
fn head(buf: &[u8]) -> Result<Option<(u16, usize, Option<usize>)>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ApiError::Protocol {
                step: "vm.counters",
                what: format!("not an HTTP answer: {e}"),
            });
        }
    };
    let status = resp.code.unwrap_or(0);
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    Ok(Some((status, n, len)))
}

fn check_status(status: u16) -> Result<(), ApiError> {
    if status == 200 {
        Ok(())
    } else {
        Err(ApiError::Protocol {
            step: "vm.counters",
            what: format!("HTTP status {status}"),
        })
    }
}

/// The body, once head and Content-Length body are all in `buf`.
fn complete(buf: &[u8]) -> Result<Option<&[u8]>, ApiError> {
    let Some((status, n, Some(len))) = head(buf)? else {
        return Ok(None);
    };
    check_status(status)?;
    if len > MAX_RESPONSE {
        return Err(ApiError::Protocol {
            step: "vm.counters",
            what: format!("an answer longer than {MAX_RESPONSE} bytes"),
        });
    }
    Ok(buf.get(n..n + len))
}

/// The body at end of stream: everything after the head when there is no
/// Content-Length.
fn complete_at_eof(buf: &[u8]) -> Result<Option<&[u8]>, ApiError> {
    match head(buf)? {
        Some((status, n, None)) => {
            check_status(status)?;
            Ok(buf.get(n..))
        }
        Some((status, n, Some(len))) => {
            check_status(status)?;
            Ok(buf.get(n..n + len))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    //! Against servers on real unix sockets that answer as Cloud
    //! Hypervisor's API does (micro_http: HTTP/1.1, Content-Length), and as
    //! it must not.
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    use super::*;

    const COUNTERS: &str = r#"{"_disk0":{"read_bytes":2560,"write_bytes":512,"read_ops":2,"write_ops":1},"_net1":{"rx_bytes":1,"rx_frames":1,"tx_bytes":2,"tx_frames":1}}"#;

    /// A server answering every request with `answer(request line)`;
    /// `None`: say nothing and hold the connection.
    fn server(
        answer: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ch.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut first = String::new();
                let _ = r.read_line(&mut first);
                // The rest of the head.
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                match answer(&first) {
                    Some(a) => {
                        let _ = c.write_all(&a);
                        held.push(c);
                    }
                    None => held.push(c),
                }
            }
        });
        (dir, path)
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(500)
    }

    #[test]
    fn reads_the_disks() {
        let (_d, p) = server(|req| {
            assert_eq!(req, "GET /api/v1/vm.counters HTTP/1.1\r\n");
            Some(ok(COUNTERS))
        });
        let disks = poll(&p, soon()).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].device, "_disk0");
        assert_eq!((disks[0].read_bytes, disks[0].write_requests), (2560, 1));
    }

    #[test]
    fn failures_by_kind_within_the_deadline() {
        type Answer = fn(&str) -> Option<Vec<u8>>;
        let cases: [(Answer, &str); 6] = [
            (|_| None, "timeout"),
            (
                |_| Some(b"HTTP/1.1 500 \r\nContent-Length: 0\r\n\r\n".to_vec()),
                "protocol",
            ),
            (
                |_| Some(b"\x00\x01 not http at all\r\n\r\n".to_vec()),
                "protocol",
            ),
            (|_| Some(ok("{\"_disk0\": {\"read_ops\": 1")), "parse"),
            (|_| Some(ok("[1, 2]")), "parse"),
            // Promises more than it sends, then stalls.
            (
                |_| Some(b"HTTP/1.1 200 \r\nContent-Length: 100\r\n\r\n{}".to_vec()),
                "timeout",
            ),
        ];
        for (answer, kind) in cases {
            let (_d, p) = server(answer);
            let t = Instant::now();
            let e = poll(&p, t + Duration::from_millis(300)).unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(
                t.elapsed() < Duration::from_millis(800),
                "{:?}",
                t.elapsed()
            );
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            poll(&dir.path().join("no.sock"), soon())
                .unwrap_err()
                .kind(),
            "connect"
        );
    }

    #[test]
    fn an_oversized_answer_is_refused() {
        let (_d, p) = server(|_| {
            Some(
                format!(
                    "HTTP/1.1 200 \r\nContent-Length: {}\r\n\r\n",
                    MAX_RESPONSE + 1
                )
                .into_bytes(),
            )
        });
        assert_eq!(poll(&p, soon()).unwrap_err().kind(), "protocol");
        let (_d, p) = server(|_| {
            let mut a = b"HTTP/1.1 200 \r\n\r\n".to_vec();
            a.resize(MAX_RESPONSE + 10, b' ');
            Some(a)
        });
        assert_eq!(
            poll(&p, Instant::now() + Duration::from_secs(5))
                .unwrap_err()
                .kind(),
            "protocol"
        );
    }
}
