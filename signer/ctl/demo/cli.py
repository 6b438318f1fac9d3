"""The ``ocspctl demo`` command group:

    ocspctl demo setup   --dir D [--http-port 2560] [--signer-address 127.0.0.1:50051] [--crl-refresh]
    ocspctl demo revoke  --dir D --ca rsa|ec --serial HEX [--reason keyCompromise]
    ocspctl demo serve   --dir D [--http-port N]
    ocspctl demo reissue-responder --dir D --ca rsa|ec [--rekey]

Every command but ``revoke`` (which needs no token) first points SOFTHSM2_CONF at the demo's own token
store, recorded in D/softhsm2.conf (signer.ctl.demo.token_store), wherever it runs from.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signer.ctl.common import DEFAULT_MODULE, CtlError, warn
from signer.ctl.demo.ca_db import REASONS
from signer.ctl.demo.layout import DEFAULT_HTTP_PORT, DEMO_CAS
from signer.ctl.demo.pki import RESPONDER_VALIDITY
from signer.ctl.demo.reissue import cmd_demo_reissue_responder
from signer.ctl.demo.revoke import cmd_demo_revoke
from signer.ctl.demo.serve import cmd_demo_serve
from signer.ctl.demo.setup import cmd_demo_setup
from signer.ctl.demo.token_store import DemoTokenError, use_demo_token

Command = Callable[[argparse.Namespace], int]


def _use_demo_token(d: Path, *, setup: bool) -> None:
    """SOFTHSM2_CONF for this process and its children: the demo's own token store."""
    try:
        note = use_demo_token(d, setup=setup)
    except DemoTokenError as e:
        raise CtlError(str(e)) from None
    if note:
        warn(note)


def _on_demo_token(command: Command, *, setup: bool = False) -> Command:
    """``command``, run once SOFTHSM2_CONF names the demo's token store (before PKCS#11 is loaded)."""

    def run(args: argparse.Namespace) -> int:
        _use_demo_token(args.dir.resolve(), setup=setup)
        return command(args)

    return run


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="a demo PKI on a SoftHSM token").add_subparsers(
        dest="demo_command", required=True, metavar="DEMO_COMMAND")

    p = demo.add_parser("setup", help="create (or complete) the demo PKI; idempotent")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--http-port", type=int, help="frontend port, also in leaf AIA URLs (default: the demo's "
                                                 f"current port; {DEFAULT_HTTP_PORT} for a new demo)")
    p.add_argument("--signer-address",
                   help="signer gRPC address (default: the demo's current one; 127.0.0.1:50051, with mTLS, "
                        "for a new demo; unix:PATH = plaintext)")
    p.add_argument("--module", default=DEFAULT_MODULE, help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    p.add_argument("--crl-refresh", action="store_true", help="re-issue the EC CA's CRL even if still fresh")
    p.set_defaults(func=_on_demo_token(cmd_demo_setup, setup=True))

    p = demo.add_parser("revoke", help="revoke a demo certificate (index.txt or a new CRL)")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--ca", required=True, choices=list(DEMO_CAS), help="which demo CA")
    p.add_argument("--serial", required=True, help="serial number, hex")
    p.add_argument("--reason", help=f"RFC 5280 reason: {', '.join(REASONS)} (default: none)")
    p.set_defaults(func=cmd_demo_revoke)  # no token: nothing to point at the demo's store

    p = demo.add_parser("serve", help="run ocsp-signer and ocsp-frontend on the demo PKI")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--http-port", type=int, help="refuse unless the demo is set up for this port")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each to be ready (30)")
    p.set_defaults(func=_on_demo_token(cmd_demo_serve))

    p = demo.add_parser("reissue-responder", help="issue a new responder certificate for a demo CA "
                                                  "(--rekey: for a new token key)")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--ca", required=True, choices=list(DEMO_CAS), help="which demo CA")
    p.add_argument("--rekey", action="store_true", help="generate a new key in the token, with a new label")
    p.add_argument("--days", type=float, default=RESPONDER_VALIDITY.days, help="validity in days")
    p.add_argument("--module", default=DEFAULT_MODULE, help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    p.set_defaults(func=_on_demo_token(cmd_demo_reissue_responder))
