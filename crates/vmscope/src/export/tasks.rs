//! `vmscope_task_*`: one health family set for every background task
//! (collection, owner refresh, ledger flush, rule evaluation, pushes), so one alert rule covers them all:
//! `time() - vmscope_task_last_success_timestamp_seconds > 3 * interval`.
//!
//! Each task reports into one small registry, [`global`], at the place
//! that already knows how its run went (the collector thread after a tick,
//! the owner runner after a fetch, `LedgerMetrics::flushed`, the watchdog
//! loop after an evaluation). The registry is process-wide, like the
//! `tracing` dispatcher, so reporting costs those places one line and no
//! new constructor argument; `vmscope serve` exports it ([`TaskMetrics`]).
//! Task-specific detail stays in each task's own families
//! (`vmscope_owner_source_*`, `vmscope_ledger_*`, ...): these are the
//! common denominator, not a copy.
//!
//! Pushers (`push/`) report per protocol ([`PUSH_REMOTE_WRITE`],
//! [`PUSH_OTLP`]): a push that was sent succeeded, one that was refused or
//! dropped failed. [`TaskHealth::register`] at start makes the series
//! exist before the first run.
//!
//! Reads: what the tasks reported (one short mutex, no IO). Emits:
//! `vmscope_task_last_success_timestamp_seconds{task}` (only once a run
//! succeeded), `vmscope_task_errors_total{task}`,
//! `vmscope_task_runs_total{task}`, `vmscope_task_duration_seconds{task}`
//! (the last run's). Label values are task names fixed in code, so bounded.
//! Fails: never.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Desc, MetricSource, MetricWriter};

/// The collector thread's tick (discovery, every collector, the snapshot).
pub const COLLECTION: &str = "collection";
/// One fetch of an owner source (all sources count here; per source see
/// `vmscope_owner_source_*`).
pub const OWNER_REFRESH: &str = "owner_refresh";
/// One flush of the usage ledger to the state database.
pub const LEDGER_FLUSH: &str = "ledger_flush";
/// One watchdog evaluation of the rules over a snapshot (and dispatch).
pub const RULE_EVALUATION: &str = "rule_evaluation";
/// One push to a remote_write destination, retries included (all such
/// destinations count here; per destination see `vmscope_push_*`).
pub const PUSH_REMOTE_WRITE: &str = "push_remote_write";
/// One push to an OTLP destination, retries included.
pub const PUSH_OTLP: &str = "push_otlp";

static LAST_SUCCESS: Desc = Desc::gauge(
    "vmscope_task_last_success_timestamp_seconds",
    "Unix time of the background task's last successful run (absent until one succeeded).",
);
static ERRORS: Desc = Desc::counter(
    "vmscope_task_errors_total",
    "Runs of the background task that failed.",
);
static RUNS: Desc = Desc::counter(
    "vmscope_task_runs_total",
    "Runs of the background task, failed or not.",
);
static DURATION: Desc = Desc::gauge(
    "vmscope_task_duration_seconds",
    "How long the background task's last successful run took.",
);

/// At most this many task names: far above the handful in code; a bug
/// that made names up could not grow the registry without bound.
const MAX_TASKS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    task: &'static str,
    last_success: Option<SystemTime>,
    last_duration: Option<Duration>,
    runs: u64,
    errors: u64,
}

/// What each background task reported, by task name, in registration order.
#[derive(Debug, Default)]
pub struct TaskHealth {
    tasks: Mutex<Vec<Entry>>,
}

static GLOBAL: TaskHealth = TaskHealth::new();

/// The process's registry: what tasks report into and `serve` exports.
pub fn global() -> &'static TaskHealth {
    &GLOBAL
}

impl TaskHealth {
    pub const fn new() -> Self {
        TaskHealth {
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Makes `task`'s series exist (zero runs) before its first run.
    pub fn register(&self, task: &'static str) {
        self.with(task, |_| {});
    }

    /// A run of `task` succeeded now and took `took`.
    pub fn succeeded(&self, task: &'static str, took: Duration) {
        self.succeeded_at(task, took, SystemTime::now());
    }

    fn succeeded_at(&self, task: &'static str, took: Duration, at: SystemTime) {
        self.with(task, |e| {
            e.runs += 1;
            e.last_success = Some(at);
            e.last_duration = Some(took);
        });
    }

    /// A run of `task` failed.
    pub fn failed(&self, task: &'static str) {
        self.with(task, |e| {
            e.runs += 1;
            e.errors += 1;
        });
    }

    /// A successful or failed run, as `ok` says.
    pub fn report(&self, task: &'static str, took: Duration, ok: bool) {
        if ok {
            self.succeeded(task, took);
        } else {
            self.failed(task);
        }
    }

    fn with(&self, task: &'static str, f: impl FnOnce(&mut Entry)) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = tasks.iter_mut().find(|e| e.task == task) {
            return f(e);
        }
        if tasks.len() >= MAX_TASKS {
            return;
        }
        let mut e = Entry {
            task,
            last_success: None,
            last_duration: None,
            runs: 0,
            errors: 0,
        };
        f(&mut e);
        tasks.push(e);
    }

    fn entries(&self) -> Vec<Entry> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// [`global`] as a metric source.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskMetrics;

impl MetricSource for TaskMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        encode(global(), out);
    }
}

impl MetricSource for TaskHealth {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        encode(self, out);
    }
}

fn encode(health: &TaskHealth, out: &mut MetricWriter<'_>) {
    let tasks = health.entries();
    if tasks.is_empty() {
        return;
    }
    out.family(&LAST_SUCCESS);
    for e in &tasks {
        if let Some(t) = e.last_success {
            let secs = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            out.sample(&[("task", e.task)], secs);
        }
    }
    out.family(&ERRORS);
    for e in &tasks {
        out.sample(&[("task", e.task)], e.errors);
    }
    out.family(&RUNS);
    for e in &tasks {
        out.sample(&[("task", e.task)], e.runs);
    }
    out.family(&DURATION);
    for e in &tasks {
        if let Some(d) = e.last_duration {
            out.sample(&[("task", e.task)], d.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::export::Format;

    fn text(h: &TaskHealth) -> String {
        let mut s = String::new();
        let mut w = MetricWriter::new(&mut s, Format::Text);
        h.encode(&mut w);
        w.finish();
        s
    }

    #[test]
    fn runs_errors_last_success_and_duration_per_task() {
        let h = TaskHealth::new();
        h.register(COLLECTION);
        h.register(LEDGER_FLUSH);
        h.succeeded_at(
            COLLECTION,
            Duration::from_millis(250),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        h.failed(LEDGER_FLUSH);
        h.failed(LEDGER_FLUSH);
        let t = text(&h);
        assert!(
            t.contains(
                "vmscope_task_last_success_timestamp_seconds{task=\"collection\"} 1700000000"
            ),
            "{t}"
        );
        // No success yet: no timestamp (not a misleading 0).
        assert!(
            !t.contains("vmscope_task_last_success_timestamp_seconds{task=\"ledger_flush\"}"),
            "{t}"
        );
        assert!(
            t.contains("vmscope_task_errors_total{task=\"ledger_flush\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("vmscope_task_errors_total{task=\"collection\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("vmscope_task_runs_total{task=\"ledger_flush\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("vmscope_task_duration_seconds{task=\"collection\"} 0.25"),
            "{t}"
        );
    }

    #[test]
    fn the_ledgers_own_metrics_report_into_the_global_registry() {
        // The hook is one line in LedgerMetrics: its flush outcomes reach
        // vmscope_task_* without the ledger knowing about this registry's
        // exposition. (Other tests in this process may flush too: counts
        // are lower bounds.)
        let before = global()
            .entries()
            .into_iter()
            .find(|e| e.task == LEDGER_FLUSH)
            .map_or((0, 0), |e| (e.runs, e.errors));
        let m = crate::ledger::metrics::LedgerMetrics::new(Ok("state.db".into()));
        m.flushed(0.5, 3, 0);
        m.flush_failed();
        let e = global()
            .entries()
            .into_iter()
            .find(|e| e.task == LEDGER_FLUSH)
            .unwrap();
        assert!(e.runs >= before.0 + 2 && e.errors > before.1, "{e:?}");
        assert!(e.last_success.is_some());
    }

    #[test]
    fn registered_tasks_appear_with_zero_runs_and_names_are_bounded() {
        let h = TaskHealth::new();
        assert!(!text(&h).contains("vmscope_task"), "{}", text(&h));
        h.register(RULE_EVALUATION);
        assert!(text(&h).contains("vmscope_task_runs_total{task=\"rule_evaluation\"} 0"));
        let names: Vec<&'static str> = (0..100)
            .map(|i| &*Box::leak(format!("t{i}").into_boxed_str()))
            .collect();
        for n in names {
            h.failed(n);
        }
        assert_eq!(h.entries().len(), MAX_TASKS);
    }
}
