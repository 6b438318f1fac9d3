"""Atomic file replacement, for certificates, CA files, CRLs and keys the signer side writes."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def os_error_text(e: OSError) -> str:
    """``Read-only file system (EROFS)``: the reason of an OSError, with its errno name."""
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}{f' ({name})' if name else ''}"


class WriteFailed(OSError):
    """``write_atomic`` could not write ``filename`` (or, ``creating``, create that directory)."""

    def __init__(self, cause: OSError, where: Path, *, creating: bool = False) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(where))
        self.creating = creating

    def __str__(self) -> str:
        return f"cannot {'create' if self.creating else 'write'} {self.filename}: {os_error_text(self)}"


def write_problem(e: OSError, path: Path | str) -> str:
    """``cannot write PATH: Read-only file system (EROFS)`` for an OSError from writing ``path``."""
    if isinstance(e, WriteFailed):
        return str(e)
    return f"cannot write {e.filename or path}: {os_error_text(e)}"


def write_atomic(path: Path | str, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a torn one.

    ``mode``: the new file's permissions; None keeps the old file's (0o644 for a new file). The data
    and the directory entry are fsynced, so the new file survives a crash once this returns. Raises
    WriteFailed (an OSError) naming ``path``, or the directory it could not create, never a temporary
    file: ``str(e)`` is "cannot write PATH: Read-only file system (EROFS)".
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(e, Path(e.filename) if e.filename else path.parent, creating=True) from None
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        except OSError as e:
            raise WriteFailed(e, path) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:  # the directory does not take new files (read-only, permissions, full)
        raise WriteFailed(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise WriteFailed(e, path) from None
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise WriteFailed(e, path) from None
