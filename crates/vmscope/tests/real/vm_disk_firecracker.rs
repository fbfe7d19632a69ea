//! Firecracker's per-drive figures from its metrics file, end to end: a
//! process that is Firecracker to discovery (`argv[0]` and `comm`
//! `firecracker`, `--id`, `--metrics-path`: python3 run through a symlink
//! of that name; there is no Firecracker binary here, shared/LAB.md) and a
//! metrics file this test writes in Firecracker's format, flush by flush.
//! vmscope's counters are the sums of the flushes' increments; a garbled
//! line shows as a parse error and changes no total.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::support::lab::Agent;
use crate::support::{lab_available, poll_until, unique_name};

/// One flush as Firecracker writes it: `n` reads of 4 KiB and `n` writes
/// of 512 bytes on drive `rootfs` since the previous flush.
fn flush(n: u64) -> String {
    format!(
        r#"{{"utc_timestamp_ms":1700000000000,"api_server":{{"process_startup_time_us":12}},"block_rootfs":{{"activate_fails":0,"cfg_fails":0,"no_avail_buffer":0,"event_fails":0,"execute_fails":0,"invalid_reqs_count":0,"flush_count":{n},"queue_event_count":40,"read_bytes":{rb},"write_bytes":{wb},"read_count":{n},"write_count":{n},"read_agg":{{"min_us":3,"max_us":90,"sum_us":{n}000}},"write_agg":{{"min_us":7,"max_us":7,"sum_us":0}},"rate_limiter_throttled_events":0,"io_engine_throttled_events":0,"remaining_reqs_count":0}},"block":{{"read_bytes":{rb},"write_bytes":{wb},"read_count":{n},"write_count":{n}}},"net_eth0":{{"rx_bytes_count":100}},"net":{{"rx_bytes_count":100}}}}"#,
        rb = n * 4096,
        wb = n * 512,
    ) + "\n"
}

fn append(path: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

struct Fake(std::process::Child);

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn drive_counters_are_the_sums_of_the_metrics_files_flushes() {
    if !lab_available("vm_disk_firecracker") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("firecracker");
    std::os::unix::fs::symlink(crate::support::PYTHON, &exe).unwrap();
    let metrics = dir.path().join("fc.metrics");
    let id = unique_name("fc");
    append(&metrics, &flush(1));
    append(&metrics, &flush(2));
    let fake = Fake(
        std::process::Command::new(&exe)
            .args([
                "-c",
                "import time\nwhile True: time.sleep(1000)",
                "--id",
                &id,
                "--metrics-path",
                &metrics.display().to_string(),
            ])
            .spawn()
            .unwrap(),
    );
    let agent = Agent::start(1);
    let vm = [("vm_id", id.as_str())];
    let rootfs = [("vm_id", id.as_str()), ("device", "rootfs")];
    let m = agent.wait_for_series(
        "vmscope_vm_disk_read_bytes_total",
        &rootfs,
        Duration::from_secs(20),
    );
    assert_eq!(
        m.value("vmscope_vm_disk_read_bytes_total", &rootfs),
        Some(3.0 * 4096.0)
    );
    assert_eq!(
        m.value("vmscope_vm_disk_write_requests_total", &rootfs),
        Some(3.0)
    );
    assert_eq!(
        m.value("vmscope_vm_disk_read_time_seconds_total", &rootfs),
        Some(0.003)
    );
    // Per drive only: the aggregate `block` section is not a second disk.
    assert_eq!(m.all("vmscope_vm_disk_read_bytes_total", &vm).len(), 1);
    assert_eq!(
        m.value(
            "vmscope_vm_device_stats_info",
            &[("vm_id", id.as_str()), ("source", "firecracker")]
        ),
        Some(1.0)
    );

    // A garbled line, then a good flush: a parse error, and the flush
    // after it counted once.
    append(&metrics, "{\"block_rootfs\":{\"read_bytes\":\n");
    append(&metrics, &flush(4));
    let m = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let m = agent.metrics();
        (m.value("vmscope_vm_disk_read_bytes_total", &rootfs) == Some(7.0 * 4096.0)
            && m.value("vmscope_vm_device_stats_up", &vm) == Some(1.0))
        .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "the flush after the garbled line never counted:\n{}",
            agent.log()
        )
    })
    .0;
    assert!(
        m.value(
            "vmscope_vm_device_stats_errors_total",
            &[("vm_id", id.as_str()), ("kind", "parse")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    // Nothing new: the totals hold (increments are never added twice).
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.metrics();
    assert_eq!(
        m.value("vmscope_vm_disk_read_bytes_total", &rootfs),
        Some(7.0 * 4096.0)
    );
    drop(fake);
}
