"""The signer's gRPC service: Sign, Responders, Health (grpc.aio).

Every PKCS#11 call runs in one dedicated thread (``pkcs11`` executor): python-pkcs11 initialises
the module without OS locking, so the token must never be entered by two threads at once, and a
second signing thread would not sign faster anyway. Parallelism comes from more processes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from shared.clock import Clock, SystemClock
from shared.config import ConfigError
from shared.ocsp.response import build_response_data, signed_response
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.config import SignerConfig
from signer.policy import Policy, PolicyError
from signer.responders import ResponderSet, load_responders
from signer.token import Pkcs11Token, Token, TokenError, read_pin

log = logging.getLogger("ocsp-signer")

SHUTDOWN_GRACE = 5.0  # seconds in-flight RPCs get to finish on SIGTERM/SIGINT
MAX_MESSAGE_BYTES = 1 << 20  # a SignRequest of 1000 statuses is ~200 KB


def open_token(config: SignerConfig) -> Pkcs11Token:
    """Read the PIN and log in. Blocking. Raises ConfigError naming the signer.toml key at fault."""
    t = config.token
    try:
        pin = read_pin(t.pin_file, t.pin_env)
    except TokenError as e:
        raise ConfigError(config.file, "token.pin_file" if t.pin_file else "token.pin_env", str(e)) from None
    try:
        return Pkcs11Token(t.module, pin=pin, token_label=t.label, token_serial=t.serial)
    except TokenError as e:
        msg = str(e)
        if "PIN" in msg:
            key = "token.pin_file" if t.pin_file else "token.pin_env"
        elif "module" in msg:
            key = "token.module"
        else:
            key = "token.label" if t.label is not None else "token.serial"
        raise ConfigError(config.file, key, msg) from None


class SignerService(pb_grpc.SignerServicer):
    def __init__(self, *, responders: ResponderSet, token: Token, policy: Policy, clock: Clock,
                 executor: ThreadPoolExecutor, token_name: str = "") -> None:
        # Replaced as a whole (rotation); each RPC reads it once.
        self.responders = responders
        self.token = token
        self.policy = policy
        self.clock = clock
        self.executor = executor
        self.token_name = token_name
        self.serving = True

    async def Sign(self, request: pb.SignRequest, context: grpc.aio.ServicerContext) -> pb.SignReply:
        code: grpc.StatusCode
        try:
            return await self._sign(request)
        except PolicyError as e:
            code, message = e.code, e.message
        except TokenError as e:
            log.error("token: %s", e)
            code, message = grpc.StatusCode.UNAVAILABLE, f"token not available: {e}"
        except Exception:
            log.exception("Sign failed (request_id %r)", request.request_id)
            code, message = grpc.StatusCode.INTERNAL, "internal error in the signer (logged)"
        await context.abort(code, message)
        raise AssertionError("unreachable")  # abort raises

    async def _sign(self, request: pb.SignRequest) -> pb.SignReply:
        if not self.serving:
            raise PolicyError(grpc.StatusCode.UNAVAILABLE, "the signer is shutting down")
        job = self.policy.check(request, self.responders)
        r = job.responder
        tbs = build_response_data(responder_id=r.responder_id, produced_at=self.clock.now(),
                                  statuses=job.statuses, nonce=job.nonce)
        loop = asyncio.get_running_loop()
        signature = await loop.run_in_executor(self.executor, self.token.sign, r.key_label, r.algorithm, tbs)
        der = signed_response(tbs, r.algorithm.value, signature, r.certs)
        # ---- AUDIT HOOK (next issue) -------------------------------------------------------------
        # Invariant: every signature is appended (and fsynced) to the audit log before the response
        # leaves the signer. Append (job.request_id, r.name, r.generation, tbs, signature) here and
        # raise PolicyError(FAILED_PRECONDITION, ...) if the append fails: fail closed, no reply.
        # -------------------------------------------------------------------------------------------
        return pb.SignReply(ocsp_response=der, generation=r.generation, responder_fingerprint=r.fingerprint)

    async def Responders(self, request: pb.RespondersRequest,
                         context: grpc.aio.ServicerContext) -> pb.RespondersReply:
        return pb.RespondersReply(responders=[
            pb.Responder(issuer_certificate=r.issuer_cert, responder_certificate=r.cert,
                         generation=r.generation, name=r.name)
            for r in self.responders])

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthReply:
        if not self.serving:
            return pb.HealthReply(serving=False, detail="shutting down")
        rs = self.responders
        detail = f"token {self.token_name!r} logged in, {len(rs)} responders, generation {rs.generation}"
        return pb.HealthReply(serving=True, detail=detail)


class SignerServer:
    """The running gRPC server with what it owns (token, executor). ``stop()`` releases all."""

    def __init__(self, server: grpc.aio.Server, service: SignerService, *, owns_token: bool) -> None:
        self.server = server
        self.service = service
        self._owns_token = owns_token

    async def stop(self, grace: float | None = SHUTDOWN_GRACE) -> None:
        self.service.serving = False
        await self.server.stop(grace)
        loop = asyncio.get_running_loop()
        if self._owns_token and isinstance(self.service.token, Pkcs11Token):
            await loop.run_in_executor(self.service.executor, self.service.token.close)
        self.service.executor.shutdown(wait=False)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _bound_address(config: SignerConfig, port: int) -> str:
    listen = config.listen
    if listen.kind == "unix":
        return listen.address
    host = f"[{listen.host}]" if listen.host and ":" in listen.host else listen.host
    return f"{host}:{port}"


async def serve(config: SignerConfig, *, token: Token | None = None,
                clock: Clock | None = None) -> tuple[SignerServer, str]:
    """Log in (unless given a token), load the responders, start listening.

    Returns the server and the address it is bound to (the real port when the config asked for 0).
    Raises ConfigError for anything the operator must fix; nothing is left running then.
    """
    clock = clock or SystemClock()
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11")
    owns_token = token is None
    try:
        if token is None:
            token = await loop.run_in_executor(executor, open_token, config)
        responders = await loop.run_in_executor(executor, load_responders, config, token)
    except BaseException:
        if owns_token and token is not None and isinstance(token, Pkcs11Token):
            token.close()
        executor.shutdown(wait=False)
        raise
    for r in responders:
        now = clock.now()
        if not r.not_before <= now <= r.not_after:
            log.warning("responder certificate of %r is not valid now (%s to %s); its requests will fail",
                        r.name, r.not_before, r.not_after)

    service = SignerService(responders=responders, token=token, policy=Policy(config.policy, clock),
                            clock=clock, executor=executor,
                            token_name=str(getattr(token, "label", "") or ""))
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    pb_grpc.add_SignerServicer_to_server(service, server)
    wrapper = SignerServer(server, service, owns_token=owns_token)
    try:
        port = server.add_insecure_port(config.listen.address)
    except RuntimeError as e:
        await wrapper.stop(None)
        raise ConfigError(config.file, "listen.address",
                          f"cannot listen on {config.listen.address}: {e}") from None
    if config.listen.kind == "tcp" and port == 0:
        await wrapper.stop(None)
        raise ConfigError(config.file, "listen.address", f"cannot listen on {config.listen.address}")
    await server.start()
    address = _bound_address(config, port)
    log.info("serving on %s: %d responders (%s), token %r", address, len(responders),
             ", ".join(f"{r.name}: {r.algorithm.value}" for r in responders), service.token_name)
    return wrapper, address


async def run(config: SignerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    server, address = await serve(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    received: list[Any] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stopping.wait()
    log.info("%s: stopping (grace %ss)", received[0].name, SHUTDOWN_GRACE)
    await server.stop(SHUTDOWN_GRACE)
    log.info("stopped")
