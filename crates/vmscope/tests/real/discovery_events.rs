//! Event-driven discovery on the real kernel: with `discovery.process_events
//! = "auto"` (the default) and root, the agent learns of new processes from
//! the kernel's process-events connector, so a tick does not list /proc.
//!
//! What a user checks: a QEMU VM started after the agent is found within a
//! tick or two and gone after it is killed; 2000 unrelated processes
//! created meanwhile make no listing (`vmscope_discovery_proc_listings_total`
//! moves only for the periodic rescan); with `process_events = "off"` the
//! listing counter moves with every tick that saw new processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::metrics::Exposition;
use crate::support::{lab_available, poll_until, unique_name, unique_uuid};

const LISTINGS: &str = "vmscope_discovery_proc_listings_total";
const MODE: &str = "vmscope_discovery_mode";

fn listings(m: &Exposition, reason: &str) -> f64 {
    m.value(LISTINGS, &[("reason", reason)])
        .unwrap_or_else(|| panic!("{LISTINGS}{{reason={reason:?}}} missing"))
}

fn mode(m: &Exposition, source: &str, mode: &str) -> Option<f64> {
    m.value(MODE, &[("source", source), ("mode", mode)])
}

/// `n` processes that do nothing, killed and reaped on drop.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn spawn(n: usize) -> Sleepers {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let child = Command::new("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            v.push(child);
        }
        Sleepers(v)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn vm_spec(role: &str) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 32,
        firmware: Firmware::Idle,
        process_name: None,
    }
}

/// Seconds until the VM's `vmscope_vm_info` shows (`present`) or goes.
fn seconds_until(agent: &Agent, uuid: &str, present: bool) -> f64 {
    let start = Instant::now();
    let seen = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let here = !agent
            .metrics()
            .all("vmscope_vm_info", &[("vm_id", uuid)])
            .is_empty();
        (here == present).then_some(())
    });
    assert!(
        seen.is_some(),
        "VM {uuid} {} /metrics within 10 s; log:\n{}",
        if present { "not in" } else { "still in" },
        agent.log()
    );
    start.elapsed().as_secs_f64()
}

#[test]
fn the_connector_reports_fork_exec_and_exit_of_a_child_in_order() {
    if !lab_available("discovery_events") {
        return;
    }
    use vmscope::discovery::events::{Change, ProcEvents};
    let events = ProcEvents::start().expect("root may subscribe to process events");
    let _ = events.take();
    let mut child = Command::new("/bin/true").spawn().expect("spawn /bin/true");
    let pid = child.id();
    child.wait().expect("wait /bin/true");
    let ours = |c: &Change| match *c {
        Change::Fork { child, .. } => child == pid,
        Change::Exec(p) | Change::Exit(p) => p == pid,
    };
    let mut seen = Vec::new();
    let mut forks = 0;
    let done = poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let b = events.take();
        assert!(!b.lost && b.failed.is_none(), "{b:?}");
        forks += b.forks;
        seen.extend(b.changes.into_iter().filter(|c| ours(c)));
        seen.contains(&Change::Exit(pid)).then_some(())
    });
    assert!(done.is_some(), "no exit event for {pid}: {seen:?}");
    assert_eq!(
        seen,
        vec![
            Change::Fork {
                parent: std::process::id(),
                child: pid
            },
            Change::Exec(pid),
            Change::Exit(pid)
        ]
    );
    assert!(forks >= 1);
}

#[test]
fn events_find_vms_and_do_not_list_proc_for_other_processes() {
    if !lab_available("discovery_events") {
        return;
    }
    // A short rescan, so the test sees that it is the only listing left.
    let agent = Agent::start_with(1, "[discovery]\nrescan = \"4s\"\n");
    let m = agent.metrics();
    assert_eq!(
        mode(&m, "process", "events"),
        Some(1.0),
        "as root the agent follows process events; log:\n{}",
        agent.log()
    );
    assert_eq!(mode(&m, "process", "listing"), Some(0.0));

    let roms = Roms::new();
    let spec = vm_spec("events");
    let before = agent.metrics();
    let mut vm = QemuVm::start(&roms, spec.clone(), None);
    let found_after = seconds_until(&agent, &spec.uuid, true);
    // Interval 1 s: found by the next tick or the one after (plus the
    // time /metrics takes to show a published tick).
    assert!(
        found_after < 2.5,
        "VM found {found_after:.2} s after it started"
    );
    let after = agent.metrics();
    assert_eq!(
        (listings(&after, "tick"), listings(&after, "events_lost")),
        (listings(&before, "tick"), listings(&before, "events_lost")),
        "the VM was found without listing /proc"
    );

    // 2000 unrelated processes: no listing but the rescan's.
    let start = agent.metrics();
    let t0 = Instant::now();
    let sleepers = Sleepers::spawn(2000);
    let spawn_secs = t0.elapsed().as_secs_f64();
    // Let at least 3 ticks and one rescan (4 s) pass with them.
    std::thread::sleep(Duration::from_secs(6));
    let end = agent.metrics();
    assert_eq!(listings(&end, "tick"), 0.0, "no per-tick listing");
    assert_eq!(
        listings(&end, "events_lost"),
        listings(&start, "events_lost"),
        "no event lost while 2000 processes started ({spawn_secs:.2} s); log:\n{}",
        agent.log()
    );
    let rescans = listings(&end, "rescan") - listings(&start, "rescan");
    assert!(
        (1.0..=3.0).contains(&rescans),
        "only the 4 s rescan lists /proc: {rescans} rescans in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(mode(&end, "process", "events"), Some(1.0));
    // The sleepers are no VMs, and the VM is still there.
    assert_eq!(
        agent
            .metrics()
            .all("vmscope_vm_info", &[("vm_id", spec.uuid.as_str())])
            .len(),
        1
    );
    drop(sleepers);

    vm.kill_and_wait(Signal::KILL);
    let gone_after = seconds_until(&agent, &spec.uuid, false);
    assert!(
        gone_after < 2.5,
        "VM gone {gone_after:.2} s after it was reaped"
    );
    eprintln!(
        "discovery_events: found after {found_after:.2} s, gone {gone_after:.2} s after reaping; \
         2000 processes spawned in {spawn_secs:.2} s made {rescans} listings (rescan only)"
    );
}

#[test]
fn without_events_every_tick_with_new_processes_lists_proc() {
    if !lab_available("discovery_events") {
        return;
    }
    let agent = Agent::start_with(1, "[discovery]\nprocess_events = \"off\"\n");
    let start = agent.metrics();
    assert_eq!(mode(&start, "process", "events"), Some(0.0));
    assert_eq!(mode(&start, "process", "listing"), Some(1.0));
    assert_eq!(mode(&start, "libvirt", "listing"), Some(1.0));

    // New processes on three ticks in a row: three listings at least.
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(Sleepers::spawn(20));
        std::thread::sleep(Duration::from_millis(1100));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let end = agent.metrics();
    let listed = listings(&end, "tick") - listings(&start, "tick");
    assert!(
        listed >= 3.0,
        "{listed} per-tick listings over 3 ticks with new processes"
    );
    drop(batches);

    // And the listing finds VMs as before.
    let roms = Roms::new();
    let spec = vm_spec("listing");
    let mut vm = QemuVm::start(&roms, spec.clone(), None);
    let found_after = seconds_until(&agent, &spec.uuid, true);
    assert!(
        found_after < 2.5,
        "VM found {found_after:.2} s after it started"
    );
    vm.kill_and_wait(Signal::KILL);
    seconds_until(&agent, &spec.uuid, false);
}

#[test]
fn a_libvirt_domain_is_found_and_dropped_through_events_and_inotify() {
    if !lab_available("discovery_events") {
        return;
    }
    if !crate::support::libvirt::installed() {
        assert!(
            !crate::support::in_ci(),
            "libvirt is not installed under CI=true (scripts/install-deps.sh)"
        );
        eprintln!("discovery_events: libvirt part skipped: libvirtd not installed");
        return;
    }
    crate::support::libvirt::ensure_daemons().expect("libvirtd up");
    // The agent first, so the domain's status file appears under the watch.
    let agent = Agent::start(1);
    let m = agent.metrics();
    assert_eq!(mode(&m, "libvirt", "inotify"), Some(1.0), "{}", agent.log());
    assert_eq!(mode(&m, "process", "events"), Some(1.0));
    let roms = Roms::new();
    let tap = crate::support::lab::Tap::new();
    let name = unique_name("inotify");
    let uuid = unique_uuid();
    let dom = crate::support::libvirt::Domain::start_with_metadata(&roms, &name, &uuid, &tap, "");
    let found_after = seconds_until(&agent, &uuid, true);
    let vm = agent
        .api_vms_with_id(&uuid)
        .pop()
        .expect("the domain in /api/v1/vms");
    assert_eq!(vm["source"], "libvirt", "{vm}");
    assert!(
        found_after < 2.5,
        "domain found {found_after:.2} s after `virsh start` returned"
    );
    drop(dom);
    let gone_after = seconds_until(&agent, &uuid, false);
    assert!(
        gone_after < 2.5,
        "domain gone {gone_after:.2} s after `virsh destroy`"
    );
    let m = agent.metrics();
    assert_eq!(listings(&m, "tick"), 0.0, "no per-tick listing");
    assert_eq!(mode(&m, "libvirt", "inotify"), Some(1.0));
}
