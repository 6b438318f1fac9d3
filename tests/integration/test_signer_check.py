"""`ocsp-signer --check` runs the checks a start runs: for each fault, the real start and --check
exit with the same status and print the same error line. Real processes, the demo's SoftHSM token.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Demo, tool

pytestmark = pytest.mark.integration


def set_key(text: str, key: str, value: str) -> str:
    """Replace the first ``key = ...`` line (the demo's signer.toml names each key once)."""
    new, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f'{key} = "{value}"', text, count=1)
    assert n == 1, key
    return new


def config(demo: Demo, base: Path, **keys: str) -> Path:
    """The demo's signer.toml with its own sockets and audit directory under ``base`` (the session's
    signer may be running on the demo's), and ``keys`` replaced."""
    text = demo.path("etc", "signer.toml").read_text()
    values = {"address": f"unix:{base / 's.sock'}", "socket": str(base / "a.sock"),
              "dir": str(base / "audit"), "writer_id": "check", **keys}
    for key, value in values.items():
        text = set_key(text, key, value)
    path = base / "signer.toml"
    path.write_text(text)
    return path


def run(demo: Demo, conf: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("ocsp-signer"), "--config", str(conf), *extra], env=demo.env,
                          capture_output=True, text=True, timeout=90, check=False)


def error_lines(conf: Path, stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"ocsp-signer: {conf}: ")]


def assert_same_refusal(demo: Demo, conf: Path, key: str, words: str) -> str:
    start, check = run(demo, conf), run(demo, conf, "--check")
    assert start.returncode == 2, start.stderr
    assert check.returncode == 2, check.stdout + check.stderr
    assert "Traceback" not in start.stderr + check.stderr
    (line,) = error_lines(conf, start.stderr)
    assert error_lines(conf, check.stderr) == [line]
    assert line.startswith(f"ocsp-signer: {conf}: {key}: ") and words in line, line
    return line


def test_check_refuses_a_missing_audit_key_like_the_start(demo: Demo, tmp_path: Path) -> None:
    conf = config(demo, tmp_path, key_label="no-such-audit-key")
    line = assert_same_refusal(demo, conf, "audit.key_label", "no-such-audit-key")
    assert "no private key" in line or "no public key" in line, line
    assert not (tmp_path / "audit").exists() or not list((tmp_path / "audit").glob("*.jsonl"))


def test_check_refuses_a_busy_writer_lock_like_the_start(demo: Demo, tmp_path: Path) -> None:
    conf = config(demo, tmp_path)
    (tmp_path / "audit").mkdir()
    fd = os.open(tmp_path / "audit" / ".audit-check.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running signer with this writer_id holds it
        assert_same_refusal(demo, conf, "audit.writer_id", "another process is writing")
    finally:
        os.close(fd)
    assert not list((tmp_path / "audit").glob("*.jsonl"))


def test_check_refuses_an_audit_dir_that_cannot_be_created_like_the_start(demo: Demo, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    conf = config(demo, tmp_path, dir=str(tmp_path / "file" / "audit"))
    line = assert_same_refusal(demo, conf, "audit.dir", "cannot create the audit directory")
    assert f"{tmp_path / 'file' / 'audit'}: Not a directory (ENOTDIR)" in line, line


def test_check_refuses_an_admin_socket_path_in_the_way_like_the_start(demo: Demo, tmp_path: Path) -> None:
    (tmp_path / "a.sock").mkdir()
    conf = config(demo, tmp_path)
    assert_same_refusal(demo, conf, "admin.socket", "not a socket is in the way")


def test_check_refuses_a_missing_responder_key_like_the_start(demo: Demo, tmp_path: Path) -> None:
    ca_d = tmp_path / "ca.d"
    shutil.copytree(demo.path("etc", "ca.d"), ca_d)
    rsa = ca_d / "demo-rsa.toml"
    rsa.write_text(set_key(rsa.read_text(), "key_label", "no-such-responder"))
    conf = config(demo, tmp_path, ca_dir=str(ca_d))
    start, check = run(demo, conf), run(demo, conf, "--check")
    assert start.returncode == check.returncode == 2
    prefix = f"ocsp-signer: {rsa}: responder.key_label: "
    lines = [[line for line in r.stderr.splitlines() if line.startswith(prefix)] for r in (start, check)]
    assert lines[0] == lines[1] and len(lines[0]) == 1 and "no-such-responder" in lines[0][0], lines


def test_check_passes_without_listening_or_writing_the_log(demo: Demo, tmp_path: Path) -> None:
    conf = config(demo, tmp_path)
    r = run(demo, conf, "--check")
    assert r.returncode == 0, r.stderr
    assert f"{conf}: OK (2 responders" in r.stdout
    assert "audit: " in r.stdout and "key 'demo-audit' sha256_ecdsa" in r.stdout, r.stdout
    # --check loads the status data the signer checks every status against, and says so per CA.
    assert "demo-rsa: statuses checked against " in r.stdout and "index.txt (policy.verify_status)" in r.stdout
    assert "demo-ec: statuses checked against " in r.stdout and "crl.pem" in r.stdout, r.stdout
    assert not (tmp_path / "s.sock").exists() and not (tmp_path / "a.sock").exists()
    # The directory is made (as a start would) but holds no record, checkpoint or probe.
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == [".audit-check.lock"]


def read_only_mount_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30, check=False)
    return r.returncode == 0


@pytest.mark.skipif(not read_only_mount_works(), reason="needs root and unshare --mount")
def test_read_only_audit_parent_is_reported_as_cannot_create(demo: Demo, tmp_path: Path) -> None:
    """What ProtectSystem=strict without StateDirectory= did to /var/lib/ocsp-signer/audit: the parent
    is on a read-only mount (a private mount namespace here), so creating the directory fails."""
    state = tmp_path / "state"  # stands for /var/lib
    state.mkdir()
    conf = config(demo, tmp_path, dir=str(state / "audit"))
    bind_ro = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    results = [subprocess.run(["unshare", "--mount", "sh", "-c", bind_ro, str(state), tool("ocsp-signer"),
                               "--config", str(conf), *extra], env=demo.env, capture_output=True, text=True,
                              timeout=90, check=False) for extra in ((), ("--check",))]
    for r in results:
        assert r.returncode == 2, r.stdout + r.stderr
    lines = [error_lines(conf, r.stderr) for r in results]
    expected = (f"ocsp-signer: {conf}: audit.dir: audit log unusable: cannot create the audit directory "
                f"{state / 'audit'}: Read-only file system (EROFS)")
    assert lines[0] == lines[1] == [expected], lines
    assert not (state / "audit").exists()
