//! The mixin proven on real data: a real Prometheus, loaded with
//! `mixin/rules/vmscope.yml`, scrapes a real `vmscope serve` watching three
//! real QEMU VMs of two owners (a mapping file names users and projects):
//! a CPU-burning one, an idle one, and a Linux guest (TCG) with a TAP that
//! receives frames, a virtio disk, a balloon with guest statistics and a
//! QMP socket, so that every per-VM family the VM-detail dashboard shows
//! exists. The agent runs the watchdog (a VM-CPU rule that the busy VM
//! trips while it gets its core, and a host-memory rule that holds all
//! along, so the watchdog dashboard always has a firing alert), the ledger (2 s flushes) and two remote_write pushes (one into
//! this Prometheus, one to a closed port, which fails and drops).
//!
//! Then every template variable's `label_values()` must offer the lab's
//! real value, every query of every panel of every dashboard (variables
//! substituted with those values) must return data, every recording rule
//! must have produced series, and every rule must evaluate without error.
//!
//! With `VMSCOPE_RENDER_DASHBOARDS=<dir>`, `mixin/render.py` then draws
//! each dashboard from this Prometheus into `<dir>` (the images in docs/).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::lab::{Agent, Boot, Firmware, QemuVm, Roms, Tap, VmSpec, inject_frames};
use crate::support::prom::Prometheus;
use crate::support::qmp::Qmp;
use crate::support::{free_port, http, lab_available, poll_until, unique_name, unique_uuid};

#[path = "../shared/mixin.rs"]
mod files;

/// Families that vmscope exports only from their first error on (the pure
/// test finds them in the fixture host's golden exposition, which has a
/// vanished VM): their panels draw a zero line until then.
const ONLY_AFTER_AN_ERROR: &[&str] = &["vmscope_collector_errors_total"];

fn spec(role: &str, firmware: Firmware, memory_mib: u64) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib,
        firmware,
        process_name: None,
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_dashboard_query_and_recording_rule_returns_data_from_a_real_agent() {
    if !lab_available("mixin") {
        return;
    }
    let Some((kernel, initrd)) = super::vm_disk::linux_guest("mixin") else {
        return;
    };
    let started = Instant::now();
    let roms = Roms::new();
    let dir = tempfile::tempdir().unwrap();

    // The Linux guest first: it boots while the rest starts.
    let tap = Tap::new();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (ours, theirs) = (
        dir.path().join("agent-qmp.sock"),
        dir.path().join("test-qmp.sock"),
    );
    let serial = dir.path().join("serial.log");
    let detail = QemuVm::start_with(
        &roms,
        spec("mx-detail", Firmware::Idle, 128),
        Some(&tap),
        Boot::Linux,
        &strings(&[
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
            "-append",
            "console=ttyS0 rdinit=/init quiet",
            "-serial",
            &format!("file:{}", serial.display()),
            "-drive",
            &format!("file={},format=raw,if=none,id=drive0", disk.display()),
            "-device",
            "virtio-blk-pci,drive=drive0,id=vd0",
            "-device",
            "virtio-balloon-pci,id=balloon0",
            "-qmp",
            &format!("unix:{},server=on,wait=off", ours.display()),
            "-chardev",
            &format!(
                "socket,id=test,path={},server=on,wait=off",
                theirs.display()
            ),
            "-mon",
            "chardev=test,mode=control",
        ]),
    );
    let busy = QemuVm::start(&roms, spec("mx-busy", Firmware::Busy, 32), None);
    let idle = QemuVm::start(&roms, spec("mx-idle", Firmware::Idle, 32), None);

    // Two owners: ann (project acme) has the busy and the detail VM, bob
    // (project beta) the idle one.
    let tag = format!("{}-{}", std::process::id(), crate::support::next_serial());
    let (ann, bob) = (format!("u-ann-{tag}"), format!("u-bob-{tag}"));
    let (acme, beta) = (format!("p-acme-{tag}"), format!("p-beta-{tag}"));
    let mapping = dir.path().join("owners.toml");
    let mut rows = String::new();
    for (vm, user, user_name, project, project_name) in [
        (&detail, &ann, "ann", &acme, "acme"),
        (&busy, &ann, "ann", &acme, "acme"),
        (&idle, &bob, "bob", &beta, "beta"),
    ] {
        rows.push_str(&format!(
            "[[vm]]\nname = {:?}\nuser_id = {user:?}\nuser_name = {user_name:?}\nproject_id = {project:?}\nproject_name = {project_name:?}\n",
            vm.spec.name
        ));
    }
    std::fs::write(&mapping, rows).unwrap();

    let prom_port = free_port();
    let closed = free_port();
    let agent = Agent::start_with(
        1,
        &format!(
            "[owners.file]\npath = {mapping:?}\ninterval = \"500ms\"\n\
             [ledger]\nflush_interval = \"2s\"\n\
             [watchdog.rules.vm_cpu]\nmetric = \"vm_cpu_utilization_ratio\"\nthreshold = 0.3\nsustained = \"2s\"\n\
             [watchdog.rules.lab_memory]\nmetric = \"host_memory_used_ratio\"\nthreshold = 0.01\nsustained = \"2s\"\n\
             [[push.remote_write]]\nname = \"lab\"\nurl = \"http://127.0.0.1:{prom_port}/api/v1/write\"\ninterval = \"2s\"\n\
             labels = {{ job = \"vmscope-push\", instance = \"pushed\" }}\n\
             [[push.remote_write]]\nname = \"down\"\nurl = \"http://127.0.0.1:{closed}/api/v1/write\"\ninterval = \"1s\"\ntimeout = \"300ms\"\nmax_queue = 1\n"
        ),
    );
    let target = agent.base.trim_start_matches("http://").to_owned();
    let rules: Vec<std::path::PathBuf> = files::rule_files();
    let rule_refs: Vec<&Path> = rules.iter().map(|p| p.as_path()).collect();
    let prom = Prometheus::start_full(
        Some(prom_port),
        &[("vmscope", &target, "")],
        &["--web.enable-remote-write-receiver"],
        &rule_refs,
    );

    // The guest's balloon reports its memory every 2 s once the driver is
    // loaded (libvirt's <stats period>; vmscope only reads).
    poll_until(Duration::from_secs(90), Duration::from_millis(250), || {
        std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .contains("vmscope-guest: ready")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the guest did not boot: {}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        )
    });
    let mut qmp = Qmp::connect(&theirs);
    qmp.execute(
        "qom-set",
        Some(serde_json::json!({
            "path": "/machine/peripheral/balloon0",
            "property": "guest-stats-polling-interval",
            "value": 2
        })),
    );
    eprintln!("mixin: guest ready after {:?}", started.elapsed());

    let values: Vec<(&str, String)> = vec![
        ("job", "vmscope".to_owned()),
        ("instance", target.clone()),
        ("user", ann.clone()),
        ("project", acme.clone()),
        ("vm", detail.spec.name.clone()),
    ];
    let vals: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let dashboards = files::dashboards();
    let mut queries: Vec<(String, String)> = Vec::new();
    for d in &dashboards {
        for p in &d.panels {
            for q in &p.queries {
                queries.push((
                    format!("{} / {} / {}", d.file, p.title, q.ref_id),
                    files::substitute(&q.expr, &vals),
                ));
            }
        }
    }
    let recorded: Vec<String> = files::rules()
        .into_iter()
        .filter_map(|r| r.record)
        .collect();
    for r in &recorded {
        queries.push((
            format!("recording rule {r}"),
            format!("{r}{{job=\"vmscope\"}}"),
        ));
    }

    // Everything at once, polled: an empty answer now may be a rate
    // window or a ledger flush away from data. Frames keep arriving at the
    // guest meanwhile, so its network panels have traffic to show.
    let deadline = Duration::from_secs(60);
    let poll_start = Instant::now();
    let mut empty: BTreeMap<String, String> = queries.iter().cloned().collect();
    loop {
        inject_frames(&tap, 20, 600);
        empty.retain(|_, expr| prom.query(expr).is_empty());
        if empty.is_empty() || poll_start.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        empty.is_empty(),
        "{} of {} queries returned no data after {:?}: {empty:#?}\ntargets: {}",
        empty.len(),
        queries.len(),
        poll_start.elapsed(),
        prom.targets()
    );
    eprintln!(
        "mixin: all {} queries ({} panel targets, {} recording rules) returned data after {:?}",
        queries.len(),
        queries.len() - recorded.len(),
        recorded.len(),
        started.elapsed()
    );

    // Every family a query names is in the real agent's exposition (or
    // recorded from it), not only a fallback branch of an `or`: except the
    // ones that exist only once something went wrong.
    let mut names = std::collections::BTreeSet::new();
    for (at, expr) in &queries {
        names.extend(files::metric_names(expr).unwrap_or_else(|e| panic!("{at}: {e}")));
    }
    let absent: Vec<&String> = names
        .iter()
        .filter(|n| !ONLY_AFTER_AN_ERROR.contains(&n.as_str()))
        .filter(|n| {
            prom.query(&format!("count({{__name__=\"{n}\",job=\"vmscope\"}})"))
                .is_empty()
        })
        .collect();
    assert!(
        absent.is_empty(),
        "families named by the mixin but absent: {absent:?}"
    );

    // Every variable offers the lab's value (the picker lists it).
    for d in &dashboards {
        for v in d.variables.iter().filter(|v| v.kind == "query") {
            let (sel, label) = files::label_values(&v.query).unwrap();
            let sel = files::substitute(&sel, &vals);
            let resp = http::get_with_query(
                &format!("{}/api/v1/label/{label}/values", prom.base),
                &[("match[]", &sel)],
            )
            .unwrap();
            let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
            let want = &values.iter().find(|(k, _)| *k == v.name).unwrap().1;
            assert!(
                body["data"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == want.as_str())),
                "{}: variable {} ({}) does not offer {want}: {body}",
                d.file,
                v.name,
                v.query
            );
        }
    }

    // Prometheus loaded every rule of the file and evaluates each cleanly.
    let resp = http::get_json(&format!("{}/api/v1/rules", prom.base)).unwrap();
    let loaded: Vec<&serde_json::Value> = resp["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), files::rules().len(), "{resp}");
    for r in &loaded {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
    // The per-VM CPU / vCPU rule tells the spinning VM from the halted one
    // (not near 1 here: the lab's two cores are shared with the guest's
    // TCG, Prometheus and other tests' builds).
    let util = |vm: &QemuVm| -> f64 {
        let r = prom.query(&format!(
            "vm:vmscope_vm_cpu_utilization:ratio_rate1m{{job=\"vmscope\",vm_name=\"{}\"}}",
            vm.spec.name
        ));
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no CPU / vCPU for {}: {r:?}", vm.spec.name))
    };
    let (b, i) = (util(&busy), util(&idle));
    assert!(
        b > 0.02 && b > 4.0 * i,
        "busy VM's CPU / vCPU {b}, idle VM's {i}"
    );

    if let Some(out) = std::env::var_os("VMSCOPE_RENDER_DASHBOARDS") {
        // Two minutes of history for the graphs (only when drawing them).
        for _ in 0..120 {
            inject_frames(&tap, 20, 600);
            std::thread::sleep(Duration::from_secs(1));
        }
        let script = files::mixin_dir().join("render.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .arg("--prometheus")
            .arg(&prom.base)
            .arg("--out")
            .arg(&out)
            .arg("--range")
            .arg("150");
        for (k, v) in &values {
            cmd.arg("--var").arg(format!("{k}={v}"));
        }
        let st = cmd.status().expect("run mixin/render.py");
        assert!(st.success(), "mixin/render.py failed");
    }
    eprintln!("mixin: done after {:?}", started.elapsed());
    drop(prom);
    drop(agent);
    drop((detail, busy, idle));
}
