"""ocspctl: the operator's tool for the signer host.

    ocspctl init-token | keygen | csr | install-cert | pubkey    the token (signer.ctl.token_cmds)
    ocspctl demo setup | serve | revoke | reissue-responder       a demo PKI (signer.ctl.demo)
    ocspctl audit verify | show                                  the audit log (signer.ctl.audit)
    ocspctl rotate                                               the running signer (signer.ctl.rotate)
    ocspctl presign                                              the fleet's answer store (frontend.presign)

The parser is a registry of command modules (``COMMANDS``): each has ``add_parser(sub)``, which adds its
commands and sets each one's ``func(args) -> exit status``. A command with a parser of its own
(``OwnParser``: `audit`, with its own usage errors and exit codes) is listed in the help like the others
and is handed the rest of the command line.

Exit status: 0 on success, 1 when the operation was refused or failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from shared import logs
from shared.version import version_text
from signer.ctl import rotate, token_cmds
from signer.ctl.common import PROG, CtlError
from signer.ctl.demo import cli as demo_cli


@dataclass(frozen=True)
class OwnParser:
    """A command that parses its own arguments: ``run(argv after the command name) -> exit status``."""

    name: str
    help: str
    run: Callable[[list[str]], int]

    def add_parser(self, sub: Any) -> None:
        sub.add_parser(self.name, help=self.help, add_help=False)


def _audit(argv: list[str]) -> int:
    from signer.ctl.audit import audit_main  # signer.audit: loaded only for `ocspctl audit`

    return audit_main(argv)


def _presign(argv: list[str]) -> int:
    # A frontend-side tool (no key code), loaded only for `ocspctl presign`.
    from frontend.presign import presign_main

    return presign_main(argv)


# In the order `ocspctl --help` lists them.
COMMANDS: tuple[ModuleType | OwnParser, ...] = (
    token_cmds,  # init-token, keygen, csr, install-cert, pubkey
    demo_cli,  # demo setup|revoke|serve|reissue-responder
    OwnParser("audit", "verify or search the audit log: ocspctl audit {verify,show} --help", _audit),
    rotate,  # rotate
    OwnParser("presign", "sign every known serial of a CA into the fleet's answer store: ocspctl presign --help",
              _presign),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="OCSP responder administration: token, keys, "
                                     "certificates, and a demo PKI.")
    parser.add_argument("--version", action="version", version=version_text(PROG))
    parser.add_argument("--log-level", default="WARNING", choices=logs.LEVELS, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING (default) or ERROR: the least severe log lines written")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Options before the command are ocspctl's (--version, --log-level); a command with a parser of
    # its own gets everything after its name.
    known, rest = parser.parse_known_args(argv)
    logs.setup(PROG, known.log_level)
    for command in COMMANDS:
        if isinstance(command, OwnParser) and known.command == command.name:
            return command.run(rest)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CtlError as e:
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
