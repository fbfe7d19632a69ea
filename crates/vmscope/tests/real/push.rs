//! Pushes from a real `vmscope serve` (issue 14, "Push"):
//!
//! - remote_write into a real Prometheus (`--web.enable-remote-write-receiver`)
//!   and a real VictoriaMetrics, watching a real QEMU VM: the series read
//!   back through their query APIs, at the snapshot's own timestamp, are the
//!   ones `/metrics` served for that snapshot (names, labels, values);
//! - OTLP/HTTP into a receiver started here that decodes with the official
//!   proto definitions (the `opentelemetry-proto` crate): every family with
//!   its type, temporality, unit and attributes;
//! - a receiver that is down, then answers 503, then 429 with
//!   `Retry-After`, then 400, then 200: retried, paced and dropped as
//!   docs/push.md says, while the ticks stay on time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric};
use prost::Message;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, Tap, VmSpec};
use crate::support::metrics::Sample;
use crate::support::prom::{Prometheus, query};
use crate::support::victoria::{VICTORIA_METRICS, VictoriaMetrics};
use crate::support::{
    fixture_paths, free_port, http, in_ci, lab_available, poll_until, unique_name, unique_uuid,
};

/// What a receiver answers, switched by the test while vmscope pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    Status(u16),
    TooMany { retry_after_secs: u64 },
}

#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    answer: Answer,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// An HTTP receiver on its own runtime: records every request and answers
/// what [`Receiver::answer`] last set.
struct Receiver {
    url: String,
    shared: Shared,
    _rt: tokio::runtime::Runtime,
}

async fn receive(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = *s.answer.lock().unwrap();
    s.requests.lock().unwrap().push(Request {
        at: Instant::now(),
        answer,
        headers,
        body: body.to_vec(),
    });
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("test receiver answers {code}"),
        )
            .into_response(),
        Answer::TooMany { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
            "slow down",
        )
            .into_response(),
    }
}

impl Receiver {
    /// Listens on `port` (0: any free one); the URL ends in `path`.
    fn start(port: u16, path: &str, answer: Answer) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shared = Shared {
            answer: Arc::new(Mutex::new(answer)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let app = Router::new().fallback(receive).with_state(shared.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            shared,
            _rt: rt,
        }
    }

    fn answer(&self, a: Answer) {
        *self.shared.answer.lock().unwrap() = a;
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
}

fn victoria_available() -> bool {
    if Path::new(VICTORIA_METRICS).exists() {
        return true;
    }
    assert!(
        !in_ci(),
        "{VICTORIA_METRICS} is missing under CI=true (run scripts/install-deps.sh)"
    );
    eprintln!("push: skipped: {VICTORIA_METRICS} is missing (run scripts/install-deps.sh)");
    false
}

/// `secs.millis`, as the query APIs take a time.
fn api_time(t: SystemTime) -> (String, i64) {
    let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    (format!("{}.{:03}", ms / 1000, ms % 1000), ms)
}

type Series = (String, BTreeMap<String, String>);

/// A series' identity as a TSDB keeps it: empty label values are absent.
fn key_of(name: &str, labels: &BTreeMap<String, String>) -> Series {
    let labels = labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (name.to_owned(), labels)
}

/// The raw samples of `selector` in the 900 ms up to `t` (one tick at most:
/// the agent ticks every second), by series; the external labels `job`
/// and `instance` are checked and taken off.
fn read_back(base: &str, selector: &str, t: &str, host: &str) -> BTreeMap<Series, Vec<(i64, f64)>> {
    let mut out = BTreeMap::new();
    for r in query(base, &format!("{selector}[900ms]"), Some(t)) {
        let mut labels: BTreeMap<String, String> =
            serde_json::from_value(r["metric"].clone()).unwrap();
        let name = labels.remove("__name__").unwrap();
        assert_eq!(labels.remove("job").as_deref(), Some("vmscope"), "{r}");
        assert_eq!(labels.remove("instance").as_deref(), Some(host), "{r}");
        let values: Vec<(i64, f64)> = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let ts = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
                let value = match v[1].as_str().unwrap() {
                    "NaN" => f64::NAN,
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    s => s.parse().unwrap(),
                };
                (ts, value)
            })
            .collect();
        out.insert(key_of(&name, &labels), values);
    }
    out
}

fn same_value(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn remote_write_into_prometheus_and_victoriametrics_equals_what_metrics_served() {
    if !lab_available("push") || !victoria_available() {
        return;
    }
    let prom = Prometheus::start_remote_write_receiver();
    let victoria = VictoriaMetrics::start();
    let roms = Roms::new();
    let tap = Tap::new();
    let spec = VmSpec {
        name: unique_name("push"),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 32,
        firmware: Firmware::Idle,
        process_name: None,
    };
    let _vm = QemuVm::start(&roms, spec.clone(), Some(&tap));
    let config = format!(
        "[[push.remote_write]]\nname = \"prometheus\"\nurl = \"{}/api/v1/write\"\n\
         [[push.remote_write]]\nname = \"victoria\"\nurl = \"{}/api/v1/write\"\n",
        prom.base, victoria.base
    );
    let agent = Agent::start_with(1, &config);
    let uuid = spec.uuid.as_str();
    agent.wait_for_series(
        "vmscope_vm_info",
        &[("vm_id", uuid)],
        Duration::from_secs(20),
    );
    // One snapshot exactly as /metrics served it, with the VM in it.
    let (snap, _) = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        agent.consistent_snapshot().filter(|s| {
            !s.metrics
                .all("vmscope_vm_info", &[("vm_id", uuid)])
                .is_empty()
        })
    })
    .expect("a consistent /metrics snapshot with the VM");
    let (t, at_ms) = api_time(snap.collected_at);
    let host = hostname();
    // The snapshot's own families: every series of the VM, and the host's.
    let selectors = [
        (format!("{{vm_id=\"{uuid}\"}}"), None),
        (
            "{__name__=~\"vmscope_host_.*\"}".to_owned(),
            Some("vmscope_host_"),
        ),
    ];
    let want_of = |prefix: Option<&str>| -> BTreeMap<Series, f64> {
        snap.metrics
            .samples
            .iter()
            .filter(|s: &&Sample| match prefix {
                None => s.label("vm_id") == Some(uuid),
                Some(p) => s.name.starts_with(p),
            })
            .map(|s| (key_of(&s.name, &s.labels), s.value))
            .collect()
    };
    // Prometheus keeps float64 as they are; VictoriaMetrics stores values
    // as decimals, exact to about 15 significant digits.
    for (receiver, base, rel) in [
        ("prometheus", prom.base.as_str(), 0.0),
        ("victoria-metrics", victoria.base.as_str(), 1e-12),
    ] {
        let mut compared = 0;
        for (selector, prefix) in &selectors {
            let want = want_of(*prefix);
            assert!(want.len() >= 5, "{selector}: only {} series", want.len());
            // Until this snapshot's push has landed, the last sample is older.
            let got = poll_until(Duration::from_secs(30), Duration::from_millis(300), || {
                let got = read_back(base, selector, &t, &host);
                (got.len() >= want.len()
                    && got.values().all(|v| v.last().is_some_and(|s| s.0 == at_ms)))
                .then_some(got)
            })
            .map(|(g, _)| g)
            .unwrap_or_else(|| {
                panic!(
                    "{receiver}: {selector} at {t} never held this snapshot's {} series; got {:?}; agent log:\n{}",
                    want.len(),
                    read_back(base, selector, &t, &host).keys().take(5).collect::<Vec<_>>(),
                    agent.log()
                )
            });
            let got_keys: BTreeSet<&Series> = got.keys().collect();
            let want_keys: BTreeSet<&Series> = want.keys().collect();
            assert_eq!(got_keys, want_keys, "{receiver}: {selector}: series differ");
            for (k, v) in &want {
                let (ts, value) = *got[k].last().unwrap();
                assert_eq!(ts, at_ms, "{receiver}: {k:?}");
                assert!(
                    same_value(*v, value, rel),
                    "{receiver}: {k:?}: /metrics served {v}, read back {value}"
                );
                compared += 1;
            }
        }
        eprintln!("push: {receiver}: {compared} series equal to /metrics at {t}");
    }
    let m = agent.metrics();
    for d in ["prometheus", "victoria"] {
        let sent = m
            .value(
                "vmscope_push_samples_total",
                &[("destination", d), ("result", "sent")],
            )
            .unwrap_or(0.0);
        assert!(sent > 0.0, "{d}: no samples counted as sent");
        assert_eq!(
            m.value("vmscope_push_dropped_samples_total", &[("destination", d)]),
            Some(0.0)
        );
        // What pushing costs: some CPU per encoded body, and less than
        // the wall time the agent has run.
        let encodes = m
            .value("vmscope_push_encodes_total", &[("destination", d)])
            .unwrap_or(0.0);
        let cpu = m
            .value(
                "vmscope_push_encode_cpu_seconds_total",
                &[("destination", d)],
            )
            .unwrap_or(0.0);
        assert!(encodes >= 1.0, "{d}: no encode counted");
        // The VMs, their devices and labels did not change between
        // pushes: a push after the first reuses the one before.
        let reused = m
            .value("vmscope_push_reused_series", &[("destination", d)])
            .unwrap_or(0.0);
        let series = m
            .value(
                "vmscope_push_samples_total",
                &[("destination", d), ("result", "sent")],
            )
            .unwrap_or(0.0)
            / encodes;
        eprintln!(
            "push: {d}: {encodes} pushes, the last reused {reused} series (about {series:.0} per push)"
        );
        assert!(
            encodes < 2.0 || reused > 0.0,
            "{d}: nothing reused over {encodes} pushes"
        );
        assert!(
            cpu > 0.0 && cpu / encodes < 1.0,
            "{d}: {cpu} s of encode CPU over {encodes} bodies"
        );
    }
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("an OTLP body in gzip");
    out
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// `# TYPE` lines of a text exposition: family -> type.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

#[test]
fn otlp_arrives_with_every_family_typed_with_temporality_unit_and_attributes() {
    if !lab_available("push") {
        return;
    }
    let rx = Receiver::start(0, "/v1/metrics", Answer::Ok);
    let roms = Roms::new();
    let tap = Tap::new();
    let spec = VmSpec {
        name: unique_name("otlp"),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 32,
        firmware: Firmware::Idle,
        process_name: None,
    };
    let _vm = QemuVm::start(&roms, spec.clone(), Some(&tap));
    // A second destination takes the same pushes uncompressed.
    let plain_rx = Receiver::start(0, "/v1/metrics", Answer::Ok);
    let config = format!(
        "[[push.otlp]]\nurl = \"{}\"\nbearer_token = \"push-token-123\"\n\
         headers = {{ \"X-Scope-OrgID\" = \"tenant-7\" }}\n\
         labels = {{ \"deployment.environment\" = \"lab\" }}\n\
         [[push.otlp]]\nname = \"plain\"\nurl = \"{}\"\ncompression = \"none\"\n",
        rx.url, plain_rx.url
    );
    let agent = Agent::start_with(1, &config);
    let uuid = spec.uuid.as_str();
    agent.wait_for_series(
        "vmscope_vm_info",
        &[("vm_id", uuid)],
        Duration::from_secs(20),
    );
    let before = http::get(&agent.url("/metrics")).unwrap().body;
    let scraped = Instant::now();
    // A push made after that scrape, with the VM in it.
    let (req, _) = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        rx.requests()
            .into_iter()
            .filter(|r| r.at > scraped + Duration::from_millis(1100))
            .find_map(|r| {
                let decoded =
                    ExportMetricsServiceRequest::decode(gunzip(&r.body).as_slice()).unwrap();
                let s = format!("{decoded:?}");
                s.contains(uuid).then_some((r, decoded))
            })
    })
    .unwrap_or_else(|| panic!("no OTLP push after the scrape; agent log:\n{}", agent.log()));
    let after = http::get(&agent.url("/metrics")).unwrap().body;
    let (r, decoded) = req;
    let header = |k: &str| r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(header("content-type"), "application/x-protobuf");
    assert_eq!(header("content-encoding"), "gzip");
    assert_eq!(header("authorization"), "Bearer push-token-123");
    assert_eq!(header("x-scope-orgid"), "tenant-7");

    assert_eq!(decoded.resource_metrics.len(), 1);
    let rm = &decoded.resource_metrics[0];
    let resource = attrs(&rm.resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], "vmscope");
    assert_eq!(resource["host.name"], hostname());
    assert_eq!(resource["deployment.environment"], "lab");
    assert!(!resource["service.version"].is_empty());
    assert_eq!(rm.scope_metrics.len(), 1);
    let metrics = &rm.scope_metrics[0].metrics;

    // Every family /metrics served before is pushed; everything pushed is
    // served after (families of the live sources may appear in between).
    let (before, after) = (families(&before), families(&after));
    let pushed: BTreeMap<&str, &opentelemetry_proto::tonic::metrics::v1::Metric> =
        metrics.iter().map(|m| (m.name.as_str(), m)).collect();
    assert_eq!(pushed.len(), metrics.len(), "a family pushed twice");
    for name in before.keys() {
        assert!(
            pushed.contains_key(name.as_str()),
            "{name} served but not pushed"
        );
    }
    let units = [
        ("vmscope_vm_cpu_seconds_total", "s"),
        ("vmscope_vm_memory_rss_bytes", "By"),
        ("vmscope_vm_network_receive_bytes_total", "By"),
        ("vmscope_host_memory_used_ratio", "1"),
        ("vmscope_vm_network_receive_packets_total", ""),
        ("vmscope_vm_info", ""),
    ];
    let mut checked = BTreeMap::new();
    for (name, m) in &pushed {
        let kind = after
            .get(*name)
            .unwrap_or_else(|| panic!("{name} pushed but not in /metrics"));
        assert!(!m.description.is_empty(), "{name}: no description");
        let base = name.strip_suffix("_total").unwrap_or(name);
        let unit = if base.ends_with("_seconds") {
            "s"
        } else if base.ends_with("_bytes") {
            "By"
        } else if base.ends_with("_ratio") {
            "1"
        } else {
            ""
        };
        assert_eq!(m.unit, unit, "{name}: unit");
        let time = match (kind.as_str(), m.data.as_ref().unwrap()) {
            ("counter", metric::Data::Sum(s)) => {
                assert!(s.is_monotonic, "{name}: not monotonic");
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32,
                    "{name}"
                );
                for p in &s.data_points {
                    assert!(
                        p.start_time_unix_nano > 0 && p.start_time_unix_nano <= p.time_unix_nano,
                        "{name}: start {} time {}",
                        p.start_time_unix_nano,
                        p.time_unix_nano
                    );
                }
                s.data_points[0].time_unix_nano
            }
            ("gauge", metric::Data::Gauge(g)) => g.data_points[0].time_unix_nano,
            ("histogram", metric::Data::Histogram(h)) => {
                assert_eq!(
                    h.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32,
                    "{name}"
                );
                for p in &h.data_points {
                    assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1, "{name}");
                    assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{name}");
                    assert!(p.sum.is_some(), "{name}: no sum");
                }
                h.data_points[0].time_unix_nano
            }
            (k, d) => panic!("{name}: /metrics says {k}, OTLP carries {d:?}"),
        };
        assert!(time > 0, "{name}: no time");
        checked.insert(*name, kind.clone());
    }
    for (name, unit) in units {
        assert_eq!(pushed[name].unit, unit, "{name}");
    }
    assert!(
        checked.values().any(|k| k == "histogram"),
        "no histogram pushed: {checked:?}"
    );

    // `compression = "none"`: no Content-Encoding, the protobuf as is,
    // every family served (the newest push, made after that scrape).
    let plain = plain_rx
        .requests()
        .into_iter()
        .rev()
        .find_map(|r| {
            let d = ExportMetricsServiceRequest::decode(r.body.as_slice()).ok()?;
            format!("{d:?}").contains(uuid).then_some((r, d))
        })
        .unwrap_or_else(|| panic!("no uncompressed OTLP push; agent log:\n{}", agent.log()));
    assert!(plain.0.headers.get("content-encoding").is_none());
    assert_eq!(
        plain
            .0
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    let plain_names: BTreeSet<&str> = plain.1.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    for name in before.keys() {
        assert!(
            plain_names.contains(name.as_str()),
            "{name} served but not pushed uncompressed"
        );
    }

    // Attributes: the VM's series, renamed per the semantic conventions.
    let points = |name: &str| -> Vec<(BTreeMap<String, String>, f64, u64, u64)> {
        match pushed[name].data.as_ref().unwrap() {
            metric::Data::Sum(s) => &s.data_points,
            metric::Data::Gauge(g) => &g.data_points,
            d => panic!("{name}: {d:?}"),
        }
        .iter()
        .map(|p| {
            let v = match p.value {
                Some(
                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d),
                ) => d,
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                    i,
                )) => i as f64,
                None => f64::NAN,
            };
            (
                attrs(&p.attributes),
                v,
                p.start_time_unix_nano,
                p.time_unix_nano,
            )
        })
        .collect()
    };
    let ours = |name: &str| {
        points(name)
            .into_iter()
            .filter(|p| p.0.get("vm_id").map(String::as_str) == Some(uuid))
            .collect::<Vec<_>>()
    };
    let cpu = ours("vmscope_vm_cpu_seconds_total");
    let modes: BTreeSet<&str> = cpu.iter().map(|p| p.0["cpu.mode"].as_str()).collect();
    assert_eq!(modes, BTreeSet::from(["system", "user"]));
    assert!(
        cpu.iter()
            .all(|p| p.0["vm_name"] == spec.name && !p.0.contains_key("mode"))
    );
    // The VM's counters start when its process started.
    let start = ours("vmscope_vm_start_time_seconds")[0].1;
    for p in &cpu {
        let diff = (p.2 as f64 / 1e9 - start).abs();
        assert!(diff < 1e-3, "cpu start {} vs VM start {start}", p.2);
    }
    let rx_bytes = ours("vmscope_vm_network_receive_bytes_total");
    assert_eq!(rx_bytes.len(), 1);
    assert_eq!(rx_bytes[0].0["network.interface.name"], tap.name);
    let fs = points("vmscope_host_filesystem_size_bytes");
    assert!(
        fs.iter()
            .all(|p| p.0.contains_key("system.filesystem.mountpoint")
                && p.0.contains_key("system.device")
                && p.0.contains_key("system.filesystem.type")),
        "{fs:?}"
    );
    let alloc = ours("vmscope_vm_memory_allocated_bytes");
    assert_eq!(alloc[0].1, (32u64 << 20) as f64);
    // No Prometheus label that has a convention survives under its old name.
    for m in metrics {
        let kvs: Vec<&KeyValue> = match m.data.as_ref().unwrap() {
            metric::Data::Sum(s) => s.data_points.iter().flat_map(|p| &p.attributes).collect(),
            metric::Data::Gauge(g) => g.data_points.iter().flat_map(|p| &p.attributes).collect(),
            metric::Data::Histogram(h) => {
                h.data_points.iter().flat_map(|p| &p.attributes).collect()
            }
            _ => Vec::new(),
        };
        for kv in kvs {
            // `mode` is a CPU mode only on CPU families (the discovery
            // mode keeps its name).
            if kv.key == "mode" && !m.name.contains("_cpu_") {
                continue;
            }
            assert!(
                ![
                    "interface",
                    "device",
                    "mountpoint",
                    "fstype",
                    "mode",
                    "route",
                    "method",
                    "status",
                    "le"
                ]
                .contains(&kv.key.as_str()),
                "{}: attribute {}",
                m.name,
                kv.key
            );
        }
    }
}

fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metrics().value(name, labels).unwrap_or(0.0)
}

/// `/api/v1/vms`'s `seq`: one per tick.
fn seq(agent: &Agent) -> u64 {
    http::get_json(&agent.url("/api/v1/vms")).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_failing_receiver_is_retried_paced_or_dropped_by_the_rules_and_ticks_stay_on_time() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/api/v1/write");
    let config = format!(
        "{}[[push.remote_write]]\nname = \"flaky\"\nurl = \"{url}\"\nmax_queue = 3\n\
         max_backoff = \"4s\"\ntimeout = \"2s\"\n",
        fixture_paths()
    );
    let agent = Agent::start_with(1, &config);
    let d = [("destination", "flaky")];
    let err = |kind: &str| {
        metric(
            &agent,
            "vmscope_push_errors_total",
            &[("destination", "flaky"), ("kind", kind)],
        )
    };
    let sent = || {
        metric(
            &agent,
            "vmscope_push_samples_total",
            &[("destination", "flaky"), ("result", "sent")],
        )
    };
    let (seq0, t0) = (seq(&agent), Instant::now());
    let mut slowest_scrape = Duration::ZERO;
    let mut scrape = || {
        let s = Instant::now();
        let m = agent.metrics();
        slowest_scrape = slowest_scrape.max(s.elapsed());
        m
    };

    // 1. Down: nothing listens. Attempts fail as unreachable, are paced by
    // the backoff (1 s, 2 s, 4 s), and the queue of 3 overflows: the
    // oldest pushes are dropped and counted.
    let (dropped, _) = poll_until(Duration::from_secs(15), Duration::from_millis(300), || {
        let m = scrape();
        let dropped = m.value("vmscope_push_dropped_samples_total", &d)?;
        (dropped > 0.0).then_some(dropped)
    })
    .unwrap_or_else(|| panic!("no push dropped while down; log:\n{}", agent.log()));
    let unreachable = err("unreachable");
    assert!(unreachable >= 2.0, "unreachable attempts: {unreachable}");
    assert!(
        unreachable <= 6.0,
        "attempts not paced by the backoff: {unreachable}"
    );
    assert_eq!(sent(), 0.0);
    let queued = metric(&agent, "vmscope_push_queue_samples", &d);
    assert!(queued > 0.0, "nothing queued while down");
    eprintln!("push: down: {unreachable} attempts, {dropped} samples dropped, {queued} queued");

    // 2. 503: retried (several requests), nothing counted as sent.
    let rx = Receiver::start(port, "/api/v1/write", Answer::Status(503));
    poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        (rx.requests().len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("503 was not retried; log:\n{}", agent.log()));
    assert!(err("http_5xx") >= 2.0);
    assert_eq!(sent(), 0.0);

    // 3. 429 with Retry-After: 2 (the backoff is at its 4 s cap by now):
    // the next attempts come 2 s apart, as the receiver asked.
    rx.answer(Answer::TooMany {
        retry_after_secs: 2,
    });
    let (too_many, _) = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let r: Vec<Request> = rx
            .requests()
            .into_iter()
            .filter(|r| matches!(r.answer, Answer::TooMany { .. }))
            .collect();
        (r.len() >= 4).then_some(r)
    })
    .unwrap_or_else(|| panic!("429 was not retried; log:\n{}", agent.log()));
    let gaps: Vec<Duration> = too_many.windows(2).map(|w| w[1].at - w[0].at).collect();
    for g in &gaps {
        assert!(
            *g >= Duration::from_millis(1900) && *g <= Duration::from_millis(3500),
            "attempts after a 429 with Retry-After: 2 came {gaps:?} apart"
        );
    }
    assert!(err("http_429") >= 4.0);
    assert_eq!(sent(), 0.0);

    // 4. 400: rejected at once, never retried: each push is sent once.
    rx.answer(Answer::Status(400));
    let (rejected_reqs, _) =
        poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let r: Vec<Request> = rx
                .requests()
                .into_iter()
                .filter(|r| r.answer == Answer::Status(400))
                .collect();
            (r.len() >= 4).then_some(r)
        })
        .unwrap_or_else(|| panic!("no pushes answered 400; log:\n{}", agent.log()));
    let bodies: BTreeSet<&Vec<u8>> = rejected_reqs.iter().map(|r| &r.body).collect();
    assert_eq!(
        bodies.len(),
        rejected_reqs.len(),
        "a push refused with 400 was sent again"
    );
    let rejected = metric(
        &agent,
        "vmscope_push_samples_total",
        &[("destination", "flaky"), ("result", "rejected")],
    );
    assert!(rejected > 0.0);
    assert!(err("http_4xx") >= 4.0);
    // The refused and dropped pushes are the push task's failed runs.
    let task_errors = metric(
        &agent,
        "vmscope_task_errors_total",
        &[("task", "push_remote_write")],
    );
    assert!(task_errors > 0.0, "no failed push runs in vmscope_task_*");

    // 5. 200: pushes are sent, the queue drains, the success is stamped.
    rx.answer(Answer::Ok);
    let ok_since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let m = scrape();
        let sent = m.value(
            "vmscope_push_samples_total",
            &[("destination", "flaky"), ("result", "sent")],
        )?;
        let last = m.value("vmscope_push_last_success_timestamp_seconds", &d)?;
        // And the push task's health says so.
        let task = m.value(
            "vmscope_task_last_success_timestamp_seconds",
            &[("task", "push_remote_write")],
        )?;
        (sent > 0.0 && last >= ok_since - 1.0 && task >= ok_since - 1.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "pushes not sent after the receiver recovered; log:\n{}",
            agent.log()
        )
    });
    // An accepted body is a remote_write request: snappy'd protobuf.
    let ok = rx
        .requests()
        .into_iter()
        .rfind(|r| r.answer == Answer::Ok)
        .unwrap();
    assert_eq!(
        ok.headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("snappy")
    );
    assert_eq!(
        ok.headers
            .get("x-prometheus-remote-write-version")
            .and_then(|v| v.to_str().ok()),
        Some("0.1.0")
    );

    // Through all of it the collector ticked every second and /metrics
    // answered at once.
    let (ticks, secs) = (seq(&agent) - seq0, t0.elapsed().as_secs_f64());
    assert!(
        ticks as f64 >= secs - 3.0,
        "{ticks} ticks in {secs:.1} s while the receiver failed"
    );
    assert!(
        slowest_scrape < Duration::from_secs(1),
        "a scrape took {slowest_scrape:?}"
    );
    let log = agent.log();
    assert!(log.contains("push failing"), "{log}");
    assert!(log.contains("push rejected"), "{log}");
    assert!(!log.contains(&url), "the URL leaked into the log:\n{log}");
    eprintln!("push: {ticks} ticks in {secs:.1} s; slowest scrape {slowest_scrape:?}");
}

#[test]
fn bad_push_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[push.otlp]]\nurl = \"http://127.0.0.1:1/v1/metrics\"\nbearer_token_env = \"PUSH_TEST_TOKEN_UNSET\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmscope"))
        .args(["check-config", "-c"])
        .arg(&path)
        .env_remove("PUSH_TEST_TOKEN_UNSET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "push.otlp[0].bearer_token_env: environment variable PUSH_TEST_TOKEN_UNSET is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn shutdown_does_not_wait_for_a_hung_receiver() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&held);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let config = format!(
        "{}[[push.otlp]]\nurl = \"http://{addr}/v1/metrics\"\ntimeout = \"60s\"\n",
        fixture_paths()
    );
    let agent = Agent::start_with(1, &config);
    poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        (!held.lock().unwrap().is_empty()).then_some(())
    })
    .expect("the pusher connected");
    std::thread::sleep(Duration::from_millis(500));
    // The hung push holds the queue; scrapes are not affected.
    let t = Instant::now();
    let m = agent.metrics();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        m.value("vmscope_push_queue_samples", &[("destination", "otlp")])
            .unwrap()
            > 0.0
    );
    let t = Instant::now();
    let log = agent.stop(rustix::process::Signal::TERM);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopping took {:?} with a push hanging (timeout 60s):\n{log}",
        t.elapsed()
    );
    assert!(log.contains("stopped"), "{log}");
}
