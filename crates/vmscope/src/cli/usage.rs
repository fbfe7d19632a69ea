//! `vmscope usage`: usage totals from the ledger, read from the state
//! database directly (no agent needed, and fine beside a running one).
//!
//! Reads: the configuration (for `store.path`, unless `--db`), then the
//! database read-only, without the agent's lock; or, with `--database-url`
//! or `ledger.database_url` (and no `--db`), the fleet ledger in
//! PostgreSQL, every host's rows (`--host` picks one), as the agent's
//! API reads it when it has a fleet ledger. The parameters are parsed
//! by the same code as `GET /api/v1/usage` and the totals come from the
//! same query ([`crate::store::LedgerStore::usage`]), so both give the same
//! numbers for the same window and grouping. Emits: a table, CSV (the
//! API's, FOCUS period column names) or JSON (the API's body) on stdout.
//! Fails: exit 2 for a bad parameter (the message names it, as the API's
//! 400 does), 1 for a database that cannot be read (named; a PostgreSQL
//! URL's password never shows).

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, anyhow};

use super::{Failure, UsageArgs, UsageOutput, init_logging, load_config, print_stdout};
use crate::api::ApiError;
use crate::api::usage::{answer_json, csv, parse_query};
use crate::outbound::redact::Secret;
use crate::store::postgres::{PgLedger, PgTarget};
use crate::store::sqlite::{LEDGER_SCHEMA, SqliteStore};
use crate::store::{DbMetrics, LedgerStore, UsageQuery, UsageTotal};

pub fn run(args: UsageArgs) -> Result<(), Failure> {
    let mut cfg = load_config(&args.common)?;
    if cfg.log.level == "info" && !cfg.is_from_env("log.level") {
        cfg.log.level = "warn".into();
    }
    init_logging(&cfg);
    let mut pairs = Vec::new();
    for (k, v) in [
        ("from", &args.from),
        ("to", &args.to),
        ("by", &args.by),
        ("step", &args.step),
        ("host", &args.host),
    ] {
        if let Some(v) = v {
            pairs.push((k.to_owned(), v.clone()));
        }
    }
    let q = parse_query(&pairs, SystemTime::now()).map_err(|e| match e {
        // "by: ..." -> "--by: ...": the flag the user typed.
        ApiError::BadRequest(m) => Failure::usage(anyhow!("--{m}")),
        other => Failure::usage(anyhow!("{other}")),
    })?;
    let fleet = match (&args.db, &args.database_url) {
        (Some(_), _) => None,
        (None, Some(url)) => Some(
            PgTarget::parse("--database-url", &Secret::new(url.as_str()))
                .map_err(|e| Failure::usage(anyhow!(e)))?,
        ),
        (None, None) => cfg.ledger.fleet().map_err(|e| Failure::usage(anyhow!(e)))?,
    };
    let limit = q.limit;
    // The same choice of rows as the agent's API makes: from the
    // resolutions held and the configured retention.
    let pick = |q: UsageQuery, held: &[i64]| {
        crate::ledger::resolve(
            q,
            held,
            &cfg.ledger.retention,
            crate::store::to_ms(SystemTime::now()),
        )
    };
    let (q, totals) = match fleet {
        Some(target) => fleet_usage(target, &cfg.ledger, q, pick)?,
        None => sqlite_usage(args.db, &cfg, q, pick)?,
    };
    if totals.len() > limit {
        return Err(Failure::usage(anyhow!(
            "the answer would hold more than {limit} totals; narrow --from/--to or take a larger --step"
        )));
    }
    let text = match args.output {
        UsageOutput::Json => {
            let mut t = serde_json::to_string_pretty(&answer_json(&q, &totals))
                .context("encoding JSON")
                .map_err(Failure::runtime)?;
            t.push('\n');
            t
        }
        UsageOutput::Csv => csv(&q, &totals),
        UsageOutput::Table => table(&totals),
    };
    print_stdout(&text)
}

/// Totals from the fleet ledger in PostgreSQL (one connection, the
/// configured timeout).
fn fleet_usage(
    target: PgTarget,
    cfg: &crate::ledger::LedgerConfig,
    q: UsageQuery,
    pick: impl FnOnce(UsageQuery, &[i64]) -> UsageQuery,
) -> Result<(UsageQuery, Vec<UsageTotal>), Failure> {
    let pg = PgLedger::new(target, 1, cfg.database_timeout, Arc::new(DbMetrics::new()));
    let failed = |e| Failure::runtime(anyhow!("querying the fleet usage ledger: {e}"));
    let held = pg.resolutions().map_err(failed)?;
    let q = pick(q, &held);
    let totals = pg.usage(&q).map_err(failed)?;
    Ok((q, totals))
}

fn sqlite_usage(
    db: Option<std::path::PathBuf>,
    cfg: &crate::config::Config,
    q: UsageQuery,
    pick: impl FnOnce(UsageQuery, &[i64]) -> UsageQuery,
) -> Result<(UsageQuery, Vec<UsageTotal>), Failure> {
    let path = match db.or(cfg.store.path.clone()) {
        Some(p) => p,
        None => {
            return Err(Failure::usage(anyhow!(
                "no state database: set --db or {}",
                cfg.store.path_setting()
            )));
        }
    };
    let mut store = SqliteStore::open_read_only(&path, LEDGER_SCHEMA)
        .with_context(|| format!("reading the usage ledger in {}", path.display()))
        .map_err(Failure::runtime)?;
    let held = store
        .resolutions()
        .with_context(|| format!("reading the usage ledger in {}", path.display()))
        .map_err(Failure::runtime)?;
    let q = pick(q, &held);
    let totals = store
        .usage(&q)
        .with_context(|| format!("querying the usage ledger in {}", path.display()))
        .map_err(Failure::runtime)?;
    Ok((q, totals))
}

/// Fixed columns; names and keys are cut so one hostile name cannot
/// stretch every line.
fn table(totals: &[UsageTotal]) -> String {
    fn cut(s: &str, n: usize) -> String {
        let mut out: String = s.chars().filter(|c| !c.is_control()).take(n).collect();
        if s.chars().count() > n {
            out.pop();
            out.push('~');
        }
        out
    }
    let mut out = format!(
        "{:<24} {:<36} {:<24} {:>12} {:>10} {:>10} {:>14} {:>14} {:>10} {:>10}\n",
        "START",
        "KEY",
        "LABEL",
        "CPU_S",
        "VCPU_H",
        "MEM_GIB_H",
        "RX_BYTES",
        "TX_BYTES",
        "OBSERVED_S",
        "GAP_S"
    );
    for t in totals {
        out.push_str(&format!(
            "{:<24} {:<36} {:<24} {:>12.3} {:>10.3} {:>10.3} {:>14} {:>14} {:>10.1} {:>10.1}\n",
            humantime::format_rfc3339_seconds(crate::store::from_ms(t.start_ms)),
            cut(t.key.as_deref().unwrap_or("-"), 36),
            cut(t.label.as_deref().unwrap_or("-"), 24),
            t.cpu_seconds,
            t.vcpu_allocated_seconds / 3600.0,
            t.memory_allocated_byte_seconds / 3600.0 / 1_073_741_824.0,
            t.net_rx_bytes,
            t.net_tx_bytes,
            t.observed_seconds,
            t.gap_seconds
        ));
    }
    out
}
