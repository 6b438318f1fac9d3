"""TLS handshake refusals in the signer's log, and TLS 1.3 only: gRPC core settings made before import.

gRPC Python cannot set a minimum TLS version (``grpc.ssl_server_credentials`` has no such argument;
core's min/max version options are only in its C++/experimental TLS credentials API), and a refused
handshake (no client certificate, another CA, an expired certificate) ends inside gRPC core before
any Python code runs: no interceptor, no callback sees it. Both are reached through gRPC core's
environment, which it reads once, when ``grpc`` is first imported; so ``prepare_grpc_environment``
must run before that:

- ``GRPC_SSL_CIPHER_SUITES=PSK``: the cipher list applies to TLS 1.2 and older only (BoringSSL's
  TLS 1.3 suites are fixed). Offering TLS 1.2 only pre-shared-key suites, with no PSK configured,
  leaves a TLS 1.2 client no suite to agree on: its handshake fails (NO_SHARED_CIPHER), while TLS
  1.3 negotiates as usual. The interceptor also refuses any call whose ``ssl_tls_version`` is not
  TLSv1.3.
- ``GRPC_VERBOSITY=INFO`` and ``GRPC_TRACE=handshaker``: core then writes each failed handshake,
  with the peer address, to file descriptor 2. ``GrpcLogCapture`` puts a pipe on fd 2 (Python's
  own stderr keeps the original descriptor), turns each handshake failure into one WARNING line of
  the ``ocsp-signer`` logger naming the peer and the reason, drops the rest of the INFO chatter it
  asked for, and passes everything else (core's warnings and errors) on as lines of the ``grpc.core``
  logger (so they carry the timestamp and worker of every line, shared.logs).
"""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("ocsp-signer")
core_log = logging.getLogger("grpc.core")  # what gRPC core writes to fd 2, passed on
_CORE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}

# TLS <= 1.2 cipher list: pre-shared-key suites only, and no PSK is configured -> no TLS 1.2.
TLS12_NO_SHARED_CIPHERS = "PSK"

_ABSL = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([\w.]+):\d+\] ?(.*)$")
_PEER = re.compile(r"endpoint_peer_address=([^,}\s]+)")
_NOISE = ("Log level INFO is not suitable for production", "gRPC Tracers:")


@dataclass(frozen=True, slots=True)
class HandshakeFailure:
    peer: str  # "ipv4:10.0.0.5:51234", or "" when core did not say
    reason: str  # in words
    detail: str  # core's error text
    client_gave_up: bool  # the peer closed the connection (it may have refused our certificate)


def explain(error: str) -> tuple[str, bool]:
    """Core's handshake error text -> (reason in words, whether the client just went away)."""
    e = error
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in e:
        return "the client sent no certificate", False
    if "certificate has expired" in e:
        return "the client certificate has expired", False
    if "certificate is not yet valid" in e:
        return "the client certificate is not yet valid", False
    if "unable to get local issuer certificate" in e or "self-signed certificate" in e or \
            "self signed certificate" in e:
        return "the client certificate is not issued by tls.client_ca", False
    if "CERTIFICATE_VERIFY_FAILED" in e:
        tail = e.split("CERTIFICATE_VERIFY_FAILED", 1)[1].lstrip(": ").split("\n", 1)[0]
        return f"the client certificate does not verify ({tail or 'no detail'})", False
    if "NO_SHARED_CIPHER" in e or "UNSUPPORTED_PROTOCOL" in e or "NO_SUPPORTED_VERSIONS" in e:
        return "the client does not offer TLS 1.3", False
    if "WRONG_VERSION_NUMBER" in e or "HTTP_REQUEST" in e or "UNKNOWN_PROTOCOL" in e:
        return "the client does not speak TLS (plaintext gRPC to a TLS listener?)", False
    if "Socket closed" in e or "Connection reset" in e or "End of TCP stream" in e:
        return "the client closed the connection during the handshake (did it refuse our certificate?)", True
    return "TLS handshake failed", False


def _error_of(text: str) -> str | None:
    """The error of a 'CallNextHandshakerLocked: error=... shutdown=' record; None when OK."""
    m = re.search(r"CallNextHandshakerLocked: error=(.*?)\s+shutdown=", text, re.DOTALL)
    if not m:
        return None
    err = m.group(1)
    err = err.split("=== Source Location Trace", 1)[0].strip()
    if err == "OK" or err.startswith("OK "):
        return None
    return err.removesuffix(": OK").strip()


class RecordParser:
    """Groups core's output lines into records and finds the failed handshakes (sans-IO).

    ``feed(line)`` returns the records that the line completed; ``flush()`` the pending one.
    A record is one absl-prefixed line; a handshaker record also takes the lines without a prefix
    that follow it (core prints the error's source trace and the channel args there). Other lines
    are not core's and pass through as they are.
    """

    def __init__(self) -> None:
        self._level = ""
        self._source = ""
        self._lines: list[str] = []

    def feed(self, line: str) -> list[tuple[str, str, str]]:
        m = _ABSL.match(line)
        if m is None and self._lines and self._source == "handshaker.cc":
            self._lines.append(line)  # its error and channel args span lines
            return []
        done = self.flush()
        if m is None:
            return [*done, ("", "", line)]  # not core's: passed through as it is
        self._level, self._source, self._lines = m.group(1), m.group(2), [line]
        return done

    def flush(self) -> list[tuple[str, str, str]]:
        if not self._lines:
            return []
        rec = (self._level, self._source, "\n".join(self._lines))
        self._lines = []
        return [rec]


def handshake_failure(source: str, text: str) -> HandshakeFailure | None:
    if source != "handshaker.cc":
        return None
    err = _error_of(text)
    if err is None:
        return None
    m = _PEER.search(text)
    reason, gave_up = explain(err)
    return HandshakeFailure(peer=m.group(1) if m else "", reason=reason, detail=err.split("\n", 1)[0],
                            client_gave_up=gave_up)


class GrpcLogCapture:
    """fd 2 -> pipe -> a thread that logs handshake failures and passes the rest through."""

    def __init__(self, *, keep_info: bool) -> None:
        self.keep_info = keep_info  # the operator asked for core's INFO output: pass it on too
        self._orig_fd = -1
        self._read_fd = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sys.stderr.flush()
        self._orig_fd = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._read_fd = r
        # Python's stderr (and the logging handlers writing to it) keep the original descriptor.
        old = sys.stderr
        encoding = getattr(old, "encoding", None) or "utf-8"
        # Kept open for the life of the process: it becomes sys.stderr.
        new = open(os.dup(self._orig_fd), "w", buffering=1, encoding=encoding,  # noqa: SIM115
                    errors="backslashreplace")
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (old, sys.__stderr__):
                handler.setStream(new)
        sys.stderr = new
        self._thread = threading.Thread(target=self._run, name="grpc-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Put the original stderr back and let the reader drain what is left."""
        if self._orig_fd < 0:
            return
        os.dup2(self._orig_fd, 2)  # closes the pipe's write end: the reader sees EOF
        if self._thread is not None:
            self._thread.join(2)
        self._orig_fd = -1

    def _emit(self, rec: tuple[str, str, str]) -> None:
        level, source, text = rec
        failure = handshake_failure(source, text)
        if failure is not None:
            peer = failure.peer or "an unknown peer"
            if failure.client_gave_up:
                log.info("TLS handshake with %s ended: %s", peer, failure.reason)
            else:
                log.warning("TLS handshake refused from %s: %s [%s]", peer, failure.reason, failure.detail)
            return
        if level == "I" and not self.keep_info:
            return
        if any(n in text for n in _NOISE) and not self.keep_info:
            return
        # Through logging, so that core's lines carry the timestamp and worker of every other line.
        core_log.log(_CORE_LEVELS.get(level, logging.WARNING), "%s", text)

    def _run(self) -> None:
        parser = RecordParser()
        buf = b""
        while True:
            try:
                ready, _, _ = select.select([self._read_fd], [], [], 0.2 if parser._lines else None)
                if not ready:  # nothing more for now: the pending record is complete
                    for rec in parser.flush():
                        self._emit(rec)
                    continue
                chunk = os.read(self._read_fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                try:
                    for rec in parser.feed(raw.decode(errors="replace")):
                        self._emit(rec)
                except Exception:  # noqa: BLE001, S110 - never stop draining the pipe
                    pass
        for rec in [*parser.feed(buf.decode(errors="replace"))] if buf else []:
            self._emit(rec)
        for rec in parser.flush():
            self._emit(rec)


_capture: GrpcLogCapture | None = None


def prepare_grpc_environment(*, tls: bool) -> None:
    """Before ``grpc`` is imported: TLS 1.3 only, and handshake failures logged. No-op without TLS."""
    global _capture
    if not tls:
        return
    if "grpc" in sys.modules:
        log.warning("grpc was imported before the TLS settings were made: TLS 1.2 is not refused at the "
                    "handshake and failed handshakes are not logged")
    previous = os.environ.get("GRPC_SSL_CIPHER_SUITES")
    if previous and previous != TLS12_NO_SHARED_CIPHERS:
        log.warning("GRPC_SSL_CIPHER_SUITES=%s replaced by %s: the signer accepts TLS 1.3 only", previous,
                    TLS12_NO_SHARED_CIPHERS)
    os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_NO_SHARED_CIPHERS
    verbosity = os.environ.get("GRPC_VERBOSITY", "").upper()
    keep_info = verbosity in ("INFO", "DEBUG")
    if not keep_info:
        os.environ["GRPC_VERBOSITY"] = "INFO"
    traces = [t for t in os.environ.get("GRPC_TRACE", "").split(",") if t.strip()]
    if "handshaker" not in traces and "all" not in traces:
        traces.append("handshaker")
    os.environ["GRPC_TRACE"] = ",".join(traces)
    _capture = GrpcLogCapture(keep_info=keep_info or len(traces) > 1)
    _capture.start()


def stop_capture() -> None:
    global _capture
    if _capture is not None:
        _capture.stop()
        _capture = None
