"""The OCSP request pipeline: a DER request in, an ``Answer`` value out (never HTTP bytes).

Per request:

    the DER request (POST body / GET path decoded) -> ``cached``: a spelling seen before? -> its entry
    else: decode_request -> ``serving_ca`` (hash allowed, issuer served, one CA) -> a nonce: sign, done
          -> the AnswerKey (CA + CertIDs) -> the cache's entry (the DER linked to it for next time)
          -> a signature in flight for it? join it
          -> one CertID and a store: the shared answer (frontend.answer_store), if it still answers
             (not expired, the same status as our data, an acceptable responder) -> cache -> Answer
          -> that CA's status snapshot -> signer Sign (typed fields) -> cache and store -> Answer

Any ``OCSPError`` becomes an ``Answer`` carrying its status and the unsigned OCSP error response;
anything else becomes internalError with a logged traceback. frontend.http_answer turns an Answer
(or a cache entry) into HTTP bytes; frontend.http_app routes requests here. This module imports
neither: what a cacheable answer is stored with (its fixed HTTP header lines, so a cache hit costs no
formatting) is made by the ``stored_headers`` function the wiring passes in
(frontend.http_answer.static_headers; a test checks that loading this module loads no HTTP code).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from frontend.cache import STORE, Entry, ResponseCache
from frontend.config import ListenConfig
from frontend.signer_client import SignResult
from shared.answers import AnswerKey, StoredAnswer, expires_at, serial_octets, stored_answer
from shared.clock import Clock, SystemClock
from shared.ocsp.certid import IssuerIndex, issuer_keys
from shared.ocsp.errors import InternalError, OCSPError, StatusDisagrees, TryLater, Unauthorized
from shared.ocsp.request import decode_request
from shared.ocsp.response import error_response
from shared.ocsp.types import (
    CertId,
    CertStatus,
    HashAlgorithm,
    IssuerKey,
    ParsedRequest,
    ResponseStatus,
    SingleStatus,
    StatusInfo,
)
from shared.ratelog import RateLimitedLog
from shared.status.base import FileStatusSource

if TYPE_CHECKING:
    from frontend.answer_store import AnswerStore

log = logging.getLogger("frontend.server")

ERROR_LOG_INTERVAL = 10.0  # seconds between two log lines about tryLater / internalError answers
DELETE_CHUNK = 1024  # store keys per DEL when a reload retires changed serials


# How an answer was come by (Answer.via, the access log's ``via``).
SIGNED = "signed"  # signed for this request
NONCE = "nonce"  # signed for this request, which carried a nonce (never cached nor shared)
JOINED = "joined"  # the signature another request for the same answer was waiting for
STORED = "store"  # the fleet's shared store (Redis)
CACHED = "cache"  # this process's cache


@dataclass(frozen=True, slots=True)
class Answer:
    """What the pipeline answers: the DER OCSPResponse, its status, and for a cacheable (nonce-less,
    signed) answer its nextUpdate (epoch seconds, for max-age) and the header lines stored with it.
    The rest says what it answered, for the access log: the CA, the CertIDs and their statuses (as far
    as known: an error may know none), how it was come by (``via``), and the request_id of the
    SignRequest whose signature it is (``signature_id``; "" when not known, as for the store's)."""

    der: bytes
    status: ResponseStatus = ResponseStatus.SUCCESSFUL
    next_update: int | None = None  # None: not cacheable (a nonce, or an error)
    headers: bytes = b""  # what ``stored_headers`` made of it, when cacheable
    ca: str = ""
    cert_ids: tuple[CertId, ...] = ()
    cert_status: tuple[CertStatus, ...] = ()
    via: str = ""  # SIGNED, NONCE, JOINED, STORED, CACHED; "" for an error
    signature_id: str = ""
    request_id: str = ""  # an error's: the SignRequest sent for it that failed ("": none)

    @staticmethod
    def error(status: ResponseStatus, ca: str = "", cert_ids: tuple[CertId, ...] = (),
              request_id: str = "") -> Answer:
        return Answer(error_response(status), status, ca=ca, cert_ids=cert_ids, request_id=request_id)

    @staticmethod
    def of_entry(entry: Entry, via: str = CACHED) -> Answer:
        return Answer(entry.der, next_update=entry.next_update, headers=entry.headers, ca=entry.key.ca,
                      cert_ids=entry.key.cert_ids, cert_status=entry.cert_status, via=via,
                      signature_id=entry.signature_id)


class Signer(Protocol):
    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult: ...


# (DER OCSPResponse, thisUpdate, nextUpdate in epoch seconds) -> what the cache stores beside it.
StoredHeaders = Callable[[bytes, int, int], bytes]


class CaEntry:
    """One configured CA as the server sees it: its name, its status source and the IssuerKeys of its
    certificate (every hash algorithm; ``build_issuers`` fills them in)."""

    __slots__ = ("issuer_keys", "name", "source")

    def __init__(self, name: str, source: FileStatusSource, issuer_keys: tuple[IssuerKey, ...] = ()) -> None:
        self.name = name
        self.source = source
        self.issuer_keys = issuer_keys


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
    """An answer in progress (a store lookup, a signature) that requests for the same AnswerKey may
    wait for instead of asking again."""

    __slots__ = ("future", "key")

    def __init__(self, future: asyncio.Future[Answer], key: AnswerKey) -> None:
        self.future = future
        self.key = key


class OcspApp:
    """HTTP-free request handling: DER in, a cache ``Entry`` (``cached``) or an ``Answer`` out.
    ``store``: the fleet's shared answers (frontend.answer_store), None without Redis."""

    def __init__(self, *, issuers: IssuerIndex[CaEntry], signer: Signer, cache: ResponseCache,
                 listen: ListenConfig, stored_headers: StoredHeaders, clock: Clock | None = None,
                 store: AnswerStore | None = None) -> None:
        self.issuers = issuers
        self.signer = signer
        self.cache = cache
        self.listen = listen
        self.clock = clock or SystemClock()
        self.stored_headers = stored_headers
        self.store = store
        self.allowed_hashes = frozenset(listen.allowed_hashes)
        self.max_age_cap = int(cache.max_age)
        self.cached = cache.lookup  # type: ignore[method-assign]
        self._inflight: dict[AnswerKey, _Flight] = {}
        self._ratelog = RateLimitedLog(log, ERROR_LOG_INTERVAL, time.monotonic)
        self._deletes: set[asyncio.Task[None]] = set()
        # Answers the store gave (served), gave but no longer answering (refused), and signed here.
        self.store_hits = 0
        self.store_refused = 0
        self.signed = 0
        for ca in issuers.values():
            ca.source.on_change(self._source_changed)

    # -- status reloads ---------------------------------------------------------------------------------

    def _source_changed(self, source: FileStatusSource) -> None:
        changes = source.last_changes
        if changes is None:  # any serial may have changed
            self.cache.invalidate(source.name)
            stale = [k for k in self._inflight if k.ca == source.name]
        else:
            self.cache.invalidate_serials(source.name, changes)
            stale = [k for k in self._inflight
                     if k.ca == source.name and any(c.serial_int in changes for c in k.cert_ids)]
        # Answers in flight for these were made from the old data: requests arriving from now on
        # must not join them, they start their own.
        for key in stale:
            del self._inflight[key]
        if self.store is not None and changes:
            ca = next((c for c in self.issuers.values() if c.source is source), None)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a load before serving: nothing was shared from here yet
                ca = None
            if ca is not None:
                task = loop.create_task(self._delete_stored(ca, changes))
                self._deletes.add(task)
                task.add_done_callback(self._deletes.discard)

    async def _delete_stored(self, ca: CaEntry, serials: Iterable[int]) -> None:
        """Remove the changed serials' answers from the store, for every hash algorithm served (a
        reader whose data is not reloaded yet refuses them anyway: ``StoredAnswer.answers``). Chunk
        by chunk, each awaited: a reload that changed a million serials never holds the event loop."""
        assert self.store is not None
        keys = [k for k in ca.issuer_keys if k.hash_algorithm in self.allowed_hashes]
        per_chunk = max(1, DELETE_CHUNK // max(1, len(keys)))
        it = iter(serials)
        while chunk := list(itertools.islice(it, per_chunk)):
            batch = [AnswerKey(ca.name, (CertId(k.hash_algorithm, k.issuer_name_hash, k.issuer_key_hash,
                                                serial_octets(s)),))
                     for s in chunk for k in keys]
            await self.store.delete(batch)
            await asyncio.sleep(0)  # a store down answers at once: still let requests in between

    async def close(self) -> None:
        """Wait for the store deletions a reload started."""
        if self._deletes:
            await asyncio.gather(*list(self._deletes), return_exceptions=True)

    # -- answering ----------------------------------------------------------------------------------------

    def cached(self, key: bytes, now: float) -> Entry | None:
        """The cached answer for the DER request ``key`` seen before (no ASN.1 parsing), or None.
        (Replaced per instance by the cache's own ``lookup``: the hit path pays no extra call.)"""
        return self.cache.lookup(key, now)

    async def answer(self, der: bytes, key: bytes | None) -> Answer:
        """Answer one request (``key``: its DER as the raw index should know it, None: not linked).
        Concurrent nonce-less requests for one AnswerKey share one answer, as long as the CA's
        status data for its serials has not been reloaded since that answer was started."""
        try:
            request = decode_request(der, max_cert_ids=self.listen.max_cert_ids)
        except Exception as e:  # noqa: BLE001 - every fault becomes an answer (_failed)
            return self._failed(e)
        try:
            ca = serving_ca(request, self.issuers, self.allowed_hashes)
        except Exception as e:  # noqa: BLE001 - every fault becomes an answer (_failed)
            return self._failed(e, "", request.cert_ids)
        if request.nonce is not None:  # each nonce-bearing request gets its own signature
            return await self._guarded(request, ca, None, None)
        akey = AnswerKey(ca.name, request.cert_ids)
        entry = self.cache.get(akey, self.cache.clock(), key)
        if entry is not None:
            return Answer.of_entry(entry)
        flight = self._inflight.get(akey)
        if flight is not None:
            fut = flight.future
            try:
                joined = await asyncio.shield(fut)
                return replace(joined, via=JOINED) if joined.via == SIGNED else joined
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and task is not None and not task.cancelling():
                    # The request we waited on was abandoned (its client went away): do our own.
                    return await self._guarded(request, ca, akey, key)
                raise
        flight = _Flight(asyncio.get_running_loop().create_future(), akey)
        self._inflight[akey] = flight
        fut = flight.future
        try:
            result = await self._guarded(request, ca, akey, key)
            fut.set_result(result)
            return result
        finally:
            # Only cancellation leaves without a result (_guarded catches everything else).
            if not fut.done():
                fut.cancel()
            if self._inflight.get(akey) is flight:  # a reload may have put a newer one there
                del self._inflight[akey]

    def _failed(self, e: Exception, ca: str = "", cert_ids: tuple[CertId, ...] = ()) -> Answer:
        if isinstance(e, OCSPError):
            if isinstance(e, TryLater):
                self._ratelog.log(logging.WARNING, "trylater", "answering tryLater: %s", e)
            elif isinstance(e, InternalError):
                self._ratelog.log(logging.ERROR, "internal", "answering internalError: %s", e)
            else:
                log.debug("answering %s: %s", e.status.name, e)
            return Answer.error(e.status, ca, cert_ids, e.request_id)
        log.error("unexpected error answering a request", exc_info=e)
        return Answer.error(ResponseStatus.INTERNAL_ERROR, ca, cert_ids)

    async def _guarded(self, request: ParsedRequest, ca: CaEntry, akey: AnswerKey | None,
                       raw: bytes | None) -> Answer:
        try:
            return await self._fill(request, ca, akey, raw)
        except Exception as e:  # noqa: BLE001 - every fault becomes an answer (_failed)
            return self._failed(e, ca.name, request.cert_ids)

    async def _fill(self, request: ParsedRequest, ca: CaEntry, akey: AnswerKey | None,
                    raw: bytes | None) -> Answer:
        """The answer of a cache miss (``akey`` None: a nonce, never cached nor stored)."""
        store = self.store if akey is not None and len(request.cert_ids) == 1 else None
        stored = await store.get(akey) if store is not None and akey is not None else None
        # From here to the Sign call nothing yields: the snapshot is the data the answer is made from.
        source = ca.source
        generation = source.generation
        snapshot = source.current()
        infos = [snapshot.status(cid.serial_int) for cid in request.cert_ids]
        if stored is not None and akey is not None:
            shared = self._from_store(akey, stored, infos[0], raw)
            if shared is not None:
                return shared
        now = self.clock.now()
        this_update, next_update = snapshot.window(now)
        statuses = [SingleStatus(cert_id=cid, status=info.status, this_update=this_update,
                                 next_update=next_update, revocation=info.revocation)
                    for cid, info in zip(request.cert_ids, infos, strict=True)]
        try:
            result = await self.signer.sign(statuses, request.nonce)
        except StatusDisagrees:
            source.catch_up()  # the signer may have newer data (a CRL it fetched first): look soon
            raise
        self.signed += 1
        body = result.der
        # Every reply, nonce or not, tells which responder generation signs for this CA now.
        self.cache.note_generation(ca.name, result.generation, signer=result.signer,
                                   fingerprint=result.responder_fingerprint)
        cert_status = tuple(info.status for info in infos)
        if akey is None:
            return Answer(body, ca=ca.name, cert_ids=request.cert_ids, cert_status=cert_status, via=NONCE,
                          signature_id=result.request_id)
        tu, nu = int(this_update.timestamp()), int(next_update.timestamp())
        static = self.stored_headers(body, tu, nu)
        current = (source.generation == generation
                   and self.cache.generation(ca.name, result.signer) == result.generation)
        if current:
            self.cache.put(akey, body, static, this_update=tu, next_update=nu, generation=result.generation,
                           signer=result.signer, fingerprint=result.responder_fingerprint, raw=raw,
                           cert_status=cert_status, signature_id=result.request_id)
            if store is not None and result.responder_fingerprint:
                # Not awaited: the response does not wait for Redis (a bounded number of writes pend).
                store.spawn_put(akey, stored_answer(body, infos[0], tu, nu, int(now.timestamp()),
                                                    result.responder_fingerprint),
                                expires_at(tu, nu, self.cache.max_age))
        return Answer(body, next_update=nu, headers=static, ca=ca.name, cert_ids=request.cert_ids,
                      cert_status=cert_status, via=SIGNED, signature_id=result.request_id)

    def _from_store(self, akey: AnswerKey, stored: StoredAnswer, info: StatusInfo,
                    raw: bytes | None) -> Answer | None:
        """The store's answer, cached and served, when it still answers: not expired (min(nextUpdate,
        thisUpdate + max_age), as stored), saying what our own status data says, signed by an
        acceptable responder; else None (it is signed anew)."""
        now = self.cache.clock()
        tu, nu = stored.this_update, stored.next_update
        expires = expires_at(tu, nu, self.cache.max_age)  # as the writer stored it: as fresh as its thisUpdate
        if (expires <= now or not stored.answers(info)
                or not self.cache.fingerprint_ok(akey.ca, stored.responder_fingerprint, now)):
            self.store_refused += 1
            return None
        self.store_hits += 1
        static = self.stored_headers(stored.der, tu, nu)
        self.cache.put(akey, stored.der, static, this_update=tu, next_update=nu, signer=STORE,
                       fingerprint=stored.responder_fingerprint, raw=raw, expires=expires,
                       cert_status=(info.status,))
        return Answer(stored.der, next_update=nu, headers=static, ca=akey.ca, cert_ids=akey.cert_ids,
                      cert_status=(info.status,), via=STORED)


def build_issuers(cas: Iterable[tuple[bytes, CaEntry]]) -> IssuerIndex[CaEntry]:
    index: IssuerIndex[CaEntry] = IssuerIndex()
    for der, entry in cas:
        index.add(der, entry)
        entry.issuer_keys = tuple(issuer_keys(der).values())
    return index
