"""The Admin gRPC service (Rotate) and who may call it.

Admin RPCs are allowed

- on the admin unix socket (``[admin] socket``), a separate grpc.aio server created with mode 0600
  (or 0660): the file permissions decide who may connect, and nothing else is served there;
- on the main listener, only to a verified mTLS client identity listed in ``[admin] allowed_clients``.
  Everyone else (the frontend's identity, plaintext TCP or unix callers) gets PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from shared.clock import Clock
from shared.config import ConfigError
from shared.ratelog import RateLimitedLog
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.audit_space import AuditSpace
from signer.config import AdminConfig, SignerConfig
from signer.responder_state import ResponderState
from signer.rotation import RotationError, Rotator
from signer.status_verify import StatusVerifier
from signer.token import Token, TokenError
from signer.unix_socket import created_with_mode

if TYPE_CHECKING:
    from signer.metrics import SigningCounts

log = logging.getLogger("ocsp-signer")
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about refused Admin calls

Identity = Callable[[grpc.aio.ServicerContext], Iterable[str]]


def tls_identities(context: grpc.aio.ServicerContext) -> tuple[str, ...]:
    """The identities (``cn:NAME``, ``dns:NAME``, ... as in shared.tls) of the caller's verified client
    certificate; empty without mTLS. gRPC core has verified the chain before Python sees it."""
    from signer.tls import peer_certificate

    peer = peer_certificate(context)
    return peer.identities() if peer is not None else ()


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, rotator: Rotator, *, trusted: bool, allowed_clients: Iterable[str] = (),
                 identity: Identity = tls_identities) -> None:
        self.rotator = rotator
        self.trusted = trusted  # the admin unix socket: its file mode already decided
        self.allowed = frozenset(allowed_clients)
        self.identity = identity
        # A caller retrying in a loop gets one line a minute, with a count, not one per call.
        self._refusals = RateLimitedLog(log, REFUSAL_LOG_INTERVAL, time.monotonic)

    def _who(self, context: grpc.aio.ServicerContext) -> str | None:
        """Who may act, for the log; None when the caller is not an admin."""
        if self.trusted:
            return "admin socket"
        if not self.allowed:
            return None
        hit = next((i for i in self.identity(context) if i in self.allowed), None)
        return f"client {hit}" if hit is not None else None

    async def Rotate(self, request: pb.RotateRequest, context: grpc.aio.ServicerContext) -> pb.RotateReply:
        who = self._who(context)
        if who is None:
            self._refusals.log(logging.WARNING, "Rotate", "Admin Rotate refused: caller %s is not an admin",
                               context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "Admin RPCs need the admin socket or a client identity in [admin] allowed_clients")
        log.info("Admin Rotate for CA %r from %s (key label %r)", request.ca, who,
                 request.key_label or "unchanged")
        try:
            result = await self.rotator.rotate(request.ca, bytes(request.certificate), request.key_label)
        except RotationError as e:
            await context.abort(e.code, e.message)
        except TokenError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"token not available: {e}")
        r = result.responder
        return pb.RotateReply(generation=r.generation, responder_fingerprint=r.fingerprint, key_label=r.key_label,
                              notes=list(result.notes))


async def start_admin_socket(config: AdminConfig, rotator: Rotator) -> grpc.aio.Server | None:
    """Serve Admin alone on ``config.socket`` (mode ``config.socket_mode``); None when not configured."""
    if config.socket is None:
        return None
    path: Path = config.socket
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_AdminServicer_to_server(AdminService(rotator, trusted=True), server)
    with created_with_mode(path, config.socket_mode):  # never wider than 0600 before the chmod
        server.add_insecure_port(f"unix:{path}")
        await server.start()
    log.info("Admin RPCs on unix:%s (mode %04o)", path, config.socket_mode)
    return server


class AdminPlane:
    """The signer's admin plane, wired by ``signer.service.serve``: the Rotator (which swaps the
    ``ResponderState`` the Signer service reads), Admin on the main listener (identity-checked) and on
    the admin socket, SIGHUP reloads, metrics."""

    def __init__(self, rotator: Rotator, state: ResponderState, audit_space: AuditSpace | None,
                 config: SignerConfig) -> None:
        self.rotator = rotator
        self.state = state
        self.audit_space = audit_space  # the metrics report it
        self.verifier: StatusVerifier | None = None  # set by serve(); the metrics count its refusals
        self.service: SigningCounts | None = None  # set by serve(); the metrics read its counts
        self.config = config
        self.admin_server: grpc.aio.Server | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self._reloads: set[asyncio.Task[bool]] = set()

    @classmethod
    def attach(cls, server: grpc.aio.Server, state: ResponderState, audit_space: AuditSpace | None,
               config: SignerConfig, token: Token, executor: Executor, clock: Clock) -> AdminPlane:
        """Before ``server.start()``: make the Rotator and add Admin to the main listener."""
        rotator = Rotator(state=state, config=config, token=token, executor=executor, clock=clock)
        pb_grpc.add_AdminServicer_to_server(
            AdminService(rotator, trusted=False, allowed_clients=config.admin.allowed_clients), server)
        return cls(rotator, state, audit_space, config)

    def metrics_text(self) -> str:
        """This process's exposition (a signer worker sends it to its supervisor: signer.worker_link)."""
        from signer.metrics import render

        return render(self.state, self.rotator, self.audit_space, self.verifier, self.service)

    async def start(self) -> None:
        """After ``server.start()``: admin socket, metrics, expiry checks. Raises ConfigError."""
        try:
            self.admin_server = await start_admin_socket(self.config.admin, self.rotator)
        except (RuntimeError, OSError) as e:
            raise ConfigError(self.config.file, "admin.socket", f"cannot listen on {self.config.admin.socket}: "
                                                                f"{e}") from None
        if self.config.metrics.address is not None:
            from signer.metrics import start_metrics

            try:
                self.metrics_server = await start_metrics(self.config.metrics.address, self.state, self.rotator,
                                                         self.audit_space, self.verifier, self.service)
            except OSError as e:
                raise ConfigError(self.config.file, "metrics.address",
                                  f"cannot listen on {self.config.metrics.address}: {e.strerror or e}") from None
        self.rotator.start()

    def on_sighup(self) -> None:
        log.info("SIGHUP: re-reading %s and the ca.d [responder] tables", self.config.file)
        task = asyncio.get_running_loop().create_task(self.rotator.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def stop(self) -> None:
        """Before the main server stops (after ``ResponderState.close`` ended the Watch streams): stop
        the expiry checks, the admin socket and metrics."""
        self.rotator.close()
        if self.admin_server is not None:
            await self.admin_server.stop(1.0)
        await self.rotator.drain()  # a rotation whose RPC was cancelled still finishes its swap
        if self.metrics_server is not None:
            self.metrics_server.close()
        for t in list(self._reloads):
            t.cancel()
