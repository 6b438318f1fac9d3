"""The frontend's metrics over the real in-process HTTP server (fake signer): each kind of OCSP
request counted once, by method, answer and cert status, in the one place requests are counted; the
cache, signer call, in-flight and per-CA status families; the endpoint's routing."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from frontend.metrics import FrontendMetrics, Snapshots
from shared.metrics import Buckets
from shared.metrics_http import start_endpoint
from tests.metrics_text import samples, value
from tests.unit.frontend.frontend_server_env import LISTEN, Env, b64path, serving


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serving(tmp_path, LISTEN)


def metrics_of(env: Env) -> FrontendMetrics:
    signer = SimpleNamespace(call_seconds=Buckets(), errors={"UNAVAILABLE": 2})
    bounded = SimpleNamespace(in_flight=0, refused=4)
    return FrontendMetrics(env.server, signer, bounded, [env.src_a, env.src_b])  # type: ignore[arg-type]


def scrape(env: Env, metrics: FrontendMetrics) -> str:
    async def on_loop() -> str:  # after every request callback that ran before it
        return metrics.render().decode()
    return env.call(on_loop())


def test_each_request_counted_once_by_method_answer_and_cert_status(env: Env) -> None:
    metrics = metrics_of(env)
    good = env.request(env.a, 0x100)
    assert env.post(good)[0] == 200  # signed (a miss)
    assert env.post(good)[0] == 200  # a cache hit
    assert env.get(b64path(env.request(env.a, 0x101)))[0] == 200  # revoked
    assert env.post(env.request(env.a, 0x100, nonce=b"n" * 16))[0] == 200  # a nonce: signed again
    assert env.post(b"\x30\x03\x02\x01\x00")[0] == 200  # malformedRequest (an OCSP answer)
    assert env.post(env.request(env.other, 7))[0] == 200  # unauthorized: a CA not served
    assert env.get("/-/health")[0] == 200  # not an OCSP request: not counted
    text = scrape(env, metrics)
    req = "ocsp_frontend_requests_total"
    assert value(text, req, method="POST", answer="successful", cert_status="good") == 3
    assert value(text, req, method="GET", answer="successful", cert_status="revoked") == 1
    assert value(text, req, method="POST", answer="malformedRequest", cert_status="") == 1
    assert value(text, req, method="POST", answer="unauthorized", cert_status="") == 1
    assert sum(v for (name, _), v in samples(text).items() if name == req) == 6
    assert value(text, "ocsp_frontend_request_duration_seconds_count") == 5  # a cache hit is not timed
    assert value(text, "ocsp_frontend_signatures_total") == 3
    assert value(text, "ocsp_frontend_cache_entries") == 2
    assert value(text, "ocsp_frontend_cache_evictions_total") == 0
    assert value(text, "ocsp_frontend_signer_errors_total", code="UNAVAILABLE") == 2
    assert value(text, "ocsp_frontend_signatures_refused_total") == 4
    assert value(text, "ocsp_frontend_signatures_in_flight") == 0


def test_status_data_per_ca(env: Env) -> None:
    metrics = metrics_of(env)
    text = scrape(env, metrics)
    assert value(text, "ocsp_frontend_status_entries", ca="a") == 2  # index.txt: two lines
    assert value(text, "ocsp_frontend_status_entries", ca="b") == 1  # the CRL's one revoked serial
    assert value(text, "ocsp_frontend_status_generation", ca="a") == 1
    assert value(text, "ocsp_frontend_status_reload_failures_total", ca="a") == 0
    age_a = value(text, "ocsp_frontend_status_age_seconds", ca="a")  # index.txt: since it was loaded
    assert age_a is not None and 0 <= age_a < 600
    crl_this_update = env.src_b.current().issued_at()
    assert crl_this_update is not None
    age_b = value(text, "ocsp_frontend_status_age_seconds", ca="b")  # a CRL: since its thisUpdate
    assert age_b == pytest.approx(time.time() - crl_this_update.timestamp(), abs=60)
    env.index.write_text("not an index line\n")
    assert not env.call(env.src_a.refresh(force=True))
    text = scrape(env, metrics)
    assert value(text, "ocsp_frontend_status_reload_failures_total", ca="a") == 1
    assert value(text, "ocsp_frontend_status_generation", ca="a") == 1  # the last good data kept


def test_endpoint_answers_metrics_only(env: Env) -> None:
    async def start() -> asyncio.AbstractServer:
        return await start_endpoint(lambda: b"x_up 1\n", address="127.0.0.1:0")

    server = env.call(start())
    port = server.sockets[0].getsockname()[1]
    try:
        for method, path, status in [("GET", "/metrics", 200), ("GET", "/metrics?x=1", 200), ("GET", "/", 404),
                                     ("POST", "/metrics", 404), ("GET", "/metricsx", 404)]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path)
            r = conn.getresponse()
            assert r.status == status, (method, path)
            body = r.read()
            if status == 200:
                assert body == b"x_up 1\n" and r.getheader("Content-Type", "").startswith("text/plain")
            conn.close()
    finally:
        server.close()


def test_worker_snapshots_merge(env: Env, tmp_path: Path) -> None:
    metrics = metrics_of(env)
    assert env.post(env.request(env.a, 0x100))[0] == 200
    snaps = Snapshots(tmp_path / "snaps")
    snaps.directory.mkdir()

    async def twice() -> str:
        (snaps.directory / "worker-2.prom").write_bytes(metrics.render())  # another worker's, same counts
        return snaps.scrape(1, metrics.render).decode()

    text = env.call(twice())
    assert value(text, "ocsp_frontend_requests_total", method="POST", answer="successful", cert_status="good") == 2
    assert value(text, "ocsp_frontend_status_entries", ca="a") == 2  # the same files: not summed
    assert value(text, "ocsp_frontend_metrics_workers") == 2
    snaps.remove()
    assert not snaps.directory.exists()
