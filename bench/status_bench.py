"""Status data of millions (issue 11 part 4): load time, memory and the worst event-loop stall during a
reload, for index.txt files and CRLs of 10k, 100k and 1M entries.

Each row runs in a fresh process that plays the frontend: it builds the status source as the frontend
does (``make_source``), loads it (``load_now``, timed), then runs an asyncio loop (uvloop) with a probe
task that sleeps 1 ms at a time and records how late it wakes, while the file is replaced by a new
version (index: a tenth of the lines changed; CRL: a newer CRL with a tenth of its entries different)
and ``refresh()`` reloads it. RSS is the process's: steady after the first load, peak (VmHWM, reset
before the reload) during the reload. ``--in-process`` reads the files in the serving process instead
of the loader process (what it costs without one).

    .venv/bin/python bench/status_bench.py [--sizes 10000,100000,1000000] [--kinds index,crl] [--in-process]

Generated files are kept under var/status-bench/ (a 1M CRL takes a few seconds to write).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.unit.shared.status_gen import simple_crl, simple_index

DATA = ROOT / "var" / "status-bench"
NOW = datetime.now(UTC).replace(microsecond=0)


def ca_files() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key_path, cert_path = DATA / "ca.key", DATA / "ca.der"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, cert_path.read_bytes()
    DATA.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Status Bench CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return key, cert_path.read_bytes()


def data_files(kind: str, n: int) -> tuple[Path, Path]:
    """(first version, second version) of the file, generated once."""
    DATA.mkdir(parents=True, exist_ok=True)
    first, second = DATA / f"{kind}-{n}.a", DATA / f"{kind}-{n}.b"
    if first.exists() and second.exists():
        return first, second
    if kind == "index":
        text = simple_index(n)
        first.write_bytes(text)
        lines = text.split(b"\n")
        for i in range(1, len(lines) - 1, 10):  # a tenth of the lines revoked now
            lines[i] = lines[i].replace(b"V\t301231235959Z\t\t", b"R\t301231235959Z\t260102030405Z,superseded\t", 1)
        second.write_bytes(b"\n".join(lines))
    else:
        key, ca_der = ca_files()
        issuer = x509.load_der_x509_certificate(ca_der).subject.public_bytes()
        this_update = datetime(2026, 1, 1, tzinfo=UTC)
        first.write_bytes(simple_crl(key, issuer, n, this_update=this_update,
                                     next_update=this_update + timedelta(days=3650), number=1))
        second.write_bytes(simple_crl(key, issuer, n, this_update=this_update + timedelta(hours=1),
                                      next_update=this_update + timedelta(days=3650), number=2, shift=n // 10))
    return first, second


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one(kind: str, n: int, in_process: bool) -> dict[str, float]:
    """One row, in this process (a child of main())."""
    import uvloop

    from shared.status.base import FileStatusSource
    from shared.status.config import StatusConfig, make_source

    first, second = data_files(kind, n)
    live = DATA / f"live-{os.getpid()}"
    shutil.copyfile(first, live)
    if in_process:
        FileStatusSource.loader_min_bytes = None
    _, ca_der = ca_files() if kind == "crl" else (None, b"")
    cfg = StatusConfig(source=kind, path=live, validity=timedelta(days=1), check_interval=timedelta(seconds=60),
                       unissued="unknown" if kind == "crl" else None, max_shrink=1.0)
    gc.collect()
    base_rss = rss_kib()
    source = make_source("bench", ca_der, cfg)
    start = time.perf_counter()
    source.load_now()
    load = time.perf_counter() - start
    gc.collect()
    steady = rss_kib()
    snap = source.current()
    serials = list(snap.serials())[:: max(1, n // 2000)]
    start = time.perf_counter()
    for s in serials:
        snap.status(s)
    lookup_us = (time.perf_counter() - start) / len(serials) * 1e6
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak of the reload alone
    tmp = DATA / f"live-{os.getpid()}.new"
    shutil.copyfile(second, tmp)  # not through this process's memory
    os.replace(tmp, live)

    async def reload() -> tuple[float, float, int]:
        worst = 0.0
        done = False

        async def probe() -> None:
            nonlocal worst
            while not done:
                t0 = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t0 - 0.001)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        ok = await source.refresh(force=True)
        took = time.perf_counter() - t0
        assert ok, source.last_error
        await asyncio.sleep(0.05)
        done = True
        await task
        changes = source.last_changes
        return took, worst, -1 if changes is None else len(changes)

    took, worst, changed = uvloop.run(reload())
    peak = rss_kib("VmHWM")
    live.unlink()
    return {"load_s": load, "base_mib": base_rss / 1024, "steady_mib": steady / 1024, "peak_mib": peak / 1024,
            "reload_s": took, "stall_ms": worst * 1000, "lookup_us": lookup_us, "changed": changed,
            "bytes_per_entry": (steady - base_rss) * 1024 / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--kinds", default="index,crl")
    ap.add_argument("--in-process", action="store_true", help="no loader process (for comparison)")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.in_process)))
        return 0
    print(f"{'data':<6} {'entries':>9} {'file MB':>8} {'load s':>7} {'RSS MiB':>8} {'peak MiB':>9} "
          f"{'B/entry':>8} {'reload s':>9} {'worst stall ms':>15} {'lookup us':>10} {'changed':>8}")
    for kind in args.kinds.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            size = data_files(kind, n)[0].stat().st_size / 1e6
            argv = [sys.executable, __file__, "--one", kind, str(n)] + (["--in-process"] if args.in_process else [])
            row = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
            print(f"{kind:<6} {n:>9,} {size:>8.1f} {row['load_s']:>7.2f} {row['steady_mib']:>8.0f} "
                  f"{row['peak_mib']:>9.0f} {row['bytes_per_entry']:>8.0f} {row['reload_s']:>9.2f} "
                  f"{row['stall_ms']:>15.1f} {row['lookup_us']:>10.1f} {row['changed']:>8,}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
