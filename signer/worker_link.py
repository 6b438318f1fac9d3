"""A signer worker's side of the control channel (signer.control, signer.workers).

With ``[signer] workers`` > 1 every change of the responders is decided by the supervisor, so that
every worker switches or none does, at one generation the supervisor counts:

- an Admin Rotate that reaches this worker (on its main listener, or on the admin socket worker 0
  serves) is not done here: ``forward_rotation`` sends it to the supervisor, which runs it on every
  worker and returns what the caller is told;
- the supervisor's ``prepare_rotation`` / ``prepare_reload`` run every check of the change in this
  worker (its own token session: the key is there, the certificate pairs with it, a probe signature
  verifies) and keep the result, holding the Rotator's lock; ``persist`` (one worker) writes the
  files; ``commit`` swaps the kept result in, ``abort`` drops it;
- ``reload_status``: the SIGHUP re-read of the signer's own status data (each worker has its copy).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from signer.control import ControlChannel, ControlClosed, Message, refusal
from signer.responders import ResponderSet
from signer.rotation import ReloadPlan, RotateResult, RotationError, RotationPlan, Rotator
from signer.status_verify import StatusVerifier
from signer.token import TokenError

log = logging.getLogger("ocsp-signer")

ROTATE_TIMEOUT = 120.0  # seconds a forwarded rotation may take (every worker checks the candidate)


def responders(responder_set: ResponderSet) -> dict[str, list[Any]]:
    """CA name -> [SHA-256 of its responder certificate, its generation]: what every worker must agree
    on."""
    return {r.name: [r.fingerprint, r.generation] for r in responder_set}


class WorkerLink:
    """Answers the supervisor's requests for one worker, and forwards its Admin rotations."""

    def __init__(self, channel: ControlChannel, rotator: Rotator, verifier: StatusVerifier | None,
                 number: int) -> None:
        self.channel = channel
        self.rotator = rotator
        self.verifier = verifier
        self.number = number
        self._open: dict[int, RotationPlan | ReloadPlan | None] = {}  # txn -> what commit swaps in
        self._aborted: set[int] = set()  # aborted before their prepare finished (the supervisor timed out)
        self.metrics: Callable[[], str] | None = None  # this worker's exposition (set by serve)
        channel.handler = self.handle
        rotator.coordinator = self.forward_rotation

    # -- Admin Rotate on this worker --------------------------------------------------------------------
    async def forward_rotation(self, ca_name: str, cert_data: bytes, key_label: str) -> RotateResult:
        try:
            reply = await self.channel.request("rotate", ROTATE_TIMEOUT, ca=ca_name, key_label=key_label,
                                               cert=base64.b64encode(cert_data).decode())
        except (ControlClosed, TimeoutError) as e:
            raise RotationError(grpc.StatusCode.UNAVAILABLE,
                                f"the signer's supervisor did not complete the rotation: {e or 'timed out'}") from None
        if not reply.get("ok"):
            raise RotationError(_code(reply.get("code")), str(reply.get("message", "refused")))
        responder = next((r for r in self.rotator.state.current if r.name == ca_name), None)
        if responder is None or responder.generation != reply.get("generation"):
            raise RotationError(grpc.StatusCode.UNAVAILABLE, "the rotation was committed, but this worker did "
                                                             "not switch with the others")
        return RotateResult(responder, tuple(reply.get("notes", ())))

    # -- the supervisor's requests ----------------------------------------------------------------------
    async def handle(self, message: Message) -> Message:
        op = message.get("op")
        if op == "prepare_rotation":
            return await self._prepare_rotation(message)
        if op == "prepare_reload":
            return await self._prepare_reload(message)
        if op == "persist":
            return await self._persist(message)
        if op == "commit":
            return self._commit(message)
        if op == "abort":
            return self._abort(message)
        if op == "metrics":
            if self.metrics is None:
                return refusal("UNIMPLEMENTED", "no metrics in this worker")
            return {"ok": True, "text": self.metrics()}
        if op == "reload_status":
            if self.verifier is not None:
                await self.verifier.reload()
            return {"ok": True}
        return refusal("UNIMPLEMENTED", f"unknown control request {op!r}")

    async def _hold(self, txn: int) -> Message | None:
        if txn in self._open:
            return refusal("INTERNAL", f"transaction {txn} is open already")
        try:
            await asyncio.wait_for(self.rotator.lock.acquire(), ROTATE_TIMEOUT)
        except TimeoutError:
            return refusal("UNAVAILABLE", "another change of the responders is under way in this worker")
        return None

    async def _prepare(self, txn: int, checks: Callable[[], Awaitable[Any]]) -> Message | None:
        """Hold the Rotator's lock and run ``checks`` (a change's every check); keep its result under
        ``txn`` for the commit, the lock still held. A refusal (the lock released), or None."""
        busy = await self._hold(txn)
        if busy is not None:
            return busy
        try:
            plan = await checks()
        except RotationError as e:
            self.rotator.lock.release()
            return refusal(e.code.name, e.message)
        except TokenError as e:
            self.rotator.lock.release()
            return refusal("UNAVAILABLE", f"token not available: {e}")
        except BaseException:
            self.rotator.lock.release()
            raise
        if self._dropped(txn):
            return refusal("ABORTED", "aborted by the supervisor before the checks finished")
        self._open[txn] = plan
        return None

    async def _prepare_rotation(self, message: Message) -> Message:
        txn = int(message["txn"])
        refused = await self._prepare(txn, lambda: self.rotator.prepare_rotation(
            str(message["ca"]), base64.b64decode(message["cert"]), str(message.get("key_label", "")),
            int(message["generation"])))
        if refused is not None:
            return refused
        plan = self._open[txn]
        assert isinstance(plan, RotationPlan)
        return {"ok": True, "fingerprint": plan.responder.fingerprint, "key_label": plan.responder.key_label}

    async def _prepare_reload(self, message: Message) -> Message:
        txn = int(message["txn"])
        refused = await self._prepare(txn, lambda: self.rotator.plan_reload(int(message["generation"])))
        if refused is not None:
            return refused
        plan = self._open[txn]
        if plan is None:
            return {"ok": True, "changed": [], "removed": []}
        assert isinstance(plan, ReloadPlan)
        return {"ok": True, "changed": list(plan.changed), "removed": list(plan.removed),
                "responders": responders(plan.responders)}

    async def _persist(self, message: Message) -> Message:
        plan = self._open.get(int(message["txn"]))
        if not isinstance(plan, RotationPlan):
            return refusal("INTERNAL", "no rotation prepared under this transaction")
        try:
            notes = await asyncio.get_running_loop().run_in_executor(None, self.rotator.persist_rotation, plan)
        except RotationError as e:
            return refusal(e.code.name, e.message)
        return {"ok": True, "notes": notes}

    def _commit(self, message: Message) -> Message:
        txn = int(message["txn"])
        if txn not in self._open:
            return refusal("INTERNAL", "no change prepared under this transaction")
        plan = self._open.pop(txn)
        try:
            if isinstance(plan, RotationPlan):
                self.rotator.commit_rotation(plan, f"Admin RPC, every worker; worker {self.number}")
            elif plan is not None:
                self.rotator.commit_reload(plan)
        finally:
            self.rotator.lock.release()
        return {"ok": True, "responders": responders(self.rotator.state.current),
                "generation": self.rotator.state.current.generation}

    def _abort(self, message: Message) -> Message:
        txn = int(message["txn"])
        if txn in self._open:
            del self._open[txn]
            self.rotator.lock.release()
        else:  # its prepare may still be running: it drops its result when done
            self._aborted.add(txn)
        return {"ok": True}

    def _dropped(self, txn: int) -> bool:
        """After a prepare's checks: True (and the lock released) when the supervisor aborted it meanwhile."""
        if txn not in self._aborted:
            return False
        self._aborted.discard(txn)
        self.rotator.lock.release()
        return True


def _code(name: Any) -> grpc.StatusCode:
    return grpc.StatusCode.__members__.get(str(name), grpc.StatusCode.UNKNOWN)


@dataclass
class WorkerRole:
    """What makes a signer process worker ``number`` of a supervisor (signer.workers)."""

    number: int
    generation: int  # of the responder set it starts with: the supervisor's count
    control: ControlChannel
    # CA -> generation of its responder on the running workers (a restarted worker's must be the same,
    # or the frontend would take the one responder for a new one); CAs not listed get ``generation``.
    generations: dict[str, int] = field(default_factory=dict)
    public: socket.socket | None = None  # a unix: listen address: the supervisor's listening socket
