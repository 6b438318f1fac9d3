"""The pid, uid and gid of a unix-socket caller in the audit log: written by the signer, covered by
the hash chain, checked by verify, filtered by show; lines without them are what older versions wrote
(so older logs verify as before)."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from shared.clock import FakeClock
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.audit import AuditRecord, SignedStatus, decode_record, encode_record, show, verify
from signer.config import load_signer_config
from signer.ctl.audit import audit_main
from signer.service import serve
from tests.unit.signer.audit.audit_helpers import SIGNER, lines_of, open_log, put_lines, rec, rechain
from tests.unit.signer.audit.test_audit_signing import AUDIT_SPKI, audit_files
from tests.unit.signer.signer_fixtures import (
    NOW,
    make_ca,
    short_dir,
    status,
    token_for,
    write_setup,
)

# What the previous version wrote for this record (signer.audit before the caller ids), byte for byte.
OLD_LINE = (
    '{"type":"sig","writer":"w1","index":7,"prev":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",'
    '"time":"2026-06-01T12:00:00Z","client":"unix:","request_id":"r1","issuer":"demo-ca",'
    '"issuer_id":"' + "ab" * 32 + '","statuses":[["1a2b","good"]],"nonce":true,'
    '"responder_cert_sha256":"' + "cd" * 32 + '","key_label":"demo-responder","generation":3,'
    '"response_sha256":"' + "ef" * 32 + '"}')


def record(**ids: int) -> AuditRecord:
    return AuditRecord(time=datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC), client="unix:", request_id="r1",
                       issuer_name="demo-ca", issuer_id="ab" * 32, statuses=(SignedStatus("1a2b", "good"),),
                       nonce=True, responder_fingerprint="cd" * 32, key_label="demo-responder", generation=3,
                       response_sha256="ef" * 32, **ids)  # type: ignore[arg-type]


def test_a_record_without_caller_ids_is_the_old_line() -> None:
    line = encode_record(record(), "w1", 7, b"\x01" * 32)
    assert line.decode() == OLD_LINE
    assert decode_record(json.loads(OLD_LINE))[3] == record()


def test_caller_ids_round_trip_next_to_the_client() -> None:
    r = record(pid=4242, uid=998, gid=65534)
    line = encode_record(r, "w1", 7, b"\x01" * 32)
    obj = json.loads(line)
    assert line == json.dumps(obj, separators=(",", ":")).encode()
    assert b'"client":"unix:","pid":4242,"uid":998,"gid":65534,"request_id"' in line
    assert decode_record(obj)[3] == r


@pytest.mark.parametrize("ids", [{"pid": 1}, {"pid": 1, "uid": 2}, {"pid": -1, "uid": 0, "gid": 0},
                                 {"pid": 1, "uid": 1 << 32, "gid": 0}, {"pid": True, "uid": 0, "gid": 0}])
def test_bad_caller_ids_are_refused(ids: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        record(**ids)
    obj = json.loads(OLD_LINE)
    obj.update(ids)
    with pytest.raises(ValueError):
        decode_record(obj)
    obj.update({k: str(v) for k, v in ids.items()})
    with pytest.raises(ValueError):
        decode_record(obj)


def _log_with_ids(directory: Path) -> Path:
    async def go() -> None:
        log = await open_log(directory)
        for i in range(6):
            r = rec(i, client="unix:" if i % 2 else "cn:ocsp-frontend")
            if i % 2:
                r = AuditRecord(**{**{f: getattr(r, f) for f in r.__dataclass_fields__},
                                   "pid": 1000 + i, "uid": 990 + i % 3, "gid": 990})
            await log.append(r)
        await log.close()

    asyncio.run(go())
    (path,) = sorted(directory.glob("audit-*.jsonl"))
    return path


def test_verify_covers_the_ids_and_show_filters_by_uid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _log_with_ids(tmp_path)
    assert verify([path], SIGNER.public_key_spki, require_complete=True).ok
    assert [(r.index, r.record.uid) for r in show([path], uid=991)] == [(1, 991)]
    assert [r.index for r in show([path], client="unix:")] == [1, 3, 5]
    assert audit_main(["show", str(path), "--uid", "990"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["pid"] for x in out] == [1003]
    assert audit_main(["show", str(path), "--uid", "frontend"]) == 2

    # Another uid written into a record: the chain breaks there, and re-chaining cannot match the
    # signed checkpoint.
    lines = lines_of(path)
    n = next(i for i, x in enumerate(lines) if '"uid":991' in x)
    lines[n] = lines[n].replace('"uid":991', '"uid":0')
    put_lines(path, lines)
    report = verify([path], SIGNER.public_key_spki)
    assert not report.ok
    put_lines(path, rechain(lines))
    assert not verify([path], SIGNER.public_key_spki).ok
    lines[n] = lines[n].replace('"uid":0', '"uid":"0"')
    put_lines(path, rechain(lines))
    failure = verify([path], SIGNER.public_key_spki).first_failure
    assert failure is not None and "malformed record" in failure.message and failure.line == n + 1


# -- the signer writes them ---------------------------------------------------------------------------


def _sign_once(conf: Path, ca: object) -> None:
    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await pb_grpc.SignerStub(channel).Sign(pb.SignRequest(request_id="r1",
                                                                      responses=[status(ca.cert_id(5))]))
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_a_unix_socket_caller_is_recorded_by_pid_uid_gid(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(short_dir(tmp_path), [ca])
    _sign_once(conf, ca)
    (found,) = show(audit_files(conf))
    r = found.record
    assert (r.client, r.pid, r.uid, r.gid) == ("unix:", os.getpid(), os.getuid(), os.getgid())
    assert verify(audit_files(conf), AUDIT_SPKI, require_complete=True).ok


def test_a_tcp_caller_has_no_ids(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca], address="127.0.0.1:0")
    _sign_once(conf, ca)
    (found,) = show(audit_files(conf))
    assert found.record.client.startswith("ipv4:127.0.0.1:") and found.record.pid is None
    assert '"pid"' not in found.raw
