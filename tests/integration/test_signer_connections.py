"""``[signer] connections`` with real processes: an ocsp-frontend with 3 connections to one ocsp-signer on
loopback TCP holds 3 established TCP connections to it (counted in /proc: the frontend's sockets whose
peer is the signer's port), and concurrent requests that each need a signature are all signed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, free_port, wait_until
from tests.integration.ocsp_client import load_cert, verify_basic
from tests.integration.private_stack import ask, demo_config, frontend_process, ocsp_signer, running

pytestmark = pytest.mark.integration

ESTABLISHED = "01"


def tcp_connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to ``port`` on this host (/proc/net/tcp*, by inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC may use an IPv6 socket (v4-mapped)
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == ESTABLISHED and remote.endswith(f":{port:04X}") and inode in inodes:
                count += 1
    return count


def test_three_connections_to_one_signer(demo: Demo, tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"  # loopback: plaintext allowed
    conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": address,
        "socket": None,  # the session signer's admin socket stays its own
        "writer_id": "connections",
    })
    signer = ocsp_signer(demo, conf, address)
    frontend, http_port = frontend_process(demo, tmp_path, address, signer_extra="connections = 3\n")
    issuer = load_cert(demo.path("rsa-ca", "ca.pem"))
    with running(signer, frontend):
        assert frontend.proc is not None
        with ThreadPoolExecutor(12) as pool:  # nonces: every answer is signed, none from the cache
            answers = list(pool.map(lambda _: ask(demo, http_port), range(48)))
        for resp in answers:
            assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
            verify_basic(resp, issuer)
        # Calls take the idle lanes in turn, so by now each of the three has connected (and stays up).
        wait_until(lambda: tcp_connections_to(frontend.proc.pid, port) == 3, 10,  # type: ignore[union-attr]
                   "the frontend's three connections to the signer")
