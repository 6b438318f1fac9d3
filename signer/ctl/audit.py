"""``ocspctl audit``: verify and search the signature audit log (signer.audit).

    audit verify FILES... (--cert CERT | --pubkey KEY) [--checkpoint NOTE]... [--complete]
                 [--from-genesis] [--from-checkpoint NOTE]...
    audit show FILES... [--serial HEX] [--issuer NAME] [--since ISO] [--until ISO] [--client ID]
               [--uid UID] [--request-id ID]

A directory among FILES stands for every audit file in it (``audit-<writer>-<seq>-<day>.jsonl``):
every chain written there (signer workers each write their own) is verified.

Exit codes: 0 ok, 1 the log does not verify (tampering, or no checkpoint verifies with the key given),
2 usage error (including files or keys that cannot be read), 141 (128 + SIGPIPE) when whoever reads
the output stops reading (``... | head``): the command then ends quietly, as a program killed by
SIGPIPE does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from shared.audit.checkpoint import CheckpointError, load_public_key
from signer.audit import FILE_RE, Report, open_kept_checkpoint, show, verify

OK, TAMPERED, USAGE = 0, 1, 2
OUTPUT_CLOSED = 128 + signal.SIGPIPE


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
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _uid(text: str) -> int:
    if not text.isdigit() or int(text) >= 1 << 32:
        raise argparse.ArgumentTypeError(f"not a user id (a number): {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ocspctl audit", description="Verify or search the signature audit log.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    v = sub.add_parser("verify", help="check hash chains and signed checkpoints; exit 1 on tampering")
    v.add_argument("files", nargs="+", type=Path, metavar="FILES",
                   help="audit files, or directories: every audit file in them (each writer's chain)")
    key = v.add_mutually_exclusive_group(required=True)
    key.add_argument("--cert", type=Path, help="the audit certificate (PEM or DER)")
    key.add_argument("--pubkey", type=Path, help="the audit public key (SPKI, PEM or DER)")
    v.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="a checkpoint note kept outside the log; the log must contain it (catches truncation)")
    v.add_argument("--complete", action="store_true",
                   help="the writers were closed cleanly and nothing was pruned: records after the last "
                        "checkpoint are a failure, and so is a log that does not begin at genesis "
                        "(implies --from-genesis)")
    v.add_argument("--from-genesis", action="store_true",
                   help="each writer's files must begin at its genesis (file #1, record #0): the loss of "
                        "the oldest files is a failure, not a warning (except for writers given a "
                        "--from-checkpoint)")
    v.add_argument("--from-checkpoint", type=Path, action="append", default=[], metavar="NOTE",
                   help="a log pruned for retention: the checkpoint note kept when its older files were "
                        "retired (one per writer); the files must begin at or before it, match it and "
                        "extend it")
    s = sub.add_parser("show", help="print matching records as JSON lines (no verification)")
    s.add_argument("files", nargs="+", type=Path, metavar="FILES",
                   help="audit files, or directories: every audit file in them")
    s.add_argument("--serial", help="certificate serial number, hex")
    s.add_argument("--issuer", help="CA name or issuer id")
    s.add_argument("--since", type=_time, help="ISO 8601 time, inclusive (UTC if no zone)")
    s.add_argument("--until", type=_time, help="ISO 8601 time, inclusive (UTC if no zone)")
    s.add_argument("--client", help="client identity (frontend mTLS name)")
    s.add_argument("--uid", type=_uid, help="user id (a number) of a caller on the signer's unix socket")
    s.add_argument("--request-id", metavar="ID",
                   help="the frontend's request id, exact (the id or sig field of its access log line)")
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
        args.files = audit_files(args.files)
        if args.command == "verify":
            status = _verify(args)
        else:
            for found in show(args.files, serial=args.serial, issuer=args.issuer, since=args.since,
                              until=args.until, client=args.client, uid=args.uid,
                              request_id=args.request_id):
                print(found.raw)
            status = OK
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        _discard_stdout()
        return OUTPUT_CLOSED
    except OSError as e:
        print(f"ocspctl audit: cannot read {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return USAGE
    except CheckpointError as e:
        print(f"ocspctl audit: {e}", file=sys.stderr)
        return USAGE
    except _Usage as e:
        print(e, file=sys.stderr)
        return USAGE


def audit_files(paths: list[Path]) -> list[Path]:
    """``paths`` with each directory replaced by the audit files in it (by name, sorted). Raises _Usage
    for a directory that holds none."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(p for p in path.iterdir() if FILE_RE.fullmatch(p.name) and p.is_file())
        if not found:
            raise _Usage(f"ocspctl audit: {path}: a directory with no audit files (audit-<writer>-<seq>-<day>.jsonl)")
        out.extend(found)
    return out


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the output still buffered is flushed there at exit
    (else Python reports the broken pipe once more while exiting)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout (in tests)
        pass


def _read_notes(paths: list[Path], option: str, spki: bytes) -> list[str]:
    notes = []
    for path in paths:
        try:
            note = path.read_bytes().decode()
            open_kept_checkpoint(note, spki)
        except UnicodeDecodeError:
            raise _Usage(f"ocspctl audit: {option} {path}: not a checkpoint note (not UTF-8 text)") from None
        except CheckpointError as e:
            raise _Usage(f"ocspctl audit: {option} {path}: {e}") from None
        notes.append(note)
    return notes


def _verify(args: argparse.Namespace) -> int:
    key_option, key_path = ("--cert", args.cert) if args.cert else ("--pubkey", args.pubkey)
    key = key_path.read_bytes()
    try:
        spki = load_public_key(key)
    except CheckpointError as e:
        raise _Usage(f"ocspctl audit: {key_option} {key_path}: {e}") from None
    trusted = _read_notes(args.checkpoint, "--checkpoint", spki)
    starts = _read_notes(args.from_checkpoint, "--from-checkpoint", spki)
    try:
        report = verify(args.files, spki, trusted_checkpoints=trusted, require_complete=args.complete,
                        from_genesis=args.from_genesis, start_checkpoints=starts)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise _Usage(f"ocspctl audit: --from-checkpoint: {e}") from None
    _print_report(report, key_option, key_path)
    return OK if report.ok else TAMPERED


def _print_report(report: Report, option: str, path: Path) -> None:
    unknown_key = {f.writer for f in report.failures if f.wrong_key}
    for f in report.failures:
        if f.wrong_key:
            print(f"FAIL no checkpoint verifies with the public key in {path}: wrong {option}? (writer "
                  f"{f.writer}: its checkpoints, the first at {f.path}:{f.line}, are all signed by another "
                  "key; if the key is right, every checkpoint was replaced)")
        else:
            print(f"FAIL {f}")
    for w in report.warnings:
        print(f"warn {w}")
    for n in report.notes:
        print(f"note {n}")
    for s in report.writers:
        if s.writer in unknown_key:
            print(f"writer {s.writer}: not verified (no checkpoint signed by that key)")
            continue
        last = s.first_index + s.records - 1
        records = f"records #{s.first_index}..#{last}" if s.records else "no records"
        print(f"writer {s.writer}: {records}, {s.checkpoints} valid checkpoints, "
              f"first {s.anchored} records anchored")
    if report.ok:
        print("OK")
    elif all(f.wrong_key for f in report.failures):
        print(f"NOT VERIFIED: no checkpoint verifies with the public key in {path}")
    else:
        print("TAMPERING DETECTED")


def main() -> None:
    sys.exit(audit_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
