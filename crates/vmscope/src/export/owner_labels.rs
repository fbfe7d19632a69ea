//! Owner labels on every per-VM series (tenancy, `[proxy] owner_labels`):
//! with them on, each per-VM series carries its VM's user and project keys
//! (`user="u1",project="acme"`, the names from `[proxy] user_label` and
//! `project_label`), so that the query proxy's tenant matcher selects a
//! tenant's series and a series without them is invisible to tenants.
//!
//! Reads: the names, set once at start ([`enable`]) before the first
//! encoding. A process-wide setting, not a parameter, because the snapshot
//! is encoded through `MetricSource::encode`, which takes no
//! configuration; it changes only the shared label set built once per VM
//! per encoding, not the per-series path. Emits: the label set
//! `vm_label_set`. Fails: never (a second [`enable`] keeps the first
//! names and says so).

use std::sync::OnceLock;

use super::encoder::Encode;
use super::writer::LabelSet;
use crate::model::VmStats;
use crate::model::identity::OwnerIndex;
use crate::model::usage::series_label;

static NAMES: OnceLock<(String, String)> = OnceLock::new();

/// Turns owner labels on for this process, under these names. Returns
/// false when they were on already (under the first names).
pub fn enable(user_label: &str, project_label: &str) -> bool {
    NAMES
        .set((user_label.to_owned(), project_label.to_owned()))
        .is_ok()
}

/// The names, when owner labels are on.
pub fn names() -> Option<(&'static str, &'static str)> {
    NAMES.get().map(|(u, p)| (u.as_str(), p.as_str()))
}

/// The labels every per-VM series of `vm` starts with: `vm_id`, `vm_name`
/// and, when on, its owner keys (as `vmscope_vm_info{user,project}`
/// carries them; absent keys are left out).
pub(super) fn vm_label_set<'a>(
    out: &mut impl Encode,
    vm: &'a VmStats,
    users: &OwnerIndex<'a>,
    projects: &OwnerIndex<'a>,
) -> LabelSet {
    let id = [("vm_id", vm.id.as_str()), ("vm_name", vm.name.as_str())];
    let Some((user_label, project_label)) = names() else {
        return out.label_set(&id);
    };
    // Keys of an index built over the same VMs' owners.
    let owner = vm.owner.as_ref();
    let user = owner
        .and_then(|o| users.key(o))
        .map(series_label)
        .filter(|v| !v.is_empty());
    let project = owner
        .and_then(|o| projects.key(o))
        .map(series_label)
        .filter(|v| !v.is_empty());
    let mut labels: Vec<(&'static str, &str)> = id.to_vec();
    if let Some(u) = user.as_deref() {
        labels.push((user_label, u));
    }
    if let Some(p) = project.as_deref() {
        labels.push((project_label, p));
    }
    out.label_set(&labels)
}
