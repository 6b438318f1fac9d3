"""Download one CRL over HTTP(S) into a file, bounded in size and time (``status.url``).

``download()`` is blocking and runs in a worker thread (the start-up load, and every scheduled fetch
through ``run_in_executor``): the body streams straight into a temporary file in the state directory,
in the same thread that then hands it to the CRL parser, so the event loop never waits on the network
and never holds the body. A sync ``httpx.Client`` keeps one code path for both: an ``AsyncClient``
would need a second one for the blocking start-up load, and a thread is needed anyway for the file
writes and the parse.

Bounds, each a clear ``FetchError`` (the message names the cause for the operator's log):

- size: a Content-Length above ``max_size`` is refused before the body is read, and the body is
  counted while it streams, refused at the first byte past ``max_size`` (never buffered beyond one
  64 KiB chunk). ``Accept-Encoding: identity`` is asked for, so a small compressed body cannot expand
  into a large one in memory (a CRL in DER compresses little anyway);
- time: each network wait is bounded by ``timeout``, and so is the whole download (a server that
  trickles a byte at a time is cut off at the deadline);
- redirects: at most ``MAX_REDIRECTS``, http and https only;
- status: 200 is a body, 304 Not Modified keeps what we have, anything else is a failure.

Conditional requests: the ETag and Last-Modified of the copy in use are sent as If-None-Match and
If-Modified-Since; a 304 means the server still publishes that copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

MAX_REDIRECTS = 5
# httpx logs every request at INFO: one line per scheduled check. Our own lines say what matters
# (a reload, a failure with its cause).
logging.getLogger("httpx").setLevel(logging.WARNING)
USER_AGENT = "ocsp-responder (CRL fetch)"


class FetchError(Exception):
    """A download that brought nothing usable; the message says why (worded for the log)."""


@dataclass(frozen=True, slots=True)
class Validators:
    """What the server said identifies the copy we hold (sent back on the next request)."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


@dataclass(frozen=True, slots=True)
class Fetched:
    """A download: ``path`` is the new body (a temporary file the caller renames or deletes), None
    when the server answered 304 Not Modified."""

    path: Path | None
    validators: Validators
    size: int = 0
    digest: bytes = b""  # SHA-256 of the body


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, or only those of ``ca_bundle`` (PEM)."""
    if ca_bundle is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_bundle))


def make_client(timeout: float, ca_bundle: Path | None) -> httpx.Client:
    # trust_env=False: no proxy, netrc or SSL_CERT_FILE from the environment; what is fetched and how
    # it is checked comes from the CA file alone.
    return httpx.Client(timeout=httpx.Timeout(timeout), verify=ssl_context(ca_bundle), follow_redirects=True,
                        max_redirects=MAX_REDIRECTS, trust_env=False,
                        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})


def download(url: str, dest_dir: Path, *, validators: Validators, timeout: float, max_size: int,
             ca_bundle: Path | None = None, client: httpx.Client | None = None) -> Fetched:
    """GET ``url`` into a new temporary file in ``dest_dir``; raises FetchError."""
    http = client
    deadline = time.monotonic() + timeout
    try:
        if http is None:
            http = make_client(timeout, ca_bundle)
        with http.stream("GET", url, headers=validators.headers()) as resp:
            if resp.status_code == 304:
                return Fetched(None, _validators(resp, validators))
            if resp.status_code != 200:
                raise FetchError(f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
            encoding = resp.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("identity", ""):
                raise FetchError(f"the server sent Content-Encoding {encoding!r} although identity was asked for")
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_size:
                raise FetchError(f"the CRL is {int(length)} bytes (Content-Length), more than status.max_size "
                                 f"({max_size})")
            return _save(resp, dest_dir, max_size, deadline, timeout, _validators(resp, Validators()))
    except FetchError:
        raise
    except httpx.TooManyRedirects:
        raise FetchError(f"more than {MAX_REDIRECTS} redirects") from None
    except httpx.TimeoutException as e:
        raise FetchError(f"timed out after {timeout:g} s (status.timeout): {type(e).__name__}") from None
    except httpx.UnsupportedProtocol as e:
        raise FetchError(f"unsupported URL (http and https only): {e}") from None
    except httpx.HTTPError as e:
        raise FetchError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    except ssl.SSLError as e:  # a bad ca_bundle file, read when the client is made
        raise FetchError(f"TLS set-up failed (status.ca_bundle {ca_bundle}): {e}") from None
    except OSError as e:
        raise FetchError(f"{type(e).__name__}: {e.strerror or e}") from None
    finally:
        if client is None and http is not None:
            http.close()


def _validators(resp: httpx.Response, old: Validators) -> Validators:
    return Validators(resp.headers.get("etag") or old.etag, resp.headers.get("last-modified") or old.last_modified)


def _save(resp: httpx.Response, dest_dir: Path, max_size: int, deadline: float, timeout: float,
          validators: Validators) -> Fetched:
    try:
        fd, name = tempfile.mkstemp(dir=dest_dir, prefix=".fetch-", suffix=".crl")
    except OSError as e:
        raise FetchError(f"cannot write in the state directory {dest_dir}: {e.strerror or e}") from None
    path = Path(name)
    size = 0
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in resp.iter_raw():  # as it arrives (at most 64 KiB a read); identity: raw is the body
                size += len(chunk)
                if size > max_size:
                    raise FetchError(f"the CRL is larger than status.max_size ({max_size} bytes); download stopped")
                if time.monotonic() > deadline:
                    raise FetchError(f"the download took longer than status.timeout ({timeout:g} s); stopped "
                                     f"after {size} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())  # renamed over the kept copy later: what survives a crash is whole
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return Fetched(path, validators, size, digest.digest())
