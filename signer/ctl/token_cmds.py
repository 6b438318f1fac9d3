"""The token commands of ocspctl:

    ocspctl init-token   --label L --pin-file F --so-pin-file F2
    ocspctl keygen       --token-label L --pin-file F --label KEY --type rsa2048|rsa3072|p256|p384
    ocspctl csr          --token-label L --pin-file F --label KEY --subject "/CN=.../O=..." [--out FILE]
    ocspctl install-cert --token-label L --pin-file F --label KEY --cert FILE --ca CAFILE [--out PATH]
    ocspctl pubkey       --token-label L --pin-file F --label KEY [--out FILE]

PINs never appear on the command line: they come from a file (--pin-file) or an environment
variable (--pin-env), and reach softhsm2-util through a pseudo-terminal, not its argv.
Private keys are generated inside the token and never leave it; CSRs are signed by the token.

``pubkey`` is for whoever checks what a token key signs: above all the audit key's, which `ocspctl
audit verify --pubkey` needs and which belongs off the signer host. Only the public half is read. The
PEM is the SubjectPublicKeyInfo in its canonical DER (what `openssl pkey -pubin` prints for the same
key). It exits 2 when the token has no key labelled KEY.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from signer.ctl.common import (
    PROG,
    CtlError,
    add_token_options,
    load_certificate,
    normalize_spki,
    pem,
    public_key_fingerprint,
    read_secret_file,
    say,
    token_from_args,
    utcnow,
    warn,
)
from signer.ctl.softhsm import softhsm_init_token
from signer.ctl.subject import build_name, parse_subject
from signer.files import write_atomic, write_problem
from signer.mechanisms import KEY_SPECS, SignatureAlgorithm, UnsupportedKey, algorithm_for_key
from signer.token import TokenError

NO_SUCH_KEY = 2  # pubkey's exit status when the token has no key with that label


# -- init-token / keygen -------------------------------------------------------------------------------


def cmd_init_token(args: argparse.Namespace) -> int:
    pin = read_secret_file(args.pin_file, "--pin-file")
    so_pin = read_secret_file(args.so_pin_file, "--so-pin-file")
    if softhsm_init_token(args.label, pin, so_pin):
        say(f"initialised SoftHSM token {args.label!r}")
    else:
        say(f"token {args.label!r} already exists; left as it is")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
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


# -- csr -----------------------------------------------------------------------------------------------


def build_csr(token: Any, key_label: str, subject: list[tuple[str, str]]) -> bytes:
    """A PKCS#10 request for the token key ``key_label``, signed inside the token. Returns DER."""
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


# -- install-cert --------------------------------------------------------------------------------------


def check_responder_certificate(cert: x509.Certificate, ca: x509.Certificate, token_spki: bytes,
                                key_label: str, now: dt.datetime) -> tuple[list[str], list[str]]:
    """Problems (refuse) and warnings for installing ``cert`` as the responder cert of ``key_label``:
    the signer's own candidate checks (the same ones rotation applies), plus advice."""
    from signer.rotation import candidate_problems  # imports grpc: only for the commands that check

    problems = candidate_problems(ca, cert, token_spki, key_label, now)
    warnings: list[str] = []
    try:
        cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    except x509.ExtensionNotFound:
        warnings.append("the certificate has no id-pkix-ocsp-nocheck extension: clients may try to check "
                        "the responder certificate's own revocation status (RFC 6960 4.2.2.2.1)")
    return problems, warnings


def store_certificate(token: Any, label: str, cert_der: bytes) -> None:
    try:
        token.store_certificate(label, cert_der)
    except TokenError as e:
        raise CtlError(str(e)) from None


def install_certificate(token: Any, key_label: str, cert: x509.Certificate, ca: x509.Certificate,
                        out: Path | None) -> None:
    """Check ``cert`` (``check_responder_certificate``), store it in the token next to its key and, with
    ``out``, write it there as PEM. CtlError when refused."""
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


# -- pubkey --------------------------------------------------------------------------------------------


def public_key_pem(spki_der: bytes) -> bytes:
    return load_der_public_key(spki_der).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def cmd_pubkey(args: argparse.Namespace) -> int:
    token = token_from_args(args)
    try:
        try:
            spki = token.public_key(args.label)
        except TokenError as e:
            if token.has_key(args.label):  # the private key is there: something else is wrong
                raise CtlError(str(e)) from None
            print(f"{PROG}: no key labelled {args.label!r} in token {args.token_label!r}", file=sys.stderr)
            return NO_SUCH_KEY
    finally:
        token.close()
    data = public_key_pem(spki)
    if args.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        write_atomic(args.out, data)
    except OSError as e:
        raise CtlError(f"cannot write {args.out}: {e.strerror or e}") from None
    say(f"wrote the public key of {args.label!r} (SHA-256 {public_key_fingerprint(spki)}) to {args.out}")
    return 0


# -- argument parsing ----------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """init-token, keygen, csr, install-cert and pubkey, in that order."""
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

    p = sub.add_parser("pubkey", help="print the public key of a token key pair (PEM), e.g. the audit key's")
    add_token_options(p)
    p.add_argument("--label", required=True, help="label of the key pair")
    p.add_argument("--out", type=Path, help="write the PEM public key here (default: standard output)")
    p.set_defaults(func=cmd_pubkey)
