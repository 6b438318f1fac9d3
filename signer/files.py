"""Atomic file replacement, for certificates, CA files, CRLs and keys the signer side writes."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def check_private_directory(directory: Path) -> None:
    """Refuse a directory that group or others may write: someone else there could replace the file
    between our write and its use, or plant a symlink under the name we write. PermissionError, whose
    strerror says why (callers report ``cannot write PATH: <strerror>``)."""
    st = os.stat(directory)
    if st.st_mode & 0o022:
        raise PermissionError(errno.EPERM, f"the directory {directory} is writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); make it writable by the signer's "
                              "user only (e.g. chmod go-w)", str(directory))


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


def write_atomic(path: Path | str, data: bytes, mode: int | None = None, *,
                 private_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a torn one.

    ``mode``: the new file's permissions; None keeps the old file's (0o644 for a new file). The data
    and the directory entry are fsynced, so the new file survives a crash once this returns. Raises
    WriteFailed (an OSError) naming ``path``, or the directory it could not create, never a temporary
    file: ``str(e)`` is "cannot write PATH: Read-only file system (EROFS)". With ``private_dir``, the
    directory must not be writable by group or others (``check_private_directory``: what the signer
    process itself writes, e.g. a rotated responder certificate).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(e, Path(e.filename) if e.filename else path.parent, creating=True) from None
    if private_dir:
        check_private_directory(path.parent)
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
        # On the descriptor, not the path: a name swapped for a symlink cannot redirect the chmod.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
