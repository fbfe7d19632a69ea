//! The ledger's counter totals: per owner (user, project), per owner kind
//! for the owners without a series of their own (`__other__`), and per VM
//! id, everything the ledger accounted on this host, ever. Pure: no IO, no
//! clock.
//!
//! Reads: the usage deltas the accountant adds to its rows (`account.rs`),
//! by the owner and VM of that moment, and each snapshot's owners (who has
//! a gauge series of its own) and VMs. Emits: [`TotalsDelta`]s for the
//! flush (added to `ledger_totals` in the transaction that moves the
//! cursors) and, after each flush, the committed [`CounterTotals`] the
//! exposition shows. Fails: never.
//!
//! Rules (docs/ledger.md, "Counters on /metrics"):
//! - **Only committed totals are shown.** A flush adds the usage since the
//!   last one in the same transaction as the cursors; once it answers,
//!   a total known before becomes known + what was sent (the addition
//!   SQLite did), one not known yet (a VM just seen) is read back right
//!   after the commit; the series show those. After a crash the agent
//!   continues from the cursors of that transaction, so it continues from
//!   exactly the totals shown: a series never goes down. (Showing unflushed
//!   usage too would be fresher, but usage between the last flush and a
//!   crash is not always derived again: a VM that exited meanwhile, a TAP
//!   recreated, allocation over what becomes gap time. A counter that goes
//!   down reads as a reset to Prometheus, which then counts the whole total
//!   again.)
//! - **Each piece of usage lands in exactly one series.** An owner's usage
//!   goes to its own series while it holds one, else to the kind's
//!   overflow; so every series only grows and the sum over a kind's
//!   series is all the usage of VMs with an owner of that kind.
//! - **Owner series are bounded.** At most `max_owners` owners of a kind
//!   hold a series. Every owner with a gauge series of its own this tick
//!   (the snapshot's fold, `model/usage.rs`) holds one, so the counters
//!   and the gauges name the same owners; when all are taken, the holder
//!   least recently seen with a VM among those without a gauge series
//!   gives its up (its series disappears; its total stays in the table
//!   and resumes if it gets a series again). A slot is only given up when
//!   another owner needs it: an owner with no VM left keeps its series
//!   while there is room, across agent restarts too (the most recently
//!   active are restored). With more owners than `max_owners` on the
//!   host, the set follows the gauges' fold, which ranks by RSS so that
//!   it rarely changes; an owner moving across the edge only moves where
//!   its next usage goes, no series goes down.
//! - **VMs**: one total per VM id across its incarnations; in memory while
//!   the VM is in the snapshot or has usage not yet written. Its earlier
//!   total is read back by the first flush after it appears (which happens
//!   at once, not a flush interval later); until then it has no series.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::Snapshot;
use crate::model::counters::{CounterTotals, KindCounters, Quantities};
use crate::model::identity::OwnerKind;
use crate::model::usage::series_label;
use crate::store::{LedgerTotal, TotalsDelta, TotalsKind};

/// One counter total in memory.
#[derive(Debug, Clone, Default)]
struct Counter {
    /// The committed total (`None`: not read from the table yet).
    committed: Option<Quantities>,
    /// Usage added since the last batch was taken.
    pending: Quantities,
    /// Usage of the batch in flight.
    sent: Option<Quantities>,
    /// Asked for in a batch (its committed total is on its way).
    asked: bool,
    /// The owner's label or the VM's name, for the table.
    label: Option<String>,
    /// When it last had a VM in a snapshot (owners), ms; for eviction.
    last_ms: i64,
    /// Owners: holds a series. VMs: the snapshot `seq` it was last in.
    held: bool,
    seen_seq: u64,
}

impl Counter {
    fn idle(&self) -> bool {
        self.pending.is_zero() && self.sent.is_none()
    }
}

/// One owner kind's counters.
#[derive(Debug, Default)]
struct KindTotals {
    owners: HashMap<String, Counter, Keyed>,
    /// Owners holding a series.
    held: usize,
    other: Counter,
}

/// What a batch carried, to settle when its answer comes.
#[derive(Debug, Default)]
pub struct TotalsMarks {
    /// Every key whose usage is in flight.
    sent: Vec<(TotalsKind, String)>,
    /// The keys whose committed totals are not known: read back after the
    /// write. The others are known: committed + what was sent, the same
    /// addition SQLite does, so they need no read.
    read: Vec<(TotalsKind, String)>,
}

impl TotalsMarks {
    /// The keys whose committed totals the flush must read back.
    pub fn keys(&self) -> &[(TotalsKind, String)] {
        &self.read
    }
}

/// VM ids and owner keys, looked up twice per VM per snapshot: foldhash
/// (its quality variant, seeded per process: the keys come from command
/// lines and owner sources) rather than SipHash.
type Keyed = foldhash::quality::RandomState;

/// The counter totals between flushes.
#[derive(Debug)]
pub struct Totals {
    max_owners: usize,
    users: KindTotals,
    projects: KindTotals,
    vms: HashMap<String, Counter, Keyed>,
    /// The snapshot being accounted.
    seq: u64,
    at_ms: i64,
    /// Something shown changed since the last [`Totals::view`].
    changed: bool,
}

/// The totals kinds of an owner kind: (own series, overflow).
fn kinds(kind: OwnerKind) -> (TotalsKind, TotalsKind) {
    match kind {
        OwnerKind::User => (TotalsKind::User, TotalsKind::UserOverflow),
        OwnerKind::Project => (TotalsKind::Project, TotalsKind::ProjectOverflow),
    }
}

impl Totals {
    /// `max_owners`: `[owners] max_owners` (0 counts as 1, as for the gauges).
    pub fn new(max_owners: usize) -> Self {
        Totals {
            max_owners: max_owners.max(1),
            users: KindTotals::default(),
            projects: KindTotals::default(),
            vms: HashMap::default(),
            seq: 0,
            at_ms: 0,
            changed: false,
        }
    }

    fn kind_mut(&mut self, kind: OwnerKind) -> &mut KindTotals {
        match kind {
            OwnerKind::User => &mut self.users,
            OwnerKind::Project => &mut self.projects,
        }
    }

    /// Take over the totals the state database holds at start: the
    /// overflows (none there: zero) and the most recently active owners,
    /// as many as may hold a series (`totals` comes most recent first).
    pub fn restore(&mut self, totals: &[LedgerTotal]) {
        for kind in OwnerKind::ALL {
            let max = self.max_owners;
            let (own, over) = kinds(kind);
            let k = self.kind_mut(kind);
            k.other.committed = Some(
                totals
                    .iter()
                    .find(|t| t.kind == over)
                    .map_or_else(Quantities::default, |t| t.q),
            );
            for t in totals.iter().filter(|t| t.kind == own) {
                if k.held >= max {
                    break;
                }
                if k.owners.contains_key(&t.key) {
                    continue;
                }
                k.owners.insert(
                    t.key.clone(),
                    Counter {
                        committed: Some(t.q),
                        last_ms: t.last_ms,
                        held: true,
                        ..Counter::default()
                    },
                );
                k.held += 1;
            }
        }
        self.changed = true;
    }

    /// Start accounting `snap`: its VMs are present, its owners with a
    /// gauge series of their own hold a counter series.
    pub fn begin(&mut self, snap: &Snapshot, at_ms: i64) {
        self.seq = snap.seq;
        self.at_ms = at_ms;
        for vm in &snap.vms {
            // The id the ledger's rows are under (see `claimed_id`).
            let id = vm.claimed_id();
            match self.vms.get_mut(id) {
                Some(c) => {
                    c.seen_seq = snap.seq;
                    if c.label.as_deref() != Some(vm.name.as_str()) {
                        c.label = Some(vm.name.clone());
                    }
                }
                None => {
                    self.vms.insert(
                        id.to_owned(),
                        Counter {
                            label: Some(vm.name.clone()),
                            seen_seq: snap.seq,
                            ..Counter::default()
                        },
                    );
                }
            }
        }
        for kind in OwnerKind::ALL {
            let max = self.max_owners;
            let usage = snap.usage.kind(kind);
            let k = self.kind_mut(kind);
            let mut changed = false;
            // Who is seen, and who must hold a series this tick.
            for o in &usage.owners {
                if let Some(c) = k.owners.get_mut(o.key.as_str()) {
                    c.seen_seq = snap.seq;
                    c.last_ms = at_ms;
                    if c.label != o.name {
                        c.label.clone_from(&o.name);
                    }
                }
            }
            for o in usage.owners.iter().filter(|o| !o.folded) {
                // Looked up before inserting: no key copied per tick.
                let c = match k.owners.get_mut(o.key.as_str()) {
                    Some(c) if c.held => continue,
                    Some(c) => c,
                    None => k.owners.entry(o.key.clone()).or_insert_with(|| Counter {
                        label: o.name.clone(),
                        last_ms: at_ms,
                        seen_seq: snap.seq,
                        ..Counter::default()
                    }),
                };
                c.held = true;
                k.held += 1;
                changed = true;
                if k.held > max {
                    evict(k, &usage.owners, snap.seq);
                }
            }
            self.changed |= changed;
        }
    }

    /// Usage of VM `vm_id` owned by (`user`, `project`) keys, to count.
    pub fn add(&mut self, vm_id: &str, user: Option<&str>, project: Option<&str>, q: &Quantities) {
        if let Some(c) = self.vms.get_mut(vm_id) {
            c.pending.add(q);
        }
        for (kind, owner) in [(OwnerKind::User, user), (OwnerKind::Project, project)] {
            let Some(key) = owner else {
                continue;
            };
            let k = self.kind_mut(kind);
            match k.owners.get_mut(key) {
                Some(c) if c.held => c.pending.add(q),
                _ => k.other.pending.add(q),
            }
        }
    }

    /// The next flush's usage; moves it in flight. `marks` lists the keys
    /// whose committed totals the flush reads back.
    pub fn batch(&mut self, out: &mut Vec<TotalsDelta>) -> TotalsMarks {
        let mut marks = TotalsMarks::default();
        let at_ms = self.at_ms;
        let mut take = |kind: TotalsKind, key: &str, c: &mut Counter| {
            if c.sent.is_some() {
                return;
            }
            let unread = c.committed.is_none() && !c.asked;
            if c.pending.is_zero() && !unread {
                return;
            }
            if !c.pending.is_zero() {
                out.push(TotalsDelta {
                    kind,
                    key: key.to_owned(),
                    label: c.label.clone(),
                    add: c.pending,
                    at_ms,
                });
            }
            c.sent = Some(std::mem::take(&mut c.pending));
            c.asked = true;
            marks.sent.push((kind, key.to_owned()));
            if c.committed.is_none() {
                marks.read.push((kind, key.to_owned()));
            }
        };
        for kind in OwnerKind::ALL {
            let (own, over) = kinds(kind);
            let k = match kind {
                OwnerKind::User => &mut self.users,
                OwnerKind::Project => &mut self.projects,
            };
            for (key, c) in &mut k.owners {
                take(own, key, c);
            }
            take(over, "", &mut k.other);
        }
        for (key, c) in &mut self.vms {
            take(TotalsKind::Vm, key, c);
        }
        marks
    }

    /// A VM or owner whose earlier total is not read yet and not asked for:
    /// a flush now would let its series appear.
    pub fn unread(&self) -> bool {
        let unread = |c: &Counter| c.committed.is_none() && !c.asked && c.sent.is_none();
        self.vms.values().any(unread)
            || self
                .users
                .owners
                .values()
                .chain(self.projects.owners.values())
                .any(|c| c.held && unread(c))
    }

    /// The batch behind `marks` is written; `read` holds the committed
    /// totals of the keys it read back (a key absent from the table:
    /// zero), or `None` when reading them back failed: the usage is in the
    /// table (it must not be sent again), those totals are not known, so
    /// their series leave `/metrics` until the next flush reads them.
    pub fn flushed(&mut self, marks: TotalsMarks, read: Option<&[LedgerTotal]>) {
        for (kind, key) in &marks.sent {
            if let Some(c) = self.counter_mut(*kind, key)
                && let Some(sent) = c.sent.take()
                && let Some(q) = &mut c.committed
            {
                q.add(&sent);
            }
        }
        let by_key: HashMap<(TotalsKind, &str), &Quantities> = read
            .unwrap_or_default()
            .iter()
            .map(|t| ((t.kind, t.key.as_str()), &t.q))
            .collect();
        for (kind, key) in &marks.read {
            let q = by_key
                .get(&(*kind, key.as_str()))
                .map_or_else(Quantities::default, |q| **q);
            if let Some(c) = self.counter_mut(*kind, key) {
                c.committed = read.is_some().then_some(q);
                c.asked = read.is_some();
            }
        }
        // Forget what is neither shown nor waiting to be written.
        let seq = self.seq;
        self.vms.retain(|_, c| c.seen_seq == seq || !c.idle());
        for k in [&mut self.users, &mut self.projects] {
            k.owners.retain(|_, c| c.held || !c.idle());
        }
        self.changed = true;
    }

    /// The batch behind `marks` failed: its usage goes with the next one.
    pub fn failed(&mut self, marks: TotalsMarks) {
        for (kind, key) in &marks.sent {
            if let Some(c) = self.counter_mut(*kind, key)
                && let Some(s) = c.sent.take()
            {
                c.pending.add(&s);
                c.asked = false;
            }
        }
    }

    fn counter_mut(&mut self, kind: TotalsKind, key: &str) -> Option<&mut Counter> {
        match kind {
            TotalsKind::User => self.users.owners.get_mut(key),
            TotalsKind::Project => self.projects.owners.get_mut(key),
            TotalsKind::UserOverflow => Some(&mut self.users.other),
            TotalsKind::ProjectOverflow => Some(&mut self.projects.other),
            TotalsKind::Vm => self.vms.get_mut(key),
        }
    }

    /// The committed totals to show, when they changed since last asked.
    pub fn view(&mut self) -> Option<Arc<CounterTotals>> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let kind = |k: &KindTotals| {
            let mut owners: Vec<(String, Quantities)> = k
                .owners
                .iter()
                .filter(|(_, c)| c.held)
                .filter_map(|(key, c)| c.committed.map(|q| (series_label(key), q)))
                .collect();
            owners.sort_by(|a, b| a.0.cmp(&b.0));
            KindCounters {
                owners,
                other: k.other.committed.filter(|q| !q.is_zero()),
            }
        };
        let mut vms: Vec<(String, Quantities)> = self
            .vms
            .iter()
            .filter_map(|(id, c)| c.committed.map(|q| (id.clone(), q)))
            .collect();
        vms.sort_by(|a, b| a.0.cmp(&b.0));
        Some(Arc::new(CounterTotals {
            users: kind(&self.users),
            projects: kind(&self.projects),
            vms,
        }))
    }

    /// Counter totals held in memory (VMs and owners).
    pub fn len(&self) -> usize {
        self.vms.len() + self.users.owners.len() + self.projects.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One holder too many: the one least recently seen with a VM among those
/// without a gauge series of their own this tick gives its series up.
fn evict(k: &mut KindTotals, owners: &[crate::model::usage::OwnerTotals], seq: u64) {
    let unfolded = |key: &str| {
        owners
            .binary_search_by(|o| o.key.as_str().cmp(key))
            .ok()
            .and_then(|i| owners.get(i))
            .is_some_and(|o| !o.folded)
    };
    let victim = k
        .owners
        .iter()
        .filter(|(key, c)| c.held && !(c.seen_seq == seq && unfolded(key)))
        .min_by(|(ka, a), (kb, b)| a.last_ms.cmp(&b.last_ms).then_with(|| ka.cmp(kb)))
        .map(|(key, _)| key.clone());
    if let Some(key) = victim
        && let Some(c) = k.owners.get_mut(&key)
    {
        c.held = false;
        k.held -= 1;
        if c.idle() {
            k.owners.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;

    fn total(kind: TotalsKind, key: &str, cpu: f64, last_ms: i64) -> LedgerTotal {
        LedgerTotal {
            kind,
            key: key.into(),
            q: Quantities {
                cpu_seconds: cpu,
                ..Quantities::default()
            },
            last_ms,
        }
    }

    #[test]
    fn a_restore_keeps_the_most_recent_owners_up_to_max_owners_and_the_overflow() {
        let mut t = Totals::new(2);
        // As the store returns them: most recently active first.
        t.restore(&[
            total(TotalsKind::UserOverflow, "", 9.0, 5),
            total(TotalsKind::User, "carol", 3.0, 30),
            total(TotalsKind::User, "__other__", 2.0, 20),
            total(TotalsKind::User, "alice", 1.0, 10),
            total(TotalsKind::Project, "p", 4.0, 10),
        ]);
        let v = t.view().unwrap();
        assert_eq!(
            v.users.owners,
            [
                (
                    "___other__".to_owned(),
                    Quantities {
                        cpu_seconds: 2.0,
                        ..Quantities::default()
                    }
                ),
                (
                    "carol".to_owned(),
                    Quantities {
                        cpu_seconds: 3.0,
                        ..Quantities::default()
                    }
                ),
            ]
        );
        assert_eq!(v.users.other.unwrap().cpu_seconds, 9.0);
        // No overflow row: zero, not shown.
        assert_eq!(v.projects.other, None);
        assert_eq!(v.projects.owners.len(), 1);
        assert_eq!(t.len(), 3, "alice is not kept in memory");
        assert!(t.view().is_none(), "nothing changed since");
    }
}
