"""``[signer] workers = 2``: a supervisor and two signer workers behind one address (signer.workers).

A private demo (its own SoftHSM token store, CA files and audit directory: the rotations here rewrite
responder files) with its signer on loopback TCP port 0, so the supervisor's reservation of the port
is what every worker shares. Each signature asked for here goes over a connection of its own, which
the kernel gives to either worker (SO_REUSEPORT); which worker signed is told by the audit chain it
lands in, and every reply carries the generation the worker signed with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp as x_ocsp

from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from tests.integration.conftest import Demo, Process, free_port, one_signer_worker, tool, wait_until
from tests.integration.test_frontend_workers import alive, children
from tests.integration.test_local_callers import sign_request

CONNECTIONS = 24  # fresh connections per check: all on one worker by chance with odds 2**-23


@dataclass
class Stack:
    demo: Demo
    signer: Process
    address: str  # 127.0.0.1:<the port the supervisor reserved>

    @property
    def log(self) -> str:
        return self.signer.log.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        return {int(n): int(pid) for n, pid in re.findall(r"supervisor: worker (\d+): started, pid (\d+)", self.log)}

    def audit_files(self, worker: int) -> list[Path]:
        return sorted(self.demo.path("audit").glob(f"audit-demo.w{worker}-*.jsonl"))

    def records(self, worker: int) -> int:
        return sum(1 for f in self.audit_files(worker) for line in f.read_text().splitlines()
                   if json.loads(line)["type"] == "sig")

    def reissue(self, ca: str) -> Path:
        out = self.demo.ctl("demo", "reissue-responder", "--dir", str(self.demo.dir), "--ca", ca).stdout
        found = re.search(r"^cert: (.+)$", out, re.MULTILINE)
        assert found, out
        return Path(found.group(1))

    def rotate(self, ca_name: str, cert: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.demo.ctl("rotate", "--socket", str(self.demo.path("run", "admin.sock")), "--ca", ca_name,
                             "--cert", str(cert), check=check)


def responder_of(der: bytes) -> str:
    """SHA-256 of the responder certificate in a signed answer."""
    resp = x_ocsp.load_der_ocsp_response(der)
    return hashlib.sha256(resp.certificates[0].public_bytes(serialization.Encoding.DER)).hexdigest()


def sign_on_fresh_connections(stack: Stack, ca: str, n: int = CONNECTIONS) -> list[pb.SignReply]:
    """``n`` Sign calls, each on a connection of its own (a channel option no other channel has, so
    gRPC shares no connection between them)."""
    from frontend.config import load_frontend_config

    request = sign_request(stack.demo, ca, "workers")
    tls = load_frontend_config(stack.demo.path("etc", "frontend.toml")).signer.tls  # the demo's mTLS
    assert tls is not None

    async def one(i: int) -> pb.SignReply:
        options = [*tls.options(), ("test.connection", i)]
        async with grpc.aio.secure_channel(stack.address, tls.credentials(), options=options) as channel:
            return await pb_grpc.SignerStub(channel).Sign(request, timeout=20)

    async def all_of() -> list[pb.SignReply]:
        return [await one(i) for i in range(n)]

    return asyncio.run(all_of())


def generations(replies: list[pb.SignReply]) -> set[int]:
    return {r.generation for r in replies}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("wk")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf), PYTHONUNBUFFERED="1")
    d = tmp_path_factory.mktemp("wkdemo")
    address = f"127.0.0.1:{free_port()}"
    demo = Demo(dir=d, env=env, http_port=free_port(), signer_address=address)
    demo.ctl("demo", "setup", "--dir", str(d), "--http-port", str(demo.http_port), "--signer-address", address)
    signer_toml = d / "etc" / "signer.toml"
    one_signer_worker(signer_toml)
    text = signer_toml.read_text().replace("workers = 1", "workers = 2")
    assert f'address = "{address}"' in text
    signer_toml.write_text(text.replace(f'address = "{address}"', 'address = "127.0.0.1:0"'))  # the supervisor picks
    log = d / "signer.log"

    def serving() -> bool:
        return log.exists() and "supervisor: serving on" in log.read_text(errors="replace")

    signer = Process("ocsp-signer-workers", [tool("ocsp-signer"), "--config", str(signer_toml)], env, serving, log)
    signer.start()
    try:
        found = re.search(r"supervisor: serving on (127\.0\.0\.1:(\d+)): 2 workers", log.read_text())
        assert found and found.group(2) != "0", log.read_text()
        yield Stack(demo, signer, found.group(1))
    finally:
        signer.stop()


def test_both_workers_sign_on_the_one_port(stack: Stack) -> None:
    before = {w: stack.records(w) for w in (0, 1)}
    replies = sign_on_fresh_connections(stack, "ec-ca")
    assert len(replies) == CONNECTIONS and all(r.ocsp_response for r in replies)
    assert generations(replies) == {1}
    gained = {w: stack.records(w) - before[w] for w in (0, 1)}
    assert sum(gained.values()) == CONNECTIONS and min(gained.values()) >= 1, gained  # each worker signed
    # Each its own session: two logins in the token, two chains, one writer lock each.
    assert {p.name for p in stack.demo.path("audit").glob(".audit-*.lock")} == {".audit-demo.w0.lock",
                                                                                ".audit-demo.w1.lock"}


def test_a_rotation_switches_every_worker(stack: Stack) -> None:
    start = max(generations(sign_on_fresh_connections(stack, "ec-ca", 4)))
    other = generations(sign_on_fresh_connections(stack, "rsa-ca", 4))
    new = stack.reissue("ec")
    r = stack.rotate("demo-ec", new)
    assert f"generation {start + 1}" in r.stdout, r.stdout
    replies = sign_on_fresh_connections(stack, "ec-ca")
    assert generations(replies) == {start + 1}
    want = hashlib.sha256(x509.load_pem_x509_certificate(new.read_bytes()).public_bytes(
        serialization.Encoding.DER)).hexdigest()
    assert {responder_of(r.ocsp_response) for r in replies} == {want}
    # The other CA's responder is unchanged, and so is its generation.
    assert generations(sign_on_fresh_connections(stack, "rsa-ca", 4)) == other


def test_a_refused_rotation_changes_no_worker(stack: Stack) -> None:
    start = generations(sign_on_fresh_connections(stack, "ec-ca", 4))
    assert len(start) == 1
    wrong = stack.demo.path("rsa-ca", "responder.pem")  # issued by the other CA
    r = stack.rotate("demo-ec", wrong, check=False)
    assert r.returncode != 0 and "not issued by the CA" in (r.stdout + r.stderr), r.stdout + r.stderr
    assert generations(sign_on_fresh_connections(stack, "ec-ca")) == start
    assert "rotation of CA 'demo-ec' (Admin RPC on worker" in stack.log


def test_sighup_reloads_every_worker(stack: Stack) -> None:
    start = max(generations(sign_on_fresh_connections(stack, "rsa-ca", 4)))
    new = stack.reissue("rsa")
    ca_file = stack.demo.path("etc", "ca.d", "demo-rsa.toml")
    text = ca_file.read_text()
    ca_file.write_text(re.sub(r'(?m)^cert = ".*"$', f'cert = "{new}"', text))
    switched = stack.log.count("supervisor: SIGHUP reload: every worker signs with generation")
    stack.signer.signal(signal.SIGHUP)
    wait_until(lambda: stack.log.count("supervisor: SIGHUP reload: every worker signs with generation") > switched,
               30, "every worker to switch")
    replies = sign_on_fresh_connections(stack, "rsa-ca")
    now = generations(replies)
    assert len(now) == 1 and now.pop() > start  # one new generation (the set's count), on every worker
    assert len({responder_of(r.ocsp_response) for r in replies}) == 1


def test_a_killed_worker_comes_back_at_the_current_generation(stack: Stack) -> None:
    current = generations(sign_on_fresh_connections(stack, "ec-ca", 4))
    pid = stack.worker_pids()[1]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "supervisor: worker 1: serving again" in stack.log, 60, "worker 1 to be started again")
    assert stack.worker_pids()[1] != pid
    before = stack.records(1)
    replies = sign_on_fresh_connections(stack, "ec-ca")
    assert generations(replies) == current
    assert stack.records(1) > before  # the new worker 1 signs, into the chain it resumed


def test_a_worker_restarted_onto_changed_files_waits_for_sighup(stack: Stack) -> None:
    """The files changed without a SIGHUP, then a worker died: its replacement would sign with another
    responder than the running worker, so it is stopped again (and rotations wait); the SIGHUP then
    loads the files into the running worker and starts the held one, and both agree."""
    before = generations(sign_on_fresh_connections(stack, "ec-ca", 4))
    new = stack.reissue("ec")
    ca_file = stack.demo.path("etc", "ca.d", "demo-ec.toml")
    ca_file.write_text(re.sub(r'(?m)^cert = ".*"$', f'cert = "{new}"', ca_file.read_text()))
    held = stack.log.count("stopped again: send SIGHUP")
    os.kill(stack.worker_pids()[1], signal.SIGKILL)
    wait_until(lambda: stack.log.count("stopped again: send SIGHUP") > held, 60, "worker 1 to be held")
    assert generations(sign_on_fresh_connections(stack, "ec-ca", 4)) == before  # worker 0 signs on
    r = stack.rotate("demo-ec", new, check=False)
    assert r.returncode != 0 and "worker 1 not running" in r.stdout + r.stderr, r.stdout + r.stderr
    again = stack.log.count("supervisor: worker 1: serving again")
    stack.signer.signal(signal.SIGHUP)
    wait_until(lambda: stack.log.count("supervisor: worker 1: serving again") > again, 60, "worker 1 to serve again")
    signed_by_1 = stack.records(1)
    replies = sign_on_fresh_connections(stack, "ec-ca")
    now = generations(replies)
    assert len(now) == 1 and now.pop() > max(before)
    want = hashlib.sha256(x509.load_pem_x509_certificate(new.read_bytes()).public_bytes(
        serialization.Encoding.DER)).hexdigest()
    assert {responder_of(r.ocsp_response) for r in replies} == {want}
    assert stack.records(1) > signed_by_1  # the held worker signs again, with the same responder


def test_stop_and_audit_verify_of_the_directory(stack: Stack) -> None:
    """Last: stops the signer. SIGTERM stops both workers cleanly; ``audit verify DIR`` checks every chain
    in the directory, and names the one that was edited."""
    pids = set(stack.worker_pids().values())
    assert stack.signer.stop() == 0
    assert not any(alive(pid) for pid in pids)
    audit_dir = stack.demo.path("audit")
    key = stack.demo.path("audit-key.pem")
    r = stack.demo.ctl("audit", "verify", str(audit_dir), "--pubkey", str(key), "--complete", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "writer demo.w0: records #0.." in r.stdout and "writer demo.w1: records #0.." in r.stdout, r.stdout
    victim = stack.audit_files(1)[-1]
    lines = victim.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "sig")
    lines[at] = lines[at].replace('"good"]]', '"revoked"]]', 1)
    assert lines[at] != victim.read_text().splitlines(keepends=True)[at]
    victim.write_text("".join(lines))
    r = stack.demo.ctl("audit", "verify", str(audit_dir), "--pubkey", str(key), check=False)
    assert r.returncode == 1 and "TAMPERING DETECTED" in r.stdout, r.stdout
    assert f"FAIL {victim}" in r.stdout, r.stdout


def test_workers_stop_when_the_supervisor_is_killed(demo: Demo, tmp_path: Path) -> None:
    """The session demo's configuration with two workers on a port of its own: SIGKILL leaves the
    supervisor no time to stop anyone; its workers see the control channel end and stop by themselves."""
    from tests.integration.private_stack import demo_config, short_dir

    run = short_dir()
    conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": f"127.0.0.1:{free_port()}", "socket": run / "admin.sock", "writer_id": "killed", "workers": 2})
    log = conf.with_suffix(".log")
    p = Process("ocsp-signer-killed", [tool("ocsp-signer"), "--config", str(conf)], demo.env,
                lambda: log.exists() and "supervisor: serving on" in log.read_text(), log)
    p.start()
    try:
        workers = children(p.proc.pid)
        assert len(workers) == 2, workers
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in workers), 30, "the workers to stop")
        assert "the supervisor is gone: stopping" in log.read_text()
    finally:
        p.stop()


@pytest.mark.parametrize(("keys", "message"), [
    ({"workers": 0}, "signer.workers: must be at least 1, not 0"),
    ({"workers": 2, "writer_id": "w" * 62}, "audit.writer_id: " + repr("w" * 62) + " is too long for 2 workers"),
])
def test_workers_config_errors(demo: Demo, tmp_path: Path, keys: dict[str, object], message: str) -> None:
    from tests.integration.private_stack import check_config, demo_config

    conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", keys)  # type: ignore[arg-type]
    r = check_config(demo, "ocsp-signer", conf)
    assert r.returncode == 2 and f"ocsp-signer: {conf}: {message}" in r.stderr, r.stderr


def test_a_worker_that_cannot_start_fails_the_start(demo: Demo, tmp_path: Path) -> None:
    """A wrong PIN: worker 0 exits 2 with the config error, the supervisor exits 2 too, no worker is
    started after it and nothing is left listening."""
    from tests.integration.private_stack import demo_config

    pin = tmp_path / "wrong.pin"
    pin.write_text("000000\n")
    pin.chmod(0o600)
    port = free_port()
    conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": f"127.0.0.1:{port}", "socket": None, "writer_id": "wrongpin", "workers": 2, "pin_file": pin})
    r = subprocess.run([tool("ocsp-signer"), "--config", str(conf)], env=demo.env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert f"ocsp-signer: {conf}: token.pin_file:" in r.stderr, r.stderr
    assert "supervisor: worker 0 did not start" in r.stderr and "worker 1: started" not in r.stderr, r.stderr
    assert "starting it again" not in r.stderr, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


def test_ctrl_c_to_the_process_group_stops_the_workers_in_order(demo: Demo, tmp_path: Path) -> None:
    """SIGINT to every process of the group (a terminal's Ctrl-C): the workers leave it to the
    supervisor, which stops them; nothing is started again and the exit status is 0."""
    from tests.integration.private_stack import demo_config, short_dir

    run = short_dir()
    conf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": f"127.0.0.1:{free_port()}", "socket": run / "admin.sock", "writer_id": "ctrlc", "workers": 2})
    log = conf.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen([tool("ocsp-signer"), "--config", str(conf)], env=demo.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "supervisor: serving on" in log.read_text() or proc.poll() is not None, 60,
                   "the workers to serve")
        workers = children(proc.pid)
        assert len(workers) == 2, log.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert "supervisor: SIGINT: stopping the workers" in text and "supervisor: stopped" in text, text
    assert "starting it again" not in text and text.count("stopped") >= 3, text
    assert not any(alive(pid) for pid in workers)
