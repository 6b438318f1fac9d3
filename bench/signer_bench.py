"""Signer benchmark: Sign RPCs per second and signer CPU per signature, with the audit log on
versus off, through the real gRPC service and a real SoftHSM token (the demo PKI's).

    make bench-signer     # or: SOFTHSM2_CONF=var/softhsm2.conf .venv/bin/python bench/signer_bench.py

"Off" exists only here: the signer process of this benchmark replaces its audit log with a no-op
(production has no such switch; `[audit]` is required). The figure that matters is the ratio
on/off measured in the same run, per key type.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import cpu_seconds

CHILD = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[3])
import signer.service as service
from signer.config import load_signer_config

class NullAudit:
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


def sign_requests(demo: Path, ca: str, count: int) -> list[object]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ocsp as x_ocsp

    from shared.rpc import signer_pb2 as pb
    from tests.integration.ocsp_client import load_cert

    cert, issuer = load_cert(demo / ca / "leaf-good.pem"), load_cert(demo / ca / "ca.pem")
    req = x_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    now = int(datetime.now(UTC).timestamp())
    cid = pb.CertId(hash_algorithm=pb.SHA1, issuer_name_hash=req.issuer_name_hash,
                    issuer_key_hash=req.issuer_key_hash,
                    serial_number=cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big"))
    return [pb.SignRequest(request_id=f"b{i}", nonce=b"\x04\x10" + os.urandom(16),
                           responses=[pb.SingleStatus(cert_id=cid, status=pb.GOOD, this_update=now,
                                                      next_update=now + 3600)]) for i in range(count)]


async def load(address: str, requests: list[object], concurrency: int, seconds: float) -> int:
    import grpc

    from shared.rpc import signer_pb2_grpc as pb_grpc

    done = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SignerStub(channel)

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.monotonic() < stop:
                await stub.Sign(requests[i % len(requests)], timeout=10)
                i += concurrency
                done += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done


def run_row(config: Path, audit: str, demo: Path, ca: str, args: argparse.Namespace) -> dict[str, float]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(config), audit, str(ROOT)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError("the benchmark signer did not start")
        address = line[1]
        requests = sign_requests(demo, ca, 1000)
        asyncio.run(load(address, requests, args.concurrency, 0.5))  # warm-up
        before = cpu_seconds(child.pid)
        t0 = time.monotonic()
        n = asyncio.run(load(address, requests, args.concurrency, args.seconds))
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(child.pid) - before
        return {"rps": n / elapsed, "cpu_us": cpu / max(n, 1) * 1e6}
    finally:
        child.terminate()
        child.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=ROOT / "var" / "demo")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3, help="median of this many runs per row")
    args = ap.parse_args()
    demo: Path = args.demo
    signer_toml = demo / "etc" / "signer.toml"
    if not signer_toml.exists():
        print(f"no demo PKI in {demo}: run `ocspctl demo setup --dir {demo}` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sbench", dir="/tmp") as tmp:
        # The demo's signer config, on its own socket and audit directory.
        text = signer_toml.read_text()
        import tomllib

        cfg = tomllib.loads(text)
        text = text.replace(cfg["listen"]["address"], f"unix:{tmp}/s.sock", 1)
        text = text.replace(cfg["audit"]["dir"], f"{tmp}/audit", 1)
        if "admin" in cfg and "socket" in cfg["admin"]:
            text = text.replace(cfg["admin"]["socket"], f"{tmp}/admin.sock", 1)
        # Plaintext on the unix socket: this measures the audit log, not TLS.
        kept, skipping = [], False
        for line in text.splitlines():
            if line.startswith("["):
                skipping = line.strip() == "[tls]"
            if not skipping:
                kept.append(line)
        text = "\n".join(kept) + "\n"
        config = Path(tmp) / "signer.toml"
        config.write_text(text)
        rows = []
        for ca, label in (("rsa-ca", "RSA-2048"), ("ec-ca", "P-256")):
            # Interleaved (off, on, off, on, ...) so that drift in the machine's speed hits both alike.
            samples: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
            for _ in range(args.runs):
                for audit in ("off", "on"):
                    samples[audit].append(run_row(config, audit, demo, ca, args))
            result = {audit: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
                      for audit, runs in samples.items()}
            rows.append((label, result))
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
