//! Owner sources through the real binary: a mapping file the platform
//! rewrites while `vmscope serve` runs over the fixture host. The owner
//! shows on `vmscope_vm_info`, the source's health on
//! `vmscope_owner_source_*`, and a half-written file never replaces the
//! last good rows.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::metrics::sample;
use crate::support::{fixture_paths, free_port, http, poll_until};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_mapping_file_rewritten_while_running_half_written_then_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("owners.csv");
    std::fs::write(
        &mapping,
        "name,user_name,project_name\nalpha,zed,proj-z\nweb1,yan,\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[owners.file]\npath = {mapping:?}\ninterval = \"200ms\"\n",
            fixture_paths()
        ),
    )
    .unwrap();
    let port = free_port();
    let _serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_vmscope"))
            .args(["serve", "--interval", "0.2", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-c")
            .arg(&cfg)
            .env("VMSCOPE_STORE__PATH", dir.path().join("state.db"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape_until = |what: &str, ok: &dyn Fn(&str) -> bool| -> String {
        poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
            http::get(&url)
                .ok()
                .filter(|r| r.status == 200 && ok(&r.body))
                .map(|r| r.body)
        })
        .unwrap_or_else(|| panic!("{what}: not seen within 15 s"))
        .0
    };
    let up = r#"vmscope_owner_source_up{source="file"}"#;
    let rows = r#"vmscope_owner_source_rows{source="file"}"#;
    let zed = r#"vm_name="alpha",hypervisor="qemu",source="process",uuid="6f1b3c2a-0000-4000-8000-000000000001",pid="1001",owner_user="zed",owner_project="proj-z""#;
    let text = scrape_until("the mapping's owners", &|t| t.contains(zed));
    assert_eq!(sample(&text, up), Some(1.0), "{text}");
    assert_eq!(sample(&text, rows), Some(2.0));
    assert!(
        text.contains(r#"vm_name="web1",hypervisor="cloud_hypervisor",source="process",pid="1004",owner_user="yan",owner_source="file",user="yan"}"#),
        "{text}"
    );
    // Nova's owner is untouched by a file that says nothing about it.
    assert!(text.contains(r#"owner_user="alice",owner_project="demo""#));
    assert!(
        sample(
            &text,
            r#"vmscope_owner_source_last_success_timestamp_seconds{source="file"}"#
        )
        .is_some()
    );

    // The platform is half-way through rewriting the file.
    std::fs::write(&mapping, "name,user_name,project_name\nalpha,\"bo").unwrap();
    let text = scrape_until("the failed fetch", &|t| sample(t, up) == Some(0.0));
    assert!(
        sample(
            &text,
            r#"vmscope_owner_source_errors_total{source="file",kind="parse"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // The last good rows are still in use.
    assert_eq!(sample(&text, rows), Some(2.0));
    assert!(text.contains(zed), "{text}");

    // Finished: the new owner is taken and the source is up again.
    std::fs::write(&mapping, "name,user_name,project_name\nalpha,bob,proj-b\n").unwrap();
    let text = scrape_until("the new owner", &|t| {
        t.contains(r#"pid="1001",owner_user="bob",owner_project="proj-b""#)
    });
    assert_eq!(sample(&text, up), Some(1.0));
    assert_eq!(sample(&text, rows), Some(1.0));
}
