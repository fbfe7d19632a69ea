//! The pushers' own metrics, per destination.
//!
//! Emits (through [`MetricSource`]): `vmscope_push_samples_total{destination,result}`
//! (`sent`, `rejected`), `vmscope_push_dropped_samples_total{destination}`,
//! `vmscope_push_errors_total{destination,kind}`,
//! `vmscope_push_queue_samples{destination}`,
//! `vmscope_push_last_success_timestamp_seconds{destination}`,
//! `vmscope_push_duration_seconds{destination}` (encode and compress of the
//! last push, wall time), `vmscope_push_encode_cpu_seconds_total{destination}`
//! and `vmscope_push_encodes_total{destination}` (what pushing costs: CPU
//! per push is their ratio), `vmscope_push_reused_series{destination}`
//! (series of the last push written from the push before). Plain atomics: the pushers write, `/metrics` reads, nobody
//! waits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::export::{Desc, MetricSource, MetricWriter, Value};

/// `kind` values of `vmscope_push_errors_total`, in output order
/// ([`crate::outbound::client::FailureKind::label`]).
pub const ERROR_KINDS: &[&str] = &[
    "timeout",
    "unreachable",
    "http_429",
    "http_5xx",
    "http_4xx",
    "http_other",
];

static SAMPLES: Desc = Desc::counter(
    "vmscope_push_samples_total",
    "Samples pushed to a destination, by result: sent (accepted, 2xx) or rejected (refused with a 4xx other than 429; not retried).",
);
static DROPPED: Desc = Desc::counter(
    "vmscope_push_dropped_samples_total",
    "Samples dropped unsent because the destination's queue was full (the oldest push goes first) or the agent stopped.",
);
static ERRORS: Desc = Desc::counter(
    "vmscope_push_errors_total",
    "Failed push attempts by kind (timeout, unreachable, http_429, http_5xx: retried; http_4xx: given up).",
);
static QUEUE: Desc = Desc::gauge(
    "vmscope_push_queue_samples",
    "Samples waiting to be pushed to a destination, the push being retried included.",
);
static LAST_SUCCESS: Desc = Desc::gauge(
    "vmscope_push_last_success_timestamp_seconds",
    "When a push to the destination last succeeded, Unix seconds (0: never).",
);
static DURATION: Desc = Desc::gauge(
    "vmscope_push_duration_seconds",
    "CPU-bound part of the last push to the destination: building and compressing the request body.",
);

static ENCODE_CPU: Desc = Desc::counter(
    "vmscope_push_encode_cpu_seconds_total",
    "CPU time spent building and compressing the destination's request bodies (the encoding thread's own CPU time, not wall time).",
);
static ENCODES: Desc = Desc::counter(
    "vmscope_push_encodes_total",
    "Request bodies built for the destination (one per pushed snapshot); vmscope_push_encode_cpu_seconds_total divided by this is the CPU of one push.",
);

static REUSED: Desc = Desc::gauge(
    "vmscope_push_reused_series",
    "Series of the last push to the destination whose bytes were reused from the push before (only their value and time rewritten): all of them on a steady host; fewer after VMs, devices or labels changed.",
);

/// One destination's counters.
#[derive(Debug, Default)]
pub struct DestinationMetrics {
    pub sent: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: [AtomicU64; 6],
    pub queue: AtomicU64,
    /// f64 bits.
    pub last_success: AtomicU64,
    /// f64 bits.
    pub duration: AtomicU64,
    /// Nanoseconds of thread CPU time spent encoding.
    pub encode_cpu_ns: AtomicU64,
    pub encodes: AtomicU64,
    pub reused: AtomicU64,
}

impl DestinationMetrics {
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn set_f64(cell: &AtomicU64, v: f64) {
        cell.store(v.to_bits(), Ordering::Relaxed);
    }

    fn f64(cell: &AtomicU64) -> f64 {
        f64::from_bits(cell.load(Ordering::Relaxed))
    }

    fn n(cell: &AtomicU64) -> u64 {
        cell.load(Ordering::Relaxed)
    }
}

/// Every destination's metrics, in config order.
#[derive(Debug, Default)]
pub struct PushMetrics {
    destinations: Mutex<Vec<(String, std::sync::Arc<DestinationMetrics>)>>,
}

impl PushMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cells of destination `name` (made on first use).
    pub fn destination(&self, name: &str) -> std::sync::Arc<DestinationMetrics> {
        let mut d = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = d.iter().find(|(n, _)| n == name) {
            return std::sync::Arc::clone(m);
        }
        let m = std::sync::Arc::new(DestinationMetrics::default());
        d.push((name.to_owned(), std::sync::Arc::clone(&m)));
        m
    }
}

impl MetricSource for PushMetrics {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        let d = self
            .destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if d.is_empty() {
            return;
        }
        type M = DestinationMetrics;
        out.family(&SAMPLES);
        for (name, m) in &d {
            out.sample(&[("destination", name), ("result", "sent")], M::n(&m.sent));
            out.sample(
                &[("destination", name), ("result", "rejected")],
                M::n(&m.rejected),
            );
        }
        // A family with one series per destination.
        let each =
            |out: &mut MetricWriter<'_>, desc: &'static Desc, value: &dyn Fn(&M) -> Value| {
                out.family(desc);
                for (name, m) in &d {
                    out.sample(&[("destination", name)], value(m));
                }
            };
        each(out, &DROPPED, &|m| M::n(&m.dropped).into());
        out.family(&ERRORS);
        for (name, m) in &d {
            for (kind, cell) in ERROR_KINDS.iter().zip(&m.errors) {
                out.sample(&[("destination", name), ("kind", kind)], M::n(cell));
            }
        }
        each(out, &QUEUE, &|m| M::n(&m.queue).into());
        each(out, &LAST_SUCCESS, &|m| M::f64(&m.last_success).into());
        each(out, &DURATION, &|m| M::f64(&m.duration).into());
        each(out, &ENCODE_CPU, &|m| {
            (M::n(&m.encode_cpu_ns) as f64 / 1e9).into()
        });
        each(out, &ENCODES, &|m| M::n(&m.encodes).into());
        each(out, &REUSED, &|m| M::n(&m.reused).into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Format, encode};

    #[test]
    fn every_family_per_destination_and_nothing_without_destinations() {
        let none = PushMetrics::new();
        let text = encode(Format::Text, &[&none]);
        assert!(!text.contains("vmscope_push_"), "{text}");

        let m = PushMetrics::new();
        let rw = m.destination("rw");
        rw.sent.fetch_add(12, Ordering::Relaxed);
        rw.error("http_429");
        rw.error("not-a-kind");
        DestinationMetrics::set_f64(&rw.last_success, 1_700_000_000.5);
        rw.encode_cpu_ns.fetch_add(2_500_000, Ordering::Relaxed);
        rw.encodes.fetch_add(2, Ordering::Relaxed);
        rw.reused.store(30, Ordering::Relaxed);
        m.destination("otlp");
        let text = encode(Format::Text, &[&m]);
        for want in [
            "vmscope_push_samples_total{destination=\"rw\",result=\"sent\"} 12\n",
            "vmscope_push_samples_total{destination=\"otlp\",result=\"rejected\"} 0\n",
            "vmscope_push_errors_total{destination=\"rw\",kind=\"http_429\"} 1\n",
            "vmscope_push_errors_total{destination=\"rw\",kind=\"timeout\"} 0\n",
            "vmscope_push_last_success_timestamp_seconds{destination=\"rw\"} 1700000000.5\n",
            "vmscope_push_queue_samples{destination=\"otlp\"} 0\n",
            "vmscope_push_dropped_samples_total{destination=\"otlp\"} 0\n",
            "vmscope_push_encode_cpu_seconds_total{destination=\"rw\"} 0.0025\n",
            "vmscope_push_encodes_total{destination=\"rw\"} 2\n",
            "vmscope_push_reused_series{destination=\"rw\"} 30\n",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
    }
}
