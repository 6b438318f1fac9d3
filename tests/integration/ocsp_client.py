"""Client-side helpers for the integration tests: build requests, send them, check answers
with an implementation independent of ours (cryptography, and the openssl CLI)."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

HASHES = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


def load_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def build_request(cert: x509.Certificate, issuer: x509.Certificate, *, algorithm: str = "sha1",
                  nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, HASHES[algorithm])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def build_multi_request(pairs: list[tuple[x509.Certificate, x509.Certificate]], *, algorithm: str = "sha1",
                        nonce: bytes | None = None) -> bytes:
    """cryptography builds one CertID per request; asn1crypto assembles several."""
    singles = []
    for cert, issuer in pairs:
        one = asn1_ocsp.OCSPRequest.load(build_request(cert, issuer, algorithm=algorithm))
        singles.append(one["tbs_request"]["request_list"][0])
    tbs: dict[str, object] = {"request_list": singles}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": nonce}]
    return asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump()


def post(port: int, der: bytes, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=der, headers={"Content-Type": "application/ocsp-request"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(port: int, der: bytes, prefix: str = "/") -> tuple[int, dict[str, str], bytes]:
    path = prefix + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def verify_basic(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    """Check the signature the way a relying party does; returns the signer certificate."""
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    signer = None
    if resp.certificates:
        signer = resp.certificates[0]
    else:
        signer = issuer
    if signer != issuer:
        # Delegated responder: issued directly by the CA, with id-kp-OCSPSigning.
        signer.verify_directly_issued_by(issuer)
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
    # ResponderID must identify the signer.
    if resp.responder_key_hash is not None:
        spki = signer.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        from asn1crypto import keys
        key_bits = keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]
        import hashlib
        assert resp.responder_key_hash == hashlib.sha1(key_bits).digest()
    else:
        assert resp.responder_name == signer.subject
    key = signer.public_key()
    algo = resp.signature_hash_algorithm
    assert algo is not None and not isinstance(algo, hashes.SHA1), "never a SHA-1 signature"
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algo)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algo))
    else:  # pragma: no cover
        raise AssertionError(f"unexpected key {key!r}")  # noqa: TRY004 - a test assertion
    return signer


def response_nonce(resp: ocsp.OCSPResponse) -> bytes | None:
    for ext in resp.extensions:
        if ext.oid == x509.OCSPNonce.oid:
            return ext.value.nonce
    return None


@dataclass
class OpenSSLResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def verified(self) -> bool:
        return "Response verify OK" in self.stdout + self.stderr


def openssl_ocsp(issuer: Path, cert: Path | list[Path], url: str, *, nonce: bool = True,
                 extra: list[str] | None = None) -> OpenSSLResult:
    certs = cert if isinstance(cert, list) else [cert]
    argv = ["openssl", "ocsp", "-issuer", str(issuer)]
    for c in certs:
        argv += ["-cert", str(c)]
    argv += ["-url", url, "-CAfile", str(issuer), "-timeout", "10"]
    argv.append("-nonce" if nonce else "-no_nonce")
    argv += extra or []
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return OpenSSLResult(r.returncode, r.stdout, r.stderr)


def random_nonce(n: int = 16) -> bytes:
    return os.urandom(n)


def raw_nonce_extension(value_octets: bytes) -> bytes:
    return core.OctetString(value_octets).dump()
