"""The audit log with real parts: the running signer logs what it signs, `ocspctl audit verify`
accepts the log and catches tampering, and an unwritable log turns answers into tryLater."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, wait_until
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce

pytestmark = pytest.mark.integration


def ask_fresh(demo: Demo, which: str = "good") -> tuple[ocsp.OCSPResponse, bytes]:
    der = build_request(load_cert(demo.path("rsa-ca", f"leaf-{which}.pem")), load_cert(demo.path("rsa-ca", "ca.pem")),
                        nonce=random_nonce())
    body = post(demo.http_port, der)[2]
    return ocsp.load_der_ocsp_response(body), body


def log_files(demo: Demo) -> list[Path]:
    return sorted(demo.path("audit").glob("*.jsonl"))


def audit(demo: Demo, *args: str) -> subprocess.CompletedProcess[str]:
    return demo.ctl("audit", *args, check=False)


def test_signed_response_is_in_the_log(demo: Demo, frontend: Process) -> None:
    resp, body = ask_fresh(demo)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    digest = hashlib.sha256(body).hexdigest()
    records = [json.loads(line) for f in log_files(demo) for line in f.read_text().splitlines()]
    assert any(digest in json.dumps(r) for r in records), "the response's SHA-256 is not in the audit log"
    serial = format(load_cert(demo.path("rsa-ca", "leaf-good.pem")).serial_number, "x")
    shown = audit(demo, "show", *map(str, log_files(demo)), "--serial", serial)
    assert shown.returncode == 0, shown.stderr
    assert digest in shown.stdout


def test_audit_verify_accepts_the_log_and_catches_an_edit(demo: Demo, frontend: Process, tmp_path: Path) -> None:
    ask_fresh(demo)
    files = log_files(demo)
    ok = audit(demo, "verify", *map(str, files), "--pubkey", str(demo.path("audit-key.pem")))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Tamper with a copy: flip one record's status from good to revoked.
    copies = []
    for f in files:
        shutil.copy(f, tmp_path / f.name)
        copies.append(tmp_path / f.name)
    target = next(p for p in copies if '"good"' in p.read_text())
    target.write_text(target.read_text().replace('"good"', '"revoked"', 1))
    bad = audit(demo, "verify", *map(str, copies), "--pubkey", str(demo.path("audit-key.pem")))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert target.name in bad.stdout + bad.stderr


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr to make the log unwritable as root")
def test_unwritable_log_means_try_later(demo: Demo, frontend: Process) -> None:
    ask_fresh(demo)
    newest = log_files(demo)[-1]
    if subprocess.run(["chattr", "+i", str(newest)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        resp, _ = ask_fresh(demo)
        assert resp.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    finally:
        subprocess.run(["chattr", "-i", str(newest)], check=True)

    def signs_again() -> bool:
        return ask_fresh(demo)[0].response_status == ocsp.OCSPResponseStatus.SUCCESSFUL

    wait_until(signs_again, 10, "the signer to sign again once the log is writable")
