"""frontend.sign_limit (and the [signer] keys that bound the signing path): past signer.max_in_flight signatures in flight, tryLater at once (no waiting
out the signer's timeout), counted and logged rate-limited; the slots come back when calls end,
whether they succeed or fail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from frontend.config import load_frontend_config
from frontend.sign_limit import BoundedSigner
from shared.config import ConfigError
from shared.ocsp.errors import InternalError, TryLater


class SlowSigner:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def sign(self, statuses: object, nonce: object) -> str:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise InternalError("boom")
        return "signed"


def test_past_the_bound_is_try_later_at_once(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        inner = SlowSigner()
        bounded = BoundedSigner(inner, 2)
        first = [asyncio.create_task(bounded.sign((), None)) for _ in range(2)]
        await asyncio.sleep(0)  # let both start (no timing: they block on the event)
        assert bounded.in_flight == 2
        for _ in range(3):
            with pytest.raises(TryLater, match="max_in_flight"):
                await asyncio.wait_for(bounded.sign((), None), 1)  # refused without waiting
        assert (inner.calls, bounded.refused) == (2, 3)
        inner.release.set()
        assert await asyncio.gather(*first) == ["signed", "signed"]
        assert bounded.in_flight == 0
        assert await bounded.sign((), None) == "signed"  # slots are back
        inner.fail = True
        with pytest.raises(InternalError):
            await bounded.sign((), None)
        assert bounded.in_flight == 0  # a failed call gives its slot back too

    with caplog.at_level("WARNING", logger="frontend.server"):
        asyncio.run(go())
    lines = [r for r in caplog.records if "max_in_flight" in r.getMessage()]
    assert len(lines) == 1  # three refusals, one line


def test_config_key(tmp_path: Path) -> None:
    from tests.unit.frontend.frontend_pki import TestCA

    ca = TestCA("limit CA")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "index.txt").write_text("V\t301231235959Z\t\t10\tunknown\t/CN=x\n")
    (tmp_path / "ca.d").mkdir()
    (tmp_path / "ca.d" / "a.toml").write_text('name = "a"\nca_cert = "../ca.pem"\n[status]\nsource = "index"\n'
                                              'path = "../index.txt"\n')
    conf = tmp_path / "frontend.toml"
    base = 'ca_dir = "ca.d"\n[listen]\nport = 8080\n[signer]\naddress = "unix:/tmp/x.sock"\n'
    conf.write_text(base)
    assert load_frontend_config(conf).signer.max_in_flight == 256
    conf.write_text(base + "max_in_flight = 8\n")
    assert load_frontend_config(conf).signer.max_in_flight == 8
    conf.write_text(base + "max_in_flight = 0\n")
    with pytest.raises(ConfigError, match="max_in_flight"):
        load_frontend_config(conf)
    # The batch bound of [signer] (frontend.signer_client): the client's default, 1..1024.
    from frontend.signer_client import DEFAULT_MAX_BATCH

    assert load_frontend_config(_write(conf, base)).signer.max_batch == DEFAULT_MAX_BATCH
    assert load_frontend_config(_write(conf, base + "max_batch = 1\n")).signer.max_batch == 1
    with pytest.raises(ConfigError, match="max_batch"):
        load_frontend_config(_write(conf, base + "max_batch = 1025\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
