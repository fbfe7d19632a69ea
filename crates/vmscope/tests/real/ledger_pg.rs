//! The fleet ledger in a real PostgreSQL 15 (`[ledger] database_url`):
//! two `vmscope serve` agents under different host names write one
//! database, each host's rows there equal its own SQLite ledger, and the
//! API and `vmscope usage --database-url` answer the same; PostgreSQL
//! stopped mid-run while a QEMU VM burns CPU: the spool grows, `/healthz`
//! says so, and once the server is back the spool drains and PostgreSQL
//! holds what SQLite holds and what /proc counted.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec, proc_cpu_seconds};
use support::postgres::{self, PASSWORD, Postgres};
use support::{http, poll_until, unique_name, unique_uuid};

fn config(url: &str, host: &str) -> String {
    format!(
        "[ledger]\ninterval = \"5s\"\nflush_interval = \"1s\"\nhost = \"{host}\"\n\
         database_url = \"{url}\"\ndatabase_timeout = \"2s\"\n"
    )
}

fn small_vm(role: &str, firmware: Firmware) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 32,
        firmware,
        process_name: None,
    }
}

/// `vmscope usage ... --output json` with `args`; its JSON.
fn usage_cli(args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscope"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VMSCOPE_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .arg("usage")
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmscope usage {args:?}: {stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The totals of two answers agree: same groups, labels and row counts,
/// integers equal, floats equal up to summation order.
fn assert_same_totals(what: &str, a: &Value, b: &Value) {
    let (a, b) = (
        a["usage"].as_array().unwrap(),
        b["usage"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{what}: {a:?}\nvs\n{b:?}");
    assert!(!a.is_empty(), "{what}: no totals");
    for (x, y) in a.iter().zip(b) {
        for field in ["start", "end", "key", "label", "rows", "net_rx_bytes"] {
            assert_eq!(x[field], y[field], "{what}: {field}: {x}\nvs\n{y}");
        }
        for field in [
            "cpu_seconds",
            "vcpu_allocated_seconds",
            "memory_allocated_byte_seconds",
            "rss_byte_seconds",
            "observed_seconds",
            "gap_seconds",
        ] {
            let (p, q) = (x[field].as_f64().unwrap(), y[field].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-9 * p.abs().max(1.0),
                "{what}: {field}: {p} vs {q}"
            );
        }
    }
}

fn metric(agent: &Agent, name: &str) -> f64 {
    agent.metrics().value(name, &[]).unwrap_or(-1.0)
}

fn ledger_db_health(agent: &Agent) -> (u16, String) {
    let r = http::get(&agent.url("/healthz")).unwrap();
    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (
        r.status,
        v["components"]["ledger_db"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

/// Closed 5 s intervals of `host` in PostgreSQL for `vm_id`.
fn pg_intervals(pg: &Postgres, host: &str, vm_id: &str) -> i64 {
    pg.client("fleet")
        .query_one(
            "SELECT COUNT(DISTINCT interval_start_ms) FROM ledger_rows WHERE host = $1 AND vm_id = $2 \
             AND resolution_s < 3600",
            &[&host, &vm_id],
        )
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn two_agents_write_one_fleet_ledger_that_matches_each_hosts_own() {
    if !postgres::lab("two_agents_write_one_fleet_ledger_that_matches_each_hosts_own") {
        return;
    }
    let pg = Postgres::start();
    pg.create_db("fleet", "");
    let url = pg.url("fleet");
    // check-config says the fleet database answers, without the password.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmscope.toml");
    std::fs::write(&file, config(&url, "hv-a")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmscope"))
        .arg("check-config")
        .arg(&file)
        .env("VMSCOPE_STORE__PATH", dir.path().join("state.db"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "ledger.database_url: postgres 127.0.0.1:{}/fleet reachable",
            pg.port
        )),
        "{text}"
    );
    assert!(!text.contains(PASSWORD));
    let roms = Roms::new();
    let vm = QemuVm::start(&roms, small_vm("fleet", Firmware::Idle), None);
    let id = vm.spec.uuid.clone();
    // Both start at once: their migrations meet under the advisory lock.
    let a = Agent::start_with(1, &config(&url, "hv-a"));
    let b = Agent::start_with(1, &config(&url, "hv-b"));
    poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        (pg_intervals(&pg, "hv-a", &id) >= 3 && pg_intervals(&pg, "hv-b", &id) >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("no rows shipped in 20 s:\n{}\n{}", a.log(), b.log()));
    // A window of closed intervals, final once their last piece is
    // flushed (<= 1 s after the interval) and shipped (<= 1 s more).
    let to = now_s() / 5 * 5;
    std::thread::sleep(Duration::from_secs((to + 4).saturating_sub(now_s())));
    let to = to.to_string();
    let window = ["--from", "0", "--to", to.as_str(), "--by", "vm"];
    for (agent, host) in [(&a, "hv-a"), (&b, "hv-b")] {
        let db = agent.state_db().display().to_string();
        let local = usage_cli(&[&window[..], &["--db", db.as_str()]].concat());
        let fleet = usage_cli(&[&window[..], &["--database-url", &url, "--host", host]].concat());
        assert_same_totals(&format!("{host}: SQLite vs PostgreSQL"), &local, &fleet);
        // Either agent's API reads the fleet: the same answer as the CLI.
        for reader in [&a, &b] {
            let api = http::get_json(
                &reader.url(&format!("/api/v1/usage?from=0&to={to}&by=vm&host={host}")),
            )
            .unwrap();
            assert_eq!(api["usage"], fleet["usage"], "{host}: API vs CLI");
        }
        let mine: Vec<&Value> = fleet["usage"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["key"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{host}: {fleet}");
        assert!(
            mine[0]["observed_seconds"].as_f64().unwrap() > 4.0,
            "{host}: {fleet}"
        );
    }
    // Without a host filter, the fleet holds both hosts' rows of the VM.
    let both = usage_cli(&[&window[..], &["--database-url", &url]].concat());
    let rows = |v: &Value| -> i64 {
        v["usage"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["key"] == id.as_str())
            .map(|t| t["rows"].as_i64().unwrap())
            .sum()
    };
    let by_host: i64 = ["hv-a", "hv-b"]
        .iter()
        .map(|h| {
            rows(&usage_cli(
                &[&window[..], &["--database-url", &url, "--host", h]].concat(),
            ))
        })
        .sum();
    assert_eq!(rows(&both), by_host);
    // The consumer's SQL of docs/ledger.md runs on the view; one
    // migration row, however many agents started.
    let mut c = pg.client("fleet");
    let n: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM (SELECT project_key, SUM(cpu_seconds), SUM(observed_seconds) \
             FROM ledger_rows WHERE interval_start_ms >= 0 GROUP BY project_key) t",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(n >= 1);
    let versions: i64 = c
        .query_one("SELECT COUNT(*) FROM vmscope_schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
    for agent in [&a, &b] {
        let m = agent.metrics();
        assert!(m.value("vmscope_ledger_shipped_rows_total", &[]).unwrap() > 0.0);
        assert_eq!(
            m.value("vmscope_ledger_spool_dropped_rows_total", &[]),
            Some(0.0)
        );
        assert!(
            m.value("vmscope_db_pool_connections", &[("state", "idle")])
                .is_some()
        );
        assert!(
            m.value(
                "vmscope_db_query_duration_seconds_count",
                &[("op", "pg_ship")]
            )
            .unwrap()
                > 0.0
        );
        assert_eq!(ledger_db_health(agent), (200, "ok".to_owned()));
        assert!(!agent.log().contains(PASSWORD), "{}", agent.log());
    }
    drop(vm);
    for agent in [a, b] {
        let log = agent.stop(Signal::TERM);
        assert!(
            !log.contains("panicked") && !log.contains(PASSWORD),
            "{log}"
        );
    }
}

/// SUM(cpu_seconds), COUNT(*) of `vm_id` in the state database.
fn sqlite_cpu(path: &Path, vm_id: &str) -> (f64, i64) {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(
        "SELECT COALESCE(SUM(cpu_seconds), 0), COUNT(*) FROM ledger_rows WHERE vm_id = ?1 \
         AND resolution_s < 3600",
        [vm_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn pg_cpu(pg: &Postgres, vm_id: &str) -> (f64, i64) {
    pg.client("fleet")
        .query_one(
            "SELECT COALESCE(SUM(cpu_seconds), 0), COUNT(*) FROM ledger_rows WHERE vm_id = $1 \
             AND resolution_s < 3600",
            &[&vm_id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap()
}

#[test]
fn postgres_down_mid_run_spools_and_delivers_everything_when_back() {
    if !postgres::lab("postgres_down_mid_run_spools_and_delivers_everything_when_back") {
        return;
    }
    let mut pg = Postgres::start();
    pg.create_db("fleet", "");
    let roms = Roms::new();
    let agent = Agent::start_with(1, &config(&pg.url("fleet"), "hv-spool"));
    let vm = QemuVm::start(&roms, small_vm("spool", Firmware::Busy), None);
    let id = vm.spec.uuid.clone();
    poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        (pg_intervals(&pg, "hv-spool", &id) >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("nothing shipped in 10 s: {}", agent.log()));

    pg.stop();
    // Flushes go on into SQLite; their keys wait in the spool.
    let grown = poll_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = metric(&agent, "vmscope_ledger_spool_rows");
        (s >= 2.0 && ledger_db_health(&agent) == (200, "degraded".to_owned())).then_some(s)
    });
    assert!(
        grown.is_some(),
        "spool {} / health {:?}: {}",
        metric(&agent, "vmscope_ledger_spool_rows"),
        ledger_db_health(&agent),
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(metric(&agent, "vmscope_ledger_spool_rows") >= grown.unwrap().0);
    assert!(metric(&agent, "vmscope_ledger_ship_errors_total") >= 1.0);
    assert!(metric(&agent, "vmscope_ledger_ship_lag_seconds") > 0.0);

    pg.start_again();
    // Freeze the VM: /proc's counter stops, and the ledger's totals with it.
    kill_process(Pid::from_raw(vm.pid).unwrap(), Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let k = proc_cpu_seconds(vm.pid).unwrap();
    // Back-off is at most 30 s, but after two failures about 1-2 s.
    let settled = poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let (local, remote) = (sqlite_cpu(&agent.state_db(), &id), pg_cpu(&pg, &id));
        (metric(&agent, "vmscope_ledger_spool_rows") == 0.0
            && (local.0 - k).abs() <= (k * 0.01).max(0.02)
            && local.1 == remote.1
            && (local.0 - remote.0).abs() < 1e-6)
            .then_some((local, remote))
    });
    let (((local_cpu, local_rows), (pg_cpu_s, pg_rows)), _) = settled.unwrap_or_else(|| {
        panic!(
            "not settled: spool {}, SQLite {:?}, PostgreSQL {:?}, /proc {k}: {}",
            metric(&agent, "vmscope_ledger_spool_rows"),
            sqlite_cpu(&agent.state_db(), &id),
            pg_cpu(&pg, &id),
            agent.log()
        )
    });
    assert!(
        (pg_cpu_s - k).abs() <= (k * 0.01).max(0.02),
        "PostgreSQL {pg_cpu_s} vs /proc {k}"
    );
    assert_eq!(local_rows, pg_rows);
    assert!(local_cpu > 1.0, "the VM burned {local_cpu} s");
    assert_eq!(ledger_db_health(&agent), (200, "ok".to_owned()));
    // No key twice (the view joins dictionaries: a duplicated id would show).
    let dup: i64 = pg
        .client("fleet")
        .query_one(
            "SELECT COUNT(*) - COUNT(DISTINCT (host, vm_id, incarnation, resolution_s, \
             interval_start_ms)) FROM ledger_rows",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
    let log = agent.log();
    assert!(log.contains("reachable again"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // Logged once per change of state, not once per retry.
    assert!(log.matches("cannot ship usage rows").count() <= 3, "{log}");
    drop(vm);
    let log = agent.stop(Signal::TERM);
    assert!(!log.contains("panicked"), "{log}");
}

/// One row of the store-level test (flat arguments: the calls read as a
/// table).
#[allow(clippy::too_many_arguments)]
fn store_row(
    host: &str,
    vm: &str,
    inc: &str,
    resolution_s: i64,
    start: i64,
    project: Option<&str>,
    label: &str,
    cpu: f64,
) -> (vmscope::store::LedgerKey, vmscope::store::LedgerUsage) {
    (
        vmscope::store::LedgerKey {
            host: host.into(),
            vm_id: vm.into(),
            incarnation: inc.into(),
            resolution_s,
            interval_start_ms: start,
        },
        vmscope::store::LedgerUsage {
            vm_name: format!("{vm}-name"),
            project_key: project.map(str::to_owned),
            project_label: Some(label.into()),
            cpu_seconds: cpu,
            guest_seconds: (cpu > 2.0).then_some(cpu / 2.0),
            net_rx_bytes: 10,
            observed_seconds: 60.0,
            ..Default::default()
        },
    )
}

/// `PgLedger` against SQLite's `LedgerStore` on the same rows: the same
/// totals, labels and order for every grouping and step; a replayed batch
/// changes nothing; writers racing on shared dictionary entries neither
/// deadlock nor duplicate; retention deletes one resolution only.
#[test]
fn pg_ledger_answers_like_sqlite_and_upserts_are_idempotent() {
    use std::sync::Arc;
    use vmscope::outbound::redact::Secret;
    use vmscope::store::postgres::{PgLedger, PgTarget};
    use vmscope::store::sqlite::SqliteStore;
    use vmscope::store::{DbMetrics, LedgerBatch, LedgerStore, UsageBy, UsageQuery};

    if !postgres::lab("pg_ledger_answers_like_sqlite_and_upserts_are_idempotent") {
        return;
    }
    let pg = Postgres::start();
    pg.create_db("fleet", "");
    let target = PgTarget::parse("ledger.database_url", &Secret::new(pg.url("fleet"))).unwrap();
    let metrics = Arc::new(DbMetrics::new());
    let fleet = PgLedger::new(target.clone(), 2, Duration::from_secs(5), metrics.clone());
    let rows = vec![
        store_row("hv1", "a", "b:1:1", 60, 0, Some("p1"), "old name", 1.0),
        store_row("hv1", "a", "b:1:1", 60, 60_000, Some("p1"), "new name", 2.0),
        store_row(
            "hv1",
            "a",
            "b:2:9",
            60,
            120_000,
            Some("p1"),
            "new name",
            4.0,
        ),
        store_row("hv2", "b", "b:3:1", 60, 60_000, Some("p2"), "two", 8.0),
        store_row("hv2", "c", "b:4:1", 60, 60_000, None, "", 16.0),
        store_row("hv2", "Zed", "b:5:1", 60, 0, Some("P0"), "upper", 0.5),
        store_row(
            "hv1",
            "a",
            "b:2:9",
            60,
            180_000,
            Some("p1"),
            "new name",
            32.0,
        ),
    ];
    // SQLite writes the rows and their hourly and daily rollups; the
    // fleet gets all of them, as the shipper sends them (spooled).
    let dir = tempfile::tempdir().unwrap();
    let mut local = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    local.spool_set(true).unwrap();
    local
        .flush_ledger(&LedgerBatch {
            rows: rows.clone(),
            ..LedgerBatch::default()
        })
        .unwrap();
    let all = local.spool_take(1000, 1000).unwrap().rows;
    assert_eq!(
        all.len(),
        7 + 5 + 5,
        "7 raw rows, 5 incarnations' hour and day"
    );
    fleet.upsert_rows(&all).unwrap();
    // Replayed, and in another order: the same totals.
    let mut again = all.clone();
    again.reverse();
    fleet.upsert_rows(&again).unwrap();
    for by in UsageBy::ALL {
        for (step_ms, resolution_s, host) in [
            (0, 0, None),
            (120_000, 0, None),
            (60_000, 60, Some("hv1")),
            (0, 3600, None),
            (0, 60, Some("nowhere")),
        ] {
            let q = UsageQuery {
                from_ms: 0,
                to_ms: 180_000,
                step_ms,
                by,
                resolution_s,
                host: host.map(str::to_owned),
                limit: 100,
                owners: None,
            };
            let (l, r) = (local.usage(&q).unwrap(), fleet.usage(&q).unwrap());
            assert_eq!(l, r, "{q:?}");
        }
    }
    // Many writers at once on shared series and labels.
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let target = target.clone();
            let metrics = metrics.clone();
            let rows = rows.clone();
            std::thread::spawn(move || {
                let w = PgLedger::new(target, 1, Duration::from_secs(10), metrics);
                let mut extra = rows;
                for i in 0..200 {
                    extra.push(store_row(
                        &format!("hv{}", i % 7),
                        &format!("vm{i}"),
                        "b:9:9",
                        60,
                        0,
                        Some("shared"),
                        "Shared",
                        f64::from(t),
                    ));
                }
                if t % 2 == 1 {
                    extra.reverse();
                }
                for _ in 0..5 {
                    w.upsert_rows(&extra).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = pg.client("fleet");
    let count =
        |c: &mut ::postgres::Client, sql: &str| -> i64 { c.query_one(sql, &[]).unwrap().get(0) };
    assert_eq!(count(&mut c, "SELECT COUNT(*) FROM ledger_facts"), 17 + 200);
    assert_eq!(
        count(
            &mut c,
            "SELECT COUNT(*) FROM ledger_labels WHERE project_key = 'shared'"
        ),
        200
    );
    assert_eq!(count(&mut c, "SELECT COUNT(*) FROM ledger_series"), 5 + 200);
    // Retention of the 60 s rows before 120 s leaves the rollups.
    assert_eq!(fleet.delete_before(60, 120_000).unwrap(), 5 + 200);
    assert_eq!(
        count(
            &mut c,
            "SELECT COUNT(*) FROM ledger_rows WHERE resolution_s = 3600"
        ),
        5
    );
    assert_eq!(count(&mut c, "SELECT COUNT(*) FROM ledger_facts"), 2 + 10);
    let ship = metrics
        .snapshot()
        .into_iter()
        .find(|(op, _)| *op == "pg_ship")
        .unwrap()
        .1;
    assert_eq!(ship.errors, 0);
}
