//! Property tests: every parser on arbitrary bytes and on mutated valid inputs
//! returns (a value or an error) without panicking, and well-formed inputs
//! built from random parts parse back to those parts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use vmscope_proc::*;

const STAT: &[u8] = b"4242 (qemu-system-x86) S 1 4241 4241 0 -1 138412352 9010 0 3 0 1234 567 0 0 20 0 5 0 98765 1324752896 4867 18446744073709551615 94386305486848 94386311620237 140730398467712 0 0 0 0 4096 17544 0 0 0 17 1 0 0 0 321 0 94386313932784 94386314667729 94386340573184 140730398474627 140730398474992 140730398474992 140730398478301 0\n";
const NETDEV: &[u8] = b"Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   52044     612    0    0    0     0          0         0    52044     612    0    0    0     0       0          0
  eth0:123456789012345 98765432    1    2    0     0          0        17 987654321098  1234567    3    4    0     0       0          0
";
const MOUNTINFO: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
40 22 0:35 / /mnt/my\\040disk rw,relatime - xfs /dev/mapper/vg-lv rw,attr2
41 22 0:36 / /srv/nfs rw,relatime shared:30 master:2 - nfs4 server:/export rw,vers=4.2
";
const MEMINFO: &[u8] = b"MemTotal:       24609036 kB\nMemFree:        20123456 kB\nMemAvailable:   22334455 kB\nBuffers:          123456 kB\nCached:          1987654 kB\n";
const PROCSTAT: &[u8] = b"cpu  10132153 290696 3084719 46828483 16683 0 25195 175 5000 10\ncpu0 1 2 3 4 5 6 7 8 9 10\nctxt 28012004\n";
const IO: &[u8] = b"rchar: 323934931\nwchar: 323929600\nsyscr: 632687\nsyscw: 632675\nread_bytes: 4096\nwrite_bytes: 323932160\ncancelled_write_bytes: 12288\n";
const FC: &[u8] = br#"{"machine-config":{"vcpu_count":2,"mem_size_mib":1024},"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0"}]}"#;
const LIBVIRT: &[u8] = br#"<domstatus state='running' reason='booted' pid='1234'>
  <vcpus><vcpu id='0' pid='1240'/><vcpu id='1' pid='1241'/></vcpus>
  <domain type='kvm' id='1'>
    <name>instance-00000001</name><uuid>9d1b8a33-52c7-4f5e-9f6a-0c2d3e4f5a6b</uuid>
    <metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>vm</nova:name><nova:flavor name="m1.small"/>
      <nova:owner><nova:user uuid="U">alice</nova:user><nova:project uuid="P">demo</nova:project></nova:owner>
    </nova:instance></metadata>
    <memory unit='KiB'>1048576</memory><vcpu placement='static'>2</vcpu>
    <devices><interface type='ethernet'><target dev='tap0'/></interface></devices>
  </domain>
</domstatus>
"#;
const QMP_BLOCKSTATS: &[u8] = br#"{"return": [{"device": "drive0", "stats": {"rd_bytes": 2560, "wr_bytes": 512, "rd_operations": 2, "wr_operations": 1, "flush_operations": 0, "rd_total_time_ns": 207158}, "qdev": "/machine/peripheral/vd0/virtio-backend"}]}"#;
const QMP_GUEST_STATS: &[u8] = br#"{"return": {"stats": {"stat-swap-out": 0, "stat-free-memory": 80000000, "stat-total-memory": 120000000, "stat-disk-caches": 10000000, "stat-major-faults": -1}, "last-update": 1764590000}}"#;
/// One process-events connector datagram (little-endian, as on x86_64):
/// nlmsghdr (NLMSG_DONE) + cn_msg (CN_IDX_PROC) + an exec event of pid 4242.
const PROC_EVENT_EXEC: &[u8] = b"\x3c\0\0\0\x03\0\0\0\0\0\0\0\0\0\0\0\
\x01\0\0\0\x01\0\0\0\x07\0\0\0\0\0\0\0\x18\0\0\0\
\x02\0\0\0\x01\0\0\0\x15\xcd\x5b\x07\0\0\0\0\x92\x10\0\0\x92\x10\0\0";
const SAMPLES: &[&[u8]] = &[
    PROC_EVENT_EXEC,
    STAT,
    NETDEV,
    MOUNTINFO,
    MEMINFO,
    PROCSTAT,
    IO,
    FC,
    LIBVIRT,
    QMP_BLOCKSTATS,
    QMP_GUEST_STATS,
    b"       5        0       10        4        1        0        1        0        0       12        4        0        0        0        0        2        3\n",
    b"8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n253:1 rbytes=4096\n",
    b"2346790185 118620305 8912\n",
    b"0.42 1.37 12.30 2/345 6789\n",
    b"/usr/bin/qemu-system-x86_64\0-name\0guest=a,,b,debug-threads=on\0-smp\0sockets=2,cores=2\0-m\0size=1G\0-netdev\0tap,id=n0,ifname=t0\0",
];

/// Run every parser on `buf`; none may panic.
fn all_parsers(buf: &[u8]) {
    let _ = parse_stat(buf);
    let _ = parse_schedstat(buf);
    let _ = parse_io(buf);
    let _ = parse_net_dev(buf);
    let _ = parse_meminfo(buf);
    let _ = parse_proc_stat_cpu(buf);
    let _ = parse_loadavg(buf);
    let _ = parse_mountinfo(buf);
    let _ = parse_firecracker_config(buf);
    let _ = parse_libvirt_status(buf);
    let _ = parse_block_stat(buf);
    let _ = parse_uevent_devname(buf);
    let _ = parse_cgroup_io_stat(buf);
    let _ = parse_ch_counters(buf);
    let _ = parse_proc_events(buf, &mut Vec::new());
    if let Ok(QmpMessage::Return(v)) = parse_qmp_message(buf) {
        let _ = parse_blockstats(&v);
        let _ = parse_query_balloon(&v);
        let _ = parse_guest_stats(&v);
        let _ = balloon_child(&v);
    }
    let _ = classify_comm(buf);
    let args = split_cmdline(buf);
    if let Some(a0) = args.first() {
        let _ = classify_argv0(a0);
    }
    let _ = parse_vm_cmdline(&args);
    for kind in [
        "/usr/bin/qemu-system-x86_64",
        "cloud-hypervisor",
        "firecracker",
    ] {
        let mut a = vec![kind.to_string()];
        a.extend(args.iter().cloned());
        let _ = parse_vm_cmdline(&a);
    }
}

/// Apply byte-level edits: 0 = overwrite, 1 = delete, 2 = insert, 3 = truncate.
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(pos, byte, op) in edits {
        let at = if v.is_empty() { 0 } else { pos % (v.len() + 1) };
        match op {
            0 if at < v.len() => v[at] = byte,
            1 if at < v.len() => {
                v.remove(at);
            }
            2 => v.insert(at, byte),
            3 => v.truncate(at),
            _ => {}
        }
    }
    v
}

/// Bytes that matter to these formats, so mutations hit interesting paths.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(b"()\n \t:-=,<>/'\"{}[]0123456789\\\0\xff".to_vec()),
    ]
}

fn arg_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "-name",
            "-uuid",
            "-smp",
            "-m",
            "-netdev",
            "-net",
            "-nic",
            "-accel",
            "-machine",
            "-M",
            "-enable-kvm",
            "--cpus",
            "--memory",
            "--memory-zone",
            "--net",
            "--api-socket",
            "--platform",
            "--id",
            "--config-file",
            "--api-sock",
            "--",
            "-",
            "-m=",
            "--net=tap=x",
            "tap,ifname=t,id=n",
            "guest=x,,y,debug-threads",
            "sockets=4294967295,cores=2",
            "size=16E",
            "1.5G",
            ".",
            "{\"type\":\"tap\",\"ifname\":\"v\"}",
            "boot=2,affinity=[0@[0-1",
            "tap=t0,mac=x",
            "path=/x",
            "fd=3",
            "uuid=\"q\"",
            ",,,,",
            "=",
        ])
        .prop_map(str::to_string),
        ".{0,24}",
    ]
}

fn stat_line(comm: &[u8], nums: &[u64; 6], rss: i64) -> Vec<u8> {
    let mut v = format!("{} (", nums[0] % 4_194_304).into_bytes();
    v.extend_from_slice(comm);
    v.extend_from_slice(
        format!(
            ") R 1 2 3 4 5 6 7 8 9 10 {} {} 0 0 20 0 {} 0 {} {} {} 0 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 {} 0\n",
            nums[1], nums[2], nums[3], nums[4], nums[5], rss, nums[1] / 2
        )
        .as_bytes(),
    );
    v
}

/// The kernel's mountinfo escaping (`mangle()`): space, tab, newline, backslash.
fn escape(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        all_parsers(&buf);
    }

    #[test]
    fn mutated_samples_never_panic(
        which in 0..SAMPLES.len(),
        edits in prop::collection::vec((any::<usize>(), interesting_byte(), 0u8..4), 0..12),
    ) {
        all_parsers(&mutate(SAMPLES[which], &edits));
    }

    #[test]
    fn arbitrary_argv_never_panics(
        kind in prop::sample::select(vec!["qemu-system-x86_64", "/usr/libexec/qemu-kvm", "cloud-hypervisor", "firecracker"]),
        rest in prop::collection::vec(arg_strategy(), 0..16),
    ) {
        let mut args = vec![kind.to_string()];
        args.extend(rest);
        let vm = parse_vm_cmdline(&args);
        prop_assert!(vm.is_some());
    }

    #[test]
    fn stat_roundtrips_any_comm(
        comm in prop::collection::vec(any::<u8>(), 0..64),
        nums in any::<[u64; 6]>(),
        rss in any::<i64>(),
    ) {
        let line = stat_line(&comm, &nums, rss);
        let s = parse_stat(&line).unwrap();
        prop_assert_eq!(s.comm, comm);
        prop_assert_eq!(u64::from(s.pid), nums[0] % 4_194_304);
        prop_assert_eq!(s.state, b'R');
        prop_assert_eq!(s.utime_ticks, nums[1]);
        prop_assert_eq!(s.stime_ticks, nums[2]);
        prop_assert_eq!(s.num_threads, nums[3]);
        prop_assert_eq!(s.starttime_ticks, nums[4]);
        prop_assert_eq!(s.vsize_bytes, nums[5]);
        prop_assert_eq!(s.rss_pages, u64::try_from(rss).unwrap_or(0));
        prop_assert_eq!(s.processor, Some(3));
        prop_assert_eq!(s.guest_time_ticks, Some(nums[1] / 2));
    }

    #[test]
    fn stat_fields_split_on_any_whitespace_run(
        seps in prop::collection::vec(prop::collection::vec(prop::sample::select(vec![b' ', b'\t', b'\n', b'\r', b'\x0c']), 1..4), 60),
    ) {
        // The same fields with other whitespace between them read the same.
        let close = STAT.iter().rposition(|&b| b == b')').unwrap();
        let mut line = STAT[..=close].to_vec();
        let fields = STAT[close + 1..].split(u8::is_ascii_whitespace).filter(|t| !t.is_empty());
        for (f, sep) in fields.zip(seps.iter().cycle()) {
            line.extend_from_slice(sep);
            line.extend_from_slice(f);
        }
        line.push(b'\n');
        prop_assert_eq!(parse_stat(&line).unwrap(), parse_stat(STAT).unwrap());
    }

    #[test]
    fn stat_cut_short_never_misreads(cut in 0..STAT.len()) {
        // Any prefix either fails or yields exactly the full line's values
        // for every field it reports.
        let full = parse_stat(STAT).unwrap();
        if let Ok(s) = parse_stat(&STAT[..cut]) {
            prop_assert_eq!(s.rss_pages, full.rss_pages);
            prop_assert_eq!(s.vsize_bytes, full.vsize_bytes);
            if let Some(p) = s.processor { prop_assert_eq!(Some(p), full.processor); }
            if let Some(g) = s.guest_time_ticks { prop_assert_eq!(Some(g), full.guest_time_ticks); }
        }
    }

    #[test]
    fn mountinfo_roundtrips_escaped_paths(mp in "/[ -~\t\n]{0,40}", src in "[ -~]{1,20}") {
        let line = format!("30 1 8:2 / {} rw - ext4 {} rw\n", escape(&mp), escape(&src));
        let m = parse_mountinfo(line.as_bytes());
        prop_assert_eq!(m.len(), 1);
        prop_assert_eq!(&m[0].mountpoint, &mp);
        prop_assert_eq!(&m[0].source, &src);
    }

    #[test]
    fn net_dev_reads_glued_numbers(name in "[a-z][a-z0-9_.-]{0,14}", rx in any::<u64>(), tx in any::<u64>()) {
        // The kernel prints "%6s:%8llu": no space after ':' once rx_bytes is long.
        let buf = format!("h1\nh2\n{name:>6}:{rx:8} 1 2 3 0 0 0 0 {tx} 4 5 6 0 0 0 0\n");
        let v = parse_net_dev(buf.as_bytes());
        prop_assert_eq!(v.len(), 1);
        prop_assert_eq!(&v[0].name, &name);
        prop_assert_eq!((v[0].rx_bytes, v[0].rx_drops, v[0].tx_bytes, v[0].tx_drops), (rx, 3, tx, 6));
    }
}

#[test]
fn proc_event_sample_is_an_exec() {
    // The sample above must be what it says, or the mutations test junk.
    let mut out = Vec::new();
    if cfg!(target_endian = "little") {
        parse_proc_events(PROC_EVENT_EXEC, &mut out).unwrap();
        assert_eq!(
            out,
            vec![ProcEvent::Exec {
                pid: 4242,
                tgid: 4242
            }]
        );
    }
}
