"""The whole request path with real parts: SoftHSM token, ocsp-signer and ocsp-frontend
processes talking gRPC, and real clients (openssl ocsp, cryptography) judging the answers."""

from __future__ import annotations

import datetime as dt
import signal

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, wait_until
from tests.integration.ocsp_client import (
    build_multi_request,
    build_request,
    get,
    load_cert,
    openssl_ocsp,
    post,
    random_nonce,
    response_nonce,
    verify_basic,
)

pytestmark = pytest.mark.integration

CAS = ["rsa-ca", "ec-ca"]


def leaf(demo: Demo, ca: str, which: str) -> x509.Certificate:
    return load_cert(demo.path(ca, f"leaf-{which}.pem"))


def ca_cert(demo: Demo, ca: str) -> x509.Certificate:
    return load_cert(demo.path(ca, "ca.pem"))


def ask(demo: Demo, ca: str, which: str, *, algorithm: str = "sha1", nonce: bytes | None = None,
        method: str = "POST") -> ocsp.OCSPResponse:
    der = build_request(leaf(demo, ca, which), ca_cert(demo, ca), algorithm=algorithm, nonce=nonce)
    status, headers, body = (post if method == "POST" else get)(demo.http_port, der)
    assert status == 200
    assert headers["content-type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(body)


# -- openssl ocsp, the client an operator pastes ----------------------------------------------------


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("nonce", [True, False])
@pytest.mark.parametrize("which,expected", [("good", "good"), ("revoked", "revoked"), ("unknown", "unknown")])
def test_openssl_client(demo: Demo, frontend: Process, ca: str, nonce: bool, which: str, expected: str) -> None:
    cert = demo.path(ca, f"leaf-{which}.pem")
    r = openssl_ocsp(demo.path(ca, "ca.pem"), cert, demo.url, nonce=nonce)
    assert r.returncode == 0, r.stderr
    assert r.verified, r.stdout + r.stderr
    assert f"{cert}: {expected}" in r.stdout, r.stdout
    assert "This Update:" in r.stdout and "Next Update:" in r.stdout
    if expected == "revoked":
        assert "Reason: keyCompromise" in r.stdout
        assert "Revocation Time:" in r.stdout
    if nonce:
        assert "WARNING: no nonce in response" not in r.stdout + r.stderr


def test_openssl_two_certs_one_request(demo: Demo, frontend: Process) -> None:
    good, revoked = demo.path("rsa-ca", "leaf-good.pem"), demo.path("rsa-ca", "leaf-revoked.pem")
    r = openssl_ocsp(demo.path("rsa-ca", "ca.pem"), [good, revoked], demo.url)
    assert r.verified, r.stdout + r.stderr
    assert f"{good}: good" in r.stdout and f"{revoked}: revoked" in r.stdout


# -- cryptography as the independent parser -----------------------------------------------------------


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_good_answer_fields(demo: Demo, frontend: Process, ca: str, algorithm: str, method: str) -> None:
    issuer, cert = ca_cert(demo, ca), leaf(demo, ca, "good")
    resp = ask(demo, ca, "good", algorithm=algorithm, method=method)
    verify_basic(resp, issuer)
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == cert.serial_number
    assert resp.hash_algorithm.name == algorithm
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, resp.hash_algorithm).build()
    assert resp.issuer_name_hash == expected.issuer_name_hash
    assert resp.issuer_key_hash == expected.issuer_key_hash
    now = dt.datetime.now(dt.UTC)
    assert resp.this_update_utc <= now + dt.timedelta(minutes=5)
    assert resp.next_update_utc is not None and resp.next_update_utc > now
    assert resp.this_update_utc.microsecond == 0 and resp.produced_at_utc.microsecond == 0
    assert response_nonce(resp) is None


@pytest.mark.parametrize("ca", CAS)
def test_revoked_answer_fields(demo: Demo, frontend: Process, ca: str) -> None:
    resp = ask(demo, ca, "revoked")
    verify_basic(resp, ca_cert(demo, ca))
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.key_compromise
    assert resp.revocation_time_utc is not None
    assert resp.revocation_time_utc <= dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("size", [1, 16, 32, 128])
def test_nonce_echoed(demo: Demo, frontend: Process, ca: str, size: int) -> None:
    nonce = random_nonce(size)
    resp = ask(demo, ca, "good", nonce=nonce)
    verify_basic(resp, ca_cert(demo, ca))
    assert response_nonce(resp) == nonce


@pytest.mark.parametrize("size", [0, 129])
def test_bad_nonce_is_malformed(demo: Demo, frontend: Process, size: int) -> None:
    der = build_multi_request([(leaf(demo, "rsa-ca", "good"), ca_cert(demo, "rsa-ca"))], nonce=b"\x00" * size)
    status, _, body = post(demo.http_port, der)
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_multi_certificate_request(demo: Demo, frontend: Process) -> None:
    issuer = ca_cert(demo, "ec-ca")
    pairs = [(leaf(demo, "ec-ca", w), issuer) for w in ("good", "revoked", "unknown")]
    status, _, body = post(demo.http_port, build_multi_request(pairs, algorithm="sha256"))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    verify_basic(resp, issuer)
    got = {single.serial_number: single.certificate_status for single in resp.responses}
    assert got == {
        pairs[0][0].serial_number: ocsp.OCSPCertStatus.GOOD,
        pairs[1][0].serial_number: ocsp.OCSPCertStatus.REVOKED,
        pairs[2][0].serial_number: ocsp.OCSPCertStatus.UNKNOWN,
    }


def test_mixed_issuers_unauthorized(demo: Demo, frontend: Process) -> None:
    pairs = [(leaf(demo, "rsa-ca", "good"), ca_cert(demo, "rsa-ca")),
             (leaf(demo, "ec-ca", "good"), ca_cert(demo, "ec-ca"))]
    _status, _, body = post(demo.http_port, build_multi_request(pairs))
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize("served", ["rsa-ca", "ec-ca"])
def test_served_then_unserved_issuer_unauthorized(demo: Demo, frontend: Process, served: str) -> None:
    """A served CA's certificate first, then one whose issuer is served by nobody (a leaf posing as its
    own issuer): unauthorized from the whole stack, never an answer signed by the first CA's responder."""
    stranger = leaf(demo, "rsa-ca", "revoked")
    pairs = [(leaf(demo, served, "good"), ca_cert(demo, served)), (stranger, stranger)]
    status, _headers, body = post(demo.http_port, build_multi_request(pairs, nonce=random_nonce()))
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_unknown_issuer_unauthorized(demo: Demo, frontend: Process) -> None:
    # A CA the responder does not serve: the leaf's own certificate posing as issuer.
    cert = leaf(demo, "rsa-ca", "good")
    status, headers, body = post(demo.http_port, build_request(cert, cert))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert "max-age" not in headers.get("cache-control", "")


@pytest.mark.parametrize("body", [b"", b"\x30\x03\x02\x01\x00", b"not der at all", b"\x30\x80" * 100])
def test_malformed(demo: Demo, frontend: Process, body: bytes) -> None:
    status, _, answer = post(demo.http_port, body)
    if status == 200:
        assert ocsp.load_der_ocsp_response(answer).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    else:
        assert 400 <= status < 500


def test_get_cache_headers(demo: Demo, frontend: Process) -> None:
    der = build_request(leaf(demo, "rsa-ca", "good"), ca_cert(demo, "rsa-ca"))
    status, headers, body = get(demo.http_port, der)
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    cc = headers["cache-control"]
    assert "max-age=" in cc and "public" in cc and "no-transform" in cc and "must-revalidate" in cc
    assert headers["etag"].strip('"')
    assert "last-modified" in headers and "expires" in headers
    assert resp.next_update_utc is not None


# -- live changes and failures ------------------------------------------------------------------------


def test_index_revocation_seen_while_running(demo: Demo, frontend: Process) -> None:
    cert = load_cert(demo.path("rsa-ca", "leaf-good2.pem"))
    issuer = ca_cert(demo, "rsa-ca")
    der = build_request(cert, issuer)
    first = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
    assert first.certificate_status == ocsp.OCSPCertStatus.GOOD
    demo.ctl("demo", "revoke", "--dir", str(demo.dir), "--ca", "rsa", "--serial", format(cert.serial_number, "X"),
             "--reason", "superseded")
    frontend.signal(signal.SIGHUP)

    def revoked() -> bool:
        resp = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
        return resp.certificate_status == ocsp.OCSPCertStatus.REVOKED

    wait_until(revoked, 15, "the index.txt revocation to show")
    resp = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
    verify_basic(resp, issuer)
    assert resp.revocation_reason == x509.ReasonFlags.superseded


def test_crl_replaced_while_running(demo: Demo, frontend: Process) -> None:
    cert = load_cert(demo.path("ec-ca", "leaf-good2.pem"))
    issuer = ca_cert(demo, "ec-ca")
    der = build_request(cert, issuer)
    first = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
    assert first.certificate_status == ocsp.OCSPCertStatus.GOOD
    demo.ctl("demo", "revoke", "--dir", str(demo.dir), "--ca", "ec", "--serial", format(cert.serial_number, "X"),
             "--reason", "cessationOfOperation")

    def revoked() -> bool:
        resp = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
        return resp.certificate_status == ocsp.OCSPCertStatus.REVOKED

    wait_until(revoked, 20, "the new CRL to be picked up without SIGHUP")
    resp = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
    verify_basic(resp, issuer)
    assert resp.revocation_reason == x509.ReasonFlags.cessation_of_operation
    crl = x509.load_pem_x509_crl(demo.path("ec-ca", "crl.pem").read_bytes())
    assert resp.this_update_utc == crl.last_update_utc
    assert resp.next_update_utc == crl.next_update_utc


def test_broken_crl_keeps_last_good(demo: Demo, frontend: Process) -> None:
    """A newer CRL that no longer lists the revoked leaf, but is not signed by the CA, must not be
    installed: had it been, the leaf would answer good. Nonces keep every answer out of the cache, and
    the test waits for the frontend to say it refused the file."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    crl_path = demo.path("ec-ca", "crl.pem")
    good_crl = crl_path.read_bytes()
    current = x509.load_pem_x509_crl(good_crl)
    number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    later = current.last_update_utc + dt.timedelta(seconds=1)  # newer, so only the signature is wrong
    forged = (x509.CertificateRevocationListBuilder()
              .issuer_name(current.issuer)
              .last_update(later)
              .next_update(later + dt.timedelta(days=1))
              .add_extension(x509.CRLNumber(number + 1), critical=False)
              .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))  # not the CA's key

    def status() -> ocsp.OCSPCertStatus:
        der = build_request(leaf(demo, "ec-ca", "revoked"), ca_cert(demo, "ec-ca"), nonce=random_nonce())
        return ocsp.load_der_ocsp_response(post(demo.http_port, der)[2]).certificate_status

    assert status() == ocsp.OCSPCertStatus.REVOKED
    before = len(frontend.log.read_bytes())
    try:
        crl_path.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
        frontend.signal(signal.SIGHUP)
        wait_until(lambda: b"signature does not verify" in frontend.log.read_bytes()[before:], 20,
                   "the frontend to refuse the forged CRL")
        # The frontend keeps answering from the last good CRL: still revoked, never good.
        for _ in range(5):
            assert status() == ocsp.OCSPCertStatus.REVOKED
    finally:
        crl_path.write_bytes(good_crl)
        frontend.signal(signal.SIGHUP)


def test_signer_down_try_later_then_recovers(demo: Demo, signer: Process, frontend: Process) -> None:
    # A nonce defeats the response cache, so every request needs the signer.
    der = build_request(leaf(demo, "rsa-ca", "good"), ca_cert(demo, "rsa-ca"), nonce=random_nonce())
    assert ocsp.load_der_ocsp_response(post(demo.http_port, der)[2]).response_status == \
        ocsp.OCSPResponseStatus.SUCCESSFUL
    signer.stop()
    try:
        resp = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
        assert resp.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    finally:
        signer.start()

    def recovered() -> bool:
        r = ocsp.load_der_ocsp_response(post(demo.http_port, der)[2])
        return r.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL

    wait_until(recovered, 20, "the frontend to reach the restarted signer")


def test_responses_parse_with_asn1crypto_too(demo: Demo, frontend: Process) -> None:
    resp = ask(demo, "ec-ca", "good", nonce=random_nonce())
    parsed = asn1_ocsp.OCSPResponse.load(resp.public_bytes(serialization.Encoding.DER))
    tbs = parsed["response_bytes"]["response"].parsed["tbs_response_data"]
    assert tbs["responder_id"].name == "by_key"
    assert tbs["version"].native == "v1"


def test_conditional_get_revalidates_with_304(demo: Demo, frontend: Process) -> None:
    import base64
    import http.client
    import urllib.parse

    der = build_request(leaf(demo, "ec-ca", "good3"), ca_cert(demo, "ec-ca"))
    status, headers, body = get(demo.http_port, der)  # fills the cache
    assert status == 200
    etag = headers["etag"]
    path = "/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    for tag, expected in [(etag, 304), (f"W/{etag}", 304), ('"0000", ' + etag, 304), ("*", 304),
                          ('"not-it"', 200)]:
        conn = http.client.HTTPConnection("127.0.0.1", demo.http_port, timeout=10)
        conn.request("GET", path, headers={"If-None-Match": tag})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        assert resp.status == expected, tag
        if expected == 304:
            assert data == b"" and resp.getheader("ETag") == etag
        else:
            assert data == body
