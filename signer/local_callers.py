"""Who calls on the signer's unix socket: the kernel's credentials of each local caller.

gRPC (core and Python) gives a servicer neither the accepted socket nor its peer credentials, and
every call over a unix socket from an unbound client has the same ``context.peer()``, ``unix:``, so
calls cannot be told apart by connection. The signer therefore owns the public socket itself and
relays each connection to gRPC, which listens in a directory only the signer's user can enter::

    caller ──▶ listen.address (socket_mode) ──▶ LocalListener ──▶ <dir>/.<name>.d/grpc.sock (gRPC)
               SO_PEERCRED: pid, uid, gid        connects from <dir>/.<name>.d/<n>, a name of its own

- ``LocalListener`` accepts on the public socket (at most ``max_socket_connections`` at once; more are
  closed at once, logged), reads SO_PEERCRED of each connection (the process that called connect(),
  its user and group, from the kernel: a caller cannot forge them), and opens a connection of its own
  to gRPC, bound first to a unique name in the private directory. gRPC's ``context.peer()`` of every
  call on that connection is ``unix:<that name>``; the listener's table maps it to the credentials for
  as long as the connection lives. The private directory is 0700: nobody but the signer's user (and
  root) can reach gRPC directly or bind a name there.
- The relay copies bytes as they come, in both directions; it does not parse them (HTTP/2 frames,
  keepalive pings and GOAWAY pass untouched). A side whose peer does not read pauses reading from the
  other (memory per connection stays at the transports' buffer limits). Either side's EOF or error
  closes both, the other after it has been given what was already read from the first.
- ``LocalCallerInterceptor`` looks every call's peer up in that table: the call runs with the caller's
  credentials visible to the servicer (``caller()``, for the audit record), or, for a peer the relay did
  not make (someone who got into the private directory), is refused with PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import itertools
import logging
import os
import pwd
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shared.ratelog import RateLimitedLog
from signer.interceptors import AdmittingInterceptor
from signer.unix_socket import (
    created_with_mode,
    make_private_dir,
    private_dir_for,
    relay_prefix,
    remove_private_dir,
    unlink_quietly,
    upstream_socket_for,
)

log = logging.getLogger("ocsp-signer")

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about the same kind of refusal
CLOSE_GRACE = 5.0  # seconds a closing side gets to take what is still buffered for it
MAX_LOGGED_CALLERS = 10000  # (pid, uid) pairs whose first connection was logged; then no more lines

_caller: contextvars.ContextVar[PeerCredentials | None] = contextvars.ContextVar("local_caller", default=None)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The process at the other end of a unix socket, as the kernel recorded it at connect()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: Any) -> PeerCredentials:
    """SO_PEERCRED of a connected unix socket (a socket.socket or asyncio's TransportSocket)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCredentials(pid, uid, gid)


def caller() -> PeerCredentials | None:
    """The unix-socket caller of the RPC being served (set by ``LocalCallerInterceptor``), else None."""
    return _caller.get()


def describe(creds: PeerCredentials) -> str:
    """``pid 4242 (ocsp-frontend) uid 998 (ocsp-frontend) gid 998`` for the log; names when known."""
    return (f"pid {creds.pid}{_paren(_process_name(creds.pid))} uid {creds.uid}{_paren(_user_name(creds.uid))} "
            f"gid {creds.gid}")


class _Described:
    """``describe(creds)``, made only if the line is logged (a refusal may be rate-limited away)."""

    __slots__ = ("creds",)

    def __init__(self, creds: PeerCredentials) -> None:
        self.creds = creds

    def __str__(self) -> str:
        return describe(self.creds)


def _paren(name: str | None) -> str:
    return f" ({name})" if name else ""


def _process_name(pid: int) -> str | None:
    try:  # best effort: hidden by ProtectProc=invisible for processes of other users
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None


_user_names: dict[int, str | None] = {}


def _user_name(uid: int) -> str | None:
    if uid not in _user_names:
        if len(_user_names) > 1000:
            _user_names.clear()
        try:
            _user_names[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _user_names[uid] = None
    return _user_names[uid]


# -- the relay ------------------------------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it reads is written to the other end."""

    __slots__ = ("conn", "other", "transport")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.transport: Any = None
        self.other: _Side | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        # The caller's side reads only once the other is connected; gRPC's side is linked before.
        self.other.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.conn.close(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close(self)

    def pause_writing(self) -> None:  # our peer does not keep up: stop taking from the other one
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _Connection:
    """A caller's connection and the relay's own connection to gRPC for it."""

    __slots__ = ("client", "closed", "creds", "listener", "name", "task", "upstream")

    def __init__(self, listener: LocalListener) -> None:
        self.listener = listener
        self.creds = _UNKNOWN  # read as the connection is accepted
        self.client: _Side = _ClientSide(self)
        self.upstream: _Side | None = None
        self.name: str | None = None  # gRPC's peer string for it, once bound
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def close(self, side: _Side | None = None, *, now: bool = False) -> None:
        """Close both ends: ``side`` (the one that ended, or failed) at once, the other once it has been
        given what was read from the first (a GOAWAY, say), or after CLOSE_GRACE at the latest; with
        ``now``, both at once. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.listener._forget(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        loop = asyncio.get_running_loop()
        for end in (self.client, self.upstream):
            if end is None or end.transport is None:
                continue
            if now or end is side:
                end.transport.abort()
            else:
                end.transport.close()
                loop.call_later(CLOSE_GRACE, end.transport.abort)


class _ClientSide(_Side):
    """The caller's end: made by the public socket's server, one per accepted connection."""

    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.listener._accepted(self.conn, transport)


class LocalListener:
    """The public unix socket of ``[listen] address`` and its relay to gRPC (module docstring)."""

    def __init__(self, path: Path, mode: int, max_connections: int, *, worker: int | None = None,
                 public: socket.socket | None = None) -> None:
        """``worker``, ``public``: signer worker N accepting on the public socket its supervisor made
        (signer.workers), which also owns the private directory; gRPC listens on ``grpc-<N>.sock``."""
        self.path = path
        self.mode = mode
        self.max_connections = max_connections
        self.private_dir = private_dir_for(path)
        self.upstream_path = upstream_socket_for(path, worker)
        self._public = public
        self._prefix = relay_prefix(worker)
        self._server: asyncio.AbstractServer | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the public socket we made
        self._prepared = False  # the private directory is ours to remove
        self._connections: set[_Connection] = set()
        self._callers: dict[str, PeerCredentials] = {}  # gRPC peer string -> credentials
        self._names = itertools.count(1)
        self._logged: set[tuple[int, int]] = set()
        self._refusals = RateLimitedLog(log, REFUSAL_LOG_INTERVAL, time.monotonic)

    @property
    def upstream_address(self) -> str:
        """What gRPC listens on (``server.add_insecure_port``)."""
        return f"unix:{self.upstream_path}"

    def prepare(self) -> None:
        """Before gRPC binds: a fresh private directory, mode 0700 (a worker's is its supervisor's: only
        a socket of its own left by a worker that died goes). Raises OSError or ValueError."""
        if self._public is not None:
            unlink_quietly(self.upstream_path)
            return
        make_private_dir(self.private_dir)
        self._prepared = True

    async def start(self) -> None:
        """After gRPC listens: bind the public socket (``mode``; never wider, even for an instant) and
        accept. Raises OSError."""
        loop = asyncio.get_running_loop()
        if self._public is not None:  # a worker: the supervisor's socket, shared by every worker
            self._public.setblocking(False)
            self._server = await loop.create_unix_server(lambda: _Connection(self).client, sock=self._public)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_stale_socket(self.path)
            with created_with_mode(self.path, self.mode):
                sock.bind(str(self.path))
            st = os.lstat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            sock.listen(128)
            sock.setblocking(False)
            self._server = await loop.create_unix_server(lambda: _Connection(self).client, sock=sock)
        except BaseException:
            sock.close()
            raise

    def lookup(self, peer: str) -> PeerCredentials | None:
        """The credentials of the caller behind the relay connection gRPC names ``peer``."""
        return self._callers.get(peer)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """After gRPC has stopped: close what is left, remove the sockets and the private directory."""
        self.stop_accepting()
        for conn in list(self._connections):
            conn.close(now=True)
        self._callers.clear()
        if self._bound is not None:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.path)
            except OSError:
                pass
            self._bound = None
        if self._prepared:
            remove_private_dir(self.private_dir)
            self._prepared = False
        elif self._public is not None:
            unlink_quietly(self.upstream_path)

    # -- per connection --

    def _accepted(self, conn: _Connection, transport: Any) -> None:
        try:
            conn.creds = creds = peer_credentials(transport.get_extra_info("socket"))
        except OSError as e:
            log.warning("closed a connection on unix:%s: cannot read its peer credentials: %s", self.path, e)
            transport.abort()
            return
        if len(self._connections) >= self.max_connections:
            self._refusals.log(logging.WARNING, "limit",
                               "refused a connection on unix:%s from %s: %d connections are open "
                               "(listen.max_socket_connections)", self.path, _Described(creds),
                               len(self._connections))
            transport.abort()
            return
        self._connections.add(conn)
        key = (creds.pid, creds.uid)
        if key not in self._logged and len(self._logged) < MAX_LOGGED_CALLERS:
            self._logged.add(key)
            log.info("local caller %s connected on unix:%s", describe(creds), self.path)
        transport.pause_reading()  # until the connection to gRPC is up
        conn.task = asyncio.get_running_loop().create_task(self._connect_upstream(conn))

    async def _connect_upstream(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        name = None
        upstream = _Side(conn)
        # Linked before anything can be read: gRPC speaks first (its SETTINGS) as soon as it accepts.
        upstream.other, conn.client.other = conn.client, upstream
        try:
            sock.setblocking(False)
            name = self._bind_name(sock)
            conn.name = f"unix:{name}"
            self._callers[conn.name] = conn.creds  # before gRPC can see a call on it
            await loop.sock_connect(sock, str(self.upstream_path))
            os.unlink(name)  # the socket keeps its address (gRPC's peer); the file is no longer needed
            name = None
            await loop.create_unix_connection(lambda: upstream, sock=sock)
        except asyncio.CancelledError:  # the caller went away first
            sock.close()
            raise
        except OSError as e:
            sock.close()
            log.warning("closed the connection of local caller %s: cannot reach gRPC on %s: %s",
                        describe(conn.creds), self.upstream_path, e.strerror or e)
            conn.close()
            return
        finally:
            if name is not None:
                unlink_quietly(name)
        if conn.closed:  # the caller went away as the connection was made
            upstream.transport.abort()
            return
        conn.upstream = upstream
        conn.client.transport.resume_reading()

    def _bind_name(self, sock: socket.socket) -> str:
        """Bind ``sock`` to the next unused name in the private directory; returns it."""
        for _ in range(100):
            name = str(self.private_dir / f"{self._prefix}{next(self._names):x}")
            try:
                sock.bind(name)
                return name
            except OSError as e:
                if e.errno != errno.EADDRINUSE:  # a name left by a crashed run is skipped
                    raise
        raise OSError(errno.EADDRINUSE, f"no free name in {self.private_dir}")

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if conn.name is not None:
            # Not at once: gRPC may still start a call it had read before the close (names are never
            # reused, so a late entry cannot be mistaken for another connection's).
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._callers.pop, conn.name, None)


_UNKNOWN = PeerCredentials(-1, -1, -1)  # a connection whose credentials are not read yet


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a process that is gone (signer.startup checked that nobody listens)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


# -- the interceptor ----------------------------------------------------------------------------------


class LocalCallerInterceptor(AdmittingInterceptor):
    """Runs every call with its unix-socket caller's credentials (``caller()``); refuses a call whose
    peer is not a connection the relay made."""

    def __init__(self, listener: LocalListener) -> None:
        self.listener = listener
        self._refusals = RateLimitedLog(log, REFUSAL_LOG_INTERVAL, time.monotonic)

    async def admit(self, context: Any, method: str) -> None:
        peer = context.peer()
        creds = self.listener.lookup(peer)
        if creds is None:
            self._refusals.log(logging.WARNING, "unknown", "refused %s from %s: not a connection relayed from "
                               "unix:%s (something reached gRPC's private socket directly)", method, peer,
                               self.listener.path)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"call through unix:{self.listener.path}")
        _caller.set(creds)
