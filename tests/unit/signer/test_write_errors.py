"""A failure to create or write a file is reported as that, with the path and the reason: the audit
log's directory, write_atomic (responder certificates, CA files) and rotation's persist step. The
errors are injected (EROFS, as under systemd's ProtectSystem=strict); tests/integration has a real
read-only mount."""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from signer import rotation
from signer.audit import AuditUnavailable
from signer.files import WriteFailed, write_atomic
from signer.rotation import RotationError
from tests.unit.signer.audit.audit_helpers import open_log
from tests.unit.signer.signer_fixtures import make_ca
from tests.unit.signer.test_rotation import Env, der, renewal


def erofs(path: object) -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def test_write_atomic_names_the_target_not_its_temporary_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "responder.pem"

    def read_only(*_a: Any, dir: str = "", **_k: Any) -> Any:
        raise erofs(Path(dir) / ".responder.pem.x7k2")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as info:
        write_atomic(target, b"data")
    assert isinstance(info.value, WriteFailed) and info.value.errno == errno.EROFS
    assert info.value.filename == str(target)
    assert str(info.value) == f"cannot write {target}: Read-only file system (EROFS)"
    assert not target.exists()


def test_write_atomic_says_which_directory_it_cannot_create(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "responders" / "example.pem"

    def mkdir(self: Path, *a: Any, **k: Any) -> None:
        raise erofs(self)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(WriteFailed) as info:
        write_atomic(target, b"data")
    assert str(info.value) == f"cannot create {target.parent}: Read-only file system (EROFS)"


def test_audit_directory_that_cannot_be_created_is_not_reported_as_unreadable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/var/lib/ocsp-signer/audit under ProtectSystem=strict without StateDirectory=: mkdir -> EROFS."""
    audit_dir = tmp_path / "ocsp-signer" / "audit"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a: Any, **k: Any) -> None:
        if self == audit_dir:
            raise erofs(self)
        real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    expected = f"cannot create the audit directory {audit_dir}: Read-only file system (EROFS)"

    async def main() -> None:
        log = await open_log(audit_dir)
        try:
            with pytest.raises(AuditUnavailable) as info:
                await log.check_writable()  # what the signer's start-up (and --check) asks
            assert info.value.reason == expected
            with pytest.raises(AuditUnavailable) as info:
                await log.checkpoint()  # and the first write
            assert expected in info.value.reason and "cannot read" not in info.value.reason
        finally:
            await log.close()

    asyncio.run(main())


def test_rotation_reports_a_read_only_certificate_directory(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_ca("alpha")
    env = Env(tmp_path, a)
    target = env.config.responders[0].cert_path
    assert target is not None
    cert_dir = target.parent
    real_access, real_statvfs = os.access, os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(rotation.os, "access", lambda p, m: Path(p) != cert_dir and real_access(p, m))
    monkeypatch.setattr(rotation.os, "statvfs", lambda p: ReadOnly() if Path(p) == cert_dir else real_statvfs(p))
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(renewal(a))))
    message = info.value.message
    assert f"cannot write {target}: its directory {cert_dir} is on a read-only file " \
           "system (EROFS;" in message, message
    assert "ReadWritePaths=" in message and "nothing was written or switched" in message


def test_rotation_write_failure_names_the_certificate_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_ca("alpha")
    env = Env(tmp_path, a)
    target = env.config.responders[0].cert_path
    assert target is not None
    before = target.read_bytes()

    def full(*_a: Any, dir: str = "", **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(dir) / ".responder.der.q1w2"))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(renewal(a))))
    assert info.value.message.startswith(f"cannot write {target}: No space left on device (ENOSPC); nothing was "
                                         "switched"), info.value.message
    assert target.read_bytes() == before
    assert env.responder("alpha").cert == der(a.responder_cert)
