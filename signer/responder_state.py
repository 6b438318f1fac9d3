"""The signer's current responders, and who is told when they change.

``ResponderState`` holds the current immutable ``ResponderSet``. The Signer RPCs read ``current`` once
each, so a signature in flight finishes with the responder (key label, certificate, generation) it
started with; ``swap`` replaces it in one reference assignment (signer.rotation decides when) and then
pushes the new state to every Watch stream. Nothing here checks a responder or touches the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from shared.rpc import signer_pb2 as pb
from signer.responders import ResponderSet

log = logging.getLogger("ocsp-signer")

TIME_FMT = "%Y-%m-%dT%H:%M:%SZ"


class WatchersFull(Exception):
    """Watch refused: ``[listen] max_watchers`` streams are open already (the caller gets RESOURCE_EXHAUSTED)."""


class ResponderState:
    """The current ``ResponderSet`` (``current``, replaced by ``swap``) and the Watch fan-out (at most
    ``max_watchers`` streams)."""

    def __init__(self, responders: ResponderSet, *, max_watchers: int) -> None:
        self._current = responders
        self._watchers: set[asyncio.Queue[pb.ResponderState | None]] = set()
        self.max_watchers = max_watchers
        self.watchers_refused = 0  # Watch calls refused at the cap (metrics)
        self._closed = False

    @property
    def current(self) -> ResponderSet:
        """The set in force now; read it once per RPC."""
        return self._current

    def swap(self, new_set: ResponderSet, why: str) -> None:
        """Make ``new_set`` current (one reference assignment), log each responder that changed, tell
        every Watch stream."""
        old = {r.name: r for r in self._current}
        self._current = new_set  # the switch: one reference assignment
        for r in new_set:
            o = old.get(r.name)
            if o is not None and o is r:
                continue
            log.info("%s: CA %r now signs with responder generation %d (was %s): key %r, certificate "
                     "SHA-256 %s, valid %s to %s", why, r.name, r.generation,
                     o.generation if o is not None else "none", r.key_label, r.fingerprint,
                     f"{r.not_before:{TIME_FMT}}", f"{r.not_after:{TIME_FMT}}")
        self._notify()

    # -- Watch ---------------------------------------------------------------------------------------------
    def state(self) -> pb.ResponderState:
        rs = self._current
        return pb.ResponderState(generation=rs.generation, issuers=[
            pb.IssuerGeneration(name=r.name, issuer_sha256=hashlib.sha256(r.issuer_cert).digest(),
                                generation=r.generation, responder_fingerprint=r.fingerprint)
            for r in rs])

    def _notify(self) -> None:
        state = self.state()
        for q in self._watchers:
            _replace(q, state)

    async def watch(self) -> AsyncIterator[pb.ResponderState]:
        """The current state, then the whole state after each change, until ``close()``. Raises
        WatchersFull (before yielding anything) while ``max_watchers`` streams are open: each holds a
        call slot, a connection and its buffers for as long as it lasts."""
        q: asyncio.Queue[pb.ResponderState | None] = asyncio.Queue(maxsize=1)
        if self._closed:
            return
        if len(self._watchers) >= self.max_watchers:
            self.watchers_refused += 1
            raise WatchersFull(f"{len(self._watchers)} Watch streams are open, the most this signer allows "
                               "([listen] max_watchers); SignReply generations still arrive")
        self._watchers.add(q)
        try:
            yield self.state()
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item
        finally:
            self._watchers.discard(q)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def close(self) -> None:
        """End every Watch stream (the signer is stopping); later Watch calls end at once."""
        self._closed = True
        for q in self._watchers:
            _replace(q, None)


def _replace(q: asyncio.Queue[Any], item: Any) -> None:
    """Put ``item``, dropping an undelivered older state: each state is complete, the latest suffices."""
    while True:
        try:
            q.put_nowait(item)
            return
        except asyncio.QueueFull:
            try:
                q.get_nowait()
            except asyncio.QueueEmpty:
                pass
