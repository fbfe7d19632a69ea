//! The Redis session-store owner source against a real `redis-server` and
//! real QEMU VMs, through the real binary: sessions attribute VMs by a
//! verified PID and by VM id, a stale PID never attributes another VM, the
//! store going away keeps the last good owners (and comes back), and more
//! sessions than one SCAN page are all read.
//!
//! A VM's "platform id" that only its command line carries is the name of
//! its own ROM directory (`-bios /tmp/vmscope-e2e-XXXX/hlt.rom`), as a
//! platform that keeps each VM's files under a directory named by its id.

use std::time::Duration;

use serde_json::Value;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::metrics::{Exposition, promtool_check};
use crate::support::redis::{Redis, redis_available};
use crate::support::{lab_available, poll_until, unique_name, unique_uuid};

const APPEAR: Duration = Duration::from_secs(20);

/// One idle VM with a ROM directory of its own.
struct Vm {
    qemu: QemuVm,
    roms: Roms,
}

impl Vm {
    fn start(role: &str) -> Vm {
        let roms = Roms::new();
        let spec = VmSpec {
            name: unique_name(role),
            uuid: unique_uuid(),
            vcpus: 1,
            memory_mib: 32,
            firmware: Firmware::Idle,
            process_name: None,
        };
        Vm {
            qemu: QemuVm::start(&roms, spec, None),
            roms,
        }
    }

    fn uuid(&self) -> &str {
        &self.qemu.spec.uuid
    }

    fn pid(&self) -> String {
        self.qemu.pid.to_string()
    }

    /// An id only the VM's command line carries (its ROM directory).
    fn platform_id(&self) -> String {
        self.roms
            .dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

fn config(redis: &Redis, extra: &str) -> String {
    format!(
        "[owners.redis]\nurl = {:?}\ninterval = \"300ms\"\ntimeout = \"2s\"\nuser_name_field = \"user_name\"\nproject_field = \"project_id\"\n{extra}",
        redis.url()
    )
}

fn runs(test: &str) -> bool {
    lab_available(test) && redis_available(test)
}

/// `/metrics` once `ok` holds, or a panic naming `what` with the log.
fn until(agent: &Agent, what: &str, ok: impl Fn(&Exposition) -> bool) -> Exposition {
    poll_until(APPEAR, Duration::from_millis(100), || {
        let e = agent.metrics();
        ok(&e).then_some(e)
    })
    .map(|(e, _)| e)
    .unwrap_or_else(|| {
        panic!(
            "{what}: not seen within {APPEAR:?}; agent log:\n{}",
            agent.log()
        )
    })
}

fn owner_user<'a>(e: &'a Exposition, vm: &Vm) -> Option<&'a str> {
    let found = e.all("vmscope_vm_info", &[("vm_id", vm.uuid())]);
    found.first().and_then(|s| s.label("owner_user"))
}

fn source_of<'a>(e: &'a Exposition, vm: &Vm) -> Option<&'a str> {
    let found = e.all("vmscope_vm_info", &[("vm_id", vm.uuid())]);
    found.first().and_then(|s| s.label("owner_source"))
}

fn up(e: &Exposition) -> Option<f64> {
    e.value("vmscope_owner_source_up", &[("source", "redis")])
}

fn api_owner(agent: &Agent, vm: &Vm) -> Value {
    let vms = agent.api_vms_with_id(vm.uuid());
    assert_eq!(vms.len(), 1, "{vms:?}");
    vms[0].clone()
}

#[test]
fn sessions_attribute_vms_by_verified_pid_and_by_vm_id() {
    if !runs("sessions_attribute_vms_by_verified_pid_and_by_vm_id") {
        return;
    }
    let redis = Redis::start();
    let a = Vm::start("rs-a");
    let b = Vm::start("rs-b");
    let c = Vm::start("rs-c");
    // C's user name as a hostile platform database may hold it.
    let hostile = format!("evil\"}} 1\nvmscope_fake{{a=\"b\\{}", "x".repeat(1024));
    redis.hset(
        "session:hostile",
        &[
            ("user_id", "u-evil"),
            ("user_name", &hostile),
            ("vm_id", c.uuid()),
        ],
    );
    // A: the platform's own id (only in A's command line) and A's PID.
    let a_pid = a.pid();
    let a_id = a.platform_id();
    redis.hset(
        "session:a",
        &[
            ("user_id", "u-alice"),
            ("user_name", "alice"),
            ("project_id", "p-web"),
            ("vm_id", &a_id),
            ("pid", &a_pid),
        ],
    );
    // B: its UUID, no PID.
    redis.hset("session:b", &[("user_id", "u-bob"), ("vm_id", b.uuid())]);
    // A live session not on a VM, and keys that are not sessions.
    redis.hset("session:c", &[("user_id", "u-carol")]);
    redis.cli(&["SET", "session:junk", "not a hash"]);
    redis.hset("session:empty", &[("other", "x")]);

    let agent = Agent::start_with(1, &config(&redis, ""));
    let e = until(&agent, "the three owners", |e| {
        owner_user(e, &a) == Some("alice")
            && owner_user(e, &b) == Some("u-bob")
            && owner_user(e, &c).is_some_and(|u| u.starts_with("evil"))
    });
    // The hostile name is one escaped, capped label value: no injected
    // series, and promtool parses the whole exposition (exit 0, or 3:
    // lint findings only).
    let cut = owner_user(&e, &c).unwrap();
    assert!(hostile.starts_with(cut) && cut.len() <= 256, "{cut:?}");
    assert!(e.all("vmscope_fake", &[]).is_empty());
    let (code, out) = promtool_check(
        &crate::support::http::get(&agent.url("/metrics"))
            .unwrap()
            .body,
    );
    assert!(matches!(code, Some(0 | 3)), "promtool check metrics: {out}");
    assert_eq!(source_of(&e, &a), Some("redis"));
    assert_eq!(source_of(&e, &b), Some("redis"));
    let info = e.all("vmscope_vm_info", &[("vm_id", a.uuid())]);
    assert_eq!(info[0].label("owner_project"), Some("p-web"));
    assert_eq!(up(&e), Some(1.0));
    // A: id + name + its verified PID; B and C: id + name. (Sessions
    // without a VM give no row.)
    assert_eq!(
        e.value("vmscope_owner_source_rows", &[("source", "redis")]),
        Some(7.0)
    );
    assert!(
        e.value(
            "vmscope_owner_source_last_success_timestamp_seconds",
            &[("source", "redis")]
        )
        .is_some()
    );

    let api = api_owner(&agent, &a);
    assert_eq!(api["owner_source"], "redis");
    assert_eq!(api["owner"]["user_id"], "u-alice");
    assert_eq!(api["owner"]["user_name"], "alice");
    assert_eq!(api["owner"]["project_id"], "p-web");
    assert_eq!(api_owner(&agent, &b)["owner"]["user_id"], "u-bob");

    // Skipped keys are said once, not per refresh.
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(
        log.matches("session keys skipped").count(),
        1,
        "agent log:\n{log}"
    );
    assert!(log.contains("wrong_type=1"), "{log}");
}

#[test]
fn a_stale_pid_is_resolved_by_vm_id_and_never_attributes_the_other_vm() {
    if !runs("a_stale_pid_is_resolved_by_vm_id_and_never_attributes_the_other_vm") {
        return;
    }
    let redis = Redis::start();
    let a = Vm::start("rs-stale-a");
    let b = Vm::start("rs-stale-b");
    let c = Vm::start("rs-stale-c");
    // A's session names A's UUID but B's PID (the platform wrote down a
    // PID that another VM has now).
    let b_pid = b.pid();
    redis.hset(
        "session:a",
        &[("user_id", "u-ann"), ("vm_id", a.uuid()), ("pid", &b_pid)],
    );
    // C's session names C by its VM name (QEMU -name) and a dead PID.
    let dead = (4_000_000..4_100_000u32)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
        .to_string();
    redis.hset(
        "session:c",
        &[
            ("user_id", "u-cid"),
            ("vm_id", &c.qemu.spec.name),
            ("pid", &dead),
        ],
    );
    // A session for a VM not on this host, with B's PID: B's command line
    // does not name it, so B is not its VM.
    redis.hset(
        "session:elsewhere",
        &[
            ("user_id", "u-eve"),
            ("vm_id", "vm-on-host-9"),
            ("pid", &b_pid),
        ],
    );

    let agent = Agent::start_with(1, &config(&redis, ""));
    let e = until(&agent, "A and C attributed", |e| {
        owner_user(e, &a) == Some("u-ann") && owner_user(e, &c) == Some("u-cid")
    });
    // Several ticks later B is still nobody's.
    std::thread::sleep(Duration::from_secs(2));
    let e2 = agent.metrics();
    for e in [&e, &e2] {
        assert!(
            owner_user(e, &b).is_none_or(str::is_empty),
            "B was attributed: {:?}",
            e.all("vmscope_vm_info", &[("vm_id", b.uuid())])
        );
        assert_eq!(source_of(e, &b), None);
    }
    assert_eq!(api_owner(&agent, &b)["owner"], Value::Null);
    assert_eq!(api_owner(&agent, &a)["owner"]["user_id"], "u-ann");
    // No PID row at all: 3 sessions x (id + name).
    assert_eq!(
        e2.value("vmscope_owner_source_rows", &[("source", "redis")]),
        Some(6.0)
    );
}

#[test]
fn redis_stopped_keeps_the_last_owners_then_restarted_picks_up_new_sessions() {
    if !runs("redis_stopped_keeps_the_last_owners_then_restarted_picks_up_new_sessions") {
        return;
    }
    let password = "s3cret-redis-pw-7731";
    let mut redis = Redis::start_with_password(Some(password));
    let a = Vm::start("rs-restart-a");
    let b = Vm::start("rs-restart-b");
    redis.hset("session:a", &[("user_id", "u-ann"), ("vm_id", a.uuid())]);

    let agent = Agent::start_with(1, &config(&redis, ""));
    until(&agent, "A attributed", |e| {
        owner_user(e, &a) == Some("u-ann") && up(e) == Some(1.0)
    });

    redis.stop();
    let e = until(&agent, "the source down", |e| up(e) == Some(0.0));
    assert!(
        e.value(
            "vmscope_owner_source_errors_total",
            &[("source", "redis"), ("kind", "connect")]
        )
        .is_some_and(|n| n >= 1.0),
        "{:?}",
        e.all("vmscope_owner_source_errors_total", &[])
    );
    // The last good owners stay, ticks later.
    std::thread::sleep(Duration::from_secs(2));
    let e = agent.metrics();
    assert_eq!(up(&e), Some(0.0));
    assert_eq!(owner_user(&e, &a), Some("u-ann"));
    assert_eq!(source_of(&e, &a), Some("redis"));
    assert_eq!(
        e.value("vmscope_owner_source_rows", &[("source", "redis")]),
        Some(2.0)
    );

    // Back (empty: no persistence), with a new session for B.
    redis.restart();
    redis.hset("session:b", &[("user_id", "u-bo"), ("vm_id", b.uuid())]);
    let e = until(&agent, "B attributed after the restart", |e| {
        up(e) == Some(1.0) && owner_user(e, &b) == Some("u-bo")
    });
    // A's session is gone from the store, so is its owner.
    assert!(owner_user(&e, &a).is_none_or(str::is_empty));

    let log = agent.log();
    assert!(log.contains("owner source down"), "{log}");
    assert!(!log.contains(password), "the password leaked:\n{log}");
    assert!(
        !agent
            .metrics()
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| v.contains(password))),
        "the password is in /metrics"
    );
}

#[test]
fn a_unix_socket_url_is_read() {
    if !runs("a_unix_socket_url_is_read") {
        return;
    }
    let redis = Redis::start_unix();
    assert!(redis.url().starts_with("unix:///"), "{}", redis.url());
    let a = Vm::start("rs-unix-a");
    redis.hset("session:a", &[("user_id", "u-sock"), ("vm_id", a.uuid())]);
    let agent = Agent::start_with(1, &config(&redis, ""));
    let e = until(&agent, "A attributed", |e| {
        owner_user(e, &a) == Some("u-sock")
    });
    assert_eq!(up(&e), Some(1.0));
}

#[test]
fn a_redis_that_answers_nothing_times_out_and_keeps_the_owners() {
    if !runs("a_redis_that_answers_nothing_times_out_and_keeps_the_owners") {
        return;
    }
    let redis = Redis::start();
    let a = Vm::start("rs-hung-a");
    redis.hset("session:a", &[("user_id", "u-ann"), ("vm_id", a.uuid())]);
    let cfg = format!(
        "[owners.redis]\nurl = {:?}\ninterval = \"500ms\"\ntimeout = \"1s\"\n",
        redis.url()
    );
    let agent = Agent::start_with(1, &cfg);
    until(&agent, "A attributed", |e| {
        owner_user(e, &a) == Some("u-ann")
    });

    // Connections are accepted by the kernel, nothing is answered.
    redis.pause(true);
    let e = until(&agent, "a timeout", |e| {
        e.value(
            "vmscope_owner_source_errors_total",
            &[("source", "redis"), ("kind", "timeout")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(up(&e), Some(0.0));
    assert_eq!(owner_user(&e, &a), Some("u-ann"), "last good owners kept");
    let age = e.value("vmscope_snapshot_age_seconds", &[]).unwrap();
    assert!(age < 2.5, "snapshot {age} s old while Redis hangs");

    redis.pause(false);
    until(&agent, "up again", |e| up(e) == Some(1.0));
}

#[test]
fn more_sessions_than_one_scan_page_are_all_read_and_max_keys_holds() {
    if !runs("more_sessions_than_one_scan_page_are_all_read_and_max_keys_holds") {
        return;
    }
    let redis = Redis::start();
    let a = Vm::start("rs-many-a");
    const N: usize = 5000;
    // A's session somewhere in the middle of 5000 (SCAN's order is the
    // hash table's, not the insertion order).
    redis.load((0..N).map(|i| {
        let (user, vm) = if i == 2345 {
            ("u-needle".to_owned(), a.uuid().to_owned())
        } else {
            (format!("u-{i}"), format!("vm-elsewhere-{i}"))
        };
        [
            "HSET",
            &format!("session:{i:05}"),
            "user_id",
            &user,
            "vm_id",
            &vm,
        ]
        .map(str::to_owned)
        .to_vec()
    }));
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), N.to_string());

    // COUNT 100: at least 50 SCAN calls.
    let agent = Agent::start_with(1, &config(&redis, "scan_count = 100\n"));
    let e = until(&agent, "A attributed", |e| {
        owner_user(e, &a) == Some("u-needle")
    });
    assert_eq!(
        e.value("vmscope_owner_source_rows", &[("source", "redis")]),
        Some((2 * N) as f64),
        "every session read (id + name each)"
    );
    drop(agent);

    // The same store with a cap below it: the fetch fails, it does not grow.
    let agent = Agent::start_with(1, &config(&redis, "scan_count = 100\nmax_keys = 1000\n"));
    let e = until(&agent, "too_many_keys", |e| {
        e.value(
            "vmscope_owner_source_errors_total",
            &[("source", "redis"), ("kind", "too_many_keys")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(up(&e), Some(0.0));
    assert!(owner_user(&e, &a).is_none_or(str::is_empty));
}
