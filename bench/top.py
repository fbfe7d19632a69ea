#!/usr/bin/env python3
"""What `vmscope top` costs: startup to the first frame, and CPU at a 1 s refresh.

Run it through `bench/run.sh --top` (root; builds the binaries, raises
ulimits, cleans up). In one run, on N stand-in VMs (default 200, bench.py's
lab: real QEMU command lines, two vCPU threads, a TAP each):

1. `vmscope serve --interval 1` is started and waited for until it lists
   the N VMs;
2. startup: `vmscope top --url` on a pseudo-terminal (120x40), from exec
   to the first frame that shows all N VMs (the first read of
   /metrics.json included), R runs; the same for `--batch`, from exec to
   the CSV header (printed after the first read); and the same measured
   locally (no --url: one collection tick of the N VMs before the frame);
3. CPU: the interactive view refreshing every second for S seconds, the
   screen drained by this script as a terminal would: top's own process
   CPU (utime+stime and schedstat) as a share of one core, with --url and
   locally; and the agent's CPU over the same windows without and with a
   top attached (top reads /metrics.json, which makes the agent encode that
   variant once per tick).

Prints one JSON document and a Markdown table (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import CpuMeter, Lab, Vmscope, free_port, log, percentile  # noqa: E402


class Screen:
    """`vmscope top` on a pseudo-terminal, its output drained by a thread."""

    def __init__(self, argv: list[str], cols: int = 120, rows: int = 40):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color")
        env.pop("NO_COLOR", None)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.waiting: set[bytes] = set()
        self.first: dict[bytes, float] = {}
        self.bytes = 0
        self.head = b""
        self.buf = b""
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.perf_counter()
            with self.lock:
                self.bytes += len(chunk)
                if len(self.head) < 64_000:
                    self.head += chunk
                # Keep only a tail to search in: the frame is redrawn in place.
                self.buf = (self.buf + chunk)[-200_000:]
                for needle in list(self.waiting):
                    if needle in self.buf or needle in self.head:
                        self.first[needle] = now - self.t0
                        self.waiting.discard(needle)

    def wait_for(self, needle: bytes, timeout: float = 20.0) -> float:
        with self.lock:
            if needle in self.buf or needle in self.head:
                return time.perf_counter() - self.t0
            self.waiting.add(needle)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if needle in self.first:
                    return self.first[needle]
            if self.proc.poll() is not None:
                raise RuntimeError(f"top exited with {self.proc.returncode}: {self.buf[-2000:]!r}")
            time.sleep(0.002)
        raise RuntimeError(f"no {needle!r} on screen within {timeout}s: {self.head[:8000]!r}")

    def quit(self) -> None:
        try:
            os.write(self.master, b"q")
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def startup_screen(argv: list[str], runs: int, needle: bytes) -> dict:
    times = []
    for _ in range(runs):
        s = Screen(argv)
        try:
            times.append(s.wait_for(needle))
        finally:
            s.quit()
    return summary(times)


def startup_batch(argv: list[str], runs: int) -> dict:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None
        line = p.stdout.readline()
        times.append(time.perf_counter() - t0)
        if not line.startswith(b"time,vm_id,"):
            raise RuntimeError(f"batch printed {line!r}: {p.stderr.read()[:500]!r}")
        p.kill()
        p.wait()
    return summary(times)


def summary(times: list[float]) -> dict:
    return {
        "runs": len(times),
        "median_ms": round(percentile(times, 50) * 1000, 1),
        "p90_ms": round(percentile(times, 90) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
    }


def cpu_screen(argv: list[str], seconds: float, agent_pid: int | None, needle: bytes) -> dict:
    s = Screen(argv)
    try:
        s.wait_for(needle)
        time.sleep(2.0)  # past the first frames
        meter = CpuMeter(s.proc.pid)
        agent = CpuMeter(agent_pid) if agent_pid else None
        b0 = s.bytes
        meter.start()
        if agent:
            agent.start()
        time.sleep(seconds)
        used = meter.stop()
        out = {
            "seconds": seconds,
            "top_cpu_s": round(used, 4),
            "top_percent_of_one_core": round(used / seconds * 100, 3),
            "detail": meter.detail,
            "screen_bytes_per_s": round((s.bytes - b0) / seconds),
        }
        if agent:
            a = agent.stop()
            out["agent_percent_of_one_core"] = round(a / seconds * 100, 3)
        if s.proc.poll() is not None:
            raise RuntimeError(f"top exited during the window: {s.buf[-2000:]!r}")
        return out
    finally:
        s.quit()


def agent_alone(pid: int, seconds: float) -> float:
    m = CpuMeter(pid)
    m.start()
    time.sleep(seconds)
    return round(m.stop() / seconds * 100, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--vmscope", type=Path, required=True)
    ap.add_argument("--standin", type=Path, required=True)
    ap.add_argument("--vms", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10, help="startup runs per mode")
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU window per mode")
    args = ap.parse_args()

    lab = Lab(args.work, args.standin)
    result: dict = {"vms": args.vms}
    try:
        lab.setup()
        lab.make_taps(args.vms)
        lab.spawn_vms(args.vms)
        port = free_port()
        agent = Vmscope(lab, args.vmscope, port)
        agent.wait_vms(args.vms)
        url = f"http://127.0.0.1:{port}"
        top = [str(args.vmscope), "top"]
        # A VM's row (ratatui writes words between cursor moves: no spaces).
        frame = b"bench-"
        log(f"startup, {args.runs} runs per mode")
        result["startup_screen_url"] = startup_screen(top + ["--url", url], args.runs, frame)
        result["startup_batch_url"] = startup_batch(top + ["--batch", "--url", url], args.runs)
        result["startup_screen_local"] = startup_screen(top, args.runs, frame)
        result["startup_batch_local"] = startup_batch(top + ["--batch"], args.runs)
        log(f"CPU, {args.seconds:.0f} s per mode")
        result["agent_alone_percent_of_one_core"] = agent_alone(agent.pid, args.seconds)
        result["cpu_screen_url"] = cpu_screen(top + ["--url", url, "-d", "1"], args.seconds, agent.pid, frame)
        result["cpu_screen_local"] = cpu_screen(top + ["-d", "1"], args.seconds, None, frame)
        agent.stop(lab)
    finally:
        lab.cleanup()

    print(json.dumps(result, indent=2))
    su, sb = result["startup_screen_url"], result["startup_batch_url"]
    sl, bl = result["startup_screen_local"], result["startup_batch_local"]
    cu, cl = result["cpu_screen_url"], result["cpu_screen_local"]
    n = args.vms
    print(f"""
| `vmscope top`, {n} VMs | median | p90 | max |
|---|---|---|---|
| exec to first frame, `--url` (120x40 pty) | {su['median_ms']} ms | {su['p90_ms']} ms | {su['max_ms']} ms |
| exec to first batch line, `--url` | {sb['median_ms']} ms | {sb['p90_ms']} ms | {sb['max_ms']} ms |
| exec to first frame, local (one collection tick) | {sl['median_ms']} ms | {sl['p90_ms']} ms | {sl['max_ms']} ms |
| exec to first batch line, local | {bl['median_ms']} ms | {bl['p90_ms']} ms | {bl['max_ms']} ms |

| refresh 1 s, {n} VMs, {cu['seconds']:.0f} s | top's CPU (% of one core) | agent's CPU |
|---|---|---|
| agent alone, no top | - | {result['agent_alone_percent_of_one_core']}% |
| `vmscope top --url` | {cu['top_percent_of_one_core']}% | {cu.get('agent_percent_of_one_core', '-')}% |
| `vmscope top` (local collection) | {cl['top_percent_of_one_core']}% | - |
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
