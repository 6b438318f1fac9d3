"""GET path decoding: the cost of the worst paths an outside client can send, as ratios to an
ordinary GET, measured in the same run (sans-IO, no server: shared.ocsp.http.request_from_path is the
whole cost of turning a GET path into a request before any status lookup).

    .venv/bin/python bench/get_path_bench.py [--repeat N]

Rows: an ordinary GET (the reference), the same behind three proxy segments, and 40 KB paths built to
make a decoder try every '/' (the paths from issue 6.1). The ratio column is per call; 'per KB'
divides by the path's length, which stays flat when the cost is linear in the path.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.ocsp.errors import MalformedRequest
from shared.ocsp.http import request_from_path

# A real one-CertID request, as `openssl ocsp -reqout` writes it (the committed test vector).
DER = (ROOT / "tests" / "vectors" / "req-openssl-sha256-no-nonce.der").read_bytes()


def paths() -> list[tuple[str, bytes]]:
    b64 = base64.b64encode(DER).decode()
    return [
        ("ordinary GET", f"/{b64}".encode()),
        ("3 proxy segments", f"/a/b/c/{b64}".encode()),
        ("40 KB of %4D/", b"/" + b"%4D/" * 10_000),
        ("40 KB of M/", b"/" + b"M/" * 20_000),
        ("40 KB of MA==/", b"/" + b"MA==/" * 8_000),
        ("40 KB junk, then request", b"/" + b"M" * 40_000 + b"/" + b64.encode()),
    ]


def measure(path: bytes, repeat: int) -> tuple[float, int]:
    def once() -> None:
        try:
            request_from_path(path, "/", max_bytes=10_000)
        except MalformedRequest:
            pass

    once()
    tracemalloc.start()
    once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t0 = time.perf_counter()
    for _ in range(repeat):
        once()
    return (time.perf_counter() - t0) / repeat, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    rows = [(name, len(p), *measure(p, args.repeat)) for name, p in paths()]
    ref = rows[0][2]
    print(f"{'path':28} {'bytes':>7} {'µs/call':>9} {'x ordinary':>11} {'µs per KB':>10} {'peak KB':>8}")
    for name, n, t, peak in rows:
        print(f"{name:28} {n:7d} {t * 1e6:9.1f} {t / ref:11.1f} {t * 1e6 / (n / 1024):10.2f} "
              f"{peak / 1024:8.0f}")


if __name__ == "__main__":
    main()
