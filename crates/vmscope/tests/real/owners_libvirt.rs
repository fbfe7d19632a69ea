//! Owners from libvirt metadata and the precedence between sources, with
//! real VMs and the real binary:
//!
//! - a libvirtd domain carrying a custom platform's `<acme:owner>` element
//!   (and a decoy in another namespace) is attributed by `[owners.libvirt]`:
//!   the owner and `owner_source="libvirt"` on `vmscope_vm_info`,
//!   `/api/v1/vms` and `vmscope vms` (table and JSON);
//! - a bare QEMU VM named `u-alice--p-lab--...` that a mapping file gives to
//!   another user: by default the file wins the user and the name pattern
//!   fills the project name the file left empty; `[owners] order =
//!   ["cmdline", "file"]` flips the user, and then the file fills the
//!   project id the pattern cannot give.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, Tap, VmSpec};
use crate::support::metrics::Sample;
use crate::support::{self, lab_available, poll_until, unique_name, unique_uuid};

const INTERVAL_SECS: u64 = 1;
const APPEAR: Duration = Duration::from_secs(30);
const ACME: &str = "https://acme.example/ns/vm/1";

/// `/api/v1/vms`' object for `uuid`, once `ok` holds for it.
fn api_vm_until(agent: &Agent, uuid: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll_until(APPEAR, Duration::from_millis(200), || {
        agent.api_vms_with_id(uuid).into_iter().find(|v| ok(v))
    })
    .map(|(v, _)| v)
    .unwrap_or_else(|| {
        panic!(
            "{what}: not seen within {APPEAR:?}; the VM: {:?}\nlog:\n{}",
            agent.api_vms_with_id(uuid),
            agent.log()
        )
    })
}

/// The VM's one `vmscope_vm_info` series.
fn vm_info(agent: &Agent, uuid: &str) -> Sample {
    let e = agent.metrics();
    let info = e.all("vmscope_vm_info", &[("vm_id", uuid)]);
    assert_eq!(info.len(), 1, "vmscope_vm_info for {uuid}: {info:?}");
    info[0].clone()
}

/// `vmscope vms` (one-shot, no agent) with `config`, in `format`.
fn vmscope_vms(config: &str, json: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vmscope.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscope"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VMSCOPE_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["vms", "--window", "0.2", "-c"]).arg(&path);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().expect("run vmscope vms");
    assert!(
        out.status.success(),
        "vmscope vms: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_custom_platforms_metadata_attributes_a_libvirt_domain() {
    if !lab_available("owners_libvirt") {
        return;
    }
    if !support::libvirt::installed() {
        assert!(
            !support::in_ci(),
            "libvirt is not installed under CI=true (scripts/install-deps.sh)"
        );
        eprintln!("owners_libvirt: skipped: libvirtd not installed");
        return;
    }
    support::libvirt::ensure_daemons().expect("libvirtd up");
    let roms = Roms::new();
    let tap = Tap::new();
    let name = unique_name("acme");
    let uuid = unique_uuid();
    let user_id = unique_uuid();
    // The platform's element, with another prefix than the config's
    // example and a decoy owner in a namespace that is not configured.
    let metadata = format!(
        r#"<p:owner xmlns:p="{ACME}">
      <p:user id="{user_id}">carol</p:user>
      <p:project id="p-9">ml-lab</p:project>
    </p:owner>
    <other:owner xmlns:other="https://other.example/">
      <other:user id="u-0">mallory</other:user>
    </other:owner>"#
    );
    let _dom = support::libvirt::Domain::start_with_metadata(&roms, &name, &uuid, &tap, &metadata);
    let config = format!(
        r#"[owners.libvirt]
namespace = "{ACME}"
user_id = "owner/user/@id"
user_name = "owner/user"
project_id = "owner/project/@id"
project_name = "owner/project"
"#
    );
    let agent = Agent::start_with(INTERVAL_SECS, &config);

    let vm = api_vm_until(&agent, &uuid, "the domain's owner", |v| {
        v["owner_source"] == "libvirt"
    });
    assert_eq!(vm["source"], "libvirt", "{vm}");
    assert_eq!(
        vm["owner"],
        json!({
            "user_id": user_id,
            "user_name": "carol",
            "project_id": "p-9",
            "project_name": "ml-lab",
        }),
        "{vm}"
    );
    let info = vm_info(&agent, &uuid);
    let want = [
        ("owner_user", "carol"),
        ("owner_project", "ml-lab"),
        ("owner_source", "libvirt"),
    ];
    assert!(info.has_labels(&want), "want {want:?} in {info:?}");

    // The one-shot CLI resolves the same way: JSON carries owner_source,
    // the table's OWNER cell names the source.
    let vms: Vec<Value> = serde_json::from_str(&vmscope_vms(&config, true)).unwrap();
    let ours: Vec<&Value> = vms.iter().filter(|v| v["id"] == uuid.as_str()).collect();
    assert_eq!(ours.len(), 1, "{vms:?}");
    assert_eq!(ours[0]["owner_source"], "libvirt", "{}", ours[0]);
    assert_eq!(ours[0]["owner"]["user_name"], "carol", "{}", ours[0]);
    let table = vmscope_vms(&config, false);
    let row = table
        .lines()
        .find(|l| l.contains(&uuid))
        .unwrap_or_else(|| panic!("{uuid} not in the table:\n{table}"));
    assert!(row.contains("carol/ml-lab (libvirt)"), "{row}");
}

#[test]
fn precedence_between_a_mapping_file_and_the_vm_name() {
    if !lab_available("owners_precedence") {
        return;
    }
    let roms = Roms::new();
    let uuid = unique_uuid();
    let name = format!("u-alice--p-lab--{}", unique_name("web"));
    let _vm = QemuVm::start(
        &roms,
        VmSpec {
            name: name.clone(),
            uuid: uuid.clone(),
            vcpus: 1,
            memory_mib: 32,
            firmware: Firmware::Idle,
            process_name: None,
        },
        None,
    );
    // The platform's mapping: another user, and a project id but no name.
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("owners.csv");
    std::fs::write(
        &mapping,
        format!("id,user_name,project_id\n{uuid},bob,p-42\n"),
    )
    .unwrap();
    let sources = format!(
        r#"[owners.file]
path = {mapping:?}
interval = "200ms"

[owners.cmdline]
over = "name"
pattern = '^u-(?P<user>[a-z]+)--p-(?P<project>[a-z]+)--'
"#
    );

    // Default order (nova, libvirt, file, cmdline): the file wins the user
    // and its project id; the name fills the project name.
    let agent = Agent::start_with(INTERVAL_SECS, &sources);
    let vm = api_vm_until(&agent, &uuid, "the file's owner", |v| {
        v["owner_source"] == "file"
    });
    assert_eq!(
        vm["owner"],
        json!({"user_name": "bob", "project_id": "p-42", "project_name": "lab"}),
        "{vm}"
    );
    let info = vm_info(&agent, &uuid);
    let want = [
        ("vm_name", name.as_str()),
        ("owner_user", "bob"),
        ("owner_project", "lab"),
        ("owner_source", "file"),
    ];
    assert!(info.has_labels(&want), "want {want:?} in {info:?}");
    drop(agent);

    // The name pattern first: it wins the user; the file still fills the
    // project id the pattern cannot give, and the owner source is cmdline.
    let agent = Agent::start_with(
        INTERVAL_SECS,
        &format!("[owners]\norder = [\"cmdline\", \"file\"]\n\n{sources}"),
    );
    let vm = api_vm_until(&agent, &uuid, "the name's owner, filled by the file", |v| {
        v["owner"]["project_id"] == "p-42"
    });
    assert_eq!(vm["owner_source"], "cmdline", "{vm}");
    assert_eq!(
        vm["owner"],
        json!({"user_name": "alice", "project_id": "p-42", "project_name": "lab"}),
        "{vm}"
    );
    let info = vm_info(&agent, &uuid);
    let want = [
        ("owner_user", "alice"),
        ("owner_project", "lab"),
        ("owner_source", "cmdline"),
    ];
    assert!(info.has_labels(&want), "want {want:?} in {info:?}");
}
