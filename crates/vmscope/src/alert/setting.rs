//! What every `[watchdog]` config file shares: the error that names a bad
//! setting by its key, and the serde helpers for its values.
//!
//! A leaf: `config.rs` (rules, the section) and `sinks/` (each sink's own
//! settings) both use it, and neither has to import the other for it.
//! Fails: [`ConfigError`], whose message starts with the offending key
//! (`watchdog.rules.vm_cpu.sustained: ...`).

/// A bad `[watchdog]` setting. `key` is the full dotted path of the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

pub(crate) fn default_true() -> bool {
    true
}

/// The one duration style of the configuration (`model::de_duration`).
pub(crate) use crate::model::de_duration;
