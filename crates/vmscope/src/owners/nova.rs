//! The `nova` owner source: OpenStack Nova's `<nova:owner>` in libvirt's
//! status XML (parsed by discovery; no IO here).
//!
//! Reads: [`VmFacts::libvirt`]'s Nova metadata. Emits: user and project,
//! id (the `uuid` attribute) and name (the element text). A VM that is not
//! a Nova instance, or whose metadata has no owner, gets no row. On by
//! default (it was vmscope's only owner source before `[owners]`).

use serde::Deserialize;

use super::{FactSource, OwnersConfig, Source, VmFacts};
use crate::model::Owner;

/// `[owners.nova]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { enabled: true }
    }
}

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    cfg.nova.enabled.then(|| Source::Facts(Box::new(Nova)))
}

pub struct Nova;

impl FactSource for Nova {
    fn row(&self, vm: &VmFacts<'_>) -> Option<Owner> {
        let n = vm.libvirt?.nova.as_ref()?;
        let owner = Owner {
            user_id: n.user_id.clone(),
            user_name: n.user_name.clone(),
            project_id: n.project_id.clone(),
            project_name: n.project_name.clone(),
        };
        (owner != Owner::default()).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn facts(xml: &str) -> vmscope_proc::LibvirtDomain {
        vmscope_proc::parse_libvirt_status(xml.as_bytes()).unwrap()
    }

    fn row(d: &vmscope_proc::LibvirtDomain) -> Option<Owner> {
        Nova.row(&VmFacts {
            id: "x",
            uuid: None,
            name: &d.name,
            pid: 1,
            process: None,
            libvirt: Some(d),
        })
    }

    #[test]
    fn reads_the_owner_of_a_nova_instance() {
        let d = facts(
            "<domain><name>instance-1</name><metadata>\
             <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
             <nova:owner><nova:user uuid='u1'>alice</nova:user>\
             <nova:project uuid='p1'>research</nova:project></nova:owner>\
             </nova:instance></metadata></domain>",
        );
        assert_eq!(
            row(&d),
            Some(Owner {
                user_id: Some("u1".into()),
                user_name: Some("alice".into()),
                project_id: Some("p1".into()),
                project_name: Some("research".into()),
            })
        );
    }

    #[test]
    fn no_row_without_nova_metadata_or_without_an_owner() {
        assert_eq!(row(&facts("<domain><name>plain</name></domain>")), None);
        let d = facts(
            "<domain><name>i</name><metadata>\
             <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
             <nova:name>web</nova:name></nova:instance></metadata></domain>",
        );
        assert_eq!(row(&d), None);
    }

    #[test]
    fn on_by_default_and_off_when_disabled() {
        assert!(start(&OwnersConfig::default()).is_some());
        let off: OwnersConfig = toml::from_str("[nova]\nenabled = false").unwrap();
        assert!(start(&off).is_none());
    }
}
