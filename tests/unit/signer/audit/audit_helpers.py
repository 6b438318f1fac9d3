"""Shared by the audit log tests: a software checkpoint signer (a fake token), record and log makers,
line surgery for the tampering cases."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.audit.merkle import leaf_hash
from shared.clock import FakeClock
from signer.audit import (
    AuditLog,
    AuditRecord,
    FileIO,
    Report,
    SignedStatus,
    verify,
)
from signer.mechanisms import SignatureAlgorithm

START = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)



class SoftSigner:
    """CheckpointSigner over a software key: stands in for the token in unit tests."""

    algorithm = SignatureAlgorithm.ECDSA_SHA256

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fail = False
        self.calls = 0

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        if self.fail:
            raise RuntimeError("token removed")
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


SIGNER = SoftSigner()
OTHER = SoftSigner()


def rec(i: int, t: datetime = START, *, client: str = "frontend-a", issuer: str = "demo-ca",
        serial: str | None = None) -> AuditRecord:
    return AuditRecord(
        time=t, client=client, request_id=f"req-{i}", issuer_name=issuer,
        issuer_id=hashlib.sha256(issuer.encode()).hexdigest(),
        statuses=(SignedStatus(serial or f"{i + 0x1000:x}", "revoked" if i % 7 == 3 else "good"),),
        nonce=i % 2 == 0, responder_fingerprint=hashlib.sha256(b"responder").hexdigest(),
        key_label="demo-responder", generation=1, response_sha256=hashlib.sha256(b"%d" % i).hexdigest())


async def open_log(directory: Path, clock: FakeClock | None = None, *, writer: str = "w1",
                   signer: SoftSigner | None = SIGNER, every: int = 5,
                   interval: timedelta = timedelta(hours=1), max_bytes: int = 1 << 30,
                   file_io: FileIO | None = None) -> AuditLog:
    return await AuditLog.open(directory, writer_id=writer, signer=signer, checkpoint_every=every,
                               checkpoint_interval=interval, max_file_bytes=max_bytes,
                               clock=clock or FakeClock(START), file_io=file_io)


def write_log(directory: Path, n: int = 12, **kw: object) -> Path:
    """n records, appended one by one, then close(). With every=5 and n=12 the single file reads:
    line 1 header, 2-6 records #0-#4, 7 checkpoint(5), 8-12 #5-#9, 13 checkpoint(10),
    14-15 #10-#11, 16 final checkpoint(12)."""

    async def go() -> None:
        log = await open_log(directory, **kw)  # type: ignore[arg-type]
        for i in range(n):
            await log.append(rec(i))
        await log.close()

    asyncio.run(go())
    (path,) = sorted(directory.glob("audit-*.jsonl"))
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def put_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def rechain(lines: list[str], start: int = 0) -> list[str]:
    """What an attacker without the audit key can do: recompute every index and prev link."""
    out, head, index = [], b"\0" * 32, 0
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] == "sig":
            if i >= start:
                obj["index"], obj["prev"] = index, base64.b64encode(head).decode()
                line = json.dumps(obj, separators=(",", ":")) + "\n"
            head = leaf_hash(line.rstrip("\n").encode())
            index += 1
        out.append(line)
    return out


def only_failure(report: Report) -> tuple[int, str]:
    assert not report.ok
    f = report.first_failure
    assert f is not None
    return f.line, f.message





def check(path: Path, **kw: object) -> Report:
    return verify([path], SIGNER.public_key_spki, **kw)  # type: ignore[arg-type]

