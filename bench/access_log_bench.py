"""The access log's cost on the cache-hit path: CPU microseconds per line of ``AccessLog.hit`` (the
line made, buffered and written), text and JSON, to /dev/null and to a file, in this process.

    .venv/bin/python bench/access_log_bench.py [--lines 100000] [--runs 5]

The best of ``--runs`` (process CPU time, so other load on the machine counts less). For the whole
request, compare bench/http_bench.py's cache-hit row with ``[log] access = false`` and ``true``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from frontend.access_log import AccessLog
from frontend.cache import Entry
from frontend.request_ids import RequestIds
from shared import logs
from shared.answers import AnswerKey
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm


async def per_line(fmt: str, path: Path | None, lines: int, runs: int) -> float:
    logs.setup("ocsp-frontend", "INFO", fmt=fmt, worker=1)
    fd = os.open(os.devnull, os.O_WRONLY)
    log = AccessLog(RequestIds(), path=path, fd=fd)
    cid = CertId(HashAlgorithm.SHA1, b"\1" * 20, b"\2" * 20, bytes.fromhex("35C823F92BDA7FC3DB9822A4F795F93E"))
    entry = Entry(b"der", b"", 1e12, 0, AnswerKey("demo-rsa", (cid,)), cert_status=(CertStatus.GOOD,),
                  signature_id="0123456789-1")
    client = log.client(("192.0.2.7", 50000))
    now = time.time()
    best = float("inf")
    for _ in range(runs):
        t = time.process_time()
        for i in range(lines):
            log.hit(client, "POST", entry, now + i * 1e-5, 42)
        log.flush()
        best = min(best, time.process_time() - t)
    log.close()
    os.close(fd)
    return best / lines * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("text", "json"):
            for name, path in (("/dev/null", None), ("a file", Path(d) / f"access-{fmt}.log")):
                us = asyncio.run(per_line(fmt, path, args.lines, args.runs))
                print(f"{fmt:5} to {name:9}: {us:5.2f} µs CPU per cache-hit line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
