"""What the signer's in-process tests share: a small PKI written to disk the way an operator would
(``make_ca``, ``write_setup``), a FakeToken holding software keys (cryptography; ``token_for``,
``SplitKeyToken``), and the real grpc.aio server on a unix socket under tmp_path (``run_server``,
``status``, ``expect_error``, ``verify_signature``: answers checked with cryptography's OCSP loader, an
implementation independent of ours).
"""

from __future__ import annotations

import asyncio
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

from shared.clock import FakeClock
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
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
