"""The Signer RPCs end to end inside one process (signer.service): Sign, Responders, Health.

The real grpc.aio server listens on a unix socket under tmp_path; a FakeToken holds software keys
(cryptography). Every signed answer is checked with cryptography's OCSP loader, an implementation
independent of ours: the signature verifies against the responder certificate, and statuses, times,
responder ID and nonce are what was asked for. Also: no RPC takes bytes to sign, and the audit
record's client identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from google.protobuf.descriptor import FieldDescriptor

from shared.clock import FakeClock
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.config import load_signer_config
from signer.service import serve
from signer.token import TokenError
from tests.unit.signer.signer_fixtures import (
    DAY,
    HOUR,
    NOW,
    T,
    expect_error,
    make_ca,
    run_server,
    short_dir,
    status,
    token_for,
    verify_signature,
    write_setup,
)

# -- signing ----------------------------------------------------------------------------------------

SIGN_CASES = [
    # CA key, responder key, responder_id, include_cert, CA key signs directly (no delegate)
    ("p256", "p256", "key", True, False),
    ("p256", "p384", "key", True, False),
    ("rsa2048", "rsa2048", "key", True, False),
    ("p256", "rsa2048", "name", True, False),
    ("rsa2048", "p256", "name", False, False),
    ("p384", "p384", "key", False, True),
    ("rsa2048", "rsa2048", "name", True, True),
]


@pytest.mark.parametrize("ca_spec,r_spec,rid,include,direct", SIGN_CASES)
def test_sign_roundtrip(tmp_path: Path, ca_spec: str, r_spec: str, rid: str, include: bool,
                        direct: bool) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha", ca_spec, r_spec, direct=direct)
    other = make_ca("beta")
    conf = write_setup(base, [ca, other], responder_extra={"responder_id": f'"{rid}"',
                                                           "include_cert": str(include).lower()})
    token = token_for(ca, other)
    nonce = b"\x04\x10" + os.urandom(16)
    revoked_at = T - 3 * DAY

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        reply = await stub.Sign(pb.SignRequest(request_id="t1", nonce=nonce, responses=[
            status(ca.cert_id(1001)),
            status(ca.cert_id(1002, hashes.SHA256()), pb.REVOKED, revocation_time=revoked_at,
                   revocation_reason=1),
            status(ca.cert_id(1003, hashes.SHA512()), pb.UNKNOWN),
        ]))
        assert reply.generation == 1
        assert reply.responder_fingerprint == hashlib.sha256(
            ca.responder_cert.public_bytes(serialization.Encoding.DER)).hexdigest()

        resp = ocsp.load_der_ocsp_response(reply.ocsp_response)
        assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        verify_signature(resp, ca.responder_cert)
        expected_hash = "sha384" if isinstance(ca.responder_key, ec.EllipticCurvePrivateKey) and \
            isinstance(ca.responder_key.curve, ec.SECP384R1) else "sha256"
        assert resp.signature_hash_algorithm.name == expected_hash  # type: ignore[union-attr]
        assert resp.certificates == ([ca.responder_cert] if include else [])
        if rid == "key":
            spki_bits = ca.responder_cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            assert resp.responder_key_hash is not None and resp.responder_name is None
            assert resp.responder_key_hash == _key_sha1(spki_bits)
        else:
            assert resp.responder_name == ca.responder_cert.subject
        assert resp.produced_at_utc == NOW
        nonce_ext = resp.extensions.get_extension_for_class(x509.OCSPNonce)
        assert nonce_ext.value.nonce == nonce[2:]

        singles = list(resp.responses)
        assert [s.serial_number for s in singles] == [1001, 1002, 1003]
        assert [s.certificate_status for s in singles] == [
            ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN]
        assert [s.hash_algorithm.name for s in singles] == ["sha1", "sha256", "sha512"]
        for s in singles:
            assert s.this_update_utc == NOW - timedelta(hours=1)
            assert s.next_update_utc == NOW + timedelta(days=1)
        assert singles[1].revocation_time_utc == NOW - timedelta(days=3)
        assert singles[1].revocation_reason == x509.ReasonFlags.key_compromise

    run_server(conf, token, scenario)
    assert len(token.signed) == 1


def _key_sha1(spki_der: bytes) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING value, read with asn1crypto-free DER walking."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(spki_der)
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        bits = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(bits).digest()


def test_no_nonce_no_extension(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        reply = await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(7))]))
        resp = ocsp.load_der_ocsp_response(reply.ocsp_response)
        with pytest.raises(x509.ExtensionNotFound):
            resp.extensions.get_extension_for_class(x509.OCSPNonce)

    run_server(conf, token_for(ca), scenario)


def test_errors_map_to_codes(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca, other = make_ca("alpha"), make_ca("beta")
    stranger = make_ca("stranger")  # not configured
    conf = write_setup(base, [ca, other])
    token = token_for(ca, other)

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        await expect_error(stub.Sign(pb.SignRequest(responses=[status(stranger.cert_id(1))])),
                           grpc.StatusCode.PERMISSION_DENIED, "not configured")
        mixed = [status(ca.cert_id(1)), status(other.cert_id(2))]
        await expect_error(stub.Sign(pb.SignRequest(responses=mixed)),
                           grpc.StatusCode.PERMISSION_DENIED, "one responder")
        await expect_error(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1), next_update=T - 1,
                                                                      this_update=T - DAY)])),
                           grpc.StatusCode.INVALID_ARGUMENT, "has passed")
        await expect_error(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))], nonce=b"\x04\x00")),
                           grpc.StatusCode.INVALID_ARGUMENT, "nonce")
        await expect_error(stub.Sign(pb.SignRequest()), grpc.StatusCode.INVALID_ARGUMENT, "responses")
        token.fail = TokenError("the token is gone")
        await expect_error(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))])),
                           grpc.StatusCode.UNAVAILABLE, "the token is gone")
        token.fail = ZeroDivisionError("boom")
        details = await expect_error(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))])),
                                     grpc.StatusCode.INTERNAL)
        assert "boom" not in details  # internals stay in the log
        token.fail = None
        # The server survived all of that.
        health = await stub.Health(pb.HealthRequest())
        assert health.serving
        await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))]))

    run_server(conf, token, scenario)
    assert token.signed and len(token.signed) == 1


def test_expired_responder_certificate(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha", responder_not_after=NOW + timedelta(hours=1))
    conf = write_setup(base, [ca])
    clock = FakeClock(NOW)

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        await stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1))]))
        clock.advance(timedelta(hours=2))
        await expect_error(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(1), this_update=T + HOUR)])),
                           grpc.StatusCode.FAILED_PRECONDITION, "not valid now")

    run_server(conf, token_for(ca), scenario, clock)


def test_health_and_responders(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    cas = [make_ca("alpha"), make_ca("beta", "rsa2048", "rsa2048")]
    conf = write_setup(base, cas)

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        health = await stub.Health(pb.HealthRequest())
        assert health.serving and "2 responders" in health.detail
        reply = await stub.Responders(pb.RespondersRequest())
        assert [r.name for r in reply.responders] == ["alpha", "beta"]
        for r, ca in zip(reply.responders, cas):
            assert r.generation == 1
            assert r.issuer_certificate == ca.cert.public_bytes(serialization.Encoding.DER)
            assert r.responder_certificate == ca.responder_cert.public_bytes(serialization.Encoding.DER)

    run_server(conf, token_for(*cas), scenario)


def test_token_calls_stay_on_one_thread(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])
    token = token_for(ca)

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        await asyncio.gather(*(stub.Sign(pb.SignRequest(responses=[status(ca.cert_id(i))]))
                               for i in range(1, 21)))

    run_server(conf, token, scenario)
    assert len(token.signed) == 20
    assert len(token.threads) == 1 and next(iter(token.threads)).startswith("pkcs11")


def test_tcp_port_zero_reports_bound_port(tmp_path: Path) -> None:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca], address="127.0.0.1:0")

    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token_for(ca), clock=FakeClock(NOW))
        try:
            host, port = address.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
            async with grpc.aio.insecure_channel(address) as channel:
                assert (await pb_grpc.SignerStub(channel).Health(pb.HealthRequest())).serving
        finally:
            await server.stop(None)

    asyncio.run(main())


# -- the contract: no caller-chosen bytes to sign ---------------------------------------------------

# The only bytes a caller may send, each checked by policy: CertID parts (exact digest sizes, serial
# 1..64 octets) and the nonce (1..128 octets, RFC 9654).
ALLOWED_BYTES = {
    "ocsp.signer.v1.CertId.issuer_name_hash",
    "ocsp.signer.v1.CertId.issuer_key_hash",
    "ocsp.signer.v1.CertId.serial_number",
    "ocsp.signer.v1.SignRequest.nonce",
}


def _bytes_fields(message: Any, seen: set[str]) -> set[str]:
    out: set[str] = set()
    if message.full_name in seen:
        return out
    seen.add(message.full_name)
    for f in message.fields:
        if f.type == FieldDescriptor.TYPE_BYTES:
            out.add(f.full_name)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            out |= _bytes_fields(f.message_type, seen)
    return out


def test_no_rpc_takes_bytes_to_sign() -> None:
    service = pb.DESCRIPTOR.services_by_name["Signer"]
    assert {m.name for m in service.methods} == {"Sign", "SignBatch", "Responders", "Health", "Watch"}
    found: set[str] = set()
    for method in service.methods:
        found |= _bytes_fields(method.input_type, set())
    assert found == ALLOWED_BYTES
    # Admin takes one bytes field: a certificate that is checked and installed, never signed.
    admin = pb.DESCRIPTOR.services_by_name["Admin"]
    assert {m.name for m in admin.methods} == {"Rotate"}
    found = set()
    for method in admin.methods:
        found |= _bytes_fields(method.input_type, set())
    assert found == {"ocsp.signer.v1.RotateRequest.certificate"}


def test_policy_bounds_the_allowed_bytes(tmp_path: Path) -> None:
    """Each allowed bytes field is length-checked: oversize values never reach the token."""
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])
    token = token_for(ca)

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        cid = ca.cert_id(5)
        bad = [
            pb.CertId(hash_algorithm=cid.hash_algorithm, issuer_name_hash=cid.issuer_name_hash + b"x",
                      issuer_key_hash=cid.issuer_key_hash, serial_number=cid.serial_number),
            pb.CertId(hash_algorithm=cid.hash_algorithm, issuer_name_hash=cid.issuer_name_hash,
                      issuer_key_hash=cid.issuer_key_hash + b"x", serial_number=cid.serial_number),
            pb.CertId(hash_algorithm=cid.hash_algorithm, issuer_name_hash=cid.issuer_name_hash,
                      issuer_key_hash=cid.issuer_key_hash, serial_number=b"\x01" * 65),
        ]
        for c in bad:
            await expect_error(stub.Sign(pb.SignRequest(responses=[status(c)])),
                               grpc.StatusCode.INVALID_ARGUMENT)
        await expect_error(stub.Sign(pb.SignRequest(responses=[status(cid)], nonce=b"\x05" * 4096)),
                           grpc.StatusCode.INVALID_ARGUMENT, "nonce")

    run_server(conf, token, scenario)
    assert token.signed == []


# -- the audit record's client --------------------------------------------------------------------------


def test_audit_client_is_the_identity_the_interceptor_admitted() -> None:
    import contextvars

    import signer.tls
    from signer.service import client_identity

    class Ctx:
        def __init__(self, auth: dict[str, list[bytes]], peer: str) -> None:
            self.auth, self._peer = auth, peer

        def auth_context(self) -> dict[str, list[bytes]]:
            return self.auth

        def peer(self) -> str:
            return self._peer

    tls_ctx = Ctx({"x509_common_name": [b"some-cn"], "x509_subject_alternative_name": [b"fe.internal"]},
                  "ipv4:10.0.0.7:51684")

    def admitted() -> str:
        signer.tls._verified.set("dns:fe.internal")  # what the mTLS interceptor let in (allowed_clients)
        return client_identity(tls_ctx)  # type: ignore[arg-type]

    assert contextvars.copy_context().run(admitted) == "dns:fe.internal"
    # Plaintext (unix socket or loopback): the transport peer, as before.
    assert client_identity(Ctx({}, "unix:/run/ocsp/signer.sock")) == "unix:/run/ocsp/signer.sock"  # type: ignore[arg-type]
    assert client_identity(Ctx({}, "ipv4:127.0.0.1:4000")) == "ipv4:127.0.0.1:4000"  # type: ignore[arg-type]
