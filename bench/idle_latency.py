"""Latency of one client asking one request at a time (an idle responder): a signed answer (fresh
nonce) against a cache hit (no nonce) on the same connection, in one run.

    ocspctl demo serve --dir var/demo &     # or any running responder
    .venv/bin/python bench/idle_latency.py [--url http://127.0.0.1:2560] [--ca var/demo/ec-ca] [-n 500]

What it shows is the fixed cost of the signing path when nothing queues (the gRPC round trip, the
hop to the token thread, the audit write and fsync), which load-test percentiles mix with queueing.
"""

from __future__ import annotations

import argparse
import http.client
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

ROOT = Path(__file__).resolve().parents[1]


def request(cert: x509.Certificate, ca: x509.Certificate, nonce: bool) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
    if nonce:
        b = b.add_extension(x509.OCSPNonce(os.urandom(32)), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def run(conn: http.client.HTTPConnection, bodies: list[bytes]) -> list[float]:
    out = []
    for body in bodies:
        t = time.perf_counter()
        conn.request("POST", "/", body, {"Content-Type": "application/ocsp-request"})
        resp = conn.getresponse()
        data = resp.read()
        out.append(time.perf_counter() - t)
        if resp.status != 200 or ocsp.load_der_ocsp_response(data).response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise SystemExit(f"unexpected answer: HTTP {resp.status}")
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:2560")
    ap.add_argument("--ca", type=Path, default=ROOT / "var" / "demo" / "ec-ca", help="dir with ca.pem, leaf-good.pem")
    ap.add_argument("-n", type=int, default=500, help="requests per row (after 20 of warm-up)")
    args = ap.parse_args()
    cert = x509.load_pem_x509_certificate((args.ca / "leaf-good.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((args.ca / "ca.pem").read_bytes())
    u = urlsplit(args.url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
    rows = []
    for name, nonce in (("signed (fresh nonce)", True), ("cache hit (no nonce)", False)):
        times = run(conn, [request(cert, ca, nonce) for _ in range(args.n + 20)])[20:]
        rows.append((name, pct(times, 0.5), pct(times, 0.9), pct(times, 0.99)))
    print(f"{'one request at a time, ' + args.url:<44} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, *ps in rows:
        print(f"{name:<44} " + " ".join(f"{p:8.2f}" for p in ps))
    print(f"signed / cache hit p50: {rows[0][1] / rows[1][1]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
