//! One series per VM id, even when two processes claim the same id.
//!
//! Reads the VMs of one snapshot and emits them sorted by id with every id
//! unique. Two processes can claim one UUID (an incoming live migration on
//! the same host): the older keeps the id, the other gets `-pidN` appended,
//! so no series is ever duplicated. Cannot fail.

use std::cmp::Ordering;

use crate::model::VmStats;

/// The order ids are claimed in: by id, the oldest process first, the pid
/// last so that the order is the same whatever the input's (the sorts are
/// unstable: a stable sort allocated a scratch copy of half the VMs). The
/// followed VMs are kept in this order too (`Followed::sort_by_id`).
pub fn claim_order(a: &VmStats, b: &VmStats) -> Ordering {
    a.id.cmp(&b.id)
        .then(a.start_time_seconds.total_cmp(&b.start_time_seconds))
        .then(a.pid.cmp(&b.pid))
}

/// Sorts by id and makes ids unique (see the module doc).
pub fn dedupe_ids(vms: &mut [VmStats]) {
    // The followed VMs come in this order already, so the sort, which
    // moved every VM's stats each tick, is usually skipped.
    if !vms.is_sorted_by(|a, b| claim_order(a, b).is_le()) {
        vms.sort_unstable_by(claim_order);
    }
    // Each run of one id: the first (oldest) keeps it, the others are
    // suffixed; compared with the run's first, which keeps its id.
    let mut first = 0;
    let mut suffixed = false;
    for i in 1..vms.len() {
        if vms[i].id == vms[first].id {
            let v = &mut vms[i];
            v.id = format!("{}-pid{}", v.id, v.pid);
            v.id_suffixed = true;
            suffixed = true;
        } else {
            first = i;
        }
    }
    if suffixed {
        vms.sort_unstable_by(|a, b| a.id.cmp(&b.id).then(a.pid.cmp(&b.pid)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Source;

    fn vm(id: &str, pid: u32, started: f64) -> VmStats {
        VmStats {
            id: id.into(),
            start_time_seconds: started,
            ..VmStats::unmeasured(pid, Source::Process)
        }
    }

    fn ids(vms: &[VmStats]) -> Vec<(&str, u32)> {
        vms.iter().map(|v| (v.id.as_str(), v.pid)).collect()
    }

    #[test]
    fn unique_ids_are_only_sorted() {
        let mut v = vec![vm("b", 2, 0.0), vm("a", 1, 0.0), vm("c", 3, 0.0)];
        dedupe_ids(&mut v);
        assert_eq!(ids(&v), [("a", 1), ("b", 2), ("c", 3)]);
    }

    #[test]
    fn the_older_process_keeps_a_shared_id() {
        // An incoming migration: the newer process (pid 5, started later)
        // gets the suffix, whatever the pid order.
        let mut v = vec![vm("uuid-1", 5, 200.0), vm("uuid-1", 900, 100.0)];
        dedupe_ids(&mut v);
        assert_eq!(ids(&v), [("uuid-1", 900), ("uuid-1-pid5", 5)]);
    }

    #[test]
    fn same_start_time_falls_back_to_pid_and_three_claims_all_differ() {
        let mut v = vec![
            vm("x", 30, 1.0),
            vm("x", 10, 1.0),
            vm("x", 20, 1.0),
            vm("w", 1, 9.0),
        ];
        dedupe_ids(&mut v);
        assert_eq!(
            ids(&v),
            [("w", 1), ("x", 10), ("x-pid20", 20), ("x-pid30", 30)]
        );
    }

    #[test]
    fn empty_is_fine() {
        let mut v: Vec<VmStats> = Vec::new();
        dedupe_ids(&mut v);
        assert!(v.is_empty());
    }
}
