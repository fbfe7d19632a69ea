//! A plain QMP client for tests: the independent observer that vmscope's
//! per-device figures are compared with. Blocking, line by line, events
//! skipped; panics on anything unexpected (it talks to a real QEMU).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to a QMP socket (retrying while QEMU comes up) and leaves
    /// negotiation mode.
    pub fn connect(path: &Path) -> Qmp {
        let stream = super::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            UnixStream::connect(path).ok()
        })
        .map(|(s, _)| s)
        .unwrap_or_else(|| panic!("QMP socket {} does not accept", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = q.read();
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        q.execute("qmp_capabilities", None);
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read from QMP");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent {line:?}: {e}"))
    }

    /// Runs `cmd`; its `return` value.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Value {
        let req = match args {
            Some(a) => json!({"execute": cmd, "arguments": a}),
            None => json!({"execute": cmd}),
        };
        writeln!(self.writer, "{req}").expect("write to QMP");
        loop {
            let mut v = self.read();
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get_mut("return") {
                return r.take();
            }
            panic!("QMP {cmd}: {v}");
        }
    }

    /// `query-blockstats`' counters of the device whose drive id is `drive`.
    pub fn blockstats(&mut self, drive: &str) -> Value {
        let all = self.execute("query-blockstats", None);
        all.as_array()
            .and_then(|l| l.iter().find(|d| d["device"] == drive))
            .map(|d| d["stats"].clone())
            .unwrap_or_else(|| panic!("no drive {drive} in {all}"))
    }
}
