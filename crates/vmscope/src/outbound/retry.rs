//! When to try again: which outcomes are worth retrying, how long to wait
//! (exponential backoff from 1 s, capped), and the receiver's own
//! `Retry-After`.
//!
//! Reads: HTTP statuses and `Retry-After` header values. Emits: a
//! [`DeliveryError`] per failed attempt and the pause before the next one
//! ([`Backoff::pause`]). Pure: no IO, no clock of its own (the caller
//! passes `now` for HTTP dates).

use std::time::{Duration, SystemTime};

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: unreachable, timed out, 5xx, 429.
    #[error("{message}")]
    Retryable {
        message: String,
        /// The receiver asked for this pause (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The receiver refused the request (4xx other than 429): repeating it
    /// cannot help.
    #[error("{0}")]
    Rejected(String),
}

/// Statuses worth another attempt: the receiver is overloaded (429) or
/// broken for now (5xx). Any other non-2xx means the request is wrong.
pub fn is_retryable(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

/// A `Retry-After` value: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`, taken relative to `now`; a date in
/// the past means "now"). `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff: 1 s, 2 s, 4 s, ... up to `max`, one instance per
/// item being delivered.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// The first pause.
    pub const INITIAL: Duration = Duration::from_secs(1);

    pub fn new(max: Duration) -> Self {
        Backoff {
            next: Self::INITIAL,
            max,
        }
    }

    /// The pause before the next attempt: what the receiver asked for, or
    /// the current backoff, never more than `max` (a receiver asking for a
    /// day must not stall the queue for a day). Doubles the backoff.
    pub fn pause(&mut self, retry_after: Option<Duration>) -> Duration {
        let pause = retry_after.unwrap_or(self.next).min(self.max);
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let got: Vec<u64> = (0..6).map(|_| b.pause(None).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn retry_after_wins_but_is_capped_and_still_grows_the_backoff() {
        let mut b = Backoff::new(Duration::from_secs(30));
        assert_eq!(
            b.pause(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.pause(Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
        // Two attempts were made: the backoff is at 4 s now.
        assert_eq!(b.pause(None), Duration::from_secs(4));
    }

    #[test]
    fn retry_after_in_seconds_and_as_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "1.5", "soon", "2026-10-21T07:29:30Z"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(s), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 413, 428, 600] {
            assert!(!is_retryable(s), "{s}");
        }
    }
}
