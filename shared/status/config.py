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
    # crl fetched from the CA's web server instead of a path (shared.status.url_source):
    # url = "https://ca.example/ca.crl"   # or "cdp": the CA certificate's CRL Distribution Points
    # state_dir = "/var/lib/ocsp/crl"     # required with url: downloads, and the last good CRL kept
    # refresh = "15m"                     # how often the URL is asked (conditional GET)
    # timeout = "10s"                     # one download, start to end
    # max_size = 67108864                 # bytes; a bigger CRL is refused while it streams
    # ca_bundle = "ca-bundle.pem"         # https: trusted CAs (default: the system's)
    # any source:
    # compromised = false                 # true: every serial answers revoked, cACompromise
    # compromised_at = 2026-01-02T03:04:05Z   # its revocationTime (default: the CA's notBefore)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from shared.clock import Clock
from shared.config import Keys, Section
from shared.status.base import FileStatusSource
from shared.status.compromised import CompromisedSource
from shared.status.crl import CrlSource
from shared.status.index_txt import IndexTxtSource
from shared.status.url_source import CDP, UrlCrlSource

UNISSUED_CHOICES = ("unknown", "revoked", "good")
DEFAULT_MAX_SHRINK = 0.1
# index: how long answers are valid. The CA/Browser Forum Baseline Requirements (4.9.10) want 8 h to
# 10 d for publicly-trusted certificates; a day is the common choice (the frontend re-signs an answer
# every cache.max_age, far inside it).
DEFAULT_INDEX_VALIDITY = timedelta(hours=24)
DEFAULT_CHECK_INTERVAL = timedelta(seconds=5)
# Every key of the table (shared.ca_keys puts it into a CA file's keys).
STATUS_KEYS: Keys = dict.fromkeys(("source", "path", "validity", "check_interval", "max_shrink",
                                   "issued_serials", "unissued",
                                   # a CRL fetched from the CA's web server (url_source)
                                   "url", "state_dir", "refresh", "timeout", "max_size", "ca_bundle",
                                   # a compromised CA (compromised)
                                   "compromised", "compromised_at"))
_SHARE = re.compile(r"(\d{1,3}(?:\.\d+)?)%")
# status.url: a CRL is usually re-published every few hours to a day; a conditional GET every 15
# minutes sees a new one soon and costs a 304 otherwise.
DEFAULT_REFRESH = timedelta(minutes=15)
DEFAULT_FETCH_TIMEOUT = timedelta(seconds=10)
DEFAULT_MAX_SIZE = 64 << 20  # 64 MiB: about 1.5 million CRL entries
FETCH_KEYS = ("state_dir", "refresh", "timeout", "max_size", "ca_bundle")


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """``status.url`` and its keys: where the CRL is fetched from, and how."""

    url: str  # an http(s) address, or "cdp" (the CA certificate's CRL Distribution Points)
    state_dir: Path  # downloads land here; the last good CRL is kept here as <CA name>.crl
    refresh: timedelta = DEFAULT_REFRESH
    timeout: timedelta = DEFAULT_FETCH_TIMEOUT
    max_size: int = DEFAULT_MAX_SIZE
    ca_bundle: Path | None = None


@dataclass(frozen=True, slots=True)
class StatusConfig:
    source: str  # "index" | "crl"
    path: Path | None  # None: fetched (``fetch``)
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
    # crl: fetched from a URL instead of read from ``path``
    fetch: FetchConfig | None = None
    # Every serial answers revoked (cACompromise) at compromised_at (None: the CA's notBefore).
    compromised: bool = False
    compromised_at: datetime | None = None


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
    compromised = sec.bool("compromised", False)
    compromised_at = _read_time(sec, "compromised_at")
    if compromised_at is not None and not compromised:
        raise sec.error("compromised_at", "only with compromised = true")
    # A compromised CA reads no status data: its files need not exist (the keys stay checked).
    must_exist = files_must_exist and not compromised
    fetch = None
    if sec.has("url"):
        if source != "crl":
            raise sec.error("url", "only for source = \"crl\" (an index.txt is a local file)")
        if sec.has("path"):
            sec.ignore("path")
            raise sec.error("path", "give either path (a CRL file) or url (fetched), not both")
        fetch = _read_fetch(sec, must_exist)
        path = None
    else:
        for key in FETCH_KEYS:
            if sec.has(key):
                sec.ignore(key)
                raise sec.error(key, "only with status.url (a CRL fetched over HTTP)")
        if source == "crl" and not sec.has("path"):
            raise sec.error("path", "is required: the CRL file, or set url = \"https://...\" to fetch it (or "
                                    "url = \"cdp\": the address in the CA certificate's CRL Distribution Points)")
        path = sec.path("path")
        if must_exist and not path.exists():
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
                            max_shrink=max_shrink, compromised=compromised, compromised_at=compromised_at)
    if sec.has("validity"):
        sec.ignore("validity")
        raise sec.error("validity",
                        "only for source = \"index\" (a CRL carries its own thisUpdate/nextUpdate)")
    issued = sec.path("issued_serials", None)
    if must_exist and issued is not None and not issued.exists():
        raise sec.error("issued_serials", f"{issued} does not exist")
    if not sec.has("unissued"):
        raise sec.error("unissued", "is required for source = \"crl\": choose the status of serials not "
                                    "known to be issued: \"unknown\", \"revoked\" (RFC 6960 2.2) or \"good\"")
    unissued = sec.choice("unissued", UNISSUED_CHOICES)
    if issued is None and sec.has("max_shrink"):
        raise sec.error("max_shrink", "only for source = \"index\" or with issued_serials (a CRL itself may "
                                      "shrink: entries of expired certificates drop off it)")
    return StatusConfig(source=source, path=path, validity=timedelta(0), check_interval=check,
                        issued_serials=issued, unissued=unissued, max_shrink=max_shrink, fetch=fetch,
                        compromised=compromised, compromised_at=compromised_at)


def _read_fetch(sec: Section, must_exist: bool) -> FetchConfig:
    url = sec.str("url")
    if url != CDP and not url.lower().startswith(("http://", "https://")):
        raise sec.error("url", f"must be an http:// or https:// address, or \"cdp\" (the CA certificate's CRL "
                               f"Distribution Points), not {url!r}")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise sec.error("url", "must not carry credentials (user:password@): they would be logged with every "
                               "failure; publish the CRL where it can be fetched without them")
    if not sec.has("state_dir"):
        raise sec.error("state_dir", "is required with status.url: a directory this process can write, where "
                                     "downloads land and the last good CRL is kept (a restart while the CA's web "
                                     "server is down starts from it)")
    state_dir = sec.path("state_dir")
    if must_exist:
        if not state_dir.is_dir():
            raise sec.error("state_dir", f"{state_dir} is not a directory")
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise sec.error("state_dir", f"{state_dir} is not writable by this user")
    ca_bundle = sec.path("ca_bundle", None)
    if must_exist and ca_bundle is not None and not ca_bundle.is_file():
        raise sec.error("ca_bundle", f"{ca_bundle} does not exist")
    return FetchConfig(
        url=url, state_dir=state_dir,
        refresh=sec.duration("refresh", DEFAULT_REFRESH, minimum=timedelta(seconds=1)),
        timeout=sec.duration("timeout", DEFAULT_FETCH_TIMEOUT, minimum=timedelta(milliseconds=100),
                             maximum=timedelta(minutes=10)),
        max_size=sec.int("max_size", DEFAULT_MAX_SIZE, minimum=1024, maximum=1 << 34),
        ca_bundle=ca_bundle)


def _read_time(sec: Section, name: str) -> datetime | None:
    """An RFC 3339 time with its offset: a TOML date-time (2026-01-02T03:04:05Z) or the same as a string."""
    sec.ignore(name)
    value = sec.data.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise sec.error(name, f"must be an RFC 3339 time such as 2026-01-02T03:04:05Z, not {value!r}") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise sec.error(name, f"must be an RFC 3339 time with its offset, such as 2026-01-02T03:04:05Z, not {value!r}")
    return value


def missing_files(status: StatusConfig) -> list[tuple[str, Path]]:
    """(key, path) of each file ``status`` names that this process cannot read (for a fetched CRL:
    the state directory, when it cannot write there). A compromised CA reads none."""
    if status.compromised:
        return []
    named = [] if status.path is None else [("path", status.path)]
    if status.issued_serials is not None:
        named.append(("issued_serials", status.issued_serials))
    missing = [(key, p) for key, p in named if not (p.is_file() and os.access(p, os.R_OK))]
    if status.fetch is not None:
        d = status.fetch.state_dir
        if not (d.is_dir() and os.access(d, os.W_OK | os.X_OK)):
            missing.append(("state_dir", d))
    return missing


def make_source(ca_name: str, ca_cert_der: bytes, status: StatusConfig,
                clock: Clock | None = None) -> FileStatusSource:
    """The status source ``status`` describes for the CA ``ca_name`` (nothing loaded yet: call
    ``load_now()``, then ``watch()``). ``clock`` is what a CRL's thisUpdate is compared with (the
    system clock when None)."""
    interval = status.check_interval.total_seconds()
    if status.compromised:
        return CompromisedSource(ca_name, ca_cert_der, status.compromised_at,
                                 status.validity or DEFAULT_INDEX_VALIDITY)
    if status.fetch is not None:
        f = status.fetch
        assert status.unissued is not None
        return UrlCrlSource(ca_name, f.url, f.state_dir, ca_cert_der, unissued=status.unissued,
                            issued_serials=status.issued_serials, check_interval=interval, clock=clock,
                            max_shrink=status.max_shrink, refresh=f.refresh.total_seconds(),
                            timeout=f.timeout.total_seconds(), max_size=f.max_size, ca_bundle=f.ca_bundle)
    assert status.path is not None
    if status.source == "index":
        return IndexTxtSource(ca_name, status.path, status.validity, interval, max_shrink=status.max_shrink)
    assert status.unissued is not None
    return CrlSource(ca_name, status.path, ca_cert_der, unissued=status.unissued,
                     issued_serials=status.issued_serials, check_interval=interval, clock=clock,
                     max_shrink=status.max_shrink)
