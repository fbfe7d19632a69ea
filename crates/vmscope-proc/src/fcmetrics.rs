//! One line of Firecracker's metrics file (`--metrics-path`).
//!
//! Firecracker writes one JSON object per flush (every 60 s, or on a
//! `FlushMetrics` action). Per drive, `block_<drive_id>` holds
//! `BlockDeviceMetrics`; `block` is their aggregate (and the only block
//! section before Firecracker had per-drive metrics). Its counters are
//! `SharedIncMetric`s: each line carries what happened *since the previous
//! flush*, not a running total.
//!
//! Reads: `read_bytes`, `write_bytes`, `read_count`, `write_count`,
//! `flush_count` (`flushes_count` in older releases) and `read_agg.sum_us`,
//! `write_agg.sum_us` of every `block_*` section (else of `block`, named
//! `block`). Emits: [`FcBlockDelta`] per drive. `net*` sections are not
//! read: a VM's TAP counters already give its network figures. Fails: not
//! JSON, not an object, or a counter that is not a non-negative integer
//! ([`ParseError`] of kind [`FileKind::FirecrackerMetrics`]).

use serde_json::Value;

use crate::error::{FileKind, ParseError};

const KIND: FileKind = FileKind::FirecrackerMetrics;

/// What one flush says about one drive: increments since the last flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FcBlockDelta {
    /// The drive id (`block_rootfs` -> `rootfs`), `block` for the aggregate
    /// of a Firecracker without per-drive sections.
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    pub read_time_us: u64,
    pub write_time_us: u64,
}

/// The block sections of one metrics line.
pub fn parse_firecracker_metrics_line(line: &[u8]) -> Result<Vec<FcBlockDelta>, ParseError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    let root: Value =
        serde_json::from_slice(line).map_err(|source| ParseError::Json { kind: KIND, source })?;
    let Value::Object(root) = root else {
        return Err(ParseError::Malformed {
            kind: KIND,
            what: "a metrics line is not a JSON object",
        });
    };
    let per_drive: Vec<(&str, &Value)> = root
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("block_").map(|id| (id, v)))
        .filter(|(id, _)| !id.is_empty())
        .collect();
    let sections = if per_drive.is_empty() {
        root.get("block")
            .map(|v| vec![("block", v)])
            .unwrap_or_default()
    } else {
        per_drive
    };
    sections
        .into_iter()
        .map(|(id, v)| {
            if !v.is_object() {
                return Err(ParseError::Malformed {
                    kind: KIND,
                    what: "a block section is not an object",
                });
            }
            Ok(FcBlockDelta {
                device: id.to_owned(),
                read_bytes: count(v, "read_bytes")?,
                write_bytes: count(v, "write_bytes")?,
                read_requests: count(v, "read_count")?,
                write_requests: count(v, "write_count")?,
                flush_requests: count(v, "flush_count")? + count(v, "flushes_count")?,
                read_time_us: v.get("read_agg").map_or(Ok(0), |a| count(a, "sum_us"))?,
                write_time_us: v.get("write_agg").map_or(Ok(0), |a| count(a, "sum_us"))?,
            })
        })
        .collect()
}

/// A counter of a section; absent is 0 (older releases lack some).
fn count(section: &Value, field: &'static str) -> Result<u64, ParseError> {
    match section.get(field) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| ParseError::InvalidValue {
            kind: KIND,
            field,
            value: v.to_string().chars().take(64).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A flush as Firecracker 1.x writes it (abridged: other sections and
    /// fields as in its `docs/metrics.md`).
    const LINE: &str = r#"{"utc_timestamp_ms":1700000000000,"api_server":{"process_startup_time_us":12,"process_startup_time_cpu_us":9},"block_rootfs":{"activate_fails":0,"cfg_fails":0,"no_avail_buffer":0,"event_fails":0,"execute_fails":0,"invalid_reqs_count":0,"flush_count":2,"queue_event_count":40,"rate_limiter_event_count":0,"update_count":0,"update_fails":0,"read_bytes":1048576,"write_bytes":4096,"read_count":256,"write_count":1,"read_agg":{"min_us":3,"max_us":90,"sum_us":1500},"write_agg":{"min_us":7,"max_us":7,"sum_us":7},"rate_limiter_throttled_events":0,"io_engine_throttled_events":0,"remaining_reqs_count":0},"block_data":{"read_bytes":512,"write_bytes":0,"read_count":1,"write_count":0,"flush_count":0,"read_agg":{"min_us":1,"max_us":1,"sum_us":1},"write_agg":{"min_us":0,"max_us":0,"sum_us":0}},"block":{"read_bytes":1049088,"write_bytes":4096,"read_count":257,"write_count":1,"flush_count":2},"net_eth0":{"rx_bytes_count":100,"tx_bytes_count":50},"net":{"rx_bytes_count":100,"tx_bytes_count":50},"vcpu":{"exit_io_in":3}}"#;

    #[test]
    fn reads_per_drive_sections_not_the_aggregate() {
        let d = parse_firecracker_metrics_line(LINE.as_bytes()).unwrap();
        assert_eq!(d.len(), 2);
        let root = d.iter().find(|x| x.device == "rootfs").unwrap();
        assert_eq!(root.read_bytes, 1_048_576);
        assert_eq!(root.write_bytes, 4096);
        assert_eq!((root.read_requests, root.write_requests), (256, 1));
        assert_eq!(root.flush_requests, 2);
        assert_eq!((root.read_time_us, root.write_time_us), (1500, 7));
        assert!(d.iter().any(|x| x.device == "data" && x.read_bytes == 512));
    }

    #[test]
    fn older_releases_give_the_aggregate_only() {
        let d = parse_firecracker_metrics_line(
            br#"{"block":{"read_bytes":10,"write_bytes":20,"read_count":1,"write_count":2,"flushes_count":3}}"#,
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].device, "block");
        assert_eq!(d[0].flush_requests, 3);
        assert_eq!(
            parse_firecracker_metrics_line(br#"{"net":{"rx_bytes_count":1}}"#).unwrap(),
            []
        );
    }

    #[test]
    fn refuses_what_is_not_a_metrics_line() {
        for bad in [
            &b""[..],
            b"   ",
            b"{\"block_a\":{\"read_bytes\":1",
            b"[1,2]",
            b"{\"block_a\":{\"read_bytes\":-1}}",
            b"{\"block_a\":{\"read_bytes\":\"x\"}}",
            b"{\"block_a\":5}",
        ] {
            assert!(
                parse_firecracker_metrics_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
