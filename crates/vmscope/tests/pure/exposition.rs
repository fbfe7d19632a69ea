//! The /metrics output checked by the reference tools: `promtool check metrics`
//! on Prometheus text 0.0.4 (no parse error, no lint finding) and the Python
//! `prometheus_client` parsers on OpenMetrics and text, which must read every
//! label value back exactly as the snapshot had it.
//!
//! A tool that is missing skips its check with a message, unless `CI` is set
//! (then it fails: CI must run the real validators).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::ServiceExt;
use vmscope::api::{AppState, router};
use vmscope::export::{Format, encode, fixture};
use vmscope::model::counters::{CounterTotals, KindCounters, Quantities};
use vmscope::model::{
    CpuSeconds, Hypervisor, NetStats, Owner, Snapshot, Source, VcpuStats, VmState, VmStats,
};

const PARSER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/tools/parse_exposition.py"
);

/// Names that break naive encoders.
const NASTY: [&str; 7] = [
    "quote\"d",
    "back\\slash\\",
    "new\nline\n",
    "ünïcødé 日本 🚀",
    "tab\tcr\r end",
    "brace}{=,\" # HELP x",
    "",
];

fn nasty_vm(i: usize, name: &str) -> VmStats {
    VmStats {
        id: format!("nasty-{i}"),
        name: name.to_owned(),
        hypervisor: Hypervisor::Firecracker,
        source: Source::Process,
        pid: 4242 + i as u32,
        uuid: None,
        state: VmState::Crashed,
        start_time_seconds: 1_700_000_123.5,
        owner: Some(std::sync::Arc::new(Owner {
            user_id: Some("u\"1".into()),
            user_name: None,
            project_id: None,
            project_name: Some("proj\\ect\n".into()),
        })),
        owner_source: Some("file"),
        flavor: None,
        display_name: Some(format!("display {name}")),
        allocated_vcpus: None,
        allocated_memory_bytes: None,
        cpu: CpuSeconds {
            user: 1.0e-7,
            system: 123_456_789.125,
            guest: None,
        },
        vcpus: vec![VcpuStats {
            index: 0,
            tid: 9,
            cpu_seconds: 0.5,
            wait_seconds: None,
        }],
        memory_rss_bytes: u64::MAX,
        memory_virtual_bytes: 0,
        memory_utilization_ratio: Some(f64::NAN),
        network: vec![NetStats {
            interface: format!("tap \"{i}\""),
            rx_bytes: 1,
            ..NetStats::default()
        }],
        disk: None,
        devices: None,
        rates: None,
        collect_success: false,
        collect_age_seconds: f64::INFINITY,
        id_suffixed: false,
    }
}

fn snapshot() -> Snapshot {
    let mut snap = fixture::snapshot(30);
    for (i, name) in NASTY.iter().enumerate() {
        snap.vms.push(nasty_vm(i, name));
    }
    snap.vms.sort_by(|a, b| a.id.cmp(&b.id));
    snap.discovered = vec![(Source::Process, snap.vms.len())];
    // The usage ledger's counters: every VM (nasty names included), owners
    // with hostile keys, the overflow, and one VM gone from the snapshot.
    let q = |x: f64| Quantities {
        cpu_seconds: x,
        vcpu_allocated_seconds: 2.0 * x,
        memory_allocated_byte_seconds: 1e9 * x,
        net_rx_bytes: u64::MAX,
        net_tx_bytes: x as u64,
    };
    let mut vms: Vec<(String, Quantities)> = snap
        .vms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.id.clone(), q(i as f64 + 0.5)))
        .chain([("zz-gone".to_owned(), q(1.0))])
        .collect();
    vms.sort_by(|a, b| a.0.cmp(&b.0));
    let owners = NASTY
        .iter()
        .map(|n| (n.to_string(), q(3.0)))
        .chain([("___other__".to_owned(), q(4.0))])
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect::<Vec<_>>();
    snap.counters = Some(Arc::new(CounterTotals {
        users: KindCounters {
            owners: owners.clone(),
            other: Some(q(7.0)),
        },
        projects: KindCounters {
            owners,
            other: None,
        },
        vms,
    }));
    snap
}

async fn scrape(app: &axum::Router, accept: Option<&str>) -> String {
    let mut req = Request::get("/metrics");
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn app_with(snap: Snapshot) -> (axum::Router, watch::Sender<Arc<Snapshot>>) {
    let (tx, rx) = watch::channel(Arc::new(snap));
    (router(AppState::new(rx, Vec::new())), tx)
}

/// True when the tool runs; false (after saying so) when it is missing and
/// we are not under CI.
fn tool_available(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "{program} is required under CI but is not runnable");
        eprintln!("SKIPPED: {program} not found (set CI=true to make this a failure)");
    }
    ok
}

/// `promtool check metrics` over `text` succeeds (parse errors and lint
/// findings fail it); skipped where promtool is missing, outside CI.
pub(crate) fn promtool_passes(text: &str) {
    if !tool_available("promtool", &["--version"]) {
        return;
    }
    let (ok, stdout, stderr) = run_with_stdin("promtool", &["check", "metrics"], text);
    assert!(ok, "promtool: {stdout}{stderr}");
}

fn run_with_stdin(program: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Family -> samples as parsed by the Python reference parser.
fn python_parse(format: &str, body: &str) -> Option<serde_json::Value> {
    if !tool_available("python3", &["-c", "import prometheus_client"]) {
        return None;
    }
    let (ok, stdout, stderr) = run_with_stdin("python3", &[PARSER, format], body);
    assert!(
        ok,
        "{format} parser rejected the output: {stderr}\n--- body ---\n{body}"
    );
    Some(serde_json::from_str(&stdout).unwrap())
}

fn samples(parsed: &serde_json::Value) -> Vec<(String, BTreeMap<String, String>, String)> {
    let mut out = Vec::new();
    for f in parsed["families"].as_array().unwrap() {
        for s in f["samples"].as_array().unwrap() {
            let labels = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            out.push((
                s["name"].as_str().unwrap().to_owned(),
                labels,
                s["value"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Every nasty name comes back byte for byte, and no series repeats.
fn check_round_trip(parsed: &serde_json::Value) {
    let samples = samples(parsed);
    let mut seen = HashSet::new();
    for (name, labels, _) in &samples {
        assert!(
            seen.insert((name.clone(), labels.clone())),
            "duplicate series {name} {labels:?}"
        );
    }
    for (i, nasty) in NASTY.iter().enumerate() {
        let id = format!("nasty-{i}");
        let info = samples
            .iter()
            .find(|(n, l, _)| n == "vmscope_vm_info" && l.get("vm_id") == Some(&id))
            .unwrap_or_else(|| panic!("no vm_info for {id}"));
        // An empty label value is the same as no label to Prometheus.
        assert_eq!(info.1.get("vm_name").map_or("", String::as_str), *nasty);
        assert_eq!(info.1["display_name"], format!("display {nasty}"));
        assert_eq!(info.1["owner_user"], "u\"1");
        assert_eq!(info.1["owner_project"], "proj\\ect\n");
        let tap = samples
            .iter()
            .find(|(n, l, _)| {
                n == "vmscope_vm_network_receive_bytes_total" && l.get("vm_id") == Some(&id)
            })
            .unwrap();
        assert_eq!(tap.1["interface"], format!("tap \"{i}\""));
    }
    let rss = samples
        .iter()
        .find(|(n, l, _)| {
            n == "vmscope_vm_memory_rss_bytes" && l.get("vm_id").is_some_and(|v| v == "nasty-0")
        })
        .unwrap();
    assert_eq!(rss.2.parse::<f64>().unwrap(), u64::MAX as f64);
}

#[tokio::test]
async fn promtool_accepts_text_with_no_lint_findings() {
    let (app, _tx) = app_with(snapshot());
    // One request first so the HTTP histogram has series.
    scrape(&app, None).await;
    let body = scrape(&app, None).await;
    assert!(body.contains("vmscope_http_request_duration_seconds_bucket{route=\"/metrics\""));
    if !tool_available("promtool", &["--version"]) {
        return;
    }
    let (ok, stdout, stderr) = run_with_stdin("promtool", &["check", "metrics"], &body);
    assert!(
        ok && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool: {stdout}{stderr}"
    );
}

#[tokio::test]
async fn python_openmetrics_parser_reads_every_value_back() {
    let (app, _tx) = app_with(snapshot());
    scrape(&app, Some("application/openmetrics-text")).await;
    let body = scrape(&app, Some("application/openmetrics-text; version=1.0.0")).await;
    assert!(body.ends_with("# EOF\n"));
    let Some(parsed) = python_parse("openmetrics", &body) else {
        return;
    };
    check_round_trip(&parsed);
    let fams = parsed["families"].as_array().unwrap();
    let cpu = fams
        .iter()
        .find(|f| f["name"] == "vmscope_vm_cpu_seconds")
        .unwrap();
    assert_eq!(cpu["type"], "counter");
    assert_eq!(cpu["unit"], "seconds");
    let hist = fams
        .iter()
        .find(|f| f["name"] == "vmscope_http_request_duration_seconds")
        .unwrap();
    assert_eq!(hist["type"], "histogram");
}

#[tokio::test]
async fn python_text_parser_reads_every_value_back() {
    let (app, _tx) = app_with(snapshot());
    let body = scrape(&app, None).await;
    if let Some(parsed) = python_parse("text", &body) {
        check_round_trip(&parsed);
    }
}

#[test]
fn no_series_repeats_in_any_text_format() {
    let snap = snapshot();
    for format in [Format::Text, Format::OpenMetrics] {
        let body = encode(format, &[&snap]);
        let mut seen = HashSet::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            // No timestamps: the value is after the last space; label values
            // never hold a raw newline, so one line is one series.
            let (series, _value) = line.rsplit_once(' ').unwrap();
            assert!(seen.insert(series), "{format:?}: duplicate series {series}");
        }
        assert!(body.contains("vmscope_exposition_series_skipped{reason=\"duplicate\"} 0\n"));
        assert!(body.contains("vmscope_exposition_series_skipped{reason=\"invalid\"} 0\n"));
    }
}

#[tokio::test]
async fn a_vm_gone_from_the_snapshot_is_gone_from_the_output() {
    let snap = snapshot();
    let (app, tx) = app_with(snap.clone());
    for accept in [None, Some("application/openmetrics-text")] {
        assert!(scrape(&app, accept).await.contains("vm_id=\"vm-000007\""));
    }
    let mut next = snap;
    next.seq += 1;
    next.vms.retain(|v| v.id != "vm-000007");
    tx.send(Arc::new(next)).unwrap();
    for accept in [None, Some("application/openmetrics-text")] {
        let body = scrape(&app, accept).await;
        assert!(!body.contains("vm-000007"), "{accept:?}");
        assert!(body.contains("vm_id=\"vm-000008\""));
    }
    let json = {
        let resp = app
            .clone()
            .oneshot(Request::get("/metrics.json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    assert!(!String::from_utf8_lossy(&json).contains("vm-000007"));
}

#[test]
fn counters_from_a_broken_collector_never_reach_the_output() {
    let mut snap = fixture::snapshot(2);
    snap.vms[0].cpu.user = f64::NAN;
    snap.vms[1].cpu.system = -1.0;
    snap.interval = Duration::from_secs(1);
    let body = encode(Format::OpenMetrics, &[&snap]);
    assert!(!body.contains("mode=\"user\"} NaN"));
    assert!(body.contains("vmscope_exposition_series_skipped{reason=\"invalid\"} 2\n"));
    if let Some(parsed) = python_parse("openmetrics", &body) {
        assert!(!samples(&parsed).is_empty());
    }
}

#[test]
fn ledger_counters_cover_the_snapshots_vms_and_the_owners_and_nothing_without_a_ledger() {
    let snap = snapshot();
    let text = encode(Format::Text, &[&snap]);
    let (i, plain) = snap
        .vms
        .iter()
        .enumerate()
        .find(|(_, v)| v.id.starts_with("vm-"))
        .unwrap();
    assert!(
        text.contains(&format!(
            "vmscope_vm_ledger_cpu_seconds_total{{vm_id=\"{}\",vm_name=\"{}\"}} {}\n",
            plain.id,
            plain.name,
            i as f64 + 0.5
        )),
        "{text}"
    );
    let per_vm = |family: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .count()
    };
    for family in [
        "vmscope_vm_ledger_cpu_seconds_total",
        "vmscope_vm_ledger_vcpu_allocated_seconds_total",
        "vmscope_vm_ledger_memory_allocated_byte_seconds_total",
        "vmscope_vm_ledger_network_receive_bytes_total",
        "vmscope_vm_ledger_network_transmit_bytes_total",
    ] {
        assert_eq!(per_vm(family), snap.vms.len(), "{family}");
    }
    // A VM the ledger still holds but the snapshot no longer has: gone.
    assert!(!text.contains("zz-gone"));
    // The overflow, and a real owner whose key reads like it, apart.
    assert!(text.contains("\nvmscope_user_cpu_seconds_total{user=\"__other__\"} 7\n"));
    assert!(text.contains("\nvmscope_user_cpu_seconds_total{user=\"___other__\"} 4\n"));
    assert!(text.contains(&format!(
        "\nvmscope_user_network_receive_bytes_total{{user=\"__other__\"}} {}\n",
        u64::MAX
    )));
    assert!(!text.contains("vmscope_project_cpu_seconds_total{project=\"__other__\"}"));
    let om = encode(Format::OpenMetrics, &[&snap]);
    assert!(om.contains(
        "# TYPE vmscope_user_cpu_seconds counter\n# UNIT vmscope_user_cpu_seconds seconds\n"
    ));
    promtool_passes(&text);

    let plain = fixture::snapshot(3);
    let text = encode(Format::Text, &[&plain]);
    assert!(!text.contains("vmscope_vm_ledger_"));
    assert!(!text.contains("vmscope_user_cpu_seconds_total"));
}
