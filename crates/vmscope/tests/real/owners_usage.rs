//! Per-owner usage with real QEMU VMs: a mapping file gives two VMs to one
//! user and one to another (all three to one project); `vmscope serve`
//! sums them per owner. In one scrape (one tick), each `vmscope_user_*` /
//! `vmscope_project_*` figure equals the sum of that owner's per-VM series,
//! and `/api/v1/owners` of the same tick says the same; when a VM is
//! killed, its owner's figures drop, and an owner with no VM left is gone
//! from the next scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use rustix::process::Signal;
use serde_json::Value;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::metrics::{Exposition, assert_promtool_clean};
use crate::support::{http, lab_available, poll_until, unique_name, unique_uuid};

fn spec(role: &str, vcpus: u32, memory_mib: u64) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus,
        memory_mib,
        firmware: Firmware::Idle,
        process_name: None,
    }
}

/// `/metrics`, `/api/v1/vms` and `/api/v1/owners` of one tick: read
/// between two `/api/v1/vms` that agree on `seq`, and `owners` of that seq.
struct Tick {
    metrics: Exposition,
    vms: Vec<Value>,
    owners: Vec<Value>,
}

fn one_tick(agent: &Agent) -> Tick {
    poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let before = http::get_json(&agent.url("/api/v1/vms")).ok()?;
        let metrics = agent.metrics();
        let owners = http::get_json(&agent.url("/api/v1/owners")).ok()?;
        let after = http::get_json(&agent.url("/api/v1/vms")).ok()?;
        let seq = before["seq"].as_u64()?;
        (after["seq"].as_u64() == Some(seq) && owners["seq"].as_u64() == Some(seq)).then(|| Tick {
            metrics,
            vms: after["vms"].as_array().cloned().unwrap_or_default(),
            owners: owners["owners"].as_array().cloned().unwrap_or_default(),
        })
    })
    .expect("three reads within one tick")
    .0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

impl Tick {
    /// The ids of the VMs whose `vmscope_vm_info` names this owner label.
    fn vm_ids(&self, label_name: &str, label: &str) -> Vec<String> {
        self.metrics
            .all("vmscope_vm_info", &[(label_name, label)])
            .iter()
            .filter_map(|s| s.label("vm_id").map(str::to_owned))
            .collect()
    }

    fn per_vm_sum(&self, family: &str, ids: &[String]) -> f64 {
        ids.iter()
            .map(|id| self.metrics.value(family, &[("vm_id", id)]).unwrap_or(0.0))
            .sum()
    }

    fn api_vm(&self, id: &str) -> &Value {
        self.vms
            .iter()
            .find(|v| v["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in /api/v1/vms"))
    }

    fn api_owner(&self, kind: &str, key: &str) -> Option<&Value> {
        self.owners
            .iter()
            .find(|o| o["kind"] == kind && o["key"] == key)
    }

    /// Checks every figure of one owner against its VMs in this tick: the
    /// VMs whose `vmscope_vm_info` carries one of `labels` (a VM's label is
    /// its owner's name, else the id: an owner's id-only VM has the id).
    /// Returns its VM ids.
    fn check_owner(&self, kind: &str, key: &str, labels: &[&str]) -> Vec<String> {
        let ids: Vec<String> = labels
            .iter()
            .flat_map(|l| self.vm_ids(&format!("owner_{kind}"), l))
            .collect();
        let m = |suffix: &str| {
            self.metrics
                .value(&format!("vmscope_{kind}_{suffix}"), &[(kind, key)])
                .unwrap_or_else(|| panic!("no vmscope_{kind}_{suffix}{{{kind}={key:?}}}"))
        };
        let running = ids
            .iter()
            .filter(|id| {
                self.metrics
                    .value("vmscope_vm_state", &[("vm_id", id), ("state", "running")])
                    == Some(1.0)
            })
            .count();
        assert_eq!(m("vms"), running as f64, "{kind} {key}: vms");
        for (suffix, family) in [
            ("allocated_vcpus", "vmscope_vm_allocated_vcpus"),
            (
                "memory_allocated_bytes",
                "vmscope_vm_memory_allocated_bytes",
            ),
            ("memory_rss_bytes", "vmscope_vm_memory_rss_bytes"),
        ] {
            assert_eq!(
                m(suffix),
                self.per_vm_sum(family, &ids),
                "{kind} {key} {suffix}"
            );
        }
        for (suffix, field) in [
            ("cpu_cores", "cpu_cores"),
            (
                "network_receive_bytes_per_second",
                "network_rx_bytes_per_second",
            ),
            (
                "network_transmit_bytes_per_second",
                "network_tx_bytes_per_second",
            ),
        ] {
            let sum: f64 = ids
                .iter()
                .map(|id| self.api_vm(id)[field].as_f64().unwrap_or(0.0))
                .sum();
            assert!(
                close(m(suffix), sum),
                "{kind} {key} {suffix}: {} vs {sum}",
                m(suffix)
            );
        }
        // The API's owner is the same numbers.
        let api = self
            .api_owner(kind, key)
            .unwrap_or_else(|| panic!("{kind} {key} not in /api/v1/owners: {:?}", self.owners));
        assert_eq!(api["vms"], ids.len());
        assert_eq!(api["vms_running"], running);
        assert_eq!(
            api["memory_rss_bytes"].as_f64(),
            Some(m("memory_rss_bytes"))
        );
        assert_eq!(api["allocated_vcpus"].as_f64(), Some(m("allocated_vcpus")));
        assert!(close(api["cpu_cores"].as_f64().unwrap(), m("cpu_cores")));
        ids
    }
}

#[test]
fn per_owner_figures_follow_real_vms_and_drop_when_one_is_killed() {
    if !lab_available("owners_usage") {
        return;
    }
    let roms = Roms::new();
    let mut a1 = QemuVm::start(&roms, spec("own-a1", 2, 64), None);
    let mut a2 = QemuVm::start(&roms, spec("own-a2", 1, 96), None);
    let mut b1 = QemuVm::start(&roms, spec("own-b1", 1, 64), None);

    // Names unique to this run: other tests' VMs on the host are nobody's here.
    let tag = format!("{}-{}", std::process::id(), crate::support::next_serial());
    let (ua, na) = (format!("u-ann-{tag}"), format!("ann {tag}"));
    let ub = format!("u-bob-{tag}");
    let pr = format!("p-{tag}");
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("owners.toml");
    let mut toml = String::new();
    for (vm, user, name) in [(&a1, &ua, Some(&na)), (&a2, &ua, None), (&b1, &ub, None)] {
        toml.push_str(&format!(
            "[[vm]]\nname = {:?}\nuser_id = {user:?}\nproject_id = {pr:?}\n",
            vm.spec.name
        ));
        if let Some(n) = name {
            toml.push_str(&format!("user_name = {n:?}\n"));
        }
    }
    std::fs::write(&mapping, toml).unwrap();
    let agent = Agent::start_with(
        1,
        &format!("[owners.file]\npath = {mapping:?}\ninterval = \"200ms\"\n"),
    );

    // Attributed, and every VM has a rate (two ticks seen).
    agent.wait_for_series(
        "vmscope_user_cpu_cores",
        &[("user", &ub)],
        Duration::from_secs(30),
    );
    let tick = poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let t = one_tick(&agent);
        (t.metrics.value("vmscope_user_vms", &[("user", &ua)]) == Some(2.0)
            && t.metrics
                .value("vmscope_user_cpu_cores", &[("user", &ua)])
                .is_some())
        .then_some(t)
    })
    .unwrap_or_else(|| panic!("ann's two VMs never summed; log:\n{}", agent.log()))
    .0;
    // ann's label on vm_info is her name (a1 carries it; a2, id-only, joins
    // her id): the info series maps her key to it.
    assert_eq!(
        tick.metrics
            .value("vmscope_user_info", &[("user", &ua), ("user_name", &na)]),
        Some(1.0)
    );
    // a2, id-only, is labelled by the id on vm_info and joins ann's key.
    assert_eq!(tick.vm_ids("owner_user", &na).len(), 1);
    assert_eq!(tick.vm_ids("owner_user", &ua).len(), 1);
    assert_eq!(tick.check_owner("user", &ua, &[&na, &ua]).len(), 2);
    assert_eq!(
        tick.metrics
            .value("vmscope_user_allocated_vcpus", &[("user", &ua)]),
        Some(3.0)
    );
    assert_eq!(
        tick.metrics
            .value("vmscope_user_memory_allocated_bytes", &[("user", &ua)]),
        Some((160u64 << 20) as f64)
    );
    assert!(
        tick.metrics
            .value("vmscope_user_memory_rss_bytes", &[("user", &ua)])
            .is_some_and(|v| v > 0.0)
    );
    assert_eq!(tick.check_owner("user", &ub, &[&ub]).len(), 1);
    assert_eq!(tick.check_owner("project", &pr, &[&pr]).len(), 3);
    assert_promtool_clean(&http::get(&agent.url("/metrics")).unwrap().body);

    // bob's only VM is killed: bob is gone from the next scrape, the
    // project drops to two VMs.
    b1.kill_and_wait(Signal::KILL);
    let tick = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let t = one_tick(&agent);
        t.metrics
            .all("vmscope_user_vms", &[("user", &ub)])
            .is_empty()
            .then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "bob still exported after his VM died; log:\n{}",
            agent.log()
        )
    })
    .0;
    for family in [
        "vmscope_user_allocated_vcpus",
        "vmscope_user_memory_rss_bytes",
        "vmscope_user_cpu_cores",
    ] {
        assert!(
            tick.metrics.all(family, &[("user", &ub)]).is_empty(),
            "{family}"
        );
    }
    assert!(tick.api_owner("user", &ub).is_none());
    let r = http::get(&agent.url(&format!("/api/v1/owners/user/{ub}"))).unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(tick.check_owner("project", &pr, &[&pr]).len(), 2);
    assert_eq!(
        tick.metrics
            .value("vmscope_project_allocated_vcpus", &[("project", &pr)]),
        Some(3.0)
    );

    // One of ann's two: her figures drop to the one left.
    a2.kill_and_wait(Signal::KILL);
    let tick = poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let t = one_tick(&agent);
        (t.metrics.value("vmscope_user_vms", &[("user", &ua)]) == Some(1.0)).then_some(t)
    })
    .unwrap_or_else(|| panic!("ann's figures never dropped; log:\n{}", agent.log()))
    .0;
    let ids = tick.check_owner("user", &ua, &[&na, &ua]);
    assert_eq!(ids, [a1.spec.uuid.clone()]);
    assert_eq!(
        tick.metrics
            .value("vmscope_user_allocated_vcpus", &[("user", &ua)]),
        Some(2.0)
    );
    let detail = http::get_json(&agent.url(&format!("/api/v1/owners/user/{ua}"))).unwrap();
    let vm_ids: Vec<&str> = detail["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(vm_ids, [a1.spec.uuid.as_str()]);
    let owners: BTreeMap<String, f64> = tick
        .metrics
        .all("vmscope_owners_with_running_vms", &[])
        .iter()
        .map(|s| (s.label("kind").unwrap().to_owned(), s.value))
        .collect();
    assert!(
        owners["user"] >= 1.0 && owners["project"] >= 1.0,
        "{owners:?}"
    );
    a1.kill_and_wait(Signal::KILL);
}
