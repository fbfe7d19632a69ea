//! `vmscope top --batch` as an operator's script runs it, against real
//! QEMU VMs (one spinning `jmp $`, one halted): through a real agent's API
//! with a bearer token from the web config (`--url ... --token-file`, and
//! `--token`), and measuring locally without `--url`. The busy VM shows
//! near one core (100% of one host core), the idle one near none; a wrong
//! token and a missing one are clear errors with status 1. Runs alone
//! (`real-vms` group): the busy VM needs its core.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, Tap, VmSpec, proc_cpu_seconds};
use crate::support::{lab_available, unique_name, unique_uuid};

fn proc_cpu_seconds_of(pid: i32) -> f64 {
    proc_cpu_seconds(pid).expect("the busy QEMU's /proc/PID/stat")
}

const TOKEN: &str = "vms_real_test_top_token_0123456789abcdef";

fn spec(role: &str, vcpus: u32, memory_mib: u64, firmware: Firmware) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus,
        memory_mib,
        firmware,
        process_name: None,
    }
}

fn top(args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmscope"));
    for (k, _) in std::env::vars() {
        if k.starts_with("VMSCOPE_") {
            c.env_remove(k);
        }
    }
    let o = c.arg("top").args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// CPU% per VM name from CSV output (the last line of each VM wins).
fn csv_cpu(out: &str, name: &str) -> Option<f64> {
    let mut lines = out.lines();
    let head: Vec<&str> = lines.next()?.split(',').collect();
    let (n, c) = (
        head.iter().position(|h| *h == "name")?,
        head.iter().position(|h| *h == "cpu_percent")?,
    );
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(n) == Some(&name)).then(|| f.get(c)?.parse::<f64>().ok())?
        })
        .next_back()
}

/// CPU% per VM name from JSON lines.
fn json_cpu(out: &str, name: &str) -> Option<f64> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["name"] == name)
        .filter_map(|v| v["cpu_percent"].as_f64())
        .next_back()
}

/// Runs `top` until both VMs are in its output with a rate (the agent
/// needs a tick or two to find them), at most 30 s.
fn until_both(args: &[&str], busy: &str, idle: &str, cpu: fn(&str, &str) -> Option<f64>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = top(args);
        assert_eq!(code, 0, "top {args:?} failed: {err}");
        if cpu(&out, busy).is_some() && cpu(&out, idle).is_some() {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "top {args:?} never showed both VMs:\n{out}\n{err}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The busy VM's share as top says and as the kernel says over the same
/// run: when the host does not give the VM its core (other load on two
/// cores), the check is against what the kernel saw.
fn assert_busy(top_pct: f64, kernel_pct: f64, what: &str) {
    eprintln!("top: {what}: busy VM {top_pct:.1}% (kernel over the run: {kernel_pct:.1}%)");
    assert!(
        (top_pct - kernel_pct).abs() <= 20.0,
        "{what}: top says {top_pct:.1}%, the kernel {kernel_pct:.1}%"
    );
    // With its core to itself the VM is near 100%; on a loaded host (CI
    // runs the real tests side by side on two cores: 64% seen) the
    // agreement with the kernel above is the check.
    if kernel_pct >= 70.0 {
        assert!((70.0..=130.0).contains(&top_pct), "{what}: {top_pct:.1}%");
    }
}

#[test]
fn top_batch_shows_real_vms_through_the_api_and_locally() {
    if !lab_available("top") {
        return;
    }
    let roms = Roms::new();
    let tap = Tap::new();
    let busy = QemuVm::start(&roms, spec("topbusy", 1, 32, Firmware::Busy), None);
    let idle = QemuVm::start(&roms, spec("topidle", 2, 48, Firmware::Idle), Some(&tap));
    let (b, i) = (busy.spec.name.clone(), idle.spec.name.clone());

    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "vmscope:\n  tokens:\n    - {{name: top, sha256: {}, scope: admin}}\n",
            vmscope::access::token::sha256_hex(TOKEN)
        ),
    )
    .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let agent = Agent::start_with(1, &format!("[http]\nweb_config_file = {web:?}\n"));
    let url = agent.base.clone();
    let tf = token_file.to_str().unwrap();

    // Through the API, CSV, the token from a file.
    let k0 = proc_cpu_seconds_of(busy.pid);
    let t0 = Instant::now();
    let out = until_both(
        &[
            "--batch",
            "-n",
            "3",
            "--output",
            "csv",
            "--url",
            &url,
            "--token-file",
            tf,
        ],
        &b,
        &i,
        csv_cpu,
    );
    let kernel = (proc_cpu_seconds_of(busy.pid) - k0) / t0.elapsed().as_secs_f64() * 100.0;
    let head = out.lines().next().unwrap();
    assert!(
        head.starts_with("time,vm_id,name,owner,state,vcpus,cpu_percent,"),
        "{out}"
    );
    let rows: Vec<&str> = out.lines().skip(1).filter(|l| l.contains(&b)).collect();
    assert_eq!(rows.len(), 3, "one line per refresh:\n{out}");
    assert!(
        rows[0].contains(&format!(",{},{b},", busy.spec.uuid)),
        "{out}"
    );
    assert!(rows[0].contains(",running,1,"), "{out}");
    assert_busy(csv_cpu(&out, &b).unwrap(), kernel, "--url csv");
    assert!(csv_cpu(&out, &i).unwrap() < 10.0, "idle VM:\n{out}");

    // JSON lines, the token as a flag.
    let k0 = proc_cpu_seconds_of(busy.pid);
    let t0 = Instant::now();
    let out = until_both(
        &[
            "--batch", "-n", "3", "--output", "json", "--url", &url, "--token", TOKEN,
        ],
        &b,
        &i,
        json_cpu,
    );
    let kernel = (proc_cpu_seconds_of(busy.pid) - k0) / t0.elapsed().as_secs_f64() * 100.0;
    assert_busy(json_cpu(&out, &b).unwrap(), kernel, "--url json");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(first["vm_id"].is_string() && first["memory_rss_bytes"].as_u64() > Some(0));

    // A wrong token, no token: clear errors, status 1, no secret echoed.
    let (code, out, err) = top(&[
        "--batch",
        "-n",
        "1",
        "--url",
        &url,
        "--token",
        "vms_wrong_token_000000000000",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("refused the token (401 Unauthorized)"),
        "{err}"
    );
    assert!(!err.contains("vms_wrong"), "{err}");
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = top(&["--batch", "-n", "1", "--url", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("wants a token (401 Unauthorized)"), "{err}");
    drop(agent);
    // The agent gone: unreachable, status 1.
    let (code, _, err) = top(&["--batch", "-n", "1", "--url", &url, "--token", TOKEN]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach the agent at {url}")),
        "{err}"
    );

    // Locally, no agent: the same VMs, measured here.
    let k0 = proc_cpu_seconds_of(busy.pid);
    let t0 = Instant::now();
    let out = until_both(&["--batch", "-n", "2", "-d", "1.5"], &b, &i, csv_cpu);
    let kernel = (proc_cpu_seconds_of(busy.pid) - k0) / t0.elapsed().as_secs_f64() * 100.0;
    assert_busy(csv_cpu(&out, &b).unwrap(), kernel, "local csv");
    assert!(csv_cpu(&out, &i).unwrap() < 10.0, "idle VM:\n{out}");
    drop((busy, idle));
}
