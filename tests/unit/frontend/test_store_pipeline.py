"""OcspApp with a shared answer store (an in-memory stand-in for frontend.answer_store.AnswerStore):
what it serves from the store and what it refuses, what it writes back, what a reload deletes.
The real store against a real redis-server: tests/integration/test_answer_store.py, test_fleet.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from frontend.app import CaEntry, OcspApp, build_issuers, serial_octets
from frontend.cache import ResponseCache
from frontend.config import ListenConfig
from frontend.http_answer import static_headers
from shared.answers import AnswerKey, StoredAnswer
from shared.clock import FakeClock
from shared.ocsp.request import decode_request
from shared.ocsp.types import CertStatus, HashAlgorithm
from shared.status.index_txt import IndexTxtSource
from tests.unit.frontend.frontend_pki import NOW, TestCA, write
from tests.unit.frontend.frontend_server_env import FakeSigner, index_line, statuses


class FakeStore:
    """The AnswerStore calls OcspApp makes, on a dict; ``down`` makes every call a miss."""

    def __init__(self) -> None:
        self.data: dict[AnswerKey, tuple[StoredAnswer, float]] = {}
        self.gets: list[AnswerKey] = []
        self.deleted: list[AnswerKey] = []
        self.down = False
        self.available = True
        self._pending: set[asyncio.Task[None]] = set()

    async def get(self, key: AnswerKey) -> StoredAnswer | None:
        self.gets.append(key)
        await asyncio.sleep(0)
        got = None if self.down else self.data.get(key)
        return None if got is None else got[0]

    async def get_many(self, keys: Sequence[AnswerKey]) -> list[StoredAnswer | None]:
        return [await self.get(k) for k in keys]

    async def put(self, key: AnswerKey, answer: StoredAnswer, expires_at: float) -> None:
        if not self.down:
            self.data[key] = (answer, expires_at)

    def spawn_put(self, key: AnswerKey, answer: StoredAnswer, expires_at: float) -> bool:
        task = asyncio.get_running_loop().create_task(self.put(key, answer, expires_at))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def flush(self) -> None:
        await asyncio.gather(*list(self._pending))

    async def delete(self, keys: Iterable[AnswerKey]) -> None:
        for k in keys:
            self.deleted.append(k)
            self.data.pop(k, None)


class Setup:
    def __init__(self, tmp: Path, *, grace: float = 0.0) -> None:
        self.ca = TestCA("Store CA")
        self.index = write(tmp / "index.txt", index_line("V", 0x100) + index_line("V", 0x101)
                           + index_line("R", 0x102, "250101000000Z,keyCompromise"))
        self.src = IndexTxtSource("a", self.index, timedelta(hours=1))
        self.src.load_now()
        self.clock = FakeClock(NOW)
        self.signer = FakeSigner()
        self.store = FakeStore()
        self.cache = ResponseCache(100, 3600.0, clock=lambda: self.clock.now().timestamp(), rotation_grace=grace)
        self.listen = ListenConfig(allowed_hashes=(HashAlgorithm.SHA1, HashAlgorithm.SHA256))
        self.app = OcspApp(issuers=build_issuers([(self.ca.der, CaEntry("a", self.src))]), signer=self.signer,
                           cache=self.cache, listen=self.listen, stored_headers=static_headers, clock=self.clock,
                           store=self.store)  # type: ignore[arg-type]
        self.leaves = {s: self.ca.leaf(s) for s in (0x100, 0x101, 0x102)}

    def request(self, *serials: int, algorithm: hashes.HashAlgorithm | None = None, nonce: bool = False) -> bytes:
        if len(serials) > 1:
            from asn1crypto import ocsp as aocsp

            one = [aocsp.OCSPRequest.load(self.request(s))["tbs_request"]["request_list"][0] for s in serials]
            return aocsp.OCSPRequest({"tbs_request": {"request_list": one}}).dump()
        b = ocsp.OCSPRequestBuilder().add_certificate(self.leaves[serials[0]], self.ca.cert,
                                                      algorithm or hashes.SHA1())
        if nonce:
            b = b.add_extension(x509.OCSPNonce(b"\x05" * 16), critical=False)
        return b.build().public_bytes(serialization.Encoding.DER)

    def key(self, der: bytes) -> AnswerKey:
        return AnswerKey("a", decode_request(der).cert_ids)

    def stored(self, status: CertStatus = CertStatus.GOOD, *, fp: str = "fp", next_update: int | None = None,
               rev: tuple[int, int] = (0, -1)) -> StoredAnswer:
        now = int(self.clock.now().timestamp())
        body = json.dumps({"statuses": [{"serial": 0, "status": "from-the-store"}]}).encode()
        return StoredAnswer(body, now, now + 3600 if next_update is None else next_update, now, status, fp, *rev)

    def run(self, coro: Any) -> Any:
        async def go() -> Any:
            try:
                return await coro
            finally:
                await self.store.flush()
                await self.app.close()

        return asyncio.run(go())

    def answer(self, der: bytes) -> Any:
        return self.run(self.app.answer(der, der))


def test_a_stored_answer_is_served_without_signing(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    der = s.request(0x100)
    s.store.data[s.key(der)] = (s.stored(), 0)
    first = s.answer(der)
    assert statuses(first.der)[0]["status"] == "from-the-store" and first.next_update is not None
    assert s.signer.calls == [] and s.app.store_hits == 1
    assert s.answer(der).der == first.der  # now from the local cache: no second store lookup
    assert len(s.store.gets) == 1 and s.cache.lookup(der) is not None
    # An answer signed half an hour ago is kept until the store's own expiry, min(nextUpdate,
    # thisUpdate + max_age), not for max_age from now.
    other = s.request(0x101)
    now = int(s.clock.now().timestamp())
    s.store.data[s.key(other)] = (StoredAnswer(b"x", now - 1800, now + 7200, now - 1800, CertStatus.GOOD, "fp"), 0)
    assert s.answer(other).der == b"x" and s.app.store_hits == 2
    assert s.cache.lookup(other, now + 1799) is not None and s.cache.lookup(other, now + 1800) is None


def test_a_fresh_signature_is_written_to_the_store(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    good, revoked = s.request(0x100), s.request(0x102)
    s.answer(good)
    s.answer(revoked)
    assert len(s.signer.calls) == 2 and s.app.signed == 2
    answer, expires = s.store.data[s.key(good)]
    assert answer.status is CertStatus.GOOD and answer.responder_fingerprint == "fp"
    assert (answer.revocation_time, answer.reason) == (0, -1)
    assert expires == min(answer.next_update, answer.this_update + 3600)
    r, _ = s.store.data[s.key(revoked)]
    assert r.status is CertStatus.REVOKED and r.reason == 1 and r.revocation_time > 0  # keyCompromise
    assert r.answers(s.src.current().status(0x102))
    assert statuses(r.der)[0]["serial"] == 0x102


def test_stored_answers_that_no_longer_answer_are_refused(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    der = s.request(0x100)
    now = int(s.clock.now().timestamp())
    old = s.stored()
    old = StoredAnswer(old.der, now - 3600, now + 7200, now - 3600, CertStatus.GOOD, "fp")
    for stale in (s.stored(CertStatus.REVOKED, rev=(now - 10, 1)),  # another status than our data's
                  s.stored(next_update=now),  # expired
                  old):  # thisUpdate + max_age (1 h) passed
        s.cache.invalidate()
        s.store.data[s.key(der)] = (stale, 0)
        assert statuses(s.answer(der).der)[0]["status"] == "good"
    assert len(s.signer.calls) == 3 and s.app.store_refused == 3
    assert s.store.data[s.key(der)][0].status is CertStatus.GOOD  # our answer replaced it


def test_the_responder_fingerprint_decides(tmp_path: Path) -> None:
    s = Setup(tmp_path, grace=5)
    der, other = s.request(0x100), s.request(0x101)
    s.store.data[s.key(der)] = (s.stored(fp="unknown-yet"), 0)
    s.answer(der)  # nothing known of CA a's responder: accepted
    assert s.app.store_hits == 1 and not s.signer.calls
    s.cache.set_generation("a", 1, fingerprint="old")
    s.cache.set_generation("a", 2, fingerprint="new")  # rotated: "old" within the grace only
    s.store.data[s.key(other)] = (s.stored(fp="old"), 0)
    s.answer(other)
    assert s.app.store_hits == 2 and not s.signer.calls
    s.cache.invalidate()
    s.clock.advance(timedelta(seconds=5))
    s.answer(other)  # past the grace: refused, signed anew
    assert s.app.store_refused == 1 and len(s.signer.calls) == 1
    s.store.data[s.key(der)] = (s.stored(fp="new"), 0)
    s.cache.invalidate()
    s.answer(der)
    assert s.app.store_hits == 3


def test_nonces_and_several_certids_skip_the_store(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.answer(s.request(0x100, nonce=True))
    s.answer(s.request(0x100, 0x101))
    assert s.store.gets == [] and s.store.data == {} and len(s.signer.calls) == 2


def test_a_store_that_is_down_costs_nothing(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.store.down = True
    der = s.request(0x100)
    assert statuses(s.answer(der).der)[0]["status"] == "good"
    assert len(s.signer.calls) == 1 and s.cache.lookup(der) is not None


def test_concurrent_misses_share_one_lookup_and_one_signature(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.signer.delay = 0.05
    der = s.request(0x100)

    async def go() -> list[Any]:
        return await asyncio.gather(*(s.app.answer(der, der) for _ in range(5)))

    answers = s.run(go())
    assert len({a.der for a in answers}) == 1
    assert len(s.store.gets) == 1 and len(s.signer.calls) == 1


def test_a_reload_deletes_the_changed_serials_everywhere(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    sha1, sha256 = s.request(0x101), s.request(0x101, algorithm=hashes.SHA256())

    async def go() -> None:
        await s.app.answer(sha1, sha1)
        await s.app.answer(sha256, sha256)
        await s.app.answer(s.request(0x100), None)
        await s.store.flush()
        assert len(s.store.data) == 3
        write(s.index, index_line("V", 0x100) + index_line("R", 0x101, "260101000000Z,superseded")
              + index_line("R", 0x102, "250101000000Z,keyCompromise"))
        assert await s.src.refresh(force=True)
        await s.app.close()

    s.run(go())
    assert s.src.last_changes == {0x101}
    # Every served hash algorithm of that serial (SHA-1, SHA-256: listen.allowed_hashes), nothing else.
    assert sorted(k.cert_ids[0].hash_algorithm.value for k in s.store.deleted) == ["sha1", "sha256"]
    assert {k.cert_ids[0].serial for k in s.store.deleted} == {serial_octets(0x101)}
    assert set(s.store.deleted) == {s.key(sha1), s.key(sha256)}
    assert list(s.store.data) == [s.key(s.request(0x100))]


def test_serial_octets() -> None:
    assert serial_octets(0) == b"\x00" and serial_octets(0x7F) == b"\x7f" and serial_octets(0x80) == b"\x00\x80"
    assert serial_octets(0x0100) == b"\x01\x00" and serial_octets(-1) == b"\xff" and serial_octets(-128) == b"\x80"
    assert serial_octets(-129) == b"\xff\x7f"
    for n in (1, 255, 256, 2**64 + 5, -(2**40)):
        assert int.from_bytes(serial_octets(n), "big", signed=True) == n
