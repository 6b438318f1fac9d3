"""What the frontend's own accept loop (frontend.acceptor) costs per new connection, against uvloop's
native accept, in one run: the same trivial protocol (read a request head, write a fixed 1.4 KB answer,
close) behind each, one server process pinned to one core, wrk on another with `Connection: close`, so
every request is a new connection.

    .venv/bin/python bench/accept_bench.py [--seconds 5] [--runs 3]

Prints server CPU µs per connection (from /proc, never wrk's) and the acceptor's ratio to native.
The acceptor is what makes running out of descriptors visible (counted, logged, answered 503: README,
"Messages and what they mean"); keep-alive requests do not pass through it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import free_port
from bench.wrk_load import tree_cpu

SERVER = r"""
import asyncio, sys, uvloop
sys.path.insert(0, sys.argv[3])
from frontend.acceptor import Acceptor, failure_log, listening_sockets
BODY = b"x" * 1400
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nConnection: close\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        if b"\r\n\r\n" in self.buf:
            self.t.write(RESP); self.t.close()
async def main():
    loop = asyncio.get_running_loop()
    if sys.argv[2] == "native":
        await loop.create_server(P, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    else:
        (sock,) = listening_sockets("127.0.0.1", int(sys.argv[1]), 1024)
        Acceptor(loop, sock, P, failure_log(loop)).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def one_run(mode: str, seconds: float) -> float:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", SERVER, str(port), mode, str(ROOT)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        before = tree_cpu([proc.pid])
        out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c16", f"-d{max(round(seconds), 1)}s", "-H",
                              "Connection: close", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, check=True).stdout
        cpu = tree_cpu([proc.pid]) - before
    finally:
        proc.terminate()
        proc.wait(10)
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(f"wrk: {out[-300:]}")
    return cpu / max(int(m.group(1)), 1) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=3, help="median of this many runs per row, alternated")
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"native": [], "acceptor": []}
    for _ in range(args.runs):
        for mode, measured in runs.items():
            measured.append(one_run(mode, args.seconds))
    native, acceptor = (sorted(v)[len(v) // 2] for v in runs.values())
    print(f"{'accept':24} {'server CPU µs/connection':>25} {'vs native':>10}")
    print(f"{'uvloop native':24} {native:25.1f} {1.0:9.2f}x")
    print(f"{'frontend.acceptor':24} {acceptor:25.1f} {acceptor / native:9.2f}x")
    print(f"(median of {args.runs} alternated runs of {args.seconds:g} s; every request a new connection)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
