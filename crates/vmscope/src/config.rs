//! Configuration: defaults, a TOML file, then `VMSCOPE_*` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Unknown keys are errors everywhere (a typo must not silently turn a
//! feature off). Nested keys in the environment use `__`:
//! `VMSCOPE_COLLECTORS__HOST_FILESYSTEM__TIMEOUT_SECS=2`. Secrets that other
//! modules read from the environment themselves are listed in
//! [`is_non_config_env`] and not treated as configuration keys.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::value::MapDeserializer;
use serde::de::{Error as _, IntoDeserializer, Unexpected, Visitor};
use serde::{Deserialize, Deserializer as _, Serialize};

use crate::host::Roots;

/// The default listen address: loopback only. 9847 is in the Prometheus
/// exporters' port range; the registry list itself is full.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9847";

/// The log filter variable: overrides `log.level` and is checked like it.
pub const LOG_ENV: &str = "VMSCOPE_LOG";

/// The seed platform's variable for `proxy.prometheus_url`, read when
/// neither the file nor `VMSCOPE_PROXY__PROMETHEUS_URL` sets the key.
pub const PROM_URL_ENV: &str = "PROM_URL";

/// Environment variables with the `VMSCOPE_` prefix that are not config
/// keys: the log filter, and the secrets the watchdog reads itself.
pub fn is_non_config_env(name: &str) -> bool {
    name == LOG_ENV || crate::alert::config::env_vars().contains(&name)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds to: an IP address and port.
    #[serde(deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// Collection interval (`"5s"`; was `interval_secs`).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub interval: Duration,
    pub paths: PathsConfig,
    pub discovery: DiscoveryConfig,
    pub collectors: CollectorsConfig,
    pub log: LogConfig,
    /// HTTP server limits and timeouts (see `crate::server`).
    pub http: crate::server::HttpConfig,
    /// Who owns each VM: the owner sources (owners/), in precedence order.
    pub owners: crate::owners::OwnersConfig,
    /// Sustained-threshold alerts and their sinks (see docs/watchdog.md).
    pub watchdog: crate::alert::WatchdogConfig,
    /// Where persistent state lives (see `crate::store::config`).
    pub store: crate::store::StoreConfig,
    /// The usage ledger (see docs/ledger.md).
    pub ledger: crate::ledger::LedgerConfig,
    /// remote_write and OTLP destinations (see docs/push.md).
    pub push: crate::push::PushConfig,
    /// The tenant query proxy and Grafana embedding (see docs/proxy.md).
    pub proxy: crate::proxy::ProxyConfig,
    /// (dotted key, variable) for every value set from the environment,
    /// sorted by variable; filled by the loader.
    #[serde(skip)]
    pub from_env: Vec<(String, String)>,
    /// Deprecated keys this configuration used, for the caller to warn
    /// about once logging is set up (the log settings are config too).
    #[serde(skip)]
    pub renamed_keys: Vec<RenamedKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            interval: Duration::from_secs(5),
            paths: PathsConfig::default(),
            discovery: DiscoveryConfig::default(),
            collectors: CollectorsConfig::default(),
            log: LogConfig::default(),
            http: crate::server::HttpConfig::default(),
            owners: crate::owners::OwnersConfig::default(),
            watchdog: crate::alert::WatchdogConfig::default(),
            store: crate::store::StoreConfig::default(),
            ledger: crate::ledger::LedgerConfig::default(),
            push: crate::push::PushConfig::default(),
            proxy: crate::proxy::ProxyConfig::default(),
            from_env: Vec::new(),
            renamed_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub run: PathBuf,
    pub rootfs: PathBuf,
}

impl From<Roots> for PathsConfig {
    fn from(r: Roots) -> Self {
        PathsConfig {
            proc: r.proc,
            sys: r.sys,
            run: r.run,
            rootfs: r.rootfs,
        }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        Roots::default().into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Find hypervisor processes in /proc.
    pub process: bool,
    /// Read libvirt's live status files in `<run>/libvirt/qemu`.
    pub libvirt: bool,
    /// Re-classify every process this often (`"5m"`; was `rescan_secs`).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub rescan: Duration,
    /// Learn of new processes from the kernel's process events instead of
    /// listing /proc every tick, and of libvirt status changes from inotify
    /// (`"auto"`: where the agent may; `"off"`: always list).
    pub process_events: ProcessEvents,
}

/// `discovery.process_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvents {
    /// Events (and inotify) when available, else listing.
    Auto,
    /// Always list /proc and libvirt's status directory.
    Off,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            process: true,
            libvirt: true,
            rescan: Duration::from_secs(300),
            process_events: ProcessEvents::Auto,
        }
    }
}

/// The optional collectors. Each key is the collector's name (see
/// `collectors/mod.rs`): the same word as its file and as its `collector`
/// label on the `vmscope_collector_*` self-metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    /// Per-vCPU thread CPU and wait time.
    pub vm_vcpu: bool,
    /// Per-VM storage I/O from /proc/PID/io.
    pub vm_io: bool,
    /// TAP interface counters.
    pub vm_net: bool,
    /// Per-disk I/O and balloon memory from the hypervisor's own API.
    pub vm_devices: DevicesConfig,
    pub host_filesystem: FilesystemConfig,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        CollectorsConfig {
            vm_vcpu: true,
            vm_io: true,
            vm_net: true,
            vm_devices: DevicesConfig::default(),
            host_filesystem: FilesystemConfig::default(),
        }
    }
}

/// A key that was renamed: the old one is still read, with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenamedKey {
    /// Dotted path as it was: `collectors.disk`.
    pub old: &'static str,
    /// Dotted path to use instead: `collectors.vm_io`.
    pub new: &'static str,
}

impl std::fmt::Display for RenamedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "config key {} is deprecated: it is now {} (the old name still works for now)",
            self.old, self.new
        )
    }
}

/// `[collectors]` keys from before they were named after their collectors.
pub const RENAMED_COLLECTOR_KEYS: &[RenamedKey] = &[
    RenamedKey {
        old: "collectors.vcpu",
        new: "collectors.vm_vcpu",
    },
    RenamedKey {
        old: "collectors.disk",
        new: "collectors.vm_io",
    },
    RenamedKey {
        old: "collectors.network",
        new: "collectors.vm_net",
    },
    RenamedKey {
        old: "collectors.filesystem",
        new: "collectors.host_filesystem",
    },
];

/// Keys that moved to another section. They are not moved in the tree
/// like [`RENAMED_COLLECTOR_KEYS`]: the old field stays in its section's
/// struct so that a bad value is named by the key the user wrote (serde
/// names the path it deserializes), and `move_section_keys` carries the
/// value over afterwards.
pub const MOVED_STORE_PATH: RenamedKey = RenamedKey {
    old: crate::store::config::OLD_PATH_KEY,
    new: crate::store::config::PATH_KEY,
};

/// True when the merged tree (file and environment) sets `section.key`.
fn tree_has(tree: &mut Node, section: &str, key: &str) -> bool {
    let Node::Table(root) = tree.open_table() else {
        return false;
    };
    matches!(
        root.get_mut(section).map(Node::open_table),
        Some(Node::Table(t)) if t.contains_key(key)
    )
}

/// Carries `watchdog.state_db_path` over to `store.path` and reports it.
/// Both at once is an error, as for renamed keys.
fn move_section_keys(cfg: &mut Config, store_path_set: bool) -> Result<(), ConfigError> {
    let Some(path) = cfg.watchdog.state_db_path.take() else {
        return Ok(());
    };
    let r = MOVED_STORE_PATH;
    if store_path_set {
        return Err(ConfigError::Invalid(format!(
            "{}: set only {}, the new name of {}",
            r.old, r.new, r.old
        )));
    }
    cfg.store.path = Some(path);
    cfg.store.path_key = r.old;
    cfg.renamed_keys.push(r);
    Ok(())
}

/// How a renamed key's value becomes the new key's (env keys for messages).
type Convert = fn(&RenamedKey, Node, &[(String, String)]) -> Result<Node, ConfigError>;

/// Moves renamed keys of the merged tree (file and environment) to their new
/// names, turning each value with `convert`, and returns the ones found.
/// Both names at once is an error ([`env_wins`] says when it is not).
/// `env_keys` (dotted path, variable) follow the move, so an error in a
/// value still names its variable.
fn move_keys(
    tree: &mut Node,
    renamed: &[RenamedKey],
    env_keys: &mut [(String, String)],
    convert: Convert,
) -> Result<Vec<RenamedKey>, ConfigError> {
    let mut found = Vec::new();
    for r in renamed {
        let (parent, old) = r.old.rsplit_once('.').unwrap_or(("", r.old));
        let new = r.new.rsplit_once('.').map_or(r.new, |(_, n)| n);
        let Some(table) = table_at(tree, parent) else {
            continue;
        };
        let Some(value) = table.remove(old) else {
            continue;
        };
        if table.contains_key(new) {
            match env_wins(r, &value, env_keys) {
                Some(true) => {}
                Some(false) => {
                    found.push(*r);
                    continue;
                }
                None => return Err(both_names(r)),
            }
        }
        table.insert(new.to_string(), convert(r, value, env_keys)?);
        for (path, _) in env_keys.iter_mut() {
            if path == r.old || path.starts_with(&format!("{}.", r.old)) {
                *path = format!("{}{}", r.new, &path[r.old.len()..]);
            }
        }
        found.push(*r);
    }
    Ok(found)
}

/// A renamed key whose value means the same under its new name.
fn same_value(_: &RenamedKey, value: Node, _: &[(String, String)]) -> Result<Node, ConfigError> {
    Ok(value)
}

/// Both the old and the new name of a key are set. When one came from
/// the environment and the other from the file, the environment wins as it
/// always does: `Some(true)` keeps the old name's value, `Some(false)` the
/// new one's. Both in the same place (or a whole section, which would have
/// to be merged key by key) cannot be told apart: `None`.
fn env_wins(r: &RenamedKey, old_value: &Node, env_keys: &[(String, String)]) -> Option<bool> {
    if matches!(
        old_value,
        Node::Table(_) | Node::Toml(toml::Value::Table(_))
    ) {
        return None;
    }
    let from_env = |key: &str| env_keys.iter().any(|(p, _)| p == key);
    match (from_env(r.old), from_env(r.new)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

fn both_names(r: &RenamedKey) -> ConfigError {
    ConfigError::Invalid(format!(
        "{}: set only {}, the new name of {}",
        r.old, r.new, r.old
    ))
}

/// Keys that took a number of seconds before every duration in the file
/// became a humantime string (`"5s"`, `"1m 30s"`), as the watchdog's and the
/// HTTP server's always were. The old key still works, with a warning.
pub const SECONDS_KEYS: &[RenamedKey] = &[
    RenamedKey {
        old: "interval_secs",
        new: "interval",
    },
    RenamedKey {
        old: "discovery.rescan_secs",
        new: "discovery.rescan",
    },
    RenamedKey {
        old: "collectors.host_filesystem.timeout_secs",
        new: "collectors.host_filesystem.timeout",
    },
];

/// An old seconds key's number as the same duration in a humantime string.
/// Runs after the collector renames, so `[collectors.filesystem]
/// timeout_secs` arrives here as `collectors.host_filesystem.timeout_secs`.
fn seconds_to_duration(
    r: &RenamedKey,
    value: Node,
    env_keys: &[(String, String)],
) -> Result<Node, ConfigError> {
    let secs = match &value {
        Node::Toml(toml::Value::Integer(i)) => Some(*i as f64),
        Node::Toml(toml::Value::Float(f)) => Some(*f),
        Node::Env(s) => decimal(s),
        _ => None,
    }
    .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9);
    let Some(secs) = secs else {
        let var = env_keys
            .iter()
            .find(|(p, _)| p == r.old)
            .map(|(_, v)| format!(" (from environment variable {v})"))
            .unwrap_or_default();
        return Err(ConfigError::Invalid(format!(
            "{}: expected a number of seconds, at least 0 (or use {} = \"5s\"){var}",
            r.old, r.new
        )));
    };
    let text = humantime::format_duration(Duration::from_secs_f64(secs)).to_string();
    Ok(Node::Toml(toml::Value::String(text)))
}

/// The table at a dotted path of the merged tree (`""` is the root).
fn table_at<'a>(tree: &'a mut Node, path: &str) -> Option<&'a mut BTreeMap<String, Node>> {
    let mut node = tree.open_table();
    if !path.is_empty() {
        for seg in path.split('.') {
            let Node::Table(t) = node else { return None };
            node = t.get_mut(seg)?.open_table();
        }
    }
    match node {
        Node::Table(t) => Some(t),
        _ => None,
    }
}

/// A plain decimal number (`2`, `0.5`), as environment values are read.
fn decimal(s: &str) -> Option<f64> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
    if ok { t.parse().ok() } else { None }
}

/// `[collectors.vm_devices]`: the hypervisor API poller (`hypervisor/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    pub enabled: bool,
    /// How long one VM's whole conversation with its API (connect, every
    /// query) may take; capped at half the collection interval (`"2s"`).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
    /// VMs asked at the same time: a hung API holds one of them for up to
    /// `timeout`, the others go on.
    pub workers: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            enabled: true,
            timeout: Duration::from_secs(2),
            workers: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    pub enabled: bool,
    /// How long all `statvfs` calls of one tick may take together; capped
    /// at half the collection interval (`"1s"`; was `timeout_secs`).
    #[serde(deserialize_with = "crate::model::de_duration")]
    pub timeout: Duration,
    /// Filesystem types to skip, on top of pseudo and network filesystems.
    pub exclude_fstypes: Vec<String>,
    /// Mountpoints to skip, with everything below them.
    pub exclude_mountpoints: Vec<String>,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            enabled: true,
            timeout: Duration::from_secs(1),
            exclude_fstypes: Vec::new(),
            exclude_mountpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `vmscope=debug,warn`, ...
    pub level: String,
    pub format: LogFormat,
    /// `serve` also writes its log to this file (stderr keeps it too).
    pub file: Option<PathBuf>,
    /// The file is rotated before it would grow past this.
    pub max_size: ByteSize,
    /// Rotated files kept (`FILE.1` newest .. `FILE.keep`); 0: none.
    pub keep: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            file: None,
            // The seed libvirt exporter's rotation size.
            max_size: ByteSize(3 * 1024 * 1024),
            keep: 5,
        }
    }
}

/// A size in bytes, written as a number of bytes or with a unit: `3MiB`,
/// `512KiB`, `1GiB` (powers of 1024) or `3MB`, `500kB` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (write e.g. 3MiB, 500kB or 1048576)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (B, kB, MB, GB, KiB, MiB, GiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"3MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let cfg = Self::load_unvalidated(file, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and merges without the cross-field checks, for callers that
    /// apply command-line overrides first and then call [`Config::validate`].
    pub fn load_unvalidated(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_path_buf(),
                    source: e,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| {
                    ConfigError::Invalid(format!("{}: {}", path.display(), e.message()))
                })?
            }
            None => toml::Table::new(),
        };
        let mut prom_url = None;
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, v)| {
                if k == PROM_URL_ENV && !v.trim().is_empty() {
                    prom_url = Some(v.clone());
                }
                k.starts_with("VMSCOPE_")
            })
            .collect();
        // Sorted so that errors and `check-config`'s report do not depend on
        // the order of the process environment.
        vars.sort();
        let log_env = vars
            .iter()
            .find(|(k, _)| k == LOG_ENV)
            .map(|(_, v)| v.clone());
        vars.retain(|(k, _)| !is_non_config_env(k));
        let mut tree = Node::from_table(tree);
        let mut from_env = merge_env(&mut tree, &vars)?;
        let mut renamed = move_keys(&mut tree, RENAMED_COLLECTOR_KEYS, &mut from_env, same_value)?;
        renamed.extend(move_keys(
            &mut tree,
            SECONDS_KEYS,
            &mut from_env,
            seconds_to_duration,
        )?);
        let store_path_set = tree_has(&mut tree, "store", "path");
        let prom_url = prom_url.filter(|_| !tree_has(&mut tree, "proxy", "prometheus_url"));
        let mut cfg: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let from = env_source(&from_env, &key)
                .map(|var| format!(" (from environment variable {var})"))
                .unwrap_or_default();
            // `message()`, not `to_string()`: the latter appends "in `key`"
            // on a second line, and the key is already in front.
            let inner = e.into_inner();
            let inner = inner.message().trim_end();
            if key.is_empty() || key == "." {
                ConfigError::Invalid(format!("{inner}{from}"))
            } else {
                ConfigError::Invalid(format!("{key}: {inner}{from}"))
            }
        })?;
        if let Some(filter) = log_env {
            // VMSCOPE_LOG is `log.level` from the environment: checked by
            // `validate` like the file's value, never silently ignored.
            cfg.log.level = filter;
            from_env.push(("log.level".into(), LOG_ENV.into()));
        }
        if let Some(url) = prom_url {
            cfg.proxy.prometheus_url = url;
            from_env.push(("proxy.prometheus_url".into(), PROM_URL_ENV.into()));
        }
        cfg.from_env = from_env;
        cfg.renamed_keys = renamed;
        move_section_keys(&mut cfg, store_path_set)?;
        Ok(cfg)
    }

    /// Cross-field checks that serde cannot express. An error about a value
    /// that came from the environment names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_values().map_err(|e| match e {
            ConfigError::Invalid(m) => {
                let key = m.split(':').next().unwrap_or_default();
                match env_source(&self.from_env, key) {
                    Some(var) => {
                        ConfigError::Invalid(format!("{m} (from environment variable {var})"))
                    }
                    None => ConfigError::Invalid(m),
                }
            }
            other => other,
        })
    }

    fn validate_values(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.interval) {
            return bad(format!(
                "interval: {} is out of range (100ms to 1h)",
                show(self.interval)
            ));
        }
        if self.discovery.rescan < self.interval {
            return bad(format!(
                "discovery.rescan: {} must be at least interval ({})",
                show(self.discovery.rescan),
                show(self.interval)
            ));
        }
        let t = self.collectors.host_filesystem.timeout;
        if t.is_zero() || t > Duration::from_secs(30) {
            return bad(format!(
                "collectors.host_filesystem.timeout: {} is out of range (above 0, at most 30s)",
                show(t)
            ));
        }
        let t = self.collectors.vm_devices.timeout;
        if t.is_zero() || t > Duration::from_secs(30) {
            return bad(format!(
                "collectors.vm_devices.timeout: {} is out of range (above 0, at most 30s)",
                show(t)
            ));
        }
        let w = self.collectors.vm_devices.workers;
        if !(1..=64).contains(&w) {
            return bad(format!(
                "collectors.vm_devices.workers: {w} is out of range (1 to 64)"
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad(format!(
                "log.level: {:?} is not a valid log filter: {e}",
                self.log.level
            ));
        }
        if self.log.max_size.0 < 1024 {
            return bad(format!(
                "log.max_size: {} bytes is too small (at least 1KiB)",
                self.log.max_size.0
            ));
        }
        if self.log.keep > 100 {
            return bad(format!(
                "log.keep: {} is too many (at most 100)",
                self.log.keep
            ));
        }
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.owners.validate().map_err(ConfigError::Invalid)?;
        self.store
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.watchdog
            .validate(self.interval())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.ledger.validate().map_err(ConfigError::Invalid)?;
        self.push
            .validate(self.interval())
            .map_err(ConfigError::Invalid)?;
        self.proxy.validate().map_err(ConfigError::Invalid)?;
        // Usage rules need the ledger, and windows of at least one row.
        self.watchdog
            .validate_usage(self.ledger.enabled.then_some(self.ledger.interval))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// True when `key` (dotted) was set from the environment.
    pub fn is_from_env(&self, key: &str) -> bool {
        self.from_env.iter().any(|(k, _)| k == key)
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn roots(&self) -> Roots {
        Roots {
            proc: self.paths.proc.clone(),
            sys: self.paths.sys.clone(),
            run: self.paths.run.clone(),
            rootfs: self.paths.rootfs.clone(),
        }
    }
}

/// The variable that set `key`, or a section holding it, or a key inside it.
fn env_source<'a>(from_env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    from_env
        .iter()
        .find(|(path, _)| {
            key == *path
                || key.starts_with(&format!("{path}."))
                || key.starts_with(&format!("{path}["))
                || path.starts_with(&format!("{key}."))
        })
        .map(|(_, var)| var.as_str())
}

/// Parses a listen address. Host names are refused rather than resolved:
/// `localhost` resolves to 127.0.0.1 and ::1, and binding one of them (or
/// whatever DNS says at start) would silently decide which clients reach
/// the agent. An IP address says exactly where it listens.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let hint = "give an IP address and port, e.g. 127.0.0.1:9847, 0.0.0.0:9847 or [::1]:9847";
    match s.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && host.parse::<IpAddr>().is_err() => {
            Err(format!(
                "{s:?}: host names are not accepted (an address is bound, not resolved); {hint}"
            ))
        }
        _ => Err(format!("{s:?} is not an address and port; {hint}")),
    }
}

fn de_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

/// Merges `VMSCOPE_A__B=v` pairs into the tree as `a.b = v`, each value kept
/// as its text until deserialization says which type the key expects (see
/// [`Node`]). Returns (dotted key, variable name) pairs so that an error can
/// say which variable was wrong.
fn merge_env(
    root: &mut Node,
    vars: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut keys = Vec::new();
    for (k, v) in vars {
        let path: Vec<String> = k["VMSCOPE_".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "environment variable {k}: empty key segment"
            )));
        }
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut node = &mut *root;
        for p in parents {
            let Node::Table(table) = node else {
                return Err(ConfigError::Invalid(format!(
                    "environment variable {k}: {p} is not a section"
                )));
            };
            node = table
                .entry(p.clone())
                .or_insert_with(|| Node::Table(BTreeMap::new()))
                .open_table();
        }
        let Node::Table(table) = node else {
            return Err(ConfigError::Invalid(format!(
                "environment variable {k}: {} is not a section",
                parents.join(".")
            )));
        };
        table.insert(last.clone(), Node::Env(v.clone()));
        keys.push((path.join("."), k.clone()));
    }
    Ok(keys)
}

/// The config tree being deserialized: the file's TOML values as they are,
/// and environment values as raw text that is parsed by the type the key
/// expects. A string key takes the text verbatim (`VMSCOPE_PATHS__PROC=5` is
/// the path `5`); numbers are decimal only (`0x10` is an error, not 16);
/// booleans are `true` or `false`; lists are TOML arrays (`["a", "b"]`).
/// Where serde does not say (inside the `type`-tagged sinks), `true`,
/// `false` and decimal integers are taken as such, anything else as text.
enum Node {
    Toml(toml::Value),
    Env(String),
    Table(BTreeMap<String, Node>),
}

type DeError = toml::de::Error;

impl Node {
    fn from_table(t: toml::Table) -> Node {
        Node::Table(t.into_iter().map(|(k, v)| (k, Node::Toml(v))).collect())
    }

    /// Turns a file's table into a [`Node::Table`] so that environment
    /// values can be put into it; other values stay as they are.
    fn open_table(&mut self) -> &mut Node {
        if let Node::Toml(toml::Value::Table(t)) = self {
            *self = Node::from_table(std::mem::take(t));
        }
        self
    }
}

fn env_bool<'de, V: Visitor<'de>>(s: String, v: V) -> Result<V::Value, DeError> {
    match s.as_str() {
        "true" => v.visit_bool(true),
        "false" => v.visit_bool(false),
        _ => Err(DeError::invalid_value(
            Unexpected::Str(&s),
            &"true or false",
        )),
    }
}

fn env_int<'de, V: Visitor<'de>>(s: String, v: V) -> Result<V::Value, DeError> {
    // from_str takes an optional sign and decimal digits, nothing else.
    if let Ok(i) = s.parse::<i64>() {
        v.visit_i64(i)
    } else if let Ok(u) = s.parse::<u64>() {
        v.visit_u64(u)
    } else {
        Err(DeError::invalid_value(
            Unexpected::Str(&s),
            &"a decimal integer",
        ))
    }
}

fn env_float<'de, V: Visitor<'de>>(s: String, v: V) -> Result<V::Value, DeError> {
    // f64::from_str would also take "inf", "NaN" and "infinity".
    let decimal = !s.is_empty()
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    match s.parse::<f64>() {
        Ok(f) if decimal => v.visit_f64(f),
        _ => Err(DeError::invalid_value(
            Unexpected::Str(&s),
            &"a decimal number",
        )),
    }
}

fn env_str<'de, V: Visitor<'de>>(s: String, v: V) -> Result<V::Value, DeError> {
    v.visit_string(s)
}

fn env_seq<'de, V: Visitor<'de>>(s: String, v: V) -> Result<V::Value, DeError> {
    match toml::from_str::<toml::Table>(&format!("v = {s}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
    {
        Some(a @ toml::Value::Array(_)) => a.deserialize_seq(v),
        _ => Err(DeError::invalid_value(
            Unexpected::Str(&s),
            &"a TOML array such as [\"a\", \"b\"]",
        )),
    }
}

/// Where the visitor gives no type: booleans and decimal integers as such.
fn env_any<'de, V: Visitor<'de>>(s: String, v: V) -> Result<V::Value, DeError> {
    match s.as_str() {
        "true" => v.visit_bool(true),
        "false" => v.visit_bool(false),
        _ => match s.parse::<i64>() {
            Ok(i) => v.visit_i64(i),
            Err(_) => v.visit_string(s),
        },
    }
}

macro_rules! typed {
    ($($method:ident => $env:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            match self {
                Node::Toml(t) => t.$method(v),
                Node::Env(s) => $env(s, v),
                Node::Table(_) => self.deserialize_any(v),
            }
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_any(v),
            Node::Env(s) => env_any(s, v),
            Node::Table(m) => v.visit_map(MapDeserializer::new(m.into_iter())),
        }
    }

    typed! {
        deserialize_bool => env_bool,
        deserialize_i8 => env_int, deserialize_i16 => env_int,
        deserialize_i32 => env_int, deserialize_i64 => env_int,
        deserialize_u8 => env_int, deserialize_u16 => env_int,
        deserialize_u32 => env_int, deserialize_u64 => env_int,
        deserialize_f32 => env_float, deserialize_f64 => env_float,
        deserialize_char => env_str, deserialize_str => env_str,
        deserialize_string => env_str, deserialize_bytes => env_str,
        deserialize_byte_buf => env_str, deserialize_identifier => env_str,
        deserialize_seq => env_seq, deserialize_unit => env_any,
        deserialize_map => env_any, deserialize_ignored_any => env_any,
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_option(v),
            other => v.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_newtype_struct(name, v),
            other => v.visit_newtype_struct(other),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_enum(name, variants, v),
            Node::Env(s) => v.visit_enum(s.into_deserializer()),
            Node::Table(_) => self.deserialize_any(v),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_struct(name, fields, v),
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_unit_struct(name, v),
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_tuple(len, v),
            other => other.deserialize_seq(v),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        match self {
            Node::Toml(t) => t.deserialize_tuple_struct(name, len, v),
            other => other.deserialize_seq(v),
        }
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Node {
    type Deserializer = Node;
    fn into_deserializer(self) -> Node {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        Config::load_with_env(
            Some(&p),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::load_with_env(None, Vec::new()).unwrap();
        assert_eq!(c.listen, Config::default().listen);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.collectors, CollectorsConfig::default());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn file_then_env() {
        let c = load(
            "interval = \"2s\"\n[collectors.host_filesystem]\ntimeout = \"500ms\"\n",
            &[
                ("VMSCOPE_LISTEN", "127.0.0.1:1234"),
                ("VMSCOPE_COLLECTORS__VM_IO", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(
            c.collectors.host_filesystem.timeout,
            Duration::from_millis(500)
        );
        assert_eq!(c.listen.port(), 1234);
        assert!(!c.collectors.vm_io);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = load("intervall_secs = 2\n", &[]).unwrap_err().to_string();
        assert!(e.contains("intervall_secs"), "{e}");
        let e = load("[collectors]\nvcpus = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("vcpus"), "{e}");
        let e = load("", &[("VMSCOPE_LISTN", "x")]).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
    }

    #[test]
    fn secrets_in_env_are_not_config_keys() {
        for var in crate::alert::config::env_vars() {
            assert!(load("", &[(var, "x")]).is_ok(), "{var}");
        }
    }

    #[test]
    fn vm_devices_keys_are_checked_and_named() {
        let c = load(
            "[collectors.vm_devices]\ntimeout = \"500ms\"\nworkers = 2\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.collectors.vm_devices.timeout, Duration::from_millis(500));
        assert_eq!(c.collectors.vm_devices.workers, 2);
        let c = load("", &[("VMSCOPE_COLLECTORS__VM_DEVICES__ENABLED", "false")]).unwrap();
        assert!(!c.collectors.vm_devices.enabled);
        for (toml, key) in [
            (
                "timeout = \"0s\"",
                "collectors.vm_devices.timeout: 0s is out of range",
            ),
            (
                "timeout = \"1m\"",
                "collectors.vm_devices.timeout: 1m is out of range",
            ),
            (
                "workers = 0",
                "collectors.vm_devices.workers: 0 is out of range",
            ),
            (
                "workers = 65",
                "collectors.vm_devices.workers: 65 is out of range",
            ),
            ("timeout = 2", "timeout"),
            ("socket = \"/x\"", "socket"),
        ] {
            let e = load(&format!("[collectors.vm_devices]\n{toml}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("interval = \"0s\"\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("interval: 0s is out of range"), "{e}");
        let e = load("interval = 5\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("interval:"), "{e}");
        let e = load("interval = \"5 parsecs\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("interval: invalid duration"), "{e}");
        let e = load("listen = \"nope\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = load("[log]\nlevel = \"[[[\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
        let e = load(
            "interval = \"5s\"\n[collectors.host_filesystem]\ntimeout = \"99s\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("collectors.host_filesystem.timeout:"), "{e}");
    }

    #[test]
    fn old_collector_keys_still_work_and_are_reported() {
        let c = load(
            "[collectors]\nvcpu = false\ndisk = false\n[collectors.filesystem]\ntimeout_secs = 0.5\n",
            &[("VMSCOPE_COLLECTORS__NETWORK", "false")],
        )
        .unwrap();
        assert!(!c.collectors.vm_vcpu && !c.collectors.vm_io && !c.collectors.vm_net);
        assert!(c.collectors.host_filesystem.enabled);
        assert_eq!(
            c.collectors.host_filesystem.timeout,
            Duration::from_millis(500)
        );
        let renamed: Vec<(&str, &str)> = c.renamed_keys.iter().map(|r| (r.old, r.new)).collect();
        assert_eq!(
            renamed,
            [
                ("collectors.vcpu", "collectors.vm_vcpu"),
                ("collectors.disk", "collectors.vm_io"),
                ("collectors.network", "collectors.vm_net"),
                ("collectors.filesystem", "collectors.host_filesystem"),
                (
                    "collectors.host_filesystem.timeout_secs",
                    "collectors.host_filesystem.timeout"
                ),
            ]
        );
        let warning = c.renamed_keys[1].to_string();
        assert!(
            warning.contains("collectors.disk") && warning.contains("collectors.vm_io"),
            "{warning}"
        );
        // New names only: nothing to warn about.
        let c = load("[collectors]\nvm_io = false\n", &[]).unwrap();
        assert!(c.renamed_keys.is_empty() && !c.collectors.vm_io);
    }

    #[test]
    fn old_seconds_keys_become_durations_with_a_warning() {
        let c = load(
            "interval_secs = 2\n[discovery]\nrescan_secs = 600\n[collectors.filesystem]\ntimeout_secs = 0.25\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.discovery.rescan, Duration::from_secs(600));
        assert_eq!(
            c.collectors.host_filesystem.timeout,
            Duration::from_millis(250)
        );
        let renamed: Vec<&str> = c.renamed_keys.iter().map(|r| r.new).collect();
        assert_eq!(
            renamed,
            [
                "collectors.host_filesystem",
                "interval",
                "discovery.rescan",
                "collectors.host_filesystem.timeout"
            ]
        );
        // A bad old value names the old key and says what to write instead.
        let e = load("interval_secs = -1\n", &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("interval_secs: expected a number of seconds")
                && e.contains("interval = "),
            "{e}"
        );
        // The environment overrides the file under either name.
        let c = load("interval = \"2s\"\n", &[("VMSCOPE_INTERVAL_SECS", "3")]).unwrap();
        assert_eq!(c.interval, Duration::from_secs(3));
        let c = load("interval_secs = 2\n", &[("VMSCOPE_INTERVAL", "4s")]).unwrap();
        assert_eq!(c.interval, Duration::from_secs(4));
        // Both in one place cannot be told apart.
        let e = load("interval_secs = 2\ninterval = \"2s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("set only interval"), "{e}");
        // Range checks apply to the converted value, under the new name.
        let e = load("interval_secs = 0\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("interval: 0s is out of range"), "{e}");
    }

    #[test]
    fn the_old_state_db_path_still_works_names_itself_and_warns() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let c = load(&format!("[watchdog]\nstate_db_path = {:?}\n", db), &[]).unwrap();
        assert_eq!(c.store.path.as_ref(), Some(&db));
        assert_eq!(c.store.path_key, "watchdog.state_db_path");
        assert!(c.watchdog.state_db_path.is_none());
        assert_eq!(c.renamed_keys, [MOVED_STORE_PATH]);
        let warning = c.renamed_keys[0].to_string();
        assert!(warning.contains("watchdog.state_db_path") && warning.contains("store.path"));
        // From the environment too, and an error names the variable.
        let c = load("", &[("VMSCOPE_WATCHDOG__STATE_DB_PATH", "/x/s.db")]).unwrap();
        assert_eq!(c.store.path, Some(PathBuf::from("/x/s.db")));
        assert_eq!(c.renamed_keys, [MOVED_STORE_PATH]);
        let e = load("", &[("VMSCOPE_WATCHDOG__STATE_DB_PATH", "")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("watchdog.state_db_path: must not be empty"),
            "{e}"
        );
        assert!(e.contains("VMSCOPE_WATCHDOG__STATE_DB_PATH"), "{e}");
        // The new key: no warning.
        let c = load("[store]\npath = \"/y/s.db\"\n", &[]).unwrap();
        assert_eq!(c.store.path, Some(PathBuf::from("/y/s.db")));
        assert_eq!(c.store.path_key, "store.path");
        assert!(c.renamed_keys.is_empty());
        let c = load("", &[("VMSCOPE_STORE__PATH", "/z/s.db")]).unwrap();
        assert_eq!(c.store.path, Some(PathBuf::from("/z/s.db")));
        let e = load("[store]\npath = \"\"\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("store.path: must not be empty"), "{e}");
        // Both: which one was meant cannot be told.
        let e = load(
            "[store]\npath = \"/a\"\n",
            &[("VMSCOPE_WATCHDOG__STATE_DB_PATH", "/b")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("watchdog.state_db_path") && e.contains("set only store.path"),
            "{e}"
        );
    }

    #[test]
    fn old_and_new_name_together_is_an_error() {
        let e = load("[collectors]\ndisk = false\nvm_io = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("collectors.disk") && e.contains("collectors.vm_io"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_value_under_an_old_name_names_its_variable() {
        let e = load(
            "",
            &[("VMSCOPE_COLLECTORS__FILESYSTEM__TIMEOUT_SECS", "\"soon\"")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("collectors.host_filesystem.timeout_secs"), "{e}");
        assert!(
            e.contains("VMSCOPE_COLLECTORS__FILESYSTEM__TIMEOUT_SECS"),
            "{e}"
        );
    }

    #[test]
    fn env_values_are_parsed_by_the_type_the_key_expects() {
        // A string key takes the text verbatim, even when it looks like a number.
        let c = load("", &[("VMSCOPE_PATHS__PROC", "5")]).unwrap();
        assert_eq!(c.paths.proc, PathBuf::from("5"));
        let c = load("", &[("VMSCOPE_LOG__LEVEL", "true")]).unwrap();
        assert_eq!(c.log.level, "true");
        // Numbers are decimal: TOML's 0x10 (16) is refused, naming the variable.
        let e = load("", &[("VMSCOPE_HTTP__MAX_CONNECTIONS", "0x10")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("http.max_connections:"), "{e}");
        assert!(e.contains("VMSCOPE_HTTP__MAX_CONNECTIONS"), "{e}");
        let e = load("", &[("VMSCOPE_HTTP__MAX_CONNECTIONS", "inf")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("decimal integer"), "{e}");
        let c = load("", &[("VMSCOPE_HTTP__MAX_CONNECTIONS", "20")]).unwrap();
        assert_eq!(c.http.max_connections, 20);
        // Durations are humantime strings, also from the environment.
        let c = load("", &[("VMSCOPE_INTERVAL", "500ms")]).unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        // The old seconds key: decimal seconds only.
        let c = load("", &[("VMSCOPE_INTERVAL_SECS", "0.5")]).unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        let e = load("", &[("VMSCOPE_INTERVAL_SECS", "0x10")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("interval_secs:") && e.contains("VMSCOPE_INTERVAL_SECS"),
            "{e}"
        );
        // Booleans are true or false.
        let e = load("", &[("VMSCOPE_COLLECTORS__VM_IO", "yes")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("collectors.vm_io") && e.contains("true or false"),
            "{e}"
        );
        // Lists are TOML arrays; enums take their variant name.
        let c = load(
            "",
            &[
                (
                    "VMSCOPE_COLLECTORS__FILESYSTEM__EXCLUDE_FSTYPES",
                    r#"["tmpfs", "5"]"#,
                ),
                ("VMSCOPE_LOG__FORMAT", "json"),
            ],
        )
        .unwrap();
        assert_eq!(c.collectors.host_filesystem.exclude_fstypes, ["tmpfs", "5"]);
        assert_eq!(c.log.format, LogFormat::Json);
        let e = load(
            "",
            &[("VMSCOPE_COLLECTORS__FILESYSTEM__EXCLUDE_FSTYPES", "tmpfs")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("TOML array"), "{e}");
        // Inside a `type`-tagged sink, decimal integers stay numbers.
        let c = load(
            "",
            &[
                ("VMSCOPE_WATCHDOG__SINKS__AM__TYPE", "alertmanager"),
                ("VMSCOPE_WATCHDOG__SINKS__AM__URL", "http://127.0.0.1:9093"),
                ("VMSCOPE_WATCHDOG__SINKS__AM__QUEUE_CAPACITY", "10"),
            ],
        );
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn env_overrides_a_file_section_and_is_recorded() {
        let c = load(
            "[paths]\nsys = \"/host/sys\"\n",
            &[
                ("VMSCOPE_PATHS__PROC", "/host/proc"),
                ("VMSCOPE_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(c.paths.sys, PathBuf::from("/host/sys"));
        assert_eq!(c.paths.proc, PathBuf::from("/host/proc"));
        assert_eq!(c.log.level, "debug");
        assert!(c.is_from_env("paths.proc") && c.is_from_env("log.level"));
        assert!(!c.is_from_env("paths.sys"));
    }

    #[test]
    fn sizes_are_bytes_or_a_number_with_a_unit() {
        let ok = |s: &str| s.parse::<ByteSize>().unwrap().0;
        assert_eq!(ok("1048576"), 1_048_576);
        assert_eq!(ok("3MiB"), 3 * 1024 * 1024);
        assert_eq!(ok("3M"), 3 * 1024 * 1024);
        assert_eq!(ok("3MB"), 3_000_000);
        assert_eq!(ok("500kB"), 500_000);
        assert_eq!(ok("2 KiB"), 2048);
        assert_eq!(ok("1GiB"), 1 << 30);
        for bad in ["", "MiB", "3XB", "-1", "1.5MiB", "99999999999999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn log_file_keys_from_the_file_and_the_environment() {
        let c = load(
            "[log]\nfile = \"/var/log/vmscope/vmscope.log\"\nmax_size = \"1MiB\"\nkeep = 2\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.log.file.as_deref(),
            Some(Path::new("/var/log/vmscope/vmscope.log"))
        );
        assert_eq!(c.log.max_size, ByteSize(1 << 20));
        assert_eq!(c.log.keep, 2);
        let c = load("[log]\nmax_size = 4096\n", &[("VMSCOPE_LOG__KEEP", "0")]).unwrap();
        assert_eq!((c.log.max_size, c.log.keep), (ByteSize(4096), 0));
        let c = load("", &[("VMSCOPE_LOG__MAX_SIZE", "2MB")]).unwrap();
        assert_eq!(c.log.max_size, ByteSize(2_000_000));
        // Defaults: no file, 3 MiB, five kept.
        let d = LogConfig::default();
        assert_eq!((d.file, d.max_size, d.keep), (None, ByteSize(3 << 20), 5));
        for (toml, key) in [
            ("[log]\nmax_size = 100\n", "log.max_size:"),
            ("[log]\nmax_size = \"3XB\"\n", "log.max_size:"),
            ("[log]\nkeep = 1000\n", "log.keep:"),
        ] {
            let e = load(toml, &[]).unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
        }
    }

    #[test]
    fn a_bad_vmscope_log_is_refused_naming_the_variable() {
        let e = load("", &[("VMSCOPE_LOG", "[[[")]).unwrap_err().to_string();
        assert!(e.starts_with("log.level:"), "{e}");
        assert!(e.contains("VMSCOPE_LOG"), "{e}");
    }

    #[test]
    fn errors_are_one_line_with_the_key_in_front() {
        for (toml, key) in [
            ("listen = 5\n", "listen:"),
            ("interval_secs = \"x\"\n", "interval_secs:"),
            ("[paths]\nproc = 5\n", "paths.proc:"),
            ("[log]\nformat = \"xml\"\n", "log.format:"),
            ("[collectors]\nvm_io = \"yes\"\n", "collectors.vm_io:"),
            ("[watchdog]\nstate_db_path = 5\n", "watchdog.state_db_path:"),
            (
                "[watchdog.rules.x]\nthreshold = \"a\"\n",
                "watchdog.rules.x.threshold:",
            ),
        ] {
            let e = load(toml, &[]).unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
            assert!(!e.contains('\n'), "{toml}: {e:?}");
        }
    }

    #[test]
    fn a_bad_sink_field_is_named_with_its_whole_path() {
        let e = load(
            "[watchdog.sinks.hook]\ntype = \"webhook\"\nurl = \"http://h\"\nqueue_capacity = -1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("watchdog.sinks.hook: queue_capacity: invalid value"),
            "{e}"
        );
        let e = load(
            "",
            &[
                ("VMSCOPE_WATCHDOG__SINKS__AM__TYPE", "alertmanager"),
                ("VMSCOPE_WATCHDOG__SINKS__AM__URL", "http://127.0.0.1:9093"),
                ("VMSCOPE_WATCHDOG__SINKS__AM__TIMEOUT", "soon"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("watchdog.sinks.am: timeout: invalid duration"),
            "{e}"
        );
        assert!(e.contains("VMSCOPE_WATCHDOG__SINKS__AM"), "{e}");
    }

    #[test]
    fn listen_refuses_host_names_saying_to_use_an_ip_address() {
        let e = load("listen = \"localhost:9847\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("listen:"), "{e}");
        assert!(e.contains("host names are not accepted"), "{e}");
        assert!(e.contains("127.0.0.1:9847"), "{e}");
        let e = load("", &[("VMSCOPE_LISTEN", "example.com:80")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host names") && e.contains("VMSCOPE_LISTEN"),
            "{e}"
        );
        let e = load("listen = \"9847\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("not an address and port"), "{e}");
        let c = load("listen = \"[::1]:9847\"\n", &[]).unwrap();
        assert!(c.listen.ip().is_loopback());
    }

    #[test]
    fn missing_file_is_named() {
        let e = Config::load_with_env(Some(Path::new("/nonexistent/v.toml")), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/v.toml"), "{e}");
    }
}
