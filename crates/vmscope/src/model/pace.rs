//! Scrape-aligned collection: ticks finish just before the scrapes come.
//!
//! `/metrics` serves the last snapshot, and a scraper stamps each sample
//! with its own scrape time. When a sample's age at scrape time varies
//! (collection and scrapes drift against each other), `rate()` over a
//! window is off by up to one collection interval divided by the window
//! (+6% measured with a 2 s interval and a 28 s window). When the age is
//! the *same* at every scrape, the error cancels: `rate()` sees the
//! counter's true slope, only shifted in time by that age.
//!
//! So the collector keeps its interval but moves its phase: the HTTP edge
//! tells the [`Pacer`] when each scraper (by client address and port: one
//! Prometheus job keeps one connection) scrapes; the pacer learns each
//! one's period and predicts the next scrape of one *reference* scraper
//! (the most frequent); the collector then starts the tick nearest to that
//! prediction early enough to finish a little before it ([`Pacer::plan`]).
//! The schedule then repeats with the reference's period: the reference
//! finds every sample the same few milliseconds old, and every other
//! scraper at that period (or a multiple) a constant, if larger, age,
//! which is just as exact for `rate()`. Nothing is collected twice, no request waits for
//! a collection, and "encode once per snapshot" stays.
//!
//! Bounds: at most [`MAX_SCRAPERS`] scrapers are followed (the least
//! recently seen is replaced); a tick moves by at most half an interval,
//! so ticks stay at least half an interval apart; a scraper not seen for
//! three of its periods is no longer predicted. Pure but for one mutex;
//! never fails.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scrapers followed at once (an HA pair of Prometheus, a few jobs).
pub const MAX_SCRAPERS: usize = 16;

/// Gaps shorter than this are retries or bursts, not a scrape period.
const MIN_PERIOD: Duration = Duration::from_millis(500);
/// Longer than this is not a periodic scraper.
const MAX_PERIOD: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Rhythm {
    who: SocketAddr,
    first: Instant,
    last: Instant,
    period: Option<Duration>,
}

/// What the HTTP edge records and the collector reads. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    rhythms: Arc<Mutex<Vec<Rhythm>>>,
    /// True while a tick runs: a scrape arriving then waits (briefly) for
    /// its snapshot rather than take the one an interval older.
    ticking: Arc<std::sync::atomic::AtomicBool>,
}

impl Pacer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The collector starts (`true`) or has published (`false`) a tick.
    pub fn set_ticking(&self, on: bool) {
        self.ticking.store(on, std::sync::atomic::Ordering::Release);
    }

    /// Whether a tick is running now.
    pub fn ticking(&self) -> bool {
        self.ticking.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A full scrape of `/metrics` by `who`, at `at`.
    pub fn record(&self, who: SocketAddr, at: Instant) {
        let mut rs = self.rhythms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rs.iter_mut().find(|r| r.who == who) {
            let gap = at.saturating_duration_since(r.last);
            if gap < MIN_PERIOD {
                return;
            }
            r.period = (gap <= MAX_PERIOD).then_some(gap);
            r.last = at;
            return;
        }
        let new = Rhythm {
            who,
            first: at,
            last: at,
            period: None,
        };
        if rs.len() < MAX_SCRAPERS {
            rs.push(new);
        } else if let Some(oldest) = rs.iter_mut().min_by_key(|r| r.last) {
            *oldest = new;
        }
    }

    /// The next scrape expected after `now` of the *reference* scraper:
    /// of those seen within three of their periods, the most frequent, then
    /// the one followed longest. One reference, not the earliest of all:
    /// following it makes the schedule repeat with its period, so every
    /// scraper at that period (or a multiple) finds a constant age; chasing
    /// whichever scrape comes first makes the schedule repeat only every
    /// few periods and the ages alternate.
    pub fn next_scrape(&self, now: Instant) -> Option<Instant> {
        self.reference(now).map(|(at, _)| at)
    }

    /// The reference scraper's next scrape after `now` and its period.
    fn reference(&self, now: Instant) -> Option<(Instant, Duration)> {
        let rs = self.rhythms.lock().unwrap_or_else(|p| p.into_inner());
        let active = || {
            rs.iter().filter_map(|r| {
                let p = r.period?;
                (now.saturating_duration_since(r.last) <= p * 3).then_some((r, p))
            })
        };
        // Measured periods jitter by milliseconds: scrapers within 10% of
        // the shortest period count as equally frequent, and of those the
        // one followed longest leads, so that the reference does not flip
        // between them from scrape to scrape.
        let shortest = active().map(|(_, p)| p).min()?;
        let (r, p) = active()
            .filter(|(_, p)| *p <= shortest + shortest / 10)
            .min_by_key(|(r, _)| r.first)?;
        let since = now.saturating_duration_since(r.last);
        // The first multiple of the period after now.
        let n = u32::try_from(since.as_nanos() / p.as_nanos().max(1)).ok()? + 1;
        Some((r.last.checked_add(p.checked_mul(n)?)?, p))
    }

    /// When the tick after the one that just ended should start.
    ///
    /// With a reference scraper of period `S` (at least the interval `C`),
    /// the ticks of each period are `A`, `A - C`, `A - 2C`, ... (as long as
    /// they stay at least `0.45 C` after the previous period's `A`), where
    /// `A` is `lead` before its next scrape: a grid that depends only on
    /// the scraper, not on when this tick happened to end, so it repeats
    /// exactly with period `S` and each scraper at that period finds the
    /// same age at every scrape. The next tick is the first grid point
    /// a quarter interval or more after `now`. Without a reference (or one scraping more often than
    /// the interval), `regular`.
    pub fn plan(
        &self,
        regular: Instant,
        now: Instant,
        interval: Duration,
        lead: Duration,
    ) -> Instant {
        let Some((scrape, period)) = self.reference(now) else {
            return regular;
        };
        if period < interval || interval.is_zero() {
            return regular;
        }
        let Some(mut a) = scrape.checked_sub(lead) else {
            return regular;
        };
        // At least a quarter interval after the tick that just ended (a
        // lead that grew since it was planned must not make a second tick
        // right behind it).
        let soonest = now + interval / 4;
        if a <= soonest {
            a += period;
        }
        let c = interval.as_nanos();
        // Grid points at least 0.45 C after the previous period's A. Not
        // 0.5: common settings (5 s scrapes, 2 s interval) put S - C/2 on
        // an exact multiple of C, where millisecond jitter in the measured
        // period would flip the number of ticks from period to period.
        let k_max = period.saturating_sub(interval.mul_f64(0.45)).as_nanos() / c;
        // The largest k with a - k C still after `soonest`.
        let ahead = a
            .saturating_duration_since(soonest)
            .as_nanos()
            .saturating_sub(1);
        let k = (ahead / c).min(k_max);
        let back = Duration::from_nanos(u64::try_from(k * c).unwrap_or(u64::MAX));
        a.checked_sub(back).unwrap_or(regular)
    }
}

/// How long before a scrape a tick starts: twice the longest of the
/// recent ticks (so that it has finished, with room for a slower one) plus
/// a margin for publishing, at most a quarter of the interval. A scrape
/// that still arrives mid-tick waits for it ([`Pacer::ticking`]).
pub fn lead(slowest_recent_tick: Duration, interval: Duration) -> Duration {
    (slowest_recent_tick * 2 + Duration::from_millis(20)).min(interval / 4)
}

/// The longest of the last few tick durations.
#[derive(Debug, Default)]
pub struct RecentTicks {
    last: [Duration; 8],
    at: usize,
}

impl RecentTicks {
    pub fn push(&mut self, d: Duration) -> Duration {
        if let Some(slot) = self.last.get_mut(self.at % 8) {
            *slot = d;
        }
        self.at = self.at.wrapping_add(1);
        self.last.iter().copied().max().unwrap_or(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_periodic_scraper_is_predicted_and_a_silent_one_forgotten() {
        let p = Pacer::new();
        let t0 = Instant::now();
        assert_eq!(p.next_scrape(t0), None);
        p.record(addr(1), t0);
        assert_eq!(p.next_scrape(t0), None, "one scrape says no period");
        p.record(addr(1), t0 + 15 * S);
        assert_eq!(p.next_scrape(t0 + 16 * S), Some(t0 + 30 * S));
        // A missed scrape: the next multiple.
        assert_eq!(p.next_scrape(t0 + 31 * S), Some(t0 + 45 * S));
        // Three periods of silence: not predicted.
        assert_eq!(p.next_scrape(t0 + 61 * S), None);
        // A retry 100 ms later does not make a 100 ms period.
        p.record(addr(1), t0 + 15 * S + Duration::from_millis(100));
        assert_eq!(p.next_scrape(t0 + 16 * S), Some(t0 + 30 * S));
    }

    #[test]
    fn one_reference_scraper_sets_the_phase_and_the_table_is_bounded() {
        let p = Pacer::new();
        let t0 = Instant::now();
        // Two scrapers every 10 s (phases 0 and 3) and one every 15 s.
        p.record(addr(3), t0);
        p.record(addr(3), t0 + 15 * S);
        for (port, offset) in [(1, 0), (2, 3)] {
            p.record(addr(port), t0 + (offset + 1) * S);
            p.record(addr(port), t0 + (offset + 11) * S);
        }
        // The most frequent, then the one seen first: port 1, always.
        assert_eq!(p.next_scrape(t0 + 12 * S), Some(t0 + 21 * S));
        assert_eq!(p.next_scrape(t0 + 22 * S), Some(t0 + 31 * S));
        for port in 10..10 + 2 * MAX_SCRAPERS as u16 {
            p.record(addr(port), t0 + 20 * S);
        }
        assert_eq!(p.rhythms.lock().unwrap().len(), MAX_SCRAPERS);
    }

    #[test]
    fn ticks_sit_on_a_grid_anchored_to_the_reference_scrape() {
        let p = Pacer::new();
        let t0 = Instant::now();
        let interval = 2 * S;
        let lead = Duration::from_millis(50);
        let ms = Duration::from_millis;
        // No scraper: the regular schedule.
        assert_eq!(p.plan(t0 + interval, t0, interval, lead), t0 + interval);
        // A scraper every 5 s at t0 + 5k: each period's ticks are A, A - 2 s
        // and A - 4 s with A = 50 ms before the scrape, whenever the last
        // tick ended.
        p.record(addr(1), t0 - 5 * S);
        p.record(addr(1), t0);
        let a = t0 + 5 * S - lead;
        for (ended, want) in [
            (t0 + ms(10), a - 4 * S),
            // Less than a quarter interval before a grid point: the next one.
            (t0 + ms(900), a - 2 * S),
            (a - 4 * S + ms(30), a - 2 * S),
            (a - 2 * S + ms(400), a),
            (a + ms(30), a + 5 * S - 4 * S),
        ] {
            assert_eq!(
                p.plan(ended + interval, ended, interval, lead),
                want,
                "after a tick that ended at {:?}",
                ended - t0
            );
        }
        // A scraper more frequent than the interval does not speed up
        // collection.
        let q = Pacer::new();
        q.record(addr(1), t0 - S);
        q.record(addr(1), t0);
        assert_eq!(q.plan(t0 + interval, t0, interval, lead), t0 + interval);
    }

    #[test]
    fn the_lead_covers_the_tick_and_stays_within_a_quarter_interval() {
        assert_eq!(
            lead(Duration::from_millis(10), 5 * S),
            Duration::from_millis(40)
        );
        assert_eq!(lead(2 * S, 5 * S), Duration::from_millis(1250));
    }
}
