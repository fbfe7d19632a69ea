//! The binary as a user runs it: exit codes and messages of `check-config`,
//! `vms` over a fixture tree, and `serve` refusing bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
}

fn run(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_full_valid_file() {
    let (code, out, err) = run(bin()
        .arg("check-config")
        .arg(configs().join("valid_full.toml")));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok (listen 127.0.0.1:9999, interval 2s)"),
        "{out}"
    );
}

#[test]
fn check_config_accepts_old_collector_keys_and_names_the_new_ones() {
    let (code, out, err) = run(bin()
        .arg("check-config")
        .arg(configs().join("deprecated_keys.toml")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
    for (old, new) in [
        ("collectors.vcpu", "collectors.vm_vcpu"),
        ("collectors.disk", "collectors.vm_io"),
        ("collectors.filesystem", "collectors.host_filesystem"),
        ("interval_secs", "interval"),
        (
            "collectors.host_filesystem.timeout_secs",
            "collectors.host_filesystem.timeout",
        ),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("warning: ") && l.contains(old) && l.contains(new)),
            "{old} -> {new}: {err}"
        );
    }
    // The full valid file uses the new names only: no warnings.
    let (_, _, err) = run(bin()
        .arg("check-config")
        .arg(configs().join("valid_full.toml")));
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn check_config_names_what_is_wrong() {
    let cases = [
        ("unknown_key.toml", "collectors.vcpus"),
        ("unknown_key.toml", "unknown field"),
        ("bad_interval.toml", "interval: 0s is out of range"),
        ("bad_listen.toml", "listen:"),
        ("broken_toml.toml", "broken_toml.toml"),
        ("wrong_type.toml", "interval: invalid duration \"fast\""),
        ("does_not_exist.toml", "cannot read config file"),
        ("bad_watchdog.toml", "watchdog.rules.host_cpu.sustained"),
        (
            "bad_process_events.toml",
            "discovery.process_events: unknown variant `sometimes`, expected `auto` or `off`",
        ),
        (
            "usage_rule_without_ledger.toml",
            "watchdog.rules.project_cpu_quota.metric: owner_usage_cpu_seconds reads the usage ledger, which is disabled",
        ),
        (
            "usage_window_below_ledger_interval.toml",
            "watchdog.rules.project_cpu_quota.window: 1m is shorter than the ledger interval 5m",
        ),
    ];
    for (file, needle) in cases {
        let (code, out, err) = run(bin().arg("check-config").arg(configs().join(file)));
        assert_eq!(code, 2, "{file}: exit code; stdout {out} stderr {err}");
        assert!(err.starts_with("error: "), "{file}: {err}");
        assert!(
            err.contains(needle),
            "{file}: expected {needle:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{file}: {err}");
    }
}

#[test]
fn env_overrides_are_checked_too() {
    let (code, _, err) = run(bin()
        .args(["vms", "--window", "0.1"])
        .env("VMSCOPE_INTERVAL", "0s"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("interval: 0s") && err.contains("VMSCOPE_INTERVAL"),
        "{err}"
    );
    let (code, _, err) = run(bin()
        .args(["vms", "--window", "0.1"])
        .env("VMSCOPE_COLLECTORZ__DISK", "false"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("VMSCOPE_COLLECTORZ__DISK"), "{err}");
}

/// `[paths]` reading the recorded fixture host (five VMs).
fn fixture_paths() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host1");
    format!(
        "[paths]\nproc = {:?}\nrun = {:?}\nrootfs = {:?}\n",
        root.join("proc"),
        root.join("run"),
        root.join("rootfs")
    )
}

#[test]
fn vms_json_over_the_fixture_tree() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, fixture_paths()).unwrap();
    let (code, out, err) = run(bin()
        .args(["vms", "-o", "json", "--window", "0.1", "-c"])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let vms: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names.contains(&"instance-00000007"));
    let (code, table, err) = run(bin().args(["vms", "--window", "0.1", "-c"]).arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("RSS/ALLOC"),
        "{table}"
    );
    assert!(table.contains("alice/demo"), "owner column: {table}");
    // Control characters from a VM name never reach the terminal raw.
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
}

#[test]
fn vms_takes_owners_from_a_mapping_file_below_nova() {
    let dir = tempfile::tempdir().unwrap();
    let paths = fixture_paths();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, &paths).unwrap();
    let vms = |cfg: &Path| -> Vec<serde_json::Value> {
        let (code, out, err) = run(bin()
            .args(["vms", "-o", "json", "--window", "0.2", "-c"])
            .arg(cfg));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let before = vms(&cfg);
    let unowned: Vec<&str> = before
        .iter()
        .filter(|v| v["owner"].is_null())
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let nova = before
        .iter()
        .find(|v| v["owner"]["user_name"].is_string())
        .expect("the fixture has a Nova-owned VM");
    let nova_name = nova["name"].as_str().unwrap();
    let nova_user = nova["owner"]["user_name"].as_str().unwrap();
    assert!(!unowned.is_empty());
    // A CSV mapping: one unowned VM by name, and the Nova VM, whose Nova
    // fields win (the file only fills what Nova left empty).
    let mapping = dir.path().join("owners.csv");
    std::fs::write(
        &mapping,
        format!(
            "name,user_name,project_name\n\"{}\",zed,proj-z\n{nova_name},mallory,\n",
            unowned[0].replace('"', "\"\"")
        ),
    )
    .unwrap();
    std::fs::write(&cfg, format!("{paths}[owners.file]\npath = {mapping:?}\n")).unwrap();
    let after = vms(&cfg);
    let by_name = |n: &str| after.iter().find(|v| v["name"] == n).unwrap().clone();
    let mapped = by_name(unowned[0]);
    assert_eq!(mapped["owner"]["user_name"], "zed", "{mapped}");
    assert_eq!(mapped["owner"]["project_name"], "proj-z", "{mapped}");
    assert_eq!(by_name(nova_name)["owner"]["user_name"], nova_user);
    // A mapping file with an extension vmscope cannot read is a config error
    // naming the key.
    std::fs::write(
        &cfg,
        format!("{paths}[owners.file]\npath = \"/x/owners.txt\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(bin().arg("check-config").arg(&cfg));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("owners.file.format"), "{err}");
}

#[test]
fn serve_refuses_a_port_in_use() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(bin()
        .args(["serve", "--interval", "1", "--listen"])
        .arg(addr.to_string())
        .env("VMSCOPE_STORE__PATH", dir.path().join("s.db")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn check_config_checks_the_environment_serve_would_use() {
    let file = configs().join("valid_full.toml");
    // A bad variable fails the check, naming the variable.
    let (code, _, err) = run(bin()
        .arg("check-config")
        .arg(&file)
        .env("VMSCOPE_INTERVAL_SECS", "0"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("interval: 0s") && err.contains("VMSCOPE_INTERVAL_SECS"),
        "{err}"
    );
    // A bad VMSCOPE_LOG is refused, not ignored.
    let (code, _, err) = run(bin()
        .arg("check-config")
        .arg(&file)
        .env("VMSCOPE_LOG", "[[["));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("VMSCOPE_LOG"), "{err}");
    // Good variables are applied and listed; -c FILE works like FILE.
    let (code, out, err) = run(bin()
        .args(["check-config", "-c"])
        .arg(&file)
        .env("VMSCOPE_LISTEN", "127.0.0.1:1234")
        .env("VMSCOPE_LOG", "debug"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok (listen 127.0.0.1:1234, interval 2s)"),
        "{out}"
    );
    assert!(
        out.contains("listen from environment variable VMSCOPE_LISTEN"),
        "{out}"
    );
    assert!(
        out.contains("log.level from environment variable VMSCOPE_LOG"),
        "{out}"
    );
}

#[test]
fn serve_refuses_a_bad_vmscope_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("VMSCOPE_STORE__PATH", dir.path().join("s.db"))
        .env("VMSCOPE_LOG", "vmscope=loud")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must refuse at once; one that starts serving is killed and fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: log.level:"), "{err}");
    assert!(err.contains("VMSCOPE_LOG"), "{err}");
}

#[test]
fn listen_names_that_host_names_are_not_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "listen = \"localhost:9847\"\n").unwrap();
    let (code, _, err) = run(bin().arg("check-config").arg(&cfg));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("host names are not accepted"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = run(bin().args(["serve", "--listen", "localhost:9847"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("host names are not accepted"), "{err}");
}

#[test]
fn the_shipped_example_config_passes_check_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vmscope.example.toml");
    let (code, out, err) = run(bin().arg("check-config").arg(&example));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok (listen 127.0.0.1:9847, interval 5s)"),
        "{out}"
    );
    // Current key names only: the example must not teach deprecated ones.
    assert!(!err.contains("warning"), "{err}");
    // Every section is present, so the example documents every setting.
    let text = std::fs::read_to_string(&example).unwrap();
    for section in [
        "[paths]",
        "[discovery]",
        "[collectors]",
        "[collectors.host_filesystem]",
        "[log]",
        "[http]",
        "[owners]",
        "[watchdog]",
        "[watchdog.rules.",
        "[watchdog.sinks.",
        "[[push.remote_write]]",
        "[[push.otlp]]",
    ] {
        assert!(text.contains(section), "{section} missing from the example");
    }
}

#[test]
fn check_config_names_the_redis_and_http_owner_keys_and_never_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[owners.redis]\nurl = \"rediss://:pw-4f9a2c@db:6380/0\"\n",
            "owners.redis.url: TLS (rediss://) is not supported",
            "pw-4f9a2c",
        ),
        (
            "[owners.redis]\nurl = \"redis://:pw-4f9a2c@db:6380/0\"\nmax_keys = 0\n",
            "owners.redis.max_keys",
            "pw-4f9a2c",
        ),
        (
            "[owners.redis]\nurl_env = \"VMSCOPE_TEST_NO_SUCH_REDIS_URL\"\n",
            "owners.redis.url_env: the environment variable VMSCOPE_TEST_NO_SUCH_REDIS_URL is not set",
            "",
        ),
        (
            "[owners.http]\nurl = \"ftp://cp/x?token=tk-88e1d0\"\nvm_id = \"/id\"\nuser_id = \"/u\"\n",
            "owners.http.url: not an http:// or https:// URL",
            "tk-88e1d0",
        ),
        (
            "[owners.http]\nurl = \"https://cp/x?token=tk-88e1d0\"\nvm_id = \"id\"\nuser_id = \"/u\"\n",
            "owners.http.vm_id: \"id\" is not a JSON pointer",
            "tk-88e1d0",
        ),
        (
            "[owners.http]\nurl = \"https://cp/x\"\nuser_id = \"/u\"\n",
            "at least one of vm_id, vm_name, pid",
            "",
        ),
    ];
    for (i, (toml, needle, secret)) in cases.into_iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let (code, out, err) = run(bin().arg("check-config").arg(&cfg));
        assert_eq!(code, 2, "{toml}: stdout {out} stderr {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{needle:?} in {err:?}"
        );
        assert!(
            secret.is_empty() || !err.contains(secret),
            "secret leaked: {err}"
        );
    }
}

#[test]
fn owners_sums_the_vms_of_each_owner() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("owners.csv");
    std::fs::write(
        &mapping,
        "name,user_id,user_name\nalpha,u-zed,zed\nweb1,u-zed,\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("{}[owners.file]\npath = {mapping:?}\n", fixture_paths()),
    )
    .unwrap();
    let (code, out, err) = run(bin()
        .args([
            "owners", "-o", "json", "--kind", "user", "--window", "0.2", "-c",
        ])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let owners: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let (code, vms, err) = run(bin()
        .args(["vms", "-o", "json", "--window", "0.2", "-c"])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let vms: Vec<serde_json::Value> = serde_json::from_str(&vms).unwrap();
    let zed = owners.iter().find(|o| o["key"] == "u-zed").unwrap();
    assert_eq!(zed["kind"], "user");
    assert_eq!(zed["name"], "zed");
    assert_eq!(zed["vms"], 2);
    // Allocations do not move between the two runs.
    let vcpus: u64 = vms
        .iter()
        .filter(|v| v["name"] == "alpha" || v["name"] == "web1")
        .map(|v| v["allocated_vcpus"].as_u64().unwrap())
        .sum();
    assert_eq!(zed["allocated_vcpus"], vcpus);
    assert!(owners.iter().all(|o| o["kind"] == "user"));
    assert!(owners.iter().any(|o| o["name"] == "alice"), "{out}");

    let (code, table, err) = run(bin().args(["owners", "--window", "0.1", "-c"]).arg(&cfg));
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("KIND"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("user ") && l.contains("u-zed") && l.contains(" 2/2 ")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("project ")), "{table}");
}

#[test]
fn serve_refuses_a_log_file_it_cannot_open_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    for (path, cause) in [
        (
            dir.path().join("missing/vmscope.log"),
            "No such file or directory",
        ),
        (not_a_dir.join("vmscope.log"), "Not a directory"),
    ] {
        let (code, _, err) = run(bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--log.file"])
            .arg(&path)
            .env("VMSCOPE_STORE__PATH", dir.path().join("s.db")));
        assert_eq!(code, 2, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: log.file: cannot open {}: {cause}",
                path.display()
            )),
            "{err}"
        );
    }
    // Sizes: a bad unit is a usage error naming the flag; too small names the key.
    let (code, _, err) = run(bin().args(["serve", "--log.max-size", "3XB"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--log.max-size"), "{err}");
    let (code, _, err) = run(bin().args(["serve", "--log.max-size", "10"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: log.max_size:"), "{err}");
}
