"""Signer benchmark: Sign RPCs per second and signer CPU per signature, with the audit log on
versus off, through the real gRPC service and a real SoftHSM token (the demo PKI's).

    make bench            # or: SOFTHSM2_CONF=var/softhsm2.conf .venv/bin/python bench/signer_bench.py

"Off" exists only here: the signer process of this benchmark replaces its audit log with a no-op
(production has no such switch; `[audit]` is required). The figure that matters is the ratio
on/off measured in the same run, per key type.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (
    demo_missing,
    demo_parser,
    interleaved_medians,
    measure,
    plaintext_unix_config,
    sign_load,
    sign_requests,
    signer_child,
)

CHILD = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[3])
import signer.service as service
from signer.config import load_signer_config

class NullAudit:
    size = 0  # records in the log (start-up reports it)
    async def append(self, record): pass
    async def checkpoint(self): return None
    async def close(self): pass

async def main():
    config = load_signer_config(sys.argv[1])
    if sys.argv[2] == "off":
        async def no_audit(*a, **k): return NullAudit()
        service.open_audit = no_audit
    server, address = await service.serve(config)
    print("ready", address, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def main() -> int:
    ap = demo_parser(__doc__, 4.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    demo: Path = args.demo
    if demo_missing(demo, "signer.toml"):
        return 2
    with tempfile.TemporaryDirectory(prefix="sbench", dir="/tmp") as tmp:
        config = plaintext_unix_config(demo / "etc" / "signer.toml", tmp)
        rows = []
        for ca, label in (("rsa-ca", "RSA-2048"), ("ec-ca", "P-256")):
            def row(audit: str, ca: str = ca) -> dict[str, float]:
                with signer_child(CHILD, config, audit) as (pid, address):
                    return measure(pid, sign_load, address, sign_requests(demo, ca, 1000), args.concurrency,
                                   args.seconds)

            rows.append((label, interleaved_medians(("off", "on"), args.runs, row)))
    print(f"{'key':10} {'audit off sig/s':>16} {'audit on sig/s':>15} {'on/off':>7} {'cost':>6} "
          f"{'CPU µs/sig off':>15} {'on':>7}")
    for label, r in rows:
        ratio = r["on"]["rps"] / r["off"]["rps"]
        print(f"{label:10} {r['off']['rps']:16.0f} {r['on']['rps']:15.0f} {ratio:7.3f} {1 - ratio:6.1%} "
              f"{r['off']['cpu_us']:15.0f} {r['on']['cpu_us']:7.0f}")
    print(f"(Sign RPCs through grpc.aio on a unix socket, {args.concurrency} in flight, one signer "
          f"process; median of {args.runs} runs of {args.seconds}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
