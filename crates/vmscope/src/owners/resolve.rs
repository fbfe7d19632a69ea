//! The tick's side of the owner sources: one resolve step, one precedence.
//!
//! Reads: each VM's discovery records (the same `Arc`s the tick follows it
//! by) and the newest map each fetched source published. Emits: each VM's
//! [`VmStats::owner`]. Runs on the collector thread and never waits: a map
//! being swapped right now is picked up next tick. Work per VM per tick is
//! a hash lookup; sources are asked again for a VM only when its discovery
//! records changed or a fetched source published a new map.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmscope_proc::LibvirtDomain;

use super::runner::{self, Health, Running};
use super::{FactSource, OwnerMap, OwnersConfig, Source, VmFacts};
use crate::discovery::ProcVm;
use crate::model::{Owner, VmStats};

/// A VM's discovery records, as the tick keeps them.
pub type Records = (Option<Arc<ProcVm>>, Option<Arc<LibvirtDomain>>);

/// The precedence, written once: per field, `from` (a source lower in the
/// list) fills only what the sources above it left empty (missing or blank).
/// Returns whether `into` changed.
pub fn fill(into: &mut Owner, from: &Owner) -> bool {
    let mut changed = false;
    let fields = [
        (&mut into.user_id, &from.user_id),
        (&mut into.user_name, &from.user_name),
        (&mut into.project_id, &from.project_id),
        (&mut into.project_name, &from.project_name),
    ];
    for (slot, value) in fields {
        let empty = slot.as_deref().is_none_or(|v| v.trim().is_empty());
        if let (true, Some(v)) = (empty, value)
            && slot.as_ref() != Some(v)
        {
            *slot = Some(v.clone());
            changed = true;
        }
    }
    changed
}

fn complete(o: &Owner) -> bool {
    [&o.user_id, &o.user_name, &o.project_id, &o.project_name]
        .iter()
        .all(|f| f.as_deref().is_some_and(|v| !v.trim().is_empty()))
}

/// One source, as the tick sees it.
enum Layer {
    Facts(Box<dyn FactSource>),
    /// A fetched source: its handle and the map the tick last took from it.
    Map(Running, Arc<OwnerMap>),
}

/// The merged owner of one VM over every source, in precedence order, and
/// the source that said most: the highest one that gave any field (the
/// `owner_source` users see).
fn merge(layers: &[(&'static str, Layer)], vm: &VmFacts<'_>) -> Option<(Owner, &'static str)> {
    let mut owner = Owner::default();
    let mut said = None;
    for (name, layer) in layers {
        let gave = match layer {
            Layer::Facts(s) => s.row(vm).is_some_and(|row| fill(&mut owner, &row)),
            Layer::Map(_, map) => map.lookup(vm).is_some_and(|row| fill(&mut owner, row)),
        };
        if gave && said.is_none() {
            said = Some(*name);
        }
        if complete(&owner) {
            break;
        }
    }
    said.map(|s| (owner, s))
}

/// What a VM's owner was last resolved from.
struct Seen {
    records: Records,
    generation: u64,
    tick: u64,
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The longest the agent's first collection waits for a fetched owner
/// source's first answer (each source's own timeout, if shorter).
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The enabled owner sources, in precedence order, and what the tick last
/// resolved from them.
pub struct Owners {
    layers: Vec<(&'static str, Layer)>,
    /// Bumped whenever a fetched source's map changed.
    generation: u64,
    tick: u64,
    /// Per VM (pid, start time bits); looked up for every VM at every
    /// tick, so hashed with foldhash.
    seen: HashMap<(u32, u64), Seen, foldhash::fast::RandomState>,
}

impl Owners {
    /// Starts every enabled source of [`SOURCES`](super::SOURCES), in the configured
    /// precedence; fetched ones on their own threads. A source whose
    /// threads cannot start is logged and left out (the rest still
    /// attribute).
    pub fn start(cfg: &OwnersConfig) -> Self {
        let mut layers = Vec::new();
        for spec in cfg.precedence() {
            match (spec.start)(cfg) {
                None => {}
                Some(Source::Facts(s)) => layers.push((spec.name, Layer::Facts(s))),
                Some(Source::Fetched(s, opts)) => match runner::spawn(spec.name, s, opts) {
                    Ok(r) => layers.push((spec.name, Layer::Map(r, Arc::default()))),
                    Err(e) => {
                        tracing::error!(source = spec.name, error = %e, "cannot start owner source")
                    }
                },
            }
        }
        Self::from_layers(layers)
    }

    fn from_layers(layers: Vec<(&'static str, Layer)>) -> Self {
        Owners {
            layers,
            generation: 0,
            tick: 0,
            seen: HashMap::default(),
        }
    }

    /// `/metrics` for the fetched sources: reads their published health,
    /// shared with the runners, so it can be taken before the tick's thread
    /// owns `self`.
    pub fn metrics(&self) -> super::OwnerSourceMetrics {
        super::OwnerSourceMetrics::new(
            self.fetched()
                .map(|(name, p)| (name, Arc::clone(p)))
                .collect(),
        )
    }

    /// Health of each fetched source, now.
    pub fn health(&self) -> Vec<(&'static str, Health)> {
        self.fetched().map(|(name, p)| (name, p.health())).collect()
    }

    /// The fetched sources' shared state, by name.
    fn fetched(&self) -> impl Iterator<Item = (&'static str, &Arc<runner::Published>)> {
        self.layers.iter().filter_map(|(name, l)| match l {
            Layer::Map(r, _) => Some((*name, &r.published)),
            Layer::Facts(_) => None,
        })
    }

    /// Before the first tick resolves: each fetched source's first answer,
    /// waited for at most its timeout (and [`FIRST_ANSWER_WAIT`]); the
    /// sources fetch in parallel, so the waits overlap.
    fn wait_for_first_answers(&self) {
        let start = Instant::now();
        for (name, layer) in &self.layers {
            if let Layer::Map(r, _) = layer {
                let until = start + r.timeout.min(FIRST_ANSWER_WAIT);
                if !r.published.wait_first(until) {
                    tracing::warn!(
                        source = name,
                        waited = ?until.saturating_duration_since(start),
                        "owner source has not answered by the first collection; \
                         its VMs have no owner from it until it does"
                    );
                }
            }
        }
    }

    /// Takes the newest map of each fetched source; `true` if any changed.
    fn refresh_maps(&mut self) -> bool {
        let mut changed = false;
        for (_, layer) in &mut self.layers {
            if let Layer::Map(r, current) = layer
                && let Some(latest) = r.published.try_map()
                && !Arc::ptr_eq(&latest, current)
            {
                // The old map goes back to the source's thread to be freed.
                r.retire(std::mem::replace(current, latest));
                changed = true;
            }
        }
        changed
    }

    /// The one resolve step of a tick: sets every VM's owner from the
    /// sources. Asks the sources again only for VMs whose records changed
    /// since they were last resolved, or for all after a map changed.
    ///
    /// Owner values are capped like every other label value
    /// ([`crate::model::cap_label_value`]): a platform database may hold a
    /// name of any length. Returns how many values were cut.
    pub fn resolve<'a>(
        &mut self,
        vms: impl IntoIterator<Item = (&'a mut VmStats, &'a Records)>,
    ) -> u64 {
        let mut truncated = 0;
        if self.tick == 0 {
            self.wait_for_first_answers();
        }
        if self.refresh_maps() {
            self.generation += 1;
        }
        self.tick += 1;
        for (vm, records) in vms {
            let key = (vm.pid, vm.start_time_seconds.to_bits());
            if let Some(s) = self.seen.get_mut(&key)
                && s.generation == self.generation
                && same(&s.records.0, &records.0)
                && same(&s.records.1, &records.1)
            {
                s.tick = self.tick;
                continue;
            }
            let facts = VmFacts {
                id: &vm.id,
                uuid: vm.uuid.as_deref(),
                name: &vm.name,
                pid: vm.pid,
                process: records.0.as_deref(),
                libvirt: records.1.as_deref(),
            };
            let merged = merge(&self.layers, &facts);
            let source = merged.as_ref().map(|(_, s)| *s);
            let mut owner = merged.map(|(o, _)| o);
            if let Some(o) = owner.as_mut() {
                truncated += cap_owner(o);
            }
            if vm.owner.as_deref() != owner.as_ref() {
                vm.owner = owner.map(Arc::new);
            }
            vm.owner_source = source;
            self.seen.insert(
                key,
                Seen {
                    records: records.clone(),
                    generation: self.generation,
                    tick: self.tick,
                },
            );
        }
        let tick = self.tick;
        self.seen.retain(|_, s| s.tick == tick);
        truncated
    }
}

/// Caps an owner's four values; how many were cut.
fn cap_owner(o: &mut crate::model::Owner) -> u64 {
    [
        &mut o.user_id,
        &mut o.user_name,
        &mut o.project_id,
        &mut o.project_name,
    ]
    .into_iter()
    .flatten()
    .map(|v| u64::from(crate::model::cap_label_value(v)))
    .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::Source as Discovered;
    use crate::owners::VmKey;
    use crate::owners::runner::{FetchError, OwnerSource, RunOptions};

    fn owner(f: [Option<&str>; 4]) -> Owner {
        let s = |v: Option<&str>| v.map(str::to_owned);
        Owner {
            user_id: s(f[0]),
            user_name: s(f[1]),
            project_id: s(f[2]),
            project_name: s(f[3]),
        }
    }

    #[test]
    fn a_lower_source_fills_only_the_fields_left_empty() {
        let mut o = owner([Some("u1"), None, Some(" "), None]);
        fill(
            &mut o,
            &owner([Some("u2"), Some("alice"), Some("p2"), None]),
        );
        assert_eq!(o, owner([Some("u1"), Some("alice"), Some("p2"), None]));
        // A blank the lower source has too stays as it was.
        let mut o = owner([None, Some(""), None, None]);
        assert!(!fill(&mut o, &owner([None, None, None, None])));
        assert!(!fill(&mut o, &owner([None, Some(""), None, None])));
        assert_eq!(o, owner([None, Some(""), None, None]));
    }

    /// A facts source that gives every VM the same row and counts calls.
    struct Fixed(Owner, Arc<std::sync::atomic::AtomicU32>);

    impl FactSource for Fixed {
        fn row(&self, _: &VmFacts<'_>) -> Option<Owner> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (self.0 != Owner::default()).then(|| self.0.clone())
        }
    }

    fn fixed(o: Owner) -> (Layer, Arc<std::sync::atomic::AtomicU32>) {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        (Layer::Facts(Box::new(Fixed(o, Arc::clone(&calls)))), calls)
    }

    fn vm(pid: u32) -> VmStats {
        VmStats {
            id: format!("vm{pid}"),
            name: format!("vm{pid}"),
            ..VmStats::unmeasured(pid, Discovered::Process)
        }
    }

    #[test]
    fn sources_merge_in_table_order_and_nothing_known_is_no_owner() {
        let (hi, _) = fixed(owner([Some("u1"), None, None, None]));
        let (lo, _) = fixed(owner([Some("u2"), Some("alice"), None, Some("lab")]));
        let mut owners = Owners::from_layers(vec![("hi", hi), ("lo", lo)]);
        let records: Records = (None, None);
        let mut v = vm(1);
        owners.resolve([(&mut v, &records)]);
        assert_eq!(
            v.owner.as_deref(),
            Some(&owner([Some("u1"), Some("alice"), None, Some("lab")]))
        );
        assert_eq!(v.owner_source, Some("hi"));
        // A higher source that says nothing about the VM does not claim it.
        let (silent, _) = fixed(Owner::default());
        let (lo, _) = fixed(owner([Some("u2"), None, None, None]));
        let mut owners = Owners::from_layers(vec![("silent", silent), ("lo", lo)]);
        let mut v = vm(1);
        owners.resolve([(&mut v, &records)]);
        assert_eq!(v.owner_source, Some("lo"));

        let (none, _) = fixed(Owner::default());
        let mut owners = Owners::from_layers(vec![("none", none)]);
        let mut v = vm(1);
        owners.resolve([(&mut v, &records)]);
        assert_eq!(v.owner, None);
        assert_eq!(v.owner_source, None);
    }

    #[test]
    fn sources_are_asked_again_only_when_a_vms_records_change() {
        let (src, calls) = fixed(owner([Some("u1"), None, None, None]));
        let mut owners = Owners::from_layers(vec![("src", src)]);
        let first: Records = (None, None);
        let mut a = vm(1);
        let mut b = vm(2);
        owners.resolve([(&mut a, &first), (&mut b, &first)]);
        owners.resolve([(&mut a, &first), (&mut b, &first)]);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        // VM 1's libvirt record was re-read: only VM 1 is resolved again.
        let domain =
            vmscope_proc::parse_libvirt_status(b"<domain><name>vm1</name></domain>").unwrap();
        let changed: Records = (None, Some(Arc::new(domain)));
        owners.resolve([(&mut a, &changed), (&mut b, &first)]);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A VM that left and came back (same pid, new process) is new.
        owners.resolve([(&mut b, &first)]);
        let mut a_again = VmStats {
            start_time_seconds: 99.0,
            ..vm(1)
        };
        owners.resolve([(&mut a_again, &first), (&mut b, &first)]);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert!(a_again.owner.is_some());
    }

    /// A fetched source with one row for `vm1`, then another.
    struct Rows(Arc<std::sync::Mutex<&'static str>>);

    impl OwnerSource for Rows {
        fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
            let user = *self.0.lock().unwrap();
            let row = Owner {
                user_id: Some(user.to_owned()),
                user_name: Some("from-map".to_owned()),
                ..Owner::default()
            };
            Ok([(VmKey::Name("vm1".into()), row)].into_iter().collect())
        }
    }

    /// A fetched source whose fetch takes `delay`, then answers `vm1`'s row.
    struct Slow(std::time::Duration);

    impl OwnerSource for Slow {
        fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
            std::thread::sleep(self.0);
            let row = owner([Some("u-slow"), None, None, None]);
            Ok([(VmKey::Name("vm1".into()), row)].into_iter().collect())
        }
    }

    fn slow_owners(delay_ms: u64, timeout_ms: u64) -> Owners {
        let running = runner::spawn(
            "slow",
            Box::new(Slow(std::time::Duration::from_millis(delay_ms))),
            RunOptions {
                every: std::time::Duration::from_secs(60),
                timeout: std::time::Duration::from_millis(timeout_ms),
            },
        )
        .unwrap();
        Owners::from_layers(vec![("slow", Layer::Map(running, Arc::default()))])
    }

    #[test]
    fn the_first_tick_waits_for_a_slow_sources_first_answer() {
        // The restart case the ledger needs: the first tick after a start
        // must already know the owners, or its usage is billed to nobody.
        let mut owners = slow_owners(300, 5000);
        let records: Records = (None, None);
        let mut v = vm(1);
        owners.resolve([(&mut v, &records)]);
        assert_eq!(
            v.owner.as_ref().and_then(|o| o.user_id.as_deref()),
            Some("u-slow")
        );
    }

    #[test]
    fn the_first_tick_waits_no_longer_than_the_sources_timeout() {
        let mut owners = slow_owners(3000, 200);
        let records: Records = (None, None);
        let mut v = vm(1);
        let started = std::time::Instant::now();
        owners.resolve([(&mut v, &records)]);
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(150)
                && took < std::time::Duration::from_secs(2),
            "the first resolve took {took:?}"
        );
        assert_eq!(v.owner, None);
        // Later ticks never wait.
        let started = std::time::Instant::now();
        owners.resolve([(&mut v, &records)]);
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_new_map_re_resolves_every_vm_and_facts_sources_keep_precedence() {
        let user = Arc::new(std::sync::Mutex::new("u-map"));
        let running = runner::spawn(
            "rows",
            Box::new(Rows(Arc::clone(&user))),
            RunOptions {
                every: std::time::Duration::from_millis(10),
                timeout: std::time::Duration::from_secs(5),
            },
        )
        .unwrap();
        let (nova, _) = fixed(owner([None, Some("alice"), None, None]));
        let mut owners = Owners::from_layers(vec![
            ("nova", nova),
            ("rows", Layer::Map(running, Arc::default())),
        ]);
        let records: Records = (None, None);
        let mut v = vm(1);
        let mut other = vm(2);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut wait_for = |want: &str, v: &mut VmStats, other: &mut VmStats| loop {
            owners.resolve([(&mut *v, &records), (&mut *other, &records)]);
            if v.owner.as_ref().and_then(|o| o.user_id.as_deref()) == Some(want) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no map with {want}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        wait_for("u-map", &mut v, &mut other);
        // The higher source's name stays; the map fills the id.
        assert_eq!(
            v.owner.as_deref(),
            Some(&owner([Some("u-map"), Some("alice"), None, None]))
        );
        // VM 2 has no row in the map: only the facts source's fields.
        assert_eq!(
            other.owner.as_deref(),
            Some(&owner([None, Some("alice"), None, None]))
        );
        *user.lock().unwrap() = "u-new";
        wait_for("u-new", &mut v, &mut other);
        assert_eq!(owners.health().len(), 1);
        assert!(owners.health()[0].1.up);
    }
}
