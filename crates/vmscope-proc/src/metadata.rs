//! libvirt's `<metadata>`: what a management application keeps on a domain,
//! each in its own XML namespace (Nova's `<nova:instance>`, oVirt's
//! `<ovirt-vm:vm>`, a platform's own `<acme:owner>`), kept as a small owned
//! tree so that a configured path can be looked up per VM without parsing
//! XML again.
//!
//! Reads: the `<metadata>` element of a parsed domain document. Emits:
//! [`Metadata`]: per element its namespace URI, local name, un-namespaced
//! attributes and trimmed text (its first text node), in document order.
//!
//! Fails: never. It is bounded instead, because a domain definition is
//! written by whoever may define domains, and the tree lives as long as the
//! VM: at most [`MAX_NODES`] elements, [`MAX_DEPTH`] levels below
//! `<metadata>`, [`MAX_ATTRS`] attributes per element, values cut to
//! [`MAX_VALUE_BYTES`] (on a character boundary) and [`MAX_BYTES`] of
//! names, namespaces, attributes and text in all. What does not fit is left
//! out, the rest kept, and [`Metadata::truncated`] says so.
//!
//! Why a tree and not the raw `<metadata>` text: the text of a subtree does
//! not parse on its own when its namespace prefixes are declared on an
//! ancestor (oVirt declares them on `<metadata>` or `<domain>`), and a
//! lookup in at most [`MAX_NODES`] owned nodes costs less than a parse.

use roxmltree::Node;

/// Levels of elements kept below `<metadata>` (its children are level 1).
pub const MAX_DEPTH: usize = 8;
/// Elements kept per domain.
pub const MAX_NODES: usize = 256;
/// Attributes kept per element.
pub const MAX_ATTRS: usize = 16;
/// The longest text or attribute value kept, in bytes; longer ones are cut
/// (an owner value is cut further, to the label cap, by its reader).
pub const MAX_VALUE_BYTES: usize = 1024;
/// Bytes of names, namespace URIs, attribute values and text kept in all.
pub const MAX_BYTES: usize = 16 * 1024;

const NONE: u32 = u32::MAX;

/// The elements under a domain's `<metadata>`, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Namespace URIs, each once; nodes refer to them by index.
    namespaces: Vec<Box<str>>,
    /// In document order, so a node's children come after it.
    nodes: Vec<MetaNode>,
    bytes: usize,
    truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaNode {
    /// Index in `nodes`; [`NONE`] for a child of `<metadata>`.
    parent: u32,
    /// Index in `namespaces`; [`NONE`] for no namespace.
    namespace: u32,
    name: Box<str>,
    attrs: Vec<(Box<str>, Box<str>)>,
    text: Option<Box<str>>,
}

impl Metadata {
    /// Keeps the elements under `meta` (the `<metadata>` element), within
    /// the bounds above.
    pub fn from_element(meta: Node<'_, '_>) -> Metadata {
        let mut m = Metadata::default();
        m.add_children(meta, NONE, 1);
        m
    }

    fn add_children(&mut self, parent: Node<'_, '_>, parent_idx: u32, depth: usize) {
        for child in parent.children().filter(Node::is_element) {
            if depth > MAX_DEPTH || self.nodes.len() >= MAX_NODES {
                self.truncated = true;
                return;
            }
            match self.add(child, parent_idx) {
                // The recursion is at most MAX_DEPTH deep, whatever the input.
                Some(idx) => self.add_children(child, idx, depth + 1),
                None => self.truncated = true,
            }
        }
    }

    /// Adds one element if it fits the byte budget; its index.
    fn add(&mut self, n: Node<'_, '_>, parent: u32) -> Option<u32> {
        let tag = n.tag_name();
        let mut cost = tag.name().len();
        let namespace = match tag.namespace() {
            None => NONE,
            Some(ns) => match self.namespaces.iter().position(|k| &**k == ns) {
                Some(i) => u32::try_from(i).ok()?,
                None => {
                    cost += ns.len();
                    u32::try_from(self.namespaces.len()).ok()?
                }
            },
        };
        let text = n.text().map(str::trim).filter(|t| !t.is_empty()).map(cut);
        cost += text.map_or(0, str::len);
        let attrs: Vec<(&str, &str)> = n
            .attributes()
            .filter(|a| a.namespace().is_none())
            .take(MAX_ATTRS)
            .map(|a| (a.name(), cut(a.value().trim())))
            .collect();
        cost += attrs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if tag.name().len() > MAX_VALUE_BYTES || self.bytes + cost > MAX_BYTES {
            return None;
        }
        if namespace != NONE && namespace as usize == self.namespaces.len() {
            self.namespaces
                .push(tag.namespace().unwrap_or_default().into());
        }
        let idx = u32::try_from(self.nodes.len()).ok()?;
        self.bytes += cost;
        self.nodes.push(MetaNode {
            parent,
            namespace,
            name: tag.name().into(),
            attrs: attrs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            text: text.map(Into::into),
        });
        Some(idx)
    }

    /// The value at a path of elements, all in `namespace`, starting with an
    /// element directly under `<metadata>`: the element's trimmed text, or
    /// with `attribute` that (un-namespaced) attribute's value. The first
    /// element of a name wins at each level. `None` when the path is not
    /// there or the value is empty.
    pub fn lookup<S: AsRef<str>>(
        &self,
        namespace: &str,
        elements: &[S],
        attribute: Option<&str>,
    ) -> Option<&str> {
        let ns = u32::try_from(self.namespaces.iter().position(|k| &**k == namespace)?).ok()?;
        let mut cur = NONE;
        for step in elements {
            let step = step.as_ref();
            let from = if cur == NONE { 0 } else { cur as usize + 1 };
            let found = self
                .nodes
                .get(from..)?
                .iter()
                .position(|n| n.parent == cur && n.namespace == ns && &*n.name == step)?;
            cur = u32::try_from(from + found).ok()?;
        }
        let node = self.nodes.get(usize::try_from(cur).ok()?)?;
        let value = match attribute {
            None => node.text.as_deref()?,
            Some(a) => node
                .attrs
                .iter()
                .find(|(k, _)| &**k == a)
                .map(|(_, v)| &**v)?,
        };
        (!value.is_empty()).then_some(value)
    }

    /// Elements kept.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes of names, namespaces, attributes and text kept (at most
    /// [`MAX_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when something was left out to stay within the bounds.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// `s` cut to [`MAX_VALUE_BYTES`] on a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_VALUE_BYTES {
        return s;
    }
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_libvirt_status;

    const ACME: &str = "https://acme.example/ns/vm/1";
    const OVIRT: &str = "http://ovirt.org/vm/1.0";

    fn meta(inner: &str) -> Metadata {
        let xml = format!("<domain><name>x</name><metadata>{inner}</metadata></domain>");
        parse_libvirt_status(xml.as_bytes()).unwrap().metadata
    }

    #[test]
    fn looks_up_text_and_attributes_by_namespace_not_prefix() {
        let m = meta(
            "<a:owner xmlns:a='https://acme.example/ns/vm/1'>\
               <a:user id='u-1'> carol </a:user>\
               <a:project id=''>ml-lab</a:project></a:owner>\
             <b:owner xmlns:b='https://other.example/'><b:user>mallory</b:user></b:owner>",
        );
        assert_eq!(m.lookup(ACME, &["owner", "user"], None), Some("carol"));
        assert_eq!(m.lookup(ACME, &["owner", "user"], Some("id")), Some("u-1"));
        assert_eq!(m.lookup(ACME, &["owner", "project"], None), Some("ml-lab"));
        // An empty attribute says nothing; so does a missing one or element.
        assert_eq!(m.lookup(ACME, &["owner", "project"], Some("id")), None);
        assert_eq!(m.lookup(ACME, &["owner", "user"], Some("uuid")), None);
        assert_eq!(m.lookup(ACME, &["owner", "group"], None), None);
        // The path starts at the element directly under <metadata>.
        assert_eq!(m.lookup(ACME, &["user"], None), None);
        assert_eq!(m.lookup("https://nobody.example/", &["owner"], None), None);
        assert!(!m.truncated());
    }

    #[test]
    fn every_step_must_be_in_the_namespace() {
        // A foreign element with the right local name in the middle of the
        // path is not the platform's.
        let m = meta(
            "<a:owner xmlns:a='https://acme.example/ns/vm/1' xmlns:e='urn:e'>\
               <e:user>eve</e:user><a:user>carol</a:user></a:owner>",
        );
        assert_eq!(m.lookup(ACME, &["owner", "user"], None), Some("carol"));
        // An element with children and no text of its own has no value.
        assert_eq!(m.lookup(ACME, &["owner"], None), None);
    }

    /// What oVirt's engine writes (shared with the `libvirt` owner
    /// source's tests).
    const OVIRT_STATUS: &str = include_str!("../testdata/libvirt-status-ovirt.xml");

    /// oVirt: what the engine writes (`LibvirtVmXmlBuilder`): the
    /// namespaces declared on `<metadata>`, the VM's custom properties
    /// under `<ovirt-vm:custom>`, devices with their own `custom`.
    #[test]
    fn ovirt_vm_metadata() {
        let xml = OVIRT_STATUS;
        let m = parse_libvirt_status(xml.as_bytes()).unwrap().metadata;
        assert_eq!(
            m.lookup(OVIRT, &["vm", "custom", "owner"], None),
            Some("alice")
        );
        assert_eq!(
            m.lookup(OVIRT, &["vm", "custom", "project"], None),
            Some("research")
        );
        assert_eq!(
            m.lookup(OVIRT, &["vm", "clusterVersion"], None),
            Some("4.7")
        );
        assert_eq!(
            m.lookup(OVIRT, &["vm", "device"], Some("mac_address")),
            Some("56:6f:1a:2b:00:01")
        );
        assert_eq!(
            m.lookup("http://ovirt.org/vm/tune/1.0", &["qos"], None),
            None
        );
        assert_eq!(m.len(), 15);
        assert!(!m.truncated());
    }

    #[test]
    fn hostile_metadata_stays_bounded() {
        // Deep nesting (as deep as the document may be): kept to MAX_DEPTH
        // levels. Deeper documents are refused whole (libvirt.rs).
        let depth = crate::libvirt::MAX_XML_DEPTH - 10;
        let deep = format!(
            "<a:x xmlns:a='{ACME}'>{}{}</a:x>",
            "<a:x>".repeat(depth),
            "</a:x>".repeat(depth)
        );
        let m = meta(&deep);
        assert_eq!(m.len(), MAX_DEPTH);
        assert!(m.truncated());

        // Huge text and attribute values: cut, on a character boundary.
        let huge = "é".repeat(4 << 20);
        let m = meta(&format!(
            "<a:owner xmlns:a='{ACME}'><a:user id='{huge}'>{huge}</a:user></a:owner>"
        ));
        let text = m.lookup(ACME, &["owner", "user"], None).unwrap();
        assert!(text.len() <= MAX_VALUE_BYTES && text.len() >= MAX_VALUE_BYTES - 1);
        assert!(text.chars().all(|c| c == 'é'));
        assert!(
            m.lookup(ACME, &["owner", "user"], Some("id"))
                .unwrap()
                .len()
                <= MAX_VALUE_BYTES
        );

        // Many elements, each with many attributes and some text.
        let attrs: String = (0..100)
            .map(|i| format!(" k{i}='{}'", "v".repeat(50)))
            .collect();
        let wide = format!(
            "<a:owner xmlns:a='{ACME}'>{}</a:owner>",
            format!("<a:user{attrs}>{}</a:user>", "t".repeat(500)).repeat(1000)
        );
        let m = meta(&wide);
        assert!(m.len() <= MAX_NODES);
        assert!(m.bytes() <= MAX_BYTES, "{}", m.bytes());
        assert!(m.truncated());
        // What was kept still answers.
        assert_eq!(
            m.lookup(ACME, &["owner", "user"], Some("k0")),
            Some(&*"v".repeat(50))
        );

        // Many namespaces: each costs its URI, within the same budget.
        let many: String = (0..10_000)
            .map(|i| format!("<n:e xmlns:n='urn:{i}:{}'/>", "u".repeat(100)))
            .collect();
        let m = meta(&many);
        assert!(m.bytes() <= MAX_BYTES);
        assert!(m.namespaces.len() <= MAX_NODES);
    }

    #[test]
    fn no_metadata_is_empty() {
        let d = parse_libvirt_status(b"<domain><name>x</name></domain>").unwrap();
        assert!(d.metadata.is_empty());
        assert_eq!(d.metadata.lookup(ACME, &["owner"], None), None);
    }
}
