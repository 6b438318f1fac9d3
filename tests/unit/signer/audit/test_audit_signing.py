"""The signer writes every signature to the audit log before replying, and fails closed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from shared.clock import FakeClock
from shared.config import ConfigError
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.audit import show, verify
from signer.config import load_signer_config
from signer.service import serve
from tests.unit.signer.signer_fixtures import (
    AUDIT_KEY,
    NOW,
    expect_error,
    make_ca,
    status,
    token_for,
    write_setup,
)

AUDIT_SPKI = AUDIT_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def audit_files(conf: Path) -> list[Path]:
    return sorted((conf.parent / "audit").glob("*.jsonl"))


def test_every_signature_is_logged_and_verifies(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])
    ders: list[bytes] = []

    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.SignerStub(channel)
                for serial in (5, 6, 7):
                    reply = await stub.Sign(pb.SignRequest(request_id=f"r{serial}", nonce=b"\x04\x02ab",
                                                           responses=[status(ca.cert_id(serial))]))
                    ders.append(reply.ocsp_response)
        finally:
            await server.stop(None)

    asyncio.run(main())
    files = audit_files(conf)
    report = verify(files, AUDIT_SPKI, require_complete=True)
    assert report.ok, [str(f) for f in report.failures]
    records = [r for r in show(files)]
    assert len(records) == 3
    got = {getattr(r, "record", r).response_sha256 for r in records}
    assert got == {hashlib.sha256(d).hexdigest() for d in ders}
    first = getattr(records[0], "record", records[0])
    assert first.request_id == "r5" and first.issuer_name == "alpha" and first.nonce is True
    assert [s.serial for s in first.statuses] == ["05"] and first.statuses[0].status == "good"
    assert first.client  # the transport peer on this plaintext unix socket
    assert first.responder_fingerprint == hashlib.sha256(
        ca.responder_cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_unwritable_log_refuses_to_sign_then_recovers(
        tmp_path: Path, make_unwritable: Callable[[Path], Callable[[], None]]) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])
    token = token_for(ca)

    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.SignerStub(channel)
                req = pb.SignRequest(request_id="x", responses=[status(ca.cert_id(9))])
                await stub.Sign(req)
                [log_file] = audit_files(conf)
                unlock = make_unwritable(log_file)
                try:
                    details = await expect_error(stub.Sign(req), grpc.StatusCode.UNAVAILABLE, "audit log")
                    assert "not writable" in details
                    await expect_error(stub.Sign(req), grpc.StatusCode.UNAVAILABLE, "audit log")
                finally:
                    unlock()
                reply = await stub.Sign(req)  # writable again: signs again
                assert reply.ocsp_response
        finally:
            await server.stop(None)

    asyncio.run(main())
    files = audit_files(conf)
    report = verify(files, AUDIT_SPKI, require_complete=True)
    assert report.ok, [str(f) for f in report.failures]
    # Only the two released responses are in the log; the refused ones left no record.
    assert len(list(show(files))) == 2


def test_missing_audit_key_is_a_config_error(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])
    token = token_for(ca)
    del token.keys["audit-key"]

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        assert info.value.key == "audit.key_label"

    asyncio.run(main())


def test_audit_table_is_required(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])
    text = conf.read_text()
    conf.write_text(text[:text.index("[audit]")])
    with pytest.raises(ConfigError) as info:
        load_signer_config(conf)
    assert info.value.key == "audit"


def test_new_log_starts_with_a_signed_checkpoint(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])

    async def main() -> None:
        server, _ = await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
        await server.stop(None)

    asyncio.run(main())
    files = audit_files(conf)
    assert files and '"checkpoint"' in files[0].read_text()
    assert verify(files, AUDIT_SPKI).ok


def test_second_signer_on_the_same_writer_id_is_a_config_error(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])

    async def main() -> None:
        first, _ = await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
        try:
            (tmp_path / "other").mkdir()
            other = write_setup(tmp_path / "other", [ca])  # its own socket, the same audit directory
            text = other.read_text().replace('dir = "audit"', f'dir = "{tmp_path / "audit"}"')
            other.write_text(text)
            with pytest.raises(ConfigError) as info:
                await serve(load_signer_config(other), token=token_for(ca), clock=FakeClock(NOW))
            assert info.value.key == "audit.writer_id" and "own audit.writer_id" in info.value.message
        finally:
            await first.stop(None)

    asyncio.run(main())
    assert verify(audit_files(conf), AUDIT_SPKI, require_complete=True).ok
