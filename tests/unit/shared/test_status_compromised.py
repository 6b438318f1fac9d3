"""The [status] keys of a fetched CRL (url, state_dir, refresh, timeout, max_size, ca_bundle) and of a
compromised CA (compromised, compromised_at): parsed, defaulted and refused with the key named; and the
compromised source: every serial revoked with reason cACompromise, agreed to by the signer's check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.config import ConfigError, Section
from shared.ocsp.types import CertId, CertStatus, HashAlgorithm, Revocation, RevocationReason, SingleStatus
from shared.status.base import StatusDataError
from shared.status.compromised import CompromisedSource
from shared.status.config import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_MAX_SIZE,
    DEFAULT_REFRESH,
    FetchConfig,
    make_source,
    missing_files,
    read_status_config,
)
from shared.status.url_source import UrlCrlSource
from signer.status_check import check
from tests.unit.frontend.frontend_pki import NOW, TestCA


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Compromised CA")


def table(tmp_path: Path, text: str, *, must_exist: bool = True):
    f = tmp_path / "ca.toml"
    f.write_text("[status]\n" + text)
    sec = Section.load(f).section("status")
    cfg = read_status_config(sec, files_must_exist=must_exist)
    sec.finish()
    return cfg


URL = 'source = "crl"\nurl = "https://ca.example/ca.crl"\nstate_dir = "state"\nunissued = "unknown"\n'


def test_url_defaults(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    cfg = table(tmp_path, URL)
    assert cfg.path is None
    assert cfg.fetch == FetchConfig(url="https://ca.example/ca.crl", state_dir=tmp_path / "state")
    assert cfg.fetch.refresh == DEFAULT_REFRESH == timedelta(minutes=15)
    assert cfg.fetch.timeout == DEFAULT_FETCH_TIMEOUT == timedelta(seconds=10)
    assert cfg.fetch.max_size == DEFAULT_MAX_SIZE == 64 << 20
    assert missing_files(cfg) == []
    src = make_source("x", TestCA("x").der, cfg)
    assert isinstance(src, UrlCrlSource) and src.kept == tmp_path / "state" / "x.crl"
    assert src.config_key == "status.url"


def test_url_keys(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "bundle.pem").write_text("x")
    cfg = table(tmp_path, URL.replace("https://ca.example/ca.crl", "cdp")
                + 'refresh = "30s"\ntimeout = "2s"\nmax_size = 4096\nca_bundle = "bundle.pem"\n')
    assert cfg.fetch == FetchConfig(url="cdp", state_dir=tmp_path / "state", refresh=timedelta(seconds=30),
                                    timeout=timedelta(seconds=2), max_size=4096, ca_bundle=tmp_path / "bundle.pem")


@pytest.mark.parametrize("text,key,message", [
    (URL + 'path = "crl.pem"\n', "status.path", "either path (a CRL file) or url (fetched), not both"),
    (URL.replace('"crl"', '"index"').replace('unissued = "unknown"\n', ""), "status.url", 'only for source = "crl"'),
    (URL.replace("https://ca.example/ca.crl", "ftp://ca.example/ca.crl"), "status.url", "http:// or https://"),
    (URL.replace('state_dir = "state"\n', ""), "status.state_dir", "is required with status.url"),
    (URL.replace("https://ca.example", "https://me:secret@ca.example"), "status.url", "must not carry credentials"),
    (URL.replace('"state"', '"nope"'), "status.state_dir", "is not a directory"),
    (URL + "max_size = 10\n", "status.max_size", "at least 1024"),
    (URL + 'timeout = "1h"\n', "status.timeout", "at most"),
    (URL + 'ca_bundle = "nope.pem"\n', "status.ca_bundle", "does not exist"),
    ('source = "crl"\nunissued = "unknown"\n', "status.path", 'or set url = "https://...'),
    ('source = "crl"\npath = "crl.pem"\nunissued = "unknown"\nrefresh = "1m"\n', "status.refresh",
     "only with status.url"),
    ('source = "index"\npath = "i.txt"\ncompromised_at = 2026-01-01T00:00:00Z\n', "status.compromised_at",
     "only with compromised = true"),
    ('source = "index"\npath = "i.txt"\ncompromised = true\ncompromised_at = 2026-01-01T00:00:00\n',
     "status.compromised_at", "with its offset"),
    ('source = "index"\npath = "i.txt"\ncompromised = true\ncompromised_at = "yesterday"\n',
     "status.compromised_at", "RFC 3339"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "crl.pem").write_text("x")
    (tmp_path / "i.txt").write_text("x")
    with pytest.raises(ConfigError) as e:
        table(tmp_path, text)
    assert e.value.key == key and message in str(e.value), str(e.value)


@pytest.mark.parametrize("value,expected", [
    ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ('"2026-01-02T04:04:05+01:00"', datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
])
def test_compromised_keys(tmp_path: Path, value: str, expected: datetime) -> None:
    # The files need not exist: a compromised CA reads none.
    cfg = table(tmp_path, f'source = "index"\npath = "gone.txt"\ncompromised = true\ncompromised_at = {value}\n')
    assert cfg.compromised and cfg.compromised_at == expected and missing_files(cfg) == []


def cert_id(serial: int) -> CertId:
    return CertId(HashAlgorithm.SHA1, b"\0" * 20, b"\1" * 20, serial.to_bytes(8, "big", signed=True))


@pytest.mark.parametrize("at", [None, NOW - timedelta(days=3)])
def test_every_serial_is_revoked_ca_compromise_and_the_signer_agrees(ca: TestCA, at: datetime | None) -> None:
    src = CompromisedSource("c", ca.der, at, timedelta(hours=24))
    src.load_now()
    snap = src.current()
    expected_time = ca.cert.not_valid_before_utc if at is None else at
    for serial in (1, 0x10, 0xDEADBEEF, -5):
        info = snap.status(serial)
        assert info.status is CertStatus.REVOKED and info.revocation is not None
        assert info.revocation.reason is RevocationReason.CA_COMPROMISE
        assert info.revocation.time == expected_time
    now = datetime.now(UTC).replace(microsecond=0)
    this_update, next_update = snap.window(now)
    assert next_update - this_update == timedelta(hours=24)
    asked = SingleStatus(cert_id=cert_id(0x10), status=CertStatus.REVOKED, this_update=this_update,
                         next_update=next_update, revocation=Revocation(expected_time, RevocationReason.CA_COMPROMISE))
    assert check(snap, asked, now, timedelta(minutes=5)) is None
    good = SingleStatus(cert_id=cert_id(0x10), status=CertStatus.GOOD, this_update=this_update,
                        next_update=next_update)
    assert "asked good" in (check(snap, good, now, timedelta(minutes=5)) or "")
    other_reason = SingleStatus(cert_id=cert_id(0x10), status=CertStatus.REVOKED, this_update=this_update,
                                next_update=next_update,
                                revocation=Revocation(expected_time, RevocationReason.KEY_COMPROMISE))
    assert "reason" in (check(snap, other_reason, now, timedelta(minutes=5)) or "")


@pytest.mark.parametrize("at,message", [
    (NOW - timedelta(days=400), "before the CA certificate's notBefore"),
    (datetime.now(UTC) + timedelta(days=1), "in the future"),
])
def test_impossible_compromise_times_are_refused(ca: TestCA, at: datetime, message: str) -> None:
    src = CompromisedSource("c", ca.der, at, timedelta(hours=24))
    with pytest.raises(StatusDataError, match=message):
        src.load_now()
    assert src.config_key == "status.compromised_at"


def test_make_source_builds_the_compromised_source(tmp_path: Path, ca: TestCA) -> None:
    cfg = table(tmp_path, 'source = "crl"\npath = "gone.crl"\nunissued = "good"\ncompromised = true\n')
    src = make_source("c", ca.der, cfg)
    assert isinstance(src, CompromisedSource)
    src.load_now()
    assert src.current().window(NOW) == (NOW, NOW + timedelta(hours=24))
