//! The web configuration file and the access decision, on literal inputs:
//! the exporter-toolkit's own files load (or fail as they should, naming the
//! key), vmscope's extension is checked key by key, and the gate's order
//! (allow-list, rate limit, credentials, token limit, scope) holds.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use vmscope::access::{
    Access, AuthResult, ClientAuth, Credentials, Curve, Decision, Gate, Group, Principal, Scope,
    TlsVersion, Verdict, WebConfig,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/web")
}

/// A directory with every fixture and a generated `server.crt`/`server.key`,
/// as the toolkit's tests have next to their files.
fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    dir
}

fn load(dir: &Path, name: &str) -> Result<WebConfig, String> {
    WebConfig::load(&dir.join(name)).map_err(|e| e.to_string())
}

fn parse(text: &str) -> Result<WebConfig, String> {
    WebConfig::parse(text, Path::new("/nonexistent"))
}

#[test]
fn the_toolkits_valid_files_load_and_its_bad_ones_fail_naming_the_key() {
    let dir = fixture_dir();
    let d = dir.path();

    let c = load(d, "toolkit_web-config.yml").unwrap();
    let tls = c.tls.clone().unwrap();
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(!c.has_credentials());

    let c = load(d, "toolkit_web_config_users_noTLS.good.yml").unwrap();
    assert_eq!(
        c.users.keys().collect::<Vec<_>>(),
        ["alice", "bob", "carol", "dave"]
    );
    assert!(c.tls.is_none());
    // Anonymous access is denied once users exist.
    assert_eq!(
        c.anonymous_in(Group::Scrape),
        vmscope::access::Anonymous::Deny
    );

    let c = load(d, "toolkit_web_config_headers.good.yml").unwrap();
    assert_eq!(c.headers.len(), 5);
    assert!(
        c.headers
            .contains(&("X-Frame-Options".to_owned(), "deny".to_owned()))
    );

    let c = load(d, "toolkit_web_config_noAuth_someCurves.good.yml").unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.curves, [Curve::P521]);
    // VerifyClientCertIfGiven needs a client CA: the toolkit's file has
    // none, so the next step (TLS serving) decides; today it loads.
    assert_eq!(tls.client_auth, ClientAuth::VerifyClientCertIfGiven);

    let e = load(d, "toolkit_web_config_noAuth_allCiphers.good.yml").unwrap_err();
    assert!(
        e.contains("tls_server_config.cipher_suites[9]")
            && e.contains("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA")
            && e.contains("not supported"),
        "{e}"
    );

    let e = load(d, "toolkit_web_config_junk_key.yml").unwrap_err();
    assert!(
        e.contains("cert_filse") && e.contains("toolkit_web_config_junk_key.yml"),
        "{e}"
    );

    let e = load(d, "toolkit_web_config_noAuth_wrongTLSVersion.bad.yml").unwrap_err();
    assert!(
        e.contains("tls_server_config.min_version") && e.contains("TLS111"),
        "{e}"
    );
}

#[test]
fn vmscopes_extension_loads_and_every_bad_value_names_its_key() {
    let dir = fixture_dir();
    let c = load(dir.path(), "vmscope.yml").unwrap();
    assert_eq!(c.tokens.len(), 2);
    assert_eq!(&*c.tokens[1].name, "portal");
    assert_eq!(
        c.tokens[1].scopes,
        [Scope::User("alice".into()), Scope::Project("acme".into())]
    );
    assert!(c.tokens[1].expires.is_some());
    let local: IpAddr = "127.0.0.9".parse().unwrap();
    let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    let outside: IpAddr = "192.168.1.1".parse().unwrap();
    assert!(c.ip_allowed(Group::Scrape, Some(local)));
    assert!(
        c.ip_allowed(Group::Scrape, Some(mapped)),
        "v4-mapped v6 is v4"
    );
    assert!(!c.ip_allowed(Group::Scrape, Some(outside)));
    assert!(
        !c.ip_allowed(Group::Api, Some(local)),
        "api allows 127.0.0.1 only"
    );
    assert!(
        !c.ip_allowed(Group::Scrape, None),
        "unknown address: refused"
    );
    assert!(c.ip_allowed(Group::Admin, Some(outside)), "no list: open");
    assert_eq!(c.rate_limits.max_clients, 5000);
    assert_eq!(c.rate_limits.per_token.unwrap().burst, 20.0);

    let hex = "ab".repeat(32);
    for (text, key) in [
        (
            "vmscope:\n  tokenz: []\n",
            "vmscope: unknown field `tokenz`",
        ),
        (
            "vmscope:\n  tokens:\n    - {name: a, sha256: abc, scope: admin}\n",
            "vmscope.tokens[0].sha256",
        ),
        (
            &format!("vmscope:\n  tokens:\n    - {{name: a, sha256: {hex}, scope: tenant:x}}\n"),
            "vmscope.tokens[0].scope",
        ),
        (
            &format!("vmscope:\n  tokens:\n    - {{name: 'a b', sha256: {hex}, scope: admin}}\n"),
            "vmscope.tokens[0].name",
        ),
        (
            &format!(
                "vmscope:\n  tokens:\n    - {{name: a, sha256: {hex}, scope: admin, expires: soon}}\n"
            ),
            "vmscope.tokens[0].expires",
        ),
        (
            &format!(
                "vmscope:\n  tokens:\n    - {{name: a, sha256: {hex}, scope: admin}}\n    - {{name: b, sha256: {hex}, scope: admin}}\n"
            ),
            "vmscope.tokens[1].sha256",
        ),
        (
            "vmscope:\n  allow:\n    scrape: [10.0.0.0/33]\n",
            "vmscope.allow.scrape[0]",
        ),
        (
            "vmscope:\n  anonymous:\n    api: host_only\n",
            "vmscope.anonymous.api",
        ),
        (
            "vmscope:\n  anonymous:\n    scrape: maybe\n",
            "vmscope.anonymous.scrape",
        ),
        (
            "vmscope:\n  rate_limit:\n    per_ip: {rate: 0}\n",
            "vmscope.rate_limit.per_ip.rate",
        ),
        (
            "basic_auth_users:\n  eve: notahash\n",
            "basic_auth_users.eve",
        ),
        (
            "http_server_config:\n  headers:\n    X-Powered-By: me\n",
            "http_server_config.headers.X-Powered-By",
        ),
        (
            "tls_server_config:\n  client_auth_type: Sometimes\n  cert: x\n  key: y\n",
            "tls_server_config.client_auth_type",
        ),
        (
            "tls_server_config:\n  cert: x\n  key: y\n  min_version: TLS10\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key: y\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert: x\n",
            "tls_server_config.key_file",
        ),
        ("rate_limit:\n  interval: 1s\n", "rate_limit.burst"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(
            e.starts_with(key) || e.contains(&format!("{key}:")),
            "{key}: {e}"
        );
    }
    // The secret part of a bad value is not echoed.
    let e = parse("tls_server_config:\n  cert: x\n  key: SECRETKEY\n  min_version: TLS10\n")
        .unwrap_err();
    assert!(!e.contains("SECRETKEY"), "{e}");
    let e = parse("basic_auth_users:\n  eve: $2y$10$short\n").unwrap_err();
    assert!(!e.contains("$2y$10$short"), "{e}");
    // An empty file is a valid (empty) config, as for the toolkit.
    assert!(!parse("").unwrap().has_credentials());
}

const T0: fn() -> (Instant, SystemTime) = || (Instant::now(), SystemTime::now());

fn bearer(t: &str) -> Credentials {
    Credentials::parse([format!("Bearer {t}").as_bytes()].into_iter())
}

fn basic(user: &str, pw: &str) -> Credentials {
    use base64::Engine as _;
    let v = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    );
    Credentials::parse([v.as_bytes()].into_iter())
}

fn decided(v: Verdict) -> Decision {
    match v {
        Verdict::Decided(d) => d,
        Verdict::Bcrypt(_) => panic!("a bcrypt check where none was expected"),
    }
}

fn refused(d: &Decision) -> (u16, AuthResult) {
    match d {
        Decision::Refuse(r) => (r.status, r.result),
        Decision::Allow(a) => panic!("allowed: {a:?}"),
    }
}

fn sha(t: &str) -> String {
    vmscope::access::token::sha256_hex(t)
}

#[test]
fn bearer_tokens_are_checked_by_hash_scope_and_expiry() {
    let text = format!(
        "vmscope:\n  tokens:\n    - {{name: ops, sha256: {}, scope: admin}}\n    - {{name: old, sha256: {}, scope: admin, expires: 2020-01-01T00:00:00Z}}\n    - {{name: portal, sha256: {}, scope: project:acme}}\n",
        sha("vms_ops"),
        sha("vms_old"),
        sha("vms_portal")
    );
    let gate = Gate::new(Some(parse(&text).unwrap()));
    let ip = Some("127.0.0.1".parse().unwrap());
    let d = decided(gate.check("/metrics", ip, bearer("vms_ops"), T0()));
    assert_eq!(
        d,
        Decision::Allow(Access::Admin {
            who: Principal::Token("ops".into())
        })
    );
    assert_eq!(
        refused(&decided(gate.check(
            "/metrics",
            ip,
            bearer("vms_wrong"),
            T0()
        ))),
        (401, AuthResult::Invalid)
    );
    assert_eq!(
        refused(&decided(gate.check(
            "/api/v1/vms",
            ip,
            Credentials::None,
            T0()
        ))),
        (401, AuthResult::Missing)
    );
    assert_eq!(
        refused(&decided(gate.check(
            "/metrics",
            ip,
            bearer("vms_old"),
            T0()
        ))),
        (401, AuthResult::Expired)
    );
    // A tenant token passes with its scope (the routes scope or refuse it).
    assert_eq!(
        decided(gate.check("/metrics", ip, bearer("vms_portal"), T0())),
        Decision::Allow(vmscope::access::tenant(
            Principal::Token("portal".into()),
            &[Scope::Project("acme".into())]
        ))
    );
    let malformed = Credentials::parse([b"Token abc".as_slice()].into_iter());
    assert_eq!(malformed, Credentials::Malformed);
    assert_eq!(
        refused(&decided(gate.check("/metrics", ip, malformed, T0()))),
        (401, AuthResult::Invalid)
    );
    // /healthz is open whatever is configured.
    assert!(matches!(
        decided(gate.check("/healthz", None, Credentials::None, T0())),
        Decision::Allow(_)
    ));
    let m = gate.metrics();
    assert_eq!(
        m.get(AuthResult::Ok),
        1,
        "a tenant is counted by the HTTP edge"
    );
    assert_eq!(m.get(AuthResult::Invalid), 2);
    assert_eq!(m.get(AuthResult::Expired), 1);
    assert_eq!(m.get(AuthResult::Forbidden), 0);
    assert_eq!(m.get(AuthResult::Missing), 1);
    assert_eq!(m.bcrypt_runs(), 0);
    // Debug output of credentials never holds the secret.
    assert!(!format!("{:?}", bearer("vms_ops")).contains("vms_ops"));
    assert!(!format!("{:?}", basic("carol", "carol123")).contains("carol123"));
}

#[test]
fn basic_auth_uses_the_toolkits_bcrypt_hash_once_then_the_cache() {
    let dir = fixture_dir();
    let cfg = load(dir.path(), "toolkit_web_config_users_noTLS.good.yml").unwrap();
    let gate = Gate::new(Some(cfg));
    let ip = Some("127.0.0.1".parse().unwrap());
    let run = |c: Credentials| match gate.check("/metrics", ip, c, T0()) {
        Verdict::Decided(d) => d,
        Verdict::Bcrypt(p) => {
            let ok = p.verify();
            gate.finish(p, ok, Instant::now())
        }
    };
    assert_eq!(
        run(basic("carol", "carol123")),
        Decision::Allow(Access::Admin {
            who: Principal::User("carol".into())
        })
    );
    assert_eq!(gate.metrics().bcrypt_runs(), 1);
    // The same credentials again: from the cache, no bcrypt.
    assert!(matches!(
        gate.check("/metrics", ip, basic("carol", "carol123"), T0()),
        Verdict::Decided(Decision::Allow(_))
    ));
    assert_eq!(gate.metrics().bcrypt_runs(), 1);
    // A wrong password and an unknown user both cost a bcrypt (no
    // enumeration by timing) and are refused 401.
    assert_eq!(
        refused(&run(basic("carol", "nope"))),
        (401, AuthResult::Invalid)
    );
    assert_eq!(
        refused(&run(basic("mallory", "carol123"))),
        (401, AuthResult::Invalid)
    );
    assert_eq!(gate.metrics().bcrypt_runs(), 3);
}

#[test]
fn the_allow_list_and_ip_rate_limit_come_before_any_bcrypt() {
    let text = "basic_auth_users:\n  carol: $2y$10$qRTBuFoULoYNA7AQ/F3ck.trZBPyjV64.oA4ZsSBCIWvXuvQlQTuu\nvmscope:\n  allow:\n    scrape: [127.0.0.0/8]\n  rate_limit:\n    per_ip: {rate: 1, burst: 2}\n";
    let gate = Gate::new(Some(parse(text).unwrap()));
    let outside = Some("192.0.2.1".parse().unwrap());
    let inside: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
    let t = Instant::now();
    let now = |dt: u64| (t + Duration::from_millis(dt), SystemTime::now());
    // Outside the allow-list: 403, before the credentials are looked at.
    assert_eq!(
        refused(&decided(gate.check(
            "/metrics",
            outside,
            basic("carol", "x"),
            now(0)
        ))),
        (403, AuthResult::Forbidden)
    );
    // Burst of 2 from one address, then 429 with Retry-After and no bcrypt.
    for _ in 0..2 {
        assert!(matches!(
            gate.check("/metrics", inside, basic("carol", "bad"), now(0)),
            Verdict::Bcrypt(_)
        ));
    }
    let Decision::Refuse(r) =
        decided(gate.check("/metrics", inside, basic("carol", "bad"), now(0)))
    else {
        panic!("not limited")
    };
    assert_eq!(
        (r.status, r.result, r.retry_after),
        (429, AuthResult::RateLimited, Some(1))
    );
    assert_eq!(gate.metrics().bcrypt_runs(), 0, "no verify() was run");
    // A second later one request more is let through.
    assert!(matches!(
        gate.check("/metrics", inside, basic("carol", "bad"), now(1000)),
        Verdict::Bcrypt(_)
    ));
}

#[test]
fn token_rate_limits_apply_per_token_and_anonymous_rules_per_group() {
    let text = format!(
        "vmscope:\n  tokens:\n    - {{name: a, sha256: {}, scope: admin}}\n    - {{name: b, sha256: {}, scope: admin}}\n  anonymous:\n    scrape: allow\n  rate_limit:\n    per_token: {{rate: 1, burst: 1}}\n",
        sha("vms_a"),
        sha("vms_b")
    );
    let gate = Gate::new(Some(parse(&text).unwrap()));
    let ip = Some("127.0.0.1".parse().unwrap());
    assert!(matches!(
        decided(gate.check("/metrics", ip, bearer("vms_a"), T0())),
        Decision::Allow(_)
    ));
    assert_eq!(
        refused(&decided(gate.check("/metrics", ip, bearer("vms_a"), T0()))),
        (429, AuthResult::RateLimited)
    );
    // Token b has its own bucket.
    assert!(matches!(
        decided(gate.check("/metrics", ip, bearer("vms_b"), T0())),
        Decision::Allow(_)
    ));
    // Anonymous: allowed on scrape, denied on the API.
    assert_eq!(
        decided(gate.check("/metrics", ip, Credentials::None, T0())),
        Decision::Allow(Access::Anonymous)
    );
    assert_eq!(
        refused(&decided(gate.check(
            "/api/v1/vms",
            ip,
            Credentials::None,
            T0()
        ))),
        (401, AuthResult::Missing)
    );
    // No web config: everyone is admin, nothing counted.
    let open = Gate::open();
    assert_eq!(
        decided(open.check("/api/v1/vms", None, Credentials::None, T0())),
        Decision::Allow(Access::Admin {
            who: Principal::Open
        })
    );
    assert_eq!(open.metrics().get(AuthResult::Ok), 0);
}

#[test]
fn tenant_scopes_make_an_access_with_their_users_and_projects() {
    let a = vmscope::access::tenant(
        Principal::Token("portal".into()),
        &[Scope::User("alice".into()), Scope::Project("acme".into())],
    );
    let Access::Tenant {
        users, projects, ..
    } = a
    else {
        panic!("not a tenant")
    };
    assert_eq!(
        (&*users, &*projects),
        (&["alice".to_owned()][..], &["acme".to_owned()][..])
    );
}

fn vmscope(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vmscope"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VMSCOPE_") {
            c.env_remove(key);
        }
    }
    c.args(args).envs(env.iter().copied()).output().unwrap()
}

#[test]
fn token_new_prints_a_token_once_and_an_entry_that_authenticates_it() {
    let out = vmscope(
        &[
            "token",
            "new",
            "--scope",
            "admin",
            "--name",
            "prometheus",
            "--expires",
            "90d",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().next().unwrap();
    assert!(
        token.starts_with("vms_") && token.len() == 4 + 43,
        "{token}"
    );
    assert_eq!(text.matches(token).count(), 1, "the token is printed once");
    // The printed entry, pasted under `vmscope: tokens:`, lets the token in.
    let entry: String = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with("    "))
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = parse(&format!("vmscope:\n  tokens:\n{entry}")).unwrap();
    assert!(cfg.tokens[0].expires.unwrap() > SystemTime::now() + Duration::from_secs(89 * 86_400));
    let gate = Gate::new(Some(cfg));
    assert!(matches!(
        decided(gate.check("/metrics", None, bearer(token), T0())),
        Decision::Allow(Access::Admin { .. })
    ));
    // Two tokens differ.
    let again = vmscope(&["token", "new", "--scope", "admin", "--name", "x"], &[]);
    assert!(!String::from_utf8_lossy(&again.stdout).contains(token));
    // Bad flags: exit 2 naming the flag.
    for (args, flag) in [
        (vec!["--scope", "tenant:x", "--name", "a"], "--scope"),
        (vec!["--scope", "admin", "--name", "a b"], "--name"),
        (
            vec!["--scope", "admin", "--name", "a", "--expires", "later"],
            "--expires",
        ),
    ] {
        let mut all = vec!["token", "new"];
        all.extend(args);
        let out = vmscope(&all, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(&format!("error: {flag}")), "{err}");
    }
}

#[test]
fn check_config_checks_the_web_config_and_names_the_file_and_key() {
    let dir = fixture_dir();
    let good = dir.path().join("vmscope.yml");
    let out = vmscope(
        &["check-config"],
        &[("VMSCOPE_HTTP__WEB_CONFIG_FILE", good.as_os_str())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("web config") && stdout.contains("1 users, 2 tokens"),
        "{stdout}"
    );
    // Everything in the file is in force: no warning.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");

    for (file, key) in [
        ("toolkit_web_config_junk_key.yml", "cert_filse"),
        (
            "toolkit_web_config_noAuth_someCurves.good.yml",
            "tls_server_config.curve_preferences[0]",
        ),
    ] {
        let path = dir.path().join(file);
        let toml = dir.path().join("c.toml");
        std::fs::write(&toml, format!("[http]\nweb_config_file = {:?}\n", path)).unwrap();
        let out = vmscope(&["check-config", toml.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(file) && err.contains(key), "{file}: {err}");
    }
    // The toolkit's minimal TLS example checks (certificates are read).
    let toml = dir.path().join("c.toml");
    let path = dir.path().join("toolkit_web-config.yml");
    std::fs::write(&toml, format!("[http]\nweb_config_file = {:?}\n", path)).unwrap();
    let out = vmscope(&["check-config", toml.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("TLS"));
}

#[test]
fn basic_credentials_without_configured_users_cost_no_bcrypt() {
    let text = format!(
        "vmscope:\n  tokens:\n    - {{name: a, sha256: {}, scope: admin}}\n",
        sha("vms_a")
    );
    let gate = Gate::new(Some(parse(&text).unwrap()));
    assert_eq!(
        refused(&decided(gate.check(
            "/metrics",
            None,
            basic("carol", "carol123"),
            T0()
        ))),
        (401, AuthResult::Invalid)
    );
    assert_eq!(gate.metrics().bcrypt_runs(), 0);
}

#[test]
fn a_secret_in_the_wrong_place_is_not_quoted_in_the_error() {
    let e = parse(
        "tls_server_config:\n  cipher_suites: \"-----BEGIN PRIVATE KEY----- SECRETSECRETSECRET\"\n",
    )
    .unwrap_err();
    assert!(e.starts_with("tls_server_config.cipher_suites"), "{e}");
    assert!(!e.contains("SECRETSECRETSECRET"), "{e}");
}

#[test]
fn the_toolkits_global_rate_limit_is_one_bucket_for_every_client() {
    let gate = Gate::new(Some(
        parse("rate_limit:\n  interval: 1s\n  burst: 2\n").unwrap(),
    ));
    let a: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
    let b: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
    let t = Instant::now();
    let at = (t, SystemTime::now());
    assert!(matches!(
        decided(gate.check("/metrics", a, Credentials::None, at)),
        Decision::Allow(_)
    ));
    assert!(matches!(
        decided(gate.check("/metrics", b, Credentials::None, at)),
        Decision::Allow(_)
    ));
    // The third request, from either client, waits for the next interval.
    assert_eq!(
        refused(&decided(gate.check("/metrics", a, Credentials::None, at))),
        (429, AuthResult::RateLimited)
    );
    let later = (t + Duration::from_secs(1), SystemTime::now());
    assert!(matches!(
        decided(gate.check("/metrics", b, Credentials::None, later)),
        Decision::Allow(_)
    ));
}
