"""Every input `make fuzz` saved (tests/vectors/fuzz/<target>/*) and every seed of its targets, through
the same checks the fuzzer applies (fuzz.checks, fuzz.http_harness): a crash, once committed, is a
regression test. Needs no atheris."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fuzz import checks
from fuzz.http_harness import Harness, responses
from fuzz.seeds import SEEDS, post

SAVED = Path(__file__).resolve().parent.parent / "vectors" / "fuzz"
TARGETS = tuple(SEEDS)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _check(target: str, harness: Harness) -> Callable[[bytes], None]:
    return harness.check if target == "http" else getattr(checks, f"check_{target}")


def _saved() -> list[Path]:
    return sorted(p for t in TARGETS for p in (SAVED / t).glob("*") if p.is_file()) if SAVED.is_dir() else []


@pytest.mark.parametrize("path", _saved(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_vector(path: Path, harness: Harness) -> None:
    _check(path.parent.name, harness)(path.read_bytes())


def test_saved_vectors_are_in_target_directories() -> None:
    if SAVED.is_dir():
        assert {p.name for p in SAVED.iterdir() if p.is_dir()} <= set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_seeds(target: str, harness: Harness) -> None:
    seeds = SEEDS[target]()
    assert len(seeds) >= 10
    for data in seeds:
        _check(target, harness)(data)


def test_the_http_harness_sees_answers_and_faults(harness: Harness) -> None:
    """The harness reaches the OCSP pipeline (its good request is answered 200 with the canned
    signer's bytes) and catches what it must: a 500, a garbled output."""
    from fuzz.seeds import _fuzz_ca_requests

    good = _fuzz_ca_requests()[0]
    transport, _ = harness.loop.run_until_complete(harness._connection(b"\x00" + post(good) + post(good)))
    assert responses(bytes(transport.out)) == [200, 200]
    assert bytes(transport.out).endswith(b"\x30\x03\x0a\x01\x00")
    with pytest.raises(checks.Finding):
        responses(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(checks.Finding):
        responses(b"garbage")


def test_the_checks_catch_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberate break (the fast path answering for a request the general decoder refuses) is a
    finding: the differential check can fail."""
    from shared.ocsp.types import CertId, HashAlgorithm, ParsedRequest

    fake = ParsedRequest((CertId(HashAlgorithm.SHA1, b"\x00" * 20, b"\x00" * 20, b"\x01"),), None)
    monkeypatch.setattr(checks, "decode_request_fast", lambda der, max_cert_ids: fake)
    with pytest.raises(checks.Finding):
        checks.check_decode(b"\x30\x00")
