//! Per-second rates from two samples of a VM's counters.
//!
//! Reads the VM's published counters (CPU seconds, TAP and disk bytes) at the
//! end of a tick and keeps them as a [`RateSample`]; the next good sample
//! gives [`VmRates`] over the real time between the two (not the nominal
//! interval, so a late tick does not inflate a rate). Never fails: a window
//! of zero gives no rates, a counter that went backwards (a TAP re-created)
//! gives 0, not a spike.

use std::time::Instant;

use crate::model::{VmRates, VmStats};

/// A previous sample, for rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSample {
    pub at: Instant,
    pub cpu: f64,
    pub rx: u64,
    pub tx: u64,
    pub rd: u64,
    pub wr: u64,
}

/// The counters of `s` that rates are computed from, taken at `at`.
pub fn rate_sample(s: &VmStats, at: Instant) -> RateSample {
    let (rx, tx) = s.network_totals();
    let disk = s.disk.unwrap_or_default();
    RateSample {
        at,
        cpu: s.cpu.total(),
        rx,
        tx,
        rd: disk.read_bytes,
        wr: disk.write_bytes,
    }
}

/// Rates between two samples; `vcpus` (allocated) scales CPU to a ratio.
pub fn rates(prev: &RateSample, cur: &RateSample, vcpus: Option<u32>) -> Option<VmRates> {
    let window = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    if window <= 0.0 {
        return None;
    }
    // A counter that went backwards (TAP re-created) gives 0, not a spike.
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / window;
    let cpu_cores = ((cur.cpu - prev.cpu) / window).max(0.0);
    Some(VmRates {
        window_seconds: window,
        cpu_cores,
        cpu_utilization_ratio: vcpus.filter(|v| *v > 0).map(|v| cpu_cores / v as f64),
        network_rx_bytes_per_second: per_s(prev.rx, cur.rx),
        network_tx_bytes_per_second: per_s(prev.tx, cur.tx),
        disk_read_bytes_per_second: per_s(prev.rd, cur.rd),
        disk_write_bytes_per_second: per_s(prev.wr, cur.wr),
    })
}

/// Rates for a VM whose values are fresh at `now`, given its previous
/// sample; returns the sample to keep for the next tick. A VM whose read
/// failed keeps its previous sample and its last rates.
pub fn advance(
    stats: &mut VmStats,
    prev: Option<RateSample>,
    fresh: bool,
    now: Instant,
) -> Option<RateSample> {
    if !fresh {
        return prev;
    }
    let cur = rate_sample(stats, now);
    stats.rates = prev.and_then(|p| rates(&p, &cur, stats.allocated_vcpus));
    Some(cur)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;
    use crate::model::{CpuSeconds, DiskIo, NetStats, Source};

    fn sample(at: Instant, cpu: f64, rx: u64, tx: u64, rd: u64, wr: u64) -> RateSample {
        RateSample {
            at,
            cpu,
            rx,
            tx,
            rd,
            wr,
        }
    }

    #[test]
    fn rates_are_per_second_over_the_real_window() {
        let t0 = Instant::now();
        let a = sample(t0, 10.0, 1000, 2000, 0, 500);
        let b = sample(t0 + Duration::from_secs(2), 13.0, 3000, 2100, 4096, 500);
        let r = rates(&a, &b, Some(4)).unwrap();
        assert_eq!(r.window_seconds, 2.0);
        assert_eq!(r.cpu_cores, 1.5);
        assert_eq!(r.cpu_utilization_ratio, Some(0.375));
        assert_eq!(r.network_rx_bytes_per_second, 1000.0);
        assert_eq!(r.network_tx_bytes_per_second, 50.0);
        assert_eq!(r.disk_read_bytes_per_second, 2048.0);
        assert_eq!(r.disk_write_bytes_per_second, 0.0);
    }

    #[test]
    fn no_window_no_rates() {
        let t0 = Instant::now();
        let a = sample(t0 + Duration::from_secs(1), 1.0, 1, 1, 1, 1);
        let same = sample(t0 + Duration::from_secs(1), 2.0, 2, 2, 2, 2);
        assert_eq!(rates(&a, &same, Some(1)), None);
        // A sample older than the previous one (clock misuse) gives none too.
        let older = sample(t0, 2.0, 2, 2, 2, 2);
        assert_eq!(rates(&a, &older, Some(1)), None);
    }

    #[test]
    fn counters_going_backwards_give_zero_not_a_spike() {
        let t0 = Instant::now();
        let a = sample(t0, 50.0, 1_000_000, 1_000_000, 9, 9);
        let b = sample(t0 + Duration::from_secs(1), 40.0, 10, 20, 0, 0);
        let r = rates(&a, &b, Some(2)).unwrap();
        assert_eq!(r.cpu_cores, 0.0);
        assert_eq!(r.network_rx_bytes_per_second, 0.0);
        assert_eq!(r.network_tx_bytes_per_second, 0.0);
        assert_eq!(r.disk_read_bytes_per_second, 0.0);
        assert_eq!(r.disk_write_bytes_per_second, 0.0);
    }

    #[test]
    fn utilization_needs_a_known_nonzero_vcpu_count() {
        let t0 = Instant::now();
        let a = sample(t0, 0.0, 0, 0, 0, 0);
        let b = sample(t0 + Duration::from_secs(1), 1.0, 0, 0, 0, 0);
        assert_eq!(rates(&a, &b, None).unwrap().cpu_utilization_ratio, None);
        assert_eq!(rates(&a, &b, Some(0)).unwrap().cpu_utilization_ratio, None);
        assert_eq!(
            rates(&a, &b, Some(1)).unwrap().cpu_utilization_ratio,
            Some(1.0)
        );
    }

    fn stats(cpu_user: f64, rx: u64, read: u64) -> VmStats {
        let mut s = VmStats::unmeasured(7, Source::Process);
        s.cpu = CpuSeconds {
            user: cpu_user,
            ..CpuSeconds::default()
        };
        s.network = vec![NetStats {
            interface: "tap0".into(),
            rx_bytes: rx,
            ..NetStats::default()
        }];
        s.disk = Some(DiskIo {
            read_bytes: read,
            write_bytes: 0,
        });
        s.allocated_vcpus = Some(2);
        s
    }

    #[test]
    fn sample_reads_the_published_counters() {
        let t0 = Instant::now();
        let s = rate_sample(&stats(3.0, 100, 7), t0);
        assert_eq!(s, sample(t0, 3.0, 100, 0, 7, 0));
        // No disk counters (not root): zeros, not a missing sample.
        let mut no_disk = stats(3.0, 100, 7);
        no_disk.disk = None;
        assert_eq!(rate_sample(&no_disk, t0).rd, 0);
    }

    #[test]
    fn advance_keeps_the_last_good_sample_through_failures() {
        let t0 = Instant::now();
        let mut s = stats(1.0, 0, 0);
        // First good read: a sample, no rates yet.
        let p = advance(&mut s, None, true, t0);
        assert_eq!(s.rates, None);
        // A failed tick: same sample, rates untouched.
        s.cpu.user = 99.0;
        let p2 = advance(&mut s, p, false, t0 + Duration::from_secs(1));
        assert_eq!(p2, p);
        assert_eq!(s.rates, None);
        // The next good read measures over the whole 2 s since the sample.
        s.cpu.user = 3.0;
        let p3 = advance(&mut s, p2, true, t0 + Duration::from_secs(2));
        let r = s.rates.unwrap();
        assert_eq!(r.window_seconds, 2.0);
        assert_eq!(r.cpu_cores, 1.0);
        assert_eq!(r.cpu_utilization_ratio, Some(0.5));
        assert_eq!(p3.map(|p| p.cpu), Some(3.0));
    }
}
