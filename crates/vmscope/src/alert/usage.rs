//! Usage rules' data: what each owner group used over a window, read from
//! the usage ledger off the watchdog loop, so that evaluation never waits
//! on the database.
//!
//! ```text
//! vmscope-usage task: every usage_refresh, one UsageReader::query per
//!   (group_by, window) the usage rules need, each bounded by usage_timeout
//!     '--> watch<Arc<UsageView>> --> the watchdog loop reads the latest one
//! ```
//!
//! Reads: [`UsageReader::query`] (by user or project, rows whose interval
//! starts in `[now - window, now]`, one total per group, this host's rows
//! only: the watchdog alerts about this host, like the owner rules) and
//! the latest snapshot's host name. Emits: a [`UsageView`] after every
//! round; `vmscope_watchdog_usage_*` through [`AlertMetrics`]; one log line
//! per change of a query's state (failing, recovered, answer expired).
//! Fails: never. A failed or timed-out query keeps the previous answer (a
//! timed-out one is waited for again at the next round rather than asked
//! anew, so at most one query per (group_by, window) is ever queued on the
//! store thread);
//! the view offers an answer only while it is younger than
//! [`UsageView::max_age`] (three refreshes plus one timeout), after which
//! the usage rules reading it hold their state (see `engine.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::{AlertMetrics, UsageQueryResult};
use super::rules::{UsageGroup, UsageKey};
use crate::error::ErrorChain;
use crate::ledger::{UsageError, UsageReader};
use crate::model::Snapshot;
use crate::store::{UsageBy, UsageQuery, UsageTotal, to_ms};

/// Most owner groups one answer may hold; more is a failed query (and a
/// bound on the scopes, and so on the `scope` label values, of a rule).
pub const MAX_GROUPS: usize = 10_000;

/// One ledger answer: each group's usage over `[from, to]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageAnswer {
    pub from: SystemTime,
    pub to: SystemTime,
    /// By group key (the owner identity key); groups without a key (VMs
    /// without an owner of the kind) are left out.
    pub groups: BTreeMap<String, UsageGroup>,
}

/// The latest answer per query, as the watchdog loop reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageView {
    answers: BTreeMap<UsageKey, Arc<UsageAnswer>>,
    max_age: Duration,
}

impl UsageView {
    /// An empty view: every usage rule holds.
    pub fn new(max_age: Duration) -> Self {
        UsageView {
            answers: BTreeMap::new(),
            max_age,
        }
    }

    /// The view with `answer` for `key`.
    pub fn with(mut self, key: UsageKey, answer: UsageAnswer) -> Self {
        self.answers.insert(key, Arc::new(answer));
        self
    }

    /// How old (from its `to`) an answer may be at evaluation time.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The answer for `key` usable at `now`: `None` when there is none yet
    /// or it is older than [`Self::max_age`] (queries kept failing).
    pub fn get(&self, key: &UsageKey, now: SystemTime) -> Option<&UsageAnswer> {
        self.answers
            .get(key)
            .map(|a| &**a)
            .filter(|a| now.duration_since(a.to).unwrap_or(Duration::ZERO) <= self.max_age)
    }
}

/// How answers are refreshed (`[watchdog] usage_refresh`, `usage_timeout`).
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPlan {
    /// One query per distinct key, in order.
    pub keys: Vec<UsageKey>,
    pub every: Duration,
    pub timeout: Duration,
}

impl RefreshPlan {
    /// The answers' usable age: three refresh rounds, each of which may
    /// take one timeout. Past it a usage rule holds instead of judging on
    /// an old answer; within it a single failed query changes nothing.
    pub fn max_age(&self) -> Duration {
        self.every.saturating_mul(3).saturating_add(self.timeout)
    }
}

/// One query's state in the refresh task: the last answer and whether
/// the last attempt failed (so that a failure is logged once, not per round).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slot {
    pub answer: Option<Arc<UsageAnswer>>,
    /// Why the last attempt failed; `None` after a success.
    pub failing: Option<String>,
    /// The answer was reported as expired (logged once).
    pub expired: bool,
}

/// What changed in a [`Slot`], worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotEvent {
    /// The first failure after a success (or at start).
    Failing(String),
    /// A success after failures.
    Recovered,
    /// The kept answer got older than the usable age: the rules hold.
    Expired,
}

impl Slot {
    /// Record one attempt's outcome at `now`. A failure keeps the previous
    /// answer. Returns what to log, if anything changed.
    pub fn record(
        &mut self,
        outcome: Result<UsageAnswer, String>,
        now: SystemTime,
        max_age: Duration,
    ) -> Option<SlotEvent> {
        match outcome {
            Ok(answer) => {
                self.answer = Some(Arc::new(answer));
                self.expired = false;
                self.failing.take().map(|_| SlotEvent::Recovered)
            }
            Err(why) => {
                let first = self.failing.is_none();
                self.failing = Some(why.clone());
                let too_old = self
                    .answer
                    .as_ref()
                    .is_none_or(|a| now.duration_since(a.to).unwrap_or(Duration::ZERO) > max_age);
                if first {
                    Some(SlotEvent::Failing(why))
                } else if too_old && !self.expired {
                    self.expired = true;
                    Some(SlotEvent::Expired)
                } else {
                    None
                }
            }
        }
    }
}

/// A window as people write it: `20s`, `90m`, `24h`, `7d` (humantime
/// would say `1day` for 24h); one with a fraction of a second in ms.
pub fn show_window(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if d.subsec_nanos() != 0 => format!("{}ms", d.as_millis()),
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(86_400) && s >= 2 * 86_400 => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// The query for `key` at `now` on `host`'s rows.
pub fn query(key: &UsageKey, now: SystemTime, host: &str) -> UsageQuery {
    let from = now
        .checked_sub(key.window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    UsageQuery {
        from_ms: to_ms(from),
        // The open interval started at or before now: include it.
        to_ms: to_ms(now).saturating_add(1),
        step_ms: 0,
        by: match key.by {
            super::rules::OwnerKind::User => UsageBy::User,
            super::rules::OwnerKind::Project => UsageBy::Project,
        },
        resolution_s: 0,
        host: Some(host.to_owned()),
        limit: MAX_GROUPS,
        owners: None,
    }
}

/// The answer from the ledger's totals (one per group, step 0).
pub fn answer(from: SystemTime, to: SystemTime, totals: Vec<UsageTotal>) -> UsageAnswer {
    let groups = totals
        .into_iter()
        .filter_map(|t| {
            let key = t.key?;
            Some((
                key,
                UsageGroup {
                    label: t.label,
                    cpu_seconds: t.cpu_seconds,
                    vcpu_allocated_seconds: t.vcpu_allocated_seconds,
                    memory_allocated_byte_seconds: t.memory_allocated_byte_seconds,
                    net_rx_bytes: t.net_rx_bytes,
                    net_tx_bytes: t.net_tx_bytes,
                },
            ))
        })
        .collect();
    UsageAnswer { from, to, groups }
}

/// A query still waiting for the store after its timeout: the next round
/// waits for it again instead of queueing another (at most one query per
/// key is ever queued on the store thread). Aborted when dropped.
struct InFlight {
    asked: SystemTime,
    task: JoinHandle<Result<Vec<UsageTotal>, UsageError>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the refresh task; it ends when `stop` turns true or the
/// snapshots' sender goes. The view starts empty (usage rules hold until
/// the first answer).
pub(crate) fn spawn(
    reader: UsageReader,
    plan: RefreshPlan,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<AlertMetrics>,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<Arc<UsageView>>, JoinHandle<()>) {
    let max_age = plan.max_age();
    let (tx, rx) = watch::channel(Arc::new(UsageView::new(max_age)));
    let task = tokio::spawn(async move {
        // Until the first tick the snapshot is a placeholder without a
        // host name: asking then would answer "nothing used" for this host.
        tokio::select! {
            first = snapshots.wait_for(|s| s.seq != 0) => if first.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut slots: BTreeMap<UsageKey, Slot> = BTreeMap::new();
        let mut waiting: BTreeMap<UsageKey, InFlight> = BTreeMap::new();
        let mut tick = tokio::time::interval(plan.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let host = snapshots.borrow().host.hostname.clone().unwrap_or_default();
            for key in &plan.keys {
                let mut q = match waiting.remove(key) {
                    Some(w) => w,
                    None => {
                        let asked = SystemTime::now();
                        let r = reader.clone();
                        let q = query(key, asked, &host);
                        InFlight {
                            asked,
                            task: tokio::spawn(async move {
                                r.query(q).await.map(|(_, totals)| totals)
                            }),
                        }
                    }
                };
                let outcome = match tokio::time::timeout(plan.timeout, &mut q.task).await {
                    Ok(Ok(Ok(totals))) => {
                        metrics.usage_query(UsageQueryResult::Success);
                        metrics.usage_answered(*key, q.asked);
                        let from = q
                            .asked
                            .checked_sub(key.window)
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        Ok(answer(from, q.asked, totals))
                    }
                    Ok(Ok(Err(e))) => {
                        metrics.usage_query(UsageQueryResult::Error);
                        Err(ErrorChain(&e).to_string())
                    }
                    Ok(Err(e)) => {
                        metrics.usage_query(UsageQueryResult::Error);
                        Err(format!("the usage query task ended abnormally: {e}"))
                    }
                    Err(_) => {
                        metrics.usage_query(UsageQueryResult::Timeout);
                        let why = format!(
                            "no answer within usage_timeout ({})",
                            humantime::format_duration(plan.timeout)
                        );
                        waiting.insert(*key, q);
                        Err(why)
                    }
                };
                let slot = slots.entry(*key).or_default();
                let window = show_window(key.window);
                match slot.record(outcome, SystemTime::now(), max_age) {
                    Some(SlotEvent::Failing(why)) => tracing::warn!(
                        group_by = %key.by, window = %window, error = %why,
                        keep_for = %humantime::format_duration(max_age),
                        "watchdog usage query failed; usage rules keep the previous answer for at most keep_for, then hold"
                    ),
                    Some(SlotEvent::Recovered) => tracing::info!(
                        group_by = %key.by, window = %window,
                        "watchdog usage query answers again"
                    ),
                    Some(SlotEvent::Expired) => tracing::warn!(
                        group_by = %key.by, window = %window,
                        "watchdog usage answer too old: usage rules hold (neither fire nor resolve) until the ledger answers"
                    ),
                    None => {}
                }
            }
            let mut view = UsageView::new(max_age);
            for (key, slot) in &slots {
                if let Some(a) = &slot.answer {
                    view.answers.insert(*key, a.clone());
                }
            }
            tx.send_replace(Arc::new(view));
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rules::OwnerKind;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn key() -> UsageKey {
        UsageKey {
            by: OwnerKind::Project,
            window: Duration::from_secs(86_400),
        }
    }

    fn ans(to: u64, cpu: f64) -> UsageAnswer {
        let mut groups = BTreeMap::new();
        groups.insert(
            "p1".to_owned(),
            UsageGroup {
                cpu_seconds: cpu,
                ..UsageGroup::default()
            },
        );
        UsageAnswer {
            from: at(to) - Duration::from_secs(86_400),
            to: at(to),
            groups,
        }
    }

    #[test]
    fn a_view_offers_an_answer_only_while_it_is_young_enough() {
        let v = UsageView::new(Duration::from_secs(190)).with(key(), ans(100, 5.0));
        assert_eq!(v.get(&key(), at(100)).map(|a| a.to), Some(at(100)));
        assert!(v.get(&key(), at(290)).is_some());
        assert!(v.get(&key(), at(291)).is_none());
        // A snapshot older than the answer (clocks of two threads) is fine.
        assert!(v.get(&key(), at(50)).is_some());
        let other = UsageKey {
            by: OwnerKind::User,
            ..key()
        };
        assert!(v.get(&other, at(100)).is_none());
    }

    #[test]
    fn failures_keep_the_answer_and_are_reported_once_per_change() {
        let max = Duration::from_secs(190);
        let mut s = Slot::default();
        assert_eq!(s.record(Ok(ans(0, 1.0)), at(0), max), None);
        // First failure: reported; the answer stays.
        assert_eq!(
            s.record(Err("database is locked".into()), at(60), max),
            Some(SlotEvent::Failing("database is locked".into()))
        );
        assert_eq!(s.answer.as_ref().map(|a| a.to), Some(at(0)));
        // Further failures within the usable age: silent.
        assert_eq!(s.record(Err("timeout".into()), at(120), max), None);
        // Past it: reported once as expired, then silent.
        assert_eq!(
            s.record(Err("timeout".into()), at(200), max),
            Some(SlotEvent::Expired)
        );
        assert_eq!(s.record(Err("timeout".into()), at(260), max), None);
        // Back: recovered, the new answer replaces the old.
        assert_eq!(
            s.record(Ok(ans(320, 2.0)), at(320), max),
            Some(SlotEvent::Recovered)
        );
        assert_eq!(s.answer.as_ref().map(|a| a.to), Some(at(320)));
        assert_eq!(s.record(Ok(ans(380, 2.0)), at(380), max), None);
        // A failure at start (no answer yet) is reported as failing.
        let mut fresh = Slot::default();
        assert!(matches!(
            fresh.record(Err("x".into()), at(0), max),
            Some(SlotEvent::Failing(_))
        ));
    }

    #[test]
    fn the_query_asks_for_this_hosts_rows_of_the_window_in_one_bucket() {
        let q = query(&key(), at(86_400), "hv1");
        assert_eq!(q.from_ms, to_ms(at(0)));
        assert_eq!(q.to_ms, to_ms(at(86_400)) + 1);
        assert_eq!(q.step_ms, 0);
        assert_eq!(q.by, UsageBy::Project);
        assert_eq!(q.resolution_s, 0);
        assert_eq!(q.host.as_deref(), Some("hv1"));
        assert_eq!(q.limit, MAX_GROUPS);
    }

    #[test]
    fn windows_show_as_written() {
        for (secs, want) in [
            (20, "20s"),
            (5400, "90m"),
            (86_400, "24h"),
            (604_800, "7d"),
            (90_061, "90061s"),
        ] {
            assert_eq!(show_window(Duration::from_secs(secs)), want);
        }
    }

    #[test]
    fn unowned_usage_is_in_no_group() {
        let totals = vec![
            crate::store::UsageTotal {
                key: None,
                cpu_seconds: 99.0,
                ..Default::default()
            },
            crate::store::UsageTotal {
                key: Some("p1".into()),
                label: Some("research".into()),
                cpu_seconds: 7.5,
                net_rx_bytes: 10,
                net_tx_bytes: 5,
                ..Default::default()
            },
        ];
        let a = answer(at(0), at(10), totals);
        assert_eq!(a.groups.len(), 1);
        let g = &a.groups["p1"];
        assert_eq!(g.label.as_deref(), Some("research"));
        assert_eq!(g.cpu_seconds, 7.5);
        assert_eq!(g.net_rx_bytes + g.net_tx_bytes, 15);
    }
}
