//! `vmscope_owner_source_*`: how each fetched owner source is doing, and
//! `vmscope_platform_*`: the platform's inventory as the sources see it.
//!
//! Reads: each running source's published health and latest map
//! (`runner::Published`), shared with the runner's threads, at scrape
//! time: never the collector thread, never the source itself. The
//! inventory ([`Inventory`](super::Inventory)) was counted by the source's
//! fetch in the background; a scrape only copies a few numbers.
//! Emits: one series per fetched source (facts sources such as `nova`
//! cannot fail and have none); the inventory families per source that
//! reports them (`source` label: the SQL and Redis sources, or a later
//! HTTP one, may each know users or sessions, and their figures are not
//! to be added up). Fails: never; a map being swapped at the very moment
//! of a scrape is skipped for that scrape (a scrape never waits).

use std::sync::Arc;

use super::DaysHistogram;
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

static SKIPPED: Desc = Desc::gauge(
    "vmscope_owner_source_rows_skipped",
    "Malformed rows (no VM key or two, a value of the wrong type, no owner field) the owner source skipped in the mapping in use.",
);
static USERS: Desc = Desc::gauge(
    "vmscope_platform_users",
    "Platform users by active state, as the owner source (its users_query) counts them.",
);
static SESSIONS: Desc = Desc::gauge(
    "vmscope_platform_sessions",
    "Live sessions in the platform's session store, as the owner source counts them.",
);
static LAST_START_AGE: Desc = Desc::histogram(
    "vmscope_platform_user_last_vm_start_age_seconds",
    "Platform users by time since they last started a VM (buckets 1, 3, 7, 14, 30, 90, 365 days), from the owner source's last_start_query.",
);

/// [`DaysHistogram::BOUNDS_DAYS`] in seconds (the base unit).
fn bounds_seconds() -> [f64; 7] {
    DaysHistogram::BOUNDS_DAYS.map(|d| (d * 86_400) as f64)
}

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
        self.encode_inventory(out);
    }
}

impl OwnerSourceMetrics {
    /// From each source's latest map: its skipped rows and the
    /// `vmscope_platform_*` families; families no source reports are left
    /// out.
    fn encode_inventory(&self, out: &mut MetricWriter<'_>) {
        let maps: Vec<_> = self
            .sources
            .iter()
            .filter_map(|(name, p)| Some((*name, p.try_map()?)))
            .collect();
        out.family(&SKIPPED);
        for (name, m) in &maps {
            out.sample(&[("source", name)], m.skipped as u64);
        }
        out.family(&USERS);
        for (name, m) in &maps {
            for (state, n) in &m.inventory.users_by_state {
                out.sample(&[("source", name), ("state", state)], *n);
            }
        }
        out.family(&SESSIONS);
        for (name, m) in &maps {
            if let Some(n) = m.inventory.sessions {
                out.sample(&[("source", name)], n);
            }
        }
        out.family(&LAST_START_AGE);
        let bounds = bounds_seconds();
        for (name, m) in &maps {
            if let Some(h) = &m.inventory.last_vm_start {
                let mut buckets = [(0.0, 0u64); 7];
                for ((slot, le), n) in buckets.iter_mut().zip(bounds).zip(h.cumulative) {
                    *slot = (le, n);
                }
                out.histogram(&[("source", name)], &buckets, h.sum_seconds, h.count());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::export::Format;
    use crate::owners::runner::{self, FetchError, OwnerSource, RunOptions};
    use crate::owners::{Inventory, OwnerMap};

    struct Fixed(OwnerMap);

    impl OwnerSource for Fixed {
        fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
            Ok(self.0.clone())
        }
    }

    fn running(name: &'static str, inventory: Inventory) -> runner::Running {
        let mut map = OwnerMap::default();
        map.inventory = inventory;
        map.skipped = 4;
        let opts = RunOptions {
            every: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        };
        runner::spawn(name, Box::new(Fixed(map)), opts).unwrap()
    }

    fn encode(m: &OwnerSourceMetrics, format: Format) -> String {
        let mut s = String::new();
        let mut w = MetricWriter::new(&mut s, format);
        m.encode(&mut w);
        w.finish();
        s
    }

    #[test]
    fn inventory_families_per_source_with_the_day_buckets_in_seconds() {
        let mut hist = DaysHistogram::default();
        let day = Duration::from_secs(86_400);
        hist.observe(day / 2);
        hist.observe(day * 20);
        hist.observe(day * 400);
        let sql = running(
            "sql",
            Inventory {
                users_by_state: vec![("active".into(), 7), ("bl\"ock\ned".into(), 2)],
                sessions: None,
                last_vm_start: Some(hist),
            },
        );
        let redis = running(
            "redis",
            Inventory {
                sessions: Some(3),
                ..Inventory::default()
            },
        );
        let file = running("file", Inventory::default());
        let m = OwnerSourceMetrics::new(
            [&sql, &redis, &file]
                .iter()
                .map(|r| (r.name, std::sync::Arc::clone(&r.published)))
                .collect(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while [&sql, &redis, &file]
            .iter()
            .any(|r| !r.published.health().up)
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = encode(&m, Format::Text);
        for want in [
            "# TYPE vmscope_platform_users gauge\n",
            "vmscope_platform_users{source=\"sql\",state=\"active\"} 7\n",
            "vmscope_platform_users{source=\"sql\",state=\"bl\\\"ock\\ned\"} 2\n",
            "vmscope_platform_sessions{source=\"redis\"} 3\n",
            "vmscope_owner_source_rows_skipped{source=\"file\"} 4\n",
            "# TYPE vmscope_platform_user_last_vm_start_age_seconds histogram\n",
            "vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"86400\"} 1\n",
            "vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"1209600\"} 1\n",
            "vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"2592000\"} 2\n",
            "vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"31536000\"} 2\n",
            "vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"+Inf\"} 3\n",
            "vmscope_platform_user_last_vm_start_age_seconds_count{source=\"sql\"} 3\n",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        // No source reports sessions or users but these: no other series.
        assert!(!text.contains("vmscope_platform_sessions{source=\"sql\"}"));
        assert!(!text.contains("source=\"file\",state"));
        let om = encode(&m, Format::OpenMetrics);
        assert!(
            om.contains("vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"86400.0\"} 1\n")
                || om.contains("vmscope_platform_user_last_vm_start_age_seconds_bucket{source=\"sql\",le=\"86400\"} 1\n"),
            "{om}"
        );
    }
}
