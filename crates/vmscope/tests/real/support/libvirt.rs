//! libvirt in the lab: starts `virtlogd` and the monolithic `libvirtd` when
//! they are not already running (no systemd here; see shared/LAB.md) and
//! defines + starts a cheap ROM domain carrying Nova (or any other)
//! metadata and an unmanaged TAP. The daemons are left running (starting them is slow-ish
//! and other tests or users may share them); the domain is destroyed and
//! undefined on drop.
//!
//! Everything goes through `virsh -c qemu:///system`, so the test crate links
//! no libvirt library.

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::lab::{Firmware, Roms, Tap, kvm_usable, run};
use super::{QEMU, poll_until};

pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
pub const VIRTLOGD: &str = "/usr/sbin/virtlogd";
pub const VIRSH: &str = "/usr/bin/virsh";
const URI: &str = "qemu:///system";

pub fn installed() -> bool {
    [LIBVIRTD, VIRTLOGD, VIRSH]
        .iter()
        .all(|p| Path::new(p).exists())
}

/// True when a process whose `comm` is `name` runs on this host.
fn running(name: &str) -> bool {
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .any(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

pub fn virsh(args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-q", "-c", URI];
    all.extend_from_slice(args);
    run(VIRSH, &all)
}

/// Makes sure virtlogd and libvirtd run and answer on `qemu:///system`.
pub fn ensure_daemons() -> Result<(), String> {
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all("/var/log/libvirt").map_err(|e| format!("mkdir /var/log/libvirt: {e}"))?;
    if !running("virtlogd") {
        run(VIRTLOGD, &["-d"])?;
    }
    if !running("libvirtd") {
        run(LIBVIRTD, &["-d"])?;
    }
    let mut last = String::new();
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || match virsh(&["version"]) {
            Ok(_) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        },
    )
    .map(|_| ())
    .ok_or_else(|| format!("libvirtd does not answer on {URI}: {last}"))
}

/// The Nova instance metadata written into the domain XML.
#[derive(Debug, Clone)]
pub struct Nova {
    pub name: String,
    pub flavor: String,
    pub user_name: String,
    pub user_uuid: String,
    pub project_name: String,
    pub project_uuid: String,
}

impl Nova {
    /// `<nova:instance>` as Nova writes it into `<metadata>`.
    pub fn metadata_xml(&self) -> String {
        format!(
            r#"<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="0.0.0-e2e"/>
      <nova:name>{name}</nova:name>
      <nova:flavor name="{flavor}">
        <nova:memory>32</nova:memory>
        <nova:disk>0</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="{user_uuid}">{user_name}</nova:user>
        <nova:project uuid="{project_uuid}">{project_name}</nova:project>
      </nova:owner>
    </nova:instance>"#,
            name = self.name,
            flavor = self.flavor,
            user_uuid = self.user_uuid,
            user_name = self.user_name,
            project_uuid = self.project_uuid,
            project_name = self.project_name,
        )
    }
}

/// A defined and running libvirt domain; destroyed and undefined on drop.
pub struct Domain {
    pub name: String,
    pub pid: Option<i32>,
}

impl Domain {
    /// Defines and starts a 1-vCPU, 32 MiB domain booting the idle ROM, with
    /// `tap` as an `ethernet` interface (`managed='no'`: the TAP exists
    /// already and libvirt must not touch it) and `nova` as its metadata.
    pub fn start(roms: &Roms, name: &str, uuid: &str, tap: &Tap, nova: &Nova) -> Domain {
        Domain::start_with_metadata(roms, name, uuid, tap, &nova.metadata_xml())
    }

    /// [`Domain::start`] with `metadata` (the children of `<metadata>`,
    /// e.g. a custom platform's own element) instead of Nova's.
    pub fn start_with_metadata(
        roms: &Roms,
        name: &str,
        uuid: &str,
        tap: &Tap,
        metadata: &str,
    ) -> Domain {
        let kind = if kvm_usable() { "kvm" } else { "qemu" };
        let rom = roms.path(Firmware::Idle);
        let xml = format!(
            r#"<domain type='{kind}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    {metadata}
  </metadata>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <loader type='rom'>{rom}</loader>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <interface type='ethernet'>
      <target dev='{tap}' managed='no'/>
      <model type='rtl8139'/>
    </interface>
  </devices>
</domain>
"#,
            rom = rom.display(),
            tap = tap.name,
        );
        Domain::start_xml(roms.dir(), name, &xml)
    }

    /// Defines (from `xml`, written into `dir`) and starts domain `name`.
    pub fn start_xml(dir: &Path, name: &str, xml: &str) -> Domain {
        let file = dir.join(format!("{name}.xml"));
        fs::write(&file, xml).expect("write domain XML");
        let file = file.display().to_string();
        virsh(&["define", &file]).expect("virsh define");
        // From here on the guard owns the domain, so a failing start still
        // undefines it.
        let mut dom = Domain {
            name: name.to_owned(),
            pid: None,
        };
        virsh(&["start", name]).expect("virsh start");
        dom.pid = fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        dom
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // `destroy` fails harmlessly when the domain is not running.
        let _ = virsh(&["destroy", &self.name]);
        if let Err(e) = virsh(&["undefine", &self.name]) {
            eprintln!("lab: undefine {}: {e}", self.name);
        }
    }
}
