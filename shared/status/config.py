"""The ``[status]`` table of a ca.d/*.toml, and the status source it describes.

Both halves read it with this one parser and build the source with this one function: the frontend
answers from the data, the signer checks what it signs against its own copy of the same files
(``policy.verify_status``), loaded, verified and reloaded by the same code.

    [status]
    source = "index"               # "index" (OpenSSL CA index.txt) or "crl"
    path = "index.txt"             # relative paths are relative to the CA file
    validity = "24h"               # index: nextUpdate = thisUpdate + validity
    check_interval = "5s"          # how often the files are stat'ed for changes
    max_shrink = "10%"             # index, or crl with issued_serials
    # crl only:
    # issued_serials = "issued.txt"
    # unissued = "unknown"         # "unknown" | "revoked" | "good"
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shared.clock import Clock
from shared.config import Keys, Section
from shared.status.base import FileStatusSource
from shared.status.crl import CrlSource
from shared.status.index_txt import IndexTxtSource

UNISSUED_CHOICES = ("unknown", "revoked", "good")
DEFAULT_MAX_SHRINK = 0.1
# index: how long answers are valid. The CA/Browser Forum Baseline Requirements (4.9.10) want 8 h to
# 10 d for publicly-trusted certificates; a day is the common choice (the frontend re-signs an answer
# every cache.max_age, far inside it).
DEFAULT_INDEX_VALIDITY = timedelta(hours=24)
DEFAULT_CHECK_INTERVAL = timedelta(seconds=5)
# Every key of the table (shared.ca_keys puts it into a CA file's keys).
STATUS_KEYS: Keys = dict.fromkeys(("source", "path", "validity", "check_interval", "max_shrink",
                                   "issued_serials", "unissued"))
_SHARE = re.compile(r"(\d{1,3}(?:\.\d+)?)%")


@dataclass(frozen=True, slots=True)
class StatusConfig:
    source: str  # "index" | "crl"
    path: Path
    # index: nextUpdate = thisUpdate + validity. (crl: the CRL's own thisUpdate/nextUpdate.)
    validity: timedelta
    # How often the files are checked for changes (stat); SIGHUP forces a re-read.
    check_interval: timedelta
    # crl: optional list of issued serials (hex, one a line, '#' comments).
    issued_serials: Path | None = None
    # crl: status of serials not known to be issued ("unknown" | "revoked" | "good").
    unissued: str | None = None
    # index, and crl with issued_serials: a reload that would lose more than this share (0..1) of the
    # loaded serials is refused (the last good data stays); 1.0 turns the check off.
    max_shrink: float = DEFAULT_MAX_SHRINK


def read_share(sec: Section, name: str, default: float) -> float:
    """A share written as a percentage, "10%" or "2.5%", 0% to 100%."""
    if not sec.has(name):
        sec.ignore(name)
        return default
    text = sec.str(name)
    m = _SHARE.fullmatch(text.strip())
    if m is None or float(m.group(1)) > 100:
        raise sec.error(name, f"must be a percentage from \"0%\" to \"100%\" such as \"10%\", not {text!r}")
    return float(m.group(1)) / 100


def read_status_config(sec: Section, *, files_must_exist: bool = True) -> StatusConfig:
    """The ``[status]`` table ``sec`` (its keys read and checked; the caller's ``finish()`` rejects
    the others). Raises ConfigError naming the file and the key. The files named must exist unless
    ``files_must_exist`` is false (the signer, which may run without a copy: ``missing_files``)."""
    source = sec.choice("source", ("index", "crl"))
    path = sec.path("path")
    if files_must_exist and not path.exists():
        raise sec.error("path", f"{path} does not exist")
    check = sec.duration("check_interval", DEFAULT_CHECK_INTERVAL, minimum=timedelta(milliseconds=100))
    max_shrink = read_share(sec, "max_shrink", DEFAULT_MAX_SHRINK)
    if source == "index":
        validity = sec.duration("validity", DEFAULT_INDEX_VALIDITY, minimum=timedelta(minutes=1))
        for key in ("issued_serials", "unissued"):
            if sec.has(key):
                sec.ignore(key)
                raise sec.error(key, "only for source = \"crl\" (an index.txt knows what was issued)")
        return StatusConfig(source=source, path=path, validity=validity, check_interval=check,
                            max_shrink=max_shrink)
    if sec.has("validity"):
        sec.ignore("validity")
        raise sec.error("validity",
                        "only for source = \"index\" (a CRL carries its own thisUpdate/nextUpdate)")
    issued = sec.path("issued_serials", None)
    if files_must_exist and issued is not None and not issued.exists():
        raise sec.error("issued_serials", f"{issued} does not exist")
    if not sec.has("unissued"):
        raise sec.error("unissued", "is required for source = \"crl\": choose the status of serials not "
                                    "known to be issued: \"unknown\", \"revoked\" (RFC 6960 2.2) or \"good\"")
    unissued = sec.choice("unissued", UNISSUED_CHOICES)
    if issued is None and sec.has("max_shrink"):
        raise sec.error("max_shrink", "only for source = \"index\" or with issued_serials (a CRL itself may "
                                      "shrink: entries of expired certificates drop off it)")
    return StatusConfig(source=source, path=path, validity=timedelta(0), check_interval=check,
                        issued_serials=issued, unissued=unissued, max_shrink=max_shrink)


def missing_files(status: StatusConfig) -> list[tuple[str, Path]]:
    """(key, path) of each file ``status`` names that this process cannot read."""
    named = [("path", status.path)]
    if status.issued_serials is not None:
        named.append(("issued_serials", status.issued_serials))
    return [(key, p) for key, p in named if not (p.is_file() and os.access(p, os.R_OK))]


def make_source(ca_name: str, ca_cert_der: bytes, status: StatusConfig,
                clock: Clock | None = None) -> FileStatusSource:
    """The status source ``status`` describes for the CA ``ca_name`` (nothing loaded yet: call
    ``load_now()``, then ``watch()``). ``clock`` is what a CRL's thisUpdate is compared with (the
    system clock when None)."""
    interval = status.check_interval.total_seconds()
    if status.source == "index":
        return IndexTxtSource(ca_name, status.path, status.validity, interval, max_shrink=status.max_shrink)
    assert status.unissued is not None
    return CrlSource(ca_name, status.path, ca_cert_der, unissued=status.unissued,
                     issued_serials=status.issued_serials, check_interval=interval, clock=clock,
                     max_shrink=status.max_shrink)
