//! `vmscope owners`: who uses this host now, without a running agent.
//!
//! Reads: what `vmscope vms` reads (two ticks `--window` apart, with the
//! configured owner sources), then the second snapshot's per-owner totals
//! ([`Usage`], the same sums as `vmscope_user_*` and `/api/v1/owners`).
//! Emits: a table (one row per owner, users first, each kind by most RSS)
//! or, with `-o json`, the `/api/v1/owners` entries. Every owner is listed,
//! also those the exposition folds past `[owners] max_owners`. Cells are
//! cut and cleaned as in `vmscope vms`.
//!
//! Fails: as `vmscope vms` (bad config: status 2; no procfs: status 1).

use anyhow::Context;
use serde::Serialize;

use super::vms::{cell, human_bytes, measure, render};
use super::{Failure, Output, OwnersArgs, print_stdout};
use crate::model::identity::OwnerKind;
use crate::model::usage::{OwnerTotals, Usage};

#[derive(Serialize)]
struct Entry<'a> {
    kind: OwnerKind,
    #[serde(flatten)]
    owner: &'a OwnerTotals,
}

pub fn run(args: OwnersArgs) -> Result<(), Failure> {
    let snap = measure(&args.common, args.window)?;
    let kinds: Vec<OwnerKind> = match args.kind {
        Some(k) => vec![k.into()],
        None => OwnerKind::ALL.to_vec(),
    };
    let mut text = match args.output {
        Output::Json => {
            let entries: Vec<Entry<'_>> = kinds
                .iter()
                .flat_map(|&kind| {
                    snap.usage
                        .kind(kind)
                        .owners
                        .iter()
                        .map(move |owner| Entry { kind, owner })
                })
                .collect();
            serde_json::to_string_pretty(&entries)
                .context("encoding JSON")
                .map_err(Failure::runtime)?
        }
        Output::Table => table(&snap.usage, &kinds),
    };
    text.push('\n');
    print_stdout(&text)
}

/// One row per owner: the largest RSS first within each kind.
pub fn table(usage: &Usage, kinds: &[OwnerKind]) -> String {
    let header = [
        "KIND",
        "OWNER",
        "NAME",
        "VMS(run/all)",
        "VCPUS",
        "CPU(cores)",
        "RSS",
        "MEM ALLOC",
        "NET RX/s",
        "NET TX/s",
    ];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for &kind in kinds {
        let mut owners: Vec<&OwnerTotals> = usage.kind(kind).owners.iter().collect();
        owners.sort_by(|a, b| {
            b.totals
                .memory_rss_bytes
                .cmp(&a.totals.memory_rss_bytes)
                .then_with(|| a.key.cmp(&b.key))
        });
        for o in owners {
            let t = &o.totals;
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            rows.push([
                kind.as_str().to_owned(),
                cell(&o.key),
                cell(o.name.as_deref().unwrap_or("-")),
                format!("{}/{}", t.vms_running, t.vms),
                opt(t.allocated_vcpus.map(|n| n.to_string())),
                opt(t.cpu_cores.map(|c| format!("{c:.2}"))),
                human_bytes(t.memory_rss_bytes as f64),
                opt(t.memory_allocated_bytes.map(|b| human_bytes(b as f64))),
                opt(t.network_rx_bytes_per_second.map(human_bytes)),
                opt(t.network_tx_bytes_per_second.map(human_bytes)),
            ]);
        }
    }
    render(header, &rows, "(no owned VMs found)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::fixture;
    use crate::model::Owner;

    #[test]
    fn one_row_per_owner_biggest_first_hostile_keys_cleaned() {
        let mut snap = fixture::snapshot(7);
        snap.vms[3].owner = Some(std::sync::Arc::new(Owner {
            user_id: Some("evil\n\u{1b}[31mred".into()),
            ..Owner::default()
        }));
        let snap = snap.with_usage(1000);
        let t = table(&snap.usage, &[OwnerKind::User]);
        let lines: Vec<&str> = t.lines().collect();
        // u6 (VM 6, the most RSS), the hostile one (VM 3), u0.
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("KIND"));
        assert!(lines[1].starts_with("user  u6 "), "{t}");
        assert!(lines[1].contains(" 0/1 "), "u6's VM is paused: {t}");
        assert!(lines[2].contains("evil??[31mred"), "{t}");
        assert!(!t.contains('\u{1b}'));
        assert!(lines[3].starts_with("user  u0 "), "{t}");
        let empty = table(&Usage::default(), &OwnerKind::ALL);
        assert!(empty.ends_with("(no owned VMs found)"), "{empty}");
    }
}
