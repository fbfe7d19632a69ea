//! What access control costs per request, in the gate itself (no HTTP):
//!
//! - `auth/bearer_admin`: a bearer token among 1000 configured ones: parse
//!   the header, one SHA-256, the map lookup and the constant-time compare,
//!   the scope check (the bound: at most 10 us);
//! - `auth/basic_cached`: a basic-auth user whose credentials were verified
//!   before: base64, the keyed SHA-256 of the cache key and the lookup (no
//!   bcrypt);
//! - `auth/basic_bcrypt`: the first check of those credentials, bcrypt at
//!   cost 10, for scale (what the cache and the rate limits save);
//! - `auth/bearer_rate_limited`: a bearer check with per-IP and per-token
//!   limits configured (two bucket updates more).
//!
//! Run with `cargo bench -p vmscope --bench auth`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use vmscope::access::{Credentials, Decision, Gate, Verdict, WebConfig, token};

const CAROL_HASH: &str = "$2y$10$qRTBuFoULoYNA7AQ/F3ck.trZBPyjV64.oA4ZsSBCIWvXuvQlQTuu";

fn config(limits: bool) -> WebConfig {
    let mut text = format!("basic_auth_users:\n  carol: {CAROL_HASH}\nvmscope:\n  tokens:\n");
    for i in 0..1000 {
        text.push_str(&format!(
            "    - {{name: t{i}, sha256: {}, scope: admin}}\n",
            token::sha256_hex(&format!("vms_bench_token_{i}"))
        ));
    }
    if limits {
        text.push_str("  rate_limit:\n    per_ip: {rate: 1000000, burst: 1000000}\n    per_token: {rate: 1000000, burst: 1000000}\n");
    }
    WebConfig::parse(&text, Path::new(".")).unwrap()
}

fn header(v: &str) -> Credentials {
    Credentials::parse([v.as_bytes()].into_iter())
}

fn allowed(gate: &Gate, ip: Option<IpAddr>, v: &str) {
    match gate.check(
        "/metrics",
        ip,
        header(v),
        (Instant::now(), SystemTime::now()),
    ) {
        Verdict::Decided(Decision::Allow(a)) => {
            black_box(a);
        }
        _ => panic!("not allowed from the fast path"),
    }
}

fn all(c: &mut Criterion) {
    let ip: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
    let bearer = "Bearer vms_bench_token_777";
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("carol:carol123")
    );

    let gate = Gate::new(Some(config(false)));
    c.bench_function("auth/bearer_admin", |b| {
        b.iter(|| allowed(&gate, ip, bearer))
    });

    // Warm the cache with one real verification.
    match gate.check(
        "/metrics",
        ip,
        header(&basic),
        (Instant::now(), SystemTime::now()),
    ) {
        Verdict::Bcrypt(p) => {
            let ok = p.verify();
            assert!(ok);
            gate.finish(p, ok, Instant::now());
        }
        Verdict::Decided(d) => panic!("{d:?}"),
    }
    c.bench_function("auth/basic_cached", |b| {
        b.iter(|| allowed(&gate, ip, &basic))
    });

    let mut group = c.benchmark_group("auth");
    group.sample_size(10);
    // Never finished, so never cached: every check asks for bcrypt.
    let cold = Gate::new(Some(config(false)));
    group.bench_function("basic_bcrypt", |b| {
        b.iter(|| {
            match cold.check(
                "/metrics",
                ip,
                header(&basic),
                (Instant::now(), SystemTime::now()),
            ) {
                Verdict::Bcrypt(p) => black_box(p.verify()),
                Verdict::Decided(d) => panic!("{d:?}"),
            }
        })
    });
    group.finish();

    let limited = Gate::new(Some(config(true)));
    c.bench_function("auth/bearer_rate_limited", |b| {
        b.iter(|| allowed(&limited, ip, bearer))
    });
}

criterion_group!(benches, all);
criterion_main!(benches);
