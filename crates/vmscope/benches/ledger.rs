//! The usage ledger's bookkeeping for a host with 1000 VMs, and its
//! database growth.
//!
//! Measures:
//! - `ledger/observe/1000`: accounting one snapshot of 1000 VMs (steady
//!   state: every VM has a cursor; each adds to its open row), the work the
//!   `vmscope-ledger` thread does per tick;
//! - `ledger/flush/1000`: one flush of 1000 changed rows and 1000 cursors
//!   and the counter totals of 1000 VMs, 50 users and 20 projects (one
//!   SQLite transaction, WAL, `synchronous = NORMAL`) on a temp file, and
//!   the read-back of those totals, as the ledger's store job does;
//! - `ledger/flush_spooled/1000`: the same with the fleet ledger's spool on
//!   (each row's key also goes in `ledger_spool`; the spool is emptied
//!   between flushes, untimed, as a shipper keeping up would);
//! - `ledger/ship_take_ack/1000`: the store thread's part of shipping 1000
//!   spooled rows (take them joined to their totals, then acknowledge).
//!
//! It also prints, once, the state database's growth per VM per day: 100 VMs
//! accounted for a simulated day (a snapshot every 60 s, a flush after
//! each, 60 s rows), the file's size after a WAL checkpoint minus the empty
//! database's, divided by 100.
//! Run with `cargo bench -p vmscope --bench ledger`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use vmscope::ledger::{AccountConfig, Accountant};
use vmscope::model::{NetStats, Owner, Snapshot, Source, VmState, VmStats};
use vmscope::store::LedgerStore;
use vmscope::store::sqlite::SqliteStore;

const T0: u64 = 1_800_000_000;

fn cfg() -> AccountConfig {
    AccountConfig {
        interval_ms: 60_000,
        gap_after_ms: 15_000,
        forget_after_ms: 600_000,
        max_rows: 500_000,
        boot_id: "3f1c2a9e-0b7d-4c55-9a0e-1d2b3c4d5e6f".into(),
        boot_time: 1_700_000_000.0,
        max_owners: 1000,
    }
}

fn vms(n: u32, step: u64) -> Vec<VmStats> {
    (0..n)
        .map(|i| {
            let mut v = VmStats::unmeasured(10_000 + i, Source::Libvirt);
            v.id = format!("6a1b2c3d-0000-4000-8000-{i:012}");
            v.name = format!("instance-{i:08x}");
            v.start_time_seconds = 1_799_000_000.0 + f64::from(i);
            v.state = VmState::Running;
            v.owner = Some(std::sync::Arc::new(Owner {
                user_id: Some(format!("u-{}", i % 50)),
                user_name: Some(format!("user-{}", i % 50)),
                project_id: Some(format!("p-{}", i % 20)),
                project_name: Some(format!("project-{}", i % 20)),
            }));
            v.allocated_vcpus = Some(2);
            v.allocated_memory_bytes = Some(2 << 30);
            v.memory_rss_bytes = 1 << 30;
            v.cpu.user = step as f64 * 0.7;
            v.cpu.system = step as f64 * 0.1;
            v.cpu.guest = Some(step as f64 * 0.6);
            v.network = vec![NetStats {
                interface: format!("tap{i:05x}-0"),
                rx_bytes: step * 12_345,
                tx_bytes: step * 6_789,
                ..NetStats::default()
            }];
            v.collect_success = true;
            v
        })
        .collect()
}

fn snap(seq: u64, at_s: u64, vms: Vec<VmStats>) -> Snapshot {
    let mut s = Snapshot::empty(Duration::from_secs(5));
    s.seq = seq;
    s.collected_at = UNIX_EPOCH + Duration::from_secs(T0 + at_s);
    s.host.hostname = Some("hv-bench-01".into());
    s.vms = vms;
    // As the collector publishes it: with the per-owner totals, whose fold
    // the ledger's counters follow.
    s.with_usage(1000)
}

fn observe(c: &mut Criterion) {
    // Snapshots 5 s apart with every counter moving: each call is a
    // steady-state step for 1000 VMs. A flush's bookkeeping (batch, mark
    // written) runs every 12 snapshots, untimed, as a 60 s flush would.
    let a = std::cell::RefCell::new(Accountant::new(cfg()));
    a.borrow_mut().observe(&snap(1, 0, vms(1000, 0)));
    let mut seq = 1;
    let template = vms(1000, 1);
    c.bench_function("ledger/observe/1000", |b| {
        b.iter_batched(
            || {
                seq += 1;
                if seq % 12 == 0 {
                    let mut a = a.borrow_mut();
                    let (_, marks) = a.batch();
                    a.flushed(marks, Some(&[]));
                }
                let mut v = template.clone();
                for vm in &mut v {
                    vm.cpu.user += seq as f64;
                    vm.network[0].rx_bytes += seq * 1000;
                }
                snap(seq, seq * 5, v)
            },
            |s| a.borrow_mut().observe(black_box(&s)),
            criterion::BatchSize::LargeInput,
        );
    });
}

fn flush(c: &mut Criterion, spooled: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::cell::RefCell::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    store.borrow_mut().spool_set(spooled).unwrap();
    // Both closures use the accountant: one to make a batch, one to mark
    // it written.
    let a = std::cell::RefCell::new(Accountant::new(cfg()));
    let mut seq = 0;
    let name = if spooled {
        "ledger/flush_spooled/1000"
    } else {
        "ledger/flush/1000"
    };
    c.bench_function(name, |b| {
        b.iter_batched(
            || {
                seq += 1;
                if spooled {
                    drain(&mut store.borrow_mut());
                }
                let mut a = a.borrow_mut();
                a.observe(&snap(seq, seq * 5, vms(1000, seq)));
                a.batch()
            },
            |(batch, marks)| {
                // As the ledger thread's store job: write, read the
                // counter totals back.
                store.borrow_mut().flush_ledger(black_box(&batch)).unwrap();
                let read = store
                    .borrow_mut()
                    .ledger_totals(marks.totals_keys())
                    .unwrap();
                a.borrow_mut().flushed(marks, Some(&read));
            },
            criterion::BatchSize::LargeInput,
        );
    });
    if spooled {
        return;
    }
    // The same flush without the counter totals (neither written nor read
    // back): the flush as it was before them, measured alongside.
    c.bench_function("ledger/flush/1000_without_counter_totals", |b| {
        b.iter_batched(
            || {
                seq += 1;
                let mut a = a.borrow_mut();
                a.observe(&snap(seq, seq * 5, vms(1000, seq)));
                let (mut batch, marks) = a.batch();
                batch.totals.clear();
                (batch, marks)
            },
            |(batch, marks)| {
                store.borrow_mut().flush_ledger(black_box(&batch)).unwrap();
                a.borrow_mut().flushed(marks, Some(&[]));
            },
            criterion::BatchSize::LargeInput,
        );
    });
}

/// Take and acknowledge everything spooled; how many rows.
fn drain(store: &mut SqliteStore) -> usize {
    let t = store.spool_take(5000, 10_000_000).unwrap();
    let n = t.rows.len();
    let acks: Vec<_> = t.rows.into_iter().map(|(k, _)| k).zip(t.seqs).collect();
    store.spool_ack(&acks).unwrap();
    n
}

fn ship(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::cell::RefCell::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    store.borrow_mut().spool_set(true).unwrap();
    let a = std::cell::RefCell::new(Accountant::new(cfg()));
    // A first look: VMs get cursors, rows start at the next snapshot.
    a.borrow_mut().observe(&snap(1, 0, vms(1000, 0)));
    let mut seq = 1;
    c.bench_function("ledger/ship_take_ack/1000", |b| {
        b.iter_batched(
            || {
                seq += 1;
                let mut a = a.borrow_mut();
                a.observe(&snap(seq, seq * 5, vms(1000, seq)));
                let (batch, marks) = a.batch();
                store.borrow_mut().flush_ledger(&batch).unwrap();
                a.flushed(marks, None);
            },
            |()| {
                let n = drain(&mut store.borrow_mut());
                assert!(n >= 1000, "{n} rows shipped");
            },
            // One setup, then its routine: each drain has a flush to take.
            criterion::BatchSize::PerIteration,
        );
    });
}

fn growth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let size = |store: &SqliteStore| store.file_bytes().unwrap();
    let empty = size(&store);
    let mut a = Accountant::new(cfg());
    const N: u32 = 100;
    for minute in 0..=1440u64 {
        a.observe(&snap(minute + 1, minute * 60, vms(N, minute * 60)));
        let (batch, marks) = a.batch();
        store.flush_ledger(&batch).unwrap();
        a.flushed(marks, Some(&[]));
    }
    let full = size(&store);
    eprintln!(
        "ledger/growth: {N} VMs x 1 day of 60 s rows: {} bytes per VM per day \
         ({} rows; empty database {empty} bytes, after {full} bytes)",
        (full - empty) / u64::from(N),
        1440 * N
    );
}

fn all(c: &mut Criterion) {
    growth();
    observe(c);
    flush(c, false);
    flush(c, true);
    ship(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
