"""Routing in the real server (frontend/http_app.py, frontend/http_answer.py): OCSP by GET and by
POST, the path prefix, absolute-form targets, HEAD, the health endpoint and 405."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.frontend.frontend_server_env import (
    LISTEN,
    MALFORMED,
    PREFIX_LISTEN,
    Env,
    b64path,
    raw,
    serving,
    split_responses,
    statuses,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, LISTEN)


@pytest.fixture
def env_prefix(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, PREFIX_LISTEN)


def test_get_and_prefix(env: Env, env_prefix: Env) -> None:
    der = env.request(env.a, 0x100)
    code, headers, body = env.get(b64path(der))
    assert code == 200 and statuses(body)[0]["status"] == "good" and "etag" in headers
    der = env_prefix.request(env_prefix.a, 0x101)
    code, _, body = env_prefix.get(b64path(der, "/ocsp/"))
    assert code == 200 and statuses(body)[0]["status"] == "revoked"
    # Unpadded URL-safe base64 too.
    code, _, body = env_prefix.get("/ocsp/" + base64.urlsafe_b64encode(der).decode().rstrip("="))
    assert statuses(body)[0]["status"] == "revoked"
    # Outside the prefix: 404; the prefix itself: malformedRequest.
    assert env_prefix.get(b64path(der, "/other/"))[0] == 404
    assert env_prefix.get("/ocsp")[2] == MALFORMED
    # POST under the prefix.
    assert statuses(env_prefix.post(der, "/ocsp")[2])[0]["status"] == "revoked"


def test_post_body_spelling_a_get_target_is_not_that_get(env: Env) -> None:
    path = b64path(env.request(env.a, 0x100))
    code, _, body = env.get(path)
    assert code == 200 and statuses(body)[0]["status"] == "good"
    # The same bytes as a POST body are not a DER request: malformedRequest, not the cached answer.
    assert env.post(path.encode())[2] == MALFORMED
    assert env.get(path, "HEAD")[0] == 200 and len(env.signer.calls) == 1  # HEAD shares GET's entry


def test_absolute_form_targets(env: Env, env_prefix: Env) -> None:
    # RFC 9112 3.2.2: a server MUST accept "GET http://host/path HTTP/1.1".
    for e, prefix in ((env, "/"), (env_prefix, "/ocsp/")):
        der = e.request(e.a, 0x101)
        data = raw(e, b"GET http://ocsp.example:80" + b64path(der, prefix).encode()
                   + b" HTTP/1.1\r\nHost: ocsp.example\r\nConnection: close\r\n\r\n")
        (resp,) = split_responses(data)
        assert resp[0].startswith(b"HTTP/1.1 200") and statuses(resp[2])[0]["status"] == "revoked"
        data = raw(e, b"POST http://ocsp.example" + prefix.encode() + b" HTTP/1.1\r\nHost: ocsp.example\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(der) + der)
        assert statuses(split_responses(data)[0][2])[0]["status"] == "revoked"
    assert env.get("http://ocsp.example/-/health")[2] == b"ok\n"


def test_health(env: Env) -> None:
    code, _headers, body = env.get("/-/health")
    assert (code, body) == (200, b"ok\n")
    assert env.get("/-/other")[0] == 404
    assert env.get("/-/health", "HEAD")[2] == b""


def test_head_has_no_body(env: Env) -> None:
    der = env.request(env.a, 0x100)
    data = raw(env, b"HEAD " + b64path(der).encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert b"Content-Length: " in head


def test_405(env: Env) -> None:
    code, headers, _ = env.get("/", "PUT")
    assert code == 405 and headers["allow"] == "GET, HEAD, POST"
    assert env.get("/", "DELETE")[0] == 405
