//! The tenant-escape suite: a real vmscope watching real QEMU VMs of two
//! tenants, with the ledger and the watchdog on, and one token per tenant.
//! Each tenant tries to read the other's VMs and owners through every
//! endpoint and every query parameter and filter it has; every answer must
//! hold nothing of the other (its VMs' ids, names and UUIDs, its owners'
//! keys and names), and each tenant must still see its own.
//!
//! Anonymous callers (`anonymous: {scrape: host_only}`) are attacked the
//! same way and must see host-level aggregates only.
//!
//! A new endpoint is added by one line in [`PROBES`]; a test fails until
//! every route of `vmscope::api::ROUTES` has a line.

use std::io::Read as _;
use std::time::Duration;

use serde_json::Value;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::{lab_available, poll_until, unique_name, unique_uuid};

/// One request of the suite: the route it exercises (a path of
/// `vmscope::api::ROUTES`), the request (`{id}`, `{name}`, `{uuid}`,
/// `{user}`, `{project}`, `{user_name}`, `{project_name}` are the victim's;
/// `{host}` this host), the `Accept` header, and whether the admin's answer
/// to it names the victim (so that this line can catch a leak at all).
struct Probe {
    route: &'static str,
    request: &'static str,
    accept: &'static str,
    admin_sees_victim: bool,
}

const fn p(
    route: &'static str,
    request: &'static str,
    accept: &'static str,
    admin_sees_victim: bool,
) -> Probe {
    Probe {
        route,
        request,
        accept,
        admin_sees_victim,
    }
}

const TEXT: &str = "";
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";
const CSV: &str = "text/csv";

#[rustfmt::skip]
const PROBES: &[Probe] = &[
    p("/", "/", TEXT, false),
    p("/ui/{file}", "/ui/app.js", TEXT, false),
    p("/ui/{file}", "/ui/app.css", TEXT, false),
    p("/metrics", "/metrics", TEXT, true),
    p("/metrics", "/metrics", OPENMETRICS, true),
    p("/metrics", "/metrics?vm_id={id}&user={user}", TEXT, true),
    p("/metrics.json", "/metrics.json", TEXT, true),
    p("/healthz", "/healthz", TEXT, false),
    p("/api/v1/vms", "/api/v1/vms", TEXT, true),
    p("/api/v1/vms", "/api/v1/vms?owner={user}&project={project}", TEXT, true),
    p("/api/v1/vms/{id}", "/api/v1/vms/{id}", TEXT, true),
    p("/api/v1/vms/{id}", "/api/v1/vms/{name}", TEXT, false),
    p("/api/v1/vms/{id}", "/api/v1/vms/{uuid}", TEXT, true),
    p("/api/v1/vms/{id}/stats", "/api/v1/vms/{id}/stats", TEXT, true),
    p("/api/v1/vms/{id}/stats", "/api/v1/vms/{name}/stats", TEXT, false),
    p("/api/v1/vms/{id}/history", "/api/v1/vms/{id}/history", TEXT, true),
    p("/api/v1/vms/{id}/history", "/api/v1/vms/{id}/history?points=1", TEXT, true),
    p("/api/v1/vms/{id}/history", "/api/v1/vms/{name}/history", TEXT, false),
    p("/api/v1/history", "/api/v1/history", TEXT, true),
    p("/api/v1/history", "/api/v1/history?points=240", TEXT, true),
    p("/api/v1/owners", "/api/v1/owners", TEXT, true),
    p("/api/v1/owners", "/api/v1/owners?kind=user", TEXT, true),
    p("/api/v1/owners", "/api/v1/owners?kind=project", TEXT, true),
    p("/api/v1/owners/{kind}/{id}", "/api/v1/owners/user/{user}", TEXT, true),
    p("/api/v1/owners/{kind}/{id}", "/api/v1/owners/project/{project}", TEXT, true),
    p("/api/v1/owners/{kind}/{id}", "/api/v1/owners/user/{user_name}", TEXT, false),
    p("/api/v1/owners/{kind}/{id}", "/api/v1/owners/project/{project_name}", TEXT, false),
    p("/api/v1/host", "/api/v1/host", TEXT, false),
    p("/api/v1/alerts", "/api/v1/alerts", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?scope=vm:{id}", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?scope=vm", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?scope=owner:project:{project}", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?scope=owner", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?scope=host", TEXT, false),
    p("/api/v1/alerts", "/api/v1/alerts?rule=vm_any&limit=1000", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?since=0&page=1", TEXT, true),
    p("/api/v1/alerts", "/api/v1/alerts?since=0&until=4000000000&limit=1", TEXT, false),
    p("/api/v1/usage", "/api/v1/usage", TEXT, true),
    p("/api/v1/usage", "/api/v1/usage?by=vm", TEXT, true),
    p("/api/v1/usage", "/api/v1/usage?by=vm", CSV, true),
    p("/api/v1/usage", "/api/v1/usage?by=user", TEXT, true),
    p("/api/v1/usage", "/api/v1/usage?by=project&step=1h", TEXT, true),
    p("/api/v1/usage", "/api/v1/usage?by=project", CSV, true),
    p("/api/v1/usage", "/api/v1/usage?by=vm&host={host}&from=0", TEXT, true),
    // The query proxy, in front of a real Prometheus that scrapes this
    // agent with the admin token (owner labels on every per-VM series).
    p("/metrics", "/metrics?query=vmscope_vm_info", TEXT, true),
    p("/metrics", "/metrics?query=vmscope_vm_info{vm_id=\"{id}\"}", TEXT, true),
    p("/api/v1/prometheus/query", "/api/v1/prometheus/query?query=vmscope_vm_info", TEXT, true),
    p("/api/v1/prometheus/query", "/api/v1/prometheus/query?query={__name__=~\"vmscope_(vm|user|project)_.*\",project=\"{project}\"}", TEXT, true),
    p("/api/v1/prometheus/query", "/api/v1/prometheus/query?query=sum by (vm_name, user, project) (max_over_time(vmscope_vm_cpu_seconds_total[1m]))", TEXT, true),
    p("/api/v1/prometheus/query", "/api/v1/prometheus/query?query=label_replace(vmscope_vm_info, \"x\", \"$1\", \"vm_name\", \"(.*)\") or vector(1)", TEXT, true),
    p("/api/v1/prometheus/query_range", "/api/v1/prometheus/query_range?query=vmscope_vm_info&start={ago}&end={now}&step=5", TEXT, true),
    p("/api/v1/prometheus/series", "/api/v1/prometheus/series?match[]=vmscope_vm_info", TEXT, true),
    p("/api/v1/prometheus/series", "/api/v1/prometheus/series?match[]={vm_id=\"{id}\"}", TEXT, true),
    p("/api/v1/prometheus/labels", "/api/v1/prometheus/labels", TEXT, false),
    p("/api/v1/prometheus/label/{name}/values", "/api/v1/prometheus/label/vm_name/values", TEXT, true),
    p("/api/v1/prometheus/label/{name}/values", "/api/v1/prometheus/label/project/values", TEXT, true),
    p("/api/v1/prometheus/label/{name}/values", "/api/v1/prometheus/label/user_name/values", TEXT, true),
    p("/grafana/panel_iframe_src", "/grafana/panel_iframe_src?uid=abc&panelId=2", TEXT, false),
    p("/grafana/panel_iframe_src", "/grafana/panel_iframe_src?uid=abc&panelId=2&var-project={project}", TEXT, false),
    p("/grafana/panel.png", "/grafana/panel.png?uid=abc&panelId=2", TEXT, false),
];

const ADMIN: &str = "vms_escape_suite_admin_token_000000000001";
const TOKEN_A: &str = "vms_escape_suite_tenant_a_token_00000002";
const TOKEN_B: &str = "vms_escape_suite_tenant_b_token_00000003";

fn spec(role: &str) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 64,
        firmware: Firmware::Idle,
        process_name: None,
    }
}

/// What one tenant has on the host, as the other must never see it.
struct Tenant {
    token: &'static str,
    vms: Vec<(String, String)>,
    user: String,
    user_name: String,
    project: String,
    project_name: String,
}

impl Tenant {
    /// Every string that would reveal this tenant.
    fn secrets(&self) -> Vec<&str> {
        let mut s: Vec<&str> = vec![
            &self.user,
            &self.user_name,
            &self.project,
            &self.project_name,
        ];
        for (id, name) in &self.vms {
            s.push(id);
            s.push(name);
        }
        s
    }

    fn fill(&self, template: &str, host: &str) -> String {
        let (id, name) = &self.vms[0];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The range ends a step after now: its last evaluation at the
        // whole second `now` can fall before the first scrape's sample,
        // which the setup's instant query saw a moment later (an empty
        // range, once in a loaded CI run).
        let filled = template
            .replace("{now}", &(now + 5).to_string())
            .replace("{ago}", &(now - 120).to_string())
            .replace("{id}", id)
            .replace("{uuid}", id)
            .replace("{name}", name)
            .replace("{user_name}", &self.user_name.replace(' ', "%20"))
            .replace("{project_name}", &self.project_name.replace(' ', "%20"))
            .replace("{user}", &self.user)
            .replace("{project}", &self.project)
            .replace("{host}", host);
        // PromQL in a query string: percent-encode what a URI cannot hold.
        match filled.split_once('?') {
            Some((path, query)) => {
                let mut q = String::new();
                for b in query.bytes() {
                    if b.is_ascii_alphanumeric() || b"-_.~=&%".contains(&b) {
                        q.push(char::from(b));
                    } else {
                        q.push_str(&format!("%{b:02X}"));
                    }
                }
                format!("{path}?{q}")
            }
            None => filled,
        }
    }
}

struct Reply {
    status: u16,
    body: String,
}

fn get(url: &str, token: Option<&str>, accept: &str, gzip: bool) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    if !accept.is_empty() {
        req = req.header("Accept", accept);
    }
    if gzip {
        req = req.header("Accept-Encoding", "gzip");
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let gzipped = resp
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let raw = resp.body_mut().read_to_vec().unwrap_or_default();
    let body = if gzipped {
        let mut s = String::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_string(&mut s)
            .unwrap_or_else(|e| panic!("GET {url}: gzip body: {e}"));
        s
    } else {
        String::from_utf8_lossy(&raw).into_owned()
    };
    Reply {
        status: resp.status().as_u16(),
        body,
    }
}

/// The first of `secrets` the answer to `path` shows. An error may echo
/// what the caller sent (`no VM with id "<id>"`, as for an id that never
/// existed): that reveals nothing it did not know, so it does not count.
fn leaked<'a>(path: &str, got: &Reply, secrets: &[&'a str]) -> Option<&'a str> {
    let sent = path.replace("%20", " ");
    secrets
        .iter()
        .copied()
        .filter(|s| !(got.status >= 400 && sent.contains(s)))
        .find(|s| got.body.contains(s))
}

fn sha(t: &str) -> String {
    vmscope::access::token::sha256_hex(t)
}

#[test]
fn every_route_has_a_line_in_the_escape_suite() {
    for r in vmscope::api::ROUTES {
        assert!(
            PROBES.iter().any(|p| p.route == r.path),
            "route {} has no line in tenant_escape::PROBES: add one",
            r.path
        );
    }
    for p in PROBES {
        assert!(
            vmscope::api::ROUTES.iter().any(|r| r.path == p.route),
            "PROBES names {} which is not a route",
            p.route
        );
    }
}

#[test]
fn a_tenant_reads_nothing_of_another_through_any_endpoint() {
    if !lab_available("tenant_escape") {
        return;
    }
    let roms = Roms::new();
    let (a1, a2, b1) = (spec("esc-a1"), spec("esc-a2"), spec("esc-b1"));
    let vms: Vec<QemuVm> = [a1, a2, b1]
        .into_iter()
        .map(|s| QemuVm::start(&roms, s, None))
        .collect();
    let tag = format!("{}-{}", std::process::id(), crate::support::next_serial());
    let vm = |i: usize| (vms[i].spec.uuid.clone(), vms[i].spec.name.clone());
    // A is a project (its token: project:<key>), B a user (user:<key>):
    // both kinds of scope are attacked and defended.
    let a = Tenant {
        token: TOKEN_A,
        vms: vec![vm(0), vm(1)],
        user: format!("u-ann-{tag}"),
        user_name: format!("ann {tag}"),
        project: format!("p-acme-{tag}"),
        project_name: format!("Acme {tag}"),
    };
    let b = Tenant {
        token: TOKEN_B,
        vms: vec![vm(2)],
        user: format!("u-bob-{tag}"),
        user_name: format!("bob {tag}"),
        project: format!("p-beta-{tag}"),
        project_name: format!("Beta {tag}"),
    };

    let dir = tempfile::tempdir().unwrap();
    let mut mapping = String::new();
    for t in [&a, &b] {
        for (_, name) in &t.vms {
            mapping.push_str(&format!(
                "[[vm]]\nname = {name:?}\nuser_id = {:?}\nuser_name = {:?}\nproject_id = {:?}\nproject_name = {:?}\n",
                t.user, t.user_name, t.project, t.project_name
            ));
        }
    }
    let mapping_path = dir.path().join("owners.toml");
    std::fs::write(&mapping_path, mapping).unwrap();
    let web = format!(
        "vmscope:\n  anonymous:\n    scrape: host_only\n  tokens:\n    - {{name: admin, sha256: {}, scope: admin}}\n    - {{name: tenant-a, sha256: {}, scope: \"project:{}\"}}\n    - {{name: tenant-b, sha256: {}, scope: [\"user:{}\"]}}\n",
        sha(ADMIN),
        sha(TOKEN_A),
        a.project,
        sha(TOKEN_B),
        b.user
    );
    let web_path = dir.path().join("web.yml");
    std::fs::write(&web_path, web).unwrap();
    let prom_port = crate::support::free_port();
    let config = format!(
        r#"
[http]
web_config_file = {web_path:?}

[proxy]
prometheus_url = "http://127.0.0.1:{prom_port}"
owner_labels = true

[owners.file]
path = {mapping_path:?}
interval = "200ms"

[ledger]
interval = "5s"
flush_interval = "1s"

[watchdog]
builtin_rules = false

# Fires for every VM and every project at once: alerts about both tenants
# (and a host one, which no tenant may see).
[watchdog.rules.vm_any]
metric = "vm_memory_utilization_ratio"
threshold = 0.000001
sustained = "1s"

[watchdog.rules.project_any]
metric = "owner_allocated_vcpus"
group_by = "project"
threshold = 0.5
sustained = "1s"

[watchdog.rules.host_any]
metric = "host_memory_used_ratio"
threshold = 0.000001
sustained = "1s"
"#
    );
    let agent = Agent::start_with(1, &config);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let url = |path: &str| agent.url(path);
    let target = agent.url("").trim_start_matches("http://").to_owned();
    let prom = crate::support::prom::Prometheus::start_jobs_at(
        Some(prom_port),
        &[(
            "vmscope",
            target.as_str(),
            &format!("    authorization:\n      type: Bearer\n      credentials: {ADMIN}\n"),
        )],
    );

    // Everything is there for the admin: both tenants' VMs attributed,
    // their alerts firing, their ledger rows flushed.
    poll_until(Duration::from_secs(60), Duration::from_millis(250), || {
        let m = get(&url("/metrics"), Some(ADMIN), TEXT, false).body;
        let alerts = get(&url("/api/v1/alerts"), Some(ADMIN), TEXT, false).body;
        let usage = get(&url("/api/v1/usage?by=vm"), Some(ADMIN), TEXT, false).body;
        let scraped = get(
            &url("/api/v1/prometheus/query?query=vmscope_vm_info"),
            Some(ADMIN),
            TEXT,
            false,
        )
        .body;
        [&a, &b]
            .iter()
            .all(|t| {
                m.contains(&format!("project=\"{}\"", t.project))
                    && t.vms.iter().all(|(id, _)| {
                        alerts.contains(&format!("vm:{id}")) && usage.contains(id.as_str())
                    })
                    && alerts.contains(&format!("owner:project:{}", t.project))
                    && scraped.contains(&t.project)
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("setup incomplete after 60 s: {}", agent.log()));
    assert!(
        get(&url("/api/v1/alerts"), Some(ADMIN), TEXT, false)
            .body
            .contains("\"scope\":\"host\"")
    );

    for (attacker, victim) in [(&a, &b), (&b, &a)] {
        for probe in PROBES {
            for gzip in [false, true] {
                let path = victim.fill(probe.request, &host);
                let got = get(&url(&path), Some(attacker.token), probe.accept, gzip);
                assert!(
                    matches!(got.status, 200 | 400 | 403 | 404 | 410),
                    "{path} as {}: status {}: {}",
                    attacker.project,
                    got.status,
                    got.body
                );
                if let Some(secret) = leaked(&path, &got, &victim.secrets()) {
                    panic!(
                        "LEAK: {path} (accept {:?}, gzip {gzip}) as the tenant of {} shows {secret:?} of the other tenant:\n{}",
                        probe.accept, attacker.project, got.body
                    );
                }
                if probe.admin_sees_victim && !gzip {
                    let admin = get(&url(&path), Some(ADMIN), probe.accept, false);
                    assert!(
                        victim.secrets().iter().any(|s| admin.body.contains(s)),
                        "{path}: the admin's answer does not name the victim, so this line tests nothing: {}",
                        admin.body
                    );
                }
            }
        }
        // A tenant's own things are there, and only its own.
        check_own_view(attacker, &|p| {
            get(&url(p), Some(attacker.token), TEXT, false)
        });
    }

    // Anonymous callers get host-level aggregates on the scrape endpoints
    // (`host_only`) and a 401 elsewhere: nothing of either tenant, no VM,
    // no owner.
    for probe in PROBES {
        for gzip in [false, true] {
            let path = a.fill(probe.request, &host);
            let got = get(&url(&path), None, probe.accept, gzip);
            assert!(
                matches!(got.status, 200 | 401 | 410),
                "{path} anonymous: status {}: {}",
                got.status,
                got.body
            );
            let both: Vec<&str> = a.secrets().into_iter().chain(b.secrets()).collect();
            if let Some(secret) = leaked(&path, &got, &both) {
                panic!("LEAK: {path} anonymous shows {secret:?}:\n{}", got.body);
            }
        }
    }
    let anon = get(&url("/metrics"), None, TEXT, false);
    assert_eq!(anon.status, 200, "{}", anon.body);
    for want in [
        "vmscope_host_cpus ",
        "vmscope_vms{state=\"running\",hypervisor=\"qemu\"}",
        "vmscope_build_info{",
    ] {
        assert!(
            anon.body.contains(want),
            "host_only lacks {want}: {}",
            anon.body
        );
    }
    for absent in ["vm_id=", "user=", "project=", "vm_name=", "vmscope_http_"] {
        assert!(
            !anon.body.contains(absent),
            "host_only has {absent}: {}",
            anon.body
        );
    }
    assert_eq!(get(&url("/api/v1/vms"), None, TEXT, false).status, 401);

    // The other tenant's VM by id is a 404 (its existence is not revealed),
    // the host resource a 403, and the same for both kinds of scope.
    for (attacker, victim) in [(&a, &b), (&b, &a)] {
        let id = &victim.vms[0].0;
        for path in [
            format!("/api/v1/vms/{id}"),
            format!("/api/v1/vms/{id}/stats"),
            format!("/api/v1/vms/{id}/history"),
        ] {
            let r = get(&url(&path), Some(attacker.token), TEXT, false);
            assert_eq!(r.status, 404, "{path}: {}", r.body);
        }
        let r = get(
            &url(&format!("/api/v1/owners/project/{}", victim.project)),
            Some(attacker.token),
            TEXT,
            false,
        );
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(
            get(&url("/api/v1/host"), Some(attacker.token), TEXT, false).status,
            403
        );
    }
    drop(prom);
    drop(vms);
}

/// What a tenant must see of itself: its VMs and owners, in every
/// resource, and nothing of any other VM on the host (other tests' VMs
/// included).
fn check_own_view(t: &Tenant, get: &dyn Fn(&str) -> Reply) {
    let own_ids: Vec<&str> = t.vms.iter().map(|(id, _)| id.as_str()).collect();
    let ids_in = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .filter_map(|x| x[key].as_str().map(str::to_owned))
            .collect()
    };

    let m = get("/metrics");
    assert_eq!(m.status, 200, "{}", m.body);
    for (id, _) in &t.vms {
        assert!(
            m.body.contains(&format!("vmscope_vm_info{{vm_id=\"{id}\"")),
            "{}",
            m.body
        );
    }
    assert!(
        m.body
            .contains(&format!("vmscope_project_vms{{project=\"{}\"}}", t.project))
            || m.body
                .contains(&format!("vmscope_user_vms{{user=\"{}\"}}", t.user))
    );
    for absent in ["vmscope_host_", "vmscope_collector_", "vmscope_http_"] {
        assert!(
            !m.body.contains(absent),
            "a tenant's /metrics has {absent}*: {}",
            m.body
        );
    }
    let vm_lines: Vec<&str> = m
        .body
        .lines()
        .filter(|l| l.starts_with("vmscope_vm_info{"))
        .collect();
    assert_eq!(vm_lines.len(), t.vms.len(), "{vm_lines:?}");

    let vms: Value = serde_json::from_str(&get("/api/v1/vms").body).unwrap();
    let mut listed = ids_in(&vms["vms"], "id");
    listed.sort();
    let mut want: Vec<String> = own_ids.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(listed, want, "/api/v1/vms lists exactly the tenant's VMs");

    // The history: exactly its VMs (each has had ticks by now), no host.
    let history: Value = serde_json::from_str(&get("/api/v1/history").body).unwrap();
    let mut listed = ids_in(&history["vms"], "id");
    listed.sort();
    assert_eq!(
        listed, want,
        "/api/v1/history lists exactly the tenant's VMs"
    );
    assert!(
        history["host"].is_null(),
        "a tenant sees no host history: {history}"
    );
    // The status page tells its script what this caller may see.
    let page = get("/").body;
    assert!(page.contains("data-viewer=\"tenant\""), "{page}");

    let owners: Value = serde_json::from_str(&get("/api/v1/owners").body).unwrap();
    let keys = ids_in(&owners["owners"], "key");
    assert!(
        keys == [t.project.clone()] || keys == [t.user.clone()],
        "/api/v1/owners lists only the tenant's own owner: {keys:?}"
    );

    let usage: Value = serde_json::from_str(&get("/api/v1/usage?by=vm").body).unwrap();
    let keys = ids_in(&usage["usage"], "key");
    assert!(!keys.is_empty(), "the tenant's usage rows: {usage}");
    assert!(
        keys.iter().all(|k| own_ids.contains(&k.as_str())),
        "usage by=vm: {keys:?}"
    );

    let alerts: Value = serde_json::from_str(&get("/api/v1/alerts").body).unwrap();
    let scopes = ids_in(&alerts["active"], "scope");
    assert!(!scopes.is_empty(), "the tenant's alerts: {alerts}");
    for s in &scopes {
        let ok = own_ids.iter().any(|id| *s == format!("vm:{id}"))
            || *s == format!("owner:project:{}", t.project)
            || *s == format!("owner:user:{}", t.user);
        assert!(ok, "a tenant sees the alert {s}: {alerts}");
    }
}
