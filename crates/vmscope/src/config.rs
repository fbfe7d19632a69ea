//! Configuration: defaults, a TOML file, then `VMSCOPE_*` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Unknown keys are errors everywhere (a typo must not silently turn a
//! feature off). Nested keys in the environment use `__`:
//! `VMSCOPE_COLLECTORS__HOST_FILESYSTEM__TIMEOUT_SECS=2`. Secrets that other
//! modules read from the environment themselves are listed in
//! [`is_non_config_env`] and not treated as configuration keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::Roots;

/// The default listen address: loopback only. 9847 is in the Prometheus
/// exporters' port range; the registry list itself is full.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9847";

/// Environment variables with the `VMSCOPE_` prefix that are not config
/// keys: the log filter, and the secrets the watchdog reads itself.
pub fn is_non_config_env(name: &str) -> bool {
    name == "VMSCOPE_LOG" || crate::alert::config::ENV_VARS.contains(&name)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds to.
    pub listen: SocketAddr,
    /// Collection interval in seconds.
    pub interval_secs: f64,
    pub paths: PathsConfig,
    pub discovery: DiscoveryConfig,
    pub collectors: CollectorsConfig,
    pub log: LogConfig,
    /// Sustained-threshold alerts and their sinks (see docs/watchdog.md).
    pub watchdog: crate::alert::WatchdogConfig,
    /// Deprecated keys this configuration used, for the caller to warn
    /// about once logging is set up (the log settings are config too).
    #[serde(skip)]
    pub renamed_keys: Vec<RenamedKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            interval_secs: 5.0,
            paths: PathsConfig::default(),
            discovery: DiscoveryConfig::default(),
            collectors: CollectorsConfig::default(),
            log: LogConfig::default(),
            watchdog: crate::alert::WatchdogConfig::default(),
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
    /// Re-classify every process this often, in seconds.
    pub rescan_secs: f64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            process: true,
            libvirt: true,
            rescan_secs: 300.0,
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
    pub host_filesystem: FilesystemConfig,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        CollectorsConfig {
            vm_vcpu: true,
            vm_io: true,
            vm_net: true,
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

/// Moves renamed keys of the merged tree (file and environment) to their new
/// names and returns the ones found. Both names at once is an error: which
/// one was meant cannot be told. `env_keys` (dotted path, variable) follow
/// the move, so an error in a value still names its variable.
fn rename_keys(
    tree: &mut toml::Table,
    renamed: &[RenamedKey],
    env_keys: &mut [(String, String)],
) -> Result<Vec<RenamedKey>, ConfigError> {
    let mut found = Vec::new();
    for r in renamed {
        let (Some((section, old)), Some((_, new))) = (r.old.split_once('.'), r.new.split_once('.'))
        else {
            continue;
        };
        let Some(toml::Value::Table(table)) = tree.get_mut(section) else {
            continue;
        };
        let Some(value) = table.remove(old) else {
            continue;
        };
        if table.contains_key(new) {
            return Err(ConfigError::Invalid(format!(
                "{}: set only {}, the new name of {}",
                r.old, r.new, r.old
            )));
        }
        table.insert(new.to_string(), value);
        for (path, _) in env_keys.iter_mut() {
            if path == r.old || path.starts_with(&format!("{}.", r.old)) {
                *path = format!("{}{}", r.new, &path[r.old.len()..]);
            }
        }
        found.push(*r);
    }
    Ok(found)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    pub enabled: bool,
    /// How long all `statvfs` calls of one tick may take together; capped
    /// at half the collection interval.
    pub timeout_secs: f64,
    /// Filesystem types to skip, on top of pseudo and network filesystems.
    pub exclude_fstypes: Vec<String>,
    /// Mountpoints to skip, with everything below them.
    pub exclude_mountpoints: Vec<String>,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            enabled: true,
            timeout_secs: 1.0,
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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
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
        let mut tree = match file {
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
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("VMSCOPE_") && !is_non_config_env(k))
            .collect();
        let mut env_keys = merge_env(&mut tree, &vars)?;
        let renamed = rename_keys(&mut tree, RENAMED_COLLECTOR_KEYS, &mut env_keys)?;
        let mut cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
                let key = e.path().to_string();
                let from = env_keys
                    .iter()
                    .find(|(path, _)| {
                        key == *path
                            || key.starts_with(&format!("{path}."))
                            || path.starts_with(&format!("{key}."))
                    })
                    .map(|(_, var)| format!(" (from environment variable {var})"))
                    .unwrap_or_default();
                let inner = e.into_inner().to_string();
                let inner = inner.trim_end();
                if key.is_empty() || key == "." {
                    ConfigError::Invalid(format!("{inner}{from}"))
                } else {
                    ConfigError::Invalid(format!("{key}: {inner}{from}"))
                }
            })?;
        cfg.renamed_keys = renamed;
        Ok(cfg)
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(self.interval_secs.is_finite() && (0.1..=3600.0).contains(&self.interval_secs)) {
            return bad(format!(
                "interval_secs: {} is out of range (0.1 to 3600 seconds)",
                self.interval_secs
            ));
        }
        if !(self.discovery.rescan_secs.is_finite()
            && self.discovery.rescan_secs >= self.interval_secs)
        {
            return bad(format!(
                "discovery.rescan_secs: {} must be at least interval_secs ({})",
                self.discovery.rescan_secs, self.interval_secs
            ));
        }
        let t = self.collectors.host_filesystem.timeout_secs;
        if !(t.is_finite() && t > 0.0 && t <= 30.0) {
            return bad(format!(
                "collectors.host_filesystem.timeout_secs: {t} is out of range (above 0, at most 30 seconds)"
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(format!(
                "log.level: {:?} is not a valid log filter",
                self.log.level
            ));
        }
        self.watchdog
            .validate(self.interval())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs)
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

/// Merges `VMSCOPE_A__B=v` pairs into the tree as `a.b = v`, each value
/// parsed as a TOML value when it is one (`5`, `true`, `["a"]`) and kept as
/// a string otherwise. Returns (dotted key, variable name) pairs so that an
/// error can say which variable was wrong.
fn merge_env(
    root: &mut toml::Table,
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
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut table = &mut *root;
        for p in parents {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "environment variable {k}: {p} is not a section"
                    )));
                }
            };
        }
        table.insert(last.clone(), value);
        keys.push((path.join("."), k.clone()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
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
        assert_eq!(c.interval_secs, 5.0);
        assert_eq!(c.collectors, CollectorsConfig::default());
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn file_then_env() {
        let c = load(
            "interval_secs = 2\n[collectors.filesystem]\ntimeout_secs = 0.5\n",
            &[
                ("VMSCOPE_LISTEN", "127.0.0.1:1234"),
                ("VMSCOPE_COLLECTORS__VM_IO", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.interval_secs, 2.0);
        assert_eq!(c.collectors.host_filesystem.timeout_secs, 0.5);
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
        for var in crate::alert::config::ENV_VARS {
            assert!(load("", &[(var, "x")]).is_ok(), "{var}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("interval_secs = 0\n", &[]).unwrap_err().to_string();
        assert!(e.starts_with("interval_secs"), "{e}");
        let e = load("listen = \"nope\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = load("[log]\nlevel = \"[[[\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
        let e = load(
            "interval_secs = 5\n[collectors.host_filesystem]\ntimeout_secs = 99\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("collectors.host_filesystem.timeout_secs"), "{e}");
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
        assert_eq!(c.collectors.host_filesystem.timeout_secs, 0.5);
        let renamed: Vec<(&str, &str)> = c.renamed_keys.iter().map(|r| (r.old, r.new)).collect();
        assert_eq!(
            renamed,
            [
                ("collectors.vcpu", "collectors.vm_vcpu"),
                ("collectors.disk", "collectors.vm_io"),
                ("collectors.network", "collectors.vm_net"),
                ("collectors.filesystem", "collectors.host_filesystem"),
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
    fn missing_file_is_named() {
        let e = Config::load_with_env(Some(Path::new("/nonexistent/v.toml")), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/v.toml"), "{e}");
    }
}
