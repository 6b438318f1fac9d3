"""mTLS to the signer: the ``[signer]`` tls keys of frontend.toml and the channel credentials.

    [signer]
    address = "signer.internal:50051"
    tls_ca = "/etc/ocsp/tls/ca.pem"             # CA(s) the signer's server certificate must chain to
    tls_cert = "/etc/ocsp/tls/frontend.pem"     # the frontend's client certificate (PEM)
    tls_key = "/etc/ocsp/tls/frontend-key.pem"  # its key (PEM, unencrypted, mode 0600)
    server_name = "signer.internal"             # optional: the name to verify instead of the address host

Without tls_ca the channel is plaintext, which is allowed only to a unix socket or a loopback address.
The signer requires a client certificate, so tls_ca, tls_cert and tls_key go together.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.address import is_local_address
from shared.config import Section
from shared.tls import pem_certificates

log = logging.getLogger("frontend")

TLS_KEYS = ("tls_ca", "tls_cert", "tls_key")


@dataclass(frozen=True, slots=True)
class SignerTls:
    ca: Path
    cert: Path
    key: Path
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    server_name: str | None = None

    def credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)

    def options(self) -> list[tuple[str, str]]:
        """Channel options: the name to check the signer's certificate against, when overridden."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(sec: Section, name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise sec.error(name, f"cannot read {path}: {e.strerror or e}") from None


def load_signer_tls(sec: Section, addresses: tuple[str, ...], address_key: str) -> SignerTls | None:
    """The tls keys of ``[signer]``; None (plaintext) only when every address is local. Raises ConfigError."""
    given = [k for k in TLS_KEYS if sec.has(k)]
    if not given:
        if sec.has("server_name"):
            sec.ignore("server_name")
            raise sec.error("server_name", "only with tls_ca, tls_cert and tls_key")
        remote = [a for a in addresses if not is_local_address(a)]
        if remote:
            raise sec.error(address_key, f"{remote[0]} is not a unix socket or loopback address: "
                                         "plaintext gRPC to the signer is refused; set tls_ca, tls_cert "
                                         "and tls_key (mTLS)")
        return None
    missing = [k for k in TLS_KEYS if k not in given]
    if missing:
        raise sec.error(missing[0], f"is required with {', '.join(given)}: the signer requires a client "
                                    "certificate (mTLS), so tls_ca, tls_cert and tls_key go together")
    ca, cert, key = sec.path("tls_ca"), sec.path("tls_cert"), sec.path("tls_key")
    server_name = sec.str("server_name", None)
    ca_pem, cert_pem = _read(sec, "tls_ca", ca), _read(sec, "tls_cert", cert)
    try:
        pem_certificates(ca_pem, str(ca))
    except ValueError as e:
        raise sec.error("tls_ca", str(e)) from None
    try:
        pem_certificates(cert_pem, str(cert))
    except ValueError as e:
        raise sec.error("tls_cert", str(e)) from None
    key_pem = _read(sec, "tls_key", key)
    mode = key.stat().st_mode
    if mode & 0o077:
        log.warning("%s: %s: %s is readable by group or others (mode %04o); make it 0600, owned by the "
                    "service user", sec.file, sec.key("tls_key"), key, stat.S_IMODE(mode))
    # The DMZ never parses key material in Python (tests/unit/frontend/test_frontend_imports.py): gRPC core loads
    # it, and a key that does not match tls_cert fails the first handshake (logged, answered tryLater).
    if b"-----BEGIN" not in key_pem or b"KEY-----" not in key_pem:
        raise sec.error("tls_key", f"{key} holds no PEM key")
    if b"ENCRYPTED" in key_pem:
        raise sec.error("tls_key", f"{key} is encrypted; gRPC needs an unencrypted key (protect it by file "
                                   "permissions)")
    return SignerTls(ca=ca, cert=cert, key=key, ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem,
                     server_name=server_name)
