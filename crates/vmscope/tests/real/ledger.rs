//! The usage ledger against a real QEMU VM and a real `vmscope serve`:
//! what the ledger records in the state database (read with rusqlite, as a
//! consumer would) agrees with the kernel's own CPU counter of the QEMU
//! process, across a clean agent restart, a `kill -9` of the agent and a
//! restart of the VM; the agent's downtime shows as `gap_seconds`.
//!
//! The VM burns CPU (`jmp $`) and is frozen with SIGSTOP at the end of each
//! phase, so that /proc's counter stops and can be compared with what the
//! ledger wrote once it has seen and flushed the frozen value: no timing
//! guess in the comparison. The VM starts after the agent, so the ledger
//! counts it from zero (its process start) and its whole counter must be
//! in the rows.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use rustix::process::{Pid, Signal, kill_process};
use support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec, proc_cpu_seconds};
use support::{http, lab_available, poll_until, unique_name, unique_uuid};

/// Short rows and flushes, so that a test sees several of each.
pub(crate) const CONFIG: &str = "[ledger]\ninterval = \"5s\"\nflush_interval = \"2s\"\n";

pub(crate) fn db(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open state.db")
}

/// [`totals`] of the processes that ran the VM (`pids`, from their
/// pidfiles), without the incarnations of `qemu -daemonize`'s first
/// process: it carries the VM's command line (so its UUID) while it waits
/// for the daemon it forked to come up, and exits. A tick that lands in
/// that window (seconds on a loaded machine) rightly records it, with what
/// its start-up used: 0.19 s of CPU once in a loaded CI run, so it is told
/// apart by its PID, not by a CPU threshold.
fn ran(t: Vec<(String, i64, f64, f64, f64)>, pids: &[i32]) -> Vec<(String, i64, f64, f64, f64)> {
    t.into_iter()
        .filter(|(inc, ..)| pids.iter().any(|p| inc.contains(&format!(":{p}:"))))
        .collect()
}

/// Per incarnation of `vm_id`: (rows, cpu, observed, gap).
fn totals(path: &Path, vm_id: &str) -> Vec<(String, i64, f64, f64, f64)> {
    let c = db(path);
    let mut s = c
        .prepare(
            "SELECT incarnation, COUNT(*), SUM(cpu_seconds), SUM(observed_seconds), \
             SUM(gap_seconds) FROM ledger_rows WHERE resolution_s < 3600 AND vm_id = ?1 \
             GROUP BY incarnation ORDER BY MIN(interval_start_ms)",
        )
        .unwrap();
    s.query_map([vm_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The flushed cursor of `vm_id`'s incarnation with `pid`: (at ms, cpu).
pub(crate) fn cursor(path: &Path, vm_id: &str, pid: i32) -> Option<(i64, f64)> {
    db(path)
        .query_row(
            // The newest: after a PID reuse two incarnations share the PID.
            "SELECT at_ms, cpu_seconds FROM ledger_cursors WHERE vm_id = ?1 AND incarnation LIKE ?2 \
             ORDER BY at_ms DESC LIMIT 1",
            rusqlite::params![vm_id, format!("%:{pid}:%")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

/// Freeze the VM, read its final CPU counter from /proc and wait until the
/// ledger has flushed a cursor holding that value. Returns the counter.
/// A 1-vCPU, 32 MiB VM named after `role`.
pub(crate) fn small_vm(role: &str, firmware: Firmware) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 32,
        firmware,
        process_name: None,
    }
}

/// Waits until the ledger has flushed once (its horizon is written).
fn wait_for_first_flush(path: &Path) {
    poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        db(path)
            .query_row("SELECT COUNT(*) FROM ledger_state", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
            .filter(|n| *n > 0)
    })
    .expect("no ledger flush within 10 s");
}

/// Waits until the cursor of the VM `vm_id` running as `pid` is flushed.
fn wait_for_cursor(path: &Path, vm_id: &str, pid: i32) {
    poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        cursor(path, vm_id, pid)
    })
    .expect("the VM's cursor was not flushed within 10 s");
}

/// An agent with `config` keeping its state in `dir`, once its ledger has
/// looked (its horizon is written: a VM started now is counted from its
/// start), then `spec`'s VM started and its cursor flushed. Returns the
/// agent, its state database and the VM.
pub(crate) fn agent_then_vm(
    config: &str,
    dir: &Path,
    roms: &Roms,
    spec: &VmSpec,
) -> (Agent, PathBuf, QemuVm) {
    let agent = Agent::start_in(1, config, dir);
    let path = agent.state_db();
    wait_for_first_flush(&path);
    let vm = QemuVm::start(roms, spec.clone(), None);
    wait_for_cursor(&path, &spec.uuid, vm.pid);
    (agent, path, vm)
}

pub(crate) fn freeze_and_settle(vm: &QemuVm, path: &Path) -> f64 {
    let pid = Pid::from_raw(vm.pid).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let k = proc_cpu_seconds(vm.pid).expect("qemu cpu from /proc");
    let settled = poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        cursor(path, &vm.spec.uuid, vm.pid).filter(|(_, cpu)| (cpu - k).abs() < 0.005)
    });
    assert!(
        settled.is_some(),
        "the ledger did not flush the frozen counter {k} within 15 s: cursor {:?}",
        cursor(path, &vm.spec.uuid, vm.pid)
    );
    k
}

pub(crate) fn assert_close(what: &str, ledger: f64, kernel: f64) {
    let tol = (kernel * 0.01).max(0.02);
    assert!(
        (ledger - kernel).abs() <= tol,
        "{what}: ledger {ledger:.3} s vs /proc {kernel:.3} s (tolerance {tol:.3})"
    );
}

/// Rows of `vm_id` that break a rule: a negative value, an interval seen
/// twice for one incarnation (impossible by the key; checked anyway), an
/// interval start not aligned to 5 s.
fn bad_rows(path: &Path, vm_id: &str) -> Vec<String> {
    let c = db(path);
    let mut s = c
        .prepare(
            "SELECT incarnation, interval_start_ms, cpu_seconds, observed_seconds, gap_seconds, \
             net_rx_bytes, net_tx_bytes, rss_byte_seconds, vcpu_allocated_seconds \
             FROM ledger_rows WHERE resolution_s < 3600 AND vm_id = ?1 AND (cpu_seconds < 0 OR observed_seconds < 0 \
             OR gap_seconds < 0 OR net_rx_bytes < 0 OR net_tx_bytes < 0 \
             OR rss_byte_seconds < 0 OR vcpu_allocated_seconds < 0 \
             OR interval_start_ms % 5000 != 0 OR resolution_s != 5 \
             OR observed_seconds + gap_seconds > 5.001)",
        )
        .unwrap();
    let mut out: Vec<String> = s
        .query_map([vm_id], |r| {
            Ok(format!(
                "{:?}",
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, f64>(4)?
                )
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let dup: i64 = c
        .query_row(
            "SELECT COUNT(*) - COUNT(DISTINCT incarnation || '/' || interval_start_ms) \
             FROM ledger_rows WHERE resolution_s < 3600 AND vm_id = ?1",
            [vm_id],
            |r| r.get(0),
        )
        .unwrap();
    if dup != 0 {
        out.push(format!("{dup} duplicated intervals"));
    }
    // Each rollup holds exactly what its raw rows hold, per incarnation.
    let mut s = c
        .prepare(
            "SELECT incarnation, resolution_s, SUM(cpu_seconds), SUM(net_rx_bytes), \
             SUM(observed_seconds), SUM(gap_seconds) FROM ledger_rows WHERE vm_id = ?1 \
             GROUP BY incarnation, resolution_s ORDER BY incarnation, resolution_s",
        )
        .unwrap();
    let sums: Vec<(String, i64, f64, i64, f64, f64)> = s
        .query_map([vm_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for raw in sums.iter().filter(|r| r.1 == 5) {
        for res in [3600, 86_400] {
            let roll = sums.iter().find(|r| r.0 == raw.0 && r.1 == res);
            let same = roll.is_some_and(|r| {
                (r.2 - raw.2).abs() < 1e-6
                    && r.3 == raw.3
                    && (r.4 - raw.4).abs() < 1e-6
                    && (r.5 - raw.5).abs() < 1e-6
            });
            if !same {
                out.push(format!("rollup {res} of {raw:?} is {roll:?}"));
            }
        }
    }
    out
}

/// Starts `spec` as a process with PID `pid` (free again: its VM was
/// killed), by setting the kernel's last-allocated PID just below it.
/// QEMU takes a few PIDs before the daemonized VM process (its first
/// threads, the daemonizing fork): the offset is learnt from each try.
/// Another process forking in between takes the PID: tried a few times.
fn start_with_pid(roms: &Roms, spec: &VmSpec, pid: i32) -> Option<QemuVm> {
    let mut offset = 0;
    for _ in 0..20 {
        let last = pid - 1 - offset;
        std::fs::write("/proc/sys/kernel/ns_last_pid", last.to_string()).ok()?;
        let mut vm = QemuVm::start(roms, spec.clone(), None);
        if vm.pid == pid {
            return Some(vm);
        }
        if (0..64).contains(&(vm.pid - last - 1)) {
            offset = vm.pid - last - 1;
        }
        vm.kill_and_wait(Signal::KILL);
    }
    None
}

/// A VM whose PID is reused by the *same* VM (same UUID, so same vm_id,
/// same PID; only the process start differs) while the agent is down: the
/// restored cursor of the first process must not be continued by the
/// second (that would count the second's counters from the first's, a
/// negative or lost delta). Two incarnations, each equal to /proc's count.
#[test]
fn a_reused_pid_is_a_new_incarnation_counted_from_zero() {
    if !lab_available("ledger_pid_reuse") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let roms = Roms::new();
    let spec = small_vm("ledger-pid", Firmware::Busy);
    let id = spec.uuid.clone();
    let (agent, path, mut first) = agent_then_vm(CONFIG, dir.path(), &roms, &spec);
    std::thread::sleep(Duration::from_secs(3));
    // Frozen and flushed, then the agent crashes and the VM dies while
    // it is away.
    let k1 = freeze_and_settle(&first, &path);
    agent.stop(Signal::KILL);
    let pid = first.pid;
    first.kill_and_wait(Signal::KILL);
    let Some(second) = start_with_pid(&roms, &spec, pid) else {
        panic!("could not start a VM as PID {pid} again (other processes took it 20 times)");
    };
    let agent = Agent::start_in(1, CONFIG, dir.path());
    poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (totals(&path, &id).len() == 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no second incarnation: {:?}\n{}",
            totals(&path, &id),
            agent.log()
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let k2 = freeze_and_settle(&second, &path);
    let t = totals(&path, &id);
    eprintln!("ledger: PID {pid} reused: /proc {k1:.3} s then {k2:.3} s; per incarnation {t:?}");
    assert_eq!(t.len(), 2, "{t:?}");
    for (inc, ..) in &t {
        assert!(inc.contains(&format!(":{pid}:")), "{inc}");
    }
    assert_ne!(t[0].0, t[1].0);
    assert_close("the first process", t[0].2, k1);
    // Started after the ledger last looked: counted from its start.
    assert_close("the second process on the same PID", t[1].2, k2);
    assert_eq!(bad_rows(&path, &id), Vec::<String>::new());
    let log = agent.stop(Signal::TERM);
    assert!(!log.contains("panicked"), "{log}");
}

/// Two processes claim one UUID: an incoming live migration waits beside
/// the VM it will replace (and `qemu -daemonize`'s first process waits
/// beside the VM's for a moment). The series keep apart (the newer is
/// `<uuid>-pid<N>` while both run), but the ledger bills both to the
/// UUID, as two incarnations: it billed the newer one's whole life to
/// `<uuid>-pid<N>` once a tick had seen the two together (the restart
/// test above failed on that, intermittently, when its tick landed in
/// `-daemonize`'s window).
#[test]
fn an_incoming_migration_is_billed_to_the_vm_not_to_a_pid_suffixed_id() {
    if !lab_available("ledger_migration") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let roms = Roms::new();
    let spec = small_vm("ledger-src", Firmware::Busy);
    let id = spec.uuid.clone();
    let (agent, path, mut source) = agent_then_vm(CONFIG, dir.path(), &roms, &spec);
    // The destination: same UUID, its own name (and so pidfile), waiting
    // for a migration stream that never comes.
    let dest_spec = VmSpec {
        name: unique_name("ledger-dst"),
        ..spec
    };
    let incoming = format!("tcp:127.0.0.1:{}", support::free_port());
    let dest = QemuVm::start_with(
        &roms,
        dest_spec,
        None,
        support::lab::Boot::Rom,
        &["-incoming".to_owned(), incoming],
    );
    let suffixed = format!("{id}-pid{}", dest.pid);
    let both = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let body = http::get(&agent.url("/metrics")).ok()?.body;
        (body.contains(&format!("vm_id=\"{suffixed}\""))
            && body.contains(&format!("vm_id=\"{id}\"")))
        .then_some(())
    });
    assert!(
        both.is_some(),
        "both processes served, the newer as {suffixed}"
    );
    // Its cursor is under the UUID while the source still runs...
    wait_for_cursor(&path, &id, dest.pid);
    source.kill_and_wait(Signal::KILL);
    // ... and once it is the only one, its series are the UUID's.
    let alone = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let body = http::get(&agent.url("/metrics")).ok()?.body;
        (!body.contains(&suffixed)).then_some(())
    });
    assert!(
        alone.is_some(),
        "{suffixed} still served without the source"
    );
    std::thread::sleep(Duration::from_secs(2));
    let k = freeze_and_settle(&dest, &path);
    let t = ran(totals(&path, &id), &[dest.pid]);
    eprintln!("ledger: incoming migration: /proc {k:.3} s; {t:?}");
    assert_eq!(t.len(), 1, "{t:?}");
    assert_close("the destination, from its start", t[0].2, k);
    let stray: Vec<String> = db(&path)
        .prepare("SELECT DISTINCT vm_id FROM ledger_rows WHERE vm_id LIKE '%-pid%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stray, Vec::<String>::new(), "rows under a suffixed id");
    let log = agent.stop(Signal::TERM);
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn cpu_agrees_with_proc_across_agent_restart_crash_and_vm_restart() {
    if !lab_available("ledger") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let roms = Roms::new();
    let spec = small_vm("ledger", Firmware::Busy);
    let id = spec.uuid.clone();

    // Started after the ledger has looked: counted from its start.
    let (agent, path, mut vm) = agent_then_vm(CONFIG, dir.path(), &roms, &spec);
    assert_eq!(path, dir.path().join("state.db"));
    std::thread::sleep(Duration::from_secs(4));

    // A clean restart: the last flush at SIGTERM, the cursor continues.
    let log = agent.stop(Signal::TERM);
    assert!(!log.contains("panicked"), "{log}");
    let agent = Agent::start_in(1, CONFIG, dir.path());
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        agent.log().contains("usage ledger restored"),
        "{}",
        agent.log()
    );

    // A crash, and the agent away for 5 s.
    agent.stop(Signal::KILL);
    std::thread::sleep(Duration::from_secs(5));
    let agent = Agent::start_in(1, CONFIG, dir.path());
    std::thread::sleep(Duration::from_secs(4));

    let k1 = freeze_and_settle(&vm, &path);
    let t = ran(totals(&path, &id), &[vm.pid]);
    eprintln!("ledger: after restart and crash: /proc {k1:.3} s; per incarnation {t:?}");
    assert_eq!(t.len(), 1, "one VM process, one incarnation: {t:?}");
    let (_, _, cpu1, observed1, gap1) = t[0].clone();
    assert_close("one incarnation across a restart and a crash", cpu1, k1);
    // The 5 s away (plus up to one flush interval not flushed before the
    // crash) are gap, not zeros; the rest observed; no time counted twice.
    assert!(gap1 >= 4.5, "gap_seconds {gap1}: the agent was away 5 s");
    let start_ms = db(&path)
        .query_row(
            "SELECT MIN(interval_start_ms) FROM ledger_rows WHERE resolution_s < 3600 AND vm_id = ?1",
            [&id],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    let (last_ms, _) = cursor(&path, &id, vm.pid).unwrap();
    let span = (last_ms - start_ms) as f64 / 1000.0;
    assert!(
        observed1 + gap1 <= span + 0.01 && observed1 + gap1 >= span - 5.0,
        "observed {observed1} + gap {gap1} vs {span} s between the first interval and the last cursor"
    );
    assert_eq!(bad_rows(&path, &id), Vec::<String>::new());

    // The VM restarts (same UUID, new process): a new incarnation from 0,
    // the old one's total unchanged.
    vm.kill_and_wait(Signal::KILL);
    let vm2 = QemuVm::start(&roms, spec, None);
    poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        cursor(&path, &id, vm2.pid)
    })
    .unwrap_or_else(|| {
        panic!(
            "the restarted VM's cursor was not flushed within 20 s; rows {:?}; log:\n{}",
            totals(&path, &id),
            agent.log()
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let k2 = freeze_and_settle(&vm2, &path);
    let t = ran(totals(&path, &id), &[vm.pid, vm2.pid]);
    eprintln!("ledger: after the VM restart: /proc {k2:.3} s; per incarnation {t:?}");
    assert_eq!(t.len(), 2, "{t:?}");
    assert_close("the first incarnation after it ended", t[0].2, k1);
    assert_close("the restarted VM, counted from its start", t[1].2, k2);
    assert_eq!(bad_rows(&path, &id), Vec::<String>::new());

    // GET /api/v1/usage gives the same totals as the rows, per VM and in
    // steps; CSV on request; a bad parameter is a 400 naming it.
    let (db_cpu, db_rows): (f64, i64) = db(&path)
        .query_row(
            "SELECT SUM(cpu_seconds), COUNT(*) FROM ledger_rows WHERE resolution_s < 3600 AND vm_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_close("the ledger over both incarnations", db_cpu, k1 + k2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Ten minutes back covers this test's rows; 5 s steps stay few.
    let (from, to) = ((now - 600).to_string(), (now + 60).to_string());
    let window = [("from", from.as_str()), ("to", to.as_str())];
    let api_sum = |extra: &[(&'static str, &'static str)]| {
        let mut q: Vec<(&str, &str)> = window.to_vec();
        q.extend_from_slice(extra);
        let r = http::get_with_query(&agent.url("/api/v1/usage"), &q).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let mine: Vec<&serde_json::Value> = v["usage"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["key"] == id.as_str())
            .collect();
        let cpu: f64 = mine
            .iter()
            .map(|t| t["cpu_seconds"].as_f64().unwrap())
            .sum();
        let rows: i64 = mine.iter().map(|t| t["rows"].as_i64().unwrap()).sum();
        (cpu, rows, mine.len())
    };
    let (cpu, rows, n) = api_sum(&[("by", "vm")]);
    assert!(
        (cpu - db_cpu).abs() < 1e-6 && rows == db_rows && n == 1,
        "{cpu} {rows} {n}"
    );
    let (cpu, rows, n) = api_sum(&[("by", "vm"), ("step", "5s")]);
    assert!(
        (cpu - db_cpu).abs() < 1e-6 && rows == db_rows,
        "{cpu} {rows}"
    );
    assert!(n > 1, "several 5 s steps: {n}");
    // A window of whole days up to now is answered from the daily
    // rollups, with the same total.
    let day_from = (now - now % 86_400 - 86_400).to_string();
    let r = http::get_with_query(
        &agent.url("/api/v1/usage"),
        &[("from", day_from.as_str()), ("by", "vm")],
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["resolution_seconds"], 86_400, "{}", r.body);
    let daily: f64 = v["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["key"] == id.as_str())
        .map(|t| t["cpu_seconds"].as_f64().unwrap())
        .sum();
    assert!(
        (daily - db_cpu).abs() < 1e-6,
        "daily {daily} vs raw {db_cpu}"
    );
    let csv = http::get_accepting(&agent.url("/api/v1/usage"), &window, "text/csv").unwrap();
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(
        csv.content_type
            .as_deref()
            .unwrap_or_default()
            .starts_with("text/csv")
    );
    assert!(
        csv.body
            .starts_with("ChargePeriodStart,ChargePeriodEnd,by,key,label,cpu_seconds,")
    );
    assert!(
        csv.body.lines().any(|l| l.contains(&format!(",vm,{id},"))),
        "{}",
        csv.body
    );
    let bad = http::get_with_query(&agent.url("/api/v1/usage"), &[("by", "host")]).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    let msg = serde_json::from_str::<serde_json::Value>(&bad.body).unwrap()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(msg.starts_with("by: "), "{msg}");

    // `vmscope usage` reads the same database directly, beside the running
    // agent, and gives the same totals; a bad parameter exits 2 naming it.
    let usage_cli = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vmscope"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VMSCOPE_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("usage")
            .arg("--db")
            .arg(&path)
            .args(["--from", from.as_str(), "--to", to.as_str()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = usage_cli(&["--by", "vm", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_cpu: f64 = v["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["key"] == id.as_str())
        .map(|t| t["cpu_seconds"].as_f64().unwrap())
        .sum();
    let (api_cpu, _, _) = api_sum(&[("by", "vm")]);
    assert!(
        (cli_cpu - api_cpu).abs() < 1e-9,
        "CLI {cli_cpu} vs API {api_cpu}"
    );
    let out = usage_cli(&["--output", "csv"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("ChargePeriodStart,ChargePeriodEnd,"),
        "{text}"
    );
    let out = usage_cli(&["--output", "table"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id[..24]));
    let out = usage_cli(&["--by", "host"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: --by: \"host\" is not one of"),
        "{err}"
    );

    // The ledger's own metrics, as a scrape shows them, valid for promtool.
    let m = agent.metrics();
    assert_eq!(
        m.value("vmscope_ledger_persistence_enabled", &[]),
        Some(1.0)
    );
    assert!(
        m.value("vmscope_ledger_rows_written_total", &[])
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(m.value("vmscope_ledger_flush_errors_total", &[]), Some(0.0));
    let body = http::get(&agent.url("/metrics")).unwrap().body;
    let (_, text) = support::metrics::promtool_check(&body);
    let ledger_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("vmscope_ledger"))
        .collect();
    assert!(
        ledger_lines.is_empty(),
        "promtool on the ledger families: {ledger_lines:?}"
    );
}

#[test]
fn without_a_usable_database_the_ledger_says_so_and_the_agent_runs() {
    if !lab_available("ledger_no_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be: it cannot be opened.
    std::fs::create_dir(dir.path().join("state.db")).unwrap();
    let agent = Agent::start_in(1, CONFIG, dir.path());
    let m = agent.metrics();
    assert_eq!(
        m.value("vmscope_ledger_persistence_enabled", &[]),
        Some(0.0)
    );
    let health = http::get_json(&agent.url("/healthz")).unwrap();
    let ledger = &health["components"]["ledger"];
    assert_eq!(ledger["status"], "degraded", "{health}");
    assert!(
        ledger["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("records nothing"),
        "{health}"
    );
    assert!(
        agent.log().contains("usage ledger has no state database"),
        "{}",
        agent.log()
    );
    let r = http::get(&agent.url("/api/v1/usage")).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no state database"), "{}", r.body);
}

/// A small tmpfs, unmounted on drop: a disk that can be filled.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs (needs root)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_keeps_rows_in_memory_and_delivers_them_when_space_is_back() {
    use std::io::Write;
    if !lab_available("ledger_full_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("small"), "1m");
    let roms = Roms::new();
    let spec = small_vm("ledger-full", Firmware::Busy);
    let id = spec.uuid.clone();
    let (agent, path, vm) = agent_then_vm(CONFIG, &fs.0, &roms, &spec);

    // Fill the disk: flushes fail, rows wait in memory.
    let filler = fs.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5Au8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let errors = |a: &Agent| {
        a.metrics()
            .value("vmscope_ledger_flush_errors_total", &[])
            .unwrap_or(0.0)
    };
    poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        (errors(&agent) >= 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no failed flushes on a full disk: {}", agent.log()));
    std::thread::sleep(Duration::from_secs(6));
    let m = agent.metrics();
    let pending = m.value("vmscope_ledger_pending_rows", &[]).unwrap_or(0.0);
    assert!(pending >= 1.0, "rows wait in memory: pending {pending}");
    assert!(
        agent.log().contains("usage ledger flush failed"),
        "{}",
        agent.log()
    );

    // Space is back: the next flush delivers everything (the open
    // interval's row is dirty again a tick later, so "pending" does not
    // stay at 0; a successful flush after the removal is the signal).
    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let before = errors(&agent);
    poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let m = agent.metrics();
        m.value("vmscope_ledger_last_flush_timestamp_seconds", &[])
            .filter(|t| *t > freed)
    })
    .unwrap_or_else(|| {
        panic!(
            "no successful flush within 15 s of freeing the disk ({} errors): {}",
            errors(&agent),
            agent.log()
        )
    });
    let k = freeze_and_settle(&vm, &path);
    assert!(errors(&agent) - before <= 1.0, "flushes still failing");
    let t = totals(&path, &id);
    eprintln!(
        "ledger: full disk: /proc {k:.3} s; per incarnation {t:?}; pending at the worst {pending}"
    );
    assert_eq!(t.len(), 1, "{t:?}");
    assert_close("across a full disk", t[0].2, k);
    // The agent stayed up and saw the VM all along: no gap.
    assert!(t[0].4 < 0.01, "gap_seconds {} with the agent up", t[0].4);
    assert_eq!(bad_rows(&path, &id), Vec::<String>::new());
    drop(agent);
}

#[test]
fn unreadable_cursors_stop_the_ledger_rather_than_overwrite_its_rows() {
    if !lab_available("ledger_bad_cursors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let roms = Roms::new();
    let spec = small_vm("ledger-bad", Firmware::Idle);
    let id = spec.uuid.clone();
    let agent = Agent::start_in(1, CONFIG, dir.path());
    let path = agent.state_db();
    let vm = QemuVm::start(&roms, spec, None);
    wait_for_cursor(&path, &id, vm.pid);
    agent.stop(Signal::TERM);
    let rows_before: Vec<(i64, f64)> = {
        let c = db(&path);
        let mut s = c
            .prepare(
                "SELECT interval_start_ms, observed_seconds FROM ledger_rows \
                 WHERE resolution_s < 3600 AND vm_id = ?1 ORDER BY 1",
            )
            .unwrap();
        s.query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(!rows_before.is_empty());
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE ledger_cursors SET net = '{not json' WHERE vm_id = ?1",
            [&id],
        )
        .unwrap();

    let agent = Agent::start_in(1, CONFIG, dir.path());
    std::thread::sleep(Duration::from_secs(4));
    let m = agent.metrics();
    assert_eq!(
        m.value("vmscope_ledger_persistence_enabled", &[]),
        Some(0.0)
    );
    let health = http::get_json(&agent.url("/healthz")).unwrap();
    let detail = health["components"]["ledger"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("cannot load"), "{health}");
    let rows_after: Vec<(i64, f64)> = {
        let c = db(&path);
        let mut s = c
            .prepare(
                "SELECT interval_start_ms, observed_seconds FROM ledger_rows \
                 WHERE resolution_s < 3600 AND vm_id = ?1 ORDER BY 1",
            )
            .unwrap();
        s.query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(rows_before, rows_after, "rows written before are untouched");
    // Reading still works.
    let r = http::get(&agent.url("/api/v1/usage")).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}
