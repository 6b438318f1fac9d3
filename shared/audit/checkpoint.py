"""Checkpoints in the transparency-dev text form, wrapped in a signed note. Sans-IO.

Checkpoint body (transparency-dev ``log/README.md``)::

    <origin>\\n<size>\\n<base64 root hash>\\n[<extension line>\\n ...]

Note (the shape of C2SP signed-note): the body, one blank line, then one signature line per signer::

    — <key name> <base64(key id (4 bytes) || signature)>\\n

The signature covers the body bytes exactly (final newline included). Our audit keys live in a
PKCS#11 token and are ECDSA (P-256/P-384) or RSA, which Go's ``note`` package does not know, so the
key id is our own: the first 4 bytes of SHA-256(key name || "\\n" || SubjectPublicKeyInfo DER),
the SPKI in cryptography's canonical DER. The signature value is what X.509 uses: DER
ECDSA-Sig-Value (SHA-256 for P-256, SHA-384 for P-384) or PKCS#1 v1.5 with SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
MAX_NOTE_BYTES = 1 << 16


class CheckpointError(ValueError):
    """A checkpoint or note that is malformed, or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> bytes:
        """The checkpoint text, the bytes a signature covers."""
        for line in (self.origin, *self.extensions):
            if not line or "\n" in line or line != line.strip():
                raise CheckpointError(f"checkpoint line {line!r} is empty, multi-line or padded")
        if self.size < 0 or len(self.root) != 32:
            raise CheckpointError("checkpoint size must be >= 0 and root 32 bytes")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return ("\n".join(lines) + "\n").encode()


def parse_checkpoint(body: bytes) -> Checkpoint:
    """Strict parse of a checkpoint body; the encoding must round-trip byte for byte."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("checkpoint is not UTF-8") from None
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs origin, size and root lines")
    origin, size_text, root_text, *extensions = lines
    if not size_text.isdigit() or (len(size_text) > 1 and size_text[0] == "0"):
        raise CheckpointError(f"checkpoint size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckpointError("checkpoint root is not base64") from None
    try:
        checkpoint = Checkpoint(origin, int(size_text), root, tuple(extensions))
        canonical = checkpoint.body()
    except CheckpointError as e:
        raise CheckpointError(f"malformed checkpoint: {e}") from None
    if canonical != body:
        raise CheckpointError("checkpoint is not in canonical form")
    return checkpoint


# -- notes ---------------------------------------------------------------------------------------

def key_id(name: str, spki_der: bytes) -> bytes:
    """First 4 bytes of SHA-256(name || "\\n" || SPKI), over the SPKI as cryptography re-encodes it
    (a token may omit the RSA parameters' NULL, which RFC 3279 requires)."""
    return hashlib.sha256(name.encode() + b"\n" + _canonical_spki(spki_der)).digest()[:4]


@functools.lru_cache(maxsize=16)
def _canonical_spki(spki_der: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

    try:
        key = load_der_public_key(spki_der)
    except ValueError:
        raise CheckpointError("the audit public key is not a SubjectPublicKeyInfo") from None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


def encode_note(body: bytes, signatures: list[NoteSignature] | tuple[NoteSignature, ...]) -> str:
    if not signatures:
        raise CheckpointError("a note needs at least one signature")
    out = [body.decode(), "\n"]
    for s in signatures:
        if not s.name or any(c.isspace() for c in s.name) or len(s.key_id) != 4:
            raise CheckpointError(f"bad note signer name {s.name!r} or key id")
        out.append(f"{SIGNATURE_PREFIX}{s.name} {base64.b64encode(s.key_id + s.signature).decode()}\n")
    return "".join(out)


def parse_note(text: str) -> tuple[bytes, tuple[NoteSignature, ...]]:
    """Split a note into its body bytes and signature lines (nothing is verified here)."""
    if len(text) > MAX_NOTE_BYTES:
        raise CheckpointError("note too long")
    if not text.endswith("\n"):
        raise CheckpointError("note does not end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise CheckpointError("note has no blank line before its signatures")
    body, block = text[:split + 1], text[split + 2:]
    signatures = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(f"note signature line {line[:40]!r} does not start with an em dash")
        name, sep, value = line[len(SIGNATURE_PREFIX):].partition(" ")
        if not sep or not name or " " in value:
            raise CheckpointError("note signature line is not '— <name> <base64>'")
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise CheckpointError("note signature is not base64") from None
        if len(raw) < 5:
            raise CheckpointError("note signature too short")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return body.encode(), tuple(signatures)


def sign_note(body: bytes, name: str, spki_der: bytes, signature: bytes) -> str:
    """Wrap ``body`` and a signature made over it (by the key ``spki_der``) into a note."""
    return encode_note(body, [NoteSignature(name, key_id(name, spki_der), signature)])


def open_checkpoint(note: str, spki_der: bytes, name: str) -> Checkpoint:
    """The checkpoint in ``note``, provided ``name``'s signature on it verifies with ``spki_der``."""
    body, signatures = parse_note(note)
    wanted = key_id(name, spki_der)
    mine = [s for s in signatures if s.name == name and s.key_id == wanted]
    if not mine:
        names = ", ".join(f"{s.name}/{s.key_id.hex()}" for s in signatures)
        raise CheckpointError(f"no signature by {name}/{wanted.hex()} (signed by {names}): another key")
    if not any(verify_signature(spki_der, body, s.signature) for s in mine):
        raise CheckpointError(f"the signature by {name} does not verify: forged or altered checkpoint")
    return parse_checkpoint(body)


# -- keys and signatures ---------------------------------------------------------------------------

def load_public_key(data: bytes) -> bytes:
    """SubjectPublicKeyInfo DER from a certificate or a public key, PEM or DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_der_public_key,
        load_pem_public_key,
    )

    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        cert = x509.load_pem_x509_certificate(data) if pem else x509.load_der_x509_certificate(data)
        key = cert.public_key()
    except ValueError:
        try:
            key = load_pem_public_key(data) if pem else load_der_public_key(data)
        except (ValueError, TypeError):
            raise CheckpointError("not a certificate or public key (PEM or DER)") from None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def verify_signature(spki_der: bytes, data: bytes, signature: bytes) -> bool:
    """RSA PKCS#1 v1.5/SHA-256, ECDSA P-256/SHA-256 or P-384/SHA-384, as signer.mechanisms signs."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(spki_der)
    except ValueError:
        raise CheckpointError("the audit public key is not a SubjectPublicKeyInfo") from None
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
            digest = hashes.SHA256() if key.curve.name == "secp256r1" else hashes.SHA384()
            key.verify(signature, data, ec.ECDSA(digest))
        else:
            raise CheckpointError(f"unsupported audit key type {type(key).__name__}")
    except InvalidSignature:
        return False
    return True
