"""A signer and a frontend of their own, with settings of the test's choosing, on the session's demo PKI.

The session-wide ``signer``/``frontend`` fixtures keep their settings; the processes made here use the
same token and demo CAs but their own socket, HTTP port, audit writer id and (optionally) CA directory,
so a test may stop, pause or misconfigure them without disturbing any other test.

The pieces, for a test module that sets up a stack of its own: ``demo_config`` (the demo's signer.toml
or frontend.toml with some keys set), ``ocsp_signer`` / ``ocsp_frontend`` (the Process of one, its log
beside its config), ``running`` (start them in turn, stop them all) and ``check_config`` (``--check``).
"""

from __future__ import annotations

import http.client
import itertools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cryptography.x509 import ocsp

from signer.tomltext import toml_string
from tests.integration.conftest import Demo, Process, free_port, http_healthy, signer_healthy, tool
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce

_ids = itertools.count(1)


def short_dir() -> Path:
    """A directory for unix sockets (the 107-byte sun_path limit rules out pytest's long tmp paths)."""
    return Path(tempfile.mkdtemp(prefix="ocsp-", dir="/tmp"))


def _edit(text: str, pattern: str, replacement: str | Callable[[re.Match[str]], str]) -> str:
    new, n = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert n == 1, f"{pattern!r} not found in:\n{text}"
    return new


def demo_config(demo: Demo, name: str, out: Path, keys: Mapping[str, str | Path | int | None], *,
                after: Mapping[str, str] | None = None, append: str = "") -> Path:
    """The demo's etc/``name`` written to ``out`` with each of ``keys`` set: the one line of that key
    becomes ``key = value`` (a string or path TOML-quoted, a number as it is), or goes for None;
    ``after``: lines to put after a key's line; ``append``: text added at the end (a table)."""
    text = demo.path("etc", name).read_text()
    for key, value in keys.items():
        line = "" if value is None else f"{key} = {value if isinstance(value, int) else toml_string(value)}\n"
        text = _edit(text, rf"^{re.escape(key)} = .*\n", lambda _, line=line: line)
    for key, lines in (after or {}).items():
        if lines:
            text = _edit(text, rf"^{re.escape(key)} = .*\n", lambda m, lines=lines: m.group(0) + lines.rstrip("\n") + "\n")
    out.write_text(text + append)
    return out


def ocsp_signer(demo: Demo, config: Path, address: str, *, name: str = "ocsp-signer",
                probe: Path | None = None) -> Process:
    """ocsp-signer with ``config`` (its log beside it), ready once Health at ``address`` answers serving
    (as the frontend of ``probe``, a frontend.toml, when that has tls keys)."""
    return Process(name, [tool("ocsp-signer"), "--config", str(config)], demo.env,
                   lambda: signer_healthy(address, probe), config.with_suffix(".log"))


def ocsp_frontend(demo: Demo, config: Path, port: int, *, name: str = "ocsp-frontend") -> Process:
    """ocsp-frontend with ``config`` (its log beside it), ready once /-/health on ``port`` answers."""
    return Process(name, [tool("ocsp-frontend"), "--config", str(config)], demo.env,
                   lambda: http_healthy(port), config.with_suffix(".log"))


@contextmanager
def running(*processes: Process) -> Iterator[None]:
    """Start the processes in turn; stop every one started, the last first, however the block ends."""
    started: list[Process] = []
    try:
        for p in processes:
            started.append(p)
            p.start()
        yield
    finally:
        for p in reversed(started):
            p.stop()


def check_config(demo: Demo, program: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``program --config config --check`` (ocsp-signer or ocsp-frontend), its output captured."""
    return subprocess.run([tool(program), "--config", str(config), "--check"], env=demo.env,
                          capture_output=True, text=True, timeout=60, check=False)


def signer_process(demo: Demo, work: Path, *, listen_extra: str = "") -> tuple[Process, str]:
    """An ocsp-signer on its own unix socket; ``listen_extra``: more lines for its [listen] table."""
    n = next(_ids)
    address = f"unix:{short_dir() / 'signer.sock'}"
    conf = demo_config(demo, "signer.toml", work / f"signer{n}.toml", {
        "address": address,
        "socket": None,  # the session signer's admin socket stays its own
        "writer_id": f"private{n}",
    }, after={"address": listen_extra})
    return ocsp_signer(demo, conf, address, name=f"ocsp-signer-{n}"), address


def frontend_process(demo: Demo, work: Path, signer_address: str, *, signer_extra: str = "",
                     sign_timeout: str | None = None, ca_dir: Path | None = None) -> tuple[Process, int]:
    """An ocsp-frontend on its own port talking to ``signer_address``; ``signer_extra``: more lines for
    its [signer] table; ``sign_timeout``: its [signer] timeout; ``ca_dir``: another CA directory."""
    n = next(_ids)
    port = free_port()
    keys: dict[str, str | Path | int | None] = {"port": port, "address": signer_address}
    if sign_timeout is not None:
        keys["timeout"] = sign_timeout
    if ca_dir is not None:
        keys["ca_dir"] = ca_dir
    conf = demo_config(demo, "frontend.toml", work / f"frontend{n}.toml", keys, after={"address": signer_extra})
    return ocsp_frontend(demo, conf, port, name=f"ocsp-frontend-{n}"), port


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
