//! Token buckets per client key, in a table bounded in size.
//!
//! The table has two generations: lookups look in the current one and then
//! the previous one (moving a hit forward); when the current one holds half
//! the bound, it becomes the previous one and the old previous one is
//! dropped. Memory is therefore bounded by `max_clients` entries and every
//! operation is O(1); a flood of new clients can only make the limiter
//! forget old clients' buckets, which gives them a full bucket again
//! (lenient, never a lock-out).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use super::config::Rate;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token if there is one; otherwise the seconds until there is.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), f64> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / rate.per_second)
        }
    }
}

/// One bucket per key, at most `max` keys.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    half: usize,
    tables: Mutex<(HashMap<K, Bucket>, HashMap<K, Bucket>)>,
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    pub fn new(rate: Rate, max: usize) -> Self {
        Limiter {
            rate,
            half: (max / 2).max(1),
            tables: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }

    /// Takes a token for `key`; `Err(seconds)` to wait when there is none.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), f64> {
        // Plain numbers inside: a poisoned lock still holds valid buckets.
        let mut guard = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let (current, previous) = &mut *guard;
        if let Some(b) = current.get_mut(key) {
            return b.take(self.rate, now);
        }
        let mut bucket = previous.remove(key).unwrap_or(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        let res = bucket.take(self.rate, now);
        if current.len() >= self.half {
            *previous = std::mem::take(current);
        }
        current.insert(key.clone(), bucket);
        res
    }

    /// Keys held (both generations), for tests of the bound.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let guard = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.len() + guard.1.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_the_table_stays_bounded() {
        let rate = Rate {
            per_second: 2.0,
            burst: 3.0,
        };
        let l = Limiter::new(rate, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(&1u32, t0).is_ok());
        }
        let wait = l.take(&1, t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        // Half a second later one more token has arrived, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take(&1, t1).is_ok());
        assert!(l.take(&1, t1).is_err());
        // Another key has its own bucket.
        assert!(l.take(&2, t1).is_ok());
        for k in 0..10_000u32 {
            let _ = l.take(&k, t1);
            assert!(l.len() <= 10, "{}", l.len());
        }
    }
}
