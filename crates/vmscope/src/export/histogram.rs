//! A histogram of vmscope's own timings (HTTP requests, database queries)
//! with fixed bucket bounds: per-bucket counts while observing, cumulative
//! buckets when written, as the exposition formats want them.

use super::{MetricWriter, SeriesText};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Histogram<const N: usize> {
    /// Upper bounds, increasing; `+Inf` is implied.
    bounds: &'static [f64; N],
    /// Per-bucket (not cumulative) counts; a value above the last bound
    /// only counts in `count` (the `+Inf` bucket).
    buckets: [u64; N],
    count: u64,
    sum: f64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [0; N],
            count: 0,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b)
            && let Some(slot) = self.buckets.get_mut(i)
        {
            *slot += 1;
        }
        self.count += 1;
        self.sum += value;
    }

    /// Writes this histogram as one series (`labels`) of the writer's
    /// current family.
    pub fn write(&self, out: &mut MetricWriter<'_>, labels: &[(&str, &str)]) {
        out.histogram(labels, &self.cumulative(), self.sum, self.count);
    }

    /// [`Histogram::write`], copying the text kept in `cache` when this
    /// series was written there with the same count (an observation is
    /// the only change, and it moves the count). `labels` must be the
    /// same at every call with one `cache`.
    pub fn write_cached(
        &self,
        out: &mut MetricWriter<'_>,
        labels: &[(&str, &str)],
        cache: &mut SeriesText,
    ) {
        out.histogram_cached(
            cache,
            self.count,
            labels,
            &self.cumulative(),
            self.sum,
            self.count,
        );
    }

    fn cumulative(&self) -> [(f64, u64); N] {
        let mut cumulative = [(0.0, 0u64); N];
        let mut acc = 0u64;
        for ((slot, bound), n) in cumulative.iter_mut().zip(self.bounds).zip(self.buckets) {
            acc += n;
            *slot = (*bound, acc);
        }
        cumulative
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Desc, Format};

    static H: Desc = Desc::histogram("t_seconds", "Test.");
    static BOUNDS: [f64; 2] = [0.1, 1.0];

    #[test]
    fn buckets_are_written_cumulative_with_overflow_in_inf() {
        let mut h = Histogram::new(&BOUNDS);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut s = String::new();
        let mut w = MetricWriter::new(&mut s, Format::Text);
        w.family(&H);
        h.write(&mut w, &[("op", "x")]);
        w.finish();
        assert!(
            s.contains("t_seconds_bucket{op=\"x\",le=\"0.1\"} 2\n"),
            "{s}"
        );
        assert!(s.contains("t_seconds_bucket{op=\"x\",le=\"1\"} 3\n"), "{s}");
        assert!(
            s.contains("t_seconds_bucket{op=\"x\",le=\"+Inf\"} 4\n"),
            "{s}"
        );
        assert!(s.contains("t_seconds_sum{op=\"x\"} 3.65\n"), "{s}");
        assert!(s.contains("t_seconds_count{op=\"x\"} 4\n"), "{s}");
    }
}
