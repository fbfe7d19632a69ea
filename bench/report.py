"""Turns a bench.py results dict into markdown and checks issue 4's targets.

`python3 bench/report.py bench/results/<stamp>.json` re-renders a stored run
(and, with --docs, rewrites the results section of docs/benchmarks.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN = "<!-- bench results: begin (written by bench/report.py) -->"
END = "<!-- bench results: end -->"
MIB = 2**20


def ms(s: float | None, digits: int = 2) -> str:
    return "n/a" if s is None else f"{s * 1e3:.{digits}f} ms"


def mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / MIB:.1f} MiB"


def kib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 1024:.0f} KiB"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def at(results: dict, n: int) -> dict | None:
    for r in results["per_n"]:
        if r["n_standins"] == n:
            return r
    return None


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, pass) rows; pass None = not measured in this run."""
    rows: list[tuple[str, str, bool | None]] = []
    r = at(results, 1000)
    if r is None:
        return [("all targets are at N = 1000", "N = 1000 not run", None)]
    v = r["vmscope"]
    floor = r["floor"]["cpu_per_iteration_seconds"]
    idle = v["idle"]["cpu_per_tick_s"]
    scraped = v["scraped"]["cpu_per_tick_s"]
    pe = r["process_exporter"]["cpu_per_request_s"]
    rows.append(("CPU per collection (tick only) <= 2x floor",
                 f"{ms(idle)} vs {ms(floor)} = {idle / floor:.2f}x", idle <= 2 * floor))
    rows.append(("CPU per collection (tick + 1 scrape) <= 2x floor",
                 f"{ms(scraped)} vs {ms(floor)} = {scraped / floor:.2f}x", scraped <= 2 * floor))
    rows.append((">= 30x less CPU than process-exporter (per collection incl. scrape)",
                 f"{ms(pe, 1)} / {ms(scraped)} = {pe / scraped:.0f}x", pe >= 30 * scraped))
    for fmt in ("plain", "gzip"):
        p50 = v[fmt]["p50_s"]
        rows.append((f"/metrics p50 < 5 ms ({fmt})", ms(p50), p50 < 0.005))
    for fmt in ("plain", "gzip"):
        w = v.get(f"wrk_{fmt}")
        if w:
            measured = f"{w['requests_per_s']:.0f} req/s"
            fl = r.get(f"serve_floor_{fmt}")
            if fl:
                measured += (f" (serving floor, same {kib(fl['body_bytes'])} body, same core: "
                             f"{fl['requests_per_s']:.0f} req/s)")
            rows.append((f">= 2000 req/s on one core, wrk -t1 -c8 ({fmt})", measured,
                         w["requests_per_s"] >= 2000 and w["non_2xx"] == 0))
    rss = max(v["rss_bytes"], v.get("rss_after_wrk_bytes", 0))
    rows.append(("RSS < 40 MiB", mib(rss), rss < 40 * MIB))
    c = results.get("churn")
    if c:
        # The target is about 10 000 VMs; a longer churn reports that point.
        n_at, rss_at = c["vms_churned"], c["rss_after_bytes"]
        for n, b in c.get("rss_milestones") or []:
            if n == 10000:
                n_at, rss_at = n, b
        growth = rss_at / c["rss_before_bytes"] - 1
        rows.append((f"RSS flat within 10% after {n_at} VMs came and went",
                     f"{mib(c['rss_before_bytes'])} -> {mib(rss_at)} ({growth:+.1%})",
                     abs(growth) <= 0.10))
    else:
        rows.append(("RSS flat after churn", "not run", None))
    # Linearity: the marginal cost of one more VM must not grow with N.
    pts = sorted((x["n_standins"], x["vmscope"]["idle"]["collect_thread_per_tick_s"]) for x in results["per_n"])
    if len(pts) >= 3:
        (n0, c0), (n1, c1), (n2, c2) = pts[-3], pts[-2], pts[-1]
        m_low = (c1 - c0) / (n1 - n0)
        m_high = (c2 - c1) / (n2 - n1)
        rows.append((f"tick cost linear in VMs (marginal cost {n1}->{n2} <= 1.3x {n0}->{n1})",
                     f"{m_low * 1e6:.2f} -> {m_high * 1e6:.2f} us/VM", m_high <= 1.3 * m_low))
    elif len(pts) == 2:
        (n0, c0), (n1, c1) = pts
        rows.append(("tick cost linear in VMs", f"{n0}: {ms(c0)}, {n1}: {ms(c1)} "
                     f"(per VM {c0 / n0 * 1e6:.2f} -> {c1 / n1 * 1e6:.2f} us; needs N=5000 to judge)", None))
    ind = results.get("independence")
    if ind:
        a = ind["without"]["collect_thread_per_tick_s"]
        b = ind["with"]["collect_thread_per_tick_s"]
        fa = ind["floor_listing_without"]["cpu_per_iteration_seconds"]
        fb = ind["floor_listing_with"]["cpu_per_iteration_seconds"]
        rows.append((f"tick cost independent of other processes (+{ind['sleepers']} processes: <= +10%)",
                     f"{ms(a)} -> {ms(b)} ({b / a - 1:+.1%}; the kernel's /proc listing alone: "
                     f"{(fb - fa) * 1e3:+.2f} ms)", b <= 1.10 * a))
    else:
        rows.append(("independent of other processes", "not run", None))
    return rows


def markdown(results: dict) -> str:
    f = results["facts"]
    out = []
    w = out.append
    w(f"Run of `{results['command'].strip()}` on {f['date']}, vmscope {f['git']}, "
      f"{results['seconds']} s in all.\n")
    w(f"Machine: {f['nproc']} CPUs ({f['cpu']}), {f['mem_gib']} GiB, kernel {f['kernel']}, "
      f"load average before/after {' '.join(f['load_before'])} / {' '.join(f.get('load_after', []))}. "
      f"Peers: {f['process_exporter']}; {f['node_exporter']}. "
      f"Each N also has {results.get('real_vms', 0)} real QEMU VMs; CPU windows are "
      f"{results['ticks_per_window']} ticks of 1 s.\n")

    w("### CPU per collection, latency, size and memory\n")
    w("| N | tool | CPU per collection | vs floor | /metrics p50 | p99 | series | body (gzip) | RSS |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["per_n"]:
        n = r["n_standins"]
        v = r["vmscope"]
        fl = r["floor"]["cpu_per_iteration_seconds"]
        fll = r["floor_listing"]["cpu_per_iteration_seconds"]
        w(f"| {n} | vmscope, tick only (nothing scrapes) | {ms(v['idle']['cpu_per_tick_s'])} | "
          f"{ratio(v['idle']['cpu_per_tick_s'], fl)} | | | | | {mib(v['rss_bytes'])} |")
        w(f"| {n} | vmscope, tick + one gzip scrape | {ms(v['scraped']['cpu_per_tick_s'])} | "
          f"{ratio(v['scraped']['cpu_per_tick_s'], fl)} | | | | | |")
        if "after_scrapes" in v:
            a = v["after_scrapes"]["cpu_per_tick_s"]
            w(f"| {n} | vmscope, tick, nothing scraping, < 3 min after text and gzip scrapes (pre-encodes both) "
              f"| {ms(a)} | {ratio(a, fl)} | | | | | |")
        first = v["scraped"]["cpu_per_tick_s"] - v["scraped"]["collect_thread_per_tick_s"]
        w(f"| {n} | vmscope, per snapshot: encode + gzip + one scrape (process minus collect thread) | {ms(first)} | | | | | | |")
        w(f"| {n} | vmscope, each further scrape (text) | {ms(v['plain']['cpu_per_request_s'], 3)} | | "
          f"{ms(v['plain']['p50_s'])} | {ms(v['plain']['p99_s'])} | {v['plain']['series']} | "
          f"{kib(v['plain']['bytes'])} | |")
        w(f"| {n} | vmscope, each further scrape (gzip) | {ms(v['gzip']['cpu_per_request_s'], 3)} | | "
          f"{ms(v['gzip']['p50_s'])} | {ms(v['gzip']['p99_s'])} | {v['gzip']['series']} | "
          f"({kib(v['gzip']['bytes_on_wire'])}) | |")
        w(f"| {n} | floor: kernel reads only | {ms(fl)} | 1.00x | | | | | |")
        w(f"| {n} | floor + /proc listing | {ms(fll)} | {ratio(fll, fl)} | | | | | |")
        if "floor_eof_read" in r:
            fe = r["floor_eof_read"]["cpu_per_iteration_seconds"]
            w(f"| {n} | floor + a 2nd (EOF) pread per file | {ms(fe)} | {ratio(fe, fl)} | | | | | |")
        for key, label in (("process_exporter", "process-exporter, per scrape"),
                           ("node_exporter", "node-exporter (host collectors), per scrape")):
            p = r[key]
            w(f"| {n} | {label} | {ms(p['cpu_per_request_s'], 1)} | {ratio(p['cpu_per_request_s'], fl)} | "
              f"{ms(p['p50_s'], 1)} | {ms(p['p99_s'], 1)} | {p['series']} | {kib(p['bytes'])} "
              f"({kib(p['bytes_on_wire'])}) | {mib(p['rss_bytes'])} |")
    w("")
    w("Ratios against process-exporter (its CPU per scrape / vmscope's CPU per tick with one scrape): " + ", ".join(
        f"N={r['n_standins']}: {r['process_exporter']['cpu_per_request_s'] / r['vmscope']['scraped']['cpu_per_tick_s']:.0f}x"
        for r in results["per_n"]) + ".\n")

    w("### Tick cost as N grows\n")
    w("| N | vmscope process CPU/tick | collect thread CPU/tick (mean) | p50 tick | slowest tick | per VM | floor | floor + listing | collect thread / floor |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["per_n"]:
        n = r["n_standins"]
        v = r["vmscope"]["idle"]
        fl = r["floor"]["cpu_per_iteration_seconds"]
        w(f"| {n} | {ms(v['cpu_per_tick_s'])} | {ms(v['collect_thread_per_tick_s'])} | "
          f"{ms(v.get('collect_thread_tick_p50_s'))} | {ms(v.get('collect_thread_tick_max_s'))} | "
          f"{v['collect_thread_per_tick_s'] / n * 1e6:.2f} us | {ms(fl)} | "
          f"{ms(r['floor_listing']['cpu_per_iteration_seconds'])} | {ratio(v['collect_thread_per_tick_s'], fl)} |")
    w("")
    w("vmscope's own per-collector durations (wall time of the last tick, from "
      "`vmscope_collector_duration_seconds`):\n")
    names = sorted({k for r in results["per_n"] for k in r["vmscope"]["collector_durations_s"]})
    w("| N | " + " | ".join(names) + " |")
    w("|---:|" + "---:|" * len(names))
    for r in results["per_n"]:
        d = r["vmscope"]["collector_durations_s"]
        w(f"| {r['n_standins']} | " + " | ".join(ms(d.get(k)) for k in names) + " |")
    w("")

    r1000 = at(results, 1000)
    if r1000 and "wrk_plain" in r1000["vmscope"]:
        v = r1000["vmscope"]
        w("### /metrics throughput at N = 1000 (`wrk -t1 -c8 -d10s`)\n")
        w("vmscope pinned to CPU 0, wrk to CPU 1. The serving floor is `bench/floor/serve_floor.c`: "
          "an epoll server that answers every request with the body vmscope just served, from memory, "
          "pinned the same way: what loopback allows for a body that size on this machine.\n")
        w("| body | size | vmscope requests/s | wrk p50 | vmscope CPU per request | serving floor requests/s | "
          "vmscope / floor | RSS after |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for fmt in ("plain", "gzip"):
            x = v[f"wrk_{fmt}"]
            per = x["vmscope_cpu_s"] / max(1.0, x["requests_per_s"] * results["params"]["wrk_seconds"])
            fl = r1000.get(f"serve_floor_{fmt}")
            size = kib(fl["body_bytes"]) if fl else ""
            fl_rps = f"{fl['requests_per_s']:.0f}" if fl else "not run"
            vs_floor = f"{x['requests_per_s'] / fl['requests_per_s']:.2f}x" if fl and fl["requests_per_s"] else ""
            w(f"| {fmt} | {size} | {x['requests_per_s']:.0f} | {ms(x['p50_s'])} | {ms(per, 3)} | {fl_rps} | "
              f"{vs_floor} | {mib(v.get('rss_after_wrk_bytes'))} |")
        w("")

    ind = results.get("independence")
    if ind:
        w(f"### Independence from other processes (N = 1000 VMs)\n")
        w("| other processes | vmscope process CPU/tick | collect thread CPU/tick | floor + listing |")
        w("|---:|---:|---:|---:|")
        for label, key, fk in (("0", "without", "floor_listing_without"),
                               (str(ind["sleepers"]), "with", "floor_listing_with")):
            w(f"| {label} | {ms(ind[key]['cpu_per_tick_s'])} | {ms(ind[key]['collect_thread_per_tick_s'])} | "
              f"{ms(ind[fk]['cpu_per_iteration_seconds'])} |")
        w("")
    c = results.get("churn")
    if c:
        w(f"### Memory after churn\n")
        w(f"{c['vms_churned']} VMs started and killed in waves of {c['wave']} (about 1000 alive throughout, "
          f"vmscope ticking every second and scraped once per wave) in {c['seconds']} s: RSS "
          f"{mib(c['rss_before_bytes'])} before, {mib(c['rss_after_bytes'])} after, peak {mib(c['rss_peak_bytes'])}.\n")
        ms_ = c.get("rss_milestones") or []
        if len(ms_) > 1:
            w("RSS as the churn went on: " + ", ".join(f"{n} VMs: {mib(b)}" for n, b in ms_) + ".\n")

    w("### Targets (issue 4, at N = 1000)\n")
    w("| target | measured | result |")
    w("|---|---|---|")
    for name, measured, ok in targets(results):
        w(f"| {name} | {measured} | {'pass' if ok else ('not judged' if ok is None else '**FAIL**')} |")
    w("")
    return "\n".join(out) + "\n"


def update_docs(path: Path, md: str) -> None:
    """Replaces the text between the markers in docs/benchmarks.md."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n\n{md}\n{END}{tail}")


if __name__ == "__main__":
    res = json.loads(Path(sys.argv[1]).read_text())
    md = markdown(res)
    if "--docs" in sys.argv:
        update_docs(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md", md)
    print(md)
