"""Local callers of the real signer process: its unix socket's mode (under umask 000) lets the kernel
refuse other users, each caller's pid/uid/gid reaches the audit log and the log, and plaintext
loopback TCP is warned about. The other local user is ``nobody``, running a small Python gRPC client.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as x_ocsp

from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.unix_socket import private_dir_for, upstream_socket_for
from tests.integration.conftest import ROOT, Demo, Process, free_port, signer_healthy, tool, wait_until
from tests.integration.ocsp_client import load_cert
from tests.integration.private_stack import signer_process

pytestmark = pytest.mark.integration

NOBODY_UID = 65534
SITE = Path(grpc.__file__).resolve().parents[1]  # this venv's site-packages


@functools.cache
def nobody_python() -> str | None:
    """An interpreter ``nobody`` may run, of this Python's version (the venv's own may sit under /root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", candidate, "-c",
                            f"import sys, grpc; assert sys.version.startswith('{version}.')"],
                           env={"PYTHONPATH": f"{SITE}:{ROOT}"}, capture_output=True, timeout=60, check=False)
        if r.returncode == 0:
            return candidate
    return None


needs_nobody = pytest.mark.skipif(nobody_python() is None,
                                  reason="needs root, setpriv and a Python nobody can run")


def as_nobody(code: str, *args: str, root_group: bool = False) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as nobody:nogroup; with ``root_group``, also in group root (the signer's)."""
    python = nobody_python()
    assert python is not None
    groups = "--groups=0" if root_group else "--clear-groups"
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", groups, python, "-c", code, *args],
                          env={"PYTHONPATH": f"{SITE}:{ROOT}"}, capture_output=True, text=True, timeout=60,
                          check=False)


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(e.errno)
"""

SIGN = """
import os, sys, grpc
with open(sys.argv[2], "rb") as f:
    request = f.read()
with grpc.insecure_channel(sys.argv[1]) as channel:
    reply = channel.unary_unary("/ocsp.signer.v1.Signer/Sign")(request, timeout=20)
print(os.getpid(), len(reply))
"""


def public_dir() -> Path:
    """A directory nobody can enter (so that the socket's own mode decides), for sockets and files."""
    d = Path(tempfile.mkdtemp(prefix="ocsp-", dir="/tmp"))
    d.chmod(0o755)
    return d


def started_under_umask_000(demo: Demo, tmp_path: Path, listen_extra: str = "") -> tuple[Process, Path]:
    p, address = signer_process(demo, tmp_path, listen_extra=listen_extra)
    p.argv = ["sh", "-c", 'umask 000 && exec "$0" "$@"', *p.argv]
    path = Path(address.removeprefix("unix:"))
    path.parent.chmod(0o755)
    p.start()
    return p, path


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@needs_nobody
@pytest.mark.parametrize("mode", ["0600", "0660"])
def test_socket_mode_under_umask_000_and_the_kernel_refuses_others(demo: Demo, tmp_path: Path, mode: str) -> None:
    p, path = started_under_umask_000(demo, tmp_path, f'socket_mode = "{mode}"')
    try:
        assert _mode(path) == int(mode, 8)
        assert _mode(private_dir_for(path)) == 0o700
        # Another user: refused by the kernel at connect(), before the signer sees anything.
        assert as_nobody(CONNECT, str(path)).stdout.strip() == str(errno.EACCES)
        # ... also in the signer's group, unless the mode lets the group in.
        in_group = as_nobody(CONNECT, str(path), root_group=True).stdout.strip()
        assert in_group == ("connected" if mode == "0660" else str(errno.EACCES))
        # gRPC's own socket is in a directory only the signer's user can enter.
        assert as_nobody(CONNECT, str(upstream_socket_for(path)), root_group=True).stdout.strip() == \
            str(errno.EACCES)
    finally:
        p.stop()
    assert not path.exists() and not private_dir_for(path).exists()


def sign_request(demo: Demo, ca: str = "rsa-ca", request_id: str = "from-nobody") -> pb.SignRequest:
    """A valid SignRequest (good, for the next hour) for ``ca``'s leaf-good."""
    cert, issuer = load_cert(demo.path(ca, "leaf-good.pem")), load_cert(demo.path(ca, "ca.pem"))
    req = x_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()
    now = int(datetime.now(UTC).timestamp())
    cid = pb.CertId(hash_algorithm=pb.SHA1, issuer_name_hash=req.issuer_name_hash,
                    issuer_key_hash=req.issuer_key_hash,
                    serial_number=cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big"))
    return pb.SignRequest(request_id=request_id, responses=[pb.SingleStatus(
        cert_id=cid, status=pb.GOOD, this_update=now, next_update=now + 3600)])


def writer_files(p: Process) -> list[Path]:
    cfg = tomllib.loads(Path(p.argv[-1]).read_text())
    return sorted(Path(cfg["audit"]["dir"]).glob(f"audit-{cfg['audit']['writer_id']}-*.jsonl"))


@needs_nobody
def test_a_local_callers_pid_uid_gid_are_logged_and_audited(demo: Demo, tmp_path: Path) -> None:
    p, path = started_under_umask_000(demo, tmp_path)  # default socket_mode 0660
    files = public_dir()
    request = files / "sign-request.bin"
    request.write_bytes(sign_request(demo).SerializeToString())
    request.chmod(0o644)
    try:
        r = as_nobody(SIGN, f"unix:{path}", str(request), root_group=True)
        assert r.returncode == 0, r.stderr
        pid, length = map(int, r.stdout.split())
        assert length > 100
        wait_until(lambda: f"local caller pid {pid} " in p.log.read_text(), 10, "the signer to log the caller")
        line = next(x for x in p.log.read_text().splitlines() if f"local caller pid {pid} " in x)
        assert f"uid {NOBODY_UID} (nobody) gid {NOBODY_UID} connected on unix:{path}" in line, line
        assert signer_healthy(f"unix:{path}")  # root too, through the same relay
    finally:
        assert p.stop() == 0
    logs = writer_files(p)
    shown = demo.ctl("audit", "show", *map(str, logs), "--uid", str(NOBODY_UID)).stdout.splitlines()
    assert len(shown) == 1
    record = json.loads(shown[0])
    assert (record["client"], record["pid"], record["uid"], record["gid"]) == ("unix:", pid, NOBODY_UID, NOBODY_UID)
    assert record["request_id"] == "from-nobody"
    verified = demo.ctl("audit", "verify", *map(str, logs), "--pubkey", str(demo.path("audit-key.pem")),
                        "--complete", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_call_that_bypasses_the_relay_is_refused(demo: Demo, tmp_path: Path) -> None:
    """Root can enter the private directory: gRPC's socket answers it, but the call is refused."""
    p, address = signer_process(demo, tmp_path)
    p.start()
    try:
        private = f"unix:{upstream_socket_for(Path(address.removeprefix('unix:')))}"
        with grpc.insecure_channel(private) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.SignerStub(channel).Health(pb.HealthRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        wait_until(lambda: "not a connection relayed" in p.log.read_text(), 10, "the refusal to be logged")
    finally:
        p.stop()


def _frame(kind: int, flags: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + b"\0\0\0\0" + payload


def test_keepalive_pings_pass_through_the_relay(demo: Demo, tmp_path: Path) -> None:
    """An HTTP/2 PING, what a frontend's keepalive sends, is answered by the signer's gRPC through the
    relay, with its payload."""
    p, address = signer_process(demo, tmp_path)
    p.start()
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(address.removeprefix("unix:"))
            payload = os.urandom(8)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, b"") + _frame(6, 0, payload))
            buf = b""
            while True:
                if len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    n = int.from_bytes(buf[:3], "big")
                    kind, flags, body, buf = buf[3], buf[4], buf[9:9 + n], buf[9 + n:]
                    if kind == 6 and flags & 1 and body == payload:
                        break
                    continue
                data = s.recv(65536)
                assert data, "the signer closed the connection before answering the PING"
                buf += data
    finally:
        p.stop()


def _tcp_config(demo: Demo, tmp_path: Path) -> tuple[Path, str]:
    p, _ = signer_process(demo, tmp_path)
    conf = Path(p.argv[-1])
    address = f"127.0.0.1:{free_port()}"
    conf.write_text(re.sub(r'(?m)^address = "unix:.*"$', f'address = "{address}"', conf.read_text(), count=1))
    return conf, address


WARNING = "is plaintext TCP: every local user (any process on this host) can connect and get responses signed"


def test_plaintext_loopback_tcp_is_warned_about_at_start_and_by_check(demo: Demo, tmp_path: Path) -> None:
    conf, address = _tcp_config(demo, tmp_path)
    check = subprocess.run([tool("ocsp-signer"), "--config", str(conf), "--check"], env=demo.env,
                           capture_output=True, text=True, timeout=90, check=False)
    assert check.returncode == 0, check.stderr
    (line,) = [x for x in check.stderr.splitlines() if WARNING in x]
    # After the line's timestamp (shared.logs)
    assert line.split(" ", 1)[1].startswith(f"ocsp-signer: WARNING: listen.address {address} ") and "socket_mode" in line
    assert "[tls]" in line
    p = Process("ocsp-signer-tcp", [tool("ocsp-signer"), "--config", str(conf)], demo.env,
                lambda: signer_healthy(address), tmp_path / "tcp-signer.log")
    p.start()
    try:
        assert WARNING in p.log.read_text()
    finally:
        p.stop()


def test_a_unix_socket_is_not_warned_about(demo: Demo, tmp_path: Path) -> None:
    p, _ = signer_process(demo, tmp_path)
    check = subprocess.run([tool("ocsp-signer"), "--config", p.argv[-1], "--check"], env=demo.env,
                           capture_output=True, text=True, timeout=90, check=False)
    assert check.returncode == 0, check.stderr
    assert "plaintext TCP" not in check.stderr
