//! Cost of the per-tick parsers: one stat line, a 100-interface
//! `/proc/net/dev`, one libvirt status file, one libvirt-style QEMU argv.
//! Run with `cargo bench -p vmscope-proc`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vmscope_proc::{
    parse_libvirt_status, parse_net_dev, parse_stat, parse_vm_cmdline, split_cmdline,
};

const STAT: &[u8] = include_bytes!("../testdata/stat-qemu.txt");
const LIBVIRT: &[u8] = include_bytes!("../testdata/libvirt-status-nova.xml");
const CMDLINE: &[u8] = include_bytes!("../testdata/cmdline-libvirt-qemu.bin");

/// A `/proc/net/dev` with `n` TAPs, formatted as the kernel does.
fn net_dev(n: usize) -> Vec<u8> {
    let mut s = String::from(
        "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
    );
    for i in 0..n {
        let rx = 1_000_000_007u64 * (i as u64 + 1);
        s.push_str(&format!(
            "{:>6}:{:8} {:7} {:4} {:4} {:4} {:5} {:10} {:9} {:8} {:7} {:4} {:4} {:4} {:5} {:7} {:10}\n",
            format!("tap{i}"),
            rx,
            rx / 1000,
            0,
            i,
            0,
            0,
            0,
            0,
            rx / 3,
            rx / 3000,
            0,
            0,
            0,
            0,
            0,
            0
        ));
    }
    s.into_bytes()
}

fn parsers(c: &mut Criterion) {
    c.bench_function("parse_stat", |b| b.iter(|| parse_stat(black_box(STAT))));

    let dev = net_dev(100);
    assert_eq!(parse_net_dev(&dev).len(), 100);
    c.bench_function("parse_net_dev_100_ifaces", |b| {
        b.iter(|| parse_net_dev(black_box(&dev)))
    });

    c.bench_function("parse_libvirt_status", |b| {
        b.iter(|| parse_libvirt_status(black_box(LIBVIRT)))
    });

    let argv = split_cmdline(CMDLINE);
    c.bench_function("parse_vm_cmdline_libvirt_qemu", |b| {
        b.iter(|| parse_vm_cmdline(black_box(&argv)))
    });
    c.bench_function("split_cmdline", |b| {
        b.iter(|| split_cmdline(black_box(CMDLINE)))
    });
}

criterion_group!(benches, parsers);
criterion_main!(benches);
