"""Local-caller benchmark: what the unix-socket relay (signer.local_callers: SO_PEERCRED per connection,
bytes copied to gRPC's private socket, the caller looked up per call) costs a Sign RPC, against gRPC
listening on the unix socket itself (what the signer did before), through the real service, audit
log and SoftHSM token (the demo PKI's).

    SOFTHSM2_CONF=var/softhsm2.conf .venv/bin/python bench/local_callers_bench.py

"Direct" exists only here: the signer process of this benchmark skips the relay (production has no
such switch: a unix: listen address is always relayed). The figures that matter are the ratios
relay/direct measured in the same run, per row.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
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

async def main():
    config = load_signer_config(sys.argv[1])
    if sys.argv[2] == "direct":
        service.local_listener = lambda config: None  # gRPC binds listen.address itself, no relay
    server, address = await service.serve(config)
    print("ready", address, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


async def health_load(address: str, _requests: list[object], concurrency: int, seconds: float) -> int:
    """Health RPCs: the cheapest call, so the relay's share of a call at its largest."""
    import grpc

    from shared.rpc import signer_pb2 as pb
    from shared.rpc import signer_pb2_grpc as pb_grpc

    done = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SignerStub(channel)

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await stub.Health(pb.HealthRequest(), timeout=10)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def main() -> int:
    ap = demo_parser(__doc__, 4.0)
    args = ap.parse_args()
    demo: Path = args.demo
    if demo_missing(demo, "signer.toml"):
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="lbench", dir="/tmp") as tmp:
        config = plaintext_unix_config(demo / "etc" / "signer.toml", tmp)
        for ca, label, concurrency in (("ec-ca", "P-256", 32), ("ec-ca", "P-256", 1), ("rsa-ca", "RSA-2048", 32),
                                       ("health", "Health", 32)):
            def row(mode: str, ca: str = ca, concurrency: int = concurrency) -> dict[str, float]:
                with signer_child(CHILD, config, mode) as (pid, address):
                    if ca == "health":
                        return measure(pid, health_load, address, [], concurrency, args.seconds)
                    return measure(pid, sign_load, address, sign_requests(demo, ca, 1000), concurrency,
                                   args.seconds)

            rows.append((label, concurrency, interleaved_medians(("direct", "relay"), args.runs, row)))
    print(f"{'key':9} {'in flight':>9} {'direct RPC/s':>13} {'relay RPC/s':>12} {'relay/direct':>13} "
          f"{'CPU µs/RPC direct':>18} {'relay':>6} {'ratio':>6} {'latency µs direct':>18} {'relay':>6}")
    for label, concurrency, r in rows:
        d, x = r["direct"], r["relay"]
        print(f"{label:9} {concurrency:9d} {d['rps']:13.0f} {x['rps']:12.0f} {x['rps'] / d['rps']:13.3f} "
              f"{d['cpu_us']:18.0f} {x['cpu_us']:6.0f} {x['cpu_us'] / d['cpu_us']:6.3f} "
              f"{d['lat_us']:18.0f} {x['lat_us']:6.0f}")
    print(f"(Sign RPCs, and bare Health RPCs in the last row, over grpc.aio on a unix socket, audit log on, one signer process, signer CPU "
          f"including the relay; median of {args.runs} runs of {args.seconds}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
