"""Unix sockets the signer creates: bound under a tight umask, then given their configured mode.

A unix socket file takes its permissions from the process umask at the moment of the bind: under
``umask 000`` it is 0777, and any local user may connect to it until someone chmods it. Binding inside
``created_with_mode`` sets the umask to 0177 around the bind, so the file is 0600 (the signer's user
only) from its first instant, and chmods it to the configured mode afterwards. The admin socket
(signer.admin) and the main listener's public socket (signer.local_callers) are both made this way.

Who may then connect is the kernel's business: ``connect()`` needs write permission on the socket
file (and search permission on every directory above it), else it fails with EACCES.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The modes a configuration may choose (``[listen] socket_mode``, ``[admin] socket_mode``): the
# signer's user only, or also its group. Anything wider would let every local user in.
SOCKET_MODES = {"0600": 0o600, "0660": 0o660}
BIND_UMASK = 0o177  # a socket bound under it is 0600

# sun_path holds 108 bytes with its terminating NUL.
MAX_PATH_BYTES = 107


@contextmanager
def created_with_mode(path: Path, mode: int) -> Iterator[None]:
    """Bind the unix socket ``path`` inside the block; on leaving it, the file gets ``mode``.

    The umask is process-wide: whatever else creates a file meanwhile gets it as well (never a wider
    mode than it would have had). A block that raises leaves the file as the bind made it (0600)."""
    if mode & ~0o660:
        raise ValueError(f"socket mode {mode:04o} is wider than 0660")
    old = os.umask(BIND_UMASK)
    try:
        yield
    finally:
        os.umask(old)
    os.chmod(path, mode)


# -- the main listener's private directory (signer.local_callers) -------------------------------------

RELAY_NAME_DIGITS = 12  # relay connections are bound to private/<hex counter>, at most this long


def private_dir_for(path: Path) -> Path:
    """The directory, next to the public socket ``path``, where gRPC itself listens (mode 0700)."""
    return path.parent / f".{path.name}.d"


def upstream_socket_for(path: Path, worker: int | None = None) -> Path:
    """Where gRPC listens behind the relay: ``grpc.sock``, or ``grpc-<N>.sock`` for signer worker N."""
    return private_dir_for(path) / ("grpc.sock" if worker is None else f"grpc-{worker}.sock")


def relay_prefix(worker: int | None) -> str:
    """What a relay connection's bound name starts with: nothing, or ``w<N hex>.`` for signer worker N
    (the workers share the private directory)."""
    return "" if worker is None else f"w{worker:x}."


def longest_private_path(path: Path) -> int:
    """Bytes of the longest socket address the relay binds for the public socket ``path`` (signer
    workers up to 255 included)."""
    private = len(str(private_dir_for(path)).encode()) + 1
    return private + max(len(relay_prefix(255)) + RELAY_NAME_DIGITS, len(upstream_socket_for(path, 255).name))


def make_private_dir(directory: Path) -> None:
    """``directory`` empty, owned by this user, mode 0700. One left by a crashed run is emptied; anything
    else in its place (another owner, a symlink, not a directory) raises ValueError. Opened without
    following symlinks, and changed through that descriptor only."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        problem = private_dir_problem(directory)
        if problem is not None:
            raise ValueError(problem) from None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise ValueError(f"{directory}: {e.strerror or e}") from None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise ValueError(private_dir_problem(directory) or f"{directory} changed owner")
        os.fchmod(fd, 0o700)
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                raise ValueError(f"{directory} holds a directory, {entry.name}: not one the signer made")
            os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


def private_dir_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be the signer's private directory, or None (absent, or a directory of
    this user's)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is in the way (not a directory); remove it"
    if st.st_uid != os.geteuid():
        return f"{directory} belongs to uid {st.st_uid}, not to the signer's user ({os.geteuid()}); remove it"
    return None


def remove_private_dir(directory: Path) -> None:
    try:
        for entry in os.scandir(directory):
            if not entry.is_dir(follow_symlinks=False):
                unlink_quietly(entry.path)
        os.rmdir(directory)
    except OSError:
        pass


def unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
