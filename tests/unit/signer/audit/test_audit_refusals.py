"""Refusal records: a Sign request the signer refused because its own status data disagrees is a record
of its own (type ``refusal``) in the same hash chain and tree as the signatures; it round-trips,
verifies, resumes, is found by ``show`` and cannot be edited unnoticed."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from shared.clock import FakeClock
from signer.audit import RefusalRecord, SignedStatus, decode_record, encode_record, show
from tests.unit.signer.audit.audit_helpers import (
    START,
    check,
    lines_of,
    only_failure,
    open_log,
    put_lines,
    rec,
)


def refusal(i: int, serial: str = "beef", reason: str = "asked good, the CRL says revoked") -> RefusalRecord:
    return RefusalRecord(time=START + timedelta(seconds=i), client="cn:ocsp-frontend", request_id=f"ref-{i}",
                         issuer_name="demo-ca", issuer_id=hashlib.sha256(b"demo-ca").hexdigest(),
                         statuses=(SignedStatus(serial, "good"),), reason=reason, pid=10, uid=0, gid=0)


def test_refusal_round_trips() -> None:
    r = refusal(1, reason='odd "reason" \u2603\n')
    line = encode_record(r, "w1", 3, b"\x01" * 32)
    obj = json.loads(line)
    assert obj["type"] == "refusal" and "response_sha256" not in obj
    assert line == json.dumps(obj, separators=(",", ":")).encode()
    assert decode_record(obj) == ("w1", 3, b"\x01" * 32, r)
    with pytest.raises(ValueError, match="unknown fields"):
        decode_record({**obj, "response_sha256": "0" * 64})  # a refusal carries no signed response
    with pytest.raises(ValueError):
        RefusalRecord(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "reason": ""})


def write_mixed(directory: Path) -> Path:
    async def go() -> None:
        log = await open_log(directory, FakeClock(START))
        for i in range(8):
            await log.append(refusal(i) if i in (2, 6) else rec(i))
        await log.close()
    asyncio.run(go())
    (path,) = sorted(directory.glob("audit-*.jsonl"))
    return path


def test_refusals_are_chained_with_signatures_and_verify(tmp_path: Path) -> None:
    path = write_mixed(tmp_path)
    report = check(path)
    assert report.ok, report.failures
    assert [w.records for w in report.writers] == [8]
    assert [r.record.request_id for r in show([path], serial="BEEF")] == ["ref-2", "ref-6"]


def test_log_resumes_after_a_refusal(tmp_path: Path) -> None:
    async def go() -> None:
        log = await open_log(tmp_path, FakeClock(START))
        await log.append(rec(0))
        await log.append(refusal(1))
        await log.close()
        log = await open_log(tmp_path, FakeClock(START + timedelta(minutes=1)))
        await log.append(rec(2))
        await log.close()
    asyncio.run(go())
    (path,) = sorted(tmp_path.glob("audit-*.jsonl"))
    report = check(path)
    assert report.ok, report.failures
    assert [w.records for w in report.writers] == [3]


def test_edited_refusal_is_caught(tmp_path: Path) -> None:
    path = write_mixed(tmp_path)
    lines = lines_of(path)
    n = next(i for i, line in enumerate(lines) if '"type":"refusal"' in line)
    lines[n] = lines[n].replace("the CRL says revoked", "the CRL says good")
    put_lines(path, lines)
    line, message = only_failure(check(path))
    assert line == n + 1  # the edited line itself (1-based)
    assert "chain" in message or "altered" in message or "record" in message
