//! OTLP metrics over HTTP: an `ExportMetricsServiceRequest` in protobuf,
//! gzip-compressed, POSTed to the receiver's `/v1/metrics`.
//!
//! Reads: one [`Collected`] snapshot, when this process started, and the
//! destination's extra resource attributes. Emits: the request body and
//! its headers. Never fails.
//!
//! Mapping (docs/push.md has the table):
//! - one resource: `service.name` = `vmscope`, `service.version`,
//!   `host.name` (the host's name), `os.type` = `linux`, then the
//!   configured `labels`; one scope, `vmscope`;
//! - one metric per family, named as in Prometheus (so dashboards and
//!   rules written for `/metrics` work after a collector's Prometheus
//!   exporter), with the family's help as description and the UCUM unit
//!   of its name's unit suffix (`_seconds` `s`, `_bytes` `By`, `_ratio`
//!   `1`);
//! - counters: cumulative, monotonic `Sum`s whose start time is the VM's
//!   start for per-VM series (their counters are the hypervisor process'
//!   own, from zero at its start) and this process' start otherwise;
//!   gauges: `Gauge`s; histograms: cumulative explicit-bucket
//!   `Histogram`s, with this process' start;
//! - labels become attributes, renamed per the OpenTelemetry semantic
//!   conventions where one exists ([`ATTRIBUTES`]), kept otherwise.
//!
//! The messages are hand-written prost structs carrying the field numbers
//! of `opentelemetry/proto/{collector/metrics,metrics,common,resource}/v1`:
//! the `opentelemetry-proto` crate would bring `opentelemetry` and its SDK
//! into the agent, and generating code needs `protoc` at build time. A
//! test decodes our requests with that crate (the official definitions).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::collect::Collected;
use crate::export::{Family, MetricType, Sample};

#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeMetrics {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// Only the string arm of `AnyValue`'s oneof is ever sent.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(string, tag = "1")]
    pub string_value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(string, tag = "3")]
    pub unit: String,
    #[prost(oneof = "Data", tags = "5, 7, 9")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
pub const CUMULATIVE: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    /// The `as_double` arm of the value oneof: every value is sent as a
    /// double (as in Prometheus), so a metric never mixes the two arms.
    #[prost(double, tag = "4")]
    pub as_double: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
}

/// Prometheus label -> OpenTelemetry attribute, where the semantic
/// conventions name one. Labels not listed keep their name (`vm_id`,
/// `vm_name`, `vcpu`, `state`, ...: the conventions have no VM-on-a-host
/// attributes; `host.*` describe the resource, the hypervisor host).
pub const ATTRIBUTES: &[(&str, &str)] = &[
    ("interface", "network.interface.name"),
    ("device", "system.device"),
    ("mountpoint", "system.filesystem.mountpoint"),
    ("fstype", "system.filesystem.type"),
    ("mode", "cpu.mode"),
    ("route", "http.route"),
    ("method", "http.request.method"),
    ("status", "http.response.status_code"),
];

/// The attribute name of the Prometheus label `label`.
pub fn attribute_name(label: &str) -> &str {
    ATTRIBUTES
        .iter()
        .find(|(l, _)| *l == label)
        .map_or(label, |(_, a)| a)
}

/// The UCUM unit of a metric name's unit suffix (METRICS.md: base units,
/// the unit as a plural suffix before `_total`); empty when it has none.
pub fn unit_of(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else if base.ends_with("_ratio") {
        "1"
    } else {
        ""
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            string_value: value.to_owned(),
        }),
    }
}

fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| kv(attribute_name(k), v))
        .collect()
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn secs_to_nanos(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e9) as u64
    } else {
        0
    }
}

/// The start of a counter series: its VM's start when it is a VM's.
fn start_of(s: &Sample, c: &Collected, process_start: u64) -> u64 {
    s.labels
        .iter()
        .find(|(k, _)| k == "vm_id")
        .and_then(|(_, id)| c.vm_starts.get(id))
        .map(|&secs| secs_to_nanos(secs))
        .filter(|&n| n > 0)
        .unwrap_or(process_start)
}

fn number_points(f: &Family, c: &Collected, start: Option<u64>, now: u64) -> Vec<NumberDataPoint> {
    f.samples
        .iter()
        .map(|s| NumberDataPoint {
            attributes: attributes(&s.labels),
            start_time_unix_nano: start.map_or(0, |p| start_of(s, c, p)),
            time_unix_nano: now,
            as_double: super::as_f64(s.value),
        })
        .collect()
}

/// A histogram family's samples (per series: `_bucket`s in `le` order,
/// `_sum`, `_count`, as the sample encoder writes them) as data points.
fn histogram_points(f: &Family, start: u64, now: u64) -> Vec<HistogramDataPoint> {
    let bucket = format!("{}_bucket", f.desc.name);
    let sum = format!("{}_sum", f.desc.name);
    let count = format!("{}_count", f.desc.name);
    let mut out = Vec::new();
    let mut bounds = Vec::new();
    let mut cumulative = Vec::new();
    let mut total_sum = None;
    for s in &f.samples {
        if s.name == bucket {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| v.parse::<f64>().ok());
            if let Some(le) = le.filter(|l| l.is_finite()) {
                bounds.push(le);
            }
            cumulative.push(super::as_f64(s.value) as u64);
        } else if s.name == sum {
            total_sum = Some(super::as_f64(s.value));
        } else if s.name == count {
            let n = super::as_f64(s.value) as u64;
            let mut counts = Vec::with_capacity(cumulative.len());
            let mut prev = 0;
            for &c in &cumulative {
                counts.push(c.saturating_sub(prev));
                prev = c;
            }
            out.push(HistogramDataPoint {
                attributes: attributes(&s.labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: n,
                sum: total_sum.take(),
                bucket_counts: counts,
                explicit_bounds: std::mem::take(&mut bounds),
            });
            cumulative.clear();
        }
    }
    out
}

/// The request for `c`; `attrs` are extra resource attributes.
pub fn request(
    c: &Collected,
    process_start: SystemTime,
    attrs: &[(String, String)],
) -> ExportMetricsServiceRequest {
    let now = nanos(c.at);
    let started = nanos(process_start);
    let metrics = c
        .families
        .iter()
        .map(|f| Metric {
            name: f.desc.name.to_owned(),
            description: f.desc.help.to_owned(),
            unit: unit_of(f.desc.name).to_owned(),
            data: Some(match f.desc.kind {
                MetricType::Gauge => Data::Gauge(Gauge {
                    data_points: number_points(f, c, None, now),
                }),
                MetricType::Counter => Data::Sum(Sum {
                    data_points: number_points(f, c, Some(started), now),
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                }),
                MetricType::Histogram => Data::Histogram(Histogram {
                    data_points: histogram_points(f, started, now),
                    aggregation_temporality: CUMULATIVE,
                }),
            }),
        })
        .collect();
    let mut resource = vec![
        kv("service.name", "vmscope"),
        kv("service.version", crate::BuildInfo::VERSION),
        kv("os.type", "linux"),
    ];
    if !c.host.is_empty() {
        resource.push(kv("host.name", &c.host));
    }
    for (k, v) in attrs {
        match resource.iter_mut().find(|a| a.key == *k) {
            Some(a) => *a = kv(k, v),
            None => resource.push(kv(k, v)),
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "vmscope".to_owned(),
                    version: crate::BuildInfo::VERSION.to_owned(),
                }),
                metrics,
            }],
        }],
    }
}

/// The gzip'd body for `c`.
pub fn encode(c: &Collected, process_start: SystemTime, attrs: &[(String, String)]) -> Vec<u8> {
    let raw = request(c, process_start, attrs).encode_to_vec();
    // Level 1: the agent's CPU matters more than bytes on the wire (as for
    // the cached /metrics gzip). Writing into a Vec cannot fail.
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::new(1),
    );
    if gz.write_all(&raw).is_err() {
        return Vec::new();
    }
    gz.finish().unwrap_or_default()
}

/// Extra headers of an OTLP/HTTP request.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "gzip"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixture;
    use crate::push::collect::collect;

    #[test]
    fn units_from_name_suffixes() {
        assert_eq!(unit_of("vmscope_vm_cpu_seconds_total"), "s");
        assert_eq!(unit_of("vmscope_vm_memory_rss_bytes"), "By");
        assert_eq!(unit_of("vmscope_vm_network_receive_bytes_total"), "By");
        assert_eq!(unit_of("vmscope_host_memory_used_ratio"), "1");
        assert_eq!(unit_of("vmscope_vm_network_receive_packets_total"), "");
        assert_eq!(unit_of("vmscope_vm_info"), "");
    }

    #[test]
    fn vm_counters_start_at_the_vm_start_and_labels_follow_the_conventions() {
        let snap = fixture::snapshot(2);
        let c = collect(&snap, &[]);
        let started = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let req = request(
            &c,
            started,
            &[("deployment.environment".into(), "lab".into())],
        );
        let rm = &req.resource_metrics[0];
        let res = &rm.resource.as_ref().unwrap().attributes;
        let attr = |k: &str| {
            res.iter()
                .find(|a| a.key == k)
                .map(|a| a.value.as_ref().unwrap().string_value.clone())
        };
        assert_eq!(attr("service.name").as_deref(), Some("vmscope"));
        assert_eq!(attr("deployment.environment").as_deref(), Some("lab"));
        let metrics = &rm.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), c.families.len());
        let cpu = metrics
            .iter()
            .find(|m| m.name == "vmscope_vm_cpu_seconds_total")
            .unwrap();
        assert_eq!(cpu.unit, "s");
        let Some(Data::Sum(sum)) = &cpu.data else {
            panic!("{cpu:?}")
        };
        assert!(sum.is_monotonic && sum.aggregation_temporality == CUMULATIVE);
        let p = &sum.data_points[0];
        assert_eq!(
            p.start_time_unix_nano,
            (snap.vms[0].start_time_seconds * 1e9) as u64
        );
        assert!(p.attributes.iter().any(|a| a.key == "cpu.mode"));
        assert!(p.attributes.iter().any(|a| a.key == "vm_id"));
        // A host counter starts with the process.
        let host_counter = metrics
            .iter()
            .find_map(|m| match &m.data {
                Some(Data::Sum(s)) if !m.name.starts_with("vmscope_vm_") => Some(s),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            host_counter.data_points[0].start_time_unix_nano,
            1_800_000_000 * 1_000_000_000
        );
    }
}
