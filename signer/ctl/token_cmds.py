"""ocspctl pubkey: the public key of a key pair in the token, as PEM.

    ocspctl pubkey --token-label L --pin-file F --label KEY [--out FILE]

For whoever checks what that key signs: above all the audit key's, which `ocspctl audit verify
--pubkey` needs and which belongs off the signer host. Only the public half is read; the private key
stays in the token as it is. The PEM is the SubjectPublicKeyInfo in its canonical DER (what
`openssl pkey -pubin` prints for the same key).

Exit status: 0 on success, 1 when the token cannot be used or FILE cannot be written, 2 when the
token has no key labelled KEY (or for a usage error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NO_SUCH_KEY = 2


def add_parser(sub: Any) -> None:
    from signer.ctl.main import add_token_options

    p = sub.add_parser("pubkey", help="print the public key of a token key pair (PEM), e.g. the audit key's")
    add_token_options(p)
    p.add_argument("--label", required=True, help="label of the key pair")
    p.add_argument("--out", type=Path, help="write the PEM public key here (default: standard output)")
    p.set_defaults(func=cmd_pubkey)


def public_key_pem(spki_der: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

    return load_der_public_key(spki_der).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def cmd_pubkey(args: argparse.Namespace) -> int:
    from signer.ctl import main as ctl
    from signer.files import write_atomic
    from signer.token import TokenError

    token = ctl.token_from_args(args)
    try:
        try:
            spki = token.public_key(args.label)
        except TokenError as e:
            if token.has_key(args.label):  # the private key is there: something else is wrong
                raise ctl.CtlError(str(e)) from None
            print(f"{ctl.PROG}: no key labelled {args.label!r} in token {args.token_label!r}", file=sys.stderr)
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
        raise ctl.CtlError(f"cannot write {args.out}: {e.strerror or e}") from None
    ctl.say(f"wrote the public key of {args.label!r} (SHA-256 {ctl.public_key_fingerprint(spki)}) to {args.out}")
    return 0
