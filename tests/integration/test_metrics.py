"""Prometheus metrics of a real signer and frontend, scraped over HTTP while they serve (README "Metrics").

Requests of known kinds go to the frontend (POST good with a nonce, GET revoked, a malformed POST, a
nonce-less POST and its cache hit on the same connection); each /metrics must then have moved by
exactly those amounts, with one process per half and with ``workers = 2`` on both halves (one
endpoint per half, the sums over the workers).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Demo,
    Process,
    free_port,
    http_healthy,
    signer_healthy,
    tool,
    wait_until,
)
from tests.integration.ocsp_client import build_request, get, load_cert, post, random_nonce
from tests.integration.private_stack import demo_config, running, short_dir
from tests.metrics_text import samples

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def read(port: int) -> Samples:
    status, text = scrape(port)
    assert status == 200, text
    return samples(text)


def total(s: Samples, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in s.items() if n == name and want <= ls)


@dataclass
class Stack:
    demo: Demo
    port: int  # OCSP
    frontend_metrics: int
    signer_metrics: int
    workers: int

    def request(self, which: str, *, nonce: bool) -> bytes:
        ca = self.demo.path("rsa-ca")
        return build_request(load_cert(ca / f"leaf-{which}.pem"), load_cert(ca / "ca.pem"),
                             nonce=random_nonce() if nonce else None)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def stack(request: pytest.FixtureRequest, demo: Demo, tmp_path: Path) -> Iterator[Stack]:
    workers = request.param
    address = f"unix:{short_dir() / 'signer.sock'}"
    signer_port, frontend_port, port = free_port(), free_port(), free_port()
    signer_conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": address, "socket": None, "writer_id": f"metrics{workers}", "workers": workers,
    }, append=f'\n[metrics]\naddress = "127.0.0.1:{signer_port}"\n')
    frontend_conf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml", {
        "port": port, "address": address, "workers": workers,
    }, append=f'\n[metrics]\naddress = "127.0.0.1:{frontend_port}"\n')
    signer_log = signer_conf.with_suffix(".log")

    def signer_ready() -> bool:  # every worker serving, not just the first
        if workers > 1 and not (signer_log.exists() and "supervisor: serving on" in signer_log.read_text()):
            return False
        return signer_healthy(address)

    signer = Process("ocsp-signer-metrics", [tool("ocsp-signer"), "--config", str(signer_conf)], demo.env,
                     signer_ready, signer_log)
    frontend = Process("ocsp-frontend-metrics", [tool("ocsp-frontend"), "--config", str(frontend_conf)], demo.env,
                       lambda: http_healthy(port), frontend_conf.with_suffix(".log"))
    with running(signer, frontend):
        stack = Stack(demo, port, frontend_port, signer_port, workers)
        if workers > 1:  # every frontend worker has written its first snapshot
            wait_until(lambda: total(read(frontend_port), "ocsp_frontend_metrics_workers") == workers, 20,
                       "every frontend worker in the metrics")
        yield stack


def test_counts_move_by_exactly_the_requests_sent(stack: Stack) -> None:
    fe0, sg0 = read(stack.frontend_metrics), read(stack.signer_metrics)
    for _ in range(3):  # signed, every one
        assert post(stack.port, stack.request("good", nonce=True))[0] == 200
    assert get(stack.port, stack.request("revoked", nonce=False))[0] == 200  # signed: nothing cached yet
    assert post(stack.port, b"\x30\x03\x02\x01\x00")[0] == 200  # malformedRequest
    plain = stack.request("good", nonce=False)
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:  # one connection, so one worker: signed, then its cache hit
        for _ in range(2):
            conn.request("POST", "/", body=plain, headers={"Content-Type": "application/ocsp-request"})
            r = conn.getresponse()
            assert r.status == 200 and r.read()
    finally:
        conn.close()

    req = "ocsp_frontend_requests_total"
    expected = {
        (req, ("method", "POST"), ("answer", "successful"), ("cert_status", "good")): 5,
        (req, ("method", "GET"), ("answer", "successful"), ("cert_status", "revoked")): 1,
        (req, ("method", "POST"), ("answer", "malformedRequest")): 1,
        (req,): 7,
        ("ocsp_frontend_request_duration_seconds_count",): 6,  # not the cache hit
        ("ocsp_frontend_signatures_total",): 5,
    }

    def fe_moved() -> dict[tuple[object, ...], float]:
        now = read(stack.frontend_metrics)
        return {k: total(now, str(k[0]), **dict(k[1:])) - total(fe0, str(k[0]), **dict(k[1:]))  # type: ignore[arg-type]
                for k in expected}

    # Workers' snapshots are at most a second old: wait for the counts, then they must be exact.
    wait_until(lambda: fe_moved()[(req,)] >= 7, 15, "the frontend's metrics to count the requests")
    assert fe_moved() == expected
    fe = read(stack.frontend_metrics)
    assert total(fe, "ocsp_frontend_signer_call_seconds_count") - total(fe0, "ocsp_frontend_signer_call_seconds_count") >= 5
    assert total(fe, "ocsp_frontend_status_entries", ca="demo-rsa") > 0
    assert total(fe, "ocsp_frontend_status_generation", ca="demo-rsa") >= 1  # the maximum, not a sum
    assert total(fe, "ocsp_frontend_status_generation", ca="demo-rsa") < 1 + stack.workers

    sg = read(stack.signer_metrics)
    signed = total(sg, "ocsp_signer_signatures_total", result="ok") - total(sg0, "ocsp_signer_signatures_total",
                                                                             result="ok")
    assert signed == 5
    assert total(sg, "ocsp_signer_signatures_total", ca="demo-rsa", result="ok") - \
        total(sg0, "ocsp_signer_signatures_total", ca="demo-rsa", result="ok") == 5
    assert total(sg, "ocsp_signer_signatures_total", result="refused") == total(sg0, "ocsp_signer_signatures_total",
                                                                                 result="refused")
    assert total(sg, "ocsp_signer_sign_seconds_count") - total(sg0, "ocsp_signer_sign_seconds_count") == 5
    assert total(sg, "ocsp_signer_batch_size_sum") - total(sg0, "ocsp_signer_batch_size_sum") == 5
    assert total(sg, "ocsp_signer_audit_write_seconds_count") > total(sg0, "ocsp_signer_audit_write_seconds_count")
    assert total(sg, "ocsp_signer_responder_generation", ca="demo-rsa") == 1  # the same on every worker
    assert total(sg, "ocsp_signer_responder_expiry_seconds", ca="demo-rsa") > 0
    if stack.workers > 1:
        assert total(sg, "ocsp_signer_metrics_workers") == 2 and total(sg, "ocsp_signer_metrics_workers_missing") == 0
        assert total(fe, "ocsp_frontend_metrics_workers") == 2


def test_metrics_are_not_on_the_ocsp_port_and_only_at_metrics(stack: Stack) -> None:
    status, body = scrape(stack.port)  # the OCSP listener: "metrics" is no base64 request, no exposition
    assert "ocsp_frontend_" not in body and "# TYPE" not in body, (status, body)
    assert scrape(stack.frontend_metrics, "/")[0] == 404
    assert scrape(stack.signer_metrics, "/other")[0] == 404


@pytest.mark.parametrize("program,workers", [("ocsp-frontend", 1), ("ocsp-frontend", 2), ("ocsp-signer", 1),
                                             ("ocsp-signer", 2)])
def test_metrics_port_taken_is_a_config_error(demo: Demo, tmp_path: Path, program: str, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        metrics = f'\n[metrics]\naddress = "127.0.0.1:{busy}"\n'
        if program == "ocsp-frontend":
            conf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml",
                               {"port": free_port(), "workers": workers}, append=metrics)
        else:
            conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
                "address": f"unix:{short_dir() / 'signer.sock'}", "socket": None, "writer_id": "metricsbusy",
                "workers": workers}, append=metrics)
        done = subprocess.run([tool(program), "--config", str(conf)], env=demo.env, capture_output=True, text=True,
                              timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "metrics.address: cannot listen on 127.0.0.1:" in done.stderr, done.stderr
