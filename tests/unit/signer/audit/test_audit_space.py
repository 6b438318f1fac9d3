"""signer.audit_space: free space in the audit directory below [audit] min_free is logged (rate-limited),
makes Health not serving with the reason and shows in the metrics, while signing goes on.

statvfs is injected here; tests/integration/test_signer_bounds.py fills a real small file system.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from shared.clock import FakeClock
from shared.config import ConfigError
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.audit_space import LOW_LOG_INTERVAL, AuditSpace, format_bytes
from signer.config import DEFAULT_MIN_FREE, load_signer_config, parse_size
from signer.metrics import render
from signer.service import serve
from tests.metrics_text import value
from tests.unit.signer.signer_fixtures import NOW, make_ca, short_dir, status, token_for, write_setup

MiB = 1 << 20


class Disk:
    """A statvfs stand-in: ``free`` bytes of ``size`` for the signer's user, or ``error``."""

    def __init__(self, free: int, size: int = 100 * MiB) -> None:
        self.free, self.size = free, size
        self.error: OSError | None = None

    def __call__(self, path: Path) -> SimpleNamespace:
        if self.error is not None:
            raise self.error
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096, f_blocks=self.size // 4096)


def watcher(disk: Disk, min_free: int = 10 * MiB) -> tuple[AuditSpace, list[float]]:
    now = [0.0]
    return AuditSpace(Path("/var/audit"), min_free, interval=1.0, statvfs=disk, monotonic=lambda: now[0]), now


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_low_space_logged_rate_limited_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocsp-signer")
    disk = Disk(50 * MiB)
    space, now = watcher(disk)
    assert space.check() is False and space.problem() is None and space.free_bytes == 50 * MiB
    assert not errors(caplog)

    disk.free = 8 * MiB
    assert space.check() is True
    problem = space.problem()
    assert problem == "8.0 MiB free in /var/audit (8.0 % of 100.0 MiB), below audit.min_free (10.0 MiB)"
    assert len(errors(caplog)) == 1 and problem in errors(caplog)[0] and "still signs" in errors(caplog)[0]
    for _ in range(5):  # checked every interval: one line per LOW_LOG_INTERVAL, not per check
        now[0] += 1
        space.check()
    assert len(errors(caplog)) == 1
    now[0] += LOW_LOG_INTERVAL
    space.check()
    assert len(errors(caplog)) == 2 and "5 more like it" in errors(caplog)[1]

    disk.free = 10 * MiB  # at the threshold is enough
    caplog.clear()
    assert space.check() is False and space.problem() is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "10.0 MiB free again" in caplog.records[0].getMessage()
    space.check()
    assert len(caplog.records) == 1  # said once


def test_unreadable_counts_as_low() -> None:
    disk = Disk(50 * MiB)
    disk.error = FileNotFoundError(2, "No such file or directory")
    space, _ = watcher(disk)
    assert space.check() is True
    assert space.free_bytes is None
    assert space.problem() == "cannot read the free space of /var/audit: No such file or directory"


def test_zero_turns_it_off() -> None:
    space, _ = watcher(Disk(0), min_free=0)
    assert space.check() is False and space.free_bytes == 0 and space.problem() is None


def test_periodic_check_runs_off_the_loop() -> None:
    disk = Disk(50 * MiB)

    async def main() -> None:
        space = AuditSpace(Path("/var/audit"), 10 * MiB, interval=0.01, statvfs=disk)
        space.start()
        try:
            disk.free = MiB
            while not space.low:
                await asyncio.sleep(0.01)
            assert space.checks >= 1
        finally:
            await space.stop()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536 * MiB, 3 << 40, 5000 << 40)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 GiB", "3.0 TiB", "5000.0 TiB"]


# -- config ----------------------------------------------------------------------------------------


def test_parse_size() -> None:
    assert parse_size("512MiB") == 512 * MiB
    assert parse_size("1GiB") == 1 << 30 == DEFAULT_MIN_FREE
    assert parse_size("1 gib") == 1 << 30
    assert parse_size("4096") == 4096 == parse_size(4096)
    assert parse_size("0") == 0
    for bad in ("1GB", "1.5GiB", "-1", "", "lots"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("value,expected", [
    ('"2GiB"', 2 << 30), ("1048576", MiB), ('"0"', 0), (None, DEFAULT_MIN_FREE)])
def test_min_free_config(tmp_path: Path, value: str | None, expected: int) -> None:
    conf = write_setup(short_dir(tmp_path), [make_ca("alpha")])
    if value is not None:
        conf.write_text(conf.read_text() + f"min_free = {value}\nspace_check_interval = \"2s\"\n")
    audit = load_signer_config(conf).audit
    assert audit.min_free == expected


@pytest.mark.parametrize("line,key", [
    ('min_free = "1GB"', "audit.min_free"), ("min_free = true", "audit.min_free"),
    ("min_free = -5", "audit.min_free"), ('space_check_interval = "10ms"', "audit.space_check_interval")])
def test_bad_audit_space_config(tmp_path: Path, line: str, key: str) -> None:
    conf = write_setup(short_dir(tmp_path), [make_ca("alpha")])
    conf.write_text(conf.read_text() + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_signer_config(conf)
    assert info.value.key == key, info.value
    assert "1GB" not in line or "binary units" in info.value.message


# -- the running signer ---------------------------------------------------------------------------------


def test_health_not_serving_metrics_flag_and_signing_goes_on(tmp_path: Path) -> None:
    """A threshold no disk meets: Health says why, the metrics say so, Sign still signs."""
    ca = make_ca("alpha")
    conf = write_setup(short_dir(tmp_path), [ca])
    conf.write_text(conf.read_text() + 'min_free = "1000000TiB"\n')
    token = token_for(ca)

    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.SignerStub(channel)
                health = await stub.Health(pb.HealthRequest())
                assert not health.serving
                assert health.detail.startswith("audit disk: ") and "below audit.min_free (1000000.0 TiB)" in \
                    health.detail, health.detail
                reply = await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))]))
                assert reply.ocsp_response
            assert server.admin is not None
            text = render(server.service.state, server.admin.rotator, server.service.audit_space)
            assert value(text, "ocsp_signer_audit_space_low") == 1
            assert value(text, "ocsp_signer_audit_min_free_bytes") == 1000000 << 40
            free = value(text, "ocsp_signer_audit_free_bytes")
            assert free is not None and free > 0
            # Enough room again (here: a threshold the disk meets): serving at the next check.
            server.service.audit_space.min_free = 1
            server.service.audit_space.check()
            async with grpc.aio.insecure_channel(address) as channel:
                assert (await pb_grpc.SignerStub(channel).Health(pb.HealthRequest())).serving
            assert value(render(server.service.state, server.admin.rotator, server.service.audit_space),
                         "ocsp_signer_audit_space_low") == 0
        finally:
            await server.stop(None)

    asyncio.run(main())
    assert len(token.signed) == 1
