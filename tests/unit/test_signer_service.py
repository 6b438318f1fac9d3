"""signer.service (and signer.config, signer.responders) end to end inside one process.

The real grpc.aio server listens on a unix socket under tmp_path; a FakeToken holds software keys
(cryptography). Every signed answer is checked with cryptography's OCSP loader, an implementation
independent of ours: the signature verifies against the responder certificate, and statuses, times,
responder ID and nonce are what was asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.descriptor import FieldDescriptor

from shared.clock import FakeClock
from shared.config import ConfigError
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer import __main__ as signer_main
from signer import responders as signer_responders
from signer.config import load_signer_config
from signer.mechanisms import SignatureAlgorithm
from signer.service import serve
from signer.token import TokenError

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())
HOUR, DAY = 3600, 86400
SHA1 = hashes.SHA1()  # the default CertID hash of the tests' requests


# -- a small PKI, written to disk the way an operator would ------------------------------------------


def new_key(spec: str) -> Any:
    if spec == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1() if spec == "p256" else ec.SECP384R1())


def make_cert(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, *, ca: bool,
              eku: list[x509.ObjectIdentifier] | None = None,
              not_after: datetime = NOW + timedelta(days=365)) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder()
         .subject_name(name)
         .issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=30))
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Ca:
    name: str
    cert: x509.Certificate
    key: Any
    responder_cert: x509.Certificate
    responder_key: Any
    key_label: str

    def leaf(self, serial: int) -> x509.Certificate:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf {serial}")])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(self.cert.subject)
                .public_key(leaf_key.public_key()).serial_number(serial)
                .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=90))
                .sign(self.key, hashes.SHA256()))

    def cert_id(self, serial: int, algorithm: hashes.HashAlgorithm = SHA1) -> pb.CertId:
        """The CertID as cryptography computes it for a request (independent of shared.ocsp.certid)."""
        req = ocsp.OCSPRequestBuilder().add_certificate(self.leaf(serial), self.cert, algorithm).build()
        return pb.CertId(hash_algorithm={"sha1": pb.SHA1, "sha256": pb.SHA256, "sha384": pb.SHA384,
                                         "sha512": pb.SHA512}[req.hash_algorithm.name],
                         issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash,
                         serial_number=serial.to_bytes((serial.bit_length() + 8) // 8, "big"))


def make_ca(name: str, ca_spec: str = "p256", responder_spec: str = "p256", *, direct: bool = False,
            eku: bool = True, responder_issuer: tuple[x509.Certificate, Any] | None = None,
            responder_not_after: datetime = NOW + timedelta(days=365)) -> Ca:
    ca_key = new_key(ca_spec)
    ca_cert = make_cert(f"{name} CA", ca_key, None, ca_key, ca=True)
    if direct:
        return Ca(name, ca_cert, ca_key, ca_cert, ca_key, f"{name}-ca-key")
    r_key = new_key(responder_spec)
    issuer_cert, issuer_key = responder_issuer or (ca_cert, ca_key)
    r_cert = make_cert(f"{name} OCSP", r_key, issuer_cert, issuer_key, ca=False,
                       eku=[ExtendedKeyUsageOID.OCSP_SIGNING] if eku else [ExtendedKeyUsageOID.SERVER_AUTH],
                       not_after=responder_not_after)
    return Ca(name, ca_cert, ca_key, r_cert, r_key, f"{name}-responder")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def short_dir(tmp_path: Path) -> Path:
    """tmp_path, unless the signer's sockets there would exceed the 107-byte sun_path limit."""
    from signer.unix_socket import MAX_PATH_BYTES, longest_private_path

    if longest_private_path(tmp_path / "signer.sock") <= MAX_PATH_BYTES:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="sgn", dir="/tmp"))


def write_setup(base: Path, cas: list[Ca], *, responder_extra: dict[str, str] | None = None,
                signer_extra: str = "", ca_extra: str = "", address: str | None = None) -> Path:
    (base / "ca.d").mkdir(exist_ok=True)
    (base / "module.so").write_bytes(b"")  # never loaded: tests pass a FakeToken
    (base / "token.pin").write_text("1234\n")
    (base / "token.pin").chmod(0o600)
    for ca in cas:
        d = base / ca.name
        d.mkdir(exist_ok=True)
        (d / "ca.pem").write_bytes(pem(ca.cert))
        (d / "responder.der").write_bytes(ca.responder_cert.public_bytes(serialization.Encoding.DER))
        extra = "".join(f"{k} = {v}\n" for k, v in (responder_extra or {}).items())
        (base / "ca.d" / f"{ca.name}.toml").write_text(
            f'name = "{ca.name}"\nca_cert = "../{ca.name}/ca.pem"\n{ca_extra}'
            f'[responder]\ncert = "../{ca.name}/responder.der"\nkey_label = "{ca.key_label}"\n{extra}'
            '[status]\nsource = "index"\npath = "index.txt"\n')
    address = address or f"unix:{base / 'signer.sock'}"
    conf = base / "signer.toml"
    conf.write_text(f'ca_dir = "ca.d"\n{signer_extra}[listen]\naddress = "{address}"\n'
                    '[token]\nmodule = "module.so"\nlabel = "test"\npin_file = "token.pin"\n'
                    '[policy]\nmax_validity = "7d"\nmax_clock_skew = "5m"\n'
                    f'[audit]\ndir = "audit"\nkey_label = "{AUDIT_LABEL}"\nwriter_id = "test"\n')
    return conf


# -- the fake token ---------------------------------------------------------------------------------


@dataclass
class FakeToken:
    keys: dict[str, Any]
    label: str = "fake"
    last_error: str | None = None
    fail: Exception | None = None
    threads: set[str] = field(default_factory=set)
    signed: list[bytes] = field(default_factory=list)
    public_key_calls: int = 0  # reads of a public key (rotation reads each candidate's once)

    def public_key(self, key_label: str) -> bytes:
        self.threads.add(threading.current_thread().name)
        self.public_key_calls += 1
        if key_label not in self.keys:
            raise TokenError(f"no public key labelled {key_label!r} in token {self.label!r}")
        return self.keys[key_label].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def has_key(self, label: str) -> bool:
        return label in self.keys

    def close(self) -> None:
        pass

    def sign(self, key_label: str, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
        self.threads.add(threading.current_thread().name)
        if self.fail is not None:
            raise self.fail
        key = self.keys[key_label]
        if key_label != AUDIT_LABEL and data != getattr(signer_responders, "PAIR_PROBE", None):  # audit checkpoints: the audit tests count them
            self.signed.append(data)
        if algorithm is SignatureAlgorithm.RSA_SHA256:
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        h = hashes.SHA256() if algorithm is SignatureAlgorithm.ECDSA_SHA256 else hashes.SHA384()
        return key.sign(data, ec.ECDSA(h))


AUDIT_LABEL = "audit-key"
AUDIT_KEY = ec.generate_private_key(ec.SECP256R1())


def token_for(*cas: Ca) -> FakeToken:
    keys = {ca.key_label: ca.responder_key for ca in cas}
    keys[AUDIT_LABEL] = AUDIT_KEY
    return FakeToken(keys)


Scenario = Callable[[pb_grpc.SignerStub], Awaitable[None]]


def run_server(conf: Path, token: FakeToken, scenario: Scenario, clock: FakeClock | None = None) -> None:
    async def main() -> None:
        server, address = await serve(load_signer_config(conf), token=token, clock=clock or FakeClock(NOW))
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await scenario(pb_grpc.SignerStub(channel))
        finally:
            await server.stop(None)

    asyncio.run(main())


def status(cert_id: pb.CertId, st: int = pb.GOOD, **kw: Any) -> pb.SingleStatus:
    fields: dict[str, Any] = {"cert_id": cert_id, "status": st, "this_update": T - HOUR, "next_update": T + DAY}
    fields.update(kw)
    return pb.SingleStatus(**fields)


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, text: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()
    return info.value.details() or ""


def verify_signature(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> None:
    key = cert.public_key()
    h = resp.signature_hash_algorithm
    assert h is not None and h.name in ("sha256", "sha384")
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), h)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(h))


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
    assert {m.name for m in service.methods} == {"Sign", "Responders", "Health", "Watch"}
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


# -- start-up refusals --------------------------------------------------------------------------------


def test_token_key_must_match_certificate(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])
    token = FakeToken({ca.key_label: new_key("p256")})  # some other key under the right label

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        assert info.value.file == str(base / "ca.d" / "alpha.toml")
        assert info.value.key == "responder.key_label"
        assert "not the key of the responder certificate" in info.value.message

    asyncio.run(main())


@dataclass
class SplitKeyToken(FakeToken):
    """A token whose private key object under a label is not the pair of its public key object (a
    leftover or colliding object): ``private`` overrides the key ``sign`` uses."""

    private: dict[str, Any] = field(default_factory=dict)

    def sign(self, key_label: str, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
        if key_label in self.private:
            saved = self.keys[key_label]
            self.keys[key_label] = self.private[key_label]
            try:
                return super().sign(key_label, algorithm, data)
            finally:
                self.keys[key_label] = saved
        return super().sign(key_label, algorithm, data)


def test_token_private_key_must_pair_with_certificate(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])
    token = SplitKeyToken(token_for(ca).keys, private={ca.key_label: new_key("p256")})

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        assert info.value.key == "responder.key_label"
        assert "not the pair of the responder certificate's key" in info.value.message
        assert token.threads == {"pkcs11_0"}  # the probe ran on the token thread

    asyncio.run(main())


def test_token_key_missing(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=FakeToken({}), clock=FakeClock(NOW))
        assert info.value.key == "responder.key_label" and "alpha-responder" in info.value.message

    asyncio.run(main())


def _foreign_issuer() -> tuple[x509.Certificate, Any]:
    k = new_key("p256")
    return make_cert("Foreign CA", k, None, k, ca=True), k


CONFIG_CASES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    # id, setup writer (returns signer.toml), file name the error must name, key
    ("not-issued-by-ca", lambda b: write_setup(b, [make_ca("alpha", responder_issuer=_foreign_issuer())]),
     "alpha.toml", "responder.cert"),
    ("no-ocsp-eku", lambda b: write_setup(b, [make_ca("alpha", eku=False)]), "alpha.toml", "responder.cert"),
    ("duplicate-name", lambda b: _dup_name(b), "b.toml", "name"),
    ("duplicate-issuer", lambda b: _dup_issuer(b), "b.toml", "ca_cert"),
    ("unknown-key", lambda b: write_setup(b, [make_ca("alpha")], signer_extra="colour = 1\n"),
     "signer.toml", "colour"),
    ("pin-in-config", lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'label = "test"\n',
                                      'label = "test"\npin = "1234"\n'), "signer.toml", "token.pin"),
    ("label-and-serial", lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'label = "test"\n',
                                         'label = "test"\nserial = "abc"\n'), "signer.toml", "token.label"),
    ("no-pin-source", lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'pin_file = "token.pin"\n', ""),
     "signer.toml", "token.pin_file"),
    ("bad-duration", lambda b: _edit(write_setup(b, [make_ca("alpha")]), '"7d"', '"seven days"'),
     "signer.toml", "policy.max_validity"),
    ("bad-address", lambda b: write_setup(b, [make_ca("alpha")], address="nowhere"), "signer.toml",
     "listen.address"),
    ("bad-responder-id",
     lambda b: write_setup(b, [make_ca("alpha")], responder_extra={"responder_id": '"hash"'}),
     "alpha.toml", "responder.responder_id"),
    ("ca-unknown-key", lambda b: write_setup(b, [make_ca("alpha")], ca_extra="colour = 1\n"), "alpha.toml",
     "colour"),
    ("ca-cert-garbage", lambda b: _garbage_ca(b), "alpha.toml", "ca_cert"),
    ("no-ca-files", lambda b: _no_cas(b), "signer.toml", "ca_dir"),
    ("audit-key-is-a-responder-key",
     lambda b: _edit(write_setup(b, [make_ca("alpha")]), f'key_label = "{AUDIT_LABEL}"', 'key_label = "alpha-responder"'),
     "signer.toml", "audit.key_label"),
    ("sub-second-checkpoint-interval",
     lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'writer_id = "test"\n',
                     'writer_id = "test"\ncheckpoint_interval = "1500ms"\n'),
     "signer.toml", "audit.checkpoint_interval"),
]


def _edit(conf: Path, old: str, new: str) -> Path:
    text = conf.read_text()
    assert old in text
    conf.write_text(text.replace(old, new))
    return conf


def _dup_name(base: Path) -> Path:
    a, b = make_ca("a"), make_ca("b")
    conf = write_setup(base, [a, b])
    _edit(base / "ca.d" / "b.toml", 'name = "b"', 'name = "a"')
    return conf


def _dup_issuer(base: Path) -> Path:
    a, b = make_ca("a"), make_ca("b")
    conf = write_setup(base, [a, b])
    (base / "b" / "ca.pem").write_bytes(pem(a.cert))
    (base / "b" / "responder.der").write_bytes((base / "a" / "responder.der").read_bytes())
    return conf


def _garbage_ca(base: Path) -> Path:
    conf = write_setup(base, [make_ca("alpha")])
    (base / "alpha" / "ca.pem").write_bytes(b"not a certificate")
    return conf


def _no_cas(base: Path) -> Path:
    conf = write_setup(base, [make_ca("alpha")])
    (base / "ca.d" / "alpha.toml").unlink()
    return conf


@pytest.mark.parametrize("name,setup,file,key", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                       setup: Callable[[Path], Path], file: str, key: str) -> None:
    conf = setup(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_signer_config(conf)
    assert Path(info.value.file).name == file
    assert info.value.key == key, info.value
    # The command line prints it as "ocsp-signer: <file>: <key>: <message>" and exits 2.
    assert signer_main.main(["--config", str(conf), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ocsp-signer: {info.value.file}: {key}: "), err


def test_config_values(tmp_path: Path) -> None:
    direct = make_ca("direct", direct=True)
    conf = write_setup(tmp_path, [make_ca("alpha"), direct], responder_extra={"include_cert": "false"})
    cfg = load_signer_config(conf)
    assert cfg.listen.kind == "unix" and cfg.listen.path == tmp_path / "signer.sock"
    assert cfg.token.label == "test" and cfg.token.serial is None
    assert cfg.token.pin_file == tmp_path / "token.pin" and cfg.token.pin_env is None
    assert cfg.policy.max_validity == timedelta(days=7)
    assert cfg.policy.max_clock_skew == timedelta(minutes=5)
    assert cfg.policy.max_cert_ids == 8
    assert [r.name for r in cfg.responders] == ["alpha", "direct"]
    alpha = cfg.responders[0]
    assert alpha.responder_id == "key" and alpha.include_cert is False
    assert alpha.key_label == "alpha-responder"
    assert cfg.responders[1].cert == cfg.responders[1].ca_cert  # the CA signs directly


@pytest.mark.parametrize("address,ok", [
    ("127.0.0.1:50051", True),
    ("[::1]:50051", True),
    ("localhost:50051", True),
    ("0.0.0.0:50051", False),
    ("192.0.2.1:50051", False),
    ("ocsp.example:50051", False),
])
def test_plaintext_only_on_loopback(tmp_path: Path, address: str, ok: bool) -> None:
    cfg = load_signer_config(write_setup(tmp_path, [make_ca("alpha")], address=address))
    if ok:
        signer_main.check_plaintext_allowed(cfg)
    else:
        with pytest.raises(ConfigError) as info:
            signer_main.check_plaintext_allowed(cfg)
        assert info.value.key == "listen.address" and "plaintext" in info.value.message


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


def test_sighup_is_ignored_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    seen: list[Any] = []

    def load(path: str) -> Any:
        seen.append(signal.getsignal(signal.SIGHUP))
        raise ConfigError(Path(path), "ca_dir", "stop here")

    previous = signal.getsignal(signal.SIGHUP)
    monkeypatch.setattr(signer_main, "load_signer_config", load)
    try:
        assert signer_main.main(["--config", "x.toml"]) == 2
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen == [signal.SIG_IGN]
