"""What every ocspctl command shares: its errors and output, the token options, opening the token,
reading certificates and secret files, public-key fingerprints.

Exit status: 0 on success, 1 when the operation was refused or failed (``CtlError``), 2 for a usage
error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
from pathlib import Path
from typing import Any

from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from shared.config import parse_certificate
from signer.files import write_atomic
from signer.token import Pkcs11Token, TokenError, read_pin

PROG = "ocspctl"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TIME_FMT = "%Y-%m-%d %H:%M:%SZ"


class CtlError(Exception):
    """A refusal or failure, worded for the operator; printed as ``ocspctl: <message>``, exit 1."""


def say(message: str = "") -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def ocspctl_command() -> str:
    """This ocspctl as an operator can paste it in any shell and directory (the venv is not on PATH)."""
    path = Path(sys.executable).parent / PROG
    return str(path) if path.exists() else PROG


def write_if_changed(path: Path, data: bytes, mode: int | None = None) -> bool:
    """``write_atomic`` unless ``path`` already holds ``data``; True when it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data, mode)
    return True


def pem(der: bytes, kind: str) -> bytes:
    return asn1_pem.armor(kind, der)


# -- the token ---------------------------------------------------------------------------------------


def add_token_options(p: argparse.ArgumentParser, *, label_required: bool = True) -> None:
    g = p.add_argument_group("token")
    g.add_argument("--module", default=DEFAULT_MODULE, help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    g.add_argument("--token-label", required=label_required, help="label of the token to use")
    pin = g.add_mutually_exclusive_group(required=True)
    pin.add_argument("--pin-file", type=Path, help="file whose first line is the user PIN")
    pin.add_argument("--pin-env", metavar="VAR", help="environment variable holding the user PIN")


def open_token(module: str, token_label: str, pin_file: Path | None, pin_env: str | None) -> Any:
    try:
        pin = read_pin(pin_file, pin_env)
        return Pkcs11Token(module, pin=pin, token_label=token_label)
    except TokenError as e:  # "no token with label ..." names the tokens found and the SOFTHSM2_CONF hint
        raise CtlError(str(e)) from None


def token_from_args(args: argparse.Namespace) -> Any:
    return open_token(args.module, args.token_label, args.pin_file, args.pin_env)


def read_secret_file(path: Path, what: str) -> str:
    try:
        return read_pin(path, None)
    except TokenError as e:
        raise CtlError(f"{what}: {e}") from None


# -- keys and certificates ---------------------------------------------------------------------------


def normalize_spki(spki_der: bytes) -> bytes:
    """The canonical DER of a SubjectPublicKeyInfo (RSA with its NULL parameters, as OpenSSL writes it)."""
    return load_der_public_key(spki_der).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(spki_der: bytes) -> str:
    """SHA-256 of the canonical SPKI: what `openssl pkey -pubin -outform DER | sha256sum` prints."""
    return hashlib.sha256(normalize_spki(spki_der)).hexdigest()


def same_public_key(spki_a: bytes, spki_b: bytes) -> bool:
    return normalize_spki(spki_a) == normalize_spki(spki_b)


def spki(public_key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a cryptography public key."""
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """The one certificate (PEM or DER) in ``path``, by the rule the signer and frontend read theirs
    with (``shared.config.parse_certificate``); CtlError naming ``what`` otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return parse_certificate(data)
    except ValueError as e:
        raise CtlError(f"{what} {path} {e}") from None
