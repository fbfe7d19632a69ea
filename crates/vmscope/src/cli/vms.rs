//! `vmscope vms`: the VMs on this host now, without a running agent.
//!
//! Table cells are at most [`MAX_CELL_CHARS`] characters (longer ones end in
//! `…`) and control characters show as `?`, so a hostile VM name can neither
//! widen the table without bound nor write to the terminal. The OWNER cell
//! names the owner source that said so (`alice/demo (file)`); `-o json`
//! carries it as `owner_source`.

use std::time::Duration;

use anyhow::Context;

use super::{CommonArgs, Failure, Output, VmsArgs, init_logging, load_config, print_stdout};
use crate::model::{Snapshot, VmStats};
use crate::pipeline::Collector;

pub fn run(args: VmsArgs) -> Result<(), Failure> {
    let snap = measure(&args.common, args.window)?;
    let mut text = match args.output {
        Output::Json => serde_json::to_string_pretty(&snap.vms)
            .context("encoding JSON")
            .map_err(Failure::runtime)?,
        Output::Table => table(&snap.vms),
    };
    text.push('\n');
    print_stdout(&text)
}

/// What a one-shot command (`vms`, `owners`) shows: the second of two
/// ticks `window` seconds apart, so that rates have an interval.
pub(super) fn measure(common: &CommonArgs, window: f64) -> Result<Snapshot, Failure> {
    let mut cfg = load_config(common)?;
    if cfg.log.level == "info" && !cfg.is_from_env("log.level") {
        // A one-shot command: only problems are worth printing.
        cfg.log.level = "warn".into();
    }
    init_logging(&cfg);
    // Two ticks: the first lists /proc anyway, and a subscription to
    // process events would only add a warning where it is not allowed.
    cfg.discovery.process_events = crate::config::ProcessEvents::Off;
    if !(window.is_finite() && (0.05..=60.0).contains(&window)) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--window: {window} is out of range (0.05 to 60 seconds)"
        )));
    }
    let mut c = Collector::new(&cfg)
        .context("setting up collection")
        .map_err(Failure::runtime)?;
    c.tick();
    std::thread::sleep(Duration::from_secs_f64(window));
    Ok(c.tick())
}

/// Rows under `header`, each column as wide as its widest cell, two
/// spaces apart; `empty` when there are no rows.
pub(super) fn render<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    empty: &str,
) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header);
    for r in rows {
        line(r.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        out.push_str(empty);
        out.push('\n');
    }
    out.trim_end().to_string()
}

/// Bytes as a short human figure: 1.5G, 512M, 3.0K.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// The widest a table cell gets, in characters. A UUID (36) fits; a longer
/// name is cut, and its full (capped) form is in `-o json`.
pub const MAX_CELL_CHARS: usize = 40;

/// CPU is shown two ways, each with its unit in the header: `CPU(cores)`,
/// host cores busy (1.00 = one host core, the rate of
/// `vmscope_vm_cpu_seconds_total`), and `CPU/vCPU`, that as a share of the
/// VM's vCPUs (what the watchdog's `vm_cpu_utilization_ratio` rule watches).
pub fn table(vms: &[VmStats]) -> String {
    let header = [
        "NAME",
        "ID",
        "HYPERVISOR",
        "OWNER",
        "VCPUS",
        "CPU(cores)",
        "CPU/vCPU",
        "RSS/ALLOC",
        "NET RX/s",
        "NET TX/s",
    ];
    let mut rows: Vec<[String; 10]> = vms
        .iter()
        .map(|v| {
            let r = v.rates.unwrap_or_default();
            let cores = if v.rates.is_some() {
                format!("{:.2}", r.cpu_cores)
            } else {
                "-".into()
            };
            let per_vcpu = v
                .rates
                .and_then(|r| r.cpu_utilization_ratio)
                .map(|u| format!("{:.0}%", u * 100.0))
                .unwrap_or_else(|| "-".into());
            let alloc = v
                .allocated_memory_bytes
                .map(|a| human_bytes(a as f64))
                .unwrap_or_else(|| "?".into());
            [
                cell(&v.name),
                cell(&v.id),
                v.hypervisor.as_str().to_string(),
                owner_cell(v),
                v.allocated_vcpus
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                cores,
                per_vcpu,
                format!("{}/{}", human_bytes(v.memory_rss_bytes as f64), alloc),
                human_bytes(r.network_rx_bytes_per_second),
                human_bytes(r.network_tx_bytes_per_second),
            ]
        })
        .collect();
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
    render(header, &rows, "(no VMs found)")
}

/// `user/project (source)`: the owner's labels and the owner source that
/// attributed the VM (`VmStats::owner_source`). The labels are cut first,
/// so the source always shows and the cell stays within [`MAX_CELL_CHARS`].
fn owner_cell(v: &VmStats) -> String {
    let label = v
        .owner
        .as_ref()
        .and_then(|o| match (o.user_label(), o.project_label()) {
            (Some(u), Some(p)) => Some(format!("{u}/{p}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(p)) => Some(format!("-/{p}")),
            (None, None) => None,
        });
    match (label, v.owner_source) {
        (None, _) => "-".into(),
        (Some(l), None) => cell(&l),
        (Some(l), Some(src)) => {
            let src = cell(src);
            let room = MAX_CELL_CHARS
                .saturating_sub(src.chars().count() + 3)
                .max(2);
            format!("{} ({src})", cut(&l, room))
        }
    }
}

/// VM names come from command lines: keep control characters out of the
/// table, and cut what is longer than [`MAX_CELL_CHARS`] with an ellipsis.
pub(super) fn cell(s: &str) -> String {
    cut(s, MAX_CELL_CHARS)
}

/// [`cell`] with room for `max` characters (at least 2).
fn cut(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max + 1)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_cut_with_an_ellipsis() {
        assert_eq!(cell("web-1"), "web-1");
        assert_eq!(cell("a\nb"), "a?b");
        let exact = "x".repeat(MAX_CELL_CHARS);
        assert_eq!(cell(&exact), exact);
        let long = cell(&"é".repeat(1000));
        assert_eq!(long.chars().count(), MAX_CELL_CHARS);
        assert!(long.ends_with("é…"), "{long}");
    }

    #[test]
    fn owner_cell_names_the_source_and_stays_within_the_cell() {
        use crate::model::{Owner, Source};
        let mut v = VmStats::unmeasured(7, Source::Process);
        v.name = "web1".into();
        v.id = "6f1b3c2a-0000-4000-8000-000000000001".into();
        assert_eq!(owner_cell(&v), "-");
        v.owner = Some(std::sync::Arc::new(Owner {
            user_name: Some("alice".into()),
            project_id: Some("p-42".into()),
            project_name: Some("demo".into()),
            ..Owner::default()
        }));
        v.owner_source = Some("file");
        assert_eq!(owner_cell(&v), "alice/demo (file)");
        let t = table(std::slice::from_ref(&v));
        let (head, row) = t.split_once('\n').unwrap();
        let col = head.find("OWNER").unwrap();
        assert_eq!(row.get(col..col + 17), Some("alice/demo (file)"), "{t}");
        assert!(head.find("VCPUS").unwrap() >= col + 19, "{t}");
        // Attributed before owner sources had names (or by a test): no suffix.
        v.owner_source = None;
        assert_eq!(owner_cell(&v), "alice/demo");
        // A long owner is cut, the source is kept, the cell is capped.
        v.owner_source = Some("cmdline");
        std::sync::Arc::make_mut(v.owner.as_mut().unwrap()).user_name =
            Some(format!("{}\n", "x".repeat(300)));
        let c = owner_cell(&v);
        assert_eq!(c.chars().count(), MAX_CELL_CHARS, "{c}");
        assert!(c.ends_with("… (cmdline)") && !c.contains('\n'), "{c}");
        v.owner = Some(std::sync::Arc::new(Owner::default()));
        assert_eq!(owner_cell(&v), "-");
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(0.0), "0B");
        assert_eq!(human_bytes(1536.0), "1.5K");
        assert_eq!(human_bytes(32.0 * 1024.0 * 1024.0), "32.0M");
    }
}
