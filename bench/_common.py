"""What the benchmarks share: the demo PKI check, CPU time of a process, and, for the two that run
a signer of their own (signer_bench, local_callers_bench), its config, its child process, Sign
requests and load, and the interleaved medians."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench.wrk_load import tree_cpu

ROOT = Path(__file__).resolve().parents[1]

# address, requests, in flight, seconds -> calls completed
Load = Callable[[str, list[object], int, float], Awaitable[int]]


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) of ``pid`` and its live descendants: a frontend or
    signer with workers is its supervisor plus the workers it forked or started."""
    return tree_cpu([pid])


def demo_parser(doc: str | None, seconds: float) -> argparse.ArgumentParser:
    """The options of a benchmark on the demo PKI: --demo, --seconds (a run), --runs (the median of)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=ROOT / "var" / "demo")
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--runs", type=int, default=3, help="median of this many runs per row")
    return ap


def demo_missing(demo: Path, name: str) -> bool:
    """True (and says so) when the demo PKI in ``demo`` has no etc/``name``."""
    if (demo / "etc" / name).exists():
        return False
    print(f"no demo PKI in {demo}: run `ocspctl demo setup --dir {demo}` first", file=sys.stderr)
    return True


def plaintext_unix_config(signer_toml: Path, tmp: str) -> Path:
    """The demo's signer config on its own unix socket and audit directory, without [tls] (the
    benchmarks measure the audit log or the relay, not TLS)."""
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


async def sign_load(address: str, requests: list[object], concurrency: int, seconds: float) -> int:
    """Sign RPCs, ``concurrency`` in flight, for ``seconds``; returns the calls completed."""
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


@contextmanager
def signer_child(child: str, config: Path, mode: str) -> Iterator[tuple[int, str]]:
    """Runs ``child`` (Python source that serves ``config`` in ``mode`` and prints "ready ADDRESS");
    yields (its pid, the address), and terminates it after."""
    proc = subprocess.Popen([sys.executable, "-c", child, str(config), mode, str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError("the benchmark signer did not start")
        yield proc.pid, line[1]
    finally:
        proc.terminate()
        proc.wait(10)


def measure(pid: int, calls: Load, address: str, requests: list[object], concurrency: int,
            seconds: float) -> dict[str, float]:
    """Half a second of warm-up, then ``seconds`` of ``calls``: calls/s, the CPU process ``pid``
    spent per call (µs) and the time a call took (µs)."""
    asyncio.run(calls(address, requests, concurrency, 0.5))
    before = cpu_seconds(pid)
    t0 = time.monotonic()
    n = asyncio.run(calls(address, requests, concurrency, seconds))
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - before
    return {"rps": n / elapsed, "cpu_us": cpu / max(n, 1) * 1e6, "lat_us": elapsed / max(n, 1) * concurrency * 1e6}


def interleaved_medians(modes: Sequence[str], runs: int,
                        row: Callable[[str], dict[str, float]]) -> dict[str, dict[str, float]]:
    """``runs`` rows per mode, interleaved (a, b, a, b, ...) so that drift in the machine's speed hits
    every mode alike; the median row (by calls/s) of each."""
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(runs):
        for mode in modes:
            samples[mode].append(row(mode))
    return {mode: sorted(rows, key=lambda r: r["rps"])[len(rows) // 2] for mode, rows in samples.items()}
