"""The OCSP request pipeline: a DER request in, an ``Answer`` value out (never HTTP bytes).

Per request:

    key (the DER request: POST body / GET path decoded) -> ``cached`` hit? -> the entry at once
    miss: decode_request -> ``serving_ca`` (hash allowed, issuer served, one CA) -> that CA's status
          snapshot -> signer Sign (typed fields) -> cache store (no nonce) -> Answer

Any ``OCSPError`` becomes an ``Answer`` carrying its status and the unsigned OCSP error response;
anything else becomes internalError with a logged traceback. frontend.http_answer turns an Answer
(or a cache entry) into HTTP bytes; frontend.http_app routes requests here. This module imports
neither: what a cacheable answer is stored with (its fixed HTTP header lines, so a cache hit costs no
formatting) is made by the ``stored_headers`` function the wiring passes in
(frontend.http_answer.static_headers; a test checks that loading this module loads no HTTP code).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from frontend.cache import Entry, ResponseCache
from frontend.config import ListenConfig
from frontend.signer_client import SignResult
from shared.clock import Clock, SystemClock
from shared.ocsp.certid import IssuerIndex
from shared.ocsp.errors import InternalError, OCSPError, TryLater, Unauthorized
from shared.ocsp.request import decode_request
from shared.ocsp.response import error_response
from shared.ocsp.types import CertId, HashAlgorithm, IssuerKey, ParsedRequest, ResponseStatus, SingleStatus
from shared.ratelog import RateLimitedLog
from shared.status.base import FileStatusSource

log = logging.getLogger("frontend.server")

ERROR_LOG_INTERVAL = 10.0  # seconds between two log lines about tryLater / internalError answers


@dataclass(frozen=True, slots=True)
class Answer:
    """What the pipeline answers: the DER OCSPResponse, its status, and for a cacheable (nonce-less,
    signed) answer its nextUpdate (epoch seconds, for max-age) and the header lines stored with it."""

    der: bytes
    status: ResponseStatus = ResponseStatus.SUCCESSFUL
    next_update: int | None = None  # None: not cacheable (a nonce, or an error)
    headers: bytes = b""  # what ``stored_headers`` made of it, when cacheable

    @staticmethod
    def error(status: ResponseStatus) -> Answer:
        return Answer(error_response(status), status)


class Signer(Protocol):
    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult: ...


# (DER OCSPResponse, thisUpdate, nextUpdate in epoch seconds) -> what the cache stores beside it.
StoredHeaders = Callable[[bytes, int, int], bytes]


class CaEntry:
    """One configured CA as the server sees it: its name and its status source."""

    __slots__ = ("name", "source")

    def __init__(self, name: str, source: FileStatusSource) -> None:
        self.name = name
        self.source = source


# -- which CA a request is for: the checks, composed in serving_ca ------------------------------------


def check_hash(cid: CertId, allowed: frozenset[HashAlgorithm]) -> None:
    """listen.allowed_hashes: a CertID hashed otherwise is unauthorized."""
    if cid.hash_algorithm not in allowed:
        raise Unauthorized(f"CertID hash {cid.hash_algorithm.value} is not served")


def issuer_of(cid: CertId, issuers: IssuerIndex[CaEntry]) -> CaEntry:
    """The served CA a CertID names (by name and key hash); unauthorized when none."""
    found = issuers.get(IssuerKey.of(cid))
    if found is None:
        raise Unauthorized("CertID names an issuer this responder does not serve")
    return found


def same_ca(ca: CaEntry | None, found: CaEntry) -> CaEntry:
    """One request, one CA: the first CertID's CA, unless a later one names another (unauthorized)."""
    if ca is not None and found is not ca:
        raise Unauthorized(f"one request names two CAs ({ca.name}, {found.name})")
    return found


def serving_ca(request: ParsedRequest, issuers: IssuerIndex[CaEntry],
               allowed: frozenset[HashAlgorithm]) -> CaEntry:
    """The one CA answering ``request``; every CertID is checked in order, the first fault raised."""
    ca: CaEntry | None = None
    for cid in request.cert_ids:
        check_hash(cid, allowed)
        ca = same_ca(ca, issuer_of(cid, issuers))
    assert ca is not None  # decode_request rejects an empty requestList
    return ca


# -- the OCSP pipeline -----------------------------------------------------------------------------------


class _Flight:
    """A signature in progress that identical requests may wait for instead of signing again."""

    __slots__ = ("ca", "future")

    def __init__(self, future: asyncio.Future[Answer]) -> None:
        self.future = future
        self.ca: str | None = None  # set once the request is decoded


class OcspApp:
    """HTTP-free request handling: DER in, a cache ``Entry`` (``cached``) or an ``Answer`` out."""

    def __init__(self, *, issuers: IssuerIndex[CaEntry], signer: Signer, cache: ResponseCache,
                 listen: ListenConfig, stored_headers: StoredHeaders, clock: Clock | None = None) -> None:
        self.issuers = issuers
        self.signer = signer
        self.cache = cache
        self.listen = listen
        self.clock = clock or SystemClock()
        self.stored_headers = stored_headers
        self.allowed_hashes = frozenset(listen.allowed_hashes)
        self.max_age_cap = int(cache.max_age)
        self.cached = cache.get  # type: ignore[method-assign]
        self._inflight: dict[bytes, _Flight] = {}
        self._ratelog = RateLimitedLog(log, ERROR_LOG_INTERVAL, time.monotonic)
        for ca in issuers.values():
            ca.source.on_change(self._source_changed)

    def _source_changed(self, source: FileStatusSource) -> None:
        self.cache.invalidate(source.name)
        # Signatures in flight for this CA were made from the old data: requests arriving from
        # now on must not join them, they start their own.
        for key in [k for k, f in self._inflight.items() if f.ca == source.name]:
            del self._inflight[key]

    def cached(self, key: bytes, now: float) -> Entry | None:
        """The cached answer for the DER request ``key`` (no ASN.1 parsing), or None. (Replaced per
        instance by the cache's own ``get``: the hit path pays no extra call.)"""
        return self.cache.get(key, now)

    async def answer(self, der: bytes, key: bytes | None) -> Answer:
        """Answer one request; concurrent identical nonce-less requests share one signature, as long
        as the CA's status data has not been reloaded since that signature was started."""
        if key is None:
            return await self._answer(der, None)
        flight = self._inflight.get(key)
        if flight is not None:
            fut = flight.future
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and task is not None and not task.cancelling():
                    # The request we waited on was abandoned (its client went away): do our own.
                    return await self._answer(der, None)
                raise
        flight = _Flight(asyncio.get_running_loop().create_future())
        self._inflight[key] = flight
        fut = flight.future
        try:
            result = await self._answer(der, key, flight)
            fut.set_result(result)
            return result
        finally:
            # Only cancellation leaves without a result (_answer catches everything else).
            if not fut.done():
                fut.cancel()
            self._unshare(key, flight)

    def _unshare(self, key: bytes, flight: _Flight) -> None:
        """No later request joins ``flight`` (a reload may have put a newer one under ``key``)."""
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    async def _answer(self, der: bytes, key: bytes | None, flight: _Flight | None = None) -> Answer:
        try:
            return await self._answer_or_raise(der, key, flight)
        except OCSPError as e:
            if isinstance(e, TryLater):
                self._ratelog.log(logging.WARNING, "trylater", "answering tryLater: %s", e)
            elif isinstance(e, InternalError):
                self._ratelog.log(logging.ERROR, "internal", "answering internalError: %s", e)
            else:
                log.debug("answering %s: %s", e.status.name, e)
            return Answer.error(e.status)
        except Exception:
            log.exception("unexpected error answering a request")
            return Answer.error(ResponseStatus.INTERNAL_ERROR)

    async def _answer_or_raise(self, der: bytes, key: bytes | None, flight: _Flight | None = None) -> Answer:
        request = decode_request(der, max_cert_ids=self.listen.max_cert_ids)
        ca = serving_ca(request, self.issuers, self.allowed_hashes)
        if flight is not None and key is not None:
            # Everything up to the Sign call runs without yielding, so no request has joined yet.
            if request.nonce is not None:
                self._unshare(key, flight)  # each nonce-bearing request gets its own signature
            else:
                flight.ca = ca.name  # a reload of this CA's data detaches it (_source_changed)
        source = ca.source
        generation = source.generation
        snapshot = source.current()
        now = self.clock.now()
        this_update, next_update = snapshot.window(now)
        statuses = []
        for cid in request.cert_ids:
            info = snapshot.status(cid.serial_int)
            statuses.append(SingleStatus(cert_id=cid, status=info.status, this_update=this_update,
                                         next_update=next_update, revocation=info.revocation))
        result = await self.signer.sign(statuses, request.nonce)
        body = result.der
        # Every reply, nonce or not, tells which responder generation signs for this CA now.
        self.cache.note_generation(ca.name, result.generation, signer=result.signer)
        if request.nonce is not None:
            return Answer(body)
        tu, nu = int(this_update.timestamp()), int(next_update.timestamp())
        static = self.stored_headers(body, tu, nu)
        if key is not None and source.generation == generation:
            self.cache.put(key, body, static, ca=ca.name, this_update=tu, next_update=nu,
                           generation=result.generation, signer=result.signer)
        return Answer(body, next_update=nu, headers=static)


def build_issuers(cas: Iterable[tuple[bytes, CaEntry]]) -> IssuerIndex[CaEntry]:
    index: IssuerIndex[CaEntry] = IssuerIndex()
    for der, entry in cas:
        index.add(der, entry)
    return index
