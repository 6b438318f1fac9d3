"""``python -m shared.status.loader_child``: the loader process (``shared.status.loader``).

Reads one job from stdin, parses (and for a CRL verifies) the files it names into tables, and, when the
job carries the loaded table, computes the serials whose answer changes; writes the result, or the
error, to stdout, and exits. Exit status 0 whenever a message was written (a verdict on the data is a
result too)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from shared.status import loader
from shared.status.crl import read_crl_tables
from shared.status.index_txt import read_index_table
from shared.status.table import StatusTable, diff


def handle(job: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[Any]]:
    kind = job.get("kind")
    if kind == "index":
        table, lines = read_index_table(Path(job["path"]))
        header: dict[str, Any] = {"lines": lines}
    elif kind == "crl":
        issued = job.get("issued")
        loaded = read_crl_tables(Path(job["path"]), bytes.fromhex(job["ca"]), Path(issued) if issued else None,
                                 job.get("where"), job.get("hint") or "")
        table = loaded.table
        header = loaded.header()
    else:
        raise ValueError(f"unknown job {kind!r}")
    meta, out = table.to_wire()
    header["table"] = meta
    if "old" in job:
        old = StatusTable.from_wire(job["old"], blobs[:5])
        old_unlisted, new_unlisted = (tuple(a) for a in job["unlisted"])
        header["changes"], keys = loader.changes_to_wire(diff(old, table, old_unlisted, new_unlisted))  # type: ignore[arg-type]
        out.append(keys)
    return header, out


def main() -> int:
    job, blobs = loader.read_message(sys.stdin.buffer)
    try:
        header, out = handle(job, blobs)
    except Exception as e:  # noqa: BLE001 - every error is the parent's to report
        header, out = loader.error_header(e), []
    loader.write_message(sys.stdout.buffer, header, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
