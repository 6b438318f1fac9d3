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

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import cpu_seconds
from bench.signer_bench import load, sign_requests

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


def run_row(config: Path, mode: str, demo: Path, ca: str, concurrency: int, seconds: float) -> dict[str, float]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(config), mode, str(ROOT)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError("the benchmark signer did not start")
        address = line[1]
        requests = sign_requests(demo, ca, 1000) if ca != "health" else []
        calls = load if requests else health_load
        asyncio.run(calls(address, requests, concurrency, 0.5))  # warm-up
        before = cpu_seconds(child.pid)
        t0 = time.monotonic()
        n = asyncio.run(calls(address, requests, concurrency, seconds))
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(child.pid) - before
        return {"rps": n / elapsed, "cpu_us": cpu / max(n, 1) * 1e6, "lat_us": elapsed / max(n, 1) * concurrency * 1e6}
    finally:
        child.terminate()
        child.wait(10)


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


def plaintext_unix_config(signer_toml: Path, tmp: str) -> Path:
    """The demo's signer config on its own unix socket and audit directory, without [tls]."""
    text = signer_toml.read_text()
    cfg = tomllib.loads(text)
    text = text.replace(f'"{cfg["listen"]["address"]}"', f'"unix:{tmp}/s.sock"', 1)
    text = text.replace(f'"{cfg["audit"]["dir"]}"', f'"{tmp}/audit"', 1)
    if "admin" in cfg and "socket" in cfg["admin"]:
        text = text.replace(f'"{cfg["admin"]["socket"]}"', f'"{tmp}/admin.sock"', 1)
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[tls]"
        if not skipping:
            kept.append(line)
    config = Path(tmp) / "signer.toml"
    config.write_text("\n".join(kept) + "\n")
    return config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=ROOT / "var" / "demo")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3, help="median of this many runs per row")
    args = ap.parse_args()
    demo: Path = args.demo
    signer_toml = demo / "etc" / "signer.toml"
    if not signer_toml.exists():
        print(f"no demo PKI in {demo}: run `ocspctl demo setup --dir {demo}` first", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="lbench", dir="/tmp") as tmp:
        config = plaintext_unix_config(signer_toml, tmp)
        for ca, label, concurrency in (("ec-ca", "P-256", 32), ("ec-ca", "P-256", 1), ("rsa-ca", "RSA-2048", 32),
                                       ("health", "Health", 32)):
            # Interleaved (direct, relay, direct, ...) so that drift in the machine's speed hits both alike.
            samples: dict[str, list[dict[str, float]]] = {"direct": [], "relay": []}
            for _ in range(args.runs):
                for mode in ("direct", "relay"):
                    samples[mode].append(run_row(config, mode, demo, ca, concurrency, args.seconds))
            result = {mode: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2] for mode, runs in samples.items()}
            rows.append((label, concurrency, result))
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
