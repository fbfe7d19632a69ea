//! The `[watchdog]` configuration section: rules and sinks (each sink's own
//! settings live in its file under `sinks/`; the database is `[store]`).
//!
//! Reads: the deserialized TOML section and, for secrets that the file does
//! not hold, the `VMSCOPE_*` environment variables listed on each sink.
//! Emits: resolved [`Rule`]s and per-sink settings for `alert::start`.
//! Fails: [`ConfigError`], whose message starts with the offending key
//! (`watchdog.rules.vm_cpu.sustained: ...`). Unknown keys are serde errors
//! (`deny_unknown_fields` everywhere: a typo must not silently disable a rule).
//!
//! Rules are a table keyed by rule name. The built-in rules (see
//! [`builtin_rules`]) are merged under the user's entries, so
//! `[watchdog.rules.host_cpu] threshold = 0.9` changes one field and
//! `enabled = false` turns a rule off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::rules::{Metric, OwnerKind, Rule, ScopeSelector, Severity};
use super::usage::show_window;

pub use super::setting::ConfigError;
use super::setting::default_true;
// server.rs reads its durations with it too.
pub(crate) use super::setting::de_duration;
pub use super::sinks::SinkConfig;
use super::sinks::log::LogSinkConfig;

/// Every environment variable the watchdog reads itself: the top-level
/// config loader must not take these for configuration keys.
pub fn env_vars() -> Vec<&'static str> {
    super::sinks::env_vars()
}

/// `[watchdog]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Turn the whole watchdog (rules, sinks, state database) on or off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Deprecated: `[store] path`. The config loader moves it there (with a
    /// warning naming the new key); the watchdog never reads it.
    #[serde(default)]
    pub state_db_path: Option<PathBuf>,
    /// Resolved episodes and notification-log rows older than this are pruned.
    #[serde(
        default = "default_history_retention",
        deserialize_with = "de_duration"
    )]
    pub history_retention: Duration,
    /// Merge the built-in rules under `rules` (false: only the rules given).
    #[serde(default = "default_true")]
    pub builtin_rules: bool,
    /// Rules by name; entries with a built-in name override its fields.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleConfig>,
    /// Sinks by name. A `log` sink named `log` exists unless configured off.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// How long `shutdown` waits for sinks to flush their queues.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Usage rules: how often their ledger queries run (off the loop).
    #[serde(default = "default_usage_refresh", deserialize_with = "de_duration")]
    pub usage_refresh: Duration,
    /// Usage rules: how long one ledger query may take.
    #[serde(default = "default_usage_timeout", deserialize_with = "de_duration")]
    pub usage_timeout: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            enabled: true,
            state_db_path: None,
            history_retention: default_history_retention(),
            builtin_rules: true,
            rules: BTreeMap::new(),
            sinks: BTreeMap::new(),
            shutdown_timeout: default_shutdown_timeout(),
            usage_refresh: default_usage_refresh(),
            usage_timeout: default_usage_timeout(),
        }
    }
}

fn default_usage_refresh() -> Duration {
    Duration::from_secs(60)
}
fn default_usage_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The longest usage window: a month and a few days, the longest quota
/// period worth watching from one host's ledger.
pub const MAX_USAGE_WINDOW: Duration = Duration::from_secs(35 * 86_400);

fn default_history_retention() -> Duration {
    Duration::from_secs(90 * 86_400)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_sustained() -> Duration {
    Duration::from_secs(30)
}

/// One `[watchdog.rules.NAME]` entry. Every field is optional so that an entry
/// can override a built-in rule; a new rule needs at least `metric` and
/// `threshold` (and `group_by` for owner metrics).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub enabled: Option<bool>,
    /// One of [`Metric::ALL`]'s names.
    pub metric: Option<String>,
    /// Ratio metrics: 0..=1 (0.8 = 80 %). `*_gib`: GiB. `owner_cpu_cores`:
    /// cores. `owner_allocated_vcpus`: vCPUs. Usage metrics: CPU seconds,
    /// vCPU-hours, GiB-hours, GiB over the window.
    pub threshold: Option<f64>,
    /// How long the condition must hold before the alert fires (default 30s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub sustained: Option<Duration>,
    /// How long the condition must be clear before it resolves
    /// (default: `sustained`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub recovery: Option<Duration>,
    /// Notify again while still firing, this often (default: never).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub repeat_interval: Option<Duration>,
    pub severity: Option<Severity>,
    /// Sink names this rule notifies (default: every enabled sink).
    pub sinks: Option<Vec<String>>,
    /// Filesystem rules: only the filesystem mounted from this device,
    /// spelled as in /proc/mounts (`findmnt -no SOURCE /`).
    pub device: Option<String>,
    /// Filesystem rules: only the filesystem mounted here.
    pub mountpoint: Option<String>,
    /// Owner rules (required): `"user"` or `"project"`, whose VMs are
    /// summed together.
    pub group_by: Option<String>,
    /// Usage rules (required): the usage is summed over this long up to
    /// now (at least the ledger interval, at most 35 days).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub window: Option<Duration>,
}

/// The rules vmscope ships with; each can be changed or turned off.
pub fn builtin_rules() -> BTreeMap<String, RuleConfig> {
    // (name, metric, threshold, mountpoint)
    const BUILTIN: [(&str, Metric, f64, Option<&str>); 3] = [
        ("host_cpu", Metric::HostCpuRatio, 0.8, None),
        ("host_memory", Metric::HostMemoryUsedRatio, 0.8, None),
        ("root_fs_free", Metric::FilesystemFreeGib, 5.0, Some("/")),
    ];
    BUILTIN
        .into_iter()
        .map(|(name, metric, threshold, mountpoint)| {
            let rule = RuleConfig {
                metric: Some(metric.name().to_owned()),
                threshold: Some(threshold),
                mountpoint: mountpoint.map(str::to_owned),
                ..RuleConfig::default()
            };
            (name.to_owned(), rule)
        })
        .collect()
}

impl WatchdogConfig {
    /// The sinks in effect: the configured ones plus the default `log` sink
    /// when no sink is named `log`. Disabled sinks are left out.
    pub fn effective_sinks(&self) -> BTreeMap<String, SinkConfig> {
        let mut sinks = self.sinks.clone();
        sinks
            .entry("log".to_owned())
            .or_insert(SinkConfig::Log(LogSinkConfig { enabled: true }));
        sinks.retain(|_, s| s.enabled());
        sinks
    }

    /// Built-ins merged with the user's entries, checked and resolved, in
    /// name order. Disabled rules are left out.
    pub fn resolve_rules(&self) -> Result<Vec<Rule>, ConfigError> {
        let mut merged = if self.builtin_rules {
            builtin_rules()
        } else {
            BTreeMap::new()
        };
        for (name, user) in &self.rules {
            let entry = merged.entry(name.clone()).or_default();
            merge_rule(entry, user);
        }
        let all_sinks = {
            let mut s: Vec<String> = self.sinks.keys().cloned().collect();
            if !s.iter().any(|n| n == "log") {
                s.push("log".to_owned());
            }
            s.sort();
            s
        };
        let mut out = Vec::new();
        for (name, rc) in &merged {
            if rc.enabled == Some(false) {
                continue;
            }
            out.push(resolve_rule(name, rc, &all_sinks)?);
        }
        Ok(out)
    }

    /// Every check that needs more than one field: rule thresholds and
    /// timers against the collection interval, sink references, sink URLs
    /// and secrets (file or environment), CA files.
    pub fn validate(&self, collection_interval: Duration) -> Result<(), ConfigError> {
        if self.shutdown_timeout.is_zero() {
            return Err(ConfigError::new(
                "watchdog.shutdown_timeout",
                "must be longer than 0s",
            ));
        }
        let rules = self.resolve_rules()?;
        for rule in &rules {
            let key = |field: &str| format!("watchdog.rules.{}.{field}", rule.name);
            for (field, d) in [
                ("sustained", Some(rule.sustained)),
                ("recovery", Some(rule.recovery)),
                ("repeat_interval", rule.repeat_interval),
            ] {
                if let Some(d) = d
                    && d < collection_interval
                {
                    return Err(ConfigError::new(
                        key(field),
                        format!(
                            "{} is shorter than the collection interval {}",
                            humantime::format_duration(d),
                            humantime::format_duration(collection_interval)
                        ),
                    ));
                }
            }
        }
        for (name, sink) in &self.sinks {
            super::sinks::validate(name, sink)?;
        }
        let refresh = self.usage_refresh;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&refresh) {
            return Err(ConfigError::new(
                "watchdog.usage_refresh",
                format!(
                    "{} is out of range (1s to 1h)",
                    humantime::format_duration(refresh)
                ),
            ));
        }
        let timeout = self.usage_timeout;
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout) {
            return Err(ConfigError::new(
                "watchdog.usage_timeout",
                format!(
                    "{} is out of range (100ms to 1m)",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        Ok(())
    }

    /// Usage rules against the ledger: `ledger_interval` is `[ledger]
    /// interval` when the ledger is enabled, `None` when it is off (a
    /// usage rule would then never have data: an error, not a silent
    /// rule). A window shorter than one ledger row sums at most one row.
    pub fn validate_usage(&self, ledger_interval: Option<Duration>) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        for rule in self.resolve_rules()? {
            let Some(key) = rule.usage_key() else {
                continue;
            };
            let Some(interval) = ledger_interval else {
                return Err(ConfigError::new(
                    format!("watchdog.rules.{}.metric", rule.name),
                    format!(
                        "{} reads the usage ledger, which is disabled (ledger.enabled = false)",
                        rule.metric.name()
                    ),
                ));
            };
            if key.window < interval {
                return Err(ConfigError::new(
                    format!("watchdog.rules.{}.window", rule.name),
                    format!(
                        "{} is shorter than the ledger interval {} (ledger.interval)",
                        show_window(key.window),
                        show_window(interval)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The distinct ledger queries the usage rules need (one per
    /// (group_by, window), shared by the rules that ask the same).
    pub fn usage_keys(&self) -> Result<Vec<super::rules::UsageKey>, ConfigError> {
        let mut keys: Vec<_> = self
            .resolve_rules()?
            .iter()
            .filter_map(Rule::usage_key)
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn merge_rule(into: &mut RuleConfig, from: &RuleConfig) {
    macro_rules! take {
        ($($f:ident),*) => { $( if from.$f.is_some() { into.$f = from.$f.clone(); } )* };
    }
    take!(
        enabled,
        metric,
        threshold,
        sustained,
        recovery,
        repeat_interval,
        severity,
        sinks,
        group_by,
        window
    );
    // A filesystem selector is one choice: setting either replaces both.
    if from.device.is_some() || from.mountpoint.is_some() {
        into.device = from.device.clone();
        into.mountpoint = from.mountpoint.clone();
    }
}

fn resolve_rule(name: &str, rc: &RuleConfig, sinks: &[String]) -> Result<Rule, ConfigError> {
    let key = |field: &str| format!("watchdog.rules.{name}.{field}");
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':');
    if !name_ok {
        return Err(ConfigError::new(
            format!("watchdog.rules.{name}"),
            "a rule name is 1-64 characters of A-Z, a-z, 0-9, '_', '-', ':'",
        ));
    }
    let metric_name = rc
        .metric
        .as_deref()
        .ok_or_else(|| ConfigError::new(key("metric"), "missing (every new rule needs one)"))?;
    let metric = Metric::from_name(metric_name).ok_or_else(|| {
        let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        ConfigError::new(
            key("metric"),
            format!(
                "unknown metric {metric_name:?} (known: {})",
                known.join(", ")
            ),
        )
    })?;
    let threshold = rc
        .threshold
        .ok_or_else(|| ConfigError::new(key("threshold"), "missing"))?;
    let (lo, hi) = metric.threshold_range();
    if !threshold.is_finite() || threshold < lo || threshold > hi {
        return Err(ConfigError::new(
            key("threshold"),
            format!(
                "{threshold} is out of range for {} ({lo}..={hi}{})",
                metric.name(),
                metric.threshold_unit_hint()
            ),
        ));
    }
    let sustained = rc.sustained.unwrap_or_else(default_sustained);
    if sustained.is_zero() {
        return Err(ConfigError::new(key("sustained"), "must be longer than 0s"));
    }
    let recovery = rc.recovery.unwrap_or(sustained);
    if recovery.is_zero() {
        return Err(ConfigError::new(key("recovery"), "must be longer than 0s"));
    }
    if rc.repeat_interval.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::new(
            key("repeat_interval"),
            "must be longer than 0s (leave it out for no repeats)",
        ));
    }
    if let Some(list) = &rc.sinks {
        for (i, s) in list.iter().enumerate() {
            if !sinks.iter().any(|k| k == s) {
                return Err(ConfigError::new(
                    format!("watchdog.rules.{name}.sinks[{i}]"),
                    format!("unknown sink {s:?} (configured: {})", sinks.join(", ")),
                ));
            }
        }
    }
    let selector = match (&rc.device, &rc.mountpoint) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                key("device"),
                "give either device or mountpoint, not both",
            ));
        }
        (Some(d), None) => ScopeSelector::Device(d.clone()),
        (None, Some(m)) => ScopeSelector::Mountpoint(m.clone()),
        (None, None) => ScopeSelector::All,
    };
    if !metric.is_filesystem() && selector != ScopeSelector::All {
        let field = if rc.device.is_some() {
            "device"
        } else {
            "mountpoint"
        };
        return Err(ConfigError::new(
            key(field),
            format!(
                "only filesystem metrics take a {field}, not {}",
                metric.name()
            ),
        ));
    }
    let selector = match (metric.is_owner(), rc.group_by.as_deref()) {
        (true, Some(g)) => ScopeSelector::GroupBy(OwnerKind::from_name(g).ok_or_else(|| {
            ConfigError::new(
                key("group_by"),
                format!("unknown owner kind {g:?} (known: user, project)"),
            )
        })?),
        (true, None) => {
            return Err(ConfigError::new(
                key("group_by"),
                format!(
                    "missing ({} sums VMs per owner: give \"user\" or \"project\")",
                    metric.name()
                ),
            ));
        }
        (false, Some(_)) => {
            return Err(ConfigError::new(
                key("group_by"),
                format!("only owner metrics take a group_by, not {}", metric.name()),
            ));
        }
        (false, None) => selector,
    };
    let selector = match (metric.is_usage(), rc.window, &selector) {
        (true, Some(w), ScopeSelector::GroupBy(by)) => {
            if w < Duration::from_secs(1) || w.subsec_nanos() != 0 || w > MAX_USAGE_WINDOW {
                return Err(ConfigError::new(
                    key("window"),
                    format!(
                        "{} is out of range (whole seconds, 1s to {})",
                        show_window(w),
                        show_window(MAX_USAGE_WINDOW)
                    ),
                ));
            }
            ScopeSelector::Usage { by: *by, window: w }
        }
        (true, None, _) => {
            return Err(ConfigError::new(
                key("window"),
                format!(
                    "missing ({} sums the usage ledger over a window: give one, e.g. \"24h\")",
                    metric.name()
                ),
            ));
        }
        (false, Some(_), _) => {
            return Err(ConfigError::new(
                key("window"),
                format!(
                    "only usage metrics (owner_usage_*) take a window, not {}",
                    metric.name()
                ),
            ));
        }
        _ => selector,
    };
    Ok(Rule {
        name: name.to_owned(),
        metric,
        threshold,
        sustained,
        recovery,
        repeat_interval: rc.repeat_interval,
        severity: rc.severity.unwrap_or(Severity::Warning),
        sinks: rc.sinks.clone(),
        selector,
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WatchdogConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn defaults_give_builtin_rules_and_log_sink() {
        let c = parse("").unwrap();
        let rules = c.resolve_rules().unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["host_cpu", "host_memory", "root_fs_free"]);
        let cpu = &rules[0];
        assert_eq!(cpu.threshold, 0.8);
        assert_eq!(cpu.sustained, Duration::from_secs(30));
        assert_eq!(cpu.recovery, Duration::from_secs(30));
        assert_eq!(c.effective_sinks().keys().collect::<Vec<_>>(), ["log"]);
        c.validate(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn overrides_merge_into_builtins_and_can_disable() {
        let c = parse(
            r#"
            [rules.host_cpu]
            threshold = 0.95
            sustained = "1m"
            [rules.host_memory]
            enabled = false
            [rules.vm_cpu]
            metric = "vm_cpu_utilization_ratio"
            threshold = 0.9
            sustained = "10s"
            repeat_interval = "1h"
            severity = "critical"
            "#,
        )
        .unwrap();
        let rules = c.resolve_rules().unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["host_cpu", "root_fs_free", "vm_cpu"]);
        assert_eq!(rules[0].threshold, 0.95);
        assert_eq!(rules[0].metric, Metric::HostCpuRatio);
        assert_eq!(rules[0].sustained, Duration::from_secs(60));
        assert_eq!(rules[2].severity, Severity::Critical);
        assert_eq!(rules[2].repeat_interval, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_rules_name_the_key() {
        let cases = [
            (
                "[rules.x]\nmetric = \"vm_cpu_utilization_ratio\"\nthreshold = 1.5",
                "watchdog.rules.x.threshold: 1.5 is out of range",
            ),
            (
                "[rules.x]\nmetric = \"nope\"\nthreshold = 0.5",
                "watchdog.rules.x.metric: unknown metric \"nope\"",
            ),
            (
                "[rules.x]\nthreshold = 0.5",
                "watchdog.rules.x.metric: missing",
            ),
            (
                "[rules.host_cpu]\nsustained = \"2s\"",
                "watchdog.rules.host_cpu.sustained: 2s is shorter than the collection interval 5s",
            ),
            (
                "[rules.host_cpu]\nsinks = [\"log\", \"pager\"]",
                "watchdog.rules.host_cpu.sinks[1]: unknown sink \"pager\"",
            ),
            (
                "[rules.host_cpu]\nmountpoint = \"/\"",
                "watchdog.rules.host_cpu.mountpoint: only filesystem metrics",
            ),
            (
                "[rules.root_fs_free]\nthreshold = -1.0",
                "watchdog.rules.root_fs_free.threshold: -1 is out of range",
            ),
            (
                "[sinks.wh]\ntype = \"webhook\"\nurl = \"ftp://x\"",
                "watchdog.sinks.wh.url:",
            ),
        ];
        for (toml, want) in cases {
            let err = parse(toml)
                .unwrap()
                .validate(Duration::from_secs(5))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(want),
                "{toml:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn owner_rules_are_opt_in_and_resolve_their_grouping() {
        let defaults = parse("").unwrap().resolve_rules().unwrap();
        assert!(defaults.iter().all(|r| !r.metric.is_owner()));
        let c = parse(
            r#"
            [rules.user_cpu]
            metric = "owner_cpu_cores"
            group_by = "user"
            threshold = 16
            sustained = "5m"
            [rules.project_memory]
            metric = "owner_memory_allocated_gib"
            group_by = "project"
            threshold = 512
            "#,
        )
        .unwrap();
        c.validate(Duration::from_secs(5)).unwrap();
        let rules = c.resolve_rules().unwrap();
        let by_name = |n: &str| rules.iter().find(|r| r.name == n).unwrap();
        let cpu = by_name("user_cpu");
        assert_eq!(cpu.metric, Metric::OwnerCpuCores);
        assert_eq!(cpu.selector, ScopeSelector::GroupBy(OwnerKind::User));
        assert_eq!(cpu.threshold, 16.0);
        assert_eq!(cpu.sustained, Duration::from_secs(300));
        assert_eq!(cpu.recovery, Duration::from_secs(300));
        let mem = by_name("project_memory");
        assert_eq!(mem.metric, Metric::OwnerMemoryAllocatedGib);
        assert_eq!(mem.selector, ScopeSelector::GroupBy(OwnerKind::Project));
    }

    #[test]
    fn bad_owner_rules_name_the_key() {
        let rule = |body: &str| format!("[rules.o]\n{body}");
        let cases = [
            (
                rule("metric = \"owner_cpu_cores\"\nthreshold = 8"),
                "watchdog.rules.o.group_by: missing (owner_cpu_cores sums VMs per owner",
            ),
            (
                rule("metric = \"owner_cpu_cores\"\ngroup_by = \"team\"\nthreshold = 8"),
                "watchdog.rules.o.group_by: unknown owner kind \"team\" (known: user, project)",
            ),
            (
                rule("metric = \"owner_allocated_vcpus\"\ngroup_by = \"user\"\nthreshold = -4"),
                "watchdog.rules.o.threshold: -4 is out of range for owner_allocated_vcpus (0..=1000000 vCPUs)",
            ),
            (
                rule("metric = \"owner_cpu_cores\"\ngroup_by = \"user\"\nthreshold = 2e6"),
                "watchdog.rules.o.threshold: 2000000 is out of range for owner_cpu_cores (0..=1000000 cores)",
            ),
            (
                rule("metric = \"owner_memory_rss_gib\"\ngroup_by = \"user\"\nthreshold = -0.5"),
                "watchdog.rules.o.threshold: -0.5 is out of range for owner_memory_rss_gib (0..=1000000000 GiB)",
            ),
            (
                rule("metric = \"owner_memory_rss_gib\"\ngroup_by = \"user\""),
                "watchdog.rules.o.threshold: missing",
            ),
            (
                rule("metric = \"vm_cpu_utilization_ratio\"\ngroup_by = \"user\"\nthreshold = 0.9"),
                "watchdog.rules.o.group_by: only owner metrics take a group_by, not vm_cpu_utilization_ratio",
            ),
            (
                "[rules.host_cpu]\ngroup_by = \"project\"".to_owned(),
                "watchdog.rules.host_cpu.group_by: only owner metrics take a group_by",
            ),
            (
                rule(
                    "metric = \"owner_cpu_cores\"\ngroup_by = \"user\"\nthreshold = 8\nmountpoint = \"/\"",
                ),
                "watchdog.rules.o.mountpoint: only filesystem metrics take a mountpoint",
            ),
            (
                rule(
                    "metric = \"owner_cpu_cores\"\ngroup_by = \"user\"\nthreshold = 8\nsustained = \"1s\"",
                ),
                "watchdog.rules.o.sustained: 1s is shorter than the collection interval 5s",
            ),
        ];
        for (toml, want) in cases {
            let err = parse(&toml)
                .unwrap()
                .validate(Duration::from_secs(5))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(want),
                "{toml:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn usage_rules_resolve_their_window_and_share_queries() {
        let c = parse(
            r#"
            usage_refresh = "30s"
            [rules.project_cpu_quota]
            metric = "owner_usage_cpu_seconds"
            group_by = "project"
            window = "24h"
            threshold = 86400
            sustained = "5m"
            [rules.project_net]
            metric = "owner_usage_network_gib"
            group_by = "project"
            window = "1day"
            threshold = 500
            [rules.user_vcpu_week]
            metric = "owner_usage_vcpu_hours"
            group_by = "user"
            window = "7d"
            threshold = 1000
            "#,
        )
        .unwrap();
        c.validate(Duration::from_secs(5)).unwrap();
        c.validate_usage(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(c.usage_refresh, Duration::from_secs(30));
        assert_eq!(c.usage_timeout, Duration::from_secs(10));
        let rules = c.resolve_rules().unwrap();
        let quota = rules
            .iter()
            .find(|r| r.name == "project_cpu_quota")
            .unwrap();
        assert_eq!(quota.metric, Metric::OwnerUsageCpuSeconds);
        assert_eq!(
            quota.selector,
            ScopeSelector::Usage {
                by: OwnerKind::Project,
                window: Duration::from_secs(86_400)
            }
        );
        assert_eq!(quota.sustained, Duration::from_secs(300));
        // Two project rules over one day share one query.
        let keys = c.usage_keys().unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        // Built-in rules are not usage rules and need no ledger.
        parse("").unwrap().validate_usage(None).unwrap();
    }

    #[test]
    fn bad_usage_rules_name_the_key() {
        let rule = |body: &str| format!("[rules.q]\n{body}");
        let ok = "metric = \"owner_usage_cpu_seconds\"\ngroup_by = \"project\"\nthreshold = 10";
        let cases = [
            (
                rule(ok),
                "watchdog.rules.q.window: missing (owner_usage_cpu_seconds sums the usage ledger over a window",
            ),
            (
                rule(&format!("{ok}\nwindow = \"36d\"")),
                "watchdog.rules.q.window: 36d is out of range (whole seconds, 1s to 35d)",
            ),
            (
                rule(&format!("{ok}\nwindow = \"0s\"")),
                "watchdog.rules.q.window: 0s is out of range",
            ),
            (
                rule(&format!("{ok}\nwindow = \"1500ms\"")),
                "watchdog.rules.q.window: 1500ms is out of range",
            ),
            (
                rule(
                    "metric = \"owner_cpu_cores\"\ngroup_by = \"user\"\nthreshold = 8\nwindow = \"1h\"",
                ),
                "watchdog.rules.q.window: only usage metrics (owner_usage_*) take a window, not owner_cpu_cores",
            ),
            (
                "[rules.host_cpu]\nwindow = \"1h\"".to_owned(),
                "watchdog.rules.host_cpu.window: only usage metrics",
            ),
            (
                rule("metric = \"owner_usage_vcpu_hours\"\nwindow = \"1h\"\nthreshold = 10"),
                "watchdog.rules.q.group_by: missing (owner_usage_vcpu_hours",
            ),
            (
                rule(
                    "metric = \"owner_usage_cpu_seconds\"\ngroup_by = \"project\"\nwindow = \"1h\"\nthreshold = -1",
                ),
                "watchdog.rules.q.threshold: -1 is out of range for owner_usage_cpu_seconds (0..=1000000000000 CPU seconds)",
            ),
            (
                format!(
                    "usage_refresh = \"0s\"\n{}",
                    rule(&format!("{ok}\nwindow = \"1h\""))
                ),
                "watchdog.usage_refresh: 0s is out of range (1s to 1h)",
            ),
            (
                "usage_timeout = \"5m\"".to_owned(),
                "watchdog.usage_timeout: 5m is out of range (100ms to 1m)",
            ),
        ];
        for (toml, want) in cases {
            let err = parse(&toml)
                .unwrap()
                .validate(Duration::from_secs(5))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(want),
                "{toml:?}: got {err:?}, want {want:?}"
            );
        }
        let good = parse(&rule(&format!("{ok}\nwindow = \"30s\""))).unwrap();
        good.validate(Duration::from_secs(5)).unwrap();
        assert_eq!(
            good.validate_usage(None).unwrap_err().to_string(),
            "watchdog.rules.q.metric: owner_usage_cpu_seconds reads the usage ledger, \
             which is disabled (ledger.enabled = false)"
        );
        assert_eq!(
            good.validate_usage(Some(Duration::from_secs(60)))
                .unwrap_err()
                .to_string(),
            "watchdog.rules.q.window: 30s is shorter than the ledger interval 1m (ledger.interval)"
        );
        good.validate_usage(Some(Duration::from_secs(30))).unwrap();
        // A disabled watchdog does not care.
        let mut off = good.clone();
        off.enabled = false;
        off.validate_usage(None).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse("[rules.host_cpu]\nthreshhold = 0.9").unwrap_err();
        assert!(e.to_string().contains("threshhold"), "{e}");
        let e = parse("[sinks.t]\ntype = \"telegram\"\nchat = \"1\"").unwrap_err();
        assert!(e.to_string().contains("chat"), "{e}");
        let e = parse("[sinks.t]\ntype = \"pager\"").unwrap_err();
        assert!(e.to_string().contains("pager"), "{e}");
        let e = parse("sustained = \"5s\"").unwrap_err();
        assert!(e.to_string().contains("sustained"), "{e}");
    }

    #[test]
    fn a_bad_field_inside_a_sink_is_named() {
        let e = parse("[sinks.x]\ntype = \"webhook\"\nurl = \"http://h\"\nqueue_capacity = -1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_capacity: invalid value"), "{e}");
        let e = parse(
            "[sinks.x]\ntype = \"alertmanager\"\nurl = \"http://h\"\nresend_interval = \"soon\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("resend_interval: invalid duration"), "{e}");
        let e = parse("[sinks.x]\nurl = \"http://h\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `type`"), "{e}");
        let e = parse("[sinks.x]\ntype = 5").unwrap_err().to_string();
        assert!(e.contains("type: expected a string"), "{e}");
        let e = parse("[sinks.x]\ntype = \"pager\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("known: log, webhook, telegram, sentry, alertmanager"),
            "{e}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = parse(
            "[sinks.tg]\ntype = \"telegram\"\nbot_token = \"123:SECRETTOKEN\"\nchat_id = \"42\"\n\
             [sinks.slack]\ntype = \"webhook\"\nurl = \"https://hooks.example/T0/SECRETPATH\"\n\
             auth_header = \"Bearer SECRETBEARER\"\n\
             [sinks.s]\ntype = \"sentry\"\ndsn = \"https://SECRETKEY@sentry.example/1\"",
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("***"));
        c.validate(Duration::from_secs(5)).unwrap();
    }
}
