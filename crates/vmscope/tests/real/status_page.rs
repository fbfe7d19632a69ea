//! The status page in a real headless Chromium: a real vmscope watching
//! real QEMU VMs (one busy, one idle, owned by two projects through a
//! mapping file), reached the way docs/status-page.md says to put it behind
//! a reverse proxy: under a path prefix (`/vmscope/`), through a proxy that
//! strips the prefix and adds the bearer token of the user it
//! authenticated (here: the admin's, or a tenant's).
//!
//! Checks what an operator would look at: the VMs' rows with sparklines
//! holding data, host gauges and graphs, a firing alert, sorting by
//! clicking a header (real mouse events), the VM page's graphs; that a
//! tenant sees only its VM and no host figures; that the browser logged no
//! error or exception; and that every request the page made went to the
//! proxy on loopback under the prefix.
//!
//! `VMSCOPE_SCREENSHOTS=<dir>` saves the screenshots of the run there
//! (docs/images/ holds the committed ones).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::chromium::{Browser, Tab};
use crate::support::lab::{Agent, Firmware, QemuVm, Roms, Tap, VmSpec, inject_frames};
use crate::support::{in_ci, lab_available, poll_until, unique_name, unique_uuid};

const ADMIN: &str = "vms_status_page_admin_token_0000000000001";
const TENANT: &str = "vms_status_page_tenant_token_000000000002";
const PREFIX: &str = "/vmscope";

/// A reverse proxy serving `upstream` under [`PREFIX`]: strips it, sets
/// `Authorization: Bearer <token>` (as an authenticating proxy would) and
/// records each path it forwarded. One request per connection.
struct PrefixProxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl PrefixProxy {
    fn start(upstream: String, token: &'static str) -> PrefixProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let upstream = upstream.clone();
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let _ = forward(conn, &upstream, token, &log);
                });
            }
        });
        PrefixProxy { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{PREFIX}{path}", self.port)
    }
}

fn forward(
    mut client: TcpStream,
    upstream: &str,
    token: &str,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(rest) = target.strip_prefix(PREFIX) else {
        client.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    let path = if rest.is_empty() { "/" } else { rest };
    log.lock().unwrap().push(path.to_owned());
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for l in lines.filter(|l| !l.is_empty()) {
        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        if !matches!(name.as_str(), "connection" | "authorization" | "keep-alive") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(out.as_bytes())?;
    std::io::copy(&mut up, &mut client)?;
    Ok(())
}

fn spec(role: &str, firmware: Firmware) -> VmSpec {
    VmSpec {
        name: unique_name(role),
        uuid: unique_uuid(),
        vcpus: 1,
        memory_mib: 64,
        firmware,
        process_name: None,
    }
}

/// The rows of our VMs in table order: `[id, [points of each sparkline]]`.
const ROWS_JS: &str = "JSON.stringify([...document.querySelectorAll('#vm-table tbody tr')].map(tr => \
    [tr.dataset.id, [...tr.querySelectorAll('svg.spark')].map(s => Number(s.dataset.points)), \
     [...tr.querySelectorAll('svg.spark polyline')].map(p => p.getAttribute('points').split(' ').length)]))";

fn rows(b: &mut Browser, tab: &Tab) -> Vec<(String, Vec<u64>, Vec<usize>)> {
    let v = b.eval(tab, ROWS_JS);
    let rows: Vec<Value> = serde_json::from_str(v.as_str().unwrap()).unwrap();
    rows.iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap())
                    .collect(),
                r[2].as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect()
}

/// The order of `ids` among the table's rows.
fn order(b: &mut Browser, tab: &Tab, ids: &[&str]) -> Vec<String> {
    rows(b, tab)
        .into_iter()
        .map(|r| r.0)
        .filter(|id| ids.contains(&id.as_str()))
        .collect()
}

fn save(b: &mut Browser, tab: &Tab, name: &str) {
    if let Ok(dir) = std::env::var("VMSCOPE_SCREENSHOTS") {
        let png = b.screenshot(tab);
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

#[test]
fn the_status_page_in_a_real_browser() {
    if !lab_available("status_page") {
        return;
    }
    let Some(mut browser) = Browser::start() else {
        assert!(
            !in_ci(),
            "status_page: chromium is missing (scripts/install-deps.sh installs it)"
        );
        eprintln!("status_page: skipped: chromium is missing (scripts/install-deps.sh)");
        return;
    };
    let roms = Roms::new();
    let tap = Tap::new();
    let busy = QemuVm::start(&roms, spec("page-busy", Firmware::Busy), Some(&tap));
    let idle = QemuVm::start(&roms, spec("page-idle", Firmware::Idle), None);
    let (busy_id, idle_id) = (busy.spec.uuid.clone(), idle.spec.uuid.clone());
    let tag = format!("{}-{}", std::process::id(), crate::support::next_serial());
    let (p_busy, p_idle) = (format!("p-red-{tag}"), format!("p-blue-{tag}"));

    let dir = tempfile::tempdir().unwrap();
    let mapping = format!(
        "[[vm]]\nname = {:?}\nproject_id = {p_busy:?}\nproject_name = \"Red\"\n\
         [[vm]]\nname = {:?}\nproject_id = {p_idle:?}\nproject_name = \"Blue\"\n",
        busy.spec.name, idle.spec.name
    );
    let mapping_path = dir.path().join("owners.toml");
    std::fs::write(&mapping_path, mapping).unwrap();
    let sha = vmscope::access::token::sha256_hex;
    let web = format!(
        "vmscope:\n  tokens:\n    - {{name: admin, sha256: {}, scope: admin}}\n    - {{name: blue, sha256: {}, scope: \"project:{p_idle}\"}}\n",
        sha(ADMIN),
        sha(TENANT),
    );
    let web_path = dir.path().join("web.yml");
    std::fs::write(&web_path, web).unwrap();
    let config = format!(
        r#"
[http]
web_config_file = {web_path:?}

[owners.file]
path = {mapping_path:?}
interval = "200ms"

[watchdog]
builtin_rules = false

[watchdog.rules.vm_busy]
metric = "vm_cpu_utilization_ratio"
threshold = 0.1
sustained = "1s"
"#
    );
    let agent = Agent::start_with(1, &config);
    let upstream = agent.url("").trim_start_matches("http://").to_owned();

    // Two points per VM (two 15 s steps) and the busy VM's alert firing,
    // as the admin's API says, before the browser looks.
    let admin_get = |path: &str| -> Value {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let r = http
            .get(&agent.url(path))
            .header("Authorization", &format!("Bearer {ADMIN}"))
            .call();
        r.ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    };
    poll_until(Duration::from_secs(60), Duration::from_millis(500), || {
        inject_frames(&tap, 20, 1000);
        let h = admin_get("/api/v1/history");
        let alerts = admin_get("/api/v1/alerts");
        let points = |id: &str| {
            h["vms"].as_array().and_then(|vms| {
                vms.iter()
                    .find(|v| v["id"] == id)
                    .map(|v| v["t"].as_array().map_or(0, Vec::len))
            })
        };
        let firing = alerts.to_string().contains(&format!("vm:{busy_id}"));
        (points(&busy_id)? >= 2 && points(&idle_id)? >= 2 && firing).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no history or alert after 60 s:\nhistory {:?}\nalerts {}\n{}",
            admin_get("/api/v1/history")["vms"].as_array().map(|v| v
                .iter()
                .filter(|v| v["id"] == busy_id.as_str() || v["id"] == idle_id.as_str())
                .cloned()
                .collect::<Vec<_>>()),
            admin_get("/api/v1/alerts"),
            agent.log()
        )
    });

    // ---- the admin, through the proxy ----
    let admin_proxy = PrefixProxy::start(upstream.clone(), ADMIN);
    let tab = browser.new_tab();
    browser.navigate(&tab, &admin_proxy.url("/"));
    let ours = [busy_id.as_str(), idle_id.as_str()];
    browser.wait_for(
        &tab,
        "both VMs' rows with sparklines",
        &format!(
            "(() => {{ const ids = {}; return ids.every(id => {{ const tr = document.querySelector(`#vm-table tr[data-id=\"${{id}}\"]`); \
             return tr && [...tr.querySelectorAll('svg.spark')].every(s => Number(s.dataset.points) >= 2); }}); }})()",
            serde_json::to_string(&ours).unwrap()
        ),
    );
    for (id, points, drawn) in rows(&mut browser, &tab)
        .into_iter()
        .filter(|r| ours.contains(&r.0.as_str()))
    {
        assert_eq!(points.len(), 3, "{id}: CPU, memory and network sparklines");
        assert!(points.iter().all(|&p| p >= 2), "{id}: {points:?}");
        // CPU, memory, network rx and tx: one polyline each, a vertex per point.
        assert_eq!(drawn.len(), 4, "{id}: {drawn:?}");
        assert!(drawn.iter().all(|&n| n >= 2), "{id}: {drawn:?}");
    }
    // Host gauges and graphs, the firing alert, the route index.
    let host = browser.eval(
        &tab,
        "[document.querySelectorAll('#gauges svg.gauge').length, \
          [...document.querySelectorAll('#host-graphs svg.graph')].map(s => Number(s.dataset.points)), \
          document.querySelector('#hostname').textContent, \
          [...document.querySelectorAll('#alerts-active tbody tr')].map(tr => tr.textContent).join('|'), \
          document.querySelectorAll('#routes li').length]",
    );
    assert!(host[0].as_u64().unwrap() >= 3, "gauges: {host}");
    let graphs = host[1].as_array().unwrap();
    assert_eq!(graphs.len(), 2, "{host}");
    assert!(graphs.iter().all(|p| p.as_u64().unwrap() >= 2), "{host}");
    assert!(!host[2].as_str().unwrap().is_empty(), "hostname: {host}");
    let alerts = host[3].as_str().unwrap();
    assert!(
        alerts.contains("vm_busy") && alerts.contains(&format!("vm:{busy_id}")),
        "alerts: {host}"
    );
    assert_eq!(
        host[4].as_u64().unwrap() as usize,
        vmscope::api::ROUTES.len(),
        "{host}"
    );
    save(&mut browser, &tab, "status-page.png");

    // Sorting: clicking "CPU cores" puts the busy VM first, clicking again last.
    browser.click(&tab, "#vm-table th[data-key=cpu]");
    browser.wait_for(&tab, "CPU sorted", "document.querySelector('#vm-table th[data-key=cpu]').getAttribute('aria-sort') === 'descending'");
    assert_eq!(
        order(&mut browser, &tab, &ours),
        [busy_id.clone(), idle_id.clone()]
    );
    browser.click(&tab, "#vm-table th[data-key=cpu]");
    browser.wait_for(&tab, "CPU sorted up", "document.querySelector('#vm-table th[data-key=cpu]').getAttribute('aria-sort') === 'ascending'");
    assert_eq!(
        order(&mut browser, &tab, &ours),
        [idle_id.clone(), busy_id.clone()]
    );
    // By owner: "Blue" before "Red".
    browser.click(&tab, "#vm-table th[data-key=owner]");
    browser.wait_for(&tab, "owner sorted", "document.querySelector('#vm-table th[data-key=owner]').getAttribute('aria-sort') === 'ascending'");
    assert_eq!(
        order(&mut browser, &tab, &ours),
        [idle_id.clone(), busy_id.clone()]
    );
    browser.click(&tab, "#vm-table th[data-key=owner]");
    browser.wait_for(&tab, "owner sorted down", "document.querySelector('#vm-table th[data-key=owner]').getAttribute('aria-sort') === 'descending'");
    assert_eq!(
        order(&mut browser, &tab, &ours),
        [busy_id.clone(), idle_id.clone()]
    );

    // The busy VM's page: its name is a link; four graphs with data.
    browser.click(&tab, &format!("#vm-table tr[data-id=\"{busy_id}\"] a"));
    let graphs = browser.wait_for(
        &tab,
        "the VM page's graphs",
        "(() => { const g = [...document.querySelectorAll('#vm-graphs svg.graph')]; \
         return !document.querySelector('#vm-page').hidden && g.length === 4 && g.every(s => Number(s.dataset.points) >= 2) \
         && [document.querySelector('#vm-title').textContent, location.hash, g.map(s => s.querySelector('polyline').getAttribute('points').split(' ').length)]; })()",
    );
    assert_eq!(graphs[0], busy.spec.name.as_str(), "{graphs}");
    assert_eq!(graphs[1], format!("#vm={busy_id}"), "{graphs}");
    assert!(browser.eval(&tab, "document.querySelector('#dashboard').hidden") == Value::Bool(true));
    save(&mut browser, &tab, "status-page-vm.png");
    // Back to the list.
    browser.click(&tab, "#vm-page a");
    browser.wait_for(
        &tab,
        "the list again",
        "!document.querySelector('#dashboard').hidden && document.querySelector('#vm-page').hidden",
    );

    // ---- a tenant (project Blue), through its own proxy ----
    let tenant_proxy = PrefixProxy::start(upstream, TENANT);
    let ttab = browser.new_tab();
    browser.navigate(&ttab, &tenant_proxy.url("/"));
    browser.wait_for(
        &ttab,
        "the tenant's row",
        "document.querySelectorAll('#vm-table tbody tr svg.spark[data-points]').length >= 3 && document.querySelector('#updated').textContent !== ''",
    );
    let trows = rows(&mut browser, &ttab);
    assert_eq!(trows.len(), 1, "a tenant sees its one VM: {trows:?}");
    assert_eq!(trows[0].0, idle_id);
    assert!(trows[0].1.iter().all(|&p| p >= 2), "{trows:?}");
    let t = browser.eval(
        &ttab,
        "[document.querySelector('#host-note').hidden, document.querySelectorAll('#gauges svg').length, \
          document.querySelectorAll('#host-graphs svg').length, document.body.innerText]",
    );
    assert_eq!(
        t[0], false,
        "the page says why there are no host figures: {t}"
    );
    assert_eq!(t[1], 0, "{t}");
    assert_eq!(t[2], 0, "{t}");
    let text = t[3].as_str().unwrap();
    for other in [
        busy.spec.name.as_str(),
        busy_id.as_str(),
        p_busy.as_str(),
        "Red",
    ] {
        assert!(
            !text.contains(other),
            "the tenant's page shows {other}: {text}"
        );
    }
    save(&mut browser, &ttab, "status-page-tenant.png");
    // Let the pages refresh once more (5 s) before reading the logs.
    std::thread::sleep(Duration::from_secs(6));
    browser.drain();

    // The error collection works: a control tab's error and exception are seen.
    let control = browser.new_tab();
    browser.eval(
        &control,
        "console.error('vmscope-probe'); setTimeout(() => { throw new Error('vmscope-throw'); }, 0); true",
    );
    std::thread::sleep(Duration::from_millis(500));
    browser.drain();
    assert!(
        browser
            .events_of(&control, "Runtime.consoleAPICalled")
            .any(|e| e.to_string().contains("vmscope-probe")),
        "console errors are not collected"
    );
    assert!(
        browser
            .events_of(&control, "Runtime.exceptionThrown")
            .any(|e| e.to_string().contains("vmscope-throw")),
        "exceptions are not collected"
    );

    // ---- nothing went wrong, nothing left loopback ----
    for tab in [&tab, &ttab] {
        let errors: Vec<&Value> = browser
            .events_of(tab, "Runtime.exceptionThrown")
            .chain(
                browser
                    .events_of(tab, "Runtime.consoleAPICalled")
                    .filter(|e| matches!(e["params"]["type"].as_str(), Some("error" | "assert"))),
            )
            .chain(
                browser
                    .events_of(tab, "Log.entryAdded")
                    .filter(|e| e["params"]["entry"]["level"] == "error"),
            )
            .collect();
        assert!(errors.is_empty(), "browser errors: {errors:#?}");
    }
    let mut requests = 0;
    for (tab, proxy) in [(&tab, &admin_proxy), (&ttab, &tenant_proxy)] {
        let base = proxy.url("/");
        for e in browser.events_of(tab, "Network.requestWillBeSent") {
            let url = e["params"]["request"]["url"].as_str().unwrap();
            requests += 1;
            assert!(
                url.starts_with(&base) || url.starts_with("data:"),
                "a request left the proxy's prefix on loopback: {url}"
            );
        }
    }
    assert!(requests >= 10, "only {requests} requests seen");
    let seen = admin_proxy.seen.lock().unwrap().clone();
    for want in [
        "/",
        "/api/v1/vms",
        "/api/v1/history",
        "/api/v1/host",
        "/api/v1/alerts?limit=10",
    ] {
        assert!(
            seen.iter().any(|p| p == want),
            "the page never asked for {want}: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|p| p.starts_with("/ui/app.js?v=")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| p.starts_with(&format!("/api/v1/vms/{busy_id}/history"))),
        "{seen:?}"
    );
    let tseen = tenant_proxy.seen.lock().unwrap().clone();
    assert!(
        !tseen.iter().any(|p| p.starts_with("/api/v1/host")),
        "a tenant's page asks for no host: {tseen:?}"
    );
    drop(browser);
    drop((busy, idle));
}
