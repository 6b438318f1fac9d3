"""signer.rotation with a fake token (software keys): the candidate check, RPC rotation (renewal and
re-key, persisted), SIGHUP reloads (all or nothing), Watch states; and the frontend cache's grace."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from frontend.cache import ResponseCache
from shared.answers import AnswerKey
from shared.clock import FakeClock
from shared.ocsp.types import CertId, HashAlgorithm
from signer.admin import AdminService
from signer.config import load_signer_config
from signer.responder_state import ResponderState
from signer.responders import load_responders
from signer.rotation import RotationError, Rotator, candidate_problems, with_key_label
from tests.unit.signer.signer_fixtures import NOW, Ca, make_ca, make_cert, new_key, token_for, write_setup


def spki(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def renewal(ca: Ca, **kw: Any) -> x509.Certificate:
    """A new certificate for the CA's current responder key."""
    kw.setdefault("eku", [ExtendedKeyUsageOID.OCSP_SIGNING])
    return make_cert(f"{ca.name} OCSP 2", ca.responder_key, ca.cert, ca.key, ca=False, **kw)


# -- the candidate check ------------------------------------------------------------------------------


def test_candidate_problems() -> None:
    a, b = make_ca("a"), make_ca("b")
    good = renewal(a)
    key = spki(a.responder_key)
    assert candidate_problems(a.cert, good, key, "k", NOW) == []
    assert candidate_problems(a.cert, a.cert, spki(a.key), "k", NOW) == []  # the CA itself answers
    cases = {
        "is not the token key": candidate_problems(a.cert, good, spki(new_key("p256")), "k", NOW),
        "not issued by the CA": candidate_problems(b.cert, good, key, "k", NOW),
        "has expired": candidate_problems(a.cert, renewal(a, not_after=NOW - timedelta(seconds=1)), key, "k", NOW),
        "not valid yet": candidate_problems(a.cert, good, key, "k", NOW - timedelta(days=31)),
        "lacks id-kp-OCSPSigning": candidate_problems(
            a.cert, renewal(a, eku=[ExtendedKeyUsageOID.SERVER_AUTH]), key, "k", NOW),
        "no extendedKeyUsage": candidate_problems(a.cert, renewal(a, eku=None), key, "k", NOW),
    }
    for expected, problems in cases.items():
        assert len(problems) == 1 and expected in problems[0], (expected, problems)


def test_with_key_label_keeps_the_rest() -> None:
    text = '# the CA\nname = "x"\n[responder]\ncert = "r.pem"  # here\nkey_label = "old" # key\n[status]\n' \
           'key_label = "not this one"\n'
    out = with_key_label(text, 'new "one"')
    assert out == text.replace('key_label = "old"', 'key_label = "new \\"one\\""')
    assert with_key_label('responder.key_label = "old"\n', "new") is None  # dotted keys: not edited


# -- the rotator ------------------------------------------------------------------------------------------


class Env:
    def __init__(self, tmp: Path, *cas: Ca) -> None:
        self.cas = list(cas)
        self.conf = write_setup(tmp, self.cas)
        self.config = load_signer_config(self.conf)
        self.token = token_for(*cas)
        self.clock = FakeClock(NOW)
        self.state = ResponderState(load_responders(self.config, self.token),
                                    max_watchers=self.config.listen.limits.max_watchers)
        self.executor = ThreadPoolExecutor(1)
        self.rotator = Rotator(state=self.state, config=self.config, token=self.token,
                               executor=self.executor, clock=self.clock)

    def responder(self, name: str) -> Any:
        return next(r for r in self.state.current if r.name == name)

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)


def test_rotate_renewal_swaps_and_persists(tmp_path: Path) -> None:
    a, b = make_ca("alpha"), make_ca("beta")
    env = Env(tmp_path, a, b)
    before = env.state.current
    new = renewal(a)

    async def scenario() -> Any:
        states = []
        watch = env.state.watch()
        states.append(await watch.__anext__())
        result = await env.rotator.rotate("alpha", new.public_bytes(serialization.Encoding.PEM))
        states.append(await watch.__anext__())
        env.state.close()
        async for s in watch:
            states.append(s)
        return result, states

    result, states = env.run(scenario())
    r = env.responder("alpha")
    assert r is result.responder and r.cert == der(new) and r.generation == 2
    assert r.key_label == a.key_label
    assert env.responder("beta") is next(x for x in before if x.name == "beta")  # untouched, same generation 1
    assert env.state.current.generation == 2
    # The set a Sign in flight read is unchanged: it finishes with the old certificate.
    assert next(x for x in before if x.name == "alpha").cert == der(a.responder_cert)
    assert (tmp_path / "alpha" / "responder.der").read_bytes() == der(new)  # DER file stays DER
    assert [[(i.name, i.generation) for i in s.issuers] for s in states] == [
        [("alpha", 1), ("beta", 1)], [("alpha", 2), ("beta", 1)]]
    assert env.state.watchers == 0


def test_rotate_rekey_updates_the_ca_file(tmp_path: Path) -> None:
    a = make_ca("alpha")
    env = Env(tmp_path, a)
    key2 = new_key("p384")
    env.token.keys["alpha-responder-2"] = key2
    cert = make_cert("alpha OCSP p384", key2, a.cert, a.key, ca=False, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    result = env.run(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))
    r = env.responder("alpha")
    assert r.key_label == "alpha-responder-2" and r.algorithm.value == "sha384_ecdsa"
    assert any("key_label" in n for n in result.notes)
    # What is on disk loads to the same responder: a restart does not roll back.
    again = load_signer_config(env.conf).responders[0]
    assert again.key_label == "alpha-responder-2" and again.cert == der(cert)


@pytest.mark.parametrize("kind,code,text", [
    ("unknown_ca", grpc.StatusCode.NOT_FOUND, "no CA named"),
    ("garbage", grpc.StatusCode.INVALID_ARGUMENT, "not a PEM or DER certificate"),
    ("no_such_key", grpc.StatusCode.FAILED_PRECONDITION, "no public key labelled"),
    ("wrong_key", grpc.StatusCode.FAILED_PRECONDITION, "is not the token key"),
    ("other_ca", grpc.StatusCode.FAILED_PRECONDITION, "not issued by"),
    ("expired", grpc.StatusCode.FAILED_PRECONDITION, "has expired"),
    ("no_ocsp_signing", grpc.StatusCode.FAILED_PRECONDITION, "id-kp-OCSPSigning"),
    ("same", grpc.StatusCode.FAILED_PRECONDITION, "already uses"),
])
def test_rotate_refused_keeps_the_old_responder(tmp_path: Path, kind: str, code: grpc.StatusCode,
                                                text: str) -> None:
    a, b = make_ca("alpha"), make_ca("beta")
    env = Env(tmp_path, a, b)
    before = env.state.current
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cert = {
        "wrong_key": lambda: make_cert("x", new_key("p256"), a.cert, a.key, ca=False,
                                       eku=[ExtendedKeyUsageOID.OCSP_SIGNING]),
        "other_ca": lambda: make_cert("x", a.responder_key, b.cert, b.key, ca=False,
                                      eku=[ExtendedKeyUsageOID.OCSP_SIGNING]),
        "expired": lambda: renewal(a, not_after=NOW - timedelta(hours=1)),
        "no_ocsp_signing": lambda: renewal(a, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]),
        "same": lambda: a.responder_cert,
    }.get(kind, lambda: renewal(a))()
    data = b"not a certificate" if kind == "garbage" else der(cert)
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("nope" if kind == "unknown_ca" else "alpha", data,
                                   "missing" if kind == "no_such_key" else ""))
    assert info.value.code == code and text in info.value.message, info.value.message
    assert env.state.current is before
    assert {p: p.read_bytes() for p in files} == files
    assert env.rotator.counts[("rotate", "refused")] == 1


def test_reload_swaps_changed_responders_only(tmp_path: Path) -> None:
    a, b = make_ca("alpha"), make_ca("beta")
    env = Env(tmp_path, a, b)
    beta = env.responder("beta")
    assert env.run(env.rotator.reload()) is False  # nothing changed
    new = renewal(a)
    (tmp_path / "alpha" / "responder.der").write_bytes(der(new))
    assert env.run(env.rotator.reload()) is True
    assert env.responder("alpha").cert == der(new) and env.responder("alpha").generation == 2
    assert env.responder("beta") is beta


def test_reload_is_all_or_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = make_ca("alpha"), make_ca("beta")
    env = Env(tmp_path, a, b)
    before = env.state.current
    (tmp_path / "alpha" / "responder.der").write_bytes(der(renewal(a)))  # good
    (tmp_path / "beta" / "responder.der").write_bytes(der(renewal(b, not_after=NOW - timedelta(days=1))))  # bad
    assert env.run(env.rotator.reload()) is False
    assert env.state.current is before
    assert "has expired" in caplog.text and "reload refused" in caplog.text
    (tmp_path / "beta" / "responder.der").write_bytes(b"garbage")  # a config error: refused as a whole
    assert env.run(env.rotator.reload()) is False and env.state.current is before


def test_expiry_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = Env(tmp_path, make_ca("alpha", responder_not_after=NOW + timedelta(days=10)), make_ca("beta"))
    assert [r.name for r in env.rotator.check_expiry()] == ["alpha"]
    assert "expires in 10.0 days" in caplog.text
    env.clock.advance(timedelta(days=11))
    assert [r.name for r in env.rotator.check_expiry()] == ["alpha"]
    assert "expired at" in caplog.text


def test_admin_needs_the_socket_or_an_allowed_identity(tmp_path: Path) -> None:
    env = Env(tmp_path, make_ca("alpha"))
    ctx: Any = None
    assert AdminService(env.rotator, trusted=True)._who(ctx) == "admin socket"
    assert AdminService(env.rotator, trusted=False, identity=lambda c: ("cn:ocsp-admin",))._who(ctx) is None
    frontend = AdminService(env.rotator, trusted=False, allowed_clients=["cn:ocsp-admin"],
                            identity=lambda c: ("cn:ocsp-frontend", "spki:00"))
    assert frontend._who(ctx) is None
    admin = AdminService(env.rotator, trusted=False, allowed_clients=["cn:ocsp-admin"],
                         identity=lambda c: ("cn:ocsp-admin",))
    assert admin._who(ctx) == "client cn:ocsp-admin"


# -- the frontend cache's side -----------------------------------------------------------------------------


def answer_key(name: bytes) -> AnswerKey:
    return AnswerKey("a", (CertId(HashAlgorithm.SHA1, b"\x01" * 20, b"\x02" * 20, name),))


def put(c: ResponseCache, key: bytes, gen: int, now: float = 1000) -> Any:
    return c.put(answer_key(key), b"der", b"", this_update=1000, next_update=9000, generation=gen, now=now)


def test_cache_retires_old_responders_after_the_grace() -> None:
    c = ResponseCache(10, max_age=10**6, rotation_grace=2.0)
    put(c, b"k1", 1)
    put(c, b"k2", 1)
    c.set_generation("a", 2, now=1000)  # Watch: the responder was replaced
    assert c.get(answer_key(b"k1"), now=1001.9) is not None  # still served within the grace
    assert put(c, b"k3", 1, now=1001) is None  # signed by the old one before the switch: not cached
    put(c, b"k2", 2, now=1001)  # re-signed by the new responder
    assert c.get(answer_key(b"k1"), now=1002) is None and c.get(answer_key(b"k2"), now=1002) is not None
    c.note_generation("a", 1, now=1003)  # a late reply of the old responder changes nothing
    assert c.generation("a") == 2 and c.get(answer_key(b"k2"), now=1003) is not None
    c.set_generation("a", 1, now=1004)  # a restarted signer counts from 1 again: authoritative
    assert c.get(answer_key(b"k2"), now=1006) is None


def test_cache_grace_zero_is_immediate() -> None:
    c = ResponseCache(10, max_age=10**6, rotation_grace=0)
    put(c, b"k1", 1)
    c.note_generation("a", 2, now=1000)
    assert c.get(answer_key(b"k1"), now=1000) is None


# -- persisting: never half done ---------------------------------------------------------------------------


def rekey_candidate(env: Env, a: Ca, label: str = "alpha-responder-2") -> x509.Certificate:
    key2 = new_key("p384")
    env.token.keys[label] = key2
    return make_cert("alpha OCSP p384", key2, a.cert, a.key, ca=False, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])


def test_rekey_ca_file_write_failure_restores_the_certificate(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from signer import rotation

    a = make_ca("alpha")
    env = Env(tmp_path, a)
    cert = rekey_candidate(env, a)
    before = env.state.current
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = rotation.write_atomic

    def failing(path: Path, data: bytes, mode: int | None = None, **kw: Any) -> None:
        if str(path).endswith(".toml"):
            raise PermissionError(13, "Permission denied", str(path))
        real(path, data, mode)

    monkeypatch.setattr(rotation, "write_atomic", failing)
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "old certificate was restored" in info.value.message, info.value.message
    assert env.state.current is before
    assert {p: p.read_bytes() for p in files} == files  # the certificate file holds the old bytes again
    load_responders(load_signer_config(env.conf), env.token)  # a restart still works


def test_unwritable_ca_dir_is_refused_before_anything_is_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from signer import rotation

    a = make_ca("alpha")
    env = Env(tmp_path, a)
    cert = rekey_candidate(env, a)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    writes: list[Path] = []
    monkeypatch.setattr(rotation, "write_atomic", lambda path, data, mode=None, **kw: writes.append(path))
    ca_d = tmp_path / "ca.d"
    real_access = os.access
    monkeypatch.setattr(rotation.os, "access", lambda p, m: Path(p) != ca_d and real_access(p, m))
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))
    assert "is not writable" in info.value.message and str(ca_d) in info.value.message
    assert writes == [] and {p: p.read_bytes() for p in files} == files
    assert env.responder("alpha").key_label == a.key_label


@pytest.mark.parametrize("which,mode", [("ca.d", 0o775), ("ca.d", 0o757), ("alpha", 0o777), ("alpha", 0o1777)])
def test_group_or_world_writable_target_dir_is_refused(tmp_path: Path, which: str, mode: int) -> None:
    """Someone else who may write there could swap our file or plant a symlink: refused before any write."""
    a = make_ca("alpha")
    env = Env(tmp_path, a)
    cert = rekey_candidate(env, a)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    (tmp_path / which).chmod(mode)
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "writable by group or others" in info.value.message and f"(mode {mode:04o})" in info.value.message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert env.responder("alpha").key_label == a.key_label
    (tmp_path / which).chmod(0o755)
    env.run(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))  # and works once fixed
    assert env.responder("alpha").key_label == "alpha-responder-2"


def test_write_atomic_chmods_the_descriptor_not_the_name(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary name swapped for a symlink between write and chmod cannot get another file chmod'ed."""
    from signer import files

    victim = tmp_path / "victim"
    victim.write_text("x")
    victim.chmod(0o600)
    monkeypatch.setattr(files.os, "chmod", lambda *a, **k: pytest.fail("chmod by path"))
    files.write_atomic(tmp_path / "out.pem", b"data", 0o640, private_dir=True)
    assert (tmp_path / "out.pem").read_bytes() == b"data"
    assert (tmp_path / "out.pem").stat().st_mode & 0o777 == 0o640
    assert victim.stat().st_mode & 0o777 == 0o600


def test_cancelled_rotate_still_swaps_and_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from signer import rotation

    a = make_ca("alpha")
    env = Env(tmp_path, a)
    cert = rekey_candidate(env, a)
    real = rotation.write_atomic
    writing, release = threading.Event(), threading.Event()

    def slow(path: Path, data: bytes, mode: int | None = None, **kw: Any) -> None:
        writing.set()  # a slow disk: the RPC is cancelled while the files are being written
        release.wait(10)
        real(path, data, mode, **kw)

    monkeypatch.setattr(rotation, "write_atomic", slow)

    async def scenario() -> None:
        call = asyncio.ensure_future(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))
        assert await asyncio.get_running_loop().run_in_executor(None, writing.wait, 10)
        call.cancel()  # the caller goes away mid-persist
        with pytest.raises(asyncio.CancelledError):
            await call
        # The persist is still running: a concurrent rotation must wait for it, not interleave.
        assert env.rotator._lock.locked()
        release.set()
        await env.rotator.drain()
        assert not env.rotator._lock.locked()

    env.run(scenario())
    assert env.responder("alpha").key_label == "alpha-responder-2"  # swapped, like the files
    on_disk = load_signer_config(env.conf).responders[0]
    assert on_disk.key_label == "alpha-responder-2" and on_disk.cert == der(cert)
    assert env.rotator.counts[("rotate", "ok")] == 1


def test_rotation_refuses_a_private_key_that_is_not_the_pair(tmp_path: Path) -> None:
    from tests.unit.signer.signer_fixtures import SplitKeyToken

    a = make_ca("alpha")
    env = Env(tmp_path, a)
    cert = rekey_candidate(env, a)
    env.token = SplitKeyToken(env.token.keys, private={"alpha-responder-2": new_key("p384")})
    env.rotator.token = env.token
    before = env.state.current
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(cert), "alpha-responder-2"))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "not the pair" in info.value.message
    assert env.state.current is before and {p: p.read_bytes() for p in files} == files


def test_rotation_refuses_the_audit_key(tmp_path: Path) -> None:
    from tests.unit.signer.signer_fixtures import AUDIT_LABEL

    a = make_ca("alpha")
    env = Env(tmp_path, a)
    cert = make_cert("alpha OCSP audit", env.token.keys[AUDIT_LABEL], a.cert, a.key, ca=False,
                     eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", der(cert), AUDIT_LABEL))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "audit key" in info.value.message
    assert env.responder("alpha").key_label == a.key_label


def test_unsupported_certificate_is_invalid_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm

    from signer import rotation

    env = Env(tmp_path, make_ca("alpha"))

    def unsupported(data: bytes) -> x509.Certificate:
        raise UnsupportedAlgorithm("unknown public key algorithm")

    monkeypatch.setattr(rotation, "parse_certificate", unsupported)
    with pytest.raises(RotationError) as info:
        env.run(env.rotator.rotate("alpha", b"0\x00"))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "UnsupportedAlgorithm" in info.value.message


# -- each candidate check runs once ------------------------------------------------------------------------


def _count_parses(monkeypatch: pytest.MonkeyPatch, *candidates: x509.Certificate) -> dict[bytes, int]:
    """How often cryptography parses each candidate certificate (PEM or DER) from now on."""
    counts = {der(c): 0 for c in candidates}
    pems = {c.public_bytes(serialization.Encoding.PEM).strip(): der(c) for c in candidates}
    real_der, real_pem = x509.load_der_x509_certificate, x509.load_pem_x509_certificates

    def load_der(data: bytes, *args: Any) -> x509.Certificate:
        if bytes(data) in counts:
            counts[bytes(data)] += 1
        return real_der(data, *args)

    def load_pem(data: bytes) -> list[x509.Certificate]:
        if bytes(data).strip() in pems:
            counts[pems[bytes(data).strip()]] += 1
        return real_pem(data)

    monkeypatch.setattr(x509, "load_der_x509_certificate", load_der)
    monkeypatch.setattr(x509, "load_pem_x509_certificates", load_pem)
    return counts


@pytest.mark.parametrize("form", ["pem", "der"])
def test_rotation_parses_the_candidate_and_reads_the_token_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     form: str) -> None:
    a = make_ca("alpha")
    env = Env(tmp_path, a)
    new = renewal(a)
    env.token.public_key_calls = 0
    parses = _count_parses(monkeypatch, new)
    data = new.public_bytes(serialization.Encoding.PEM) if form == "pem" else der(new)
    env.run(env.rotator.rotate("alpha", data))
    assert env.responder("alpha").cert == der(new)  # checked, persisted and swapped
    assert (tmp_path / "alpha" / "responder.der").read_bytes() == der(new)
    assert env.token.public_key_calls == 1
    assert parses == {der(new): 1}


def test_reload_reads_each_changed_responders_token_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cas = [make_ca("alpha"), make_ca("beta"), make_ca("gamma")]
    env = Env(tmp_path, *cas)
    news = [renewal(ca) for ca in cas[:2]]  # two of the three change
    for ca, new in zip(cas, news):
        (tmp_path / ca.name / "responder.der").write_bytes(der(new))
    env.token.public_key_calls = 0
    parses = _count_parses(monkeypatch, *news)
    reader = env.rotator.reader

    def read_config(path: Path) -> Any:  # reading the config parses every certificate; not counted here
        config = reader(path)
        for d in parses:
            parses[d] = 0
        return config

    env.rotator.reader = read_config
    assert env.run(env.rotator.reload()) is True
    assert [env.responder(ca.name).generation for ca in cas] == [2, 2, 1]
    assert env.token.public_key_calls == len(news)
    assert parses == {der(new): 1 for new in news}
