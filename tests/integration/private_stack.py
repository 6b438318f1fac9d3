"""A signer and a frontend of their own, with settings of the test's choosing, on the session's demo PKI.

The session-wide ``signer``/``frontend`` fixtures keep their settings; the processes made here use the
same token and demo CAs but their own socket, HTTP port, audit writer id and (optionally) CA directory,
so a test may stop, pause or misconfigure them without disturbing any other test.
"""

from __future__ import annotations

import http.client
import itertools
import re
import shutil
import tempfile
from pathlib import Path

from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, free_port, http_healthy, signer_healthy, tool
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce

_ids = itertools.count(1)


def short_dir() -> Path:
    """A directory for unix sockets (the 107-byte sun_path limit rules out pytest's long tmp paths)."""
    return Path(tempfile.mkdtemp(prefix="ocsp-", dir="/tmp"))


def _edit(text: str, pattern: str, replacement: str) -> str:
    new, n = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert n == 1, f"{pattern!r} not found in:\n{text}"
    return new


def signer_process(demo: Demo, work: Path, *, listen_extra: str = "") -> tuple[Process, str]:
    """An ocsp-signer on its own unix socket; ``listen_extra``: more lines for its [listen] table."""
    n = next(_ids)
    address = f"unix:{short_dir() / 'signer.sock'}"
    text = demo.path("etc", "signer.toml").read_text()
    text = _edit(text, r'^address = "unix:.*"$', f'address = "{address}"\n{listen_extra}')
    text = _edit(text, r'^socket = ".*admin\.sock"$\n', "")  # the session signer's admin socket stays its own
    text = _edit(text, r'^writer_id = ".*"$', f'writer_id = "private{n}"')
    conf = work / f"signer{n}.toml"
    conf.write_text(text)
    p = Process(f"ocsp-signer-{n}", [tool("ocsp-signer"), "--config", str(conf)], demo.env,
                lambda: signer_healthy(address), work / f"signer{n}.log")
    return p, address


def frontend_process(demo: Demo, work: Path, signer_address: str, *, signer_extra: str = "",
                     sign_timeout: str | None = None, ca_dir: Path | None = None) -> tuple[Process, int]:
    """An ocsp-frontend on its own port talking to ``signer_address``; ``signer_extra``: more lines for
    its [signer] table; ``sign_timeout``: its [signer] timeout; ``ca_dir``: another CA directory."""
    n = next(_ids)
    port = free_port()
    text = demo.path("etc", "frontend.toml").read_text()
    text = _edit(text, r"^port = \d+$", f"port = {port}")
    text = _edit(text, r'^address = ".*"$', f'address = "{signer_address}"\n{signer_extra}')
    if sign_timeout is not None:
        text = _edit(text, r'^timeout = ".*"$', f'timeout = "{sign_timeout}"')
    if ca_dir is not None:
        text = _edit(text, r'^ca_dir = ".*"$', f'ca_dir = "{ca_dir}"')
    conf = work / f"frontend{n}.toml"
    conf.write_text(text)
    p = Process(f"ocsp-frontend-{n}", [tool("ocsp-frontend"), "--config", str(conf)], demo.env,
                lambda: http_healthy(port), work / f"frontend{n}.log")
    return p, port


def copy_ca_dir(demo: Demo, work: Path, ca: str, ca_file: str) -> tuple[Path, Path]:
    """A CA directory whose ``ca_file`` reads its CRL from a copy in ``work`` (the test may replace it);
    returns (the directory, the CRL copy)."""
    ca_dir = work / "ca.d"
    shutil.copytree(demo.path("etc", "ca.d"), ca_dir)
    crl = work / f"{ca}-crl.pem"
    shutil.copyfile(demo.path(ca, "crl.pem"), crl)
    f = ca_dir / ca_file
    f.write_text(_edit(f.read_text(), r'^path = ".*crl\.pem"$', f'path = "{crl}"'))
    return ca_dir, crl


def ask(demo: Demo, port: int, ca: str = "rsa-ca", which: str = "good", *, nonce: bool = True) -> ocsp.OCSPResponse:
    """One OCSP request (with a nonce: never from the cache, so the signer must sign it)."""
    der = build_request(load_cert(demo.path(ca, f"leaf-{which}.pem")), load_cert(demo.path(ca, "ca.pem")),
                        nonce=random_nonce() if nonce else None)
    status, _, body = post(port, der)
    assert status == 200
    return ocsp.load_der_ocsp_response(body)


def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()
