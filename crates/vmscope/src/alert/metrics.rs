//! The watchdog's metrics, written into `/metrics` through
//! [`MetricSource`]:
//! - `vmscope_alert_active{alert,severity,scope}`: 1 per firing (rule, scope);
//!   absent when nothing fires (as Prometheus' own `ALERTS`);
//! - `vmscope_alert_since_timestamp_seconds{alert}`: when the rule's oldest
//!   firing episode started;
//! - `vmscope_alert_notifications_total{sink,result}`: delivery outcomes;
//!   `result` is one of [`DeliveryResult`]; every configured sink has all
//!   of them from the start (zeros included);
//! - `vmscope_watchdog_persistence_enabled`: 1 while the watchdog records
//!   its state in the database, 0 when it runs in memory (the database
//!   could not be used; the reason is in `/healthz` and the log); absent
//!   when the watchdog is disabled;
//! - `vmscope_db_query_duration_seconds{op}`, `vmscope_db_errors_total{op}`
//!   from the store's [`DbMetrics`];
//! - with usage rules configured only: `vmscope_watchdog_usage_queries_total{result}`
//!   (ledger queries of the usage rules: `success`, `error`, `timeout`) and
//!   `vmscope_watchdog_usage_answer_age_seconds{group_by,window}` (age of
//!   the newest answer per query; absent until the first).
//!
//! It also reports the store under `/healthz` `components.watchdog_store`.
//!
//! Label values are bounded: rule and sink names come from the config,
//! scopes are the host, configured filesystems, the VMs on this host and the owners (users or projects) of those VMs
//! (for usage rules: owners in the ledger's window, at most `usage::MAX_GROUPS` per rule);
//! `group_by` and `window` come from the configured usage rules.
//! Reading never blocks for long: two short mutexes, no IO.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::SystemTime;

use super::engine::ActiveAlert;
use super::rules::UsageKey;
use crate::export::{ComponentHealth, Desc, MetricSource, MetricWriter};
use crate::store::DbMetrics;

/// Outcome of delivering one notification to one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryResult {
    /// Delivered (also counts Alertmanager re-sends).
    Success,
    /// One failed attempt that will be retried (5xx, 429, unreachable).
    Retry,
    /// Refused with a 4xx other than 429: not retried.
    Rejected,
    /// Given up: the sink's queue overflowed, or shutdown came first.
    Dropped,
}

impl DeliveryResult {
    pub const ALL: [DeliveryResult; 4] = [
        DeliveryResult::Success,
        DeliveryResult::Retry,
        DeliveryResult::Rejected,
        DeliveryResult::Dropped,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Success => "success",
            DeliveryResult::Retry => "retry",
            DeliveryResult::Rejected => "rejected",
            DeliveryResult::Dropped => "dropped",
        }
    }
}

/// Outcome of one ledger query of the usage rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UsageQueryResult {
    Success,
    /// The ledger answered with an error (or has no database).
    Error,
    /// No answer within `usage_timeout`.
    Timeout,
}

impl UsageQueryResult {
    pub const ALL: [UsageQueryResult; 3] = [
        UsageQueryResult::Success,
        UsageQueryResult::Error,
        UsageQueryResult::Timeout,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            UsageQueryResult::Success => "success",
            UsageQueryResult::Error => "error",
            UsageQueryResult::Timeout => "timeout",
        }
    }
}

static USAGE_QUERIES: Desc = Desc::counter(
    "vmscope_watchdog_usage_queries_total",
    "Usage-ledger queries of the watchdog's usage rules, by result (success, error, timeout).",
);
static USAGE_AGE: Desc = Desc::gauge(
    "vmscope_watchdog_usage_answer_age_seconds",
    "Age of the newest usage-ledger answer per usage-rule query (group_by, window); usage rules hold when it grows past three refreshes plus the timeout.",
);

static ACTIVE: Desc = Desc::gauge(
    "vmscope_alert_active",
    "Watchdog alerts firing now, one series per rule and scope (value 1).",
);
static SINCE: Desc = Desc::gauge(
    "vmscope_alert_since_timestamp_seconds",
    "Unix time the oldest firing episode of the rule started.",
);
static NOTIFICATIONS: Desc = Desc::counter(
    "vmscope_alert_notifications_total",
    "Watchdog notification deliveries by sink and result (success, retry, rejected, dropped).",
);
static PERSISTENCE: Desc = Desc::gauge(
    "vmscope_watchdog_persistence_enabled",
    "1 while the watchdog keeps alert state and undelivered notifications in its state database; 0 when it runs in memory only (see /healthz).",
);
static DB_DURATION: Desc = Desc::histogram(
    "vmscope_db_query_duration_seconds",
    "Time spent in state-database operations, by operation.",
);
static DB_ERRORS: Desc = Desc::counter(
    "vmscope_db_errors_total",
    "State-database operations that failed, by operation.",
);

/// Shared between the watchdog loop, the sink tasks and `/metrics`.
pub struct AlertMetrics {
    active: Mutex<Vec<ActiveAlert>>,
    /// Fixed at start: (sink, result) -> count. Never grows afterwards.
    notifications: BTreeMap<(String, DeliveryResult), AtomicU64>,
    db: Arc<DbMetrics>,
    persistence: Mutex<Option<Persistence>>,
    /// Usage rules' queries: (group_by, window) -> time of the newest
    /// answer; empty (and the usage families absent) without usage rules.
    usage_answers: Mutex<BTreeMap<UsageKey, Option<SystemTime>>>,
    usage_queries: [AtomicU64; 3],
}

/// Where the watchdog keeps its state, once started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// In this database.
    Database(String),
    /// Nowhere: in memory, for this reason.
    InMemory(String),
}

impl AlertMetrics {
    pub fn new(sinks: &[String], db: Arc<DbMetrics>) -> Self {
        let mut notifications = BTreeMap::new();
        for s in sinks {
            for r in DeliveryResult::ALL {
                notifications.insert((s.clone(), r), AtomicU64::new(0));
            }
        }
        AlertMetrics {
            active: Mutex::new(Vec::new()),
            notifications,
            db,
            persistence: Mutex::new(None),
            usage_answers: Mutex::new(BTreeMap::new()),
            usage_queries: Default::default(),
        }
    }

    /// The usage rules' queries: their families appear on `/metrics`.
    pub fn set_usage_keys(&self, keys: &[UsageKey]) {
        let mut m = self.usage_answers.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            m.entry(*k).or_insert(None);
        }
    }

    pub fn usage_query(&self, r: UsageQueryResult) {
        self.usage_queries[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn usage_queries(&self, r: UsageQueryResult) -> u64 {
        self.usage_queries[r as usize].load(Ordering::Relaxed)
    }

    /// A query for `key` answered, as of `at`.
    pub fn usage_answered(&self, key: UsageKey, at: SystemTime) {
        let mut m = self.usage_answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = m.get_mut(&key) {
            *t = Some(at);
        }
    }

    /// Say where state is kept (the gauge and `/healthz`).
    pub fn set_persistence(&self, p: Persistence) {
        *self.persistence.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
    }

    pub fn persistence(&self) -> Option<Persistence> {
        self.persistence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn count(&self, sink: &str, result: DeliveryResult) {
        if let Some(c) = self.notifications.get(&(sink.to_owned(), result)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn notifications(&self, sink: &str, result: DeliveryResult) -> u64 {
        self.notifications
            .get(&(sink.to_owned(), result))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn set_active(&self, active: Vec<ActiveAlert>) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = active;
    }

    pub fn active(&self) -> Vec<ActiveAlert> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn db(&self) -> &Arc<DbMetrics> {
        &self.db
    }
}

impl MetricSource for AlertMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        let active = self.active();
        out.family(&ACTIVE);
        for a in &active {
            out.sample(
                &[
                    ("alert", &a.rule),
                    ("severity", a.severity.as_str()),
                    ("scope", &a.scope_key),
                ],
                1u64,
            );
        }
        let mut since: BTreeMap<&str, f64> = BTreeMap::new();
        for a in &active {
            let t = crate::model::unix_seconds(a.started_at);
            since
                .entry(a.rule.as_str())
                .and_modify(|s| *s = s.min(t))
                .or_insert(t);
        }
        out.family(&SINCE);
        for (rule, t) in since {
            out.sample(&[("alert", rule)], t);
        }
        out.family(&NOTIFICATIONS);
        for ((sink, result), c) in &self.notifications {
            out.sample(
                &[("sink", sink), ("result", result.as_str())],
                c.load(Ordering::Relaxed),
            );
        }
        if let Some(p) = self.persistence() {
            out.family(&PERSISTENCE);
            out.sample(&[], u64::from(matches!(p, Persistence::Database(_))));
        }
        let db = self.db.snapshot();
        out.family(&DB_DURATION);
        for (op, s) in &db {
            s.duration.write(out, &[("op", op)]);
        }
        out.family(&DB_ERRORS);
        for (op, s) in &db {
            out.sample(&[("op", op)], s.errors);
        }
        let usage = self
            .usage_answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !usage.is_empty() {
            out.family(&USAGE_QUERIES);
            for r in UsageQueryResult::ALL {
                out.sample(&[("result", r.as_str())], self.usage_queries(r));
            }
            out.family(&USAGE_AGE);
            let now = SystemTime::now();
            for (key, at) in usage {
                let Some(at) = at else { continue };
                let window = super::usage::show_window(key.window);
                let age = now.duration_since(at).unwrap_or_default().as_secs_f64();
                out.sample(&[("group_by", key.by.as_str()), ("window", &window)], age);
            }
        }
    }

    fn health(&self) -> Option<(&'static str, ComponentHealth)> {
        let h = match self.persistence()? {
            Persistence::Database(path) => ComponentHealth {
                status: "ok",
                detail: path,
            },
            Persistence::InMemory(why) => ComponentHealth {
                status: "degraded",
                detail: format!(
                    "the watchdog runs without persistence (alert state and undelivered notifications do not survive a restart): {why}"
                ),
            },
        };
        Some(("watchdog_store", h))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::alert::rules::Severity;
    use crate::export::{Format, encode};

    #[test]
    fn exposition_has_every_family_and_fixed_label_sets() {
        let db = Arc::new(DbMetrics::new());
        db.observe("apply", Duration::from_millis(2), true);
        db.observe("apply", Duration::from_millis(700), false);
        let m = AlertMetrics::new(&["log".to_owned(), "am".to_owned()], db);
        m.count("am", DeliveryResult::Success);
        m.count("unknown-sink", DeliveryResult::Success);
        m.set_active(vec![
            ActiveAlert {
                rule: "vm_cpu".into(),
                severity: Severity::Warning,
                scope_key: "vm:a".into(),
                started_at: UNIX_EPOCH + Duration::from_secs(200),
            },
            ActiveAlert {
                rule: "vm_cpu".into(),
                severity: Severity::Warning,
                scope_key: "vm:b".into(),
                started_at: UNIX_EPOCH + Duration::from_secs(100),
            },
        ]);
        let text = encode(Format::Text, &[&m]);
        for line in [
            "vmscope_alert_active{alert=\"vm_cpu\",severity=\"warning\",scope=\"vm:a\"} 1",
            "vmscope_alert_since_timestamp_seconds{alert=\"vm_cpu\"} 100",
            "vmscope_alert_notifications_total{sink=\"am\",result=\"success\"} 1",
            "vmscope_alert_notifications_total{sink=\"log\",result=\"dropped\"} 0",
            "vmscope_db_query_duration_seconds_bucket{op=\"apply\",le=\"0.0025\"} 1",
            "vmscope_db_query_duration_seconds_bucket{op=\"apply\",le=\"+Inf\"} 2",
            "vmscope_db_query_duration_seconds_count{op=\"apply\"} 2",
            "vmscope_db_errors_total{op=\"apply\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("unknown-sink"));
        // Without usage rules, no usage families.
        assert!(!text.contains("vmscope_watchdog_usage"), "{text}");
    }

    #[test]
    fn usage_families_appear_with_usage_rules_and_say_each_querys_age() {
        use crate::alert::rules::{OwnerKind, UsageKey};
        let m = AlertMetrics::new(&["log".to_owned()], Arc::new(DbMetrics::new()));
        let day = UsageKey {
            by: OwnerKind::Project,
            window: Duration::from_secs(86_400),
        };
        let hour = UsageKey {
            by: OwnerKind::User,
            window: Duration::from_secs(3600),
        };
        m.set_usage_keys(&[day, hour]);
        m.usage_query(UsageQueryResult::Success);
        m.usage_query(UsageQueryResult::Timeout);
        m.usage_query(UsageQueryResult::Timeout);
        m.usage_answered(day, std::time::SystemTime::now() - Duration::from_secs(30));
        let text = encode(Format::Text, &[&m]);
        for line in [
            "vmscope_watchdog_usage_queries_total{result=\"success\"} 1",
            "vmscope_watchdog_usage_queries_total{result=\"error\"} 0",
            "vmscope_watchdog_usage_queries_total{result=\"timeout\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let age: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "vmscope_watchdog_usage_answer_age_seconds{group_by=\"project\",window=\"24h\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no age for project/24h in\n{text}"));
        assert!((30.0..40.0).contains(&age), "{age}");
        // No answer yet for the user query: no age series for it.
        assert!(!text.contains("window=\"1h\""), "{text}");
        assert!(
            text.contains("vmscope_exposition_series_skipped{reason=\"duplicate\"} 0")
                && text.contains("vmscope_exposition_series_skipped{reason=\"invalid\"} 0"),
            "{text}"
        );
    }
}
