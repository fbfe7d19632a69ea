//! `[store]`: where persistent state lives, and opening it once.
//!
//! Reads: `[store] path` (env `VMSCOPE_STORE__PATH`), or the deprecated
//! `[watchdog] state_db_path` that the config loader moves here with a
//! warning; `XDG_STATE_HOME` / `HOME` for the default. Emits: [`Opened`],
//! the store the serve command hands to the watchdog (and next the ledger),
//! or the reason there is none. Fails: [`open`] only for a database another
//! running vmscope holds ([`StoreError::Locked`]): running beside it would
//! notify everything twice. Any other problem (no path, unwritable, full,
//! not ours, newer schema) is the users' to degrade around: they run in
//! memory and say so. [`StoreConfig::check`] tells `check-config` the same
//! without creating anything.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{DbMetrics, Location, Store, StoreError};
use crate::error::ErrorChain;

/// The key of the database path.
pub const PATH_KEY: &str = "store.path";
/// Where the path was set before `[store]` existed; still read, with a warning.
pub const OLD_PATH_KEY: &str = "watchdog.state_db_path";

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database holding alert episodes, the notification log and
    /// the outbox. `None`: no default applies (not root, and neither
    /// `XDG_STATE_HOME` nor `HOME` is set): its users run in memory.
    pub path: Option<PathBuf>,
    /// The key that set `path`, so that messages name what the user wrote:
    /// [`PATH_KEY`], or [`OLD_PATH_KEY`] when the configuration used it.
    #[serde(skip)]
    pub path_key: &'static str,
    /// `postgresql://...`: keep the watchdog's alert state (episodes,
    /// notification log, outbox) in PostgreSQL, one database for a fleet,
    /// each host's rows apart. The SQLite file at `path` still holds the
    /// usage ledger. `None`: everything in SQLite.
    pub database_url: Option<crate::outbound::redact::Secret>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_path(),
            path_key: PATH_KEY,
            database_url: None,
        }
    }
}

/// A bad `[store]` setting, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct StoreConfigError {
    pub key: &'static str,
    pub message: String,
}

/// `store.path` -> `VMSCOPE_STORE__PATH`.
fn env_var(key: &str) -> String {
    format!("VMSCOPE_{}", key.to_ascii_uppercase().replace('.', "__"))
}

impl StoreConfig {
    /// The key that set the path and its environment variable, as
    /// "store.path (VMSCOPE_STORE__PATH)".
    pub fn path_setting(&self) -> String {
        format!("{} ({})", self.path_key, env_var(self.path_key))
    }

    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<(), StoreConfigError> {
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(StoreConfigError {
                key: self.path_key,
                message: "must not be empty".to_owned(),
            });
        }
        self.postgres()?;
        Ok(())
    }

    /// `database_url`, parsed; `None` when unset. Errors never repeat it.
    pub fn postgres(&self) -> Result<Option<super::postgres::PgTarget>, StoreConfigError> {
        const KEY: &str = "store.database_url";
        let Some(url) = &self.database_url else {
            return Ok(None);
        };
        super::postgres::PgTarget::parse(KEY, url)
            .map(Some)
            .map_err(|message| StoreConfigError {
                key: KEY,
                // PgTarget's messages start with the key; ours adds it.
                message: message
                    .strip_prefix(&format!("{KEY}: "))
                    .map(str::to_owned)
                    .unwrap_or(message),
            })
    }

    /// For `check-config`: would `serve` keep its state? Names the key and
    /// the path; checks without creating or changing anything (see
    /// [`super::sqlite::probe`]). A database locked by a running agent is
    /// not an error here.
    pub fn check(&self) -> Result<(), StoreConfigError> {
        let err = |message: String| StoreConfigError {
            key: self.path_key,
            message,
        };
        let Some(path) = &self.path else {
            return Err(err(format!(
                "no default applies (not root, and neither XDG_STATE_HOME nor HOME is set): \
                 the watchdog would run without persistence and the usage ledger record nothing; set it \
                 (or {})",
                env_var(self.path_key)
            )));
        };
        super::sqlite::probe(path).map_err(|e| {
            err(format!(
                "{}; the watchdog would run without persistence and the usage ledger record nothing",
                ErrorChain(&e)
            ))
        })
    }
}

/// `/var/lib/vmscope/state.db` for root (the daemon); for anyone else the
/// user's state directory (`$XDG_STATE_HOME/vmscope`, else
/// `~/.local/state/vmscope`), so that `vmscope serve` run by hand as a
/// normal user starts instead of failing on a directory it cannot create.
/// A non-root user with neither variable set gets no default (`None`),
/// never root's path: that would be another user's state.
pub fn default_path() -> Option<PathBuf> {
    path_for(
        rustix::process::geteuid().is_root(),
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn path_for(
    root: bool,
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    const SYSTEM: &str = "/var/lib/vmscope/state.db";
    if root {
        return Some(PathBuf::from(SYSTEM));
    }
    // The XDG spec says relative values are to be ignored.
    let xdg = xdg_state_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = home.map(PathBuf::from).filter(|p| p.is_absolute());
    match (xdg, home) {
        (Some(x), _) => Some(x.join("vmscope/state.db")),
        (None, Some(h)) => Some(h.join(".local/state/vmscope/state.db")),
        (None, None) => None,
    }
}

/// The store as the serve command opened it, for its users.
pub struct Opened {
    /// Where it is (or would have been).
    pub path: Option<PathBuf>,
    /// `vmscope_db_*`, shared by every user of the store.
    pub metrics: Arc<DbMetrics>,
    /// The store, or why there is none (its users run in memory and say
    /// so, with this text as the cause).
    pub store: Result<Store, String>,
}

/// Open the watchdog's alert store in PostgreSQL for `host` when
/// `[store] database_url` is set (`None` otherwise). `Err` only for a host
/// another vmscope holds there; any other failure (unreachable, refused,
/// bad password) is the watchdog's to degrade around, like an unusable
/// SQLite file.
pub async fn open_alerts_pg(
    cfg: &StoreConfig,
    host: &str,
    metrics: Arc<DbMetrics>,
) -> Result<Option<Opened>, StoreError> {
    let target = match cfg.postgres() {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Ok(Some(Opened {
                path: None,
                metrics,
                store: Err(e.to_string()),
            }));
        }
    };
    let shown = format!("{} (host {host})", target.describe());
    let store = match Store::open(
        Location::Postgres {
            target: Box::new(target),
            host: host.to_owned(),
        },
        metrics.clone(),
    )
    .await
    {
        Ok(s) => Ok(s),
        Err(e @ StoreError::HostTaken { .. }) => return Err(e),
        Err(e) => Err(ErrorChain(&e).to_string()),
    };
    Ok(Some(Opened {
        path: Some(PathBuf::from(shown)),
        metrics,
        store,
    }))
}

/// Open the store once, for everything that uses it. `Err` only for a
/// database another vmscope holds.
pub async fn open(cfg: &StoreConfig, metrics: Arc<DbMetrics>) -> Result<Opened, StoreError> {
    let Some(path) = &cfg.path else {
        let why = format!(
            "no state database path: vmscope does not run as root and neither \
             XDG_STATE_HOME nor HOME is set; set {}",
            cfg.path_setting()
        );
        return Ok(Opened {
            path: None,
            metrics,
            store: Err(why),
        });
    };
    let store = match Store::open(Location::Sqlite(path.clone()), metrics.clone()).await {
        Ok(s) => Ok(s),
        Err(e @ StoreError::Locked { .. }) => return Err(e),
        Err(e) => Err(ErrorChain(&e).to_string()),
    };
    Ok(Opened {
        path: Some(path.clone()),
        metrics,
        store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_var_lib_for_root_and_the_user_state_dir_otherwise() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            path_for(true, os("/x"), os("/home/a")),
            p("/var/lib/vmscope/state.db")
        );
        assert_eq!(
            path_for(false, os("/x/state"), os("/home/a")),
            p("/x/state/vmscope/state.db")
        );
        assert_eq!(
            path_for(false, os("relative"), os("/home/a")),
            p("/home/a/.local/state/vmscope/state.db")
        );
        // Never root's path for another user: no default at all.
        assert_eq!(path_for(false, None, os("")), None);
        assert_eq!(path_for(false, None, None), None);
    }

    #[test]
    fn an_empty_section_takes_the_default_path() {
        let c: StoreConfig = toml::from_str("").unwrap();
        assert_eq!(c.path, default_path());
        assert_eq!(c.path_key, PATH_KEY);
        let c: StoreConfig = toml::from_str("path = \"/x/s.db\"").unwrap();
        assert_eq!(c.path, Some(PathBuf::from("/x/s.db")));
        assert!(toml::from_str::<StoreConfig>("paht = \"/x\"").is_err());
    }

    #[test]
    fn messages_name_the_key_that_was_used() {
        let mut c = StoreConfig {
            path: Some(PathBuf::new()),
            path_key: PATH_KEY,
            database_url: None,
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "store.path: must not be empty"
        );
        c.path_key = OLD_PATH_KEY;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("watchdog.state_db_path: ")
        );
        assert_eq!(
            c.path_setting(),
            "watchdog.state_db_path (VMSCOPE_WATCHDOG__STATE_DB_PATH)"
        );
        c.path = None;
        c.path_key = PATH_KEY;
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.starts_with("store.path: no default applies") && e.contains("VMSCOPE_STORE__PATH"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn open_says_why_there_is_no_store_and_fails_only_when_locked() {
        let none = StoreConfig {
            path: None,
            path_key: PATH_KEY,
            database_url: None,
        };
        let o = open(&none, Arc::new(DbMetrics::new())).await.unwrap();
        let why = o.store.err().unwrap();
        assert!(
            why.contains("no state database path") && why.contains("store.path"),
            "{why}"
        );

        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            path: Some(dir.path().join("s.db")),
            path_key: PATH_KEY,
            database_url: None,
        };
        let first = open(&cfg, Arc::new(DbMetrics::new())).await.unwrap();
        assert!(first.store.is_ok());
        let second = open(&cfg, Arc::new(DbMetrics::new())).await;
        assert!(matches!(second, Err(StoreError::Locked { .. })));

        // Not a database: opened, but without a store, saying why.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, "notes, not a database\n".repeat(100)).unwrap();
        let cfg = StoreConfig {
            path: Some(junk.clone()),
            path_key: PATH_KEY,
            database_url: None,
        };
        let o = open(&cfg, Arc::new(DbMetrics::new())).await.unwrap();
        assert_eq!(o.path, Some(junk));
        assert!(o.store.is_err());
    }
}
