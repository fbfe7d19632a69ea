//! The one error type of this crate.
//!
//! Every fallible parser returns [`ParseError`], which names the kind of file
//! ([`FileKind`]) and, where it applies, the field that was missing or bad, so
//! a caller can log it as is (`error = %e`) or count it by kind without
//! matching on message text.

use std::fmt;

/// Which kind of input a parser was reading when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`.
    Stat,
    /// `/proc/<pid>/statm`.
    Statm,
    /// `/proc/<pid>/schedstat`.
    SchedStat,
    /// `/proc/<pid>/io`.
    Io,
    /// `/proc/meminfo`.
    MemInfo,
    /// `/proc/stat`.
    ProcStat,
    /// `/proc/loadavg`.
    LoadAvg,
    /// A Firecracker `--config-file` JSON document.
    FirecrackerConfig,
    /// A libvirt status (`/run/libvirt/qemu/<name>.xml`) or domain XML.
    LibvirtStatus,
    /// One message from a QEMU QMP monitor socket.
    QmpReply,
    /// `/sys/dev/block/<maj>:<min>/stat`.
    BlockStat,
    /// A cgroup v2 `io.stat`.
    CgroupIoStat,
    /// Cloud Hypervisor's `vm.counters` answer.
    ChCounters,
    /// A message of libvirt's remote protocol.
    LibvirtRpc,
    /// One line of Firecracker's metrics file.
    FirecrackerMetrics,
    /// A datagram from the kernel's process-events connector (netlink).
    ProcEvents,
}

impl FileKind {
    /// A short, stable name (usable as a bounded metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Stat => "proc_pid_stat",
            FileKind::Statm => "proc_pid_statm",
            FileKind::SchedStat => "proc_pid_schedstat",
            FileKind::Io => "proc_pid_io",
            FileKind::MemInfo => "proc_meminfo",
            FileKind::ProcStat => "proc_stat",
            FileKind::LoadAvg => "proc_loadavg",
            FileKind::FirecrackerConfig => "firecracker_config",
            FileKind::LibvirtStatus => "libvirt_status_xml",
            FileKind::QmpReply => "qmp_reply",
            FileKind::BlockStat => "sys_block_stat",
            FileKind::CgroupIoStat => "cgroup_io_stat",
            FileKind::ChCounters => "cloud_hypervisor_counters",
            FileKind::LibvirtRpc => "libvirt_rpc",
            FileKind::FirecrackerMetrics => "firecracker_metrics",
            FileKind::ProcEvents => "proc_connector",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Stat => "/proc/<pid>/stat",
            FileKind::Statm => "/proc/<pid>/statm",
            FileKind::SchedStat => "/proc/<pid>/schedstat",
            FileKind::Io => "/proc/<pid>/io",
            FileKind::MemInfo => "/proc/meminfo",
            FileKind::ProcStat => "/proc/stat",
            FileKind::LoadAvg => "/proc/loadavg",
            FileKind::FirecrackerConfig => "firecracker config file",
            FileKind::LibvirtStatus => "libvirt status XML",
            FileKind::QmpReply => "QMP reply",
            FileKind::BlockStat => "/sys/dev/block/<dev>/stat",
            FileKind::CgroupIoStat => "cgroup io.stat",
            FileKind::ChCounters => "Cloud Hypervisor vm.counters",
            FileKind::LibvirtRpc => "libvirt remote protocol message",
            FileKind::FirecrackerMetrics => "Firecracker metrics line",
            FileKind::ProcEvents => "process-events connector datagram",
        })
    }
}

/// Why a parser rejected its input.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The input held nothing (a process that exited between open and read
    /// gives an empty file).
    #[error("{kind}: input is empty")]
    Empty { kind: FileKind },
    /// A required field is absent (truncated input, or an unexpected format).
    #[error("{kind}: missing field `{field}`")]
    MissingField { kind: FileKind, field: &'static str },
    /// The input stops inside or before this field without the newline the
    /// kernel always writes: a short read, so the field cannot be trusted.
    #[error("{kind}: input is cut short at field `{field}` (no final newline)")]
    Truncated { kind: FileKind, field: &'static str },
    /// A field is present but its value does not parse.
    #[error("{kind}: field `{field}` has invalid value {value:?}")]
    InvalidValue {
        kind: FileKind,
        field: &'static str,
        /// The offending text, cut to 64 bytes so a hostile input cannot
        /// make log lines huge.
        value: String,
    },
    /// The input's overall shape is wrong.
    #[error("{kind}: malformed input: {what}")]
    Malformed { kind: FileKind, what: &'static str },
    /// The input is not UTF-8 where the format requires it.
    #[error("{kind}: input is not valid UTF-8")]
    NotUtf8 {
        kind: FileKind,
        #[source]
        source: std::str::Utf8Error,
    },
    /// The XML does not parse.
    #[error("{kind}: invalid XML")]
    Xml {
        kind: FileKind,
        #[source]
        source: roxmltree::Error,
    },
    /// The JSON does not parse.
    #[error("{kind}: invalid JSON")]
    Json {
        kind: FileKind,
        #[source]
        source: serde_json::Error,
    },
}

impl ParseError {
    /// The kind of file the failing parser was reading.
    pub fn kind(&self) -> FileKind {
        match self {
            ParseError::Empty { kind }
            | ParseError::MissingField { kind, .. }
            | ParseError::Truncated { kind, .. }
            | ParseError::InvalidValue { kind, .. }
            | ParseError::Malformed { kind, .. }
            | ParseError::NotUtf8 { kind, .. }
            | ParseError::Xml { kind, .. }
            | ParseError::Json { kind, .. } => *kind,
        }
    }

    pub(crate) fn invalid(kind: FileKind, field: &'static str, value: &[u8]) -> Self {
        const MAX: usize = 64;
        let cut = &value[..value.len().min(MAX)];
        ParseError::InvalidValue {
            kind,
            field,
            value: String::from_utf8_lossy(cut).into_owned(),
        }
    }

    pub(crate) fn missing(kind: FileKind, field: &'static str) -> Self {
        ParseError::MissingField { kind, field }
    }
}

/// The complete lines of `buf` (up to and including its last `\n`), and
/// whether a cut tail without a newline was dropped.
pub(crate) fn complete_lines(buf: &[u8]) -> (&[u8], bool) {
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(nl) => (&buf[..=nl], nl + 1 < buf.len()),
        None => (&[], !buf.is_empty()),
    }
}

/// Parse an unsigned decimal integer from raw bytes (no sign, no spaces).
pub(crate) fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// Parse a decimal integer with an optional leading `-`.
pub(crate) fn parse_i64(b: &[u8]) -> Option<i64> {
    match b.split_first() {
        Some((b'-', rest)) => {
            let v = parse_u64(rest)?;
            // i64::MIN's magnitude does not fit in i64, so go through i128.
            i64::try_from(-i128::from(v)).ok()
        }
        _ => i64::try_from(parse_u64(b)?).ok(),
    }
}

/// Field `field` of `kind` as a u64, or the matching error.
pub(crate) fn field_u64(kind: FileKind, field: &'static str, b: &[u8]) -> Result<u64, ParseError> {
    parse_u64(b).ok_or_else(|| ParseError::invalid(kind, field, b))
}

/// Field `field` of `kind` as a u32, or the matching error.
pub(crate) fn field_u32(kind: FileKind, field: &'static str, b: &[u8]) -> Result<u32, ParseError> {
    parse_u64(b)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ParseError::invalid(kind, field, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_u64(b"1 "), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"-9223372036854775809"), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"-12"), Some(-12));
    }

    #[test]
    fn messages_name_kind_and_field() {
        let e = ParseError::invalid(FileKind::Stat, "utime", &[b'x'; 200]);
        let msg = e.to_string();
        assert!(msg.contains("/proc/<pid>/stat"), "{msg}");
        assert!(msg.contains("`utime`"), "{msg}");
        assert!(msg.len() < 150, "value must be cut: {msg}");
        assert_eq!(e.kind(), FileKind::Stat);
    }
}
