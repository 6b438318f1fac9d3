"""The cache keyed by the answer (CA + CertIDs): GET, POST and other spellings of one request share
one signature, the raw-bytes index in front keeps repeat hits before any parsing, one entry per hash
algorithm, and a reload drops only the serials it changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import ocsp as aocsp
from cryptography.hazmat.primitives import hashes

from tests.unit.frontend.frontend_pki import write
from tests.unit.frontend.frontend_server_env import LISTEN, Env, b64path, index_line, serving, statuses


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, LISTEN)


def with_extension(der: bytes) -> bytes:
    """``der`` with a non-critical request extension that does not change the answer (RFC 6960
    4.4.3 acceptable response types)."""
    req = aocsp.OCSPRequest.load(der)
    tbs = req["tbs_request"]
    tbs["request_extensions"] = [{"extn_id": "acceptable_responses", "critical": False,
                                  "extn_value": ["basic_ocsp_response"]}]
    return aocsp.OCSPRequest({"tbs_request": tbs}).dump(force=True)


def long_form(der: bytes) -> bytes:
    """The outer SEQUENCE's length in long form (BER, which the decoder accepts)."""
    assert der[0] == 0x30 and der[1] < 0x80
    return b"\x30\x81" + der[1:]


def test_spellings_of_one_request_share_one_signature(env: Env) -> None:
    der = env.request(env.a, 0x100)
    spellings = [der, with_extension(der), long_form(der)]
    assert len(set(spellings)) == 3
    bodies = set()
    for s in spellings:
        bodies.add(env.post(s)[2])
        bodies.add(env.get(b64path(s))[2])
    assert len(env.signer.calls) == 1 and len(bodies) == 1 and len(env.cache) == 1
    (entry,) = env.cache._entries.values()
    assert sorted(entry.spellings) == sorted(spellings)  # each linked once it was decoded
    hits = env.cache.hits
    for s in spellings:  # ... so a repeat is a raw-index hit, answered before any parsing
        assert env.cache.lookup(s) is entry
        assert env.post(s)[2] in bodies
    assert env.cache.hits == hits + 2 * len(spellings)
    assert len(env.signer.calls) == 1


def test_one_entry_per_hash_algorithm(env: Env) -> None:
    sha1 = env.request(env.a, 0x100)
    sha256 = env.request(env.a, 0x100, algorithm=hashes.SHA256())
    for _ in range(2):
        env.post(sha1)
        env.post(sha256)
    assert len(env.signer.calls) == 2 and len(env.cache) == 2
    algs = {s.cert_id.hash_algorithm.value for call in env.signer.calls for s in call[0]}
    assert algs == {"sha1", "sha256"}


def test_reload_drops_only_the_changed_serials(env: Env) -> None:
    good, revoked = env.request(env.a, 0x100), env.request(env.a, 0x101)
    env.post(good)
    env.post(revoked)
    assert len(env.signer.calls) == 2
    write(env.index, index_line("V", 0x100) + index_line("R", 0x101, "250101000000Z,superseded"))
    assert env.call(env.src_a.refresh(force=True))
    assert env.src_a.last_changes == {0x101}
    env.post(good)
    assert len(env.signer.calls) == 2  # 0x100 did not change: still the cached answer
    (s,) = statuses(env.post(revoked)[2])
    assert s["reason"] == "SUPERSEDED" and len(env.signer.calls) == 3


def test_reload_without_a_change_list_drops_the_whole_ca(env: Env) -> None:
    env.post(env.request(env.a, 0x100))
    env.post(env.request(env.b, 0x202))
    assert len(env.cache) == 2

    async def unknown_changes() -> None:
        env.src_a._install(env.src_a.current(), env.src_a._stamps, None)  # any serial may have changed

    env.call(unknown_changes())
    assert len(env.cache) == 1 and next(iter(env.cache._entries)).ca == "b"
