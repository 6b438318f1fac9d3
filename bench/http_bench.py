"""Frontend benchmark: server CPU time per request and requests/s, as ratios to a bare uvloop
server that returns a fixed body, all measured in the same run (these machines are noisy).

    make bench            # or: SOFTHSM2_CONF=var/softhsm2.conf .venv/bin/python bench/http_bench.py

Needs the demo PKI (`ocspctl demo setup --dir var/demo`, which `make run` and `make bench` do).
Rows:
  reference     a bare uvloop asyncio.Protocol answering a fixed 1.4 KB body (the floor)
  cache hit     POST of a nonce-less request for a good certificate (served from the cache)
  sign RSA      requests with a fresh nonce (every one is signed: RSA-2048 in SoftHSM)
  sign P-256    the same for the ECDSA CA
The load generator is asyncio on keep-alive connections in this process; it shares the two cores
with the servers, so the CPU-per-request column is the figure to compare, not req/s alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import cpu_seconds, demo_missing, demo_parser
from tests.integration.conftest import http_healthy, signer_healthy, wait_until
from tests.integration.ocsp_client import build_request, load_cert

REFERENCE_SERVER = r"""
import asyncio, sys, uvloop
BODY = b"x" * 1400
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0: return
            head = self.buf[:i]; n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"): n = int(line.split(b":")[1])
            if len(self.buf) < i + 4 + n: return
            self.buf = self.buf[i + 4 + n:]
            self.t.write(RESP)
async def main():
    loop = asyncio.get_running_loop()
    # argv[2] "reuse": one of several processes on one port (SO_REUSEPORT), as frontend workers are
    srv = await loop.create_server(P, "127.0.0.1", int(sys.argv[1]), reuse_port=sys.argv[2:] == ["reuse"])
    print("ready", flush=True)
    await srv.serve_forever()
uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(port: int, bodies: list[bytes], connections: int, seconds: float) -> int:
    """Keep-alive POSTs over `connections` connections for `seconds`; returns completed requests."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += connections
            writer.write(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Type: application/ocsp-request\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:40])
            done += 1
        writer.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    return done


def measure(name: str, pids: list[int], port: int, bodies: list[bytes], connections: int,
            seconds: float) -> dict[str, float]:
    asyncio.run(load(port, bodies, connections, 0.5))  # warm-up (fills the cache for the hit row)
    before = sum(cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    n = asyncio.run(load(port, bodies, connections, seconds))
    elapsed = time.monotonic() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - before
    return {"name": name, "requests": n, "rps": n / elapsed, "cpu_us": cpu / max(n, 1) * 1e6}


def nonce_bodies(cert_path: Path, issuer_path: Path, count: int) -> list[bytes]:
    cert, issuer = load_cert(cert_path), load_cert(issuer_path)
    return [build_request(cert, issuer, nonce=os.urandom(16)) for _ in range(count)]


def main() -> int:
    ap = demo_parser(__doc__, 5.0)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    demo: Path = args.demo
    if demo_missing(demo, "frontend.toml"):
        return 2
    bindir = Path(sys.executable).parent
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ref_port = free_port()
        ref = subprocess.Popen([sys.executable, "-c", REFERENCE_SERVER, str(ref_port)], stdout=subprocess.PIPE)
        procs.append(ref)
        assert ref.stdout is not None and ref.stdout.readline().strip() == b"ready"

        import tomllib
        fcfg = tomllib.loads((demo / "etc" / "frontend.toml").read_text())
        scfg = tomllib.loads((demo / "etc" / "signer.toml").read_text())
        port = fcfg["listen"]["port"]
        address = scfg["listen"]["address"]
        signer = subprocess.Popen([str(bindir / "ocsp-signer"), "--config", str(demo / "etc" / "signer.toml")],
                                  env=env, stderr=subprocess.DEVNULL)
        procs.append(signer)
        wait_until(lambda: signer_healthy(address, demo / "etc" / "frontend.toml"), 30, "signer")
        frontend = subprocess.Popen([str(bindir / "ocsp-frontend"), "--config",
                                     str(demo / "etc" / "frontend.toml")], env=env, stderr=subprocess.DEVNULL)
        procs.append(frontend)
        wait_until(lambda: http_healthy(port), 30, "frontend")

        hit = [build_request(load_cert(demo / "rsa-ca" / "leaf-good.pem"), load_cert(demo / "rsa-ca" / "ca.pem"))]
        rows_spec = [
            ("reference (bare uvloop)", [ref.pid], ref_port, hit),
            ("cache hit", [frontend.pid], port, hit),
            ("sign RSA-2048 (nonce)", [frontend.pid, signer.pid], port,
             nonce_bodies(demo / "rsa-ca" / "leaf-good.pem", demo / "rsa-ca" / "ca.pem", 2000)),
            ("sign P-256 (nonce)", [frontend.pid, signer.pid], port,
             nonce_bodies(demo / "ec-ca" / "leaf-good.pem", demo / "ec-ca" / "ca.pem", 2000)),
        ]
        results = []
        for name, pids, p, bodies in rows_spec:
            runs = sorted((measure(name, pids, p, bodies, args.connections, args.seconds)
                           for _ in range(args.runs)), key=lambda r: r["cpu_us"])
            results.append(runs[len(runs) // 2])
        ref_row = results[0]
        print(f"{'row':28} {'req/s':>9} {'server CPU µs/req':>18} {'CPU vs reference':>17} {'req/s vs ref':>13}")
        for r in results:
            print(f"{r['name']:28} {r['rps']:9.0f} {r['cpu_us']:18.1f} {r['cpu_us'] / ref_row['cpu_us']:16.2f}x "
                  f"{r['rps'] / ref_row['rps']:12.2f}x")
        print(f"(median of {args.runs} runs of {args.seconds}s, {args.connections} keep-alive connections; "
              "CPU columns count the frontend, plus the signer on signing rows)")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
