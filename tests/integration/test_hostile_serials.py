"""Hostile CertID serial numbers, which reach the signer: odd but valid ones are answered unknown,
ones longer than RFC 5280 allows are malformedRequest (they would be echoed into a signed answer
and its audit record), and a non-minimal INTEGER never makes the signer produce non-DER."""

from __future__ import annotations

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process
from tests.integration.hostile_wire import assert_alive, good_request
from tests.integration.ocsp_client import load_cert, post

pytestmark = pytest.mark.integration


def _with_serial(der: bytes, content: bytes) -> bytes:
    """Replace the CertID serialNumber of a one-CertID request made by build_request with an INTEGER of
    the given content octets, fixing the five enclosing SEQUENCE lengths (all short or long form)."""
    from asn1crypto import ocsp as asn1_ocsp

    cert_id = asn1_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"]
    old = cert_id["serial_number"].dump()
    assert der.endswith(old)
    new = b"\x02" + bytes([len(content)]) + content
    inner = der[:-len(old)] + new
    delta = len(new) - len(old)
    out = bytearray(inner)
    pos = 0
    for _ in range(5):
        assert out[pos] == 0x30
        if out[pos + 1] < 0x80:
            out[pos + 1] += delta
            assert out[pos + 1] < 0x80
            pos += 2
        else:
            n = out[pos + 1] & 0x7F
            length = int.from_bytes(out[pos + 2:pos + 2 + n], "big") + delta
            out[pos + 2:pos + 2 + n] = length.to_bytes(n, "big")
            pos += 2 + n
    return bytes(out)


@pytest.mark.parametrize("content", [b"\x00", b"\xff", b"\x01" * 20, b"\x00" + b"\xab" * 20],
                         ids=["zero", "negative", "20-octets", "20-octets-and-sign"])
def test_odd_serials_answered_unknown(demo: Demo, frontend: Process, content: bytes) -> None:
    der = _with_serial(good_request(demo), content)
    _status, _, body = post(demo.http_port, der)
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert resp.serial_number == int.from_bytes(content, "big", signed=True)
    assert_alive(demo, frontend)


@pytest.mark.parametrize("content", [b"\x01" * 21, b"\x7f" + b"\xab" * 20, b"\x01" * 40],
                         ids=["21-octets", "21-octets-of-value", "40-octets"])
def test_overlong_serials_are_malformed(demo: Demo, frontend: Process, content: bytes) -> None:
    """Longer than RFC 5280 allows: no conforming CA issued it, and every octet would be echoed into a
    signed answer and its audit record (audit-disk amplification)."""
    der = _with_serial(good_request(demo), content)
    status, _, body = post(demo.http_port, der)
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert_alive(demo, frontend)


@pytest.mark.parametrize("which", ["good", "unknown"])
def test_non_minimal_serial_never_yields_non_der(demo: Demo, frontend: Process, which: str) -> None:
    real = load_cert(demo.path("rsa-ca", f"leaf-{which}.pem")).serial_number
    content = b"\x00\x00" + real.to_bytes((real.bit_length() + 8) // 8, "big")  # padded: not DER
    status, _, body = post(demo.http_port, _with_serial(good_request(demo, which=which), content))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)  # strict DER parser: every answer we sign must be DER
    if resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL:
        assert resp.serial_number == real
    else:
        assert resp.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
