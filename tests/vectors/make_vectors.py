"""Regenerate the DER vectors in this directory (the outputs are committed; run only to change them).

    .venv/bin/python tests/vectors/make_vectors.py

Keys are derived from fixed integers, so certificates differ between runs only in their ECDSA
signatures; openssl adds a random nonce. Requests are written three independent ways: by openssl
(`openssl ocsp -reqout`), by cryptography's OCSPRequestBuilder, and by the small DER writer below
(for multi-certificate and deliberately malformed requests, which neither library will produce).
Each file is described in README.md.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2035, 1, 1, tzinfo=UTC)
LEAF_SERIAL = 0x1001

# -- a tiny DER writer, for requests no library will write ---------------------------------------


def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_len(len(content)) + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def octets(b: bytes) -> bytes:
    return tlv(0x04, b)


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


NULL = b"\x05\x00"
TRUE = b"\x01\x01\xff"
HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "md5": "1.2.840.113549.2.5",
}
NONCE = "1.3.6.1.5.5.7.48.1.2"
ACCEPTABLE_RESPONSES = "1.3.6.1.5.5.7.48.1.4"
BASIC = "1.3.6.1.5.5.7.48.1.1"
PREFERRED_SIG_ALGS = "1.3.6.1.5.5.7.48.1.8"
SERVICE_LOCATOR = "1.3.6.1.5.5.7.48.1.7"
UNKNOWN_EXT = "1.3.6.1.4.1.99999.1"


def issuer_hashes(ca: x509.Certificate, alg: str) -> tuple[bytes, bytes]:
    name = ca.subject.public_bytes()
    key = ca.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)
    return hashlib.new(alg, name).digest(), hashlib.new(alg, key).digest()


def cert_id(ca: x509.Certificate, serial: bytes, alg: str = "sha1", *, params: bytes | None = NULL,
            name_hash: bytes | None = None, key_hash: bytes | None = None,
            hash_alg: str | None = None) -> bytes:
    nh, kh = issuer_hashes(ca, hash_alg or alg)
    return seq(seq(oid(HASH_OIDS[alg]), params or b""),
               octets(nh if name_hash is None else name_hash),
               octets(kh if key_hash is None else key_hash),
               tlv(0x02, serial))


def extension(ext_oid: str, value: bytes, critical: bool = False) -> bytes:
    return seq(oid(ext_oid), TRUE if critical else b"", octets(value))


def request(cids: list[bytes], *, exts: list[bytes] | None = None, single_exts: list[bytes] | None = None,
            version: bytes = b"", requestor: bytes = b"", extra_tbs: bytes = b"") -> bytes:
    singles = [seq(c, tlv(0xA0, seq(*single_exts)) if single_exts else b"") for c in cids]
    ext_field = tlv(0xA2, seq(*exts)) if exts is not None else b""
    tbs = seq(version, requestor, seq(*singles), ext_field, extra_tbs)
    return seq(tbs)


def nonce_ext(n: int, *, wrapped: bool = True, critical: bool = False) -> bytes:
    raw = bytes((i * 7 + 1) & 0xFF for i in range(n))
    return extension(NONCE, octets(raw) if wrapped else raw, critical)


# -- PKI ---------------------------------------------------------------------------------------------


def make_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
              issuer_key: ec.EllipticCurvePrivateKey, serial: int, *, ca: bool = False,
              ocsp_signing: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OCSP responder tests")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
         .serial_number(serial).not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ocsp_signing:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def main() -> None:
    ca_key = ec.derive_private_key(0xCA11AB1E, ec.SECP256R1())
    leaf_key = ec.derive_private_key(0x1EAF, ec.SECP256R1())
    resp_key = ec.derive_private_key(0x5E5B0D5, ec.SECP256R1())
    ca = make_cert("Test CA", ca_key, None, ca_key, 1, ca=True)
    leaf = make_cert("leaf.example", leaf_key, ca.subject, ca_key, LEAF_SERIAL)
    responder = make_cert("Test OCSP responder", resp_key, ca.subject, ca_key, 2, ocsp_signing=True)

    out: dict[str, bytes] = {}
    pem = serialization.Encoding.PEM
    der = serialization.Encoding.DER
    out["ca.der"] = ca.public_bytes(der)
    out["leaf.der"] = leaf.public_bytes(der)
    out["responder.der"] = responder.public_bytes(der)
    out["responder-key.pem"] = resp_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())

    # openssl (an independent encoder)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "ca.pem").write_bytes(ca.public_bytes(pem))
        (t / "leaf.pem").write_bytes(leaf.public_bytes(pem))
        (t / "resp.pem").write_bytes(responder.public_bytes(pem))
        (t / "resp-key.pem").write_bytes(out["responder-key.pem"])
        base = ["openssl", "ocsp", "-issuer", str(t / "ca.pem")]
        runs = {
            "req-openssl-sha1-nonce.der": [],
            "req-openssl-sha256-no-nonce.der": ["-sha256", "-no_nonce"],
            "req-openssl-signed.der": ["-signer", str(t / "resp.pem"), "-signkey", str(t / "resp-key.pem")],
        }
        for name, extra in runs.items():
            # a digest option applies to the -cert options after it
            subprocess.run([*base, *extra, "-cert", str(t / "leaf.pem"), "-reqout", str(t / name)],
                           check=True, capture_output=True)
            out[name] = (t / name).read_bytes()

    # cryptography's builder (one certificate per request)
    for alg, h in (("sha1", hashes.SHA1()), ("sha256", hashes.SHA256()), ("sha384", hashes.SHA384()),
                   ("sha512", hashes.SHA512())):
        b = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, h)
        out[f"req-{alg}.der"] = b.build().public_bytes(der)
    out["req-cryptography-nonce-32.der"] = (
        ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA256())
        .add_extension(x509.OCSPNonce(bytes(range(32))), critical=False).build().public_bytes(der))

    # hand-written DER
    leaf_serial = LEAF_SERIAL.to_bytes(2, "big")
    cid = cert_id(ca, leaf_serial)
    out["req-two-certs.der"] = request([cid, cert_id(ca, b"\x10\x02")])
    out["req-mixed-hashes.der"] = request([cert_id(ca, leaf_serial, a) for a in ("sha1", "sha256", "sha384",
                                                                                "sha512")])
    out["req-64-certs.der"] = request([cert_id(ca, i.to_bytes(2, "big")) for i in range(0x100, 0x140)])
    out["req-65-certs.der"] = request([cert_id(ca, i.to_bytes(2, "big")) for i in range(0x100, 0x141)])
    out["req-empty-list.der"] = request([])
    out["req-hash-params-absent.der"] = request([cert_id(ca, leaf_serial, "sha256", params=None)])
    out["req-hash-params-integer.der"] = request([cert_id(ca, leaf_serial, "sha256", params=b"\x02\x01\x00")])
    out["req-md5.der"] = request([cert_id(ca, leaf_serial, "md5")])
    out["req-name-hash-short.der"] = request([cert_id(ca, leaf_serial, "sha256",
                                                      name_hash=issuer_hashes(ca, "sha256")[0][:20])])
    out["req-key-hash-sha1-in-sha256.der"] = request([cert_id(ca, leaf_serial, "sha256", hash_alg="sha1")])
    out["req-serial-empty.der"] = request([cert_id(ca, b"")])
    out["req-serial-65-octets.der"] = request([cert_id(ca, b"\x01" * 65)])
    out["req-serial-20-octets.der"] = request([cert_id(ca, b"\x7f" + b"\xab" * 19)])
    out["req-serial-20-octets-sign.der"] = request([cert_id(ca, b"\x00" + b"\xab" * 20)])
    out["req-serial-21-octets.der"] = request([cert_id(ca, b"\x7f" + b"\xab" * 20)])
    out["req-serial-negative.der"] = request([cert_id(ca, b"\xff\x01")])
    out["req-serial-non-minimal.der"] = request([cert_id(ca, b"\x00\x10\x01")])
    for n in (0, 1, 16, 32, 128, 129):
        out[f"req-nonce-{n}.der"] = request([cid], exts=[nonce_ext(n)])
    out["req-nonce-legacy-16.der"] = request([cid], exts=[nonce_ext(16, wrapped=False)])
    out["req-nonce-legacy-129.der"] = request([cid], exts=[nonce_ext(129, wrapped=False)])
    out["req-nonce-critical.der"] = request([cid], exts=[nonce_ext(16, critical=True)])
    out["req-nonce-duplicate.der"] = request([cid], exts=[nonce_ext(16), nonce_ext(8)])
    out["req-duplicate-ext.der"] = request([cid], exts=[extension(UNKNOWN_EXT, NULL),
                                                        extension(UNKNOWN_EXT, NULL)])
    out["req-critical-unknown-ext.der"] = request([cid], exts=[extension(UNKNOWN_EXT, NULL, critical=True)])
    out["req-noncritical-unknown-ext.der"] = request([cid], exts=[nonce_ext(16),
                                                                 extension(UNKNOWN_EXT, NULL)])
    out["req-acceptable-responses.der"] = request(
        [cid], exts=[extension(ACCEPTABLE_RESPONSES, seq(oid(BASIC)))])
    out["req-preferred-sig-algs.der"] = request(
        [cid], exts=[extension(PREFERRED_SIG_ALGS, seq(seq(seq(oid("1.2.840.10045.4.3.2")))))])
    out["req-empty-extensions.der"] = request([cid], exts=[])
    out["req-single-critical-ext.der"] = request(
        [cid], single_exts=[extension(SERVICE_LOCATOR, seq(ca.subject.public_bytes()), critical=True)])
    out["req-single-noncritical-ext.der"] = request(
        [cid], single_exts=[extension(SERVICE_LOCATOR, seq(ca.subject.public_bytes()))])
    out["req-version-v1-explicit.der"] = request([cid], version=tlv(0xA0, b"\x02\x01\x00"))
    out["req-version-v2.der"] = request([cid], version=tlv(0xA0, b"\x02\x01\x01"))
    out["req-requestor-name.der"] = request(
        [cid], requestor=tlv(0xA1, tlv(0xA4, ca.subject.public_bytes())))
    out["req-extra-element.der"] = request([cid], extra_tbs=b"\x02\x01\x05")
    out["req-trailing-bytes.der"] = request([cid]) + b"\x00"
    out["req-truncated.der"] = request([cid])[:-3]
    out["req-garbage.der"] = b"GET / HTTP/1.1\r\n\r\n"
    out["req-not-a-sequence.der"] = octets(request([cid]))

    for name, data in sorted(out.items()):
        (HERE / name).write_bytes(data)
    print(f"wrote {len(out)} files to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
