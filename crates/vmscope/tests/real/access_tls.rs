//! TLS on the real binary, with certificates made here (rcgen): the
//! configured certificate is served and a verifying client (reqwest, which
//! trusts only the test CA) accepts it; an expired certificate and one for
//! another host name are refused by that client; client certificates are
//! required, optional or checked per `client_auth_type`; a plain-HTTP
//! client on the TLS port is closed and counted.

use crate::access::Agent;
use crate::support::metrics::Exposition;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const TOKEN: &str = "vms_real_tls_admin_token_0123456789";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// (certificate PEM, key PEM) for `names`, signed by `ca`; `expired`: valid
/// in 2019 only.
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2019, 12, 31);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// GET over HTTPS trusting only `ca_pem`, with an optional client identity
/// (certificate and key PEM) and bearer token: the status, or the error
/// chain as text.
fn fetch(
    url: &str,
    ca_pem: &str,
    identity: Option<&(String, String)>,
    bearer: Option<&str>,
) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()]);
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        let client = b.build().map_err(|e| chain(&e))?;
        let mut req = client.get(url);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| chain(&e))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| chain(&e))?;
        Ok((status, body))
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn tls_agent(
    cert: &(String, String),
    extra_tls: &str,
    extra_files: &[(&str, &str)],
    rest: &str,
) -> Agent {
    let mut files = vec![
        ("server.crt", cert.0.as_str()),
        ("server.key", cert.1.as_str()),
    ];
    files.extend_from_slice(extra_files);
    let web = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra_tls}{rest}"
    );
    Agent::start_with(&files, &web)
}

#[test]
fn tls_serves_the_configured_certificate_and_verifying_clients_refuse_bad_ones() {
    let ca = make_ca("vmscope test CA");
    let good = leaf(&ca, &["127.0.0.1", "localhost"], false);
    let tokens = format!(
        "vmscope:\n  tokens:\n    - {{name: ops, sha256: {}, scope: admin}}\n",
        vmscope::access::token::sha256_hex(TOKEN)
    );
    let agent = tls_agent(&good, "", &[], &tokens);
    let url = format!("https://{}/metrics", agent.addr);
    let (status, body) = fetch(&url, &ca.pem, None, Some(TOKEN)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("vmscope_build_info"));
    // Over TLS the credentials are still required.
    let (status, _) = fetch(&url, &ca.pem, None, None).unwrap();
    assert_eq!(status, 401);
    // A client that does not trust the CA refuses the certificate.
    let other = make_ca("another CA");
    let e = fetch(&url, &other.pem, None, Some(TOKEN)).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    // Plain HTTP on the TLS port: no answer, the connection is closed.
    assert!(
        crate::support::http::get(&format!("http://{}/metrics", agent.addr))
            .map(|r| r.status != 200)
            .unwrap_or(true)
    );
    let (_, text) = fetch(&url, &ca.pem, None, Some(TOKEN)).unwrap();
    let m = Exposition::parse(&text).unwrap();
    let closed = m
        .value(
            "vmscope_http_connections_closed_total",
            &[("reason", "tls_handshake")],
        )
        .unwrap();
    assert!(
        closed >= 1.0,
        "the plain-HTTP client and the distrusting one: {closed}"
    );
    drop(agent);

    let expired = leaf(&ca, &["127.0.0.1"], true);
    let agent = tls_agent(&expired, "", &[], "");
    let e = fetch(
        &format!("https://{}/metrics", agent.addr),
        &ca.pem,
        None,
        None,
    )
    .unwrap_err();
    assert!(e.to_lowercase().contains("expired"), "{e}");
    drop(agent);

    let wrong_host = leaf(&ca, &["wrong.example"], false);
    let agent = tls_agent(&wrong_host, "", &[], "");
    let e = fetch(
        &format!("https://{}/metrics", agent.addr),
        &ca.pem,
        None,
        None,
    )
    .unwrap_err();
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for"),
        "{e}"
    );
}

#[test]
fn client_certificates_are_required_optional_or_checked_per_client_auth_type() {
    let ca_srv = make_ca("server CA");
    let server = leaf(&ca_srv, &["127.0.0.1"], false);
    let clients = make_ca("clients CA");
    let good_client = leaf(&clients, &["scraper.example"], false);
    let stranger = leaf(&make_ca("stranger CA"), &["scraper.example"], false);
    let files = [("clients.crt", clients.pem.as_str())];
    let ok = |agent: &Agent, id: Option<&(String, String)>| match fetch(
        &format!("https://{}/healthz", agent.addr),
        &ca_srv.pem,
        id,
        None,
    ) {
        Ok((s, _)) => s == 200 || s == 503,
        Err(_) => false,
    };
    for (auth, with_ca, none, good, other) in [
        ("RequireAndVerifyClientCert", true, false, true, false),
        ("VerifyClientCertIfGiven", true, true, true, false),
        ("RequireAnyClientCert", false, false, true, true),
        ("RequestClientCert", false, true, true, true),
        ("NoClientCert", false, true, true, true),
    ] {
        let extra = if with_ca {
            format!("  client_auth_type: {auth}\n  client_ca_file: clients.crt\n")
        } else {
            format!("  client_auth_type: {auth}\n")
        };
        let agent = tls_agent(&server, &extra, &files, "");
        assert_eq!(
            ok(&agent, None),
            none,
            "{auth} without a client certificate"
        );
        assert_eq!(
            ok(&agent, Some(&good_client)),
            good,
            "{auth} with a good one"
        );
        assert_eq!(
            ok(&agent, Some(&stranger)),
            other,
            "{auth} with a stranger's"
        );
    }
}

#[test]
fn prometheus_scrapes_over_tls_with_a_bearer_token() {
    let ca = make_ca("vmscope test CA");
    let server = leaf(&ca, &["127.0.0.1"], false);
    let tokens = format!(
        "vmscope:\n  tokens:\n    - {{name: prometheus, sha256: {}, scope: admin}}\n",
        vmscope::access::token::sha256_hex(TOKEN)
    );
    let agent = tls_agent(&server, "", &[], &tokens);
    let ca_file = agent.dir.path().join("ca-for-prometheus.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n    authorization:\n      credentials: {TOKEN}\n",
        ca_file.display()
    );
    let prom = crate::support::prom::Prometheus::start_jobs(&[("tls", &agent.addr, &job)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let built = prom.query("vmscope_build_info{job=\"tls\"}");
        if !built.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "targets: {}\nagent log: {}",
            prom.targets(),
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Waits until the agent's log has `n` lines containing `what`.
fn wait_log(agent: &Agent, what: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.log().matches(what).count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} x{n}: {}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn certificates_and_tokens_reload_without_dropping_connections_and_a_bad_file_keeps_the_old() {
    let ca1 = make_ca("first CA");
    let ca2 = make_ca("second CA");
    let first = leaf(&ca1, &["127.0.0.1"], false);
    let second = leaf(&ca2, &["127.0.0.1"], false);
    let t1 = "vms_reload_first_token_0123456789";
    let t2 = "vms_reload_second_token_0123456789";
    let web = |t: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nvmscope:\n  tokens:\n    - {{name: ops, sha256: {}, scope: admin}}\n",
            vmscope::access::token::sha256_hex(t)
        )
    };
    let agent = Agent::start_with(
        &[("server.crt", &first.0), ("server.key", &first.1)],
        &web(t1),
    );
    let url = format!("https://{}/metrics", agent.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One client trusting only the first CA, its connection kept alive.
    let kept = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .tls_certs_only([reqwest::Certificate::from_pem(ca1.pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    // The body is read to its end: only then does the connection go back
    // to the pool (an unread body closes it).
    let get = |c: &reqwest::Client, token: &str| {
        rt.block_on(async {
            let r = c.get(&url).bearer_auth(token).send().await?;
            let status = r.status().as_u16();
            r.bytes().await?;
            Ok::<u16, reqwest::Error>(status)
        })
    };
    assert_eq!(get(&kept, t1).unwrap(), 200);

    // New certificate (another CA) and a new token, then SIGHUP.
    let dir = agent.dir.path();
    std::fs::write(dir.join("server.crt"), &second.0).unwrap();
    std::fs::write(dir.join("server.key"), &second.1).unwrap();
    std::fs::write(dir.join("web.yml"), web(t2)).unwrap();
    agent.hangup();
    wait_log(&agent, "web config reloaded", 1);

    // The kept-alive connection was not dropped: it still works (a new
    // connection from this client would fail, it does not trust the new
    // CA) and it now answers to the new token only.
    assert_eq!(get(&kept, t2).unwrap(), 200, "the open connection survived");
    assert_eq!(get(&kept, t1).unwrap(), 401, "the old token is gone");
    // New handshakes see the new certificate.
    let (s, _) = fetch(&url, &ca2.pem, None, Some(t2)).unwrap();
    assert_eq!(s, 200);
    assert!(fetch(&url, &ca1.pem, None, Some(t2)).is_err());

    // A broken file: the old config keeps serving and the metric says 0.
    std::fs::write(dir.join("web.yml"), "tls_server_config:\n  cert_filse: x\n").unwrap();
    agent.hangup();
    wait_log(&agent, "reloading the web config failed", 1);
    let (s, text) = fetch(&url, &ca2.pem, None, Some(t2)).unwrap();
    assert_eq!(s, 200);
    let m = Exposition::parse(&text).unwrap();
    assert_eq!(
        m.value("vmscope_web_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert!(
        m.value(
            "vmscope_web_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(agent.log().contains("cert_filse"), "the log says why");

    // Fixed again, picked up by the poll (no signal) within its 5 s.
    std::fs::write(dir.join("web.yml"), web(t1)).unwrap();
    wait_log(&agent, "web config reloaded", 2);
    let (s, text) = fetch(&url, &ca2.pem, None, Some(t1)).unwrap();
    assert_eq!(s, 200);
    let m = Exposition::parse(&text).unwrap();
    assert_eq!(
        m.value("vmscope_web_config_last_reload_successful", &[]),
        Some(1.0)
    );
    for secret in [t1, t2] {
        assert!(!agent.log().contains(secret));
    }
}
