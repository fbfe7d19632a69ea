//! `vmscope top --batch`: one line per VM per refresh, for scripts, as
//! virt-top's CSV mode. CSV: a header line, then `time,vm_id,name,...`
//! rows (RFC 4180 quoting; an unknown figure is an empty cell). JSON: one
//! object per line with the same keys (an unknown figure is `null`).
//!
//! Pure: formats [`Line`]s of the model; `super::run_batch` reads and prints.

use serde::Serialize;

use super::model::Line;

/// The CSV header, in column order.
pub const FIELDS: [&str; 17] = [
    "time",
    "vm_id",
    "name",
    "owner",
    "state",
    "vcpus",
    "cpu_percent",
    "guest_percent",
    "steal_percent",
    "memory_rss_bytes",
    "memory_allocated_bytes",
    "network_rx_bytes_per_second",
    "network_tx_bytes_per_second",
    "disk_read_bytes_per_second",
    "disk_write_bytes_per_second",
    "uptime_seconds",
    "cpu_seconds",
];

pub fn csv_header() -> String {
    let mut s = FIELDS.join(",");
    s.push('\n');
    s
}

/// Unix seconds as RFC 3339 in UTC, to the millisecond.
pub fn timestamp(at: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(at.max(0.0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Serialize)]
struct Record<'a> {
    time: &'a str,
    vm_id: &'a str,
    name: &'a str,
    owner: &'a str,
    state: &'a str,
    vcpus: Option<u32>,
    cpu_percent: Option<f64>,
    guest_percent: Option<f64>,
    steal_percent: Option<f64>,
    memory_rss_bytes: u64,
    memory_allocated_bytes: Option<u64>,
    network_rx_bytes_per_second: Option<f64>,
    network_tx_bytes_per_second: Option<f64>,
    disk_read_bytes_per_second: Option<f64>,
    disk_write_bytes_per_second: Option<f64>,
    uptime_seconds: Option<f64>,
    cpu_seconds: f64,
}

/// Figures to 3 decimals: a rate has no meaningful 17th digit.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn record<'a>(l: &'a Line, time: &'a str) -> Record<'a> {
    Record {
        time,
        vm_id: &l.key,
        name: &l.name,
        owner: &l.owner,
        state: &l.state,
        vcpus: l.vcpus,
        cpu_percent: l.cpu_pct.map(round),
        guest_percent: l.guest_pct.map(round),
        steal_percent: l.steal_pct.map(round),
        memory_rss_bytes: l.rss_bytes,
        memory_allocated_bytes: l.allocated_bytes,
        network_rx_bytes_per_second: l.net_rx.map(round),
        network_tx_bytes_per_second: l.net_tx.map(round),
        disk_read_bytes_per_second: l.disk_read.map(round),
        disk_write_bytes_per_second: l.disk_write.map(round),
        uptime_seconds: l.uptime_seconds.map(round),
        cpu_seconds: round(l.cpu_seconds),
    }
}

/// One JSON object and a newline.
pub fn json_line(l: &Line, time: &str) -> String {
    let mut s = serde_json::to_string(&record(l, time)).unwrap_or_default();
    s.push('\n');
    s
}

/// One CSV row and a newline.
pub fn csv_line(l: &Line, time: &str) -> String {
    let r = record(l, time);
    let n = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let cells = [
        quote(r.time),
        quote(r.vm_id),
        quote(r.name),
        quote(r.owner),
        quote(r.state),
        r.vcpus.map(|v| v.to_string()).unwrap_or_default(),
        n(r.cpu_percent),
        n(r.guest_percent),
        n(r.steal_percent),
        r.memory_rss_bytes.to_string(),
        r.memory_allocated_bytes
            .map(|v| v.to_string())
            .unwrap_or_default(),
        n(r.network_rx_bytes_per_second),
        n(r.network_tx_bytes_per_second),
        n(r.disk_read_bytes_per_second),
        n(r.disk_write_bytes_per_second),
        n(r.uptime_seconds),
        r.cpu_seconds.to_string(),
    ];
    let mut s = cells.join(",");
    s.push('\n');
    s
}

/// RFC 4180: a field with a comma, quote or line break is quoted, its
/// quotes doubled.
pub fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
