//! `vmscope_owner_source_*`: how each fetched owner source is doing.
//!
//! Reads: each running source's published health (`runner::Published`),
//! shared with the runner's threads, at scrape time: never the collector
//! thread, never the source itself. Emits: one series per fetched source
//! (facts sources such as `nova` cannot fail and have none). Fails: never.

use std::sync::Arc;

use super::runner::Published;
use crate::export::{Desc, MetricSource, MetricWriter};
use crate::model::unix_seconds;

static UP: Desc = Desc::gauge(
    "vmscope_owner_source_up",
    "1 if the owner source's last fetch succeeded, 0 if it failed (its last good rows are still used).",
);
static LAST_SUCCESS: Desc = Desc::gauge(
    "vmscope_owner_source_last_success_timestamp_seconds",
    "Unix time of the owner source's last successful fetch.",
);
static ROWS: Desc = Desc::gauge(
    "vmscope_owner_source_rows",
    "Rows in the owner source's mapping in use (the last good one).",
);
static ERRORS: Desc = Desc::counter(
    "vmscope_owner_source_errors_total",
    "Failed fetches of the owner source, by kind (read, parse, timeout, panic, ...).",
);

/// The fetched sources' health, by source name.
pub struct OwnerSourceMetrics {
    sources: Vec<(&'static str, Arc<Published>)>,
}

impl OwnerSourceMetrics {
    pub fn new(sources: Vec<(&'static str, Arc<Published>)>) -> Self {
        OwnerSourceMetrics { sources }
    }
}

impl MetricSource for OwnerSourceMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        if self.sources.is_empty() {
            return;
        }
        let health: Vec<_> = self
            .sources
            .iter()
            .map(|(name, p)| (*name, p.health()))
            .collect();
        out.family(&UP);
        for (name, h) in &health {
            out.sample(&[("source", name)], u64::from(h.up));
        }
        out.family(&LAST_SUCCESS);
        for (name, h) in &health {
            if let Some(t) = h.last_success {
                out.sample(&[("source", name)], unix_seconds(t));
            }
        }
        out.family(&ROWS);
        for (name, h) in &health {
            out.sample(&[("source", name)], h.rows as u64);
        }
        out.family(&ERRORS);
        for (name, h) in &health {
            for (kind, n) in &h.errors {
                out.sample(&[("source", name), ("kind", kind)], *n);
            }
        }
    }
}
