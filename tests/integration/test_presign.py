"""ocspctl presign and the refresher against a real signer and a real redis-server.

``presign`` of a CA's serials puts one answer per serial (one audit record each), a rerun signs
nothing, a frontend started afterwards serves them without signing, and a frontend's refresher signs again an answer that becomes due. The
stack (signer with its own audit writer id, Redis) is this module's own.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives.serialization import Encoding

from frontend.presign import cert_id
from shared.answers import AnswerKey
from shared.ocsp.certid import issuer_keys
from shared.ocsp.types import HashAlgorithm
from shared.status.index_txt import parse_index
from tests.integration.conftest import Demo, Process, free_port, tool, wait_until
from tests.integration.ocsp_client import build_request, load_cert, post
from tests.integration.private_stack import demo_config, ocsp_frontend, ocsp_signer, running, short_dir
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

WRITER = "presign"
CA = "demo-rsa"


@dataclass
class Stack:
    demo: Demo
    signer: Process
    redis: RedisServer
    work: Path
    address: str

    def signatures(self) -> int:
        return sum(f.read_bytes().count(b'"type":"sig"')
                   for f in self.demo.path("audit").glob(f"audit-{WRITER}-*.jsonl"))

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.redis.socket))

    def config(self, name: str, port: int, cache: str) -> Path:
        return demo_config(self.demo, "frontend.toml", self.work / f"{name}.toml",
                           {"port": port, "address": self.address},
                           after={"rotation_grace": f'redis = "{self.redis.url}"\nredis_timeout = "1s"\n{cache}'})

    def presign(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool("ocspctl"), "presign", "--config", str(config), "--ca", CA, *args],
                              env=self.demo.env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def stack(demo: Demo, signer: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``signer``: the session's, only so that the demo's token is initialised first."""
    work = tmp_path_factory.mktemp("presign")
    server = RedisServer(work / "redis")
    server.start()
    address = f"unix:{short_dir() / 'signer.sock'}"
    sconf = demo_config(demo, "signer.toml", work / "signer.toml",
                        {"address": address, "socket": None, "writer_id": WRITER})
    own = ocsp_signer(demo, sconf, address, name="presign-signer")
    try:
        with running(own):
            yield Stack(demo, own, server, work, address)
    finally:
        server.close()


def rsa_serials(demo: Demo) -> list[int]:
    return sorted(parse_index(demo.path("rsa-ca", "index.txt").read_text(), timedelta(hours=24)).serials())


def stored_key(demo: Demo, serial: int, prefix: str) -> str:
    ca_der = load_cert(demo.path("rsa-ca", "ca.pem")).public_bytes(Encoding.DER)
    return AnswerKey(CA, (cert_id(issuer_keys(ca_der)[HashAlgorithm.SHA1], serial),)).text(prefix)


def test_presign_stores_one_answer_per_serial_and_a_rerun_signs_nothing(stack: Stack) -> None:
    serials = rsa_serials(stack.demo)
    assert serials
    conf = stack.config("plain", free_port(), "")
    before = stack.signatures()
    first = stack.presign(conf)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(rf"signed {len(serials)}, skipped 0 \(.*\), failed 0;", first.stdout), first.stdout
    assert stack.signatures() == before + len(serials)  # one audit record per signed answer
    client = stack.client()
    try:
        keys = [stored_key(stack.demo, s, "ocsp:") for s in serials]
        assert all(client.exists(k) for k in keys)
        assert client.zcard(f"ocsp:due:{CA}") == len(serials)
        ttl = client.pttl(keys[0])
        assert 0 < ttl <= 3600 * 1000  # min(nextUpdate, thisUpdate + max_age): max_age is 1 h here
    finally:
        client.close()
    # Not a terminal: periodic plain lines at most, never a bar's carriage returns.
    assert "\r" not in first.stderr

    again = stack.presign(conf)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(rf"signed 0, skipped {len(serials)} \(.*\), failed 0;", again.stdout), again.stdout
    assert stack.signatures() == before + len(serials)


def test_presign_config_errors_name_the_file_and_key(stack: Stack) -> None:
    conf = stack.config("unknown", free_port(), "")
    r = subprocess.run([tool("ocspctl"), "presign", "--config", str(conf), "--ca", "nope"], env=stack.demo.env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and f"{conf}: ca_dir: no CA named 'nope'" in r.stderr, r.stderr
    plain = demo_config(stack.demo, "frontend.toml", stack.work / "noredis.toml", {"address": stack.address})
    r = subprocess.run([tool("ocspctl"), "presign", "--config", str(plain), "--ca", CA], env=stack.demo.env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and f"{plain}: cache.redis:" in r.stderr, r.stderr


def test_a_frontend_started_afterwards_serves_presigned_answers_without_signing(stack: Stack) -> None:
    conf = stack.config("served", port := free_port(), 'refresh_before = "0s"')
    r = stack.presign(conf)
    assert r.returncode == 0, r.stdout + r.stderr
    frontend = ocsp_frontend(stack.demo, conf, port, name="presign-frontend")
    before = stack.signatures()
    with running(frontend):
        for which in ("good", "revoked", "unknown"):
            der = build_request(load_cert(stack.demo.path("rsa-ca", f"leaf-{which}.pem")),
                                load_cert(stack.demo.path("rsa-ca", "ca.pem")))
            status, _, _ = post(port, der)
            assert status == 200
    listed = {"good", "revoked"}  # the index names these two; an unknown serial is not presigned
    assert stack.signatures() == before + (3 - len(listed))


def test_the_refresher_signs_again_an_answer_that_becomes_due(stack: Stack) -> None:
    # max_age 60 s, refresh_before 55 s: an answer is due 5 s after it is signed.
    cache = 'max_age = "60s"\nrefresh_before = "55s"\nrefresh_rate = 50\nredis_prefix = "fast:"'
    port = free_port()
    conf = stack.config("fast", port, cache)
    r = stack.presign(conf, "--min-remaining", "0s")
    assert r.returncode == 0, r.stdout + r.stderr
    serial = rsa_serials(stack.demo)[0]
    key = stored_key(stack.demo, serial, "fast:")
    client = stack.client()
    try:
        first = client.get(key)
        assert first is not None
        frontend = ocsp_frontend(stack.demo, conf, port, name="refresher-frontend")
        with running(frontend):
            wait_until(lambda: re.search(r"refreshing the stored answers of demo-rsa", frontend.log.read_text(
                errors="replace")) is not None, 20, "the frontend to take the refresh lock")
            assert client.exists(f"fast:lock:refresh:{CA}")
            wait_until(lambda: client.get(key) not in (None, first), 30, "the refresher to sign the answer again")
        # A clean stop releases the lock at once (not after its TTL).
        assert not client.exists(f"fast:lock:refresh:{CA}")
    finally:
        client.close()
