//! A fetched source's rows: VM key -> owner, looked up by a VM's facts.
//!
//! Reads: rows a source built ([`OwnerMap::insert`]). Emits: the row for a
//! VM ([`OwnerMap::lookup`]) and a version of the whole map
//! ([`OwnerMap::version`]: equal maps, equal versions), so that the runner
//! tells an unchanged refresh from a changed one without comparing rows.
//! Pure, never fails; a later row for the same key replaces the earlier one.
//!
//! Design (issue 17: a 100 000-row mapping cost ~80 MiB): a platform has
//! many VMs but far fewer owners, so each distinct owner row is stored once
//! (`owners`) and a VM key points at it by a `u32` index.
//! UUID ids, the common key, are kept as 16 bytes rather than a 36-byte
//! string; other ids and names as `Box<str>` (no spare capacity). A lookup
//! allocates nothing, except for a non-UUID id with uppercase letters.
//! [`OwnerMap::compact`] drops the build-time index and spare capacity
//! before the map is published. Limitation: owners that differ in one field
//! (the same user in two projects) are two rows; their strings are not
//! shared.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

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
#[derive(Debug, Clone, Default)]
pub struct OwnerMap {
    /// Ids in the canonical UUID form (8-4-4-4-12 hex digits, any case).
    by_uuid: HashMap<[u8; 16], u32>,
    /// Other ids, lowercased.
    by_id: HashMap<Box<str>, u32>,
    by_name: HashMap<Box<str>, u32>,
    by_pid: HashMap<u32, u32>,
    /// The distinct owner rows the keys point at.
    owners: Vec<Owner>,
    /// While building: an owner row's hash -> its index in `owners` (the
    /// first row with that hash; a collision only costs a duplicate row).
    /// Emptied by [`OwnerMap::compact`].
    dedup: HashMap<u64, u32>,
    /// Sum over the current rows of hash(key, owner): independent of the
    /// insertion order, kept up to date when a row is replaced.
    digest: u64,
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
        let row_hash = hash_owner(&row);
        let Some(idx) = self.owner_index(row, row_hash) else {
            // More than u32::MAX distinct owners: cannot be indexed.
            self.skipped += 1;
            return;
        };
        let key_hash = hash_key(&key);
        let replaced = match key {
            VmKey::Id(id) => match parse_uuid(&id) {
                Some(uuid) => self.by_uuid.insert(uuid, idx),
                None => self
                    .by_id
                    .insert(id.to_ascii_lowercase().into_boxed_str(), idx),
            },
            VmKey::Name(name) => self.by_name.insert(name.into_boxed_str(), idx),
            VmKey::Pid(pid) => self.by_pid.insert(pid, idx),
        };
        if let Some(old) = replaced.and_then(|i| self.owners.get(i as usize)) {
            self.digest = self.digest.wrapping_sub(mix(key_hash, hash_owner(old)));
        }
        self.digest = self.digest.wrapping_add(mix(key_hash, row_hash));
    }

    /// The index of `row` in `owners`, adding it if it is new.
    fn owner_index(&mut self, row: Owner, row_hash: u64) -> Option<u32> {
        if let Some(&i) = self.dedup.get(&row_hash)
            && self.owners.get(i as usize) == Some(&row)
        {
            return Some(i);
        }
        let i = u32::try_from(self.owners.len()).ok()?;
        self.owners.push(row);
        self.dedup.entry(row_hash).or_insert(i);
        Some(i)
    }

    /// Drops the build-time index and spare capacity: called once the map
    /// is complete, before it is published (rows inserted later are no
    /// longer shared with equal earlier ones, but stay correct).
    pub fn compact(&mut self) {
        self.dedup = HashMap::new();
        self.by_uuid.shrink_to_fit();
        self.by_id.shrink_to_fit();
        self.by_name.shrink_to_fit();
        self.by_pid.shrink_to_fit();
        self.owners.shrink_to_fit();
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.by_uuid.len() + self.by_id.len() + self.by_name.len() + self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct owner rows the keys point at (at most [`OwnerMap::len`]).
    pub fn distinct_owners(&self) -> usize {
        self.owners.len()
    }

    /// A hash of everything readers see: the rows (whatever order they
    /// were inserted in), the inventory and the skipped count. Equal maps
    /// have equal versions; a different one means a change (up to a 64-bit
    /// hash collision). O(inventory), not O(rows).
    pub fn version(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (self.digest, self.len(), self.skipped).hash(&mut h);
        let inv = &self.inventory;
        inv.users_by_state.hash(&mut h);
        inv.sessions.hash(&mut h);
        if let Some(d) = &inv.last_vm_start {
            (d.cumulative, d.sum_seconds.to_bits()).hash(&mut h);
        }
        h.finish()
    }

    /// The row for `vm`: by UUID, then by id, then by name, then by PID
    /// (the most specific key first: names and PIDs are reused).
    pub fn lookup(&self, vm: &VmFacts<'_>) -> Option<&Owner> {
        let idx = vm
            .uuid
            .and_then(|u| self.id_index(u))
            .or_else(|| self.id_index(vm.id))
            .or_else(|| self.by_name.get(vm.name).copied())
            .or_else(|| self.by_pid.get(&vm.pid).copied())?;
        self.owners.get(idx as usize)
    }

    fn id_index(&self, id: &str) -> Option<u32> {
        if let Some(uuid) = parse_uuid(id) {
            return self.by_uuid.get(&uuid).copied();
        }
        if id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_id.get(id.to_ascii_lowercase().as_str()).copied()
        } else {
            self.by_id.get(id).copied()
        }
    }
}

/// The 16 bytes of a UUID written as 8-4-4-4-12 hex digits (either case);
/// `None` for anything else, which stays a string key. Only this one form,
/// so that an id matches exactly the ids it matched as a string.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hi = hex(b[i])?;
        let lo = hex(b[i + 1])?;
        out[n] = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    Some(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A key's hash as [`OwnerMap::lookup`] compares it (ids lowercased).
fn hash_key(key: &VmKey) -> u64 {
    let mut h = DefaultHasher::new();
    match key {
        VmKey::Id(id) => {
            0u8.hash(&mut h);
            for b in id.bytes() {
                b.to_ascii_lowercase().hash(&mut h);
            }
        }
        VmKey::Name(n) => (1u8, n).hash(&mut h),
        VmKey::Pid(p) => (2u8, p).hash(&mut h),
    }
    h.finish()
}

fn hash_owner(o: &Owner) -> u64 {
    let mut h = DefaultHasher::new();
    (&o.user_id, &o.user_name, &o.project_id, &o.project_name).hash(&mut h);
    h.finish()
}

/// One row's share of the digest.
fn mix(key: u64, owner: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (key, owner).hash(&mut h);
    h.finish()
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

    fn owner(user: &str, project: &str) -> Owner {
        Owner {
            user_id: Some(user.to_owned()),
            project_id: Some(project.to_owned()),
            ..Owner::default()
        }
    }

    #[test]
    fn the_version_is_the_content_whatever_the_order() {
        let rows = [
            (
                VmKey::Id("6f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6f".into()),
                owner("u1", "p1"),
            ),
            (VmKey::Name("web".into()), owner("u2", "p1")),
            (VmKey::Pid(42), owner("u1", "p1")),
        ];
        let a: OwnerMap = rows.clone().into_iter().collect();
        let b: OwnerMap = rows.clone().into_iter().rev().collect();
        assert_eq!(a.version(), b.version());
        // The same UUID in upper case is the same key.
        let mut upper = rows.clone();
        upper[0].0 = VmKey::Id("6F1C2A9E-0B7D-4C55-9A0E-1D2B3C4D5E6F".into());
        assert_eq!(
            upper.into_iter().collect::<OwnerMap>().version(),
            a.version()
        );
        // One field of one row changed: another version.
        let mut changed = rows.clone();
        changed[1].1 = owner("u3", "p1");
        assert_ne!(
            changed.into_iter().collect::<OwnerMap>().version(),
            a.version()
        );
        // A row moved to another key: another version.
        let mut moved = rows.clone();
        moved[1].0 = VmKey::Name("db".into());
        assert_ne!(
            moved.into_iter().collect::<OwnerMap>().version(),
            a.version()
        );
        // A replaced row counts as the one that replaced it.
        let mut replaced = rows.to_vec();
        replaced.insert(1, (VmKey::Name("web".into()), owner("old", "p9")));
        let replaced: OwnerMap = replaced.into_iter().collect();
        assert_eq!(replaced.len(), 3);
        assert_eq!(replaced.version(), a.version());
        // The inventory and the skipped count are part of it.
        let mut inv = a.clone();
        inv.inventory.sessions = Some(3);
        assert_ne!(inv.version(), a.version());
        let mut skipped = a.clone();
        skipped.skipped = 1;
        assert_ne!(skipped.version(), a.version());
    }

    #[test]
    fn equal_owner_rows_are_stored_once() {
        let mut m: OwnerMap = (0..1000u32)
            .map(|i| {
                let user = format!("u{}", i % 10);
                (VmKey::Pid(i), owner(&user, "p1"))
            })
            .collect();
        m.compact();
        assert_eq!((m.len(), m.distinct_owners()), (1000, 10));
        let o = m.lookup(&vm("x", None, "n", 37)).unwrap();
        assert_eq!(o.user_id.as_deref(), Some("u7"));
        // Rows added after compact stay correct.
        m.insert(VmKey::Pid(5000), owner("u7", "p1"));
        assert_eq!(
            m.lookup(&vm("x", None, "n", 5000))
                .unwrap()
                .user_id
                .as_deref(),
            Some("u7")
        );
    }

    #[test]
    fn only_the_canonical_uuid_form_is_a_uuid() {
        assert_eq!(
            parse_uuid("6f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6f").map(|u| u[0]),
            Some(0x6f)
        );
        for not in [
            "6f1c2a9e0b7d4c559a0e1d2b3c4d5e6f",
            "6f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6g",
            "6f1c2a9e-0b7d-4c55-9a0e_1d2b3c4d5e6f",
            "{6f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6}",
            "",
        ] {
            assert_eq!(parse_uuid(not), None, "{not}");
        }
        // A 32-digit id stays a string: it matches itself, not the UUID.
        let m: OwnerMap = [(
            VmKey::Id("6F1C2A9E0B7D4C559A0E1D2B3C4D5E6F".into()),
            owner("u", "p"),
        )]
        .into_iter()
        .collect();
        assert!(
            m.lookup(&vm("6f1c2a9e0b7d4c559a0e1d2b3c4d5e6f", None, "n", 1))
                .is_some()
        );
        assert!(
            m.lookup(&vm("6f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6f", None, "n", 1))
                .is_none()
        );
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
