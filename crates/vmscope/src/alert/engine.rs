//! The rule engine: a pure state machine over snapshots.
//!
//! Reads: a [`Snapshot`], the evaluation time and, for usage rules, a
//! [`UsageView`] of ledger answers, all passed in (no clock reads, no IO),
//! so tests drive it with simulated time and literal answers. Emits: [`Notification`]s,
//! at most one per rule per evaluation, grouping every scope of that rule
//! that fired, repeated or resolved at this evaluation. Cannot fail.
//!
//! Per (rule, scope):
//! - quiet --condition true--> pending(since = now)
//! - pending --condition false--> quiet (the timer resets: flapping never fires)
//! - pending --held for `sustained`--> firing: one `Fired` alert
//! - firing --condition true--> firing (clear timer resets); a `Repeat`
//!   alert when `repeat_interval` has passed since the last notification
//! - firing --clear for `recovery`--> quiet: one `Resolved` alert
//!
//! A scope missing from a snapshot (a VM that stopped, an unmounted
//! filesystem) or whose value is unknown counts as "condition false".
//!
//! Usage rules read a [`UsageView`] (the latest ledger answers, fetched
//! off this loop) instead of the snapshot. An owner group missing from an
//! answer used nothing in the window: value 0, "condition false". No
//! usable answer at all (none yet, or the queries kept failing past the
//! view's usable age) is different: the rule **holds**: its states are
//! left exactly as they are, neither advanced nor reset, so it neither
//! fires nor resolves on missing data. Why: a quota alert that resolved
//! because the database was down would page again when it came back, and
//! one that fired on a stale answer would be wrong; "we do not know" must
//! not look like either. The timers keep their start times, so the first
//! answer after a gap judges the condition as if it had been seen all
//! along (a pending condition still true fires if it started `sustained`
//! ago).
//!
//! Pending timers are not persisted: after a restart a condition has to
//! hold for the full sustained time again. Firing episodes are restored
//! from the store ([`Engine::restore`]) so a restart does not notify again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::context;
use super::notification::{Alert, Notification, Status, Transition};
use super::notification::{Context, UsageContext};
use super::rules::{Metric, Observation, Rule, Scope, usage_observations};
use super::text;
use super::usage::{UsageAnswer, UsageView};
use crate::model::Snapshot;

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending {
        since: SystemTime,
    },
    Firing {
        /// The alert as it fired (scope, context, start time); boxed to
        /// keep pending states small.
        alert: Box<Alert>,
        last_notified: SystemTime,
        clear_since: Option<SystemTime>,
    },
}

/// A firing episode loaded from the store at start.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredEpisode {
    /// The alert as it fired (the stored payload).
    pub alert: Alert,
    pub last_notified: SystemTime,
}

/// A firing (rule, scope), for metrics and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub rule: String,
    pub severity: super::rules::Severity,
    pub scope_key: String,
    pub started_at: SystemTime,
}

/// The state machine. Cheap to build; owns only rule definitions and one
/// small state per (rule, scope) that is pending or firing.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Vec<Rule>,
    /// (rule name, scope key) -> state. Quiet scopes have no entry.
    states: BTreeMap<(String, String), State>,
}

/// `later - earlier`, zero if the clock went backwards.
fn elapsed(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

impl Engine {
    pub fn new(rules: Vec<Rule>) -> Self {
        Engine {
            rules,
            states: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Take over firing episodes from before a restart. Returns the ones
    /// whose rule no longer exists (removed or disabled in the config): the
    /// caller closes them without notifying.
    pub fn restore(
        &mut self,
        episodes: impl IntoIterator<Item = RestoredEpisode>,
    ) -> Vec<RestoredEpisode> {
        let mut orphans = Vec::new();
        for ep in episodes {
            if !self.rules.iter().any(|r| r.name == ep.alert.rule) {
                orphans.push(ep);
                continue;
            }
            let key = (ep.alert.rule.clone(), ep.alert.scope_key.clone());
            self.states.insert(
                key,
                State::Firing {
                    alert: Box::new(ep.alert),
                    last_notified: ep.last_notified,
                    clear_since: None,
                },
            );
        }
        orphans
    }

    /// Evaluate every rule against `snap` at time `now`, without usage
    /// answers (usage rules hold).
    pub fn evaluate(&mut self, now: SystemTime, snap: &Snapshot) -> Vec<Notification> {
        self.evaluate_with(now, snap, &UsageView::default())
    }

    /// Evaluate every rule at time `now`: snapshot rules against `snap`,
    /// usage rules against `usage`.
    pub fn evaluate_with(
        &mut self,
        now: SystemTime,
        snap: &Snapshot,
        usage: &UsageView,
    ) -> Vec<Notification> {
        let host = snap
            .host
            .hostname
            .clone()
            .unwrap_or_else(|| "unknown".to_owned());
        let mut out = Vec::new();
        for rule in &self.rules {
            let answer = match rule.usage_key() {
                // No usable answer: hold (see the module header).
                Some(k) => match usage.get(&k, now) {
                    Some(a) => Some(a),
                    None => continue,
                },
                None => None,
            };
            let ctx = |scope: &Scope| match answer {
                Some(a) => usage_context(rule, a, scope),
                None => context::build(rule.metric, scope, snap),
            };
            let observations = match (answer, rule.selector.owner_kinds()) {
                (Some(a), [by]) => usage_observations(rule.metric, *by, &a.groups),
                (Some(_), _) => Vec::new(),
                (None, _) => rule.observe(snap),
            };
            let mut alerts = Vec::new();
            let mut seen = BTreeSet::new();
            for obs in observations {
                let key = obs.scope.key();
                // Two filesystems on one mountpoint (overmounts): first wins.
                if !seen.insert(key.clone()) {
                    continue;
                }
                if let Some(a) = step(&mut self.states, rule, &host, now, &ctx, &key, Some(&obs)) {
                    alerts.push(a);
                }
            }
            let unseen: Vec<String> = self
                .states
                .range((rule.name.clone(), String::new())..)
                .take_while(|((r, _), _)| *r == rule.name)
                .map(|((_, k), _)| k.clone())
                .filter(|k| !seen.contains(k))
                .collect();
            for key in unseen {
                // A usage group missing from the answer used nothing in
                // the window: a known 0, not a vanished scope.
                let zero =
                    answer.and_then(
                        |_| match self.states.get(&(rule.name.clone(), key.clone())) {
                            Some(State::Firing { alert, .. }) => Some(Observation {
                                scope: alert.scope.clone(),
                                value: Some(0.0),
                            }),
                            _ => None,
                        },
                    );
                if let Some(a) = step(
                    &mut self.states,
                    rule,
                    &host,
                    now,
                    &ctx,
                    &key,
                    zero.as_ref(),
                ) {
                    alerts.push(a);
                }
            }
            if !alerts.is_empty() {
                out.push(Notification {
                    rule: rule.name.clone(),
                    severity: rule.severity,
                    host: host.clone(),
                    at: now,
                    sinks: rule.sinks.clone(),
                    alerts,
                });
            }
        }
        out
    }

    /// Every firing (rule, scope), in (rule, scope key) order.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.states
            .iter()
            .filter_map(|((rule, scope_key), st)| match st {
                State::Firing { alert, .. } => Some(ActiveAlert {
                    rule: rule.clone(),
                    severity: alert.severity,
                    scope_key: scope_key.clone(),
                    started_at: alert.started_at,
                }),
                State::Pending { .. } => None,
            })
            .collect()
    }

    /// The firing alerts as they fired, for sinks that re-send state.
    pub fn firing_alerts(&self) -> Vec<Alert> {
        self.states
            .values()
            .filter_map(|st| match st {
                State::Firing { alert, .. } => Some((**alert).clone()),
                State::Pending { .. } => None,
            })
            .collect()
    }
}

/// A usage alert's context: the window, the answer's span and what the
/// group used in it (zeros for a group not in the answer).
fn usage_context(rule: &Rule, answer: &UsageAnswer, scope: &Scope) -> Context {
    let Scope::Owner {
        owner_id,
        owner_name,
        ..
    } = scope
    else {
        return Context::default();
    };
    let window = rule.usage_key().map_or(Duration::ZERO, |k| k.window);
    let group = answer.groups.get(owner_id).cloned().unwrap_or_default();
    Context {
        usage: Some(UsageContext {
            window: super::usage::show_window(window),
            window_seconds: window.as_secs(),
            from: answer.from,
            to: answer.to,
            label: group.label.clone().or_else(|| owner_name.clone()),
            cpu_seconds: Metric::OwnerUsageCpuSeconds.usage_value(&group),
            vcpu_allocated_hours: Metric::OwnerUsageVcpuHours.usage_value(&group),
            memory_allocated_gib_hours: Metric::OwnerUsageMemoryGibHours.usage_value(&group),
            network_rx_bytes: group.net_rx_bytes,
            network_tx_bytes: group.net_tx_bytes,
        }),
        ..Context::default()
    }
}

/// Advance one (rule, scope). `obs` is `None` when the scope is missing
/// from the snapshot. `ctx` builds the context of an alert about a scope.
/// Returns the alert to notify, if any.
fn step(
    states: &mut BTreeMap<(String, String), State>,
    rule: &Rule,
    host: &str,
    now: SystemTime,
    ctx: &dyn Fn(&Scope) -> Context,
    scope_key: &str,
    obs: Option<&Observation>,
) -> Option<Alert> {
    let breach = obs.is_some_and(|o| o.breaches(rule));
    let value = obs.and_then(|o| o.value);
    let map_key = (rule.name.clone(), scope_key.to_owned());
    let state = states.get_mut(&map_key);
    match (state, breach) {
        (None, false) => None,
        (None, true) => {
            states.insert(map_key, State::Pending { since: now });
            None
        }
        (Some(State::Pending { .. }), false) => {
            states.remove(&map_key);
            None
        }
        (Some(State::Pending { since }), true) => {
            let held = elapsed(now, *since);
            if held < rule.sustained {
                return None;
            }
            // `breach` implies `obs` is Some.
            let scope = obs.map_or(Scope::Host, |o| o.scope.clone());
            let mut alert = Alert {
                rule: rule.name.clone(),
                host: host.to_owned(),
                metric: rule.metric.name().to_owned(),
                severity: rule.severity,
                scope_key: scope_key.to_owned(),
                context: ctx(&scope),
                scope,
                status: Status::Firing,
                transition: Transition::Fired,
                value,
                threshold: rule.threshold,
                started_at: now,
                resolved_at: None,
                summary: String::new(),
            };
            alert.summary = text::summary(rule.metric, &alert, held);
            states.insert(
                map_key,
                State::Firing {
                    alert: Box::new(alert.clone()),
                    last_notified: now,
                    clear_since: None,
                },
            );
            Some(alert)
        }
        (
            Some(State::Firing {
                alert,
                last_notified,
                clear_since,
            }),
            true,
        ) => {
            *clear_since = None;
            let due = rule
                .repeat_interval
                .is_some_and(|r| elapsed(now, *last_notified) >= r);
            if !due {
                return None;
            }
            *last_notified = now;
            let scope = obs.map_or_else(|| alert.scope.clone(), |o| o.scope.clone());
            let mut rep = Alert {
                transition: Transition::Repeat,
                value,
                context: ctx(&scope),
                scope,
                ..(**alert).clone()
            };
            rep.summary = text::summary(rule.metric, &rep, elapsed(now, alert.started_at));
            Some(rep)
        }
        (
            Some(State::Firing {
                alert, clear_since, ..
            }),
            false,
        ) => {
            let since = *clear_since.get_or_insert(now);
            let clear_for = elapsed(now, since);
            if clear_for < rule.recovery {
                return None;
            }
            let (scope, ctx) = match obs {
                Some(o) => (o.scope.clone(), ctx(&o.scope)),
                // Gone: keep what was known when it fired.
                None => (alert.scope.clone(), alert.context.clone()),
            };
            let mut res = Alert {
                status: Status::Resolved,
                transition: Transition::Resolved,
                value,
                resolved_at: Some(now),
                context: ctx,
                scope,
                ..(**alert).clone()
            };
            res.summary = text::summary(rule.metric, &res, clear_for);
            states.remove(&map_key);
            Some(res)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::alert::rules::{FsSelector, Metric, Severity};
    use crate::model::{FilesystemStats, Snapshot, Source, VmRates, VmState, VmStats};

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn rule(name: &str, metric: Metric, threshold: f64, sustained: u64) -> Rule {
        Rule {
            name: name.to_owned(),
            metric,
            threshold,
            sustained: Duration::from_secs(sustained),
            recovery: Duration::from_secs(sustained),
            repeat_interval: None,
            severity: Severity::Warning,
            sinks: None,
            selector: FsSelector::All,
        }
    }

    fn vm(id: &str, cpu_ratio: f64) -> VmStats {
        VmStats {
            id: id.to_owned(),
            name: format!("name-{id}"),
            state: VmState::Running,
            allocated_vcpus: Some(2),
            allocated_memory_bytes: Some(1 << 30),
            memory_rss_bytes: 100 << 20,
            memory_utilization_ratio: Some(0.1),
            rates: Some(VmRates {
                window_seconds: 5.0,
                cpu_cores: cpu_ratio * 2.0,
                cpu_utilization_ratio: Some(cpu_ratio),
                ..VmRates::default()
            }),
            collect_success: true,
            ..VmStats::unmeasured(1, Source::Process)
        }
    }

    fn snap(secs: u64, host_cpu: f64, vms: Vec<VmStats>) -> Snapshot {
        let mut s = Snapshot::empty(Duration::from_secs(5));
        s.seq = secs + 1;
        s.collected_at = at(secs);
        s.host.hostname = Some("hv1".to_owned());
        s.host.cpu_ratio = Some(host_cpu);
        s.host.memory_total_bytes = 1 << 34;
        s.host.memory_used_ratio = 0.2;
        let mut vms = vms;
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        s.vms = vms;
        s
    }

    /// Drives `engine` with host CPU values, one per 5 s tick starting at
    /// `start`; returns (tick time, transitions) for every notification.
    fn drive(engine: &mut Engine, start: u64, cpu: &[f64]) -> Vec<(u64, Vec<Transition>)> {
        let mut out = Vec::new();
        for (i, c) in cpu.iter().enumerate() {
            let t = start + 5 * i as u64;
            for n in engine.evaluate(at(t), &snap(t, *c, Vec::new())) {
                out.push((t, n.alerts.iter().map(|a| a.transition).collect()));
            }
        }
        out
    }

    #[test]
    fn flapping_never_fires() {
        let mut e = Engine::new(vec![rule("cpu", Metric::HostCpuRatio, 0.8, 30)]);
        // High for 25 s, one low sample, high for 25 s, ... for ten minutes.
        let pattern: Vec<f64> = (0..120)
            .map(|i| if i % 6 == 5 { 0.1 } else { 0.95 })
            .collect();
        assert_eq!(drive(&mut e, 0, &pattern), vec![]);
        assert!(e.active().is_empty());
    }

    #[test]
    fn one_fire_and_one_recovery_per_episode() {
        let mut e = Engine::new(vec![rule("cpu", Metric::HostCpuRatio, 0.8, 30)]);
        let mut cpu = vec![0.1; 2];
        cpu.extend(vec![0.9; 20]); // t=10..105 high
        cpu.extend([0.1, 0.1, 0.9]); // a dip shorter than recovery: still firing
        cpu.extend(vec![0.1; 20]); // clear for good
        let got = drive(&mut e, 0, &cpu);
        // Fires once the condition (first true at t=10) has held 30 s: t=40.
        // Clear from t=125 on; resolves once clear 30 s: t=155.
        assert_eq!(
            got,
            vec![
                (40, vec![Transition::Fired]),
                (155, vec![Transition::Resolved])
            ]
        );
        assert!(e.active().is_empty());
    }

    #[test]
    fn fired_alert_carries_value_context_and_text() {
        let mut e = Engine::new(vec![rule("cpu", Metric::HostCpuRatio, 0.8, 10)]);
        let vms = || vec![vm("a", 0.2), vm("b", 0.9)];
        assert!(e.evaluate(at(0), &snap(0, 0.93, vms())).is_empty());
        assert!(e.evaluate(at(5), &snap(5, 0.93, vms())).is_empty());
        let n = e.evaluate(at(10), &snap(10, 0.93, vms()));
        assert_eq!(n.len(), 1);
        let a = &n[0].alerts[0];
        assert_eq!(n[0].host, "hv1");
        assert_eq!(a.scope, Scope::Host);
        assert_eq!(a.value, Some(0.93));
        assert_eq!(a.started_at, at(10));
        assert_eq!(a.context.top_vms[0].vm_id, "b");
        assert_eq!(
            a.summary,
            "host CPU at 93% (>= 80%); top VMs by CPU: name-b 1.80 cores, name-a 0.40 cores for 10s"
        );
    }

    #[test]
    fn repeat_interval_renotifies_while_firing() {
        let mut r = rule("cpu", Metric::HostCpuRatio, 0.8, 10);
        r.repeat_interval = Some(Duration::from_secs(60));
        let mut e = Engine::new(vec![r]);
        let got = drive(&mut e, 0, &[0.9; 40]); // t=0..195
        assert_eq!(
            got,
            vec![
                (10, vec![Transition::Fired]),
                (70, vec![Transition::Repeat]),
                (130, vec![Transition::Repeat]),
                (190, vec![Transition::Repeat]),
            ]
        );
    }

    #[test]
    fn many_vms_crossing_at_once_make_one_notification() {
        let mut e = Engine::new(vec![rule("vm_cpu", Metric::VmCpuUtilizationRatio, 0.9, 10)]);
        let hot = |t| {
            snap(
                t,
                0.1,
                (0..50).map(|i| vm(&format!("vm{i:02}"), 0.99)).collect(),
            )
        };
        assert!(e.evaluate(at(0), &hot(0)).is_empty());
        assert!(e.evaluate(at(5), &hot(5)).is_empty());
        let n = e.evaluate(at(10), &hot(10));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].alerts.len(), 50);
        assert_eq!(n[0].count(Transition::Fired), 50);
        assert_eq!(e.active().len(), 50);
        // All stop at once (VMs gone): one notification with 50 resolutions.
        let mut resolved = Vec::new();
        for t in (15..=40).step_by(5) {
            resolved.extend(e.evaluate(at(t), &snap(t, 0.1, Vec::new())));
        }
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].count(Transition::Resolved), 50);
        assert_eq!(resolved[0].alerts[0].value, None);
        assert!(
            resolved[0].alerts[0]
                .summary
                .starts_with("resolved: VM name-vm00")
        );
    }

    #[test]
    fn vm_that_stops_while_firing_resolves_after_recovery() {
        let mut e = Engine::new(vec![rule("vm_cpu", Metric::VmCpuUtilizationRatio, 0.9, 10)]);
        let mut got = Vec::new();
        for t in (0..=60).step_by(5) {
            let vms = if t <= 20 {
                vec![vm("x", 1.0)]
            } else {
                Vec::new()
            };
            for n in e.evaluate(at(t), &snap(t, 0.1, vms)) {
                got.push((t, n.alerts[0].transition, n.alerts[0].scope_key.clone()));
            }
        }
        assert_eq!(
            got,
            vec![
                (10, Transition::Fired, "vm:x".to_owned()),
                (35, Transition::Resolved, "vm:x".to_owned()),
            ]
        );
    }

    #[test]
    fn restart_mid_episode_does_not_notify_again() {
        let rules = vec![rule("cpu", Metric::HostCpuRatio, 0.8, 30)];
        let mut before = Engine::new(rules.clone());
        let fired = drive(&mut before, 0, &[0.9; 10]); // fires at t=30
        assert_eq!(fired, vec![(30, vec![Transition::Fired])]);
        let stored: Vec<RestoredEpisode> = before
            .firing_alerts()
            .into_iter()
            .map(|alert| RestoredEpisode {
                alert,
                last_notified: at(30),
            })
            .collect();

        // The agent restarts at t=100; the condition still holds for a while.
        let mut after = Engine::new(rules);
        assert!(after.restore(stored).is_empty());
        assert_eq!(after.active().len(), 1);
        assert_eq!(after.active()[0].started_at, at(30));
        let mut cpu = vec![0.9; 10];
        cpu.extend(vec![0.1; 10]);
        let got = drive(&mut after, 100, &cpu);
        // No second "fired"; one recovery 30 s after it clears at t=150.
        assert_eq!(got, vec![(180, vec![Transition::Resolved])]);
    }

    #[test]
    fn restored_episode_of_a_removed_rule_is_handed_back() {
        let mut a = Engine::new(vec![rule("cpu", Metric::HostCpuRatio, 0.8, 5)]);
        drive(&mut a, 0, &[0.9; 3]);
        let eps: Vec<RestoredEpisode> = a
            .firing_alerts()
            .into_iter()
            .map(|alert| RestoredEpisode {
                alert,
                last_notified: at(5),
            })
            .collect();
        let mut b = Engine::new(vec![rule("mem", Metric::HostMemoryUsedRatio, 0.8, 5)]);
        let orphans = b.restore(eps);
        assert_eq!(orphans.len(), 1);
        assert!(b.active().is_empty());
    }

    #[test]
    fn missing_value_counts_as_clear() {
        let mut e = Engine::new(vec![rule("cpu", Metric::HostCpuRatio, 0.8, 10)]);
        drive(&mut e, 0, &[0.9; 3]);
        assert_eq!(e.active().len(), 1);
        let mut got = Vec::new();
        for t in (15..=30).step_by(5) {
            let mut s = snap(t, 0.9, Vec::new());
            s.host.cpu_ratio = None;
            got.extend(e.evaluate(at(t), &s));
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].alerts[0].transition, Transition::Resolved);
    }

    #[test]
    fn disk_rule_per_mountpoint_with_context() {
        let mut r = rule("disk", Metric::FilesystemFreeGib, 5.0, 5);
        r.selector = FsSelector::Mountpoint("/var".to_owned());
        let mut e = Engine::new(vec![r]);
        let fs = |mp: &str, free_gib: u64| FilesystemStats {
            device: format!("/dev/mapper/vg-{}", mp.trim_start_matches('/')),
            mountpoint: mp.to_owned(),
            fstype: "xfs".to_owned(),
            size_bytes: 100 << 30,
            free_bytes: free_gib << 30,
            avail_bytes: (free_gib << 30) / 2,
        };
        let mut got = Vec::new();
        for t in [0, 5] {
            let mut s = snap(t, 0.1, Vec::new());
            s.host.filesystems = vec![fs("/", 1), fs("/var", 3)];
            got.extend(e.evaluate(at(t), &s));
        }
        assert_eq!(got.len(), 1);
        let a = &got[0].alerts[0];
        assert_eq!(a.scope_key, "filesystem:/var");
        assert_eq!(
            a.summary,
            "filesystem /var on /dev/mapper/vg-var (xfs): 3.0 GiB free, 1.5 GiB available, of 100.0 GiB (<= 5.0 GiB) for 5s"
        );
    }

    #[test]
    fn clock_going_backwards_does_not_fire_early() {
        let mut e = Engine::new(vec![rule("cpu", Metric::HostCpuRatio, 0.8, 30)]);
        assert!(e.evaluate(at(100), &snap(100, 0.9, Vec::new())).is_empty());
        assert!(e.evaluate(at(50), &snap(50, 0.9, Vec::new())).is_empty());
        assert!(e.evaluate(at(120), &snap(120, 0.9, Vec::new())).is_empty());
        assert_eq!(e.evaluate(at(130), &snap(130, 0.9, Vec::new())).len(), 1);
    }

    /// Owner rules: users alice and bob with several VMs each, plus VMs
    /// with no owner, on simulated time.
    mod owners {
        use super::*;
        use crate::alert::notification::OwnerContext;
        use crate::alert::rules::{OwnerKind, ScopeSelector};
        use crate::alert::sinks::alertmanager;
        use crate::model::Owner;

        const GIB: u64 = 1 << 30;

        fn owner_rule(name: &str, metric: Metric, threshold: f64, by: OwnerKind) -> Rule {
            let mut r = rule(name, metric, threshold, 30);
            r.selector = ScopeSelector::GroupBy(by);
            r
        }

        /// A VM of `user` (id `u-<user>`, in project `p-lab` "lab") using
        /// `cores` host CPU cores.
        fn owned(id: &str, user: &str, cores: f64) -> VmStats {
            let mut v = vm(id, cores / 2.0);
            v.owner = Some(std::sync::Arc::new(Owner {
                user_id: Some(format!("u-{user}")),
                user_name: Some(user.to_owned()),
                project_id: Some("p-lab".to_owned()),
                project_name: Some("lab".to_owned()),
            }));
            v
        }

        /// A VM with no owner, burning 8 cores: bigger than any owner.
        fn unowned(id: &str) -> VmStats {
            vm(id, 4.0)
        }

        /// Runs `vms_at(t)` every 5 s over `range`; returns
        /// (t, scope key, transition) for every alert notified.
        fn run(
            e: &mut Engine,
            range: std::ops::RangeInclusive<u64>,
            vms_at: impl Fn(u64) -> Vec<VmStats>,
        ) -> Vec<(u64, String, Transition)> {
            let mut out = Vec::new();
            for t in range.step_by(5) {
                let notes = e.evaluate(at(t), &snap(t, 0.1, vms_at(t)));
                // Grouping: at most one notification per rule and evaluation.
                assert!(notes.len() <= e.rules().len());
                for n in notes {
                    for a in n.alerts {
                        out.push((t, a.scope_key, a.transition));
                    }
                }
            }
            out
        }

        /// alice: 1 + 2 cores, plus a third VM (1.5 cores) from t=20 on:
        /// 4.5 cores, though no single VM is near 4. bob: 2 x 1.9 cores.
        fn hosts_with_alice_crossing_at_20(t: u64) -> Vec<VmStats> {
            let mut vms = vec![
                owned("a1", "alice", 1.0),
                owned("a2", "alice", 2.0),
                owned("b1", "bob", 1.9),
                owned("b2", "bob", 1.9),
                unowned("x1"),
                unowned("x2"),
            ];
            if t >= 20 {
                vms.push(owned("a3", "alice", 1.5));
            }
            vms
        }

        #[test]
        fn fires_once_when_an_owners_total_crosses_and_holds_and_never_for_the_one_below() {
            let r = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let mut e = Engine::new(vec![r]);
            let got = run(&mut e, 0..=300, hosts_with_alice_crossing_at_20);
            // Over the line from t=20; held 30 s at t=50; nothing after.
            assert_eq!(
                got,
                vec![(50, "owner:user:u-alice".to_owned(), Transition::Fired)]
            );
            let active = e.active();
            assert_eq!(active.len(), 1);
            assert_eq!(active[0].scope_key, "owner:user:u-alice");
            assert_eq!(active[0].started_at, at(50));
        }

        #[test]
        fn fired_owner_alert_names_owner_total_threshold_and_top_vms() {
            let r = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let mut e = Engine::new(vec![r]);
            let mut fired = Vec::new();
            for t in (0..=50).step_by(5) {
                fired.extend(e.evaluate(at(t), &snap(t, 0.1, hosts_with_alice_crossing_at_20(t))));
            }
            assert_eq!(fired.len(), 1);
            let n = &fired[0];
            assert_eq!(n.alerts.len(), 1);
            let a = &n.alerts[0];
            assert_eq!(a.metric, "owner_cpu_cores");
            assert_eq!(a.value, Some(4.5));
            assert_eq!(a.threshold, 4.0);
            assert_eq!(
                a.summary,
                "user alice (u-alice) CPU in use 4.50 cores in 3 VMs (>= 4.00 cores); \
                 top VMs by CPU: name-a2 2.00 cores, name-a3 1.50 cores, name-a1 1.00 cores for 30s"
            );
            assert_eq!(
                a.context.owner,
                Some(OwnerContext {
                    id: Some("u-alice".to_owned()),
                    name: Some("alice".to_owned()),
                    vm_count: 3,
                    cpu_cores: Some(4.5),
                    allocated_vcpus: Some(6),
                    memory_rss_bytes: 3 * (100 << 20),
                    allocated_memory_bytes: Some(3 * GIB),
                })
            );
            // Webhook / stored payload: the scope names the owner.
            let json = serde_json::to_value(a).unwrap();
            assert_eq!(
                json["scope"],
                serde_json::json!({"kind": "owner", "owner_kind": "user",
                                   "owner_id": "u-alice", "owner_name": "alice"})
            );
            assert_eq!(json["context"]["owner"]["vm_count"], 3);
            assert_eq!(json["context"]["top_vms"][0]["vm_id"], "a2");
            // Alertmanager labels, as for VM scopes (vm_id + vm_name).
            let labels = alertmanager::labels(a);
            for (k, v) in [
                ("alertname", "user_cpu"),
                ("scope", "owner:user:u-alice"),
                ("metric", "owner_cpu_cores"),
                ("owner_kind", "user"),
                ("owner_id", "u-alice"),
                ("owner_name", "alice"),
            ] {
                assert_eq!(labels.get(k).and_then(|v| v.as_str()), Some(v), "{k}");
            }
            assert!(labels.get("vm_id").is_none());
            // Telegram / log text carries the same line.
            assert!(
                text::render(n).ends_with(&format!("\n- {}", a.summary)),
                "{}",
                text::render(n)
            );
        }

        #[test]
        fn flapping_owner_total_never_fires() {
            let r = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let mut e = Engine::new(vec![r]);
            // alice's third VM idles for one tick in every six: her total is
            // over the line 25 s at a time, never the full 30 s.
            let got = run(&mut e, 0..=600, |t| {
                let mut vms = hosts_with_alice_crossing_at_20(0);
                let idle = (t / 5) % 6 == 5;
                vms.push(owned("a3", "alice", if idle { 0.1 } else { 1.5 }));
                vms
            });
            assert_eq!(got, vec![]);
            assert!(e.active().is_empty());
        }

        #[test]
        fn one_fire_and_one_recovery_per_owner_episode() {
            let r = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let mut e = Engine::new(vec![r]);
            // Over the line t=20..=95; a 10 s dip at t=100..=105 (shorter
            // than recovery: still one episode); over again t=110..=115;
            // under for good from t=120.
            let a3_cores = |t: u64| match t {
                100..=105 => 0.2,
                0..=115 => 1.5,
                _ => 0.2,
            };
            let mut got = Vec::new();
            let mut resolved = None;
            for t in (0..=400).step_by(5) {
                let mut vms = hosts_with_alice_crossing_at_20(t);
                if let Some(v) = vms.iter_mut().find(|v| v.id == "a3") {
                    *v = owned("a3", "alice", a3_cores(t));
                }
                for n in e.evaluate(at(t), &snap(t, 0.1, vms)) {
                    for a in n.alerts {
                        got.push((t, a.transition));
                        if a.transition == Transition::Resolved {
                            resolved = Some(a);
                        }
                    }
                }
            }
            assert_eq!(
                got,
                vec![(50, Transition::Fired), (150, Transition::Resolved)]
            );
            let r = resolved.unwrap();
            assert_eq!(r.started_at, at(50));
            assert_eq!(r.resolved_at, Some(at(150)));
            assert_eq!(
                r.summary,
                "resolved: user alice (u-alice) CPU in use 3.20 cores in 3 VMs (< 4.00 cores) for 30s"
            );
            assert!(e.active().is_empty());
        }

        #[test]
        fn owner_whose_vms_all_stop_resolves_after_recovery() {
            let r = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let mut e = Engine::new(vec![r]);
            let mut resolved = Vec::new();
            let got = run(&mut e, 0..=200, |t| {
                let mut vms = hosts_with_alice_crossing_at_20(t);
                // All of alice's VMs are gone from t=60 on.
                if t >= 60 {
                    vms.retain(|v| !v.id.starts_with('a'));
                }
                vms
            });
            assert_eq!(
                got,
                vec![
                    (50, "owner:user:u-alice".to_owned(), Transition::Fired),
                    (90, "owner:user:u-alice".to_owned(), Transition::Resolved),
                ]
            );
            // Once more, to look at the recovery itself.
            let mut e = Engine::new(vec![owner_rule(
                "user_cpu",
                Metric::OwnerCpuCores,
                4.0,
                OwnerKind::User,
            )]);
            for t in (0..=90).step_by(5) {
                let mut vms = hosts_with_alice_crossing_at_20(t);
                if t >= 60 {
                    vms.retain(|v| !v.id.starts_with('a'));
                }
                resolved.extend(e.evaluate(at(t), &snap(t, 0.1, vms)));
            }
            let a = &resolved.last().unwrap().alerts[0];
            assert_eq!(a.transition, Transition::Resolved);
            assert_eq!(a.value, None);
            // The owner is still named (from when it fired).
            assert_eq!(
                a.summary,
                "resolved: user alice (u-alice) CPU in use unknown (< 4.00 cores); gone or unmeasured for 30s"
            );
            assert_eq!(a.context.owner.as_ref().unwrap().vm_count, 3);
        }

        #[test]
        fn vms_without_an_owner_of_the_kind_are_in_no_group() {
            let user_rule = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let project_rule = owner_rule(
                "project_cpu",
                Metric::OwnerCpuCores,
                4.0,
                OwnerKind::Project,
            );
            // Ten 8-core VMs without an owner, and one 8-core VM whose
            // metadata names only a project.
            let mut project_only = vm("p1", 4.0);
            project_only.owner = Some(std::sync::Arc::new(Owner {
                project_id: Some("p-ops".to_owned()),
                project_name: Some("ops".to_owned()),
                user_id: Some(String::new()), // empty says nothing
                ..Owner::default()
            }));
            let vms = move |_t: u64| {
                let mut v: Vec<VmStats> = (0..10).map(|i| unowned(&format!("x{i}"))).collect();
                v.push(project_only.clone());
                v
            };
            assert!(user_rule.observe(&snap(0, 0.1, vms(0))).is_empty());
            let mut e = Engine::new(vec![user_rule, project_rule]);
            let got = run(&mut e, 0..=120, vms);
            assert_eq!(
                got,
                vec![(30, "owner:project:p-ops".to_owned(), Transition::Fired)]
            );
        }

        #[test]
        fn group_by_project_sums_every_user_of_the_project() {
            let r = owner_rule("lab_cpu", Metric::OwnerCpuCores, 6.0, OwnerKind::Project);
            let mut e = Engine::new(vec![r]);
            // alice 3.0 + bob 3.8 = 6.8 cores in project lab.
            let got = run(&mut e, 0..=60, |_| hosts_with_alice_crossing_at_20(0));
            assert_eq!(
                got,
                vec![(30, "owner:project:p-lab".to_owned(), Transition::Fired)]
            );
            let fired = e.firing_alerts();
            assert!(
                fired[0].summary.starts_with(
                    "project lab (p-lab) CPU in use 6.80 cores in 4 VMs (>= 6.00 cores)"
                ),
                "{}",
                fired[0].summary
            );
        }

        #[test]
        fn owner_known_only_by_name_is_keyed_by_name() {
            let r = owner_rule("user_cpu", Metric::OwnerCpuCores, 4.0, OwnerKind::User);
            let mut carol = vec![vm("c1", 1.5), vm("c2", 1.5)];
            for v in &mut carol {
                v.owner = Some(std::sync::Arc::new(Owner {
                    user_name: Some("carol".to_owned()),
                    ..Owner::default()
                }));
            }
            let mut e = Engine::new(vec![r]);
            let got = run(&mut e, 0..=30, |_| carol.clone());
            assert_eq!(
                got,
                vec![(30, "owner:user:carol".to_owned(), Transition::Fired)]
            );
            let a = &e.firing_alerts()[0];
            assert!(
                a.summary
                    .starts_with("user carol CPU in use 6.00 cores in 2 VMs")
            );
            assert_eq!(a.context.owner.as_ref().unwrap().id, None);
        }

        #[test]
        fn vcpu_and_memory_rules_sum_allocations_and_rss() {
            let sized = |id: &str, user: &str, vcpus: u32, alloc_gib: u64, rss_gib: u64| {
                let mut v = owned(id, user, 0.1);
                v.allocated_vcpus = Some(vcpus);
                v.allocated_memory_bytes = Some(alloc_gib * GIB);
                v.memory_rss_bytes = rss_gib * GIB;
                v
            };
            let vms = |_t: u64| {
                vec![
                    sized("a1", "alice", 4, 8, 6),
                    sized("a2", "alice", 8, 16, 2),
                    sized("b1", "bob", 2, 2, 1),
                    // Allocation unknown: adds to RSS only.
                    {
                        let mut v = sized("a3", "alice", 1, 1, 1);
                        v.allocated_vcpus = None;
                        v.allocated_memory_bytes = None;
                        v
                    },
                ]
            };
            let rules = vec![
                owner_rule(
                    "user_vcpus",
                    Metric::OwnerAllocatedVcpus,
                    12.0,
                    OwnerKind::User,
                ),
                owner_rule("user_rss", Metric::OwnerMemoryRssGib, 9.0, OwnerKind::User),
                owner_rule(
                    "user_mem",
                    Metric::OwnerMemoryAllocatedGib,
                    24.0,
                    OwnerKind::User,
                ),
            ];
            let mut e = Engine::new(rules);
            let mut fired = Vec::new();
            for t in (0..=60).step_by(5) {
                fired.extend(e.evaluate(at(t), &snap(t, 0.1, vms(t))));
            }
            let summaries: Vec<(&str, &str)> = fired
                .iter()
                .map(|n| (n.rule.as_str(), n.alerts[0].summary.as_str()))
                .collect();
            assert_eq!(
                summaries,
                vec![
                    (
                        "user_vcpus",
                        "user alice (u-alice) vCPUs allocated 12 vCPUs in 3 VMs (>= 12 vCPUs); \
                         top VMs by vCPUs: name-a2 8 vCPUs, name-a1 4 vCPUs, name-a3 ? vCPUs for 30s"
                    ),
                    (
                        "user_rss",
                        "user alice (u-alice) memory RSS 9.0 GiB in 3 VMs (>= 9.0 GiB); \
                         top VMs by RSS: name-a1 6.0 GiB, name-a2 2.0 GiB, name-a3 1.0 GiB for 30s"
                    ),
                    (
                        "user_mem",
                        "user alice (u-alice) memory allocated 24.0 GiB in 3 VMs (>= 24.0 GiB); \
                         top VMs by allocated memory: name-a2 16.0 GiB, name-a1 8.0 GiB, name-a3 ? GiB for 30s"
                    ),
                ]
            );
            // bob (2 vCPUs, 2 GiB, 1 GiB RSS) is under every line.
            assert!(
                fired
                    .iter()
                    .all(|n| n.alerts.len() == 1 && n.alerts[0].value.is_some())
            );
        }

        #[test]
        fn restart_mid_owner_episode_does_not_notify_again() {
            let rules = vec![owner_rule(
                "user_cpu",
                Metric::OwnerCpuCores,
                4.0,
                OwnerKind::User,
            )];
            let mut before = Engine::new(rules.clone());
            let got = run(&mut before, 0..=60, hosts_with_alice_crossing_at_20);
            assert_eq!(got.len(), 1);
            // Through the store's JSON payload, as a real restart goes.
            let stored: Vec<RestoredEpisode> = before
                .firing_alerts()
                .iter()
                .map(|a| RestoredEpisode {
                    alert: serde_json::from_str(&serde_json::to_string(a).unwrap()).unwrap(),
                    last_notified: at(50),
                })
                .collect();
            let mut after = Engine::new(rules);
            assert!(after.restore(stored).is_empty());
            // Still hot until t=200, then alice's third VM stops.
            let got = run(&mut after, 100..=300, |t| {
                let mut vms = hosts_with_alice_crossing_at_20(t);
                if t > 200 {
                    vms.retain(|v| v.id != "a3");
                }
                vms
            });
            assert_eq!(
                got,
                vec![(235, "owner:user:u-alice".to_owned(), Transition::Resolved)]
            );
        }
    }

    /// Usage rules: values from literal ledger answers, on simulated time.
    mod usage_rules {
        use std::collections::BTreeMap;

        use super::*;
        use crate::alert::rules::{OwnerKind, ScopeSelector, UsageGroup, UsageKey};
        use crate::alert::sinks::alertmanager;
        use crate::alert::usage::UsageAnswer;

        const DAY: Duration = Duration::from_secs(86_400);

        fn key() -> UsageKey {
            UsageKey {
                by: OwnerKind::Project,
                window: DAY,
            }
        }

        /// `project_cpu_quota`: a project's CPU seconds over 24 h >= one
        /// core-day, sustained and recovery 60 s.
        fn quota_rule() -> Rule {
            let mut r = rule(
                "project_cpu_quota",
                Metric::OwnerUsageCpuSeconds,
                86_400.0,
                60,
            );
            r.selector = ScopeSelector::Usage {
                by: OwnerKind::Project,
                window: DAY,
            };
            r
        }

        /// The ledger's answer at `t`: project p-lab ("lab") used `cpu`.
        fn answer(t: u64, groups: &[(&str, Option<&str>, f64)]) -> UsageAnswer {
            let groups: BTreeMap<String, UsageGroup> = groups
                .iter()
                .map(|(k, label, cpu)| {
                    (
                        (*k).to_owned(),
                        UsageGroup {
                            label: label.map(str::to_owned),
                            cpu_seconds: *cpu,
                            vcpu_allocated_seconds: 4.0 * 86_400.0,
                            memory_allocated_byte_seconds: 8.0 * 3600.0 * (1u64 << 30) as f64,
                            net_rx_bytes: 3 << 30,
                            net_tx_bytes: 1 << 30,
                        },
                    )
                })
                .collect();
            UsageAnswer {
                from: at(t) - DAY,
                to: at(t),
                groups,
            }
        }

        fn view(t: u64, cpu: Option<f64>) -> UsageView {
            let v = UsageView::new(Duration::from_secs(190));
            match cpu {
                Some(c) => v.with(key(), answer(t, &[("p-lab", Some("lab"), c)])),
                None => v,
            }
        }

        /// Every 10 s from `from` to `to`, with the view `at_t` gives;
        /// returns (t, scope key, transition, value).
        fn drive(
            e: &mut Engine,
            ts: impl IntoIterator<Item = u64>,
            at_t: impl Fn(u64) -> UsageView,
        ) -> Vec<(u64, String, Transition, Option<f64>)> {
            let mut out = Vec::new();
            for t in ts {
                for n in e.evaluate_with(at(t), &snap(t, 0.1, Vec::new()), &at_t(t)) {
                    for a in n.alerts {
                        out.push((t, a.scope_key, a.transition, a.value));
                    }
                }
            }
            out
        }

        #[test]
        fn above_the_quota_for_sustained_fires_and_below_for_recovery_resolves() {
            let mut e = Engine::new(vec![quota_rule()]);
            // Under the quota until t=100, over it t=100..=300, under after.
            let got = drive(&mut e, (0..=600).step_by(10), |t| {
                view(
                    t,
                    Some(if (100..=300).contains(&t) {
                        90_000.0
                    } else {
                        50_000.0
                    }),
                )
            });
            assert_eq!(
                got,
                vec![
                    (
                        160,
                        "owner:project:p-lab".to_owned(),
                        Transition::Fired,
                        Some(90_000.0)
                    ),
                    (
                        370,
                        "owner:project:p-lab".to_owned(),
                        Transition::Resolved,
                        Some(50_000.0)
                    ),
                ]
            );
        }

        #[test]
        fn no_answer_holds_neither_firing_nor_resolving() {
            // Pending, then the ledger stops answering: nothing fires
            // while there is no answer, however long.
            let mut e = Engine::new(vec![quota_rule()]);
            let got = drive(&mut e, (0..=1000).step_by(10), |t| {
                view(t, (t < 30).then_some(90_000.0))
            });
            assert_eq!(got, vec![]);
            assert!(e.active().is_empty());
            // Firing, then no answer while the usage is (unknown to us)
            // below: no recovery; the first answer after the gap that says
            // "below" starts the recovery timer... which has not run, so
            // it resolves only `recovery` later.
            let mut e = Engine::new(vec![quota_rule()]);
            let got = drive(&mut e, (0..=2000).step_by(10), |t| match t {
                0..=100 => view(t, Some(90_000.0)),
                101..=1500 => view(t, None),
                _ => view(t, Some(10.0)),
            });
            assert_eq!(
                got,
                vec![
                    (
                        60,
                        "owner:project:p-lab".to_owned(),
                        Transition::Fired,
                        Some(90_000.0)
                    ),
                    (
                        1570,
                        "owner:project:p-lab".to_owned(),
                        Transition::Resolved,
                        Some(10.0)
                    ),
                ]
            );
        }

        #[test]
        fn a_restored_quota_episode_waits_for_the_first_answer() {
            // Firing before a restart; after it, no answer for a while
            // (the refresh task's first query): no recovery notice, no
            // second FIRING; then an answer under the quota resolves it
            // after `recovery`.
            let mut before = Engine::new(vec![quota_rule()]);
            drive(&mut before, (0..=60).step_by(10), |t| {
                view(t, Some(90_000.0))
            });
            let stored: Vec<RestoredEpisode> = before
                .firing_alerts()
                .iter()
                .map(|a| RestoredEpisode {
                    alert: serde_json::from_str(&serde_json::to_string(a).unwrap()).unwrap(),
                    last_notified: at(60),
                })
                .collect();
            assert_eq!(stored.len(), 1);
            let mut after = Engine::new(vec![quota_rule()]);
            assert!(after.restore(stored).is_empty());
            let got = drive(&mut after, (1000..=1300).step_by(10), |t| {
                view(t, (t >= 1100).then_some(10.0))
            });
            assert_eq!(
                got,
                vec![(
                    1160,
                    "owner:project:p-lab".to_owned(),
                    Transition::Resolved,
                    Some(10.0)
                )]
            );
        }

        #[test]
        fn a_stale_answer_is_no_answer() {
            // The refresh task's last answer is from t=0 and never replaced
            // (every query fails): it counts until it is older than the
            // view's usable age (190 s), then the rule holds.
            let mut e = Engine::new(vec![quota_rule()]);
            let stale = view(0, Some(90_000.0));
            let got = drive(&mut e, (0..=1000).step_by(10), |_| stale.clone());
            assert_eq!(
                got,
                vec![(
                    60,
                    "owner:project:p-lab".to_owned(),
                    Transition::Fired,
                    Some(90_000.0)
                )]
            );
            // ...and holds: still firing at t=1000, no recovery.
            assert_eq!(e.active().len(), 1);
            // A pending condition on an answer that goes stale never fires.
            let mut e = Engine::new(vec![quota_rule()]);
            let once = view(0, Some(90_000.0));
            let got = drive(&mut e, (0..=40).chain((200..=1000).step_by(10)), |_| {
                once.clone()
            });
            assert_eq!(got, vec![]);
        }

        #[test]
        fn a_group_gone_from_the_answer_used_nothing_and_resolves() {
            let mut e = Engine::new(vec![quota_rule()]);
            let got = drive(&mut e, (0..=300).step_by(10), |t| {
                if t <= 100 {
                    view(t, Some(90_000.0))
                } else {
                    // The window moved past the project's last row.
                    UsageView::new(Duration::from_secs(190)).with(key(), answer(t, &[]))
                }
            });
            assert_eq!(
                got,
                vec![
                    (
                        60,
                        "owner:project:p-lab".to_owned(),
                        Transition::Fired,
                        Some(90_000.0)
                    ),
                    (
                        170,
                        "owner:project:p-lab".to_owned(),
                        Transition::Resolved,
                        Some(0.0)
                    ),
                ]
            );
        }

        #[test]
        fn the_alert_says_usage_quota_window_and_owner() {
            let mut e = Engine::new(vec![quota_rule()]);
            let mut notes = Vec::new();
            for t in (0..=400).step_by(10) {
                let cpu = if t <= 100 { 91_200.0 } else { 100.0 };
                notes.extend(e.evaluate_with(
                    at(t),
                    &snap(t, 0.1, Vec::new()),
                    &view(t, Some(cpu)),
                ));
            }
            assert_eq!(notes.len(), 2);
            let fired = &notes[0].alerts[0];
            assert_eq!(fired.metric, "owner_usage_cpu_seconds");
            assert_eq!(fired.threshold, 86_400.0);
            assert_eq!(
                fired.summary,
                "project lab (p-lab) used 91200 CPU seconds in the last 24h (>= quota 86400 CPU seconds) for 1m"
            );
            let json = serde_json::to_value(fired).unwrap();
            assert_eq!(
                json["scope"],
                serde_json::json!({"kind": "owner", "owner_kind": "project",
                                   "owner_id": "p-lab", "owner_name": "lab"})
            );
            let u = &json["context"]["usage"];
            assert_eq!(u["window"], "24h");
            assert_eq!(u["window_seconds"], 86_400);
            assert_eq!(u["label"], "lab");
            assert_eq!(u["cpu_seconds"], 91_200.0);
            assert_eq!(u["vcpu_allocated_hours"], 96.0);
            assert_eq!(u["memory_allocated_gib_hours"], 8.0);
            assert_eq!(u["network_rx_bytes"], 3u64 << 30);
            assert_eq!(u["to"], crate::alert::notification::format_time(at(60)));
            assert_eq!(
                u["from"],
                crate::alert::notification::format_time(at(60) - DAY)
            );
            // The stored payload reads back (restarts).
            let back: crate::alert::Alert = serde_json::from_value(json).unwrap();
            assert_eq!(&back, fired);
            // Alertmanager: the owner labels, as for owner rules.
            let labels = alertmanager::labels(fired);
            for (k, v) in [
                ("alertname", "project_cpu_quota"),
                ("scope", "owner:project:p-lab"),
                ("metric", "owner_usage_cpu_seconds"),
                ("owner_kind", "project"),
                ("owner_id", "p-lab"),
                ("owner_name", "lab"),
            ] {
                assert_eq!(labels.get(k).and_then(|v| v.as_str()), Some(v), "{k}");
            }
            let resolved = &notes[1].alerts[0];
            assert_eq!(resolved.transition, Transition::Resolved);
            assert_eq!(
                resolved.summary,
                "resolved: project lab (p-lab) used 100 CPU seconds in the last 24h (< quota 86400 CPU seconds) for 1m"
            );
            assert_eq!(resolved.context.usage.as_ref().unwrap().cpu_seconds, 100.0);
        }

        #[test]
        fn other_usage_metrics_convert_to_their_units() {
            let g = UsageGroup {
                label: None,
                cpu_seconds: 1.0,
                vcpu_allocated_seconds: 7200.0,
                memory_allocated_byte_seconds: 3.0 * 3600.0 * (1u64 << 30) as f64,
                net_rx_bytes: 1 << 30,
                net_tx_bytes: 1 << 29,
            };
            assert_eq!(Metric::OwnerUsageVcpuHours.usage_value(&g), 2.0);
            assert_eq!(Metric::OwnerUsageMemoryGibHours.usage_value(&g), 3.0);
            assert_eq!(Metric::OwnerUsageNetworkGib.usage_value(&g), 1.5);
            assert_eq!(Metric::OwnerUsageNetworkGib.format_value(1.5), "1.50 GiB");
            // Snapshot rules ignore the view; usage rules ignore the snapshot.
            let mut vm_heavy = vm("a", 0.99);
            vm_heavy.owner = None;
            let r = quota_rule();
            assert!(r.observe(&snap(0, 0.99, vec![vm_heavy])).is_empty());
        }

        #[test]
        fn two_projects_in_one_answer_make_one_notification() {
            let mut e = Engine::new(vec![quota_rule()]);
            let both = |t: u64| {
                UsageView::new(Duration::from_secs(190)).with(
                    key(),
                    answer(
                        t,
                        &[
                            ("p-a", None, 100_000.0),
                            ("p-b", Some("b"), 90_000.0),
                            ("p-c", None, 5.0),
                        ],
                    ),
                )
            };
            let mut notes = Vec::new();
            for t in (0..=60).step_by(10) {
                notes.extend(e.evaluate_with(at(t), &snap(t, 0.1, Vec::new()), &both(t)));
            }
            assert_eq!(notes.len(), 1);
            let keys: Vec<&str> = notes[0]
                .alerts
                .iter()
                .map(|a| a.scope_key.as_str())
                .collect();
            assert_eq!(keys, ["owner:project:p-a", "owner:project:p-b"]);
            // A key-only group is described by its key.
            assert!(
                notes[0].alerts[0]
                    .summary
                    .starts_with("project p-a used 100000 CPU seconds")
            );
        }
    }
}
