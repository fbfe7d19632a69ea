//! SQLite backend (rusqlite, bundled SQLite). Only ever used from the store
//! thread (see `store/mod.rs`).
//!
//! Opens the file in WAL mode (`synchronous = NORMAL`: a power cut can lose
//! the last transactions, never corrupt the file), creates the parent
//! directory, and applies [`MIGRATIONS`] recorded in `schema_migrations`.
//! A database written by a newer vmscope (a higher schema version) is
//! refused rather than guessed at, and so is an SQLite file some other
//! program made (tables but no `schema_migrations`, or without ours): its
//! tables are never written into. Before opening, the store takes the
//! `<db>.lock` ([`DbLock`]) so a second agent cannot share the file. Times are integer milliseconds since the
//! Unix epoch (UTC).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

mod ledger;

use super::ledger::{LedgerKey, LedgerUsage};
use super::{to_i64, to_u64};

use super::lock::DbLock;
use super::{
    AlertStore, EpisodePage, EpisodeQuery, EpisodeRow, EpisodeWrite, NotificationLogEntry,
    OutboxRow, OutboxWrite, Position, StoreError, from_ms, to_ms,
};

/// Schema versions, applied in order, each in its own transaction. Never
/// edit a released entry: append a new one.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE alert_episodes (
        id                  INTEGER PRIMARY KEY,
        rule                TEXT    NOT NULL,
        scope_key           TEXT    NOT NULL,
        severity            TEXT    NOT NULL,
        started_at_ms       INTEGER NOT NULL,
        resolved_at_ms      INTEGER,
        last_notified_at_ms INTEGER NOT NULL,
        payload             TEXT    NOT NULL,
        resolved_payload    TEXT
    );
    CREATE UNIQUE INDEX alert_episodes_open
        ON alert_episodes (rule, scope_key) WHERE resolved_at_ms IS NULL;
    CREATE INDEX alert_episodes_started ON alert_episodes (started_at_ms, id);
    CREATE TABLE notification_log (
        id      INTEGER PRIMARY KEY,
        at_ms   INTEGER NOT NULL,
        sink    TEXT    NOT NULL,
        rule    TEXT    NOT NULL,
        status  TEXT    NOT NULL,
        result  TEXT    NOT NULL,
        alerts  INTEGER NOT NULL,
        error   TEXT
    );
    CREATE INDEX notification_log_at ON notification_log (at_ms);",
    ),
    // Notifications not yet confirmed by their sink (one row per sink),
    // delivered again after a restart in `id` order.
    (
        2,
        "CREATE TABLE notification_outbox (
            id            INTEGER PRIMARY KEY,
            sink          TEXT    NOT NULL,
            created_at_ms INTEGER NOT NULL,
            payload       TEXT    NOT NULL
        );",
    ),
    // The usage ledger (store/ledger.rs): rows are running totals per
    // interval, replaced by each flush (idempotent); cursors are where each
    // incarnation's next delta starts; ledger_state the per-boot horizon.
    (
        3,
        "CREATE TABLE ledger_rows (
            host                          TEXT    NOT NULL,
            vm_id                         TEXT    NOT NULL,
            incarnation                   TEXT    NOT NULL,
            resolution_s                  INTEGER NOT NULL,
            interval_start_ms             INTEGER NOT NULL,
            vm_name                       TEXT    NOT NULL,
            user_key                      TEXT,
            user_label                    TEXT,
            project_key                   TEXT,
            project_label                 TEXT,
            cpu_seconds                   REAL    NOT NULL,
            guest_seconds                 REAL,
            vcpu_allocated_seconds        REAL    NOT NULL,
            memory_allocated_byte_seconds REAL    NOT NULL,
            rss_byte_seconds              REAL    NOT NULL,
            net_rx_bytes                  INTEGER NOT NULL,
            net_tx_bytes                  INTEGER NOT NULL,
            observed_seconds              REAL    NOT NULL,
            gap_seconds                   REAL    NOT NULL,
            PRIMARY KEY (host, vm_id, incarnation, resolution_s, interval_start_ms)
        ) WITHOUT ROWID;
        CREATE INDEX ledger_rows_time ON ledger_rows (resolution_s, interval_start_ms);
        CREATE TABLE ledger_cursors (
            incarnation   TEXT    PRIMARY KEY,
            host          TEXT    NOT NULL,
            vm_id         TEXT    NOT NULL,
            at_ms         INTEGER NOT NULL,
            cpu_seconds   REAL    NOT NULL,
            guest_seconds REAL,
            net           TEXT    NOT NULL,
            vcpus         INTEGER,
            memory_bytes  INTEGER,
            rss_bytes     INTEGER NOT NULL,
            running       INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE ledger_state (
            boot_id    TEXT    PRIMARY KEY,
            horizon_ms INTEGER NOT NULL
        ) WITHOUT ROWID;",
    ),
    // The ledger, compacted (store/sqlite/ledger.rs): the strings a row
    // repeats (host, VM id, incarnation; name and owner) move to two
    // dictionary tables, facts keep integer references (444 -> about 93
    // bytes a row), keyed time first so that a window's rows and
    // retention's deletes are range scans. `ledger_rows` stays as a view
    // with migration 3's columns, so consumers' SQL keeps working. Hourly
    // and daily rollups of the rows already there are computed once here;
    // from now on each flush adds to them.
    (
        4,
        "CREATE TABLE ledger_vms (
            id          INTEGER PRIMARY KEY,
            host        TEXT NOT NULL,
            vm_id       TEXT NOT NULL,
            incarnation TEXT NOT NULL,
            UNIQUE (host, vm_id, incarnation)
        );
        CREATE TABLE ledger_owners (
            id            INTEGER PRIMARY KEY,
            vm_name       TEXT NOT NULL,
            user_key      TEXT,
            user_label    TEXT,
            project_key   TEXT,
            project_label TEXT
        );
        CREATE INDEX ledger_owners_name ON ledger_owners (vm_name);
        CREATE TABLE ledger_facts (
            interval_start_ms             INTEGER NOT NULL,
            vm                            INTEGER NOT NULL,
            resolution_s                  INTEGER NOT NULL,
            owner                         INTEGER NOT NULL,
            cpu_seconds                   REAL    NOT NULL,
            guest_seconds                 REAL,
            vcpu_allocated_seconds        REAL    NOT NULL,
            memory_allocated_byte_seconds REAL    NOT NULL,
            rss_byte_seconds              REAL    NOT NULL,
            net_rx_bytes                  INTEGER NOT NULL,
            net_tx_bytes                  INTEGER NOT NULL,
            observed_seconds              REAL    NOT NULL,
            gap_seconds                   REAL    NOT NULL,
            PRIMARY KEY (interval_start_ms, vm, resolution_s)
        ) WITHOUT ROWID;
        CREATE TABLE ledger_resolutions (resolution_s INTEGER PRIMARY KEY);
        INSERT INTO ledger_vms (host, vm_id, incarnation)
            SELECT DISTINCT host, vm_id, incarnation FROM ledger_rows;
        INSERT INTO ledger_owners (vm_name, user_key, user_label, project_key, project_label)
            SELECT DISTINCT vm_name, user_key, user_label, project_key, project_label
            FROM ledger_rows;
        INSERT INTO ledger_facts
            SELECT r.interval_start_ms, v.id, r.resolution_s, o.id, r.cpu_seconds,
                   r.guest_seconds, r.vcpu_allocated_seconds, r.memory_allocated_byte_seconds,
                   r.rss_byte_seconds, r.net_rx_bytes, r.net_tx_bytes, r.observed_seconds,
                   r.gap_seconds
            FROM ledger_rows r
            JOIN ledger_vms v ON v.host = r.host AND v.vm_id = r.vm_id
                              AND v.incarnation = r.incarnation
            JOIN ledger_owners o ON o.vm_name = r.vm_name AND o.user_key IS r.user_key
                                 AND o.user_label IS r.user_label
                                 AND o.project_key IS r.project_key
                                 AND o.project_label IS r.project_label;
        INSERT INTO ledger_facts
            SELECT (interval_start_ms / 3600000) * 3600000 AS h, vm, 3600, owner,
                   SUM(cpu_seconds), SUM(guest_seconds), SUM(vcpu_allocated_seconds),
                   SUM(memory_allocated_byte_seconds), SUM(rss_byte_seconds),
                   SUM(net_rx_bytes), SUM(net_tx_bytes), SUM(observed_seconds),
                   SUM(gap_seconds)
            FROM ledger_facts WHERE resolution_s < 3600 GROUP BY h, vm;
        INSERT INTO ledger_facts
            SELECT (interval_start_ms / 86400000) * 86400000 AS d, vm, 86400, owner,
                   SUM(cpu_seconds), SUM(guest_seconds), SUM(vcpu_allocated_seconds),
                   SUM(memory_allocated_byte_seconds), SUM(rss_byte_seconds),
                   SUM(net_rx_bytes), SUM(net_tx_bytes), SUM(observed_seconds),
                   SUM(gap_seconds)
            FROM ledger_facts WHERE resolution_s = 3600 GROUP BY d, vm;
        INSERT INTO ledger_resolutions SELECT DISTINCT resolution_s FROM ledger_facts;
        DROP TABLE ledger_rows;
        CREATE VIEW ledger_rows AS
            SELECT v.host, v.vm_id, v.incarnation, f.resolution_s, f.interval_start_ms,
                   o.vm_name, o.user_key, o.user_label, o.project_key, o.project_label,
                   f.cpu_seconds, f.guest_seconds, f.vcpu_allocated_seconds,
                   f.memory_allocated_byte_seconds, f.rss_byte_seconds, f.net_rx_bytes,
                   f.net_tx_bytes, f.observed_seconds, f.gap_seconds
            FROM ledger_facts f
            JOIN ledger_vms v ON v.id = f.vm
            JOIN ledger_owners o ON o.id = f.owner;",
    ),
    // The fleet ledger's spool (`[ledger] database_url`, ledger/ship.rs):
    // the keys of rows written here and not yet in PostgreSQL, with the
    // flush that last wrote them (`seq`) and when they first waited.
    // Number 5: 4 is the ledger tables' rewrite (rollups).
    (
        5,
        "CREATE TABLE ledger_spool (
            host              TEXT    NOT NULL,
            vm_id             TEXT    NOT NULL,
            incarnation       TEXT    NOT NULL,
            resolution_s      INTEGER NOT NULL,
            interval_start_ms INTEGER NOT NULL,
            seq               INTEGER NOT NULL,
            spooled_at_ms     INTEGER NOT NULL,
            PRIMARY KEY (host, vm_id, incarnation, resolution_s, interval_start_ms)
        ) WITHOUT ROWID;
        CREATE INDEX ledger_spool_seq ON ledger_spool (seq);
        CREATE INDEX ledger_spool_age ON ledger_spool (spooled_at_ms);
        CREATE TABLE ledger_spool_state (
            id       INTEGER PRIMARY KEY CHECK (id = 1),
            enabled  INTEGER NOT NULL,
            next_seq INTEGER NOT NULL
        );
        INSERT INTO ledger_spool_state (id, enabled, next_seq) VALUES (1, 0, 1);",
    ),
    // The ledger's counter totals (ledger/totals.rs): per owner (its own
    // series), per owner kind (the overflow, key '') and per VM id, all the
    // usage ever accounted on this host; added to in the flush transaction
    // that moves the cursors, so they match what the cursors continue from.
    (
        6,
        "CREATE TABLE ledger_totals (
            kind                          TEXT    NOT NULL,
            key                           TEXT    NOT NULL,
            label                         TEXT,
            cpu_seconds                   REAL    NOT NULL,
            vcpu_allocated_seconds        REAL    NOT NULL,
            memory_allocated_byte_seconds REAL    NOT NULL,
            net_rx_bytes                  INTEGER NOT NULL,
            net_tx_bytes                  INTEGER NOT NULL,
            first_ms                      INTEGER NOT NULL,
            last_ms                       INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID;
        CREATE INDEX ledger_totals_recent ON ledger_totals (kind, last_ms);",
    ),
];

/// The schema version a reader of the usage ledger needs (migration 4:
/// the compact tables, rollups and `ledger_resolutions`).
pub const LEDGER_SCHEMA: i64 = 4;

/// A table every vmscope database has once migration 1 ran.
const OUR_TABLE: &str = "alert_episodes";

pub struct SqliteStore {
    conn: Connection,
    /// The ledger's dictionary ids, so a flush rarely looks them up.
    ledger_ids: ledger::IdCache,
    /// Released when the store is dropped (after the connection); `None`
    /// for a read-only reader ([`SqliteStore::open_read_only`]).
    _lock: Option<DbLock>,
}

fn q(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
        }
        let lock = DbLock::acquire(path)?;
        let conn = Connection::open(path).map_err(|e| open_err(Box::new(e)))?;
        let mut store = SqliteStore {
            conn,
            ledger_ids: ledger::IdCache::default(),
            _lock: Some(lock),
        };
        store.configure().map_err(|e| open_err(Box::new(e)))?;
        store.migrate(path)?;
        Ok(store)
    }

    /// Open `path` to read it while an agent may be writing it (`vmscope
    /// usage`): read-only, no lock, no migration. Refuses a file vmscope
    /// did not make, one of a newer schema, and one older than `min_schema`
    /// (the tables the reader needs are not there yet).
    pub fn open_read_only(path: &Path, min_schema: i64) -> Result<SqliteStore, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            return Err(open_err(Box::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file (has vmscope serve run with this store.path?)",
            ))));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| open_err(Box::new(e)))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| open_err(Box::new(e)))?;
        check_ours(&conn, path)?;
        let store = SqliteStore {
            conn,
            ledger_ids: ledger::IdCache::default(),
            _lock: None,
        };
        let found = store.schema_version()?;
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if found > known {
            return Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        if found < min_schema {
            return Err(open_err(Box::new(std::io::Error::other(format!(
                "schema version {found}: written by a vmscope without the usage ledger \
                 (needs {min_schema}); run this vmscope's serve once"
            )))));
        }
        Ok(store)
    }

    fn configure(&mut self) -> Result<(), rusqlite::Error> {
        self.conn.busy_timeout(Duration::from_secs(5))?;
        // journal_mode answers with a row; query it rather than execute.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "state database is not in WAL mode");
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(())
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StoreError> {
        let op = "migrate";
        check_ours(&self.conn, path)?;
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version       INTEGER PRIMARY KEY,
                    applied_at_ms INTEGER NOT NULL
                )",
            )
            .map_err(q(op))?;
        let current: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(q(op))?;
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                path: PathBuf::from(path),
                found: current,
                known,
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = self.conn.transaction().map_err(q(op))?;
            tx.execute_batch(sql).map_err(q(op))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
                params![version, to_ms(SystemTime::now())],
            )
            .map_err(q(op))?;
            tx.commit().map_err(q(op))?;
            tracing::info!(version, "state database migrated");
        }
        Ok(())
    }

    /// The journal mode in effect (for tests and diagnostics).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(q("query"))
    }
}

/// Refuse a database some other program made: one with tables but no
/// `schema_migrations`, or with migrations recorded but not our tables
/// (another tool's `schema_migrations`). An empty file is fine (new).
fn check_ours(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let op = "migrate";
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(q(op))?;
    if tables.is_empty() {
        return Ok(());
    }
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_path_buf(),
        detail,
    };
    let listed = || {
        let mut names: Vec<&str> = tables.iter().map(String::as_str).take(5).collect();
        if tables.len() > 5 {
            names.push("...");
        }
        names.join(", ")
    };
    if !tables.iter().any(|t| t == "schema_migrations") {
        return Err(foreign(format!(
            "tables {}, no schema_migrations",
            listed()
        )));
    }
    let has_versions: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM schema_migrations)", [], |r| {
            r.get(0)
        })
        .map_err(|source| foreign(format!("unreadable schema_migrations: {source}")))?;
    if has_versions && !tables.iter().any(|t| t == OUR_TABLE) {
        return Err(foreign(format!("tables {}, no {OUR_TABLE}", listed())));
    }
    Ok(())
}

/// Would [`SqliteStore::open`] work for `path`, as far as can be told
/// without creating or changing anything? For `check-config`: the nearest
/// existing directory must be writable, and an existing file must be
/// writable and be a vmscope database of a schema this build knows. A lock
/// held by a running agent is not an error here.
pub fn probe(path: &Path) -> Result<(), StoreError> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    let open_err = |e: std::io::Error| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    // Effective ids, as the agent would use them.
    let writable = |p: &Path| {
        accessat(CWD, p, Access::WRITE_OK, AtFlags::EACCESS)
            .map_err(|e| open_err(std::io::Error::from(e)))
    };
    if path.exists() {
        writable(path)?;
        // WAL and the lock file are created beside the database.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            writable(dir)?;
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| open_err(std::io::Error::other(e)))?;
        check_ours(&conn, path).map_err(|e| match e {
            StoreError::Query { source, .. } => open_err(std::io::Error::other(source)),
            other => other,
        })?;
        let found: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if found > known {
            return Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
        return Ok(());
    }
    // The first ancestor that exists is where create_dir_all would start.
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            return writable(Path::new("."));
        }
        if d.exists() {
            if !d.is_dir() {
                return Err(open_err(std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", d.display()),
                )));
            }
            return writable(d);
        }
        dir = d.parent();
    }
    Ok(())
}

const EPISODE_COLS: &str = "id, rule, scope_key, severity, started_at_ms, resolved_at_ms, \
                            last_notified_at_ms, payload, resolved_payload";

fn row_to_episode(r: &rusqlite::Row<'_>) -> rusqlite::Result<EpisodeRow> {
    Ok(EpisodeRow {
        id: r.get(0)?,
        rule: r.get(1)?,
        scope_key: r.get(2)?,
        severity: r.get(3)?,
        started_at: from_ms(r.get(4)?),
        resolved_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
        last_notified_at: from_ms(r.get(6)?),
        payload: r.get(7)?,
        resolved_payload: r.get(8)?,
    })
}

/// WHERE fragments and their bound values for the shared filters. The SQL
/// text is fixed; user input only ever travels as bound values.
fn filters(q: &EpisodeQuery) -> (Vec<&'static str>, Vec<Value>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if let Some(rule) = &q.rule {
        clauses.push("rule = ?");
        values.push(Value::Text(rule.clone()));
    }
    if let Some(scope) = &q.scope {
        if scope.contains(':') {
            clauses.push("scope_key = ?");
            values.push(Value::Text(scope.clone()));
        } else {
            // A kind: the key itself (`host`) or any key `kind:...`; ';' is
            // the character after ':', so this is a prefix range scan.
            clauses.push("(scope_key = ? OR (scope_key >= ? AND scope_key < ?))");
            values.push(Value::Text(scope.clone()));
            values.push(Value::Text(format!("{scope}:")));
            values.push(Value::Text(format!("{scope};")));
        }
    }
    if let Some(only) = &q.only_scopes {
        // One bound JSON array, however many keys: the SQL text stays fixed.
        clauses.push("scope_key IN (SELECT value FROM json_each(?))");
        values.push(Value::Text(
            serde_json::to_string(only).unwrap_or_else(|_| "[]".to_owned()),
        ));
    }
    if let Some(since) = q.since {
        clauses.push("(resolved_at_ms IS NULL OR resolved_at_ms >= ?)");
        values.push(Value::Integer(to_ms(since)));
    }
    if let Some(until) = q.until {
        clauses.push("started_at_ms <= ?");
        values.push(Value::Integer(to_ms(until)));
    }
    (clauses, values)
}

impl AlertStore for SqliteStore {
    fn open_episodes(&mut self) -> Result<Vec<EpisodeRow>, StoreError> {
        let op = "load_open";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {EPISODE_COLS} FROM alert_episodes WHERE resolved_at_ms IS NULL \
                 ORDER BY rule, scope_key"
            ))
            .map_err(q(op))?;
        let rows = stmt
            .query_map([], row_to_episode)
            .map_err(q(op))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q(op))?;
        Ok(rows)
    }

    fn record(
        &mut self,
        writes: &[EpisodeWrite],
        outbox: &[OutboxWrite],
    ) -> Result<Vec<i64>, StoreError> {
        let op = "apply";
        let tx = self.conn.transaction().map_err(q(op))?;
        for w in writes {
            match w {
                EpisodeWrite::Open {
                    rule,
                    scope_key,
                    severity,
                    started_at,
                    payload,
                } => {
                    let ms = to_ms(*started_at);
                    // An open episode for the same (rule, scope) would be a
                    // bug upstream; close it rather than fail the insert.
                    tx.execute(
                        "UPDATE alert_episodes SET resolved_at_ms = ?3 \
                         WHERE rule = ?1 AND scope_key = ?2 AND resolved_at_ms IS NULL",
                        params![rule, scope_key, ms],
                    )
                    .map_err(q(op))?;
                    tx.execute(
                        "INSERT INTO alert_episodes (rule, scope_key, severity, started_at_ms, \
                         last_notified_at_ms, payload) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                        params![rule, scope_key, severity, ms, payload],
                    )
                    .map_err(q(op))?;
                }
                EpisodeWrite::Notified {
                    rule,
                    scope_key,
                    at,
                } => {
                    tx.execute(
                        "UPDATE alert_episodes SET last_notified_at_ms = ?3 \
                         WHERE rule = ?1 AND scope_key = ?2 AND resolved_at_ms IS NULL",
                        params![rule, scope_key, to_ms(*at)],
                    )
                    .map_err(q(op))?;
                }
                EpisodeWrite::Resolve {
                    rule,
                    scope_key,
                    at,
                    payload,
                } => {
                    tx.execute(
                        "UPDATE alert_episodes SET resolved_at_ms = ?3, last_notified_at_ms = ?3, \
                         resolved_payload = ?4 \
                         WHERE rule = ?1 AND scope_key = ?2 AND resolved_at_ms IS NULL",
                        params![rule, scope_key, to_ms(*at), payload],
                    )
                    .map_err(q(op))?;
                }
            }
        }
        let mut ids = Vec::with_capacity(outbox.len());
        for o in outbox {
            tx.execute(
                "INSERT INTO notification_outbox (sink, created_at_ms, payload) VALUES (?1, ?2, ?3)",
                params![o.sink, to_ms(o.created_at), o.payload],
            )
            .map_err(q(op))?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit().map_err(q(op))?;
        Ok(ids)
    }

    fn finish_delivery(
        &mut self,
        outbox_id: Option<i64>,
        e: &NotificationLogEntry,
    ) -> Result<(), StoreError> {
        let op = "log_notification";
        let tx = self.conn.transaction().map_err(q(op))?;
        tx.execute(
            "INSERT INTO notification_log (at_ms, sink, rule, status, result, alerts, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                to_ms(e.at),
                e.sink,
                e.rule,
                e.status,
                e.result,
                e.alerts,
                e.error
            ],
        )
        .map_err(q(op))?;
        if let Some(id) = outbox_id {
            tx.execute("DELETE FROM notification_outbox WHERE id = ?1", [id])
                .map_err(q(op))?;
        }
        tx.commit().map_err(q(op))
    }

    fn outbox(&mut self) -> Result<Vec<OutboxRow>, StoreError> {
        let op = "load_open";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, sink, created_at_ms, payload FROM notification_outbox ORDER BY id",
            )
            .map_err(q(op))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    sink: r.get(1)?,
                    created_at: from_ms(r.get(2)?),
                    payload: r.get(3)?,
                })
            })
            .map_err(q(op))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q(op))?;
        Ok(rows)
    }

    fn query(&mut self, qy: &EpisodeQuery) -> Result<EpisodePage, StoreError> {
        let op = "query";
        let (clauses, values) = filters(qy);

        let mut active_where = vec!["resolved_at_ms IS NULL"];
        active_where.extend(clauses.iter().copied());
        let sql = format!(
            "SELECT {EPISODE_COLS} FROM alert_episodes WHERE {} \
             ORDER BY started_at_ms DESC, id DESC LIMIT 10000",
            active_where.join(" AND ")
        );
        let active = self
            .conn
            .prepare(&sql)
            .and_then(|mut s| {
                s.query_map(params_from_iter(values.iter()), row_to_episode)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(q(op))?;

        let limit = qy.limit.max(1);
        let mut hist_where = vec!["resolved_at_ms IS NOT NULL"];
        hist_where.extend(clauses.iter().copied());
        let mut hist_values = values;
        let mut offset = 0i64;
        match qy.position {
            Position::First => {}
            Position::After { started_ms, id } => {
                hist_where.push("(started_at_ms < ? OR (started_at_ms = ? AND id < ?))");
                hist_values.push(Value::Integer(started_ms));
                hist_values.push(Value::Integer(started_ms));
                hist_values.push(Value::Integer(id));
            }
            Position::Page(p) => {
                offset = i64::from(p.saturating_sub(1)) * i64::from(limit);
            }
        }
        hist_values.push(Value::Integer(i64::from(limit) + 1));
        hist_values.push(Value::Integer(offset));
        let sql = format!(
            "SELECT {EPISODE_COLS} FROM alert_episodes WHERE {} \
             ORDER BY started_at_ms DESC, id DESC LIMIT ? OFFSET ?",
            hist_where.join(" AND ")
        );
        let history = self
            .conn
            .prepare(&sql)
            .and_then(|mut s| {
                s.query_map(params_from_iter(hist_values.iter()), row_to_episode)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(q(op))?;
        Ok(EpisodePage::new(active, history, limit, qy.position))
    }

    fn notification_log(&mut self, limit: u32) -> Result<Vec<NotificationLogEntry>, StoreError> {
        let op = "query";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at_ms, sink, rule, status, result, alerts, error FROM notification_log \
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(q(op))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(NotificationLogEntry {
                    at: from_ms(r.get(0)?),
                    sink: r.get(1)?,
                    rule: r.get(2)?,
                    status: r.get(3)?,
                    result: r.get(4)?,
                    alerts: r.get(5)?,
                    error: r.get(6)?,
                })
            })
            .map_err(q(op))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q(op))?;
        Ok(rows)
    }

    fn prune(&mut self, before: SystemTime) -> Result<u64, StoreError> {
        let op = "prune";
        let ms = to_ms(before);
        let tx = self.conn.transaction().map_err(q(op))?;
        let a = tx
            .execute(
                "DELETE FROM alert_episodes WHERE resolved_at_ms IS NOT NULL AND resolved_at_ms < ?1",
                [ms],
            )
            .map_err(q(op))?;
        let b = tx
            .execute("DELETE FROM notification_log WHERE at_ms < ?1", [ms])
            .map_err(q(op))?;
        tx.commit().map_err(q(op))?;
        Ok((a + b) as u64)
    }
}

impl SqliteStore {
    /// The database's size in bytes after checkpointing the WAL into it
    /// (pages x page size): what the file holds (benchmarks, diagnostics).
    pub fn file_bytes(&self) -> Result<u64, StoreError> {
        let op = "query";
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(q(op))?;
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(q(op))?;
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(q(op))?;
        Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
    }

    /// The schema version in effect.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|v| v.flatten().unwrap_or(0))
            .map_err(q("query"))
    }
}

const LEDGER_ROW_COLS: &str = "host, vm_id, incarnation, resolution_s, interval_start_ms, \
     vm_name, user_key, user_label, project_key, project_label, cpu_seconds, guest_seconds, \
     vcpu_allocated_seconds, memory_allocated_byte_seconds, rss_byte_seconds, net_rx_bytes, \
     net_tx_bytes, observed_seconds, gap_seconds";

fn row_to_ledger(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LedgerKey, LedgerUsage)> {
    Ok((
        LedgerKey {
            host: r.get(0)?,
            vm_id: r.get(1)?,
            incarnation: r.get(2)?,
            resolution_s: r.get(3)?,
            interval_start_ms: r.get(4)?,
        },
        LedgerUsage {
            vm_name: r.get(5)?,
            user_key: r.get(6)?,
            user_label: r.get(7)?,
            project_key: r.get(8)?,
            project_label: r.get(9)?,
            cpu_seconds: r.get(10)?,
            guest_seconds: r.get(11)?,
            vcpu_allocated_seconds: r.get(12)?,
            memory_allocated_byte_seconds: r.get(13)?,
            rss_byte_seconds: r.get(14)?,
            net_rx_bytes: to_u64(r.get(15)?),
            net_tx_bytes: to_u64(r.get(16)?),
            observed_seconds: r.get(17)?,
            gap_seconds: r.get(18)?,
        },
    ))
}

// ---- The fleet ledger's spool (migration 5; store/spool.rs, ledger/ship.rs) ----

/// Within a flush's transaction: whether spooling is on, and if so this
/// flush's number (taken) and time, for [`spool_key`]. Off (no
/// `database_url`): one read.
pub(super) fn spool_begin(tx: &Connection) -> Result<Option<(i64, i64)>, StoreError> {
    let op = "ledger_flush";
    let state: Option<(bool, i64)> = tx
        .query_row(
            "SELECT enabled, next_seq FROM ledger_spool_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(q(op))?;
    let Some((true, seq)) = state else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE ledger_spool_state SET next_seq = next_seq + 1 WHERE id = 1",
        [],
    )
    .map_err(q(op))?;
    Ok(Some((seq, to_ms(SystemTime::now()))))
}

/// Add (or renew, with this flush's number) the key of a row written by
/// this flush, raw or rollup, so that the shipper sends its new totals to
/// PostgreSQL. A row already waiting keeps its first spool time (the lag
/// metric says how long PostgreSQL has been behind) and takes the new seq.
pub(super) fn spool_key(
    tx: &Connection,
    (seq, now): (i64, i64),
    k: &LedgerKey,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO ledger_spool (host, vm_id, incarnation, resolution_s, interval_start_ms, \
         seq, spooled_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT DO UPDATE SET seq = excluded.seq",
    )
    .and_then(|mut add| {
        add.execute(params![
            k.host,
            k.vm_id,
            k.incarnation,
            k.resolution_s,
            k.interval_start_ms,
            seq,
            now
        ])
    })
    .map_err(q("ledger_flush"))?;
    Ok(())
}

impl SqliteStore {
    /// Turn spooling on (a `database_url` is configured) or off; off also
    /// empties the spool (nothing will ship it). Cheap when unchanged.
    pub fn spool_set(&mut self, enabled: bool) -> Result<(), StoreError> {
        let op = "ledger_spool";
        let tx = self.conn.transaction().map_err(q(op))?;
        let was: bool = tx
            .query_row(
                "SELECT enabled FROM ledger_spool_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(q(op))?;
        if was != enabled {
            tx.execute(
                "UPDATE ledger_spool_state SET enabled = ?1 WHERE id = 1",
                [enabled],
            )
            .map_err(q(op))?;
            if !enabled {
                tx.execute("DELETE FROM ledger_spool", []).map_err(q(op))?;
            }
        }
        tx.commit().map_err(q(op))
    }

    /// The oldest `max_rows` spooled rows (by seq) with their current
    /// totals, after dropping the oldest entries past `bound` (counted in
    /// the answer). Entries whose row is gone (retention) are removed.
    pub fn spool_take(
        &mut self,
        max_rows: usize,
        bound: usize,
    ) -> Result<super::spool::SpoolBatch, StoreError> {
        let op = "ledger_spool";
        let tx = self.conn.transaction().map_err(q(op))?;
        let count: i64 = tx
            .query_row("SELECT COUNT(*) FROM ledger_spool", [], |r| r.get(0))
            .map_err(q(op))?;
        let excess = super::spool::excess(to_u64(count), bound);
        if excess > 0 {
            tx.execute(
                "DELETE FROM ledger_spool WHERE (host, vm_id, incarnation, resolution_s, \
                 interval_start_ms) IN (SELECT host, vm_id, incarnation, resolution_s, \
                 interval_start_ms FROM ledger_spool ORDER BY seq LIMIT ?1)",
                [to_i64(excess)],
            )
            .map_err(q(op))?;
        }
        let mut batch = super::spool::SpoolBatch {
            dropped: excess,
            spooled: to_u64(count).saturating_sub(excess),
            ..Default::default()
        };
        {
            let cols = LEDGER_ROW_COLS
                .split(", ")
                .enumerate()
                .map(|(i, c)| {
                    let c = c.trim();
                    if i < 5 {
                        format!("s.{c}")
                    } else {
                        format!("r.{c}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {cols}, s.seq, r.vm_name IS NULL FROM ledger_spool s \
                     LEFT JOIN ledger_rows r ON r.host = s.host AND r.vm_id = s.vm_id \
                     AND r.incarnation = s.incarnation AND r.resolution_s = s.resolution_s \
                     AND r.interval_start_ms = s.interval_start_ms ORDER BY s.seq LIMIT ?1"
                ))
                .map_err(q(op))?;
            let mut rows = stmt.query([to_i64(max_rows as u64)]).map_err(q(op))?;
            let mut orphans = Vec::new();
            while let Some(r) = rows.next().map_err(q(op))? {
                let seq: i64 = r.get(19).map_err(q(op))?;
                let orphan: bool = r.get(20).map_err(q(op))?;
                if orphan {
                    orphans.push((
                        r.get::<_, String>(0).map_err(q(op))?,
                        r.get::<_, String>(1).map_err(q(op))?,
                        r.get::<_, String>(2).map_err(q(op))?,
                        r.get::<_, i64>(3).map_err(q(op))?,
                        r.get::<_, i64>(4).map_err(q(op))?,
                    ));
                    continue;
                }
                let (k, u) = row_to_ledger(r).map_err(q(op))?;
                batch.seqs.push(seq);
                batch.rows.push((k, u));
            }
            drop(rows);
            drop(stmt);
            for o in &orphans {
                tx.execute(
                    "DELETE FROM ledger_spool WHERE host = ?1 AND vm_id = ?2 AND incarnation = ?3 \
                     AND resolution_s = ?4 AND interval_start_ms = ?5",
                    params![o.0, o.1, o.2, o.3, o.4],
                )
                .map_err(q(op))?;
            }
            batch.spooled = batch.spooled.saturating_sub(orphans.len() as u64);
        }
        batch.oldest_ms = tx
            .query_row("SELECT MIN(spooled_at_ms) FROM ledger_spool", [], |r| {
                r.get(0)
            })
            .map_err(q(op))?;
        tx.commit().map_err(q(op))?;
        Ok(batch)
    }

    /// Remove the spool entries of `keys` that no flush renewed since they
    /// were taken (seq still at most the one read): a row re-flushed
    /// meanwhile stays spooled with its newer totals. Returns how many.
    pub fn spool_ack(&mut self, keys: &[(LedgerKey, i64)]) -> Result<u64, StoreError> {
        let op = "ledger_spool";
        let tx = self.conn.transaction().map_err(q(op))?;
        let mut n = 0;
        {
            let mut del = tx
                .prepare_cached(
                    "DELETE FROM ledger_spool WHERE host = ?1 AND vm_id = ?2 AND incarnation = ?3 \
                     AND resolution_s = ?4 AND interval_start_ms = ?5 AND seq <= ?6",
                )
                .map_err(q(op))?;
            for (k, seq) in keys {
                n += del
                    .execute(params![
                        k.host,
                        k.vm_id,
                        k.incarnation,
                        k.resolution_s,
                        k.interval_start_ms,
                        seq
                    ])
                    .map_err(q(op))? as u64;
            }
        }
        tx.commit().map_err(q(op))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::store::{
        LedgerBatch, LedgerCursor, LedgerKey, LedgerStore, LedgerUsage, NetCounter, UsageQuery,
    };

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn open(rule: &str, scope: &str, at: u64) -> EpisodeWrite {
        EpisodeWrite::Open {
            rule: rule.into(),
            scope_key: scope.into(),
            severity: "warning".into(),
            started_at: t(at),
            payload: format!("{{\"at\":{at}}}"),
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

    #[test]
    fn wal_mode_migrations_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/state.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.journal_mode().unwrap(), "wal");
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.last().unwrap().0);
            s.apply(&[open("cpu", "host", 10)]).unwrap();
        }
        // Reopening does not re-run migrations and keeps the open episode.
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.last().unwrap().0);
        let eps = s.open_episodes().unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].started_at, t(10));
        assert_eq!(eps[0].last_notified_at, t(10));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute("INSERT INTO schema_migrations VALUES (99, 0)", [])
            .unwrap();
        drop(c);
        let err = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }

    #[test]
    fn notify_and_resolve_update_the_open_episode_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        s.apply(&[open("cpu", "host", 0), resolve("cpu", "host", 50)])
            .unwrap();
        s.apply(&[
            open("cpu", "host", 100),
            EpisodeWrite::Notified {
                rule: "cpu".into(),
                scope_key: "host".into(),
                at: t(160),
            },
        ])
        .unwrap();
        let open_eps = s.open_episodes().unwrap();
        assert_eq!(open_eps.len(), 1);
        assert_eq!(open_eps[0].started_at, t(100));
        assert_eq!(open_eps[0].last_notified_at, t(160));
        let page = s
            .query(&EpisodeQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.active.len(), 1);
        assert_eq!(page.history.len(), 1);
        assert_eq!(page.history[0].resolved_at, Some(t(50)));
    }

    #[test]
    fn history_pages_by_cursor_and_by_page_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let mut w = Vec::new();
        for i in 0..25u64 {
            let scope = format!("vm:{i:02}");
            w.push(open("vm_cpu", &scope, i * 100));
            w.push(resolve("vm_cpu", &scope, i * 100 + 50));
        }
        w.push(open("host_cpu", "host", 5000));
        w.push(resolve("host_cpu", "host", 5100));
        s.apply(&w).unwrap();

        let mut q = EpisodeQuery {
            rule: Some("vm_cpu".into()),
            limit: 10,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let p = s.query(&q).unwrap();
            seen.extend(p.history.iter().map(|e| e.scope_key.clone()));
            match p.next {
                Some(pos) => q.position = pos,
                None => break,
            }
        }
        let want: Vec<String> = (0..25).rev().map(|i| format!("vm:{i:02}")).collect();
        assert_eq!(seen, want);

        let p3 = s
            .query(&EpisodeQuery {
                scope: Some("vm".into()),
                limit: 10,
                position: Position::Page(3),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(p3.history.len(), 5);
        assert_eq!(p3.next, None);
        assert_eq!(p3.history[0].scope_key, "vm:04");

        // Overlap filter: episodes alive during [1020, 1210] s.
        let win = s
            .query(&EpisodeQuery {
                since: Some(t(1020)),
                until: Some(t(1210)),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let keys: Vec<&str> = win.history.iter().map(|e| e.scope_key.as_str()).collect();
        assert_eq!(keys, ["vm:12", "vm:11", "vm:10"]);

        let host = s
            .query(&EpisodeQuery {
                scope: Some("host".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(host.history.len(), 1);
    }

    #[test]
    fn prune_drops_old_history_but_never_open_episodes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        s.apply(&[
            open("a", "host", 0),
            resolve("a", "host", 10),
            open("b", "host", 5),
        ])
        .unwrap();
        s.log_notification(&NotificationLogEntry {
            at: t(1),
            sink: "log".into(),
            rule: "a".into(),
            status: "firing".into(),
            result: "success".into(),
            alerts: 1,
            error: None,
        })
        .unwrap();
        assert_eq!(s.prune(t(1000)).unwrap(), 2);
        assert_eq!(s.open_episodes().unwrap().len(), 1);
        assert!(s.notification_log(10).unwrap().is_empty());
    }

    #[test]
    fn outbox_rows_survive_a_reopen_in_order_and_leave_with_their_final_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let row = |sink: &str, p: &str| OutboxWrite {
            sink: sink.into(),
            created_at: t(1),
            payload: p.into(),
        };
        let ids = {
            let mut s = SqliteStore::open(&path).unwrap();
            s.record(
                &[open("cpu", "host", 1)],
                &[row("a", "first"), row("b", "first"), row("a", "second")],
            )
            .unwrap()
        };
        assert_eq!(ids.len(), 3);
        let mut s = SqliteStore::open(&path).unwrap();
        let left: Vec<(String, String)> = s
            .outbox()
            .unwrap()
            .into_iter()
            .map(|r| (r.sink, r.payload))
            .collect();
        assert_eq!(
            left,
            [("a", "first"), ("b", "first"), ("a", "second")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let entry = NotificationLogEntry {
            at: t(2),
            sink: "a".into(),
            rule: "cpu".into(),
            status: "firing".into(),
            result: "dropped_queue_full".into(),
            alerts: 1,
            error: None,
        };
        s.finish_delivery(Some(ids[0]), &entry).unwrap();
        assert_eq!(s.outbox().unwrap().len(), 2);
        assert_eq!(s.notification_log(10).unwrap(), [entry]);
    }

    #[test]
    fn another_programs_database_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY)")
            .unwrap();
        drop(c);
        let err = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("did not create") && err.contains("users"),
            "{err}"
        );
        assert!(probe(&path).is_err());
        let c = Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "only the users table");
    }

    #[test]
    fn a_ledger_flush_replayed_writes_the_same_totals_and_loads_back_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let key = |inc: &str, start: i64| LedgerKey {
            host: "hv1".into(),
            vm_id: "vm-1".into(),
            incarnation: inc.into(),
            resolution_s: 60,
            interval_start_ms: start,
        };
        let usage = |cpu: f64| LedgerUsage {
            vm_name: "web-1".into(),
            user_key: Some("alice".into()),
            cpu_seconds: cpu,
            guest_seconds: None,
            net_rx_bytes: 1 << 40,
            observed_seconds: 60.0,
            ..LedgerUsage::default()
        };
        let cursor = |inc: &str, at: i64| LedgerCursor {
            host: "hv1".into(),
            vm_id: "vm-1".into(),
            incarnation: inc.into(),
            at_ms: at,
            cpu_seconds: 12.5,
            guest_seconds: Some(3.0),
            net: vec![NetCounter {
                interface: "tap0".into(),
                rx_bytes: 7,
                tx_bytes: 8,
            }],
            vcpus: Some(2),
            memory_bytes: Some(1 << 30),
            rss_bytes: 1 << 20,
            running: true,
        };
        let batch = LedgerBatch {
            rows: vec![
                (key("b1:10:5", 0), usage(60.0)),
                (key("b1:10:5", 60_000), usage(30.0)),
                (key("b0:9:1", 0), usage(1.0)),
            ],
            cursors: vec![cursor("b1:10:5", 90_000), cursor("b0:9:1", 10)],
            forget: Vec::new(),
            horizon: Some(("b1".into(), 90_000)),
            totals: Vec::new(),
        };
        {
            let mut s = SqliteStore::open(&path).unwrap();
            s.flush_ledger(&batch).unwrap();
            // Replayed (an answer lost after commit): the same totals.
            s.flush_ledger(&batch).unwrap();
        }
        let c = Connection::open(&path).unwrap();
        let (n, cpu): (i64, f64) = c
            .query_row(
                "SELECT COUNT(*), SUM(cpu_seconds) FROM ledger_rows WHERE resolution_s = 60",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, cpu), (3, 91.0));
        drop(c);
        let mut s = SqliteStore::open(&path).unwrap();
        let r = s.load_ledger("b1", 60).unwrap();
        // Only this boot's cursor; the other boot's is deleted.
        assert_eq!(r.cursors, vec![cursor("b1:10:5", 90_000)]);
        assert_eq!(r.horizon_ms, Some(90_000));
        // Only the row the cursor is still adding to.
        assert_eq!(r.rows, vec![(key("b1:10:5", 60_000), usage(30.0))]);
        assert!(s.load_ledger("b1", 60).unwrap().cursors.len() == 1);
        let again = s.load_ledger("b2", 60).unwrap();
        assert!(again.cursors.is_empty() && again.rows.is_empty() && again.horizon_ms.is_none());
        s.flush_ledger(&LedgerBatch {
            forget: vec!["b1:10:5".into()],
            ..LedgerBatch::default()
        })
        .unwrap();
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn usage_sums_rows_per_group_and_step_with_the_newest_label() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let row =
            |vm: &str, inc: &str, start: i64, project: Option<&str>, label: &str, cpu: f64| {
                (
                    LedgerKey {
                        host: "hv1".into(),
                        vm_id: vm.into(),
                        incarnation: inc.into(),
                        resolution_s: 60,
                        interval_start_ms: start,
                    },
                    LedgerUsage {
                        vm_name: format!("{vm}-name"),
                        project_key: project.map(str::to_owned),
                        project_label: Some(label.into()),
                        cpu_seconds: cpu,
                        net_rx_bytes: 10,
                        observed_seconds: 60.0,
                        ..LedgerUsage::default()
                    },
                )
            };
        s.flush_ledger(&LedgerBatch {
            rows: vec![
                row("a", "b:1:1", 0, Some("p1"), "old name", 1.0),
                row("a", "b:1:1", 60_000, Some("p1"), "new name", 2.0),
                // A restart of the same VM: another incarnation, summed.
                row("a", "b:2:9", 120_000, Some("p1"), "new name", 4.0),
                row("b", "b:3:1", 60_000, Some("p2"), "two", 8.0),
                row("c", "b:4:1", 60_000, None, "", 16.0),
                // Outside [0, 180 s).
                row("a", "b:2:9", 180_000, Some("p1"), "new name", 32.0),
            ],
            ..LedgerBatch::default()
        })
        .unwrap();
        let q = |by, step_ms| UsageQuery {
            from_ms: 0,
            to_ms: 180_000,
            step_ms,
            by,
            resolution_s: 0,
            host: None,
            limit: 100,
            owners: None,
        };
        let all = s.usage(&q(super::super::UsageBy::Project, 0)).unwrap();
        let got: Vec<(Option<&str>, Option<&str>, f64, u64, u64)> = all
            .iter()
            .map(|t| {
                (
                    t.key.as_deref(),
                    t.label.as_deref(),
                    t.cpu_seconds,
                    t.net_rx_bytes,
                    t.rows,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (None, Some(""), 16.0, 10, 1),
                (Some("p1"), Some("new name"), 7.0, 30, 3),
                (Some("p2"), Some("two"), 8.0, 10, 1),
            ]
        );
        let stepped = s.usage(&q(super::super::UsageBy::Vm, 120_000)).unwrap();
        let got: Vec<(i64, &str, f64)> = stepped
            .iter()
            .map(|t| (t.start_ms, t.key.as_deref().unwrap(), t.cpu_seconds))
            .collect();
        assert_eq!(
            got,
            [
                (0, "a", 3.0),
                (0, "b", 8.0),
                (0, "c", 16.0),
                (120_000, "a", 4.0)
            ]
        );
        assert_eq!(stepped[0].label.as_deref(), Some("a-name"));
        // One more than the limit is asked for, so "too many" can be told.
        let mut small = q(super::super::UsageBy::Vm, 60_000);
        small.limit = 2;
        assert_eq!(s.usage(&small).unwrap().len(), 3);
    }
}
