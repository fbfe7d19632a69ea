//! The usage ledger's counter totals as the exposition reads them: per
//! owner (user, project), the owners' overflow and per VM id, everything
//! the ledger has accounted on this host, ever (docs/ledger.md, "Counters
//! on /metrics").
//!
//! Reads: nothing; the ledger thread builds a [`CounterTotals`] after each
//! flush and publishes it in a [`CounterSlot`]; the collector puts the
//! newest one in each [`Snapshot`](super::Snapshot) (one `Arc` clone per
//! tick), so the counters are encoded with the snapshot's families, once
//! per snapshot, and a gone VM's series leaves with the VM.
//! Emits: immutable values. Fails: never (a poisoned slot still reads).
//!
//! The values are the *committed* totals (what the last successful flush
//! wrote, in the transaction that also moved the cursors): after a crash
//! the agent continues from exactly those, so a series never goes down.

use std::sync::{Arc, Mutex};

use super::identity::OwnerKind;

/// The cumulative quantities of one counter total (the `ledger_rows`
/// columns of the same names, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantities {
    pub cpu_seconds: f64,
    pub vcpu_allocated_seconds: f64,
    pub memory_allocated_byte_seconds: f64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl Quantities {
    pub fn add(&mut self, o: &Quantities) {
        self.cpu_seconds += o.cpu_seconds;
        self.vcpu_allocated_seconds += o.vcpu_allocated_seconds;
        self.memory_allocated_byte_seconds += o.memory_allocated_byte_seconds;
        self.net_rx_bytes = self.net_rx_bytes.saturating_add(o.net_rx_bytes);
        self.net_tx_bytes = self.net_tx_bytes.saturating_add(o.net_tx_bytes);
    }

    pub fn is_zero(&self) -> bool {
        *self == Quantities::default()
    }
}

/// One owner kind's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindCounters {
    /// (owner label value per `usage::series_label`, totals), sorted by
    /// label; at most `[owners] max_owners`.
    pub owners: Vec<(String, Quantities)>,
    /// The usage of owners that had no series of their own when it was
    /// accounted (`__other__`); `None` until there was any.
    pub other: Option<Quantities>,
}

/// The counters one exposition shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterTotals {
    pub users: KindCounters,
    pub projects: KindCounters,
    /// (VM id, totals over its incarnations), sorted by id: the VMs the
    /// ledger follows; the exposition shows those in its snapshot.
    pub vms: Vec<(String, Quantities)>,
}

impl CounterTotals {
    pub fn kind(&self, kind: OwnerKind) -> &KindCounters {
        match kind {
            OwnerKind::User => &self.users,
            OwnerKind::Project => &self.projects,
        }
    }

    /// The totals of VM `id`, if the ledger has read them.
    pub fn vm(&self, id: &str) -> Option<&Quantities> {
        self.vms
            .binary_search_by(|(k, _)| k.as_str().cmp(id))
            .ok()
            .and_then(|i| self.vms.get(i))
            .map(|(_, q)| q)
    }
}

/// Where the ledger thread publishes its newest [`CounterTotals`] and the
/// collector picks them up. Cheap to clone; a read is one lock and one
/// `Arc` clone.
#[derive(Debug, Clone, Default)]
pub struct CounterSlot(Arc<Mutex<Option<Arc<CounterTotals>>>>);

impl CounterSlot {
    pub fn get(&self) -> Option<Arc<CounterTotals>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, totals: Arc<CounterTotals>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(totals);
    }
}
