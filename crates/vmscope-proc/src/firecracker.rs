//! Firecracker's `--config-file` JSON.
//!
//! Reads `machine-config.vcpu_count`, `machine-config.mem_size_mib` and every
//! `network-interfaces[].host_dev_name`, and emits [`FirecrackerConfig`].
//! Missing sections leave fields empty (a VM can also be configured over the
//! API socket). Fails when the document is not JSON, its root is not an
//! object, or one of those fields has the wrong type or range.

use serde_json::Value;

use crate::error::{FileKind, ParseError};

const KIND: FileKind = FileKind::FirecrackerConfig;

/// What a Firecracker config file says about its VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirecrackerConfig {
    pub vcpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    /// Host TAP names, in file order.
    pub taps: Vec<String>,
}

/// Parse a Firecracker config file.
pub fn parse_firecracker_config(buf: &[u8]) -> Result<FirecrackerConfig, ParseError> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    let root: Value =
        serde_json::from_slice(buf).map_err(|source| ParseError::Json { kind: KIND, source })?;
    let Value::Object(root) = root else {
        return Err(ParseError::Malformed {
            kind: KIND,
            what: "root is not a JSON object",
        });
    };
    let mut cfg = FirecrackerConfig::default();
    if let Some(mc) = root.get("machine-config") {
        if !mc.is_object() {
            return Err(bad("machine-config", mc));
        }
        if let Some(v) = mc.get("vcpu_count") {
            let n = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("vcpu_count", v))?;
            cfg.vcpus = Some(n);
        }
        if let Some(v) = mc.get("mem_size_mib") {
            let bytes = v
                .as_u64()
                .and_then(|n| n.checked_mul(1 << 20))
                .ok_or_else(|| bad("mem_size_mib", v))?;
            cfg.memory_bytes = Some(bytes);
        }
    }
    if let Some(ifaces) = root.get("network-interfaces") {
        let list = ifaces
            .as_array()
            .ok_or_else(|| bad("network-interfaces", ifaces))?;
        for iface in list {
            match iface.get("host_dev_name") {
                Some(Value::String(s)) if !s.is_empty() => cfg.taps.push(s.clone()),
                Some(other) if !other.is_string() => return Err(bad("host_dev_name", other)),
                _ => {}
            }
        }
    }
    Ok(cfg)
}

fn bad(field: &'static str, v: &Value) -> ParseError {
    ParseError::invalid(KIND, field, v.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = br#"{
  "boot-source": {
    "kernel_image_path": "vmlinux.bin",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
    "initrd_path": null
  },
  "drives": [
    { "drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true, "is_read_only": false }
  ],
  "machine-config": { "vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false },
  "network-interfaces": [
    { "iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0" },
    { "iface_id": "eth1", "guest_mac": "AA:FC:00:00:00:02", "host_dev_name": "fc-tap1" }
  ],
  "logger": null
}"#;

    #[test]
    fn real_config() {
        let c = parse_firecracker_config(REAL).unwrap();
        assert_eq!(
            c,
            FirecrackerConfig {
                vcpus: Some(2),
                memory_bytes: Some(1 << 30),
                taps: vec!["tap0".into(), "fc-tap1".into()]
            }
        );
    }

    #[test]
    fn partial_and_bad() {
        assert_eq!(
            parse_firecracker_config(b"{}").unwrap(),
            FirecrackerConfig::default()
        );
        assert!(matches!(
            parse_firecracker_config(b""),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse_firecracker_config(b"[1]"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_firecracker_config(b"{\"machine-config\":"),
            Err(ParseError::Json { .. })
        ));
        assert!(matches!(
            parse_firecracker_config(br#"{"machine-config":{"vcpu_count":-1}}"#),
            Err(ParseError::InvalidValue {
                field: "vcpu_count",
                ..
            })
        ));
        assert!(matches!(
            parse_firecracker_config(
                br#"{"machine-config":{"mem_size_mib":18446744073709551615}}"#
            ),
            Err(ParseError::InvalidValue {
                field: "mem_size_mib",
                ..
            })
        ));
        assert!(matches!(
            parse_firecracker_config(br#"{"network-interfaces":[{"host_dev_name":7}]}"#),
            Err(ParseError::InvalidValue {
                field: "host_dev_name",
                ..
            })
        ));
    }
}
