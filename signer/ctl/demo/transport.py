"""The demo's transport PKI (``ocspctl demo setup``): a CA for the gRPC link and its three certificates.

    D/tls/ca.pem ca-key.pem              "Demo transport CA" (ECDSA P-256, software key)
    D/tls/signer.pem signer-key.pem      server: CN=ocsp-signer, SAN DNS localhost, IP 127.0.0.1
    D/tls/frontend.pem frontend-key.pem  client: CN=ocsp-frontend
    D/tls/admin.pem admin-key.pem        client: CN=ocsp-admin (the admin RPCs)

Idempotent: a certificate is kept while it belongs to its key, chains to the CA, has the expected
names and is valid for more than 30 days; otherwise it is issued again. Keys are written 0600.
This is a demo CA: in production use your own CA (any CA works, see the README).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from signer.ctl.demo.pki import aki, key_usage, name, self_signed_ca
from signer.files import write_atomic
from signer.tomltext import toml_string

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
BACKDATE = dt.timedelta(hours=1)
SIGNER_NAMES = ("localhost", "127.0.0.1")
FRONTEND_CN = "ocsp-frontend"
ADMIN_CN = "ocsp-admin"


@dataclass(frozen=True)
class TransportFiles:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def cert(self, who: str) -> Path:
        return self.dir / f"{who}.pem"

    def key(self, who: str) -> Path:
        return self.dir / f"{who}-key.pem"


def _write_key(path: Path, key: Any) -> None:
    write_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), 0o600)


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, Any] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        return None
    return cert, key


def _ensure_ca(files: TransportFiles, now: dt.datetime, log: list[str]) -> tuple[x509.Certificate, Any]:
    found = _load(files.ca, files.dir / "ca-key.pem")
    if found is not None and found[0].not_valid_after_utc - now > RENEW_BEFORE:
        return found
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_ca(key, "Demo transport CA", now)
    _write_key(files.dir / "ca-key.pem", key)
    write_atomic(files.ca, cert.public_bytes(serialization.Encoding.PEM))
    log.append(f"created the demo transport CA in {files.dir}")
    return cert, key


def _san(server: bool) -> x509.SubjectAlternativeName | None:
    if not server:
        return None
    return x509.SubjectAlternativeName([x509.DNSName(SIGNER_NAMES[0]),
                                        x509.IPAddress(ipaddress.ip_address(SIGNER_NAMES[1]))])


def issue(ca_cert: x509.Certificate, ca_key: Any, cn: str, *, server: bool, now: dt.datetime,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
          key: Any = None) -> tuple[x509.Certificate, Any]:
    """A TLS server or client certificate (and a fresh P-256 key unless given) issued by the CA."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before or now - BACKDATE).not_valid_after(not_after or now + LEAF_VALIDITY)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(key_usage(digital_signature=True), critical=True)
         .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
         .add_extension(aki(ca_cert), critical=False))
    san = _san(server)
    if san is not None:
        b = b.add_extension(san, critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def _fits(cert: x509.Certificate, ca_cert: x509.Certificate, cn: str, server: bool, now: dt.datetime) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - any failure means: issue again
        return False
    if cert.not_valid_after_utc - now <= RENEW_BEFORE:
        return False
    if [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] != [cn]:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    return san == _san(server)


def ensure_transport_pki(d: Path, now: dt.datetime, log: list[str]) -> TransportFiles:
    """Create or complete D/tls/ (see the module docstring); appends what it did to ``log``."""
    files = TransportFiles(d / "tls")
    files.dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ensure_ca(files, now, log)
    for who, cn, server in (("signer", "ocsp-signer", True), ("frontend", FRONTEND_CN, False),
                            ("admin", ADMIN_CN, False)):
        found = _load(files.cert(who), files.key(who))
        if found is not None and _fits(found[0], ca_cert, cn, server, now):
            continue
        cert, key = issue(ca_cert, ca_key, cn, server=server, now=now)
        _write_key(files.key(who), key)
        write_atomic(files.cert(who), cert.public_bytes(serialization.Encoding.PEM))
        log.append(f"issued {'server' if server else 'client'} certificate CN={cn} at {files.cert(who)}")
    return files


def _needs_server_name(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host not in SIGNER_NAMES


def signer_tls_toml(d: Path, signer_address: str) -> str:
    """The signer.toml [tls] table of the demo; empty for a unix: address (plaintext)."""
    if signer_address.startswith("unix:"):
        return ""
    f = TransportFiles(d / "tls")
    return f"""
[tls]
cert = {toml_string(f.cert("signer"))}
key = {toml_string(f.key("signer"))}
client_ca = {toml_string(f.ca)}
allowed_clients = ["cn:{FRONTEND_CN}", "cn:{ADMIN_CN}"]
"""


def frontend_tls_toml(d: Path, signer_address: str) -> str:
    """The tls keys of the demo frontend's [signer] table; empty for a unix: address (plaintext)."""
    if signer_address.startswith("unix:"):
        return ""
    f = TransportFiles(d / "tls")
    text = f"""tls_ca = {toml_string(f.ca)}
tls_cert = {toml_string(f.cert("frontend"))}
tls_key = {toml_string(f.key("frontend"))}
"""
    if _needs_server_name(signer_address):
        text += f'server_name = "{SIGNER_NAMES[0]}"\n'
    return text


def health_credentials(frontend_toml: Path) -> tuple[Any, list[tuple[str, str]]] | None:
    """Channel credentials and options from a frontend.toml's [signer] tls keys (None: plaintext).

    For readiness checks (``ocspctl demo serve``, the integration tests): they ask Health as the frontend.
    """
    import grpc

    table = tomllib.loads(frontend_toml.read_text()).get("signer", {})
    if "tls_ca" not in table:
        return None
    base = frontend_toml.parent

    def read(key: str) -> bytes:
        return (base / table[key]).read_bytes()

    creds = grpc.ssl_channel_credentials(read("tls_ca"), read("tls_key"), read("tls_cert"))
    options = [("grpc.ssl_target_name_override", table["server_name"])] if "server_name" in table else []
    return creds, options
