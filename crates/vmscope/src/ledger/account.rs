//! The accounting: snapshots in, per-interval usage rows out. Pure: no IO,
//! no clock (time is each snapshot's `collected_at`).
//!
//! Reads: [`Snapshot`]s, in order (the ledger thread may skip some: every
//! quantity is a counter delta or a gauge held between two observations,
//! so a skipped snapshot makes a step coarser, never loses usage).
//! Emits: [`LedgerKey`] -> [`LedgerUsage`] rows (running totals of the
//! interval), [`LedgerCursor`]s and the batches the store writes.
//! Fails: never; odd data is absorbed by the rules below.
//!
//! Rules (docs/ledger.md):
//! - A VM *incarnation* is (boot id, PID, process start): usage is only
//!   ever a delta between two observations of one incarnation. A restarted
//!   VM, PID reuse or a reboot is a new incarnation and starts from zero.
//! - A counter that goes down within one incarnation (never for CPU time;
//!   a TAP recreated under the same name for network bytes) is taken as a
//!   reset: the delta is the new value, counted from 0. A TAP that
//!   disappears contributes nothing more; a new one counts from 0. So no
//!   delta is ever negative.
//! - A delta between observations at t0 and t1 is spread over [t0, t1] in
//!   proportion to time, split at interval boundaries (the last piece takes
//!   the rounding remainder, so the pieces sum exactly to the delta).
//! - [t0, t1] counts as `observed_seconds` when t1 - t0 is at most
//!   `gap_after` (a few collection intervals), else as `gap_seconds` (the
//!   agent was down, or the VM unreadable): the counters still say exactly
//!   how much was used across a gap, only not when; spreading it evenly
//!   keeps every total right.
//! - Gauge-based quantities (allocated vCPU-seconds, allocated memory and
//!   RSS byte-seconds) hold the values seen at t0 until t1, count only
//!   while the VM was running at t0, and only over observed time: nothing
//!   is known about the VM's state during a gap.
//! - Name and owner of a row are those of the latest observation that
//!   added to it.
//! - Every delta added to rows is also added to the counter totals
//!   ([`Totals`]: per VM id, and per owner of that moment), which the
//!   flush writes with the rows and cursors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::totals::{Totals, TotalsMarks};
use crate::model::counters::{CounterTotals, Quantities};
use crate::model::identity::{self, OwnerIndex, OwnerKind};
use crate::model::{NetStats, Snapshot, VmState, VmStats};
use crate::store::{
    LedgerBatch, LedgerCursor, LedgerKey, LedgerRestore, LedgerTotal, LedgerUsage, NetCounter,
};

/// An incarnation within one boot: (PID, process start in clock ticks
/// since boot). Numbers, so that following 1000 VMs allocates nothing per
/// tick; the `<boot id>:<pid>:<ticks>` string is made once per incarnation.
type Inc = (u32, i64);

/// The strings that name an incarnation in the store: one allocation per
/// incarnation, shared by its cursor and every row it adds to. (Each row
/// and each cursor held its own copies: at 10 000 VMs, with a row or two
/// per VM, the rows alone held 20 000 sets.)
#[derive(Debug)]
struct Ids {
    host: String,
    vm_id: String,
    /// `<boot id>:<pid>:<process start, clock ticks since boot>`.
    incarnation: String,
}

/// The name and owners a row carries: those of the latest observation
/// that added to it. Shared by an incarnation's rows, and replaced (not
/// edited) when an observation says otherwise.
#[derive(Debug, Default, PartialEq)]
struct Names {
    vm_name: String,
    user_key: Option<String>,
    user_label: Option<String>,
    project_key: Option<String>,
    project_label: Option<String>,
}

impl Names {
    /// What `vm` says, borrowed: (name, user key, user label, project
    /// key, project label).
    fn of<'a>(vm: &'a VmStats, owners: &Owners<'a>) -> NamesRef<'a> {
        let owner = vm.owner.as_deref();
        (
            vm.name.as_str(),
            owner.and_then(|o| owners.users.key(o)),
            owner.and_then(|o| identity::label(o, OwnerKind::User)),
            owner.and_then(|o| owners.projects.key(o)),
            owner.and_then(|o| identity::label(o, OwnerKind::Project)),
        )
    }

    fn same(&self, r: &NamesRef<'_>) -> bool {
        self.vm_name == r.0
            && self.user_key.as_deref() == r.1
            && self.user_label.as_deref() == r.2
            && self.project_key.as_deref() == r.3
            && self.project_label.as_deref() == r.4
    }

    /// `slot` says what `vm` says now; allocates only when that changed.
    fn refresh(slot: &mut Arc<Names>, vm: &VmStats, owners: &Owners<'_>) {
        let r = Names::of(vm, owners);
        if !slot.same(&r) {
            *slot = Arc::new(Names {
                vm_name: r.0.to_owned(),
                user_key: r.1.map(str::to_owned),
                user_label: r.2.map(str::to_owned),
                project_key: r.3.map(str::to_owned),
                project_label: r.4.map(str::to_owned),
            });
        }
    }
}

type NamesRef<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// A row's quantities: [`LedgerUsage`] without its strings.
#[derive(Debug, Clone, Copy, Default)]
struct Amounts {
    cpu_seconds: f64,
    guest_seconds: Option<f64>,
    vcpu_allocated_seconds: f64,
    memory_allocated_byte_seconds: f64,
    rss_byte_seconds: f64,
    net_rx_bytes: u64,
    net_tx_bytes: u64,
    observed_seconds: f64,
    gap_seconds: f64,
}

/// A row and its write versions: dirty while `version > flushed`. Its
/// interval start is in its key. About 120 bytes: the store's
/// [`LedgerKey`] and [`LedgerUsage`] (300 bytes and eight strings) are
/// built only for the rows a flush writes.
#[derive(Debug, Clone)]
struct Entry {
    ids: Arc<Ids>,
    names: Arc<Names>,
    resolution_s: i64,
    amounts: Amounts,
    version: u64,
    flushed: u64,
}

impl Entry {
    fn key(&self, interval_start_ms: i64) -> LedgerKey {
        LedgerKey {
            host: self.ids.host.clone(),
            vm_id: self.ids.vm_id.clone(),
            incarnation: self.ids.incarnation.clone(),
            resolution_s: self.resolution_s,
            interval_start_ms,
        }
    }

    fn usage(&self) -> LedgerUsage {
        let (n, a) = (&*self.names, &self.amounts);
        LedgerUsage {
            vm_name: n.vm_name.clone(),
            user_key: n.user_key.clone(),
            user_label: n.user_label.clone(),
            project_key: n.project_key.clone(),
            project_label: n.project_label.clone(),
            cpu_seconds: a.cpu_seconds,
            guest_seconds: a.guest_seconds,
            vcpu_allocated_seconds: a.vcpu_allocated_seconds,
            memory_allocated_byte_seconds: a.memory_allocated_byte_seconds,
            rss_byte_seconds: a.rss_byte_seconds,
            net_rx_bytes: a.net_rx_bytes,
            net_tx_bytes: a.net_tx_bytes,
            observed_seconds: a.observed_seconds,
            gap_seconds: a.gap_seconds,
        }
    }
}

/// The last observation of an incarnation: [`LedgerCursor`] without its
/// strings (those are the incarnation's [`Ids`]).
#[derive(Debug, Clone)]
struct Cursor {
    at_ms: i64,
    cpu_seconds: f64,
    guest_seconds: Option<f64>,
    net: Vec<NetCounter>,
    vcpus: Option<u32>,
    memory_bytes: Option<u64>,
    rss_bytes: u64,
    running: bool,
}

/// A cursor and when it was last matched by a snapshot (to forget
/// incarnations that are gone).
#[derive(Debug, Clone)]
struct Tracked {
    ids: Arc<Ids>,
    /// The latest observation's name and owners, for the rows it adds to.
    names: Arc<Names>,
    cursor: Cursor,
    last_seen_ms: i64,
    /// The collection found its process gone (`Snapshot::departed`): let
    /// go of it once its rows are written.
    departed: bool,
}

impl Tracked {
    fn store_cursor(&self) -> LedgerCursor {
        let c = &self.cursor;
        LedgerCursor {
            host: self.ids.host.clone(),
            vm_id: self.ids.vm_id.clone(),
            incarnation: self.ids.incarnation.clone(),
            at_ms: c.at_ms,
            cpu_seconds: c.cpu_seconds,
            guest_seconds: c.guest_seconds,
            net: c.net.clone(),
            vcpus: c.vcpus,
            memory_bytes: c.memory_bytes,
            rss_bytes: c.rss_bytes,
            running: c.running,
        }
    }
}

/// Versions of the rows a batch carried, to mark them clean once written.
#[derive(Debug, Default)]
pub struct BatchMarks {
    rows: Vec<((u32, i64, i64), u64)>,
    forget: Vec<String>,
    totals: TotalsMarks,
}

impl BatchMarks {
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// The counter totals the flush must read back once written.
    pub fn totals_keys(&self) -> &[(crate::store::TotalsKind, String)] {
        self.totals.keys()
    }
}

/// Settings of the accounting.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Row length, ms.
    pub interval_ms: i64,
    /// Longest step between two observations still counted as observed, ms.
    pub gap_after_ms: i64,
    /// How long an incarnation no snapshot shows is kept before its cursor
    /// is forgotten, ms (a VM that a discovery hiccup hid for a tick must
    /// not lose its cursor).
    pub forget_after_ms: i64,
    /// Most rows held in memory; past it the oldest are dropped (counted).
    pub max_rows: usize,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Host boot time, Unix seconds (`btime`), to turn a process start time
    /// back into clock ticks since boot.
    pub boot_time: f64,
    /// `[owners] max_owners`: owners of a kind with counter series.
    pub max_owners: usize,
}

/// The ledger's state between snapshots.
#[derive(Debug)]
pub struct Accountant {
    cfg: AccountConfig,
    /// Looked up for every VM of every snapshot: foldhash, not SipHash
    /// (the keys are PIDs and start times).
    cursors: HashMap<Inc, Tracked, foldhash::fast::RandomState>,
    /// (pid, ticks, interval start) -> row.
    rows: BTreeMap<(u32, i64, i64), Entry>,
    /// Up to when (ms) the ledger has looked: a VM that started after this
    /// started unseen and is counted from its start.
    horizon_ms: Option<i64>,
    version: u64,
    /// Incarnations forgotten since the last flush (their cursors to delete).
    forgotten: Vec<String>,
    dropped: u64,
    /// The counter totals on `/metrics`.
    totals: Totals,
}

fn ms(t: SystemTime) -> i64 {
    crate::store::to_ms(t)
}

/// The process start of `vm` in clock ticks since boot (100 Hz) rather
/// than Unix seconds, so that it does not move with the wall clock between
/// agent runs.
fn ticks(boot_time: f64, vm: &VmStats) -> i64 {
    ((vm.start_time_seconds - boot_time) * 100.0).round() as i64
}

/// The incarnation of `vm` on boot `boot_id`: `<boot id>:<pid>:<ticks>`.
pub fn incarnation(boot_id: &str, boot_time: f64, vm: &VmStats) -> String {
    format!("{boot_id}:{}:{}", vm.pid, ticks(boot_time, vm))
}

/// (pid, ticks) back from an incarnation string.
fn parse_inc(s: &str) -> Option<Inc> {
    let mut parts = s.rsplitn(3, ':');
    let ticks = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    Some((pid, ticks))
}

/// What one snapshot says about one VM, without its strings.
#[derive(Debug, Clone, Copy)]
struct Obs {
    at_ms: i64,
    cpu_seconds: f64,
    guest_seconds: Option<f64>,
}

/// The owner keys of one snapshot, built once for all its VMs.
struct Owners<'a> {
    users: OwnerIndex<'a>,
    projects: OwnerIndex<'a>,
}

impl Accountant {
    pub fn new(cfg: AccountConfig) -> Self {
        Accountant {
            totals: Totals::new(cfg.max_owners),
            cfg,
            cursors: HashMap::default(),
            rows: BTreeMap::new(),
            horizon_ms: None,
            version: 0,
            forgotten: Vec::new(),
            dropped: 0,
        }
    }

    /// Take over what a previous run flushed: its cursors (so that a VM
    /// still running continues from them), the rows they were adding to
    /// (continued, not replaced) and its horizon. `now_ms` starts the
    /// forget clock of the restored cursors.
    pub fn restore(&mut self, r: LedgerRestore, now_ms: i64) {
        for c in r.cursors {
            let Some(inc) = parse_inc(&c.incarnation) else {
                continue;
            };
            let cursor = Cursor {
                at_ms: c.at_ms,
                cpu_seconds: c.cpu_seconds,
                guest_seconds: c.guest_seconds,
                net: c.net,
                vcpus: c.vcpus,
                memory_bytes: c.memory_bytes,
                rss_bytes: c.rss_bytes,
                running: c.running,
            };
            let ids = Arc::new(Ids {
                host: c.host,
                vm_id: c.vm_id,
                incarnation: c.incarnation,
            });
            self.cursors.insert(
                inc,
                Tracked {
                    ids,
                    // Set by the first observation, before it adds to a row.
                    names: Arc::default(),
                    cursor,
                    last_seen_ms: now_ms,
                    departed: false,
                },
            );
        }
        for (k, u) in r.rows {
            let Some((pid, t)) = parse_inc(&k.incarnation) else {
                continue;
            };
            // The cursor's strings when it has the same ones.
            let ids = match self.cursors.get(&(pid, t)) {
                Some(c)
                    if c.ids.incarnation == k.incarnation
                        && c.ids.vm_id == k.vm_id
                        && c.ids.host == k.host =>
                {
                    Arc::clone(&c.ids)
                }
                _ => Arc::new(Ids {
                    host: k.host,
                    vm_id: k.vm_id,
                    incarnation: k.incarnation,
                }),
            };
            let amounts = Amounts {
                cpu_seconds: u.cpu_seconds,
                guest_seconds: u.guest_seconds,
                vcpu_allocated_seconds: u.vcpu_allocated_seconds,
                memory_allocated_byte_seconds: u.memory_allocated_byte_seconds,
                rss_byte_seconds: u.rss_byte_seconds,
                net_rx_bytes: u.net_rx_bytes,
                net_tx_bytes: u.net_tx_bytes,
                observed_seconds: u.observed_seconds,
                gap_seconds: u.gap_seconds,
            };
            let names = Arc::new(Names {
                vm_name: u.vm_name,
                user_key: u.user_key,
                user_label: u.user_label,
                project_key: u.project_key,
                project_label: u.project_label,
            });
            self.rows.insert(
                (pid, t, k.interval_start_ms),
                Entry {
                    ids,
                    names,
                    resolution_s: k.resolution_s,
                    amounts,
                    version: 0,
                    flushed: 0,
                },
            );
        }
        self.horizon_ms = r.horizon_ms.max(self.horizon_ms);
        self.totals.restore(&r.totals);
    }

    /// Account one snapshot.
    pub fn observe(&mut self, snap: &Snapshot) {
        let at = ms(snap.collected_at);
        if snap.seq == 0 || snap.collected_at <= UNIX_EPOCH {
            return;
        }
        self.totals.begin(snap, at);
        let owners = Owners {
            users: OwnerIndex::new(
                OwnerKind::User,
                snap.vms.iter().filter_map(|v| v.owner.as_deref()),
            ),
            projects: OwnerIndex::new(
                OwnerKind::Project,
                snap.vms.iter().filter_map(|v| v.owner.as_deref()),
            ),
        };
        for vm in &snap.vms {
            // Stale values (this tick's read failed): the next good read
            // covers the time.
            if !vm.collect_success || vm.pid == 0 {
                continue;
            }
            let inc = (vm.pid, ticks(self.cfg.boot_time, vm));
            let now = Obs {
                at_ms: at,
                cpu_seconds: vm.cpu.total(),
                guest_seconds: vm.cpu.guest,
            };
            if let Some(t) = self.cursors.get_mut(&inc) {
                if t.cursor.at_ms >= at {
                    // Same or older snapshot: nothing new.
                    continue;
                }
                Names::refresh(&mut t.names, vm, &owners);
                account(
                    &self.cfg,
                    &mut self.rows,
                    &mut self.version,
                    &mut self.totals,
                    inc,
                    (&t.ids, &t.names),
                    &t.cursor,
                    &now,
                    vm,
                    &owners,
                );
                update_cursor(&mut t.cursor, &now, vm);
                t.last_seen_ms = at;
                continue;
            }
            let host = snap.host.hostname.as_deref().unwrap_or_default();
            let ids = Arc::new(Ids {
                host: host.to_owned(),
                // Not `id`: a tick that sees another process claim the
                // same id (for a moment) must not name the incarnation.
                vm_id: vm.claimed_id().to_owned(),
                incarnation: incarnation(&self.cfg.boot_id, self.cfg.boot_time, vm),
            });
            let mut names = Arc::default();
            Names::refresh(&mut names, vm, &owners);
            let start_ms = (vm.start_time_seconds * 1000.0).round() as i64;
            let mut cursor = new_cursor(vm);
            match self.horizon_ms {
                // Started after the ledger last looked: its counters
                // started at 0 when it started.
                Some(h) if start_ms >= h - self.cfg.gap_after_ms && start_ms < at => {
                    let zero = Cursor {
                        at_ms: start_ms,
                        guest_seconds: now.guest_seconds.map(|_| 0.0),
                        ..cursor.clone()
                    };
                    account(
                        &self.cfg,
                        &mut self.rows,
                        &mut self.version,
                        &mut self.totals,
                        inc,
                        (&ids, &names),
                        &zero,
                        &now,
                        vm,
                        &owners,
                    );
                }
                // Running before the ledger looked: only what it uses from
                // now on is known to be in a window.
                _ => {}
            }
            update_cursor(&mut cursor, &now, vm);
            self.cursors.insert(
                inc,
                Tracked {
                    ids,
                    names,
                    cursor,
                    last_seen_ms: at,
                    departed: false,
                },
            );
        }
        for (pid, start) in &snap.departed {
            let inc = (*pid, i64::try_from(*start).unwrap_or(i64::MAX));
            if let Some(t) = self.cursors.get_mut(&inc) {
                t.departed = true;
            }
        }
        self.horizon_ms = Some(self.horizon_ms.map_or(at, |h| h.max(at)));
        let forget_before = at - self.cfg.forget_after_ms;
        if self
            .cursors
            .values()
            .any(|t| t.last_seen_ms < forget_before)
        {
            self.forget_cursors(|_, t| t.last_seen_ms < forget_before);
        }
        self.bound();
    }

    /// Rows past `max_rows`: drop the oldest clean ones first, then the
    /// oldest dirty ones (lost, counted).
    fn bound(&mut self) {
        if self.rows.len() <= self.cfg.max_rows {
            return;
        }
        self.evict_clean();
        let excess = self.rows.len().saturating_sub(self.cfg.max_rows);
        if excess == 0 {
            return;
        }
        // Once per snapshot while over the bound: sort once, drop the oldest.
        let mut keys: Vec<(u32, i64, i64)> = self.rows.keys().copied().collect();
        keys.sort_unstable_by_key(|k| k.2);
        for k in keys.into_iter().take(excess) {
            if let Some(e) = self.rows.remove(&k)
                && e.version > e.flushed
            {
                self.dropped += 1;
            }
        }
    }

    /// Drop written rows that no observation can add to any more: their
    /// interval ended before their incarnation's cursor (or the
    /// incarnation is forgotten).
    fn evict_clean(&mut self) {
        let len = self.cfg.interval_ms;
        let cursors = &self.cursors;
        self.rows.retain(|&(pid, t, start), e| {
            if e.version > e.flushed {
                return true;
            }
            match cursors.get(&(pid, t)) {
                Some(c) => start + len > c.cursor.at_ms,
                None => false,
            }
        });
    }

    /// What the next flush writes: every row changed since it was last
    /// written, every cursor, the cursors to forget and the horizon.
    pub fn batch(&mut self) -> (LedgerBatch, BatchMarks) {
        let mut batch = LedgerBatch::default();
        let mut marks = BatchMarks::default();
        for (k, e) in &self.rows {
            if e.version > e.flushed {
                batch.rows.push((e.key(k.2), e.usage()));
                marks.rows.push((*k, e.version));
            }
        }
        batch.cursors = self.cursors.values().map(Tracked::store_cursor).collect();
        batch.forget = self.forgotten.clone();
        marks.forget = self.forgotten.clone();
        batch.horizon = self.horizon_ms.map(|h| (self.cfg.boot_id.clone(), h));
        marks.totals = self.totals.batch(&mut batch.totals);
        (batch, marks)
    }

    /// The batch behind `marks` is in the store: mark its rows clean (those
    /// not changed since) and drop what is no longer needed in memory.
    /// `totals`: the counter totals of `marks` read back after the write
    /// (`None`: written, but reading them back failed).
    pub fn flushed(&mut self, marks: BatchMarks, totals: Option<&[LedgerTotal]>) {
        self.totals.flushed(marks.totals, totals);
        for (k, v) in marks.rows {
            if let Some(e) = self.rows.get_mut(&k) {
                e.flushed = e.flushed.max(v);
            }
        }
        self.forgotten.retain(|f| !marks.forget.contains(f));
        // Departed incarnations whose rows are all written: nothing more
        // will be accounted to them, so their cursor and rows can go now
        // rather than after forget_after (churning hosts would otherwise
        // hold every VM of the last ten minutes). The cursor is deleted
        // from the store by the next flush.
        if self.cursors.values().any(|t| t.departed) {
            let dirty: std::collections::HashSet<Inc> = self
                .rows
                .iter()
                .filter(|(_, e)| e.version > e.flushed)
                .map(|(&(pid, t, _), _)| (pid, t))
                .collect();
            self.forget_cursors(|inc, t| t.departed && !dirty.contains(inc));
        }
        self.evict_clean();
    }

    /// Drops the cursors `gone` picks; the next flush deletes them from
    /// the store.
    fn forget_cursors(&mut self, gone: impl Fn(&Inc, &Tracked) -> bool) {
        let forgotten = &mut self.forgotten;
        self.cursors.retain(|inc, t| {
            if gone(inc, t) {
                forgotten.push(t.ids.incarnation.clone());
                false
            } else {
                true
            }
        });
    }

    /// The batch behind `marks` was not written: its counter usage goes
    /// with the next one (its rows stay dirty by themselves).
    pub fn flush_failed(&mut self, marks: BatchMarks) {
        self.totals.failed(marks.totals);
    }

    /// A VM or owner appeared whose earlier counter total is not read yet:
    /// flushing now lets its series appear.
    pub fn totals_unread(&self) -> bool {
        self.totals.unread()
    }

    /// The committed counter totals, when they changed since last asked.
    pub fn counters(&mut self) -> Option<std::sync::Arc<CounterTotals>> {
        self.totals.view()
    }

    pub fn boot_id(&self) -> &str {
        &self.cfg.boot_id
    }

    /// Row length, seconds.
    pub fn resolution_s(&self) -> i64 {
        self.cfg.interval_ms / 1000
    }

    /// Rows not yet written.
    pub fn pending(&self) -> usize {
        self.rows.values().filter(|e| e.version > e.flushed).count()
    }

    /// Incarnations followed.
    pub fn incarnations(&self) -> usize {
        self.cursors.len()
    }

    /// Rows dropped unwritten because memory was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counter totals held in memory (VMs and owners; tests).
    pub fn totals_len(&self) -> usize {
        self.totals.len()
    }

    /// Every row in memory, as the store would get it (tests).
    pub fn rows(&self) -> impl Iterator<Item = (LedgerKey, LedgerUsage)> + '_ {
        self.rows.iter().map(|(k, e)| (e.key(k.2), e.usage()))
    }
}

/// Spread the deltas between `prev` and `now` over the intervals they
/// span (see the module's rules).
#[allow(clippy::too_many_arguments)]
fn account(
    cfg: &AccountConfig,
    rows: &mut BTreeMap<(u32, i64, i64), Entry>,
    version: &mut u64,
    totals: &mut Totals,
    inc: Inc,
    (ids, names): (&Arc<Ids>, &Arc<Names>),
    prev: &Cursor,
    now: &Obs,
    vm: &VmStats,
    owners: &Owners<'_>,
) {
    let (t0, t1) = (prev.at_ms, now.at_ms);
    let span = t1 - t0;
    if span <= 0 {
        return;
    }
    let cpu = counter_delta_f64(prev.cpu_seconds, now.cpu_seconds);
    let guest = match (prev.guest_seconds, now.guest_seconds) {
        (Some(a), Some(b)) => Some(counter_delta_f64(a, b)),
        _ => None,
    };
    let (rx, tx) = net_delta(&prev.net, &vm.network);
    let observed = span <= cfg.gap_after_ms;
    let running = prev.running;
    let vcpus = f64::from(prev.vcpus.unwrap_or(0));
    let mem = prev.memory_bytes.unwrap_or(0) as f64;
    let rss = prev.rss_bytes as f64;
    let owner = vm.owner.as_ref();
    let len = cfg.interval_ms.max(1);
    let mut start = t0.div_euclid(len) * len;
    let (mut cpu_left, mut guest_left, mut rx_left, mut tx_left) = (cpu, guest, rx, tx);
    while start < t1 {
        let end = start + len;
        let piece = t1.min(end) - t0.max(start);
        let last = end >= t1;
        let share = |total: f64, left: f64| {
            if last {
                left
            } else {
                total * piece as f64 / span as f64
            }
        };
        let share_u = |total: u64, left: u64| {
            if last {
                left
            } else {
                let v = u128::from(total) * piece as u128 / span as u128;
                u64::try_from(v).unwrap_or(left).min(left)
            }
        };
        let c = share(cpu, cpu_left).max(0.0);
        cpu_left -= c;
        let g = match (guest, guest_left) {
            (Some(total), Some(left)) => {
                let g = share(total, left).max(0.0);
                guest_left = Some(left - g);
                Some(g)
            }
            _ => None,
        };
        let r = share_u(rx, rx_left);
        rx_left -= r;
        let t = share_u(tx, tx_left);
        tx_left -= t;
        let secs = piece as f64 / 1000.0;
        *version += 1;
        let v = *version;
        let e = rows.entry((inc.0, inc.1, start)).or_insert_with(|| Entry {
            ids: Arc::clone(ids),
            names: Arc::clone(names),
            resolution_s: len / 1000,
            amounts: Amounts::default(),
            version: v,
            flushed: 0,
        });
        e.version = v;
        // The latest observation's name and owners (`names` was refreshed
        // from `vm`).
        if !Arc::ptr_eq(&e.names, names) {
            e.names = Arc::clone(names);
        }
        let u = &mut e.amounts;
        u.cpu_seconds += c;
        if let Some(g) = g {
            u.guest_seconds = Some(u.guest_seconds.unwrap_or(0.0) + g);
        }
        u.net_rx_bytes = u.net_rx_bytes.saturating_add(r);
        u.net_tx_bytes = u.net_tx_bytes.saturating_add(t);
        if observed {
            u.observed_seconds += secs;
            if running {
                u.vcpu_allocated_seconds += vcpus * secs;
                u.memory_allocated_byte_seconds += mem * secs;
                u.rss_byte_seconds += rss * secs;
            }
        } else {
            u.gap_seconds += secs;
        }
        start = end;
    }
    // The same usage, whole, on the counters of this VM and its owners.
    let (alloc_vcpu, alloc_mem) = if observed && running {
        let secs = span as f64 / 1000.0;
        (vcpus * secs, mem * secs)
    } else {
        (0.0, 0.0)
    };
    totals.add(
        vm.claimed_id(),
        owner.and_then(|o| owners.users.key(o)),
        owner.and_then(|o| owners.projects.key(o)),
        &Quantities {
            cpu_seconds: cpu,
            vcpu_allocated_seconds: alloc_vcpu,
            memory_allocated_byte_seconds: alloc_mem,
            net_rx_bytes: rx,
            net_tx_bytes: tx,
        },
    );
}

/// A cursor for a VM seen for the first time (counters filled in by
/// [`update_cursor`]).
fn new_cursor(vm: &VmStats) -> Cursor {
    Cursor {
        at_ms: 0,
        cpu_seconds: 0.0,
        guest_seconds: None,
        net: Vec::new(),
        vcpus: vm.allocated_vcpus,
        memory_bytes: vm.allocated_memory_bytes,
        rss_bytes: vm.memory_rss_bytes,
        running: vm.state == VmState::Running,
    }
}

/// The cursor now holds this observation; interface names are copied only
/// when they changed.
fn update_cursor(c: &mut Cursor, now: &Obs, vm: &VmStats) {
    c.at_ms = now.at_ms;
    c.cpu_seconds = now.cpu_seconds;
    c.guest_seconds = now.guest_seconds;
    c.vcpus = vm.allocated_vcpus;
    c.memory_bytes = vm.allocated_memory_bytes;
    c.rss_bytes = vm.memory_rss_bytes;
    c.running = vm.state == VmState::Running;
    let same = c.net.len() == vm.network.len()
        && c.net
            .iter()
            .zip(&vm.network)
            .all(|(a, b)| a.interface == b.interface);
    if same {
        for (a, b) in c.net.iter_mut().zip(&vm.network) {
            a.rx_bytes = b.rx_bytes;
            a.tx_bytes = b.tx_bytes;
        }
    } else {
        c.net = vm
            .network
            .iter()
            .map(|n| NetCounter {
                interface: n.interface.clone(),
                rx_bytes: n.rx_bytes,
                tx_bytes: n.tx_bytes,
            })
            .collect();
    }
}

/// A counter's increase; a decrease is a reset (counted from 0).
fn counter_delta_f64(prev: f64, now: f64) -> f64 {
    if !now.is_finite() || now < 0.0 {
        return 0.0;
    }
    if now >= prev { now - prev } else { now }
}

fn counter_delta(prev: u64, now: u64) -> u64 {
    if now >= prev { now - prev } else { now }
}

/// Bytes received and sent between two observations, per interface: an
/// interface seen before counts its increase (a decrease is a reset), a
/// new one counts from 0, one that vanished adds nothing.
fn net_delta(prev: &[NetCounter], now: &[NetStats]) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for (i, n) in now.iter().enumerate() {
        // Usually the same order as last time: look there first.
        let before = match prev.get(i) {
            Some(p) if p.interface == n.interface => Some(p),
            _ => prev.iter().find(|p| p.interface == n.interface),
        };
        let (r, t) = match before {
            Some(p) => (
                counter_delta(p.rx_bytes, n.rx_bytes),
                counter_delta(p.tx_bytes, n.tx_bytes),
            ),
            None => (n.rx_bytes, n.tx_bytes),
        };
        rx = rx.saturating_add(r);
        tx = tx.saturating_add(t);
    }
    (rx, tx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use std::time::Duration;

    use super::*;
    use crate::model::{NetStats, Owner, Source};

    const T0: u64 = 1_800_000_000; // a multiple of 60

    fn cfg() -> AccountConfig {
        AccountConfig {
            interval_ms: 60_000,
            gap_after_ms: 30_000,
            forget_after_ms: 600_000,
            max_rows: 100_000,
            boot_id: "boot-a".into(),
            boot_time: 1_000_000_000.0,
            max_owners: 1000,
        }
    }

    #[derive(Clone)]
    struct V {
        pid: u32,
        start: f64,
        cpu: f64,
        guest: Option<f64>,
        net: Vec<(&'static str, u64, u64)>,
        state: VmState,
        owner: Option<(&'static str, &'static str)>,
        ok: bool,
    }

    fn v(pid: u32, cpu: f64) -> V {
        V {
            pid,
            start: (T0 - 3600) as f64,
            cpu,
            guest: Some(cpu / 2.0),
            net: vec![("tap0", 0, 0)],
            state: VmState::Running,
            owner: Some(("alice", "proj-1")),
            ok: true,
        }
    }

    fn vm(x: &V) -> VmStats {
        let mut s = VmStats::unmeasured(x.pid, Source::Process);
        s.id = "vm-1".into();
        s.name = "web-1".into();
        s.start_time_seconds = x.start;
        s.state = x.state;
        s.cpu.user = x.cpu * 0.75;
        s.cpu.system = x.cpu * 0.25;
        s.cpu.guest = x.guest;
        s.allocated_vcpus = Some(2);
        s.allocated_memory_bytes = Some(1 << 30);
        s.memory_rss_bytes = 1 << 29;
        s.network = x
            .net
            .iter()
            .map(|(n, rx, tx)| NetStats {
                interface: (*n).into(),
                rx_bytes: *rx,
                tx_bytes: *tx,
                ..NetStats::default()
            })
            .collect();
        s.owner = x.owner.map(|(u, p)| {
            std::sync::Arc::new(Owner {
                user_name: Some(u.into()),
                project_id: Some(p.into()),
                ..Owner::default()
            })
        });
        s.collect_success = x.ok;
        s
    }

    fn snap(seq: u64, at_ms: u64, vms: &[V]) -> Snapshot {
        let mut s = Snapshot::empty(Duration::from_secs(5));
        s.seq = seq;
        s.collected_at = UNIX_EPOCH + Duration::from_millis(T0 * 1000 + at_ms);
        s.host.hostname = Some("hv1".into());
        s.vms = vms.iter().map(vm).collect();
        s
    }

    fn at(sec: i64) -> i64 {
        (T0 as i64 + sec) * 1000
    }

    /// (interval start relative to T0 in s, usage), sorted.
    fn rows(a: &Accountant) -> Vec<(i64, LedgerUsage)> {
        a.rows()
            .map(|(k, u)| (k.interval_start_ms / 1000 - T0 as i64, u))
            .collect()
    }

    fn total(a: &Accountant, f: impl Fn(&LedgerUsage) -> f64) -> f64 {
        a.rows().map(|(_, u)| f(&u)).sum()
    }

    #[test]
    fn a_delta_across_a_boundary_is_split_by_time() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 50_000, &[v(10, 100.0)]));
        assert_eq!(a.rows().count(), 0, "the first sight is a baseline");
        let mut later = v(10, 120.0);
        later.net = vec![("tap0", 2000, 1000)];
        a.observe(&snap(2, 60_000 + 10_000, &[later]));
        let r = rows(&a);
        assert_eq!(r.len(), 2);
        let (s0, u0) = &r[0];
        let (s1, u1) = &r[1];
        assert_eq!((*s0, *s1), (0, 60));
        assert!((u0.cpu_seconds - 10.0).abs() < 1e-9 && (u1.cpu_seconds - 10.0).abs() < 1e-9);
        assert_eq!(u0.guest_seconds, Some(5.0));
        assert_eq!(u0.net_rx_bytes + u1.net_rx_bytes, 2000);
        assert_eq!((u0.net_rx_bytes, u0.net_tx_bytes), (1000, 500));
        assert_eq!((u0.observed_seconds, u1.observed_seconds), (10.0, 10.0));
        assert_eq!(u0.gap_seconds, 0.0);
        assert_eq!(u0.vcpu_allocated_seconds, 20.0);
        assert_eq!(
            u0.memory_allocated_byte_seconds,
            10.0 * f64::from(1u32 << 30)
        );
        assert_eq!(u0.rss_byte_seconds, 10.0 * f64::from(1u32 << 29));
        assert_eq!(u0.vm_name, "web-1");
        assert_eq!(u0.user_key.as_deref(), Some("alice"));
        assert_eq!(u0.project_key.as_deref(), Some("proj-1"));
    }

    /// At 10 000 VMs the ledger holds 10 000 to 20 000 rows: a row is its
    /// numbers and two shared pointers, not the store's eight strings.
    #[test]
    fn rows_share_their_incarnations_strings() {
        assert!(
            std::mem::size_of::<Entry>() <= 128,
            "{}",
            std::mem::size_of::<Entry>()
        );
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 50_000, &[v(10, 100.0)]));
        a.observe(&snap(2, 70_000, &[v(10, 110.0)]));
        a.observe(&snap(3, 130_000, &[v(10, 120.0)]));
        let t = a.cursors.values().next().unwrap();
        assert_eq!(a.rows.len(), 3);
        assert!(
            a.rows
                .values()
                .all(|e| Arc::ptr_eq(&e.ids, &t.ids) && Arc::ptr_eq(&e.names, &t.names))
        );
        // A new name: a new shared record, for the rows it adds to.
        let mut renamed = snap(4, 140_000, &[v(10, 121.0)]);
        renamed.vms[0].name = "web-2".into();
        a.observe(&renamed);
        let names: Vec<String> = rows(&a).into_iter().map(|(_, u)| u.vm_name).collect();
        assert_eq!(names, ["web-1", "web-1", "web-2"]);
    }

    #[test]
    fn many_ticks_sum_exactly_to_the_counter_delta_and_the_time() {
        let mut a = Accountant::new(cfg());
        let mut cpu = 7.0;
        let mut rx = 0u64;
        a.observe(&snap(1, 3_000, &[v(10, cpu)]));
        for i in 1..=100u64 {
            cpu += 0.37 * (i % 7) as f64;
            rx += 12_345 * (i % 5);
            let mut x = v(10, cpu);
            x.net = vec![("tap0", rx, 0)];
            a.observe(&snap(i + 1, 3_000 + i * 4_900, &[x]));
        }
        assert!((total(&a, |u| u.cpu_seconds) - (cpu - 7.0)).abs() < 1e-9);
        assert_eq!(a.rows().map(|(_, u)| u.net_rx_bytes).sum::<u64>(), rx);
        assert!((total(&a, |u| u.observed_seconds) - 490.0).abs() < 1e-9);
        assert!(
            a.rows()
                .all(|(_, u)| u.cpu_seconds >= 0.0 && u.gap_seconds == 0.0)
        );
        // Rows are whole minutes except the first and last.
        let r = rows(&a);
        assert_eq!(r.first().unwrap().0, 0);
        assert!(
            r.iter()
                .skip(1)
                .rev()
                .skip(1)
                .all(|(_, u)| (u.observed_seconds - 60.0).abs() < 1e-9)
        );
    }

    #[test]
    fn a_restarted_vm_and_a_reused_pid_are_new_incarnations_from_zero() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 0, &[v(10, 500.0)]));
        a.observe(&snap(2, 5_000, &[v(10, 501.0)]));
        // The VM restarts: same PID (reused), a later start, counters from 0.
        let mut again = v(10, 0.5);
        again.start = (T0 + 7) as f64;
        a.observe(&snap(3, 10_000, &[again]));
        let mut on = v(10, 2.5);
        on.start = (T0 + 7) as f64;
        a.observe(&snap(4, 15_000, &[on]));
        let mut per_inc: BTreeMap<String, f64> = BTreeMap::new();
        for (k, u) in a.rows() {
            *per_inc.entry(k.incarnation.clone()).or_default() += u.cpu_seconds;
        }
        assert_eq!(per_inc.len(), 2, "{per_inc:?}");
        let vals: Vec<f64> = per_inc.values().copied().collect();
        // Old: 1 s; new: counted from its start (0 -> 2.5), never 2.5 - 501.
        assert!(vals.iter().any(|v| (v - 1.0).abs() < 1e-9), "{vals:?}");
        assert!(vals.iter().any(|v| (v - 2.5).abs() < 1e-9), "{vals:?}");
        assert!(a.rows().all(|(_, u)| u.cpu_seconds >= 0.0));
        let new_inc = incarnation(
            "boot-a",
            1_000_000_000.0,
            &vm(&{
                let mut x = v(10, 0.0);
                x.start = (T0 + 7) as f64;
                x
            }),
        );
        // From its start at T0+7 to the first sight at T0+10: observed.
        let first: f64 = a
            .rows()
            .filter(|(k, _)| k.incarnation == new_inc)
            .map(|(_, u)| u.observed_seconds)
            .sum();
        assert!((first - 8.0).abs() < 1e-9, "{first}");
    }

    #[test]
    fn a_vm_running_before_the_ledger_looked_starts_at_its_first_sight() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 0, &[v(10, 1e6)]));
        a.observe(&snap(2, 5_000, &[v(10, 1e6 + 1.0)]));
        assert!((total(&a, |u| u.cpu_seconds) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_counter_that_goes_back_is_a_reset_and_a_vanished_tap_counts_nothing() {
        let mut a = Accountant::new(cfg());
        let with = |net: Vec<(&'static str, u64, u64)>| {
            let mut x = v(10, 1.0);
            x.net = net;
            x
        };
        a.observe(&snap(
            1,
            0,
            &[with(vec![("tap0", 1000, 100), ("tap1", 5000, 500)])],
        ));
        // tap1 disappears: the sum drops by 5000, which is not a negative.
        a.observe(&snap(2, 5_000, &[with(vec![("tap0", 1500, 150)])]));
        // tap0 recreated (counter back to 40): counted from 0; tap2 new: from 0.
        a.observe(&snap(
            3,
            10_000,
            &[with(vec![("tap0", 40, 4), ("tap2", 7, 1)])],
        ));
        let rx: u64 = a.rows().map(|(_, u)| u.net_rx_bytes).sum();
        let tx: u64 = a.rows().map(|(_, u)| u.net_tx_bytes).sum();
        assert_eq!(rx, 500 + 40 + 7);
        assert_eq!(tx, 50 + 4 + 1);
        // A CPU counter going back (never seen in practice) is a reset too.
        a.observe(&snap(
            4,
            15_000,
            &[with(vec![("tap0", 40, 4), ("tap2", 7, 1)])],
        ));
        let mut lower = v(10, 0.25);
        lower.net = vec![("tap0", 40, 4), ("tap2", 7, 1)];
        a.observe(&snap(5, 20_000, &[lower]));
        assert!((total(&a, |u| u.cpu_seconds) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn a_long_step_is_gap_time_with_its_usage_spread_and_no_allocation() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 30_000, &[v(10, 0.0)]));
        // Agent away (or VM unreadable) for 3.5 minutes: 240 s of CPU.
        a.observe(&snap(2, 240_000, &[v(10, 240.0)]));
        let r = rows(&a);
        assert_eq!(
            r.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [0, 60, 120, 180]
        );
        assert!(
            r.iter()
                .all(|(_, u)| u.observed_seconds == 0.0 && u.vcpu_allocated_seconds == 0.0)
        );
        assert_eq!(r[0].1.gap_seconds, 30.0);
        assert_eq!(r[1].1.gap_seconds, 60.0);
        assert_eq!(r[3].1.gap_seconds, 60.0);
        assert!((r[1].1.cpu_seconds - 240.0 * 60.0 / 210.0).abs() < 1e-9);
        assert!((total(&a, |u| u.cpu_seconds) - 240.0).abs() < 1e-9);
        // An unreadable tick is skipped, not counted as zero.
        let mut bad = v(10, 999.0);
        bad.ok = false;
        a.observe(&snap(3, 245_000, &[bad]));
        a.observe(&snap(4, 250_000, &[v(10, 241.0)]));
        assert!((total(&a, |u| u.cpu_seconds) - 241.0).abs() < 1e-9);
        assert!((total(&a, |u| u.observed_seconds) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn allocation_counts_only_while_running() {
        let mut a = Accountant::new(cfg());
        let mut p = v(10, 1.0);
        p.state = VmState::Paused;
        a.observe(&snap(1, 0, &[p]));
        let mut p = v(10, 1.0);
        p.state = VmState::Paused;
        a.observe(&snap(2, 5_000, &[p]));
        a.observe(&snap(3, 10_000, &[v(10, 1.0)]));
        a.observe(&snap(4, 15_000, &[v(10, 1.0)]));
        assert_eq!(total(&a, |u| u.vcpu_allocated_seconds), 2.0 * 5.0);
        assert_eq!(total(&a, |u| u.observed_seconds), 15.0);
    }

    #[test]
    fn an_owner_change_mid_run_is_billed_to_each_owner_in_turn() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 0, &[v(10, 0.0)]));
        a.observe(&snap(2, 60_000, &[v(10, 60.0)]));
        let mut moved = v(10, 120.0);
        moved.owner = Some(("bob", "proj-2"));
        a.observe(&snap(3, 120_000, &[moved]));
        let r = rows(&a);
        assert_eq!(r[0].1.user_key.as_deref(), Some("alice"));
        assert_eq!(r[1].1.user_key.as_deref(), Some("bob"));
        assert_eq!(r[1].1.project_label.as_deref(), Some("proj-2"));
    }

    #[test]
    fn after_a_crash_the_cursor_continues_and_the_open_row_is_added_to() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 0, &[v(10, 0.0)]));
        a.observe(&snap(2, 20_000, &[v(10, 20.0)]));
        let (batch, marks) = a.batch();
        a.flushed(marks, Some(&[]));
        // Not flushed: lost with the crash (observed time only).
        a.observe(&snap(3, 30_000, &[v(10, 30.0)]));
        // The next run loads what was flushed.
        let open_rows = batch
            .rows
            .iter()
            .filter(|(k, _)| {
                batch.cursors.iter().any(|c| {
                    c.incarnation == k.incarnation && k.interval_start_ms + 60_000 > c.at_ms
                })
            })
            .cloned()
            .collect();
        let mut b = Accountant::new(cfg());
        b.restore(
            LedgerRestore {
                cursors: batch.cursors.clone(),
                rows: open_rows,
                horizon_ms: batch.horizon.map(|(_, h)| h),
                totals: Vec::new(),
            },
            at(100),
        );
        // A VM started while the agent was away counts from its start.
        let mut newer = v(11, 3.0);
        newer.start = (T0 + 50) as f64;
        b.observe(&snap(1, 100_000, &[v(10, 100.0), newer]));
        let n: f64 = b
            .rows()
            .filter(|(k, _)| k.incarnation.contains(":11:"))
            .map(|(_, u)| u.cpu_seconds)
            .sum();
        assert!((n - 3.0).abs() < 1e-9, "{n}");
        let r: Vec<(i64, LedgerUsage)> = b
            .rows()
            .filter(|(k, _)| k.incarnation.contains(":10:"))
            .map(|(k, u)| (k.interval_start_ms / 1000 - T0 as i64, u.clone()))
            .collect();
        assert_eq!(r.len(), 2);
        // Every CPU second since the start is there, none twice.
        assert!((r[0].1.cpu_seconds + r[1].1.cpu_seconds - 100.0).abs() < 1e-9);
        assert!((r[0].1.observed_seconds - 20.0).abs() < 1e-9);
        assert!((r[0].1.gap_seconds - 40.0).abs() < 1e-9);
        assert!((r[1].1.gap_seconds - 40.0).abs() < 1e-9);
    }

    #[test]
    fn a_flush_marks_rows_clean_until_they_change_and_forgets_old_rows() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 0, &[v(10, 0.0)]));
        a.observe(&snap(2, 5_000, &[v(10, 1.0)]));
        let (b1, m1) = a.batch();
        assert_eq!((b1.rows.len(), b1.cursors.len()), (1, 1));
        // A snapshot arrives while the flush is in flight: the row changes.
        a.observe(&snap(3, 10_000, &[v(10, 2.0)]));
        a.flushed(m1, Some(&[]));
        assert_eq!(a.pending(), 1, "changed after the batch was taken");
        let (b2, m2) = a.batch();
        assert!(
            (b2.rows[0].1.cpu_seconds - 2.0).abs() < 1e-9,
            "running total"
        );
        a.flushed(m2, Some(&[]));
        assert_eq!(a.pending(), 0);
        // Past its interval and written: dropped from memory.
        a.observe(&snap(4, 65_000, &[v(10, 3.0)]));
        let (_, m3) = a.batch();
        a.flushed(m3, Some(&[]));
        assert!(rows(&a).iter().all(|(s, _)| *s == 60));
        // A VM gone for longer than forget_after is forgotten (cursor deleted).
        a.observe(&snap(5, 700_000, &[]));
        assert_eq!(a.incarnations(), 0);
        assert_eq!(a.batch().0.forget.len(), 1);
    }

    #[test]
    fn a_departed_incarnation_is_let_go_once_its_rows_are_written() {
        let mut a = Accountant::new(cfg());
        a.observe(&snap(1, 0, &[v(10, 0.0)]));
        a.observe(&snap(2, 5_000, &[v(10, 1.0)]));
        let (_, m) = a.batch();
        a.flushed(m, Some(&[]));
        assert_eq!(a.incarnations(), 1);
        // The collection found the process gone.
        let mut gone = snap(3, 10_000, &[]);
        gone.departed = vec![(10, ticks(cfg().boot_time, &vm(&v(10, 0.0))) as u64)];
        a.observe(&gone);
        assert_eq!(a.incarnations(), 1, "kept until the flush");
        let (b, m) = a.batch();
        assert!(b.forget.is_empty());
        a.flushed(m, Some(&[]));
        assert_eq!(
            a.incarnations(),
            0,
            "let go without waiting for forget_after"
        );
        assert_eq!(a.rows().count(), 0);
        // The next flush deletes its cursor from the store.
        assert_eq!(a.batch().0.forget.len(), 1);
        // Another PID's departure changes nothing.
        let mut b = Accountant::new(cfg());
        b.observe(&snap(1, 0, &[v(10, 0.0)]));
        let mut other = snap(2, 5_000, &[v(10, 1.0)]);
        other.departed = vec![(11, 0)];
        b.observe(&other);
        let (_, m) = b.batch();
        b.flushed(m, Some(&[]));
        assert_eq!(b.incarnations(), 1);
    }

    #[test]
    fn memory_is_bounded_and_drops_are_counted() {
        let mut c = cfg();
        c.max_rows = 3;
        let mut a = Accountant::new(c);
        a.observe(&snap(1, 0, &[v(10, 0.0)]));
        for i in 1..=10u64 {
            a.observe(&snap(i + 1, i * 60_000, &[v(10, i as f64)]));
        }
        assert_eq!(a.rows().count(), 3);
        assert_eq!(a.dropped(), 7);
        // The newest are kept.
        assert_eq!(rows(&a).first().unwrap().0, 420);
    }

    // Counter totals (ledger/totals.rs), against a real SQLite state
    // database: what a flush commits is what the next run continues from.

    use crate::model::counters::CounterTotals;
    use crate::store::LedgerStore;
    use crate::store::sqlite::SqliteStore;

    /// A snapshot of VMs with ids `vm-<pid>` and the collector's per-owner
    /// fold at `max_owners`.
    fn owned(seq: u64, at_ms: u64, vms: &[V], max_owners: usize) -> Snapshot {
        let mut s = snap(seq, at_ms, vms);
        for x in &mut s.vms {
            x.id = format!("vm-{}", x.pid);
        }
        s.vms.sort_by(|a, b| a.id.cmp(&b.id));
        s.with_usage(max_owners)
    }

    fn owner(x: &mut V, user: &'static str, project: &'static str) {
        x.owner = Some((user, project));
    }

    /// One flush as the ledger thread does it: write, read the totals back.
    fn flush(a: &mut Accountant, db: &mut SqliteStore) {
        let (batch, marks) = a.batch();
        db.flush_ledger(&batch).unwrap();
        let read = db.ledger_totals(marks.totals_keys()).unwrap();
        a.flushed(marks, Some(&read));
    }

    fn shown(a: &mut Accountant) -> std::sync::Arc<CounterTotals> {
        a.counters().expect("the totals changed")
    }

    fn owner_cpu(c: &CounterTotals, kind: OwnerKind, label: &str) -> Option<f64> {
        let k = c.kind(kind);
        if label == crate::model::usage::OTHER {
            return k.other.map(|q| q.cpu_seconds);
        }
        k.owners
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, q)| q.cpu_seconds)
    }

    fn db() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn counters_sum_per_owner_and_vm_and_show_only_what_a_flush_committed() {
        let (_dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        let mut b = v(20, 0.0);
        owner(&mut b, "bob", "proj-2");
        a.observe(&owned(1, 0, &[v(10, 0.0), b], 1000));
        let mut b = v(20, 4.0);
        owner(&mut b, "bob", "proj-2");
        b.net = vec![("tap0", 700, 70)];
        a.observe(&owned(2, 5_000, &[v(10, 10.0), b], 1000));
        // Nothing committed yet: nothing to show.
        assert!(
            a.counters()
                .is_none_or(|c| c.users.owners.is_empty() && c.vms.is_empty())
        );
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(10.0));
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(4.0));
        assert_eq!(owner_cpu(&c, OwnerKind::Project, "proj-2"), Some(4.0));
        assert_eq!(c.users.other, None, "nobody is folded");
        let vm20 = c.vm("vm-20").unwrap();
        assert_eq!((vm20.net_rx_bytes, vm20.net_tx_bytes), (700, 70));
        // 2 vCPUs and 1 GiB over 5 observed seconds.
        assert_eq!(vm20.vcpu_allocated_seconds, 10.0);
        assert_eq!(
            vm20.memory_allocated_byte_seconds,
            5.0 * f64::from(1u32 << 30)
        );
        // Usage since the flush is not shown until the next one commits it.
        let mut b = v(20, 6.0);
        owner(&mut b, "bob", "proj-2");
        a.observe(&owned(3, 10_000, &[v(10, 15.0), b], 1000));
        assert!(a.counters().is_none(), "nothing new committed");
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(15.0));
        assert_eq!(c.vm("vm-10").unwrap().cpu_seconds, 15.0);
        // The table holds the same as the rows, per owner.
        let rows_bob: f64 = a
            .rows()
            .filter(|(_, u)| u.user_key.as_deref() == Some("bob"))
            .map(|(_, u)| u.cpu_seconds)
            .sum();
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(rows_bob));
        // Known totals are not read back: added in memory as in SQLite,
        // to the same value, bit for bit.
        let mut stored =
            |kind, key: &str| store.ledger_totals(&[(kind, key.to_owned())]).unwrap()[0].q;
        assert_eq!(
            Some(stored(crate::store::TotalsKind::User, "alice")),
            c.users
                .owners
                .iter()
                .find(|(l, _)| l == "alice")
                .map(|(_, q)| *q)
        );
        assert_eq!(
            Some(&stored(crate::store::TotalsKind::Vm, "vm-20")),
            c.vm("vm-20")
        );
    }

    #[test]
    fn an_owner_change_moves_later_usage_to_the_new_owner_and_the_old_one_stays() {
        let (_dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        a.observe(&owned(1, 0, &[v(10, 0.0)], 1000));
        a.observe(&owned(2, 5_000, &[v(10, 5.0)], 1000));
        let mut moved = v(10, 8.0);
        owner(&mut moved, "bob", "proj-1");
        a.observe(&owned(3, 10_000, &[moved], 1000));
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        // The delta up to the observation that saw the new owner is the
        // new owner's, as in the rows.
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(5.0));
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(3.0));
        assert_eq!(owner_cpu(&c, OwnerKind::Project, "proj-1"), Some(8.0));
        // alice has no VM left: her series stays, unchanged.
        let mut moved = v(10, 20.0);
        owner(&mut moved, "bob", "proj-1");
        a.observe(&owned(4, 15_000, &[moved], 1000));
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(5.0));
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(15.0));
    }

    #[test]
    fn owners_past_max_owners_count_in_other_and_no_usage_is_counted_twice() {
        let (_dir, mut store) = db();
        let mut c1 = cfg();
        c1.max_owners = 1;
        let mut a = Accountant::new(c1);
        let vms = |cpu: f64, seq: u64, at: u64| {
            let mut b = v(20, cpu * 2.0);
            owner(&mut b, "bob", "proj-1");
            let mut c = v(30, cpu * 3.0);
            owner(&mut c, "carol", "proj-1");
            owned(seq, at, &[v(10, cpu), b, c], 1)
        };
        // Same RSS for all: the fold keeps the first key (alice).
        a.observe(&vms(0.0, 1, 0));
        a.observe(&vms(1.0, 2, 5_000));
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        assert_eq!(c.users.owners.len(), 1);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(1.0));
        assert_eq!(owner_cpu(&c, OwnerKind::User, "__other__"), Some(5.0));
        // alice's VM goes: bob now has the gauge series, so the counter
        // series moves to him; alice's series goes, her total stays in the
        // table, and carol stays in __other__.
        let mut b = v(20, 4.0);
        owner(&mut b, "bob", "proj-1");
        let mut cc = v(30, 6.0);
        owner(&mut cc, "carol", "proj-1");
        a.observe(&owned(3, 10_000, &[b.clone(), cc.clone()], 1));
        b.cpu = 10.0;
        cc.cpu = 9.0;
        a.observe(&owned(4, 15_000, &[b, cc], 1));
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        assert_eq!(
            c.users
                .owners
                .iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>(),
            ["bob"]
        );
        // bob's usage since he got the series (2 -> 10).
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(8.0));
        // bob's before it (2) and all of carol's (9).
        assert_eq!(owner_cpu(&c, OwnerKind::User, "__other__"), Some(11.0));
        // Every CPU second of the host is in exactly one user series.
        let host_cpu = 1.0 + 10.0 + 9.0;
        let listed: f64 = c
            .users
            .owners
            .iter()
            .map(|(_, q)| q.cpu_seconds)
            .sum::<f64>()
            + c.users.other.unwrap().cpu_seconds
            + 1.0; // alice's, no longer listed, in the table
        assert!((listed - host_cpu).abs() < 1e-9, "{listed}");
        assert_eq!(
            store
                .ledger_totals(&[(crate::store::TotalsKind::User, "alice".into())])
                .unwrap()[0]
                .q
                .cpu_seconds,
            1.0
        );
    }

    #[test]
    fn totals_continue_after_a_reload_from_what_was_committed() {
        let (dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        let mut gone = v(20, 0.0);
        owner(&mut gone, "bob", "proj-2");
        a.observe(&owned(1, 0, &[v(10, 0.0), gone], 1000));
        let mut gone = v(20, 2.0);
        owner(&mut gone, "bob", "proj-2");
        a.observe(&owned(2, 5_000, &[v(10, 5.0), gone], 1000));
        // bob's VM exits; its last usage is flushed with the rest.
        a.observe(&owned(3, 10_000, &[v(10, 10.0)], 1000));
        flush(&mut a, &mut store);
        assert_eq!(
            owner_cpu(&shown(&mut a), OwnerKind::User, "alice"),
            Some(10.0)
        );
        // Not flushed: lost with a crash, but derived again from the cursor.
        a.observe(&owned(4, 15_000, &[v(10, 15.0)], 1000));
        drop(a);
        drop(store);

        let mut store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let restore = store.load_ledger("boot-a", 60).unwrap();
        let mut b = Accountant::new(cfg());
        b.restore(restore, at(20));
        // Restored owners show at once, bob (no VM left) included.
        let c = shown(&mut b);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(10.0));
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(2.0));
        assert!(c.vm("vm-10").is_none(), "VMs are read when they appear");
        b.observe(&owned(5, 20_000, &[v(10, 20.0)], 1000));
        assert!(b.totals_unread());
        flush(&mut b, &mut store);
        assert!(!b.totals_unread());
        let c = shown(&mut b);
        // Every CPU second of the VM's counter, once.
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(20.0));
        assert_eq!(c.vm("vm-10").unwrap().cpu_seconds, 20.0);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "bob"), Some(2.0));
    }

    #[test]
    fn a_failed_flush_shows_nothing_new_and_sends_its_usage_again() {
        let (_dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        a.observe(&owned(1, 0, &[v(10, 0.0)], 1000));
        a.observe(&owned(2, 5_000, &[v(10, 3.0)], 1000));
        let (_lost, marks) = a.batch();
        a.flush_failed(marks);
        assert!(
            a.counters()
                .is_none_or(|c| c.users.owners.is_empty() && c.vms.is_empty())
        );
        a.observe(&owned(3, 10_000, &[v(10, 4.0)], 1000));
        flush(&mut a, &mut store);
        assert_eq!(
            owner_cpu(&shown(&mut a), OwnerKind::User, "alice"),
            Some(4.0)
        );
    }

    #[test]
    fn a_flush_whose_totals_do_not_read_back_is_not_sent_again() {
        let (_dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        a.observe(&owned(1, 0, &[v(10, 0.0)], 1000));
        a.observe(&owned(2, 5_000, &[v(10, 3.0)], 1000));
        let (batch, marks) = a.batch();
        store.flush_ledger(&batch).unwrap();
        // Written, but the read-back failed.
        a.flushed(marks, None);
        let c = shown(&mut a);
        assert!(c.vm("vm-10").is_none() && c.users.owners.is_empty());
        assert!(a.totals_unread(), "read again at once");
        a.observe(&owned(3, 10_000, &[v(10, 4.0)], 1000));
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        assert_eq!(owner_cpu(&c, OwnerKind::User, "alice"), Some(4.0));
        assert_eq!(c.vm("vm-10").unwrap().cpu_seconds, 4.0);
    }

    #[test]
    fn a_vm_that_comes_back_resumes_its_total_and_a_gone_one_leaves_memory() {
        let (_dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        a.observe(&owned(1, 0, &[v(10, 0.0), v(20, 0.0)], 1000));
        a.observe(&owned(2, 5_000, &[v(10, 2.0), v(20, 1.0)], 1000));
        flush(&mut a, &mut store);
        // vm-10 stops; once its last usage is written it leaves memory.
        a.observe(&owned(3, 10_000, &[v(20, 2.0)], 1000));
        flush(&mut a, &mut store);
        assert!(shown(&mut a).vm("vm-10").is_none(), "{:?}", a.totals_len());
        assert_eq!(a.totals_len(), 3, "vm-20, alice and proj-1");
        // It starts again (a new process): its total goes on from 2 s.
        let mut again = v(11, 0.0);
        again.start = (T0 + 12) as f64;
        let mut s = owned(4, 15_000, &[again, v(20, 3.0)], 1000);
        s.vms[0].id = "vm-10".into();
        a.observe(&s);
        assert!(a.totals_unread());
        flush(&mut a, &mut store);
        let c = shown(&mut a);
        // 0.0 at its start: nothing yet, but the earlier total is back.
        assert_eq!(c.vm("vm-10").unwrap().cpu_seconds, 2.0);
        let mut later = v(11, 1.5);
        later.start = (T0 + 12) as f64;
        let mut s = owned(5, 20_000, &[later, v(20, 4.0)], 1000);
        s.vms[0].id = "vm-10".into();
        a.observe(&s);
        flush(&mut a, &mut store);
        assert_eq!(shown(&mut a).vm("vm-10").unwrap().cpu_seconds, 3.5);
    }

    /// `qemu -daemonize`: the first process waits while the VM's process
    /// it forked comes up, both with the VM's UUID. A tick in that window
    /// gives the newer one `<id>-pid<N>` for series' sake; the ledger must
    /// still bill it (all its life, not just that tick) to the VM's id.
    /// It billed it to `vm-1-pid20` for good: fixed at first sight.
    #[test]
    fn a_process_seen_beside_another_claiming_its_id_is_billed_to_the_id() {
        let (_dir, mut store) = db();
        let mut a = Accountant::new(cfg());
        let tick = |seq, at_ms, vms: &[V]| {
            let mut s = snap(seq, at_ms, vms);
            crate::pipeline::dedup::dedupe_ids(&mut s.vms);
            s.with_usage(1000)
        };
        let mut parent = v(10, 0.0);
        parent.start = (T0 + 1) as f64;
        a.observe(&tick(1, 0, &[]));
        let daemon = |cpu| V {
            start: (T0 + 2) as f64,
            ..v(20, cpu)
        };
        let both = tick(2, 3_000, &[parent.clone(), daemon(0.5)]);
        assert_eq!(both.vms[1].id, "vm-1-pid20", "the series stay apart");
        a.observe(&both);
        a.observe(&tick(3, 5_000, &[daemon(2.0)]));
        a.observe(&tick(4, 10_000, &[daemon(6.0)]));
        flush(&mut a, &mut store);
        let daemon_rows: Vec<(String, f64)> = a
            .rows()
            .filter(|(k, _)| k.incarnation.contains(":20:"))
            .map(|(k, u)| (k.vm_id, u.cpu_seconds))
            .collect();
        assert!(!daemon_rows.is_empty());
        assert!(
            daemon_rows.iter().all(|(id, _)| id == "vm-1"),
            "{daemon_rows:?}"
        );
        let billed: f64 = daemon_rows.iter().map(|r| r.1).sum();
        assert!((billed - 6.0).abs() < 1e-9, "from its start: {billed}");
        assert!(a.cursors.values().all(|t| t.ids.vm_id == "vm-1"));
        // The per-VM counter is the VM's, with no `-pid20` series.
        let c = shown(&mut a);
        assert_eq!(c.vm("vm-1").unwrap().cpu_seconds, 6.0);
        assert!(c.vm("vm-1-pid20").is_none());
    }
}
