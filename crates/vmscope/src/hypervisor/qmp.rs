//! A QMP client: one short conversation with a QEMU monitor socket.
//!
//! Reads: the unix socket a VM's command line names (`-qmp unix:...` or
//! `-chardev socket` + `-mon mode=control`, found by `vmscope_proc`).
//! Sends: `qmp_capabilities`, `query-blockstats`, `qom-list` (once per VM,
//! to find the balloon), `query-balloon` and `qom-get ... guest-stats`.
//! Emits: [`QmpReading`], the figures of one poll.
//! Fails: [`ApiError`], by kind; never panics and never waits past the
//! deadline it is given: the connect does not block (a full backlog is an
//! error, not a wait), every read and write has a timeout set to what is
//! left of the deadline, a line longer than [`MAX_LINE`] is refused, and at
//! most [`MAX_SKIPPED`] events are skipped while waiting for an answer.
//!
//! Why connect per poll rather than hold the connection: a QEMU monitor
//! serves one client at a time, so a held connection would lock operators
//! (and their tools) out of that monitor; a poll holds it for a few
//! milliseconds per interval.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmscope_proc::{GuestMemStats, ParseError, QmpBlockStats, QmpMessage};

/// The longest line read from a monitor (a `query-blockstats` answer for
/// 64 disks is about 150 KiB).
pub const MAX_LINE: usize = 1 << 20;
/// Events skipped while waiting for one answer before giving up.
pub const MAX_SKIPPED: usize = 64;

/// Why a poll of an API failed, by bounded kind.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer to {step} within the deadline")]
    Timeout { step: &'static str },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Parse {
        step: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("{step}: {what}")]
    Protocol { step: &'static str, what: String },
}

impl ApiError {
    /// The bounded `kind` label of the error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Connect { .. } => "connect",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Io { .. } => "io",
            ApiError::Parse { .. } => "parse",
            ApiError::Protocol { .. } => "protocol",
        }
    }

    /// Every kind, in the order the counters list them.
    pub const KINDS: [&'static str; 5] = ["connect", "timeout", "io", "parse", "protocol"];
}

/// One connected, negotiated monitor.
pub struct QmpClient {
    stream: UnixStream,
    deadline: Instant,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as lines.
    consumed: usize,
    /// The last command got its answer (`return` or a QMP `error`).
    answered: bool,
}

/// Connects without blocking: a listener whose backlog is full (a QEMU
/// busy with another client does not accept) is an error right away.
pub(crate) fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::connect(&fd, &addr)?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

impl QmpClient {
    /// Connects to `path`, reads the greeting and leaves negotiation mode,
    /// all before `deadline`.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Self, ApiError> {
        let stream = connect_nonblocking(path).map_err(|source| ApiError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = QmpClient {
            stream,
            deadline,
            buf: Vec::with_capacity(4096),
            consumed: 0,
            answered: false,
        };
        match c.message("greeting")? {
            QmpMessage::Greeting { .. } => {}
            other => {
                return Err(ApiError::Protocol {
                    step: "greeting",
                    what: format!("expected the QMP greeting, got {other:?}"),
                });
            }
        }
        c.execute("qmp_capabilities", None)?;
        Ok(c)
    }

    /// True while the conversation is in step: the last command got an
    /// answer (a QMP error reply included), nothing is left half-read.
    fn usable(&self) -> bool {
        self.answered
    }

    fn remaining(&self, step: &'static str) -> Result<Duration, ApiError> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ApiError::Timeout { step })
    }

    /// The next complete line, without its newline.
    fn line(&mut self, step: &'static str) -> Result<Vec<u8>, ApiError> {
        loop {
            if let Some(nl) = self.buf[self.consumed..].iter().position(|&b| b == b'\n') {
                let start = self.consumed;
                self.consumed += nl + 1;
                let line = self.buf[start..start + nl].to_vec();
                if self.consumed == self.buf.len() {
                    self.buf.clear();
                    self.consumed = 0;
                }
                return Ok(line);
            }
            if self.buf.len() - self.consumed > MAX_LINE {
                return Err(ApiError::Protocol {
                    step,
                    what: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
            let left = self.remaining(step)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| ApiError::Io { step, source })?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ApiError::Protocol {
                        step,
                        what: "the monitor closed the connection".into(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ApiError::Timeout { step });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ApiError::Io { step, source }),
            }
        }
    }

    /// The next message that is not an event.
    fn message(&mut self, step: &'static str) -> Result<QmpMessage, ApiError> {
        for _ in 0..=MAX_SKIPPED {
            let line = self.line(step)?;
            match vmscope_proc::parse_qmp_message(&line) {
                Ok(QmpMessage::Event) => continue,
                Ok(m) => return Ok(m),
                Err(source) => return Err(ApiError::Parse { step, source }),
            }
        }
        Err(ApiError::Protocol {
            step,
            what: format!("more than {MAX_SKIPPED} events and no answer"),
        })
    }

    /// Runs one command; its `return` value, or its error as a protocol
    /// error (`Err(Ok(..))` is never returned: QMP errors carry their class).
    pub fn execute(&mut self, cmd: &'static str, args: Option<Value>) -> Result<Value, ApiError> {
        self.answered = false;
        let mut req = match args {
            Some(a) => json!({"execute": cmd, "arguments": a}),
            None => json!({"execute": cmd}),
        }
        .to_string();
        req.push('\n');
        let left = self.remaining(cmd)?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|source| ApiError::Io { step: cmd, source })?;
        self.stream.write_all(req.as_bytes()).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                ApiError::Timeout { step: cmd }
            } else {
                ApiError::Io {
                    step: cmd,
                    source: e,
                }
            }
        })?;
        let answer = self.message(cmd)?;
        self.answered = matches!(answer, QmpMessage::Return(_) | QmpMessage::Error { .. });
        match answer {
            QmpMessage::Return(v) => Ok(v),
            QmpMessage::Error { class, desc } => Err(ApiError::Protocol {
                step: cmd,
                what: format!("{class}: {desc}"),
            }),
            other => Err(ApiError::Protocol {
                step: cmd,
                what: format!("unexpected {other:?}"),
            }),
        }
    }
}

/// What one poll of a QEMU monitor found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QmpReading {
    pub disks: Vec<QmpBlockStats>,
    /// `query-balloon` `actual`, when the VM has a balloon device.
    pub balloon_bytes: Option<u64>,
    /// The guest's own report, when its driver sends one.
    pub guest: Option<GuestMemStats>,
}

/// Where a VM's balloon device sits in the QOM tree, once looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BalloonPath {
    #[default]
    Unknown,
    None,
    At(String),
}

fn parsed<T>(step: &'static str, r: Result<T, ParseError>) -> Result<T, ApiError> {
    r.map_err(|source| ApiError::Parse { step, source })
}

/// The balloon's size and the guest's report, looking the balloon up first
/// when its place is not known yet. `None`: the VM has no balloon.
fn balloon_figures(
    c: &mut QmpClient,
    balloon: &mut BalloonPath,
) -> Result<Option<(u64, Option<GuestMemStats>)>, ApiError> {
    if *balloon == BalloonPath::Unknown {
        *balloon = BalloonPath::None;
        for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
            let list = c.execute("qom-list", Some(json!({ "path": parent })))?;
            if let Some(name) = vmscope_proc::balloon_child(&list) {
                *balloon = BalloonPath::At(format!("{parent}/{name}"));
                break;
            }
        }
    }
    let BalloonPath::At(path) = balloon.clone() else {
        return Ok(None);
    };
    let b = c.execute("query-balloon", None)?;
    let bytes = parsed("query-balloon", vmscope_proc::parse_query_balloon(&b))?;
    let g = c.execute(
        "qom-get",
        Some(json!({"path": path.as_str(), "property": "guest-stats"})),
    )?;
    let guest = parsed("qom-get guest-stats", vmscope_proc::parse_guest_stats(&g))?;
    Ok(Some((bytes, guest)))
}

/// One poll: block stats and, where there is a balloon, its size and the
/// guest's statistics. `balloon` is looked up on the first poll of a VM
/// and kept by the caller (a balloon is rarely hot-plugged; a VM restarted
/// with one is a new VM).
pub fn poll(
    path: &Path,
    deadline: Instant,
    balloon: &mut BalloonPath,
) -> Result<QmpReading, ApiError> {
    let mut c = QmpClient::connect(path, deadline)?;
    let stats = c.execute("query-blockstats", None)?;
    let disks = parsed("query-blockstats", vmscope_proc::parse_blockstats(&stats))?;
    let mut reading = QmpReading {
        disks,
        ..QmpReading::default()
    };
    // The balloon is optional: a QEMU that refuses these commands (QMP
    // error: no such command, no balloon any more) still gives its disks.
    // Anything else (timeout, garbage) fails the poll.
    match balloon_figures(&mut c, balloon) {
        Ok(Some((bytes, guest))) => {
            reading.balloon_bytes = Some(bytes);
            reading.guest = guest;
        }
        Ok(None) => {}
        // Looked up again next poll.
        Err(ApiError::Protocol { .. }) if c.usable() => *balloon = BalloonPath::Unknown,
        Err(e) => return Err(e),
    }
    Ok(reading)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    //! The client against scripted monitors on real unix sockets: what QEMU
    //! sends is recorded from QEMU 7.2; the failures are the ones a real
    //! monitor cannot be made to produce on demand (tests/real/vm_disk.rs
    //! runs the client against real QEMU).
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    use super::*;

    pub(crate) const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A monitor at a fresh path that answers each command with `answer`
    /// (None: close), after sending `greeting`.
    pub(crate) fn monitor(
        greeting: Option<&'static str>,
        answer: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        monitor_at(&path, greeting, answer);
        (dir, path)
    }

    /// [`monitor`] listening at `path` (which must not exist yet), for as
    /// long as the test runs.
    pub(crate) fn monitor_at(
        path: &std::path::Path,
        greeting: Option<&'static str>,
        answer: impl Fn(&str) -> Option<String> + Send + 'static,
    ) {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                if let Some(g) = greeting {
                    let _ = conn.write_all(format!("{g}\r\n").as_bytes());
                } else {
                    // Say nothing: hold the connection open.
                    std::thread::sleep(Duration::from_secs(10));
                    continue;
                }
                let mut lines = BufReader::new(conn.try_clone().unwrap()).lines();
                while let Some(Ok(line)) = lines.next() {
                    match answer(&line) {
                        Some(a) => {
                            if conn.write_all(a.as_bytes()).is_err() {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        });
    }

    pub(crate) fn qemu_like(line: &str) -> Option<String> {
        let v: Value = serde_json::from_str(line).ok()?;
        let cmd = v.get("execute")?.as_str()?;
        let ret = match cmd {
            "qmp_capabilities" => "{}".to_string(),
            "query-blockstats" => r#"[{"device": "", "qdev": "/machine/peripheral/vd0/virtio-backend", "stats": {"rd_bytes": 2560, "wr_bytes": 512, "rd_operations": 2, "wr_operations": 1, "flush_operations": 0}}]"#.to_string(),
            "qom-list" => {
                if v["arguments"]["path"] == "/machine/peripheral-anon" {
                    r#"[{"name": "type", "type": "string"}, {"name": "device[0]", "type": "child<virtio-balloon-pci>"}]"#.to_string()
                } else {
                    r#"[{"name": "type", "type": "string"}, {"name": "vd0", "type": "child<virtio-blk-pci>"}]"#.to_string()
                }
            }
            "query-balloon" => r#"{"actual": 134217728}"#.to_string(),
            "qom-get" => {
                assert_eq!(v["arguments"]["path"], "/machine/peripheral-anon/device[0]");
                r#"{"stats": {"stat-total-memory": 120000000, "stat-free-memory": 80000000, "stat-disk-caches": 10000000}, "last-update": 1764590000}"#.to_string()
            }
            _ => return Some(r#"{"error": {"class": "CommandNotFound", "desc": "no"}}"#.to_string() + "\n"),
        };
        // An event first, as QEMU may send one at any time.
        Some(format!(
            "{{\"timestamp\": {{\"seconds\": 1, \"microseconds\": 2}}, \"event\": \"RESUME\"}}\n{{\"return\": {ret}}}\r\n"
        ))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(500)
    }

    #[test]
    fn polls_disks_and_balloon_and_remembers_where_the_balloon_is() {
        let (_d, path) = monitor(Some(GREETING), qemu_like);
        let mut balloon = BalloonPath::Unknown;
        let r = poll(&path, soon(), &mut balloon).unwrap();
        assert_eq!(r.disks.len(), 1);
        assert_eq!(r.disks[0].device, "vd0");
        assert_eq!(r.disks[0].read_bytes, 2560);
        assert_eq!(r.balloon_bytes, Some(128 << 20));
        let g = r.guest.unwrap();
        assert_eq!(g.used_bytes(), Some(30_000_000));
        assert_eq!(
            balloon,
            BalloonPath::At("/machine/peripheral-anon/device[0]".into())
        );
        // Second poll: the balloon is not looked up again.
        let again = poll(&path, soon(), &mut balloon).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn a_qemu_refusing_the_balloon_commands_still_gives_its_disks() {
        let (_d, path) = monitor(Some(GREETING), |l| {
            if l.contains("qom-list") {
                Some(
                    "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no qom-list\"}}\n"
                        .into(),
                )
            } else {
                qemu_like(l)
            }
        });
        let mut balloon = BalloonPath::Unknown;
        let r = poll(&path, soon(), &mut balloon).unwrap();
        assert_eq!(r.disks[0].read_bytes, 2560);
        assert_eq!((r.balloon_bytes, r.guest), (None, None));
        assert_eq!(balloon, BalloonPath::Unknown);
    }

    #[test]
    fn a_silent_monitor_times_out_at_the_deadline() {
        let (_d, path) = monitor(None, |_| None);
        let t = Instant::now();
        let e = poll(
            &path,
            t + Duration::from_millis(300),
            &mut BalloonPath::Unknown,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "timeout", "{e}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(800),
            "{took:?}"
        );
    }

    #[test]
    fn a_slow_answer_times_out_at_the_deadline() {
        let (_d, path) = monitor(Some(GREETING), |line| {
            if line.contains("query-blockstats") {
                std::thread::sleep(Duration::from_secs(3));
            }
            qemu_like(line)
        });
        let t = Instant::now();
        let e = poll(
            &path,
            t + Duration::from_millis(400),
            &mut BalloonPath::Unknown,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "timeout", "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }

    /// A greeting, how to answer, and the error kind that must follow.
    type Case = (
        Option<&'static str>,
        fn(&str) -> Option<String>,
        &'static str,
    );

    #[test]
    fn garbage_errors_and_closes_are_counted_by_kind() {
        let cases: Vec<Case> = vec![
            (Some("\u{1}\u{2}garbage{{{"), |_| None, "parse"),
            (Some(r#"{"return": {}}"#), |_| None, "protocol"),
            (Some(GREETING), |_| None, "protocol"),
            (
                Some(GREETING),
                |_| Some("not json at all\n".into()),
                "parse",
            ),
            (
                Some(GREETING),
                |l| {
                    if l.contains("blockstats") {
                        Some(
                            "{\"return\": [{\"device\": \"d\", \"stats\": {\"rd_bytes\": -1}}]}\n"
                                .into(),
                        )
                    } else {
                        qemu_like(l)
                    }
                },
                "parse",
            ),
            (
                Some(GREETING),
                |l| {
                    if l.contains("blockstats") {
                        Some(
                            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n"
                                .into(),
                        )
                    } else {
                        qemu_like(l)
                    }
                },
                "protocol",
            ),
            (
                Some(GREETING),
                |l| {
                    if l.contains("blockstats") {
                        Some("{\"event\": \"X\"}\n".repeat(MAX_SKIPPED + 1))
                    } else {
                        qemu_like(l)
                    }
                },
                "protocol",
            ),
        ];
        for (greeting, answer, kind) in cases {
            let (_d, path) = monitor(greeting, answer);
            let e = poll(&path, soon(), &mut BalloonPath::Unknown).unwrap_err();
            assert_eq!(e.kind(), kind, "{greeting:?}: {e}");
        }
    }

    #[test]
    fn a_line_without_end_is_refused_past_the_bound() {
        let (_d, path) = monitor(Some(GREETING), |l| {
            if l.contains("blockstats") {
                Some("[".repeat(MAX_LINE + 10))
            } else {
                qemu_like(l)
            }
        });
        let e = poll(
            &path,
            Instant::now() + Duration::from_secs(5),
            &mut BalloonPath::Unknown,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "protocol", "{e}");
        assert!(e.to_string().contains("longer than"), "{e}");
    }

    #[test]
    fn no_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = poll(
            &dir.path().join("none.sock"),
            soon(),
            &mut BalloonPath::Unknown,
        )
        .unwrap_err();
        assert_eq!(e.kind(), "connect");
        assert!(e.to_string().contains("none.sock"), "{e}");
    }
}
