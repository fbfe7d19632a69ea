//! Prometheus remote_write 1.0: a protobuf `WriteRequest`, snappy
//! (block format) compressed.
//!
//! Reads: one [`Collected`] snapshot and the destination's external
//! labels. Emits: the request body and its headers (`Content-Encoding:
//! snappy`, `Content-Type: application/x-protobuf`,
//! `X-Prometheus-Remote-Write-Version: 0.1.0`). Never fails.
//!
//! Per series: labels sorted by name, `__name__` among them, one sample
//! with the snapshot's collection time in milliseconds (the moment the
//! values were read, as a scrape of that snapshot would see them), then
//! one `MetricMetadata` per family (type and help).
//!
//! The messages are hand-written prost structs (the field numbers and
//! types of `prometheus/prompb/{remote,types}.proto`): five small messages
//! do not justify a `build.rs` that needs `protoc` on every build machine.
//! The real-component tests push into Prometheus and VictoriaMetrics,
//! which decode them with the upstream definitions.

use prost::Message;

use super::collect::Collected;
use crate::export::MetricType;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    /// `MetricMetadata.MetricType`: 1 counter, 2 gauge, 3 histogram.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// The uncompressed request for `c`; `labels` are added to every series
/// that does not carry a label of that name itself.
pub fn write_request(c: &Collected, labels: &[(String, String)]) -> WriteRequest {
    let ts =
        c.at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
    let mut timeseries = Vec::with_capacity(c.samples);
    let mut metadata = Vec::with_capacity(c.families.len());
    for f in &c.families {
        for s in &f.samples {
            let mut l = Vec::with_capacity(s.labels.len() + labels.len() + 1);
            l.push(Label {
                name: "__name__".to_owned(),
                value: s.name.clone(),
            });
            for (k, v) in &s.labels {
                l.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
            for (k, v) in labels {
                if !s.labels.iter().any(|(n, _)| n == k) {
                    l.push(Label {
                        name: k.clone(),
                        value: v.clone(),
                    });
                }
            }
            l.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            timeseries.push(TimeSeries {
                labels: l,
                samples: vec![Sample {
                    value: super::as_f64(s.value),
                    timestamp: ts,
                }],
            });
        }
        metadata.push(MetricMetadata {
            r#type: match f.desc.kind {
                MetricType::Counter => 1,
                MetricType::Gauge => 2,
                MetricType::Histogram => 3,
            },
            metric_family_name: f.desc.name.to_owned(),
            help: f.desc.help.to_owned(),
            unit: String::new(),
        });
    }
    WriteRequest {
        timeseries,
        metadata,
    }
}

/// The external labels of a destination: `job="vmscope"` and
/// `instance=<host name>` unless the config sets them, then the config's.
pub fn external_labels(configured: &[(String, String)], host: &str) -> Vec<(String, String)> {
    let mut out = configured.to_vec();
    for (k, v) in [("job", "vmscope"), ("instance", host)] {
        if !v.is_empty() && !out.iter().any(|(n, _)| n == k) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// The compressed body for `c`.
pub fn encode(c: &Collected, configured: &[(String, String)]) -> Vec<u8> {
    let labels = external_labels(configured, &c.host);
    let raw = write_request(c, &labels).encode_to_vec();
    // Compressing a buffer we own cannot fail but for a size limit far
    // above any request (snap's is ~4 GiB); an empty body is then sent
    // and refused, which is counted.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

/// Extra headers of a remote_write request.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixture;
    use crate::push::collect::collect;

    #[test]
    fn every_series_of_the_exposition_with_sorted_labels_and_the_snapshot_time() {
        let snap = fixture::snapshot(3);
        let c = collect(&snap, &[]);
        let body = encode(&c, &[("region".to_owned(), "eu".to_owned())]);
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), c.samples);
        let at_ms = snap
            .collected_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted);
            assert!(names.contains(&"__name__") && names.contains(&"region"));
            assert!(names.contains(&"job") && names.contains(&"instance"));
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, at_ms);
        }
        // A known series: the first VM's user CPU seconds.
        let want = snap.vms[0].cpu.user;
        let found = req.timeseries.iter().find(|ts| {
            let has = |k: &str, v: &str| ts.labels.iter().any(|l| l.name == k && l.value == v);
            has("__name__", "vmscope_vm_cpu_seconds_total")
                && has("vm_id", &snap.vms[0].id)
                && has("mode", "user")
        });
        assert_eq!(found.map(|t| t.samples[0].value), Some(want));
        let cpu_meta = req
            .metadata
            .iter()
            .find(|m| m.metric_family_name == "vmscope_vm_cpu_seconds_total")
            .unwrap();
        assert_eq!(cpu_meta.r#type, 1);
        assert!(!cpu_meta.help.is_empty());
    }

    #[test]
    fn a_series_label_wins_over_an_external_label() {
        let l = external_labels(&[("instance".to_owned(), "h-conf".to_owned())], "h-kernel");
        assert_eq!(
            l,
            [
                ("instance".to_owned(), "h-conf".to_owned()),
                ("job".to_owned(), "vmscope".to_owned())
            ]
        );
        assert_eq!(
            external_labels(&[], ""),
            [("job".to_owned(), "vmscope".to_owned())]
        );
    }
}
