"""The fast path of decode_request (shared/ocsp/fast_request.py): taken for the common request, left
for everything else, and in agreement with the general decoder on every vector.

The hypothesis differential test is tests/fuzz/test_fuzz_fast_request.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from shared.ocsp import request
from shared.ocsp.errors import MalformedRequest, OCSPError
from shared.ocsp.fast_request import HASH_OIDS, NONCE_OID, _canonical_oid, decode_common
from shared.ocsp.request import decode_request, decode_request_fast, decode_request_general
from shared.ocsp.types import ParsedRequest

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CA = x509.load_der_x509_certificate((VECTORS / "ca.der").read_bytes())
LEAF = x509.load_der_x509_certificate((VECTORS / "leaf.der").read_bytes())
ALL = sorted(p.name for p in VECTORS.glob("req-*.der"))

# The vectors the fast path answers; the general decoder decides every other one.
FAST = {
    "req-acceptable-responses.der", "req-cryptography-nonce-32.der", "req-empty-extensions.der",
    "req-hash-params-absent.der", "req-nonce-1.der", "req-nonce-128.der", "req-nonce-16.der",
    "req-nonce-32.der", "req-nonce-legacy-16.der", "req-noncritical-unknown-ext.der",
    "req-openssl-sha1-nonce.der", "req-openssl-sha256-no-nonce.der", "req-preferred-sig-algs.der",
    "req-serial-20-octets-sign.der", "req-serial-20-octets.der", "req-serial-negative.der",
    "req-sha1.der", "req-sha256.der", "req-sha384.der", "req-sha512.der",
}


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def outcome(decode, der: object, max_cert_ids: int = 64) -> object:
    try:
        return decode(der, max_cert_ids=max_cert_ids)
    except OCSPError as e:
        return type(e), str(e)


@pytest.fixture
def general_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The inputs decode_request hands to the general decoder (which still decodes them)."""
    calls: list[bytes] = []

    def recording(der: bytes, *, max_cert_ids: int = 64) -> ParsedRequest:
        calls.append(der)
        return decode_request_general(der, max_cert_ids=max_cert_ids)

    monkeypatch.setattr(request, "decode_request_general", recording)
    return calls


def test_oid_octets_are_the_general_decoders_oids() -> None:
    assert {core.ObjectIdentifier(dotted).contents: alg for dotted, alg in request._HASHES.items()} == HASH_OIDS
    assert core.ObjectIdentifier(request.ID_PKIX_OCSP_NONCE).contents == NONCE_OID


@pytest.mark.parametrize("name", ALL)
def test_vectors_agree(name: str) -> None:
    der = vector(name)
    assert outcome(decode_request, der) == outcome(decode_request_general, der)
    fast = decode_request_fast(der)
    assert (fast is not None) == (name in FAST)
    if fast is not None:
        assert fast == decode_request_general(der)


@pytest.mark.parametrize("name", sorted(FAST))
def test_common_vectors_never_reach_the_general_decoder(name: str, general_calls: list[bytes]) -> None:
    assert decode_request(vector(name)) == decode_request_general(vector(name))
    assert general_calls == []


@pytest.mark.parametrize("alg", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
@pytest.mark.parametrize("nonce", [None, b"\x01", bytes(range(32))])
def test_fresh_cryptography_requests_take_the_fast_path(alg: hashes.HashAlgorithm, nonce: bytes | None,
                                                         general_calls: list[bytes]) -> None:
    builder = ocsp.OCSPRequestBuilder().add_certificate(LEAF, CA, alg)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der = builder.build().public_bytes(serialization.Encoding.DER)
    parsed = decode_request(der)
    assert general_calls == []
    assert parsed == decode_request_general(der)
    assert parsed.nonce == (None if nonce is None else bytes([4, len(nonce)]) + nonce)


@pytest.mark.parametrize("extra", [["-no_nonce"], [], ["-sha256"], ["-sha512"]])
def test_fresh_openssl_requests_take_the_fast_path(tmp_path: Path, extra: list[str],
                                                   general_calls: list[bytes]) -> None:
    (tmp_path / "ca.pem").write_bytes(CA.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(LEAF.public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "req.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(tmp_path / "ca.pem"), *extra,
                    "-cert", str(tmp_path / "leaf.pem"), "-reqout", str(out)],
                   check=True, capture_output=True)
    der = out.read_bytes()
    assert decode_request(der) == decode_request_general(der)
    assert general_calls == []


@pytest.mark.parametrize("name", ["req-two-certs.der", "req-requestor-name.der", "req-openssl-signed.der",
                                  "req-version-v1-explicit.der", "req-nonce-critical.der",
                                  "req-single-noncritical-ext.der", "req-nonce-129.der", "req-md5.der"])
def test_other_requests_go_to_the_general_decoder(name: str, general_calls: list[bytes]) -> None:
    outcome(decode_request, vector(name))
    assert general_calls == [vector(name)]


SHA1 = vector("req-sha1.der")  # 30 43 (30 41 (30 3f ...)): one SHA-1 CertID, no extensions
assert SHA1[:4] == b"\x30\x43\x30\x41"

BER = {
    "outer length 81 43": b"\x30\x81\x43" + SHA1[2:],
    "outer length 82 00 43": b"\x30\x82\x00\x43" + SHA1[2:],
    "outer length 83 00 00 43": b"\x30\x83\x00\x00\x43" + SHA1[2:],
    "outer indefinite": b"\x30\x80" + SHA1[2:] + b"\x00\x00",
    "TBSRequest length 81 41": b"\x30\x44\x30\x81\x41" + SHA1[4:],
    "TBSRequest indefinite": b"\x30\x45\x30\x80" + SHA1[4:] + b"\x00\x00",
    "element after Extensions inside [2]": SHA1[:1] + bytes([SHA1[1] + 6]) + SHA1[2:3]
    + bytes([SHA1[3] + 6]) + SHA1[4:] + b"\xa2\x04\x30\x00\x05\x00",
}


@pytest.mark.parametrize("name", sorted(BER))
def test_ber_the_general_decoder_accepts_is_left_to_it(name: str, general_calls: list[bytes]) -> None:
    """Today's general decoder takes these (asn1crypto reads BER lengths); the fast path is DER only
    and leaves them to it, so the answer stays the general decoder's."""
    der = BER[name]
    assert decode_common(der) is None
    assert decode_request(der) == decode_request_general(vector("req-sha1.der"))
    assert general_calls == [der]


def test_a_bad_nonce_in_the_common_shape_gets_the_general_decoders_error() -> None:
    der = vector("req-nonce-129.der")
    assert decode_common(der) is not None  # the shape is common; the nonce rule is request.py's
    assert decode_request_fast(der) is None
    with pytest.raises(MalformedRequest, match="nonce must be 1..128 octets"):
        decode_request(der)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_left_to_the_general_decoder(limit: int) -> None:
    assert decode_request_fast(SHA1, max_cert_ids=limit) is None
    with pytest.raises(MalformedRequest, match="at most"):
        decode_request(SHA1, max_cert_ids=limit)


def test_a_limit_not_an_int_is_left_to_the_general_decoder() -> None:
    assert decode_request_fast(SHA1, max_cert_ids=None) is None  # type: ignore[arg-type]
    assert outcome(decode_request, SHA1, None) == outcome(decode_request_general, SHA1, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_bytes_like_input_gives_bytes(wrap: type) -> None:
    parsed = decode_request(wrap(vector("req-nonce-16.der")))
    assert parsed == decode_request_general(vector("req-nonce-16.der"))
    (cid,) = parsed.cert_ids
    assert all(type(b) is bytes for b in (cid.issuer_name_hash, cid.issuer_key_hash, cid.serial, parsed.nonce))


@pytest.mark.parametrize("value", ["0\x00", 48, None])
def test_not_bytes_is_left_to_the_general_decoder(value: object) -> None:
    assert decode_request_fast(value) is None  # type: ignore[arg-type]
    assert outcome(decode_request, value) == outcome(decode_request_general, value)


@pytest.mark.parametrize("contents,canonical", [
    (NONCE_OID, True),
    (bytes.fromhex("8837"), True),  # 2.999
    (b"", False),
    (bytes.fromhex("2b0601050507300182"), False),  # last subidentifier incomplete
    (bytes.fromhex("2b060105050730018002"), False),  # leading 0x80 in a subidentifier
    (bytes.fromhex("802b"), False),  # leading 0x80 in the first
])
def test_canonical_oid(contents: bytes, canonical: bool) -> None:
    assert _canonical_oid(contents) is canonical
