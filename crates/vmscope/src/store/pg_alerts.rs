//! The watchdog's alert state in PostgreSQL (`[store] database_url`), so
//! that the hosts of a fleet keep their alert episodes, notification log
//! and outbox in one database next to the fleet's usage ledger.
//!
//! Reads/writes: `alert_episodes`, `notification_log` and
//! `notification_outbox`, the SQLite tables' shapes plus a `host` column:
//! every query is scoped to this agent's host, so several agents share the
//! database without seeing each other's alerts. `alert_schema_migrations`
//! holds this schema's version (the ledger's tables have their own).
//! Migrations run at connect, in one transaction under a transaction-level
//! advisory lock, so agents starting together do not race.
//!
//! One agent per host, as the SQLite file's lock gives one agent per file:
//! the connection holds a session advisory lock keyed by the host name; a
//! second agent with the same host name is refused
//! ([`StoreError::HostTaken`]) rather than notify everything twice.
//!
//! Only ever used from the store thread (`store/mod.rs`): its calls block
//! that thread, never a tokio worker. A lost connection is opened again
//! (and the host lock taken again) on the next call; every call is bounded
//! by the connect timeout and `statement_timeout`.
//!
//! Fails: [`StoreError::Postgres`] naming the operation, with the server's
//! message as its source (never the URL: the password stays out of logs).
//! The URL is parsed and checked by [`PgTarget`], as the fleet ledger's.

use std::time::{Duration, SystemTime};

use postgres::types::ToSql;

use super::postgres::PgTarget;
use super::{
    AlertStore, EpisodePage, EpisodeQuery, EpisodeRow, EpisodeWrite, NotificationLogEntry,
    OutboxRow, OutboxWrite, Position, StoreError, from_ms, to_ms,
};

/// The schema, applied in order; never edit a released entry.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE alert_episodes (
        id                  BIGSERIAL PRIMARY KEY,
        host                TEXT   NOT NULL,
        rule                TEXT   NOT NULL,
        scope_key           TEXT   NOT NULL,
        severity            TEXT   NOT NULL,
        started_at_ms       BIGINT NOT NULL,
        resolved_at_ms      BIGINT,
        last_notified_at_ms BIGINT NOT NULL,
        payload             TEXT   NOT NULL,
        resolved_payload    TEXT
    );
    CREATE UNIQUE INDEX alert_episodes_open
        ON alert_episodes (host, rule, scope_key) WHERE resolved_at_ms IS NULL;
    CREATE INDEX alert_episodes_started ON alert_episodes (host, started_at_ms, id);
    CREATE TABLE notification_log (
        id     BIGSERIAL PRIMARY KEY,
        host   TEXT    NOT NULL,
        at_ms  BIGINT  NOT NULL,
        sink   TEXT    NOT NULL,
        rule   TEXT    NOT NULL,
        status TEXT    NOT NULL,
        result TEXT    NOT NULL,
        alerts INTEGER NOT NULL,
        error  TEXT
    );
    CREATE INDEX notification_log_at ON notification_log (host, at_ms);
    CREATE TABLE notification_outbox (
        id            BIGSERIAL PRIMARY KEY,
        host          TEXT   NOT NULL,
        sink          TEXT   NOT NULL,
        created_at_ms BIGINT NOT NULL,
        payload       TEXT   NOT NULL
    );
    CREATE INDEX notification_outbox_host ON notification_outbox (host, id);",
)];

/// The advisory lock namespace of migrations (any constant; "vmsc").
const MIGRATE_LOCK: i64 = 0x766d_7363;

/// How long a call may take: the connect timeout and `statement_timeout`.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgAlertStore {
    config: postgres::Config,
    host: String,
    /// Shown in logs and errors: server and database, never the password.
    shown: String,
    client: Option<postgres::Client>,
}

fn pg(op: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

impl PgAlertStore {
    /// Connect, migrate and take the host's lock.
    pub fn open(target: &PgTarget, host: &str) -> Result<PgAlertStore, StoreError> {
        let mut config = target.config().clone();
        config
            .connect_timeout(TIMEOUT)
            .tcp_user_timeout(TIMEOUT)
            .application_name("vmscope");
        let mut s = PgAlertStore {
            shown: target.describe().to_owned(),
            config,
            host: host.to_owned(),
            client: None,
        };
        s.client()?;
        Ok(s)
    }

    /// Where the state is, for logs: server, database and host.
    pub fn shown(&self) -> String {
        format!("{} (host {})", self.shown, self.host)
    }

    /// The connection, opened (migrated, host lock taken) if there is none
    /// or it broke.
    fn client(&mut self) -> Result<&mut postgres::Client, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            let mut c = self
                .config
                .connect(postgres::NoTls)
                .map_err(pg("connect"))?;
            c.batch_execute(&format!("SET statement_timeout = {}", TIMEOUT.as_millis()))
                .map_err(pg("connect"))?;
            migrate(&mut c)?;
            let got: bool = c
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('vmscope-alerts:' || $1))",
                    &[&self.host],
                )
                .and_then(|r| r.try_get(0))
                .map_err(pg("connect"))?;
            if !got {
                return Err(StoreError::HostTaken {
                    host: self.host.clone(),
                    at: self.shown.clone(),
                });
            }
            self.client = Some(c);
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Closed),
        }
    }

    /// Run `f` on the connection; a connection that failed is dropped so
    /// that the next call opens a new one.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let host = self.host.clone();
        let c = self.client()?;
        let res = f(c, &host);
        if res.is_err() && c.is_closed() {
            self.client = None;
        }
        res
    }
}

fn migrate(c: &mut postgres::Client) -> Result<(), StoreError> {
    let op = "migrate";
    let mut tx = c.transaction().map_err(pg(op))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .map_err(pg(op))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS alert_schema_migrations (
            version       BIGINT PRIMARY KEY,
            applied_at_ms BIGINT NOT NULL
        )",
    )
    .map_err(pg(op))?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM alert_schema_migrations",
            &[],
        )
        .and_then(|r| r.try_get(0))
        .map_err(pg(op))?;
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            path: "PostgreSQL alert store".into(),
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).map_err(pg(op))?;
        tx.execute(
            "INSERT INTO alert_schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[version, &to_ms(SystemTime::now())],
        )
        .map_err(pg(op))?;
        tracing::info!(version, "PostgreSQL alert store migrated");
    }
    tx.commit().map_err(pg(op))
}

const EPISODE_COLS: &str = "id, rule, scope_key, severity, started_at_ms, resolved_at_ms, \
                            last_notified_at_ms, payload, resolved_payload";

fn row_to_episode(r: &postgres::Row) -> Result<EpisodeRow, postgres::Error> {
    Ok(EpisodeRow {
        id: r.try_get(0)?,
        rule: r.try_get(1)?,
        scope_key: r.try_get(2)?,
        severity: r.try_get(3)?,
        started_at: from_ms(r.try_get(4)?),
        resolved_at: r.try_get::<_, Option<i64>>(5)?.map(from_ms),
        last_notified_at: from_ms(r.try_get(6)?),
        payload: r.try_get(7)?,
        resolved_payload: r.try_get(8)?,
    })
}

/// A parameter list that numbers its own placeholders.
#[derive(Default)]
struct Params {
    values: Vec<Box<dyn ToSql + Sync>>,
}

impl Params {
    /// Adds `v`; returns its placeholder (`$n`).
    fn add(&mut self, v: impl ToSql + Sync + 'static) -> String {
        self.values.push(Box::new(v));
        format!("${}", self.values.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values.iter().map(|b| b.as_ref()).collect()
    }
}

/// WHERE fragments for the shared filters (fixed SQL text; user input only
/// ever travels as bound values), this host's rows only.
fn filters(q: &EpisodeQuery, host: &str, p: &mut Params) -> Vec<String> {
    let mut clauses = vec![format!("host = {}", p.add(host.to_owned()))];
    if let Some(rule) = &q.rule {
        clauses.push(format!("rule = {}", p.add(rule.clone())));
    }
    if let Some(scope) = &q.scope {
        if scope.contains(':') {
            clauses.push(format!("scope_key = {}", p.add(scope.clone())));
        } else {
            // A kind: the key itself (`host`) or any key `kind:...`.
            let (a, b, c) = (
                p.add(scope.clone()),
                p.add(format!("{scope}:")),
                p.add(format!("{scope};")),
            );
            clauses.push(format!(
                "(scope_key = {a} OR (scope_key >= {b} AND scope_key < {c}))"
            ));
        }
    }
    if let Some(only) = &q.only_scopes {
        clauses.push(format!("scope_key = ANY({}::text[])", p.add(only.clone())));
    }
    if let Some(since) = q.since {
        clauses.push(format!(
            "(resolved_at_ms IS NULL OR resolved_at_ms >= {})",
            p.add(to_ms(since))
        ));
    }
    if let Some(until) = q.until {
        clauses.push(format!("started_at_ms <= {}", p.add(to_ms(until))));
    }
    clauses
}

fn episodes(
    c: &mut postgres::Client,
    sql: &str,
    p: &Params,
    op: &'static str,
) -> Result<Vec<EpisodeRow>, StoreError> {
    c.query(sql, &p.refs())
        .map_err(pg(op))?
        .iter()
        .map(row_to_episode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pg(op))
}

impl AlertStore for PgAlertStore {
    fn open_episodes(&mut self) -> Result<Vec<EpisodeRow>, StoreError> {
        self.with(|c, host| {
            let mut p = Params::default();
            let h = p.add(host.to_owned());
            episodes(
                c,
                &format!(
                    "SELECT {EPISODE_COLS} FROM alert_episodes \
                     WHERE host = {h} AND resolved_at_ms IS NULL ORDER BY rule, scope_key"
                ),
                &p,
                "load_open",
            )
        })
    }

    fn record(
        &mut self,
        writes: &[EpisodeWrite],
        outbox: &[OutboxWrite],
    ) -> Result<Vec<i64>, StoreError> {
        let op = "apply";
        self.with(|c, host| {
            let mut tx = c.transaction().map_err(pg(op))?;
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
                        // As in SQLite: an open episode for the same key
                        // would be a bug upstream; close it, do not fail.
                        tx.execute(
                            "UPDATE alert_episodes SET resolved_at_ms = $4 WHERE host = $1 \
                             AND rule = $2 AND scope_key = $3 AND resolved_at_ms IS NULL",
                            &[&host, rule, scope_key, &ms],
                        )
                        .map_err(pg(op))?;
                        tx.execute(
                            "INSERT INTO alert_episodes (host, rule, scope_key, severity, \
                             started_at_ms, last_notified_at_ms, payload) \
                             VALUES ($1, $2, $3, $4, $5, $5, $6)",
                            &[&host, rule, scope_key, severity, &ms, payload],
                        )
                        .map_err(pg(op))?;
                    }
                    EpisodeWrite::Notified {
                        rule,
                        scope_key,
                        at,
                    } => {
                        tx.execute(
                            "UPDATE alert_episodes SET last_notified_at_ms = $4 WHERE host = $1 \
                             AND rule = $2 AND scope_key = $3 AND resolved_at_ms IS NULL",
                            &[&host, rule, scope_key, &to_ms(*at)],
                        )
                        .map_err(pg(op))?;
                    }
                    EpisodeWrite::Resolve {
                        rule,
                        scope_key,
                        at,
                        payload,
                    } => {
                        tx.execute(
                            "UPDATE alert_episodes SET resolved_at_ms = $4, \
                             last_notified_at_ms = $4, resolved_payload = $5 WHERE host = $1 \
                             AND rule = $2 AND scope_key = $3 AND resolved_at_ms IS NULL",
                            &[&host, rule, scope_key, &to_ms(*at), payload],
                        )
                        .map_err(pg(op))?;
                    }
                }
            }
            let mut ids = Vec::with_capacity(outbox.len());
            for o in outbox {
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO notification_outbox (host, sink, created_at_ms, payload) \
                         VALUES ($1, $2, $3, $4) RETURNING id",
                        &[&host, &o.sink, &to_ms(o.created_at), &o.payload],
                    )
                    .and_then(|r| r.try_get(0))
                    .map_err(pg(op))?;
                ids.push(id);
            }
            tx.commit().map_err(pg(op))?;
            Ok(ids)
        })
    }

    fn finish_delivery(
        &mut self,
        outbox_id: Option<i64>,
        e: &NotificationLogEntry,
    ) -> Result<(), StoreError> {
        let op = "log_notification";
        self.with(|c, host| {
            let mut tx = c.transaction().map_err(pg(op))?;
            let alerts = i32::try_from(e.alerts).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO notification_log (host, at_ms, sink, rule, status, result, alerts, \
                 error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &host,
                    &to_ms(e.at),
                    &e.sink,
                    &e.rule,
                    &e.status,
                    &e.result,
                    &alerts,
                    &e.error,
                ],
            )
            .map_err(pg(op))?;
            if let Some(id) = outbox_id {
                tx.execute(
                    "DELETE FROM notification_outbox WHERE host = $1 AND id = $2",
                    &[&host, &id],
                )
                .map_err(pg(op))?;
            }
            tx.commit().map_err(pg(op))
        })
    }

    fn outbox(&mut self) -> Result<Vec<OutboxRow>, StoreError> {
        let op = "load_open";
        self.with(|c, host| {
            c.query(
                "SELECT id, sink, created_at_ms, payload FROM notification_outbox \
                 WHERE host = $1 ORDER BY id",
                &[&host],
            )
            .map_err(pg(op))?
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get(0)?,
                    sink: r.try_get(1)?,
                    created_at: from_ms(r.try_get(2)?),
                    payload: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(pg(op))
        })
    }

    fn query(&mut self, qy: &EpisodeQuery) -> Result<EpisodePage, StoreError> {
        let op = "query";
        self.with(|c, host| {
            let mut p = Params::default();
            let mut active_where = filters(qy, host, &mut p);
            active_where.push("resolved_at_ms IS NULL".to_owned());
            let active = episodes(
                c,
                &format!(
                    "SELECT {EPISODE_COLS} FROM alert_episodes WHERE {} \
                     ORDER BY started_at_ms DESC, id DESC LIMIT 10000",
                    active_where.join(" AND ")
                ),
                &p,
                op,
            )?;

            let limit = qy.limit.max(1);
            let mut p = Params::default();
            let mut hist_where = filters(qy, host, &mut p);
            hist_where.push("resolved_at_ms IS NOT NULL".to_owned());
            let mut offset = 0i64;
            match qy.position {
                Position::First => {}
                Position::After { started_ms, id } => {
                    let (a, b) = (p.add(started_ms), p.add(id));
                    hist_where.push(format!(
                        "(started_at_ms < {a} OR (started_at_ms = {a} AND id < {b}))"
                    ));
                }
                Position::Page(n) => {
                    offset = i64::from(n.saturating_sub(1)) * i64::from(limit);
                }
            }
            let lim = p.add(i64::from(limit) + 1);
            let off = p.add(offset);
            let history = episodes(
                c,
                &format!(
                    "SELECT {EPISODE_COLS} FROM alert_episodes WHERE {} \
                     ORDER BY started_at_ms DESC, id DESC LIMIT {lim} OFFSET {off}",
                    hist_where.join(" AND ")
                ),
                &p,
                op,
            )?;
            Ok(EpisodePage::new(active, history, limit, qy.position))
        })
    }

    fn notification_log(&mut self, limit: u32) -> Result<Vec<NotificationLogEntry>, StoreError> {
        let op = "query";
        self.with(|c, host| {
            c.query(
                "SELECT at_ms, sink, rule, status, result, alerts, error FROM notification_log \
                 WHERE host = $1 ORDER BY id DESC LIMIT $2",
                &[&host, &i64::from(limit)],
            )
            .map_err(pg(op))?
            .iter()
            .map(|r| {
                Ok(NotificationLogEntry {
                    at: from_ms(r.try_get(0)?),
                    sink: r.try_get(1)?,
                    rule: r.try_get(2)?,
                    status: r.try_get(3)?,
                    result: r.try_get(4)?,
                    alerts: u32::try_from(r.try_get::<_, i32>(5)?).unwrap_or(0),
                    error: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(pg(op))
        })
    }

    fn prune(&mut self, before: SystemTime) -> Result<u64, StoreError> {
        let op = "prune";
        let ms = to_ms(before);
        self.with(|c, host| {
            let mut tx = c.transaction().map_err(pg(op))?;
            let a = tx
                .execute(
                    "DELETE FROM alert_episodes WHERE host = $1 AND resolved_at_ms IS NOT NULL \
                     AND resolved_at_ms < $2",
                    &[&host, &ms],
                )
                .map_err(pg(op))?;
            let b = tx
                .execute(
                    "DELETE FROM notification_log WHERE host = $1 AND at_ms < $2",
                    &[&host, &ms],
                )
                .map_err(pg(op))?;
            tx.commit().map_err(pg(op))?;
            Ok(a + b)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_number_their_placeholders_and_scope_to_the_host() {
        let mut p = Params::default();
        let q = EpisodeQuery {
            rule: Some("r".into()),
            scope: Some("vm".into()),
            since: Some(from_ms(1000)),
            ..EpisodeQuery::default()
        };
        let w = filters(&q, "hv1", &mut p);
        assert_eq!(
            w,
            vec![
                "host = $1",
                "rule = $2",
                "(scope_key = $3 OR (scope_key >= $4 AND scope_key < $5))",
                "(resolved_at_ms IS NULL OR resolved_at_ms >= $6)",
            ]
        );
        assert_eq!(p.refs().len(), 6);
    }
}
