//! Scoped views and expositions, cached per snapshot: what a tenant token
//! or an anonymous `host_only` caller is served.
//!
//! Reads: the current `Arc<Snapshot>` and who asks ([`View`]). Emits: the
//! tenant's [`Snapshot::for_tenant`] view (for the JSON resources) and
//! [`Exposition`]s of a [`Part`] of it (for `/metrics` and
//! `/metrics.json`).
//!
//! Design: many tenants scraping the same host must stay cheap. Each
//! tenant's view is built once per snapshot (one pass over the host's VMs,
//! clones of the tenant's own) and each (view, format, gzip) body encoded
//! once per snapshot; later requests copy a `Bytes`. A tenant's body is
//! small (its VMs), so it is one chunk, gzip'd whole, with no live tail:
//! the live sources (HTTP, watchdog, store) describe the host. Everything
//! is dropped when a new snapshot arrives; at most [`MAX_ENTRIES`] views
//! and bodies are kept for one snapshot (scopes come from the configured
//! tokens, so this bounds memory, not callers), past which the tables are
//! cleared and refilled.
//!
//! Failure: a gzip error is a [`CacheError`]; nothing partial is kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cache::{CacheError, Exposition};
use super::snapshot::{Part, SnapshotPart};
use super::writer::Format;
use crate::model::Snapshot;
use crate::model::scope::TenantScope;

/// Views and bodies kept per snapshot, each table.
pub const MAX_ENTRIES: usize = 1024;

/// Who is served a scoped exposition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum View {
    Tenant(TenantScope),
    HostOnly,
}

impl View {
    fn part(&self) -> Part {
        match self {
            View::Tenant(_) => Part::Tenant,
            View::HostOnly => Part::HostOnly,
        }
    }
}

#[derive(Default)]
pub struct ScopedCache {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    /// The snapshot everything below was built from (held, so that a new
    /// snapshot at a freed one's address is not mistaken for it).
    snapshot: Option<Arc<Snapshot>>,
    views: HashMap<TenantScope, Arc<Snapshot>>,
    bodies: HashMap<(View, Format, bool), Bytes>,
}

impl Tables {
    /// Forget everything of another snapshot.
    fn sync(&mut self, snapshot: &Arc<Snapshot>) {
        if !self
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snapshot))
        {
            self.snapshot = Some(Arc::clone(snapshot));
            self.views.clear();
            self.bodies.clear();
        }
    }
}

impl ScopedCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `scope`'s view of `snapshot`, built on the first call per snapshot.
    pub fn view(&self, snapshot: &Arc<Snapshot>, scope: &TenantScope) -> Arc<Snapshot> {
        {
            let mut t = self.tables();
            t.sync(snapshot);
            if let Some(v) = t.views.get(scope) {
                return Arc::clone(v);
            }
        }
        // Built outside the lock: other tenants are not held up. Two first
        // requests of one tenant may both build it; either copy is right.
        let view = Arc::new(snapshot.for_tenant(scope));
        let mut t = self.tables();
        t.sync(snapshot);
        if t.snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snapshot))
        {
            if t.views.len() >= MAX_ENTRIES {
                t.views.clear();
            }
            t.views.insert(scope.clone(), Arc::clone(&view));
        }
        view
    }

    /// The exposition `view` is served of `snapshot`.
    pub fn render(
        &self,
        snapshot: &Arc<Snapshot>,
        view: &View,
        format: Format,
        gzip: bool,
    ) -> Result<Exposition, CacheError> {
        let key = (view.clone(), format, gzip);
        let cached = {
            let mut t = self.tables();
            t.sync(snapshot);
            t.bodies.get(&key).cloned()
        };
        let body = match cached {
            Some(b) => b,
            None => {
                let source = match view {
                    View::Tenant(scope) => self.view(snapshot, scope),
                    View::HostOnly => Arc::clone(snapshot),
                };
                let text = super::encode(format, &[&SnapshotPart(&source, view.part())]);
                let body = if gzip {
                    gzip_all(text.as_bytes())?
                } else {
                    Bytes::from(text)
                };
                let mut t = self.tables();
                t.sync(snapshot);
                if t.bodies.len() >= MAX_ENTRIES {
                    t.bodies.clear();
                }
                t.bodies.insert(key, body.clone());
                body
            }
        };
        Ok(Exposition {
            format,
            gzip,
            chunks: vec![body],
            seq: snapshot.seq,
        })
    }
}

fn gzip_all(text: &[u8]) -> Result<Bytes, CacheError> {
    super::cache::gzip_parts(&[text]).map(Bytes::from)
}
