//! The usage ledger's tables in SQLite (migration 4 of `store/sqlite.rs`).
//!
//! Reads/writes: `ledger_facts` (one narrow row per interval, VM
//! incarnation and resolution, keyed time first), its dictionaries
//! `ledger_vms` (host, VM id, incarnation) and `ledger_owners` (name and
//! owner as measured), `ledger_resolutions`, `ledger_cursors` and
//! `ledger_state`. `ledger_rows` is a view with the wide columns.
//!
//! Rollups: a flush writes each raw row's new running total and adds the
//! row's *change* (new total minus what the row held) to the hourly and the
//! daily row it falls in, in the same transaction. So an hourly row is
//! always the sum of its raw rows, whatever order flushes came in, and a
//! replayed flush changes nothing (its change is zero). A rollup row
//! carries the name and owner of the latest raw row added to it: billing
//! that must split an hour at an owner change reads the raw rows.
//!
//! Fails: [`StoreError::Query`] (op `ledger_load`, `ledger_flush`, `query`,
//! `prune`); a flush is one transaction, and ids it created enter the
//! cache only once it committed.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::SqliteStore;
use super::{q, spool_begin, spool_key, to_i64, to_u64};
use crate::store::StoreError;
use crate::store::ledger::{
    LedgerBatch, LedgerCursor, LedgerKey, LedgerRestore, LedgerStore, LedgerTotal, LedgerUsage,
    NetCounter, OwnerKeys, Quantities, ROLLUPS, TOTALS_RESTORE_OWNERS, TotalsDelta, TotalsKind,
    UsageQuery, UsageTotal,
};

type VmKey = (String, String, String);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnerKey {
    vm_name: String,
    user_key: Option<String>,
    user_label: Option<String>,
    project_key: Option<String>,
    project_label: Option<String>,
}

impl OwnerKey {
    fn of(u: &LedgerUsage) -> OwnerKey {
        OwnerKey {
            vm_name: u.vm_name.clone(),
            user_key: u.user_key.clone(),
            user_label: u.user_label.clone(),
            project_key: u.project_key.clone(),
            project_label: u.project_label.clone(),
        }
    }
}

/// Dictionary ids already in the database. Bounded: emptied past
/// [`MAX_CACHED`] entries (a miss costs one indexed lookup).
#[derive(Debug, Default)]
pub(super) struct IdCache {
    vms: HashMap<VmKey, i64>,
    owners: HashMap<OwnerKey, i64>,
}

const MAX_CACHED: usize = 100_000;

impl IdCache {
    fn absorb(&mut self, fresh: IdCache) {
        if self.vms.len() + fresh.vms.len() > MAX_CACHED {
            self.vms.clear();
        }
        if self.owners.len() + fresh.owners.len() > MAX_CACHED {
            self.owners.clear();
        }
        self.vms.extend(fresh.vms);
        self.owners.extend(fresh.owners);
    }
}

const OP_FLUSH: &str = "ledger_flush";

/// The id of (host, VM id, incarnation), inserted if new. `fresh` holds
/// ids seen in this transaction (they join the cache after commit).
fn vm_ref(
    tx: &Transaction<'_>,
    cache: &IdCache,
    fresh: &mut IdCache,
    k: &LedgerKey,
) -> Result<i64, StoreError> {
    let key = (k.host.clone(), k.vm_id.clone(), k.incarnation.clone());
    if let Some(id) = cache.vms.get(&key).or_else(|| fresh.vms.get(&key)) {
        return Ok(*id);
    }
    tx.prepare_cached(
        "INSERT INTO ledger_vms (host, vm_id, incarnation) VALUES (?1, ?2, ?3) \
         ON CONFLICT DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![key.0, key.1, key.2]))
    .map_err(q(OP_FLUSH))?;
    let id: i64 = tx
        .prepare_cached(
            "SELECT id FROM ledger_vms WHERE host = ?1 AND vm_id = ?2 AND incarnation = ?3",
        )
        .and_then(|mut s| s.query_row(params![key.0, key.1, key.2], |r| r.get(0)))
        .map_err(q(OP_FLUSH))?;
    fresh.vms.insert(key, id);
    Ok(id)
}

/// The id of (name, owner), inserted if new (one writer: the store holds
/// the database's lock, so look-then-insert cannot race).
fn owner_ref(
    tx: &Transaction<'_>,
    cache: &IdCache,
    fresh: &mut IdCache,
    u: &LedgerUsage,
) -> Result<i64, StoreError> {
    let key = OwnerKey::of(u);
    if let Some(id) = cache.owners.get(&key).or_else(|| fresh.owners.get(&key)) {
        return Ok(*id);
    }
    let found: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM ledger_owners WHERE vm_name = ?1 AND user_key IS ?2 \
             AND user_label IS ?3 AND project_key IS ?4 AND project_label IS ?5",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    key.vm_name,
                    key.user_key,
                    key.user_label,
                    key.project_key,
                    key.project_label
                ],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(q(OP_FLUSH))?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached(
                "INSERT INTO ledger_owners (vm_name, user_key, user_label, project_key, \
                 project_label) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key.vm_name,
                    key.user_key,
                    key.user_label,
                    key.project_key,
                    key.project_label
                ])
            })
            .map_err(q(OP_FLUSH))?;
            tx.last_insert_rowid()
        }
    };
    fresh.owners.insert(key, id);
    Ok(id)
}

/// The additive part of a row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Amounts {
    cpu: f64,
    guest: Option<f64>,
    vcpu: f64,
    mem: f64,
    rss: f64,
    rx: i64,
    tx: i64,
    observed: f64,
    gap: f64,
}

impl Amounts {
    fn of(u: &LedgerUsage) -> Amounts {
        Amounts {
            cpu: u.cpu_seconds,
            guest: u.guest_seconds,
            vcpu: u.vcpu_allocated_seconds,
            mem: u.memory_allocated_byte_seconds,
            rss: u.rss_byte_seconds,
            rx: to_i64(u.net_rx_bytes),
            tx: to_i64(u.net_tx_bytes),
            observed: u.observed_seconds,
            gap: u.gap_seconds,
        }
    }

    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Amounts> {
        Ok(Amounts {
            cpu: r.get(0)?,
            guest: r.get(1)?,
            vcpu: r.get(2)?,
            mem: r.get(3)?,
            rss: r.get(4)?,
            rx: r.get(5)?,
            tx: r.get(6)?,
            observed: r.get(7)?,
            gap: r.get(8)?,
        })
    }

    /// `self - old`, signed: a rollup stays the exact sum of its rows even
    /// if a row were ever rewritten lower.
    fn minus(self, old: Amounts) -> Amounts {
        Amounts {
            cpu: self.cpu - old.cpu,
            guest: match (self.guest, old.guest) {
                (None, None) => None,
                (n, o) => Some(n.unwrap_or(0.0) - o.unwrap_or(0.0)),
            },
            vcpu: self.vcpu - old.vcpu,
            mem: self.mem - old.mem,
            rss: self.rss - old.rss,
            rx: self.rx.saturating_sub(old.rx),
            tx: self.tx.saturating_sub(old.tx),
            observed: self.observed - old.observed,
            gap: self.gap - old.gap,
        }
    }
}

const TOTALS_COLS: &str = "kind, key, cpu_seconds, vcpu_allocated_seconds, \
     memory_allocated_byte_seconds, net_rx_bytes, net_tx_bytes, last_ms";

/// A `ledger_totals` row; `None` for a kind this vmscope does not know
/// (written by a newer one: left alone).
fn row_to_total(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<LedgerTotal>> {
    let kind: String = r.get(0)?;
    let Some(kind) = TotalsKind::from_name(&kind) else {
        return Ok(None);
    };
    Ok(Some(LedgerTotal {
        kind,
        key: r.get(1)?,
        q: Quantities {
            cpu_seconds: r.get(2)?,
            vcpu_allocated_seconds: r.get(3)?,
            memory_allocated_byte_seconds: r.get(4)?,
            net_rx_bytes: to_u64(r.get(5)?),
            net_tx_bytes: to_u64(r.get(6)?),
        },
        last_ms: r.get(7)?,
    }))
}

/// Adds a flush's usage to `ledger_totals` (inside the flush's
/// transaction: the totals move with the cursors, never apart). Adding
/// rather than replacing lets a VM's first flush count before its earlier
/// total was read back; a failed transaction adds nothing, and the ledger
/// sends the same usage again only after a failure.
fn add_totals(tx: &rusqlite::Transaction<'_>, totals: &[TotalsDelta]) -> rusqlite::Result<()> {
    let mut add = tx.prepare_cached(
        "INSERT INTO ledger_totals (kind, key, label, cpu_seconds, vcpu_allocated_seconds, \
         memory_allocated_byte_seconds, net_rx_bytes, net_tx_bytes, first_ms, last_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
         ON CONFLICT (kind, key) DO UPDATE SET \
         label = COALESCE(excluded.label, label), \
         cpu_seconds = cpu_seconds + excluded.cpu_seconds, \
         vcpu_allocated_seconds = vcpu_allocated_seconds + excluded.vcpu_allocated_seconds, \
         memory_allocated_byte_seconds = memory_allocated_byte_seconds + excluded.memory_allocated_byte_seconds, \
         net_rx_bytes = MIN(net_rx_bytes + excluded.net_rx_bytes, 9223372036854775807), \
         net_tx_bytes = MIN(net_tx_bytes + excluded.net_tx_bytes, 9223372036854775807), \
         last_ms = MAX(last_ms, excluded.last_ms)",
    )?;
    for t in totals {
        add.execute(params![
            t.kind.as_str(),
            t.key,
            t.label,
            t.add.cpu_seconds,
            t.add.vcpu_allocated_seconds,
            t.add.memory_allocated_byte_seconds,
            to_i64(t.add.net_rx_bytes),
            to_i64(t.add.net_tx_bytes),
            t.at_ms,
        ])?;
    }
    Ok(())
}

/// The totals the ledger continues from at start: the overflow rows and
/// the most recently active owners of each kind.
fn load_totals(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<LedgerTotal>> {
    let mut out = Vec::new();
    let mut stmt = tx.prepare(&format!(
        "SELECT {TOTALS_COLS} FROM ledger_totals WHERE kind = ?1 ORDER BY last_ms DESC LIMIT ?2"
    ))?;
    for (kind, limit) in [
        (TotalsKind::UserOverflow, 1),
        (TotalsKind::ProjectOverflow, 1),
        (TotalsKind::User, TOTALS_RESTORE_OWNERS),
        (TotalsKind::Project, TOTALS_RESTORE_OWNERS),
    ] {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        for t in stmt.query_map(params![kind.as_str(), limit], row_to_total)? {
            out.extend(t?);
        }
    }
    Ok(out)
}

const FACT_COLS: &str = "interval_start_ms, vm, resolution_s, owner, cpu_seconds, guest_seconds, \
     vcpu_allocated_seconds, memory_allocated_byte_seconds, rss_byte_seconds, net_rx_bytes, \
     net_tx_bytes, observed_seconds, gap_seconds";

fn flush(conn: &mut Connection, ids: &mut IdCache, batch: &LedgerBatch) -> Result<(), StoreError> {
    let op = OP_FLUSH;
    let tx = conn.transaction().map_err(q(op))?;
    let mut fresh = IdCache::default();
    // With a fleet ledger, every row this flush writes (raw and rollup)
    // is spooled for the shipper.
    let spool = spool_begin(&tx)?;
    {
        // Oldest first, so that a rollup row ends with the newest row's
        // name and owner.
        let mut order: Vec<&(LedgerKey, LedgerUsage)> = batch.rows.iter().collect();
        order.sort_by_key(|(k, _)| k.interval_start_ms);
        let mut old_stmt = tx
            .prepare_cached(
                "SELECT cpu_seconds, guest_seconds, vcpu_allocated_seconds, \
                 memory_allocated_byte_seconds, rss_byte_seconds, net_rx_bytes, net_tx_bytes, \
                 observed_seconds, gap_seconds FROM ledger_facts \
                 WHERE interval_start_ms = ?1 AND vm = ?2 AND resolution_s = ?3",
            )
            .map_err(q(op))?;
        let mut put = tx
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO ledger_facts ({FACT_COLS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))
            .map_err(q(op))?;
        let mut add = tx
            .prepare_cached(&format!(
                "INSERT INTO ledger_facts ({FACT_COLS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT (interval_start_ms, vm, resolution_s) DO UPDATE SET \
                 owner = excluded.owner, \
                 cpu_seconds = cpu_seconds + excluded.cpu_seconds, \
                 guest_seconds = CASE WHEN excluded.guest_seconds IS NULL THEN guest_seconds \
                   ELSE IFNULL(guest_seconds, 0) + excluded.guest_seconds END, \
                 vcpu_allocated_seconds = vcpu_allocated_seconds + excluded.vcpu_allocated_seconds, \
                 memory_allocated_byte_seconds = \
                   memory_allocated_byte_seconds + excluded.memory_allocated_byte_seconds, \
                 rss_byte_seconds = rss_byte_seconds + excluded.rss_byte_seconds, \
                 net_rx_bytes = net_rx_bytes + excluded.net_rx_bytes, \
                 net_tx_bytes = net_tx_bytes + excluded.net_tx_bytes, \
                 observed_seconds = observed_seconds + excluded.observed_seconds, \
                 gap_seconds = gap_seconds + excluded.gap_seconds"
            ))
            .map_err(q(op))?;
        let mut resolutions = BTreeSet::new();
        for (k, u) in order {
            let vm = vm_ref(&tx, ids, &mut fresh, k)?;
            let owner = owner_ref(&tx, ids, &mut fresh, u)?;
            let old = old_stmt
                .query_row(
                    params![k.interval_start_ms, vm, k.resolution_s],
                    Amounts::read,
                )
                .optional()
                .map_err(q(op))?;
            let new = Amounts::of(u);
            put.execute(params![
                k.interval_start_ms,
                vm,
                k.resolution_s,
                owner,
                new.cpu,
                new.guest,
                new.vcpu,
                new.mem,
                new.rss,
                new.rx,
                new.tx,
                new.observed,
                new.gap
            ])
            .map_err(q(op))?;
            resolutions.insert(k.resolution_s);
            if let Some(sp) = spool {
                spool_key(&tx, sp, k)?;
            }
            let d = new.minus(old.unwrap_or_default());
            if old.is_some() && d == Amounts::default() {
                continue;
            }
            for r in ROLLUPS.into_iter().filter(|r| *r > k.resolution_s) {
                let len = r * 1000;
                let start = k.interval_start_ms.div_euclid(len) * len;
                if let Some(sp) = spool {
                    let rolled = LedgerKey {
                        resolution_s: r,
                        interval_start_ms: start,
                        ..k.clone()
                    };
                    spool_key(&tx, sp, &rolled)?;
                }
                add.execute(params![
                    start, vm, r, owner, d.cpu, d.guest, d.vcpu, d.mem, d.rss, d.rx, d.tx,
                    d.observed, d.gap
                ])
                .map_err(q(op))?;
                resolutions.insert(r);
            }
        }
        let mut res = tx
            .prepare_cached("INSERT OR IGNORE INTO ledger_resolutions (resolution_s) VALUES (?1)")
            .map_err(q(op))?;
        for r in resolutions {
            res.execute([r]).map_err(q(op))?;
        }
        let mut cur = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO ledger_cursors (incarnation, host, vm_id, at_ms, \
                 cpu_seconds, guest_seconds, net, vcpus, memory_bytes, rss_bytes, running) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(q(op))?;
        for c in &batch.cursors {
            let net = serde_json::to_string(&c.net).map_err(|e| StoreError::Corrupt {
                what: "ledger cursor",
                detail: e.to_string(),
            })?;
            cur.execute(params![
                c.incarnation,
                c.host,
                c.vm_id,
                c.at_ms,
                c.cpu_seconds,
                c.guest_seconds,
                net,
                c.vcpus,
                c.memory_bytes.map(to_i64),
                to_i64(c.rss_bytes),
                c.running,
            ])
            .map_err(q(op))?;
        }
        let mut del = tx
            .prepare_cached("DELETE FROM ledger_cursors WHERE incarnation = ?1")
            .map_err(q(op))?;
        for inc in &batch.forget {
            del.execute([inc]).map_err(q(op))?;
        }
        if let Some((boot, at)) = &batch.horizon {
            tx.execute(
                "INSERT OR REPLACE INTO ledger_state (boot_id, horizon_ms) VALUES (?1, ?2)",
                params![boot, at],
            )
            .map_err(q(op))?;
        }
        add_totals(&tx, &batch.totals).map_err(q(op))?;
    }
    tx.commit().map_err(q(op))?;
    ids.absorb(fresh);
    Ok(())
}

fn load(
    conn: &mut Connection,
    boot_id: &str,
    resolution_s: i64,
) -> Result<LedgerRestore, StoreError> {
    let op = "ledger_load";
    // Incarnations start with the boot id; ':' is followed by ';' in
    // ASCII, so this is a prefix range.
    let lo = format!("{boot_id}:");
    let hi = format!("{boot_id};");
    let tx = conn.transaction().map_err(q(op))?;
    tx.execute(
        "DELETE FROM ledger_cursors WHERE NOT (incarnation >= ?1 AND incarnation < ?2)",
        params![lo, hi],
    )
    .map_err(q(op))?;
    let mut cursors = Vec::new();
    {
        let mut stmt = tx
            .prepare(
                "SELECT host, vm_id, incarnation, at_ms, cpu_seconds, guest_seconds, net, \
                 vcpus, memory_bytes, rss_bytes, running FROM ledger_cursors",
            )
            .map_err(q(op))?;
        let mut rows = stmt.query([]).map_err(q(op))?;
        while let Some(r) = rows.next().map_err(q(op))? {
            let net: String = r.get(6).map_err(q(op))?;
            let net: Vec<NetCounter> =
                serde_json::from_str(&net).map_err(|e| StoreError::Corrupt {
                    what: "ledger cursor",
                    detail: e.to_string(),
                })?;
            cursors.push(LedgerCursor {
                host: r.get(0).map_err(q(op))?,
                vm_id: r.get(1).map_err(q(op))?,
                incarnation: r.get(2).map_err(q(op))?,
                at_ms: r.get(3).map_err(q(op))?,
                cpu_seconds: r.get(4).map_err(q(op))?,
                guest_seconds: r.get(5).map_err(q(op))?,
                net,
                vcpus: r.get(7).map_err(q(op))?,
                memory_bytes: r.get::<_, Option<i64>>(8).map_err(q(op))?.map(to_u64),
                rss_bytes: to_u64(r.get(9).map_err(q(op))?),
                running: r.get(10).map_err(q(op))?,
            });
        }
    }
    // Each cursor is still adding to one row: the interval its last
    // observation is in (the one before it, ending at the cursor, is
    // complete). One keyed lookup per cursor.
    let mut rows = Vec::new();
    {
        let len = resolution_s.max(1) * 1000;
        let mut stmt = tx
            .prepare(
                "SELECT o.vm_name, o.user_key, o.user_label, o.project_key, o.project_label, \
                 f.cpu_seconds, f.guest_seconds, f.vcpu_allocated_seconds, \
                 f.memory_allocated_byte_seconds, f.rss_byte_seconds, f.net_rx_bytes, \
                 f.net_tx_bytes, f.observed_seconds, f.gap_seconds \
                 FROM ledger_vms v \
                 JOIN ledger_facts f ON f.interval_start_ms = ?4 AND f.vm = v.id \
                   AND f.resolution_s = ?5 \
                 JOIN ledger_owners o ON o.id = f.owner \
                 WHERE v.host = ?1 AND v.vm_id = ?2 AND v.incarnation = ?3",
            )
            .map_err(q(op))?;
        for c in &cursors {
            let start = c.at_ms.div_euclid(len) * len;
            let found = stmt
                .query_row(
                    params![c.host, c.vm_id, c.incarnation, start, resolution_s],
                    |r| {
                        Ok(LedgerUsage {
                            vm_name: r.get(0)?,
                            user_key: r.get(1)?,
                            user_label: r.get(2)?,
                            project_key: r.get(3)?,
                            project_label: r.get(4)?,
                            cpu_seconds: r.get(5)?,
                            guest_seconds: r.get(6)?,
                            vcpu_allocated_seconds: r.get(7)?,
                            memory_allocated_byte_seconds: r.get(8)?,
                            rss_byte_seconds: r.get(9)?,
                            net_rx_bytes: to_u64(r.get(10)?),
                            net_tx_bytes: to_u64(r.get(11)?),
                            observed_seconds: r.get(12)?,
                            gap_seconds: r.get(13)?,
                        })
                    },
                )
                .optional()
                .map_err(q(op))?;
            if let Some(u) = found {
                rows.push((
                    LedgerKey {
                        host: c.host.clone(),
                        vm_id: c.vm_id.clone(),
                        incarnation: c.incarnation.clone(),
                        resolution_s,
                        interval_start_ms: start,
                    },
                    u,
                ));
            }
        }
    }
    let horizon_ms: Option<i64> = tx
        .query_row(
            "SELECT horizon_ms FROM ledger_state WHERE boot_id = ?1",
            [boot_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(q(op))?;
    let totals = load_totals(&tx).map_err(q(op))?;
    tx.commit().map_err(q(op))?;
    Ok(LedgerRestore {
        cursors,
        rows,
        horizon_ms,
        totals,
    })
}

fn usage(conn: &Connection, qy: &UsageQuery) -> Result<Vec<UsageTotal>, StoreError> {
    let op = "query";
    let limit = i64::try_from(qy.limit.saturating_add(1)).unwrap_or(i64::MAX);
    let resolution = if qy.resolution_s > 0 {
        qy.resolution_s
    } else {
        let finest: Option<i64> = conn
            .query_row(
                "SELECT MIN(resolution_s) FROM ledger_resolutions",
                [],
                |r| r.get(0),
            )
            .map_err(q(op))?;
        match finest {
            Some(r) => r,
            None => return Ok(Vec::new()),
        }
    };
    let owners = qy.owners.as_ref().map(OwnerKeys::json);
    let mut stmt = conn.prepare(&qy.sql()).map_err(q(op))?;
    let rows = stmt
        .query_map(
            params![
                qy.from_ms,
                qy.to_ms,
                qy.step_ms,
                limit,
                resolution,
                qy.host,
                owners.as_ref().map(|o| &o.0),
                owners.as_ref().map(|o| &o.1)
            ],
            |r| {
                Ok(UsageTotal {
                    start_ms: r.get(0)?,
                    key: r.get(1)?,
                    label: r.get(2)?,
                    cpu_seconds: r.get(4)?,
                    guest_seconds: r.get(5)?,
                    vcpu_allocated_seconds: r.get(6)?,
                    memory_allocated_byte_seconds: r.get(7)?,
                    rss_byte_seconds: r.get(8)?,
                    net_rx_bytes: to_u64(r.get(9)?),
                    net_tx_bytes: to_u64(r.get(10)?),
                    observed_seconds: r.get(11)?,
                    gap_seconds: r.get(12)?,
                    rows: to_u64(r.get(13)?),
                })
            },
        )
        .map_err(q(op))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(q(op))?;
    Ok(rows)
}

/// One hour of interval starts per DELETE: a short transaction, so the
/// watchdog's writes queued behind it wait little.
const PRUNE_CHUNK_MS: i64 = 3_600_000;

fn prune(
    conn: &Connection,
    resolutions: std::ops::RangeInclusive<i64>,
    from_ms: Option<i64>,
    before_ms: i64,
    budget: Duration,
) -> Result<(u64, i64), StoreError> {
    let op = "prune";
    let started = Instant::now();
    let mut lo = match from_ms {
        Some(f) => f,
        // The oldest row of any resolution: the key's first column, so
        // this is one index step.
        None => match conn
            .query_row("SELECT MIN(interval_start_ms) FROM ledger_facts", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map_err(q(op))?
        {
            Some(m) => m,
            None => return Ok((0, before_ms)),
        },
    };
    let mut deleted = 0u64;
    let mut stmt = conn
        .prepare_cached(
            "DELETE FROM ledger_facts WHERE interval_start_ms >= ?1 AND interval_start_ms < ?2 \
             AND resolution_s BETWEEN ?3 AND ?4",
        )
        .map_err(q(op))?;
    while lo < before_ms {
        let hi = lo.saturating_add(PRUNE_CHUNK_MS).min(before_ms);
        let n = stmt
            .execute(params![lo, hi, resolutions.start(), resolutions.end()])
            .map_err(q(op))?;
        deleted += n as u64;
        lo = hi;
        if started.elapsed() >= budget {
            break;
        }
    }
    Ok((deleted, lo))
}

impl LedgerStore for SqliteStore {
    fn load_ledger(
        &mut self,
        boot_id: &str,
        resolution_s: i64,
    ) -> Result<LedgerRestore, StoreError> {
        load(&mut self.conn, boot_id, resolution_s)
    }

    fn flush_ledger(&mut self, batch: &LedgerBatch) -> Result<(), StoreError> {
        flush(&mut self.conn, &mut self.ledger_ids, batch)
    }

    fn resolutions(&mut self) -> Result<Vec<i64>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT resolution_s FROM ledger_resolutions ORDER BY 1")
            .map_err(q("query"))?;
        stmt.query_map([], |r| r.get(0))
            .map_err(q("query"))?
            .collect::<Result<Vec<i64>, _>>()
            .map_err(q("query"))
    }

    fn usage(&mut self, qy: &UsageQuery) -> Result<Vec<UsageTotal>, StoreError> {
        usage(&self.conn, qy)
    }

    fn ledger_totals(
        &mut self,
        keys: &[(TotalsKind, String)],
    ) -> Result<Vec<LedgerTotal>, StoreError> {
        let op = "ledger_flush";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {TOTALS_COLS} FROM ledger_totals WHERE kind = ?1 AND key = ?2"
            ))
            .map_err(q(op))?;
        let mut out = Vec::with_capacity(keys.len());
        for (kind, key) in keys {
            if let Some(t) = stmt
                .query_row(params![kind.as_str(), key], row_to_total)
                .optional()
                .map_err(q(op))?
                .flatten()
            {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn prune_ledger(
        &mut self,
        resolutions: std::ops::RangeInclusive<i64>,
        from_ms: Option<i64>,
        before_ms: i64,
        budget: Duration,
    ) -> Result<(u64, i64), StoreError> {
        prune(&self.conn, resolutions, from_ms, before_ms, budget)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::MIGRATIONS;

    fn key(vm: &str, inc: &str, res: i64, start: i64) -> LedgerKey {
        LedgerKey {
            host: "hv1".into(),
            vm_id: vm.into(),
            incarnation: inc.into(),
            resolution_s: res,
            interval_start_ms: start,
        }
    }

    fn usage(cpu: f64, rx: u64, user: &str) -> LedgerUsage {
        LedgerUsage {
            vm_name: "web".into(),
            user_key: Some(user.into()),
            user_label: Some(user.to_uppercase()),
            cpu_seconds: cpu,
            guest_seconds: Some(cpu / 2.0),
            vcpu_allocated_seconds: 120.0,
            memory_allocated_byte_seconds: 1e12,
            rss_byte_seconds: 5e11,
            net_rx_bytes: rx,
            net_tx_bytes: rx / 2,
            observed_seconds: 50.0,
            gap_seconds: 10.0,
            ..LedgerUsage::default()
        }
    }

    type Sums = (i64, f64, f64, f64, i64, i64, f64, f64);

    fn sums(s: &SqliteStore, res_filter: &str) -> Sums {
        s.conn
            .query_row(
                &format!(
                    "SELECT COUNT(*), SUM(cpu_seconds), TOTAL(guest_seconds), \
                     SUM(vcpu_allocated_seconds), SUM(net_rx_bytes), SUM(net_tx_bytes), \
                     SUM(observed_seconds), SUM(gap_seconds) FROM ledger_rows WHERE {res_filter}"
                ),
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )
            .unwrap()
    }

    #[test]
    fn rollups_stay_the_sum_of_their_rows_across_updates_replays_and_hours() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        const H: i64 = 3_600_000;
        // Two minutes of hour 0, one of hour 1, for one incarnation; one
        // minute of another incarnation.
        let first = LedgerBatch {
            rows: vec![
                (key("a", "b:1:1", 60, 0), usage(10.0, 100, "alice")),
                (key("a", "b:1:1", 60, 60_000), usage(5.0, 50, "alice")),
                (key("b", "b:2:1", 60, 0), usage(1.0, 10, "bob")),
            ],
            ..LedgerBatch::default()
        };
        s.flush_ledger(&first).unwrap();
        // The open row grows, a new hour starts, and the owner changes.
        let second = LedgerBatch {
            rows: vec![
                (key("a", "b:1:1", 60, H), usage(7.0, 70, "carol")),
                (key("a", "b:1:1", 60, 60_000), usage(8.0, 80, "alice")),
            ],
            ..LedgerBatch::default()
        };
        s.flush_ledger(&second).unwrap();
        // The rollup carries the newest row's owner: hour 1 is carol's,
        // and a's day too (its latest row).
        let owner = |res: i64, start: i64| -> String {
            s.conn
                .query_row(
                    "SELECT user_key FROM ledger_rows WHERE vm_id = 'a' AND resolution_s = ?1 \
                     AND interval_start_ms = ?2",
                    params![res, start],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(owner(3600, 0), "alice");
        assert_eq!(owner(3600, H), "carol");
        assert_eq!(owner(86_400, 0), "carol");
        // Replays change nothing.
        s.flush_ledger(&second).unwrap();
        s.flush_ledger(&first.clone()).unwrap();
        // `first` replayed *after* `second` rewrote minute 1 back to 5.0:
        // the raw row says 5.0 again, and the rollups follow it exactly.
        let raw = sums(&s, "resolution_s = 60");
        let hourly = sums(&s, "resolution_s = 3600");
        let daily = sums(&s, "resolution_s = 86400");
        assert_eq!(raw.0, 4);
        assert_eq!(
            (hourly.0, daily.0),
            (3, 2),
            "2 hours of a, 1 of b; 1 day each"
        );
        for agg in [hourly, daily] {
            assert_eq!(agg.1, raw.1, "cpu");
            assert_eq!(agg.2, raw.2, "guest");
            assert_eq!(agg.3, raw.3, "vcpu");
            assert_eq!((agg.4, agg.5), (raw.4, raw.5), "bytes");
            assert_eq!((agg.6, agg.7), (raw.6, raw.7), "observed, gap");
        }
        assert_eq!(raw.1, 10.0 + 5.0 + 1.0 + 7.0);
        // Each name/owner and each incarnation is stored once.
        let dicts: (i64, i64) = s
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM ledger_vms), (SELECT COUNT(*) FROM ledger_owners)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(dicts, (2, 3));
        // The finest resolution answers a usage query left open (0).
        let q = UsageQuery {
            from_ms: 0,
            to_ms: 2 * H,
            step_ms: 0,
            by: crate::store::UsageBy::User,
            resolution_s: 0,
            host: None,
            limit: 10,
            owners: None,
        };
        let raw_q = s.usage(&q).unwrap();
        let hourly_q = s
            .usage(&UsageQuery {
                resolution_s: 3600,
                ..q.clone()
            })
            .unwrap();
        let total = |v: &[UsageTotal]| v.iter().map(|t| t.cpu_seconds).sum::<f64>();
        assert_eq!(total(&raw_q), total(&hourly_q));
        assert_eq!(raw_q.iter().map(|t| t.rows).sum::<u64>(), 4);
    }

    #[test]
    fn a_version_3_ledger_is_migrated_with_its_rows_and_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // The database as migration 3 left it, with two rows.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, \
                 applied_at_ms INTEGER NOT NULL)",
            )
            .unwrap();
            for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 3) {
                c.execute_batch(sql).unwrap();
                c.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [v])
                    .unwrap();
            }
            for (start, cpu, user) in [(0, 2.5, Some("u1")), (60_000, 4.0, None)] {
                c.execute(
                    "INSERT INTO ledger_rows VALUES ('hv', 'vm', 'b:1:1', 60, ?1, 'n', ?3, ?3, \
                     NULL, NULL, ?2, NULL, 60, 1e9, 1e8, 5, 6, 60, 0)",
                    params![start, cpu, user],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.last().unwrap().0);
        let raw = sums(&s, "resolution_s = 60");
        assert_eq!((raw.0, raw.1, raw.4), (2, 6.5, 10));
        assert_eq!(raw.2, 0.0, "no guest time");
        let guest: Option<f64> = s
            .conn
            .query_row(
                "SELECT SUM(guest_seconds) FROM ledger_rows WHERE resolution_s = 3600",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            guest, None,
            "a rollup of rows without guest time has none either"
        );
        for res in [3600, 86_400] {
            let r = sums(&s, &format!("resolution_s = {res}"));
            assert_eq!((r.0, r.1, r.4, r.6), (1, 6.5, 10, 120.0), "{res}");
        }
        let users: Vec<Option<String>> = s
            .conn
            .prepare("SELECT user_key FROM ledger_rows WHERE resolution_s = 60 ORDER BY 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(users, vec![None, Some("u1".to_owned())]);
    }

    #[test]
    fn retention_deletes_old_rows_of_one_resolution_in_short_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        const H: i64 = 3_600_000;
        // One raw row every 30 minutes over 10 hours.
        let rows = (0..20)
            .map(|i| (key("a", "b:1:1", 60, i * H / 2), usage(1.0, 1, "u")))
            .collect();
        s.flush_ledger(&LedgerBatch {
            rows,
            ..LedgerBatch::default()
        })
        .unwrap();
        // A zero budget: one hour per call, so the walk takes steps.
        let (mut from, mut deleted, mut calls) = (None, 0, 0);
        loop {
            let (n, reached) = s
                .prune_ledger(1..=3599, from, 6 * H, Duration::ZERO)
                .unwrap();
            deleted += n;
            calls += 1;
            if reached >= 6 * H {
                break;
            }
            from = Some(reached);
        }
        assert_eq!((deleted, calls), (12, 6));
        assert_eq!(sums(&s, "resolution_s = 60").0, 8);
        // The rollups of the pruned hours are untouched.
        assert_eq!(sums(&s, "resolution_s = 3600").0, 10);
        assert_eq!(sums(&s, "resolution_s = 86400").1, 20.0);
        // Nothing left to delete: done in one call.
        assert_eq!(
            s.prune_ledger(1..=3599, None, 6 * H, Duration::ZERO)
                .unwrap()
                .0,
            0
        );
    }
}
