//! Who owns a VM: the one rule, for every reader of [`Owner`].
//!
//! Reads: [`Owner`] values (one per VM, as the owner sources resolved them).
//! Emits: for each kind ([`OwnerKind`], user or project) a grouping **key**
//! and a **display label**. Pure: no IO, never fails; a missing owner has no
//! key and no label.
//!
//! - The key is what groups VMs (watchdog owner rules; next the per-owner
//!   gauges, the ledger and tenant scopes): the owner's id, else its name.
//!   Metadata is not always complete: a VM that carries only a name joins
//!   the id that other VMs of the same host carry with that name, when
//!   exactly one id does. Two owners may share a display name; then a
//!   name-only VM is not guessed into either, it stays keyed by its name.
//!   The join needs the host's other VMs: build an [`OwnerIndex`] once per
//!   snapshot.
//! - The label is what people read (`vmscope_vm_info{owner_user}`, the
//!   `vmscope vms` OWNER column, alert text): the name, else the id.
//!
//! A blank id or name says nothing (it is treated as missing), for both.
//! User and project are independent: a VM may have a user id and only a
//! project name.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Owner;

/// Which side of an owner: the user or the project (tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    User,
    Project,
}

impl OwnerKind {
    pub const ALL: [OwnerKind; 2] = [OwnerKind::User, OwnerKind::Project];

    pub const fn as_str(self) -> &'static str {
        match self {
            OwnerKind::User => "user",
            OwnerKind::Project => "project",
        }
    }

    pub fn from_name(s: &str) -> Option<OwnerKind> {
        OwnerKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An empty id or name in the metadata says nothing.
fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|v| !v.trim().is_empty())
}

/// The owner's id of this kind, if known.
pub fn id(owner: &Owner, kind: OwnerKind) -> Option<&str> {
    non_empty(match kind {
        OwnerKind::User => owner.user_id.as_deref(),
        OwnerKind::Project => owner.project_id.as_deref(),
    })
}

/// The owner's name of this kind, if known.
pub fn name(owner: &Owner, kind: OwnerKind) -> Option<&str> {
    non_empty(match kind {
        OwnerKind::User => owner.user_name.as_deref(),
        OwnerKind::Project => owner.project_name.as_deref(),
    })
}

/// The display label of this kind: the name, else the id.
pub fn label(owner: &Owner, kind: OwnerKind) -> Option<&str> {
    name(owner, kind).or_else(|| id(owner, kind))
}

/// The grouping key of every owner of one kind on one host (one snapshot).
///
/// Built from all owners at once because a name-only owner's key depends
/// on the others: it is the one id carried with that name elsewhere, if
/// exactly one id is.
#[derive(Debug)]
pub struct OwnerIndex<'a> {
    kind: OwnerKind,
    /// Name -> the one id seen with it (`None`: more than one id).
    id_of_name: HashMap<&'a str, Option<&'a str>>,
}

impl<'a> OwnerIndex<'a> {
    pub fn new(kind: OwnerKind, owners: impl IntoIterator<Item = &'a Owner>) -> Self {
        let mut id_of_name: HashMap<&str, Option<&str>> = HashMap::new();
        for o in owners {
            if let (Some(id), Some(name)) = (id(o, kind), name(o, kind)) {
                id_of_name
                    .entry(name)
                    .and_modify(|seen| {
                        if *seen != Some(id) {
                            *seen = None;
                        }
                    })
                    .or_insert(Some(id));
            }
        }
        OwnerIndex { kind, id_of_name }
    }

    pub fn kind(&self) -> OwnerKind {
        self.kind
    }

    /// The key of the owner group `owner` belongs to; `None` when it has
    /// neither an id nor a name of this kind.
    pub fn key(&self, owner: &'a Owner) -> Option<&'a str> {
        if let Some(id) = id(owner, self.kind) {
            return Some(id);
        }
        let name = name(owner, self.kind)?;
        Some(self.id_of_name.get(name).copied().flatten().unwrap_or(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(user: (Option<&str>, Option<&str>), project: (Option<&str>, Option<&str>)) -> Owner {
        let s = |v: Option<&str>| v.map(str::to_owned);
        Owner {
            user_id: s(user.0),
            user_name: s(user.1),
            project_id: s(project.0),
            project_name: s(project.1),
        }
    }

    fn user(id: Option<&str>, name: Option<&str>) -> Owner {
        owner((id, name), (None, None))
    }

    /// Key and label of every owner, each against all of them.
    fn keys(kind: OwnerKind, owners: &[Owner]) -> Vec<(Option<&str>, Option<&str>)> {
        let index = OwnerIndex::new(kind, owners);
        owners
            .iter()
            .map(|o| (index.key(o), label(o, kind)))
            .collect()
    }

    #[test]
    fn id_only_is_key_and_label() {
        let os = [user(Some("u1"), None)];
        assert_eq!(keys(OwnerKind::User, &os), [(Some("u1"), Some("u1"))]);
    }

    #[test]
    fn name_only_is_key_and_label() {
        let os = [user(None, Some("alice"))];
        assert_eq!(keys(OwnerKind::User, &os), [(Some("alice"), Some("alice"))]);
    }

    #[test]
    fn both_key_by_id_and_label_by_name() {
        let os = [user(Some("u1"), Some("alice"))];
        assert_eq!(keys(OwnerKind::User, &os), [(Some("u1"), Some("alice"))]);
    }

    #[test]
    fn neither_has_no_key_and_no_label() {
        let os = [user(None, None), user(Some(" "), Some(""))];
        assert_eq!(keys(OwnerKind::User, &os), [(None, None), (None, None)]);
    }

    #[test]
    fn a_name_only_owner_joins_the_one_id_its_name_carries() {
        let os = [user(Some("u1"), Some("alice")), user(None, Some("alice"))];
        assert_eq!(
            keys(OwnerKind::User, &os),
            [(Some("u1"), Some("alice")), (Some("u1"), Some("alice"))]
        );
    }

    #[test]
    fn the_same_name_on_two_ids_is_not_guessed() {
        let os = [
            user(Some("u8"), Some("carol")),
            user(Some("u9"), Some("carol")),
            user(None, Some("carol")),
            // The same id twice is one id, not an ambiguity.
            user(Some("u1"), Some("alice")),
            user(Some("u1"), Some("alice")),
            user(None, Some("alice")),
        ];
        assert_eq!(
            keys(OwnerKind::User, &os),
            [
                (Some("u8"), Some("carol")),
                (Some("u9"), Some("carol")),
                (Some("carol"), Some("carol")),
                (Some("u1"), Some("alice")),
                (Some("u1"), Some("alice")),
                (Some("u1"), Some("alice")),
            ]
        );
    }

    #[test]
    fn user_and_project_are_independent() {
        let os = [
            owner((Some("u1"), None), (None, Some("research"))),
            owner((None, Some("alice")), (Some("p1"), Some("research"))),
        ];
        assert_eq!(
            keys(OwnerKind::User, &os),
            [(Some("u1"), Some("u1")), (Some("alice"), Some("alice"))]
        );
        assert_eq!(
            keys(OwnerKind::Project, &os),
            [
                (Some("p1"), Some("research")),
                (Some("p1"), Some("research"))
            ]
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for k in OwnerKind::ALL {
            assert_eq!(OwnerKind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(OwnerKind::from_name("tenant"), None);
    }
}
