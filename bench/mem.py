#!/usr/bin/env python3
"""Where vmscope's memory goes at N VMs (issue 17): one agent, no peers.

Run as root (TAPs, a network namespace), from the repository root:

    python3 bench/mem.py --vmscope target/release/vmscope --standin /tmp/standin --n 1000

(`gcc -O2 -static -pthread -o /tmp/standin bench/standin/standin.c` builds
the stand-in.) Starts N stand-ins with bench.py's lab, one agent with every
wave-2 feature off (bench.py's `off` configuration), scrapes it once per
tick with gzip for --ticks ticks, then reports its RSS (`smaps_rollup`),
its largest mappings (`smaps`: which are the bodies, which malloc arenas,
which thread stacks), glibc's own figures (`malloc_stats()` through gdb,
written to the agent's stderr, then read back from its log) and the RSS
after `malloc_trim(0)` (what the allocator held but did not use). gdb
stops the agent for a moment; the agent is stopped afterwards.
Everything it starts is removed on exit, as bench.py does.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402


def smaps(pid: int) -> list[dict]:
    out = []
    cur = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if m:
            cur = {"start": m.group(1), "size": int(m.group(2), 16) - int(m.group(1), 16),
                   "perms": m.group(3), "name": m.group(4) or "[anon]", "rss": 0}
            out.append(cur)
        elif line.startswith("Rss:") and cur is not None:
            cur["rss"] = int(line.split()[1]) * 1024
    return out


def rollup(pid: int) -> dict:
    d = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        d[k] = int(v.split()[0]) * 1024
    return d


def gdb_call(pid: int, expr: str) -> str:
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", f"call {expr}"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-200:]


def mib(b: float) -> str:
    return f"{b / 1048576:.1f} MiB"


def report(pid: int, log: Path, label: str) -> None:
    r = rollup(pid)
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    print(f"== {label}: RSS {mib(r['Rss'])} (anon {mib(r['Anonymous'])}, file {mib(r['Rss'] - r['Anonymous'])}), "
          f"{threads} threads, VmHWM {mib(bench.status_bytes(pid, 'VmHWM'))}")
    maps = sorted(smaps(pid), key=lambda m: -m["rss"])
    for m in maps[:14]:
        print(f"   {mib(m['rss']):>10} of {mib(m['size']):>10} {m['perms']} {m['name']}")
    small = [m for m in maps if m["name"] == "[anon]" and m["rss"] and m["rss"] <= 64 * 1024]
    print(f"   {len(small)} small anonymous mappings (stacks' touched pages, ...): {mib(sum(m['rss'] for m in small))}")
    before = log.stat().st_size
    gdb_call(pid, "(void)malloc_stats()")
    time.sleep(0.3)
    text = log.read_bytes()[before:].decode(errors="replace")
    arenas = text.count("Arena ")
    total = re.findall(r"Total \(incl. mmap\):\s*\nsystem bytes\s*=\s*(\d+)\s*\nin use bytes\s*=\s*(\d+)", text)
    if total:
        sys_b, use_b = map(int, total[-1])
        print(f"   glibc: {arenas} arenas, {mib(sys_b)} from the system, {mib(use_b)} in use "
              f"({mib(sys_b - use_b)} free inside the arenas)")
    else:
        print("   glibc: malloc_stats() output not found in the log")
    gdb_call(pid, "(int)malloc_trim(0)")
    print(f"   after malloc_trim(0): RSS {mib(rollup(pid)['Rss'])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmscope", type=Path, required=True)
    ap.add_argument("--standin", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--features", default="", help="comma list of bench.py features to switch on (default: off); "
                    "'defaults' for the shipped defaults (what `vmscope serve` runs with no file)")
    ap.add_argument("--plain", action="store_true",
                    help="also scrape the plain text once per tick (as the benchmark's sweep does); by default "
                         "only gzip, as Prometheus asks")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the agent (e.g. MALLOC_ARENA_MAX=2)")
    ap.add_argument("--cpu-ticks", type=int, default=0,
                    help="first, a window of this many ticks with nothing scraping: process and "
                         "collect-thread CPU per tick (bench.py's idle window)")
    ap.add_argument("--heaptrack", type=Path, default=None,
                    help="run the agent under heaptrack, its trace written to this path (.zst added); "
                         "read it with heaptrack_print")
    ap.add_argument("--heaptrack-live", action="store_true",
                    help="with --heaptrack: end the agent with SIGKILL right after the last report, so that "
                         "heaptrack_print's 'leaked' figures are what was allocated at that moment (a clean "
                         "exit frees it all)")
    args = ap.parse_args()
    import tempfile
    work = Path(tempfile.mkdtemp(prefix="vmscope-mem."))
    lab = bench.Lab(work, args.standin)
    try:
        lab.setup()
        lab.make_taps(args.n)
        lab.spawn_vms(args.n)
        feats = None if args.features == "defaults" else set(filter(None, args.features.split(",")))
        cfg = bench.agent_config(work, "mem", feats)
        for kv in args.env:
            k, v = kv.split("=", 1)
            os.environ[k] = v
        binary = args.vmscope.resolve()
        if args.heaptrack:
            # heaptrack's script starts the agent as its child: the figures
            # below are the agent's (found by its executable).
            wrap = work / "vmscope-heaptrack"
            wrap.write_text(f"#!/bin/sh\nexec heaptrack -o {args.heaptrack} {binary} \"$@\"\n")
            wrap.chmod(0o755)
            agent = bench.Vmscope(lab, wrap, bench.free_port(), cfg)
            for p in Path("/proc").iterdir():
                try:
                    if p.name.isdigit() and Path(p / "exe").resolve() == binary:
                        agent.pid = int(p.name)
                except OSError:
                    pass
        else:
            agent = bench.Vmscope(lab, binary, bench.free_port(), cfg)
        agent.wait_vms(args.n)
        time.sleep(3)
        if args.cpu_ticks:
            w = agent.window(args.cpu_ticks)
            print(f"== CPU over {w['ticks']} ticks, nothing scraping: process {w['cpu_per_tick_s'] * 1e3:.2f} ms "
                  f"per tick, collect thread {w['collect_thread_per_tick_s'] * 1e3:.2f} ms ({w['cpu_detail']})")
        report(agent.pid, work / "vmscope.log", "before any scrape")
        agent.between_ticks()
        s0, c0 = agent.seq(), agent.collect_ns()
        meter = bench.CpuMeter(agent.pid)
        meter.start()
        first = []
        for _ in range(args.ticks):
            agent.between_ticks()
            t = time.monotonic()
            agent.http.get("/metrics", bench.GZIP)
            first.append(time.monotonic() - t)
            if args.plain:
                agent.http.get("/metrics")
        cpu = meter.stop()
        n = max(agent.seq() - s0, 1)
        coll = (agent.collect_ns() - c0) / 1e9
        again = []
        for _ in range(20):
            t = time.monotonic()
            agent.http.get("/metrics", bench.GZIP)
            again.append(time.monotonic() - t)
        print(f"== {args.ticks} ticks with one gzip scrape each: process {cpu / n * 1e3:.2f} ms per tick, "
              f"collect thread {coll / n * 1e3:.2f} ms, the rest (encode + gzip + serve) {(cpu - coll) / n * 1e3:.2f} ms; "
              f"first scrape after a tick p50 {bench.percentile(first, 50) * 1e3:.2f} ms, "
              f"20 more back to back p50 {bench.percentile(again, 50) * 1e3:.2f} ms")
        what = "one gzip and one plain scrape" if args.plain else "one gzip scrape"
        report(agent.pid, work / "vmscope.log", f"after {args.ticks} ticks with {what} each")
        if args.heaptrack:
            # The agent itself gets the SIGTERM (a clean exit: heaptrack
            # writes its trace); then its wrapper is reaped. SIGKILL leaves
            # the live allocations unfreed: heaptrack reports them as leaks.
            os.kill(agent.pid, 9 if args.heaptrack_live else 15)
            agent.proc.wait(timeout=120)
        agent.stop(lab)
    finally:
        lab.cleanup()
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
