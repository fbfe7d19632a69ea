//! The `libvirt` owner source: owner fields from a platform's own element
//! in the domain's `<metadata>` (oVirt, a custom platform), for platforms
//! that are not Nova (Nova's `<nova:owner>` is the `nova` source).
//!
//! Reads: [`VmFacts::libvirt`]'s [`Metadata`] tree, which discovery kept
//! when it parsed the status XML (no IO, no XML parsing here: a lookup is a
//! scan of at most a few hundred owned nodes, and runs only when the VM's
//! records changed). Emits: per configured field, the text of an element or
//! the value of an attribute at a path in the configured namespace:
//!
//! ```toml
//! [owners.libvirt]
//! namespace = "https://acme.example/ns/vm/1"
//! user_id = "owner/user/@id"      # <acme:owner><acme:user id="...">
//! user_name = "owner/user"        # its text
//! project_name = "owner/project"
//! ```
//!
//! A path's first step is the namespace's element directly under
//! `<metadata>`; every step is a local name in that namespace (whatever
//! prefix the document uses); a last step `@name` is an un-namespaced
//! attribute. The first element of a name wins at each level. A VM without
//! the element, or whose values are empty, gets no row.
//!
//! Fails: a path that is not of that form is a config error at load
//! (`owners.libvirt.user_id: ...`); so are paths without a `namespace` and
//! a `namespace` without paths. Off unless configured.

use serde::{Deserialize, Deserializer};
use vmscope_proc::Metadata;

use super::{FactSource, OwnersConfig, Source, VmFacts};
use crate::model::Owner;

/// Steps in a path: deeper ones could never match (discovery keeps
/// [`vmscope_proc::metadata::MAX_DEPTH`] levels).
const MAX_STEPS: usize = vmscope_proc::metadata::MAX_DEPTH;

/// `[owners.libvirt]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XML namespace URI of the platform's element in `<metadata>`.
    pub namespace: Option<String>,
    #[serde(deserialize_with = "path")]
    pub user_id: Option<MetaPath>,
    #[serde(deserialize_with = "path")]
    pub user_name: Option<MetaPath>,
    #[serde(deserialize_with = "path")]
    pub project_id: Option<MetaPath>,
    #[serde(deserialize_with = "path")]
    pub project_name: Option<MetaPath>,
}

impl Config {
    fn paths(&self) -> [Option<&MetaPath>; 4] {
        [
            self.user_id.as_ref(),
            self.user_name.as_ref(),
            self.project_id.as_ref(),
            self.project_name.as_ref(),
        ]
    }

    /// Errors name the key (`owners.libvirt.namespace: ...`).
    pub fn validate(&self) -> Result<(), String> {
        let any_path = self.paths().iter().any(Option::is_some);
        match self.namespace.as_deref().map(str::trim) {
            Some("") => Err("owners.libvirt.namespace: must not be empty".to_owned()),
            Some(_) if !any_path => Err(
                "owners.libvirt: set at least one of user_id, user_name, project_id, project_name"
                    .to_owned(),
            ),
            None if any_path => Err(
                "owners.libvirt.namespace: required (the XML namespace URI of the platform's element in <metadata>)"
                    .to_owned(),
            ),
            _ => Ok(()),
        }
    }
}

/// `owner/user` (an element's text) or `owner/user/@id` (an attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPath {
    elements: Vec<String>,
    attribute: Option<String>,
}

impl MetaPath {
    /// Parses the path syntax; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<MetaPath, String> {
        let mut steps: Vec<&str> = text.split('/').collect();
        let attribute = match steps.last().and_then(|s| s.strip_prefix('@')) {
            Some(a) => {
                steps.pop();
                Some(a)
            }
            None => None,
        };
        if steps.is_empty() || text.is_empty() {
            return Err(format!(
                "{text:?}: a path starts with an element (like \"owner/user\" or \"owner/user/@id\")"
            ));
        }
        if steps.len() > MAX_STEPS {
            return Err(format!(
                "{text:?}: {} elements deep; at most {MAX_STEPS} levels of <metadata> are read",
                steps.len()
            ));
        }
        for step in steps.iter().copied().chain(attribute) {
            if step.is_empty() {
                return Err(format!(
                    "{text:?}: an empty step (\"//\", or \"/\" at an end)"
                ));
            }
            if step.starts_with('@') {
                return Err(format!(
                    "{text:?}: an attribute ({step}) only as the last step"
                ));
            }
            if step.contains(':') {
                return Err(format!(
                    "{text:?}: {step:?} has a prefix; write local names only, the namespace is `namespace`"
                ));
            }
            if !is_xml_name(step) {
                return Err(format!("{text:?}: {step:?} is not an XML name"));
            }
        }
        Ok(MetaPath {
            elements: steps.into_iter().map(str::to_owned).collect(),
            attribute: attribute.map(str::to_owned),
        })
    }

    fn lookup<'m>(&self, meta: &'m Metadata, namespace: &str) -> Option<&'m str> {
        meta.lookup(namespace, &self.elements, self.attribute.as_deref())
    }
}

/// An XML NCName, close enough: a letter or `_` first, then letters,
/// digits, `-`, `_`, `.` (non-ASCII letters allowed).
fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MetaPath>, D::Error> {
    let text = String::deserialize(d)?;
    MetaPath::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    let c = &cfg.libvirt;
    let namespace = c.namespace.as_deref()?.trim().to_owned();
    if namespace.is_empty() || c.paths().iter().all(Option::is_none) {
        return None;
    }
    Some(Source::Facts(Box::new(Libvirt {
        namespace,
        user_id: c.user_id.clone(),
        user_name: c.user_name.clone(),
        project_id: c.project_id.clone(),
        project_name: c.project_name.clone(),
    })))
}

pub struct Libvirt {
    namespace: String,
    user_id: Option<MetaPath>,
    user_name: Option<MetaPath>,
    project_id: Option<MetaPath>,
    project_name: Option<MetaPath>,
}

impl FactSource for Libvirt {
    fn row(&self, vm: &VmFacts<'_>) -> Option<Owner> {
        let meta = &vm.libvirt?.metadata;
        if meta.is_empty() {
            return None;
        }
        let field =
            |p: &Option<MetaPath>| p.as_ref()?.lookup(meta, &self.namespace).map(str::to_owned);
        let owner = Owner {
            user_id: field(&self.user_id),
            user_name: field(&self.user_name),
            project_id: field(&self.project_id),
            project_name: field(&self.project_name),
        };
        (owner != Owner::default()).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn source(toml: &str) -> Libvirt {
        let cfg: OwnersConfig = toml::from_str(toml).unwrap();
        cfg.libvirt.validate().unwrap();
        let Some(Source::Facts(_)) = start(&cfg) else {
            panic!("not started")
        };
        let c = cfg.libvirt;
        Libvirt {
            namespace: c.namespace.unwrap(),
            user_id: c.user_id,
            user_name: c.user_name,
            project_id: c.project_id,
            project_name: c.project_name,
        }
    }

    fn row(s: &Libvirt, xml: &str) -> Option<Owner> {
        let d = vmscope_proc::parse_libvirt_status(xml.as_bytes()).unwrap();
        s.row(&VmFacts {
            id: "x",
            uuid: None,
            name: &d.name,
            pid: 1,
            process: None,
            libvirt: Some(&d),
        })
    }

    const ACME: &str = r#"[libvirt]
namespace = "https://acme.example/ns/vm/1"
user_id = "owner/user/@id"
user_name = "owner/user"
project_id = "owner/project/@id"
project_name = "owner/project"
"#;

    #[test]
    fn reads_a_custom_platforms_owner_element() {
        let s = source(ACME);
        let xml = "<domstatus pid='5'><domain><name>web1</name><metadata>\
             <acme:owner xmlns:acme='https://acme.example/ns/vm/1'>\
             <acme:user id='u-123'>carol</acme:user>\
             <acme:project id='p-9'>ml-lab</acme:project></acme:owner>\
             </metadata></domain></domstatus>";
        assert_eq!(
            row(&s, xml),
            Some(Owner {
                user_id: Some("u-123".into()),
                user_name: Some("carol".into()),
                project_id: Some("p-9".into()),
                project_name: Some("ml-lab".into()),
            })
        );
        // Same element, other prefix: the namespace is what counts.
        let other_prefix = xml.replace("acme:", "x:").replace("xmlns:acme", "xmlns:x");
        assert_eq!(row(&s, &other_prefix), row(&s, xml));
        // A default namespace is the same namespace.
        let default_ns = xml.replace("acme:", "").replace("xmlns:acme", "xmlns");
        assert_eq!(row(&s, &default_ns), row(&s, xml));
        // Same local names in another namespace (Nova's, here) say nothing.
        let nova = "<domain><name>i</name><metadata>\
             <nova:owner xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
             <nova:user id='u'>alice</nova:user></nova:owner></metadata></domain>";
        assert_eq!(row(&s, nova), None);
        assert_eq!(row(&s, "<domain><name>plain</name></domain>"), None);
    }

    #[test]
    fn fields_the_element_lacks_stay_empty() {
        let s = source(ACME);
        let xml = "<domain><name>web1</name><metadata>\
             <acme:owner xmlns:acme='https://acme.example/ns/vm/1'>\
             <acme:user>carol</acme:user><acme:project id=''/></acme:owner>\
             </metadata></domain>";
        assert_eq!(
            row(&s, xml),
            Some(Owner {
                user_name: Some("carol".into()),
                ..Owner::default()
            })
        );
    }

    /// oVirt writes no owner; an engine whose admin defined VM custom
    /// properties (`UserDefinedVMProperties`) `owner` and `project` writes
    /// them under `<ovirt-vm:vm><ovirt-vm:custom>`, beside devices that have
    /// a `custom` of their own (which the path does not reach).
    #[test]
    fn ovirt_custom_properties() {
        let s = source(
            r#"[libvirt]
namespace = "http://ovirt.org/vm/1.0"
user_name = "vm/custom/owner"
project_name = "vm/custom/project"
"#,
        );
        // What oVirt's engine writes (vmscope-proc's testdata).
        let xml = include_str!("../../../vmscope-proc/testdata/libvirt-status-ovirt.xml");
        assert_eq!(
            row(&s, xml),
            Some(Owner {
                user_name: Some("alice".into()),
                project_name: Some("research".into()),
                ..Owner::default()
            })
        );
        // No custom properties: <ovirt-vm:custom/> is empty, and the
        // devices' own are not the VM's.
        let none = xml
            .replace("<ovirt-vm:owner>alice", "<ovirt-vm:x>alice")
            .replace(
                "</ovirt-vm:owner>\n        <ovirt-vm:project>research</ovirt-vm:project>",
                "</ovirt-vm:x>",
            );
        assert_eq!(row(&s, &none), None, "{none}");
    }

    #[test]
    fn path_syntax() {
        let p = MetaPath::parse("owner/user/@id").unwrap();
        assert_eq!((p.elements.len(), p.attribute.as_deref()), (2, Some("id")));
        assert!(MetaPath::parse("vm/custom/owner").is_ok());
        assert!(MetaPath::parse("données/utilisateur").is_ok());
        for (bad, why) in [
            ("", "starts with an element"),
            ("@id", "starts with an element"),
            ("owner//user", "empty step"),
            ("owner/user/", "empty step"),
            ("/owner", "empty step"),
            ("owner/@id/user", "only as the last step"),
            ("owner/@", "empty step"),
            ("acme:owner/acme:user", "has a prefix"),
            ("owner/user[1]", "not an XML name"),
            ("1owner", "not an XML name"),
            ("a/b/c/d/e/f/g/h/i", "levels of <metadata>"),
        ] {
            let e = MetaPath::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn config_needs_a_namespace_and_a_path() {
        let validate = |t: &str| {
            toml::from_str::<OwnersConfig>(t)
                .unwrap()
                .libvirt
                .validate()
        };
        assert!(validate("[libvirt]").is_ok());
        let e = validate("[libvirt]\nuser_name = 'owner/user'").unwrap_err();
        assert!(e.starts_with("owners.libvirt.namespace: required"), "{e}");
        let e = validate("[libvirt]\nnamespace = 'urn:x'").unwrap_err();
        assert!(e.starts_with("owners.libvirt: set at least one"), "{e}");
        let e = validate("[libvirt]\nnamespace = ' '\nuser_name = 'u'").unwrap_err();
        assert!(
            e.starts_with("owners.libvirt.namespace: must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn off_unless_configured() {
        assert!(start(&OwnersConfig::default()).is_none());
        assert!(start(&toml::from_str(ACME).unwrap()).is_some());
    }
}
