"""Responders: for each configured CA, who signs (certificate + key in the token) and how.

A ``ResponderSet`` is immutable and is replaced as a whole (rotation swaps the reference
signer.responder_state's ``ResponderState`` holds, in one assignment), so a request always sees one
consistent set: the responder it looked up, its key label and its generation belong together.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from shared.config import ConfigError
from shared.ocsp.certid import IssuerIndex
from shared.ocsp.response import ResponseTemplate
from shared.ocsp.response import responder_id as make_responder_id
from shared.ocsp.types import IssuerKey
from signer.config import ResponderConfig, SignerConfig
from signer.mechanisms import SignatureAlgorithm, UnsupportedKey, algorithm_for_key
from signer.token import Token, TokenError

log = logging.getLogger("signer.responders")


@dataclass(frozen=True, slots=True, eq=False)
class Responder:
    """Who answers for one issuer. ``generation`` identifies this certificate+key pairing."""

    name: str
    issuer_cert: bytes  # DER
    cert: bytes  # responder certificate DER
    key_label: str
    algorithm: SignatureAlgorithm
    responder_id: Any  # asn1crypto ocsp.ResponderId, precomputed
    include_cert: bool
    generation: int
    fingerprint: str  # SHA-256 of ``cert``, hex
    not_before: datetime
    not_after: datetime
    ca_not_before: datetime  # the CA certificate's notBefore: no revocation of its certificates is older
    # Computed from the fields above, once (every signature uses them):
    # stable issuer id for the audit log: SHA-256 of the CA certificate DER, hex
    issuer_id: str = field(init=False)
    # this responder's ResponderID, signature algorithm and certs, encoded for every response it signs
    template: ResponseTemplate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "issuer_id", hashlib.sha256(self.issuer_cert).hexdigest())
        object.__setattr__(self, "template", ResponseTemplate.of(self.responder_id, self.algorithm.value, self.certs))

    @property
    def certs(self) -> tuple[bytes, ...]:
        """What goes in BasicOCSPResponse.certs."""
        return (self.cert,) if self.include_cert else ()


@dataclass(frozen=True, slots=True, eq=False)
class ResponderSet:
    responders: tuple[Responder, ...]
    generation: int
    _index: IssuerIndex = field(repr=False)

    @classmethod
    def of(cls, responders: Sequence[Responder], generation: int) -> ResponderSet:
        index: IssuerIndex = IssuerIndex()
        for r in responders:
            index.add(r.issuer_cert, r)
        return cls(tuple(responders), generation, index)

    def get(self, issuer: IssuerKey) -> Responder | None:
        return self._index.get(issuer)

    def __iter__(self) -> Iterator[Responder]:
        return iter(self.responders)

    def __len__(self) -> int:
        return len(self.responders)


def canonical_spki(spki_der: bytes) -> bytes:
    """``spki_der`` re-encoded as the DER cryptography writes (what a certificate's key compares to).
    Raises ValueError when it is not a public key. The one SPKI canonicalisation of the signer."""
    return load_der_public_key(spki_der).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# Signed through the token and verified against the certificate before a responder is used: the
# token's public key object of a label matching the certificate says nothing about its private key.
PAIR_PROBE = b"ocsp-signer: does this private key belong to the responder certificate?"


def signature_verifies(public_key: Any, algorithm: SignatureAlgorithm, signature: bytes, data: bytes) -> bool:
    """``signature`` (X.509 form, as the token returns it) over ``data`` verifies with ``public_key``."""
    try:
        if algorithm is SignatureAlgorithm.RSA_SHA256:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            h = hashes.SHA256() if algorithm is SignatureAlgorithm.ECDSA_SHA256 else hashes.SHA384()
            public_key.verify(signature, data, ec.ECDSA(h))
    except (InvalidSignature, ValueError):
        return False
    return True


def check_key_pair(rc: ResponderConfig, cert: x509.Certificate, algorithm: SignatureAlgorithm,
                   token: Token) -> None:
    """The token's private key ``rc.key_label`` signs for ``cert``'s public key. Blocking (a token call:
    run it on the token thread). Raises ConfigError naming ``responder.key_label``."""
    try:
        signature = token.sign(rc.key_label, algorithm, PAIR_PROBE)
    except TokenError as e:
        raise ConfigError(rc.file, "responder.key_label",
                          f"cannot sign with the token's private key {rc.key_label!r}: {e}") from None
    if not signature_verifies(cert.public_key(), algorithm, signature, PAIR_PROBE):
        raise ConfigError(rc.file, "responder.key_label",
                          f"the token's private key {rc.key_label!r} is not the pair of the responder "
                          "certificate's key: a test signature made with it does not verify with the "
                          "certificate (a leftover or colliding private key object under that label?); "
                          "every response would carry an invalid signature")


def include_cert_for(rc: ResponderConfig) -> bool:
    """Whether BasicOCSPResponse.certs carries the responder certificate.

    A delegated responder's certificate must be there (RFC 6960 4.2.2.2: clients cannot verify the
    answer otherwise). When the CA signs its own answers, the client already holds that certificate
    (it built the CertID from it), and some clients refuse the answer when it is there anyway:
    golang.org/x/crypto/ocsp, used by Go servers for stapling, treats any certificate in ``certs`` as
    a delegate and checks that the issuer signed it, which an intermediate CA's own certificate (signed
    by its parent) fails. So unless the CA file says otherwise, the CA's own certificate is left out.
    """
    if rc.include_cert is not None:
        return rc.include_cert
    return rc.cert != rc.ca_cert


def responder_algorithm(rc: ResponderConfig, cert: x509.Certificate) -> SignatureAlgorithm:
    """How the key of ``cert`` (``rc.cert``, parsed) signs; ConfigError naming ``responder.cert`` when
    the signer cannot sign with such a key."""
    try:
        return algorithm_for_key(cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    except UnsupportedKey as e:
        raise ConfigError(rc.file, "responder.cert", str(e)) from None


def load_responder(rc: ResponderConfig, token: Token, generation: int) -> Responder:
    """Check the token holds the key for ``rc``'s certificate (its public key object matches, and its
    private key signs a probe that verifies with the certificate) and build its Responder.

    Blocking: calls the token. Raises ConfigError naming the CA file and key on any mismatch.
    """
    cert = x509.load_der_x509_certificate(rc.cert)
    algorithm = responder_algorithm(rc, cert)
    try:
        token_spki = token.public_key(rc.key_label)
    except TokenError as e:
        raise ConfigError(rc.file, "responder.key_label", str(e)) from None
    cert_spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    try:
        same = canonical_spki(token_spki) == cert_spki
    except ValueError:
        same = False
    if not same:
        raise ConfigError(rc.file, "responder.key_label",
                          f"the token's key {rc.key_label!r} is not the key of the responder certificate "
                          "(wrong label, or the certificate belongs to another key)")
    return paired_responder(rc, cert, algorithm, token, generation)


def paired_responder(rc: ResponderConfig, cert: x509.Certificate, algorithm: SignatureAlgorithm, token: Token,
                     generation: int) -> Responder:
    """The Responder for ``rc`` (``cert``: ``rc.cert`` parsed, ``algorithm``: ``responder_algorithm``)
    whose token public key the caller has found to be the certificate's: the private key signs a probe
    that verifies with the certificate (``check_key_pair``), then the Responder is built. Blocking
    (calls the token); ConfigError naming the CA file and key when the pair does not match."""
    check_key_pair(rc, cert, algorithm, token)
    include = include_cert_for(rc)
    if include and rc.cert == rc.ca_cert and not _self_signed(cert):
        log.warning("%s: include_cert = true puts the CA's own certificate in every response; Go "
                    "clients (golang.org/x/crypto/ocsp) reject such answers from an intermediate CA: "
                    "leave include_cert unset (%s)", rc.name, rc.file)
    return Responder(
        name=rc.name,
        issuer_cert=rc.ca_cert,
        cert=rc.cert,
        key_label=rc.key_label,
        algorithm=algorithm,
        responder_id=make_responder_id(rc.cert, rc.responder_id),
        include_cert=include,
        generation=generation,
        fingerprint=hashlib.sha256(rc.cert).hexdigest(),
        not_before=cert.not_valid_before_utc.astimezone(UTC),
        not_after=cert.not_valid_after_utc.astimezone(UTC),
        ca_not_before=x509.load_der_x509_certificate(rc.ca_cert).not_valid_before_utc.astimezone(UTC),
    )


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_responders(config: SignerConfig, token: Token, generation: int = 1) -> ResponderSet:
    """Every configured CA's responder, checked against the token. Blocking (calls the token)."""
    return ResponderSet.of([load_responder(rc, token, generation) for rc in config.responders], generation)
