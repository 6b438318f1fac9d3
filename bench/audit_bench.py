"""Audit log cost: signatures/s through Pkcs11Token.sign in SoftHSM with the audit log off and on.

    .venv/bin/python bench/audit_bench.py [--seconds 3] [--runs 3] [--concurrency 32] [--dir DIR]

It makes its own SoftHSM token in a temporary directory (SOFTHSM2_CONF is set before python-pkcs11
loads the module), with a P-256 and an RSA-2048 responder key and a P-256 audit key. Each run drives
``--concurrency`` asyncio tasks, as many in-flight Sign RPCs would: every task signs on the one token
thread (as signer/service.py does) and, with the log on, then awaits ``AuditLog.append`` of the
record for that signature, so concurrent signers share group commits (write + fsync on the log's
thread) and checkpoints are signed on the same token thread. The log directory is on disk (``--dir``,
default a temporary directory under the current directory) with real fsyncs. Off and on runs
alternate; the table shows medians and the on/off ratio (target: the log costs under 10 %).

Reading it: python-pkcs11 0.10 keeps the GIL held inside C_Sign (a spinning Python thread slows a
SoftHSM P-256 signature from ~125 us to ~4.5 ms here), so every microsecond of Python the log runs
on the event loop or its I/O thread is a microsecond the token thread cannot sign. The log's cost is
therefore its Python time per record (~20-25 us: build the line, hash it, the Merkle append, the
future) over the time per signature, not the fsyncs, which group commit shares (``records/commit``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "1234"


def make_token(base: Path) -> None:
    (base / "tokens").mkdir(parents=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before python-pkcs11 loads the module
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", PIN,
                    "--so-pin", "5678"], check=True, capture_output=True)


async def run(token, label, algorithm, executor, log, concurrency: int, seconds: float,
              clock) -> tuple[float, int]:
    from signer.audit import AuditRecord, SignedStatus

    loop = asyncio.get_running_loop()
    tbs = os.urandom(600)  # about a ResponseData
    count = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop:
            signature = await loop.run_in_executor(executor, token.sign, label, algorithm, tbs)
            if log is not None:
                await log.append(AuditRecord(
                    time=clock.now(), client="frontend.example", request_id=f"{w}-{i}", issuer_name="bench-ca",
                    issuer_id="ab" * 32, statuses=(SignedStatus(f"{w:04x}{i:08x}", "good"),), nonce=True,
                    responder_fingerprint="cd" * 32, key_label=label, generation=1,
                    response_sha256=hashlib.sha256(signature).hexdigest()))
            count += 1
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return count / (time.perf_counter() - start), count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--checkpoint-every", type=int, default=1000)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval (seconds) for the whole run; default: Python's 0.005")
    ap.add_argument("--group-window", type=float, default=0.002,
                    help="AuditLog group_window (seconds): wait this long to gather a group before a write")
    ap.add_argument("--dir", type=Path, default=None, help="where the audit files go (on disk)")
    args = ap.parse_args()
    if not Path(MODULE).exists() or shutil.which("softhsm2-util") is None:
        print("SoftHSM 2 is not installed", file=sys.stderr)
        return 2

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    base = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir or Path.cwd()))
    try:
        make_token(base / "hsm")
        from shared.clock import SystemClock
        from signer.audit import AuditLog, FileIO, Pkcs11CheckpointSigner
        from signer.mechanisms import algorithm_for_key
        from signer.token import Pkcs11Token

        token = Pkcs11Token(MODULE, pin=PIN, token_label="bench")
        keys = {"P-256": token.generate_key("resp-p256", "p256"),
                "RSA-2048": token.generate_key("resp-rsa", "rsa2048")}
        token.generate_key("audit", "p256")
        executor = ThreadPoolExecutor(1, thread_name_prefix="token")
        audit_signer = Pkcs11CheckpointSigner(token, "audit")
        clock = SystemClock()
        fsyncs = 0

        def counting_fsync(fd: int) -> None:
            nonlocal fsyncs
            fsyncs += 1
            os.fsync(fd)

        results: dict[str, dict[str, list[float]]] = {}
        stats: dict[str, tuple[int, int, int]] = {}

        async def one(name: str, on: bool, n: int) -> float:
            nonlocal fsyncs
            label = "resp-p256" if name == "P-256" else "resp-rsa"
            algorithm = algorithm_for_key(keys[name])
            log = None
            if on:
                log = await AuditLog.open(base / "log", writer_id=f"{name.replace('-', '')}.{n}",
                                          signer=audit_signer, checkpoint_every=args.checkpoint_every,
                                          checkpoint_interval=timedelta(seconds=10), max_file_bytes=64 << 20,
                                          clock=clock, executor=executor, file_io=FileIO(fsync=counting_fsync),
                                          group_window=args.group_window)
                fsyncs = 0
            rate, count = await run(token, label, algorithm, executor, log, args.concurrency, args.seconds, clock)
            if log is not None:
                commits = log.commits
                await log.close()
                stats[name] = (count, commits, fsyncs)
            return rate

        async def bench() -> None:
            for name in keys:
                await one(name, False, -1)  # warm-up
                for n in range(args.runs):
                    for on in (False, True):
                        rate = await one(name, on, n)
                        results.setdefault(name, {}).setdefault("on" if on else "off", []).append(rate)

        asyncio.run(bench())
        executor.shutdown()

        print(f"audit log cost, SoftHSM via Pkcs11Token.sign, {args.concurrency} concurrent signers, "
              f"{args.seconds:g} s x {args.runs} runs (medians), checkpoint every {args.checkpoint_every}, "
              f"group window {args.group_window * 1000:g} ms")
        print(f"{'key':<10}{'log off sig/s':>15}{'log on sig/s':>15}{'on/off':>9}{'cost':>8}"
              f"{'records/commit':>16}{'fsyncs/record':>15}")
        for name, r in results.items():
            off, on = statistics.median(r["off"]), statistics.median(r["on"])
            count, commits, syncs = stats[name]
            print(f"{name:<10}{off:>15,.0f}{on:>15,.0f}{on / off:>9.3f}{(1 - on / off) * 100:>7.1f}%"
                  f"{count / max(commits, 1):>16.1f}{syncs / max(count, 1):>15.3f}")
        token.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
