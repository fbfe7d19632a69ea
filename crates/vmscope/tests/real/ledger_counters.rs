//! The usage ledger's counters on `/metrics` against a real QEMU VM and a
//! real `vmscope serve`: a VM owned by user U (mapping file) burns CPU;
//! `vmscope_user_cpu_seconds_total{user=U}` and the VM's
//! `vmscope_vm_ledger_cpu_seconds_total` agree with the kernel's counter
//! of the QEMU process and with `/api/v1/usage?by=user`; after a `kill -9`
//! of the agent they go on from at least what the database held (never
//! lower); after the VM exits, U's counter stays while the VM's series is
//! gone. The VM is frozen (SIGSTOP) before each comparison, so that the
//! kernel's counter stops and the ledger's flushed value can catch up
//! with it: no timing guess in the comparison.

use std::path::Path;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::ledger::{CONFIG, agent_then_vm, assert_close, db, freeze_and_settle, small_vm};
use crate::support::lab::{Agent, Firmware, Roms};
use crate::support::metrics::{Exposition, assert_promtool_clean};
use crate::support::{http, lab_available, poll_until};

const USER_CPU: &str = "vmscope_user_cpu_seconds_total";
const VM_CPU: &str = "vmscope_vm_ledger_cpu_seconds_total";

/// U's total in the state database (`ledger_totals`), as last flushed.
fn stored_user_cpu(path: &Path, user: &str) -> Option<f64> {
    db(path)
        .query_row(
            "SELECT cpu_seconds FROM ledger_totals WHERE kind = 'user' AND key = ?1",
            [user],
            |r| r.get(0),
        )
        .ok()
}

/// Once the frozen VM's cursor is flushed (`freeze_and_settle`), U's
/// total in the database is final: waits until `/metrics` shows exactly
/// it (the flush reached the exposition); returns the scrape.
fn wait_for_final(agent: &Agent, path: &Path, user: &str) -> Exposition {
    let u = [("user", user)];
    poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let e = agent.metrics();
        let shown = e.value(USER_CPU, &u)?;
        let stored = stored_user_cpu(path, user)?;
        ((shown - stored).abs() <= 1e-9 * stored.max(1.0)).then_some(e)
    })
    .map(|(e, _)| e)
    .unwrap_or_else(|| {
        panic!(
            "{USER_CPU}{{user={user:?}}} never showed the stored total {:?}: {:?}",
            stored_user_cpu(path, user),
            agent.metrics().value(USER_CPU, &u)
        )
    })
}

/// U's CPU seconds in `/api/v1/usage?by=user` over the last ten minutes.
fn api_user_cpu(agent: &Agent, user: &str) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (from, to) = ((now - 600).to_string(), (now + 60).to_string());
    let r = http::get_with_query(
        &agent.url("/api/v1/usage"),
        &[("from", &from), ("to", &to), ("by", "user")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["usage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["key"] == user)
        .map(|t| t["cpu_seconds"].as_f64().unwrap())
        .sum()
}

#[test]
fn user_counter_agrees_with_proc_survives_kill_9_and_outlives_its_vm() {
    if !lab_available("ledger_counters") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let roms = Roms::new();
    let spec = small_vm("ledger-ctr", Firmware::Busy);
    let id = spec.uuid.clone();
    let tag = format!("{}-{}", std::process::id(), crate::support::next_serial());
    let user = format!("u-ctr-{tag}");
    let mapping = dir.path().join("owners.toml");
    std::fs::write(
        &mapping,
        format!("[[vm]]\nname = {:?}\nuser_id = {user:?}\n", spec.name),
    )
    .unwrap();
    let config = format!("{CONFIG}[owners.file]\npath = {mapping:?}\ninterval = \"200ms\"\n");
    let u = [("user", user.as_str())];
    let v = [("vm_id", id.as_str())];

    let (agent, path, mut vm) = agent_then_vm(&config, dir.path(), &roms, &spec);
    agent.wait_for_series(USER_CPU, &u, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(3));

    // Frozen: the counter, the VM's ledger counter, the rows (API) and
    // /proc agree. The VM started after the agent, so all of its CPU is in.
    let k1 = freeze_and_settle(&vm, &path);
    let e = wait_for_final(&agent, &path, &user);
    let shown1 = e.value(USER_CPU, &u).unwrap();
    assert_close("U's counter", shown1, k1);
    assert_close("the VM's ledger counter", e.value(VM_CPU, &v).unwrap(), k1);
    let api = api_user_cpu(&agent, &user);
    assert!(
        (api - shown1).abs() <= 1e-6 * shown1.max(1.0),
        "/metrics {shown1} vs /api/v1/usage {api}"
    );
    let body = http::get(&agent.url("/metrics")).unwrap().body;
    assert_promtool_clean(&body);

    // Burn again, then kill -9 the agent: the restarted one goes on from
    // the database's total (the last flush), never from less.
    let pid = Pid::from_raw(vm.pid).unwrap();
    kill_process(pid, Signal::CONT).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = agent.metrics().value(USER_CPU, &u).unwrap();
    agent.stop(Signal::KILL);
    let flushed = stored_user_cpu(&path, &user).expect("U's row in ledger_totals");
    assert!(
        flushed >= before_kill && before_kill >= shown1,
        "shown {shown1} then {before_kill}, flushed {flushed}"
    );
    let agent = Agent::start_in(1, &config, dir.path());
    let first = agent.wait_for_series(USER_CPU, &u, Duration::from_secs(15));
    let after = first.value(USER_CPU, &u).unwrap();
    assert!(
        after >= flushed,
        "after kill -9 the counter shows {after} < {flushed} flushed before"
    );
    let k2 = freeze_and_settle(&vm, &path);
    let e = wait_for_final(&agent, &path, &user);
    assert_close(
        "U's counter after kill -9",
        e.value(USER_CPU, &u).unwrap(),
        k2,
    );
    assert_close(
        "the VM's ledger counter after kill -9",
        e.value(VM_CPU, &v).unwrap(),
        k2,
    );
    let shown2 = e.value(USER_CPU, &u).unwrap();
    assert!(shown2 >= after);

    // The VM exits: its series leaves /metrics, U's counter stays as it was.
    vm.kill_and_wait(Signal::KILL);
    let gone = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let e = agent.metrics();
        e.all(VM_CPU, &v).is_empty().then_some(e)
    })
    .map(|(e, _)| e)
    .expect("the exited VM's ledger series is still on /metrics after 10 s");
    let kept = gone
        .value(USER_CPU, &u)
        .expect("U's counter is gone with its only VM");
    assert!(kept >= shown2, "U's counter went from {shown2} to {kept}");
    assert_close("U's counter after the VM exited", kept, k2);
    // Still there, unchanged, after more flushes.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.metrics().value(USER_CPU, &u), Some(kept));
    eprintln!(
        "ledger counters: /proc {k1:.3} s, shown {shown1:.3}, api {api:.3}; kill -9: shown \
         {before_kill:.3}, flushed {flushed:.3}, after restart {after:.3}; /proc {k2:.3}, \
         shown {shown2:.3}; after the VM exited {kept:.3}"
    );
    let body = http::get(&agent.url("/metrics")).unwrap().body;
    assert_promtool_clean(&body);
    let log = agent.stop(Signal::TERM);
    assert!(!log.contains("panicked"), "{log}");
}
