"""Seed inputs of each fuzz target, made from tests/vectors (the DER requests) and, for ``http``,
whole HTTP requests for the harness's own CA. Deterministic, so the replay test can run them too."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors"


def request_vectors() -> list[bytes]:
    return [p.read_bytes() for p in sorted(VECTORS.glob("req-*.der"))]


def decode_seeds() -> list[bytes]:
    return request_vectors()


def get_path_seeds() -> list[bytes]:
    out = []
    for der in request_vectors()[:20]:
        b64 = base64.b64encode(der)
        out += [b"/" + b64, b"/ocsp/" + base64.urlsafe_b64encode(der).rstrip(b"="),
                b"/" + b64.replace(b"+", b"%2B").replace(b"/", b"%2F") + b"?q", b"http://h:1/x/" + b64]
    return out


def _fuzz_ca_requests() -> list[bytes]:
    from fuzz.http_harness import ca_cert, leaf_cert

    ca = ca_cert()
    out = []
    for serial, nonce in ((0x100, None), (0x101, None), (0x999, None), (0x100, b"\x01" * 16)):
        b = ocsp.OCSPRequestBuilder().add_certificate(leaf_cert(serial), ca, hashes.SHA1())
        if nonce is not None:
            b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
        out.append(b.build().public_bytes(serialization.Encoding.DER))
    return out


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: f\r\nContent-Type: application/ocsp-request\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def http_seeds() -> list[bytes]:
    """Each seed: a mode byte (reads, EOF, peer; see fuzz.http_harness) then the bytes sent."""
    reqs = _fuzz_ca_requests()
    good, revoked, unknown, nonced = reqs
    get = b"GET /" + base64.b64encode(good) + b" HTTP/1.1\r\nHost: f\r\n\r\n"
    chunked = (b"POST / HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(revoked) + revoked + b"\r\n0\r\n\r\n")
    messages = [
        post(good), post(revoked), post(unknown), post(nonced), get,
        get.replace(b"GET", b"HEAD", 1), get.replace(b"\r\n\r\n", b"\r\nIf-None-Match: \"x\"\r\n\r\n"),
        post(good) + post(nonced) + get, chunked,
        post(good, b"Expect: 100-continue\r\n"),
        b"GET /-/health HTTP/1.1\r\nHost: f\r\n\r\n", b"GET /-/ready HTTP/1.1\r\nHost: f\r\n\r\n",
        b"GET /nope HTTP/1.0\r\n\r\n", b"PUT / HTTP/1.1\r\nHost: f\r\nContent-Length: 0\r\n\r\n",
        post(b"\x30\x03\x02\x01\x00"), b"POST / HTTP/1.1\r\nHost: f\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n",
        b"GET http://f/" + base64.urlsafe_b64encode(unknown) + b" HTTP/1.1\r\nHost: f\r\n\r\n",
    ]
    return [bytes([mode]) + m for i, m in enumerate(messages) for mode in (i % 8, 8 + (i * 5) % 24)]


SEEDS = {"decode": decode_seeds, "get_path": get_path_seeds, "http": http_seeds}
