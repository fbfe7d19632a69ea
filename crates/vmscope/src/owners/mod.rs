//! Owner sources: who each VM belongs to, from wherever the platform keeps it.
//!
//! Reads: per VM, what discovery already knows ([`VmFacts`]: ids, name,
//! PID, command line, the libvirt domain with its Nova metadata), and the
//! latest map each fetched source published. Emits: one [`Owner`] per VM,
//! set on [`VmStats::owner`] by [`Owners::resolve`] once per tick.
//!
//! Two flavours of source, one table ([`SOURCES`]), one precedence:
//! - **facts** ([`FactSource`]): a pure function of one VM's facts, no IO
//!   (`nova`: libvirt's Nova metadata; `libvirt`: configured paths in
//!   another platform's `<metadata>` element; `cmdline`: a regex over the
//!   command line or VM name). Evaluated at tick time, only for VMs whose facts or
//!   whose sources' maps changed since the last tick.
//! - **fetched** ([`OwnerSource`]): reads the platform's records (a file,
//!   a database, an HTTP endpoint: the owners issue) on its own thread, its
//!   own interval and timeout ([`runner`]), and publishes its latest
//!   [`OwnerMap`]. The tick only takes the newest published map and never
//!   waits for a source: a refresh that hangs or fails leaves the last good
//!   map in place and is counted in the source's [`Health`].
//!
//! Precedence is the table's order, per field ([`fill`]): a source lower in
//! the list fills only the fields the sources above it left empty.
//!
//! Failure: nothing here fails the tick. Bad configuration (an invalid
//! pattern) is a config error at load, naming the key.
//!
//! Adding a source = one file here with its `Config` struct and a
//! `fn start(&OwnersConfig) -> Option<Source>`, one field in
//! [`OwnersConfig`], one line in [`SOURCES`].

pub mod cmdline;
pub mod file;
pub mod http;
pub mod libvirt;
pub mod map;
pub mod metrics;
pub mod nova;
pub mod redis;
pub mod resolve;
pub mod runner;
pub mod sql;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vmscope_proc::LibvirtDomain;

use crate::discovery::ProcVm;
use crate::model::Owner;
#[cfg(doc)]
use crate::model::VmStats;
use crate::outbound::Secret;

pub use map::{DaysHistogram, Inventory, OwnerMap, VmKey};
pub use metrics::OwnerSourceMetrics;
pub use resolve::{Owners, fill};
pub use runner::{FetchError, Fetched, Health, OwnerSource, RunOptions};

/// `[owners]`: the precedence, the cardinality cap and one sub-table per
/// source, keyed by the source's name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnersConfig {
    /// Precedence, highest first, by source name. Enabled sources not
    /// listed follow in [`SOURCES`] order; empty = [`SOURCES`] order.
    pub order: Vec<String>,
    /// Owners of each kind (users, projects) with series of their own; the
    /// rest are summed into one `__other__` series.
    pub max_owners: usize,
    pub nova: nova::Config,
    pub libvirt: libvirt::Config,
    pub file: file::Config,
    pub sql: sql::Config,
    pub redis: redis::Config,
    pub http: http::Config,
    pub cmdline: cmdline::Config,
    /// procfs as `[paths] proc` says (not a key of `[owners]`: the
    /// collector sets it before starting the sources), for sources that
    /// check a PID the platform wrote down.
    #[serde(skip)]
    pub proc_root: PathBuf,
}

impl Default for OwnersConfig {
    fn default() -> Self {
        OwnersConfig {
            order: Vec::new(),
            max_owners: 1000,
            nova: nova::Config::default(),
            libvirt: libvirt::Config::default(),
            file: file::Config::default(),
            sql: sql::Config::default(),
            redis: redis::Config::default(),
            http: http::Config::default(),
            cmdline: cmdline::Config::default(),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl OwnersConfig {
    /// Errors name the key (`owners.order: ...`).
    pub fn validate(&self) -> Result<(), String> {
        for (i, name) in self.order.iter().enumerate() {
            if !SOURCES.iter().any(|s| s.name == name) {
                let known: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
                return Err(format!(
                    "owners.order: {name:?} is not an owner source (known: {})",
                    known.join(", ")
                ));
            }
            if self.order[..i].contains(name) {
                return Err(format!("owners.order: {name:?} is listed twice"));
            }
        }
        if self.max_owners == 0 {
            return Err("owners.max_owners: must be at least 1".to_owned());
        }
        self.libvirt.validate()?;
        self.file.validate()?;
        self.sql.validate()?;
        self.redis.validate()?;
        self.http.validate()
    }

    /// [`SOURCES`] in the configured precedence, highest first.
    pub fn precedence(&self) -> Vec<&'static SourceSpec> {
        let mut specs: Vec<&'static SourceSpec> = self
            .order
            .iter()
            .filter_map(|n| SOURCES.iter().find(|s| s.name == n))
            .collect();
        for s in SOURCES {
            if !specs.iter().any(|t| t.name == s.name) {
                specs.push(s);
            }
        }
        specs
    }
}

/// A source's URL from `url`, or from the environment variable `url_env`
/// names (`env` reads the environment: a parameter so that tests need not
/// set variables); `Ok(None)` when neither is set. Errors name the key
/// (`owners.<source>.url_env: ...`) and never the URL.
pub fn url_or_env(
    source: &str,
    url: Option<&Secret>,
    url_env: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, String> {
    match (url, url_env) {
        (Some(_), Some(_)) => Err(format!(
            "owners.{source}.url_env: set url or url_env, not both"
        )),
        (Some(url), None) => Ok(Some(url.clone())),
        (None, Some(var)) => env(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| Some(Secret::new(v.trim())))
            .ok_or_else(|| {
                format!("owners.{source}.url_env: the environment variable {var} is not set")
            }),
        (None, None) => Ok(None),
    }
}

/// What the tick knows about one VM, without IO: the keys a fetched map is
/// looked up by and the facts a [`FactSource`] reads.
#[derive(Debug, Clone, Copy)]
pub struct VmFacts<'a> {
    /// The exported `vm_id` (the UUID when there is one).
    pub id: &'a str,
    /// The UUID, lowercase.
    pub uuid: Option<&'a str>,
    pub name: &'a str,
    pub pid: u32,
    /// The hypervisor process as the process scan read it.
    pub process: Option<&'a ProcVm>,
    /// libvirt's status XML for the domain.
    pub libvirt: Option<&'a LibvirtDomain>,
}

/// A source that answers from one VM's facts alone (no IO, cheap enough
/// for the collector thread).
pub trait FactSource: Send {
    /// The owner row this source gives the VM; `None` when it says nothing.
    fn row(&self, vm: &VmFacts<'_>) -> Option<Owner>;
}

/// What one line of [`SOURCES`] starts.
pub enum Source {
    Facts(Box<dyn FactSource>),
    /// Run by [`runner::spawn`] on its own thread.
    Fetched(Box<dyn OwnerSource>, RunOptions),
}

/// One owner source: its name (= its key under `[owners]`) and how to
/// start it from the configuration (`None`: not enabled).
pub struct SourceSpec {
    pub name: &'static str,
    pub start: fn(&OwnersConfig) -> Option<Source>,
}

/// Every owner source, in precedence order (first wins, per field).
pub const SOURCES: &[SourceSpec] = &[
    SourceSpec {
        name: "nova",
        start: nova::start,
    },
    // A platform's own element in <metadata>, beside Nova's.
    SourceSpec {
        name: "libvirt",
        start: libvirt::start,
    },
    // The platform's own records before a pattern's guess.
    SourceSpec {
        name: "file",
        start: file::start,
    },
    SourceSpec {
        name: "sql",
        start: sql::start,
    },
    SourceSpec {
        name: "redis",
        start: redis::start,
    },
    SourceSpec {
        name: "http",
        start: http::start,
    },
    SourceSpec {
        name: "cmdline",
        start: cmdline::start,
    },
];

/// Default refresh interval and timeout of a fetched source, for the
/// sources that come with the owners issue.
pub const DEFAULT_RUN: RunOptions = RunOptions {
    every: Duration::from_secs(60),
    timeout: Duration::from_secs(10),
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(toml: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        crate::config::Config::load_with_env(Some(&p), std::iter::empty())
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = load("[owners.cmdline]\npattern = '(?P<user>'\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("owners.cmdline.pattern"), "{e}");
        let e = load("[owners.ldap]\n").unwrap_err().to_string();
        assert!(e.contains("ldap"), "{e}");
        let cfg = load("[owners.nova]\nenabled = false\n[owners.cmdline]\npattern = '(?P<user>.+)'\nover = 'name'\n").unwrap();
        assert!(!cfg.owners.nova.enabled);
        assert_eq!(cfg.owners.cmdline.over, cmdline::Over::Name);
        let e = load("[owners.libvirt]\nnamespace = 'urn:x'\nuser_id = 'owner//user'\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("owners.libvirt.user_id"), "{e}");
        let e = load("[owners.libvirt]\nuser_id = 'owner/user'\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("owners.libvirt.namespace"), "{e}");
    }

    #[test]
    fn source_names_are_unique_config_keys() {
        let names: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        // Each name is a key of `[owners]` (deny_unknown_fields holds the
        // other direction).
        for name in names {
            let toml = format!("[{name}]");
            assert!(
                toml::from_str::<OwnersConfig>(&toml).is_ok(),
                "[owners.{name}] is not a config key"
            );
        }
    }

    #[test]
    fn order_sets_the_precedence_and_names_the_bad_key() {
        let cfg = load("[owners]\norder = ['cmdline', 'file']\n").unwrap();
        let names: Vec<&str> = cfg.owners.precedence().iter().map(|s| s.name).collect();
        // The listed ones first, then the rest in table order.
        let rest = SOURCES
            .iter()
            .map(|s| s.name)
            .filter(|n| !["cmdline", "file"].contains(n));
        let want: Vec<&str> = ["cmdline", "file"].into_iter().chain(rest).collect();
        assert_eq!(names, want);
        assert_eq!(names[2], "nova");
        let e = load("[owners]\norder = ['ldap']\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("owners.order"), "{e}");
        let e = load("[owners]\norder = ['file', 'file']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = load("[owners]\nmax_owners = 0\n").unwrap_err().to_string();
        assert!(e.starts_with("owners.max_owners"), "{e}");
    }

    #[test]
    fn defaults_are_todays_behaviour_nova_only() {
        let cfg = OwnersConfig::default();
        let on: Vec<&str> = SOURCES
            .iter()
            .filter(|s| (s.start)(&cfg).is_some())
            .map(|s| s.name)
            .collect();
        assert_eq!(on, ["nova"]);
    }
}
