//! The `cmdline` owner source: a regular expression with named groups over
//! the hypervisor's command line or the VM's name, for platforms that
//! encode the owner there (`-name guest=u-alice--web1`).
//!
//! Reads: [`VmFacts::process`]'s command line (arguments joined by spaces)
//! or [`VmFacts::name`]. Emits: the groups `user` and `project` as names,
//! `user_id` and `project_id` as ids; an empty or absent group says
//! nothing. The group `vm` is accepted and not used: this source reads each
//! VM's own text, so the row is always for that VM. Off unless `pattern`
//! is set. An invalid pattern, or one with none of the owner groups, is a
//! config error at load (`owners.cmdline.pattern: ...`); a VM whose text
//! does not match gets no row.

use regex::Regex;
use serde::{Deserialize, Deserializer};

use super::{FactSource, OwnersConfig, Source, VmFacts};
use crate::model::Owner;

/// The named groups that fill an owner field.
const GROUPS: [&str; 4] = ["user", "user_id", "project", "project_id"];

/// `[owners.cmdline]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Off when absent.
    #[serde(deserialize_with = "pattern")]
    pub pattern: Option<Regex>,
    /// What the pattern is matched against.
    pub over: Over,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Over {
    /// The hypervisor's arguments joined by spaces.
    #[default]
    Cmdline,
    /// The VM name (libvirt domain name, QEMU `-name`, ...).
    Name,
}

impl Config {
    /// Whether the source is on and matches over the command line (then
    /// discovery keeps each VM's; else it does not hold them).
    pub fn reads_command_lines(&self) -> bool {
        self.pattern.is_some() && self.over == Over::Cmdline
    }
}

fn pattern<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Regex>, D::Error> {
    let text = String::deserialize(d)?;
    compile(&text).map(Some).map_err(serde::de::Error::custom)
}

/// Compiles a pattern and checks it can say something.
pub fn compile(text: &str) -> Result<Regex, String> {
    let re = Regex::new(text).map_err(|e| e.to_string())?;
    if !re.capture_names().flatten().any(|n| GROUPS.contains(&n)) {
        return Err(format!(
            "the pattern has none of the named groups {}",
            GROUPS.join(", ")
        ));
    }
    Ok(re)
}

pub fn start(cfg: &OwnersConfig) -> Option<Source> {
    let c = &cfg.cmdline;
    let re = c.pattern.clone()?;
    Some(Source::Facts(Box::new(Cmdline { re, over: c.over })))
}

pub struct Cmdline {
    re: Regex,
    over: Over,
}

impl FactSource for Cmdline {
    fn row(&self, vm: &VmFacts<'_>) -> Option<Owner> {
        let text = match self.over {
            Over::Cmdline => vm.process?.command_line.as_str(),
            Over::Name => vm.name,
        };
        let caps = self.re.captures(text)?;
        let group = |name: &str| {
            caps.name(name)
                .map(|m| m.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let owner = Owner {
            user_id: group("user_id"),
            user_name: group("user"),
            project_id: group("project_id"),
            project_name: group("project"),
        };
        (owner != Owner::default()).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::discovery::ProcVm;

    fn source(toml: &str) -> Cmdline {
        let cfg: OwnersConfig = toml::from_str(toml).unwrap();
        Cmdline {
            re: cfg.cmdline.pattern.unwrap(),
            over: cfg.cmdline.over,
        }
    }

    fn process(command_line: &str) -> ProcVm {
        ProcVm {
            pid: 7,
            starttime_ticks: 1,
            cmdline: vmscope_proc::parse_vm_cmdline(&["qemu-system-x86_64".to_owned()]).unwrap(),
            command_line: command_line.to_owned(),
        }
    }

    fn facts<'a>(name: &'a str, p: Option<&'a ProcVm>) -> VmFacts<'a> {
        VmFacts {
            id: "id",
            uuid: None,
            name,
            pid: 7,
            process: p,
            libvirt: None,
        }
    }

    /// Discovery keeps the joined command lines only for a pattern over
    /// them.
    #[test]
    fn only_a_pattern_over_the_command_line_reads_command_lines() {
        let cfg = |toml: &str| toml::from_str::<OwnersConfig>(toml).unwrap().cmdline;
        assert!(
            !cfg("").reads_command_lines(),
            "no pattern: the source is off"
        );
        assert!(cfg("[cmdline]\npattern = '(?P<user>u-[a-z]+)'").reads_command_lines());
        assert!(
            !cfg("[cmdline]\nover = 'name'\npattern = '(?P<user>u-[a-z]+)'").reads_command_lines()
        );
    }

    #[test]
    fn captures_user_and_project_from_the_vm_name() {
        let s = source(
            "[cmdline]\nover = \"name\"\npattern = '^u-(?P<user>[a-z]+)--(?:p-(?P<project>[a-z]+)--)?(?P<vm>.+)$'",
        );
        assert_eq!(
            s.row(&facts("u-alice--p-lab--web1", None)),
            Some(Owner {
                user_name: Some("alice".into()),
                project_name: Some("lab".into()),
                ..Owner::default()
            })
        );
        // An optional group that did not take part says nothing.
        assert_eq!(
            s.row(&facts("u-bob--web2", None)),
            Some(Owner {
                user_name: Some("bob".into()),
                ..Owner::default()
            })
        );
        assert_eq!(s.row(&facts("web3", None)), None);
    }

    #[test]
    fn captures_ids_from_the_command_line() {
        let s = source(
            "[cmdline]\npattern = 'owner=(?P<user_id>[0-9a-f-]+)(?:,tenant=(?P<project_id>[0-9a-f-]*))?'",
        );
        let p =
            process("qemu-system-x86_64 -name guest=web1 -smbios type=11,value=owner=42ab,tenant=");
        assert_eq!(
            s.row(&facts("web1", Some(&p))),
            Some(Owner {
                user_id: Some("42ab".into()),
                ..Owner::default()
            })
        );
        // No process record (a libvirt-only VM): no command line to read.
        assert_eq!(s.row(&facts("web1", None)), None);
    }

    #[test]
    fn bad_patterns_are_config_errors_naming_the_problem() {
        let err = |t: &str| toml::from_str::<OwnersConfig>(t).unwrap_err().to_string();
        assert!(err("[cmdline]\npattern = '(?P<user>'").contains("regex parse error"));
        assert!(err("[cmdline]\npattern = '(?P<who>.+)'").contains("none of the named groups"));
        assert!(err("[cmdline]\nover = 'env'").contains("unknown variant"));
    }

    #[test]
    fn off_unless_a_pattern_is_set() {
        assert!(start(&OwnersConfig::default()).is_none());
        let on: OwnersConfig = toml::from_str("[cmdline]\npattern = '(?P<user>.+)'").unwrap();
        assert!(start(&on).is_some());
    }
}
