//! The tenant query proxy against a real Prometheus that scrapes a real
//! `vmscope serve` watching real QEMU VMs of two tenants (projects `acme-*`
//! and `beta-*`, from a mapping file), with bearer tokens from a web config:
//! every endpoint (GET and POST), every error path (invalid PromQL, missing
//! `query`, a conflicting matcher, a token of both kinds, anonymous callers,
//! a stopped Prometheus, a fake upstream that is slow or answers HTML), the
//! Grafana endpoints, and the scoping differential test: 10 000 generated
//! queries run through the proxy as tenant `acme` must answer exactly what
//! Prometheus answers directly for the same query with the tenant's matcher
//! written in by the generator (evaluated at one fixed time, so the two
//! read the same samples), and no answer may hold anything of `beta`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::lab::{Agent, Firmware, QemuVm, Roms, VmSpec};
use crate::support::prom::Prometheus;
use crate::support::{free_port, lab_available, poll_until, unique_name, unique_uuid};

const ADMIN: &str = "vms_proxy_test_admin_token_0123456789";
const ACME: &str = "vms_proxy_test_acme_token_0123456789";
const BETA: &str = "vms_proxy_test_beta_token_0123456789";
const MIXED: &str = "vms_proxy_test_mixed_token_0123456789";
const JWT_KEY: &str = "proxy-test-jwt-key-0123456789abcdef0123";

/// Number of generated queries of the differential test.
const GENERATED: usize = 10_000;

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(15)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn read(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Resp {
    let mut r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap();
    Resp { status, body }
}

fn get(c: &ureq::Agent, url: &str, query: &[(&str, &str)], token: Option<&str>) -> Resp {
    let mut req = c.get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    read(req.call(), url)
}

fn post(c: &ureq::Agent, url: &str, form: &[(&str, &str)], token: Option<&str>) -> Resp {
    let mut req = c.post(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    read(req.send_form(form.iter().copied()), url)
}

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

fn sha(t: &str) -> String {
    vmscope::access::token::sha256_hex(t)
}

/// Label sets of a `data.result` (vector or matrix).
fn result_labels(v: &Value) -> Vec<serde_json::Map<String, Value>> {
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["metric"].as_object().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// The two tenants' identities, to find one in the other's answers.
struct Tenant {
    project: String,
    vm_names: Vec<String>,
    vm_ids: Vec<String>,
    users: Vec<String>,
}

impl Tenant {
    fn strings(&self) -> Vec<&str> {
        std::iter::once(self.project.as_str())
            .chain(self.vm_names.iter().map(String::as_str))
            .chain(self.vm_ids.iter().map(String::as_str))
            .chain(self.users.iter().map(String::as_str))
            .collect()
    }

    /// Any label value of `body` (a JSON answer) naming this tenant.
    fn found_in(&self, body: &str) -> Option<String> {
        let v: Value = serde_json::from_str(body).ok()?;
        let mine = self.strings();
        let hit = |s: &str| mine.iter().any(|x| s.contains(x));
        let in_map = |m: &serde_json::Map<String, Value>| {
            m.iter()
                .find_map(|(k, val)| val.as_str().filter(|s| hit(s)).map(|s| format!("{k}={s}")))
        };
        if let Some(f) = result_labels(&v).iter().find_map(in_map) {
            return Some(f);
        }
        // /series answers label sets; /labels and /label/x/values strings.
        v["data"].as_array()?.iter().find_map(|item| match item {
            Value::Object(m) => in_map(m),
            Value::String(s) if hit(s) => Some(s.clone()),
            _ => None,
        })
    }
}

#[test]
fn tenant_queries_through_the_proxy_see_only_their_own_vms() {
    if !lab_available("proxy") {
        return;
    }
    let roms = Roms::new();
    let vms: Vec<QemuVm> = ["px-a1", "px-a2", "px-b1", "px-b2"]
        .iter()
        .map(|r| QemuVm::start(&roms, spec(r), None))
        .collect();
    let tag = format!("{}-{}", std::process::id(), crate::support::next_serial());
    let (acme_p, beta_p) = (format!("acme-{tag}"), format!("beta-{tag}"));
    let tenant = |p: &str, idx: [usize; 2], users: [&str; 2]| Tenant {
        project: p.to_owned(),
        vm_names: idx.iter().map(|i| vms[*i].spec.name.clone()).collect(),
        vm_ids: idx.iter().map(|i| vms[*i].spec.uuid.clone()).collect(),
        users: users.iter().map(|u| format!("{u}-{tag}")).collect(),
    };
    let acme = tenant(&acme_p, [0, 1], ["u-ann", "u-amy"]);
    let beta = tenant(&beta_p, [2, 3], ["u-bob", "u-bea"]);

    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("owners.toml");
    let mut toml = String::new();
    for (t, i) in [(&acme, 0), (&acme, 1), (&beta, 0), (&beta, 1)] {
        toml.push_str(&format!(
            "[[vm]]\nname = {:?}\nuser_id = {:?}\nproject_id = {:?}\n",
            t.vm_names[i], t.users[i], t.project
        ));
    }
    std::fs::write(&mapping, toml).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "vmscope:\n  tokens:\n    - {{name: ops, sha256: {}, scope: admin}}\n    - {{name: portal-acme, sha256: {}, scope: project:{acme_p}}}\n    - {{name: portal-beta, sha256: {}, scope: project:{beta_p}}}\n    - {{name: mixed, sha256: {}, scope: [user:{}, project:{acme_p}]}}\n  anonymous:\n    scrape: allow\n    api: allow\n",
            sha(ADMIN),
            sha(ACME),
            sha(BETA),
            sha(MIXED),
            acme.users[0],
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let agent = Agent::start_with(
        1,
        &format!(
            "[owners.file]\npath = {mapping:?}\ninterval = \"200ms\"\n\
             [http]\nweb_config_file = {web:?}\n\
             [proxy]\nprometheus_url = \"http://127.0.0.1:{prom_port}\"\nowner_labels = true\n\
             [proxy.grafana]\njwt_key = {JWT_KEY:?}\njwt_ttl = \"2m\"\n"
        ),
    );
    let target = agent.base.trim_start_matches("http://").to_owned();
    let prom = Prometheus::start_jobs_at(Some(prom_port), &[("vmscope", &target, "")]);
    let c = client();
    let url = |p: &str| agent.url(p);

    // Every VM's per-VM series carry the owner labels, in Prometheus.
    let both = format!("{acme_p}|{beta_p}");
    let sel = format!(r#"vmscope_vm_cpu_seconds_total{{project=~"{both}"}}"#);
    poll_until(Duration::from_secs(40), Duration::from_millis(500), || {
        (prom.query(&format!("count({sel})")).first()?["value"][1] == "8").then_some(())
    })
    .unwrap_or_else(|| panic!("4 VMs x 2 modes not scraped: {}", prom.targets()));
    // A few more scrapes, so that ranges and subqueries have points.
    std::thread::sleep(Duration::from_secs(4));

    let q = "/api/v1/prometheus/query";
    // A tenant's instant query: its own series only, all of them.
    let r = get(
        &c,
        &url(q),
        &[("query", "vmscope_vm_cpu_seconds_total")],
        Some(ACME),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = result_labels(&r.json());
    assert_eq!(got.len(), 4, "{}", r.body);
    for m in &got {
        assert_eq!(m["project"], acme_p.as_str(), "{m:?}");
        assert!(
            acme.vm_names
                .contains(&m["vm_name"].as_str().unwrap().to_owned())
        );
    }
    // The admin's is unchanged: both tenants (and any other VM on the host).
    let r = get(&c, &url(q), &[("query", &sel)], Some(ADMIN));
    assert_eq!(result_labels(&r.json()).len(), 8, "{}", r.body);
    // POST form, an aggregation, and the other tenant.
    let r = post(
        &c,
        &url(q),
        &[("query", "count(vmscope_vm_info)"), ("stats", "all")],
        Some(BETA),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["result"][0]["value"][1], "2", "{}", r.body);
    // A range query (GET and POST).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (start, end) = ((now - 5).to_string(), now.to_string());
    for r in [
        get(
            &c,
            &url("/api/v1/prometheus/query_range"),
            &[
                ("query", "vmscope_vm_memory_rss_bytes"),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
            Some(ACME),
        ),
        post(
            &c,
            &url("/api/v1/prometheus/query_range"),
            &[
                ("query", "vmscope_vm_memory_rss_bytes"),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
            Some(ACME),
        ),
    ] {
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["data"]["resultType"], "matrix");
        assert_eq!(result_labels(&v).len(), 2, "{}", r.body);
        assert_eq!(beta.found_in(&r.body), None);
    }
    // Series, labels, label values: the tenant's only; a match[] added.
    let r = get(
        &c,
        &url("/api/v1/prometheus/series"),
        &[("match[]", "vmscope_vm_info")],
        Some(ACME),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2, "{}", r.body);
    assert_eq!(beta.found_in(&r.body), None, "{}", r.body);
    let r = post(&c, &url("/api/v1/prometheus/labels"), &[], Some(ACME));
    assert_eq!(r.status, 200, "{}", r.body);
    let labels: BTreeSet<String> = serde_json::from_value(r.json()["data"].clone()).unwrap();
    assert!(
        labels.contains("project") && labels.contains("vm_id"),
        "{labels:?}"
    );
    let r = get(
        &c,
        &url("/api/v1/prometheus/label/vm_name/values"),
        &[],
        Some(ACME),
    );
    let names: BTreeSet<String> = serde_json::from_value(r.json()["data"].clone()).unwrap();
    assert_eq!(names, acme.vm_names.iter().cloned().collect(), "{}", r.body);
    let r = get(
        &c,
        &url("/api/v1/prometheus/label/project/values"),
        &[],
        Some(BETA),
    );
    assert_eq!(r.json()["data"], serde_json::json!([beta_p]), "{}", r.body);
    // Host-level series carry no owner: invisible to tenants.
    let r = get(&c, &url(q), &[("query", "vmscope_build_info")], Some(ACME));
    assert_eq!(result_labels(&r.json()).len(), 0, "{}", r.body);
    // Label-free queries are answered (Grafana's data-source check).
    let r = get(&c, &url(q), &[("query", "1+1")], Some(ACME));
    assert_eq!(r.json()["data"]["result"][1], "2", "{}", r.body);
    // The dual mode of /metrics: a query for the admin, the scrape without.
    let r = get(
        &c,
        &url("/metrics"),
        &[("query", &format!("count({sel})"))],
        Some(ADMIN),
    );
    assert_eq!(r.json()["data"]["result"][0]["value"][1], "8", "{}", r.body);
    let r = get(
        &c,
        &url("/metrics"),
        &[
            ("query", "up"),
            ("start", &start),
            ("end", &end),
            ("step", "1"),
        ],
        Some(ADMIN),
    );
    assert_eq!(r.json()["data"]["resultType"], "matrix", "{}", r.body);
    let r = get(&c, &url("/metrics"), &[], Some(ADMIN));
    assert!(
        r.body
            .contains("# TYPE vmscope_vm_cpu_seconds_total counter")
    );
    // A tenant's /metrics?query= is scoped, or refused while /metrics does
    // not scope by tenant (crate::api ROUTES): never another tenant's data.
    let r = get(
        &c,
        &url("/metrics"),
        &[("query", "vmscope_vm_info")],
        Some(ACME),
    );
    assert!(r.status == 403 || r.status == 200, "{}", r.body);
    assert_eq!(beta.found_in(&r.body), None, "{}", r.body);

    // Errors: each a 400 JSON body saying what to fix.
    for (params, token, status, says) in [
        (vec![("time", "1")], ACME, 400, "query: required"),
        (
            vec![("query", "sum(")],
            ACME,
            400,
            "query: invalid PromQL: ",
        ),
        (
            vec![("query", &*format!(r#"up{{project="{beta_p}"}}"#))],
            ACME,
            400,
            "outside this token's scope",
        ),
        (
            vec![("query", "up")],
            MIXED,
            400,
            "both user and project scopes",
        ),
        (vec![("query", "up")], "", 401, "credentials required"),
    ] {
        let token = (!token.is_empty()).then_some(token);
        let r = get(&c, &url(q), &params, token);
        assert_eq!(r.status, status, "{params:?}: {}", r.body);
        let v = r.json();
        assert_eq!(v["status"], "error");
        assert!(
            v["error"].as_str().unwrap().contains(says),
            "{params:?}: {v}"
        );
    }
    // An admin's invalid query gets Prometheus' own 400 and message.
    let r = get(&c, &url(q), &[("query", "sum(")], Some(ADMIN));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["errorType"], "bad_data");
    let r = get(
        &c,
        &url("/api/v1/prometheus/label/a-b/values"),
        &[],
        Some(ACME),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get(&c, &url("/api/v1/prometheus/series"), &[], Some(ACME));
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("match[]:"),
        "{}",
        r.body
    );

    // Grafana: the tenant's variable comes from its token, with a JWT.
    let r = get(
        &c,
        &url("/grafana/panel_iframe_src"),
        &[
            ("uid", "vm-overview"),
            ("panelId", "2"),
            ("var-vm", "a|b c"),
        ],
        Some(ACME),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let src = r.json()["src"].as_str().unwrap().to_owned();
    assert!(
        src.starts_with("/grafana/d-solo/vm-overview/view?orgId=1&panelId=2&from=now-1h&to=now&refresh=10s&theme=dark&kiosk&var-vm=a%7Cb%20c&var-project=acme-"),
        "{src}"
    );
    assert!(src.contains("&auth_token="), "{src}");
    let r = get(
        &c,
        &url("/grafana/panel_iframe_src"),
        &[("uid", "u"), ("panelId", "2"), ("var-project", &beta_p)],
        Some(ACME),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get(
        &c,
        &url("/grafana/panel_iframe_src"),
        &[("uid", "u")],
        Some(ADMIN),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("panelId"), "{}", r.body);
    let r = get(&c, &url("/grafana/panel.png"), &[], Some(ACME));
    assert_eq!(r.status, 410, "{}", r.body);
    assert!(r.body.contains("panel_iframe_src"), "{}", r.body);

    differential(&prom, &agent, &acme, &beta);

    // Prometheus stopped: 502, saying where it looked.
    drop(prom);
    let r = get(&c, &url(q), &[("query", "up")], Some(ACME));
    assert_eq!(r.status, 502, "{}", r.body);
    let v = r.json();
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains(&prom_port.to_string()),
        "{v}"
    );
    drop(vms);
}

/// A fake upstream (a socket this test serves): slow, HTML, or JSON.
fn fake_upstream() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for stream in listener.incoming().take(3) {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body);
                let (ctype, answer) = if body.contains("slow") {
                    std::thread::sleep(Duration::from_secs(3));
                    ("application/json", r#"{"status":"success","data":{}}"#)
                } else {
                    ("text/html", "<html><body>Sign in</body></html>")
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    (port, h)
}

#[test]
fn a_slow_or_html_upstream_is_a_504_or_a_502() {
    let (port, _h) = fake_upstream();
    let agent = Agent::start_with(
        1,
        &format!(
            "[proxy]\nprometheus_url = \"http://127.0.0.1:{port}/prefix\"\ntimeout = \"1s\"\n"
        ),
    );
    let c = client();
    let q = agent.url("/api/v1/prometheus/query");
    let t0 = Instant::now();
    let r = get(&c, &q, &[("query", "slow")], None);
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let v = r.json();
    assert_eq!(v["errorType"], "timeout");
    assert!(
        v["error"].as_str().unwrap().contains("[proxy] timeout"),
        "{v}"
    );
    let r = post(&c, &q, &[("query", "html")], None);
    assert_eq!(r.status, 502, "{}", r.body);
    let v = r.json();
    assert!(v["error"].as_str().unwrap().contains("not JSON"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("<html>"), "{v}");
}

// ---- the differential test ----

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// One generated query: as sent through the proxy, as scoped by the
/// generator (sent to Prometheus directly), and whether the proxy must
/// refuse it (a matcher conflicting with the tenant).
struct Generated {
    plain: String,
    scoped: String,
    conflict: bool,
}

struct Gen<'a> {
    rng: Rng,
    tenant: &'a str,
    other: &'a str,
    conflict: bool,
}

/// VM families (weighted: most selectors should select something) and
/// two host-level ones that tenants never see.
const METRICS: &[&str] = &[
    "vmscope_vm_cpu_seconds_total",
    "vmscope_vm_cpu_seconds_total",
    "vmscope_vm_memory_rss_bytes",
    "vmscope_vm_memory_rss_bytes",
    "vmscope_vm_info",
    "vmscope_vm_vcpus",
    "vmscope_vm_state",
    "vmscope_vm_collect_success",
    "vmscope_build_info",
    "up",
];

impl Gen<'_> {
    /// A selector `(plain, scoped)`.
    fn selector(&mut self) -> (String, String) {
        let mut ms: Vec<String> = Vec::new();
        let name = self.rng.pick(METRICS).to_owned();
        let by_name_matcher = self.rng.below(5) == 0;
        if by_name_matcher {
            ms.push(
                self.rng
                    .pick(&[
                        r#"__name__=~"vmscope_vm_(cpu|memory).*""#,
                        r#"__name__="vmscope_vm_info""#,
                        r#"__name__=~"vmscope_vm_.+""#,
                    ])
                    .to_owned(),
            );
        }
        for _ in 0..self.rng.below(3) {
            let m = self.rng.pick(&[
                r#"vm_name=~".+""#,
                r#"vm_name!="""#,
                r#"mode!~"sys.*""#,
                r#"vm_id!="nothing""#,
                r#"job="vmscope""#,
                r#"user!~"u-bob.*""#,
                r#"instance=~".+""#,
                r#"mode="user""#,
            ]);
            // One matcher per label: the proxy prints matchers sorted, and
            // absent() keeps a label only when its `=` matcher comes last
            // (Prometheus' createLabelsForAbsentFunction): two matchers on
            // one label would compare an order, not the scoping.
            let label = m.split(['=', '!']).next().unwrap_or_default();
            if !ms.iter().any(|x| x.split(['=', '!']).next() == Some(label)) {
                ms.push(m.to_owned());
            }
        }
        let tenant = format!(r#"project="{}""#, self.tenant);
        let mut scoped = ms.clone();
        match self.rng.below(40) {
            0 => {
                ms.push(format!(r#"project="{}""#, self.other));
                self.conflict = true;
            }
            1 => {
                // A narrowing matcher on the tenant label is kept; the
                // tenant's goes before it, as the proxy prints them (the
                // order decides which labels absent() keeps).
                let narrow = format!(r#"project=~"{}|nobody""#, self.tenant);
                ms.push(narrow.clone());
                scoped.push(tenant.clone());
                scoped.push(narrow);
            }
            _ => {}
        }
        if !scoped.contains(&tenant) {
            scoped.push(tenant);
        }
        let head = if by_name_matcher { String::new() } else { name };
        let plain = format!("{head}{{{}}}", ms.join(","));
        let scoped = format!("{head}{{{}}}", scoped.join(","));
        (plain, scoped)
    }

    /// A range-vector argument `(plain, scoped)`.
    fn range(&mut self, depth: u32) -> (String, String) {
        let r = self.rng.pick(&["[30s]", "[1m]", "[2m]"]);
        if depth > 0 && self.rng.below(4) == 0 {
            let (p, s) = self.expr(depth - 1);
            let sub = self.rng.pick(&["[1m:5s]", "[30s:2s]"]);
            (format!("({p}){sub}"), format!("({s}){sub}"))
        } else {
            let (p, s) = self.selector();
            (format!("{p}{r}"), format!("{s}{r}"))
        }
    }

    fn expr(&mut self, depth: u32) -> (String, String) {
        let leaf = depth == 0 || self.rng.below(4) == 0;
        if leaf {
            let (p, s) = self.selector();
            return match self.rng.below(4) {
                0 => (format!("{p} offset 10s"), format!("{s} offset 10s")),
                _ => (p, s),
            };
        }
        let d = depth - 1;
        match self.rng.below(11) {
            0 => {
                let f = self.rng.pick(&[
                    "rate",
                    "irate",
                    "increase",
                    "max_over_time",
                    "count_over_time",
                    "changes",
                ]);
                let (p, s) = self.range(d);
                (format!("{f}({p})"), format!("{f}({s})"))
            }
            1 | 2 => {
                let a = self
                    .rng
                    .pick(&["sum", "max", "min", "count", "avg", "group"]);
                let by = self.rng.pick(&[
                    "",
                    " by (vm_name)",
                    " by (project)",
                    " without (mode)",
                    " by (__name__)",
                ]);
                let (p, s) = self.expr(d);
                (format!("{a}{by} ({p})"), format!("{a}{by} ({s})"))
            }
            3 => {
                let (p, s) = self.expr(d);
                let k = self
                    .rng
                    .pick(&["topk(1, ", "bottomk(2, ", "quantile(0.5, "]);
                (format!("{k}{p})"), format!("{k}{s})"))
            }
            4 | 5 => {
                let op = self
                    .rng
                    .pick(&["+", "-", "*", "/", ">", "<=", "and", "or", "unless"]);
                let m = self.rng.pick(&["", " on (vm_id)", " ignoring (mode)"]);
                let (lp, ls) = self.expr(d);
                let (rp, rs) = self.expr(d);
                (
                    format!("({lp}) {op}{m} ({rp})"),
                    format!("({ls}) {op}{m} ({rs})"),
                )
            }
            6 => {
                let (p, s) = self.expr(d);
                let n = self.rng.pick(&["2", "0", "1e3"]);
                let op = self.rng.pick(&["*", ">", "+", "!="]);
                (format!("({p}) {op} {n}"), format!("({s}) {op} {n}"))
            }
            7 => {
                let (p, s) = self.expr(d);
                let w = r#""dst", "$1", "vm_name", "(.*)""#;
                (
                    format!("label_replace({p}, {w})"),
                    format!("label_replace({s}, {w})"),
                )
            }
            8 => {
                let (p, s) = self.expr(d);
                let w = r#""dst", "-", "vm_id", "project""#;
                (
                    format!("label_join({p}, {w})"),
                    format!("label_join({s}, {w})"),
                )
            }
            9 => {
                let f = self.rng.pick(&["abs", "absent", "timestamp", "-", "sgn"]);
                let (p, s) = self.expr(d);
                (format!("{f}({p})"), format!("{f}({s})"))
            }
            _ => {
                let (p, s) = self.expr(d);
                (
                    format!("count_values(\"v\", {p})"),
                    format!("count_values(\"v\", {s})"),
                )
            }
        }
    }

    fn generate(&mut self) -> Generated {
        self.conflict = false;
        let (plain, scoped) = match self.rng.below(50) {
            // Label-free queries pass unchanged.
            0 => ("1 + 1".to_owned(), "1 + 1".to_owned()),
            1 => ("vector(1)".to_owned(), "vector(1)".to_owned()),
            n => self.expr(if n.is_multiple_of(3) { 3 } else { 2 }),
        };
        Generated {
            plain,
            scoped,
            conflict: self.conflict,
        }
    }
}

/// Everything of an answer but its warnings and infos (whose wording may
/// name the query text, which differs).
fn essence(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    let mut out = serde_json::Map::new();
    for k in ["status", "data", "errorType"] {
        if let Some(x) = v.get(k) {
            out.insert(k.to_owned(), x.clone());
        }
    }
    // Series order is not part of an instant vector's meaning.
    if let Some(a) = out
        .get_mut("data")
        .and_then(|d| d.get_mut("result"))
        .and_then(Value::as_array_mut)
    {
        a.sort_by_key(|s| s.to_string());
    }
    Value::Object(out)
}

fn differential(prom: &Prometheus, agent: &Agent, acme: &Tenant, beta: &Tenant) {
    let seed = 0x5eed_0000_u64 ^ u64::from(std::process::id());
    let mut gen_ = Gen {
        rng: Rng(seed | 1),
        tenant: &acme.project,
        other: &beta.project,
        conflict: false,
    };
    let queries: Vec<Generated> = (0..GENERATED).map(|_| gen_.generate()).collect();
    // One evaluation time in the past: both sides read the same samples
    // (2 s back: every scrape stamped earlier is stored by then; the first
    // scrape is at least 4 s older).
    let at = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 2.0)
        .to_string();
    let queries = Arc::new(queries);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let queries = Arc::clone(&queries);
            let next = Arc::clone(&next);
            let proxy = agent.url("/api/v1/prometheus/query");
            let direct = format!("{}/api/v1/query", prom.base);
            let at = at.clone();
            let beta_strings: Vec<String> = beta.strings().iter().map(|s| s.to_string()).collect();
            let beta = Tenant {
                project: beta_strings[0].clone(),
                vm_names: beta_strings[1..].to_vec(),
                vm_ids: Vec::new(),
                users: Vec::new(),
            };
            std::thread::spawn(move || {
                let c = client();
                let mut stats = (0usize, 0usize, 0usize); // (non-empty, refused, differs from unscoped)
                let mut failures = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(g) = queries.get(i) else { break };
                    let through = post(
                        &c,
                        &proxy,
                        &[("query", &g.plain), ("time", &at)],
                        Some(ACME),
                    );
                    if g.conflict {
                        if through.status != 400
                            || !through.body.contains("outside this token's scope")
                        {
                            failures.push(format!(
                                "#{i} {}: conflict not refused: {} {}",
                                g.plain, through.status, through.body
                            ));
                        }
                        stats.1 += 1;
                        continue;
                    }
                    if let Some(leak) = beta.found_in(&through.body) {
                        failures.push(format!("#{i} {}: LEAK {leak}", g.plain));
                    }
                    let want = post(&c, &direct, &[("query", &g.scoped), ("time", &at)], None);
                    if through.status != want.status
                        || essence(&through.body) != essence(&want.body)
                    {
                        failures.push(format!(
                            "#{i} {}\n  proxy  {} {}\n  direct {} {} ({})",
                            g.plain, through.status, through.body, want.status, want.body, g.scoped
                        ));
                    }
                    let v: Value = serde_json::from_str(&through.body).unwrap_or_default();
                    if v["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                    {
                        stats.0 += 1;
                    }
                    if i.is_multiple_of(10) {
                        let unscoped =
                            post(&c, &direct, &[("query", &g.plain), ("time", &at)], None);
                        if essence(&unscoped.body) != essence(&through.body) {
                            stats.2 += 1;
                        }
                    }
                }
                (stats, failures)
            })
        })
        .collect();
    let (mut non_empty, mut refused, mut differs) = (0, 0, 0);
    let mut failures = Vec::new();
    for t in threads {
        let ((a, b, c), f) = t.join().unwrap();
        non_empty += a;
        refused += b;
        differs += c;
        failures.extend(f);
    }
    eprintln!(
        "differential: {GENERATED} queries (seed {seed:#x}) in {:?}: {non_empty} non-empty answers, {refused} conflicts refused, {differs} of {} sampled differ from the unscoped answer",
        t0.elapsed(),
        GENERATED / 10
    );
    assert!(
        failures.is_empty(),
        "{} of {GENERATED} queries failed (seed {seed:#x}); first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The test means something: many answers hold series, some conflicts
    // were generated, and scoping changed a good share of the answers.
    assert!(non_empty > GENERATED / 10, "{non_empty}");
    assert!(refused > 50, "{refused}");
    assert!(differs > GENERATED / 100, "{differs}");
}
