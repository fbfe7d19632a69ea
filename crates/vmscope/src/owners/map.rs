//! A fetched source's rows: VM key -> owner, looked up by a VM's facts.
//!
//! Reads: rows a source built ([`OwnerMap::insert`]). Emits: the row for a
//! VM ([`OwnerMap::lookup`]). Pure, never fails; a later row for the same
//! key replaces the earlier one.

use std::collections::HashMap;

use super::VmFacts;
use crate::model::Owner;

/// Which VM a row is for, as the platform names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VmKey {
    /// The VM's UUID or the platform's VM id (compared case-insensitively:
    /// platforms write UUIDs in either case).
    Id(String),
    /// The VM's name (libvirt domain name, QEMU `-name`).
    Name(String),
    /// The hypervisor process.
    Pid(u32),
}

/// One fetched source's rows, and what it knows about the platform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnerMap {
    by_id: HashMap<String, Owner>,
    by_name: HashMap<String, Owner>,
    by_pid: HashMap<u32, Owner>,
    /// The platform's inventory as this source sees it (SQL: users, Redis:
    /// sessions); empty for sources that know only rows.
    pub inventory: Inventory,
    /// Malformed rows the source skipped in the fetch that built this map
    /// (no VM key or two, a value of the wrong type, no owner field).
    pub skipped: usize,
}

/// What a fetched source knows about the platform beyond VM rows, counted
/// in the background when it fetches (never on the scrape path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Platform users by active state, as the platform names the states
    /// (bounded by the source: at most a few dozen states).
    pub users_by_state: Vec<(String, u64)>,
    /// Live sessions in the platform's session store.
    pub sessions: Option<u64>,
    /// Users by time since they last started a VM.
    pub last_vm_start: Option<DaysHistogram>,
}

/// Users by days since their last VM start: the buckets
/// [`DaysHistogram::BOUNDS_DAYS`] and +Inf, cumulative like Prometheus's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaysHistogram {
    /// Users at or below each bound; the last is +Inf (= all users).
    pub cumulative: [u64; 8],
    /// Sum of every user's age, in seconds.
    pub sum_seconds: f64,
}

impl DaysHistogram {
    /// The bucket bounds the owners issue asks for, in days.
    pub const BOUNDS_DAYS: [u64; 7] = [1, 3, 7, 14, 30, 90, 365];

    /// Counts one user whose last VM start is `age` ago (a start in the
    /// future, from a skewed clock, counts as 0).
    pub fn observe(&mut self, age: std::time::Duration) {
        let secs = age.as_secs_f64();
        self.sum_seconds += secs;
        for (i, bound) in Self::BOUNDS_DAYS.iter().enumerate() {
            if secs <= (*bound * 86_400) as f64 {
                self.cumulative[i] += 1;
            }
        }
        self.cumulative[7] += 1;
    }

    pub fn count(&self) -> u64 {
        self.cumulative[7]
    }
}

impl OwnerMap {
    pub fn insert(&mut self, key: VmKey, row: Owner) {
        match key {
            VmKey::Id(id) => {
                self.by_id.insert(id.to_ascii_lowercase(), row);
            }
            VmKey::Name(name) => {
                self.by_name.insert(name, row);
            }
            VmKey::Pid(pid) => {
                self.by_pid.insert(pid, row);
            }
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.by_id.len() + self.by_name.len() + self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row for `vm`: by UUID, then by id, then by name, then by PID
    /// (the most specific key first: names and PIDs are reused).
    pub fn lookup(&self, vm: &VmFacts<'_>) -> Option<&Owner> {
        let by_id = |id: &str| {
            self.by_id.get(id).or_else(|| {
                id.bytes()
                    .any(|b| b.is_ascii_uppercase())
                    .then(|| self.by_id.get(&id.to_ascii_lowercase()))
                    .flatten()
            })
        };
        vm.uuid
            .and_then(by_id)
            .or_else(|| by_id(vm.id))
            .or_else(|| self.by_name.get(vm.name))
            .or_else(|| self.by_pid.get(&vm.pid))
    }
}

impl FromIterator<(VmKey, Owner)> for OwnerMap {
    fn from_iter<T: IntoIterator<Item = (VmKey, Owner)>>(iter: T) -> Self {
        let mut m = OwnerMap::default();
        for (k, row) in iter {
            m.insert(k, row);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> Owner {
        Owner {
            user_id: Some(id.to_owned()),
            ..Owner::default()
        }
    }

    fn vm<'a>(id: &'a str, uuid: Option<&'a str>, name: &'a str, pid: u32) -> VmFacts<'a> {
        VmFacts {
            id,
            uuid,
            name,
            pid,
            process: None,
            libvirt: None,
        }
    }

    #[test]
    fn days_histogram_is_cumulative() {
        let mut h = DaysHistogram::default();
        let day = std::time::Duration::from_secs(86_400);
        h.observe(day / 2);
        h.observe(day * 3);
        h.observe(day * 400);
        assert_eq!(h.cumulative, [1, 2, 2, 2, 2, 2, 2, 3]);
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds - 86_400.0 * 403.5).abs() < 1e-6);
    }

    #[test]
    fn lookup_prefers_uuid_then_id_then_name_then_pid() {
        let m: OwnerMap = [
            (VmKey::Id("AAAA-1".into()), user("by-uuid")),
            (VmKey::Id("fc-web".into()), user("by-id")),
            (VmKey::Name("web".into()), user("by-name")),
            (VmKey::Pid(42), user("by-pid")),
        ]
        .into_iter()
        .collect();
        assert_eq!(m.len(), 4);
        let who = |v: VmFacts<'_>| m.lookup(&v).and_then(|o| o.user_id.clone());
        assert_eq!(
            who(vm("aaaa-1", Some("aaaa-1"), "web", 42)).as_deref(),
            Some("by-uuid")
        );
        // Ids compare case-insensitively.
        assert_eq!(who(vm("FC-Web", None, "web", 42)).as_deref(), Some("by-id"));
        assert_eq!(who(vm("x", None, "web", 42)).as_deref(), Some("by-name"));
        assert_eq!(who(vm("x", None, "db", 42)).as_deref(), Some("by-pid"));
        assert_eq!(who(vm("x", None, "db", 7)), None);
    }
}
