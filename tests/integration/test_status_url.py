"""Status data from where the CA publishes it (issue 12), with real parts: a web server in this test
(tests/crl_server.py, on 127.0.0.1) publishes the demo EC CA's CRL; an ocsp-signer (the demo token,
``policy.verify_status`` on: it fetches and checks against its own copy) and an ocsp-frontend read a
ca.d whose EC CA file says ``url = "cdp"``, with a CA certificate (same subject and key as the demo's)
whose CRL Distribution Points name that server. Refresh is 1 s and checks every 100 ms, so every step
waits on a condition (an answer, a log line), never a fixed sleep.

Then a compromised CA: the demo RSA CA's file gets ``compromised = true``; after a restart of both
halves every serial (issued, never issued, revoked for another reason) answers revoked, cACompromise.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from shared.ocsp.certid import issuer_keys
from shared.ocsp.types import HashAlgorithm
from signer.ctl.demo.ca_db import read_crl_entries, write_crl
from tests.crl_server import CrlServer, Route
from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.ocsp_client import load_cert, openssl_ocsp, post, random_nonce, verify_basic
from tests.integration.private_stack import (
    check_config,
    demo_config,
    ocsp_frontend,
    ocsp_signer,
    running,
    short_dir,
)

pytestmark = pytest.mark.integration

PATH = "/ec-ca.crl"
GOOD, REVOKED = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED
MAX_SIZE = 65536


@dataclass
class Stack:
    dir: Path
    demo: Demo
    server: CrlServer
    signer: Process
    frontend: Process
    port: int
    state: Path
    frontend_conf: Path

    @property
    def ca(self) -> x509.Certificate:
        return load_cert(self.demo.path("ec-ca", "ca.pem"))

    @property
    def key(self):
        return serialization.load_pem_private_key(self.demo.path("ec-ca", "ca-key.pem").read_bytes(), None)

    def kept(self, half: str = "frontend") -> bytes:
        state = self.state if half == "frontend" else self.dir / "signer-state"
        return (state / "demo-ec.crl").read_bytes()


def with_cdp(demo: Demo, url: str, out: Path) -> Path:
    """The demo EC CA's certificate again (subject, key, validity, extensions), plus a CRL
    Distribution Point naming ``url``: requests and the responder certificate match it as before."""
    ca = load_cert(demo.path("ec-ca", "ca.pem"))
    key = serialization.load_pem_private_key(demo.path("ec-ca", "ca-key.pem").read_bytes(), None)
    b = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.issuer).public_key(ca.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc))
    for ext in ca.extensions:
        b = b.add_extension(ext.value, ext.critical)
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
    b = b.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    out.write_bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]
    return out


def url_status(state: Path, refresh: str) -> str:
    return (f'[status]\nsource = "crl"\nurl = "cdp"\nstate_dir = "{state}"\nrefresh = "{refresh}"\n'
            f'check_interval = "100ms"\ntimeout = "2s"\nmax_size = {MAX_SIZE}\nunissued = "unknown"\n')


@contextmanager
def url_stack(demo: Demo, d: Path, name: str, refresh: str) -> Iterator[Stack]:
    """A web server publishing the demo EC CRL, and a signer and a frontend fetching it every ``refresh``."""
    server = CrlServer().start()
    server.routes[PATH] = Route(demo.path("ec-ca", "crl.pem").read_bytes(), last_modified=1_700_000_000)
    ca_dir = d / "ca.d"
    shutil.copytree(demo.path("etc", "ca.d"), ca_dir)
    state = d / "state"
    state.mkdir()
    cdp_ca = with_cdp(demo, server.url(PATH), d / "ec-ca-cdp.pem")
    f = ca_dir / "demo-ec.toml"
    head, table = f.read_text().split("[status]")
    issued = [line for line in table.splitlines() if line.startswith("issued_serials")]
    head = head.replace(f'ca_cert = "{demo.path("ec-ca", "ca.pem")}"', f'ca_cert = "{cdp_ca}"')
    assert str(cdp_ca) in head
    f.write_text(head + url_status(state, refresh) + "\n".join(issued) + "\n")
    # The signer's own copy of the CA files, with its own state directory, as on a host of its own:
    # each half fetches and keeps the CRL by itself.
    signer_ca_dir = d / "signer-ca.d"
    shutil.copytree(ca_dir, signer_ca_dir)
    (d / "signer-state").mkdir()
    sf = signer_ca_dir / "demo-ec.toml"
    sf.write_text(sf.read_text().replace(f'state_dir = "{state}"', f'state_dir = "{d / "signer-state"}"'))
    address = f"unix:{short_dir() / 'signer.sock'}"
    sconf = demo_config(demo, "signer.toml", d / "signer.toml", {
        "address": address, "socket": None, "writer_id": name, "ca_dir": signer_ca_dir, "dir": d / "audit"})
    port = free_port()
    fconf = demo_config(demo, "frontend.toml", d / "frontend.toml", {"ca_dir": ca_dir, "port": port, "address": address})
    sp = ocsp_signer(demo, sconf, address, name=f"ocsp-signer-{name}", probe=fconf)
    fp = ocsp_frontend(demo, fconf, port, name=f"ocsp-frontend-{name}")
    try:
        with running(sp, fp):
            yield Stack(d, demo, server, sp, fp, port, state, fconf)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with url_stack(demo, tmp_path_factory.mktemp("status-url"), "status_url", "1s") as s:
        yield s


def ask(stack: Stack, which: str = "good", *, nonce: bool = True) -> ocsp.OCSPResponse:
    leaf = load_cert(stack.demo.path("ec-ca", f"leaf-{which}.pem"))
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, stack.ca, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(random_nonce()), critical=False)
    status, _, body = post(stack.port, builder.build().public_bytes(serialization.Encoding.DER))
    assert status == 200
    return ocsp.load_der_ocsp_response(body)


def answered(stack: Stack, which: str = "good") -> ocsp.OCSPCertStatus | None:
    """The signed status of leaf ``which``; None while the answer is not successful (tryLater while the
    two halves have not both fetched a new CRL)."""
    resp = ask(stack, which)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None
    verify_basic(resp, stack.ca)
    return resp.certificate_status


def publish(stack: Stack, revoked_leaf: str | None, number: int, *, key=None, ca=None) -> bytes:
    """A new CRL at the URL: the demo's entries, plus ``revoked_leaf`` revoked now (keyCompromise)."""
    ca = ca or stack.ca
    entries, _n, _crl = read_crl_entries(stack.demo.path("ec-ca", "crl.pem"), stack.ca)
    if revoked_leaf is not None:
        serial = load_cert(stack.demo.path("ec-ca", f"leaf-{revoked_leaf}.pem")).serial_number
        entries[serial] = (dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=5), "keyCompromise")
    out = stack.dir / "publish.pem"
    write_crl(out, ca, key or stack.key, entries, number, dt.datetime.now(dt.UTC).replace(microsecond=0))
    body = out.read_bytes()
    stack.server.routes[PATH] = Route(body)
    return body


def log_count(p: Process, text: str) -> int:
    return p.log.read_text(errors="replace").count(text)


def test_answers_come_from_the_fetched_crl_and_follow_a_new_one(stack: Stack) -> None:
    assert answered(stack, "good") == GOOD and answered(stack, "revoked") == REVOKED
    assert stack.kept() == stack.demo.path("ec-ca", "crl.pem").read_bytes()
    refusals = log_count(stack.signer, "REFUSED to sign")
    # Conditional requests: the unchanged CRL is asked for with its validators and answered 304.
    conditional = stack.server.conditional[PATH]
    stack.server.wait_hits(PATH, stack.server.hits[PATH] + 2)
    assert stack.server.conditional[PATH] > conditional and stack.server.not_modified[PATH] > 0
    body = publish(stack, "good", 100)
    wait_until(lambda: answered(stack, "good") == REVOKED, 30, "the revocation published at the URL to be answered")
    for _ in range(3):  # both halves have it now: signed, revoked, no refusal since
        assert answered(stack, "good") == REVOKED
    wait_until(lambda: stack.kept() == body and stack.kept("signer") == body, 10, "the new CRL to be kept by both")
    # The skew between the two halves' fetches may have cost refusals (tryLater); none once both have it.
    settled = log_count(stack.signer, "REFUSED to sign")
    assert answered(stack, "good") == REVOKED
    assert log_count(stack.signer, "REFUSED to sign") == settled >= refusals


def test_bad_oversized_old_or_foreign_crls_keep_the_last_good_answers(stack: Stack) -> None:
    good = publish(stack, "good", 200)
    wait_until(lambda: stack.kept() == good and answered(stack, "good") == REVOKED, 30, "the good CRL")
    rsa = load_cert(stack.demo.path("rsa-ca", "ca.pem"))
    rsa_key = serialization.load_pem_private_key(stack.demo.path("rsa-ca", "ca-key.pem").read_bytes(), None)
    foreign = stack.dir / "foreign.pem"
    write_crl(foreign, rsa, rsa_key, {}, 300, dt.datetime.now(dt.UTC).replace(microsecond=0))
    cases = {
        "garbage": (b"<html>down for maintenance</html>\n", "not a PEM or DER CRL"),
        "cut short": (good[: len(good) // 2], "not a PEM or DER CRL"),
        "oversized": (good * (MAX_SIZE // len(good) + 2), "larger than status.max_size"),
        "old": (stack.demo.path("ec-ca", "crl.pem").read_bytes(), "refusing to go back to an older CRL"),
        "another CA's": (foreign.read_bytes(), "not by this CA"),
    }
    for what, (body, message) in cases.items():
        before = log_count(stack.frontend, message), log_count(stack.signer, message)
        stack.server.routes[PATH] = Route(body, content_length=what != "oversized")
        wait_until(lambda m=message, b=before: log_count(stack.frontend, m) > b[0] and log_count(stack.signer, m) > b[1],
                   30, f"{what}: both halves to refuse it ({message!r})")
        assert answered(stack, "good") == REVOKED, what
        assert answered(stack, "revoked") == REVOKED, what
        assert stack.kept() == good, what
    assert sorted(p.name for p in stack.state.iterdir()) == ["demo-ec.crl"]  # no download left behind
    line = next(ln for ln in stack.frontend.log.read_text().splitlines() if "not by this CA" in ln)
    assert f"the CRL at {stack.server.url(PATH)} is issued by" in line and "set status.url" in line


def test_a_restart_while_the_server_is_down_starts_from_the_kept_copy(stack: Stack) -> None:
    good = publish(stack, "good", 400)
    wait_until(lambda: stack.kept() == good and answered(stack, "good") == REVOKED, 30, "the good CRL")
    stack.frontend.stop()
    stack.server.routes[PATH] = Route(status=500)
    stack.frontend.start()
    assert "starting from the copy kept in" in stack.frontend.tail(200)
    assert answered(stack, "good") == REVOKED
    assert answered(stack, "revoked") == REVOKED
    stack.server.routes[PATH] = Route(good)


def test_no_crl_fetched_and_none_kept_is_a_start_up_error(stack: Stack, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca.d"
    shutil.copytree(stack.dir / "ca.d", ca_dir)
    (tmp_path / "state").mkdir()
    f = ca_dir / "demo-ec.toml"
    f.write_text(f.read_text().replace(f'state_dir = "{stack.state}"', f'state_dir = "{tmp_path / "state"}"'))
    conf = demo_config(stack.demo, "frontend.toml", tmp_path / "frontend.toml", {"ca_dir": ca_dir})
    stack.server.routes[PATH] = Route(status=404)
    try:
        result = check_config(stack.demo, "ocsp-frontend", conf)
    finally:
        stack.server.routes[PATH] = Route(stack.kept())
    assert result.returncode == 2, result.stderr
    assert f"{f}: status.url: cannot fetch the CRL at {stack.server.url(PATH)}: HTTP 404" in result.stderr
    assert str(tmp_path / "state" / "demo-ec.crl") in result.stderr


def test_the_half_behind_catches_up_when_the_other_disagrees(demo: Demo, tmp_path: Path) -> None:
    """With an hour between scheduled fetches, SIGHUP makes one half fetch a new CRL: the other one,
    told by the disagreement, fetches it too within seconds, not at its next scheduled fetch."""
    reloaded = "demo-ec: status data reloaded"
    with url_stack(demo, tmp_path, "url_catch_up", "1h") as stack:
        assert answered(stack, "good") == GOOD and answered(stack, "unknown") == ocsp.OCSPCertStatus.UNKNOWN
        # The frontend first: the signer refuses its newer window, then catches up.
        before = log_count(stack.frontend, reloaded)
        publish(stack, "good", 500)
        stack.frontend.signal(signal.SIGHUP)
        wait_until(lambda: log_count(stack.frontend, reloaded) > before, 30, "the frontend to fetch on SIGHUP")
        wait_until(lambda: answered(stack, "good") == REVOKED, 40, "the signer to catch up")
        # The signer first: it refuses the frontend's older window, and the frontend catches up.
        before = log_count(stack.signer, reloaded)
        body = publish(stack, "unknown", 501)
        stack.signer.signal(signal.SIGHUP)
        wait_until(lambda: log_count(stack.signer, reloaded) > before, 30, "the signer to fetch on SIGHUP")
        wait_until(lambda: answered(stack, "unknown") == REVOKED, 40, "the frontend to catch up")
        assert stack.kept() == body
        assert log_count(stack.frontend, "the signer's status data disagrees with ours") >= 1


# -- a compromised CA -----------------------------------------------------------------------------------


def rsa_ask(demo: Demo, port: int, serial: int, *, nonce: bool) -> ocsp.OCSPResponse:
    issuer = load_cert(demo.path("rsa-ca", "ca.pem"))
    k = issuer_keys(issuer.public_bytes(serialization.Encoding.DER))[HashAlgorithm.SHA1]
    b = ocsp.OCSPRequestBuilder().add_certificate_by_hash(k.issuer_name_hash, k.issuer_key_hash, serial, hashes.SHA1())
    if nonce:
        b = b.add_extension(x509.OCSPNonce(random_nonce()), critical=False)
    status, _, body = post(port, b.build().public_bytes(serialization.Encoding.DER))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
    verify_basic(resp, issuer)
    return resp


def test_a_compromised_ca_answers_every_serial_revoked_ca_compromise(demo: Demo, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca.d"
    shutil.copytree(demo.path("etc", "ca.d"), ca_dir)
    address = f"unix:{short_dir() / 'signer.sock'}"
    sconf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": address, "socket": None, "writer_id": "compromised", "ca_dir": ca_dir, "dir": tmp_path / "audit"})
    port = free_port()
    fconf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml", {"ca_dir": ca_dir, "port": port,
                                                                            "address": address})
    sp = ocsp_signer(demo, sconf, address, name="ocsp-signer-compromised", probe=fconf)
    fp = ocsp_frontend(demo, fconf, port, name="ocsp-frontend-compromised")
    serials = {which: load_cert(demo.path("rsa-ca", f"leaf-{which}.pem")).serial_number
               for which in ("good", "revoked", "unknown")}
    serials["never issued"] = 0x5EED0001
    with running(sp, fp):
        # A cached "good" answer (no nonce) before the flag...
        assert rsa_ask(demo, port, serials["good"], nonce=False).certificate_status == GOOD
        assert rsa_ask(demo, port, serials["revoked"], nonce=True).revocation_reason == x509.ReasonFlags.key_compromise
    f = ca_dir / "demo-rsa.toml"
    f.write_text(f.read_text().replace("[status]\n", "[status]\ncompromised = true\n", 1))
    not_before = load_cert(demo.path("rsa-ca", "ca.pem")).not_valid_before_utc
    with running(sp, fp):  # ... is not served after the restart
        assert "EVERY serial of this CA answers revoked" in fp.tail(200)
        for which, serial in serials.items():
            for nonce in (False, True):
                resp = rsa_ask(demo, port, serial, nonce=nonce)
                assert resp.certificate_status == REVOKED, which
                assert resp.revocation_reason == x509.ReasonFlags.ca_compromise, which
                assert resp.revocation_time_utc == not_before, which
        # A second, independent client: OpenSSL's, over HTTP, verifying the signature.
        result = openssl_ocsp(demo.path("rsa-ca", "ca.pem"), [demo.path("rsa-ca", f"leaf-{w}.pem")
                                                               for w in ("good", "revoked", "unknown")],
                              f"http://127.0.0.1:{port}/")
        assert result.verified, result.stderr
        assert result.stdout.count(": revoked") == 3 and result.stdout.count("Reason: cACompromise") == 3, result.stdout
        assert "REFUSED to sign" not in sp.log.read_text(errors="replace")
