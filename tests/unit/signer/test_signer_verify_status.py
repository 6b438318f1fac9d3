"""Sign with [policy] verify_status: the signer's own copy of the CA's index.txt decides. A status it
contradicts is refused with ABORTED before the token is asked for anything, and the audit log gets a
refusal record; a status it agrees with is signed. A ca.d file whose status files are not on the
signer host is not checked (auto), with a warning; verify_status = true makes that a config error."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from shared.config import ConfigError
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.audit import AuditRecord, RefusalRecord, show
from signer.config import load_signer_config
from signer.startup import status_warnings
from tests.unit.signer.signer_fixtures import (
    HOUR,
    Ca,
    FakeToken,
    T,
    expect_error,
    make_ca,
    run_server,
    status,
    token_for,
    write_setup,
)

REVOKED, ISSUED = 0x10, 0x11
INDEX = ("V\t301231235959Z\t\t11\tunknown\t/CN=issued\n"
         "R\t301231235959Z\t260515000000Z,keyCompromise\t10\tunknown\t/CN=revoked\n")


def setup(tmp_path: Path, *, index: bool = True) -> tuple[Path, Ca, FakeToken]:
    ca = make_ca("alpha")
    conf = write_setup(tmp_path, [ca])
    if index:
        (tmp_path / "ca.d" / "index.txt").write_text(INDEX)
    return conf, ca, token_for(ca)


def now_window(cert_id: pb.CertId, st: int = pb.GOOD, **kw: object) -> pb.SingleStatus:
    return status(cert_id, st, this_update=T, next_update=T + HOUR, **kw)


def test_contradicted_status_is_refused_before_the_token_signs(tmp_path: Path) -> None:
    conf, ca, token = setup(tmp_path)
    revoked_at = 1778803200  # 2026-05-15T00:00:00Z, as index.txt says

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        lies = [now_window(ca.cert_id(REVOKED)),  # good for a revoked serial
                now_window(ca.cert_id(REVOKED), pb.REVOKED, revocation_time=revoked_at - 1, revocation_reason=1),
                now_window(ca.cert_id(REVOKED), pb.REVOKED, revocation_time=revoked_at, revocation_reason=4),
                now_window(ca.cert_id(0x99))]  # good for a serial index.txt does not list
        for i, lie in enumerate(lies):
            await expect_error(stub.Sign(pb.SignRequest(request_id=f"lie-{i}", responses=[lie])),
                               grpc.StatusCode.ABORTED, "the signer's own status data disagrees")
        assert token.signed == []  # nothing was signed for any of them
        truths = [now_window(ca.cert_id(REVOKED), pb.REVOKED, revocation_time=revoked_at, revocation_reason=1),
                  now_window(ca.cert_id(ISSUED)), now_window(ca.cert_id(0x99), pb.UNKNOWN)]
        for i, truth in enumerate(truths):
            reply = await stub.Sign(pb.SignRequest(request_id=f"truth-{i}", responses=[truth]))
            assert reply.ocsp_response
        assert len(token.signed) == 3

    run_server(conf, token, scenario)
    records = {r.record.request_id: r.record for r in show(sorted((tmp_path / "audit").glob("*.jsonl")))}
    assert all(isinstance(records[f"lie-{i}"], RefusalRecord) for i in range(4))
    assert "asked good, the data says revoked" in records["lie-0"].reason  # type: ignore[union-attr]
    assert all(isinstance(records[f"truth-{i}"], AuditRecord) for i in range(3))


def test_status_files_missing_on_the_signer_host(tmp_path: Path) -> None:
    conf, _ca, _token = setup(tmp_path, index=False)
    config = load_signer_config(conf)  # auto: not checked, and said so
    assert not config.verifies_status
    (warning,) = status_warnings(config)
    assert "CA 'alpha': statuses not checked" in warning and "index.txt cannot be read" in warning
    (tmp_path / "strict").mkdir()
    conf, _ca, _token = setup(tmp_path / "strict", index=False)
    conf.write_text(conf.read_text().replace("[policy]\n", "[policy]\nverify_status = true\n"))
    with pytest.raises(ConfigError, match="status.path"):
        load_signer_config(conf)


def test_verify_status_false_is_warned_about(tmp_path: Path) -> None:
    conf, _ca, _token = setup(tmp_path)
    conf.write_text(conf.read_text().replace("[policy]\n", "[policy]\nverify_status = false\n"))
    config = load_signer_config(conf)
    assert not config.verifies_status
    (warning,) = status_warnings(config)
    assert "policy.verify_status = false" in warning and "compromised frontend" in warning


def test_metrics_count_refusals_by_ca() -> None:
    from collections import Counter
    from datetime import timedelta
    from types import SimpleNamespace

    from shared.clock import FakeClock
    from signer.metrics import render
    from signer.status_verify import StatusVerifier
    from tests.metrics_text import value
    from tests.unit.signer.signer_fixtures import NOW

    verifier = StatusVerifier(sources={"alpha": object(), "beta": object()},  # type: ignore[dict-item]
                              clock=FakeClock(NOW), max_clock_skew=timedelta(minutes=5), refusals=Counter({"alpha": 3}))
    state = SimpleNamespace(current=(), watchers=0, watchers_refused=0)
    rotator = SimpleNamespace(clock=FakeClock(NOW), expiry_warning=timedelta(days=1), counts={})
    text = render(state, rotator, None, verifier)  # type: ignore[arg-type]
    assert value(text, "ocsp_signer_status_refusals_total", ca="alpha") == 3
    assert value(text, "ocsp_signer_status_refusals_total", ca="beta") == 0
    assert value(text, "ocsp_signer_status_checked", ca="beta") == 1
    assert "ocsp_signer_status" not in render(state, rotator, None)  # type: ignore[arg-type]


def test_a_ca_added_after_start_is_refused_until_a_restart() -> None:
    """A SIGHUP may add a CA; its status data was never loaded, so its statuses cannot be checked:
    refused (fail closed), while a CA that had no status files at start stays unchecked, as warned."""
    import asyncio
    from datetime import timedelta
    from types import SimpleNamespace

    from shared.clock import FakeClock
    from signer.status_verify import StatusVerifier
    from tests.unit.signer.signer_fixtures import NOW

    verifier = StatusVerifier(sources={}, clock=FakeClock(NOW), max_clock_skew=timedelta(minutes=5),
                              unchecked=frozenset({"old"}))

    def job(name: str) -> object:
        return SimpleNamespace(responder=SimpleNamespace(name=name), statuses=())

    assert asyncio.run(verifier.problem(job("old"))) is None  # type: ignore[arg-type]
    problem = asyncio.run(verifier.problem(job("new")))  # type: ignore[arg-type]
    assert problem is not None and "added after the signer started" in problem
    assert verifier.refusals == {"new": 1}


def test_data_installed_by_the_watch_task_during_the_reload_is_judged() -> None:
    """The watch task may hold the source's lock, installing the new file, while Sign asks for a
    reload: that reload then finds nothing new (returns False), yet the data is newer: judge again."""
    import asyncio
    from datetime import timedelta
    from types import SimpleNamespace

    from shared.clock import FakeClock
    from signer.status_verify import StatusVerifier
    from tests.unit.signer.signer_fixtures import NOW

    class Source:
        generation = 1
        verdict = "asked good, the data says revoked"
        previous = replaced_at = None  # never reloaded

        def current(self) -> object:
            return self

        def issued_at(self) -> None:  # index-like data: a disagreement may mean older data
            return None

        async def refresh(self) -> bool:
            self.generation += 1  # the watch task installed the new file meanwhile
            self.verdict = ""
            return False

    source = Source()
    import signer.status_verify as sv

    original = sv.check
    sv.check = lambda snapshot, item, now, skew, previous=None: snapshot.verdict or None  # type: ignore[assignment]
    try:
        verifier = StatusVerifier(sources={"a": source}, clock=FakeClock(NOW),  # type: ignore[dict-item]
                                  max_clock_skew=timedelta(minutes=5))
        job = SimpleNamespace(responder=SimpleNamespace(name="a"), statuses=(SimpleNamespace(),))
        assert asyncio.run(verifier.problem(job)) is None  # type: ignore[arg-type]
    finally:
        sv.check = original
