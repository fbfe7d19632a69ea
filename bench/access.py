#!/usr/bin/env python3
"""What access control costs on the wire: vmscope with 1000 stand-in VMs.

Run it through `bench/run.sh --access` (root; builds the binaries, raises
ulimits, cleans up). In one run, on the same 1000 stand-ins (bench.py's lab):

1. vmscope without a web config: CPU per gzip'd /metrics scrape and per
   plain one (process CPU over back-to-back scrapes, minus the ticks'
   cost measured alone in the same run);
2. vmscope with a web config: 1000 bearer tokens (admin) and per-IP rate
   limits, over plain HTTP: the same figures (what bearer authentication
   adds per scrape);
3. the same with TLS (a certificate made by `openssl` for the run): the
   figures the issue bounds, "a TLS gzip scrape of 1000 VMs costs at most
   1.3x a plain one";
4. with TLS and auth on: a valid scraper's latency (p50, p99) over back-
   to-back gzip scrapes, alone, then while a flood of requests with bad
   bearer tokens arrives from another address (127.0.0.2) at a paced
   rate (default 1000/s), then while a flood of bad basic-auth passwords
   does (each one a bcrypt unless the per-IP limit stops it first).

Prints one JSON document and a Markdown table (for docs/benchmarks.md).
The flood generator runs on this machine too: on 2 cores it competes with
vmscope for CPU, which makes the latency figures pessimistic.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import GZIP, CpuMeter, Http, Lab, agent_config, free_port, log, percentile  # noqa: E402

ADMIN = "vms_bench_access_admin_token_0000000000001"
CAROL_HASH = "$2y$10$qRTBuFoULoYNA7AQ/F3ck.trZBPyjV64.oA4ZsSBCIWvXuvQlQTuu"


class Https(Http):
    """bench.Http over TLS (the run's self-signed certificate, not verified)
    and/or from another loopback address."""

    def __init__(self, port: int, tls: bool = True, source: str | None = None):
        super().__init__(port)
        self.tls = tls
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.source = (source, 0) if source else None

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=self.ctx, source_address=self.source)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=self.source)


def web_config(work: Path, tls: bool, limits: bool = False) -> Path:
    lines = ["basic_auth_users:", f"  carol: {CAROL_HASH}"]
    if tls:
        lines += ["tls_server_config:", "  cert_file: bench.crt", "  key_file: bench.key"]
    lines += ["vmscope:", "  tokens:"]
    for i in range(999):
        digest = hashlib.sha256(f"vms_bench_other_token_{i}".encode()).hexdigest()
        lines.append(f"    - {{name: t{i}, sha256: {digest}, scope: admin}}")
    lines.append(f"    - {{name: scraper, sha256: {hashlib.sha256(ADMIN.encode()).hexdigest()}, scope: admin}}")
    if limits:
        # docs/access.md's advice for basic auth on a reachable address.
        lines += ["  rate_limit:", "    per_ip: {rate: 20, burst: 40}"]
    p = work / f"web-{int(tls)}-{int(limits)}.yml"
    p.write_text("\n".join(lines) + "\n")
    return p


def make_cert(work: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(work / "bench.key"), "-out", str(work / "bench.crt")],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Agent:
    """A vmscope serve with an optional web config (bench.Vmscope's twin)."""

    def __init__(self, lab: Lab, binary: Path, web: Path | None, tls: bool):
        self.port = free_port()
        # The shipped defaults, with the state database in the run's
        # directory (not root's /var/lib/vmscope).
        cfg = agent_config(lab.work, f"access-{self.port}")
        argv = [str(binary), "serve", "-c", str(cfg), "--listen", f"127.0.0.1:{self.port}", "--interval", "1"]
        if web:
            argv += ["--web.config.file", str(web)]
        env = dict(os.environ, VMSCOPE_LOG="warn")
        self.proc = lab.server(argv, "vmscope-access.log", env=env)
        self.pid = self.proc.pid
        self.tls = tls
        self.auth = {"Authorization": f"Bearer {ADMIN}"} if web else {}
        # /healthz is open whatever the web config says.
        self.http = Https(self.port, tls=tls)
        end = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/healthz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError("vmscope did not answer /healthz")
            time.sleep(0.1)

    def vms(self) -> int:
        status, _, body, _ = self.http.get("/api/v1/vms", self.auth)
        if status != 200:
            raise RuntimeError(f"/api/v1/vms answered {status}")
        return len(json.loads(body)["vms"])

    def stop(self, lab: Lab) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)
        lab.servers.remove(self.proc)


def idle_cpu_per_second(pid: int, seconds: float) -> float:
    m = CpuMeter(pid)
    m.start()
    time.sleep(seconds)
    return m.stop() / seconds


def scrape_cost(agent: Agent, requests: int, gzip_: bool) -> dict:
    """CPU per scrape (ticks' cost subtracted) and latency."""
    idle = idle_cpu_per_second(agent.pid, 5.0)
    headers = dict(agent.auth, **(GZIP if gzip_ else {}))
    agent.http.get("/metrics", headers)
    m = CpuMeter(agent.pid)
    m.start()
    t0 = time.monotonic()
    lat = []
    for _ in range(requests):
        status, _, _, dt = agent.http.get("/metrics", headers)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        lat.append(dt)
    wall = time.monotonic() - t0
    cpu = m.stop()
    return {
        "requests": requests,
        "cpu_per_request_s": max(0.0, cpu - idle * wall) / requests,
        "idle_cpu_per_s": idle,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
    }


def flood(port: int, tls: bool, rate: float, seconds: float, header: dict, stop: threading.Event,
          counts: dict) -> None:
    """Paced bad requests from 127.0.0.2 on keep-alive connections (a fresh
    one when the server closes), `rate` per second in all over 16 threads."""
    def worker(share: float) -> None:
        h = Https(port, tls=tls, source="127.0.0.2")
        gap = 1.0 / share
        nxt = time.monotonic()
        end = nxt + seconds
        while not stop.is_set() and time.monotonic() < end:
            try:
                status = h.get("/metrics", header, timeout=10)[0]
                counts[status] = counts.get(status, 0) + 1
            except OSError:
                counts["error"] = counts.get("error", 0) + 1
                h.close()
            nxt += gap
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    # Many connections: a request that reaches bcrypt takes tens of ms, and
    # a flood does not wait for answers.
    threads = [threading.Thread(target=worker, args=(rate / 16,)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def latency_under(agent: Agent, seconds: float, flood_header: dict | None, rate: float) -> dict:
    stop = threading.Event()
    counts: dict = {}
    t = None
    if flood_header is not None:
        t = threading.Thread(target=flood, args=(agent.port, agent.tls, rate, seconds + 2, flood_header,
                                                 stop, counts))
        t.start()
        time.sleep(1.0)
    headers = dict(agent.auth, **GZIP)
    lat = []
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    while time.monotonic() < end:
        status, _, _, dt = agent.http.get("/metrics", headers)
        if status != 200:
            raise RuntimeError(f"the valid scraper got {status}")
        lat.append(dt)
        # Ten scrapes a second: far more often than any Prometheus, within
        # the per-IP limit (20/s) that stops the flood.
        nxt += 0.1
        time.sleep(max(0.0, nxt - time.monotonic()))
    stop.set()
    if t:
        t.join()
    sent = sum(v for k, v in counts.items())
    return {"scrapes": len(lat), "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
            "max_s": max(lat), "flood_sent": sent, "flood_per_s": sent / (seconds + 1),
            "flood_statuses": {str(k): v for k, v in counts.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--vmscope", type=Path, required=True)
    ap.add_argument("--standin", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--flood-rate", type=float, default=1000.0)
    ap.add_argument("--flood-seconds", type=float, default=15.0)
    args = ap.parse_args()

    lab = Lab(args.work, args.standin)
    out: dict = {"n": args.n}
    try:
        lab.setup()
        lab.make_taps(args.n)
        lab.spawn_vms(args.n)
        make_cert(args.work)
        for name, web, tls in [("plain", None, False),
                               ("bearer", web_config(args.work, False), False),
                               ("tls_bearer", web_config(args.work, True), True),
                               ("flood", web_config(args.work, True, limits=True), True)]:
            agent = Agent(lab, args.vmscope, web, tls)
            end = time.monotonic() + 120
            while agent.vms() < args.n:
                if time.monotonic() > end:
                    raise RuntimeError("the stand-ins did not all show up")
                time.sleep(1)
            time.sleep(3)
            if name == "flood":
                log("TLS, bearer, per-IP limits: a valid scraper alone, then under floods")
                bad_basic = "Basic " + base64.b64encode(b"carol:not-the-password").decode()
                out["flood"] = {
                    "none": latency_under(agent, args.flood_seconds, None, 0),
                    "bad_bearer": latency_under(agent, args.flood_seconds,
                                                {"Authorization": "Bearer vms_not_a_token"}, args.flood_rate),
                    "bad_basic": latency_under(agent, args.flood_seconds,
                                               {"Authorization": bad_basic}, args.flood_rate),
                }
            else:
                log(f"{name}: {args.requests} gzip scrapes, {args.requests} plain ones")
                out[name] = {"gzip": scrape_cost(agent, args.requests, True),
                             "text": scrape_cost(agent, args.requests, False)}
            agent.stop(lab)
    finally:
        lab.cleanup()
    g = lambda k, f="gzip": out[k][f]["cpu_per_request_s"]  # noqa: E731
    out["ratios"] = {
        "tls_gzip_vs_plain_gzip": g("tls_bearer") / g("plain"),
        "tls_text_vs_plain_text": g("tls_bearer", "text") / g("plain", "text"),
        "bearer_gzip_vs_plain_gzip": g("bearer") / g("plain"),
        "bearer_added_per_request_us": (g("bearer") - g("plain")) * 1e6,
    }
    print(json.dumps(out, indent=1))
    ms = lambda s: f"{s * 1e3:.2f} ms"  # noqa: E731
    rows = [f"| {args.n} VMs, /metrics | CPU per gzip scrape | CPU per plain-text scrape |", "|---|---|---|"]
    for k, label in [("plain", "no web config"), ("bearer", "bearer token (1000 configured)"),
                     ("tls_bearer", "TLS + bearer token")]:
        rows.append(f"| {label} | {ms(g(k))} | {ms(g(k, 'text'))} |")
    r = out["ratios"]
    rows.append(f"\nTLS gzip / plain gzip: **{r['tls_gzip_vs_plain_gzip']:.2f}x** (bound 1.3x); "
                f"bearer auth adds {r['bearer_added_per_request_us']:.0f} us per scrape.\n")
    rows += ["| valid scraper (TLS, gzip) while | scrapes | p50 | p99 | flood sent/s | flood answers |",
             "|---|---|---|---|---|---|"]
    for k, label in [("none", "nothing else"), ("bad_bearer", "bad bearer tokens"),
                     ("bad_basic", "bad basic-auth passwords")]:
        f = out["flood"][k]
        rows.append(f"| {label} | {f['scrapes']} | {ms(f['p50_s'])} | {ms(f['p99_s'])} | "
                    f"{f['flood_per_s']:.0f} | {f['flood_statuses']} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
