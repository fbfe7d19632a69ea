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
//! one's period and predicts its next scrape; the collector then starts
//! the tick nearest to that prediction early enough to finish a little
//! before it ([`Pacer::plan`]). A scraper at the collection interval (or a
//! multiple of it) then finds every sample the same few milliseconds old;
//! scrapers at other phases find a constant (if larger) age, which is just
//! as exact for `rate()`. Nothing is collected twice, no request waits for
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
            last: at,
            period: None,
        };
        if rs.len() < MAX_SCRAPERS {
            rs.push(new);
        } else if let Some(oldest) = rs.iter_mut().min_by_key(|r| r.last) {
            *oldest = new;
        }
    }

    /// The earliest scrape expected after `now`, from every scraper seen
    /// within three of its periods.
    pub fn next_scrape(&self, now: Instant) -> Option<Instant> {
        let rs = self.rhythms.lock().unwrap_or_else(|p| p.into_inner());
        rs.iter()
            .filter_map(|r| {
                let p = r.period?;
                let since = now.saturating_duration_since(r.last);
                if since > p * 3 {
                    return None;
                }
                // The first multiple of the period after now.
                let n = (since.as_nanos() / p.as_nanos().max(1)) as u32 + 1;
                r.last.checked_add(p.checked_mul(n)?)
            })
            .min()
    }

    /// When the tick after the one that just ended should start. `regular`
    /// is the unaligned schedule (the last start plus the interval); a
    /// predicted scrape moves it to `lead` before that scrape when that is
    /// at most half an interval away from `regular` and still ahead of
    /// `now`.
    pub fn plan(
        &self,
        regular: Instant,
        now: Instant,
        interval: Duration,
        lead: Duration,
    ) -> Instant {
        let Some(scrape) = self.next_scrape(now) else {
            return regular;
        };
        let Some(aligned) = scrape.checked_sub(lead) else {
            return regular;
        };
        let half = interval / 2;
        if aligned > now && aligned.max(regular) - aligned.min(regular) <= half {
            aligned
        } else {
            regular
        }
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
    fn the_earliest_of_several_scrapers_counts_and_the_table_is_bounded() {
        let p = Pacer::new();
        let t0 = Instant::now();
        for (port, offset) in [(1, 0), (2, 3)] {
            p.record(addr(port), t0 + offset * S);
            p.record(addr(port), t0 + (offset + 10) * S);
        }
        assert_eq!(p.next_scrape(t0 + 14 * S), Some(t0 + 20 * S));
        assert_eq!(p.next_scrape(t0 + 21 * S), Some(t0 + 23 * S));
        for port in 10..10 + 2 * MAX_SCRAPERS as u16 {
            p.record(addr(port), t0 + 20 * S);
        }
        assert_eq!(p.rhythms.lock().unwrap().len(), MAX_SCRAPERS);
    }

    #[test]
    fn ticks_move_at_most_half_an_interval_toward_the_scrape() {
        let p = Pacer::new();
        let t0 = Instant::now();
        let interval = 5 * S;
        let lead = Duration::from_millis(50);
        // No scraper: the regular schedule.
        assert_eq!(p.plan(t0 + interval, t0, interval, lead), t0 + interval);
        // A scraper every 5 s at t0 + 2 s + 5k: the tick moves to 50 ms
        // before its next scrape (1.95 s earlier than regular).
        p.record(addr(1), t0 - 3 * S);
        p.record(addr(1), t0 + 2 * S);
        let now = t0 + 2 * S + Duration::from_millis(10);
        assert_eq!(
            p.plan(t0 + interval, now, interval, lead),
            t0 + 7 * S - lead
        );
        // A scrape 4 s after the regular tick is too far: regular.
        let q = Pacer::new();
        q.record(addr(1), t0 - 11 * S);
        q.record(addr(1), t0 - 2 * S);
        assert_eq!(q.next_scrape(t0), Some(t0 + 7 * S));
        assert_eq!(q.plan(t0 + 3 * S, t0, interval, lead), t0 + 3 * S);
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
