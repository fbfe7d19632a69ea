//! Cloud Hypervisor's `GET /api/v1/vm.counters` answer: per device id, a
//! map of counter names to values.
//!
//! Format, as Cloud Hypervisor's `vmm` serializes
//! `HashMap<String, HashMap<&str, Wrapping<u64>>>` (its `api` docs and
//! `virtio-devices/src/{block,net}.rs`):
//! `{"_disk0": {"read_bytes": N, "write_bytes": N, "read_ops": N, "write_ops": N, ...},
//!   "_net1": {"rx_bytes": N, "rx_frames": N, "tx_bytes": N, "tx_frames": N}, ...}`.
//! A device with `read_ops` and `write_ops` is a disk (newer releases add
//! latency fields, ignored); other devices are skipped. Device ids are the
//! `id=` of `--disk`, else Cloud Hypervisor's own (`_disk0`). Never panics.

use serde_json::Value;

use crate::error::{FileKind, ParseError};
use crate::qmp::MAX_BLOCK_DEVICES;

const KIND: FileKind = FileKind::ChCounters;

/// One disk's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChDiskCounters {
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
}

/// The disks of a `vm.counters` body, sorted by device id, at most
/// [`MAX_BLOCK_DEVICES`].
pub fn parse_ch_counters(body: &[u8]) -> Result<Vec<ChDiskCounters>, ParseError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|source| ParseError::Json { kind: KIND, source })?;
    let Value::Object(devices) = v else {
        return Err(ParseError::Malformed {
            kind: KIND,
            what: "vm.counters is a JSON object of devices",
        });
    };
    let mut out = Vec::new();
    for (id, counters) in &devices {
        if counters.get("read_ops").is_none() || counters.get("write_ops").is_none() {
            continue;
        }
        let n = |k: &'static str| {
            counters
                .get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| match counters.get(k) {
                    Some(v) => ParseError::invalid(KIND, k, v.to_string().as_bytes()),
                    None => ParseError::missing(KIND, k),
                })
        };
        if id.is_empty() {
            continue;
        }
        out.push(ChDiskCounters {
            device: id.clone(),
            read_bytes: n("read_bytes")?,
            write_bytes: n("write_bytes")?,
            read_requests: n("read_ops")?,
            write_requests: n("write_ops")?,
        });
    }
    out.sort_by(|a, b| a.device.cmp(&b.device));
    out.truncate(MAX_BLOCK_DEVICES);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn disks_of_a_counters_answer() {
        let body = br#"{"_disk0": {"read_bytes": 2560, "write_bytes": 512, "read_ops": 2, "write_ops": 1, "read_latency_avg": 7},
                        "data": {"read_bytes": 0, "write_bytes": 4096, "read_ops": 0, "write_ops": 1},
                        "_net1": {"rx_bytes": 10, "rx_frames": 1, "tx_bytes": 20, "tx_frames": 2},
                        "__rng": {}}"#;
        let d = parse_ch_counters(body).unwrap();
        assert_eq!(
            d,
            vec![
                ChDiskCounters {
                    device: "_disk0".into(),
                    read_bytes: 2560,
                    write_bytes: 512,
                    read_requests: 2,
                    write_requests: 1
                },
                ChDiskCounters {
                    device: "data".into(),
                    write_bytes: 4096,
                    write_requests: 1,
                    ..ChDiskCounters::default()
                },
            ]
        );
        assert!(parse_ch_counters(b"{}").unwrap().is_empty());
    }

    #[test]
    fn malformed() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"_disk0\": ",
            br#"{"_disk0": {"read_ops": 1, "write_ops": 1}}"#,
            br#"{"_disk0": {"read_bytes": -1, "write_bytes": 0, "read_ops": 1, "write_ops": 1}}"#,
            br#"{"_disk0": {"read_bytes": "1", "write_bytes": 0, "read_ops": 1, "write_ops": 1}}"#,
        ] {
            assert!(parse_ch_counters(bad).is_err(), "{bad:?}");
        }
    }
}
