//! The binary under abuse: every command into a closed pipe and into
//! `/dev/full`, and a real QEMU VM whose `-name` holds a newline, terminal
//! escapes and 100 000 characters, checked in the text log, the JSON log,
//! the `vms` table and `/metrics`.

#[allow(dead_code)]
use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::lab::{Firmware, Roms};
use support::{QEMU, free_port, http, lab_available, poll_until, unique_uuid};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmscope"));
    // The caller's environment must not leak config into these tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("VMSCOPE_") {
            c.env_remove(k);
        }
    }
    c
}

/// A config reading the recorded fixture host (five VMs), so `vms` has
/// rows to write and runs the same everywhere.
fn fixture_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("c.toml");
    // The fixture tree's Cloud Hypervisor names an API socket that does not
    // exist: its (correct) warning is not what this test is about.
    let text = format!(
        "{}\n[collectors.vm_devices]\nenabled = false\n",
        support::fixture_paths()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Every command that writes to stdout, each with what it writes.
fn commands(cfg: &Path) -> Vec<Vec<String>> {
    let c = cfg.display().to_string();
    [
        vec!["vms", "--window", "0.05", "-c", &c],
        vec!["vms", "-o", "json", "--window", "0.05", "-c", &c],
        vec!["check-config", &c],
        vec!["check-config"],
        vec!["--help"],
        vec!["--version"],
        vec!["vms", "--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
    ]
    .into_iter()
    .map(|a| a.into_iter().map(str::to_owned).collect())
    .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    for args in commands(&cfg) {
        // The read end is closed before the command starts, so its first
        // write fails with EPIPE whatever the timing.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = bin()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: stderr {err:?}");
        assert!(!err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn a_full_device_is_one_error_line_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    for args in commands(&cfg) {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = bin()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(1), "{args:?}: stderr {err:?}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err:?}");
        assert!(
            errors[0].contains("stdout") && errors[0].contains("No space left on device"),
            "{args:?}: {err:?}"
        );
    }
}

/// A QEMU VM named by `name`, daemonized, killed on drop.
struct NamedVm {
    pid: i32,
}

impl NamedVm {
    fn start(roms: &Roms, name: &str, uuid: &str) -> NamedVm {
        let pidfile = roms.dir().join(format!("{uuid}.pid"));
        let accel = if support::lab::kvm_usable() {
            "kvm"
        } else {
            "tcg"
        };
        let out = Command::new(QEMU)
            .args(["-accel", accel, "-machine", "pc", "-m", "32"])
            .args(["-display", "none", "-nodefaults", "-no-user-config"])
            .args(["-monitor", "none", "-bios"])
            .arg(roms.path(Firmware::Idle))
            .arg("-name")
            .arg(format!("guest={name}"))
            .args(["-uuid", uuid, "-pidfile"])
            .arg(&pidfile)
            .arg("-daemonize")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu: {}", text(&out.stderr));
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        NamedVm { pid }
    }
}

impl Drop for NamedVm {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// What a hostile guest owner could put in `-name`: a forged log line, a
/// terminal escape, a bell, and 100 000 more characters.
fn hostile_name(tag: &str) -> String {
    format!(
        "{tag}\nINFO vmscope: forged line\u{1b}[31m\u{7}{}",
        "x".repeat(100_000)
    )
}

fn run(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.stdin(Stdio::null()).output().unwrap();
    (status.code().unwrap_or(-1), text(&stdout), text(&stderr))
}

#[test]
fn a_hostile_vm_name_is_escaped_in_logs_and_capped_everywhere() {
    if !lab_available("a_hostile_vm_name_is_escaped_in_logs_and_capped_everywhere") {
        return;
    }
    let roms = Roms::new();
    let uuid = unique_uuid();
    let tag = format!("evil{}", std::process::id());
    let _vm = NamedVm::start(&roms, &hostile_name(&tag), &uuid);

    // Text log at debug: the name is logged when the VM is first followed.
    let (code, table, log) = run(bin()
        .args(["vms", "--window", "0.1"])
        .env("VMSCOPE_LOG", "vmscope=debug"));
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains(&format!(
            "{tag}\\nINFO vmscope: forged line\\u{{1b}}[31m\\u{{7}}xxx"
        )),
        "escaped name missing from the log:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("INFO vmscope: forged line")),
        "a forged log line"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "raw control characters in the log"
    );
    // Capped before it is logged: no line carries the 100 000 characters.
    assert!(log.lines().all(|l| l.len() < 2000), "an overlong log line");

    // The table: our row is there, no wider than its capped cells.
    let row = table
        .lines()
        .find(|l| l.contains(&uuid))
        .unwrap_or_else(|| panic!("no row for {uuid}:\n{table}"));
    assert!(row.starts_with(&format!("{tag}?INFO")), "{row}");
    assert!(row.contains('…'), "{row}");
    assert!(table.lines().all(|l| l.chars().count() < 250), "{table}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );

    // JSON: the name capped at 256 bytes, control characters JSON-escaped.
    let (code, json, log) = run(bin()
        .args(["vms", "-o", "json", "--window", "0.1"])
        .env("VMSCOPE_LOG", "vmscope=debug")
        .env("VMSCOPE_LOG__FORMAT", "json"));
    assert_eq!(code, 0, "{log}");
    let vms: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ours = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == uuid.as_str())
        .unwrap_or_else(|| panic!("{uuid} not in {json}"));
    let name = ours["name"].as_str().unwrap();
    assert_eq!(name.len(), 256, "{name:?}");
    assert!(name.starts_with(&format!("{tag}\nINFO")), "{name:?}");
    // JSON logs: one object per line, the name in it intact.
    let mut seen = false;
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
        seen |= event["fields"]["vm_name"].as_str() == Some(name);
    }
    assert!(seen, "no JSON log event names the VM:\n{log}");

    // /metrics: every line bounded, the cut counted.
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = Serve(
        bin()
            .args(["serve", "--interval", "1", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("VMSCOPE_STORE__PATH", state.path().join("s.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (body, _) = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let r = http::get(&url).ok()?;
        r.body.contains(&uuid).then_some(r.body)
    })
    .unwrap_or_else(|| {
        let status = agent.0.try_wait();
        panic!("{uuid} not in /metrics within 20 s (agent: {status:?})")
    });
    let longest = body.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a /metrics line of {longest} bytes");
    let counter = body
        .lines()
        .find_map(|l| l.strip_prefix("vmscope_label_values_truncated_total "))
        .expect("vmscope_label_values_truncated_total in /metrics");
    assert!(counter.trim().parse::<f64>().unwrap() >= 1.0, "{counter}");
    let _ = agent.0.kill();
}

/// A `vmscope serve`, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
