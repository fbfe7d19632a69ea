//! A VM's RSS is the kernel's exact figure: `vmscope_vm_memory_rss_bytes`
//! equals `/proc/PID/statm`'s resident pages read at the same moment, for a
//! real QEMU VM frozen so that its memory holds still. (`/proc/PID/stat`'s
//! field 24, which vmscope used to read, is the per-CPU counters without
//! their deltas and differs by some pages: this test fails with it.)

use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::{lab_available, poll_until, unique_name, unique_uuid};

fn statm_resident_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

#[test]
fn rss_equals_statm_read_at_the_same_moment() {
    if !lab_available("vm_memory") {
        return;
    }
    let roms = Roms::new();
    let spec = VmSpec {
        name: unique_name("rss"),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 64,
        firmware: Firmware::Busy,
        process_name: None,
    };
    let vm = QemuVm::start(&roms, spec.clone(), None);
    let agent = Agent::start(1);
    std::thread::sleep(Duration::from_secs(2));
    kill_process(Pid::from_raw(vm.pid).unwrap(), Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let labels = [("vm_id", spec.uuid.as_str())];
    // Frozen, the VM's memory holds still; a tick after the freeze the
    // agent's figure must equal statm's, byte for byte. Several reads, in
    // case the kernel touched the process between the two.
    let mut seen = Vec::new();
    let same = poll_until(Duration::from_secs(10), Duration::from_millis(600), || {
        let ours = agent
            .metrics()
            .value("vmscope_vm_memory_rss_bytes", &labels)?;
        let kernel = statm_resident_bytes(vm.pid)?;
        seen.push((ours, kernel));
        (ours == kernel as f64 && seen.len() >= 2).then_some(kernel)
    });
    let _ = kill_process(Pid::from_raw(vm.pid).unwrap(), Signal::CONT);
    let Some((kernel, _)) = same else {
        panic!("vmscope's RSS never equalled statm's: (vmscope, statm) {seen:?}");
    };
    assert!(
        kernel > 1 << 20,
        "a running QEMU has more than 1 MiB resident: {kernel}"
    );
    eprintln!("vm_memory: RSS {kernel} bytes, equal to statm; reads {seen:?}");
}
