//! The watchdog's alert state in a real PostgreSQL (`[store]
//! database_url`): the store's semantics against the server itself, hosts
//! kept apart, one agent per host, a server restart survived; and a real
//! agent whose firing alert lands in PostgreSQL and is restored after a
//! restart.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::Signal;
use serde_json::Value;
use vmscope::outbound::redact::Secret;
use vmscope::store::pg_alerts::PgAlertStore;
use vmscope::store::postgres::PgTarget;
use vmscope::store::{
    AlertStore, EpisodeQuery, EpisodeWrite, NotificationLogEntry, OutboxWrite, Position, StoreError,
};

use crate::support::lab::Agent;
use crate::support::poll_until;
use crate::support::postgres::{PASSWORD, Postgres, available};

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn open(rule: &str, scope: &str, at: u64) -> EpisodeWrite {
    EpisodeWrite::Open {
        rule: rule.into(),
        scope_key: scope.into(),
        severity: "warning".into(),
        started_at: t(at),
        payload: format!("{{\"rule\":\"{rule}\"}}"),
    }
}

fn resolve(rule: &str, scope: &str, at: u64) -> EpisodeWrite {
    EpisodeWrite::Resolve {
        rule: rule.into(),
        scope_key: scope.into(),
        at: t(at),
        payload: None,
    }
}

fn store(pg: &Postgres, host: &str) -> Result<PgAlertStore, StoreError> {
    let target = PgTarget::parse("store.database_url", &Secret::new(pg.url("fleet"))).unwrap();
    PgAlertStore::open(&target, host)
}

#[test]
fn hosts_share_one_database_apart_and_a_restarted_server_is_reconnected() {
    if !available() {
        eprintln!("skipped: no PostgreSQL here");
        return;
    }
    let mut pg = Postgres::start();
    pg.create_db("fleet", "SELECT 1");
    let mut a = store(&pg, "hv1").unwrap();
    let mut b = store(&pg, "hv2").unwrap();

    // Episodes and the outbox in one transaction; the outbox row leaves
    // with its log row.
    let ids = a
        .record(
            &[open("cpu", "vm:x", 10), open("mem", "host", 11)],
            &[OutboxWrite {
                sink: "hook".into(),
                created_at: t(10),
                payload: "{}".into(),
            }],
        )
        .unwrap();
    assert_eq!(ids.len(), 1);
    b.record(&[open("cpu", "vm:y", 12)], &[]).unwrap();
    assert_eq!(a.outbox().unwrap().len(), 1);
    assert!(
        b.outbox().unwrap().is_empty(),
        "hv2 sees none of hv1's outbox"
    );
    a.finish_delivery(
        Some(ids[0]),
        &NotificationLogEntry {
            at: t(13),
            sink: "hook".into(),
            rule: "cpu".into(),
            status: "firing".into(),
            result: "success".into(),
            alerts: 1,
            error: None,
        },
    )
    .unwrap();
    assert!(a.outbox().unwrap().is_empty());
    assert_eq!(a.notification_log(10).unwrap().len(), 1);
    assert!(b.notification_log(10).unwrap().is_empty());

    // Each host sees its own open episodes only.
    let open_a: Vec<String> = a
        .open_episodes()
        .unwrap()
        .into_iter()
        .map(|e| format!("{}/{}", e.rule, e.scope_key))
        .collect();
    assert_eq!(open_a, vec!["cpu/vm:x", "mem/host"]);
    assert_eq!(b.open_episodes().unwrap().len(), 1);

    // History: filters and keyset pages, as in SQLite.
    for i in 0..5u64 {
        a.record(&[open("disk", &format!("filesystem:/m{i}"), 100 + i)], &[])
            .unwrap();
        a.record(
            &[resolve("disk", &format!("filesystem:/m{i}"), 200 + i)],
            &[],
        )
        .unwrap();
    }
    let q = EpisodeQuery {
        scope: Some("filesystem".into()),
        limit: 2,
        ..EpisodeQuery::default()
    };
    let p1 = a.query(&q).unwrap();
    assert_eq!(p1.history.len(), 2);
    assert!(p1.active.is_empty());
    let Some(next @ Position::After { .. }) = p1.next else {
        panic!("a next page: {:?}", p1.next);
    };
    let p2 = a
        .query(&EpisodeQuery {
            position: next,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(p2.history.len(), 2);
    assert!(p2.history[0].started_at < p1.history[1].started_at);
    assert!(b.query(&q).unwrap().history.is_empty());
    assert_eq!(
        a.prune(t(203)).unwrap(),
        3 + 1,
        "3 old episodes and the log row"
    );

    // A second agent for hv1 is refused: it would notify twice.
    match store(&pg, "hv1") {
        Err(StoreError::HostTaken { host, .. }) => assert_eq!(host, "hv1"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second store for hv1 opened"),
    }

    // The server goes away: calls fail within the timeout, naming the
    // operation and not the password; once it is back, the next call
    // reconnects (and takes the host's lock again).
    // (The test cluster runs with fsync and synchronous_commit off, for
    // speed: a checkpoint makes what was committed survive the hard stop.)
    pg.execute("fleet", "CHECKPOINT");
    pg.stop();
    let started = Instant::now();
    let e = a.open_episodes().unwrap_err();
    let text = vmscope::error::ErrorChain(&e).to_string();
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text.contains("load_open") || text.contains("connect"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    pg.start_again();
    let back = poll_until(Duration::from_secs(20), Duration::from_millis(300), || {
        a.open_episodes().ok()
    })
    .expect("the store reconnects once PostgreSQL is back");
    assert_eq!(back.0.len(), 2);
    drop(a);
    // hv1's lock went with its connection: a new agent for hv1 may start.
    assert_eq!(store(&pg, "hv1").unwrap().open_episodes().unwrap().len(), 2);
}

#[test]
fn an_agent_keeps_its_alerts_in_postgresql_across_a_restart() {
    if !available() {
        eprintln!("skipped: no PostgreSQL here");
        return;
    }
    let pg = Postgres::start();
    pg.create_db("fleet", "SELECT 1");
    let config = format!(
        "[store]\ndatabase_url = \"{}\"\n[watchdog]\nbuiltin_rules = false\n\
         shutdown_timeout = \"2s\"\n[watchdog.rules.mem]\nmetric = \"host_memory_used_ratio\"\n\
         threshold = 0.0001\nsustained = \"1s\"\n",
        pg.url("fleet")
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_in(1, &config, dir.path());
    let firing = |agent: &Agent| {
        let r = crate::support::http::get(&agent.url("/api/v1/alerts")).ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        let n = v["active"].as_array()?.len();
        (r.status == 200 && n == 1).then_some(v)
    };
    poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        firing(&agent)
    })
    .unwrap_or_else(|| panic!("no firing alert: {}", agent.log()));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let rows: Vec<(String, String)> = pg
        .client("fleet")
        .query(
            "SELECT host, rule FROM alert_episodes WHERE resolved_at_ms IS NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(hostname, "mem".to_owned())]);
    let log = agent.log();
    assert!(log.contains("watchdog started"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password is never logged: {log}"
    );
    assert!(
        agent
            .metrics()
            .value("vmscope_watchdog_persistence_enabled", &[])
            == Some(1.0)
    );

    // A restart restores the open episode from PostgreSQL: still one, the
    // same start time, not a new episode.
    let before = firing(&agent).unwrap()["active"][0]["started_at"].clone();
    agent.stop(Signal::TERM);
    let agent = Agent::start_in(1, &config, dir.path());
    let (v, _) = poll_until(Duration::from_secs(15), Duration::from_millis(200), || {
        firing(&agent)
    })
    .unwrap_or_else(|| panic!("no firing alert after the restart: {}", agent.log()));
    assert_eq!(v["active"][0]["started_at"], before, "{v}");
    let n: i64 = pg
        .client("fleet")
        .query_one("SELECT COUNT(*) FROM alert_episodes", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "restored, not opened again");
    agent.stop(Signal::TERM);
}
