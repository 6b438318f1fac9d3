"""Connection caps and per-client bounds (frontend/http_conn.py, frontend/http_app.py): 503 past
max_connections and max_connections_per_client, refusals bounded too, and in-flight work per
client address."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from frontend.config import ListenConfig
from tests.integration.conftest import wait_until
from tests.unit.frontend.frontend_server_env import Client, Env, open_count, post_bytes


def test_connection_past_max_connections_gets_503(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, max_connections=3, max_connections_per_client=0))
    clients: list[Client] = []
    try:
        clients = [Client(e) for _ in range(3)]
        assert all(c.served() for c in clients)
        extra = Client(e, "127.0.0.9")  # another address: the global cap applies to everyone
        extra.refused()
        extra.close()
        assert all(c.served() for c in clients), "the admitted connections must keep working"
        clients.pop().close()
        wait_until(lambda: open_count(e) == 2, 5, "the server to see the close")
        clients.append(Client(e))
        assert clients[-1].served()
    finally:
        for c in clients:
            c.close()
        e.close()


def test_connections_per_client_address(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, max_connections=10, max_connections_per_client=2))
    clients: list[Client] = []
    try:
        clients = [Client(e), Client(e)]
        assert all(c.served() for c in clients)
        extra = Client(e)
        extra.refused()
        extra.close()
        clients.append(Client(e, "127.0.0.2"))  # another client is not held back by the first's count
        assert all(c.served() for c in clients)
    finally:
        for c in clients:
            c.close()
        e.close()


def test_refusals_are_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused connections linger to deliver their 503; past MAX_REFUSING of them at once, the next
    ones are reset at once, so a connection flood costs nothing that grows."""
    from frontend import http_conn

    monkeypatch.setattr(http_conn, "MAX_REFUSING", 2)
    # They must still linger when the test reads their 503, however slow this machine is: past LINGER
    # the server resets a lingering connection, and the reset destroys the unread answer.
    monkeypatch.setattr(http_conn, "LINGER", 60.0)
    e = Env(tmp_path, ListenConfig(port=0, max_connections=1))
    clients: list[Client] = []
    try:
        clients = [Client(e)]
        assert clients[0].served()
        lingering = [Client(e) for _ in range(2)]
        clients += lingering
        for c in lingering:  # read the 503 but do not close: they keep lingering on the server
            assert c.answer()[0].startswith(b"HTTP/1.1 503")
        try:  # reset at once: it may even arrive before the client's connect() has returned
            flood = Client(e)
            clients.append(flood)
            assert flood.sock.recv(100) == b""
        except ConnectionResetError:
            pass
        assert clients[0].served()
    finally:
        for c in clients:
            c.close()
        e.close()


def test_inflight_work_is_bounded_per_client_address(tmp_path: Path) -> None:
    e = Env(tmp_path, ListenConfig(port=0, max_inflight_per_client=3))
    e.signer.delay = 0.05

    def pipeline(sources: list[str]) -> None:
        clients = [Client(e, src) for src in sources]
        try:
            for i, c in enumerate(clients):
                c.sock.sendall(b"".join(post_bytes(e.request(e.a, 0x100, nonce=b"n%03d%03d" % (i, j)))
                                        for j in range(8)))
            for c in clients:
                for _ in range(8):
                    line, _, body = c.answer()
                    assert line.startswith(b"HTTP/1.1 200") and json.loads(body)["nonce"]
        finally:
            for c in clients:
                c.close()

    try:
        pipeline(["127.0.0.1"] * 3)  # 24 misses from one address over 3 connections
        assert len(e.signer.calls) == 24
        assert 1 < e.signer.max_active <= 3, e.signer.max_active
        e.signer.max_active = 0
        pipeline(["127.0.0.1", "127.0.0.2"])  # two addresses: each has its own 3 slots
        assert 3 < e.signer.max_active <= 6, e.signer.max_active
    finally:
        e.close()
