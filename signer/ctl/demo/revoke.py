"""``ocspctl demo revoke``: revoke a demo certificate, in the RSA CA's index.txt or in a new CRL of the
EC CA. Needs no token.

    ocspctl demo revoke --dir D --ca rsa|ec --serial HEX [--reason keyCompromise]
"""

from __future__ import annotations

import argparse

from signer.ctl.common import PROG, CtlError, load_certificate, say, utcnow
from signer.ctl.demo.ca_db import (
    canonical_reason,
    index_revoke,
    read_crl_entries,
    read_index,
    read_issued,
    write_crl,
    write_index,
)
from signer.ctl.demo.layout import DEMO_CAS
from signer.ctl.demo.pki import load_pem_key


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
    ca_key = load_pem_key(ca_dir / "ca-key.pem")
    if serial not in read_issued(ca_dir / "issued.txt"):
        raise CtlError(f"serial {serial:X} is not in {ca_dir / 'issued.txt'} (never issued by this CA)")
    revoked, number, crl = read_crl_entries(ca_dir / "crl.pem", ca_cert)
    if crl is None:
        raise CtlError(f"{ca_dir / 'crl.pem'} is missing or does not verify; run `{PROG} demo setup "
                       f"--dir {d} --crl-refresh`")
    if serial in revoked:
        say(f"serial {serial:X} is already revoked in {ca_dir / 'crl.pem'}")
        return 0
    revoked[serial] = (now, reason)
    write_crl(ca_dir / "crl.pem", ca_cert, ca_key, revoked, number + 1, now)
    say(f"revoked serial {serial:X} ({reason or 'no reason'}); issued CRL number {number + 1} "
        f"at {ca_dir / 'crl.pem'}")
    return 0
