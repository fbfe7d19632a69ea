#!/usr/bin/env python3
"""Writes vmscope's Grafana dashboards and Prometheus rules from one config.

    python3 mixin/build.py          # (re)write mixin/dashboards/*.json and mixin/rules/vmscope.yml
    python3 mixin/build.py --check  # exit 1 if a committed file differs from what this writes

Reads: nothing but this file (stdlib Python 3 only: jsonnet and grafonnet are
not packaged for offline builds, and a mixin that needs no toolchain is easy
to vendor). Emits: the files above, byte for byte reproducible (sorted keys
where order does not matter, fixed panel ids). Fails: --check names every file
that is stale; CI runs it (crates/vmscope/tests/pure/mixin.rs).

Everything a site may want to change is in CONFIG below: the job selector,
thresholds and `for` durations of the alerts, the rate windows. The
selectors of every panel are built from SEL / VM_SEL / OWNER_JOIN, so a
different label scheme is a one-line change.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIG = {
    # Which scrape job is vmscope (the alerting rules and the instance picker).
    "job_selector": 'job="vmscope"',
    # Rate window of the recording rules (4 x a 15 s scrape interval).
    "rate_window": "1m",
    # Window of the per-owner rates of the ledger counters: they move once per
    # [ledger] flush_interval (60 s by default), so the window spans several.
    "ledger_rate_window": "5m",
    # Alert thresholds; the first three mirror the watchdog's built-in rules
    # (docs/watchdog.md: host_cpu 0.8, host_memory 0.8, root_fs_free 5 GiB).
    "host_cpu_ratio": 0.8,
    "host_memory_used_ratio": 0.8,
    "root_fs_free_bytes": 5 * 2**30,
    "filesystem_avail_ratio": 0.05,
    "vm_cpu_utilization_ratio": 0.95,
    "vm_memory_utilization_ratio": 0.95,
    "snapshot_age_seconds": 60,
    # The watchdog holds a condition for 30 s by default and evaluates every
    # tick; Prometheus sees a sample per scrape, so `for` is longer here
    # (several scrapes) to ride out one missed scrape.
    "for_host": "5m",
    "for_vm": "10m",
    "for_self": "5m",
    "push_stale_seconds": 300,
    "task_stale_seconds": 300,
    "grafana_schema_version": 39,
    "refresh": "30s",
}

# The selectors, in one place. $instance and $job are dashboard variables.
SEL = 'job=~"$job", instance=~"$instance"'
VM_SEL = SEL + ', vm_name=~"$vm"'
# Narrows per-VM series to the chosen owners through vmscope_vm_info (which
# carries user/project for every VM with an owner; "All" is ".*", which also
# keeps VMs without owner).
OWNER_JOIN = (
    ' * on(job, instance, vm_id) group_left() group by (job, instance, vm_id) '
    '(vmscope_vm_info{' + SEL + ', user=~"$user", project=~"$project"})'
)
RW = "$__rate_interval"

DS = {"type": "prometheus", "uid": "${datasource}"}


# ---------------------------------------------------------------- rules

def recording_rules():
    w = CONFIG["rate_window"]
    lw = CONFIG["ledger_rate_window"]
    vm = []
    # Per VM: the counters summed over their sub-series (modes, vCPUs,
    # interfaces, disks), so one series per VM, ready for topk and tables.
    for rec, src, by in [
        ("vm:vmscope_vm_cpu_seconds:rate" + w, "vmscope_vm_cpu_seconds_total", "mode"),
        ("vm:vmscope_vm_vcpu_wait_seconds:rate" + w, "vmscope_vm_vcpu_wait_seconds_total", "vcpu"),
        ("vm:vmscope_vm_network_receive_bytes:rate" + w, "vmscope_vm_network_receive_bytes_total", "interface"),
        ("vm:vmscope_vm_network_transmit_bytes:rate" + w, "vmscope_vm_network_transmit_bytes_total", "interface"),
        ("vm:vmscope_vm_disk_read_bytes:rate" + w, "vmscope_vm_disk_read_bytes_total", "device"),
        ("vm:vmscope_vm_disk_write_bytes:rate" + w, "vmscope_vm_disk_write_bytes_total", "device"),
    ]:
        vm.append({"record": rec, "expr": f"sum without ({by}) (rate({src}[{w}]))"})
    vm.append({
        "record": "vm:vmscope_vm_cpu_utilization:ratio_rate" + w,
        "expr": f"vm:vmscope_vm_cpu_seconds:rate{w} / vmscope_vm_allocated_vcpus",
    })
    owner = []
    for kind in ("user", "project"):
        for q in ("cpu_seconds", "vcpu_allocated_seconds", "memory_allocated_byte_seconds",
                  "network_receive_bytes", "network_transmit_bytes"):
            owner.append({
                "record": f"{kind}:vmscope_{kind}_{q}:rate{lw}",
                "expr": f"rate(vmscope_{kind}_{q}_total[{lw}])",
            })
    return [
        {"name": "vmscope-vm.rules", "rules": vm},
        {"name": "vmscope-owner.rules", "rules": owner},
    ]


def alert(name, expr, for_, severity, summary, description, runbook):
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "runbook": runbook},
    }


def alerting_rules():
    c = CONFIG
    j = c["job_selector"]
    w = c["rate_window"]
    host = [
        alert("VmscopeHostCpuHigh", f"vmscope_host_cpu_ratio{{{j}}} >= {c['host_cpu_ratio']}",
              c["for_host"], "warning",
              "Host {{ $labels.instance }} CPU is {{ $value | humanizePercentage }} busy.",
              "Mirrors the watchdog's built-in host_cpu rule.",
              "Open the host overview dashboard, sort the top VMs by CPU; move or throttle the busiest VMs, or check the host's own processes (vmscope_vm_* sums below the host figure point there)."),
        alert("VmscopeHostMemoryHigh", f"vmscope_host_memory_used_ratio{{{j}}} >= {c['host_memory_used_ratio']}",
              c["for_host"], "warning",
              "Host {{ $labels.instance }} memory is {{ $value | humanizePercentage }} used.",
              "Mirrors the watchdog's built-in host_memory rule.",
              "Check the top VMs by RSS on the host overview; migrate or stop VMs, or reclaim guest memory with the balloon, before the host swaps or the OOM killer picks a VM."),
        alert("VmscopeRootFilesystemLowFree",
              f"vmscope_host_filesystem_free_bytes{{{j}, mountpoint=\"/\"}} <= {c['root_fs_free_bytes']}",
              c["for_host"], "warning",
              "Host {{ $labels.instance }} has {{ $value | humanize1024 }}B free on /.",
              "Mirrors the watchdog's built-in root_fs_free rule (5 GiB).",
              "Free space on / (old images, logs, core dumps); a full root filesystem stops QEMU from writing its logs and vmscope from writing its state database."),
        alert("VmscopeFilesystemAlmostFull",
              f"vmscope_host_filesystem_avail_bytes{{{j}}} / vmscope_host_filesystem_size_bytes{{{j}}} < {c['filesystem_avail_ratio']}",
              c["for_host"], "warning",
              "{{ $labels.mountpoint }} on {{ $labels.instance }} has {{ $value | humanizePercentage }} space left.",
              "Space available to unprivileged users (the watchdog's filesystem_avail_gib metric, as a ratio).",
              "Find what grows on the filesystem (VM disk images on thin storage grow with their guests); free space or extend it before guests see I/O errors."),
    ]
    vms = [
        alert("VmscopeVmCpuHigh",
              f"vm:vmscope_vm_cpu_utilization:ratio_rate{w}{{{j}}} >= {c['vm_cpu_utilization_ratio']}",
              c["for_vm"], "info",
              "VM {{ $labels.vm_name }} on {{ $labels.instance }} uses {{ $value | humanizePercentage }} of its vCPUs.",
              "Host CPU cores used by the VM's hypervisor process over its allocated vCPUs (the watchdog's vm_cpu_utilization_ratio).",
              "Open the VM detail dashboard: a VM pinned at its vCPU count for long is either busy by design (tell its owner it may need more vCPUs) or spinning (a hung guest); steal (vCPU wait) tells whether the host is short of CPU."),
        alert("VmscopeVmMemoryHigh",
              f"vmscope_vm_memory_utilization_ratio{{{j}}} >= {c['vm_memory_utilization_ratio']}",
              c["for_vm"], "info",
              "VM {{ $labels.vm_name }} on {{ $labels.instance }} holds {{ $value | humanizePercentage }} of its memory.",
              "RSS of the hypervisor process over the VM's allocated memory (the watchdog's vm_memory_utilization_ratio).",
              "The guest has touched all its memory: normal for a long-running guest, a risk for the host if many VMs do it on an overcommitted host. Check host memory; ask the owner, or use the balloon."),
    ]
    self_ = [
        alert("VmscopeDown", f"up{{{j}}} == 0", c["for_self"], "critical",
              "vmscope on {{ $labels.instance }} is not scraped.",
              "Prometheus cannot scrape vmscope: the agent is down, unreachable or refuses the scrape.",
              "On the host: systemctl status vmscope; journalctl -u vmscope; curl http://127.0.0.1:9847/healthz. Check the scrape target's error in Prometheus' /targets (TLS, token, firewall)."),
        alert("VmscopeCollectionStale",
              f"vmscope_snapshot_age_seconds{{{j}}} > {c['snapshot_age_seconds']}",
              c["for_self"], "critical",
              "vmscope on {{ $labels.instance }} serves data {{ $value | humanizeDuration }} old.",
              "The agent answers but its collection loop has not finished a tick for a long time: every per-VM figure is stale.",
              "Look at vmscope's log for a stuck collector (hung NFS mount, a hypervisor socket that never answers) and at vmscope_collector_duration_seconds; restart the agent if the tick does not recover."),
        alert("VmscopeCollectorFailing", f"vmscope_collector_success{{{j}}} == 0", c["for_self"], "warning",
              "vmscope collector {{ $labels.collector }} fails on {{ $labels.instance }}.",
              "A collector has failed on every tick for a while; its figures are missing or stale.",
              "vmscope_collector_errors_total{collector=...} by kind says why (gone, io, parse, timeout); the agent's log names the path or socket. Permissions (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) are the usual cause of io errors."),
        alert("VmscopePushFailing",
              f"time() - vmscope_push_last_success_timestamp_seconds{{{j}}} > {c['push_stale_seconds']}"
              f" and on(job, instance, destination) sum without (kind) (increase(vmscope_push_errors_total{{{j}}}[10m])) > 0",
              c["for_self"], "warning",
              "vmscope cannot push to {{ $labels.destination }} from {{ $labels.instance }}.",
              "No push to the destination succeeded for a while and pushes keep failing; the queue fills and then drops the oldest samples.",
              "vmscope_push_errors_total{destination=...} by kind: http_4xx (rejected: fix URL, token or tenant header), http_5xx/http_429/timeout/unreachable (the receiver is down or overloaded). Check the receiver, then vmscope_push_dropped_samples_total for the gap."),
        alert("VmscopeTaskFailing",
              f"increase(vmscope_task_errors_total{{{j}}}[10m]) > 0"
              f" and on(job, instance, task) (time() - vmscope_task_last_success_timestamp_seconds{{{j}}} > {c['task_stale_seconds']})",
              c["for_self"], "warning",
              "vmscope's background task {{ $labels.task }} keeps failing on {{ $labels.instance }}.",
              "The task (collection, owner refresh, ledger flush, a push, rule evaluation) has errors and no success for a while (vmscope_task_*).",
              "Find the task's own figures on the \"vmscope itself\" dashboard (ledger flush: the state database's disk; owner_refresh: the owner source; pushes: the receiver) and the agent's log lines for it; a task with no success since start never shows a timestamp."),
        alert("VmscopeOwnerSourceFailing", f"vmscope_owner_source_up{{{j}}} == 0", c["for_self"], "warning",
              "vmscope's owner source {{ $labels.source }} fails on {{ $labels.instance }}.",
              "Attribution runs on the last good mapping; VMs started since then have no owner and their usage goes to no one.",
              "vmscope_owner_source_errors_total{source=...} by kind and the agent's log say why (database unreachable, bad credentials, a malformed mapping file); fix the source, it is retried on its interval."),
    ]
    return [
        {"name": "vmscope-host.alerts", "rules": host},
        {"name": "vmscope-vm.alerts", "rules": vms},
        {"name": "vmscope-self.alerts", "rules": self_},
    ]


def yaml_scalar(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(v, ensure_ascii=False)


def to_yaml(groups):
    out = ["# Generated by mixin/build.py from its CONFIG: edit that, then run it.", "groups:"]
    for g in groups:
        out.append(f"  - name: {g['name']}")
        out.append("    rules:")
        for r in g["rules"]:
            first = True
            for key in ("record", "alert", "expr", "for"):
                if key in r:
                    out.append(("      - " if first else "        ") + f"{key}: {yaml_scalar(r[key])}")
                    first = False
            for key in ("labels", "annotations"):
                if key in r:
                    out.append(f"        {key}:")
                    for k, v in r[key].items():
                        out.append(f"          {k}: {yaml_scalar(v)}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- dashboards

class Board:
    """Lays panels out on Grafana's 24-column grid, row by row."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def row(self, title):
        self.newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.y += 1

    def newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def finish(self):
        for i, p in enumerate(self.panels, start=1):
            p["id"] = i
        return self.panels


def target(expr, legend="", instant=False, fmt="time_series"):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "format": fmt}
    return t


def with_refs(targets):
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


def timeseries(title, targets, unit="short", description="", stack=False):
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": with_refs(targets),
        "fieldConfig": {"defaults": {"unit": unit, "custom": {
            "fillOpacity": 10, "showPoints": "never", "lineWidth": 1,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title, expr, unit="short", description="", legend="", text_mode="auto"):
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": with_refs([target(expr, legend, instant=True)]),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": text_mode},
    }


def table(title, targets, description="", unit="short", units=None):
    """An instant table; with several queries their value columns are
    merged on the labels and named by the queries' legends, and `units`
    (legend -> unit) overrides the unit per column."""
    for t in targets:
        t["instant"] = True
        t["range"] = False
        t["format"] = "table"
    with_refs(targets)
    transformations = []
    overrides = []
    if len(targets) > 1:
        transformations = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": {f"Value #{t['refId']}": t["legendFormat"] for t in targets}}},
        ]
        for name, u in sorted((units or {}).items()):
            overrides.append({"matcher": {"id": "byName", "options": name},
                              "properties": [{"id": "unit", "value": u}]})
    else:
        transformations = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides},
        "options": {"showHeader": True},
        "transformations": transformations,
    }


def query_var(name, label, query, multi=False, include_all=False, all_value=None, hide=0):
    v = {
        "type": "query", "name": name, "label": label, "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query, "refresh": 2, "sort": 1, "multi": multi,
        "includeAll": include_all, "hide": hide,
        "current": {}, "options": [], "regex": "",
    }
    if all_value is not None:
        v["allValue"] = all_value
    return v


def variables(extra=()):
    j = CONFIG["job_selector"]
    vs = [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {}, "options": [], "refresh": 1, "regex": "", "hide": 0},
        query_var("job", "Job", f"label_values(vmscope_build_info{{{j}}}, job)", hide=2,
                  include_all=True, all_value=".+"),
        query_var("instance", "Host", 'label_values(vmscope_build_info{job=~"$job"}, instance)',
                  multi=True, include_all=True, all_value=".+"),
    ]
    vs.extend(extra)
    return {"list": vs}


def owner_vars():
    return [
        query_var("user", "User", f'label_values(vmscope_vm_info{{{SEL}}}, user)',
                  multi=True, include_all=True, all_value=".*"),
        query_var("project", "Project", f'label_values(vmscope_vm_info{{{SEL}}}, project)',
                  multi=True, include_all=True, all_value=".*"),
    ]


def dashboard(uid, title, description, panels, extra_vars=(), tags=()):
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
        "uid": uid, "title": title, "description": description,
        "tags": ["vmscope", *tags], "editable": True, "graphTooltip": 1,
        "schemaVersion": CONFIG["grafana_schema_version"], "version": 1,
        "refresh": CONFIG["refresh"], "time": {"from": "now-1h", "to": "now"},
        "timezone": "", "timepicker": {},
        "templating": variables(extra_vars),
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["vmscope"], "asDropdown": True, "title": "vmscope",
                   "includeVars": True, "keepTime": True}],
        "panels": panels,
    }


def host_overview():
    w = CONFIG["rate_window"]
    b = Board()
    b.row("Host")
    b.add(stat("Host CPU busy", f"vmscope_host_cpu_ratio{{{SEL}}}", "percentunit", "Share of all host CPUs busy over the last collection interval."), 4, 4)
    b.add(stat("Host memory used", f"vmscope_host_memory_used_ratio{{{SEL}}}", "percentunit", "1 - MemAvailable / MemTotal."), 4, 4)
    b.add(stat("Host CPUs", f"vmscope_host_cpus{{{SEL}}}"), 4, 4)
    b.add(stat("VMs running", f'sum(vmscope_vms{{{SEL}, state="running"}})'), 4, 4)
    b.add(stat("vCPUs allocated per host CPU", f"sum by (instance) (vmscope_vm_allocated_vcpus{{{SEL}}}) / sum by (instance) (vmscope_host_cpus{{{SEL}}})", "short", "CPU overcommit: vCPUs of all VMs over the host's online CPUs."), 4, 4)
    b.add(stat("Memory allocated / host memory", f"sum by (instance) (vmscope_vm_memory_allocated_bytes{{{SEL}}}) / sum by (instance) (vmscope_host_memory_total_bytes{{{SEL}}})", "percentunit", "Memory overcommit: memory of all VMs over MemTotal."), 4, 4)
    b.add(timeseries("Host CPU and load", [
        target(f"vmscope_host_cpu_ratio{{{SEL}}}", "{{instance}} busy"),
        target(f"vmscope_host_load1{{{SEL}}} / vmscope_host_cpus{{{SEL}}}", "{{instance}} load1 per CPU"),
    ], "percentunit"), 12, 8)
    b.add(timeseries("Host memory", [
        target(f"vmscope_host_memory_total_bytes{{{SEL}}}", "{{instance}} total"),
        target(f"vmscope_host_memory_available_bytes{{{SEL}}}", "{{instance}} available"),
        target(f"sum by (instance) (vmscope_vm_memory_rss_bytes{{{SEL}}})", "{{instance}} RSS of all VMs"),
    ], "bytes"), 12, 8)
    b.add(table("Filesystems", [
        target(f"vmscope_host_filesystem_size_bytes{{{SEL}}}", "size"),
        target(f"vmscope_host_filesystem_avail_bytes{{{SEL}}}", "available"),
        target(f"1 - vmscope_host_filesystem_avail_bytes{{{SEL}}} / vmscope_host_filesystem_size_bytes{{{SEL}}}", "used"),
    ], "Size, space available to unprivileged users, and the share not available to them, per mounted filesystem.", "bytes", {"used": "percentunit"}), 12, 8)
    b.add(timeseries("Filesystem space available", [
        target(f"vmscope_host_filesystem_avail_bytes{{{SEL}}}", "{{instance}} {{mountpoint}}"),
    ], "bytes"), 12, 8)
    b.row("VMs")
    b.add(timeseries("VMs by state", [target(f"sum by (state) (vmscope_vms{{{SEL}}})", "{{state}}")], "short", stack=True), 12, 8)
    b.add(timeseries("VMs by hypervisor", [target(f"sum by (hypervisor) (vmscope_vms{{{SEL}}})", "{{hypervisor}}")], "short", stack=True), 12, 8)
    b.add(timeseries("Top VMs by CPU (cores)", [target(f"topk(10, vm:vmscope_vm_cpu_seconds:rate{w}{{{SEL}}}{OWNER_JOIN})", "{{vm_name}}")], "short", "Host CPU cores used by each VM's hypervisor process; filtered by the user and project variables."), 12, 8)
    b.add(timeseries("Top VMs by resident memory", [target(f"topk(10, vmscope_vm_memory_rss_bytes{{{SEL}}}{OWNER_JOIN})", "{{vm_name}}")], "bytes"), 12, 8)
    b.add(timeseries("Top VMs by network (received + sent)", [target(f"topk(10, (vm:vmscope_vm_network_receive_bytes:rate{w}{{{SEL}}} + vm:vmscope_vm_network_transmit_bytes:rate{w}{{{SEL}}}){OWNER_JOIN})", "{{vm_name}}")], "Bps"), 12, 8)
    b.add(timeseries("Top VMs by disk (read + written)", [target(f"topk(10, (vm:vmscope_vm_disk_read_bytes:rate{w}{{{SEL}}} + vm:vmscope_vm_disk_write_bytes:rate{w}{{{SEL}}}){OWNER_JOIN})", "{{vm_name}}")], "Bps", "Per-disk figures from each VM's API (QMP, Cloud Hypervisor) or its host block devices."), 12, 8)
    b.add(timeseries("Top VMs by steal (vCPU run-queue wait)", [target(f"topk(10, vm:vmscope_vm_vcpu_wait_seconds:rate{w}{{{SEL}}}{OWNER_JOIN})", "{{vm_name}}")], "short", "Seconds per second the VM's vCPU threads waited for a host CPU: what the guest sees as steal."), 12, 8)
    # The VM's facts joined in from vmscope_vm_info (which also applies the
    # owner variables), so that the columns merge into one row per VM.
    facts = (' * on(job, instance, vm_id) group_left(hypervisor, owner_user, owner_project) '
             'vmscope_vm_info{' + SEL + ', user=~"$user", project=~"$project"}')
    b.add(table("VMs", [
        target(f"vm:vmscope_vm_cpu_seconds:rate{w}{{{SEL}}}{facts}", "CPU cores"),
        target(f"vmscope_vm_allocated_vcpus{{{SEL}}}{facts}", "vCPUs"),
        target(f"vmscope_vm_memory_rss_bytes{{{SEL}}}{facts}", "RSS"),
        target(f"vmscope_vm_memory_allocated_bytes{{{SEL}}}{facts}", "memory allocated"),
    ], "Every VM of the chosen hosts and owners: hypervisor, owner, CPU cores, vCPUs, RSS, memory allocated.",
        units={"RSS": "bytes", "memory allocated": "bytes"}), 24, 9)
    return dashboard("vmscope-host", "vmscope / Host overview",
                     "The host's CPU, memory and filesystems, its VMs by state, and the top VMs.",
                     b.finish(), owner_vars(), ["host"])


def vm_detail():
    w = CONFIG["rate_window"]
    b = Board()
    vm_var = query_var("vm", "VM", f'label_values(vmscope_vm_info{{{SEL}, user=~"$user", project=~"$project"}}, vm_name)')
    b.row("State")
    b.add(stat("State", f"vmscope_vm_state{{{VM_SEL}}} == 1", legend="{{state}}", text_mode="name"), 4, 4)
    b.add(stat("Uptime", f"time() - vmscope_vm_start_time_seconds{{{VM_SEL}}}", "s"), 4, 4)
    b.add(stat("vCPUs", f"vmscope_vm_allocated_vcpus{{{VM_SEL}}}"), 4, 4)
    b.add(stat("Memory allocated", f"vmscope_vm_memory_allocated_bytes{{{VM_SEL}}}", "bytes"), 4, 4)
    b.add(stat("Read this tick", f"vmscope_vm_collect_success{{{VM_SEL}}}", "bool_yes_no", "0: the last read failed and the figures are the last good ones."), 4, 4)
    b.add(stat("Figures age", f"vmscope_vm_collect_age_seconds{{{VM_SEL}}}", "s"), 4, 4)
    b.add(table("Identity", [target(f"vmscope_vm_info{{{VM_SEL}}}")], "vmscope_vm_info: hypervisor, discovery source, owner, flavor, PID."), 24, 4)
    b.row("CPU")
    b.add(timeseries("CPU (host cores) by mode", [
        target(f"rate(vmscope_vm_cpu_seconds_total{{{VM_SEL}}}[{RW}])", "{{mode}}"),
        target(f"rate(vmscope_vm_cpu_guest_seconds_total{{{VM_SEL}}}[{RW}])", "guest (part of user)"),
    ], "short", "Measured from the host: the hypervisor process's CPU time, all threads.", stack=False), 8, 8)
    b.add(timeseries("CPU / vCPUs", [target(f"vm:vmscope_vm_cpu_utilization:ratio_rate{w}{{{VM_SEL}}}", "{{vm_name}}")], "percentunit"), 8, 8)
    b.add(timeseries("Per vCPU", [
        target(f"rate(vmscope_vm_vcpu_seconds_total{{{VM_SEL}}}[{RW}])", "vCPU {{vcpu}} running"),
        target(f"rate(vmscope_vm_vcpu_wait_seconds_total{{{VM_SEL}}}[{RW}])", "vCPU {{vcpu}} waiting (steal)"),
    ], "short"), 8, 8)
    b.row("Memory")
    b.add(timeseries("Memory", [
        target(f"vmscope_vm_memory_allocated_bytes{{{VM_SEL}}}", "allocated"),
        target(f"vmscope_vm_memory_rss_bytes{{{VM_SEL}}}", "resident (host)"),
        target(f"vmscope_vm_balloon_bytes{{{VM_SEL}}}", "balloon actual"),
    ], "bytes"), 8, 8)
    b.add(timeseries("Memory utilisation (RSS / allocated)", [target(f"vmscope_vm_memory_utilization_ratio{{{VM_SEL}}}", "{{vm_name}}")], "percentunit"), 8, 8)
    b.add(timeseries("Virtual memory of the hypervisor process", [target(f"vmscope_vm_memory_virtual_bytes{{{VM_SEL}}}", "{{vm_name}}")], "bytes"), 8, 8)
    b.add(timeseries("Guest memory (balloon driver's report)", [
        target(f"vmscope_vm_guest_memory_total_bytes{{{VM_SEL}}}", "total"),
        target(f"vmscope_vm_guest_memory_used_bytes{{{VM_SEL}}}", "used"),
        target(f"vmscope_vm_guest_memory_available_bytes{{{VM_SEL}}}", "available"),
        target(f"vmscope_vm_guest_memory_unused_bytes{{{VM_SEL}}}", "unused"),
        target(f"vmscope_vm_guest_memory_disk_caches_bytes{{{VM_SEL}}}", "disk caches"),
    ], "bytes", "Inside the guest, as its virtio balloon driver reports it (needs the driver and a stats period)."), 12, 8)
    b.add(timeseries("Guest paging", [
        target(f"rate(vmscope_vm_guest_swap_in_bytes_total{{{VM_SEL}}}[{RW}])", "swap in"),
        target(f"rate(vmscope_vm_guest_swap_out_bytes_total{{{VM_SEL}}}[{RW}])", "swap out"),
        target(f"rate(vmscope_vm_guest_major_faults_total{{{VM_SEL}}}[{RW}])", "major faults/s"),
        target(f"rate(vmscope_vm_guest_minor_faults_total{{{VM_SEL}}}[{RW}])", "minor faults/s"),
        target(f"time() - vmscope_vm_guest_memory_updated_timestamp_seconds{{{VM_SEL}}}", "report age (s)"),
    ], "short"), 12, 8)
    b.row("Network")
    b.add(timeseries("Network bytes", [
        target(f"rate(vmscope_vm_network_receive_bytes_total{{{VM_SEL}}}[{RW}])", "{{interface}} received"),
        target(f"rate(vmscope_vm_network_transmit_bytes_total{{{VM_SEL}}}[{RW}])", "{{interface}} sent"),
        target(f"rate(vmscope_vm_ledger_network_receive_bytes_total{{{VM_SEL}}}[{CONFIG['ledger_rate_window']}])", "ledger: received, all interfaces and incarnations"),
        target(f"rate(vmscope_vm_ledger_network_transmit_bytes_total{{{VM_SEL}}}[{CONFIG['ledger_rate_window']}])", "ledger: sent, all interfaces and incarnations"),
    ], "Bps", "The VM's direction: received = the TAP's host-side tx. The ledger's counters survive VM restarts and move once per ledger flush."), 8, 8)
    b.add(timeseries("Network packets", [
        target(f"rate(vmscope_vm_network_receive_packets_total{{{VM_SEL}}}[{RW}])", "{{interface}} received"),
        target(f"rate(vmscope_vm_network_transmit_packets_total{{{VM_SEL}}}[{RW}])", "{{interface}} sent"),
    ], "pps"), 8, 8)
    b.add(timeseries("Network errors and drops", [
        target(f"rate(vmscope_vm_network_receive_errors_total{{{VM_SEL}}}[{RW}])", "{{interface}} receive errors"),
        target(f"rate(vmscope_vm_network_transmit_errors_total{{{VM_SEL}}}[{RW}])", "{{interface}} transmit errors"),
        target(f"rate(vmscope_vm_network_receive_drops_total{{{VM_SEL}}}[{RW}])", "{{interface}} receive drops"),
        target(f"rate(vmscope_vm_network_transmit_drops_total{{{VM_SEL}}}[{RW}])", "{{interface}} transmit drops"),
    ], "pps"), 8, 8)
    b.row("Disks")
    b.add(timeseries("Disk bytes", [
        target(f"rate(vmscope_vm_disk_read_bytes_total{{{VM_SEL}}}[{RW}])", "{{device}} read"),
        target(f"rate(vmscope_vm_disk_write_bytes_total{{{VM_SEL}}}[{RW}])", "{{device}} written"),
        target(f"rate(vmscope_vm_io_read_bytes_total{{{VM_SEL}}}[{RW}])", "process block I/O read"),
        target(f"rate(vmscope_vm_io_write_bytes_total{{{VM_SEL}}}[{RW}])", "process block I/O written"),
    ], "Bps", "Per disk from the hypervisor's API (QMP, Cloud Hypervisor) or the host block device; process block I/O from /proc/PID/io."), 8, 8)
    b.add(timeseries("Disk requests", [
        target(f"rate(vmscope_vm_disk_read_requests_total{{{VM_SEL}}}[{RW}])", "{{device}} reads"),
        target(f"rate(vmscope_vm_disk_write_requests_total{{{VM_SEL}}}[{RW}])", "{{device}} writes"),
        target(f"rate(vmscope_vm_disk_flush_requests_total{{{VM_SEL}}}[{RW}])", "{{device}} flushes"),
    ], "iops"), 8, 8)
    b.add(timeseries("Disk time per second", [
        target(f"rate(vmscope_vm_disk_read_time_seconds_total{{{VM_SEL}}}[{RW}])", "{{device}} read"),
        target(f"rate(vmscope_vm_disk_write_time_seconds_total{{{VM_SEL}}}[{RW}])", "{{device}} write"),
        target(f"rate(vmscope_vm_disk_flush_time_seconds_total{{{VM_SEL}}}[{RW}])", "{{device}} flush"),
    ], "s", "Seconds of request time per second; divided by the request rate it is the mean latency."), 8, 8)
    b.row("Device statistics source and ledger")
    # up, age and errors each joined with the info series' source label, so
    # that the three merge into one row per VM.
    src = f" * on(job, instance, vm_id) group_left(source) vmscope_vm_device_stats_info{{{VM_SEL}}}"
    b.add(table("Device statistics source", [
        target(f"vmscope_vm_device_stats_up{{{VM_SEL}}}{src}", "up"),
        target(f"(time() - vmscope_vm_device_stats_last_success_timestamp_seconds{{{VM_SEL}}}){src}", "age"),
        target(f"sum without (kind) (vmscope_vm_device_stats_errors_total{{{VM_SEL}}}){src}", "errors"),
    ], "Where the per-disk and balloon figures come from (qmp, cloud_hypervisor, sysfs), whether the last read worked, its age, and failed reads.",
        units={"up": "bool_yes_no", "age": "s"}), 12, 6)
    b.add(timeseries("Ledger usage (over all incarnations)", [
        target(f"rate(vmscope_vm_ledger_cpu_seconds_total{{{VM_SEL}}}[{CONFIG['ledger_rate_window']}])", "CPU cores"),
        target(f"rate(vmscope_vm_ledger_vcpu_allocated_seconds_total{{{VM_SEL}}}[{CONFIG['ledger_rate_window']}])", "vCPUs allocated"),
        target(f"rate(vmscope_vm_ledger_memory_allocated_byte_seconds_total{{{VM_SEL}}}[{CONFIG['ledger_rate_window']}]) / 2^30", "GiB allocated"),
    ], "short", "The usage ledger's per-VM counters (CPU cores, vCPUs and GiB allocated, on average), which survive VM restarts; they move once per ledger flush. Network: on the network panel."), 12, 6)
    return dashboard("vmscope-vm", "vmscope / VM detail",
                     "Every per-VM family for one VM: state, CPU, vCPUs, memory, guest memory, network, disks, ledger.",
                     b.finish(), [*owner_vars(), vm_var], ["vm"])


def owners():
    lw = CONFIG["ledger_rate_window"]
    b = Board()
    for kind, Kind in (("user", "User"), ("project", "Project")):
        s = f'{SEL}, {kind}=~"${kind}"'
        b.row(f"Per {kind}")
        b.add(timeseries(f"VMs running per {kind}", [target(f"vmscope_{kind}_vms{{{s}}}", f"{{{{{kind}}}}}")], "short", stack=True), 8, 8)
        b.add(timeseries(f"Host CPU cores per {kind}", [target(f"vmscope_{kind}_cpu_cores{{{s}}}", f"{{{{{kind}}}}}")], "short", "Cores used over the last collection interval, measured from the host.", stack=True), 8, 8)
        b.add(timeseries(f"Resident memory per {kind}", [target(f"vmscope_{kind}_memory_rss_bytes{{{s}}}", f"{{{{{kind}}}}}")], "bytes", stack=True), 8, 8)
        b.add(timeseries(f"Network per {kind}", [
            target(f"vmscope_{kind}_network_receive_bytes_per_second{{{s}}}", f"{{{{{kind}}}}} received"),
            target(f"vmscope_{kind}_network_transmit_bytes_per_second{{{s}}}", f"{{{{{kind}}}}} sent"),
            target(f"{kind}:vmscope_{kind}_network_receive_bytes:rate{lw}{{{s}}} + {kind}:vmscope_{kind}_network_transmit_bytes:rate{lw}{{{s}}}", f"{{{{{kind}}}}} both, ledger {lw} rate"),
        ], "Bps", "Last collection interval (received, sent), and the ledger counters' rate (both directions, smoother)."), 8, 8)
        b.add(timeseries(f"Ledger usage rate per {kind}", [
            target(f"{kind}:vmscope_{kind}_cpu_seconds:rate{lw}{{{s}}}", f"{{{{{kind}}}}} CPU cores"),
            target(f"{kind}:vmscope_{kind}_vcpu_allocated_seconds:rate{lw}{{{s}}}", f"{{{{{kind}}}}} vCPUs allocated"),
            target(f"{kind}:vmscope_{kind}_memory_allocated_byte_seconds:rate{lw}{{{s}}} / 2^30", f"{{{{{kind}}}}} GiB allocated"),
        ], "short", "From the usage ledger's counters (they survive VM exits and agent restarts), as recorded by the rules."), 16, 8)
        b.add(table(f"{Kind}s: now and usage over the time range", [
            target(f"vmscope_{kind}_allocated_vcpus{{{s}}}", "vCPUs allocated"),
            target(f"vmscope_{kind}_memory_allocated_bytes{{{s}}}", "memory allocated"),
            target(f"increase(vmscope_{kind}_cpu_seconds_total{{{s}}}[$__range]) / 3600", "CPU hours"),
            target(f"increase(vmscope_{kind}_vcpu_allocated_seconds_total{{{s}}}[$__range]) / 3600", "vCPU hours"),
            target(f"increase(vmscope_{kind}_memory_allocated_byte_seconds_total{{{s}}}[$__range]) / 3600 / 2^30", "GiB hours"),
            target(f"(increase(vmscope_{kind}_network_receive_bytes_total{{{s}}}[$__range]) + increase(vmscope_{kind}_network_transmit_bytes_total{{{s}}}[$__range])) / 2^30", "network GiB"),
        ], "Allocation now, and usage summed over the dashboard's time range from the ledger's counters.",
            units={"memory allocated": "bytes", "network GiB": "short"}), 24, 7)
        b.add(table(f"{Kind} names", [target(f"vmscope_{kind}_info{{{s}}}")], f"vmscope_{kind}_info: the display name of each {kind} key."), 24, 5)
    b.row("Attribution")
    b.add(timeseries("Owners with running VMs", [
        target(f"vmscope_owners_with_running_vms{{{SEL}}}", "{{kind}}"),
        target(f"vmscope_owners_folded{{{SEL}}}", "{{kind}} folded into __other__"),
    ], "short"), 8, 8)
    b.add(timeseries("Owner sources: rows in use", [target(f"vmscope_owner_source_rows{{{SEL}}}", "{{source}}")], "short"), 8, 8)
    b.add(table("Owner sources", [
        target(f"vmscope_owner_source_up{{{SEL}}}", "up"),
        target(f"time() - vmscope_owner_source_last_success_timestamp_seconds{{{SEL}}}", "seconds since success"),
        target(f"vmscope_owner_source_rows_skipped{{{SEL}}}", "rows skipped"),
    ], "Each owner source: up, seconds since its last good fetch, malformed rows skipped.",
        units={"up": "bool_yes_no", "seconds since success": "s"}), 8, 8)
    return dashboard("vmscope-owners", "vmscope / Owners",
                     "Per user and per project: VMs, CPU, memory, network now, and usage from the ledger.",
                     b.finish(), owner_vars(), ["owners"])


def watchdog():
    b = Board()
    b.add(stat("Alerts firing", f"count(vmscope_alert_active{{{SEL}}} == 1) or vector(0)"), 6, 4)
    b.add(stat("Watchdog state persisted", f"vmscope_watchdog_persistence_enabled{{{SEL}}}", "bool_yes_no"), 6, 4)
    b.add(stat("Notifications delivered (time range)", f"sum(increase(vmscope_alert_notifications_total{{{SEL}, result=\"success\"}}[$__range]))"), 6, 4)
    b.add(stat("Notifications not delivered (time range)", f"sum(increase(vmscope_alert_notifications_total{{{SEL}, result=~\"rejected|dropped\"}}[$__range])) or vector(0)"), 6, 4)
    b.add(table("Firing now", [
        target(f"vmscope_alert_active{{{SEL}}}", "active"),
    ], "Each firing rule and scope (host, filesystem, VM, owner) with its severity."), 12, 8)
    b.add(table("Firing since", [
        target(f"time() - vmscope_alert_since_timestamp_seconds{{{SEL}}}", "seconds"),
    ], "How long the oldest firing episode of each rule has lasted.", "s"), 12, 8)
    b.add(timeseries("Firing history by rule", [
        target(f"sum by (alert, severity) (vmscope_alert_active{{{SEL}}})", "{{alert}} ({{severity}})"),
    ], "short", "Scopes firing per rule over time: the history of the time range. Resolved episodes are also in vmscope's /api/v1/alerts/history.", stack=True), 24, 8)
    b.add(timeseries("Notifications by sink and result", [
        target(f"sum by (sink, result) (increase(vmscope_alert_notifications_total{{{SEL}}}[{RW}]))", "{{sink}} {{result}}"),
    ], "short"), 24, 8)
    return dashboard("vmscope-watchdog", "vmscope / Watchdog",
                     "vmscope's built-in watchdog: alerts firing now, their history, notification delivery.",
                     b.finish(), (), ["alerts"])


def self_view():
    b = Board()
    b.row("Collection")
    b.add(stat("Up", f'up{{{SEL}}}', "bool_yes_no", legend="{{instance}}"), 4, 4)
    b.add(stat("Snapshot age", f"vmscope_snapshot_age_seconds{{{SEL}}}", "s", legend="{{instance}}"), 4, 4)
    b.add(stat("Tick duration", f"vmscope_tick_duration_seconds{{{SEL}}}", "s", legend="{{instance}}"), 4, 4)
    b.add(table("Build", [target(f"vmscope_build_info{{{SEL}}}")]), 12, 4)
    b.add(timeseries("Collector duration", [target(f"vmscope_collector_duration_seconds{{{SEL}}}", "{{collector}}")], "s", stack=True), 8, 8)
    # A collector's error counter exists from its first error on: the zero
    # line per collector (from vmscope_collector_success) keeps healthy
    # collectors on the panel instead of "No data".
    b.add(timeseries("Collector errors", [target(f"sum by (collector, kind) (rate(vmscope_collector_errors_total{{{SEL}}}[{RW}])) or 0 * sum by (collector) (vmscope_collector_success{{{SEL}}})", "{{collector}} {{kind}}")], "short", "Errors per second by collector and kind (gone, io, parse, timeout); 0 for collectors that never failed."), 8, 8)
    b.add(timeseries("Collectors failing", [target(f"1 - vmscope_collector_success{{{SEL}}}", "{{collector}}")], "short", "1 when the collector failed on the last tick."), 8, 8)
    b.add(timeseries("VMs discovered by source", [target(f"vmscope_vms_discovered{{{SEL}}}", "{{source}}")], "short", stack=True), 8, 8)
    b.add(timeseries("Label values cut, series skipped", [
        target(f"rate(vmscope_label_values_truncated_total{{{SEL}}}[{RW}])", "labels truncated/s"),
        target(f"vmscope_exposition_series_skipped{{{SEL}}}", "series skipped {{reason}}"),
        target(f"vmscope_export_vms_skipped{{{SEL}}}", "VMs skipped"),
    ], "short", "Should stay 0."), 8, 8)
    b.add(timeseries("Scrape cost", [
        target(f"scrape_duration_seconds{{{SEL}}}", "{{instance}} scrape duration (s)"),
        target(f"scrape_samples_scraped{{{SEL}}} / 1000", "{{instance}} samples (thousands)"),
    ], "short", "Prometheus' own view of each scrape of vmscope."), 8, 8)
    b.row("HTTP")
    b.add(timeseries("Requests by route and status", [target(f"sum by (route, status) (rate(vmscope_http_request_duration_seconds_count{{{SEL}}}[{RW}]))", "{{route}} {{status}}")], "reqps"), 8, 8)
    b.add(timeseries("Request latency p99", [target(f"histogram_quantile(0.99, sum by (le, route) (rate(vmscope_http_request_duration_seconds_bucket{{{SEL}}}[{RW}])))", "{{route}}")], "s"), 8, 8)
    b.add(timeseries("In flight and connections", [
        target(f"vmscope_http_requests_in_flight{{{SEL}}}", "{{instance}} requests in flight"),
        target(f"vmscope_http_connections{{{SEL}}}", "{{instance}} connections"),
        target(f"vmscope_http_connections_limit{{{SEL}}}", "{{instance}} connection limit"),
    ], "short"), 8, 8)
    b.row("Background tasks")
    b.add(timeseries("Seconds since each task's last success", [target(f"time() - vmscope_task_last_success_timestamp_seconds{{{SEL}}}", "{{task}}")], "s", "Collection, attribution refresh, ledger flush, pushes, rule evaluation: a line that climbs is a stuck task."), 8, 8)
    b.add(timeseries("Task errors", [target(f"sum by (task) (rate(vmscope_task_errors_total{{{SEL}}}[{RW}]))", "{{task}}")], "short"), 8, 8)
    b.add(timeseries("Task duration and runs", [
        target(f"vmscope_task_duration_seconds{{{SEL}}}", "{{task}} last run (s)"),
        target(f"sum by (task) (rate(vmscope_task_runs_total{{{SEL}}}[{RW}]))", "{{task}} runs/s"),
    ], "short"), 8, 8)
    b.row("Pushes")
    b.add(timeseries("Samples pushed", [target(f"sum by (destination, result) (rate(vmscope_push_samples_total{{{SEL}}}[{RW}]))", "{{destination}} {{result}}")], "short"), 8, 8)
    b.add(timeseries("Push queue and drops", [
        target(f"vmscope_push_queue_samples{{{SEL}}}", "{{destination}} queued"),
        target(f"rate(vmscope_push_dropped_samples_total{{{SEL}}}[{RW}])", "{{destination}} dropped/s"),
    ], "short"), 8, 8)
    b.add(timeseries("Push health", [
        target(f"time() - (vmscope_push_last_success_timestamp_seconds{{{SEL}}} > 0)", "{{destination}} since success (s)"),
        target(f"vmscope_push_duration_seconds{{{SEL}}}", "{{destination}} build time (s)"),
        target(f"sum by (destination, kind) (rate(vmscope_push_errors_total{{{SEL}}}[{RW}]))", "{{destination}} {{kind}} errors/s"),
    ], "short"), 8, 8)
    b.row("State database and ledger")
    b.add(timeseries("State database p99 by operation", [target(f"histogram_quantile(0.99, sum by (le, op) (rate(vmscope_db_query_duration_seconds_bucket{{{SEL}}}[{RW}])))", "{{op}}")], "s"), 8, 8)
    b.add(timeseries("Ledger flushes", [
        target(f"histogram_quantile(0.99, sum by (le) (rate(vmscope_ledger_flush_duration_seconds_bucket{{{SEL}}}[{RW}])))", "flush p99 (s)"),
        target(f"time() - vmscope_ledger_last_flush_timestamp_seconds{{{SEL}}}", "since last flush (s)"),
        target(f"rate(vmscope_ledger_flush_errors_total{{{SEL}}}[{RW}])", "flush errors/s"),
    ], "short"), 8, 8)
    b.add(timeseries("Ledger rows", [
        target(f"rate(vmscope_ledger_rows_written_total{{{SEL}}}[{RW}])", "written/s"),
        target(f"vmscope_ledger_pending_rows{{{SEL}}}", "pending"),
        target(f"vmscope_ledger_incarnations{{{SEL}}}", "incarnations followed"),
        target(f"vmscope_ledger_persistence_enabled{{{SEL}}}", "persistence enabled"),
    ], "short"), 8, 8)
    return dashboard("vmscope-self", "vmscope / vmscope itself",
                     "The agent's own health: collection, scrape cost, HTTP, background tasks, pushes, state database and ledger.",
                     b.finish(), (), ["self"])


DASHBOARDS = {
    "vmscope-host.json": host_overview,
    "vmscope-vm.json": vm_detail,
    "vmscope-owners.json": owners,
    "vmscope-watchdog.json": watchdog,
    "vmscope-self.json": self_view,
}


def outputs():
    files = {}
    for name, fn in DASHBOARDS.items():
        files[os.path.join("dashboards", name)] = json.dumps(fn(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    files[os.path.join("rules", "vmscope.yml")] = to_yaml(recording_rules() + alerting_rules())
    return files


def main(argv):
    check = "--check" in argv[1:]
    stale = []
    for rel, text in outputs().items():
        path = os.path.join(HERE, rel)
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        if check:
            stale.append(rel)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote mixin/{rel}")
    if stale:
        print("mixin/build.py --check: stale (run python3 mixin/build.py): " + ", ".join("mixin/" + s for s in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
