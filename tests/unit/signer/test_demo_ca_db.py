"""The demo's status files (signer.ctl.demo.ca_db) split and written as the frontend reads them, and
ocspctl's certificate files read by the one rule of shared.config.parse_certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from frontend.status.crl import parse_serial_list, revoked_entries, verified_crl
from frontend.status.index_txt import parse_index
from shared.config import parse_certificate
from shared.ocsp.types import CertStatus, RevocationReason
from signer.ctl.common import CtlError, load_certificate
from signer.ctl.demo import ca_db
from signer.ctl.demo.pki import self_signed_ca

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def entry(serial: int, subject: str = "/O=OCSP Demo/CN=x") -> ca_db.IndexEntry:
    expiry = ca_db.index_time(NOW + dt.timedelta(days=30))
    return ca_db.IndexEntry("V", expiry, "", ca_db.index_serial(serial), "unknown", subject)


def test_index_round_trip_agrees_with_the_frontend(tmp_path: Path) -> None:
    # Subjects with characters str.splitlines() takes for line ends (U+2028, NEL, FF): one line each.
    entries = [entry(1, "/O=OCSP Demo/CN=a\u2028b"), entry(0x2AB, "/CN=nel\x85ff\x0c"), entry(3)]
    assert ca_db.index_revoke(entries, 0x2AB, NOW, "superseded")
    path = tmp_path / "index.txt"
    assert ca_db.write_index(path, entries)
    assert ca_db.read_index(path) == entries
    assert not ca_db.write_index(path, ca_db.read_index(path))  # nothing changed
    snap = parse_index(path.read_bytes().decode(), dt.timedelta(hours=24))
    assert snap.lines == 3
    assert snap.status(1).status is CertStatus.GOOD and snap.status(3).status is CertStatus.GOOD
    revoked = snap.status(0x2AB)
    assert revoked.status is CertStatus.REVOKED and revoked.revocation is not None
    assert revoked.revocation.reason is RevocationReason.SUPERSEDED and revoked.revocation.time == NOW


def test_index_keeps_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    raw = entry(1).line().encode() + b"\n" + entry(2, "/CN=caf\xe9").line().encode("latin-1") + b"\n"
    path.write_bytes(raw)
    entries = ca_db.read_index(path)
    assert ca_db.index_revoke(entries, 1, NOW, None)
    ca_db.write_index(path, entries)
    assert path.read_bytes().split(b"\n")[1:] == raw.split(b"\n")[1:]


def test_index_cut_short_or_malformed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.txt"
    path.write_text(entry(1).line())  # no final newline
    with pytest.raises(CtlError, match="cut short"):
        ca_db.read_index(path)
    path.write_text("V\tonly three\tfields\n")
    with pytest.raises(CtlError, match=r"index.txt:1: not an OpenSSL index.txt line"):
        ca_db.read_index(path)
    path.write_text(entry(1).line().replace("\t01\t", "\tzz\t") + "\n")
    with pytest.raises(CtlError, match="not a hex number"):
        ca_db.read_index(path)
    assert ca_db.read_index(tmp_path / "missing.txt") == []


def test_index_never_writes_a_field_that_breaks_the_line(tmp_path: Path) -> None:
    for bad in ("/CN=a\tb", "/CN=a\nb", "/CN=a\rb"):
        with pytest.raises(CtlError, match="tab or a line break"):
            ca_db.write_index(tmp_path / "index.txt", [entry(1, bad)])
    assert not (tmp_path / "index.txt").exists()


def test_issued_list_and_crl_agree_with_the_frontend(tmp_path: Path) -> None:
    serials = [1, 0xABC, 2**70 + 5]
    assert ca_db.write_issued(tmp_path / "issued.txt", serials)
    assert ca_db.read_issued(tmp_path / "issued.txt") == serials
    assert parse_serial_list((tmp_path / "issued.txt").read_text()) == frozenset(serials)
    key = ec.generate_private_key(ec.SECP256R1())
    ca = self_signed_ca(key, "Test CA", NOW)
    revoked = {0xABC: (NOW, "keyCompromise"), 7: (NOW, None)}
    ca_db.write_crl(tmp_path / "crl.pem", ca, key, revoked, 4, NOW)
    assert ca_db.read_crl_entries(tmp_path / "crl.pem", ca)[:2] == (revoked, 4)
    statuses = revoked_entries(verified_crl((tmp_path / "crl.pem").read_bytes(), ca))
    assert statuses[0xABC].revocation is not None
    assert statuses[0xABC].revocation.reason is RevocationReason.KEY_COMPROMISE and 7 in statuses


def test_certificate_files_one_rule(tmp_path: Path) -> None:
    """ocspctl reads a certificate file as the signer and frontend do: one PEM certificate, or DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    a, b = self_signed_ca(key, "A", NOW), self_signed_ca(key, "B", NOW)
    (tmp_path / "one.pem").write_bytes(a.public_bytes(Encoding.PEM))
    (tmp_path / "one.der").write_bytes(a.public_bytes(Encoding.DER))
    (tmp_path / "two.pem").write_bytes(a.public_bytes(Encoding.PEM) + b.public_bytes(Encoding.PEM))
    (tmp_path / "junk").write_bytes(b"not a certificate")
    assert load_certificate(tmp_path / "one.pem", "certificate") == a
    assert load_certificate(tmp_path / "one.der", "certificate") == a
    with pytest.raises(CtlError, match=r"certificate .*two.pem holds 2 certificates; expected exactly one"):
        load_certificate(tmp_path / "two.pem", "certificate")
    with pytest.raises(CtlError, match=r"CA certificate .*junk is not a PEM or DER certificate"):
        load_certificate(tmp_path / "junk", "CA certificate")
    with pytest.raises(CtlError, match="cannot read certificate"):
        load_certificate(tmp_path / "missing.pem", "certificate")
    with pytest.raises(ValueError, match="holds 2 certificates"):
        parse_certificate((tmp_path / "two.pem").read_bytes())
