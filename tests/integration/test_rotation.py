"""Responder rotation with the frontend running, under load.

This module has its own SoftHSM token directory, demo PKI, signer and frontend (module fixtures), so the
rotations here never change what the session-wide ``demo``/``signer``/``frontend`` fixtures serve.

While a client thread sends nonce-bearing and cacheable requests for both CAs, the responders are
rotated both ways (renewal through ``ocspctl rotate``; re-key through a ca.d edit + SIGHUP, and through
``ocspctl rotate --key-label``). Every answer must verify (cryptography) against the responder
certificate it carries, which must chain to the CA; after each switch, nonce answers come from the new
responder at once and cached ones within the frontend's rotation_grace. Neither process restarts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.conftest import (
    Demo,
    Process,
    free_port,
    http_healthy,
    one_signer_worker,
    one_worker,
    tool,
    wait_until,
)
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce, verify_basic

pytestmark = pytest.mark.integration

GRACE = 1.0  # the frontend's [cache] rotation_grace in this module
MARGIN = 1.0  # scheduling slack on a busy 2-core machine
CAS = {"rsa": ("demo-rsa", "rsa-ca"), "ec": ("demo-ec", "ec-ca")}


@dataclass
class Stack:
    demo: Demo
    signer: Process
    frontend: Process
    workers: int  # signer processes ([signer] workers)

    def ca_file(self, ca: str) -> Path:
        return self.demo.path("etc", "ca.d", f"{CAS[ca][0]}.toml")

    def rotate(self, ca: str, cert: Path, key_label: str | None = None, check: bool = True):  # type: ignore[no-untyped-def]
        args = ["rotate", "--socket", str(self.demo.path("run", "admin.sock")), "--ca", CAS[ca][0],
                "--cert", str(cert)]
        if key_label:
            args += ["--key-label", key_label]
        return self.demo.ctl(*args, check=check)

    def reissue(self, ca: str, *, rekey: bool = False) -> tuple[Path, str]:
        out = self.demo.ctl("demo", "reissue-responder", "--dir", str(self.demo.dir), "--ca", ca,
                            *(["--rekey"] if rekey else [])).stdout
        path = re.search(r"^cert: (.+)$", out, re.MULTILINE)
        label = re.search(r"^key_label: (.+)$", out, re.MULTILINE)
        assert path and label, out
        return Path(path.group(1)), label.group(1)

    def signer_log_count(self, text: str) -> int:
        return self.signer.log.read_text(errors="replace").count(text)

    def ask(self, ca: str, *, nonce: bool) -> ocsp.OCSPResponse:
        ca_dir = CAS[ca][1]
        der = build_request(load_cert(self.demo.path(ca_dir, "leaf-good.pem")),
                            load_cert(self.demo.path(ca_dir, "ca.pem")),
                            nonce=random_nonce() if nonce else None)
        status, _, body = post(self.demo.http_port, der)
        assert status == 200
        return ocsp.load_der_ocsp_response(body)

    def current_fingerprint(self, ca: str) -> str:
        resp = self.ask(ca, nonce=True)
        signer = verify_basic(resp, load_cert(self.demo.path(CAS[ca][1], "ca.pem")))
        return fingerprint(signer)


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_fingerprint(path: Path) -> str:
    return fingerprint(load_cert(path))


@pytest.fixture(scope="module", params=[1, 2], ids=["one-signer", "two-signer-workers"])
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The demo with a signer of one process, then of two workers (signer.workers): every rotation and
    reload must switch every worker or none, and the frontend's generation tracking hold across them."""
    base = tmp_path_factory.mktemp("rot")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf), PYTHONUNBUFFERED="1")
    d = tmp_path_factory.mktemp("rotdemo")
    port = free_port()
    address = f"unix:{d / 'run' / 'signer.sock'}"
    demo = Demo(dir=d, env=env, http_port=port, signer_address=address)
    demo.ctl("demo", "setup", "--dir", str(d), "--http-port", str(port), "--signer-address", address)
    fe_toml = d / "etc" / "frontend.toml"
    one_worker(fe_toml)  # one cache: the grace and retirement counted here are one process's
    signer_toml = d / "etc" / "signer.toml"
    one_signer_worker(signer_toml)
    signer_toml.write_text(signer_toml.read_text().replace("workers = 1", f"workers = {request.param}"))
    text = fe_toml.read_text()
    assert 'rotation_grace = "2s"' in text
    fe_toml.write_text(text.replace('rotation_grace = "2s"', f'rotation_grace = "{int(GRACE * 1000)}ms"'))
    logs = tmp_path_factory.mktemp("rotlogs")
    signer_log = logs / "signer.log"

    def signer_ready() -> bool:
        try:
            # "serving on" of the one process, or of the supervisor once every worker serves
            up = len(re.findall(r"(?m)^\S+ ocsp-signer: INFO: (?:supervisor: )?serving on",
                                signer_log.read_text(errors="replace")))
        except OSError:
            return False
        return up >= starts[0] and (d / "run" / "admin.sock").exists()

    starts = [1]
    signer = Process("ocsp-signer", [tool("ocsp-signer"), "--config", str(d / "etc" / "signer.toml")], env,
                     signer_ready, signer_log)
    signer.start()
    frontend = Process("ocsp-frontend", [tool("ocsp-frontend"), "--config", str(fe_toml)], env,
                       lambda: http_healthy(port), logs / "frontend.log")
    try:
        frontend.start()
        s = Stack(demo, signer, frontend, request.param)
        s.starts = starts  # type: ignore[attr-defined]
        yield s
    finally:
        frontend.stop()
        signer.stop()


# -- the load ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float  # monotonic, before the request left
    ca: str
    nonce: bool
    fingerprint: str | None  # of the responder certificate in the answer
    error: str | None


class Load(threading.Thread):
    """Requests for both CAs, with and without nonce, until stopped (or a time/count bound)."""

    def __init__(self, stack: Stack, max_seconds: float = 60.0, max_requests: int = 200000) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.stop_event = threading.Event()
        self.answers: list[Answer] = []
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        d = stack.demo
        self.certs = {ca: (load_cert(d.path(dir_, "leaf-good.pem")), load_cert(d.path(dir_, "ca.pem")))
                      for ca, (_, dir_) in CAS.items()}
        self.cacheable = {ca: build_request(leaf, issuer) for ca, (leaf, issuer) in self.certs.items()}

    def answered_after(self, t: float, *cas: str) -> bool:
        """Each CA in ``cas`` has both a nonce and a cacheable answer sent after ``t``."""
        kinds = {(a.ca, a.nonce) for a in list(self.answers) if a.sent > t and not a.error}
        return all((ca, n) in kinds for ca in cas for n in (True, False))

    def wait_answered_after(self, t: float, *cas: str) -> None:
        """Wait for answers (not for a guessed time): fails if the load stopped or took too long."""
        def ok() -> bool:
            assert self.is_alive(), "the load stopped early"
            return self.answered_after(t, *cas)

        wait_until(ok, 30, f"answers for {', '.join(cas)} sent after t={t:.2f}")

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set() and time.monotonic() < self.deadline and i < self.max_requests:
            ca = "rsa" if i % 2 == 0 else "ec"
            nonce = i % 4 >= 2
            i += 1
            leaf, issuer = self.certs[ca]
            der = build_request(leaf, issuer, nonce=random_nonce()) if nonce else self.cacheable[ca]
            sent = time.monotonic()
            try:
                status, _, body = post(self.stack.demo.http_port, der)
                assert status == 200, f"HTTP {status}"
                resp = ocsp.load_der_ocsp_response(body)
                assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
                signer = verify_basic(resp, issuer)
                assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
                self.answers.append(Answer(sent, ca, nonce, fingerprint(signer), None))
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                self.answers.append(Answer(sent, ca, nonce, None, f"{type(e).__name__}: {e}"))


def check_switch(answers: list[Answer], ca: str, switched_at: float, new_fp: str, old_fp: str) -> None:
    """After ``switched_at``: nonce answers new at once, cached ones new after the grace."""
    mine = [a for a in answers if a.ca == ca]
    assert any(a.fingerprint == old_fp for a in mine if a.sent < switched_at), "no answers before the switch"
    late_nonce = [a for a in mine if a.nonce and a.sent > switched_at]
    late_cached = [a for a in mine if not a.nonce and a.sent > switched_at + GRACE + MARGIN]
    assert late_nonce and late_cached, "the load did not run long enough after the switch"
    stale = [a for a in late_nonce + late_cached if a.fingerprint != new_fp]
    assert not stale, f"{len(stale)} answers for {ca} after the switch came from an old responder: {stale[:3]}"


def test_rotation_under_load(stack: Stack) -> None:
    pids = (stack.signer.proc.pid, stack.frontend.proc.pid)  # type: ignore[union-attr]
    old = {ca: stack.current_fingerprint(ca) for ca in CAS}
    load = Load(stack)
    load.start()
    try:
        load.wait_answered_after(time.monotonic(), *CAS)  # the load runs for both CAs, both kinds
        # 1. Renewal of the RSA CA's responder (same key) through the Admin RPC.
        rsa_cert, rsa_label = stack.reissue("rsa")
        out = stack.rotate("rsa", rsa_cert).stdout
        rsa_switch = time.monotonic()
        assert "now signs with responder generation" in out, out
        new_rsa = cert_fingerprint(rsa_cert)
        assert load_cert(stack.demo.path("rsa-ca", "responder.pem")) == load_cert(rsa_cert)  # persisted

        # 2. Re-key of the EC CA's responder: new token key, new certificate, ca.d edit + SIGHUP.
        load.wait_answered_after(rsa_switch + GRACE + MARGIN, "rsa")  # the renewal's grace has passed
        ec_cert, ec_label = stack.reissue("ec", rekey=True)
        ca_file = stack.ca_file("ec")
        text = ca_file.read_text()
        text = re.sub(r'(?m)^cert = ".*"$', f'cert = "{ec_cert}"', text)
        text = re.sub(r'(?m)^key_label = ".*"$', f'key_label = "{ec_label}"', text)
        ca_file.write_text(text)
        swaps = stack.signer_log_count("now signs with responder generation")
        stack.signer.signal(signal.SIGHUP)
        wait_until(lambda: stack.signer_log_count("now signs with responder generation") > swaps, 10,
                   "the SIGHUP re-key to take effect")
        ec_switch = time.monotonic()
        new_ec = cert_fingerprint(ec_cert)

        # 3. Re-key of the RSA CA's responder through the Admin RPC (the signer updates the ca.d file).
        load.wait_answered_after(ec_switch, "ec")
        rsa2_cert, rsa2_label = stack.reissue("rsa", rekey=True)
        rsa2_start = time.monotonic()
        out = stack.rotate("rsa", rsa2_cert, rsa2_label).stdout
        rsa2_switch = time.monotonic()
        assert "responder.key_label" in out, out
        new_rsa2 = cert_fingerprint(rsa2_cert)
        assert f'key_label = "{rsa2_label}"' in stack.ca_file("rsa").read_text()

        load.wait_answered_after(max(ec_switch, rsa2_switch) + GRACE + MARGIN, *CAS)
    finally:
        load.stop_event.set()
        load.join(30)
    answers = load.answers
    errors = [a for a in answers if a.error]
    assert not errors, f"{len(errors)} of {len(answers)} answers failed: {[a.error for a in errors[:5]]}"
    assert len(answers) > 100
    # Renewal: RSA old -> new_rsa until rsa2_switch; then new_rsa2.
    check_switch([a for a in answers if a.sent < rsa2_start], "rsa", rsa_switch, new_rsa, old["rsa"])
    check_switch(answers, "rsa", rsa2_switch, new_rsa2, new_rsa)
    check_switch(answers, "ec", ec_switch, new_ec, old["ec"])
    assert (stack.signer.proc.pid, stack.frontend.proc.pid) == pids  # type: ignore[union-attr]
    assert stack.signer.proc.poll() is None and stack.frontend.proc.poll() is None  # type: ignore[union-attr]
    assert rsa_label  # the renewal kept the key
    # What is on disk is what runs: a restart would not roll back. (--check runs every start-up check,
    # so it gets sockets and an audit writer_id of its own: the running signer holds the demo's.)
    conf = stack.demo.path("etc", "signer.toml")
    text = conf.read_text().replace(str(stack.demo.path("run")), str(stack.demo.path("run", "check")))
    (stack.demo.path("run", "check")).mkdir(exist_ok=True)
    check_conf = stack.demo.path("etc", "signer-check.toml")
    check_conf.write_text(text.replace('writer_id = "demo"', 'writer_id = "check"'))
    r = subprocess.run([tool("ocsp-signer"), "--config", str(check_conf), "--check"],
                       env=stack.demo.env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert new_rsa2[:16] in r.stdout and new_ec[:16] in r.stdout, r.stdout


# -- refused candidates ----------------------------------------------------------------------------------


def bad_candidate(stack: Stack, kind: str, tmp: Path) -> Path:
    """A certificate for the EC CA that the signer must refuse, for the current responder key."""
    d = stack.demo
    current = verify_basic(stack.ask("ec", nonce=True), load_cert(d.path("ec-ca", "ca.pem")))
    ca_cert, ca_key_path = load_cert(d.path("ec-ca", "ca.pem")), d.path("ec-ca", "ca-key.pem")
    if kind == "other_ca":
        ca_cert, ca_key_path = load_cert(d.path("rsa-ca", "ca.pem")), d.path("rsa-ca", "ca-key.pem")
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    public = ec.generate_private_key(ec.SECP256R1()).public_key() if kind == "wrong_key" else current.public_key()
    now = dt.datetime.now(dt.UTC)
    not_after = now - dt.timedelta(days=1) if kind == "expired" else now + dt.timedelta(days=30)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if kind == "no_ocsp_signing" else ExtendedKeyUsageOID.OCSP_SIGNING
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bad {kind}")]))
            .issuer_name(ca_cert.subject).public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=2)).not_valid_after(not_after)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    path = tmp / f"bad-{kind}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


BAD = {
    "wrong_key": "is not the token key",
    "other_ca": "not issued by",
    "expired": "expired",
    "no_ocsp_signing": "OCSPSigning",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_candidate_refused_by_rpc(stack: Stack, kind: str, tmp_path: Path) -> None:
    before = stack.current_fingerprint("ec")
    on_disk = stack.demo.path("ec-ca").glob("*.pem")
    snapshot = {p: p.read_bytes() for p in on_disk}
    r = stack.rotate("ec", bad_candidate(stack, kind, tmp_path), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rotation refused (FAILED_PRECONDITION)" in r.stderr and BAD[kind] in r.stderr, r.stderr
    assert stack.current_fingerprint("ec") == before  # the old responder keeps signing
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # nothing was written


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_candidate_refused_by_sighup(stack: Stack, kind: str, tmp_path: Path) -> None:
    before = stack.current_fingerprint("ec")
    ca_file = stack.ca_file("ec")
    original = ca_file.read_text()
    bad = bad_candidate(stack, kind, tmp_path)
    refused = stack.signer_log_count("reload refused")
    try:
        ca_file.write_text(re.sub(r'(?m)^cert = ".*"$', f'cert = "{bad}"', original))
        stack.signer.signal(signal.SIGHUP)
        wait_until(lambda: stack.signer_log_count("reload refused") > refused, 10, "the reload to be refused")
    finally:
        ca_file.write_text(original)
    log = stack.signer.log.read_text(errors="replace")
    assert BAD[kind] in log[log.rfind("SIGHUP: re-reading"):]
    assert stack.current_fingerprint("ec") == before
    assert stack.signer.proc.poll() is None  # type: ignore[union-attr]


def test_admin_refused_on_the_main_listener(stack: Stack, tmp_path: Path) -> None:
    """The frontend's channel (its identity, or plaintext) reaches Signer, never Admin."""
    from frontend.config import load_frontend_config
    from frontend.signer_client import make_channel
    from shared.rpc import signer_pb2 as pb
    from shared.rpc import signer_pb2_grpc as pb_grpc

    cfg = load_frontend_config(stack.demo.path("etc", "frontend.toml"))
    cert = stack.demo.path("ec-ca", "responder.pem").read_bytes()

    async def call() -> grpc.StatusCode:
        kwargs = {"tls": cfg.signer.tls} if getattr(cfg.signer, "tls", None) is not None else {}
        channel = make_channel(cfg.signer.addresses[0], **kwargs)
        try:
            await pb_grpc.AdminStub(channel).Rotate(pb.RotateRequest(ca="demo-ec", certificate=cert), timeout=10)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
        finally:
            await channel.close()
        return grpc.StatusCode.OK

    codes = [asyncio.run(call()) for _ in range(20)]
    assert set(codes) == {grpc.StatusCode.PERMISSION_DENIED}
    # Refused, each of them, but logged once per process (rate-limited; the next line would carry the
    # count): each call's new connection may reach any worker.
    lines = [line for line in stack.signer.log.read_text(errors="replace").splitlines()
             if "Admin Rotate refused" in line]
    assert 1 <= len(lines) <= stack.workers, lines


def test_watch_reconnects_after_signer_restart(stack: Stack) -> None:
    """Restart the signer only: the frontend's Watch stream comes back by itself and a later renewal
    still retires the frontend's cached answers within the grace."""
    fe_log = stack.frontend.log
    watching = fe_log.read_text(errors="replace").count("watching responder changes")
    fe_pid = stack.frontend.proc.pid  # type: ignore[union-attr]
    stack.signer.stop()
    stack.starts[0] += 1  # type: ignore[attr-defined]
    stack.signer.start()
    wait_until(lambda: fe_log.read_text(errors="replace").count("watching responder changes") > watching, 15,
               "the frontend to watch the restarted signer")
    old = fingerprint(verify_basic(stack.ask("rsa", nonce=False), load_cert(stack.demo.path("rsa-ca", "ca.pem"))))
    cert, _ = stack.reissue("rsa")
    stack.rotate("rsa", cert)
    switched = time.monotonic()
    new = cert_fingerprint(cert)
    assert new != old
    issuer = load_cert(stack.demo.path("rsa-ca", "ca.pem"))
    wait_until(lambda: fingerprint(verify_basic(stack.ask("rsa", nonce=False), issuer)) == new, GRACE + 5,
               "cached answers of the old responder to go")
    assert time.monotonic() - switched <= GRACE + MARGIN + 1
    assert stack.frontend.proc.pid == fe_pid  # type: ignore[union-attr]
