"""Messages an operator trips on, from real processes (the demo's SoftHSM token): a typo in a CA file,
the wrong token or no SOFTHSM2_CONF, a listen port another process holds. Each is one clean line
naming the file and the key, and a failed start leaves no audit file behind.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Demo, free_port, tool

pytestmark = pytest.mark.integration


def _set(text: str, key: str, value: str) -> str:
    new, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text, count=1)
    assert n == 1, key
    return new


def signer_config(demo: Demo, base: Path, ca_dir: Path | None = None, **keys: str) -> Path:
    """The demo's signer.toml with its own address, audit directory and writer, and ``keys`` set (TOML
    values as written)."""
    text = demo.path("etc", "signer.toml").read_text()
    values = {"address": f'"127.0.0.1:{free_port()}"', "socket": f'"{base / "a.sock"}"',
              "dir": f'"{base / "audit"}"', "writer_id": '"msgs"', **keys}
    if ca_dir is not None:
        values["ca_dir"] = f'"{ca_dir}"'
    for key, value in values.items():
        text = _set(text, key, value)
    path = base / "signer.toml"
    path.write_text(text)
    return path


def run(program: str, conf: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(program), "--config", str(conf), *extra], env=env, capture_output=True,
                          text=True, timeout=90, check=False)


def only_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a refused start: exit 2, nothing else on stderr but the daemon's own INFO
    and WARNING lines (a plaintext listener is warned about), above all no gRPC core line."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert not re.search(r"(?m)^[IWEF]\d{4} \d\d:\d\d:\d\d", result.stderr), result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and ": WARNING: " not in line and ": INFO: " not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def audit_files(base: Path) -> list[Path]:
    return sorted((base / "audit").glob("*.jsonl")) if (base / "audit").exists() else []


def test_a_typo_in_the_responder_table_is_named_by_both_halves(demo: Demo, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca.d"
    shutil.copytree(demo.path("etc", "ca.d"), ca_dir)
    ca_file = ca_dir / "demo-rsa.toml"
    ca_file.write_text(ca_file.read_text().replace("key_label =", "key_lable =", 1))
    expected = f"{ca_file}: responder.key_lable: unknown key (did you mean responder.key_label?)"
    signer = run("ocsp-signer", signer_config(demo, tmp_path, ca_dir), demo.env, "--check")
    assert only_line(signer) == f"ocsp-signer: {expected}"
    fe = tmp_path / "frontend.toml"
    fe.write_text(_set(demo.path("etc", "frontend.toml").read_text(), "ca_dir", f'"{ca_dir}"'))
    frontend = run("ocsp-frontend", fe, demo.env, "--check")
    assert only_line(frontend) == f"ocsp-frontend: {expected}"


def test_a_wrong_token_label_lists_the_tokens_found(demo: Demo, tmp_path: Path) -> None:
    conf = signer_config(demo, tmp_path, label='"ocsp-dmeo"')
    for extra in ((), ("--check",)):
        line = only_line(run("ocsp-signer", conf, demo.env, *extra))
        assert line.startswith(f"ocsp-signer: {conf}: token.label: no token with label 'ocsp-dmeo' in "), line
        # (other tests of the session may have made tokens of their own in the same token directory)
        assert "; tokens found: " in line and "'ocsp-demo' (serial " in line.split("; tokens found: ")[1], line
        assert "SOFTHSM2_CONF" not in line  # it is set: the hint would mislead
    assert audit_files(tmp_path) == []


def test_without_softhsm2_conf_the_hint_says_so(demo: Demo, tmp_path: Path) -> None:
    conf = signer_config(demo, tmp_path)
    env = {k: v for k, v in demo.env.items() if k != "SOFTHSM2_CONF"}
    line = only_line(run("ocsp-signer", conf, env))
    assert line.startswith(f"ocsp-signer: {conf}: token.label: no token with label 'ocsp-demo' in "), line
    assert line.endswith("(SOFTHSM2_CONF is not set: SoftHSM reads /etc/softhsm/softhsm2.conf)"), line
    assert audit_files(tmp_path) == []


def test_a_port_taken_is_one_clean_line_and_no_audit_file(demo: Demo, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = signer_config(demo, tmp_path, address=f'"127.0.0.1:{port}"')
        line = only_line(run("ocsp-signer", conf, demo.env))
    assert line == f"ocsp-signer: {conf}: listen.address: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert audit_files(tmp_path) == []


def test_a_unix_socket_served_by_another_signer_is_one_clean_line(demo: Demo, tmp_path: Path) -> None:
    from tests.integration.private_stack import running, signer_process

    first, address = signer_process(demo, tmp_path)
    with running(first):
        second = tmp_path / "second.toml"
        second.write_text(_set(_set(Path(first.argv[-1]).read_text(), "writer_id", '"second"'), "dir",
                               f'"{tmp_path / "audit2"}"'))
        line = only_line(run("ocsp-signer", second, demo.env))
    path = address.removeprefix("unix:")
    assert line == f"ocsp-signer: {second}: listen.address: another process is listening on {path} (another signer?)"
    assert not (tmp_path / "audit2").exists() or not list((tmp_path / "audit2").glob("*.jsonl"))
