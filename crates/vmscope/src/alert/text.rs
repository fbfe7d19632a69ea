//! Text for people: one summary line per alert, and the message body of a
//! whole notification (Telegram, Sentry, logs). Pure string building.

use std::fmt::Write as _;
use std::time::Duration;

use super::notification::{Alert, Notification, Status, Transition};
use super::rules::{GIB, Metric, Scope};

/// Notifications list at most this many alerts in their text.
pub const MAX_LINES: usize = 20;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

fn op(metric: Metric, firing: bool) -> &'static str {
    match (metric.direction(), firing) {
        (super::rules::Direction::AtOrAbove, true) => ">=",
        (super::rules::Direction::AtOrAbove, false) => "<",
        (super::rules::Direction::AtOrBelow, true) => "<=",
        (super::rules::Direction::AtOrBelow, false) => ">",
    }
}

/// The one-line summary of `alert`, whose condition held (firing) or was
/// clear (resolved) for `held`.
pub fn summary(metric: Metric, alert: &Alert, held: Duration) -> String {
    let firing = alert.status == Status::Firing;
    let value = alert
        .value
        .map_or_else(|| "unknown".to_owned(), |v| metric.format_value(v));
    let bound = format!(
        "{} {}",
        op(metric, firing),
        metric.format_value(alert.threshold)
    );
    let held = humantime::format_duration(Duration::from_secs(held.as_secs()));
    let ctx = &alert.context;
    let what = match (&alert.scope, metric) {
        (Scope::Host, Metric::HostCpuRatio) => {
            let mut s = format!("host CPU at {value} ({bound})");
            if firing && !ctx.top_vms.is_empty() {
                s.push_str("; top VMs by CPU: ");
                let list: Vec<String> = ctx
                    .top_vms
                    .iter()
                    .map(|v| format!("{} {:.2} cores", v.vm_name, v.cpu_cores.unwrap_or(0.0)))
                    .collect();
                s.push_str(&list.join(", "));
            }
            s
        }
        (Scope::Host, _) => {
            let mut s = format!("host memory used {value} ({bound})");
            if firing {
                if let Some(rss) = ctx.hypervisor_rss_bytes {
                    let _ = write!(
                        s,
                        "; hypervisor processes RSS {} in {} VMs",
                        gib(rss),
                        ctx.vm_count.unwrap_or(0)
                    );
                }
                if !ctx.top_vms.is_empty() {
                    s.push_str("; top VMs by RSS: ");
                    let list: Vec<String> = ctx
                        .top_vms
                        .iter()
                        .map(|v| format!("{} {}", v.vm_name, gib(v.memory_rss_bytes)))
                        .collect();
                    s.push_str(&list.join(", "));
                }
            }
            s
        }
        (Scope::Filesystem { mountpoint, .. }, _) => match &ctx.filesystem {
            Some(fs) => format!(
                "filesystem {} on {} ({}): {} free, {} available, of {} ({bound})",
                fs.mountpoint,
                fs.device,
                fs.fstype,
                gib(fs.free_bytes),
                gib(fs.avail_bytes),
                gib(fs.size_bytes)
            ),
            None => format!("filesystem {mountpoint}: {value} ({bound}), no longer mounted"),
        },
        (Scope::Vm { vm_name, vm_id }, Metric::VmCpuUtilizationRatio) => match &ctx.vm {
            Some(vm) if alert.value.is_some() => format!(
                "VM {vm_name} ({vm_id}) uses {value} of its {} vCPUs, {:.2} cores ({bound})",
                vm.allocated_vcpus
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                vm.cpu_cores.unwrap_or(0.0)
            ),
            _ => format!("VM {vm_name} ({vm_id}) CPU {value} ({bound})"),
        },
        (Scope::Vm { vm_name, vm_id }, _) => match &ctx.vm {
            Some(vm) if alert.value.is_some() => format!(
                "VM {vm_name} ({vm_id}) memory at {value} of allocated, RSS {} of {} ({bound})",
                gib(vm.memory_rss_bytes),
                vm.allocated_memory_bytes
                    .map_or_else(|| "?".to_owned(), gib)
            ),
            _ => format!("VM {vm_name} ({vm_id}) memory {value} ({bound})"),
        },
        (scope @ Scope::Owner { .. }, m) if m.is_usage() => {
            usage_text(metric, alert, scope, &value, firing)
        }
        (scope @ Scope::Owner { .. }, _) => owner_text(metric, alert, scope, &value, &bound),
    };
    if firing {
        format!("{what} for {held}")
    } else if alert.value.is_none() {
        format!("resolved: {what}; gone or unmeasured for {held}")
    } else {
        format!("resolved: {what} for {held}")
    }
}

/// The owner line: who, the total over how many VMs, the bound, and (while
/// firing) the owner's top VMs by what the rule measures.
fn owner_text(metric: Metric, alert: &Alert, scope: &Scope, value: &str, bound: &str) -> String {
    let who = scope.describe();
    let (what, by) = match metric {
        Metric::OwnerCpuCores => ("CPU in use", "CPU"),
        Metric::OwnerAllocatedVcpus => ("vCPUs allocated", "vCPUs"),
        Metric::OwnerMemoryRssGib => ("memory RSS", "RSS"),
        _ => ("memory allocated", "allocated memory"),
    };
    let ctx = &alert.context;
    let Some(owner) = ctx.owner.as_ref().filter(|_| alert.value.is_some()) else {
        return format!("{who} {what} {value} ({bound})");
    };
    let vms = if owner.vm_count == 1 { "VM" } else { "VMs" };
    let mut s = format!("{who} {what} {value} in {} {vms} ({bound})", owner.vm_count);
    if alert.status == Status::Firing && !ctx.top_vms.is_empty() {
        let list: Vec<String> = ctx
            .top_vms
            .iter()
            .map(|v| {
                let part = match metric {
                    Metric::OwnerCpuCores => format!("{:.2} cores", v.cpu_cores.unwrap_or(0.0)),
                    Metric::OwnerAllocatedVcpus => v
                        .allocated_vcpus
                        .map_or_else(|| "? vCPUs".to_owned(), |n| format!("{n} vCPUs")),
                    Metric::OwnerMemoryRssGib => gib(v.memory_rss_bytes),
                    _ => v
                        .allocated_memory_bytes
                        .map_or_else(|| "? GiB".to_owned(), gib),
                };
                format!("{} {part}", v.vm_name)
            })
            .collect();
        let _ = write!(s, "; top VMs by {by}: {}", list.join(", "));
    }
    s
}

/// The usage line: who, what they used in the window, against the quota
/// (`project research (p1) used 91200 CPU seconds in the last 1day
/// (>= quota 86400 CPU seconds)`).
fn usage_text(metric: Metric, alert: &Alert, scope: &Scope, value: &str, firing: bool) -> String {
    let who = scope.describe();
    let window = alert
        .context
        .usage
        .as_ref()
        .map_or_else(String::new, |u| format!(" in the last {}", u.window));
    format!(
        "{who} used {value}{window} ({} quota {})",
        op(metric, firing),
        metric.format_value(alert.threshold)
    )
}

/// Headline of a notification: `[FIRING warning] vm_cpu on host1: 2 fired, 1 resolved`.
pub fn headline(n: &Notification) -> String {
    let mut parts = Vec::new();
    for (t, word) in [
        (Transition::Fired, "fired"),
        (Transition::Repeat, "still firing"),
        (Transition::Resolved, "resolved"),
    ] {
        let c = n.count(t);
        if c > 0 {
            parts.push(format!("{c} {word}"));
        }
    }
    format!(
        "[{} {}] {} on {}: {}",
        n.status().as_str().to_ascii_uppercase(),
        n.severity,
        n.rule,
        n.host,
        parts.join(", ")
    )
}

/// Headline plus one line per alert (at most [`MAX_LINES`]).
pub fn render(n: &Notification) -> String {
    let mut out = headline(n);
    for a in n.alerts.iter().take(MAX_LINES) {
        out.push_str("\n- ");
        out.push_str(&a.summary);
    }
    if n.alerts.len() > MAX_LINES {
        let _ = write!(out, "\n... and {} more", n.alerts.len() - MAX_LINES);
    }
    out
}
