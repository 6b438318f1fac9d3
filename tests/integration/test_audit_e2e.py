"""The audit log with real parts: the running signer logs what it signs, `ocspctl audit verify`
accepts the log and catches tampering, and an unwritable log turns answers into tryLater."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce
from tests.integration.private_stack import demo_config, ocsp_frontend, ocsp_signer, running

pytestmark = pytest.mark.integration


def ask_fresh(demo: Demo, which: str = "good") -> tuple[ocsp.OCSPResponse, bytes]:
    der = build_request(load_cert(demo.path("rsa-ca", f"leaf-{which}.pem")), load_cert(demo.path("rsa-ca", "ca.pem")),
                        nonce=random_nonce())
    body = post(demo.http_port, der)[2]
    return ocsp.load_der_ocsp_response(body), body


def log_files(demo: Demo, writer: str = "demo") -> list[Path]:
    """The files of one writer's chain (the demo signer's by default), oldest first: other tests' private
    signers write chains of their own into the same directory."""
    return sorted(demo.path("audit").glob(f"audit-{writer}-*.jsonl"))


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


def test_unwritable_log_means_try_later(demo: Demo, frontend: Process,
                                       make_unwritable: Callable[[Path], Callable[[], None]]) -> None:
    ask_fresh(demo)
    newest = log_files(demo)[-1]
    unlock = make_unwritable(newest)
    try:
        resp, _ = ask_fresh(demo)
        assert resp.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    finally:
        unlock()

    def signs_again() -> bool:
        return ask_fresh(demo)[0].response_status == ocsp.OCSPResponseStatus.SUCCESSFUL

    wait_until(signs_again, 10, "the signer to sign again once the log is writable")


# -- the audit key exported with `ocspctl pubkey`, and a wrong key -------------------------------------


def export_audit_key(demo: Demo, out: Path) -> Path:
    demo.ctl("pubkey", "--token-label", "ocsp-demo", "--pin-file", str(demo.path("token.pin")),
             "--label", "demo-audit", "--out", str(out))
    return out


def test_pubkey_exports_the_key_that_verifies_the_log(demo: Demo, frontend: Process, tmp_path: Path) -> None:
    ask_fresh(demo)
    key = export_audit_key(demo, tmp_path / "audit.pem")
    assert key.read_bytes() == demo.path("audit-key.pem").read_bytes()
    ok = audit(demo, "verify", *map(str, log_files(demo)), "--pubkey", str(key))
    assert ok.returncode == 0 and ok.stdout.endswith("OK\n"), ok.stdout + ok.stderr


def test_wrong_key_is_named_not_tampering(demo: Demo, frontend: Process) -> None:
    ask_fresh(demo)
    responder = demo.path("rsa-ca", "responder.pem")  # a certificate, but not the audit key's
    r = audit(demo, "verify", *map(str, log_files(demo)), "--cert", str(responder))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"no checkpoint verifies with the public key in {responder}: wrong --cert?" in r.stdout
    assert "TAMPERING" not in r.stdout and "#-1" not in r.stdout and r.stderr == ""


# -- a chain of several files: the oldest lost, or pruned for retention ------------------------------------


def header_index(path: Path) -> int:
    return json.loads(path.read_text().splitlines()[0])["index"]


def checkpoints_in(path: Path) -> list[tuple[int, str]]:
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    return [(o["index"], o["note"]) for o in objs if o["type"] == "checkpoint"]


@pytest.fixture(scope="module")
def chain(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real signer (the demo's config, on its own socket, admin socket and audit chain, with the
    smallest files allowed and a checkpoint every 5 records) behind a real frontend signs 40
    responses, then stops cleanly: its chain spans several files."""
    d = tmp_path_factory.mktemp("retention")
    address = f"unix:{d / 'signer.sock'}"
    signer_conf = demo_config(demo, "signer.toml", d / "signer.toml", {
        "address": address, "socket": d / "admin.sock", "dir": d / "audit", "writer_id": "retention",
    }, after={"writer_id": "max_file_bytes = 4096\ncheckpoint_every = 5"})
    port = free_port()
    frontend_conf = demo_config(demo, "frontend.toml", d / "frontend.toml", {"port": port, "address": address})
    signer = ocsp_signer(demo, signer_conf, address)
    with running(signer, ocsp_frontend(demo, frontend_conf, port)):
        issuer = load_cert(demo.path("rsa-ca", "ca.pem"))
        leaf = load_cert(demo.path("rsa-ca", "leaf-good.pem"))
        for _ in range(40):
            body = post(port, build_request(leaf, issuer, nonce=random_nonce()))[2]
            assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert signer.stop() == 0, signer.tail()  # stopped cleanly: its return code again
    files = sorted((d / "audit").glob("audit-retention-*.jsonl"))
    assert len(files) >= 6, [f.name for f in files]
    return files


def copies(files: list[Path], into: Path) -> list[str]:
    into.mkdir()
    for f in files:
        shutil.copy(f, into / f.name)
    return [str(into / f.name) for f in files]


def test_deleting_the_oldest_file_is_detected(demo: Demo, chain: list[Path], tmp_path: Path) -> None:
    key = str(export_audit_key(demo, tmp_path / "audit.pem"))
    whole = audit(demo, "verify", *map(str, chain), "--pubkey", key, "--complete")
    assert whole.returncode == 0 and "warn" not in whole.stdout, whole.stdout + whole.stderr
    first = header_index(chain[1])  # the records of file #1
    assert first > 0
    rest = copies(chain[1:], tmp_path / "rest")
    for flag in ("--complete", "--from-genesis"):
        r = audit(demo, "verify", *rest, "--pubkey", key, flag)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"FAIL {rest[0]}:1: the log does not begin at genesis" in r.stdout
        assert f"records #0..#{first - 1} (file #1) are missing" in r.stdout
    r = audit(demo, "verify", *rest, "--pubkey", key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"warn {rest[0]}:1: verification starts at file #2, record #{first}" in r.stdout
    assert f"the {first} records before it (#0..#{first - 1}) are not checked" in r.stdout
    assert "--from-checkpoint" in r.stdout


def test_pruned_log_verifies_from_the_checkpoint_kept(demo: Demo, chain: list[Path], tmp_path: Path) -> None:
    key = str(export_audit_key(demo, tmp_path / "audit.pem"))
    # Retention: files #1 and #2 retired, keeping the first checkpoint of the oldest file kept.
    size, note = next(c for f in chain[2:] for c in checkpoints_in(f))
    kept = tmp_path / "kept.note"
    kept.write_text(note)
    pruned = copies(chain[2:], tmp_path / "pruned")
    r = audit(demo, "verify", *pruned, "--pubkey", key, "--complete", "--from-checkpoint", str(kept))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warn" not in r.stdout
    assert f"note {pruned[0]}:1: records #0..#{header_index(chain[2]) - 1} precede file #3: retired" in r.stdout
    # Files lost after the checkpoint was kept: the files now begin past it.
    later = header_index(chain[4])
    assert later > size
    r = audit(demo, "verify", *pruned[2:], "--pubkey", key, "--from-checkpoint", str(kept))
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"the files given begin at record #{later} (file #5), after the kept checkpoint of {size} records"
            in r.stdout)
    # A record lost from a later file.
    victim = Path(pruned[3])
    lines = victim.read_text().splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if '"type":"sig"' in line)
    index = json.loads(lines[n])["index"]
    victim.write_text("".join(lines[:n] + lines[n + 1:]))
    r = audit(demo, "verify", *pruned, "--pubkey", key, "--from-checkpoint", str(kept))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAIL {victim}:" in r.stdout and f"#{index}" in r.stdout and "deleted" in r.stdout
