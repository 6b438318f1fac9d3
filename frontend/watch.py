"""Follow the signer's responder changes (Signer.Watch) and retire cached answers of replaced responders.

One task per signer address keeps a Watch stream open. Each event is the signer's whole state: for every
issuer, the generation of its current responder. The issuer is matched to our CA by the SHA-256 of the
CA certificate (both read the same ca.d files, but names may differ), and the cache is told
(``ResponseCache.set_generation``, with the responder's fingerprint), which drops answers of older
responders after ``rotation_grace`` and refuses shared answers (frontend.answer_store) of replaced ones.

The stream reconnects by itself: when the signer restarts or the connection breaks, the task waits a
short backoff (0.2 s doubling to 2 s) and calls Watch again; the first event after a reconnect is the
full state, so nothing is missed. SignReply.generation covers the gaps in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable

import grpc
from grpc import aio

from frontend.cache import ResponseCache
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc
from shared.tasks import cancel_all

log = logging.getLogger("frontend.watch")

MIN_BACKOFF = 0.2
MAX_BACKOFF = 2.0
UNIMPLEMENTED_BACKOFF = 60.0  # an older signer without Watch: replies still carry the generation


class ResponderWatch:
    def __init__(self, channels: Iterable[tuple[str, aio.Channel]], cache: ResponseCache,
                 cas: Iterable[tuple[str, bytes]]) -> None:
        """``cas``: (name, CA certificate DER) of every CA this frontend serves."""
        self.channels = list(channels)
        self.cache = cache
        self.by_issuer = {hashlib.sha256(der).digest(): name for name, der in cas}
        self.events = 0  # states received (tests wait on this)
        # Called with (CA name, responder fingerprint, signer address) for every CA of every state
        # (frontend.refresher.Refresher.note_responder).
        self.listeners: list[Callable[[str, str, str], None]] = []
        self.connected: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(address, channel), name=f"watch-signer-{address}")
                       for address, channel in self.channels]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    def apply(self, state: pb.ResponderState, address: str = "") -> None:
        for issuer in state.issuers:
            name = self.by_issuer.get(bytes(issuer.issuer_sha256))
            if name is None:
                continue  # a CA the signer serves and we do not
            old = self.cache.generation(name, signer=address)
            self.cache.set_generation(name, issuer.generation, signer=address,
                                      fingerprint=issuer.responder_fingerprint)
            if old is not None and old != issuer.generation:
                log.info("signer: CA %s now signs with responder generation %d (was %d, certificate SHA-256 "
                         "%s); cached answers of the old responder go within %ss", name, issuer.generation, old,
                         issuer.responder_fingerprint, self.cache.rotation_grace)
            for listener in self.listeners:
                listener(name, issuer.responder_fingerprint, address)
        self.events += 1

    async def _follow(self, address: str, channel: aio.Channel) -> None:
        stub = signer_pb2_grpc.SignerStub(channel)
        backoff = MIN_BACKOFF
        lost_logged = False
        while True:
            try:
                call = stub.Watch(pb.WatchRequest(), wait_for_ready=True)
                async for state in call:
                    if address not in self.connected:
                        self.connected.add(address)
                        log.info("watching responder changes on the signer at %s", address)
                        lost_logged = False
                    backoff = MIN_BACKOFF
                    self.apply(state, address)
                self.connected.discard(address)  # the signer ended the stream (it is stopping)
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as e:
                self.connected.discard(address)
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("the signer at %s has no Watch RPC; relying on SignReply generations", address)
                    await asyncio.sleep(UNIMPLEMENTED_BACKOFF)
                    continue
                if not lost_logged:
                    detail = e.details() if hasattr(e, "details") else None
                    log.warning("responder watch on %s interrupted (%s%s); reconnecting", address,
                                code.name if code else e, f": {detail}" if detail else "")
                    lost_logged = True
            except Exception:
                self.connected.discard(address)
                log.exception("responder watch on %s failed; reconnecting", address)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
