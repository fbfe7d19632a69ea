//! The memory of a fetched owner source's map (issue 17), and the CPU of
//! building one.
//!
//! Prints, once, the resident memory a 100 000-row owner mapping adds, per
//! row, for two layouts, each measured in a fresh child process (this
//! binary run again with `VMSCOPE_OWNERS_MEM=old|new`, so that one's freed
//! memory does not hide the other's):
//! - `old`: the layout before issue 17, rebuilt here literally: every row
//!   parsed into owned strings first, then a `HashMap<String, Owner>` keyed
//!   by the lowercased id (four `Option<String>` per row);
//! - `new`: `vmscope::owners::file::parse` of the same CSV (rows streamed
//!   into an `OwnerMap`: one copy of each distinct owner row, UUIDs as 16
//!   bytes), then `OwnerMap::compact` as the runner does.
//!
//! `retained` is the growth of RSS (`/proc/self/statm`) from before the
//! build to after it, with the map alive; `peak` the growth of `VmHWM`
//! (the most the process was resident) over the same span: what glibc's
//! allocator keeps from the transient rows. The CSV is the one
//! `bench/bench.py` writes for `--features`: 100 000 rows by UUID, 20 000
//! users, 4 000 projects (one project per user, so 20 000 distinct rows).
//!
//! Measures (criterion): `owners_map/parse_csv/100000`, parsing that file
//! into a compact map (what a changed file costs the source's thread), and
//! `owners_map/lookup/1000`, 1000 VMs looked up by UUID (what a published
//! map costs the tick, once per change).
//! Run with `cargo bench -p vmscope --bench owners_map`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use vmscope::model::Owner;
use vmscope::owners::VmFacts;
use vmscope::owners::file::{Format, parse};

const ROWS: u32 = 100_000;

fn uuid(i: u32) -> String {
    let n: u128 = (0xF11E_u128 << 96) | u128::from(i);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn csv() -> String {
    let mut s = String::from("id,user_id,user_name,project_id,project_name\n");
    for i in 0..ROWS {
        let (u, p) = (i % 20_000, i % 4_000);
        s.push_str(&format!("{},u-{u},user {u},p-{p},project {p}\n", uuid(i)));
    }
    s
}

/// Resident pages now (`statm`'s second field), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * rustix::param::page_size() as u64
}

/// `VmHWM` (peak resident), in bytes.
fn hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The pre-issue-17 map: the file's rows parsed into owned strings, then
/// moved into a map keyed by the lowercased id (what `file.rs` did).
fn old_layout(text: &str) -> HashMap<String, Owner> {
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<String> = line.split(',').map(str::to_owned).collect();
        let mut f = f.into_iter().map(Some);
        let id = f.next().flatten().unwrap();
        let owner = Owner {
            user_id: f.next().flatten(),
            user_name: f.next().flatten(),
            project_id: f.next().flatten(),
            project_name: f.next().flatten(),
        };
        rows.push((id, owner));
    }
    let mut map = HashMap::new();
    for (id, owner) in rows {
        map.insert(id.to_ascii_lowercase(), owner);
    }
    map
}

fn child(which: &str) {
    let text = csv();
    let (rss0, hwm0) = (rss(), hwm());
    let rows = match which {
        "old" => {
            let m = old_layout(&text);
            let n = m.len();
            let (rss1, hwm1) = (rss(), hwm());
            black_box(&m);
            (n, rss1, hwm1)
        }
        _ => {
            let (mut m, _) = parse(&text, Format::Csv).unwrap();
            m.compact();
            let n = m.len();
            let (rss1, hwm1) = (rss(), hwm());
            black_box(&m);
            (n, rss1, hwm1)
        }
    };
    let (n, rss1, hwm1) = rows;
    println!(
        "{which} {n} {} {}",
        rss1.saturating_sub(rss0),
        hwm1.saturating_sub(hwm0)
    );
}

fn memory() {
    let exe = std::env::current_exe().unwrap();
    for which in ["old", "new"] {
        let out = std::process::Command::new(&exe)
            .env("VMSCOPE_OWNERS_MEM", which)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<u64> = text
            .split_whitespace()
            .skip(1)
            .map(|w| w.parse().unwrap())
            .collect();
        let (n, retained, peak) = (f[0], f[1], f[2]);
        println!(
            "owners_map memory {which}: {n} rows, retained {:.1} MiB = {} B/row, peak {:.1} MiB = {} B/row",
            retained as f64 / 1048576.0,
            retained / n,
            peak as f64 / 1048576.0,
            peak / n
        );
    }
}

fn benches(c: &mut Criterion) {
    memory();
    let text = csv();
    let mut g = c.benchmark_group("owners_map");
    g.bench_function("parse_csv/100000", |b| {
        b.iter(|| {
            let (mut m, _) = parse(black_box(&text), Format::Csv).unwrap();
            m.compact();
            m
        });
    });
    let (mut map, _) = parse(&text, Format::Csv).unwrap();
    map.compact();
    let ids: Vec<String> = (0..1000).map(|i| uuid(i * 97)).collect();
    g.bench_function("lookup/1000", |b| {
        b.iter(|| {
            let mut found = 0;
            for id in &ids {
                let vm = VmFacts {
                    id,
                    uuid: Some(id),
                    name: "vm",
                    pid: 1,
                    process: None,
                    libvirt: None,
                };
                found += usize::from(map.lookup(&vm).is_some());
            }
            assert_eq!(found, 1000);
            found
        });
    });
    g.finish();
}

criterion_group!(owners, benches);

fn main() {
    if let Ok(which) = std::env::var("VMSCOPE_OWNERS_MEM") {
        child(&which);
        return;
    }
    owners();
    Criterion::default().configure_from_args().final_summary();
}
