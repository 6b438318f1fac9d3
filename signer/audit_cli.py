"""``ocspctl audit``: verify and search the signature audit log (signer.audit).

    audit verify FILES... (--cert CERT | --pubkey KEY) [--checkpoint NOTE]... [--complete]
    audit show FILES... [--serial HEX] [--issuer NAME] [--since ISO] [--until ISO] [--client ID]

Exit codes: 0 ok, 1 tampering found, 2 usage error (including files or keys that cannot be read).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from shared.audit.checkpoint import CheckpointError
from signer.audit import show, verify

OK, TAMPERED, USAGE = 0, 1, 2


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(f"{self.prog}: {message}")


def _time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ocspctl audit", description="Verify or search the signature audit log.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    v = sub.add_parser("verify", help="check hash chains and signed checkpoints; exit 1 on tampering")
    v.add_argument("files", nargs="+", type=Path, metavar="FILES")
    key = v.add_mutually_exclusive_group(required=True)
    key.add_argument("--cert", type=Path, help="the audit certificate (PEM or DER)")
    key.add_argument("--pubkey", type=Path, help="the audit public key (SPKI, PEM or DER)")
    v.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="a checkpoint note kept outside the log; the log must contain it (catches truncation)")
    v.add_argument("--complete", action="store_true",
                   help="the writers were closed cleanly: records after the last checkpoint are a failure")
    s = sub.add_parser("show", help="print matching records as JSON lines (no verification)")
    s.add_argument("files", nargs="+", type=Path, metavar="FILES")
    s.add_argument("--serial", help="certificate serial number, hex")
    s.add_argument("--issuer", help="CA name or issuer id")
    s.add_argument("--since", type=_time, help="ISO 8601 time, inclusive (UTC if no zone)")
    s.add_argument("--until", type=_time, help="ISO 8601 time, inclusive (UTC if no zone)")
    s.add_argument("--client", help="client identity (frontend mTLS name)")
    return p


def audit_main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except _Usage as e:
        print(e, file=sys.stderr)
        return USAGE
    except SystemExit as e:  # --help
        return OK if e.code in (0, None) else USAGE
    try:
        if args.command == "verify":
            return _verify(args)
        for found in show(args.files, serial=args.serial, issuer=args.issuer, since=args.since,
                          until=args.until, client=args.client):
            print(found.raw)
        return OK
    except OSError as e:
        print(f"ocspctl audit: cannot read {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return USAGE
    except CheckpointError as e:
        print(f"ocspctl audit: {e}", file=sys.stderr)
        return USAGE


def _verify(args: argparse.Namespace) -> int:
    key = (args.cert or args.pubkey).read_bytes()
    notes = [p.read_text() for p in args.checkpoint]
    report = verify(args.files, key, trusted_checkpoints=notes, require_complete=args.complete)
    for f in report.failures:
        print(f"FAIL {f}")
    for w in report.warnings:
        print(f"warn {w}")
    for s in report.writers:
        print(f"writer {s.writer}: records #{s.first_index}..#{s.first_index + s.records - 1}, "
              f"{s.checkpoints} valid checkpoints, first {s.anchored} records anchored")
    print("OK" if report.ok else "TAMPERING DETECTED")
    return OK if report.ok else TAMPERED


def main() -> None:
    sys.exit(audit_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
