"""``ocspctl demo reissue-responder``: a new responder certificate for a demo CA, for its current token
key or (--rekey) a new one, and the ``ocspctl rotate`` command that switches the running signer to it.

    ocspctl demo reissue-responder --dir D --ca rsa|ec [--rekey] [--days N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import secrets
import tomllib

from cryptography.hazmat.primitives.serialization import Encoding

from signer.ctl.common import TIME_FMT, CtlError, load_certificate, ocspctl_command, open_token, say, utcnow
from signer.ctl.demo.layout import DEMO_CAS, DEMO_TOKEN
from signer.ctl.demo.pki import issue_responder_cert, load_pem_key
from signer.ctl.token_cmds import install_certificate
from signer.token import TokenError


def cmd_demo_reissue_responder(args: argparse.Namespace) -> int:
    """A new responder certificate for a demo CA, for the same token key or (--rekey) a new one."""
    d = args.dir.resolve()
    spec = DEMO_CAS[args.ca]
    ca_dir = d / spec.dir_name
    ca_cert = load_certificate(ca_dir / "ca.pem", "demo CA certificate")
    ca_key = load_pem_key(ca_dir / "ca-key.pem")
    label = spec.responder_label
    ca_file = d / "etc" / "ca.d" / f"{spec.name}.toml"
    try:
        label = tomllib.loads(ca_file.read_text())["responder"]["key_label"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    token = open_token(args.module, DEMO_TOKEN, d / "token.pin", None)
    now = utcnow()
    try:
        if args.rekey:
            label = f"{spec.responder_label}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
            try:
                token.generate_key(label, spec.responder_spec)
            except TokenError as e:
                raise CtlError(str(e)) from None
        try:
            spki = token.public_key(label)
        except TokenError as e:
            raise CtlError(str(e)) from None
        cert = issue_responder_cert(ca_cert, ca_key, spki, spec.responder_cn, now, dt.timedelta(days=args.days))
        path = ca_dir / f"responder-{cert.serial_number:X}.pem"
        install_certificate(token, label, cert, ca_cert, path)
    finally:
        token.close()
    say(f"cert: {path}")
    say(f"key_label: {label}")
    say(f"serial: {cert.serial_number:X}, valid until {cert.not_valid_after_utc:{TIME_FMT}}, SHA-256 "
        f"{hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()}")
    key_opt = f" --key-label {label}" if args.rekey else ""
    say(f"switch: {ocspctl_command()} rotate --config {d / 'etc' / 'signer.toml'} --ca {spec.name} "
        f"--cert {path}{key_opt}")
    return 0
