//! `vmscope top` without a terminal: the model (rates from two reads,
//! sorting by every key, the filter, grouping by owner), the screen drawn
//! on ratatui's `TestBackend` at 80x24 and 200x50 with and without colour,
//! the batch lines, the `/metrics.json` reader, and the binary's batch mode
//! and errors.

use std::process::Command;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;

use vmscope::cli::top::batch;
use vmscope::cli::top::model::{Column, Flow, Key, Model, Screen, group, increase};
use vmscope::cli::top::sample::{Alert, HostSample, Sample, TapSample, VcpuSample, VmSample};
use vmscope::cli::top::view::{self, Chrome};

const T0: f64 = 1_800_000_000.0;

/// A VM at `T0` with the given owner and counters.
fn vm(id: &str, name: &str, user: Option<&str>, cpu: f64, rss_mib: u64) -> VmSample {
    VmSample {
        id: id.into(),
        name: name.into(),
        user: user.map(str::to_owned),
        project: None,
        state: "running".into(),
        hypervisor: "qemu".into(),
        vcpus_allocated: Some(2),
        memory_allocated_bytes: Some(1 << 30),
        memory_rss_bytes: rss_mib << 20,
        start_time_seconds: T0 - 3600.0,
        cpu_seconds: cpu,
        guest_seconds: Some(cpu * 0.8),
        vcpus: vec![
            VcpuSample {
                index: 0,
                cpu_seconds: cpu / 2.0,
                wait_seconds: Some(1.0),
            },
            VcpuSample {
                index: 1,
                cpu_seconds: cpu / 2.0,
                wait_seconds: Some(1.0),
            },
        ],
        taps: vec![TapSample {
            interface: format!("tap-{name}"),
            rx_bytes: 1_000_000,
            tx_bytes: 2_000_000,
        }],
        disk_read_bytes: Some(10_000_000),
        disk_write_bytes: Some(20_000_000),
    }
}

fn sample(at: f64, mut vms: Vec<VmSample>) -> Sample {
    vms.sort_by(|a, b| a.id.cmp(&b.id));
    Sample {
        at,
        host: Some(HostSample {
            hostname: Some("hv-7".into()),
            cpus: 16,
            cpu_ratio: Some(0.425),
            memory_total_bytes: 64 << 30,
            memory_available_bytes: 48 << 30,
            load: [3.5, 2.25, 1.0],
        }),
        vms,
        alerts: Some(vec![Alert {
            rule: "vm_cpu_high".into(),
            scope: "vm:b".into(),
            severity: "warning".into(),
            started_at: "2027-01-15T08:00:00Z".into(),
        }]),
    }
}

/// Three VMs read twice, 2 s apart: `busy` (b) uses 1.9 cores, `web` (a)
/// 0.5, `idle` (c) nothing; alice owns a and b, bob c.
fn model() -> Model {
    let mut m = Model::new();
    m.update(sample(
        T0,
        vec![
            vm("a", "web", Some("alice"), 100.0, 300),
            vm("b", "busy", Some("alice"), 50.0, 200),
            vm("c", "idle", Some("bob"), 10.0, 900),
        ],
    ));
    let mut a = vm("a", "web", Some("alice"), 101.0, 300);
    a.taps[0].rx_bytes += 2 * 1024 * 1024;
    a.disk_write_bytes = Some(20_000_000 + 4096 * 1000);
    let mut b = vm("b", "busy", Some("alice"), 53.8, 200);
    b.vcpus[0].wait_seconds = Some(1.4);
    b.vcpus[1].wait_seconds = Some(1.2);
    let c = vm("c", "idle", Some("bob"), 10.0, 900);
    m.update(sample(T0 + 2.0, vec![a, b, c]));
    m
}

fn names(m: &Model) -> Vec<String> {
    m.lines().into_iter().map(|l| l.name).collect()
}

#[test]
fn rates_come_from_two_reads() {
    let m = model();
    assert_eq!(m.window(), Some(2.0));
    let lines = m.lines();
    let busy = lines.iter().find(|l| l.name == "busy").unwrap();
    // 3.8 CPU seconds in 2 s: 190% of one core, of which 80% guest code.
    assert!((busy.cpu_pct.unwrap() - 190.0).abs() < 1e-9, "{busy:?}");
    assert!((busy.guest_pct.unwrap() - 76.0).abs() < 1e-9, "{busy:?}");
    // (0.4 + 0.2) s of run-queue wait in 2 s over 2 vCPUs: 15% steal.
    assert!((busy.steal_pct.unwrap() - 15.0).abs() < 1e-9, "{busy:?}");
    let web = lines.iter().find(|l| l.name == "web").unwrap();
    assert_eq!(web.net_rx, Some(1024.0 * 1024.0));
    assert_eq!(web.net_tx, Some(0.0));
    assert_eq!(web.disk_write, Some(2_048_000.0));
    assert_eq!(web.uptime_seconds, Some(3602.0));
    let (_, r) = m.vm("b").unwrap();
    let r = r.unwrap();
    assert_eq!(r.vcpus.len(), 2);
    assert!((r.vcpus[0].wait.unwrap() - 0.2).abs() < 1e-9);
}

#[test]
fn a_reset_counter_counts_from_zero_and_a_restart_from_its_start() {
    assert_eq!(increase(100.0, 130.0), 30.0);
    assert_eq!(increase(100.0, 4.0), 4.0);
    let mut m = Model::new();
    m.update(sample(T0, vec![vm("a", "web", None, 500.0, 100)]));
    // The counter went down: a reset, 3 s since zero in 2 s.
    m.update(sample(T0 + 2.0, vec![vm("a", "web", None, 3.0, 100)]));
    assert_eq!(m.lines()[0].cpu_pct, Some(150.0));
    // A new process under the same id (start time moved): every counter
    // from zero, even one that is higher than before.
    let mut restarted = vm("a", "web", None, 600.0, 100);
    restarted.start_time_seconds = T0 + 3.0;
    restarted.cpu_seconds = 1.0;
    m.update(sample(T0 + 4.0, vec![restarted]));
    assert_eq!(m.lines()[0].cpu_pct, Some(50.0));
}

#[test]
fn the_same_snapshot_read_twice_keeps_the_rates() {
    let mut m = model();
    let before = m.lines();
    // A refresh faster than the agent's interval: the same snapshot again.
    m.update(sample(
        T0 + 2.0,
        vec![vm("a", "web", Some("alice"), 101.0, 300)],
    ));
    assert_eq!(m.lines(), before);
    assert_eq!(m.window(), Some(2.0));
}

#[test]
fn a_new_vm_has_no_rates_and_a_vm_that_left_is_gone() {
    let mut m = model();
    m.update(sample(
        T0 + 4.0,
        vec![
            vm("a", "web", Some("alice"), 102.0, 300),
            vm("d", "new", Some("bob"), 1.0, 50),
        ],
    ));
    let lines = m.lines();
    assert_eq!(names(&m), ["web", "new"], "CPU order, unknown last");
    assert_eq!(lines[1].cpu_pct, None);
    assert!(m.vm("b").is_none(), "busy left");
    // alice's totals no longer hold busy.
    m.grouped = true;
    let alice = m.lines().into_iter().find(|l| l.key == "alice").unwrap();
    assert_eq!(alice.vms, 1);
    assert_eq!(alice.rss_bytes, 300 << 20);
}

#[test]
fn sorting_by_every_key() {
    let mut m = model();
    assert_eq!(names(&m), ["busy", "web", "idle"], "CPU by default");
    assert_eq!(m.key(Key::Char('M')), Flow::Continue);
    assert_eq!(names(&m), ["idle", "web", "busy"], "memory, largest first");
    m.key(Key::Char('N'));
    assert_eq!(names(&m), ["busy", "idle", "web"], "name, A-Z");
    m.key(Key::Char('N'));
    assert_eq!(names(&m), ["web", "idle", "busy"], "N again reverses");
    m.key(Key::Char('T'));
    assert_eq!(m.sort, Column::Time);
    assert_eq!(names(&m), ["web", "busy", "idle"], "CPU time");
    m.key(Key::Char('P'));
    assert_eq!(m.sort, Column::Cpu);
    // > and < step through the columns.
    m.key(Key::Char('>'));
    assert_eq!(m.sort, Column::Guest);
    m.key(Key::Char('<'));
    m.key(Key::Char('<'));
    assert_eq!(m.sort, Column::Vcpus);
    // F: the menu, Down twice from Vcpus, Enter.
    m.key(Key::Char('F'));
    assert_eq!(m.screen, Screen::SortMenu(3));
    m.key(Key::Down);
    m.key(Key::Down);
    m.key(Key::Down);
    m.key(Key::Enter);
    assert_eq!((m.sort, &m.screen), (Column::Steal, &Screen::List));
    assert_eq!(names(&m), ["busy", "idle", "web"], "steal, then name");
    for c in Column::ALL {
        m.sort = c;
        assert_eq!(m.lines().len(), 3, "{c:?}");
    }
}

#[test]
fn filter_by_name_owner_and_regex() {
    let mut m = model();
    for (text, want) in [
        ("we", vec!["web"]),
        ("BOB", vec!["idle"]),
        ("owner:alice", vec!["busy", "web"]),
        ("name:^(idle|web)$", vec!["web", "idle"]),
        ("name:alice", vec![]),
        ("", vec!["busy", "web", "idle"]),
    ] {
        m.set_filter(text);
        assert_eq!(names(&m), want, "{text:?}");
        assert_eq!(m.message, None);
    }
    // Typed at the prompt.
    m.key(Key::Char('/'));
    for c in "bu".chars() {
        m.key(Key::Char(c));
    }
    assert_eq!(m.screen, Screen::FilterInput("bu".into()));
    m.key(Key::Enter);
    assert_eq!(names(&m), ["busy"]);
    // Esc clears it.
    m.key(Key::Esc);
    assert_eq!(names(&m).len(), 3);
}

#[test]
fn an_invalid_regex_says_why_and_keeps_the_filter() {
    let mut m = model();
    m.set_filter("web");
    m.set_filter("owner:(alice");
    let msg = m.message.clone().unwrap();
    assert!(
        msg.starts_with("filter \"owner:(alice\": not a valid regular expression:"),
        "{msg}"
    );
    assert!(msg.contains("unclosed group"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(names(&m), ["web"], "the previous filter stays");
    // The next key clears the message.
    m.key(Key::Char('P'));
    assert_eq!(m.message, None);
}

#[test]
fn grouping_by_owner_totals() {
    let mut m = model();
    m.key(Key::Char('g'));
    let lines = m.lines();
    assert_eq!(
        lines.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let alice = &lines[0];
    assert_eq!(alice.vms, 2);
    assert_eq!(alice.vcpus, Some(4));
    assert!((alice.cpu_pct.unwrap() - 240.0).abs() < 1e-9, "190 + 50");
    // Steal over alice's 4 vCPUs: (0.6 + 0) s / 2 s / 4.
    assert!((alice.steal_pct.unwrap() - 7.5).abs() < 1e-9, "{alice:?}");
    assert_eq!(alice.rss_bytes, 500 << 20);
    assert_eq!(alice.allocated_bytes, Some(2 << 30));
    assert_eq!(alice.net_rx, Some(1024.0 * 1024.0));
    assert_eq!(alice.state, "2/2 run");
    assert_eq!(alice.cpu_seconds, 101.0 + 53.8);
    // Enter on an owner lists its VMs.
    m.key(Key::Enter);
    assert!(!m.grouped);
    assert_eq!(names(&m), ["busy", "web"]);
    // A rate unknown for one VM is unknown for the total.
    let mut lines = model().lines();
    lines[0].net_rx = None;
    let g = group(lines);
    assert_eq!(g.iter().find(|l| l.key == "alice").unwrap().net_rx, None);
}

#[test]
fn selection_and_detail_follow_the_vm() {
    let mut m = model();
    m.key(Key::Down);
    assert_eq!(m.selected.as_deref(), Some("a"));
    m.key(Key::Enter);
    assert_eq!(m.screen, Screen::Detail("a".into()));
    assert_eq!(m.key(Key::Esc), Flow::Continue);
    assert_eq!(m.screen, Screen::List);
    // The selection stays on web when the order changes.
    m.key(Key::Char('N'));
    let lines = m.lines();
    assert_eq!(lines[m.selected_index(&lines).unwrap()].name, "web");
    m.key(Key::End);
    m.key(Key::Down);
    assert_eq!(m.selected.as_deref(), Some("a"), "web is last by name");
    assert_eq!(m.key(Key::Char('q')), Flow::Quit);
    assert_eq!(Model::new().key(Key::Interrupt), Flow::Quit);
}

fn draw(m: &Model, w: u16, h: u16, colour: bool) -> (String, ratatui::buffer::Buffer) {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    let chrome = Chrome {
        source: "http://127.0.0.1:9847".into(),
        refresh_seconds: 1.0,
        colour,
    };
    t.draw(|f| view::draw(f, m, &chrome)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..h {
        for x in 0..w {
            text.push_str(buf[(x, y)].symbol());
        }
        text.push('\n');
    }
    (text, buf)
}

fn row<'a>(screen: &'a str, name: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name}:\n{screen}"))
}

#[test]
fn at_80x24_the_rows_header_and_sort_marker_show() {
    let m = model();
    let (s, _) = draw(&m, 80, 24, true);
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].starts_with("vmscope top - hv-7 - http://127.0.0.1:9847 - every 1s - "),
        "{s}"
    );
    assert!(lines[1].contains("CPU 42.5% of 16 cpus"), "{s}");
    assert!(lines[1].contains("MEM 16.0G/64.0G (25%)"), "{s}");
    assert!(lines[1].contains("LOAD 3.50 2.25 1.00"), "{s}");
    assert!(lines[2].contains("VMs 3 (3 running)"), "{s}");
    assert!(lines[2].contains("ALERTS 1 firing: vm_cpu_high"), "{s}");
    let head = lines[4];
    for t in [
        "NAME",
        "OWNER",
        "STATE",
        "VCPU",
        "CPU%▼",
        "STEAL%",
        "RSS/ALLOC",
        "RX/s",
    ] {
        assert!(head.contains(t), "{t} missing at 80 columns:\n{s}");
    }
    assert!(!head.contains("UPTIME") && !head.contains("WR/s"), "{s}");
    // Busy first (CPU order), with its figures.
    assert!(lines[5].starts_with("busy"), "{s}");
    let busy = row(&s, "busy");
    for want in ["alice", "running", "190", "15.0", "200M/1.0G"] {
        assert!(busy.contains(want), "{want} not in {busy:?}");
    }
    assert!(row(&s, "web").contains("1.0M"), "{s}");
    assert!(lines.iter().all(|l| l.chars().count() == 80));
}

#[test]
fn at_200x50_every_column_shows() {
    let mut m = model();
    m.key(Key::Char('M'));
    let (s, _) = draw(&m, 200, 50, true);
    let head = s.lines().nth(4).unwrap();
    for c in Column::ALL {
        assert!(head.contains(c.title()), "{} missing:\n{s}", c.title());
    }
    assert!(head.contains("RSS/ALLOC▼"), "{head}");
    assert!(s.lines().nth(5).unwrap().starts_with("idle"), "{s}");
    let web = row(&s, "web");
    for want in ["01:00:02", "0:01:41", "2.0M"] {
        assert!(web.contains(want), "{want} not in {web:?}");
    }
}

#[test]
fn the_sort_column_stays_on_a_narrow_screen() {
    let mut m = model();
    m.sort = Column::DiskWrite;
    let (s, _) = draw(&m, 80, 24, false);
    assert!(s.lines().nth(4).unwrap().contains("WR/s▼"), "{s}");
    assert!(view::columns_for(80, Column::Uptime).contains(&Column::Uptime));
    assert!(!view::columns_for(80, Column::Cpu).contains(&Column::Uptime));
}

#[test]
fn colour_marks_busy_rows_and_no_color_marks_nothing() {
    let m = model();
    let (s, buf) = draw(&m, 80, 24, true);
    let y = s.lines().position(|l| l.starts_with("busy")).unwrap() as u16;
    let cpu_x = s.lines().nth(4).unwrap().find("CPU%").unwrap() as u16;
    // The CPU cell of a VM using 95% of its vCPUs is red.
    assert!(
        (cpu_x..cpu_x + 6).any(|x| buf[(x, y)].fg == Color::Red),
        "{s}"
    );
    let (plain_text, plain) = draw(&m, 80, 24, false);
    assert_eq!(plain_text, s, "the same text without colour");
    for cell in plain.content() {
        assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset), "{cell:?}");
    }
}

#[test]
fn detail_shows_vcpus_taps_and_alerts() {
    let mut m = model();
    m.selected = Some("b".into());
    m.key(Key::Enter);
    let (s, _) = draw(&m, 80, 24, false);
    assert!(s.contains("busy id b  qemu  running  owner alice"), "{s}");
    assert!(s.contains("CPU 190 of one host core"), "{s}");
    let vcpu0 = s.lines().find(|l| l.starts_with("0 ")).unwrap();
    assert!(vcpu0.contains("95.0") && vcpu0.contains("20.0"), "{vcpu0}");
    assert!(s.contains("tap-busy"), "{s}");
    assert!(s.contains("alerts: 1 firing"), "{s}");
    assert!(
        s.contains("vm_cpu_high (warning) since 2027-01-15T08:00:00Z"),
        "{s}"
    );
}

#[test]
fn errors_and_the_filter_prompt_show_in_the_header() {
    let mut m = model();
    m.failed("cannot reach the agent at http://127.0.0.1:9847: connection refused".into());
    let (s, _) = draw(&m, 200, 50, false);
    assert!(
        s.contains("! cannot reach the agent at http://127.0.0.1:9847: connection refused (showing the last figures)"),
        "{s}"
    );
    assert!(row(&s, "busy").contains("190"), "the last figures stay");
    m.key(Key::Char('/'));
    m.key(Key::Char('x'));
    let (s, _) = draw(&m, 80, 24, false);
    assert!(s.contains("filter (regex; name: owner:): x_"), "{s}");
    m.key(Key::Enter);
    let (s, _) = draw(&m, 80, 24, false);
    assert!(s.contains("no VM matches the filter"), "{s}");
    // Grouped: owners in the name column, VM counts beside them.
    m.key(Key::Esc);
    m.key(Key::Char('g'));
    let (s, _) = draw(&m, 80, 24, false);
    let head = s.lines().nth(4).unwrap();
    assert!(head.starts_with("OWNER") && head.contains("VMS"), "{s}");
    assert!(row(&s, "alice").contains(" 2 "), "{s}");
}

#[test]
fn batch_lines() {
    let m = model();
    let lines = m.lines();
    let time = batch::timestamp(T0 + 2.0);
    assert_eq!(time, "2027-01-15T08:00:02.000Z");
    assert!(batch::csv_header().starts_with("time,vm_id,name,owner,state,vcpus,cpu_percent,"));
    let csv = batch::csv_line(&lines[0], &time);
    assert!(
        csv.starts_with("2027-01-15T08:00:02.000Z,b,busy,alice,running,2,190,76,15,209715200,1073741824,0,0,0,0,3602,53.8"),
        "{csv}"
    );
    assert_eq!(csv.matches(',').count(), batch::FIELDS.len() - 1);
    let j: serde_json::Value = serde_json::from_str(&batch::json_line(&lines[0], &time)).unwrap();
    assert_eq!(j["name"], "busy");
    assert_eq!(j["cpu_percent"], 190.0);
    let mut fresh = Model::new();
    fresh.update(sample(T0, vec![vm("x", "a,\"b\"", None, 1.0, 1)]));
    let l = &fresh.lines()[0];
    let csv = batch::csv_line(l, &time);
    assert!(csv.contains(",\"a,\"\"b\"\"\",-,running,2,,,,"), "{csv}");
    let j: serde_json::Value = serde_json::from_str(&batch::json_line(l, &time)).unwrap();
    assert!(j["cpu_percent"].is_null());
}

#[test]
fn metrics_json_reads_every_figure() {
    let body = r#"{"families":[
      {"name":"vmscope_vm_info","type":"gauge","help":"","samples":[
        {"labels":{"vm_id":"u1","vm_name":"web","hypervisor":"qemu","owner_user":"alice","owner_project":"demo"},"value":1}]},
      {"name":"vmscope_vm_state","type":"gauge","samples":[
        {"labels":{"vm_id":"u1","vm_name":"web","state":"running"},"value":0},
        {"labels":{"vm_id":"u1","vm_name":"web","state":"paused"},"value":1}]},
      {"name":"vmscope_vm_start_time_seconds","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":1700000000.5}]},
      {"name":"vmscope_vm_cpu_seconds_total","samples":[
        {"labels":{"vm_id":"u1","vm_name":"web","mode":"user"},"value":10.5},
        {"labels":{"vm_id":"u1","vm_name":"web","mode":"system"},"value":2}]},
      {"name":"vmscope_vm_cpu_guest_seconds_total","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":9}]},
      {"name":"vmscope_vm_vcpu_seconds_total","samples":[
        {"labels":{"vm_id":"u1","vm_name":"web","vcpu":"1"},"value":4},
        {"labels":{"vm_id":"u1","vm_name":"web","vcpu":"0"},"value":5}]},
      {"name":"vmscope_vm_vcpu_wait_seconds_total","samples":[{"labels":{"vm_id":"u1","vm_name":"web","vcpu":"0"},"value":0.25}]},
      {"name":"vmscope_vm_allocated_vcpus","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":2}]},
      {"name":"vmscope_vm_memory_allocated_bytes","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":1073741824}]},
      {"name":"vmscope_vm_memory_rss_bytes","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":52428800}]},
      {"name":"vmscope_vm_memory_utilization_ratio","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":"NaN"}]},
      {"name":"vmscope_vm_network_receive_bytes_total","samples":[{"labels":{"vm_id":"u1","vm_name":"web","interface":"tap0"},"value":100}]},
      {"name":"vmscope_vm_network_transmit_bytes_total","samples":[{"labels":{"vm_id":"u1","vm_name":"web","interface":"tap0"},"value":200}]},
      {"name":"vmscope_vm_io_read_bytes_total","samples":[{"labels":{"vm_id":"u1","vm_name":"web"},"value":7}]},
      {"name":"vmscope_vm_disk_read_bytes_total","samples":[
        {"labels":{"vm_id":"u1","vm_name":"web","device":"d0"},"value":1000},
        {"labels":{"vm_id":"u1","vm_name":"web","device":"d1"},"value":24}]},
      {"name":"vmscope_vm_disk_write_bytes_total","samples":[{"labels":{"vm_id":"u1","vm_name":"web","device":"d0"},"value":5}]},
      {"name":"vmscope_http_request_duration_seconds","type":"histogram","samples":[{"labels":{},"buckets":[{"le":"+Inf","count":1}],"sum":0.1,"count":1}]},
      {"name":"vmscope_host_cpus","samples":[{"labels":{},"value":8}]},
      {"name":"vmscope_host_cpu_ratio","samples":[{"labels":{},"value":0.5}]},
      {"name":"vmscope_host_load1","samples":[{"labels":{},"value":1.5}]},
      {"name":"vmscope_snapshot_timestamp_seconds","samples":[{"labels":{},"value":1800000000.25}]}
    ]}"#;
    let s = Sample::from_metrics_json(body.as_bytes()).unwrap();
    assert_eq!(s.at, 1_800_000_000.25);
    let h = s.host.unwrap();
    assert_eq!((h.cpus, h.cpu_ratio, h.load[0]), (8, Some(0.5), 1.5));
    let v = &s.vms[0];
    assert_eq!(
        (v.id.as_str(), v.name.as_str(), v.state.as_str()),
        ("u1", "web", "paused")
    );
    assert_eq!(v.owner(), "alice/demo");
    assert_eq!(v.cpu_seconds, 12.5);
    assert_eq!(v.guest_seconds, Some(9.0));
    assert_eq!(
        v.vcpus,
        [
            VcpuSample {
                index: 0,
                cpu_seconds: 5.0,
                wait_seconds: Some(0.25)
            },
            VcpuSample {
                index: 1,
                cpu_seconds: 4.0,
                wait_seconds: None
            },
        ]
    );
    assert_eq!(
        (v.vcpus_allocated, v.memory_allocated_bytes),
        (Some(2), Some(1 << 30))
    );
    assert_eq!(v.memory_rss_bytes, 50 << 20);
    assert_eq!(
        v.taps,
        [TapSample {
            interface: "tap0".into(),
            rx_bytes: 100,
            tx_bytes: 200
        }]
    );
    // The hypervisor's per-device figures win over /proc/PID/io.
    assert_eq!(
        (v.disk_read_bytes, v.disk_write_bytes),
        (Some(1024), Some(5))
    );
    assert_eq!(v.start_time_seconds, 1_700_000_000.5);
    // A tenant's view has no host families; anything else is an error.
    let tenant = r#"{"families":[{"name":"vmscope_snapshot_timestamp_seconds","samples":[{"labels":{},"value":1}]}]}"#;
    assert_eq!(
        Sample::from_metrics_json(tenant.as_bytes()).unwrap().host,
        None
    );
    assert!(Sample::from_metrics_json(b"<html>").is_err());
    assert!(Sample::from_metrics_json(b"{\"data\":[]}").is_err());
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmscope"));
    for (k, _) in std::env::vars() {
        if k.starts_with("VMSCOPE_") {
            c.env_remove(k);
        }
    }
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn batch_over_the_fixture_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host1");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nproc = {:?}\nrun = {:?}\nrootfs = {:?}\n",
            root.join("proc"),
            root.join("run"),
            root.join("rootfs")
        ),
    )
    .unwrap();
    let (code, out, err) = run(bin()
        .args(["top", "--batch", "-n", "2", "-d", "0.1", "-c"])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], batch::csv_header().trim_end());
    // Five VMs, two refreshes.
    assert_eq!(lines.len(), 1 + 2 * 5, "{out}");
    assert!(lines[1].contains(",alpha,"), "{out}");
    let (code, out, err) = run(bin()
        .args([
            "top", "--batch", "-n", "1", "-d", "0.1", "--output", "json", "-c",
        ])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["name"], "alpha");
    assert_eq!(first["vcpus"], 2);
}

#[test]
fn bad_invocations_are_clear() {
    for (args, code, want) in [
        (
            vec!["--url", "localhost:9847"],
            2,
            "--url: \"localhost:9847\": the scheme must be http or https",
        ),
        (
            vec!["--url", "http://x:y@127.0.0.1:1"],
            2,
            "carries credentials",
        ),
        (vec!["-d", "0"], 2, "-d/--delay: 0 is out of range"),
        (
            vec!["--token-file", "/nonexistent"],
            2,
            "--token-file and --ca-file are for --url",
        ),
        (
            vec![
                "--url",
                "http://127.0.0.1:9",
                "--token-file",
                "/nonexistent/t",
            ],
            2,
            "--token-file: cannot read /nonexistent/t",
        ),
        (
            vec!["--url", "http://127.0.0.1:9"],
            1,
            "error: cannot reach the agent at http://127.0.0.1:9: ",
        ),
    ] {
        let (c, _, err) = run(bin().args(["top", "--batch", "-n", "1"]).args(&args));
        assert_eq!(c, code, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (c, _, err) = run(bin().args(["top", "--batch", "-n", "0"]));
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("-n/--iterations: give at least 1"), "{err}");
    // Not a terminal and no --batch.
    let (c, _, err) = run(bin().args(["top", "--url", "http://127.0.0.1:9"]));
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("stdout is not a terminal: use --batch"),
        "{err}"
    );
    let (c, _, err) = run(bin().args(["top", "--output", "json"]));
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("--batch"), "{err}");
}
