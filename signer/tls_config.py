"""The ``[tls]`` table of signer.toml: mTLS for the gRPC listener (read without importing grpc).

    [tls]
    cert = "/etc/ocsp/tls/signer.pem"          # server certificate (PEM; intermediates may follow)
    key = "/etc/ocsp/tls/signer-key.pem"       # its private key (PEM, unencrypted, mode 0600)
    client_ca = "/etc/ocsp/tls/client-ca.pem"  # CA(s) client certificates must chain to
    allowed_clients = ["cn:ocsp-frontend"]     # optional: only these identities (shared.tls)

Without a ``[tls]`` table the listener is plaintext, which ``ocsp-signer`` allows only on a unix
socket or a loopback address.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.config import Keys, Section
from shared.tls import parse_allowed, pem_certificates

log = logging.getLogger("ocsp-signer")

# Every key of the [tls] table (signer.config.SIGNER_KEYS).
TLS_KEYS: Keys = dict.fromkeys(("cert", "key", "client_ca", "allowed_clients"))


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path
    cert_pem: bytes  # the server certificate chain, as given
    key_pem: bytes
    client_ca_pem: bytes
    # Canonical identities (shared.tls); empty = any certificate chaining to client_ca.
    allowed_clients: tuple[str, ...] = ()
    # Subject of the server certificate and its notAfter, for the start-up log line.
    subject: str = ""
    not_after: datetime | None = None


def read_private_file(sec: Section, name: str, path: Path, *, warn_log: logging.Logger = log) -> bytes:
    """Read a key file; warn when group or others may read it (0600, owned by the service user)."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise sec.error(name, f"cannot read {path}: {e.strerror or e}") from None
    if st.st_mode & 0o077:
        warn_log.warning("%s: %s: %s is readable by group or others (mode %04o); make it 0600, owned by "
                         "the service user", sec.file, sec.key(name), path, stat.S_IMODE(st.st_mode))
    return data


def read_file(sec: Section, name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise sec.error(name, f"cannot read {path}: {e.strerror or e}") from None


def identity_list(sec: Section, name: str, values: object) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise sec.error(name, "must be a list of strings like \"cn:ocsp-frontend\"")
    if not values:
        raise sec.error(name, "must name at least one identity (leave the key out to accept any "
                              "certificate chaining to client_ca)")
    out: list[str] = []
    for v in values:
        try:
            canon = parse_allowed(v)
        except ValueError as e:
            raise sec.error(name, str(e)) from None
        if canon not in out:
            out.append(canon)
    return tuple(out)


def load_tls(sec: Section) -> TlsConfig:
    """Validate a ``[tls]`` table. Raises ConfigError naming file and key."""
    cert_path = sec.path("cert")
    key_path = sec.path("key")
    ca_path = sec.path("client_ca")
    cert_pem = read_file(sec, "cert", cert_path)
    try:
        chain = pem_certificates(cert_pem, str(cert_path))
    except ValueError as e:
        raise sec.error("cert", str(e)) from None
    key_pem = read_private_file(sec, "key", key_path)
    try:
        check_private_key(key_pem, chain[0], str(key_path))
    except ValueError as e:
        raise sec.error("key", str(e)) from None
    ca_pem = read_file(sec, "client_ca", ca_path)
    try:
        pem_certificates(ca_pem, str(ca_path))
    except ValueError as e:
        raise sec.error("client_ca", str(e)) from None

    allowed: tuple[str, ...] = ()
    if sec.has("allowed_clients"):
        allowed = identity_list(sec, "allowed_clients", sec.str_list("allowed_clients"))
    leaf = chain[0]
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        log.warning("%s: tls.cert: %s is not valid now (%s to %s): clients will refuse it", sec.file,
                    cert_path, leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    return TlsConfig(cert=cert_path, key=key_path, client_ca=ca_path, cert_pem=cert_pem, key_pem=key_pem,
                     client_ca_pem=ca_pem, allowed_clients=allowed,
                     subject=leaf.subject.rfc4514_string(), not_after=leaf.not_valid_after_utc)


# In the signer, not in shared/: the DMZ side imports shared.tls and holds no key-handling code.
def check_private_key(key_pem: bytes, cert: x509.Certificate, what: str) -> None:
    """The PEM private key is unencrypted and belongs to ``cert``. Raises ValueError."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if b"-----BEGIN" not in key_pem or b"PRIVATE KEY-----" not in key_pem:
        raise ValueError(f"{what} holds no PEM private key")
    if b"ENCRYPTED" in key_pem:
        raise ValueError(f"{what} is encrypted; gRPC needs an unencrypted key (protect it by file "
                         "permissions)")
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what} is not a usable private key: {e}") from None
    mine = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    theirs = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mine != theirs:
        raise ValueError(f"{what} does not belong to the certificate (different public key)")
