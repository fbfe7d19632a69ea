#!/usr/bin/env python3
"""vmscope benchmark driver: vmscope vs process-exporter vs node-exporter vs the floor.

Run it through `bench/run.sh` (root; it builds the binaries, raises ulimits
and cleans up after a crash). What it does, in one run on the same processes:

1. starts 3 real QEMU VMs (HLT ROM, KVM or TCG, rtl8139 on a TAP) in the host
   network namespace, and N stand-in hypervisors (bench/standin/standin.c,
   installed as `qemu-system-x86_64`, real QEMU command lines, two threads
   named "CPU 0/KVM" and "CPU 1/KVM") in a private network namespace that
   holds one real TAP per stand-in;
2. runs `vmscope serve --interval 1` (its config file from the run's scratch
   directory: the state database never lands in /var/lib/vmscope),
   Debian's prometheus-process-exporter (one group per VM) and
   prometheus-node-exporter (host collectors only);
3. for N = 100, 1000, 5000 and 10 000 (100 and 1000 with --quick), each
   --repeat times with a fresh agent, measures CPU per collection
   (vmscope with the shipped defaults: process CPU over K ticks while
   nothing scrapes, then with one scrape per tick; the floor
   (bench/floor/floor.c) at the same time; peers: CPU per scrape, since
   they collect on scrape), /metrics latency p50/p99, series, bytes and RSS;
4. at N = 1000, each repetition: wrk requests/s on vmscope's /metrics
   (plain and gzip) against the serving floor, tick cost with 0 vs 5000
   extra sleeper processes; once: vmscope's RSS before and after churning
   10 000 VMs through start and stop;
5. at N = 1000 (--features-n), issue 17's feature configurations, each
   --repeat times: every wave-2 feature off, each alone (owners from a
   100 000-row mapping file, the ledger, bearer-token auth, one
   remote_write push to bench/receiver.py, the vm_devices poller), all on:
   tick alone and tick + one gzip scrape against the floor running
   alongside, RSS; each feature checked to be working in its run;
6. writes bench/results/<stamp>.{json,md} and the results section of
   docs/benchmarks.md (bench/report.py renders: medians over the
   repetitions, ratios as median (min-max)).

CPU times are read from the kernel: /proc/PID/stat utime+stime (clock
ticks, whole process, exited threads included) and the sum of
/proc/PID/task/*/schedstat run times (nanoseconds); the finer one is used
when both agree (no thread exited in the window).

Failure: any exception stops the run; everything started is killed and
removed (finally-blocks here, plus the trap in run.sh for SIGKILL cases).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gzip
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIBC = ctypes.CDLL(None, use_errno=True)
GZIP = {"Accept-Encoding": "gzip"}
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc reads


def cpu_ticks_seconds(pid: int) -> float:
    """utime + stime of the whole process (exited threads included)."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    f = data[data.rindex(b")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def run_ns(pid: int, thread_comm: str | None = None) -> int:
    """Sum of schedstat run time over the live threads (optionally one name)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if thread_comm is not None:
                if Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() != thread_comm:
                    continue
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def status_bytes(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


class CpuMeter:
    """CPU used by one process between start() and stop()."""

    def __init__(self, pid: int):
        self.pid = pid

    def start(self) -> None:
        self.t0, self.n0 = cpu_ticks_seconds(self.pid), run_ns(self.pid)

    def stop(self) -> float:
        t1, n1 = cpu_ticks_seconds(self.pid), run_ns(self.pid)
        ticks = t1 - self.t0
        ns = (n1 - self.n0) / 1e9
        # utime+stime is rounded to clock ticks; schedstat misses threads
        # that exited in the window. Prefer the fine one when they agree.
        self.detail = {"utime_stime_s": round(ticks, 4), "schedstat_s": round(ns, 6)}
        if abs(ticks - ns) <= 2.0 / CLK_TCK + 0.05 * max(ticks, ns):
            return ns
        return ticks


# ---------------------------------------------------------------- HTTP


class Http:
    def __init__(self, port: int, headers: dict | None = None):
        self.port = port
        # Sent with every request (the bearer token of an agent with auth on).
        self.headers = dict(headers or {})
        self.conn: http.client.HTTPConnection | None = None

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str, headers: dict | None = None, timeout: float = 120.0):
        """Returns (status, headers, body, seconds) over a kept-alive connection."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = self.connect(timeout)
            try:
                t0 = time.perf_counter()
                self.conn.request("GET", path, headers=dict(self.headers, **(headers or {})))
                r = self.conn.getresponse()
                body = r.read()
                dt = time.perf_counter() - t0
                return r.status, dict(r.getheaders()), body, dt
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def decoded(headers: dict, body: bytes) -> bytes:
    enc = {k.lower(): v for k, v in headers.items()}.get("content-encoding", "")
    return gzip.decompress(body) if "gzip" in enc else body


def count_series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def percentile(values: list[float], p: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, deadline_s: float, proc: subprocess.Popen) -> None:
    h = Http(port)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering on {port}")
        try:
            status, _, _, _ = h.get(path, timeout=5)
            if status == 200:
                h.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}{path} within {deadline_s}s")


# ---------------------------------------------------------------- the lab


def setns(fd: int) -> None:
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


class Lab:
    """Every process, TAP and namespace the benchmark starts; cleanup() undoes all."""

    def __init__(self, work: Path, standin: Path):
        self.work = work
        self.netns = f"vmsb{os.getpid()}"
        self.bin = work / "bin"
        self.bin.mkdir(exist_ok=True)
        self.qemu = self.bin / "qemu-system-x86_64"
        self.sleeper_bin = self.bin / "bench-sleeper"
        shutil.copy2(standin, self.qemu)
        shutil.copy2(standin, self.sleeper_bin)
        self.vms: dict[int, tuple[subprocess.Popen, str]] = {}  # seq -> (proc, tap)
        self.next_seq = 0
        self.taps_made = 0
        self.sleepers: list[subprocess.Popen] = []
        self.servers: list[subprocess.Popen] = []
        self.real: list[subprocess.Popen] = []
        self.host_taps: list[str] = []
        self.host_ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.ns_fd: int | None = None
        self.real_alive = 0
        # For run.sh's trap, in case this process is SIGKILLed.
        (work / "netns").write_text(self.netns + "\n")

    def note_pid(self, pid: int) -> None:
        with open(self.work / "pids", "a") as f:
            f.write(f"{pid}\n")

    def note_tap(self, tap: str) -> None:
        with open(self.work / "taps", "a") as f:
            f.write(f"{tap}\n")

    def setup(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.ns_fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)

    def make_taps(self, upto: int) -> None:
        """TAPs vmsb<i> for i < upto in the private namespace (one per stand-in)."""
        if upto <= self.taps_made:
            return
        script = "".join(f"tuntap add dev vmsb{i} mode tap\n" for i in range(self.taps_made, upto))
        subprocess.run(["ip", "-n", self.netns, "-batch", "-"], input=script.encode(), check=True)
        self.taps_made = upto

    @staticmethod
    def vm_uuid(seq: int) -> str:
        return str(uuid.UUID(int=(0x5EED << 96) | seq))

    def standin_argv(self, seq: int, tap: str) -> list[str]:
        """A real (libvirt-style) QEMU command line."""
        u = self.vm_uuid(seq)
        mac = "52:54:00:%02x:%02x:%02x" % ((seq >> 16) & 0xFF, (seq >> 8) & 0xFF, seq & 0xFF)
        name = f"bench-{seq}"
        return [
            str(self.qemu),
            "-name", f"guest={name},debug-threads=on",
            "-S",
            "-machine", "pc-q35-7.2,usb=off,dump-guest-core=off",
            "-accel", "kvm",
            "-cpu", "host,migratable=on",
            "-m", "512",
            "-overcommit", "mem-lock=off",
            "-smp", "2",
            "-uuid", u,
            "-no-user-config", "-nodefaults",
            "-chardev", f"socket,id=charmonitor,path=/var/lib/libvirt/qemu/domain-{seq}-{name}/monitor.sock,server=on,wait=off",
            "-mon", "chardev=charmonitor,id=monitor,mode=control",
            "-rtc", "base=utc,driftfix=slew",
            "-no-shutdown",
            "-boot", "strict=on",
            "-blockdev", '{"driver":"file","filename":"/var/lib/nova/instances/%s/disk","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}' % u,
            "-device", '{"driver":"virtio-blk-pci","bus":"pci.3","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}',
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", '{"driver":"virtio-net-pci","netdev":"n0","id":"net0","mac":"%s","bus":"pci.1","addr":"0x0"}' % mac,
            "-display", "none",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-msg", "timestamp=on",
        ]

    def spawn_vms(self, count: int, taps: list[str] | None = None, env_extra: dict | None = None) -> list[int]:
        """Starts `count` stand-ins inside the private namespace; returns their seqs."""
        env = {"PATH": "/usr/bin:/bin", "VMSCOPE_STANDIN_VCPUS": "2", **(env_extra or {})}
        if taps is None:
            # TAPs no stand-in holds (after churn, sequence numbers run past
            # the TAP names: a new stand-in must still name a TAP that exists,
            # or vm_net would price a missing interface).
            used = {t for _, t in self.vms.values()}
            taps = [t for t in (f"vmsb{i}" for i in range(self.taps_made)) if t not in used][:count]
            if len(taps) < count:
                raise RuntimeError(f"{count} stand-ins wanted, {len(taps)} free TAPs (make_taps first)")
        seqs = []
        assert self.ns_fd is not None
        setns(self.ns_fd)
        try:
            for i in range(count):
                seq = self.next_seq
                self.next_seq += 1
                tap = taps[i]
                p = subprocess.Popen(
                    self.standin_argv(seq, tap),
                    executable=str(self.qemu),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    close_fds=False,  # lets Popen use posix_spawn (vfork): 5000 starts stay fast
                )
                self.vms[seq] = (p, tap)
                seqs.append(seq)
        finally:
            setns(self.host_ns_fd)
        return seqs

    def kill_vms(self, seqs: list[int]) -> list[str]:
        """SIGKILLs and reaps these stand-ins; returns their (now free) TAP names."""
        procs = []
        taps = []
        for s in seqs:
            p, tap = self.vms.pop(s)
            p.kill()
            procs.append(p)
            taps.append(tap)
        for p in procs:
            p.wait()
        return taps

    def spawn_sleepers(self, count: int) -> None:
        for _ in range(count):
            self.sleepers.append(
                subprocess.Popen(
                    [str(self.sleeper_bin)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    close_fds=False,
                )
            )

    def kill_sleepers(self) -> None:
        for p in self.sleepers:
            p.kill()
        for p in self.sleepers:
            p.wait()
        self.sleepers = []

    def start_real_vms(self, count: int) -> int:
        """Real QEMU per LAB.md: HLT ROM, KVM (else TCG), rtl8139 on a host TAP."""
        qemu = shutil.which("qemu-system-x86_64", path="/usr/bin:/usr/local/bin")
        if not qemu:
            log("no /usr/bin/qemu-system-x86_64: skipping the real VMs")
            return 0
        rom = self.work / "hlt.rom"
        rom.write_bytes(b"\xf4" * 65536)
        accel = "kvm"
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
        except OSError:
            accel = "tcg"
        for i in range(count):
            tap = f"vmsbq{os.getpid() % 10000}{i}"
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            self.host_taps.append(tap)
            self.note_tap(tap)
            subprocess.run(["ip", "link", "set", tap, "up"], check=True)
            name = f"bench-real-{i}"
            p = subprocess.Popen(
                [qemu, "-accel", accel, "-machine", "pc", "-m", "32", "-bios", str(rom),
                 "-display", "none", "-nodefaults", "-no-user-config", "-monitor", "none",
                 "-name", f"guest={name},debug-threads=on", "-uuid", str(uuid.uuid4()),
                 "-smp", "2",
                 "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                 "-device", "rtl8139,netdev=n0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.work / f"{name}.log", "wb"),
            )
            self.real.append(p)
            self.note_pid(p.pid)
        time.sleep(0.5)
        alive = [p for p in self.real if p.poll() is None]
        if len(alive) != count:
            log(f"only {len(alive)} of {count} real QEMU VMs are running (see {self.work}/bench-real-*.log)")
        return len(alive)

    def server(self, argv: list[str], log_name: str, env: dict | None = None) -> subprocess.Popen:
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=open(self.work / log_name, "ab"),
            stderr=subprocess.STDOUT, env=env,
        )
        self.servers.append(p)
        self.note_pid(p.pid)
        return p

    def cleanup(self) -> None:
        for p in self.servers + self.real:
            if p.poll() is None:
                p.terminate()
        for p in self.servers + self.real:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.kill_sleepers()
        self.kill_vms(list(self.vms))
        for tap in self.host_taps:
            subprocess.run(["ip", "link", "del", tap], stderr=subprocess.DEVNULL)
        self.host_taps = []
        if self.ns_fd is not None:
            os.close(self.ns_fd)
            self.ns_fd = None
        # Deleting the namespace destroys every TAP in it.
        subprocess.run(["ip", "netns", "del", self.netns], stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- measurements


# The wave-2 features a configuration can switch on (issue 17 prices each):
# owners from a 100 000-row mapping file, the usage ledger, bearer-token
# auth, one remote_write destination, the per-disk `vm_devices` poller.
FEATURES = ("owners", "ledger", "auth", "push", "devices")


def toml_str(s: str | Path) -> str:
    return json.dumps(str(s))  # a TOML basic string for any path


def agent_config(work: Path, tag: str, features: set[str] | None = None, owners_csv: Path | None = None,
                 push_protocol: str = "remote_write",
                 push_url: str | None = None, web_config: Path | None = None) -> Path:
    """vmscope's config file for one agent of the run.

    `features` None: the shipped defaults (ledger, vm_devices and the
    watchdog on, nothing else), as `vmscope serve` runs with no file. Either
    way the state database goes into the run's scratch directory, never
    the host's /var/lib/vmscope, one file per agent (a fresh ledger each).
    """
    lines = [f"[store]\npath = {toml_str(work / f'state-{tag}.db')}"]
    if features is not None:
        unknown = features - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)} (known: {', '.join(FEATURES)})")
        lines.append(f"[ledger]\nenabled = {str('ledger' in features).lower()}")
        lines.append(f"[collectors.vm_devices]\nenabled = {str('devices' in features).lower()}")
        if "auth" in features:
            assert web_config is not None
            lines.append(f"[http]\nweb_config_file = {toml_str(web_config)}")
        if "owners" in features:
            assert owners_csv is not None
            lines.append(f"[owners.file]\npath = {toml_str(owners_csv)}")
        if "push" in features:
            assert push_url is not None
            # No interval: a push per snapshot, i.e. per tick, the push twin
            # of the one scrape per tick the windows model.
            # `otlp_plain`: an OTLP destination with compression = "none".
            kind = "otlp" if push_protocol == "otlp_plain" else push_protocol
            lines.append(f"[[push.{kind}]]\nname = \"bench\"\nurl = {toml_str(push_url)}")
            if push_protocol == "otlp_plain":
                lines.append('compression = "none"')
    path = work / f"vmscope-{tag}.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


class Vmscope:
    def __init__(self, lab: Lab, binary: Path, port: int, config: Path | None = None,
                 headers: dict | None = None):
        env = dict(os.environ, VMSCOPE_LOG="warn")
        if config is None:
            config = agent_config(lab.work, f"default-{port}")
        self.config = config
        self.proc = lab.server([str(binary), "serve", "-c", str(config),
                                "--listen", f"127.0.0.1:{port}", "--interval", "1"],
                               "vmscope.log", env=env)
        self.pid = self.proc.pid
        self.http = Http(port, headers)
        self.port = port
        wait_http(port, "/healthz", 30, self.proc)

    def seq(self) -> int:
        # /healthz answers 503 "stale" while the newest snapshot is older
        # than 3 intervals: at 10 000 VMs a tick can outlast that (its
        # time is what is being measured). Right after a tick it is fresh.
        end = time.monotonic() + 120
        while True:
            status, _, body, _ = self.http.get("/healthz")
            if status == 200:
                return int(json.loads(body)["seq"])
            if status != 503 or time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"vmscope /healthz answered {status}: {body[:200]!r}")
            time.sleep(0.05)

    def collect_ns(self) -> int:
        return run_ns(self.pid, "vmscope-collect")

    def between_ticks(self) -> None:
        """Returns just after a tick finished, so windows hold whole ticks."""
        n0 = self.collect_ns()
        # Long enough for a tick of 10 000 VMs on a loaded machine.
        end = time.monotonic() + 60
        while self.collect_ns() == n0 and time.monotonic() < end:
            time.sleep(0.01)
        # The tick is running; wait until the thread is idle for 50 ms.
        last = self.collect_ns()
        while time.monotonic() < end:
            time.sleep(0.05)
            now = self.collect_ns()
            if now == last:
                break
            last = now
        time.sleep(0.1)

    def vm_count(self) -> int:
        # The JSON API, not /metrics: a /metrics request would make vmscope
        # pre-encode that variant on every tick for the next 3 minutes.
        status, _, body, _ = self.http.get("/api/v1/vms")
        if status != 200:
            raise RuntimeError(f"vmscope /api/v1/vms answered {status}: {body[:200]!r}")
        return len(json.loads(body)["vms"])

    def stop(self, lab: Lab) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc in lab.servers:
            lab.servers.remove(self.proc)

    def wait_vms(self, n: int, timeout: float | None = None) -> None:
        # Discovering 10 000 new VMs (and opening their files past the
        # descriptor limit) takes longer than 1000.
        end = time.monotonic() + (timeout if timeout is not None else 120 + n / 50)
        while time.monotonic() < end:
            c = self.vm_count()
            if c >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"vmscope shows {self.vm_count()} VMs, expected {n}")

    def window(self, ticks: int, scrape_each_tick: bool = False) -> dict:
        """Process CPU per tick over `ticks` ticks (+ one gzip scrape per tick if asked)."""
        self.between_ticks()
        s0 = self.seq()
        meter = CpuMeter(self.pid)
        meter.start()
        c0 = self.collect_ns()
        t0 = time.monotonic()
        per_tick = []
        last = c0
        for _ in range(ticks):
            self.between_ticks()
            now = self.collect_ns()
            per_tick.append((now - last) / 1e9)
            last = now
            if scrape_each_tick:
                self.http.get("/metrics", GZIP)
        c1 = self.collect_ns()
        cpu = meter.stop()
        n = self.seq() - s0
        return {
            "ticks": n,
            "wall_s": round(time.monotonic() - t0, 2),
            "cpu_per_tick_s": cpu / max(n, 1),
            "collect_thread_per_tick_s": (c1 - c0) / 1e9 / max(n, 1),
            "collect_thread_tick_p50_s": percentile(per_tick, 50),
            "collect_thread_tick_max_s": max(per_tick) if per_tick else None,
            "collect_thread_ticks_s": [round(x, 6) for x in per_tick],
            "cpu_detail": meter.detail,
        }

    def collector_durations(self) -> dict:
        _, h, body, _ = self.http.get("/metrics", GZIP)
        out = {}
        for line in decoded(h, body).decode().splitlines():
            m = re.match(r'vmscope_collector_duration_seconds\{collector="([^"]+)"\} (\S+)', line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out


def scrape_stats(http_: Http, pid: int, requests: int, headers: dict | None,
                 vmscope: Vmscope | None = None, idle_per_tick: float = 0.0,
                 budget_s: float | None = None, min_requests: int = 5) -> dict:
    """Latency, CPU per request, series and bytes of `requests` back-to-back scrapes.

    With `budget_s`, stops early once that much time has passed (peers that
    collect on scrape take seconds per scrape at N = 5000), after at least
    `min_requests`.
    """
    http_.get("/metrics", headers)  # warm: connection, caches, first collection
    s0 = vmscope.seq() if vmscope else 0
    meter = CpuMeter(pid)
    meter.start()
    lat = []
    body = b""
    hdrs: dict = {}
    t0 = time.monotonic()
    for i in range(requests):
        status, hdrs, body, dt = http_.get("/metrics", headers)
        if status != 200:
            raise RuntimeError(f"/metrics on port {http_.port} answered {status}")
        lat.append(dt)
        if budget_s is not None and i + 1 >= min_requests and time.monotonic() - t0 > budget_s:
            break
    requests = len(lat)
    cpu = meter.stop()
    ticks = (vmscope.seq() - s0) if vmscope else 0
    cpu_scrapes = max(0.0, cpu - ticks * idle_per_tick)
    text = decoded(hdrs, body)
    return {
        "requests": requests,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "cpu_per_request_s": cpu_scrapes / requests,
        "ticks_in_window": ticks,
        "cpu_detail": meter.detail,
        "series": count_series(text),
        "bytes": len(text),
        "bytes_on_wire": len(body),
    }


def run_floor(floor: Path, iterations: int, listing: bool, eof_read: bool = False) -> subprocess.Popen:
    argv = [str(floor), "--iterations", str(iterations), "--interval-ms", "1000"]
    if listing:
        argv.append("--listing")
    if eof_read:
        argv.append("--eof-read")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Its setup (classifying every VM, opening ~20 000 files at N = 10 000)
    # takes seconds: wait for "ready" so that it does not run inside the
    # window it is measured beside (an early exit reads as EOF here).
    assert p.stderr is not None
    p.stderr.readline()
    return p


def floor_result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate(timeout=600)
    return json.loads(out)


def pin(pid: int, cpus: str) -> None:
    """Moves every thread of `pid` onto `cpus` (taskset list syntax)."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


def wrk(port: int, gzip_: bool, seconds: int) -> dict:
    # The server under test is pinned to CPU 0 by the caller ("requests/s
    # on one core"); wrk gets CPU 1 when there is one.
    argv = ["taskset", "-c", "1"] if (os.cpu_count() or 1) > 1 else []
    argv += ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency"]
    if gzip_:
        argv += ["-H", "Accept-Encoding: gzip"]
    argv.append(f"http://127.0.0.1:{port}/metrics")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    return {
        "requests_per_s": float(m.group(1)) if m else 0.0,
        "p50_s": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
        "non_2xx": int(errs.group(1)) if errs else 0,
        "raw": out,
    }


# ---------------------------------------------------------------- the run


def measure_n(args, lab: Lab, vms: Vmscope, pe: tuple, ne: tuple, floor: Path, n_total: int) -> dict:
    k = args.ticks
    log(f"N={n_total}: idle window ({k} ticks) with the floor alongside")
    f_plain = run_floor(floor, k, listing=False)
    f_list = run_floor(floor, k, listing=True)
    f_eof = run_floor(floor, k, listing=False, eof_read=True)
    idle = vms.window(k)
    floor_plain, floor_list, floor_eof = floor_result(f_plain), floor_result(f_list), floor_result(f_eof)
    log(f"N={n_total}: vmscope {idle['cpu_per_tick_s']*1e3:.2f} ms/tick, floor {floor_plain['cpu_per_iteration_seconds']*1e3:.2f} ms")
    log(f"N={n_total}: window with one gzip scrape per tick")
    perf = None
    if args.perf:
        args.out.mkdir(parents=True, exist_ok=True)
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-g", "-p", str(vms.pid),
                                 "-o", str(args.out / f"perf-{n_total}.data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scraped = vms.window(k, scrape_each_tick=True)
    # Scraped as Prometheus scrapes (gzip only, once per tick), before any
    # plain-text request makes the agent keep the text body too.
    rss_gzip_only = rss_bytes(vms.pid)
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    log(f"N={n_total}: vmscope latency ({args.requests} plain, {args.requests} gzip)")
    # Ticks meanwhile pre-encode the gzip variant (asked for just above).
    v_plain = scrape_stats(vms.http, vms.pid, args.requests, None, vms, scraped["cpu_per_tick_s"])
    v_gzip = scrape_stats(vms.http, vms.pid, args.requests, GZIP, vms, scraped["cpu_per_tick_s"])
    durations = vms.collector_durations()
    log(f"N={n_total}: window with nothing scraping, after plain and gzip scrapes ({k} ticks)")
    prewarm = vms.window(k)
    res = {
        "n_standins": n_total,
        "vmscope": {
            "idle": idle,
            "scraped": scraped,
            "after_scrapes": prewarm,
            "plain": v_plain,
            "gzip": v_gzip,
            "rss_bytes": rss_bytes(vms.pid),
            "rss_gzip_only_bytes": rss_gzip_only,
            "collector_durations_s": durations,
        },
        "floor": floor_plain,
        "floor_listing": floor_list,
        "floor_eof_read": floor_eof,
    }
    for label, (proc, h) in (("process_exporter", pe), ("node_exporter", ne)):
        log(f"N={n_total}: {label} (up to {args.peer_requests} gzip scrapes or {args.peer_budget:.0f}s)")
        st = scrape_stats(h, proc.pid, args.peer_requests, GZIP, budget_s=args.peer_budget, min_requests=3)
        st["rss_bytes"] = rss_bytes(proc.pid)
        res[label] = st
        log(f"N={n_total}: {label} {st['cpu_per_request_s']*1e3:.1f} ms CPU/scrape, p50 {st['p50_s']*1e3:.1f} ms")
    if n_total == args.detail_n or args.wrk_all:
        all_cpus = f"0-{(os.cpu_count() or 1) - 1}"
        for gz in (False, True):
            kind = "gzip" if gz else "plain"
            log(f"N={n_total}: wrk -t1 -c8 -d{args.wrk_seconds}s {kind}, vmscope on CPU 0")
            pin(vms.pid, "0")
            try:
                meter = CpuMeter(vms.pid)
                meter.start()
                w = wrk(vms.port, gz, args.wrk_seconds)
                w["vmscope_cpu_s"] = meter.stop()
            finally:
                pin(vms.pid, all_cpus)
            res["vmscope"][f"wrk_{kind}"] = w
            log(f"N={n_total}: {w['requests_per_s']:.0f} req/s")
            if args.serve_floor:
                res[f"serve_floor_{kind}"] = serve_floor(args, lab, vms, gz)
                log(f"N={n_total}: serving floor {res[f'serve_floor_{kind}']['requests_per_s']:.0f} req/s")
        res["vmscope"]["rss_after_wrk_bytes"] = rss_bytes(vms.pid)
    return res


def serve_floor(args, lab: Lab, vms: Vmscope, gz: bool) -> dict:
    """wrk against serve_floor.c answering with the body vmscope just served
    (same bytes, same core): what loopback allows for that body here."""
    _, _, body, _ = vms.http.get("/metrics", GZIP if gz else None)
    path = args.work / ("floor-body.gz" if gz else "floor-body.txt")
    path.write_bytes(body)
    port = free_port()
    argv = ["taskset", "-c", "0", str(args.serve_floor), str(port), str(path)] + (["gzip"] if gz else [])
    proc = lab.server(argv, "serve-floor.log")
    try:
        wait_http(port, "/metrics", 10, proc)
        meter = CpuMeter(proc.pid)
        meter.start()
        w = wrk(port, gz, args.wrk_seconds)
        w["server_cpu_s"] = meter.stop()
        w["body_bytes"] = len(body)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc in lab.servers:
            lab.servers.remove(proc)
    return w


def independence(args, lab: Lab, vms: Vmscope, floor: Path) -> dict:
    k = args.ticks
    log(f"independence: {k} ticks with 0 extra processes")
    fl = run_floor(floor, k, listing=True)
    base = vms.window(k)
    base_floor = floor_result(fl)
    log(f"independence: starting {args.sleepers} sleeper processes")
    lab.spawn_sleepers(args.sleepers)
    # vmscope re-reads processes younger than 10 s (fork-then-exec grace).
    time.sleep(12)
    log(f"independence: {k} ticks with {args.sleepers} extra processes")
    fl = run_floor(floor, k, listing=True)
    loaded = vms.window(k)
    loaded_floor = floor_result(fl)
    lab.kill_sleepers()
    return {
        "sleepers": args.sleepers,
        "without": base,
        "with": loaded,
        "floor_listing_without": base_floor,
        "floor_listing_with": loaded_floor,
    }


def churn(args, lab: Lab, vms: Vmscope) -> dict:
    """Replaces VMs in waves until `churn_total` have come and gone."""
    time.sleep(3)
    for _ in range(3):
        vms.http.get("/metrics", GZIP)
        vms.http.get("/metrics")
    before = rss_bytes(vms.pid)
    wave = args.churn_wave
    done = 0
    log(f"churn: {args.churn_total} VMs through start and stop, waves of {wave}, vmscope RSS {before/2**20:.1f} MiB")
    t0 = time.monotonic()
    peak = before
    # RSS at every 10 000 VMs churned (settled, as `after` below): with
    # --churn-total 30000 this shows whether growth stops or keeps going.
    milestones: list[tuple[int, int]] = []
    while done < args.churn_total:
        oldest = sorted(lab.vms)[:wave]
        taps = lab.kill_vms(oldest)
        lab.spawn_vms(len(taps), taps=taps)
        done += len(taps)
        time.sleep(args.churn_pause)
        vms.http.get("/metrics", GZIP)  # a scraper keeps scraping during churn
        peak = max(peak, rss_bytes(vms.pid))
        if done % 10000 == 0 and done < args.churn_total:
            time.sleep(3)
            milestones.append((done, rss_bytes(vms.pid)))
            log(f"churn: {done} VMs, RSS {milestones[-1][1]/2**20:.1f} MiB")
    log(f"churn: done in {time.monotonic() - t0:.0f}s; settling")
    vms.wait_vms(len(lab.vms) + lab.real_alive)
    time.sleep(5)
    for _ in range(3):
        vms.http.get("/metrics", GZIP)
        vms.http.get("/metrics")
    after = rss_bytes(vms.pid)
    log(f"churn: RSS {before/2**20:.1f} -> {after/2**20:.1f} MiB (peak {peak/2**20:.1f})")
    milestones.append((done, after))
    return {"vms_churned": done, "wave": wave, "rss_before_bytes": before, "rss_after_bytes": after,
            "rss_peak_bytes": peak, "seconds": round(time.monotonic() - t0, 1),
            "rss_milestones": milestones}


# ---------------------------------------------------------------- features (issue 17)


def owners_csv(path: Path, vm_seqs: list[int], rows: int, lab: Lab) -> dict:
    """A mapping file of `rows` rows: one per stand-in alive (by UUID, every
    VM attributed: 250 users, 50 projects, as the owners benches use), the
    rest for VMs of other hosts (what a platform's whole export looks like)."""
    users, projects = 250, 50
    with open(path, "w") as f:
        f.write("id,user_id,user_name,project_id,project_name\n")
        for seq in vm_seqs:
            u, pr = seq % users, seq % projects
            f.write(f"{lab.vm_uuid(seq)},u-{u},user {u},p-{pr},project {pr}\n")
        for i in range(max(0, rows - len(vm_seqs))):
            u, pr = i % 20000, i % 4000
            f.write(f"{uuid.UUID(int=(0xF11E << 96) | i)},u-{u},user {u},p-{pr},project {pr}\n")
    return {"rows": max(rows, len(vm_seqs)), "this_host": len(vm_seqs), "bytes": path.stat().st_size}


class Receiver:
    """bench/receiver.py: a remote_write receiver that accepts and discards."""

    def __init__(self, lab: Lab):
        self.port = free_port()
        self.proc = lab.server([sys.executable, str(HERE / "receiver.py"), str(self.port)], "receiver.log")
        self.http = Http(self.port)
        wait_http(self.port, "/stats", 10, self.proc)
        self.url = f"http://127.0.0.1:{self.port}/api/v1/write"

    def stats(self) -> dict:
        status, _, body, _ = self.http.get("/stats", timeout=10)
        if status != 200:
            raise RuntimeError(f"the push receiver answered {status}")
        return json.loads(body)


def family_present(text: str, name: str, label: str | None = None) -> bool:
    for line in text.splitlines():
        if line.startswith(name) and (label is None or label in line):
            return True
    return False


def feature_checks(vms: Vmscope, features: set[str], receiver: Receiver | None, pushes_before: int) -> dict:
    """What this agent visibly does, per feature, after its windows (a
    scrape now no longer matters). A feature that should be on and is not,
    or the reverse, stops the run: the figures would price the wrong thing."""
    _, h, body, _ = vms.http.get("/metrics", GZIP)
    text = decoded(h, body).decode(errors="replace")
    unauth = Http(vms.port)
    try:
        status_unauth = unauth.get("/metrics", timeout=30)[0]
    finally:
        unauth.close()
    status, _, body, _ = vms.http.get("/api/v1/owners")
    owners = len(json.loads(body).get("owners", [])) if status == 200 else -1
    pushes = (receiver.stats()["requests"] - pushes_before) if receiver else 0
    seen = {
        "owners": owners > 0,
        "ledger": family_present(text, "vmscope_ledger_incarnations"),
        "auth": status_unauth == 401,
        "push": family_present(text, "vmscope_push_samples_total") and pushes > 0,
        "devices": family_present(text, "vmscope_collector_duration_seconds", 'collector="vm_devices"'),
    }
    wrong = sorted(f for f in FEATURES if seen[f] != (f in features))
    if wrong:
        raise RuntimeError(f"features {wrong} are not as configured {sorted(features)}: observed {seen} "
                           f"(owners listed {owners}, unauthenticated /metrics {status_unauth}, pushes {pushes}); "
                           f"config {vms.config}")
    # What pushing costs, as the agent measures it: the encoding thread's
    # CPU clock around each body it built (issue 14: per push, against a
    # tick's CPU).
    def total(name: str) -> float | None:
        m = re.search(rf'^{name}{{destination="bench"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else None
    cpu, encodes = total("vmscope_push_encode_cpu_seconds_total"), total("vmscope_push_encodes_total")
    push_cpu = cpu / encodes if cpu is not None and encodes else None
    sent = re.search(r'^vmscope_push_samples_total{destination="bench",result="sent"} (\S+)$', text, re.M)
    return {"seen": seen, "owners_listed": owners, "unauthenticated_status": status_unauth,
            "pushes": pushes, "push_cpu_per_push_s": push_cpu, "push_encodes": encodes,
            "push_reused_series": total("vmscope_push_reused_series"),
            "push_series_per_push": float(sent.group(1)) / encodes if sent and encodes else None}


def feature_sets(names: list[str]) -> list[tuple[str, set[str]]]:
    """`off`, `all`, or a feature alone (`owners`, ...) or `+`-joined."""
    out = []
    for name in names:
        if name == "off":
            out.append((name, set()))
        elif name == "all":
            out.append((name, set(FEATURES)))
        else:
            fs = set(name.split("+"))
            if not fs <= set(FEATURES):
                raise SystemExit(f"bench.py: --feature-configs: unknown feature in {name!r} "
                                 f"(known: off, all, {', '.join(FEATURES)})")
            out.append((name, fs))
    return out


def feature_matrix_rep(args, lab: Lab, pe: tuple, floor: Path, n_total: int, rep: int, prep: dict) -> list[dict]:
    """One repetition: each configuration in turn (a fresh agent each, the
    order rotated by the repetition so the machine's drift spreads over
    all), at the same N: the tick alone and the tick with one gzip scrape
    per tick, each with the floor running alongside, RSS after each."""
    k = args.feature_ticks
    configs = feature_sets(args.feature_configs.split(","))
    shift = rep % len(configs)
    configs = configs[shift:] + configs[:shift]
    out = []
    pe_proc, pe_http = pe
    log(f"features rep {rep + 1}: process-exporter ({args.feature_peer_requests} gzip scrapes)")
    pe_st = scrape_stats(pe_http, pe_proc.pid, args.feature_peer_requests, GZIP, min_requests=3)
    for name, fs in configs:
        receiver = prep.get("receiver")
        cfg = agent_config(args.work, f"{name}-{rep}", fs, owners_csv=prep.get("owners_csv"),
                           push_protocol=args.feature_push,
                           push_url=receiver.url if receiver else None, web_config=prep.get("web_config"))
        headers = prep["auth_header"] if "auth" in fs else None
        pushes_before = receiver.stats()["requests"] if receiver else 0
        t0 = time.monotonic()
        vms = Vmscope(lab, args.vmscope, free_port(), cfg, headers)
        try:
            vms.wait_vms(n_total + lab.real_alive)
            ready_s = time.monotonic() - t0
            # A few ticks with every file held open; the owners file parsed
            # and the first ledger rows opened.
            time.sleep(3)
            log(f"features rep {rep + 1}: {name}: {k} ticks alone, then {k} with one gzip scrape each")
            f = run_floor(floor, k, listing=False)
            idle = vms.window(k)
            fl_idle = floor_result(f)
            rss_idle = rss_bytes(vms.pid)
            f = run_floor(floor, k, listing=False)
            scraped = vms.window(k, scrape_each_tick=True)
            fl_scraped = floor_result(f)
            rss_scraped, hwm = rss_bytes(vms.pid), status_bytes(vms.pid, "VmHWM")
            checks = feature_checks(vms, fs, receiver, pushes_before)
        finally:
            vms.stop(lab)
        r = {
            "config": name, "features": sorted(fs), "rep": rep, "n_standins": n_total,
            "ready_s": round(ready_s, 1),
            "idle": idle, "scraped": scraped,
            "floor_idle": fl_idle, "floor_scraped": fl_scraped,
            "rss_idle_bytes": rss_idle, "rss_bytes": rss_scraped, "hwm_bytes": hwm,
            "checks": checks,
        }
        out.append(r)
        log(f"features rep {rep + 1}: {name}: tick {idle['cpu_per_tick_s'] * 1e3:.2f} ms "
            f"({idle['cpu_per_tick_s'] / fl_idle['cpu_per_iteration_seconds']:.2f}x floor), "
            f"tick + scrape {scraped['cpu_per_tick_s'] * 1e3:.2f} ms "
            f"({scraped['cpu_per_tick_s'] / fl_scraped['cpu_per_iteration_seconds']:.2f}x), "
            f"RSS {rss_scraped / 2**20:.1f} MiB")
    return [dict(r, process_exporter=pe_st) for r in out]


def feature_prep(args, lab: Lab) -> dict:
    """What the feature configurations share: the mapping file, the web
    config and its token, the push receiver."""
    from access import ADMIN, web_config  # bench/access.py: 1000 bearer tokens, as --access measures

    prep: dict = {}
    path = args.work / "owners.csv"
    prep["owners_file"] = owners_csv(path, sorted(lab.vms), args.owner_rows, lab)
    prep["owners_csv"] = path
    prep["web_config"] = web_config(args.work, tls=False)
    prep["auth_header"] = {"Authorization": f"Bearer {ADMIN}"}
    prep["receiver"] = Receiver(lab)
    return prep


def machine_facts() -> dict:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    def version(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "crates"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "mem_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "clk_tck": CLK_TCK,
        "git": git + ("+dirty" if dirty else ""),
        "process_exporter": version(["prometheus-process-exporter", "-version"]),
        "node_exporter": version(["prometheus-node-exporter", "--version"]),
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (run.sh makes one)")
    ap.add_argument("--vmscope", type=Path, required=True)
    ap.add_argument("--standin", type=Path, required=True)
    ap.add_argument("--floor", type=Path, required=True)
    ap.add_argument("--serve-floor", type=Path, default=None,
                    help="bench/floor/serve_floor.c built: the HTTP serving floor for the wrk comparison")
    ap.add_argument("--quick", action="store_true", help="N = 100 and 1000 only, shorter windows")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated N (default 100,1000,5000,10000; quick 100,1000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repetitions of every measured configuration (default 3): a fresh agent each, "
                         "the report gives the median and the spread (min-max) of the ratios")
    ap.add_argument("--ticks", type=int, default=None, help="ticks per CPU window (default 30; quick 12)")
    ap.add_argument("--requests", type=int, default=None, help="vmscope latency requests (default 200; quick 100)")
    ap.add_argument("--peer-requests", type=int, default=None, help="peer scrapes (default 50; quick 20)")
    ap.add_argument("--peer-budget", type=float, default=None,
                    help="seconds of scraping per peer and N before stopping early (default 60; quick 20)")
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--wrk-all", action="store_true", help="run wrk at every N, not only 1000")
    ap.add_argument("--sleepers", type=int, default=5000)
    ap.add_argument("--churn-total", type=int, default=10000)
    ap.add_argument("--churn-wave", type=int, default=500)
    ap.add_argument("--churn-pause", type=float, default=1.2)
    ap.add_argument("--real-vms", type=int, default=3)
    ap.add_argument("--detail-n", type=int, default=1000,
                    help="N of wrk, independence and churn (issues 4 and 17: 1000; smaller for smoke runs)")
    ap.add_argument("--features-n", type=int, default=1000,
                    help="N of the feature configurations (issue 17: 1000); must be one of --sizes")
    ap.add_argument("--feature-configs", default="off,owners,ledger,auth,push,devices,all",
                    help="configurations priced against each other: off, all, a feature alone "
                         f"({', '.join(FEATURES)}) or features joined with +")
    ap.add_argument("--feature-push", choices=("remote_write", "otlp", "otlp_plain"), default="remote_write",
                    help="the protocol of the push feature's one destination (default remote_write; "
                         "otlp_plain: OTLP with compression = \"none\")")
    ap.add_argument("--feature-ticks", type=int, default=None,
                    help="ticks per window in the feature configurations (default: --ticks)")
    ap.add_argument("--feature-peer-requests", type=int, default=10,
                    help="process-exporter scrapes per feature repetition (its CPU per scrape, same run)")
    ap.add_argument("--owner-rows", type=int, default=100000, help="rows of the owners mapping file")
    ap.add_argument("--skip", default="",
                    help="comma list of: sweep (the per-N measurements), independence, churn, features")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-docs", action="store_true",
                    help="do not rewrite docs/benchmarks.md's results section (smoke runs)")
    ap.add_argument("--perf", action="store_true",
                    help="record vmscope with `perf record -g` during each tick + scrape window "
                         "(bench/results/perf-N.data; read with `perf report -i ...`)")
    ap.add_argument("--command", default="bench/run.sh", help="the command line to record")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or ("100,1000" if args.quick else "100,1000,5000,10000")).split(",")]
    if args.repeat < 1:
        raise SystemExit("bench.py: --repeat must be at least 1")
    args.ticks = args.ticks or (12 if args.quick else 30)
    args.feature_ticks = args.feature_ticks or args.ticks
    args.requests = args.requests or (100 if args.quick else 200)
    args.peer_requests = args.peer_requests or (20 if args.quick else 50)
    args.peer_budget = args.peer_budget or (20.0 if args.quick else 60.0)
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - {"sweep", "independence", "churn", "features"}
    if unknown:
        raise SystemExit(f"bench.py: --skip: unknown {sorted(unknown)} (sweep, independence, churn, features)")
    feature_sets(args.feature_configs.split(","))  # a typo fails now, not after an hour
    if "features" not in skip and args.features_n not in sizes:
        raise SystemExit(f"bench.py: --features-n {args.features_n} is not among --sizes {sizes} "
                         "(or --skip features)")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    facts = machine_facts()
    lab = Lab(args.work, args.standin)
    results: dict = {"facts": facts, "command": args.command, "sizes": sizes, "ticks_per_window": args.ticks,
                     "repeat": args.repeat, "format": 2,
                     "per_n": [], "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    t_start = time.monotonic()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    ok = False
    try:
        lab.setup()
        lab.real_alive = lab.start_real_vms(args.real_vms)
        results["real_vms"] = lab.real_alive
        pe_cfg = HERE / "process-exporter.yml"
        pe_port, ne_port = free_port(), free_port()
        pe = lab.server(["prometheus-process-exporter", "-config.path", str(pe_cfg),
                         "-web.listen-address", f"127.0.0.1:{pe_port}"], "process-exporter.log")
        ne = lab.server(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{ne_port}",
                         "--collector.disable-defaults", "--collector.cpu", "--collector.stat",
                         "--collector.meminfo", "--collector.loadavg", "--collector.filesystem",
                         "--collector.netdev"], "node-exporter.log")
        wait_http(pe_port, "/metrics", 30, pe)
        wait_http(ne_port, "/metrics", 30, ne)
        peers = ((pe, Http(pe_port)), (ne, Http(ne_port)))
        have = 0
        for n in sizes:
            log(f"N={n}: creating TAPs and starting {n - have} stand-ins")
            t0 = time.monotonic()
            lab.make_taps(n)
            t_taps = time.monotonic()
            lab.spawn_vms(n - have)
            t_spawn = time.monotonic()
            setup = {"new_standins": n - have, "taps_s": round(t_taps - t0, 1),
                     "spawn_s": round(t_spawn - t_taps, 1)}
            log(f"N={n}: {n - have} TAPs in {setup['taps_s']}s, stand-ins started in {setup['spawn_s']}s")
            have = n
            entry: dict = {"n_standins": n, "setup": setup, "reps": []}
            results["per_n"].append(entry)
            if "sweep" not in skip:
                for rep in range(args.repeat):
                    # A fresh vmscope per N and repetition: it pre-encodes
                    # every /metrics variant asked for in the last 3 minutes
                    # on each tick, so "nothing scrapes" needs an instance
                    # that has never been scraped.
                    t1 = time.monotonic()
                    vms = Vmscope(lab, args.vmscope, free_port())
                    try:
                        vms.wait_vms(n + lab.real_alive)
                        seen_s = round(time.monotonic() - t1, 1)
                        setup.setdefault("agent_ready_s", []).append(seen_s)
                        log(f"N={n} rep {rep + 1}/{args.repeat}: all {n} stand-ins seen by a fresh vmscope in {seen_s}s")
                        time.sleep(3)  # a few ticks with every file held open
                        res = measure_n(args, lab, vms, peers[0], peers[1], args.floor, n)
                        res["rep"] = rep
                        entry["reps"].append(res)
                        if n == args.detail_n and "independence" not in skip:
                            results.setdefault("independence", []).append(independence(args, lab, vms, args.floor))
                        if n == args.detail_n and "churn" not in skip and rep == args.repeat - 1:
                            # Once: memory after churn is a trend, not a ratio.
                            results["churn"] = churn(args, lab, vms)
                    finally:
                        vms.stop(lab)
            if n == args.features_n and "features" not in skip:
                prep = feature_prep(args, lab)
                results["features_setup"] = {"owners_file": prep["owners_file"], "n_standins": n,
                                             "ticks_per_window": args.feature_ticks,
                                             "push_protocol": args.feature_push,
                                             "configs": args.feature_configs.split(",")}
                for rep in range(args.repeat):
                    results.setdefault("features", []).extend(
                        feature_matrix_rep(args, lab, peers[0], args.floor, n, rep, prep))
        results["vmscope_errors_in_log"] = sum(
            1 for line in (args.work / "vmscope.log").read_text(errors="replace").splitlines()
            if "ERROR" in line or "panicked" in line)
        ok = True
    finally:
        log("cleaning up")
        lab.cleanup()
        if not ok:
            # An hour's figures are not thrown away with one failure.
            args.out.mkdir(parents=True, exist_ok=True)
            partial = args.out / f"{stamp}-partial.json"
            results["partial"] = True
            results["seconds"] = round(time.monotonic() - t_start)
            partial.write_text(json.dumps(results, indent=1, default=str) + "\n")
            log(f"failed: what was measured so far is in {partial}")
    results["seconds"] = round(time.monotonic() - t_start)
    results["facts"]["load_after"] = Path("/proc/loadavg").read_text().split()[:3]

    import report  # bench/report.py

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = report.markdown(results)
    (args.out / f"{stamp}.md").write_text(md)
    if not args.no_docs:
        report.update_docs(REPO / "docs" / "benchmarks.md", md)
    print(md)
    log(f"wrote {args.out}/{stamp}.json, .md{'' if args.no_docs else ' and docs/benchmarks.md'} "
        f"in {results['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
