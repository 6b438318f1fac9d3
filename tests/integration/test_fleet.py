"""A fleet: two real frontends sharing answers through one real redis-server, one real signer.

An answer signed through frontend A is served by frontend B without a new signature (the signer's
audit log has one record for it), by GET and POST alike; a revocation in both frontends' index.txt
stops the old answer being served by either; Redis killed mid-test costs no failed request, and
once it is back the frontends share answers again. The stack (signer, frontends, CA directory with
its own index.txt copy, Redis) is this module's own: nothing here changes what other tests serve.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from shared.answers import AnswerKey
from shared.ocsp.request import decode_request
from signer.ctl.demo.ca_db import index_revoke, read_index, write_index
from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.ocsp_client import build_request, get, load_cert, post
from tests.integration.private_stack import demo_config, ocsp_frontend, ocsp_signer, running, short_dir
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

WRITER = "fleet"  # the signer's audit writer id: its records are audit-fleet-*.jsonl
CA = "demo-rsa"


@dataclass
class Fleet:
    demo: Demo
    signer: Process
    a: Process
    b: Process
    ports: tuple[int, int]
    redis: RedisServer
    index: Path  # the index.txt copy all three read

    def signatures(self) -> int:
        """Responses the signer signed so far (one "sig" audit record each, durable before the answer
        leaves the signer)."""
        return sum(f.read_bytes().count(b'"type":"sig"')
                   for f in self.demo.path("audit").glob(f"audit-{WRITER}-*.jsonl"))

    def request(self, which: str = "good", algorithm: str = "sha1") -> bytes:
        return build_request(load_cert(self.demo.path("rsa-ca", f"leaf-{which}.pem")),
                             load_cert(self.demo.path("rsa-ca", "ca.pem")), algorithm=algorithm)

    def ask(self, port: int, der: bytes, method: str = "POST") -> ocsp.OCSPResponse:
        status, _, body = post(port, der) if method == "POST" else get(port, der)
        assert status == 200
        resp = ocsp.load_der_ocsp_response(body)
        assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
        return resp

    def stored(self, der: bytes) -> bool:
        key = AnswerKey(CA, decode_request(der).cert_ids).text("ocsp:")
        client = redis.Redis(unix_socket_path=str(self.redis.socket))
        try:
            return bool(client.exists(key))
        except redis.RedisError:
            return False
        finally:
            client.close()

    def reloads(self, p: Process) -> int:
        return p.log.read_text(errors="replace").count(f"{CA}: status data reloaded")


@pytest.fixture(scope="module")
def fleet(demo: Demo, signer: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """``signer``: the session's, only so that the demo's token is initialised first."""
    work = tmp_path_factory.mktemp("fleet")
    server = RedisServer(work / "redis")
    server.start()
    ca_dir = work / "ca.d"
    shutil.copytree(demo.path("etc", "ca.d"), ca_dir)
    index = work / "index.txt"
    shutil.copyfile(demo.path("rsa-ca", "index.txt"), index)
    rsa = ca_dir / f"{CA}.toml"
    text = rsa.read_text()
    assert str(demo.path("rsa-ca", "index.txt")) in text
    rsa.write_text(text.replace(str(demo.path("rsa-ca", "index.txt")), str(index)))

    address = f"unix:{short_dir() / 'signer.sock'}"
    sconf = demo_config(demo, "signer.toml", work / "signer.toml",
                        {"ca_dir": ca_dir, "address": address, "socket": None, "writer_id": WRITER})
    own_signer = ocsp_signer(demo, sconf, address, name="fleet-signer")
    frontends = []
    ports = []
    for name in ("a", "b"):
        port = free_port()
        # A generous redis_timeout: two frontends, a signer and Redis share two busy cores here.
        conf = demo_config(demo, "frontend.toml", work / f"frontend-{name}.toml",
                           {"ca_dir": ca_dir, "port": port, "address": address},
                           after={"rotation_grace": f'redis = "{server.url}"\nredis_timeout = "1s"'})
        frontends.append(ocsp_frontend(demo, conf, port, name=f"fleet-frontend-{name}"))
        ports.append(port)
    try:
        with running(own_signer, *frontends):
            yield Fleet(demo, own_signer, frontends[0], frontends[1], (ports[0], ports[1]), server, index)
    finally:
        server.close()


def test_an_answer_signed_through_one_frontend_is_served_by_the_other(fleet: Fleet) -> None:
    der = fleet.request("good", "sha256")
    before = fleet.signatures()
    first = fleet.ask(fleet.ports[0], der)
    assert fleet.signatures() == before + 1
    wait_until(lambda: fleet.stored(der), 10, "frontend A's answer to reach Redis")
    for port in fleet.ports:  # by POST and GET, on both
        for method in ("POST", "GET"):
            again = fleet.ask(port, der, method)
            assert again.public_bytes(serialization.Encoding.DER) == first.public_bytes(serialization.Encoding.DER)
    assert fleet.signatures() == before + 1  # the audit log shows one record


def test_get_and_post_share_one_answer_across_the_fleet(fleet: Fleet) -> None:
    der = fleet.request("unknown", "sha384")
    before = fleet.signatures()
    by_get = fleet.ask(fleet.ports[1], der, "GET")
    wait_until(lambda: fleet.stored(der), 10, "frontend B's answer to reach Redis")
    by_post = fleet.ask(fleet.ports[0], der, "POST")
    assert by_get.public_bytes(serialization.Encoding.DER) == by_post.public_bytes(serialization.Encoding.DER)
    assert fleet.signatures() == before + 1


def test_a_revocation_stops_the_old_answer_everywhere(fleet: Fleet) -> None:
    der = fleet.request("good")
    before = fleet.signatures()
    assert fleet.ask(fleet.ports[0], der).certificate_status == ocsp.OCSPCertStatus.GOOD
    wait_until(lambda: fleet.stored(der), 10, "the good answer to reach Redis")
    assert fleet.ask(fleet.ports[1], der).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert fleet.signatures() == before + 1

    serial = load_cert(fleet.demo.path("rsa-ca", "leaf-good.pem")).serial_number
    entries = read_index(fleet.index)
    import datetime as dt

    assert index_revoke(entries, serial, dt.datetime.now(dt.UTC), "keyCompromise")
    reloads = {p.name: fleet.reloads(p) for p in (fleet.signer, fleet.a, fleet.b)}
    write_index(fleet.index, entries)
    for p in (fleet.signer, fleet.a, fleet.b):  # SIGHUP: re-read the status data now
        p.signal(signal.SIGHUP)
    for p in (fleet.signer, fleet.a, fleet.b):
        wait_until(lambda p=p: fleet.reloads(p) > reloads[p.name], 20, f"{p.name} to reload its status data")
    # Their reloads deleted the answer from Redis (in the background: waited for here, so that no
    # deletion lands after the new answer is written); whichever frontend is asked first signs anew,
    # the other serves that (the revoked one), never the old good answer.
    wait_until(lambda: not fleet.stored(der), 10, "the reloads to delete the old answer from Redis")
    for port in (fleet.ports[1], fleet.ports[0], fleet.ports[1]):
        resp = fleet.ask(port, der)
        assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert fleet.signatures() == before + 2


def test_redis_killed_mid_test_costs_no_failed_request(fleet: Fleet) -> None:
    served = [fleet.request("revoked", alg) for alg in ("sha1", "sha256")]
    for der in served:
        fleet.ask(fleet.ports[0], der)
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            port = fleet.ports[i % 2]
            try:
                fleet.ask(port, served[i % len(served)], "GET" if i % 3 else "POST")
                answered[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(f"{port}: {type(e).__name__}: {e}")
            i += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        wait_until(lambda: answered[0] >= 20, 20, "requests before the kill")
        fleet.redis.kill()
        mark = answered[0]
        wait_until(lambda: answered[0] >= mark + 40, 30, "requests while Redis is down")
        # Answers nobody has signed yet are signed, and served, with Redis gone.
        for alg in ("sha384", "sha512"):
            fleet.ask(fleet.ports[1], fleet.request("revoked", alg))
        fleet.redis.start()
        mark = answered[0]
        wait_until(lambda: answered[0] >= mark + 20, 20, "requests after Redis is back")
    finally:
        stop.set()
        t.join(30)
    assert failures == []

    # Sharing resumes: a new answer signed through A reaches Redis (once A's backoff is over) and B
    # serves it without signing.
    candidates = iter([fleet.request(which, alg) for which in ("good", "unknown")
                       for alg in ("sha1", "sha512")])
    last: list[bytes] = []

    def shared_again() -> bool:
        der = next(candidates)
        fleet.ask(fleet.ports[0], der)
        last[:] = [der]
        return fleet.stored(der) or wait_stored(fleet, der)

    wait_until(shared_again, 15, "frontend A to write to Redis again", interval=0.5)
    before = fleet.signatures()
    fleet.ask(fleet.ports[1], last[0])
    assert fleet.signatures() == before


def wait_stored(fleet: Fleet, der: bytes) -> bool:
    """True once ``der``'s answer is in Redis, within a short deadline (its write is not awaited)."""
    try:
        wait_until(lambda: fleet.stored(der), 2, "the write")
    except TimeoutError:
        return False
    return True
