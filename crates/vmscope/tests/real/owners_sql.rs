//! The SQL owner source against real databases: a PostgreSQL 15 server and
//! a SQLite file the test writes, attributing real QEMU VMs through a
//! running `vmscope serve`.
//!
//! What a user would check: the owner on `vmscope_vm_info` and
//! `/api/v1/vms` with `owner_source="sql"`; the source's health when the
//! database goes away and comes back; names from the database that try to
//! break the exposition; the platform inventory gauges and histogram; and
//! that the database password shows up nowhere.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::metrics::{Exposition, assert_promtool_clean};
use crate::support::postgres::{self, PASSWORD, Postgres};
use crate::support::{http, in_ci, lab_available, poll_until, unique_name, unique_uuid};

const APPEAR: Duration = Duration::from_secs(20);

fn vm(roms: &Roms, role: &str) -> QemuVm {
    QemuVm::start(
        roms,
        VmSpec {
            name: unique_name(role),
            uuid: unique_uuid(),
            vcpus: 1,
            memory_mib: 32,
            firmware: Firmware::Idle,
            process_name: None,
        },
        None,
    )
}

use crate::support::postgres::lab as postgres_lab;

/// `[owners.sql]` with a fast refresh for tests.
fn sql_config(url: &str, query: &str, extra: &str) -> String {
    format!(
        "[owners.sql]\nurl = {url:?}\nquery = {query:?}\ninterval = \"300ms\"\ntimeout = \"2s\"\n{extra}"
    )
}

/// The one `vmscope_vm_info` series of VM `id`.
fn info<'a>(e: &'a Exposition, id: &str) -> &'a crate::support::metrics::Sample {
    let found = e.all("vmscope_vm_info", &[("vm_id", id)]);
    assert_eq!(found.len(), 1, "vmscope_vm_info for {id}: {found:?}");
    found[0]
}

/// Waits until `ok` holds on a scrape; returns that scrape.
fn scrape_until(agent: &Agent, what: &str, ok: impl Fn(&Exposition) -> bool) -> Exposition {
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

fn scrape_text(agent: &Agent) -> String {
    let r = http::get(&agent.url("/metrics")).unwrap();
    assert_eq!(r.status, 200);
    r.body
}

fn scrape_openmetrics(agent: &Agent) -> String {
    let client: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    client
        .get(agent.url("/metrics"))
        .header("Accept", "application/openmetrics-text; version=1.0.0")
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn real_vms_attributed_from_postgres_by_uuid_name_and_pid() {
    if !postgres_lab("real_vms_attributed_from_postgres_by_uuid_name_and_pid") {
        return;
    }
    let roms = Roms::new();
    let (a, b, c) = (vm(&roms, "sqlu"), vm(&roms, "sqln"), vm(&roms, "sqlp"));
    let pg = Postgres::start();
    // The platform's own schema: a uuid column, an integer user id.
    pg.create_db(
        "platform",
        &format!(
            "CREATE TABLE vms (id uuid, name text, pid integer, user_id bigint, user_name text, project_id text, project_name text);
             INSERT INTO vms VALUES
               ('{}', NULL, NULL, 1001, 'alice', 'p-1', 'lab'),
               (NULL, '{}', NULL, 1002, 'bob', NULL, 'web'),
               (NULL, NULL, {}, NULL, NULL, 'p-3', NULL),
               (NULL, NULL, NULL, 1004, 'nobody', NULL, NULL);",
            a.spec.uuid.to_uppercase(),
            b.spec.name,
            c.pid
        ),
    );
    let agent = Agent::start_with(
        1,
        &sql_config(
            &pg.url("platform"),
            "SELECT id AS vm_id, name AS vm_name, pid, user_id, user_name, project_id, project_name FROM vms",
            "",
        ),
    );
    let e = scrape_until(&agent, "the SQL owners", |e| {
        [&a, &b, &c].iter().all(|v| {
            e.all(
                "vmscope_vm_info",
                &[("vm_id", &v.spec.uuid), ("owner_source", "sql")],
            )
            .len()
                == 1
        })
    });
    let labels = |v: &QemuVm| {
        let s = info(&e, &v.spec.uuid);
        (
            s.label("owner_user").map(str::to_owned),
            s.label("owner_project").map(str::to_owned),
        )
    };
    assert_eq!(labels(&a), (Some("alice".into()), Some("lab".into())));
    assert_eq!(labels(&b), (Some("bob".into()), Some("web".into())));
    // Only ids: the label is the id.
    assert_eq!(labels(&c), (None, Some("p-3".into())));
    let src = [("source", "sql")];
    assert_eq!(e.value("vmscope_owner_source_up", &src), Some(1.0));
    // The row without a VM key is skipped.
    assert_eq!(e.value("vmscope_owner_source_rows", &src), Some(3.0));
    assert_eq!(
        e.value("vmscope_owner_source_rows_skipped", &src),
        Some(1.0)
    );

    let vms = agent.api_vms();
    let api = |v: &QemuVm| {
        vms.iter()
            .find(|x| x["id"] == v.spec.uuid.as_str())
            .unwrap_or_else(|| panic!("{} not in /api/v1/vms", v.spec.uuid))
            .clone()
    };
    let ja = api(&a);
    assert_eq!(ja["owner_source"], "sql");
    assert_eq!(ja["owner"]["user_id"], "1001");
    assert_eq!(ja["owner"]["user_name"], "alice");
    assert_eq!(ja["owner"]["project_id"], "p-1");
    assert_eq!(api(&b)["owner"]["user_id"], "1002");
    assert_eq!(api(&c)["owner"]["project_id"], "p-3");
    assert_eq!(api(&c)["owner_source"], "sql");

    // The password is nowhere the agent speaks.
    assert!(!agent.log().contains(PASSWORD), "{}", agent.log());
    assert!(!scrape_text(&agent).contains(PASSWORD));
}

#[test]
fn postgres_stopped_and_started_again_while_vmscope_runs() {
    if !postgres_lab("postgres_stopped_and_started_again_while_vmscope_runs") {
        return;
    }
    let roms = Roms::new();
    let v = vm(&roms, "sqlr");
    let mut pg = Postgres::start();
    pg.create_db(
        "platform",
        &format!(
            "CREATE TABLE vms (vm_name text, user_name text);
             INSERT INTO vms VALUES ('{}', 'alice');",
            v.spec.name
        ),
    );
    let agent = Agent::start_with(
        1,
        &sql_config(
            &pg.url("platform"),
            "SELECT vm_name, user_name FROM vms",
            "",
        ),
    );
    let user = |e: &Exposition| {
        e.all("vmscope_vm_info", &[("vm_id", &v.spec.uuid)])
            .first()
            .and_then(|s| s.label("owner_user").map(str::to_owned))
    };
    let src = [("source", "sql")];
    scrape_until(&agent, "alice", |e| user(e).as_deref() == Some("alice"));

    pg.stop();
    let e = scrape_until(&agent, "the source down", |e| {
        e.value("vmscope_owner_source_up", &src) == Some(0.0)
    });
    // The last good rows are kept.
    assert_eq!(user(&e).as_deref(), Some("alice"));
    assert_eq!(e.value("vmscope_owner_source_rows", &src), Some(1.0));
    let e = scrape_until(&agent, "connect errors", |e| {
        e.value(
            "vmscope_owner_source_errors_total",
            &[("source", "sql"), ("kind", "connect")],
        )
        .is_some_and(|n| n >= 2.0)
    });
    assert_eq!(user(&e).as_deref(), Some("alice"));
    // Logged once when it went down, not once per failed refresh.
    let downs = agent.log().matches("owner source down").count();
    assert_eq!(downs, 1, "{}", agent.log());

    pg.start_again();
    pg.execute("platform", "UPDATE vms SET user_name = 'carol'");
    let e = scrape_until(&agent, "the changed row", |e| {
        user(e).as_deref() == Some("carol")
    });
    assert_eq!(e.value("vmscope_owner_source_up", &src), Some(1.0));
    assert!(!agent.log().contains(PASSWORD), "{}", agent.log());
}

#[test]
fn hostile_owner_names_from_postgres_do_not_break_the_exposition() {
    if !postgres_lab("hostile_owner_names_from_postgres_do_not_break_the_exposition") {
        return;
    }
    let roms = Roms::new();
    let (a, b) = (vm(&roms, "sqlh"), vm(&roms, "sqlk"));
    let pg = Postgres::start();
    let injection = "x\"} 1\nvmscope_injected{a=\"b\"} 1\n# TYPE vmscope_injected gauge";
    let quoted = "O'Brien \"the\" \\admin\\\nline two";
    let long: String = "ü".repeat(512); // 1 KiB of UTF-8, 2 bytes a char
    pg.create_db(
        "platform",
        "CREATE TABLE vms (vm_name text, user_name text, project_name text);",
    );
    let mut client = pg.client("platform");
    for (name, user, project) in [
        (&a.spec.name, injection, long.as_str()),
        (&b.spec.name, quoted, "ok"),
    ] {
        client
            .execute(
                "INSERT INTO vms VALUES ($1, $2, $3)",
                &[name, &user, &project],
            )
            .unwrap();
    }
    let agent = Agent::start_with(
        1,
        &sql_config(
            &pg.url("platform"),
            "SELECT vm_name, user_name, project_name FROM vms",
            "",
        ),
    );
    let e = scrape_until(&agent, "the hostile owners", |e| {
        [&a, &b].iter().all(|v| {
            e.all(
                "vmscope_vm_info",
                &[("vm_id", &v.spec.uuid), ("owner_source", "sql")],
            )
            .len()
                == 1
        })
    });
    // Values come back exactly (the parser unescapes what the encoder
    // escaped): nothing injected, the long one cut to 256 bytes.
    assert_eq!(info(&e, &a.spec.uuid).label("owner_user"), Some(injection));
    let project = info(&e, &a.spec.uuid).label("owner_project").unwrap();
    assert_eq!(project, "ü".repeat(128), "capped at 256 bytes");
    assert_eq!(info(&e, &b.spec.uuid).label("owner_user"), Some(quoted));
    assert!(e.all("vmscope_injected", &[]).is_empty());
    let body = scrape_text(&agent);
    // Each injected line stays inside its escaped label value.
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("vmscope_injected") || l.starts_with("# TYPE vmscope_injected")),
        "{body}"
    );
    assert_promtool_clean(&body);
    // The API gives the same (capped) values.
    let vms = agent.api_vms();
    let ja = vms
        .iter()
        .find(|x| x["id"] == a.spec.uuid.as_str())
        .unwrap();
    assert_eq!(ja["owner"]["user_name"], injection);
    assert_eq!(ja["owner"]["project_name"], "ü".repeat(128));
}

#[test]
fn sqlite_backend_with_users_and_last_start_inventory() {
    if !lab_available("sqlite_backend_with_users_and_last_start_inventory") {
        return;
    }
    let roms = Roms::new();
    let v = vm(&roms, "sqls");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("platform.db");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let day = 86_400.0;
    // Users' last VM starts, in each form SQLite can hold a time.
    let ages_days = [0.5, 2.0, 5.0, 10.0, 20.0, 60.0, 200.0, 500.0];
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE vms (uuid TEXT, owner TEXT, team TEXT);
             CREATE TABLE users (name TEXT, state TEXT);
             CREATE TABLE starts (user TEXT, at);",
        )
        .unwrap();
        db.execute("INSERT INTO vms VALUES (?1, 'dora', 'ops')", [&v.spec.uuid])
            .unwrap();
        for (i, state) in ["active", "active", "active", "blocked", "invited"]
            .iter()
            .enumerate()
        {
            db.execute(
                "INSERT INTO users VALUES (?1, ?2)",
                rusqlite::params![format!("u{i}"), state],
            )
            .unwrap();
        }
        for (i, age) in ages_days.iter().enumerate() {
            let t = now - age * day;
            let at: rusqlite::types::Value = match i % 3 {
                0 => (t as i64).into(),
                1 => t.into(),
                _ => {
                    // SQLite's own datetime text, UTC.
                    let text: String = db
                        .query_row("SELECT datetime(?1, 'unixepoch')", [t as i64], |r| r.get(0))
                        .unwrap();
                    text.into()
                }
            };
            db.execute(
                "INSERT INTO starts VALUES (?1, ?2)",
                rusqlite::params![format!("u{i}"), at],
            )
            .unwrap();
        }
        // A user who never started a VM is not in the histogram.
        db.execute("INSERT INTO starts VALUES ('u9', NULL)", [])
            .unwrap();
    }
    let agent = Agent::start_with(
        1,
        &sql_config(
            &format!("sqlite://{}", path.display()),
            "SELECT uuid AS vm_id, owner AS user_name, team AS project_name FROM vms",
            "users_query = \"SELECT state, count(*) AS count FROM users GROUP BY state\"\nlast_start_query = \"SELECT user, max(at) AS last_start FROM starts GROUP BY user\"\n",
        ),
    );
    let e = scrape_until(&agent, "the SQLite owner and inventory", |e| {
        e.all(
            "vmscope_vm_info",
            &[("vm_id", &v.spec.uuid), ("owner_source", "sql")],
        )
        .len()
            == 1
            && !e
                .all("vmscope_platform_user_last_vm_start_age_seconds_count", &[])
                .is_empty()
    });
    let s = info(&e, &v.spec.uuid);
    assert_eq!(s.label("owner_user"), Some("dora"));
    assert_eq!(s.label("owner_project"), Some("ops"));
    let users = |state: &str| {
        e.value(
            "vmscope_platform_users",
            &[("source", "sql"), ("state", state)],
        )
    };
    assert_eq!(users("active"), Some(3.0));
    assert_eq!(users("blocked"), Some(1.0));
    assert_eq!(users("invited"), Some(1.0));

    // The histogram, computed here from the ages written above.
    let bounds_days = [1.0, 3.0, 7.0, 14.0, 30.0, 90.0, 365.0];
    let h = "vmscope_platform_user_last_vm_start_age_seconds";
    for b in bounds_days {
        let want = ages_days.iter().filter(|a| **a <= b).count() as f64;
        let le = format!("{}", b * day);
        assert_eq!(
            e.value(&format!("{h}_bucket"), &[("source", "sql"), ("le", &le)]),
            Some(want),
            "bucket le={le}"
        );
    }
    let n = ages_days.len() as f64;
    let src = [("source", "sql")];
    assert_eq!(
        e.value(&format!("{h}_bucket"), &[("source", "sql"), ("le", "+Inf")]),
        Some(n)
    );
    assert_eq!(e.value(&format!("{h}_count"), &src), Some(n));
    let want_sum: f64 = ages_days.iter().map(|a| a * day).sum();
    let sum = e.value(&format!("{h}_sum"), &src).unwrap();
    // Whole seconds in the file, a few seconds between writing and reading.
    assert!(
        (sum - want_sum).abs() < n * 120.0,
        "sum {sum} vs {want_sum}"
    );
    assert_promtool_clean(&scrape_text(&agent));
    let om = scrape_openmetrics(&agent);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains(&format!("# TYPE {h} histogram\n")), "{om}");
    assert!(Exposition::parse(&om).is_ok());
    // promtool reads only the text format; OpenMetrics goes through the
    // reference Python parser when it is installed.
    if let Some(families) = openmetrics_families(&om) {
        assert!(
            families.contains(&format!("{h} histogram 10")),
            "{families}"
        );
        assert!(
            families.contains("vmscope_platform_users gauge 3"),
            "{families}"
        );
    }
}

/// `name type samples` per family, as prometheus_client's OpenMetrics
/// parser reads `body`; `None` when the parser is not installed. A body it
/// rejects fails the test.
fn openmetrics_families(body: &str) -> Option<String> {
    use std::io::Write;
    const SCRIPT: &str = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfor f in parse(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let available = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        eprintln!("python3 prometheus_client not installed: OpenMetrics check skipped");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "OpenMetrics parser: {stderr}\n{body}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_config_reads_the_url_from_the_environment_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[owners.sql]\nurl_env = \"PLATFORM_DB\"\nquery = \"SELECT 1 AS pid\"\n",
    )
    .unwrap();
    let check = |url: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscope"));
        cmd.args(["check-config", "-c"]).arg(&cfg);
        cmd.env_remove("PLATFORM_DB");
        if let Some(u) = url {
            cmd.env("PLATFORM_DB", u);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = check(Some("postgres://vm:hunter2secret@db.example/platform"));
    assert!(ok, "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    let (ok, text) = check(Some(
        "postgres://vm:hunter2secret@db.example/platform?sslmode=require",
    ));
    assert!(!ok, "{text}");
    assert!(text.contains("owners.sql.url_env"), "{text}");
    assert!(text.contains("sslmode"), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    let (ok, text) = check(None);
    assert!(!ok && text.contains("owners.sql.url_env"), "{text}");
    let (ok, text) = check(Some("mysql://vm:hunter2secret@db/platform"));
    assert!(!ok && text.contains("owners.sql.url_env"), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
}

/// The source itself (no agent) against PostgreSQL: what the database is
/// made to enforce, and the platform's column types.
#[test]
fn postgres_fetches_are_read_only_bounded_and_read_the_platforms_types() {
    use vmscope::owners::{OwnerSource, OwnersConfig, Source, VmFacts};
    if !postgres::available() {
        assert!(!in_ci(), "PostgreSQL 15 is missing under CI=true");
        eprintln!("skipped: PostgreSQL 15 is not installed");
        return;
    }
    let mut pg = Postgres::start();
    pg.create_db(
        "platform",
        "CREATE TABLE vms (id uuid, owner_id bigint, login varchar(64), project text);
         INSERT INTO vms VALUES ('6F1B3C2A-0000-4000-8000-000000000001', 7, 'alice', 'lab'),
                                ('6f1b3c2a-0000-4000-8000-000000000002', 8, 'bob', NULL);
         CREATE TABLE starts (owner_id bigint, at timestamptz);
         INSERT INTO starts VALUES (7, now() - interval '2 days'), (8, now() - interval '40 days'), (9, NULL);",
    );
    // libpq's default sslmode (prefer): plain text against a server
    // without TLS, as documented.
    let url = pg.url("platform").replace("?sslmode=disable", "");
    let source = |query: &str, extra: &str| -> Box<dyn OwnerSource> {
        let toml = format!(
            "[sql]\nurl = {url:?}\nquery = {query:?}\ntimeout = \"1s\"\nmax_rows = 3\n{extra}"
        );
        let cfg: OwnersConfig = toml::from_str(&toml).unwrap();
        cfg.validate().unwrap();
        match vmscope::owners::sql::start(&cfg) {
            Some(Source::Fetched(s, _)) => s,
            _ => panic!("the SQL source did not start"),
        }
    };
    let facts = |uuid: &'static str| VmFacts {
        id: uuid,
        uuid: Some(uuid),
        name: "x",
        pid: 1,
        process: None,
        libvirt: None,
    };

    // uuid, bigint and varchar columns; timestamptz and numeric epochs.
    let rows = "SELECT id AS vm_id, owner_id AS user_id, login AS user_name, project AS project_name FROM vms";
    for starts in [
        "SELECT owner_id, max(at) AS last_start FROM starts GROUP BY owner_id",
        "SELECT owner_id, extract(epoch FROM max(at)) AS last_start FROM starts GROUP BY owner_id",
    ] {
        let mut s = source(
            rows,
            &format!(
                "last_start_query = {starts:?}\nusers_query = \"SELECT 'active' AS state, count(*) AS count FROM vms\"\n"
            ),
        );
        let m = s.fetch().unwrap();
        assert_eq!(m.len(), 2);
        let o = m
            .lookup(&facts("6f1b3c2a-0000-4000-8000-000000000001"))
            .unwrap();
        assert_eq!(o.user_id.as_deref(), Some("7"));
        assert_eq!(o.user_name.as_deref(), Some("alice"));
        assert_eq!(o.project_name.as_deref(), Some("lab"));
        let h = m.inventory.last_vm_start.clone().unwrap();
        // 2 days (<= 3), 40 days (<= 90); the NULL one is left out.
        assert_eq!(h.cumulative, [0, 1, 1, 1, 1, 2, 2, 2], "{starts}");
        assert_eq!(m.inventory.users_by_state, vec![("active".to_owned(), 2)]);
    }

    // A query that writes is refused by the read-only transaction.
    let mut s = source(
        "DELETE FROM vms RETURNING id AS vm_id, login AS user_name",
        "",
    );
    assert_eq!(s.fetch().unwrap_err().kind, "query");
    let mut c = pg.client("platform");
    let n: i64 = c.query_one("SELECT count(*) FROM vms", &[]).unwrap().get(0);
    assert_eq!(n, 2, "the DELETE must not have run");

    // Slower than the timeout: the server cancels it.
    let mut s = source(
        "SELECT id AS vm_id, login AS user_name, pg_sleep(5) FROM vms",
        "",
    );
    let t0 = std::time::Instant::now();
    let e = s.fetch().unwrap_err();
    assert_eq!(e.kind, "timeout", "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());

    // More rows than max_rows (3): the fetch fails, it does not eat memory.
    let mut s = source(
        "SELECT g::text AS vm_name, 'u' AS user_name FROM generate_series(1, 1000000) g",
        "",
    );
    assert_eq!(s.fetch().unwrap_err().kind, "too_many_rows");
    let mut s = source("SELECT login AS user_name FROM vms", "");
    assert_eq!(s.fetch().unwrap_err().kind, "columns");

    // The server restarts: one failed fetch (connect), then it reconnects.
    let mut s = source(rows, "");
    assert_eq!(s.fetch().unwrap().len(), 2);
    pg.stop();
    let e = s.fetch().unwrap_err();
    assert_eq!(e.kind, "connect", "{e:?}");
    let text = format!("{e:?} {}", e.source);
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    pg.start_again();
    assert_eq!(s.fetch().unwrap().len(), 2);
}
