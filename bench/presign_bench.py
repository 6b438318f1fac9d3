"""ocspctl presign against the signing path's own rate, and a frontend restart with a warm Redis.

    .venv/bin/python bench/presign_bench.py --demo var/demo [--serials 100000] [--probe 5000]

On a demo made by `ocspctl demo setup --dir var/demo` (its token, PKI and configs), in one run:
  1. demo-rsa's index.txt replaced (in a copy of the ca.d directory, read by both signer and
     frontend) by one of ``--serials`` good serials; a redis-server of its own (unix socket); a
     signer of its own (the demo's signer.toml, its own socket and audit writer id);
  2. the signing path's rate: ``--probe`` nonce-less signatures through the frontend's SignerClient
     (SignBatch, the frontend's [signer] settings), as many in flight as presign keeps;
  3. `ocspctl presign --ca demo-rsa` of every serial: serials/s (wall clock of the command);
  4. a frontend started on that warm Redis: the time from its start to the first answer served for a
     presigned serial, and how many signatures the signer's audit log gained meanwhile (0: served
     from the store; before the store is in the request path it signs).
Prints one line per measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from frontend.config import load_frontend_config
from frontend.presign import DEFAULT_BATCH, cert_id
from frontend.signer_client import Keepalive, SignerClient
from shared.ocsp.certid import issuer_keys
from shared.ocsp.types import CertStatus, HashAlgorithm, SingleStatus
from signer.tomltext import toml_string
from tests.integration.conftest import free_port, http_healthy, signer_healthy, tool, wait_until
from tests.integration.ocsp_client import load_cert, post
from tests.integration.redis_server import RedisServer

CA = "demo-rsa"
WRITER = "benchpresign"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def big_index(path: Path, n: int) -> list[int]:
    expiry = (datetime.now(UTC) + timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    serials = [0x1000_0000 + i for i in range(n)]
    with path.open("w") as f:
        for s in serials:
            f.write(f"V\t{expiry}\t\t{s:X}\tunknown\t/CN=bench-{s:x}\n")
    return serials


def sub(text: str, key: str, value: str) -> str:
    new, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text, count=1)
    assert count == 1, key
    return new


def alive(p: subprocess.Popen[bytes]) -> bool:
    if p.poll() is not None:
        raise RuntimeError(f"exited with {p.returncode}")
    return True


def signatures(audit: Path) -> int:
    return sum(f.read_bytes().count(b'"type":"sig"') for f in audit.glob(f"audit-{WRITER}*.jsonl"))


async def signing_rate(frontend_toml: Path, issuer_der: bytes, serials: list[int], concurrency: int) -> float:
    """Nonce-less signatures per second through the frontend's SignerClient."""
    cfg = load_frontend_config(frontend_toml)
    s = cfg.signer
    client = SignerClient(s.addresses, s.timeout, tls=s.tls, keepalive=Keepalive(s.keepalive, s.keepalive_timeout),
                          max_batch=s.max_batch, connections=s.connections)
    issuer = issuer_keys(issuer_der)[HashAlgorithm.SHA1]
    slots = asyncio.Semaphore(concurrency)

    async def one(serial: int) -> None:
        async with slots:
            now = datetime.now(UTC).replace(microsecond=0)
            await client.sign([SingleStatus(cert_id=cert_id(issuer, serial), status=CertStatus.GOOD, this_update=now,
                                            next_update=now + timedelta(hours=24))], None)

    try:
        await one(serials[0])  # connected
        t = time.monotonic()
        await asyncio.gather(*(one(x) for x in serials))
        return len(serials) / (time.monotonic() - t)
    finally:
        await client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=ROOT / "var" / "demo")
    ap.add_argument("--serials", type=int, default=100_000)
    ap.add_argument("--probe", type=int, default=5000, help="signatures of the signing-path measure")
    args = ap.parse_args()
    demo = args.demo.resolve()
    if not (demo / "etc" / "signer.toml").exists():
        log(f"no demo at {demo}: run `ocspctl demo setup --dir {demo}` first")
        return 2
    env = dict(os.environ, SOFTHSM2_CONF=str(demo / "softhsm2.conf"), PYTHONUNBUFFERED="1")
    work = Path(tempfile.mkdtemp(prefix="presign-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    redis = RedisServer(work / "redis")
    try:
        ca_dir = work / "ca.d"
        shutil.copytree(demo / "etc" / "ca.d", ca_dir)
        index = work / "index.txt"
        serials = big_index(index, args.serials)
        rsa = ca_dir / f"{CA}.toml"
        rsa.write_text(rsa.read_text().replace(toml_string(demo / "rsa-ca" / "index.txt"), toml_string(index)))
        redis.start()
        address = f"127.0.0.1:{free_port()}"  # the demo's mTLS names 127.0.0.1
        stext = (demo / "etc" / "signer.toml").read_text()
        for key, value in (("ca_dir", toml_string(ca_dir)), ("address", toml_string(address)),
                           ("writer_id", toml_string(WRITER))):
            stext = sub(stext, key, value)
        stext = re.sub(r"(?m)^socket = .*\n", "", stext)
        (work / "signer.toml").write_text(stext)
        port = free_port()
        ftext = (demo / "etc" / "frontend.toml").read_text()
        for key, value in (("ca_dir", toml_string(ca_dir)), ("address", toml_string(address)),
                           ("port", str(port))):
            ftext = sub(ftext, key, value)
        ftext = ftext.replace("[cache]\n", f'[cache]\nredis = {toml_string(redis.url)}\nredis_timeout = "1s"\n'
                              'refresh_before = "0s"\n', 1)
        if "workers =" not in ftext:
            ftext = ftext.replace("[listen]\n", "[listen]\nworkers = 1\n", 1)
        fconf = work / "frontend.toml"
        fconf.write_text(ftext)
        audit = Path(re.search(r'(?m)^dir = "(.*)"', stext).group(1)) if re.search(r'(?m)^dir = "(.*)"', stext) \
            else demo / "audit"
        with (work / "signer.log").open("ab") as slog:
            procs.append(subprocess.Popen([tool("ocsp-signer"), "--config", str(work / "signer.toml")], env=env,
                                          stdout=slog, stderr=subprocess.STDOUT))
        try:
            wait_until(lambda: alive(procs[0]) and signer_healthy(address, fconf), 60, "the signer")
        except (TimeoutError, RuntimeError):
            log((work / "signer.log").read_text(errors="replace")[-3000:])
            raise
        ca_der = load_cert(demo / "rsa-ca" / "ca.pem").public_bytes(Encoding.DER)

        probe = serials[:args.probe]  # signed, not stored: presign below still signs every serial
        rate = asyncio.run(signing_rate(fconf, ca_der, probe, DEFAULT_BATCH))
        print(f"signing path (SignBatch via SignerClient, {args.probe} answers): {rate:.0f} signatures/s", flush=True)

        t = time.monotonic()
        r = subprocess.run([tool("ocspctl"), "presign", "--config", str(fconf), "--ca", CA], env=env,
                           capture_output=True, text=True, check=False)
        took = time.monotonic() - t
        if r.returncode != 0:
            log(r.stdout + r.stderr)
            return 1
        print(f"presign of {len(serials)} serials: {took:.1f} s, {len(serials) / took:.0f} serials/s "
              f"({len(serials) / took / rate:.2f}x the signing path)", flush=True)
        print("  " + r.stdout.strip().splitlines()[-1], flush=True)

        before = signatures(audit)
        t = time.monotonic()
        with (work / "frontend.log").open("ab") as flog:
            procs.append(subprocess.Popen([tool("ocsp-frontend"), "--config", str(fconf)], env=env, stdout=flog,
                                          stderr=subprocess.STDOUT))
        wait_until(lambda: http_healthy(port), 60, "the frontend", interval=0.005)
        issuer = issuer_keys(ca_der)[HashAlgorithm.SHA1]
        der = request_for(issuer, serials[len(serials) // 2])
        status, _, body = post(port, der)
        first = time.monotonic() - t
        answer = ocsp.load_der_ocsp_response(body)
        ok = answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        print(f"frontend restart with a warm Redis: first answer served {first * 1000:.0f} ms after its start "
              f"(HTTP {status}, {answer.response_status.name}"
              f"{', ' + answer.certificate_status.name if ok else ''}); signatures meanwhile: "
              f"{signatures(audit) - before} (0: served from the store)", flush=True)
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        redis.close()
        shutil.rmtree(work, ignore_errors=True)


def request_for(issuer: object, serial: int) -> bytes:
    """A nonce-less OCSPRequest (DER) for one serial of demo-rsa, SHA-1 CertID."""
    from asn1crypto import ocsp as aocsp

    cid = cert_id(issuer, serial)  # type: ignore[arg-type]
    req = aocsp.OCSPRequest({"tbs_request": {"request_list": [{"req_cert": {
        "hash_algorithm": {"algorithm": "sha1"}, "issuer_name_hash": cid.issuer_name_hash,
        "issuer_key_hash": cid.issuer_key_hash, "serial_number": serial}}]}})
    return req.dump()


if __name__ == "__main__":
    sys.exit(main())
