"""shared.status.fetch.download against a real HTTP server on 127.0.0.1 (tests/crl_server.py):
conditional requests, status codes, size and time limits, redirects; no partial file is ever left."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.status.fetch import MAX_REDIRECTS, FetchError, Validators, download
from tests.crl_server import CrlServer, Route

BODY = bytes(range(256)) * 40  # 10 KiB
NONE = Validators()


@pytest.fixture
def server() -> Iterator[CrlServer]:
    with CrlServer() as s:
        yield s


def get(server: CrlServer, tmp_path: Path, path: str = "/ca.crl", *, validators: Validators = NONE,
        timeout: float = 5.0, max_size: int = 1 << 20):
    return download(server.url(path), tmp_path, validators=validators, timeout=timeout, max_size=max_size)


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_a_body_is_saved_with_its_validators_and_digest(server: CrlServer, tmp_path: Path) -> None:
    server.routes["/ca.crl"] = Route(BODY, last_modified=1_700_000_000)
    got = get(server, tmp_path)
    assert got.path is not None and got.path.parent == tmp_path
    assert got.path.read_bytes() == BODY and got.size == len(BODY)
    assert got.digest == hashlib.sha256(BODY).digest()
    assert got.validators.etag == server.routes["/ca.crl"].tag()
    assert got.validators.last_modified == "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize("etag", [True, False])
def test_conditional_requests_get_304_and_no_body(server: CrlServer, tmp_path: Path, etag: bool) -> None:
    server.routes["/ca.crl"] = Route(BODY, etag=etag, last_modified=1_700_000_000)
    first = get(server, tmp_path)
    assert first.path is not None
    first.path.unlink()
    again = get(server, tmp_path, validators=first.validators)
    assert again.path is None and again.validators == first.validators
    assert server.conditional["/ca.crl"] == 1 and server.not_modified["/ca.crl"] == 1
    assert leftovers(tmp_path) == []
    # A new body is fetched whole despite the old validators.
    server.routes["/ca.crl"] = Route(BODY + b"x", etag=etag, last_modified=1_700_000_100)
    new = get(server, tmp_path, validators=first.validators)
    assert new.path is not None and new.path.read_bytes() == BODY + b"x"


@pytest.mark.parametrize("status,message", [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error")])
def test_error_statuses_are_failures(server: CrlServer, tmp_path: Path, status: int, message: str) -> None:
    server.routes["/ca.crl"] = Route(BODY, status=status)
    with pytest.raises(FetchError, match=message):
        get(server, tmp_path)
    assert leftovers(tmp_path) == []


def test_unknown_path_is_404(server: CrlServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        get(server, tmp_path, "/nothing.crl")


@pytest.mark.parametrize("content_length", [True, False])
def test_an_oversized_body_is_refused_and_not_kept(server: CrlServer, tmp_path: Path, content_length: bool) -> None:
    server.routes["/ca.crl"] = Route(BODY * 20, content_length=content_length)  # 200 KiB
    with pytest.raises(FetchError, match=r"status.max_size \(65536"):
        get(server, tmp_path, max_size=65536)
    assert leftovers(tmp_path) == []
    # Exactly at the limit is fine.
    server.routes["/ca.crl"] = Route(BODY[:4096], content_length=content_length)
    got = get(server, tmp_path, max_size=4096)
    assert got.path is not None and got.size == 4096


def test_slow_headers_time_out(server: CrlServer, tmp_path: Path) -> None:
    server.routes["/ca.crl"] = Route(BODY, delay=5)
    with pytest.raises(FetchError, match=r"timed out after 0.3 s \(status.timeout\)"):
        get(server, tmp_path, timeout=0.3)


def test_a_trickling_body_is_cut_at_the_deadline(server: CrlServer, tmp_path: Path) -> None:
    # Each piece arrives well within the per-read timeout; the whole would take 2 s.
    server.routes["/ca.crl"] = Route(BODY, drip=0.2)
    with pytest.raises(FetchError, match=r"longer than status.timeout \(0.5 s\)|timed out"):
        get(server, tmp_path, timeout=0.5)
    assert leftovers(tmp_path) == []


def test_redirects_are_followed_up_to_the_bound(server: CrlServer, tmp_path: Path) -> None:
    server.routes["/ca.crl"] = Route(BODY)
    server.routes["/old.crl"] = Route(location="/ca.crl")
    got = get(server, tmp_path, "/old.crl")
    assert got.path is not None and got.path.read_bytes() == BODY
    for i in range(MAX_REDIRECTS + 1):
        server.routes[f"/r{i}"] = Route(location=f"/r{i + 1}")
    server.routes[f"/r{MAX_REDIRECTS + 1}"] = Route(BODY)
    with pytest.raises(FetchError, match=f"more than {MAX_REDIRECTS} redirects"):
        get(server, tmp_path, "/r0")
    server.routes["/loop"] = Route(location="/loop")
    with pytest.raises(FetchError, match="redirects"):
        get(server, tmp_path, "/loop")


def test_a_server_that_is_down_is_a_failure(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(FetchError, match="ConnectError"):
        download(f"http://127.0.0.1:{port}/ca.crl", tmp_path, validators=Validators(), timeout=2, max_size=1024)


def test_a_compressed_body_is_refused(server: CrlServer, tmp_path: Path) -> None:
    server.routes["/ca.crl"] = Route(BODY, headers={"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="Content-Encoding 'gzip'"):
        get(server, tmp_path)


def test_an_unwritable_state_dir_is_a_clear_failure(server: CrlServer, tmp_path: Path) -> None:
    server.routes["/ca.crl"] = Route(BODY)
    with pytest.raises(FetchError, match="cannot write in the state directory"):
        get(server, tmp_path / "missing")


def tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A test CA (ca.pem) and a certificate for 127.0.0.1 it issued (server.pem, server-key.pem)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Web Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server-key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return d / "ca.pem", d / "server.pem", d / "server-key.pem"


def test_https_with_ca_bundle_and_refused_without(tmp_path: Path) -> None:
    import ssl

    keys = tmp_path / "keys"
    keys.mkdir()
    ca, cert, key = tls_files(keys)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with CrlServer(tls=ctx) as server:
        server.routes["/ca.crl"] = Route(BODY)
        url = server.url("/ca.crl")
        assert url.startswith("https://")
        got = download(url, tmp_path, validators=NONE, timeout=5, max_size=1 << 20, ca_bundle=ca)
        assert got.path is not None and got.path.read_bytes() == BODY
        got.path.unlink()
        # The system's store does not trust the test CA: a clear failure, nothing written.
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            download(url, tmp_path, validators=NONE, timeout=5, max_size=1 << 20)
        assert leftovers(tmp_path) == ["keys"]


def test_a_bad_ca_bundle_is_a_clear_failure(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate\n")
    with pytest.raises(FetchError, match="TLS set-up failed"):
        download("https://127.0.0.1:1/ca.crl", tmp_path, validators=NONE, timeout=1, max_size=1024, ca_bundle=bundle)
