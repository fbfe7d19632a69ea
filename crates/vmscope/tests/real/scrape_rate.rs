//! `rate()` as Prometheus computes it, against `/proc`'s own rate over the
//! same window: a real Prometheus scrapes a real vmscope watching a real
//! CPU-burning QEMU VM, with three scrape jobs (three scrape phases
//! relative to the collection, chosen by Prometheus from the job names),
//! every 5 s, while vmscope collects every 2 s. Without scrape-aligned
//! collection (`model::pace`) a scrape finds a sample 0 to 2 s old, the
//! age varies from scrape to scrape, and `rate(...[30s])` is off by up to
//! 2/30; with it, each job's samples are a constant age old and the rate
//! is the counter's true slope. Bound: 1%.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec, proc_cpu_seconds};
use crate::support::prom::Prometheus;
use crate::support::{http, lab_available, unique_name, unique_uuid};

const WINDOW_S: f64 = 30.0;

/// `/proc/PID/stat` CPU seconds sampled every 50 ms, with Unix times.
fn sampler(pid: i32, stop: Arc<Mutex<bool>>) -> std::thread::JoinHandle<Vec<(f64, f64)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !*stop.lock().unwrap() {
            if let Some(cpu) = proc_cpu_seconds(pid) {
                let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                out.push((t.as_secs_f64(), cpu));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    })
}

/// The counter at time `t`, interpolated between the samples around it.
fn at(samples: &[(f64, f64)], t: f64) -> f64 {
    let i = samples.partition_point(|(ts, _)| *ts <= t);
    assert!(i > 0 && i < samples.len(), "no /proc samples around {t}");
    let (t0, v0) = samples[i - 1];
    let (t1, v1) = samples[i];
    v0 + (v1 - v0) * (t - t0) / (t1 - t0)
}

#[test]
fn prometheus_rate_matches_proc_at_every_scrape_phase() {
    if !lab_available("scrape_rate") {
        return;
    }
    let roms = Roms::new();
    let vm = QemuVm::start(
        &roms,
        VmSpec {
            name: unique_name("rate"),
            uuid: unique_uuid(),
            vcpus: 1,
            memory_mib: 32,
            firmware: Firmware::Busy,
            process_name: None,
        },
        None,
    );
    let stop = Arc::new(Mutex::new(false));
    let samples = sampler(vm.pid, Arc::clone(&stop));
    let agent = Agent::start(2);
    let target = agent.url("").trim_start_matches("http://").to_owned();
    let every = "    scrape_interval: 5s\n    scrape_timeout: 2s\n";
    let jobs = ["phase-a", "phase-b", "phase-c"];
    let prom = Prometheus::start_jobs(
        &jobs
            .iter()
            .map(|j| (*j, target.as_str(), every))
            .collect::<Vec<_>>(),
    );
    // Enough scrapes for a full window after the first ones (Prometheus
    // starts scraping a few seconds after it is ready).
    let started = Instant::now();
    let id = vm.spec.uuid.clone();
    loop {
        let have = prom.query(&format!(
            "count_over_time(vmscope_vm_cpu_seconds_total{{vm_id=\"{id}\",mode=\"user\",job=\"phase-c\"}}[{}s])",
            WINDOW_S + 20.0
        ));
        let n = have
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        // Samples over the window and four scrapes before it: the pacer
        // learns a scraper's period from two scrapes and the ticks settle
        // on its grid by the next, so the window holds settled samples only.
        if n >= (WINDOW_S + 20.0) / 5.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not enough scrapes of {id} ({n}): {}\n{:?}",
            prom.targets(),
            agent.api_vms()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Evaluate a little in the past, so that /proc has samples after it.
    std::thread::sleep(Duration::from_secs(1));
    let eval = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 0.5;
    std::thread::sleep(Duration::from_millis(700));
    *stop.lock().unwrap() = true;
    let samples = samples.join().unwrap();
    let truth = (at(&samples, eval) - at(&samples, eval - WINDOW_S)) / WINDOW_S;
    assert!(
        truth > 0.2,
        "the VM burns too little CPU to measure: {truth}"
    );

    let mut report = Vec::new();
    for job in jobs {
        let expr = format!(
            "sum(rate(vmscope_vm_cpu_seconds_total{{vm_id=\"{id}\",job=\"{job}\"}}[{WINDOW_S}s]))"
        );
        let url = format!("{}/api/v1/query", prom.base);
        let resp = http::get_with_query(&url, &[("query", &expr), ("time", &format!("{eval:.3}"))])
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        let got: f64 = body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{expr}: {body}"));
        report.push((job, got, got / truth - 1.0));
    }
    eprintln!("rate() vs /proc over {WINDOW_S} s: truth {truth:.5} cores; {report:?}");
    for (job, got, err) in &report {
        assert!(
            err.abs() < 0.01,
            "{job}: rate() {got:.5} vs /proc {truth:.5}: {:+.2}% (all: {report:?})",
            err * 100.0
        );
    }
    drop(prom);
    drop(agent);
}
