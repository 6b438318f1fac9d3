"""UrlCrlSource: a CRL fetched from a real HTTP server (tests/crl_server.py) through the CRL file
machinery: verified before use, kept in the state directory, never replaced by a bad, older, wrongly
signed or oversized CRL; start-up from the kept copy when the server is down; the CDP address; the
fetch schedule and counters."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from shared.clock import FakeClock
from shared.ocsp.types import CertStatus
from shared.status.base import StatusDataError
from shared.status.url_source import CATCH_UP_INTERVAL, UrlCrlSource, cdp_url
from tests.crl_server import CrlServer, Route
from tests.unit.frontend.frontend_pki import NOW, TestCA

KC = x509.ReasonFlags.key_compromise
PATH = "/ca.crl"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("URL Test CA")


@pytest.fixture(scope="module")
def other() -> TestCA:
    return TestCA("Another CA")


@pytest.fixture
def server() -> Iterator[CrlServer]:
    with CrlServer() as s:
        yield s


def crl(ca: TestCA, revoked: list[int], number: int, age: timedelta = timedelta(0)) -> bytes:
    return ca.crl([(s, NOW - timedelta(hours=2), KC, None) for s in revoked], this_update=NOW - age,
                  number=number)


def make(server: CrlServer, tmp_path: Path, ca: TestCA, *, url: str | None = None, ca_der: bytes | None = None,
         max_size: int = 1 << 20, refresh: float = 3600.0) -> UrlCrlSource:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return UrlCrlSource("t", url or server.url(PATH), state, ca_der or ca.der, unissued="good",
                        check_interval=0.1, clock=FakeClock(NOW), refresh=refresh, timeout=2.0, max_size=max_size)


def status(src: UrlCrlSource, serial: int) -> CertStatus:
    return src.current().status(serial).status


def files(src: UrlCrlSource) -> list[str]:
    return sorted(p.name for p in src.state_dir.iterdir())


def test_fetched_at_start_kept_and_refreshed(server: CrlServer, tmp_path: Path, ca: TestCA) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 1, timedelta(hours=1)))
    src = make(server, tmp_path, ca)
    src.load_now()
    assert status(src, 0x10) is CertStatus.REVOKED and status(src, 0x11) is CertStatus.GOOD
    assert files(src) == ["t.crl"] and src.kept.read_bytes() == server.routes[PATH].body
    assert src.fetch_successes == 1 and src.fetch_failures == 0 and src.last_fetch_ok is not None
    assert src.last_fetch_error is None

    async def go() -> None:
        # Nothing new: a 304, a successful check, no reload.
        gen = src.generation
        src._last_attempt = None  # due
        assert not await src.refresh()
        assert server.not_modified[PATH] == 1 and src.fetch_successes == 2 and src.generation == gen
        # A revocation published at the URL is answered after the next fetch.
        server.routes[PATH] = Route(crl(ca, [0x10, 0x11], 2))
        assert await src.refresh(force=True)
        assert status(src, 0x11) is CertStatus.REVOKED
        assert src.last_changes == {0x11}
        assert src.kept.read_bytes() == server.routes[PATH].body and files(src) == ["t.crl"]

    asyncio.run(go())


def bad_crls(ca: TestCA, other: TestCA) -> dict[str, tuple[bytes, str]]:
    return {
        "garbage": (b"<html>maintenance</html>", "not a PEM or DER CRL"),
        "cut short": (crl(ca, [0x10, 0x11], 3)[:-40], "not a PEM or DER CRL"),
        "older": (crl(ca, [], 3, timedelta(days=1) - timedelta(minutes=1)), "older than the loaded CRL"),
        "lower number": (crl(ca, [], 1), "CRLNumber 1 is lower"),
        "signed by another key": (ca.crl([], this_update=NOW, number=3, signer=other),
                                  "signature does not verify"),
        "another CA's": (other.crl([], this_update=NOW, number=3),
                         "is issued by 'CN=Another CA', not by this CA ('CN=URL Test CA'); set status.url"),
    }


def test_bad_crls_at_the_url_keep_the_last_good(server: CrlServer, tmp_path: Path, ca: TestCA, other: TestCA,
                                                caplog: pytest.LogCaptureFixture) -> None:
    good = crl(ca, [0x10], 2)
    server.routes[PATH] = Route(good)
    src = make(server, tmp_path, ca, max_size=4096)
    src.load_now()

    async def go() -> None:
        for what, (body, message) in {**bad_crls(ca, other),
                                      "oversized": (b"0" * 5000, "larger than status.max_size")}.items():
            server.routes[PATH] = Route(body, content_length=False)
            failures = src.fetch_failures
            caplog.clear()
            assert not await src.refresh(force=True), what
            assert status(src, 0x10) is CertStatus.REVOKED, what
            assert src.fetch_failures == failures + 1, what
            assert message in (src.last_fetch_error or ""), (what, src.last_fetch_error)
            assert any(message in r.getMessage() and r.levelname == "ERROR" for r in caplog.records), what
            assert src.kept.read_bytes() == good and files(src) == ["t.crl"], what
        # A refused CRL still on offer costs a 304, not a second download, and is still a failure.
        server.routes[PATH] = Route(crl(ca, [], 1))
        assert not await src.refresh(force=True)
        hits = server.not_modified[PATH]
        assert not await src.refresh(force=True)
        assert server.not_modified[PATH] == hits + 1 and "still publishing the CRL refused" in (
            src.last_fetch_error or "")
        # The good CRL back: a successful check again.
        server.routes[PATH] = Route(crl(ca, [0x10, 0x12], 3))
        assert await src.refresh(force=True)
        assert status(src, 0x12) is CertStatus.REVOKED and src.last_fetch_error is None

    with caplog.at_level(logging.ERROR, logger="ocsp.status"):
        asyncio.run(go())


@pytest.mark.parametrize("route", [Route(status=404), Route(status=500), None])
def test_server_down_at_restart_starts_from_the_kept_copy(server: CrlServer, tmp_path: Path, ca: TestCA,
                                                          route: Route | None) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    make(server, tmp_path, ca).load_now()
    if route is None:
        url = dead_url()
    else:
        server.routes[PATH] = route
        url = server.url(PATH)
    src = make(server, tmp_path, ca, url=url)
    src.load_now()
    assert status(src, 0x10) is CertStatus.REVOKED
    assert src.fetch_failures == 1 and src.last_fetch_error


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}{PATH}"


def test_nothing_fetched_and_nothing_kept_fails_naming_url_and_file(server: CrlServer, tmp_path: Path,
                                                                    ca: TestCA, other: TestCA) -> None:
    src = make(server, tmp_path, ca, url=dead_url())
    with pytest.raises(StatusDataError) as e:
        src.load_now()
    assert f"cannot fetch the CRL at {src.url}" in str(e.value) and str(src.kept) in str(e.value)
    server.routes[PATH] = Route(other.crl([], this_update=NOW))
    src = make(server, tmp_path, ca)
    with pytest.raises(StatusDataError, match="is issued by 'CN=Another CA', not by this CA .*set status.url"):
        src.load_now()
    assert files(src) == []


def test_a_bad_kept_copy_is_replaced_by_a_good_download(server: CrlServer, tmp_path: Path, ca: TestCA) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    src = make(server, tmp_path, ca)
    src.kept.write_bytes(b"junk")
    src.load_now()
    assert status(src, 0x10) is CertStatus.REVOKED and src.kept.read_bytes() == server.routes[PATH].body


def test_a_newer_kept_copy_is_not_rolled_back_by_an_old_download(server: CrlServer, tmp_path: Path,
                                                                  ca: TestCA) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 5))
    make(server, tmp_path, ca).load_now()
    server.routes[PATH] = Route(crl(ca, [], 4, timedelta(hours=1)))  # a stale mirror
    src = make(server, tmp_path, ca)
    src.load_now()
    assert status(src, 0x10) is CertStatus.REVOKED and src.fetch_failures == 1


def ca_with_cdp(ca: TestCA, urls: list[str]) -> bytes:
    points = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None,
                                                                None) for u in urls])
    cert = (x509.CertificateBuilder().subject_name(ca.name).issuer_name(ca.name).public_key(ca.key.public_key())
            .serial_number(7).not_valid_before(NOW - timedelta(days=365)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(points, critical=False).sign(ca.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_cdp_names_the_url(server: CrlServer, tmp_path: Path, ca: TestCA) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    der = ca_with_cdp(ca, ["ldap://ldap.example/cn=x", server.url(PATH)])
    assert cdp_url(x509.load_der_x509_certificate(der)) == server.url(PATH)
    src = make(server, tmp_path, ca, url="cdp", ca_der=der)
    src.load_now()
    assert src.url == server.url(PATH) and status(src, 0x10) is CertStatus.REVOKED
    src = make(server, tmp_path, ca, url="cdp", ca_der=ca_with_cdp(ca, ["ldap://ldap.example/cn=x"]))
    with pytest.raises(StatusDataError, match="no http\\(s\\) URI in its CRL Distribution Points"):
        src.load_now()


def test_schedule(server: CrlServer, tmp_path: Path, ca: TestCA) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    src = make(server, tmp_path, ca, refresh=3600)
    src.load_now()
    assert not src.fetch_due()
    src._last_attempt = time.monotonic() - 3601
    assert src.fetch_due()
    src._last_attempt = time.monotonic()
    assert isinstance(src.clock, FakeClock)
    src.clock.advance(timedelta(days=1, seconds=1))  # the CRL's nextUpdate has passed: fetch at once
    assert src.fetch_due()
    src._attempted()
    assert not src.fetch_due()  # ... once, then on the failure schedule
    src.last_fetch_error = "x"
    src._last_attempt = time.monotonic() - 61
    assert src.fetch_due()
    src._attempted()
    src.last_fetch_error = None
    # The other half disagreed: fetch again soon, but not more than once per CATCH_UP_INTERVAL.
    src.catch_up()
    assert not src.fetch_due()
    src._last_attempt = time.monotonic() - CATCH_UP_INTERVAL
    assert src.fetch_due()
    src._attempted()
    src._last_attempt = time.monotonic() - CATCH_UP_INTERVAL
    assert not src.fetch_due()  # that catch-up was spent


def test_watch_fetches_on_its_own(server: CrlServer, tmp_path: Path, ca: TestCA) -> None:
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    src = make(server, tmp_path, ca, refresh=1)
    src.load_now()
    server.routes[PATH] = Route(crl(ca, [0x10, 0x13], 2))

    async def go() -> None:
        task = asyncio.create_task(src.watch())
        try:
            deadline = time.monotonic() + 20
            while status(src, 0x13) is not CertStatus.REVOKED:
                assert time.monotonic() < deadline, "the watch never fetched the new CRL"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()

    asyncio.run(go())
    assert server.hits[PATH] >= 2


def test_through_the_loader_process(server: CrlServer, tmp_path: Path, ca: TestCA, other: TestCA) -> None:
    """A big download is read by the loader process (forced here for a small one): same verdicts and
    the same wording (the URL, the hint), carried across the process boundary."""
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    src = make(server, tmp_path, ca)
    src.loader_min_bytes = 1
    src.load_now()
    assert status(src, 0x10) is CertStatus.REVOKED

    async def go() -> None:
        server.routes[PATH] = Route(other.crl([], this_update=NOW, number=2))
        assert not await src.refresh(force=True)
        assert "the CRL at http://" in (src.last_fetch_error or "") and "set status.url" in (src.last_fetch_error or "")
        server.routes[PATH] = Route(crl(ca, [0x10, 0x14], 3))
        assert await src.refresh(force=True)
        assert status(src, 0x14) is CertStatus.REVOKED and src.last_changes == {0x14}

    asyncio.run(go())


def test_processes_sharing_state_dir(server: CrlServer, tmp_path: Path, ca: TestCA) -> None:
    """Two sources on one state_dir (frontend workers, or both halves on one host): a newer copy one
    keeps is read by the other; the same CRL kept anew is noted without a re-read."""
    server.routes[PATH] = Route(crl(ca, [0x10], 1))
    a, b = make(server, tmp_path, ca), make(server, tmp_path, ca)
    a.load_now()
    b.load_now()

    async def go() -> None:
        server.routes[PATH] = Route(crl(ca, [0x10, 0x15], 2))
        assert await a.refresh(force=True)
        gen = b.generation
        assert await b.refresh()  # not due: the newer kept copy, read from disk
        assert status(b, 0x15) is CertStatus.REVOKED and b.generation == gen + 1
        # b downloads the same CRL and keeps nothing new (same digest); a's copy rename is noted only.
        b._last_attempt = None
        assert not await b.refresh()
        body = b.kept.read_bytes()
        replaced = b.kept.with_name("x.tmp")
        replaced.write_bytes(body)
        replaced.replace(b.kept)  # as another worker's os.replace of the same download
        gen = a.generation
        assert not await a.refresh()
        assert a.generation == gen

    asyncio.run(go())
