"""``ocspctl demo serve``: its addresses are free before it starts the programs, and once they answer,
the answers come from its own children (not from another demo still running on the same ports).

Ownership is read from Linux's /proc: the listening socket's inode (/proc/net/tcp, tcp6, unix) among
the child's file descriptors. Where /proc cannot tell, ``serves`` says yes and the caller's other
checks (the child is alive, its port answers) stand alone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from signer.files import os_error_text

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def tcp_in_use(host: str, port: int) -> str | None:
    """Why nothing new can listen on ``host:port`` (the reason bind gives), or None when it is free.

    Binds with SO_REUSEADDR, as the frontend does, so connections of an earlier run in TIME_WAIT do
    not count; another listener does."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve {host!r}: {e.strerror or e}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                return os_error_text(e)
    return None


def unix_in_use(path: Path) -> bool:
    """Something accepts connections on the unix socket ``path`` (gRPC would silently take it over)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _tcp_listeners(port: int) -> set[int] | None:
    inodes: set[int] = set()
    seen = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if seen else None


def _unix_listeners(path: Path) -> set[int] | None:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    return {int(fields[6]) for fields in (line.split() for line in lines)
            if len(fields) > 7 and fields[7] == str(path)}


def _socket_inodes(pid: int) -> set[int] | None:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    inodes = set()
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a signer's or frontend's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def serves(pid: int, address: str) -> bool:
    """Process ``pid``, or one of its workers, holds the listening socket of ``address`` (``host:port``,
    any local address with that port, or ``unix:/path``)."""
    if address.startswith("unix:"):
        listeners = _unix_listeners(Path(address.removeprefix("unix:")))
    else:
        listeners = _tcp_listeners(int(address.rpartition(":")[2]))
    own = _socket_inodes(pid)
    if listeners is None or own is None:
        return True  # /proc cannot tell
    for child in _children(pid):
        own |= _socket_inodes(child) or set()
    return bool(listeners & own)


def in_use_problem(d: Path, signer_address: str, host: str, port: int, setup: str) -> str | None:
    """Why demo ``d`` cannot start: another process holds the signer's address or the HTTP port (another
    ``demo serve``). ``setup``: the demo setup command, for the way out. None when both are free."""
    if signer_address.startswith("unix:"):
        path = Path(signer_address.removeprefix("unix:"))
        if unix_in_use(path):
            return (f"another process is listening on the demo signer's socket {path} (another `demo serve` "
                    f"of {d}?); stop it first")
    else:
        s_host, _, s_port = signer_address.rpartition(":")
        problem = tcp_in_use(s_host.strip("[]"), int(s_port))
        if problem is not None:
            return (f"cannot listen on the demo signer's address {signer_address}: {problem} (another `demo "
                    f"serve`?); stop it, or move the demo: {setup} --signer-address 127.0.0.1:PORT")
    problem = tcp_in_use(host, port)
    if problem is not None:
        return (f"cannot listen on {host}:{port} for the demo frontend: {problem} (another `demo serve`?); "
                f"stop it, or move the demo to another port: {setup} --http-port N (make run PORT=N)")
    return None
