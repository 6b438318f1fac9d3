"""The response cache as the frontend uses it: hits skip the signer and carry caching headers,
max-age follows the CRL, nonces are never cached, reloads and new responder generations drop
entries, one cache key for every spelling of a request, the bounds on keys and expiry, and
identical misses sharing one signature (never across a reload, never with a nonce)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from frontend.app import CaEntry, OcspApp, build_issuers
from frontend.cache import ResponseCache
from frontend.config import ListenConfig
from frontend.http_answer import HitAnswers, ocsp_http, static_headers
from shared.answers import AnswerKey
from shared.clock import FakeClock
from shared.status.index_txt import IndexTxtSource
from tests.integration.conftest import wait_until
from tests.unit.frontend.frontend_pki import NOW, TestCA, write
from tests.unit.frontend.frontend_server_env import (
    LISTEN,
    MALFORMED,
    Env,
    FakeSigner,
    b64path,
    index_line,
    serving,
    statuses,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, LISTEN)


def test_cache_hit_skips_signer_and_has_headers(env: Env) -> None:
    der = env.request(env.a, 0x100)
    first = env.post(der)
    second = env.post(der)
    assert len(env.signer.calls) == 1
    assert first[2] == second[2]
    h = second[1]
    assert h["cache-control"].endswith("public, no-transform, must-revalidate")
    assert h["cache-control"].startswith("max-age=")
    assert 0 < int(h["cache-control"].split("=")[1].split(",")[0]) <= 3600
    assert h["etag"].startswith('"') and len(h["etag"]) == 66
    assert "expires" in h and "last-modified" in h and "date" in h


def test_hit_answers_follow_the_clock_to_the_second(env: Env) -> None:
    """Hits are answered from bytes kept for the current second (frontend.http_answer.HitAnswers):
    Date and max-age still move with the clock, by POST and GET (the GET target's DER is kept too),
    and HEAD and closing answers keep their own shape."""
    der = env.request(env.a, 0x100)
    path = b64path(der)
    env.post(der)
    first = [env.post(der), env.get(path), env.get(path)]
    assert len({(r[1]["date"], r[1]["cache-control"], r[2]) for r in first}) == 1
    env.clock.advance(timedelta(seconds=7, milliseconds=500))
    later = [env.post(der), env.get(path)]
    assert len({(r[1]["date"], r[1]["cache-control"], r[2]) for r in later}) == 1
    age = int(first[0][1]["cache-control"].split("=")[1].split(",")[0])
    assert int(later[0][1]["cache-control"].split("=")[1].split(",")[0]) == age - 7
    assert (parsedate_to_datetime(later[0][1]["date"]) - parsedate_to_datetime(first[0][1]["date"])
            == timedelta(seconds=7))
    assert env.clock.now().replace(microsecond=0) == parsedate_to_datetime(later[0][1]["date"])
    status, headers, body = env.get(path, method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == later[0][1]["content-length"]
    assert len(env.signer.calls) == 1


def test_get_targets_kept_only_when_they_carry_a_request(env: Env) -> None:
    """Only a target routed to the OCSP pipeline and decoded is remembered (shared.ocsp.http.PathKeys):
    our own endpoints and refused targets are routed again every time."""
    der = env.request(env.a, 0x100)
    keys = env.server.path_keys
    for _ in range(2):
        assert env.get("/-/health")[0] == 200
        assert env.get("/-/nothing")[0] == 404
        assert env.get("/not-base64!")[2] == MALFORMED
    assert len(keys) == 0
    path = b64path(der) + "?q=1"
    assert env.get(path)[0] == 200 and keys.get(path.encode()) == der and len(keys) == 1
    assert env.get(path)[0] == 200 and len(keys) == 1


def test_hit_answers_kept_per_entry_and_second() -> None:
    cache = ResponseCache(10, 3600.0, clock=lambda: 1000.0)
    der = b"\x30\x03\x0a\x01\x00"
    key = AnswerKey("a", ())
    entry = cache.put(key, der, static_headers(der, 900, 5000), this_update=900, next_update=5000)
    assert entry is not None
    hits = HitAnswers(3600, max_answers=1)
    for now in (1000.0, 1000.9, 1001.0, 1400.5):
        expected = ocsp_http(der, entry.headers, 5000, 3600, now, False, False, False, now)
        assert hits.answer(b"k", entry, now) == expected
        assert hits.answer(b"k", entry, now) is hits.answer(b"k", entry, now)  # kept
    again = cache.put(key, der, static_headers(der, 950, 4000), this_update=950, next_update=4000)
    assert again is not None
    assert hits.answer(b"k", again, 1400.5) == ocsp_http(der, again.headers, 4000, 3600, 1400.5, False, False,
                                                           False, 1400.5)
    other = hits.answer(b"other", again, 1400.5)  # past max_answers: made every time, not kept
    assert other == hits.answer(b"other", again, 1400.5) and other is not hits.answer(b"other", again, 1400.5)


def test_crl_answers_cached_when_crl_older_than_max_age(env: Env) -> None:
    env.clock.advance(timedelta(hours=20))  # the CRL is 20 h old, max_age 1 h, nextUpdate in 4 h
    der = env.request(env.b, 0x201)
    first = env.post(der)
    second = env.post(der)
    assert len(env.signer.calls) == 1 and first[2] == second[2]
    assert second[1]["cache-control"].startswith("max-age=3600,")
    env.clock.advance(timedelta(hours=3, minutes=30))  # under 1 h before nextUpdate: max-age follows it
    env.cache.invalidate()
    left = int((NOW + timedelta(days=1) - env.clock.now()).total_seconds())
    assert 0 < left < 3600
    assert env.post(der)[1]["cache-control"].startswith(f"max-age={left},")


def test_nonce_not_cached(env: Env) -> None:
    der = env.request(env.a, 0x100, nonce=b"\x01" * 16)
    for _ in range(2):
        _code, headers, body = env.post(der)
        assert json.loads(body)["nonce"]
        assert "max-age" not in headers["cache-control"] and "no-store" in headers["cache-control"]
        assert "etag" not in headers
    assert len(env.signer.calls) == 2


def test_reload_drops_cached_answers(env: Env) -> None:
    der = env.request(env.a, 0x100)
    assert statuses(env.post(der)[2])[0]["status"] == "good"
    write(env.index, index_line("R", 0x100, "250101000000Z,superseded")
          + index_line("R", 0x101, "250101000000Z,keyCompromise"))  # (losing a line would be refused)
    assert env.call(env.src_a.refresh(force=True))
    (s,) = statuses(env.post(der)[2])
    assert s["status"] == "revoked" and s["reason"] == "SUPERSEDED"


def test_responder_generation_change_drops_cache(env: Env) -> None:
    der = env.request(env.a, 0x100)
    env.post(der)
    env.signer.generation = 2
    env.post(env.request(env.a, 0x101))  # the signer reports a new responder for CA a
    env.post(der)
    assert len(env.signer.calls) == 3


def test_every_spelling_of_one_request_shares_one_entry(env: Env) -> None:
    """The query string and path segments before the base64 are not part of an OCSP GET: they must
    not make new cache entries (each would cost a signature and evict a real answer)."""
    der = env.request(env.a, 0x100)
    b64 = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    paths = ["/" + b64, "/" + b64 + "?a=1", "/" + b64 + "?" + "q" * 5000, "/junk/" + b64,
             "/junk/more/" + b64 + "?x", "/" + base64.urlsafe_b64encode(der).decode().rstrip("=")]
    bodies = {env.get(p)[2] for p in paths}
    bodies.add(env.post(der)[2])  # the same request by POST too
    assert len(env.signer.calls) == 1 and len(bodies) == 1
    assert len(env.cache) == 1
    assert statuses(bodies.pop())[0]["serial"] == 0x100


def test_request_longer_than_max_key_bytes_is_answered_not_cached(env: Env) -> None:
    from asn1crypto import ocsp as aocsp

    n = env.listen.max_cert_ids  # SHA-512 CertIDs, as many as allowed: longer than max_key_bytes
    one = aocsp.OCSPRequest.load(env.request(env.a, 0x100, algorithm=hashes.SHA512()))[
        "tbs_request"]["request_list"][0]
    many = aocsp.OCSPRequest({"tbs_request": {"request_list": [one] * n}}).dump()
    assert env.cache.max_key_bytes < len(many) <= env.listen.max_request_bytes
    for _ in range(2):
        code, _, body = env.post(many)
        assert code == 200 and len(statuses(body)) == n
    assert len(env.signer.calls) == 2 and len(env.cache) == 0
    path = b64path(many)
    assert len(statuses(env.get(path)[2])) == n and len(env.signer.calls) == 3


def test_expired_entries_leave_without_being_asked_for(env: Env) -> None:
    for serial in (0x100, 0x101, 0x102):
        env.post(env.request(env.a, serial))
    assert len(env.cache) == 3
    env.clock.advance(timedelta(hours=2))  # past max_age: the server's once-a-second sweep drops them
    wait_until(lambda: len(env.cache) == 0, 5, "the sweep to drop expired entries")
    assert env.cache.bytes == 0


# -- identical misses in flight share one signature ---------------------------------------------------


def test_concurrent_identical_misses_share_one_signature(env: Env) -> None:
    env.signer.delay = 0.2
    der = env.request(env.a, 0x100)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(env.post(der)[2])) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(env.signer.calls) == 1


def _app(tmp_path: Path, signer: FakeSigner) -> tuple[OcspApp, TestCA, IndexTxtSource]:
    ca = TestCA("In-flight CA")
    src = IndexTxtSource("a", write(tmp_path / "index.txt", index_line("V", 0x100)), timedelta(hours=1))
    src.load_now()
    clock = FakeClock(NOW)
    cache = ResponseCache(100, 3600.0, clock=lambda: clock.now().timestamp())
    app = OcspApp(issuers=build_issuers([(ca.der, CaEntry("a", src))]), signer=signer, cache=cache,
                  listen=ListenConfig(), stored_headers=static_headers, clock=clock)
    return app, ca, src


def _req(ca: TestCA, serial: int, nonce: bytes | None = None) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(ca.leaf(serial), ca.cert, hashes.SHA1())
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def test_request_after_reload_does_not_join_older_signature(tmp_path: Path) -> None:
    signer = FakeSigner()
    signer.delay = 0.2
    app, ca, src = _app(tmp_path, signer)
    der = _req(ca, 0x100)

    async def go() -> tuple[bytes, bytes, bytes]:
        first = asyncio.create_task(app.answer(der, der))
        joined = asyncio.create_task(app.answer(der, der))  # before the reload: may share
        while not signer.calls:  # both tasks run to their first suspension: the signature started
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        write(src.path, index_line("R", 0x100, "260101000000Z,keyCompromise"))
        assert await src.refresh(force=True)
        later = asyncio.create_task(app.answer(der, der))  # after the reload: must not share
        return (await first).der, (await joined).der, (await later).der

    first, joined, later = asyncio.run(go())
    assert statuses(first)[0]["status"] == "good" and joined == first
    assert statuses(later)[0]["status"] == "revoked"
    assert len(signer.calls) == 2


def test_nonce_requests_never_share_a_signature(tmp_path: Path) -> None:
    signer = FakeSigner()
    signer.delay = 0.1
    app, ca, _ = _app(tmp_path, signer)
    der = _req(ca, 0x100, nonce=b"\x07" * 16)

    async def go() -> None:
        await asyncio.gather(*(app.answer(der, der) for _ in range(3)))

    asyncio.run(go())
    assert len(signer.calls) == 3
