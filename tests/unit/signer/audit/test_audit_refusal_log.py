"""While the audit log cannot be written (a full disk: ENOSPC injected into the writer's write) the
signer refuses every signature (no signature without its record) and logs one line per cause and
interval with the count, not one line per refused request. Real gRPC server and audit log, FakeToken."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
from pathlib import Path

import grpc
import pytest

from shared.clock import FakeClock
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer import service as signer_service
from signer import startup
from signer.audit import AuditLog, FileIO, show
from signer.config import load_signer_config
from signer.service import serve
from tests.unit.signer.signer_fixtures import NOW, make_ca, status, token_for, write_setup

INTERVAL = 0.5  # the service's 5 s, shortened so the test waits for a summary line briefly


class DiskFull:
    """The writer's write(2), failing with ENOSPC while ``full``."""

    def __init__(self) -> None:
        self.full = False

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def test_a_full_disk_costs_one_line_per_interval_with_the_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])
    disk = DiskFull()

    async def open_audit(config, audit_signer, clock, executor):  # type: ignore[no-untyped-def]
        a = config.audit
        log = await AuditLog.open(a.dir, writer_id=a.writer_id, signer=audit_signer,
                                  checkpoint_every=a.checkpoint_every, checkpoint_interval=a.checkpoint_interval,
                                  max_file_bytes=a.max_file_bytes, clock=clock, executor=executor,
                                  file_io=FileIO(write=disk.write))
        await log.checkpoint()
        return log

    monkeypatch.setattr(signer_service, "open_audit", open_audit)
    assert startup  # (the real open_audit is startup.open_audit; this one differs only in file_io)
    refused = 0

    async def main() -> None:
        nonlocal refused
        server, address = await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
        server.service.unavailable.interval = INTERVAL
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.SignerStub(channel)

                def req(i: int) -> pb.SignRequest:
                    return pb.SignRequest(request_id=f"r{i}", responses=[status(ca.cert_id(9))])

                assert (await stub.Sign(req(0))).ocsp_response
                disk.full = True
                deadline = time.monotonic() + 3 * INTERVAL
                i = 0
                while time.monotonic() < deadline:  # a flood of refusals for three intervals
                    calls = [stub.Sign(req(i + k)) for k in range(20)]
                    i += 20
                    for outcome in await asyncio.gather(*calls, return_exceptions=True):
                        assert isinstance(outcome, grpc.aio.AioRpcError), outcome  # nothing signed
                        assert outcome.code() == grpc.StatusCode.UNAVAILABLE
                        assert "No space left on device" in (outcome.details() or "")
                        refused += 1
                disk.full = False
                # The flood stopped: the count of the last interval still comes (a timer), within a deadline.
                end = time.monotonic() + 5 * INTERVAL
                while sum(_counts(caplog)) < refused and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                assert (await stub.Sign(req(10**6))).ocsp_response  # writable again: signs again
        finally:
            await server.stop(None)

    with caplog.at_level(logging.INFO, logger="ocsp-signer"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert refused > 100
    # One line now, then one per interval (3 intervals of flood + the closing count), not one per request.
    assert 2 <= len(lines) <= 6, lines
    assert re.fullmatch(r"refused 1 signature\(s\): audit log not writable: cannot write the audit log .*: "
                        r"No space left on device \(ENOSPC\) \(further refusals .*\)", lines[0]), lines[0]
    assert all(re.fullmatch(r"refused \d+ signature\(s\) in the last \d+ s: audit log not writable: .*No space "
                            r"left on device \(ENOSPC\)", line) for line in lines[1:]), lines
    assert sum(_counts(caplog)) == refused  # every refusal counted, none twice
    # The invariant: only the two signatures released are in the log.
    assert len(list(show(sorted((tmp_path / "audit").glob("*.jsonl"))))) == 2


def _counts(caplog: pytest.LogCaptureFixture) -> list[int]:
    out = []
    for r in caplog.records:
        m = re.match(r"refused (\d+) signature\(s\)", r.getMessage())
        if m:
            out.append(int(m.group(1)))
    return out
