//! The watchdog's alert history as plain values, for whoever shows it
//! (`GET /api/v1/alerts` in `crate::api::alerts`, next `top` and the status
//! page): firing episodes and resolved ones, from the state database.
//!
//! Reads: the watchdog's [`Store`] (episodes), through [`Store::query`].
//! Emits: [`EpisodePage`]s. Fails: [`HistoryError::Unavailable`] when there
//! is no database to read (the watchdog is disabled, or runs in memory:
//! [`NoStore`] says which), [`HistoryError::Store`] when the read failed.
//! Knows nothing of HTTP: the caller maps these to its answers.

use crate::store::{EpisodePage, EpisodeQuery, Store, StoreError};

/// Why there is no store to answer from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStore {
    /// `watchdog.enabled = false`.
    Disabled,
    /// The watchdog runs in memory: its database could not be used.
    InMemory,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no alert history: {0:?}")]
    Unavailable(NoStore),
    #[error("reading the alert history")]
    Store(#[source] StoreError),
}

/// A handle on the alert history: cheap to clone, shared by readers.
#[derive(Clone)]
pub struct AlertHistory {
    store: Result<Store, NoStore>,
}

impl AlertHistory {
    pub(crate) fn new(store: Result<Store, NoStore>) -> Self {
        AlertHistory { store }
    }

    /// No history: the watchdog is disabled (or not started, as in tests
    /// that serve snapshots only).
    pub fn disabled() -> Self {
        AlertHistory::new(Err(NoStore::Disabled))
    }

    /// Whether there is a history to read (the status page shows alerts
    /// only then).
    pub fn available(&self) -> bool {
        self.store.is_ok()
    }

    /// The episodes `q` asks for: all active ones and one page of history.
    pub async fn query(&self, q: EpisodeQuery) -> Result<EpisodePage, HistoryError> {
        let store = self
            .store
            .as_ref()
            .map_err(|n| HistoryError::Unavailable(*n))?;
        store.query(q).await.map_err(HistoryError::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_store_the_history_says_why() {
        for (history, want) in [
            (AlertHistory::disabled(), NoStore::Disabled),
            (AlertHistory::new(Err(NoStore::InMemory)), NoStore::InMemory),
        ] {
            match history.query(EpisodeQuery::default()).await {
                Err(HistoryError::Unavailable(n)) => assert_eq!(n, want),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("answered without a store"),
            }
        }
    }
}
