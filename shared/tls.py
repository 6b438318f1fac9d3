"""Client identities for the mTLS link between frontend and signer (sans-IO: bytes in, values out).

An identity is written ``kind:value``:

    cn:ocsp-frontend        a commonName of the certificate's subject
    dns:frontend.example    a dNSName subjectAltName (compared case-insensitively)
    uri:spiffe://ocsp/fe    a uniformResourceIdentifier subjectAltName (exact)
    spki:<64 hex digits>    SHA-256 of the DER SubjectPublicKeyInfo (a key pin; survives re-issuing
                            the certificate only if the key is kept)

``parse_allowed`` turns configured strings into their canonical form; ``PeerCertificate`` reads a
verified peer certificate (PEM, as gRPC's auth context hands it over) and ``first_allowed`` says
which configured identity it carries, if any.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

IDENTITY_KINDS = ("cn", "dns", "uri", "spki")


def parse_allowed(entry: str) -> str:
    """One configured identity -> canonical ``kind:value``. Raises ValueError with an operator message."""
    kind, sep, value = entry.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in IDENTITY_KINDS:
        raise ValueError(f"{entry!r} must be cn:NAME, dns:NAME, uri:URI or spki:SHA256HEX")
    if not value or value != value.strip():
        raise ValueError(f"{entry!r}: empty value or surrounding spaces")
    if kind == "dns":
        value = value.lower().rstrip(".")
    elif kind == "spki":
        value = value.lower().replace(":", "")
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"{entry!r}: spki: takes the SHA-256 of the SubjectPublicKeyInfo, 64 hex digits "
                             "(openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum)")
    return f"{kind}:{value}"


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    common_names: tuple[str, ...]
    dns_names: tuple[str, ...]
    uris: tuple[str, ...]
    spki_sha256: str

    @classmethod
    def from_pem(cls, pem: bytes) -> PeerCertificate:
        """Raises ValueError for bytes that are not a certificate."""
        cert = x509.load_pem_x509_certificate(pem)
        cns = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            dns, uris = (), ()
        return cls(common_names=cns, dns_names=dns, uris=uris, spki_sha256=spki_sha256(cert))

    def identities(self) -> tuple[str, ...]:
        """Every identity this certificate carries, canonical, most specific name first."""
        return (*(f"cn:{v}" for v in self.common_names), *(f"dns:{v}" for v in self.dns_names),
                *(f"uri:{v}" for v in self.uris), f"spki:{self.spki_sha256}")

    def name(self) -> str:
        """The identity recorded when no allow list decides: the first CN, else a SAN, else the key pin."""
        return self.identities()[0]

    def describe(self) -> str:
        """For log lines: every name, and the key pin."""
        names = [i for i in self.identities() if not i.startswith("spki:")]
        return ", ".join([*names, f"spki:{self.spki_sha256}"])


def first_allowed(peer: PeerCertificate, allowed: Iterable[str]) -> str | None:
    """The first identity of ``peer`` that is in ``allowed`` (canonical forms), or None."""
    wanted = set(allowed)
    for ident in peer.identities():
        if ident in wanted:
            return ident
    return None


# -- PEM material (both halves read the files, then check the bytes here) -----------------------------


def pem_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order. Raises ValueError."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{what} holds no PEM certificate (gRPC takes PEM only)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{what} is not a valid PEM certificate file: {e}") from None
