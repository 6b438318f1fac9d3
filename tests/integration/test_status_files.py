"""Status files replaced under a running frontend (issue 6, items 2 and 5), with real parts.

This module runs its own ocsp-signer (on the session's SoftHSM token and demo PKI, with the signer's
default policy: no ``max_validity`` in its signer.toml) and its own ocsp-frontend, whose ca.d points at
copies of the demo's index.txt, CRL and issued-serials list in a temporary directory, checked every
100 ms and with no ``validity`` key (the default). The session-wide frontend is never touched.

Every question carries a nonce, so no answer comes from the cache; every step waits for the
frontend's own log line (the reload FAILED or the reload success) instead of sleeping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from shared.ocsp.certid import issuer_keys
from shared.ocsp.types import HashAlgorithm
from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.ocsp_client import load_cert, post, random_nonce, response_nonce, verify_basic
from tests.integration.private_stack import check_config, demo_config, ocsp_frontend, ocsp_signer, running

pytestmark = pytest.mark.integration

GOOD, REVOKED, UNKNOWN = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN
SYNTHETIC = 200  # extra lines, so that a cut loses a realistic share
# The last line of the index: a revoked serial whose leading digits, cut short, name a serial that was
# never issued (the "partial R line became an entry").
LAST_SERIAL = 0x7ABCDEF012345678
CUT_SERIAL = 0x7ABC  # what the old parser made of "...\t7ABC" (a partial line), revoked


@dataclass
class Stack:
    dir: Path
    demo: Demo
    signer: Process
    frontend: Process
    port: int

    @property
    def index(self) -> Path:
        return self.dir / "index.txt"

    @property
    def issued(self) -> Path:
        return self.dir / "issued.txt"


# Revocation times of the synthetic entries: after the demo CA's notBefore (an hour before its set-up),
# which the signer's policy requires of every revocation, and in the past.
REVOKED_AT = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%y%m%d%H%M%SZ")


def _index_line(flag: str, serial: int, revocation: str = "") -> str:
    return "\t".join([flag, "301231235959Z", revocation, f"{serial:X}", "unknown", f"/CN=synthetic {serial:X}"])


def good_index(demo: Demo) -> str:
    """Synthetic lines first, then the demo's (so any cut loses the demo's revoked leaves), then a
    revoked last line."""
    lines = [_index_line("V", 0x6000 + i) for i in range(SYNTHETIC)]
    lines += demo.path("rsa-ca", "index.txt").read_text().splitlines()
    lines.append(_index_line("R", LAST_SERIAL, f"{REVOKED_AT},keyCompromise"))
    return "".join(line + "\n" for line in lines)


def good_issued(demo: Demo) -> str:
    """Synthetic serials first, then the demo's, the good leaf's last (a cut there un-issues it)."""
    good_leaf = load_cert(demo.path("ec-ca", "leaf-good.pem")).serial_number
    demo_serials = demo.path("ec-ca", "issued.txt").read_text().split()
    assert good_leaf in {int(x, 16) for x in demo_serials}
    serials = [f"{0x6000 + i:X}" for i in range(SYNTHETIC)]
    serials += [x for x in demo_serials if int(x, 16) != good_leaf] + [f"{good_leaf:X}"]
    return "".join(s + "\n" for s in serials)


@pytest.fixture(scope="module")
def stack(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("status-files")
    (d / "ca.d").mkdir()
    (d / "index.txt").write_text(good_index(demo))
    (d / "issued.txt").write_text(good_issued(demo))
    (d / "crl.pem").write_bytes(demo.path("ec-ca", "crl.pem").read_bytes())
    # One ca.d for both halves, as the demo has: the signer checks every status against the same files
    # ([policy] verify_status, on since its CA files carry [status] tables it can read).
    def ca_file(name: str, status: str) -> str:
        head = demo.path("etc", "ca.d", f"{name}.toml").read_text().split("[status]")[0]
        return f"{head}[status]\n{status}check_interval = \"100ms\"\n"

    (d / "ca.d" / "demo-rsa.toml").write_text(ca_file("demo-rsa", f'source = "index"\npath = "{d / "index.txt"}"\n'))
    (d / "ca.d" / "demo-ec.toml").write_text(ca_file(
        "demo-ec", f'source = "crl"\npath = "{d / "crl.pem"}"\nissued_serials = "{d / "issued.txt"}"\n'
                   'unissued = "unknown"\n'))

    address = f"unix:{d / 'signer.sock'}"
    signer_conf = demo_config(demo, "signer.toml", d / "signer.toml", {
        "max_validity": None,  # the signer's default policy
        "address": address, "writer_id": "status_files", "socket": d / "admin.sock", "ca_dir": d / "ca.d",
    })
    port = free_port()
    frontend_conf = demo_config(demo, "frontend.toml", d / "frontend.toml",
                                {"ca_dir": d / "ca.d", "port": port, "address": address})
    sp = ocsp_signer(demo, signer_conf, address, name="ocsp-signer-status-files", probe=frontend_conf)
    fp = ocsp_frontend(demo, frontend_conf, port, name="ocsp-frontend-status-files")
    with running(sp, fp):
        yield Stack(d, demo, sp, fp, port)


# -- asking ---------------------------------------------------------------------------------------------


def ask(stack: Stack, ca: str, serial: int) -> ocsp.OCSPResponse:
    """One signed answer for ``serial`` of ``ca`` ("rsa-ca" or "ec-ca"), asked with a fresh nonce."""
    issuer = load_cert(stack.demo.path(ca, "ca.pem"))
    key = issuer_keys(issuer.public_bytes(serialization.Encoding.DER))[HashAlgorithm.SHA1]
    nonce = random_nonce()
    der = (ocsp.OCSPRequestBuilder()
           .add_certificate_by_hash(key.issuer_name_hash, key.issuer_key_hash, serial, hashes.SHA1())
           .add_extension(x509.OCSPNonce(nonce), critical=False)
           .build().public_bytes(serialization.Encoding.DER))
    status, _, body = post(stack.port, der)
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
    assert response_nonce(resp) == nonce
    verify_basic(resp, issuer)
    return resp


def leaf_serial(stack: Stack, ca: str, which: str) -> int:
    return load_cert(stack.demo.path(ca, f"leaf-{which}.pem")).serial_number


def statuses(stack: Stack, ca: str, serials: dict[str, int]) -> dict[str, ocsp.OCSPCertStatus]:
    return {name: ask(stack, ca, serial).certificate_status for name, serial in serials.items()}


def index_expectations(stack: Stack) -> tuple[dict[str, int], dict[str, ocsp.OCSPCertStatus]]:
    serials = {"good": leaf_serial(stack, "rsa-ca", "good"), "revoked": leaf_serial(stack, "rsa-ca", "revoked"),
               "unknown leaf": leaf_serial(stack, "rsa-ca", "unknown"), "last (revoked)": LAST_SERIAL,
               "never issued": CUT_SERIAL, "synthetic": 0x6000}
    expected = {"good": GOOD, "revoked": REVOKED, "unknown leaf": UNKNOWN, "last (revoked)": REVOKED,
                "never issued": UNKNOWN, "synthetic": GOOD}
    return serials, expected


def log_count(p: Process, text: str) -> int:
    return p.log.read_text(errors="replace").count(text)


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.rename(tmp, path)


def wait_for_log(p: Process, text: str, before: int, what: str) -> None:
    wait_until(lambda: log_count(p, text) > before, 30, f"{what}: {text!r} in {p.log}")


def replace_and_wait(p: Process, path: Path, text: str, failed: str, reloaded: str) -> str:
    """Replace ``path`` atomically with ``text`` and wait for the frontend to say what it made of it:
    "failed" (the reload refused, the ERROR line) or "reloaded" (the new data installed)."""
    counts = log_count(p, failed), log_count(p, reloaded)
    replace_atomically(path, text)
    outcome: list[str] = []

    def said() -> bool:
        if log_count(p, failed) > counts[0]:
            outcome.append("failed")
        elif log_count(p, reloaded) > counts[1]:
            outcome.append("reloaded")
        return bool(outcome)

    wait_until(said, 30, f"the frontend to log the reload of {path}")
    return outcome[0]


# -- index.txt --------------------------------------------------------------------------------------------


def bad_indexes(good: str) -> dict[str, str]:
    lines = good.splitlines(keepends=True)
    cut_in_serial = good.index(f"\t{LAST_SERIAL:X}\t") + 1 + len(f"{CUT_SERIAL:X}")
    return {
        "cut inside the last line's serial (a partial R line)": good[:cut_in_serial],
        "cut inside the last line's subject (six fields, no newline)": good[:-3],
        "cut in the middle of the file": good[:len(good) // 2],
        "empty": "",
        "cut at a line boundary, half the lines lost": "".join(lines[:len(lines) // 2]),
        "a line of four fields, with its newline": "".join(lines[:-1]) + "R\t301231235959Z\t250102030405Z\t7ABC\n",
    }


def test_bad_index_replacements_keep_the_last_good_data(stack: Stack) -> None:
    serials, expected = index_expectations(stack)
    assert statuses(stack, "rsa-ca", serials) == expected
    good = stack.index.read_text()
    failed = f"status reload of {stack.index} FAILED, keeping the last good data"
    for what, text in bad_indexes(good).items():
        outcome = replace_and_wait(stack.frontend, stack.index, text, failed, "demo-rsa: status data reloaded")
        assert statuses(stack, "rsa-ca", serials) == expected, what
        assert outcome == "failed", what
    # The ERROR names the file and what is wrong with it.
    log = stack.frontend.log.read_text(errors="replace")
    assert f"{stack.index}:{len(good.splitlines())}: the last line has no newline" in log
    assert f"{stack.index}: has no entries" in log
    assert "more than status.max_shrink (10%) allows" in log and "restart the frontend" in log
    assert re.search(re.escape(f"{stack.index}:{len(good.splitlines())}: expected 6 tab-separated fields"), log)

    # A good replacement is picked up: the good leaf revoked, the rest as before.
    reloaded = "demo-rsa: status data reloaded"
    before = log_count(stack.frontend, reloaded)
    good_leaf = f"{serials['good']:X}"
    newer = "".join(re.sub(rf"^V(\t[^\t]*)\t\t(0?{good_leaf})\t", rf"R\1\t{REVOKED_AT},superseded\t\2\t", line)
                    for line in good.splitlines(keepends=True))
    assert newer != good
    replace_atomically(stack.index, newer)
    wait_for_log(stack.frontend, reloaded, before, "the good replacement")
    assert statuses(stack, "rsa-ca", serials) == {**expected, "good": REVOKED}
    resp = ask(stack, "rsa-ca", serials["good"])
    assert resp.revocation_reason == x509.ReasonFlags.superseded
    before = log_count(stack.frontend, reloaded)
    replace_atomically(stack.index, good)
    wait_for_log(stack.frontend, reloaded, before, "the original back")
    assert statuses(stack, "rsa-ca", serials) == expected


def test_index_written_in_place_is_not_taken_half_way(stack: Stack) -> None:
    """A writer caught half-way (in place, not renamed): the half file is refused, the whole one taken."""
    serials, expected = index_expectations(stack)
    good = stack.index.read_text()
    newer = good + _index_line("R", 0x6FFF, f"{REVOKED_AT},keyCompromise") + "\n"
    failed = f"status reload of {stack.index} FAILED, keeping the last good data"
    reloaded = "demo-rsa: status data reloaded"
    before_failed, before_reloaded = log_count(stack.frontend, failed), log_count(stack.frontend, reloaded)
    with open(stack.index, "r+b") as f:
        f.truncate(0)
        f.write(newer[:len(newer) * 2 // 3].encode())
        f.flush()
        os.fsync(f.fileno())
        wait_for_log(stack.frontend, failed, before_failed, "the half-written file")
        assert log_count(stack.frontend, reloaded) == before_reloaded
        assert statuses(stack, "rsa-ca", {**serials, "new": 0x6FFF}) == {**expected, "new": UNKNOWN}
        f.write(newer[len(newer) * 2 // 3:].encode())
        f.flush()
        os.fsync(f.fileno())
    wait_for_log(stack.frontend, reloaded, before_reloaded, "the completed file")
    assert statuses(stack, "rsa-ca", {**serials, "new": 0x6FFF}) == {**expected, "new": REVOKED}
    before = log_count(stack.frontend, reloaded)
    replace_atomically(stack.index, good)
    wait_for_log(stack.frontend, reloaded, before, "the original back")


def test_small_loss_is_accepted_and_a_restart_takes_a_pruned_file(stack: Stack) -> None:
    """Within max_shrink a reload is taken; a large deliberate prune is taken at the next start."""
    serials, expected = index_expectations(stack)
    good = stack.index.read_text()
    lines = good.splitlines(keepends=True)
    reloaded = "demo-rsa: status data reloaded"
    before = log_count(stack.frontend, reloaded)
    replace_atomically(stack.index, lines[0] + "".join(lines[11:]))  # 10 of 207 lines pruned: 5 %
    wait_for_log(stack.frontend, reloaded, before, "a 5 % smaller file")
    assert statuses(stack, "rsa-ca", {**serials, "pruned": 0x6001}) == {**expected, "pruned": UNKNOWN}
    pruned = "".join(lines[SYNTHETIC:])  # every synthetic line pruned on purpose
    failed = f"status reload of {stack.index} FAILED"
    before = log_count(stack.frontend, failed)
    replace_atomically(stack.index, pruned)
    wait_for_log(stack.frontend, failed, before, "the large prune")
    # Both halves read the file and both refused the prune: both are restarted (the signer checks
    # every status against its own copy, so a frontend alone taking the pruned file gets tryLater).
    stack.frontend.stop()
    stack.signer.stop()
    try:
        stack.signer.start()
        before = log_count(stack.frontend, "listening on")
        stack.frontend.start()
        assert log_count(stack.frontend, "listening on") > before
        assert statuses(stack, "rsa-ca", serials) == {**expected, "synthetic": UNKNOWN}
    finally:
        before = log_count(stack.frontend, reloaded)
        replace_atomically(stack.index, good)
        wait_for_log(stack.frontend, reloaded, before, "the original back")


# -- the issued-serials list of a CRL-backed CA ----------------------------------------------------------


def test_bad_issued_list_replacements_keep_the_last_good_data(stack: Stack) -> None:
    serials = {"good": leaf_serial(stack, "ec-ca", "good"), "revoked": leaf_serial(stack, "ec-ca", "revoked"),
               "unknown leaf": leaf_serial(stack, "ec-ca", "unknown"), "synthetic": 0x6000}
    expected = {"good": GOOD, "revoked": REVOKED, "unknown leaf": UNKNOWN, "synthetic": GOOD}
    assert statuses(stack, "ec-ca", serials) == expected
    good = stack.issued.read_text()
    lines = good.splitlines(keepends=True)
    failed = f"status reload of {stack.dir / 'crl.pem'}, {stack.issued} FAILED, keeping the last good data"
    bad = {
        "cut inside the last serial": good[:-5],
        "empty": "",
        "only a comment": "# nothing\n",
        "cut at a line boundary, 90 % lost": "".join(lines[SYNTHETIC * 9 // 10:]),
    }
    for what, text in bad.items():
        outcome = replace_and_wait(stack.frontend, stack.issued, text, failed, "demo-ec: status data reloaded")
        assert statuses(stack, "ec-ca", serials) == expected, what
        assert outcome == "failed", what
    # A good replacement is picked up: the unknown leaf is now listed as issued.
    reloaded = "demo-ec: status data reloaded"
    before = log_count(stack.frontend, reloaded)
    replace_atomically(stack.issued, good + f"{serials['unknown leaf']:X}\n")
    wait_for_log(stack.frontend, reloaded, before, "the good replacement")
    assert statuses(stack, "ec-ca", serials) == {**expected, "unknown leaf": GOOD}
    before = log_count(stack.frontend, reloaded)
    replace_atomically(stack.issued, good)
    wait_for_log(stack.frontend, reloaded, before, "the original back")


# -- start-up ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["cut mid-line", "empty", "four fields", "issued list cut"])
def test_bad_file_at_start_up_is_an_error_naming_file_and_line(stack: Stack, tmp_path: Path, case: str) -> None:
    ca_d = tmp_path / "ca.d"
    ca_d.mkdir()
    for name in ("demo-rsa.toml", "demo-ec.toml"):
        ca_d.joinpath(name).write_text(stack.dir.joinpath("ca.d", name).read_text()
                                       .replace(str(stack.dir / "index.txt"), str(tmp_path / "index.txt"))
                                       .replace(str(stack.dir / "issued.txt"), str(tmp_path / "issued.txt")))
    good = good_index(stack.demo)
    n = len(good.splitlines())
    index, issued = {
        "cut mid-line": (good[:-3], good_issued(stack.demo)),
        "empty": ("", good_issued(stack.demo)),
        "four fields": (good + "V\t301231235959Z\t\t7ABC\n", good_issued(stack.demo)),
        "issued list cut": (good, good_issued(stack.demo)[:-1]),
    }[case]
    (tmp_path / "index.txt").write_text(index)
    (tmp_path / "issued.txt").write_text(issued)
    config = tmp_path / "frontend.toml"
    config.write_text(re.sub(r'(?m)^ca_dir = .*$', f'ca_dir = "{ca_d}"',
                             stack.dir.joinpath("frontend.toml").read_text(), count=1))
    r = check_config(stack.demo, "ocsp-frontend", config)
    assert r.returncode == 2, r
    expected = {
        "cut mid-line": f"{ca_d / 'demo-rsa.toml'}: status.path: {tmp_path / 'index.txt'}:{n}: the last line has "
                        "no newline",
        "empty": f"{ca_d / 'demo-rsa.toml'}: status.path: {tmp_path / 'index.txt'}: has no entries",
        "four fields": f"{tmp_path / 'index.txt'}:{n + 1}: expected 6 tab-separated fields",
        "issued list cut": f"{tmp_path / 'issued.txt'}:{len(issued.splitlines())}: the last line has no newline",
    }[case]
    assert expected in r.stderr, r.stderr


# -- the validity window (item 5) ------------------------------------------------------------------------------


def test_default_index_validity_is_signed_by_the_default_signer_policy(stack: Stack) -> None:
    """No status.validity in the CA file, no policy.max_validity in signer.toml: a one-day answer, signed."""
    for which in ("good", "revoked"):
        resp = ask(stack, "rsa-ca", leaf_serial(stack, "rsa-ca", which))
        assert resp.next_update_utc is not None
        assert resp.next_update_utc - resp.this_update_utc == timedelta(hours=24)
    # The CRL-backed CA's answers carry the CRL's window, which the default policy admits too.
    crl = x509.load_pem_x509_crl((stack.dir / "crl.pem").read_bytes())
    resp = ask(stack, "ec-ca", leaf_serial(stack, "ec-ca", "good"))
    assert (resp.this_update_utc, resp.next_update_utc) == (crl.last_update_utc, crl.next_update_utc)
    # Inside the BRs' 8h..10d: no warning at start.
    assert "outside the 8h..10d" not in stack.frontend.log.read_text(errors="replace")


def test_window_outside_the_brs_is_warned_about_at_start(stack: Stack, tmp_path: Path) -> None:
    ca_d = tmp_path / "ca.d"
    ca_d.mkdir()
    rsa = stack.dir.joinpath("ca.d", "demo-rsa.toml").read_text()
    ca_d.joinpath("demo-rsa.toml").write_text(rsa.replace('[status]\n', '[status]\nvalidity = "1h"\n'))
    ca_d.joinpath("demo-ec.toml").write_text(stack.dir.joinpath("ca.d", "demo-ec.toml").read_text())
    config = tmp_path / "frontend.toml"
    config.write_text(re.sub(r'(?m)^ca_dir = .*$', f'ca_dir = "{ca_d}"',
                             stack.dir.joinpath("frontend.toml").read_text(), count=1))
    r = check_config(stack.demo, "ocsp-frontend", config)
    assert r.returncode == 0, r  # a warning, not a refusal
    warnings = [line for line in r.stderr.splitlines() if "outside the 8h..10d" in line]
    assert len(warnings) == 1, r.stderr
    assert "WARNING" in warnings[0] and "demo-rsa: answers are valid for 1h (status.validity)" in warnings[0]
