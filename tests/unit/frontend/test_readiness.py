"""frontend.readiness: the verdict /-/ready answers with, from fake signer answers and real status
sources on a FakeClock; and the endpoint in the real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from frontend.config import ListenConfig
from frontend.readiness import STARTING, Readiness, judge
from frontend.signer_client import SignerHealth
from frontend.status.crl import CrlSource
from frontend.status.index_txt import IndexTxtSource
from shared.clock import FakeClock
from tests.unit.frontend.frontend_pki import NOW, TestCA, write
from tests.unit.frontend.frontend_server_env import Env

UP = SignerHealth("unix:/run/a.sock", True, "token 'ocsp' logged in")
DOWN = SignerHealth("b.internal:50051", False, "UNAVAILABLE: failed to connect to all addresses")
DOWN_REASON = "signer b.internal:50051: UNAVAILABLE: failed to connect to all addresses"
AUDIT = SignerHealth("unix:/run/a.sock", False, "audit log not writable: disk full\n(errno 28)")


class Signers:
    """Stands in for SignerClient.health: the answers a test sets, and the deadlines it was given."""

    def __init__(self, *answers: SignerHealth) -> None:
        self.answers = list(answers)
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> Sequence[SignerHealth]:
        self.timeouts.append(timeout)
        return list(self.answers)


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock(NOW + timedelta(minutes=1))
        self.ca = TestCA("Ready CA")
        self.crl_path = write(tmp / "crl.der", self.ca.crl([], next_update=NOW + timedelta(hours=1)))
        self.crl = CrlSource("crl-ca", self.crl_path, self.ca.der, unissued="unknown")
        self.crl.load_now()
        self.index = IndexTxtSource("index-ca", write(tmp / "index.txt", "V\t300101000000Z\t\t1001\tunknown\t/CN=leaf\n"), timedelta(hours=1))
        self.index.load_now()
        self.signers = Signers(UP)
        self.readiness = Readiness(self.signers, [self.index, self.crl], interval=2.0, timeout=5.0,
                                   clock=self.clock)

    def check(self) -> tuple[int, str]:
        asyncio.run(self.readiness.check())
        return self.readiness.answer()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_not_ready_until_the_signer_was_asked(world: World) -> None:
    assert world.readiness.answer() == (503, STARTING.reason + "\n")
    assert world.check() == (200, "ready\n")
    assert world.signers.timeouts == [1.0]  # a short deadline: never more than a second


def test_signer_not_answering_or_not_serving(world: World) -> None:
    world.signers.answers = [DOWN]
    assert world.check() == (503, f"not ready: {DOWN_REASON}\n")
    world.signers.answers = [AUDIT]  # answers, but would refuse to sign; one line
    one_line = "not ready: signer unix:/run/a.sock: audit log not writable: disk full (errno 28)\n"
    assert world.check() == (503, one_line)
    world.signers.answers = [UP]
    assert world.check()[0] == 200


def test_several_signers_one_is_enough(world: World) -> None:
    world.signers.answers = [UP, DOWN]
    assert world.check() == (200, f"ready ({DOWN_REASON})\n")
    world.signers.answers = [AUDIT, DOWN]
    status, text = world.check()
    assert status == 503 and text.startswith("not ready: no signer answers: signer unix:/run/a.sock: audit")
    assert "signer b.internal:50051: UNAVAILABLE" in text and text.count("\n") == 1


def test_crl_past_next_update(world: World) -> None:
    assert world.check()[0] == 200
    world.clock.advance(timedelta(hours=1))  # nextUpdate reached
    status, text = world.check()
    assert status == 503
    assert text.startswith("not ready: CA crl-ca: status data expired at 2026-03-01T13:00:00Z")
    world.signers.answers = [DOWN]  # both reasons, signer first
    assert world.check()[1].startswith(f"not ready: {DOWN_REASON}; CA crl-ca: status data expired")


def test_a_reload_is_judged_at_once(world: World) -> None:
    world.clock.advance(timedelta(hours=1))
    assert world.check()[0] == 503
    write(world.crl_path, world.ca.crl([(5, NOW, x509.ReasonFlags.superseded, None)],
                                       this_update=NOW + timedelta(minutes=59), next_update=NOW + timedelta(days=1)))

    async def reload() -> None:
        assert await world.crl.refresh(force=True)

    asyncio.run(reload())
    assert world.readiness.answer() == (200, "ready\n")  # no signer check in between


def test_data_not_loaded(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    never = IndexTxtSource("empty-ca", tmp_path / "missing.txt", timedelta(hours=1))  # never loaded
    r = Readiness(Signers(UP), [never], interval=2.0, timeout=0.5, clock=clock)
    asyncio.run(r.check())
    assert r.answer() == (503, "not ready: CA empty-ca: no status data loaded\n")


def test_judge_keeps_one_line() -> None:
    long = SignerHealth("a:1", False, "x" * 1000)
    verdict = judge([long], [])
    assert not verdict.ready and len(verdict.reason) < 300 and verdict.reason.endswith("...")


def test_background_checks(world: World) -> None:
    """start() checks at once and then every interval, until stop()."""
    world.readiness.interval = 0.01

    async def go() -> None:
        world.readiness.start()
        while world.readiness.checks < 3:
            await asyncio.sleep(0.01)
        await world.readiness.stop()

    asyncio.run(asyncio.wait_for(go(), 10))
    assert world.readiness.answer()[0] == 200


# -- the endpoint -------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, ListenConfig(port=0))
    yield e
    e.close()


def test_ready_endpoint(env: Env, tmp_path: Path) -> None:
    assert env.get("/-/ready")[0] == 404  # a server without a readiness monitor has no such endpoint
    w = World(tmp_path)
    env.server.readiness = w.readiness
    code, headers, body = env.get("/-/ready")
    assert (code, body) == (503, STARTING.reason.encode() + b"\n")
    assert "no-store" in headers["cache-control"]
    w.check()
    code, headers, body = env.get("/-/ready?probe=lb")
    assert (code, body) == (200, b"ready\n") and "no-store" in headers["cache-control"]
    assert env.get("/-/ready", "HEAD")[2] == b""
    w.signers.answers = [DOWN]
    w.check()
    code, _, body = env.get("/-/ready")
    assert code == 503 and b"b.internal:50051" in body
    assert env.get("/-/health")[:3:2] == (200, b"ok\n")  # liveness does not care
