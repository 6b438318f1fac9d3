"""The frontend's gRPC channel to the signer over time, with real processes (SoftHSM token, ocsp-signer,
ocsp-frontend) whose keepalive intervals are shortened through their config so that minutes run in
seconds.

- Aligned settings (the frontend pings less often than the signer's minimum): a channel held idle for
  several ping intervals, then a request that must be signed, without the signer ever dropping it.
- Misaligned settings (the issue as filed, scaled down: frontend 30 s vs signer 5 min became 1 s vs
  10 s): the signer drops the channel (GOAWAY too_many_pings), the frontend warned at start, and the
  next requests are still signed.
- A connection that goes away while a Sign is in flight (the signer paused, the keepalive ping goes
  unanswered, the frontend closes the connection): the Sign is sent again over a new connection and
  the client gets a signed answer, not tryLater.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, wait_until
from tests.integration.ocsp_client import load_cert, verify_basic
from tests.integration.private_stack import ask, frontend_process, signer_process

pytestmark = pytest.mark.integration

# What the frontend's calls on a channel dropped with GOAWAY too_many_pings fail with (the Watch stream's
# log line carries it).
GOAWAY = "UNAVAILABLE: Too many pings"
WATCHING = "watching responder changes on the signer at"
RETRY = "the connection went away during a Sign"


def text(p: Process) -> str:
    return p.log.read_text(errors="replace")


def happens_within(predicate: Callable[[], bool], seconds: float) -> bool:
    """Whether ``predicate`` comes true within ``seconds`` (for what must NOT happen in a time span)."""
    try:
        wait_until(predicate, seconds, "it", interval=0.2)
    except TimeoutError:
        return False
    return True


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in reversed(started):
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGCONT)  # a paused signer must be able to stop
        p.stop()


def start(demo: Demo, tmp_path: Path, processes: list[Process], *, min_ping: str,
          signer_extra: str, sign_timeout: str | None = None) -> tuple[Process, Process, int]:
    signer, address = signer_process(demo, tmp_path, listen_extra=f'min_ping_interval = "{min_ping}"\n')
    processes.append(signer)
    signer.start()
    # health_interval: no Health traffic, which would reset the signer's ping strikes and hide a
    # misalignment; the idle Watch stream is all the channel carries.
    frontend, port = frontend_process(demo, tmp_path, address,
                                      signer_extra=signer_extra + 'health_interval = "1h"\n',
                                      sign_timeout=sign_timeout)
    processes.append(frontend)
    frontend.start()
    wait_until(lambda: WATCHING in text(frontend), 15, "the frontend to open its Watch stream")
    return signer, frontend, port


def assert_signed(demo: Demo, port: int) -> None:
    resp = ask(demo, port)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    verify_basic(resp, load_cert(demo.path("rsa-ca", "ca.pem")))


def test_idle_channel_is_kept_when_keepalive_respects_the_signer(demo: Demo, tmp_path: Path,
                                                                 processes: list[Process]) -> None:
    _, frontend, port = start(demo, tmp_path, processes, min_ping="1s", signer_extra='keepalive = "2s"\n')
    # Six ping intervals idle: a signer that counted these pings as abuse would have dropped the channel
    # after the third (max_ping_strikes 2).
    assert not happens_within(lambda: GOAWAY in text(frontend) or "interrupted" in text(frontend), 12), \
        text(frontend)
    assert_signed(demo, port)
    log = text(frontend)
    assert log.count(WATCHING) == 1  # the same Watch stream all along: the connection was never replaced
    assert RETRY not in log


def test_keepalive_faster_than_the_signer_allows(demo: Demo, tmp_path: Path, processes: list[Process]) -> None:
    """The issue, scaled down: the frontend pings every second, the signer allows one ping per 10 s."""
    _, frontend, port = start(demo, tmp_path, processes, min_ping="10s", signer_extra='keepalive = "1s"\n')
    assert "signer.keepalive (1s) is shorter than the signer's default listen.min_ping_interval" in text(frontend)
    wait_until(lambda: GOAWAY in text(frontend), 20, "the signer to drop the channel (too_many_pings)")
    wait_until(lambda: text(frontend).count(WATCHING) >= 2, 15, "the Watch stream to come back")
    assert_signed(demo, port)


def test_sign_in_flight_on_a_lost_connection_is_sent_again(demo: Demo, tmp_path: Path,
                                                          processes: list[Process]) -> None:
    signer, frontend, port = start(demo, tmp_path, processes, min_ping="1s",
                                   signer_extra='keepalive = "2s"\nkeepalive_timeout = "1s"\n', sign_timeout="20s")
    assert_signed(demo, port)
    signer.signal(signal.SIGSTOP)  # the signer stops answering, pings included
    answers: list[ocsp.OCSPResponse | BaseException] = []

    def client() -> None:
        try:
            answers.append(ask(demo, port))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            answers.append(e)

    t = threading.Thread(target=client)
    t.start()
    try:
        # The keepalive ping goes unanswered, the frontend closes the connection under the Sign and
        # sends the Sign again over a new one, which waits for the signer to come back.
        wait_until(lambda: RETRY in text(frontend) or not t.is_alive(), 20,
                   "the frontend to send the Sign again (or to answer)")
    finally:
        signer.signal(signal.SIGCONT)
        t.join(30)
    assert len(answers) == 1, text(frontend)
    resp = answers[0]
    assert isinstance(resp, ocsp.OCSPResponse), resp
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, text(frontend)
    verify_basic(resp, load_cert(demo.path("rsa-ca", "ca.pem")))
    assert "answering tryLater" not in text(frontend)
    assert_signed(demo, port)  # and the channel works on
