//! QEMU Machine Protocol (QMP) messages, as a monitor socket sends them.
//!
//! The caller reads one line (QMP sends one JSON object per line unless the
//! monitor was started with `pretty=on`) and hands it to
//! [`parse_qmp_message`]; the `return` values of the commands vmscope sends
//! are read by [`parse_blockstats`], [`parse_query_balloon`],
//! [`parse_guest_stats`] and [`balloon_child`]. Nothing here does IO or
//! panics, whatever the bytes: a line that is not JSON, a reply of the wrong
//! shape or a number that does not fit gives a [`ParseError`]
//! ([`FileKind::QmpReply`]) naming the field. Counters are QEMU's own
//! (bytes, operations, nanoseconds), passed through.
//!
//! Formats, as QEMU 7.2 (Debian 12) answers and as `qapi/block-core.json`
//! and `qapi/machine.json` document them back to QEMU 2.x:
//! - greeting: `{"QMP": {"version": {"qemu": {"major": 7, ...}}, "capabilities": [...]}}`
//! - reply: `{"return": ...}` or `{"error": {"class": "...", "desc": "..."}}`,
//!   possibly preceded by events `{"event": "...", ...}`.
//! - `query-blockstats`: a list of `{"device": "drive0", "qdev": "/machine/peripheral/vd0/virtio-backend",
//!   "node-name": "...", "stats": {"rd_bytes": N, "wr_bytes": N, "rd_operations": N, ...}}`.
//! - `query-balloon`: `{"actual": BYTES}`.
//! - `qom-get` of a balloon's `guest-stats`: `{"stats": {"stat-free-memory": N, ...}, "last-update": UNIX_SECONDS}`,
//!   where a statistic the guest did not report is `-1` (sent as 2^64-1).

use serde_json::Value;

use crate::error::{FileKind, ParseError};

const KIND: FileKind = FileKind::QmpReply;

/// The most block devices kept from one `query-blockstats` answer: label
/// values must stay bounded, and no real VM has more.
pub const MAX_BLOCK_DEVICES: usize = 64;

/// One message read from a QMP socket.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    /// The greeting QEMU sends on connect; `version` is (major, minor, micro).
    Greeting { version: Option<(u64, u64, u64)> },
    /// A command's successful answer.
    Return(Value),
    /// A command's failure, as QEMU words it.
    Error { class: String, desc: String },
    /// An asynchronous event (skipped by the client).
    Event,
}

fn json(line: &[u8]) -> Result<Value, ParseError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    serde_json::from_slice(line).map_err(|source| ParseError::Json { kind: KIND, source })
}

fn malformed(what: &'static str) -> ParseError {
    ParseError::Malformed { kind: KIND, what }
}

/// Parses one line of a QMP conversation.
pub fn parse_qmp_message(line: &[u8]) -> Result<QmpMessage, ParseError> {
    let v = json(line)?;
    let Value::Object(mut obj) = v else {
        return Err(malformed("a QMP message is a JSON object"));
    };
    if let Some(ret) = obj.remove("return") {
        return Ok(QmpMessage::Return(ret));
    }
    if let Some(err) = obj.get("error") {
        let text = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .map(|s| s.chars().take(256).collect::<String>())
                .unwrap_or_default()
        };
        return Ok(QmpMessage::Error {
            class: text("class"),
            desc: text("desc"),
        });
    }
    if obj.contains_key("event") {
        return Ok(QmpMessage::Event);
    }
    if let Some(greeting) = obj.get("QMP") {
        let q = greeting.get("version").and_then(|v| v.get("qemu"));
        let n = |k: &str| q.and_then(|q| q.get(k)).and_then(Value::as_u64);
        let version = match (n("major"), n("minor"), n("micro")) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        return Ok(QmpMessage::Greeting { version });
    }
    Err(malformed(
        "a QMP message has `return`, `error`, `event` or `QMP`",
    ))
}

/// One block device's counters from `query-blockstats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QmpBlockStats {
    /// The name the VM's configuration gives the disk: the drive id
    /// (`-drive id=`), else the guest device's id (`-device ...,id=`), else
    /// the block node's name.
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    pub read_time_ns: u64,
    pub write_time_ns: u64,
    pub flush_time_ns: u64,
}

/// `/machine/peripheral/vd0/virtio-backend` -> `vd0`;
/// `/machine/peripheral-anon/device[1]/virtio-backend` -> `device[1]`.
fn qdev_name(qdev: &str) -> Option<&str> {
    let rest = qdev
        .strip_prefix("/machine/peripheral/")
        .or_else(|| qdev.strip_prefix("/machine/peripheral-anon/"))
        .unwrap_or(qdev);
    rest.split('/').find(|s| !s.is_empty())
}

fn counter(stats: &Value, field: &'static str) -> Result<u64, ParseError> {
    match stats.get(field) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| ParseError::invalid(KIND, field, v.to_string().as_bytes())),
        None => Err(ParseError::missing(KIND, field)),
    }
}

/// Optional counters (older QEMU lacks the flush and time fields): absent
/// is 0, present but not a counter is an error.
fn counter_or_zero(stats: &Value, field: &'static str) -> Result<u64, ParseError> {
    match stats.get(field) {
        None => Ok(0),
        Some(_) => counter(stats, field),
    }
}

/// The `return` value of `query-blockstats`: one entry per block device
/// that has a name (an unnamed internal node is skipped), at most
/// [`MAX_BLOCK_DEVICES`], in QEMU's order.
pub fn parse_blockstats(ret: &Value) -> Result<Vec<QmpBlockStats>, ParseError> {
    let list = ret
        .as_array()
        .ok_or_else(|| malformed("query-blockstats returns a list"))?;
    let mut out = Vec::with_capacity(list.len().min(MAX_BLOCK_DEVICES));
    for entry in list {
        if out.len() == MAX_BLOCK_DEVICES {
            break;
        }
        let text = |k: &str| {
            entry
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let device = text("device")
            .or_else(|| text("qdev").and_then(qdev_name))
            .or_else(|| text("node-name"));
        let Some(device) = device else { continue };
        let stats = entry
            .get("stats")
            .filter(|s| s.is_object())
            .ok_or_else(|| ParseError::missing(KIND, "stats"))?;
        out.push(QmpBlockStats {
            device: device.to_string(),
            read_bytes: counter(stats, "rd_bytes")?,
            write_bytes: counter(stats, "wr_bytes")?,
            read_requests: counter(stats, "rd_operations")?,
            write_requests: counter(stats, "wr_operations")?,
            flush_requests: counter_or_zero(stats, "flush_operations")?,
            read_time_ns: counter_or_zero(stats, "rd_total_time_ns")?,
            write_time_ns: counter_or_zero(stats, "wr_total_time_ns")?,
            flush_time_ns: counter_or_zero(stats, "flush_total_time_ns")?,
        });
    }
    Ok(out)
}

/// The `return` value of `query-balloon`: `actual`, the memory the guest
/// has with the balloon applied, in bytes.
pub fn parse_query_balloon(ret: &Value) -> Result<u64, ParseError> {
    counter(ret, "actual")
}

/// What a guest's balloon driver reported (`guest-stats`), in bytes and
/// event counts. `None`: the guest did not report that statistic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestMemStats {
    /// Unix seconds of the guest's last report.
    pub last_update: u64,
    /// The guest's MemTotal (libvirt: `balloon.available`).
    pub total_bytes: Option<u64>,
    /// The guest's MemAvailable (libvirt: `balloon.usable`).
    pub available_bytes: Option<u64>,
    /// The guest's MemFree (libvirt: `balloon.unused`).
    pub free_bytes: Option<u64>,
    /// Page cache the guest could drop (libvirt: `balloon.disk_caches`).
    pub disk_caches_bytes: Option<u64>,
    pub swap_in_bytes: Option<u64>,
    pub swap_out_bytes: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
}

impl GuestMemStats {
    /// Memory in use without buffers and page cache: total - free - caches
    /// (the Nova exporter's `memory_used`), when the guest gave all three.
    pub fn used_bytes(&self) -> Option<u64> {
        let t = self.total_bytes?;
        Some(
            t.saturating_sub(self.free_bytes?)
                .saturating_sub(self.disk_caches_bytes?),
        )
    }
}

/// The `return` value of `qom-get` of a balloon's `guest-stats`. `Ok(None)`
/// when the guest never reported (`last-update` 0: no driver, or no
/// `guest-stats-polling-interval` set).
pub fn parse_guest_stats(ret: &Value) -> Result<Option<GuestMemStats>, ParseError> {
    let last_update = counter(ret, "last-update")?;
    let stats = ret
        .get("stats")
        .filter(|s| s.is_object())
        .ok_or_else(|| ParseError::missing(KIND, "stats"))?;
    if last_update == 0 {
        return Ok(None);
    }
    // QEMU sends -1 (as 2^64-1) for what the guest did not report; older
    // QEMU omits the key.
    let stat = |k: &'static str| -> Result<Option<u64>, ParseError> {
        match stats.get(k) {
            None => Ok(None),
            Some(v) if v.as_i64() == Some(-1) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(u64::MAX) => Ok(None),
                Some(n) => Ok(Some(n)),
                None => Err(ParseError::invalid(KIND, k, v.to_string().as_bytes())),
            },
        }
    };
    Ok(Some(GuestMemStats {
        last_update,
        total_bytes: stat("stat-total-memory")?,
        available_bytes: stat("stat-available-memory")?,
        free_bytes: stat("stat-free-memory")?,
        disk_caches_bytes: stat("stat-disk-caches")?,
        swap_in_bytes: stat("stat-swap-in")?,
        swap_out_bytes: stat("stat-swap-out")?,
        major_faults: stat("stat-major-faults")?,
        minor_faults: stat("stat-minor-faults")?,
    }))
}

/// The name of the first virtio-balloon device in a `qom-list` answer (of
/// `/machine/peripheral` or `/machine/peripheral-anon`), if any.
pub fn balloon_child(ret: &Value) -> Option<&str> {
    ret.as_array()?.iter().find_map(|p| {
        let ty = p.get("type")?.as_str()?;
        ty.starts_with("child<virtio-balloon")
            .then(|| p.get("name")?.as_str())
            .flatten()
            .filter(|n| !n.is_empty())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// QEMU 7.2's answer for a virtio-blk disk the firmware read from
    /// (recorded from Debian 12's qemu-system-x86, trimmed of zero fields).
    const BLOCKSTATS: &str = r##"{"return": [{"device": "drive0", "parent": {"stats": {"flush_total_time_ns": 0, "wr_bytes": 0, "rd_bytes": 0, "rd_operations": 0, "wr_operations": 0, "flush_operations": 0}, "node-name": "#block010"}, "stats": {"unmap_operations": 0, "flush_total_time_ns": 17, "wr_highest_offset": 1024, "wr_total_time_ns": 29000, "wr_bytes": 512, "timed_stats": [], "account_invalid": true, "rd_total_time_ns": 207158, "flush_operations": 3, "wr_operations": 1, "rd_bytes": 2560, "account_failed": true, "rd_operations": 2}, "node-name": "#block148", "qdev": "/machine/peripheral/vd0/virtio-backend"}]}"##;

    fn ret(line: &str) -> Value {
        match parse_qmp_message(line.as_bytes()).unwrap() {
            QmpMessage::Return(v) => v,
            other => panic!("not a return: {other:?}"),
        }
    }

    #[test]
    fn greeting_return_error_event() {
        let g = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;
        assert_eq!(
            parse_qmp_message(g).unwrap(),
            QmpMessage::Greeting {
                version: Some((7, 2, 22))
            }
        );
        assert_eq!(
            parse_qmp_message(br#"{"return": {}}"#).unwrap(),
            QmpMessage::Return(serde_json::json!({}))
        );
        assert_eq!(
            parse_qmp_message(
                br#"{"error": {"class": "CommandNotFound", "desc": "The command query-x has not been found"}}"#
            )
            .unwrap(),
            QmpMessage::Error {
                class: "CommandNotFound".into(),
                desc: "The command query-x has not been found".into()
            }
        );
        assert_eq!(
            parse_qmp_message(
                br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#
            )
            .unwrap(),
            QmpMessage::Event
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\n",
            b"not json",
            b"[1,2]",
            b"42",
            b"{\"return\": ",
            b"{\"something\": 1}",
            b"\xff\xfe{}",
            b"{\"return\": {}}{\"return\": {}}",
        ] {
            assert!(parse_qmp_message(bad).is_err(), "{bad:?}");
        }
        // Nesting deeper than serde_json's limit is an error, not a stack overflow.
        let deep = format!(
            "{{\"return\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse_qmp_message(deep.as_bytes()).is_err());
        // An error without text still reads.
        assert_eq!(
            parse_qmp_message(br#"{"error": 5}"#).unwrap(),
            QmpMessage::Error {
                class: String::new(),
                desc: String::new()
            }
        );
    }

    #[test]
    fn blockstats_of_a_real_answer() {
        let disks = parse_blockstats(&ret(BLOCKSTATS)).unwrap();
        assert_eq!(
            disks,
            vec![QmpBlockStats {
                device: "drive0".into(),
                read_bytes: 2560,
                write_bytes: 512,
                read_requests: 2,
                write_requests: 1,
                flush_requests: 3,
                read_time_ns: 207_158,
                write_time_ns: 29_000,
                flush_time_ns: 17,
            }]
        );
    }

    #[test]
    fn blockstats_device_names() {
        // -blockdev + -device: no drive id; the guest device's id names it.
        let v = serde_json::json!([
            {"device": "", "qdev": "/machine/peripheral/disk1/virtio-backend", "node-name": "n1",
             "stats": {"rd_bytes": 1, "wr_bytes": 2, "rd_operations": 3, "wr_operations": 4}},
            {"device": "", "qdev": "/machine/peripheral-anon/device[3]/virtio-backend",
             "stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}},
            {"node-name": "fmt0",
             "stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}},
            {"device": "", "stats": {"rd_bytes": 9, "wr_bytes": 9, "rd_operations": 9, "wr_operations": 9}}
        ]);
        let disks = parse_blockstats(&v).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["disk1", "device[3]", "fmt0"]);
        // QEMU 2.x has no flush or time fields: 0, not an error.
        assert_eq!(disks[0].flush_requests, 0);
        assert_eq!(disks[0].write_requests, 4);
    }

    #[test]
    fn blockstats_malformed() {
        for bad in [
            serde_json::json!({}),
            serde_json::json!([{"device": "d"}]),
            serde_json::json!([{"device": "d", "stats": []}]),
            serde_json::json!([{"device": "d", "stats": {"rd_bytes": -1, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}}]),
            serde_json::json!([{"device": "d", "stats": {"rd_bytes": "12", "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}}]),
            serde_json::json!([{"device": "d", "stats": {"rd_bytes": 1.5, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}}]),
            serde_json::json!([{"device": "d", "stats": {"wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}}]),
            serde_json::json!([{"device": "d", "stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0, "flush_operations": null}}]),
        ] {
            assert!(parse_blockstats(&bad).is_err(), "{bad}");
        }
        // Bounded: a thousand devices keep the first MAX_BLOCK_DEVICES.
        let many: Vec<Value> = (0..1000)
            .map(|i| serde_json::json!({"device": format!("d{i}"), "stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0}}))
            .collect();
        let disks = parse_blockstats(&Value::Array(many)).unwrap();
        assert_eq!(disks.len(), MAX_BLOCK_DEVICES);
        assert_eq!(disks[63].device, "d63");
    }

    #[test]
    fn balloon_actual() {
        assert_eq!(
            parse_query_balloon(&ret(r#"{"return": {"actual": 67108864}}"#)).unwrap(),
            64 << 20
        );
        assert!(parse_query_balloon(&serde_json::json!({})).is_err());
        assert!(parse_query_balloon(&serde_json::json!({"actual": -5})).is_err());
        assert!(parse_query_balloon(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn guest_stats_never_reported_and_reported() {
        // QEMU 7.2 with no guest driver: every stat -1, last-update 0.
        let none = r#"{"return": {"stats": {"stat-htlb-pgalloc": 18446744073709551615, "stat-swap-out": 18446744073709551615, "stat-available-memory": 18446744073709551615, "stat-free-memory": 18446744073709551615, "stat-total-memory": 18446744073709551615, "stat-disk-caches": 18446744073709551615}, "last-update": 0}}"#;
        assert_eq!(parse_guest_stats(&ret(none)).unwrap(), None);
        let some = r#"{"return": {"stats": {"stat-swap-out": 0, "stat-available-memory": 90000000, "stat-free-memory": 80000000, "stat-minor-faults": 5000, "stat-major-faults": 12, "stat-total-memory": 120000000, "stat-swap-in": 4096, "stat-disk-caches": 10000000, "stat-htlb-pgalloc": 18446744073709551615}, "last-update": 1764590000}}"#;
        let g = parse_guest_stats(&ret(some)).unwrap().unwrap();
        assert_eq!(g.last_update, 1_764_590_000);
        assert_eq!(g.total_bytes, Some(120_000_000));
        assert_eq!(g.available_bytes, Some(90_000_000));
        assert_eq!(g.free_bytes, Some(80_000_000));
        assert_eq!(g.disk_caches_bytes, Some(10_000_000));
        assert_eq!(g.swap_in_bytes, Some(4096));
        assert_eq!(g.swap_out_bytes, Some(0));
        assert_eq!(g.major_faults, Some(12));
        assert_eq!(g.minor_faults, Some(5000));
        assert_eq!(g.used_bytes(), Some(30_000_000));
        // A stat the guest left out (-1, or an older QEMU's missing key).
        let partial = serde_json::json!({"stats": {"stat-total-memory": 100, "stat-free-memory": -1}, "last-update": 5});
        let g = parse_guest_stats(&partial).unwrap().unwrap();
        assert_eq!(
            (g.total_bytes, g.free_bytes, g.used_bytes()),
            (Some(100), None, None)
        );
        // Free above total (a racy report) gives 0, not an underflow.
        let racy = serde_json::json!({"stats": {"stat-total-memory": 100, "stat-free-memory": 150, "stat-disk-caches": 0}, "last-update": 5});
        assert_eq!(
            parse_guest_stats(&racy).unwrap().unwrap().used_bytes(),
            Some(0)
        );
    }

    #[test]
    fn guest_stats_malformed() {
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"stats": {}}),
            serde_json::json!({"last-update": 5}),
            serde_json::json!({"last-update": 5, "stats": 1}),
            serde_json::json!({"last-update": "5", "stats": {}}),
            serde_json::json!({"last-update": 5, "stats": {"stat-free-memory": "x"}}),
            serde_json::json!({"last-update": 5, "stats": {"stat-free-memory": -7}}),
        ] {
            assert!(parse_guest_stats(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_balloon_in_qom_list() {
        let v = ret(
            r#"{"return": [{"name": "type", "type": "string"}, {"name": "balloon0", "type": "child<virtio-balloon-pci>"}, {"name": "vd0", "type": "child<virtio-blk-pci>"}]}"#,
        );
        assert_eq!(balloon_child(&v), Some("balloon0"));
        let ccw = serde_json::json!([{"name": "b", "type": "child<virtio-balloon-ccw>"}]);
        assert_eq!(balloon_child(&ccw), Some("b"));
        for none in [
            serde_json::json!([{"name": "vd0", "type": "child<virtio-blk-pci>"}]),
            serde_json::json!({}),
            serde_json::json!([{"type": "child<virtio-balloon-pci>"}]),
            serde_json::json!([{"name": "", "type": "child<virtio-balloon-pci>"}]),
            serde_json::json!([5, null]),
        ] {
            assert_eq!(balloon_child(&none), None, "{none}");
        }
    }
}
