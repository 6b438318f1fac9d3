"""What the frontend answers, through the real server (frontend/app.py wiring): statuses from an
index.txt CA and a CRL CA, and the OCSP error mapping (malformedRequest, unauthorized,
tryLater, internalError) for bad requests, unserved issuers and failing signers."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from shared.ocsp.errors import OCSPError, TryLater
from tests.unit.frontend.frontend_pki import NOW
from tests.unit.frontend.frontend_server_env import (
    INTERNAL,
    LISTEN,
    MALFORMED,
    PREFIX_LISTEN,
    TRY_LATER,
    UNAUTHORIZED,
    Env,
    serving,
    statuses,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, LISTEN)


@pytest.fixture
def env_prefix(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, PREFIX_LISTEN)


@pytest.mark.parametrize("serial,status,reason", [(0x100, "good", None), (0x101, "revoked", "KEY_COMPROMISE"),
                                                  (0x102, "unknown", None)])
def test_post_index_ca(env: Env, serial: int, status: str, reason: str | None) -> None:
    code, headers, body = env.post(env.request(env.a, serial))
    assert code == 200 and headers["content-type"] == "application/ocsp-response"
    (s,) = statuses(body)
    assert (s["serial"], s["status"], s["reason"]) == (serial, status, reason)
    now = int(env.clock.now().timestamp())
    assert s["this_update"] == now and s["next_update"] == now + 3600


def test_crl_ca_times_from_crl(env: Env) -> None:
    _code, _, body = env.post(env.request(env.b, 0x201))
    (s,) = statuses(body)
    assert s["status"] == "revoked" and s["reason"] == "SUPERSEDED"
    assert s["this_update"] == int(NOW.timestamp())
    assert s["next_update"] == int((NOW + timedelta(days=1)).timestamp())
    (s,) = statuses(env.post(env.request(env.b, 0x999))[2])
    assert s["status"] == "good"  # unissued = "good" chosen in this setup


def test_stale_crl_try_later(env: Env) -> None:
    env.clock.advance(timedelta(days=2))
    code, headers, body = env.post(env.request(env.b, 0x201))
    assert code == 200 and body == TRY_LATER
    assert "max-age" not in headers["cache-control"]
    assert not env.signer.calls


def test_hash_not_allowed_unauthorized(env_prefix: Env) -> None:
    der = env_prefix.request(env_prefix.a, 0x100, algorithm=hashes.SHA512())
    assert env_prefix.post(der)[2] == UNAUTHORIZED
    der = env_prefix.request(env_prefix.a, 0x100, algorithm=hashes.SHA256())
    assert statuses(env_prefix.post(der)[2])[0]["status"] == "good"


@pytest.mark.parametrize("body", [b"", b"\x30\x03\x02\x01\x00", b"not der", b"\x30\x80" * 100])
def test_malformed(env: Env, body: bytes) -> None:
    code, headers, answer = env.post(body)
    assert code == 200 and answer == MALFORMED
    assert "max-age" not in headers["cache-control"]


def test_bad_get_is_malformed(env: Env) -> None:
    assert env.get("/not%20base64!!")[2] == MALFORMED


def test_unknown_issuer_and_mixed_cas_unauthorized(env: Env) -> None:
    assert env.post(env.request(env.other, 0x100))[2] == UNAUTHORIZED
    from asn1crypto import ocsp as aocsp

    one = aocsp.OCSPRequest.load(env.request(env.a, 0x100))["tbs_request"]["request_list"][0]
    two = aocsp.OCSPRequest.load(env.request(env.b, 0x201))["tbs_request"]["request_list"][0]
    mixed = aocsp.OCSPRequest({"tbs_request": {"request_list": [one, two]}}).dump()
    _code, headers, body = env.post(mixed)
    assert body == UNAUTHORIZED and "max-age" not in headers["cache-control"]
    same = aocsp.OCSPRequest({"tbs_request": {"request_list": [one, one]}}).dump()
    assert len(statuses(env.post(same)[2])) == 2
    assert len(env.signer.calls) == 1


def test_served_then_unserved_issuer_unauthorized(env: Env) -> None:
    """The second CertID names a CA this responder does not serve: unauthorized, nothing signed (the
    first CertID's CA must not answer for it)."""
    from asn1crypto import ocsp as aocsp

    served = aocsp.OCSPRequest.load(env.request(env.a, 0x100))["tbs_request"]["request_list"][0]
    unserved = aocsp.OCSPRequest.load(env.request(env.other, 0x100))["tbs_request"]["request_list"][0]
    for order in ([served, unserved], [served, served, unserved]):
        der = aocsp.OCSPRequest({"tbs_request": {"request_list": order}}).dump()
        code, _headers, body = env.post(der)
        assert (code, body) == (200, UNAUTHORIZED)
    assert env.signer.calls == []


@pytest.mark.parametrize("error,expected", [(TryLater("down"), TRY_LATER), (RuntimeError("bug"), INTERNAL),
                                            (OCSPError("x"), INTERNAL)])
def test_signer_errors(env: Env, error: BaseException, expected: bytes) -> None:
    env.signer.fail = error
    code, _headers, body = env.post(env.request(env.a, 0x100))
    assert code == 200 and body == expected
    # Not cached: the next request goes to the signer again.
    env.signer.fail = None
    assert statuses(env.post(env.request(env.a, 0x100))[2])[0]["status"] == "good"


def test_unexpected_bug_gives_internal_error(env: Env) -> None:
    # A status snapshot that blows up (a bug, not an OCSPError): internalError, connection kept.
    env.src_a.current().entries = None  # type: ignore[attr-defined, assignment]
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        conn.request("POST", "/", body=env.request(env.a, 0x100))
        assert conn.getresponse().read() == INTERNAL
        conn.request("GET", "/-/health")
        assert conn.getresponse().read() == b"ok\n"
    finally:
        conn.close()
