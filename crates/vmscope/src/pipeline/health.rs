//! Collector health: error counts by kind, rate-limited warnings, and each
//! VM's "are these values fresh" marks.
//!
//! Reads nothing; fed the [`CollectError`]s of one collector run, it emits
//! the `CollectorStatus` of that run (`vmscope_collector_success`,
//! `vmscope_collector_errors_total`, `vmscope_collector_duration_seconds`)
//! and at most one warning per collector per [`WARN_EVERY`] (a stuck VM
//! would otherwise log every tick; the rest are logged at debug and
//! counted). A VM that vanished (`Gone`) is counted but is no failure.

use std::time::{Duration, Instant};

use crate::collectors::VmEntry;
use crate::error::ErrorChain;
use crate::host::CollectError;
use crate::model::CollectorStatus;

/// At most one warning per collector in this long.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Error counts and the last warning of one collector, kept across ticks.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    errors: Vec<(&'static str, u64)>,
    last_warn: Option<Instant>,
}

impl Counters {
    fn count(&mut self, kind: &'static str) {
        match self.errors.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((kind, 1)),
        }
    }

    /// Whether a warning may be logged at `now` (and if so, notes it).
    fn may_warn(&mut self, now: Instant) -> bool {
        let due = self
            .last_warn
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
        if due {
            self.last_warn = Some(now);
        }
        due
    }

    /// Counts `errors`; logs the first real one at most once a minute per
    /// collector. Returns whether the run succeeded (no error but `Gone`).
    pub fn absorb(&mut self, name: &'static str, errors: &[CollectError], now: Instant) -> bool {
        let mut ok = true;
        for e in errors {
            self.count(e.kind());
            if matches!(e, CollectError::Gone { .. }) {
                continue;
            }
            ok = false;
            if self.may_warn(now) {
                tracing::warn!(collector = name, error = %ErrorChain(e), "collection error (further ones this minute are only counted)");
            } else {
                tracing::debug!(collector = name, error = %ErrorChain(e), "collection error");
            }
        }
        ok
    }

    pub fn status(&self, name: &'static str, duration: Duration, success: bool) -> CollectorStatus {
        CollectorStatus {
            name,
            duration_seconds: duration.as_secs_f64(),
            success,
            errors_total: self.errors.clone(),
        }
    }
}

/// Clears the per-tick marks before the collectors run.
pub fn reset_marks(e: &mut VmEntry) {
    e.gone = false;
    e.failed = false;
}

/// Dates a VM's values after the collectors ran: a VM read without failure
/// is fresh now; one that failed keeps its last good values with their age.
/// Returns whether the values are fresh (only fresh values make a rate).
pub fn settle(e: &mut VmEntry, now: Instant) -> bool {
    if !e.failed {
        e.last_success = Some(now);
    }
    e.stats.collect_success = !e.failed;
    e.stats.collect_age_seconds = e
        .last_success
        .map(|t| now.saturating_duration_since(t).as_secs_f64())
        .unwrap_or(0.0);
    !e.failed
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::collectors::VmKey;
    use crate::model::{Source, VmStats};

    fn io_error() -> CollectError {
        CollectError::Io {
            path: PathBuf::from("/proc/7/io"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        }
    }

    #[test]
    fn errors_are_counted_by_kind_and_gone_is_no_failure() {
        let mut c = Counters::default();
        let now = Instant::now();
        assert!(c.absorb("vm_io", &[], now));
        assert!(c.absorb("vm_io", &[CollectError::Gone { pid: 7 }], now));
        assert!(!c.absorb("vm_io", &[io_error(), io_error()], now));
        let s = c.status("vm_io", Duration::from_millis(1500), false);
        assert_eq!(s.name, "vm_io");
        assert_eq!(s.duration_seconds, 1.5);
        assert!(!s.success);
        assert_eq!(s.errors_total, vec![("gone", 1), ("io", 2)]);
    }

    #[test]
    fn warnings_are_rate_limited_per_collector() {
        let mut c = Counters::default();
        let t0 = Instant::now();
        assert!(c.may_warn(t0));
        assert!(!c.may_warn(t0 + Duration::from_secs(1)));
        assert!(!c.may_warn(t0 + WARN_EVERY - Duration::from_millis(1)));
        assert!(c.may_warn(t0 + WARN_EVERY));
        assert!(!c.may_warn(t0 + WARN_EVERY + Duration::from_secs(59)));
        // absorb goes through the same limit: a warning was just logged.
        let before = c.last_warn;
        c.absorb(
            "vm_io",
            &[io_error()],
            t0 + WARN_EVERY + Duration::from_secs(1),
        );
        assert_eq!(c.last_warn, before);
        // A gone VM neither warns nor uses up the minute's warning.
        let mut c = Counters::default();
        c.absorb("vm_io", &[CollectError::Gone { pid: 1 }], t0);
        assert_eq!(c.last_warn, None);
    }

    #[test]
    fn error_chain_prints_every_cause() {
        let e = io_error();
        assert_eq!(
            ErrorChain(&e).to_string(),
            "reading /proc/7/io: permission denied"
        );
    }

    fn entry() -> VmEntry {
        VmEntry::new(
            VmKey {
                pid: 7,
                starttime_ticks: 70,
            },
            VmStats::unmeasured(7, Source::Process),
        )
    }

    #[test]
    fn values_are_dated_by_their_last_good_read() {
        let t0 = Instant::now();
        let mut e = entry();
        // Failed before any good read: no age to give.
        e.failed = true;
        assert!(!settle(&mut e, t0));
        assert_eq!(e.last_success, None);
        assert!(!e.stats.collect_success);
        assert_eq!(e.stats.collect_age_seconds, 0.0);
        reset_marks(&mut e);
        assert!(settle(&mut e, t0));
        assert!(e.stats.collect_success);
        assert_eq!(e.stats.collect_age_seconds, 0.0);
        // Fails 2.5 s later: the values are the ones read at t0.
        e.failed = true;
        assert!(!settle(&mut e, t0 + Duration::from_millis(2500)));
        assert_eq!(e.last_success, Some(t0));
        assert!(!e.stats.collect_success);
        assert_eq!(e.stats.collect_age_seconds, 2.5);
        reset_marks(&mut e);
        assert!(!e.failed && !e.gone);
    }
}
