"""ocspctl: the operator's tool for the signer host.

    ocspctl init-token   --label L --pin-file F --so-pin-file F2
    ocspctl keygen       --token-label L --pin-file F --label KEY --type rsa2048|rsa3072|p256|p384
    ocspctl csr          --token-label L --pin-file F --label KEY --subject "/CN=.../O=..." [--out FILE]
    ocspctl install-cert --token-label L --pin-file F --label KEY --cert FILE --ca CAFILE [--out PATH]
    ocspctl pubkey       --token-label L --pin-file F --label KEY [--out FILE]
    ocspctl demo setup   --dir D [--http-port 2560] [--signer-address 127.0.0.1:50051] [--crl-refresh]
    ocspctl demo revoke  --dir D --ca rsa|ec --serial HEX [--reason keyCompromise]
    ocspctl demo serve   --dir D [--http-port N]
    ocspctl demo reissue-responder --dir D --ca rsa|ec [--rekey]
    ocspctl rotate       --ca NAME --cert FILE [--key-label LABEL] [--config signer.toml | --socket PATH]

PINs never appear on the command line: they come from a file (--pin-file) or an environment
variable (--pin-env), and reach softhsm2-util through a pseudo-terminal, not its argv.
Private keys are generated inside the token and never leave it; CSRs are signed by the token.
The demo CA keys are ordinary software keys: they belong to a demo CA, not to the responder.
Every `demo` command uses the demo's own SoftHSM token store, recorded in D/softhsm2.conf
(signer.ctl.demo.token_store), wherever it runs from.

Exit status: 0 on success, 1 when the operation was refused or failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509

from signer.ctl.demo.token_store import ocspctl_command
from signer.files import write_atomic, write_problem

PROG = "ocspctl"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_HTTP_PORT = 2560
TIME_FMT = "%Y-%m-%d %H:%M:%SZ"


class CtlError(Exception):
    """A refusal or failure, worded for the operator; printed as ``ocspctl: <message>``, exit 1."""


def say(message: str = "") -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def write_if_changed(path: Path, data: bytes, mode: int | None = None) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data, mode)
    return True


# -- subjects in OpenSSL's "/K=V/K=V" form ------------------------------------------------------

SUBJECT_ATTRIBUTES = {
    "CN": "common_name",
    "O": "organization_name",
    "OU": "organizational_unit_name",
    "C": "country_name",
    "L": "locality_name",
    "ST": "state_or_province_name",
    "emailAddress": "email_address",
    "serialNumber": "serial_number",
    "DC": "domain_component",
}


def _split_unescaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on ``sep`` unless backslash-escaped; backslashes escape the next character."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_subject(text: str) -> list[tuple[str, str]]:
    """'/CN=x/O=y' -> [('common_name', 'x'), ('organization_name', 'y')], in the order given."""
    if not text.startswith("/"):
        raise CtlError(f"subject {text!r} must be in OpenSSL form, like /CN=ocsp.example.com/O=Example")
    result = []
    for part in _split_unescaped(text[1:], "/"):
        if not part:
            raise CtlError(f"subject {text!r} has an empty component")
        kv = _split_unescaped(part, "=", maxsplit=1)
        if len(kv) != 2:
            raise CtlError(f"subject component {part!r} is not KEY=VALUE")
        key, value = _unescape(kv[0]).strip(), _unescape(kv[1])
        if key not in SUBJECT_ATTRIBUTES:
            raise CtlError(f"subject attribute {key!r} is not supported; use one of "
                           f"{', '.join(SUBJECT_ATTRIBUTES)}")
        if not value:
            raise CtlError(f"subject attribute {key} has an empty value")
        if key == "C" and (len(value) != 2 or not value.isascii() or not value.isalpha()):
            raise CtlError(f"C must be a two-letter country code, not {value!r}")
        result.append((SUBJECT_ATTRIBUTES[key], value))
    return result


def build_name(attributes: Iterable[tuple[str, str]]) -> asn1_x509.Name:
    """An X.509 Name with one RDN per attribute, in order (asn1crypto picks each value's string type)."""
    rdns = [asn1_x509.Name.build({attr: value}).chosen[0] for attr, value in attributes]
    return asn1_x509.Name(name="", value=asn1_x509.RDNSequence(rdns))


# -- the token ---------------------------------------------------------------------------------------


def add_token_options(p: argparse.ArgumentParser, *, label_required: bool = True) -> None:
    g = p.add_argument_group("token")
    g.add_argument("--module", default=DEFAULT_MODULE, help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    g.add_argument("--token-label", required=label_required, help="label of the token to use")
    pin = g.add_mutually_exclusive_group(required=True)
    pin.add_argument("--pin-file", type=Path, help="file whose first line is the user PIN")
    pin.add_argument("--pin-env", metavar="VAR", help="environment variable holding the user PIN")


def open_token(module: str, token_label: str, pin_file: Path | None, pin_env: str | None) -> Any:
    from signer.token import Pkcs11Token, TokenError, read_pin

    try:
        pin = read_pin(pin_file, pin_env)
        return Pkcs11Token(module, pin=pin, token_label=token_label)
    except TokenError as e:
        hint = ""
        if "no token" in str(e) and "SOFTHSM2_CONF" not in os.environ:
            hint = " (SOFTHSM2_CONF is not set: SoftHSM reads /etc/softhsm/softhsm2.conf)"
        raise CtlError(f"{e}{hint}") from None


def token_from_args(args: argparse.Namespace) -> Any:
    return open_token(args.module, args.token_label, args.pin_file, args.pin_env)


def softhsm_token_labels() -> list[str]:
    """Labels of the initialised SoftHSM tokens, as softhsm2-util reports them."""
    try:
        out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise CtlError("softhsm2-util is not installed (apt-get install softhsm2)") from None
    if out.returncode != 0:
        raise CtlError(f"softhsm2-util --show-slots failed: {out.stderr.strip() or out.stdout.strip()}")
    labels = []
    for line in out.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Label" and value.strip():
            labels.append(value.strip())
    return labels


def softhsm_init_token(label: str, pin: str, so_pin: str) -> bool:
    """Initialise a free SoftHSM slot as token ``label``; False if that token already exists.

    softhsm2-util reads the PINs from its terminal; we give it a pseudo-terminal and answer its
    prompts, so the PINs never appear in a process list.
    """
    import pty

    for name, value in (("user PIN", pin), ("SO PIN", so_pin)):
        if not 4 <= len(value) <= 255:
            raise CtlError(f"the {name} must be 4 to 255 characters long")
    if label in softhsm_token_labels():
        return False
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(["softhsm2-util", "--init-token", "--free", "--label", label],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    finally:
        os.close(slave)
    transcript = b""
    pending = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            transcript += chunk
            pending += chunk
            if pending.rstrip().endswith(b"PIN:"):
                answer = so_pin if b"SO PIN" in pending.splitlines()[-1] else pin
                os.write(master, answer.encode() + b"\n")
                pending = b""
        else:
            proc.kill()
    finally:
        os.close(master)
        rc = proc.wait()
    if rc != 0:
        text = transcript.decode(errors="replace").replace("\r", "")
        errors = [line for line in text.splitlines() if "ERROR" in line] or text.splitlines()[-1:]
        raise CtlError(f"softhsm2-util could not initialise token {label!r}: {' '.join(errors)}")
    return True


def read_secret_file(path: Path, what: str) -> str:
    from signer.token import TokenError, read_pin

    try:
        return read_pin(path, None)
    except TokenError as e:
        raise CtlError(f"{what}: {e}") from None


def normalize_spki(spki_der: bytes) -> bytes:
    """The canonical DER of a SubjectPublicKeyInfo (RSA with its NULL parameters, as OpenSSL writes it)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

    return load_der_public_key(spki_der).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(spki_der: bytes) -> str:
    """SHA-256 of the canonical SPKI: what `openssl pkey -pubin -outform DER | sha256sum` prints."""
    return hashlib.sha256(normalize_spki(spki_der)).hexdigest()


def _same_public_key(spki_a: bytes, spki_b: bytes) -> bool:
    return normalize_spki(spki_a) == normalize_spki(spki_b)


def store_certificate(token: Any, label: str, cert_der: bytes) -> None:
    from signer.token import TokenError

    try:
        token.store_certificate(label, cert_der)
    except TokenError as e:
        raise CtlError(str(e)) from None


def token_certificates(token: Any, label: str) -> list[bytes]:
    return token.certificates(label)


# -- init-token / keygen / csr ---------------------------------------------------------------------


def cmd_init_token(args: argparse.Namespace) -> int:
    pin = read_secret_file(args.pin_file, "--pin-file")
    so_pin = read_secret_file(args.so_pin_file, "--so-pin-file")
    if softhsm_init_token(args.label, pin, so_pin):
        say(f"initialised SoftHSM token {args.label!r}")
    else:
        say(f"token {args.label!r} already exists; left as it is")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from signer.token import TokenError

    token = token_from_args(args)
    try:
        spki = token.generate_key(args.label, args.type)
        attrs = token.key_attributes(args.label)
    except TokenError as e:
        raise CtlError(str(e)) from None
    finally:
        token.close()
    say(f"generated {args.type} key {args.label!r} in token {args.token_label!r} "
        f"(sensitive={attrs.sensitive}, extractable={attrs.extractable})")
    say(f"public key SHA-256: {public_key_fingerprint(spki)}")
    return 0


def build_csr(token: Any, key_label: str, subject: list[tuple[str, str]]) -> bytes:
    """A PKCS#10 request for the token key ``key_label``, signed inside the token. Returns DER."""
    from signer.mechanisms import SignatureAlgorithm, UnsupportedKey, algorithm_for_key
    from signer.token import TokenError

    try:
        spki = token.public_key(key_label)
        algorithm = algorithm_for_key(spki)
    except (TokenError, UnsupportedKey) as e:
        raise CtlError(str(e)) from None
    extensions = asn1_x509.Extensions([
        {"extn_id": "key_usage", "critical": True, "extn_value": asn1_x509.KeyUsage({"digital_signature"})},
        {"extn_id": "extended_key_usage", "critical": False, "extn_value": ["ocsp_signing"]},
    ])
    info = asn1_csr.CertificationRequestInfo({
        "version": "v1",
        "subject": build_name(subject),
        "subject_pk_info": asn1_keys.PublicKeyInfo.load(normalize_spki(spki)),
        "attributes": [{"type": "extension_request", "values": [extensions]}],
    })
    try:
        signature = token.sign(key_label, algorithm, info.dump())
    except TokenError as e:
        raise CtlError(str(e)) from None
    # RFC 4055: sha256WithRSAEncryption carries NULL parameters; RFC 5758: ECDSA ones carry none.
    params = asn1_core.Null() if algorithm is SignatureAlgorithm.RSA_SHA256 else None
    request = asn1_csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": algorithm.value, "parameters": params},
        "signature": signature,
    })
    return request.dump()


def pem(der: bytes, kind: str) -> bytes:
    from asn1crypto import pem as asn1_pem

    return asn1_pem.armor(kind, der)


def cmd_csr(args: argparse.Namespace) -> int:
    subject = parse_subject(args.subject)
    token = token_from_args(args)
    try:
        der = build_csr(token, args.label, subject)
    finally:
        token.close()
    data = pem(der, "CERTIFICATE REQUEST")
    if args.out:
        write_atomic(args.out, data)
        say(f"wrote the request for key {args.label!r} to {args.out}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


# -- install-cert -------------------------------------------------------------------------------------


def load_certificate(path: Path, what: str) -> Any:
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise CtlError(f"{what} {path} is not an X.509 certificate (PEM or DER): {e}") from None


def check_responder_certificate(cert: Any, ca: Any, token_spki: bytes, key_label: str,
                                now: dt.datetime) -> tuple[list[str], list[str]]:
    """Problems (refuse) and warnings for installing ``cert`` as the responder cert of ``key_label``:
    the signer's own candidate checks (the same ones rotation applies), plus advice."""
    from cryptography import x509

    from signer.rotation import candidate_problems

    problems = candidate_problems(ca, cert, token_spki, key_label, now)
    warnings: list[str] = []
    try:
        cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    except x509.ExtensionNotFound:
        warnings.append("the certificate has no id-pkix-ocsp-nocheck extension: clients may try to check "
                        "the responder certificate's own revocation status (RFC 6960 4.2.2.2.1)")
    return problems, warnings


def install_certificate(token: Any, key_label: str, cert: Any, ca: Any, out: Path | None) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from signer.token import TokenError

    try:
        token_spki = token.public_key(key_label)
    except TokenError as e:
        raise CtlError(str(e)) from None
    problems, warnings = check_responder_certificate(cert, ca, token_spki, key_label, utcnow())
    for w in warnings:
        warn(w)
    if problems:
        raise CtlError("refusing the certificate:\n  - " + "\n  - ".join(problems))
    store_certificate(token, key_label, cert.public_bytes(Encoding.DER))
    if out is not None:
        try:
            write_atomic(out, cert.public_bytes(Encoding.PEM))
        except OSError as e:
            raise CtlError(f"{write_problem(e, out)} (the certificate is stored in the token)") from None


def cmd_install_cert(args: argparse.Namespace) -> int:
    cert = load_certificate(args.cert, "certificate")
    ca = load_certificate(args.ca, "CA certificate")
    token = token_from_args(args)
    try:
        install_certificate(token, args.label, cert, ca, args.out)
    finally:
        token.close()
    where = f" and written to {args.out}" if args.out else ""
    say(f"certificate {cert.serial_number:X} ({cert.subject.rfc4514_string()}) stored in token "
        f"{args.token_label!r} as {args.label!r}{where}")
    return 0


# -- demo PKI ------------------------------------------------------------------------------------------

DEMO_TOKEN = "ocsp-demo"
CA_VALIDITY = dt.timedelta(days=3650)
RESPONDER_VALIDITY = dt.timedelta(days=365)
LEAF_VALIDITY = dt.timedelta(days=365)
CRL_VALIDITY = dt.timedelta(days=7)
BACKDATE = dt.timedelta(hours=1)

# RFC 5280 reason names as OpenSSL writes them in index.txt -> cryptography's ReasonFlags names.
REASONS = {
    "unspecified": "unspecified",
    "keyCompromise": "key_compromise",
    "CACompromise": "ca_compromise",
    "affiliationChanged": "affiliation_changed",
    "superseded": "superseded",
    "cessationOfOperation": "cessation_of_operation",
    "certificateHold": "certificate_hold",
    "privilegeWithdrawn": "privilege_withdrawn",
    "AACompromise": "aa_compromise",
}
# OpenSSL's index.txt knows only these (crypto/x509/v3_crld.c, apps/ca.c crl_reasons).
INDEX_REASONS = {"unspecified", "keyCompromise", "CACompromise", "affiliationChanged", "superseded",
                 "cessationOfOperation", "certificateHold"}


def canonical_reason(text: str) -> str:
    for name in REASONS:
        if name.lower() == text.lower():
            return name
    raise CtlError(f"unknown revocation reason {text!r}; one of {', '.join(REASONS)}")


@dataclass(frozen=True)
class DemoCA:
    key: str  # "rsa" | "ec"
    dir_name: str
    name: str  # ca.d/<name>.toml
    subject_cn: str
    responder_cn: str
    responder_label: str
    responder_spec: str
    source: str  # "index" | "crl"


DEMO_CAS = {
    "rsa": DemoCA("rsa", "rsa-ca", "demo-rsa", "Demo RSA CA", "Demo RSA OCSP Responder", "demo-rsa-responder",
                  "rsa2048", "index"),
    "ec": DemoCA("ec", "ec-ca", "demo-ec", "Demo EC CA", "Demo EC OCSP Responder", "demo-ec-responder",
                 "p256", "crl"),
}

# file stem -> initial status (None = good, "unissued" = issued but never recorded, else a reason).
DEMO_LEAVES: dict[str, str | None] = {
    "leaf-good": None,
    "leaf-good2": None,
    "leaf-good3": None,
    "leaf-revoked": "keyCompromise",
    "leaf-superseded": "superseded",
    "leaf-ceased": "cessationOfOperation",
    "leaf-unknown": "unissued",
}


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OCSP Demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _serial() -> int:
    return int.from_bytes(secrets.token_bytes(16), "big") >> 1 | 1 << 64


def _load_pem_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(path.read_bytes(), password=None)


def _issued_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:
        return False


def _hash_for(key: Any) -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _ensure_ca(d: Path, spec: DemoCA, now: dt.datetime, log: list[str]) -> tuple[Any, Any]:
    """The CA certificate and software key, reused when both exist and belong together."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    cert_path, key_path = d / "ca.pem", d / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = load_certificate(cert_path, "demo CA certificate")
        key = _load_pem_key(key_path)
        if _same_public_key(_spki(cert.public_key()), _spki(key.public_key())):
            return cert, key
        raise CtlError(f"{cert_path} and {key_path} do not belong together; remove {d} to start over")
    if spec.key == "rsa":
        key: Any = rsa.generate_private_key(65537, 2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_ca(key, spec.subject_cn, now)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.append(f"created CA {spec.subject_cn!r} in {d}")
    return cert, key


def self_signed_ca(key: Any, cn: str, now: dt.datetime) -> Any:
    """A demo root: self-signed, CA:TRUE pathlen 0, keyCertSign+cRLSign, backdated, CA_VALIDITY long."""
    from cryptography import x509

    name = _name(cn)
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, _hash_for(key)))


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _aki(ca_cert: Any) -> Any:
    from cryptography import x509

    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(**kw: bool) -> Any:
    from cryptography import x509

    fields = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                  data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                  encipher_only=False, decipher_only=False)
    fields.update(kw)
    return x509.KeyUsage(**fields)


def issue_responder_cert(ca_cert: Any, ca_key: Any, responder_spki: bytes, cn: str, now: dt.datetime,
                         validity: dt.timedelta = RESPONDER_VALIDITY) -> Any:
    """A delegated OCSP responder certificate (RFC 6960 4.2.2.2) for a public key, issued by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    from cryptography.x509.oid import ExtendedKeyUsageOID

    public_key = load_der_public_key(responder_spki)
    return (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE).not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki(ca_cert), critical=False)
            .sign(ca_key, _hash_for(ca_key)))


def _ocsp_url(cert: Any) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP:
            return desc.access_location.value
    return None


def issue_leaf(ca_cert: Any, ca_key: Any, cn: str, ocsp_url: str, now: dt.datetime) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())  # thrown away: only the certificate matters here
    return (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE).not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]),
                critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(_aki(ca_cert), critical=False)
            .sign(ca_key, _hash_for(ca_key)))


# -- OpenSSL index.txt ----------------------------------------------------------------------------------


@dataclass
class IndexEntry:
    """One line of an OpenSSL CA database, in the exact form `openssl ca` writes it."""

    status: str  # V, R or E
    expiry: str  # YYMMDDHHMMSSZ (YYYYMMDDHHMMSSZ from 2050)
    revocation: str  # "" or YYMMDDHHMMSSZ[,reason]
    serial: str  # upper-case hex, an even number of digits
    filename: str
    subject: str  # /K=V/K=V

    def line(self) -> str:
        fields = (self.status, self.expiry, self.revocation, self.serial, self.filename, self.subject)
        return "\t".join(fields)


def index_time(t: dt.datetime) -> str:
    t = t.astimezone(dt.timezone.utc)
    return t.strftime("%y%m%d%H%M%SZ") if 1950 <= t.year < 2050 else t.strftime("%Y%m%d%H%M%SZ")


def index_serial(serial: int) -> str:
    text = f"{serial:X}"
    return "0" + text if len(text) % 2 else text


def openssl_oneline(name: Any) -> str:
    """X509_NAME_oneline's form of a simple name: /O=.../CN=... (short names, DER order)."""
    from cryptography.x509.oid import NameOID

    short = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O",
             NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
             NameOID.COUNTRY_NAME: "C", NameOID.LOCALITY_NAME: "L", NameOID.STATE_OR_PROVINCE_NAME: "ST",
             NameOID.EMAIL_ADDRESS: "emailAddress"}
    return "".join(f"/{short.get(a.oid, a.oid.dotted_string)}={a.value}" for a in name)


def read_index(path: Path) -> list[IndexEntry]:
    entries = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6 or fields[0] not in ("V", "R", "E"):
            raise CtlError(f"{path}:{number}: not an OpenSSL index.txt line")
        entries.append(IndexEntry(*fields))
    return entries


def write_index(path: Path, entries: list[IndexEntry]) -> bool:
    changed = write_if_changed(path, "".join(e.line() + "\n" for e in entries).encode())
    # `openssl ca` reads (and would otherwise warn about) the database's attribute file.
    write_if_changed(path.with_name(path.name + ".attr"), b"unique_subject = no\n")
    return changed


def index_revoke(entries: list[IndexEntry], serial: int, when: dt.datetime, reason: str | None) -> bool:
    """Mark ``serial`` revoked; False when it was already revoked. Raises CtlError when not in the index."""
    for e in entries:
        if int(e.serial, 16) == serial:
            if e.status == "R":
                return False
            if reason is not None and reason not in INDEX_REASONS:
                raise CtlError(f"OpenSSL's index.txt cannot record the reason {reason}")
            e.status = "R"
            e.revocation = index_time(when) + (f",{reason}" if reason else "")
            return True
    raise CtlError(f"serial {serial:X} is not in the CA database (never issued by this CA)")


# -- CRL --------------------------------------------------------------------------------------------------


def read_crl_entries(path: Path, ca_cert: Any) -> tuple[dict[int, tuple[dt.datetime, str | None]], int, Any]:
    """Revoked serials (time, reason) of a CRL file that verifies with the CA; ({}, 0, None) otherwise."""
    from cryptography import x509

    try:
        data = path.read_bytes()
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except (OSError, ValueError):
        return {}, 0, None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
        return {}, 0, None
    by_flag = {v: k for k, v in REASONS.items()}
    entries: dict[int, tuple[dt.datetime, str | None]] = {}
    for rc in crl:
        try:
            flag = rc.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = by_flag.get(flag.name)
        except x509.ExtensionNotFound:
            reason = None
        entries[rc.serial_number] = (rc.revocation_date_utc, reason)
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return entries, number, crl


def write_crl(path: Path, ca_cert: Any, ca_key: Any, entries: dict[int, tuple[dt.datetime, str | None]],
              number: int, now: dt.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + CRL_VALIDITY)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(_aki(ca_cert), critical=False))
    for serial, (when, reason) in sorted(entries.items()):
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason is not None:
            rb = rb.add_extension(x509.CRLReason(x509.ReasonFlags[REASONS[reason]]), critical=False)
        builder = builder.add_revoked_certificate(rb.build())
    crl = builder.sign(ca_key, _hash_for(ca_key))
    write_atomic(path, crl.public_bytes(Encoding.PEM))


def read_issued(path: Path) -> list[int]:
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return []
    try:
        return [int(x, 16) for x in lines if x.strip()]
    except ValueError:
        raise CtlError(f"{path} is not a list of hex serials") from None


def write_issued(path: Path, serials: Iterable[int]) -> bool:
    return write_if_changed(path, "".join(f"{index_serial(s)}\n" for s in serials).encode())


# -- demo setup --------------------------------------------------------------------------------------------


def _ensure_pin_file(path: Path, log: list[str]) -> str:
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(18) + "\n")
            log.append(f"wrote {path} (0600)")
    return read_secret_file(path, str(path))


def _toml_str(value: str | Path) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def demo_configs(d: Path, http_port: int, signer_address: str, module: str) -> dict[Path, str]:
    from signer.ctl.demo.transport import frontend_tls_toml, signer_tls_toml

    etc = d / "etc"
    signer_tls, frontend_tls = signer_tls_toml(d, signer_address), frontend_tls_toml(d, signer_address)
    files = {
        etc / "signer.toml": f"""\
# ocsp-signer configuration of the demo PKI (written by `ocspctl demo setup`).
ca_dir = {_toml_str(etc / "ca.d")}

[listen]
address = {_toml_str(signer_address)}
{signer_tls}
[token]
module = {_toml_str(module)}
label = {_toml_str(DEMO_TOKEN)}
pin_file = {_toml_str(d / "token.pin")}

[policy]
max_validity = "7d"
max_clock_skew = "5m"

[admin]
socket = {_toml_str(d / "run" / "admin.sock")}

[audit]
dir = {_toml_str(d / "audit")}
key_label = {_toml_str(DEMO_AUDIT_LABEL)}
writer_id = "demo"
""",
        etc / "frontend.toml": f"""\
# ocsp-frontend configuration of the demo PKI (written by `ocspctl demo setup`).
ca_dir = {_toml_str(etc / "ca.d")}

[listen]
host = "127.0.0.1"
port = {http_port}
path_prefix = "/"
max_request_bytes = 10000

[signer]
address = {_toml_str(signer_address)}
timeout = "2s"
{frontend_tls}
[cache]
rotation_grace = "2s"
""",
    }
    for spec in DEMO_CAS.values():
        ca_dir = d / spec.dir_name
        if spec.source == "index":
            status = f"""\
[status]
source = "index"
path = {_toml_str(ca_dir / "index.txt")}
validity = "24h"   # how long answers are valid; the CA/Browser Forum BRs (4.9.10) want 8h..10d
"""
        else:
            status = f"""\
[status]
source = "crl"
path = {_toml_str(ca_dir / "crl.pem")}
issued_serials = {_toml_str(ca_dir / "issued.txt")}
unissued = "unknown"
"""
        files[etc / "ca.d" / f"{spec.name}.toml"] = f"""\
# {spec.subject_cn} of the demo PKI (written by `ocspctl demo setup`).
name = {_toml_str(spec.name)}
ca_cert = {_toml_str(ca_dir / "ca.pem")}

[responder]
cert = {_toml_str(ca_dir / "responder.pem")}
key_label = {_toml_str(spec.responder_label)}
responder_id = "key"
include_cert = true

{status}"""
    return files


def _ensure_responder(token: Any, ca_dir: Path, spec: DemoCA, ca_cert: Any, ca_key: Any, now: dt.datetime,
                      log: list[str]) -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    from signer.token import TokenError

    try:
        if token.has_key(spec.responder_label):
            spki = token.public_key(spec.responder_label)
        else:
            spki = token.generate_key(spec.responder_label, spec.responder_spec)
            log.append(f"generated {spec.responder_spec} key {spec.responder_label!r} "
                       f"in token {DEMO_TOKEN!r}")
    except TokenError as e:
        raise CtlError(str(e)) from None
    path = ca_dir / "responder.pem"
    if path.exists():
        cert = load_certificate(path, "demo responder certificate")
        fresh = cert.not_valid_after_utc - now > dt.timedelta(days=30)
        if _issued_by(cert, ca_cert) and _same_public_key(_spki(cert.public_key()), spki) and fresh:
            if cert.public_bytes(Encoding.DER) not in token_certificates(token, spec.responder_label):
                store_certificate(token, spec.responder_label, cert.public_bytes(Encoding.DER))
            return cert
    cert = issue_responder_cert(ca_cert, ca_key, spki, spec.responder_cn, now)
    install_certificate(token, spec.responder_label, cert, ca_cert, path)
    log.append(f"issued responder certificate {path} for token key {spec.responder_label!r}")
    return cert


def _ensure_leaves(ca_dir: Path, spec: DemoCA, ca_cert: Any, ca_key: Any, url: str, now: dt.datetime,
                   log: list[str]) -> dict[str, Any]:
    from cryptography.hazmat.primitives.serialization import Encoding

    leaves = {}
    for stem in DEMO_LEAVES:
        path = ca_dir / f"{stem}.pem"
        if path.exists():
            cert = load_certificate(path, "demo leaf certificate")
            if _issued_by(cert, ca_cert) and _ocsp_url(cert) == url and cert.not_valid_after_utc > now:
                leaves[stem] = cert
                continue
        cert = issue_leaf(ca_cert, ca_key, f"{stem.removeprefix('leaf-')}.{spec.name}.demo", url, now)
        write_atomic(path, cert.public_bytes(Encoding.PEM))
        log.append(f"issued {path}")
        leaves[stem] = cert
    return leaves


def _record_index(ca_dir: Path, leaves: dict[str, Any], now: dt.datetime, log: list[str]) -> None:
    path = ca_dir / "index.txt"
    entries = read_index(path)
    by_serial = {int(e.serial, 16): e for e in entries}
    for stem, initial in DEMO_LEAVES.items():
        if initial == "unissued":
            continue
        cert = leaves[stem]
        if cert.serial_number not in by_serial:
            entry = IndexEntry("V", index_time(cert.not_valid_after_utc), "",
                               index_serial(cert.serial_number), "unknown", openssl_oneline(cert.subject))
            entries.append(entry)
            by_serial[cert.serial_number] = entry
        if initial is not None and by_serial[cert.serial_number].status != "R":
            index_revoke(entries, cert.serial_number, now, initial)
    if write_index(path, entries):
        log.append(f"wrote {path}")


def _record_crl(ca_dir: Path, ca_cert: Any, ca_key: Any, leaves: dict[str, Any], now: dt.datetime,
                refresh: bool, log: list[str]) -> None:
    issued_path, crl_path = ca_dir / "issued.txt", ca_dir / "crl.pem"
    issued = read_issued(issued_path)
    entries, number, crl = read_crl_entries(crl_path, ca_cert)
    changed = crl is None or refresh or crl.next_update_utc - now < dt.timedelta(days=1)
    for stem, initial in DEMO_LEAVES.items():
        if initial == "unissued":
            continue
        serial = leaves[stem].serial_number
        if serial not in issued:
            issued.append(serial)
        if initial is not None and serial not in entries:
            entries[serial] = (now, initial)
            changed = True
    if write_issued(issued_path, issued):
        log.append(f"wrote {issued_path}")
    if changed:
        write_crl(crl_path, ca_cert, ca_key, entries, number + 1, now)
        log.append(f"issued CRL number {number + 1} at {crl_path}")


DEMO_AUDIT_LABEL = "demo-audit"


def _ensure_audit_key(token: Any, d: Path, log: list[str]) -> None:
    """The key that signs audit checkpoints, in the token; its public key for auditors in D/audit/."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

    if not token.has_key(DEMO_AUDIT_LABEL):
        token.generate_key(DEMO_AUDIT_LABEL, "p256")
        log.append(f"generated p256 audit key {DEMO_AUDIT_LABEL!r} in token {DEMO_TOKEN!r}")
    public = load_der_public_key(token.public_key(DEMO_AUDIT_LABEL))
    path = d / "audit-key.pem"
    if write_if_changed(path, public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)):
        log.append(f"wrote {path} (verify the audit log with: {ocspctl_command()} audit verify "
                   f"{d / 'audit'}/*.jsonl --pubkey {path})")


def demo_setup(d: Path, http_port: int, signer_address: str, module: str, crl_refresh: bool) -> list[str]:
    log: list[str] = []
    d.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "etc/ca.d", *(s.dir_name for s in DEMO_CAS.values())):
        (d / sub).mkdir(parents=True, exist_ok=True)
    from signer.ctl.demo.token_store import record_token_store

    new_pin = not (d / "token.pin").exists()
    if (d / "audit-key.pem").exists() and DEMO_TOKEN not in softhsm_token_labels():
        # Set up before, but its token is not in this store: making a new one would re-key the demo
        # (new responder keys and audit key, and the audit log no longer verifies).
        raise CtlError(f"{d} was set up with another SoftHSM token store: its token {DEMO_TOKEN!r} is not in "
                       f"SOFTHSM2_CONF={os.environ.get('SOFTHSM2_CONF', '(not set: the system store)')}; run "
                       "with the configuration it was made with (make: var/softhsm2.conf), or remove "
                       f"{d} to start a new demo")
    pin = _ensure_pin_file(d / "token.pin", log)
    so_pin = _ensure_pin_file(d / "so.pin", log)
    if softhsm_init_token(DEMO_TOKEN, pin, so_pin):
        log.append(f"initialised SoftHSM token {DEMO_TOKEN!r}")
    elif new_pin:
        # The token outlived the demo directory that made it (its PIN file is gone): logging in
        # would only fail on a wrong PIN, so say what to do instead (and leave no new PIN behind).
        for name in ("token.pin", "so.pin"):
            (d / name).unlink(missing_ok=True)
        raise CtlError(f"SoftHSM token {DEMO_TOKEN!r} already exists, but {d / 'token.pin'} was just created, "
                       f"so its PIN is lost: remove the token's directory (SOFTHSM2_CONF="
                       f"{os.environ.get('SOFTHSM2_CONF', '?')} names it; with make: rm -rf var) and run again")
    token = open_token(module, DEMO_TOKEN, d / "token.pin", None)
    if (recorded := record_token_store(d)) is not None:
        log.append(recorded)
    now = utcnow()
    url = f"http://127.0.0.1:{http_port}/"
    try:
        for spec in DEMO_CAS.values():
            ca_dir = d / spec.dir_name
            ca_cert, ca_key = _ensure_ca(ca_dir, spec, now, log)
            _ensure_responder(token, ca_dir, spec, ca_cert, ca_key, now, log)
            leaves = _ensure_leaves(ca_dir, spec, ca_cert, ca_key, url, now, log)
            if spec.source == "index":
                _record_index(ca_dir, leaves, now, log)
            else:
                _record_crl(ca_dir, ca_cert, ca_key, leaves, now, crl_refresh, log)
        _ensure_audit_key(token, d, log)
    finally:
        token.close()
    from signer.ctl.demo.transport import ensure_transport_pki

    ensure_transport_pki(d, now, log)  # mTLS between frontend and signer (used for host:port addresses)
    for path, text in demo_configs(d, http_port, signer_address, module).items():
        if write_if_changed(path, text.encode()):
            log.append(f"wrote {path}")
    return log


def _default_signer_address(d: Path) -> str:
    return "127.0.0.1:50051"  # TCP loopback with mTLS; a unix: address keeps plaintext


def _current_settings(d: Path) -> tuple[int | None, str | None]:
    """The HTTP port and signer address a demo directory is set up with (None: not set up)."""
    port = address = None
    try:
        port = int(tomllib.loads((d / "etc" / "frontend.toml").read_text())["listen"]["port"])
        address = str(tomllib.loads((d / "etc" / "signer.toml").read_text())["listen"]["address"])
    except (OSError, KeyError, TypeError, ValueError, tomllib.TOMLDecodeError):
        pass
    return port, address


def cmd_demo_setup(args: argparse.Namespace) -> int:
    d = args.dir.resolve()
    # Without --http-port / --signer-address the demo keeps what it has: a change re-issues the leaf
    # certificates (their AIA URL names the port) and rewrites the configs.
    current_port, current_address = _current_settings(d)
    args.http_port = args.http_port or current_port or DEFAULT_HTTP_PORT
    address = args.signer_address or current_address or _default_signer_address(d)
    if address.startswith("unix:") and len(address.removeprefix("unix:").encode()) > 107:
        raise CtlError(f"the signer socket path {address} is longer than a unix socket allows (107 bytes); "
                       "use a shorter --dir or give --signer-address")
    log = demo_setup(d, args.http_port, address, args.module, args.crl_refresh)
    for line in log:
        say(f"  {line}")
    say(f"demo PKI {'ready' if log else 'already complete, nothing changed'} in {d}")
    say(f"  token {DEMO_TOKEN!r} (PIN in {d / 'token.pin'}), keys "
        + ", ".join(repr(s.responder_label) for s in DEMO_CAS.values()))
    for spec in DEMO_CAS.values():
        source = "index.txt" if spec.source == "index" else "crl.pem + issued.txt"
        say(f"  {spec.subject_cn}: {d / spec.dir_name} ({source}); leaves: " + ", ".join(DEMO_LEAVES))
    say(f"  configs in {d / 'etc'}; OCSP URL http://127.0.0.1:{args.http_port}/, signer at {address}")
    say(f"next: {ocspctl_command()} demo serve --dir {d}")
    return 0


def cmd_demo_revoke(args: argparse.Namespace) -> int:
    d = args.dir.resolve()
    spec = DEMO_CAS[args.ca]
    ca_dir = d / spec.dir_name
    try:
        serial = int(args.serial, 16)
    except ValueError:
        raise CtlError(f"--serial {args.serial!r} is not a hex number") from None
    reason = canonical_reason(args.reason) if args.reason else None
    now = utcnow()
    if spec.source == "index":
        path = ca_dir / "index.txt"
        entries = read_index(path)
        if not entries:
            raise CtlError(f"{path} is missing or empty; run `{PROG} demo setup --dir {d}` first")
        if not index_revoke(entries, serial, now, reason):
            say(f"serial {serial:X} is already revoked in {path}")
            return 0
        write_index(path, entries)
        say(f"revoked serial {serial:X} ({reason or 'no reason'}) in {path}")
        return 0
    ca_cert = load_certificate(ca_dir / "ca.pem", "demo CA certificate")
    ca_key = _load_pem_key(ca_dir / "ca-key.pem")
    if serial not in read_issued(ca_dir / "issued.txt"):
        raise CtlError(f"serial {serial:X} is not in {ca_dir / 'issued.txt'} (never issued by this CA)")
    entries, number, crl = read_crl_entries(ca_dir / "crl.pem", ca_cert)
    if crl is None:
        raise CtlError(f"{ca_dir / 'crl.pem'} is missing or does not verify; run `{PROG} demo setup "
                       f"--dir {d} --crl-refresh`")
    if serial in entries:
        say(f"serial {serial:X} is already revoked in {ca_dir / 'crl.pem'}")
        return 0
    entries[serial] = (now, reason)
    write_crl(ca_dir / "crl.pem", ca_cert, ca_key, entries, number + 1, now)
    say(f"revoked serial {serial:X} ({reason or 'no reason'}); issued CRL number {number + 1} "
        f"at {ca_dir / 'crl.pem'}")
    return 0


# -- demo serve --------------------------------------------------------------------------------


class Child:
    """A child process whose output is echoed with a prefix and whose last lines are kept."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.tail: deque[str] = deque(maxlen=30)
        # Its own process group: Ctrl-C reaches ocspctl only, which then stops the children in order.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, process_group=0)
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    def exited(self) -> int | None:
        return self.proc.poll()

    def died_message(self) -> str:
        self._reader.join(2)
        tail = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        return f"{self.name} exited early with status {self.proc.returncode}; its last output:\n{tail}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            warn(f"{self.name} did not stop within {timeout:.0f}s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
        self._reader.join(2)


def signer_serving(address: str, frontend_toml: Path | None = None) -> bool:
    """The signer answers Health; over mTLS with the frontend's certificate when frontend.toml has one."""
    import grpc

    from shared.rpc import signer_pb2, signer_pb2_grpc
    from signer.ctl.demo.transport import health_credentials

    tls = health_credentials(frontend_toml) if frontend_toml is not None else None
    try:
        with (grpc.secure_channel(address, tls[0], options=tls[1]) if tls else
              grpc.insecure_channel(address)) as channel:
            reply = signer_pb2_grpc.SignerStub(channel).Health(signer_pb2.HealthRequest(), timeout=1)
            return bool(reply.serving)
    except grpc.RpcError:
        return False


def _http_healthy(host: str, port: int) -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection(host, port, timeout=1)
        try:
            conn.request("GET", "/-/health")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def _wait_ready(child: Child, ready: Callable[[], bool], timeout: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if child.exited() is not None:
            raise CtlError(child.died_message())
        if ready():
            return
        if time.monotonic() > deadline:
            tail = "\n".join(f"    {line}" for line in child.tail) or "    (no output)"
            raise CtlError(f"{child.name} was not ready within {timeout:.0f}s; its last output:\n{tail}")
        stop.wait(0.1)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CtlError(f"{path} does not exist; run `{PROG} demo setup --dir {path.parent.parent}` "
                       "first") from None
    except tomllib.TOMLDecodeError as e:
        raise CtlError(f"{path}: not valid TOML: {e}") from None


def _client_commands(d: Path, url: str) -> list[str]:
    lines = []
    for spec in DEMO_CAS.values():
        ca = d / spec.dir_name / "ca.pem"
        for which in ("good", "revoked", "unknown"):
            cert = d / spec.dir_name / f"leaf-{which}.pem"
            lines.append(f"openssl ocsp -issuer {ca} -cert {cert} -url {url} -CAfile {ca} -resp_text")
    return lines


def cmd_demo_serve(args: argparse.Namespace) -> int:
    d = args.dir.resolve()
    signer_toml, frontend_toml = d / "etc" / "signer.toml", d / "etc" / "frontend.toml"
    signer_address = _read_toml(signer_toml)["listen"]["address"]
    listen = _read_toml(frontend_toml)["listen"]
    host, port = listen.get("host", "127.0.0.1"), int(listen.get("port", DEFAULT_HTTP_PORT))
    if args.http_port is not None and args.http_port != port:
        raise CtlError(f"{d} is set up for port {port}, not {args.http_port}; first run: {ocspctl_command()} "
                       f"demo setup --dir {d} --http-port {args.http_port} (this re-issues the leaf "
                       "certificates: their OCSP URL names the port)")
    from signer.ctl.demo.ports import in_use_problem, serves

    problem = in_use_problem(d, signer_address, host, port, f"{ocspctl_command()} demo setup --dir {d}")
    if problem is not None:
        raise CtlError(problem)
    bindir = Path(sys.executable).parent

    def program(name: str) -> str:
        path = bindir / name
        if not path.exists():
            raise CtlError(f"{path} does not exist: is the project installed in this virtual environment?")
        return str(path)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    children: list[Child] = []
    try:
        # Ready: the child is alive, its address answers, and the listening socket is the child's own
        # (another program on the same address cannot make it look ready).
        signer = Child("ocsp-signer", [program("ocsp-signer"), "--config", str(signer_toml)])
        children.append(signer)
        _wait_ready(signer, lambda: signer_serving(signer_address, frontend_toml)
                    and serves(signer.proc.pid, signer_address), args.timeout, stop)
        if not stop.is_set():
            frontend = Child("ocsp-frontend", [program("ocsp-frontend"), "--config", str(frontend_toml)])
            children.append(frontend)
            _wait_ready(frontend, lambda: _http_healthy(host, port) and serves(frontend.proc.pid, f"{host}:{port}"),
                        args.timeout, stop)
        for child in children:
            if child.exited() is not None:
                raise CtlError(child.died_message())
        if not stop.is_set():
            url = f"http://{host}:{port}"
            say(f"ocsp-signer on {signer_address}, ocsp-frontend on {url}/ (Ctrl-C stops both)")
            say("try:")
            for line in _client_commands(d, url):
                say(f"  {line}")
            say(f"revoke while running: {ocspctl_command()} demo revoke --dir {d} --ca ec --serial <HEX> "
                "--reason superseded")
        while not stop.is_set():
            for child in children:
                if child.exited() is not None:
                    raise CtlError(child.died_message())
            stop.wait(0.2)
    finally:
        for child in reversed(children):  # frontend first, then the signer it talks to
            child.stop()
    if received:
        say(f"stopped ({signal.Signals(received[0]).name})")
    return 0


def _use_demo_token(d: Path, *, setup: bool) -> None:
    """SOFTHSM2_CONF for this process and its children: the demo's own token store (signer.ctl.demo.token_store)."""
    from signer.ctl.demo.token_store import DemoTokenError, use_demo_token

    try:
        note = use_demo_token(d, setup=setup)
    except DemoTokenError as e:
        raise CtlError(str(e)) from None
    if note:
        warn(note)


# -- argument parsing --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from signer.mechanisms import KEY_SPECS

    parser = argparse.ArgumentParser(prog=PROG, description="OCSP responder administration: token, keys, "
                                     "certificates, and a demo PKI.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-token", help="initialise a SoftHSM token (idempotent)")
    p.add_argument("--label", required=True, help="token label")
    p.add_argument("--pin-file", type=Path, required=True, help="file holding the new user PIN")
    p.add_argument("--so-pin-file", type=Path, required=True, help="file holding the new SO PIN")
    p.set_defaults(func=cmd_init_token)

    p = sub.add_parser("keygen", help="generate a non-extractable key pair in the token")
    add_token_options(p)
    p.add_argument("--label", required=True, help="label of the new key pair")
    p.add_argument("--type", required=True, choices=list(KEY_SPECS), help="key type")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("csr", help="PKCS#10 request for a token key, signed in the token")
    add_token_options(p)
    p.add_argument("--label", required=True, help="label of the key pair")
    p.add_argument("--subject", required=True,
                   help='subject in OpenSSL form: "/CN=ocsp.example.com/O=Example"')
    p.add_argument("--out", type=Path, help="write the PEM request here (default: standard output)")
    p.set_defaults(func=cmd_csr)

    p = sub.add_parser("install-cert", help="check a responder certificate and store it")
    add_token_options(p)
    p.add_argument("--label", required=True, help="label of the key pair the certificate is for")
    p.add_argument("--cert", type=Path, required=True, help="the responder certificate (PEM or DER)")
    p.add_argument("--ca", type=Path, required=True, help="the issuing CA certificate (PEM or DER)")
    p.add_argument("--out", type=Path, help="also write the certificate (PEM) here, atomically")
    p.set_defaults(func=cmd_install_cert)

    from signer.ctl.token_cmds import add_parser as add_pubkey_parser

    add_pubkey_parser(sub)  # pubkey

    demo = sub.add_parser("demo", help="a demo PKI on a SoftHSM token").add_subparsers(
        dest="demo_command", required=True, metavar="DEMO_COMMAND")
    sub.add_parser("audit", help="verify or search the audit log: ocspctl audit {verify,show} --help",
                   add_help=False)
    p = demo.add_parser("setup", help="create (or complete) the demo PKI; idempotent")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--http-port", type=int, help="frontend port, also in leaf AIA URLs (default: the demo's "
                                                 f"current port; {DEFAULT_HTTP_PORT} for a new demo)")
    p.add_argument("--signer-address",
                   help="signer gRPC address (default: the demo's current one; 127.0.0.1:50051, with mTLS, "
                        "for a new demo; unix:PATH = plaintext)")
    p.add_argument("--module", default=DEFAULT_MODULE, help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    p.add_argument("--crl-refresh", action="store_true", help="re-issue the EC CA's CRL even if still fresh")
    p.set_defaults(func=cmd_demo_setup)

    p = demo.add_parser("revoke", help="revoke a demo certificate (index.txt or a new CRL)")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--ca", required=True, choices=list(DEMO_CAS), help="which demo CA")
    p.add_argument("--serial", required=True, help="serial number, hex")
    p.add_argument("--reason", help=f"RFC 5280 reason: {', '.join(REASONS)} (default: none)")
    p.set_defaults(func=cmd_demo_revoke)

    p = demo.add_parser("serve", help="run ocsp-signer and ocsp-frontend on the demo PKI")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--http-port", type=int, help="refuse unless the demo is set up for this port")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each to be ready (30)")
    p.set_defaults(func=cmd_demo_serve)

    from signer.ctl.rotate import add_parsers

    add_parsers(sub, demo)  # rotate, demo reissue-responder
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["audit"]:  # its own parser: signer.audit_cli
        from signer.audit_cli import audit_main

        return audit_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo" and args.demo_command != "revoke":  # revoke needs no token
            _use_demo_token(args.dir.resolve(), setup=args.demo_command == "setup")
        return int(args.func(args))
    except CtlError as e:
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
