"""signer.status_check.check: the cost per signed status of checking it against the signer's own data,
as a ratio to the bare dictionary lookup it is built on (snapshot.status(serial)), for index.txt
files and CRLs of growing size. Flat ratios across sizes: a lookup and some comparisons, no parse.

    .venv/bin/python bench/status_check_bench.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.ocsp.types import CertId, HashAlgorithm, SingleStatus
from shared.status.base import Snapshot
from shared.status.crl import EXTENDED_REVOKED, CrlSnapshot
from shared.status.index_txt import parse_index
from signer.status_check import check

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)


def index(n: int) -> Snapshot:
    lines = [f"{'R' if i % 10 == 0 else 'V'}\t301231235959Z\t{'250102030405Z,keyCompromise' if i % 10 == 0 else ''}"
             f"\t{i:X}\tunknown\t/CN=leaf {i}\n" for i in range(1, n + 1)]
    return parse_index("".join(lines), timedelta(days=1))


def crl(n: int) -> Snapshot:
    full = parse_index("".join(f"R\t301231235959Z\t250102030405Z,keyCompromise\t{i:X}\tunknown\t/CN=x\n"
                               for i in range(1, n + 1)), timedelta(days=1))
    return CrlSnapshot("bench", dict(full.entries), frozenset(range(1, 10 * n)), EXTENDED_REVOKED,
                       NOW, NOW + timedelta(days=1))


def items(snap: Snapshot, count: int, n: int) -> list[SingleStatus]:
    this_update, next_update = snap.window(NOW)
    out = []
    for k in range(count):
        serial = (k * 7919) % n + 1
        info = snap.status(serial)
        cid = CertId(HashAlgorithm.SHA1, b"\x01" * 20, b"\x02" * 20, serial.to_bytes(4, "big", signed=True))
        out.append(SingleStatus(cid, info.status, this_update, next_update, info.revocation))
    return out


def per_call(fn, work: list[SingleStatus], repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in work:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(work)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'data':<22} {'lookup ns':>10} {'check ns':>10} {'ratio':>6}")
    for kind, build in (("index.txt", index), ("CRL + issued list", crl)):
        for n in (1_000, 100_000):
            snap = build(n)
            work = items(snap, 20_000, n)
            assert all(check(snap, item, NOW, SKEW) is None for item in work)
            lookup = per_call(lambda item, s=snap: s.status(item.cert_id.serial_int), work, args.repeat)
            checked = per_call(lambda item, s=snap: check(s, item, NOW, SKEW), work, args.repeat)
            print(f"{kind + f' {n:,}':<22} {lookup * 1e9:>10.0f} {checked * 1e9:>10.0f} {checked / lookup:>6.1f}")


if __name__ == "__main__":
    main()
