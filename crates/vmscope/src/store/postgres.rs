//! The fleet ledger in PostgreSQL (`[ledger] database_url`): every host's
//! usage rows in one database, written by each host's shipper
//! (`crate::ledger::ship`) from its local SQLite spool, read by
//! `GET /api/v1/usage` and `vmscope usage` (docs/ledger.md, "PostgreSQL").
//!
//! Reads/writes: the database named by the URL (a [`Secret`]), through a
//! small bounded pool (`Pool`: at most `pool_size` connections, a caller
//! waits at most `timeout` for one; every session has `statement_timeout`
//! = `timeout` and `synchronous_commit = on` (an acknowledged batch is
//! durable: the spool forgets it), and connect / TCP user timeouts of the same length, so a
//! dead or slow server costs a caller at most about twice `timeout`, never
//! a hang). Tables ([`MIGRATIONS`], versioned in
//! `vmscope_schema_migrations`, applied under `pg_advisory_xact_lock` so
//! that agents starting together do not race): dictionaries
//! `ledger_series` (host, VM, incarnation -> integer id) and
//! `ledger_labels` (VM name and owner -> integer id), the narrow facts
//! table `ledger_facts` keyed by (series, resolution, interval start), and
//! the VIEW `ledger_rows` with the columns of SQLite's table, so a
//! consumer's SQL runs on both.
//! Emits: `vmscope_db_query_duration_seconds{op}` / `vmscope_db_errors_total{op}`
//! for `op` = `pg_migrate`, `pg_ship`, `pg_query`, `pg_delete` (through the
//! store's [`DbMetrics`]); the pool's connection counts ([`PgLedger::pool_counts`]).
//! Fails: [`PgError`], whose text names the database (host, port, name)
//! and never holds the URL or the password (scrubbed from PostgreSQL's own
//! messages too). Upserts are idempotent (`ON CONFLICT ... DO UPDATE` on
//! the row key with the row's running totals): a replayed or retried
//! batch writes the same totals, it cannot double count. Several agents
//! write at once: dictionary ids are `INSERT ... ON CONFLICT DO NOTHING`
//! then read back, each in its own short statement, and facts are upserted
//! in key order, so two writers never wait on each other in a cycle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ledger::{LedgerKey, LedgerUsage, UsageQuery, UsageTotal};
use super::metrics::DbMetrics;
use super::{to_i64, to_u64};
use crate::outbound::redact::{Secret, redact};

/// Versions of the PostgreSQL schema, applied in order, each in the
/// migration transaction. Never edit a released entry: append.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    // Column order puts the 8-byte columns first: no alignment padding.
    // `interval_start_ms` gets a BRIN index: facts arrive in time order,
    // so a range of block summaries answers a window at a tiny fraction
    // of a B-tree's size.
    "CREATE TABLE ledger_series (
        id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        host        text NOT NULL,
        vm_id       text NOT NULL,
        incarnation text NOT NULL,
        UNIQUE (host, vm_id, incarnation)
    );
    CREATE TABLE ledger_labels (
        id            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        vm_name       text NOT NULL,
        user_key      text,
        user_label    text,
        project_key   text,
        project_label text,
        UNIQUE NULLS NOT DISTINCT (vm_name, user_key, user_label, project_key, project_label)
    );
    CREATE TABLE ledger_facts (
        interval_start_ms             bigint  NOT NULL,
        cpu_seconds                   float8  NOT NULL,
        guest_seconds                 float8,
        vcpu_allocated_seconds        float8  NOT NULL,
        memory_allocated_byte_seconds float8  NOT NULL,
        rss_byte_seconds              float8  NOT NULL,
        net_rx_bytes                  bigint  NOT NULL,
        net_tx_bytes                  bigint  NOT NULL,
        observed_seconds              float8  NOT NULL,
        gap_seconds                   float8  NOT NULL,
        series_id                     integer NOT NULL REFERENCES ledger_series (id),
        resolution_s                  integer NOT NULL,
        labels_id                     integer NOT NULL REFERENCES ledger_labels (id),
        PRIMARY KEY (series_id, resolution_s, interval_start_ms)
    );
    CREATE INDEX ledger_facts_time ON ledger_facts USING brin (interval_start_ms);
    -- The resolutions written: the finest held, without scanning the facts.
    CREATE TABLE ledger_resolutions (resolution_s integer PRIMARY KEY);
    CREATE VIEW ledger_rows AS
        SELECT s.host, s.vm_id, s.incarnation, f.resolution_s::bigint AS resolution_s,
               f.interval_start_ms, l.vm_name, l.user_key, l.user_label, l.project_key,
               l.project_label, f.cpu_seconds, f.guest_seconds, f.vcpu_allocated_seconds,
               f.memory_allocated_byte_seconds, f.rss_byte_seconds, f.net_rx_bytes,
               f.net_tx_bytes, f.observed_seconds, f.gap_seconds
        FROM ledger_facts f
        JOIN ledger_series s ON s.id = f.series_id
        JOIN ledger_labels l ON l.id = f.labels_id;",
)];

/// The advisory lock key migrations hold (`"vmscope"` in ASCII).
const MIGRATION_LOCK: i64 = 0x0076_6d73_636f_7065;

/// Most dictionary ids cached per kind; past it the cache starts over
/// (ids are only a lookup saved, never state).
const MAX_CACHED_IDS: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Could not connect, or the connection broke (the server is down or
    /// unreachable): the shipper backs off and retries.
    #[error("{what}: cannot reach the database: {detail}")]
    Unreachable { what: String, detail: String },
    /// The server answered with an error.
    #[error("{what}: {op} failed: {detail}")]
    Query {
        what: String,
        op: &'static str,
        detail: String,
    },
    #[error("{what}: no connection free within {0:?} (all {1} in use)", .wait, .size)]
    PoolTimeout {
        what: String,
        wait: Duration,
        size: usize,
    },
    #[error("{what} has ledger schema version {found}; this vmscope knows up to {known}")]
    SchemaTooNew {
        what: String,
        found: i32,
        known: i32,
    },
}

impl PgError {
    /// True when the server could not be reached (as opposed to refusing
    /// a query): what `/healthz` reports as degraded.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            PgError::Unreachable { .. } | PgError::PoolTimeout { .. }
        )
    }
}

/// A parsed `database_url`: what to connect to and what to scrub.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    /// The URL and its password: removed from every error text.
    secrets: Vec<String>,
    /// Host, port and database: what logs and errors may say.
    what: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl PgTarget {
    /// Parse `url` for the configuration key `key`; errors start with the
    /// key and never repeat the URL or its password.
    pub fn parse(key: &str, url: &Secret) -> Result<PgTarget, String> {
        let raw = url.expose().trim();
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err(format!(
                "{key}: the URL must start with postgres:// or postgresql://"
            ));
        }
        let config: postgres::Config = raw.parse().map_err(|e: postgres::Error| {
            format!(
                "{key}: not a valid PostgreSQL URL: {}",
                redact(e.to_string(), &[raw])
            )
        })?;
        let mut secrets = vec![raw.to_owned()];
        if let Some(p) = config.get_password() {
            secrets.push(String::from_utf8_lossy(p).into_owned());
        }
        match config.get_ssl_mode() {
            postgres::config::SslMode::Disable | postgres::config::SslMode::Prefer => {}
            _ => {
                return Err(format!(
                    "{key}: sslmode=require is not supported yet (vmscope speaks to PostgreSQL \
                     without TLS); use sslmode=disable on a trusted network or a local socket"
                ));
            }
        }
        if config.get_hosts().is_empty() {
            return Err(format!(
                "{key}: the PostgreSQL URL names no host (postgres://user@host:port/db, or \
                 ?host=/run/postgresql for a socket)"
            ));
        }
        if config.get_dbname().is_none_or(str::is_empty) {
            return Err(format!(
                "{key}: the PostgreSQL URL names no database (postgres://user@host:port/DB)"
            ));
        }
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "?".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let what = format!(
            "postgres {host}:{port}/{}",
            config.get_dbname().unwrap_or_default()
        );
        Ok(PgTarget {
            config,
            secrets,
            what,
        })
    }

    /// `postgres host:port/db`.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// What to connect to (the watchdog's alert store connects with it).
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    fn scrub(&self, text: String) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        redact(text, &secrets)
    }

    fn error(&self, op: &'static str, e: &postgres::Error) -> PgError {
        let what = self.what.clone();
        match e.as_db_error() {
            Some(db) => PgError::Query {
                what,
                op,
                detail: self.scrub(format!("{}: {}", db.severity(), db.message())),
            },
            None => {
                let detail = self.scrub(crate::error::ErrorChain(e).to_string());
                // The client's own kinds, by their fixed text: no answer
                // from the server (connecting, I/O, closed, timed out) is
                // "unreachable"; a value that could not be encoded is ours.
                let top = e.to_string();
                if e.is_closed()
                    || [
                        "error connecting",
                        "error communicating",
                        "connection closed",
                        "timeout",
                    ]
                    .iter()
                    .any(|p| top.starts_with(p))
                {
                    PgError::Unreachable { what, detail }
                } else {
                    PgError::Query { what, op, detail }
                }
            }
        }
    }
}

/// A bounded pool of connections: at most `size`, idle ones reused, a
/// caller waits at most `wait` for one.
struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
    size: usize,
    wait: Duration,
}

struct PoolState {
    idle: Vec<postgres::Client>,
    in_use: usize,
}

/// A connection out of the pool; back in on drop unless it broke.
struct Conn<'a> {
    client: Option<postgres::Client>,
    pool: &'a Pool,
    /// Set after an error: a connection that failed is not trusted again.
    broken: bool,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.in_use = st.in_use.saturating_sub(1);
        let mut gone = Vec::new();
        if let Some(c) = self.client.take() {
            if !self.broken && !c.is_closed() {
                st.idle.push(c);
            } else {
                gone.push(c);
            }
        }
        drop(st);
        self.pool.freed.notify_one();
        discard(gone);
    }
}

/// Close connections off the caller's thread: the sync client's `Drop`
/// runs a small runtime of its own, which panics on a tokio worker (the
/// API's state, holding the pool, is dropped on one at shutdown).
fn discard(clients: Vec<postgres::Client>) {
    if clients.is_empty() {
        return;
    }
    // Should the thread not start, the closure is dropped here: the
    // ManuallyDrop then leaks the clients rather than panic.
    let clients = std::mem::ManuallyDrop::new(clients);
    if std::thread::Builder::new()
        .name("vmscope-pg-close".to_owned())
        .spawn(move || drop(std::mem::ManuallyDrop::into_inner(clients)))
        .is_err()
    {
        // No thread: leak rather than panic (the server drops the session).
        tracing::debug!("cannot start a thread to close PostgreSQL connections");
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.lock().idle);
        discard(idle);
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fleet ledger database.
pub struct PgLedger {
    target: PgTarget,
    pool: Pool,
    metrics: Arc<DbMetrics>,
    migrated: AtomicBool,
    /// Dictionary ids already known: series (host, vm, incarnation) and
    /// label sets.
    series_ids: Mutex<HashMap<(String, String, String), i32>>,
    label_ids: Mutex<HashMap<Labels, i32>>,
    /// Resolutions known to be in `ledger_resolutions`.
    resolutions: Mutex<Vec<i32>>,
}

/// The label columns of one row.
type Labels = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn labels_of(u: &LedgerUsage) -> Labels {
    (
        u.vm_name.clone(),
        u.user_key.clone(),
        u.user_label.clone(),
        u.project_key.clone(),
        u.project_label.clone(),
    )
}

/// Both in `[1, i32::MAX]` ms, as `statement_timeout` takes them.
fn timeout_ms(d: Duration) -> u128 {
    d.as_millis().clamp(1, i32::MAX as u128)
}

impl PgLedger {
    /// A ledger on `target`, connecting lazily (nothing is done here: a
    /// server that is down at start only delays shipping). `timeout` bounds
    /// connecting, each statement and the wait for a pooled connection.
    pub fn new(
        target: PgTarget,
        pool_size: usize,
        timeout: Duration,
        metrics: Arc<DbMetrics>,
    ) -> PgLedger {
        let mut target = target;
        target
            .config
            .connect_timeout(timeout)
            .tcp_user_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("vmscope-ledger")
            // synchronous_commit=on whatever the server's default: the
            // shipper forgets a spooled row once PostgreSQL acknowledged
            // it, so an acknowledgement must survive a server crash (with
            // `off`, a crash loses the last commits and those rows with
            // them: the real test caught it).
            .options(&format!(
                "-c statement_timeout={} -c lock_timeout={} -c synchronous_commit=on",
                timeout_ms(timeout),
                timeout_ms(timeout)
            ));
        PgLedger {
            target,
            pool: Pool {
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    in_use: 0,
                }),
                freed: Condvar::new(),
                size: pool_size.max(1),
                wait: timeout,
            },
            metrics,
            migrated: AtomicBool::new(false),
            series_ids: Mutex::new(HashMap::new()),
            label_ids: Mutex::new(HashMap::new()),
            resolutions: Mutex::new(Vec::new()),
        }
    }

    /// `postgres host:port/db`.
    pub fn describe(&self) -> &str {
        self.target.describe()
    }

    /// (in use, idle) connections.
    pub fn pool_counts(&self) -> (usize, usize) {
        let st = self.pool.lock();
        (st.in_use, st.idle.len())
    }

    fn connect(&self) -> Result<Conn<'_>, PgError> {
        let deadline = Instant::now() + self.pool.wait;
        let mut st = self.pool.lock();
        loop {
            while let Some(c) = st.idle.pop() {
                if !c.is_closed() {
                    st.in_use += 1;
                    return Ok(Conn {
                        client: Some(c),
                        pool: &self.pool,
                        broken: false,
                    });
                }
                discard(vec![c]);
            }
            if st.in_use < self.pool.size {
                st.in_use += 1;
                drop(st);
                // Counted as in use while connecting, so the pool never
                // opens more than `size`; a failure gives the slot back.
                let mut conn = Conn {
                    client: None,
                    pool: &self.pool,
                    broken: true,
                };
                let client = self
                    .target
                    .config
                    .connect(postgres::NoTls)
                    .map_err(|e| self.target.error("connect", &e))?;
                conn.client = Some(client);
                conn.broken = false;
                return Ok(conn);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PgError::PoolTimeout {
                    what: self.target.what.clone(),
                    wait: self.pool.wait,
                    size: self.pool.size,
                });
            }
            st = self
                .pool
                .freed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Run `f` on a pooled connection, timed and counted as `op`; the
    /// connection is dropped if `f` fails.
    fn with<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, PgError> {
        let start = Instant::now();
        let res = self.connect().and_then(|mut conn| {
            let Some(client) = conn.client.as_mut() else {
                // connect() never hands out an empty slot.
                return Err(PgError::Unreachable {
                    what: self.target.what.clone(),
                    detail: "no connection".to_owned(),
                });
            };
            let r = f(client);
            if r.is_err() {
                conn.broken = true;
            }
            r.map_err(|e| self.target.error(op, &e))
        });
        self.metrics.observe(op, start.elapsed(), res.is_ok());
        res
    }

    /// Apply the migrations this build knows, once per process (again
    /// after a failure). Under an advisory transaction lock: agents that
    /// start together run them one after the other, the later ones find
    /// the work done.
    pub fn migrate(&self) -> Result<(), PgError> {
        if self.migrated.load(Ordering::Relaxed) {
            return Ok(());
        }
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        let found = self.with("pg_migrate", |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS vmscope_schema_migrations (
                    version    integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )?;
            let current: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM vmscope_schema_migrations",
                    &[],
                )?
                .try_get(0)?;
            if current > known {
                return Ok(current);
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO vmscope_schema_migrations (version) VALUES ($1)",
                    &[version],
                )?;
                tracing::info!(version, db = %self.target.what, "fleet ledger schema migrated");
            }
            tx.commit()?;
            Ok(current)
        })?;
        if found > known {
            return Err(PgError::SchemaTooNew {
                what: self.target.what.clone(),
                found,
                known,
            });
        }
        self.migrated.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Upsert `rows` (any order; written in key order) in one transaction:
    /// a replay writes the same totals. Migrates first if needed.
    pub fn upsert_rows(&self, rows: &[(LedgerKey, LedgerUsage)]) -> Result<(), PgError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.migrate()?;
        let mut order: Vec<&(LedgerKey, LedgerUsage)> = rows.iter().collect();
        order.sort_by(|a, b| a.0.cmp(&b.0));
        let res = self.with("pg_ship", |c| self.upsert_in(c, &order));
        if matches!(res, Err(PgError::Query { .. })) {
            // Ids cached from a database that was since emptied or
            // restored would fail every batch: look them up again.
            self.lock_series().clear();
            self.lock_labels().clear();
            self.resolutions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        res
    }

    fn lock_series(&self) -> MutexGuard<'_, HashMap<(String, String, String), i32>> {
        self.series_ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_labels(&self) -> MutexGuard<'_, HashMap<Labels, i32>> {
        self.label_ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn upsert_in(
        &self,
        c: &mut postgres::Client,
        rows: &[&(LedgerKey, LedgerUsage)],
    ) -> Result<(), postgres::Error> {
        let series = self.series_for(c, rows)?;
        let labels = self.labels_for(c, rows)?;
        self.note_resolutions(c, rows)?;
        let n = rows.len();
        let (mut sid, mut res, mut start, mut lid) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut cpu, mut guest, mut vcpu, mut mem, mut rss) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut rx, mut tx_b, mut obs, mut gap) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, (k, u)) in rows.iter().map(|r| (&r.0, &r.1)).enumerate() {
            sid.push(series[i]);
            res.push(i32::try_from(k.resolution_s).unwrap_or(i32::MAX));
            start.push(k.interval_start_ms);
            lid.push(labels[i]);
            cpu.push(u.cpu_seconds);
            guest.push(u.guest_seconds);
            vcpu.push(u.vcpu_allocated_seconds);
            mem.push(u.memory_allocated_byte_seconds);
            rss.push(u.rss_byte_seconds);
            rx.push(to_i64(u.net_rx_bytes));
            tx_b.push(to_i64(u.net_tx_bytes));
            obs.push(u.observed_seconds);
            gap.push(u.gap_seconds);
        }
        // Two rows of one batch never share a key (they come from one
        // table keyed the same way), which ON CONFLICT DO UPDATE needs.
        let mut tx = c.transaction()?;
        tx.execute(
            "INSERT INTO ledger_facts (series_id, resolution_s, interval_start_ms, labels_id, \
             cpu_seconds, guest_seconds, vcpu_allocated_seconds, memory_allocated_byte_seconds, \
             rss_byte_seconds, net_rx_bytes, net_tx_bytes, observed_seconds, gap_seconds) \
             SELECT * FROM unnest($1::int4[], $2::int4[], $3::int8[], $4::int4[], $5::float8[], \
             $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::int8[], $11::int8[], \
             $12::float8[], $13::float8[]) \
             ON CONFLICT (series_id, resolution_s, interval_start_ms) DO UPDATE SET \
             labels_id = EXCLUDED.labels_id, cpu_seconds = EXCLUDED.cpu_seconds, \
             guest_seconds = EXCLUDED.guest_seconds, \
             vcpu_allocated_seconds = EXCLUDED.vcpu_allocated_seconds, \
             memory_allocated_byte_seconds = EXCLUDED.memory_allocated_byte_seconds, \
             rss_byte_seconds = EXCLUDED.rss_byte_seconds, net_rx_bytes = EXCLUDED.net_rx_bytes, \
             net_tx_bytes = EXCLUDED.net_tx_bytes, observed_seconds = EXCLUDED.observed_seconds, \
             gap_seconds = EXCLUDED.gap_seconds",
            &[
                &sid, &res, &start, &lid, &cpu, &guest, &vcpu, &mem, &rss, &rx, &tx_b, &obs, &gap,
            ],
        )?;
        tx.commit()
    }

    /// The series id of every row (in `rows` order), inserting the missing
    /// ones.
    fn series_for(
        &self,
        c: &mut postgres::Client,
        rows: &[&(LedgerKey, LedgerUsage)],
    ) -> Result<Vec<i32>, postgres::Error> {
        let key = |k: &LedgerKey| (k.host.clone(), k.vm_id.clone(), k.incarnation.clone());
        let mut missing: Vec<(String, String, String)> = {
            let cache = self.lock_series();
            rows.iter()
                .map(|r| key(&r.0))
                .filter(|k| !cache.contains_key(k))
                .collect()
        };
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let hosts: Vec<&str> = missing.iter().map(|k| k.0.as_str()).collect();
            let vms: Vec<&str> = missing.iter().map(|k| k.1.as_str()).collect();
            let incs: Vec<&str> = missing.iter().map(|k| k.2.as_str()).collect();
            // Autocommit, sorted: concurrent writers of the same new key
            // wait for one another once, never in a cycle.
            c.execute(
                "INSERT INTO ledger_series (host, vm_id, incarnation) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                &[&hosts, &vms, &incs],
            )?;
            let found = c.query(
                "SELECT s.id, s.host, s.vm_id, s.incarnation FROM ledger_series s \
                 JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(host, vm_id, incarnation) \
                 ON s.host = u.host AND s.vm_id = u.vm_id AND s.incarnation = u.incarnation",
                &[&hosts, &vms, &incs],
            )?;
            let mut cache = self.lock_series();
            if cache.len() + found.len() > MAX_CACHED_IDS {
                cache.clear();
            }
            for r in &found {
                cache.insert((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?), r.try_get(0)?);
            }
        }
        let cache = self.lock_series();
        rows.iter()
            .map(|r| cache.get(&key(&r.0)).copied().ok_or(()))
            .collect::<Result<Vec<i32>, ()>>()
            .or_else(|()| {
                drop(cache);
                // Cleared meanwhile (a full cache): look each up directly.
                rows.iter()
                    .map(|r| {
                        c.query_one(
                            "SELECT id FROM ledger_series WHERE host = $1 AND vm_id = $2 \
                             AND incarnation = $3",
                            &[&r.0.host, &r.0.vm_id, &r.0.incarnation],
                        )
                        .and_then(|row| row.try_get(0))
                    })
                    .collect()
            })
    }

    /// Record resolutions not seen before (a few per agent lifetime).
    fn note_resolutions(
        &self,
        c: &mut postgres::Client,
        rows: &[&(LedgerKey, LedgerUsage)],
    ) -> Result<(), postgres::Error> {
        let mut new: Vec<i32> = {
            let known = self.resolutions.lock().unwrap_or_else(|p| p.into_inner());
            rows.iter()
                .map(|r| i32::try_from(r.0.resolution_s).unwrap_or(i32::MAX))
                .filter(|r| !known.contains(r))
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        new.sort_unstable();
        new.dedup();
        c.execute(
            "INSERT INTO ledger_resolutions SELECT unnest($1::int4[]) ON CONFLICT DO NOTHING",
            &[&new],
        )?;
        self.resolutions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(new);
        Ok(())
    }

    /// The label-set id of every row (in `rows` order), inserting the
    /// missing ones.
    fn labels_for(
        &self,
        c: &mut postgres::Client,
        rows: &[&(LedgerKey, LedgerUsage)],
    ) -> Result<Vec<i32>, postgres::Error> {
        let mut missing: Vec<Labels> = {
            let cache = self.lock_labels();
            rows.iter()
                .map(|r| labels_of(&r.1))
                .filter(|l| !cache.contains_key(l))
                .collect()
        };
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let a: Vec<&str> = missing.iter().map(|l| l.0.as_str()).collect();
            let b: Vec<Option<&str>> = missing.iter().map(|l| l.1.as_deref()).collect();
            let cc: Vec<Option<&str>> = missing.iter().map(|l| l.2.as_deref()).collect();
            let d: Vec<Option<&str>> = missing.iter().map(|l| l.3.as_deref()).collect();
            let e: Vec<Option<&str>> = missing.iter().map(|l| l.4.as_deref()).collect();
            c.execute(
                "INSERT INTO ledger_labels (vm_name, user_key, user_label, project_key, \
                 project_label) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                 $4::text[], $5::text[]) ON CONFLICT DO NOTHING",
                &[&a, &b, &cc, &d, &e],
            )?;
            // NULL is a value here (no owner): IS NOT DISTINCT FROM, after
            // the index finds the VM name.
            let found = c.query(
                "SELECT l.id, l.vm_name, l.user_key, l.user_label, l.project_key, l.project_label \
                 FROM ledger_labels l JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::text[]) AS u(vm_name, user_key, user_label, project_key, project_label) \
                 ON l.vm_name = u.vm_name AND l.user_key IS NOT DISTINCT FROM u.user_key \
                 AND l.user_label IS NOT DISTINCT FROM u.user_label \
                 AND l.project_key IS NOT DISTINCT FROM u.project_key \
                 AND l.project_label IS NOT DISTINCT FROM u.project_label",
                &[&a, &b, &cc, &d, &e],
            )?;
            let mut cache = self.lock_labels();
            if cache.len() + found.len() > MAX_CACHED_IDS {
                cache.clear();
            }
            for r in &found {
                cache.insert(
                    (
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                        r.try_get(5)?,
                    ),
                    r.try_get(0)?,
                );
            }
        }
        let cache = self.lock_labels();
        let ids: Option<Vec<i32>> = rows
            .iter()
            .map(|r| cache.get(&labels_of(&r.1)).copied())
            .collect();
        drop(cache);
        match ids {
            Some(ids) => Ok(ids),
            None => rows
                .iter()
                .map(|r| {
                    let u = &r.1;
                    c.query_one(
                        "SELECT id FROM ledger_labels WHERE vm_name = $1 \
                         AND user_key IS NOT DISTINCT FROM $2 \
                         AND user_label IS NOT DISTINCT FROM $3 \
                         AND project_key IS NOT DISTINCT FROM $4 \
                         AND project_label IS NOT DISTINCT FROM $5",
                        &[
                            &u.vm_name,
                            &u.user_key,
                            &u.user_label,
                            &u.project_key,
                            &u.project_label,
                        ],
                    )
                    .and_then(|row| row.try_get(0))
                })
                .collect(),
        }
    }

    /// The resolutions rows exist for (seconds, ascending): which rows can
    /// answer a query ([`crate::store::pick_resolution`]).
    pub fn resolutions(&self) -> Result<Vec<i64>, PgError> {
        self.with("pg_query", |c| {
            c.query(
                "SELECT resolution_s FROM ledger_resolutions ORDER BY 1",
                &[],
            )?
            .iter()
            .map(|r| r.try_get::<_, i32>(0).map(i64::from))
            .collect()
        })
    }

    /// Totals per group and bucket over the fleet (or `q.host`), at most
    /// `q.limit + 1` of them: the same semantics as SQLite's
    /// [`UsageQuery::sql`] (see [`pg_usage_sql`]). Does not migrate: a
    /// reader may lack the rights to; a database without the ledger's
    /// tables is an error naming it.
    pub fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageTotal>, PgError> {
        let limit = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
        self.with("pg_query", |c| {
            let resolution: i64 = if q.resolution_s > 0 {
                q.resolution_s
            } else {
                // The finest resolution written (a tiny table: the facts
                // have no index that starts with the resolution).
                let r: Option<i32> = c
                    .query_one("SELECT MIN(resolution_s) FROM ledger_resolutions", &[])?
                    .try_get(0)?;
                match r {
                    Some(r) => i64::from(r),
                    None => return Ok(Vec::new()),
                }
            };
            let rows = c.query(
                &pg_usage_sql(q.by),
                &[
                    &q.from_ms,
                    &q.to_ms,
                    &q.step_ms,
                    &limit,
                    &resolution,
                    &q.host,
                    &q.owners.as_ref().map(|o| &o.users),
                    &q.owners.as_ref().map(|o| &o.projects),
                ],
            )?;
            // try_get: a column of another type is an error, not a panic.
            rows.iter()
                .map(|r| {
                    Ok(UsageTotal {
                        start_ms: r.try_get(0)?,
                        key: r.try_get(1)?,
                        label: r.try_get(2)?,
                        cpu_seconds: r.try_get(4)?,
                        guest_seconds: r.try_get(5)?,
                        vcpu_allocated_seconds: r.try_get(6)?,
                        memory_allocated_byte_seconds: r.try_get(7)?,
                        rss_byte_seconds: r.try_get(8)?,
                        net_rx_bytes: to_u64(r.try_get(9)?),
                        net_tx_bytes: to_u64(r.try_get(10)?),
                        observed_seconds: r.try_get(11)?,
                        gap_seconds: r.try_get(12)?,
                        rows: to_u64(r.try_get(13)?),
                    })
                })
                .collect()
        })
    }

    /// Delete the rows of resolution `resolution_s` whose interval starts
    /// before `before_ms` (retention), in batches so that no statement
    /// runs into the statement timeout; returns how many. Dictionary rows
    /// stay (they are small and may be referenced again).
    pub fn delete_before(&self, resolution_s: i64, before_ms: i64) -> Result<u64, PgError> {
        self.migrate()?;
        let res = i32::try_from(resolution_s).unwrap_or(i32::MAX);
        let mut total = 0;
        loop {
            let n = self.with("pg_delete", |c| {
                c.execute(
                    "DELETE FROM ledger_facts WHERE ctid IN (SELECT ctid FROM ledger_facts \
                     WHERE resolution_s = $1 AND interval_start_ms < $2 LIMIT 50000)",
                    &[&res, &before_ms],
                )
            })?;
            total += n;
            if n < 50_000 {
                return Ok(total);
            }
        }
    }

    /// Can the server be reached and logged into? (`check-config`: reads
    /// nothing, writes nothing.)
    pub fn ping(&self) -> Result<(), PgError> {
        self.with("pg_query", |c| c.simple_query("SELECT 1").map(|_| ()))
    }

    /// Total size of the ledger's tables and indexes, bytes (benchmarks,
    /// diagnostics).
    pub fn size_bytes(&self) -> Result<u64, PgError> {
        self.with("pg_query", |c| {
            let n: i64 = c
                .query_one(
                    "SELECT (pg_total_relation_size('ledger_facts') \
                     + pg_total_relation_size('ledger_series') \
                     + pg_total_relation_size('ledger_labels'))::bigint",
                    &[],
                )?
                .try_get(0)?;
            Ok(to_u64(n))
        })
    }
}

/// The usage SQL for PostgreSQL, over the `ledger_rows` view: fixed text
/// but for the two column names `by` chooses. $1 from, $2 to, $3 step,
/// $4 limit, $5 resolution, $6 host or NULL, as SQLite's. The label is the
/// one of the row with the latest interval (SQLite's bare column next to
/// `MAX()`); groups are ordered by byte value with NULL first, as SQLite
/// orders them, so both backends answer in the same order.
pub fn pg_usage_sql(by: super::UsageBy) -> String {
    let (key, label) = by.columns();
    format!(
        "SELECT CASE WHEN $3::int8 > 0 THEN $1::int8 + ((interval_start_ms - $1::int8) / $3::int8) \
         * $3::int8 ELSE $1::int8 END AS bucket, {key}, (array_agg({label} ORDER BY interval_start_ms DESC))[1], \
         MAX(interval_start_ms), SUM(cpu_seconds), SUM(guest_seconds), \
         SUM(vcpu_allocated_seconds), SUM(memory_allocated_byte_seconds), \
         SUM(rss_byte_seconds), SUM(net_rx_bytes)::int8, SUM(net_tx_bytes)::int8, \
         SUM(observed_seconds), SUM(gap_seconds), COUNT(*) \
         FROM ledger_rows WHERE resolution_s = $5::int8 AND interval_start_ms >= $1::int8 \
         AND interval_start_ms < $2::int8 AND ($6::text IS NULL OR host = $6::text) \
         AND ($7::text[] IS NULL OR user_key = ANY($7::text[]) OR project_key = ANY($8::text[])) \
         GROUP BY bucket, {key} ORDER BY bucket, {key} COLLATE \"C\" NULLS FIRST LIMIT $4::int8"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::UsageBy;

    #[test]
    fn urls_are_checked_and_errors_never_repeat_the_password() {
        let ok = PgTarget::parse(
            "ledger.database_url",
            &Secret::new("postgres://vm:s3cret-pw@db.example:6543/fleet?sslmode=disable"),
        )
        .unwrap();
        assert_eq!(ok.describe(), "postgres db.example:6543/fleet");
        assert_eq!(format!("{ok:?}"), "postgres db.example:6543/fleet");
        assert_eq!(
            ok.scrub("password s3cret-pw rejected".into()),
            "password *** rejected"
        );
        for (url, want) in [
            ("mysql://u:s3cret-pw@h/db", "must start with postgres://"),
            (
                "postgres://u:s3cret-pw@h/db?sslmode=require",
                "sslmode=require",
            ),
            ("postgres://u:s3cret-pw@h", "names no database"),
            ("postgres://u:s3cret-pw@h:notaport/db", "not a valid"),
        ] {
            let e = PgTarget::parse("ledger.database_url", &Secret::new(url)).unwrap_err();
            assert!(e.starts_with("ledger.database_url: "), "{url}: {e}");
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("s3cret-pw"), "{url}: {e}");
        }
    }

    #[test]
    fn the_usage_sql_groups_like_sqlites_and_takes_the_newest_label() {
        let sql = pg_usage_sql(UsageBy::Project);
        assert!(sql.contains("GROUP BY bucket, project_key"), "{sql}");
        assert!(
            sql.contains("(array_agg(project_label ORDER BY interval_start_ms DESC))[1]"),
            "{sql}"
        );
        assert!(sql.contains("FROM ledger_rows WHERE resolution_s = $5::int8"));
        assert!(sql.contains("NULLS FIRST LIMIT $4::int8"));
        let vm = pg_usage_sql(UsageBy::Vm);
        assert!(vm.contains("GROUP BY bucket, vm_id") && vm.contains("array_agg(vm_name"));
    }

    #[test]
    fn an_unreachable_server_fails_fast_with_the_password_scrubbed() {
        // A closed port on loopback: connect is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = PgTarget::parse(
            "ledger.database_url",
            &Secret::new(format!(
                "postgres://u:s3cret-pw@127.0.0.1:{port}/fleet?sslmode=disable"
            )),
        )
        .unwrap();
        let m = Arc::new(DbMetrics::new());
        let pg = PgLedger::new(t, 2, Duration::from_secs(2), m.clone());
        let started = Instant::now();
        let e = pg.migrate().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(e.unreachable(), "{e}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("postgres 127.0.0.1:{port}/fleet: ")));
        assert!(!text.contains("s3cret-pw"), "{text}");
        // The failed connection gave its slot back.
        assert_eq!(pg.pool_counts(), (0, 0));
        let migrate = m
            .snapshot()
            .into_iter()
            .find(|(op, _)| *op == "pg_migrate")
            .unwrap();
        assert_eq!(migrate.1.errors, 1);
    }
}
