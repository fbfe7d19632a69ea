//! libvirt's domain XML: the live status file `/run/libvirt/qemu/<name>.xml`
//! (root `<domstatus>`), or a plain `<domain>` definition.
//!
//! Emits [`LibvirtDomain`]: name, UUID, QEMU PID, state and reason, vCPU
//! count and thread ids, memory, host TAP names, OpenStack Nova metadata
//! (owner, project, flavor) when present, and every `<metadata>` element
//! as a bounded [`Metadata`] tree (for owner paths in other namespaces). This file is readable without any
//! libvirt client library.
//!
//! Fails when the input is not UTF-8 or not XML, the root is neither
//! `<domstatus>` nor `<domain>`, `<name>` is missing, or `pid`, `<vcpu>` or
//! `<memory>` (with its `unit`) hold values that do not parse. vCPU entries
//! and interfaces that lack the attributes used are skipped. DTDs are refused
//! (roxmltree's default), so entity expansion cannot blow up, and so are
//! documents nested deeper than [`MAX_XML_DEPTH`] (roxmltree recurses per
//! level: a few thousand levels would overflow the collector's stack).

use roxmltree::{Document, Node};

use crate::error::{FileKind, ParseError, field_u32, field_u64};
use crate::metadata::Metadata;

const KIND: FileKind = FileKind::LibvirtStatus;

/// Namespace prefix of Nova's `<nova:instance>` metadata, any version (1.0, 1.1, ...).
pub const NOVA_NAMESPACE_PREFIX: &str = "http://openstack.org/xmlns/libvirt/nova/";

/// The deepest element nesting parsed (libxml2's default limit, which
/// libvirt parses with, is 256).
pub const MAX_XML_DEPTH: usize = 256;

/// One libvirt domain as its XML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LibvirtDomain {
    pub name: String,
    pub uuid: Option<String>,
    /// QEMU's PID (`<domstatus pid=...>`); `None` for a plain `<domain>`.
    pub pid: Option<u32>,
    /// `running`, `paused`, ... (`<domstatus state=...>`).
    pub state: Option<String>,
    /// Why it is in that state (`booted`, `user`, `migrated`, ...).
    pub reason: Option<String>,
    /// vCPUs online: `<vcpu current=...>` if set, else the `<vcpu>` count.
    pub vcpus: Option<u32>,
    /// `<memory>` (the maximum the guest may have, balloon included), in bytes.
    pub memory_bytes: Option<u64>,
    /// `(vcpu id, thread id)` of each vCPU thread of the running QEMU.
    pub vcpu_tids: Vec<(u32, u32)>,
    /// Host-side device names (`<target dev=...>`) of the interfaces, in order.
    pub interfaces: Vec<String>,
    pub nova: Option<NovaMeta>,
    /// Everything under `<metadata>`, bounded (see [`Metadata`]).
    pub metadata: Metadata,
}

/// OpenStack Nova's metadata on an instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NovaMeta {
    /// The name the user gave the instance (the libvirt name is `instance-XXXXXXXX`).
    pub instance_name: Option<String>,
    pub flavor: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
}

/// Parse a libvirt status or domain XML.
pub fn parse_libvirt_status(buf: &[u8]) -> Result<LibvirtDomain, ParseError> {
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty { kind: KIND });
    }
    let text =
        std::str::from_utf8(buf).map_err(|source| ParseError::NotUtf8 { kind: KIND, source })?;
    if too_deep(text.as_bytes(), MAX_XML_DEPTH) {
        return Err(ParseError::Malformed {
            kind: KIND,
            what: "elements nested deeper than 256 levels",
        });
    }
    let doc = Document::parse(text).map_err(|source| ParseError::Xml { kind: KIND, source })?;
    let root = doc.root_element();
    let (domain, status) = match root.tag_name().name() {
        "domstatus" => (
            child(root, "domain").ok_or(ParseError::missing(KIND, "domain"))?,
            Some(root),
        ),
        "domain" => (root, None),
        _ => {
            return Err(ParseError::Malformed {
                kind: KIND,
                what: "root element is neither <domstatus> nor <domain>",
            });
        }
    };

    let name = child_text(domain, "name")
        .ok_or(ParseError::missing(KIND, "name"))?
        .to_string();
    let mut dom = LibvirtDomain {
        name,
        uuid: child_text(domain, "uuid").map(str::to_string),
        ..Default::default()
    };

    if let Some(vcpu) = child(domain, "vcpu") {
        let text = match vcpu.attribute("current") {
            Some(cur) => cur,
            None => vcpu.text().unwrap_or("").trim(),
        };
        dom.vcpus = Some(field_u32(KIND, "vcpu", text.as_bytes())?);
    }
    if let Some(mem) = child(domain, "memory") {
        let value = field_u64(KIND, "memory", mem.text().unwrap_or("").trim().as_bytes())?;
        let unit = mem.attribute("unit").unwrap_or("KiB");
        let scale = unit_scale(unit)
            .ok_or_else(|| ParseError::invalid(KIND, "memory unit", unit.as_bytes()))?;
        dom.memory_bytes = Some(value.checked_mul(scale).ok_or_else(|| {
            ParseError::invalid(KIND, "memory", mem.text().unwrap_or("").as_bytes())
        })?);
    }
    if let Some(devices) = child(domain, "devices") {
        for iface in elements(devices).filter(|n| n.has_tag_name("interface")) {
            if let Some(dev) = child(iface, "target")
                .and_then(|t| t.attribute("dev"))
                .filter(|d| !d.is_empty())
            {
                dom.interfaces.push(dev.to_string());
            }
        }
    }
    if let Some(meta) = child(domain, "metadata") {
        dom.nova = elements(meta)
            .find(|n| {
                n.tag_name().name() == "instance"
                    && n.tag_name()
                        .namespace()
                        .is_some_and(|ns| ns.starts_with(NOVA_NAMESPACE_PREFIX))
            })
            .map(nova);
        dom.metadata = Metadata::from_element(meta);
    }

    if let Some(st) = status {
        if let Some(pid) = st.attribute("pid") {
            dom.pid = Some(field_u32(KIND, "pid", pid.as_bytes())?);
        }
        dom.state = st.attribute("state").map(str::to_string);
        dom.reason = st.attribute("reason").map(str::to_string);
        if let Some(vcpus) = child(st, "vcpus") {
            for v in elements(vcpus).filter(|n| n.has_tag_name("vcpu")) {
                let id = v.attribute("id").and_then(|s| s.parse::<u32>().ok());
                let tid = v.attribute("pid").and_then(|s| s.parse::<u32>().ok());
                if let (Some(id), Some(tid)) = (id, tid) {
                    dom.vcpu_tids.push((id, tid));
                }
            }
        }
    }
    Ok(dom)
}

/// True when elements nest deeper than `max`: a linear scan of tags that
/// skips comments, CDATA, processing instructions and quoted attribute
/// values, so that roxmltree (which recurses per level) is never handed a
/// document that would exhaust the stack. Malformed input is left to
/// roxmltree to reject.
fn too_deep(b: &[u8], max: usize) -> bool {
    let find = |from: usize, pat: &[u8]| {
        b.get(from..)
            .and_then(|r| r.windows(pat.len()).position(|w| w == pat))
            .map_or(b.len(), |p| from + p + pat.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(off) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'<')) {
        let at = i + off;
        let rest = &b[at..];
        if rest.starts_with(b"<!--") {
            i = find(at + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(at + 9, b"]]>");
        } else if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            i = find(at + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = at + 2;
        } else {
            // A start tag: its end is the first `>` outside quotes.
            let mut j = at + 1;
            let mut quote = None;
            while let Some(&c) = b.get(j) {
                match quote {
                    None if c == b'"' || c == b'\'' => quote = Some(c),
                    None if c == b'>' => break,
                    Some(q) if c == q => quote = None,
                    _ => {}
                }
                j += 1;
            }
            if b.get(j.wrapping_sub(1)) != Some(&b'/') {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            i = j + 1;
        }
    }
    false
}

fn nova(inst: Node<'_, '_>) -> NovaMeta {
    // Children share the instance's namespace; match by local name within it.
    let ns = inst.tag_name().namespace();
    let find = |parent, name| ns_child(parent, name, ns);
    let text = |n: Node<'_, '_>| {
        n.text()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let attr =
        |n: Node<'_, '_>, a: &str| n.attribute(a).filter(|s| !s.is_empty()).map(str::to_string);
    let mut m = NovaMeta {
        instance_name: find(inst, "name").and_then(text),
        flavor: find(inst, "flavor").and_then(|f| attr(f, "name")),
        ..Default::default()
    };
    if let Some(owner) = find(inst, "owner") {
        if let Some(u) = find(owner, "user") {
            m.user_id = attr(u, "uuid");
            m.user_name = text(u);
        }
        if let Some(p) = find(owner, "project") {
            m.project_id = attr(p, "uuid");
            m.project_name = text(p);
        }
    }
    m
}

fn ns_child<'a, 'i>(parent: Node<'a, 'i>, name: &str, ns: Option<&str>) -> Option<Node<'a, 'i>> {
    elements(parent).find(|n| n.tag_name().name() == name && n.tag_name().namespace() == ns)
}

fn elements<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(Node::is_element)
}

/// First child element with this name and no namespace (libvirt's own elements).
fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    elements(n).find(|c| c.tag_name().name() == name && c.tag_name().namespace().is_none())
}

fn child_text<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Bytes per unit for libvirt's `unit` attribute, as libvirt's
/// `virScaleInteger` reads it: `b`/`bytes`; `k`/`KiB` (1024) vs `KB` (1000);
/// up to exbibytes; case-insensitive.
fn unit_scale(unit: &str) -> Option<u64> {
    let u = unit.to_ascii_lowercase();
    if matches!(u.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = u.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u64 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    base.checked_pow(power)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like libvirt 9.0's status file for a Nova-managed KVM domain.
    const STATUS: &str = include_str!("../testdata/libvirt-status-nova.xml");

    #[test]
    fn libvirt9_status_with_nova() {
        let d = parse_libvirt_status(STATUS.as_bytes()).unwrap();
        assert_eq!(d.name, "instance-0000002a");
        assert_eq!(
            d.uuid.as_deref(),
            Some("9d1b8a33-52c7-4f5e-9f6a-0c2d3e4f5a6b")
        );
        assert_eq!(d.pid, Some(48213));
        assert_eq!(d.state.as_deref(), Some("running"));
        assert_eq!(d.reason.as_deref(), Some("booted"));
        assert_eq!(d.vcpus, Some(2));
        assert_eq!(d.memory_bytes, Some(2 << 30));
        assert_eq!(d.vcpu_tids, [(0, 48227), (1, 48228)]);
        assert_eq!(d.interfaces, ["tap1c2d3e4f-5a", "vmtap7"]);
        assert_eq!(
            d.nova,
            Some(NovaMeta {
                instance_name: Some("web-frontend-1".into()),
                flavor: Some("m1.small".into()),
                user_id: Some("5f2b6c0e3a1d4e7f8a9b0c1d2e3f4a5b".into()),
                user_name: Some("alice".into()),
                project_id: Some("0a1b2c3d4e5f46a7b8c9d0e1f2a3b4c5".into()),
                project_name: Some("demo".into()),
            })
        );
    }

    #[test]
    fn plain_domain_and_units() {
        let xml = "<domain type='kvm'><name>lab</name><memory unit='MiB'>512</memory><vcpu current='1'>4</vcpu>\
                   <metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.0'><nova:name>n</nova:name></nova:instance></metadata></domain>";
        let d = parse_libvirt_status(xml.as_bytes()).unwrap();
        assert_eq!(d.name, "lab");
        assert_eq!(
            (d.pid, d.state.as_deref(), d.uuid.as_deref()),
            (None, None, None)
        );
        assert_eq!(d.memory_bytes, Some(512 << 20));
        assert_eq!(d.vcpus, Some(1));
        assert_eq!(d.nova.and_then(|n| n.instance_name).as_deref(), Some("n"));

        let mem = |unit: &str| {
            let xml = format!("<domain><name>x</name><memory unit='{unit}'>2</memory></domain>");
            parse_libvirt_status(xml.as_bytes()).map(|d| d.memory_bytes)
        };
        assert_eq!(mem("b").unwrap(), Some(2));
        assert_eq!(mem("bytes").unwrap(), Some(2));
        assert_eq!(mem("KB").unwrap(), Some(2000));
        assert_eq!(mem("k").unwrap(), Some(2048));
        assert_eq!(mem("KiB").unwrap(), Some(2048));
        assert_eq!(mem("M").unwrap(), Some(2 << 20));
        assert_eq!(mem("GB").unwrap(), Some(2_000_000_000));
        assert_eq!(mem("G").unwrap(), Some(2 << 30));
        assert_eq!(mem("GiB").unwrap(), Some(2 << 30));
        assert_eq!(mem("TiB").unwrap(), Some(2 << 40));
        assert!(matches!(
            mem("parsecs"),
            Err(ParseError::InvalidValue {
                field: "memory unit",
                ..
            })
        ));
        assert_eq!(mem("EiB").unwrap(), Some(2 << 60));
        let huge = b"<domain><name>x</name><memory unit='EiB'>16</memory></domain>";
        assert!(matches!(
            parse_libvirt_status(huge),
            Err(ParseError::InvalidValue {
                field: "memory",
                ..
            })
        ));
        // No unit attribute means KiB.
        let d = parse_libvirt_status(b"<domain><name>x</name><memory>4</memory></domain>").unwrap();
        assert_eq!(d.memory_bytes, Some(4096));
    }

    #[test]
    fn foreign_metadata_is_not_nova() {
        let xml = "<domain><name>x</name><metadata><nova:instance xmlns:nova='http://example.com/nova/1.1'>\
                   <nova:name>n</nova:name></nova:instance></metadata></domain>";
        assert_eq!(parse_libvirt_status(xml.as_bytes()).unwrap().nova, None);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_libvirt_status(b""),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse_libvirt_status(b"\xff<domain/>"),
            Err(ParseError::NotUtf8 { .. })
        ));
        assert!(matches!(
            parse_libvirt_status(b"<domain><name>x</name>"),
            Err(ParseError::Xml { .. })
        ));
        assert!(matches!(
            parse_libvirt_status(b"<network/>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_libvirt_status(b"<domain/>"),
            Err(ParseError::MissingField { field: "name", .. })
        ));
        assert!(matches!(
            parse_libvirt_status(b"<domstatus pid='1'/>"),
            Err(ParseError::MissingField {
                field: "domain",
                ..
            })
        ));
        assert!(matches!(
            parse_libvirt_status(
                b"<domstatus pid='-1'><domain><name>x</name></domain></domstatus>"
            ),
            Err(ParseError::InvalidValue { field: "pid", .. })
        ));
        assert!(matches!(
            parse_libvirt_status(b"<domain><name>x</name><vcpu>two</vcpu></domain>"),
            Err(ParseError::InvalidValue { field: "vcpu", .. })
        ));
        let dtd = b"<!DOCTYPE d [<!ENTITY a 'aaaa'>]><domain><name>&a;</name></domain>";
        assert!(matches!(
            parse_libvirt_status(dtd),
            Err(ParseError::Xml { .. })
        ));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused_not_a_stack_overflow() {
        let nest = |depth: usize| {
            format!(
                "<domain><name>x</name><!-- <a><a><a> --><metadata x='a>b'>{}<![CDATA[<a><a>]]>{}</metadata></domain>",
                "<a k='/'><b/>".repeat(depth),
                "</a>".repeat(depth)
            )
        };
        // <domain> and <metadata> are two levels.
        let ok = parse_libvirt_status(nest(MAX_XML_DEPTH - 2).as_bytes()).unwrap();
        assert_eq!(ok.name, "x");
        for depth in [MAX_XML_DEPTH - 1, 100_000] {
            assert!(matches!(
                parse_libvirt_status(nest(depth).as_bytes()),
                Err(ParseError::Malformed { .. })
            ));
        }
        // Unbalanced or cut input is not deep: roxmltree says what is wrong.
        assert!(!too_deep(b"</a></a><a", 1));
    }

    #[test]
    fn truncated_status_file() {
        // A status file read while libvirt rewrites it: an XML error, never a panic.
        for cut in (0..STATUS.len()).step_by(97) {
            let _ = parse_libvirt_status(&STATUS.as_bytes()[..cut]);
        }
        assert!(parse_libvirt_status(&STATUS.as_bytes()[..STATUS.len() / 2]).is_err());
    }
}
