#!/usr/bin/env python3
"""A remote_write receiver for the benchmark that accepts and discards.

`python3 bench/receiver.py PORT` listens on 127.0.0.1:PORT. Every POST is
read to its end (Content-Length) and answered 204, as a TSDB that stored it
would; nothing is decoded, so the receiver costs the shared 2 cores as
little as a receiver can while vmscope still does all of its push work
(encoding, snappy, the HTTP request). `GET /stats` answers JSON with the
pushes and bytes received so far: bench.py checks that the push
destination really pushed during a measurement, so a misconfigured push
cannot pass as a cheap one.

Reads: the requests. Emits: /stats. Fails: exits on a port it cannot bind.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"requests": 0, "bytes": 0, "posts_without_length": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        n = 0
        if length is not None:
            n = self.drain(int(length))
        elif chunked:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                n += self.drain(size)
                self.rfile.readline()  # the CRLF after each chunk
        with LOCK:
            STATS["requests"] += 1
            STATS["bytes"] += n
            if length is None and not chunked:
                STATS["posts_without_length"] += 1
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def drain(self, left: int) -> int:
        n = 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            n += len(chunk)
            left -= len(chunk)
        return n

    def do_GET(self) -> None:  # noqa: N802
        with LOCK:
            body = json.dumps(STATS).encode()
        self.send_response(200 if self.path == "/stats" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        pass  # one line per push would be the receiver's main cost


def main() -> int:
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
