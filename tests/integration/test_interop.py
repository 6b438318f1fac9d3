"""Independent OCSP clients against the running responder.

Each client here has its own ASN.1 code, its own request builder and its own idea of what a valid
answer is: GnuTLS ``ocsptool``, NSS (``vfychain`` through libpkix and ``ocspclnt`` through the
classic OCSP code, both fetching from the leaf's AIA URL), pyhanko-certvalidator (a strict path
validator that matches nonces, checks the ResponderID and the delegated responder's OCSPSigning EKU)
Go's golang.org/x/crypto/ocsp (what Go servers use for stapling; tests/clients/go.py), and the
``openssl ocsp`` forms that test_end_to_end.py does not use.

The commands are spelled out in full so that they can be pasted into the README.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.clients import go
from tests.integration.conftest import Demo, Process
from tests.integration.ocsp_client import build_request, get, load_cert, post, random_nonce

pytestmark = pytest.mark.integration

CAS = ["rsa-ca", "ec-ca"]
STATUSES = ["good", "revoked", "unknown"]
TIMEOUT = 60


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True,  # type: ignore[call-overload]
                          timeout=TIMEOUT, **kw, check=False)


def need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.fail(f"{program} is not installed: run the tests through `make test`")


def pem_path(demo: Demo, ca: str, which: str) -> Path:
    return demo.path(ca, f"leaf-{which}.pem")


# -- GnuTLS ocsptool -----------------------------------------------------------------------------------


def ocsptool_ask(demo: Demo, ca: str, which: str, *, nonce: bool, extra: list[str] | None = None,
                 ) -> subprocess.CompletedProcess[str]:
    need("ocsptool")
    # --ask takes its URL attached with '=' (its argument is optional).
    argv = ["ocsptool", f"--ask={demo.url}/", "--load-issuer", str(demo.path(ca, "ca.pem")),
            "--load-cert", str(pem_path(demo, ca, which)), "--nonce" if nonce else "--no-nonce"]
    return run(argv + (extra or []))


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("nonce", [True, False], ids=["nonce", "no-nonce"])
@pytest.mark.parametrize("which", STATUSES)
def test_gnutls_ocsptool_ask(demo: Demo, frontend: Process, ca: str, nonce: bool, which: str) -> None:
    r = ocsptool_ask(demo, ca, which, nonce=nonce)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Response Status: Successful" in out, out
    assert f"Certificate Status: {which}" in out, out
    # With --ask, ocsptool checks the signature against the issuer (a delegated responder
    # certificate in the response must be issued by it and carry OCSPSigning) and the nonce.
    assert "Verifying OCSP Response: Success." in out, out
    assert "Responder Key ID:" in out, out  # RFC 9919: ResponderID byKey
    assert ("Nonce:" in out) == nonce, out
    if which == "revoked":
        assert "Revocation time:" in out, out


@pytest.mark.parametrize("ca", CAS)
def test_gnutls_ocsptool_trust_anchor_and_signer(demo: Demo, frontend: Process, ca: str,
                                                 tmp_path: Path) -> None:
    """Save a response with --ask --outfile, then verify it offline against the CA as trust anchor,
    against the responder certificate as the explicit signer, and against the wrong CA."""
    saved = tmp_path / "resp.der"
    r = ocsptool_ask(demo, ca, "revoked", nonce=True, extra=["--load-trust", str(demo.path(ca, "ca.pem")),
                                                               "--outfile", str(saved)])
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Verifying OCSP Response: Success." in out, out
    assert ocsp.load_der_ocsp_response(saved.read_bytes()).certificate_status == ocsp.OCSPCertStatus.REVOKED

    for option, cert in (("--load-trust", demo.path(ca, "ca.pem")),
                         ("--load-signer", demo.path(ca, "responder.pem"))):
        v = run(["ocsptool", "--verify-response", option, str(cert), "--infile", str(saved)])
        assert v.returncode == 0, v.stdout + v.stderr
        assert "Verifying OCSP Response: Success." in v.stdout + v.stderr, v.stdout + v.stderr

    other = "ec-ca" if ca == "rsa-ca" else "rsa-ca"
    v = run(["ocsptool", "--verify-response", "--load-trust", str(demo.path(other, "ca.pem")),
             "--infile", str(saved)])
    assert v.returncode != 0
    assert "Verifying OCSP Response: Failure" in v.stdout + v.stderr, v.stdout + v.stderr


# -- NSS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nssdb(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An NSS database trusting both demo CAs as issuers of TLS client and server certificates."""
    need("certutil")
    d = tmp_path_factory.mktemp("nssdb")
    db = f"sql:{d}"
    r = run(["certutil", "-N", "-d", db, "--empty-password"])
    assert r.returncode == 0, r.stderr
    for ca in CAS:
        # 'T' (trusted to issue client certificates) is what usage 0 (SSL client) needs; 'C' for the rest.
        r = run(["certutil", "-A", "-d", db, "-n", ca, "-t", "CT,C,C", "-a",
                 "-i", str(demo.path(ca, "ca.pem"))])
        assert r.returncode == 0, r.stderr
    return db


def vfychain(nssdb: str, leaf: Path) -> subprocess.CompletedProcess[str]:
    """libpkix validation of a TLS client certificate (the demo leaves' EKU), OCSP required for the leaf
    and fetched from the leaf's AIA URL; no answer at all would fail too (failIfNoInfo)."""
    need("vfychain")
    return run(["vfychain", "-d", nssdb, "-pp", "-v", "-a", "-u", "0",
                "-g", "leaf", "-h", "requireFreshInfo", "-m", "ocsp", "-s", "failIfNoInfo", str(leaf)])


@pytest.mark.parametrize("ca", CAS)
def test_nss_vfychain_good(demo: Demo, frontend: Process, nssdb: str, ca: str) -> None:
    r = vfychain(nssdb, pem_path(demo, ca, "good"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Chain is good!" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("which", ["revoked", "unknown"])
def test_nss_vfychain_not_good(demo: Demo, frontend: Process, nssdb: str, ca: str, which: str) -> None:
    r = vfychain(nssdb, pem_path(demo, ca, which))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Chain is bad!" in out, out
    # libpkix reports any OCSP status other than good as SEC_ERROR_REVOKED_CERTIFICATE (-8180),
    # "unknown" included; ocspclnt below tells the two apart.
    assert "ERROR -8180: Peer's Certificate has been revoked." in out, out


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("which,expected", [
    ("good", "succeeded."),
    ("revoked", "Peer's Certificate has been revoked."),  # SEC_ERROR_REVOKED_CERTIFICATE
    ("unknown", "The OCSP server has no status for the certificate."),  # SEC_ERROR_OCSP_UNKNOWN_CERT
])
def test_nss_ocspclnt_status(demo: Demo, frontend: Process, nssdb: str, ca: str, which: str,
                             expected: str) -> None:
    """NSS's classic OCSP client (CERT_CheckOCSPStatus): request to the AIA URL, signature checked
    against the delegated responder certificate chained to the trusted CA."""
    need("ocspclnt")
    leaf = pem_path(demo, ca, which)
    r = run(["ocspclnt", "-d", nssdb, "-S", str(leaf), "-a"])
    out = r.stdout + r.stderr
    assert f'Check of certificate "{leaf}"' in out, out
    assert expected in out, out


# -- pyhanko-certvalidator ---------------------------------------------------------------------------


def _validate(demo: Demo, ca: str, which: str, *, certid_hash: str, nonce: bool) -> object:
    from asn1crypto import pem
    from asn1crypto import x509 as ax
    from pyhanko_certvalidator import CertificateValidator, ValidationContext
    from pyhanko_certvalidator.fetchers.aiohttp_fetchers import AIOHttpFetcherBackend
    from pyhanko_certvalidator.fetchers.aiohttp_fetchers.ocsp_client import AIOHttpOCSPFetcher
    from pyhanko_certvalidator.fetchers.api import Fetchers

    def load(path: Path) -> ax.Certificate:
        data = path.read_bytes()
        if pem.detect(data):
            data = pem.unarmor(data)[2]
        return ax.Certificate.load(data)

    root, leaf = load(demo.path(ca, "ca.pem")), load(pem_path(demo, ca, which))

    async def go() -> object:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            base = AIOHttpFetcherBackend(session, per_request_timeout=10).get_fetchers()
            fetchers = Fetchers(
                ocsp_fetcher=AIOHttpOCSPFetcher(session, per_request_timeout=10, certid_hash_algo=certid_hash,
                                                request_nonces=nonce),
                crl_fetcher=base.crl_fetcher, cert_fetcher=base.cert_fetcher)
            vc = ValidationContext(trust_roots=[root], allow_fetching=True, revocation_mode="hard-fail",
                                   fetchers=fetchers)
            try:
                validator = CertificateValidator(leaf, validation_context=vc)
                await validator.async_validate_usage({"digital_signature"})
            except Exception as e:  # noqa: BLE001 - returned for the test to judge
                return e
            assert vc.ocsps, "validated without an OCSP response"
            return vc.ocsps
    return asyncio.run(asyncio.wait_for(go(), TIMEOUT))


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("certid_hash", ["sha1", "sha256"])
@pytest.mark.parametrize("nonce", [True, False], ids=["nonce", "no-nonce"])
def test_pyhanko_certvalidator(demo: Demo, frontend: Process, ca: str, certid_hash: str, nonce: bool) -> None:
    from pyhanko_certvalidator.errors import InsufficientRevinfoError, RevokedError

    good = _validate(demo, ca, "good", certid_hash=certid_hash, nonce=nonce)
    assert isinstance(good, list), repr(good)
    # pyhanko rejects a nonce that does not match; also check the one it got is there.
    assert all((r.nonce_value is not None) == nonce for r in good)

    revoked = _validate(demo, ca, "revoked", certid_hash=certid_hash, nonce=nonce)
    assert isinstance(revoked, RevokedError), repr(revoked)
    assert "compromised key" in str(revoked)

    unknown = _validate(demo, ca, "unknown", certid_hash=certid_hash, nonce=nonce)
    assert isinstance(unknown, InsufficientRevinfoError), repr(unknown)


# -- Go (golang.org/x/crypto/ocsp) -----------------------------------------------------------------------


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("which", STATUSES)
def test_go_x_crypto_ocsp(demo: Demo, frontend: Process, go_ocsp: Path, tmp_path: Path, ca: str,
                          method: str, which: str) -> None:
    """Go parses the answer with ParseResponse(der, issuer): it verifies the delegated responder's
    certificate against the CA and the signature against that certificate."""
    issuer = load_cert(demo.path(ca, "ca.pem"))
    leaf = load_cert(pem_path(demo, ca, which))
    der = build_request(leaf, issuer, nonce=random_nonce() if method == "POST" else None)
    status, _, body = (post if method == "POST" else get)(demo.http_port, der)
    assert status == 200
    rc, text = go.judge(go_ocsp, body, demo.path(ca, "ca.pem").read_bytes(), tmp_path)
    assert (rc, text) == (0, which), text


# -- openssl ocsp forms not in test_end_to_end ----------------------------------------------------------


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["openssl", "ocsp", *args, "-timeout", "10"])


@pytest.mark.parametrize("ca", CAS)
def test_openssl_vafile(demo: Demo, frontend: Process, ca: str) -> None:
    """-VAfile: the responder certificate is trusted directly (no chain to the CA needed)."""
    cert = pem_path(demo, ca, "revoked")
    r = openssl("-issuer", str(demo.path(ca, "ca.pem")), "-cert", str(cert), "-url", demo.url,
                "-VAfile", str(demo.path(ca, "responder.pem")), "-nonce")
    assert r.returncode == 0, r.stderr
    assert "Response verify OK" in r.stdout + r.stderr
    assert f"{cert}: revoked" in r.stdout
    assert "WARNING: no nonce in response" not in r.stdout + r.stderr


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("which", STATUSES)
def test_openssl_issuer_serial(demo: Demo, frontend: Process, ca: str, which: str) -> None:
    """-serial instead of -cert: the CertID is built from the issuer and a serial number alone."""
    serial = format(load_cert(pem_path(demo, ca, which)).serial_number, "X")
    r = openssl("-issuer", str(demo.path(ca, "ca.pem")), "-serial", f"0x{serial}", "-url", demo.url,
                "-CAfile", str(demo.path(ca, "ca.pem")))
    assert r.returncode == 0, r.stderr
    assert "Response verify OK" in r.stdout + r.stderr
    assert f"0x{serial}: {which}" in r.stdout, r.stdout


@pytest.mark.parametrize("ca", CAS)
@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
def test_openssl_certid_digest(demo: Demo, frontend: Process, ca: str, digest: str) -> None:
    """-sha256 (and friends) before -cert: the CertID hash algorithm; the answer must echo it."""
    cert = pem_path(demo, ca, "revoked")
    r = openssl("-issuer", str(demo.path(ca, "ca.pem")), f"-{digest}", "-cert", str(cert), "-url", demo.url,
                "-CAfile", str(demo.path(ca, "ca.pem")), "-resp_text")
    assert r.returncode == 0, r.stderr
    assert "Response verify OK" in r.stdout + r.stderr
    assert f"Hash Algorithm: {digest}" in r.stdout, r.stdout
    assert f"{cert}: revoked" in r.stdout


@pytest.mark.parametrize("ca", CAS)
def test_openssl_saved_response(demo: Demo, frontend: Process, ca: str, tmp_path: Path) -> None:
    """-reqout/-respout then -respin/-reqin: a response checked offline against its own request
    (nonce included) and against the wrong CA."""
    issuer, cert = str(demo.path(ca, "ca.pem")), str(pem_path(demo, ca, "good"))
    req, resp = tmp_path / "req.der", tmp_path / "resp.der"
    r = openssl("-issuer", issuer, "-cert", cert, "-url", demo.url, "-CAfile", issuer, "-nonce",
                "-reqout", str(req), "-respout", str(resp))
    assert r.returncode == 0 and "Response verify OK" in r.stdout + r.stderr, r.stdout + r.stderr
    # (No -cert here: with -cert openssl would build a new request, with a new nonce.)
    r = openssl("-respin", str(resp), "-reqin", str(req), "-CAfile", issuer)
    assert r.returncode == 0, r.stderr
    assert "Response verify OK" in r.stdout + r.stderr
    assert "nonce" not in (r.stdout + r.stderr).lower()
    r = openssl("-respin", str(resp), "-issuer", issuer, "-cert", cert, "-CAfile", issuer, "-no_nonce")
    assert "Response verify OK" in r.stdout + r.stderr and f"{cert}: good" in r.stdout, r.stdout + r.stderr
    other = str(demo.path("ec-ca" if ca == "rsa-ca" else "rsa-ca", "ca.pem"))
    r = openssl("-respin", str(resp), "-issuer", issuer, "-cert", cert, "-CAfile", other)
    assert "Response verify OK" not in r.stdout + r.stderr
