"""A start that fails: one clean line of our own (no gRPC core log line before it), and no audit file
left behind that no record went into. FakeToken, real gRPC server, real audit log."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from shared.clock import FakeClock
from shared.config import ConfigError
from signer import startup
from signer.config import load_signer_config
from signer.core_log import core_lines_held, core_reason
from signer.service import serve
from tests.unit.signer.signer_fixtures import NOW, make_ca, short_dir, token_for, write_setup


def _taken_port() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _audit_files(base: Path) -> list[Path]:
    return sorted((base / "audit").glob("*.jsonl")) if (base / "audit").exists() else []


@pytest.mark.parametrize("precheck", [True, False], ids=["checked-first", "grpc-bind-fails"])
def test_port_taken_is_one_clean_line_and_leaves_no_audit_file(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, precheck: bool) -> None:
    """checked-first: the start's own bind check refuses before the token and the audit log are touched.
    grpc-bind-fails: that check passed (a race: the port was taken after it), gRPC's bind fails after the
    audit log was opened: core's line is held back, the reason is ours, the genesis-only file is removed."""
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        conf = write_setup(base, [ca], address=f"127.0.0.1:{port}")
        if not precheck:
            monkeypatch.setattr(startup, "check_bind", lambda config: None)

        async def main() -> None:
            with pytest.raises(ConfigError) as info:
                await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
            assert str(info.value) == f"{conf}: listen.address: cannot listen on 127.0.0.1:{port}: Address already in use"

        asyncio.run(main())
    err = capfd.readouterr().err
    assert "add_port" not in err and "Failed to add port" not in err and "GRPC_VERBOSITY" not in err, err
    assert _audit_files(base) == []


def test_abandon_removes_only_a_file_no_record_went_into(tmp_path: Path) -> None:
    """abandon(): a new log's genesis-only file goes; once a record is in, it is close() (records stay)."""
    from tests.unit.signer.audit.audit_helpers import open_log, rec

    async def main() -> None:
        empty = await open_log(tmp_path / "a")
        await empty.checkpoint()  # the genesis checkpoint a start writes
        assert len(list((tmp_path / "a").glob("*.jsonl"))) == 1
        await empty.abandon()
        full = await open_log(tmp_path / "b")
        await full.checkpoint()
        await full.append(rec(1))
        await full.abandon()

    asyncio.run(main())
    assert list((tmp_path / "a").glob("*.jsonl")) == []
    assert len(list((tmp_path / "b").glob("*.jsonl"))) == 1


def test_a_fault_after_the_log_opened_leaves_no_audit_file(tmp_path: Path) -> None:
    """Any fault after the audit log opened (here the metrics port, bound last) removes the file the
    start created."""
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    with _taken_port() as taken:
        conf = write_setup(base, [ca], signer_extra="")
        conf.write_text(conf.read_text() + f'[metrics]\naddress = "127.0.0.1:{taken.getsockname()[1]}"\n')

        async def main() -> None:
            with pytest.raises(ConfigError, match="metrics.address"):
                await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))

        asyncio.run(main())
    assert _audit_files(base) == []


def test_core_lines_are_held_only_when_the_block_fails(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    line = "E1202 17:15:31.919054    9440 add_port.cc:83] Failed to add port to server: No address added " \
           "(Error in bind for address '[::ffff:127.0.0.1]:1': Address already in use)\n"
    with pytest.raises(RuntimeError), core_lines_held() as held:
        os.write(2, line.encode() + b"other text\n")
        raise RuntimeError("bind")
    assert core_reason(held) == "Address already in use"
    with core_lines_held() as kept:
        os.write(2, line.encode())
    assert kept == []
    err = capfd.readouterr().err
    assert err.count("add_port.cc") == 1 and "other text" in err  # the successful block's line went through
