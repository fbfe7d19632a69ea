//! The SQL owner source: `[owners.sql]`, a read-only query against the
//! platform's own database, PostgreSQL or SQLite.
//!
//! Reads: the database named by `url` (or by the environment variable
//! `url_env` names), on the source's own thread every `interval`:
//! - `query`: one row per VM. Columns are matched by name, any may be
//!   missing: a VM key, `vm_id` (UUID or the platform's VM id), `vm_name`
//!   or `pid`, of which exactly one must be non-null in each row; and
//!   `user_id`, `user_name`, `project_id`, `project_name`. Other columns
//!   are ignored.
//! - `users_query` (optional): `(state, count)` rows, platform users by
//!   active state.
//! - `last_start_query` (optional): one row per user, the time of that
//!   user's last VM start (column `last_start`, else the last column): a
//!   `timestamp`/`timestamptz`, or unix seconds as an integer, float or
//!   numeric; SQLite text as `YYYY-MM-DD HH:MM:SS[.f]` in UTC (what its
//!   `datetime()` writes). NULL (never started) is left out.
//!
//! Emits: an [`OwnerMap`] of the rows, with its [`Inventory`](super::Inventory) (users by
//! state, the days-since-last-start histogram) counted here, in the
//! background, never on the scrape path.
//!
//! Read-only by construction: PostgreSQL runs every fetch in a `READ ONLY`
//! transaction with `statement_timeout` = `timeout`; SQLite opens the file
//! `SQLITE_OPEN_READ_ONLY` with `query_only`, a busy timeout and a progress
//! handler that interrupts a query past `timeout`. PostgreSQL is spoken
//! without TLS for now (`sslmode=disable` or the default `prefer`, which
//! then connects in plain text; `require` and stricter are config errors).
//!
//! Fails: a fetch fails as a whole (the runner keeps the last good rows)
//! with a fixed kind: `connect` (cannot connect, or the connection dropped:
//! it is rebuilt on the next fetch), `query` (the database refused a
//! query), `timeout` (the database cancelled it), `columns` (the result
//! lacks the columns it needs), `too_many_rows` (more than `max_rows`: the
//! fetch stops reading rather than grow without bound). A row that is
//! malformed (no key or two, a value of a type that cannot be a name, no
//! owner field) is skipped and counted, logged once per change of the
//! count. The URL may hold a password: it is a [`Secret`], never logged,
//! and scrubbed from error text; errors name the host and database only.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{
    DaysHistogram, FetchError, OwnerMap, OwnerSource, OwnersConfig, RunOptions, Source, VmKey,
};
use crate::model::Owner;
use crate::outbound::redact::{Secret, redact};

/// `[owners.sql]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `postgres://...`, `postgresql://...`, `sqlite:///abs/path.db` or
    /// `sqlite:relative.db`. The source is off without `url` or `url_env`.
    pub url: Option<Secret>,
    /// The environment variable holding the URL (keeps the password out of
    /// the config file).
    pub url_env: Option<String>,
    /// The rows: VM key -> owner (see the module documentation).
    pub query: Option<String>,
    /// Optional: `(state, count)`, platform users by active state.
    pub users_query: Option<String>,
    /// Optional: one row per user, the time of their last VM start.
    pub last_start_query: Option<String>,
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
    /// Rows beyond which a fetch fails (`too_many_rows`) instead of
    /// holding them all.
    pub max_rows: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            url_env: None,
            query: None,
            users_query: None,
            last_start_query: None,
            interval: super::DEFAULT_RUN.every,
            timeout: super::DEFAULT_RUN.timeout,
            max_rows: 1_000_000,
        }
    }
}

/// The most rows `max_rows` may allow (PostgreSQL fetches through a portal
/// whose row limit is an `i32`).
const MAX_ROWS_LIMIT: usize = 100_000_000;

/// Distinct user states kept as series; the rest are summed into
/// `__other__` (a state column is the platform's, not ours to trust).
const MAX_STATES: usize = 32;

/// Where the rows come from.
#[derive(Debug, Clone)]
enum Target {
    Postgres(Box<postgres::Config>),
    Sqlite(PathBuf),
}

impl Target {
    /// What errors and logs may say about the database: host, port and
    /// database name, or the SQLite path; never the user or password.
    fn describe(&self) -> String {
        match self {
            Target::Postgres(c) => {
                let host = match c.get_hosts().first() {
                    Some(postgres::config::Host::Tcp(h)) => h.clone(),
                    Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => "?".to_owned(),
                };
                let port = c.get_ports().first().copied().unwrap_or(5432);
                format!(
                    "postgres {host}:{port}/{}",
                    c.get_dbname().unwrap_or_default()
                )
            }
            Target::Sqlite(p) => format!("sqlite {}", p.display()),
        }
    }
}

impl Config {
    /// True when the source is configured (a URL or the variable with one).
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.url_env.is_some()
    }

    /// The URL, from the config or the environment; `None` when off.
    fn url(&self) -> Result<Option<Secret>, String> {
        let url = super::url_or_env(
            "sql",
            self.url.as_ref(),
            self.url_env.as_deref(),
            crate::outbound::redact::env_string,
        )?;
        if url.is_some() {
            return Ok(url);
        }
        let set = [
            ("query", self.query.is_some()),
            ("users_query", self.users_query.is_some()),
            ("last_start_query", self.last_start_query.is_some()),
        ];
        match set.iter().find(|(_, on)| *on) {
            Some((key, _)) => Err(format!(
                "owners.sql.url: {key} is set but there is no url or url_env to run it against"
            )),
            None => Ok(None),
        }
    }

    /// The database to read and the URL's secrets to scrub from error
    /// text; `None` when the source is off. Errors name the key and never
    /// repeat the URL.
    fn target(&self) -> Result<Option<(Target, Vec<String>)>, String> {
        let Some(url) = self.url()? else {
            return Ok(None);
        };
        let key = if self.url.is_some() {
            "owners.sql.url"
        } else {
            "owners.sql.url_env"
        };
        let raw = url.expose().trim();
        let mut secrets = vec![raw.to_owned()];
        let target = if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            let cfg: postgres::Config = raw.parse().map_err(|e: postgres::Error| {
                format!(
                    "{key}: not a valid PostgreSQL URL: {}",
                    redact(e.to_string(), &[raw])
                )
            })?;
            if let Some(p) = cfg.get_password() {
                secrets.push(String::from_utf8_lossy(p).into_owned());
            }
            match cfg.get_ssl_mode() {
                postgres::config::SslMode::Disable | postgres::config::SslMode::Prefer => {}
                _ => {
                    return Err(format!(
                        "{key}: sslmode=require is not supported yet (vmscope speaks to PostgreSQL without TLS); use sslmode=disable on a trusted network or a local socket"
                    ));
                }
            }
            if cfg.get_hosts().is_empty() {
                return Err(format!(
                    "{key}: the PostgreSQL URL names no host (postgres://user@host:port/db, or ?host=/run/postgresql for a socket)"
                ));
            }
            Target::Postgres(Box::new(cfg))
        } else if let Some(rest) = raw.strip_prefix("sqlite:") {
            // `sqlite:///abs` and `sqlite://rel` drop the authority's `//`;
            // `sqlite:rel` is relative to the working directory.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!("{key}: the SQLite URL names no file"));
            }
            Target::Sqlite(PathBuf::from(path))
        } else {
            return Err(format!(
                "{key}: the URL must start with postgres://, postgresql:// or sqlite:"
            ));
        };
        Ok(Some((target, secrets)))
    }

    /// Checks that `serve` could start the source (for `validate` and
    /// `check-config`); errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.target()?.is_none() {
            return Ok(());
        }
        if self.query.as_deref().is_none_or(|q| q.trim().is_empty()) {
            return Err("owners.sql.query: required when owners.sql is enabled".to_owned());
        }
        for (key, q) in [
            ("users_query", &self.users_query),
            ("last_start_query", &self.last_start_query),
        ] {
            if q.as_deref().is_some_and(|q| q.trim().is_empty()) {
                return Err(format!("owners.sql.{key}: empty (leave it out instead)"));
            }
        }
        if self.interval.is_zero() {
            return Err("owners.sql.interval: must be above 0".to_owned());
        }
        if self.timeout.is_zero() {
            return Err("owners.sql.timeout: must be above 0".to_owned());
        }
        if self.max_rows == 0 || self.max_rows > MAX_ROWS_LIMIT {
            return Err(format!(
                "owners.sql.max_rows: must be between 1 and {MAX_ROWS_LIMIT}"
            ));
        }
        Ok(())
    }
}

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    let c = &cfg.sql;
    // `validate` refused what cannot start; this is its fallback.
    c.validate().ok()?;
    let (target, secrets) = c.target().ok().flatten()?;
    let queries = Queries {
        rows: c.query.clone()?,
        users: c.users_query.clone(),
        last_start: c.last_start_query.clone(),
    };
    let what = target.describe();
    let db = match target {
        Target::Postgres(mut pg) => {
            // A peer that stops acknowledging (a partition, a dead host)
            // drops the connection after `timeout` instead of hanging the
            // source's thread on the kernel's retransmissions for minutes.
            pg.connect_timeout(c.timeout)
                .tcp_user_timeout(c.timeout)
                .application_name("vmscope");
            Db::Postgres(Postgres {
                config: pg,
                client: None,
            })
        }
        Target::Sqlite(path) => Db::Sqlite(Sqlite { path, conn: None }),
    };
    Some(Source::Fetched(
        Box::new(SqlSource {
            db,
            queries,
            timeout: c.timeout,
            max_rows: c.max_rows,
            secrets,
            what,
            skipped: Skipped::default(),
        }),
        RunOptions {
            every: c.interval,
            timeout: c.timeout,
        },
    ))
}

struct Queries {
    rows: String,
    users: Option<String>,
    last_start: Option<String>,
}

/// Rows skipped by the last fetch, per query: logged when they change.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Skipped {
    rows: usize,
    users: usize,
    last_start: usize,
}

struct SqlSource {
    db: Db,
    queries: Queries,
    timeout: Duration,
    max_rows: usize,
    /// The URL and its password, scrubbed from every error's text.
    secrets: Vec<String>,
    /// The database as errors and logs name it ([`Target::describe`]).
    what: String,
    skipped: Skipped,
}

enum Db {
    Postgres(Postgres),
    Sqlite(Sqlite),
}

impl OwnerSource for SqlSource {
    fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
        let limits = Limits {
            timeout: self.timeout,
            max_rows: self.max_rows,
        };
        let got = match &mut self.db {
            Db::Postgres(pg) => pg.fetch(&self.queries, limits),
            Db::Sqlite(s) => s.fetch(&self.queries, limits),
        };
        let what = &self.what;
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let (mut map, skipped) = got.map_err(|(kind, text)| {
            FetchError::new(kind, format!("{what}: {}", redact(text, &secrets)))
        })?;
        if skipped != self.skipped {
            if skipped == Skipped::default() {
                tracing::info!(source = "sql", db = %what, "no malformed rows any more");
            } else {
                tracing::warn!(
                    source = "sql",
                    db = %what,
                    rows = skipped.rows,
                    users = skipped.users,
                    last_start = skipped.last_start,
                    "SQL owner rows skipped: no VM key or two, a value that cannot be a name, or no owner field"
                );
            }
            self.skipped = skipped;
        }
        map.skipped = skipped.rows + skipped.users + skipped.last_start;
        Ok(map)
    }
}

#[derive(Clone, Copy)]
struct Limits {
    timeout: Duration,
    max_rows: usize,
}

/// A failed fetch before its text is scrubbed: (kind, text).
type Failure = (&'static str, String);

fn too_many(max: usize) -> Failure {
    (
        "too_many_rows",
        format!("the query returns more than max_rows = {max} rows"),
    )
}

// ---- PostgreSQL ----

struct Postgres {
    config: Box<postgres::Config>,
    /// Kept between fetches; dropped on any error and rebuilt next fetch.
    client: Option<postgres::Client>,
}

impl Postgres {
    fn fetch(&mut self, q: &Queries, limits: Limits) -> Result<(OwnerMap, Skipped), Failure> {
        let mut client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self
                .config
                .connect(postgres::NoTls)
                .map_err(|e| ("connect", pg_text(&e)))?,
        };
        let got = pg_fetch(&mut client, q, limits).map_err(|e| match e {
            PgFail::Db(e) => (pg_kind(&e), pg_text(&e)),
            PgFail::Ours(f) => f,
        });
        // A connection that failed a fetch is not trusted with the next.
        if got.is_ok() && !client.is_closed() {
            self.client = Some(client);
        }
        got
    }
}

enum PgFail {
    Db(postgres::Error),
    Ours(Failure),
}

impl From<postgres::Error> for PgFail {
    fn from(e: postgres::Error) -> Self {
        PgFail::Db(e)
    }
}

fn pg_kind(e: &postgres::Error) -> &'static str {
    match e.as_db_error() {
        Some(db) if *db.code() == postgres::error::SqlState::QUERY_CANCELED => "timeout",
        Some(_) => "query",
        // No answer from the server: the connection is gone or broken.
        None => "connect",
    }
}

/// The error with its causes (the database's message is in the source).
fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => crate::error::ErrorChain(e).to_string(),
    }
}

fn pg_fetch(
    client: &mut postgres::Client,
    q: &Queries,
    limits: Limits,
) -> Result<(OwnerMap, Skipped), PgFail> {
    let mut tx = client.build_transaction().read_only(true).start()?;
    // The server cancels a query past it (SQLSTATE 57014, kind `timeout`);
    // the runner's own timeout is the net for a server that does not
    // answer at all.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        limits.timeout.as_millis().max(1)
    ))?;
    let mut skipped = Skipped::default();
    let mut acc = Rows::new(limits.max_rows);
    pg_each(
        &mut tx,
        &q.rows,
        limits.max_rows,
        RowColumns::find,
        |c, row| acc.push(&c, |i| pg_cell(row, i)),
    )?;
    skipped.rows = acc.skipped;

    if let Some(users_q) = &q.users {
        let mut users = Users::default();
        pg_each(
            &mut tx,
            users_q,
            limits.max_rows,
            users_columns,
            |c, row| {
                users.push(pg_cell(row, c.0), pg_cell(row, c.1));
                Ok(())
            },
        )?;
        skipped.users = users.skipped;
        acc.map.inventory.users_by_state = users.finish();
    }

    if let Some(starts_q) = &q.last_start {
        let mut starts = Starts::new(SystemTime::now());
        pg_each(
            &mut tx,
            starts_q,
            limits.max_rows,
            last_start_column,
            |c, row| {
                starts.push(pg_cell(row, c));
                Ok(())
            },
        )?;
        skipped.last_start = starts.skipped;
        acc.map.inventory.last_vm_start = Some(starts.hist);
    }
    tx.commit()?;
    Ok((acc.map, skipped))
}

/// Runs `sql` in `tx`: `cols` finds its columns by name, then `each` takes
/// every row as it streams in (through a portal, so at most `max` + 1 rows
/// are ever asked of the server); more than `max` is `too_many_rows`.
fn pg_each<C: Copy>(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    max: usize,
    cols: impl FnOnce(&[&str]) -> Result<C, Failure>,
    mut each: impl FnMut(C, &postgres::Row) -> Result<(), Failure>,
) -> Result<(), PgFail> {
    let stmt = tx.prepare(sql)?;
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    let c = cols(&names).map_err(PgFail::Ours)?;
    let portal = tx.bind(&stmt, &[])?;
    // One more than allowed: seeing it is how we know there are more.
    let ask = i32::try_from(max.saturating_add(1)).unwrap_or(i32::MAX);
    let mut it = tx.query_portal_raw(&portal, ask)?;
    let mut n = 0usize;
    while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut it)? {
        n += 1;
        if n > max {
            return Err(PgFail::Ours(too_many(max)));
        }
        each(c, &row).map_err(PgFail::Ours)?;
    }
    Ok(())
}

fn pg_cell(row: &postgres::Row, i: usize) -> Cell {
    row.try_get::<_, Cell>(i).unwrap_or(Cell::Other)
}

impl<'a> postgres::types::FromSql<'a> for Cell {
    fn from_sql(
        ty: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        let int = |raw: &[u8]| -> Option<i64> {
            Some(match raw.len() {
                2 => i64::from(i16::from_be_bytes(raw.try_into().ok()?)),
                4 => i64::from(i32::from_be_bytes(raw.try_into().ok()?)),
                8 => i64::from_be_bytes(raw.try_into().ok()?),
                _ => return None,
            })
        };
        let cell = match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Cell::Text(String::from_utf8_lossy(raw).into_owned())
            }
            Type::UUID => match <[u8; 16]>::try_from(raw) {
                Ok(b) => Cell::Text(uuid_text(&b)),
                Err(_) => Cell::Other,
            },
            Type::INT2 | Type::INT4 | Type::INT8 => int(raw).map_or(Cell::Other, Cell::Int),
            Type::OID => <[u8; 4]>::try_from(raw)
                .map_or(Cell::Other, |b| Cell::Int(i64::from(u32::from_be_bytes(b)))),
            Type::FLOAT4 => <[u8; 4]>::try_from(raw).map_or(Cell::Other, |b| {
                Cell::Float(f64::from(f32::from_be_bytes(b)))
            }),
            Type::FLOAT8 => {
                <[u8; 8]>::try_from(raw).map_or(Cell::Other, |b| Cell::Float(f64::from_be_bytes(b)))
            }
            Type::NUMERIC => numeric(raw).map_or(Cell::Other, Cell::Float),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => <[u8; 8]>::try_from(raw)
                .map_or(Cell::Other, |b| pg_timestamp(i64::from_be_bytes(b))),
            _ => Cell::Other,
        };
        Ok(cell)
    }

    fn from_sql_null(
        _: &postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell::Null)
    }

    /// Every type: one the source cannot use becomes [`Cell::Other`] and
    /// skips its row, rather than fail the whole fetch.
    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

/// PostgreSQL's binary timestamp: microseconds since 2000-01-01 UTC;
/// `infinity` and `-infinity` are the extreme values and no time.
fn pg_timestamp(micros: i64) -> Cell {
    if micros == i64::MAX || micros == i64::MIN {
        return Cell::Other;
    }
    const PG_EPOCH_UNIX: f64 = 946_684_800.0;
    Cell::Time(PG_EPOCH_UNIX + micros as f64 / 1e6)
}

/// PostgreSQL's binary `numeric` (what `extract(epoch from ...)` and
/// `sum()` return) as an f64: digit count, weight, sign, scale, then base
/// 10000 digits. `NaN` and the infinities are no number.
fn numeric(raw: &[u8]) -> Option<f64> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*raw.get(2 * i)?, *raw.get(2 * i + 1)?]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let mut v = 0.0f64;
    for i in 0..ndigits {
        let d = f64::from(word(4 + i)?);
        v += d * 10_000f64.powi(weight - i as i32);
    }
    match sign {
        0x0000 => Some(v),
        0x4000 => Some(-v),
        _ => None,
    }
}

// ---- SQLite ----

struct Sqlite {
    path: PathBuf,
    /// Kept between fetches; dropped on any error and opened again.
    conn: Option<rusqlite::Connection>,
}

impl Sqlite {
    fn open(&self, timeout: Duration) -> Result<rusqlite::Connection, Failure> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| ("connect", e.to_string()))?;
        conn.busy_timeout(timeout)
            .and_then(|()| conn.pragma_update(None, "query_only", true))
            .map_err(|e| ("connect", e.to_string()))?;
        Ok(conn)
    }

    fn fetch(&mut self, q: &Queries, limits: Limits) -> Result<(OwnerMap, Skipped), Failure> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.open(limits.timeout)?,
        };
        // A runaway query (a recursive CTE) is interrupted past the
        // timeout, so the source's thread is free for the next fetch.
        let deadline = Instant::now() + limits.timeout;
        conn.progress_handler(10_000, Some(move || Instant::now() > deadline))
            .map_err(|e| ("connect", e.to_string()))?;
        let got = sqlite_fetch(&conn, q, limits);
        if got.is_ok() {
            self.conn = Some(conn);
        }
        got
    }
}

fn sqlite_fail(e: &rusqlite::Error) -> Failure {
    let kind = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => "timeout",
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => "timeout",
        Some(
            rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::NotADatabase
            | rusqlite::ErrorCode::DatabaseCorrupt
            | rusqlite::ErrorCode::SystemIoFailure,
        ) => "connect",
        _ => "query",
    };
    (kind, e.to_string())
}

fn sqlite_cell(row: &rusqlite::Row<'_>, i: usize) -> Cell {
    use rusqlite::types::ValueRef;
    match row.get_ref(i) {
        Ok(ValueRef::Null) => Cell::Null,
        Ok(ValueRef::Integer(n)) => Cell::Int(n),
        Ok(ValueRef::Real(f)) => Cell::Float(f),
        Ok(ValueRef::Text(t)) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
        Ok(ValueRef::Blob(_)) | Err(_) => Cell::Other,
    }
}

/// Runs `sql`: `cols` finds its columns by name, then `each` takes every
/// row; at most `max` rows.
fn sqlite_each<C: Copy>(
    conn: &rusqlite::Connection,
    sql: &str,
    max: usize,
    cols: impl FnOnce(&[&str]) -> Result<C, Failure>,
    mut each: impl FnMut(C, &rusqlite::Row<'_>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut stmt = conn.prepare(sql).map_err(|e| sqlite_fail(&e))?;
    let names: Vec<&str> = stmt.column_names().collect();
    let c = cols(&names)?;
    let mut rows = stmt.query([]).map_err(|e| sqlite_fail(&e))?;
    let mut n = 0usize;
    while let Some(row) = rows.next().map_err(|e| sqlite_fail(&e))? {
        n += 1;
        if n > max {
            return Err(too_many(max));
        }
        each(c, row)?;
    }
    Ok(())
}

fn sqlite_fetch(
    conn: &rusqlite::Connection,
    q: &Queries,
    limits: Limits,
) -> Result<(OwnerMap, Skipped), Failure> {
    // One read transaction: the three queries see one state of the file.
    conn.execute_batch("BEGIN").map_err(|e| sqlite_fail(&e))?;
    let got = sqlite_queries(conn, q, limits);
    // Nothing was written: ending the transaction cannot lose anything.
    let _ = conn.execute_batch("ROLLBACK");
    got
}

fn sqlite_queries(
    conn: &rusqlite::Connection,
    q: &Queries,
    limits: Limits,
) -> Result<(OwnerMap, Skipped), Failure> {
    let mut skipped = Skipped::default();
    let mut acc = Rows::new(limits.max_rows);
    sqlite_each(
        conn,
        &q.rows,
        limits.max_rows,
        RowColumns::find,
        |c, row| acc.push(&c, |i| sqlite_cell(row, i)),
    )?;
    skipped.rows = acc.skipped;

    if let Some(users_q) = &q.users {
        let mut users = Users::default();
        sqlite_each(conn, users_q, limits.max_rows, users_columns, |c, row| {
            users.push(sqlite_cell(row, c.0), sqlite_cell(row, c.1));
            Ok(())
        })?;
        skipped.users = users.skipped;
        acc.map.inventory.users_by_state = users.finish();
    }

    if let Some(starts_q) = &q.last_start {
        let mut starts = Starts::new(SystemTime::now());
        sqlite_each(
            conn,
            starts_q,
            limits.max_rows,
            last_start_column,
            |c, row| {
                starts.push(sqlite_cell(row, c));
                Ok(())
            },
        )?;
        skipped.last_start = starts.skipped;
        acc.map.inventory.last_vm_start = Some(starts.hist);
    }
    Ok((acc.map, skipped))
}

// ---- Rows, whatever the database: pure, unit-tested ----

/// One value as the database gave it.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    /// A timestamp column, as unix seconds.
    Time(f64),
    /// A type the source does not read (bytea, json, ...).
    Other,
}

impl Cell {
    /// The value as a name or id: text, or an integer id in decimal.
    /// `Ok(None)` for NULL or blank; `Err` for a value that is no name.
    fn text(self) -> Result<Option<String>, ()> {
        match self {
            Cell::Null => Ok(None),
            Cell::Text(s) if s.trim().is_empty() => Ok(None),
            Cell::Text(s) => Ok(Some(s)),
            Cell::Int(n) => Ok(Some(n.to_string())),
            Cell::Float(_) | Cell::Time(_) | Cell::Other => Err(()),
        }
    }

    /// The value as unix seconds.
    fn unix_seconds(&self) -> Option<f64> {
        let t = match self {
            Cell::Int(n) => *n as f64,
            Cell::Float(f) | Cell::Time(f) => *f,
            Cell::Text(s) => {
                let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
                match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                }
            }
            Cell::Null | Cell::Other => return None,
        };
        t.is_finite().then_some(t)
    }
}

/// Where the row columns are in one result.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RowColumns {
    vm_id: Option<usize>,
    vm_name: Option<usize>,
    pid: Option<usize>,
    user_id: Option<usize>,
    user_name: Option<usize>,
    project_id: Option<usize>,
    project_name: Option<usize>,
}

impl RowColumns {
    /// By name (case-insensitively: SQLite keeps the query's spelling);
    /// an error when there is no VM key column at all.
    fn find(names: &[&str]) -> Result<RowColumns, Failure> {
        let at = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
        let c = RowColumns {
            vm_id: at("vm_id"),
            vm_name: at("vm_name"),
            pid: at("pid"),
            user_id: at("user_id"),
            user_name: at("user_name"),
            project_id: at("project_id"),
            project_name: at("project_name"),
        };
        if c.vm_id.is_none() && c.vm_name.is_none() && c.pid.is_none() {
            return Err((
                "columns",
                format!(
                    "the query returns none of the VM key columns vm_id, vm_name, pid (its columns: {})",
                    names.join(", ")
                ),
            ));
        }
        Ok(c)
    }
}

/// The rows of `query` being read into a map.
struct Rows {
    max: usize,
    seen: usize,
    skipped: usize,
    map: OwnerMap,
}

impl Rows {
    fn new(max: usize) -> Rows {
        Rows {
            max,
            seen: 0,
            skipped: 0,
            map: OwnerMap::default(),
        }
    }

    /// Takes one row (`cell(i)` is its column `i`, found by `cols`); skips and counts a
    /// malformed one; fails past `max` rows.
    fn push(&mut self, cols: &RowColumns, cell: impl Fn(usize) -> Cell) -> Result<(), Failure> {
        self.seen += 1;
        if self.seen > self.max {
            return Err(too_many(self.max));
        }
        match row(cols, cell) {
            Some((key, owner)) => self.map.insert(key, owner),
            None => self.skipped += 1,
        }
        Ok(())
    }
}

/// One row's key and owner; `None` when it is malformed: no key, two keys,
/// a value that cannot be a name, a bad PID or no owner field at all.
fn row(cols: &RowColumns, cell: impl Fn(usize) -> Cell) -> Option<(VmKey, Owner)> {
    let get =
        |c: Option<usize>| -> Result<Option<String>, ()> { c.map_or(Ok(None), |i| cell(i).text()) };
    let id = get(cols.vm_id).ok()?;
    let name = get(cols.vm_name).ok()?;
    let pid = match cols.pid.map(&cell) {
        None | Some(Cell::Null) => None,
        Some(Cell::Int(n)) => Some(u32::try_from(n).ok().filter(|p| *p > 0)?),
        Some(Cell::Text(s)) => Some(s.trim().parse::<u32>().ok().filter(|p| *p > 0)?),
        Some(_) => return None,
    };
    let key = match (id, name, pid) {
        (Some(id), None, None) => VmKey::Id(id.trim().to_owned()),
        (None, Some(name), None) => VmKey::Name(name),
        (None, None, Some(pid)) => VmKey::Pid(pid),
        _ => return None,
    };
    let owner = Owner {
        user_id: get(cols.user_id).ok()?,
        user_name: get(cols.user_name).ok()?,
        project_id: get(cols.project_id).ok()?,
        project_name: get(cols.project_name).ok()?,
    };
    (owner != Owner::default()).then_some((key, owner))
}

/// `users_query`'s (state, count) columns: by name, else the first two.
fn users_columns(names: &[&str]) -> Result<(usize, usize), Failure> {
    let at = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
    match (at("state"), at("count")) {
        (Some(s), Some(c)) => Ok((s, c)),
        _ if names.len() >= 2 => Ok((0, 1)),
        _ => Err((
            "columns",
            "users_query must return (state, count)".to_owned(),
        )),
    }
}

/// `last_start_query`'s time column: `last_start`, else the last column.
fn last_start_column(names: &[&str]) -> Result<usize, Failure> {
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case("last_start"))
        .or(names.len().checked_sub(1))
        .ok_or(("columns", "last_start_query returns no column".to_owned()))
}

/// Users by state, summed per state.
#[derive(Default)]
struct Users {
    by_state: Vec<(String, u64)>,
    skipped: usize,
}

impl Users {
    fn push(&mut self, state: Cell, count: Cell) {
        let count = match count {
            Cell::Int(n) => u64::try_from(n).ok(),
            Cell::Float(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e18 => Some(f as u64),
            _ => None,
        };
        let state = match state {
            Cell::Null => Ok(Some("none".to_owned())),
            Cell::Float(_) | Cell::Time(_) | Cell::Other => Err(()),
            other => other.text().map(|s| s.or(Some("none".to_owned()))),
        };
        let (Some(n), Ok(Some(mut state))) = (count, state) else {
            self.skipped += 1;
            return;
        };
        crate::model::cap_label_value(&mut state);
        match self.by_state.iter_mut().find(|(s, _)| *s == state) {
            Some((_, total)) => *total += n,
            None => self.by_state.push((state, n)),
        }
    }

    /// Sorted by state; past [`MAX_STATES`] the smallest are summed into
    /// `__other__`.
    fn finish(mut self) -> Vec<(String, u64)> {
        if self.by_state.len() > MAX_STATES {
            self.by_state
                .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let rest: u64 = self.by_state.drain(MAX_STATES - 1..).map(|(_, n)| n).sum();
            self.by_state.push(("__other__".to_owned(), rest));
        }
        self.by_state.sort();
        self.by_state
    }
}

/// The days-since-last-start histogram being filled.
struct Starts {
    now: f64,
    hist: DaysHistogram,
    skipped: usize,
}

impl Starts {
    fn new(now: SystemTime) -> Starts {
        Starts {
            now: now
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            hist: DaysHistogram::default(),
            skipped: 0,
        }
    }

    /// A user's last start; NULL (never started) is left out, a value that
    /// is no time is skipped and counted.
    fn push(&mut self, at: Cell) {
        if at == Cell::Null {
            return;
        }
        match at.unix_seconds() {
            Some(t) => self
                .hist
                .observe(Duration::from_secs_f64((self.now - t).clamp(0.0, 1e15))),
            None => self.skipped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::owners::VmFacts;

    fn cfg(toml: &str) -> Config {
        toml::from_str(toml).unwrap()
    }

    fn err(toml: &str) -> String {
        cfg(toml).validate().unwrap_err()
    }

    #[test]
    fn config_errors_name_the_key_and_never_repeat_the_url() {
        assert!(cfg("").validate().is_ok());
        assert!(!cfg("").enabled());
        let e = err("query = 'select 1'");
        assert!(e.starts_with("owners.sql.url:"), "{e}");
        let e = err("url = 'postgres://u:pw@h/db'\nurl_env = 'X'\nquery = 'q'");
        assert!(e.starts_with("owners.sql.url_env:"), "{e}");
        let e = err("url = 'mysql://u:hunter2@h/db'\nquery = 'q'");
        assert!(e.starts_with("owners.sql.url:"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("url = 'postgres://u:hunter2@h/db'");
        assert!(e.starts_with("owners.sql.query:"), "{e}");
        let e = err("url = 'postgres://u:hunter2@h/db?sslmode=require'\nquery = 'q'");
        assert!(
            e.starts_with("owners.sql.url:") && e.contains("sslmode"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("url = 'postgres://u:hunter2@h/db?bogus=1'\nquery = 'q'");
        assert!(e.starts_with("owners.sql.url:"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("url = 'sqlite:'\nquery = 'q'");
        assert!(e.starts_with("owners.sql.url:"), "{e}");
        let e = err("url = 'sqlite:a.db'\nquery = 'q'\nusers_query = ' '");
        assert!(e.starts_with("owners.sql.users_query:"), "{e}");
        let e = err("url = 'sqlite:a.db'\nquery = 'q'\nmax_rows = 0");
        assert!(e.starts_with("owners.sql.max_rows:"), "{e}");
        let e = err("url = 'sqlite:a.db'\nquery = 'q'\ntimeout = '0s'");
        assert!(e.starts_with("owners.sql.timeout:"), "{e}");
        let e = err("url_env = 'VMSCOPE_TEST_SQL_URL_SURELY_UNSET'\nquery = 'q'");
        assert!(
            e.starts_with("owners.sql.url_env:") && e.contains("not set"),
            "{e}"
        );
        // The config's Debug (printed by check-config) hides the URL.
        let c = cfg("url = 'postgres://u:hunter2@h/db'\nquery = 'q'");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn urls_pick_the_backend_and_describe_only_host_and_db() {
        let t = |url: &str| {
            Config {
                url: Some(Secret::new(url)),
                query: Some("q".into()),
                ..Config::default()
            }
            .target()
            .unwrap()
            .unwrap()
        };
        let (pg, secrets) = t("postgresql://vm:hunter2@db.example:6543/platform");
        assert_eq!(pg.describe(), "postgres db.example:6543/platform");
        assert!(secrets.iter().any(|s| s == "hunter2"));
        let (pg, _) = t("postgres://vm@127.0.0.1/platform?sslmode=disable");
        assert_eq!(pg.describe(), "postgres 127.0.0.1:5432/platform");
        assert_eq!(
            t("sqlite:///var/lib/p.db").0.describe(),
            "sqlite /var/lib/p.db"
        );
        assert_eq!(t("sqlite:rel/p.db").0.describe(), "sqlite rel/p.db");
    }

    fn txt(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }

    /// Runs `rows` (cells by the column names `names`) through the mapper.
    fn map(names: &[&str], rows: &[Vec<Cell>], max: usize) -> Result<Rows, Failure> {
        let cols = RowColumns::find(names)?;
        let mut acc = Rows::new(max);
        for r in rows {
            acc.push(&cols, |i| r[i].clone())?;
        }
        Ok(acc)
    }

    fn facts<'a>(id: &'a str, name: &'a str, pid: u32) -> VmFacts<'a> {
        VmFacts {
            id,
            uuid: Some(id),
            name,
            pid,
            process: None,
            libvirt: None,
        }
    }

    #[test]
    fn rows_map_by_column_name_and_malformed_rows_are_skipped_and_counted() {
        use Cell::{Int, Null, Other};
        let names = [
            "project_name",
            "VM_ID",
            "vm_name",
            "pid",
            "user_id",
            "user_name",
            "extra",
        ];
        let rows = vec![
            // by UUID (upper case: ids compare case-insensitively), integer user id
            vec![
                txt("lab"),
                txt(" AAAA-1 "),
                Null,
                Null,
                Int(42),
                txt("alice"),
                Other,
            ],
            // by name
            vec![Null, Null, txt("web-1"), Null, Null, txt("bob"), Null],
            // by pid, as text
            vec![Null, Null, Null, txt("77"), txt("u-3"), Null, Null],
            // no key
            vec![txt("p"), Null, txt(" "), Null, Null, txt("x"), Null],
            // two keys
            vec![Null, txt("b-2"), txt("web-2"), Null, Null, txt("x"), Null],
            // a user name that is no text
            vec![Null, Null, txt("web-3"), Null, Null, Other, Null],
            // a float as a user id
            vec![Null, Null, txt("web-4"), Null, Cell::Float(1.5), Null, Null],
            // key but no owner
            vec![Null, Null, txt("web-5"), Null, Null, Null, Null],
            // bad pids
            vec![Null, Null, Null, Int(-1), Null, txt("x"), Null],
            vec![Null, Null, Null, Int(1 << 40), Null, txt("x"), Null],
            vec![Null, Null, Null, Int(0), Null, txt("x"), Null],
        ];
        let acc = map(&names, &rows, 100).unwrap();
        assert_eq!((acc.map.len(), acc.skipped), (3, 8));
        let o = acc.map.lookup(&facts("aaaa-1", "other", 1)).unwrap();
        assert_eq!(o.user_id.as_deref(), Some("42"));
        assert_eq!(o.user_name.as_deref(), Some("alice"));
        assert_eq!(o.project_name.as_deref(), Some("lab"));
        assert_eq!(o.project_id, None);
        let o = acc.map.lookup(&facts("x", "web-1", 1)).unwrap();
        assert_eq!(o.user_name.as_deref(), Some("bob"));
        let o = acc.map.lookup(&facts("x", "y", 77)).unwrap();
        assert_eq!(o.user_id.as_deref(), Some("u-3"));
    }

    #[test]
    fn a_result_without_key_columns_or_with_too_many_rows_fails_the_fetch() {
        let e = RowColumns::find(&["user_name", "project_id"]).unwrap_err();
        assert_eq!(e.0, "columns");
        assert!(e.1.contains("user_name, project_id"), "{}", e.1);
        let rows: Vec<Vec<Cell>> = (0..3)
            .map(|i| vec![txt(&format!("vm{i}")), txt("u")])
            .collect();
        assert!(map(&["vm_name", "user_name"], &rows, 3).is_ok());
        let e = map(&["vm_name", "user_name"], &rows, 2).err().unwrap();
        assert_eq!(e.0, "too_many_rows");
    }

    #[test]
    fn users_by_state_are_summed_capped_and_sorted() {
        let mut u = Users::default();
        u.push(txt("active"), Cell::Int(3));
        u.push(txt("blocked"), Cell::Float(2.0));
        u.push(txt("active"), Cell::Int(1));
        u.push(Cell::Null, Cell::Int(5));
        u.push(Cell::Int(1), Cell::Int(7));
        u.push(txt("neg"), Cell::Int(-1));
        u.push(txt("frac"), Cell::Float(0.5));
        u.push(Cell::Other, Cell::Int(1));
        u.push(txt(&"s".repeat(1000)), Cell::Int(1));
        assert_eq!(u.skipped, 3);
        let got = u.finish();
        let long = "s".repeat(crate::model::MAX_LABEL_VALUE_BYTES);
        let want: Vec<(String, u64)> = vec![
            ("1".into(), 7),
            ("active".into(), 4),
            ("blocked".into(), 2),
            ("none".into(), 5),
            (long, 1),
        ];
        assert_eq!(got, want);

        let mut u = Users::default();
        for i in 0..(MAX_STATES as i64 + 10) {
            u.push(txt(&format!("s{i:03}")), Cell::Int(100 - i));
        }
        let got = u.finish();
        assert_eq!(got.len(), MAX_STATES);
        let other = got.iter().find(|(s, _)| s == "__other__").unwrap().1;
        // The 11 smallest (states s031..s041: 69 down to 59) are folded.
        assert_eq!(other, (59..=69).sum::<u64>());
    }

    #[test]
    fn last_starts_fill_the_days_histogram_from_every_time_form() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day = 86_400.0;
        let t = |days_ago: f64| 1_700_000_000.0 - days_ago * day;
        let mut s = Starts::new(now);
        s.push(Cell::Int(t(0.5) as i64));
        s.push(Cell::Float(t(2.0)));
        s.push(Cell::Time(t(10.0)));
        // 2023-11-14 22:13:20 UTC is `now`; 100 days before it:
        s.push(txt("2023-08-06 22:13:20"));
        s.push(txt("2023-11-14T22:13:20Z"));
        // In the future (a skewed clock): age 0.
        s.push(Cell::Int(t(-3.0) as i64));
        s.push(Cell::Null);
        s.push(txt("yesterday"));
        s.push(Cell::Other);
        assert_eq!(s.skipped, 2);
        assert_eq!(s.hist.cumulative, [3, 4, 4, 5, 5, 5, 6, 6]);
        assert!((s.hist.sum_seconds - (0.5 + 2.0 + 10.0 + 100.0) * day).abs() < 1.0);
    }

    #[test]
    fn postgres_binary_values_decode() {
        assert_eq!(
            uuid_text(&[
                0x6f, 0x1b, 0x3c, 0x2a, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1
            ]),
            "6f1b3c2a-0000-4000-8000-000000000001"
        );
        // 1700000000.25 = digits [17, 0, 0, 2500], weight 2.
        let raw: Vec<u8> = [4u16, 2, 0, 2, 17, 0, 0, 2500]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&raw), Some(1_700_000_000.25));
        let neg: Vec<u8> = [1u16, 0, 0x4000, 0, 5]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&neg), Some(-5.0));
        let nan: Vec<u8> = [0u16, 0, 0xC000, 0]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&nan), None);
        assert_eq!(numeric(&[0, 1]), None);
        assert_eq!(pg_timestamp(0), Cell::Time(946_684_800.0));
        assert_eq!(pg_timestamp(i64::MAX), Cell::Other);
    }

    #[test]
    fn sqlite_source_reads_read_only_and_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE vms (uuid TEXT, name TEXT, owner TEXT);
             INSERT INTO vms VALUES ('AAAA-1', NULL, 'alice'), (NULL, 'web', 'bob');",
        )
        .unwrap();
        let toml = format!(
            "url = 'sqlite://{}'\nquery = 'select uuid as vm_id, name as vm_name, owner as user_name from vms'\ntimeout = '2s'\n",
            path.display()
        );
        let mut owners = OwnersConfig {
            sql: cfg(&toml),
            ..OwnersConfig::default()
        };
        owners.validate().unwrap();
        let Some(Source::Fetched(mut src, opts)) = start(&owners) else {
            panic!("not started")
        };
        assert_eq!(opts.timeout, Duration::from_secs(2));
        let m = src.fetch().unwrap();
        assert_eq!(m.len(), 2);
        // A query that writes is refused by the database, not run.
        let toml = format!(
            "url = 'sqlite:{}'\nquery = 'delete from vms returning name as vm_name, owner as user_name'\n",
            path.display()
        );
        owners.sql = cfg(&toml);
        let Some(Source::Fetched(mut writer, _)) = start(&owners) else {
            panic!("not started")
        };
        assert_eq!(writer.fetch().unwrap_err().kind, "query");
        let n: i64 = db
            .query_row("select count(*) from vms", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        // The file goes away: `connect`; it comes back: read again.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        // The held connection still reads the renamed file: only a failure
        // drops it. A missing file is seen by a fresh source.
        let mut fresh = match start(&owners) {
            Some(Source::Fetched(s, _)) => s,
            _ => panic!("not started"),
        };
        assert_eq!(fresh.fetch().unwrap_err().kind, "connect");
        // A runaway query is interrupted at the timeout.
        let toml = format!(
            "url = 'sqlite:{}'\nquery = \"with recursive n(x) as (select 1 union all select x + 1 from n) select x as pid, 'u' as user_name from n where x < 0\"\ntimeout = '300ms'\n",
            dir.path().join("moved").display()
        );
        owners.sql = cfg(&toml);
        let Some(Source::Fetched(mut slow, _)) = start(&owners) else {
            panic!("not started")
        };
        let t0 = Instant::now();
        assert_eq!(slow.fetch().unwrap_err().kind, "timeout");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
}
