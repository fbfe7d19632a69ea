//! Drawing `vmscope top` with ratatui: a header (host, VM counts, alerts,
//! the source's state), the VM table, and over it the detail screen, the
//! sort menu or the filter prompt.
//!
//! Reads only the [`Model`] and a [`Chrome`] (what the command line said);
//! draws into any ratatui backend, so tests use `TestBackend`. Columns are
//! dropped by priority when the terminal is narrow (80 columns keep name,
//! owner, state, vCPUs, CPU, steal, memory and network), and the sort column
//! always stays. Without colour (`NO_COLOR`) only bold and reverse video
//! mark things; figures are never told by colour alone.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Cell, Clear, Paragraph, Row, Table, TableState};

use super::model::{Column, Line, Model, Screen};
use crate::cli::vms::human_bytes;

/// What the screen says besides the model.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// `local` or the agent's URL (without credentials).
    pub source: String,
    pub refresh_seconds: f64,
    pub colour: bool,
}

/// Columns in the order they are given room; the sort column goes first
/// after the name whatever its place here.
const PRIORITY: [Column; 14] = [
    Column::Name,
    Column::Cpu,
    Column::Mem,
    Column::Owner,
    Column::State,
    Column::Steal,
    Column::Vcpus,
    Column::NetRx,
    Column::NetTx,
    Column::Guest,
    Column::DiskRead,
    Column::DiskWrite,
    Column::Uptime,
    Column::Time,
];

/// The narrowest the name column gets.
const NAME_MIN: u16 = 12;

fn width(c: Column) -> u16 {
    match c {
        Column::Name => NAME_MIN,
        Column::Owner => 12,
        Column::State => 7,
        Column::Vcpus => 4,
        Column::Cpu | Column::Guest | Column::Steal => 6,
        Column::Mem => 11,
        Column::NetRx | Column::NetTx | Column::DiskRead | Column::DiskWrite => 7,
        Column::Uptime => 8,
        Column::Time => 9,
    }
}

/// The columns that fit in `total` cells (one space between columns), in
/// screen order.
pub fn columns_for(total: u16, sort: Column) -> Vec<Column> {
    let mut order: Vec<Column> = vec![Column::Name];
    if sort != Column::Name {
        order.push(sort);
    }
    for c in PRIORITY {
        if !order.contains(&c) {
            order.push(c);
        }
    }
    let mut used = 0u16;
    let mut chosen = Vec::new();
    for c in order {
        let w = width(c) + u16::from(!chosen.is_empty());
        if used + w <= total || chosen.is_empty() {
            used += w;
            chosen.push(c);
        }
    }
    Column::ALL
        .iter()
        .copied()
        .filter(|c| chosen.contains(c))
        .collect()
}

fn style(chrome: &Chrome, colour: Style, plain: Style) -> Style {
    if chrome.colour { colour } else { plain }
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame<'_>, model: &Model, chrome: &Chrome) {
    let area = f.area();
    let [head, body] = Layout::vertical([Constraint::Length(4), Constraint::Min(1)]).areas(area);
    f.render_widget(Paragraph::new(header(model, chrome)), head);
    match &model.screen {
        Screen::Detail(id) => detail(f, body, model, chrome, id),
        _ => table(f, body, model, chrome),
    }
    if let Screen::SortMenu(i) = model.screen {
        sort_menu(f, body, i, chrome);
    }
}

fn header(model: &Model, chrome: &Chrome) -> Vec<TextLine<'static>> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let at = model
        .sample()
        .map(|s| s.at)
        .filter(|a| *a > 0.0)
        .map(clock)
        .unwrap_or_else(|| "--:--:--".into());
    // /metrics.json carries no host name: then the title goes without.
    let host = model
        .host()
        .and_then(|h| h.hostname.clone())
        .map(|h| format!(" - {}", clean(&h)))
        .unwrap_or_default();
    let title = TextLine::from(vec![
        Span::styled("vmscope top", style(chrome, bold.fg(Color::Cyan), bold)),
        Span::raw(format!(
            "{host} - {} - every {}s - {at} UTC",
            chrome.source,
            trim_float(chrome.refresh_seconds)
        )),
    ]);
    let hostline = match model.host() {
        Some(h) => {
            let used = h
                .memory_total_bytes
                .saturating_sub(h.memory_available_bytes);
            let mem_pct = if h.memory_total_bytes > 0 {
                used as f64 / h.memory_total_bytes as f64 * 100.0
            } else {
                0.0
            };
            let cpu = h
                .cpu_ratio
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into());
            TextLine::from(vec![
                Span::styled("CPU ", bold),
                Span::raw(format!("{cpu} of {} cpus   ", h.cpus)),
                Span::styled("MEM ", bold),
                Span::raw(format!(
                    "{}/{} ({mem_pct:.0}%)   ",
                    human_bytes(used as f64),
                    human_bytes(h.memory_total_bytes as f64)
                )),
                Span::styled("LOAD ", bold),
                Span::raw(format!(
                    "{:.2} {:.2} {:.2}",
                    h.load[0], h.load[1], h.load[2]
                )),
            ])
        }
        None => TextLine::from("host figures not visible to this token"),
    };
    let states: Vec<String> = model
        .state_counts()
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let mut vmline = vec![
        Span::styled("VMs ", bold),
        Span::raw(format!("{}", model.vm_count())),
    ];
    if !states.is_empty() {
        vmline.push(Span::raw(format!(" ({})", states.join(", "))));
    }
    vmline.push(Span::raw("   "));
    vmline.push(Span::styled("ALERTS ", bold));
    match model.alerts() {
        None => vmline.push(Span::raw("-")),
        Some([]) => vmline.push(Span::raw("0 firing")),
        Some(a) => {
            let mut rules: Vec<&str> = a.iter().map(|a| a.rule.as_str()).collect();
            rules.sort_unstable();
            rules.dedup();
            vmline.push(Span::styled(
                format!("{} firing", a.len()),
                style(
                    chrome,
                    bold.fg(Color::Red),
                    bold.add_modifier(Modifier::REVERSED),
                ),
            ));
            vmline.push(Span::raw(format!(": {}", rules.join(", "))));
        }
    }
    let status = if let Screen::FilterInput(text) = &model.screen {
        TextLine::from(vec![
            Span::styled("filter (regex; name: owner:): ", bold),
            Span::raw(format!("{text}_")),
        ])
    } else if let Some(e) = &model.source_error {
        TextLine::from(Span::styled(
            format!("! {e} (showing the last figures)"),
            style(
                chrome,
                bold.fg(Color::Red),
                bold.add_modifier(Modifier::REVERSED),
            ),
        ))
    } else if let Some(m) = &model.message {
        TextLine::from(Span::styled(
            m.clone(),
            style(chrome, bold.fg(Color::Yellow), bold),
        ))
    } else {
        let mut s = format!(
            "sort {} {}",
            model.sort.title(),
            if model.descending { "desc" } else { "asc" }
        );
        if let Some(f) = &model.filter {
            s.push_str(&format!("   filter {:?}", f.text));
        }
        if model.grouped {
            s.push_str("   grouped by owner");
        }
        s.push_str("   P M N T F < > sort  / filter  g group  Enter detail  q quit");
        TextLine::from(s)
    };
    vec![title, hostline, TextLine::from(vmline), status]
}

fn table(f: &mut Frame<'_>, area: Rect, model: &Model, chrome: &Chrome) {
    let lines = model.lines();
    let cols = columns_for(area.width, model.sort);
    let marker = if model.descending { "▼" } else { "▲" };
    let head = Row::new(cols.iter().map(|c| {
        let mut title = match (model.grouped, c) {
            (true, Column::Name) => "OWNER",
            (true, Column::Owner) => "VMS",
            _ => c.title(),
        }
        .to_owned();
        if *c == model.sort {
            title.push_str(marker);
        }
        let cell = Cell::from(align(*c, &title));
        if *c == model.sort {
            cell.style(Style::default().add_modifier(Modifier::UNDERLINED))
        } else {
            cell
        }
    }))
    .style(style(
        chrome,
        Style::default()
            .fg(Color::Black)
            .bg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
    ));
    let rows: Vec<Row<'_>> = lines
        .iter()
        .map(|l| Row::new(cols.iter().map(|c| cell(*c, l, model.grouped, chrome))))
        .collect();
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|c| match c {
            Column::Name => Constraint::Min(NAME_MIN),
            c => Constraint::Length(width(*c)),
        })
        .collect();
    let empty = rows.is_empty();
    let t = Table::new(rows, widths)
        .header(head)
        .row_highlight_style(style(
            chrome,
            Style::default()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
            Style::default().add_modifier(Modifier::REVERSED),
        ));
    let mut state = TableState::default().with_selected(model.selected_index(&lines));
    f.render_stateful_widget(t, area, &mut state);
    if empty {
        let msg = if model.sample().is_none() {
            "waiting for the first read..."
        } else if model.filter.is_some() {
            "no VM matches the filter (Esc clears it)"
        } else {
            "no VMs"
        };
        let [_, below] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
        f.render_widget(Paragraph::new(msg), below);
    }
}

/// Text columns to the left, figures to the right, within the column.
fn align(c: Column, s: &str) -> String {
    match c {
        Column::Name | Column::Owner | Column::State => s.to_owned(),
        c => format!("{s:>w$}", w = usize::from(width(c))),
    }
}

fn cell<'a>(c: Column, l: &Line, grouped: bool, chrome: &Chrome) -> Cell<'a> {
    let dash = || "-".to_owned();
    let pct = |v: Option<f64>| v.map(percent).unwrap_or_else(dash);
    let rate = |v: Option<f64>| v.map(human_bytes).unwrap_or_else(dash);
    let text = match c {
        Column::Name => clean(&l.name),
        Column::Owner if grouped => l.vms.to_string(),
        Column::Owner => clean(&l.owner),
        Column::State => l.state.clone(),
        Column::Vcpus => l.vcpus.map(|n| n.to_string()).unwrap_or_else(dash),
        Column::Cpu => pct(l.cpu_pct),
        Column::Guest => pct(l.guest_pct),
        Column::Steal => pct(l.steal_pct),
        Column::Mem => format!(
            "{}/{}",
            short_bytes(l.rss_bytes as f64),
            l.allocated_bytes
                .map(|a| short_bytes(a as f64))
                .unwrap_or_else(|| "?".into())
        ),
        Column::NetRx => rate(l.net_rx),
        Column::NetTx => rate(l.net_tx),
        Column::DiskRead => rate(l.disk_read),
        Column::DiskWrite => rate(l.disk_write),
        Column::Uptime => l.uptime_seconds.map(uptime).unwrap_or_else(dash),
        Column::Time => cpu_time(l.cpu_seconds),
    };
    let cell = Cell::from(align(c, &text));
    if !chrome.colour {
        return cell;
    }
    // Busy VMs stand out: CPU against the row's vCPUs, steal on its own.
    let share = match (l.cpu_pct, l.vcpus) {
        (Some(p), Some(n)) if n > 0 => Some(p / f64::from(n)),
        _ => None,
    };
    match c {
        Column::Cpu if share.is_some_and(|s| s >= 90.0) => {
            cell.style(Style::default().fg(Color::Red))
        }
        Column::Cpu if share.is_some_and(|s| s >= 50.0) => {
            cell.style(Style::default().fg(Color::Yellow))
        }
        Column::Steal if l.steal_pct.is_some_and(|s| s >= 10.0) => {
            cell.style(Style::default().fg(Color::Red))
        }
        Column::State if l.state != "running" && !grouped => {
            cell.style(Style::default().fg(Color::Yellow))
        }
        _ => cell,
    }
}

fn detail(f: &mut Frame<'_>, area: Rect, model: &Model, chrome: &Chrome, id: &str) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut out: Vec<TextLine<'static>> = Vec::new();
    let Some((vm, rates)) = model.vm(id) else {
        out.push(TextLine::from(format!(
            "VM {} is gone (Esc: back to the list)",
            clean(id)
        )));
        f.render_widget(Paragraph::new(out), area);
        return;
    };
    let at = model.sample().map_or(0.0, |s| s.at);
    out.push(TextLine::from(vec![
        Span::styled(
            format!("{} ", clean(&vm.name)),
            style(chrome, bold.fg(Color::Cyan), bold),
        ),
        Span::raw(format!(
            "id {}  {}  {}  owner {}  (Esc: back)",
            clean(&vm.id),
            vm.hypervisor,
            vm.state,
            clean(&vm.owner())
        )),
    ]));
    let cpu = rates
        .map(|r| format!("{} of one host core", percent(r.cpu_cores * 100.0)))
        .unwrap_or_else(|| "-".into());
    out.push(TextLine::from(format!(
        "CPU {cpu}; {} CPU seconds; up {}",
        trim_float((vm.cpu_seconds * 10.0).round() / 10.0),
        if vm.start_time_seconds > 0.0 {
            uptime((at - vm.start_time_seconds).max(0.0))
        } else {
            "-".into()
        }
    )));
    out.push(TextLine::from(format!(
        "memory: RSS {} of {} allocated",
        human_bytes(vm.memory_rss_bytes as f64),
        vm.memory_allocated_bytes
            .map(|a| human_bytes(a as f64))
            .unwrap_or_else(|| "?".into())
    )));
    out.push(TextLine::from(format!(
        "disk: read {}/s, written {}/s",
        rates
            .and_then(|r| r.disk_read)
            .map(human_bytes)
            .unwrap_or_else(|| "-".into()),
        rates
            .and_then(|r| r.disk_write)
            .map(human_bytes)
            .unwrap_or_else(|| "-".into()),
    )));
    out.push(TextLine::default());
    out.push(TextLine::from(Span::styled(
        format!("{:<8}{:>8}{:>9}", "VCPU", "RUN%", "STEAL%"),
        bold.add_modifier(Modifier::REVERSED),
    )));
    for c in &vm.vcpus {
        let r = rates.and_then(|r| r.vcpus.iter().find(|v| v.index == c.index));
        out.push(TextLine::from(format!(
            "{:<8}{:>8}{:>9}",
            c.index,
            r.map(|r| percent(r.run * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.and_then(|r| r.wait)
                .map(|w| percent(w * 100.0))
                .unwrap_or_else(|| "-".into()),
        )));
    }
    if vm.vcpus.is_empty() {
        out.push(TextLine::from("(no vCPU threads found)"));
    }
    out.push(TextLine::default());
    out.push(TextLine::from(Span::styled(
        format!(
            "{:<16}{:>9}{:>9}{:>10}{:>10}",
            "TAP", "RX/s", "TX/s", "RX", "TX"
        ),
        bold.add_modifier(Modifier::REVERSED),
    )));
    for t in &vm.taps {
        let r = rates.and_then(|r| r.taps.iter().find(|x| x.interface == t.interface));
        out.push(TextLine::from(format!(
            "{:<16}{:>9}{:>9}{:>10}{:>10}",
            clean(&t.interface),
            r.map(|r| human_bytes(r.rx)).unwrap_or_else(|| "-".into()),
            r.map(|r| human_bytes(r.tx)).unwrap_or_else(|| "-".into()),
            human_bytes(t.rx_bytes as f64),
            human_bytes(t.tx_bytes as f64),
        )));
    }
    if vm.taps.is_empty() {
        out.push(TextLine::from("(no TAP interfaces)"));
    }
    out.push(TextLine::default());
    let alerts = model.vm_alerts(id);
    match (model.alerts(), alerts.is_empty()) {
        (None, _) => out.push(TextLine::from(
            "alerts: - (not read: local mode or no watchdog)",
        )),
        (Some(_), true) => out.push(TextLine::from("alerts: none firing")),
        (Some(_), false) => {
            out.push(TextLine::from(Span::styled(
                format!("alerts: {} firing", alerts.len()),
                style(chrome, bold.fg(Color::Red), bold),
            )));
            for a in alerts {
                out.push(TextLine::from(format!(
                    "  {} ({}) since {}",
                    clean(&a.rule),
                    clean(&a.severity),
                    clean(&a.started_at)
                )));
            }
        }
    }
    f.render_widget(Paragraph::new(out), area);
}

fn sort_menu(f: &mut Frame<'_>, body: Rect, selected: usize, chrome: &Chrome) {
    let h = (Column::ALL.len() as u16 + 2).min(body.height);
    let w = 62u16.min(body.width);
    let area = Rect {
        x: body.x + (body.width - w) / 2,
        y: body.y + (body.height - h) / 2,
        width: w,
        height: h,
    };
    let mut lines = vec![TextLine::from(Span::styled(
        "sort by (Up/Down, Enter; Esc: cancel)",
        Style::default().add_modifier(Modifier::BOLD),
    ))];
    for (i, c) in Column::ALL.iter().enumerate() {
        let text = format!(" {:<10}{}", c.title(), c.describe());
        lines.push(if i == selected {
            TextLine::from(Span::styled(
                format!(">{}", &text[1..]),
                style(
                    chrome,
                    Style::default().bg(Color::Cyan).fg(Color::Black),
                    Style::default().add_modifier(Modifier::REVERSED),
                ),
            ))
        } else {
            TextLine::from(text)
        });
    }
    f.render_widget(Clear, area);
    f.render_widget(Paragraph::new(lines), area);
}

/// `12.5`, `100`, `250`: one decimal below 100.
pub fn percent(v: f64) -> String {
    if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// [`human_bytes`] without the decimal from 100 units up, so that
/// `RSS/ALLOC` fits its column: `512M/1.0G`, `12.0G/16.0G`.
fn short_bytes(b: f64) -> String {
    let s = human_bytes(b);
    match s.split_once('.') {
        Some((whole, rest)) if whole.len() >= 3 => {
            format!(
                "{whole}{}",
                rest.trim_start_matches(|c: char| c.is_ascii_digit())
            )
        }
        _ => s,
    }
}

/// `03:12:45` below a day, `12d03h` from a day on.
pub fn uptime(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s >= 86_400 {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    } else {
        format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    }
}

/// CPU time as virt-top's TIME: `h:mm:ss`, hours alone from 1000 h.
fn cpu_time(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s >= 1000 * 3600 {
        format!("{}h", s / 3600)
    } else {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    }
}

fn clock(unix: f64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(unix.max(0.0));
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or("--:--:--").to_owned()
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Names come from command lines: control characters never reach the
/// terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
