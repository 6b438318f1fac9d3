"""shared.status.table: the compact tables, their lookups at the edges, de-duplication, the walk that
names changed serials; and, differentially, the fast parsers (index.txt lines, the CRL entry walk, the
issued-serials list) against the reference parsers on generated data."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo
from shared.status.base import GOOD, UNKNOWN, StatusDataError, changed_serials, small_set
from shared.status.crl import (
    EXTENDED_REVOKED,
    CrlSnapshot,
    CrlTableSnapshot,
    crl_number,
    parse_serial_list,
    read_crl_tables,
    revoked_entries,
    verified_crl,
)
from shared.status.crl_der import Unusual, der_entries, issued_serials
from shared.status.index_txt import IndexSnapshot, _fast_entries, _Unusual, index_table, parse_index
from shared.status.table import (
    Entries,
    SerialSet,
    StatusTable,
    answer_of,
    build_table,
    diff,
    empty_table,
    table_of,
)
from tests.unit.frontend.frontend_pki import NOW, TestCA
from tests.unit.shared import status_gen as gen

H = timedelta(hours=1)
T = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def revoked(when: datetime = T, reason: RevocationReason | None = None, inv: datetime | None = None) -> StatusInfo:
    return StatusInfo(CertStatus.REVOKED, Revocation(when, reason, inv))


def table(items: dict[int, StatusInfo]) -> StatusTable:
    return table_of(items)


# -- lookups -----------------------------------------------------------------------------------------

def test_empty_table() -> None:
    t = empty_table()
    assert len(t) == 0 and list(t) == [] and t.get(0) is None and 5 not in t and t.revoked == 0
    assert StatusTable.from_wire(*t.to_wire()).count == 0


@pytest.mark.parametrize("serial", [0, 1, -1, 127, 128, -128, -129, 1 << 159, -(1 << 159), (1 << 160) - 1])
def test_one_entry(serial: int) -> None:
    t = table({serial: revoked(reason=RevocationReason.KEY_COMPROMISE)})
    assert t.get(serial) == revoked(reason=RevocationReason.KEY_COMPROMISE)
    assert list(t) == [serial] and len(t) == 1 and t.revoked == 1
    for other in (serial - 1, serial + 1, serial + (1 << 200), serial - (1 << 200), -serial - 1):
        assert other not in t and t.get(other, UNKNOWN) is UNKNOWN


def test_lookups_at_the_edges_of_many() -> None:
    rng = random.Random(7)
    serials = sorted({rng.getrandbits(rng.choice((8, 64, 160))) * rng.choice((1, -1)) for _ in range(5000)})
    items = {s: (GOOD if i % 3 else revoked(T + timedelta(seconds=i), RevocationReason(i % 7), None))
             for i, s in enumerate(serials)}
    t = table(items)
    assert list(t) == serials  # sorted, negative serials first
    for s in serials[:70] + serials[-70:] + serials[::37]:
        assert t[s] == items[s]
    for s in (serials[0] - 1, serials[-1] + 1, *(a + 1 for a, b in itertools.pairwise(serials) if b - a > 1)):
        assert s not in t
    wire = StatusTable.from_wire(*t.to_wire())
    assert dict(wire.items()) == items


def test_details_round_trip() -> None:
    old = datetime(1951, 6, 1, tzinfo=UTC)
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    items = {1: revoked(old, None, None), 2: revoked(far, RevocationReason.AA_COMPROMISE, old),
             3: revoked(T, RevocationReason.REMOVE_FROM_CRL, T), 4: GOOD}
    assert dict(table(items).items()) == items


def test_duplicates_last_revoking_entry_wins() -> None:
    e = Entries()
    e.add(5, answer_of(revoked(T)))
    e.add(5, answer_of(GOOD))  # a good line after a revoked one does not undo it
    e.add(6, answer_of(GOOD))
    e.add(6, answer_of(revoked(T, RevocationReason.SUPERSEDED)))
    e.add(6, answer_of(revoked(T + H, RevocationReason.KEY_COMPROMISE)))
    e.add(7, answer_of(GOOD))
    e.add(7, answer_of(GOOD))
    t = build_table(e)
    assert list(t) == [5, 6, 7]
    assert t[5] == revoked(T) and t[6] == revoked(T + H, RevocationReason.KEY_COMPROMISE) and t[7] is GOOD


def test_serial_set() -> None:
    s = SerialSet.of([-3, 0, 2, 1 << 100])
    assert set(s) == {-3, 0, 2, 1 << 100} and 2 in s and 1 not in s and "2" not in s
    assert s == {-3, 0, 2, 1 << 100} and (s & {2, 5}) == {2}
    assert len(SerialSet.of([])) == 0
    assert isinstance(small_set(list(range(10))), set)
    assert isinstance(small_set(list(range(100_001))), SerialSet)


# -- the walk that names changed serials --------------------------------------------------------------

def _random_items(rng: random.Random, n: int, pool: int) -> dict[int, StatusInfo]:
    out = {}
    for _ in range(n):
        s = rng.randrange(-pool // 10, pool)
        out[s] = GOOD if rng.random() < 0.5 else revoked(T + timedelta(seconds=rng.randrange(3)),
                                                         rng.choice([None, RevocationReason.KEY_COMPROMISE]))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_diff_agrees_with_changed_serials(seed: int) -> None:
    rng = random.Random(seed)
    a = _random_items(rng, rng.choice((0, 1, 300, 2000)), 3000)
    b = dict(a) if rng.random() < 0.5 else _random_items(rng, rng.choice((0, 1, 300, 2000)), 3000)
    for s in rng.sample(sorted(b), min(len(b), 20)) if b else []:
        b[s] = GOOD if b[s] is not GOOD else revoked()
    if rng.random() < 0.3:
        b[1 << 130] = GOOD  # a wider key: the walk by value
    for unl_a, unl_b in ((UNKNOWN, UNKNOWN), (GOOD, GOOD), (EXTENDED_REVOKED, EXTENDED_REVOKED)):
        ref = changed_serials(CrlSnapshot("x", a, None, unl_a, NOW, NOW + H), CrlSnapshot("x", b, None, unl_b, NOW, NOW + H))
        assert diff(table(a), table(b), answer_of(unl_a), answer_of(unl_b)) == sorted(ref or ())
    ia, ib = IndexSnapshot(table(a), H, 1), IndexSnapshot(table(b), H, 1)
    assert changed_serials(ia, ib) == changed_serials(IndexSnapshot(a, H, 1), IndexSnapshot(b, H, 1))


# -- index.txt: the fast parser against parse_index ----------------------------------------------------

def _same_index(raw: bytes) -> None:
    try:
        ref = parse_index(raw.decode("utf-8") if _utf8(raw) else raw.decode("latin-1"), H, "i")
    except StatusDataError as e:
        with pytest.raises(StatusDataError) as got:
            index_table(raw, "i")
        assert str(got.value) == str(e)
        return
    t, lines = index_table(raw, "i")
    assert lines == ref.lines
    assert dict(t.items()) == ref.entries
    assert t.revoked == sum(1 for v in ref.entries.values() if v.status is CertStatus.REVOKED)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("seed", range(6))
def test_index_fast_parser_agrees(seed: int) -> None:
    raw = gen.random_index(3000, seed).encode()
    _same_index(raw)


def test_index_fast_parser_takes_plain_files_itself() -> None:
    _fast_entries(gen.random_index(2000, 3, odd=False).encode())  # no _Unusual: no fallback
    _fast_entries(gen.simple_index(100))
    _fast_entries(gen.simple_index(3) + gen.index_line("V", "-1F", expiry="20301231235959Z").encode())  # read alike
    for odd in (b"\n", b" \n", gen.index_line("V", "\u0661").encode(), gen.index_line("Q", "1").encode()):
        with pytest.raises(_Unusual):
            _fast_entries(gen.simple_index(3) + odd)


@pytest.mark.parametrize("tail", [
    "", "\n", "\r\n", "  \n", gen.index_line("V", "10", expiry="301331235959Z"), gen.index_line("V", "10", expiry="300230235959Z"),
    gen.index_line("V", "10", expiry="00000101000000Z"), gen.index_line("V", "10", expiry="20240229000000Z"),
    gen.index_line("V", "10", expiry="301231245959Z"), gen.index_line("V", "1_0"), gen.index_line("V", "0x10"),
    gen.index_line("V", " 10 "), gen.index_line("V", "-10"), gen.index_line("V", "+10"), gen.index_line("V", "1 0"),
    gen.index_line("V", "\u0661\u0660"), gen.index_line("X", "10"), gen.index_line("R", "10"),
    gen.index_line("R", "10", "250102030405Z,"), gen.index_line("R", "10", "250102030405Z,,x"),
    gen.index_line("R", "10", "250102030405Z,keyCompromise,junk"), gen.index_line("R", "10", "250102030405Z,a,b,c"),
    gen.index_line("R", "10", "\u212aEYTIME,250102030405Z"), gen.index_line("R", "10", "250102030405Z,\u212aeyCompromise"),
    gen.index_line("R", "10", "250102030405Z,keyTime,2501020304Z"), "V\t301231235959Z\t\t10\tunknown\t/CN=x\r\n",
    "\t\t\t\t\t\n", "V\t301231235959Z\t\t10\tunknown\n", gen.index_line("V", "10")[:-1],
])
def test_index_odd_lines_agree(tail: str) -> None:
    for raw in ((gen.index_line("V", "01") + tail).encode(), (gen.index_line("V", "01") + tail).encode("latin-1", "replace"),
                tail.encode()):
        _same_index(raw)
    _same_index(b"V\t301231235959Z\t\t10\tunknown\t/CN=caf\xe9\x85\n" + tail.encode())


# -- CRLs: the entry walk against cryptography --------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Table Test CA")


def _crl(ca: TestCA, entries: list) -> bytes:  # type: ignore[type-arg]
    return gen.crl_der(ca.key, ca.name.public_bytes(), entries, this_update=NOW, next_update=NOW + H, number=3)


def _same_crl(tmp_path: Path, ca: TestCA, der: bytes, issued: bytes | None = None) -> None:
    path = tmp_path / "crl.der"
    path.write_bytes(der)
    issued_path = None
    if issued is not None:
        issued_path = tmp_path / "issued.txt"
        issued_path.write_bytes(issued)
    try:
        crl = verified_crl(der, ca.cert, str(path))
        ref_revoked = revoked_entries(crl, str(path))
        ref_issued = None
        if issued_path is not None:  # as CrlSource.parse read it before the tables
            try:
                text = issued_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise StatusDataError(f"cannot read {issued_path}: {e}") from None
            ref_issued = parse_serial_list(text, str(issued_path))
    except Exception as e:  # noqa: BLE001 - the same error, whatever it is
        with pytest.raises(type(e)) as got:
            read_crl_tables(path, ca.der, issued_path)
        assert str(got.value) == str(e)
        return
    tables = read_crl_tables(path, ca.der, issued_path)
    ref = CrlSnapshot("x", ref_revoked, ref_issued, UNKNOWN, crl.last_update_utc, crl.next_update_utc,
                      crl_number(crl))
    new = CrlTableSnapshot("x", tables.table, tables.issued_count, UNKNOWN, tables.this_update,
                           tables.next_update, tables.number)
    assert (tables.this_update, tables.next_update, tables.number) == (ref.this_update, ref.next_update, ref.number)
    assert set(new.serials()) == set(ref.serials())
    for s in list(ref.serials()) + [-5, 0, 1 << 170]:
        assert new.status(s) == ref.status(s) and new.listed(s) == ref.listed(s)
    assert new.summary() == ref.summary() and new.untimed() == ref.untimed()


@pytest.mark.parametrize("seed", range(4))
def test_crl_walk_agrees(tmp_path: Path, ca: TestCA, seed: int) -> None:
    entries = gen.random_entries(1500, seed)
    der = _crl(ca, entries)
    der_entries(der)  # the common forms: read by the walk itself
    issued = "".join(f"{s:X}\n" for s, *_ in entries[::3] if s >= 0) + "7\n"
    _same_crl(tmp_path, ca, der, issued.encode() if seed % 2 else None)


def _entry(*exts: bytes, serial: bytes = gen.integer(0x42), when: bytes = gen.der_time(T)) -> bytes:
    return gen.seq(serial, when, *((gen.seq(*exts),) if exts else ()))


REASON = gen.seq(gen.REASON_OID, gen.tlv(4, gen.tlv(0x0A, b"\x01")))


@pytest.mark.parametrize("entry", [
    _entry(gen.seq(gen.REASON_OID, gen.tlv(1, b"\xff"), gen.tlv(4, gen.tlv(0x0A, b"\x01")))),  # critical
    _entry(gen.seq(gen.REASON_OID, gen.tlv(4, gen.tlv(0x0A, b"\x07")))),  # reason 7: cryptography refuses
    _entry(gen.seq(gen.REASON_OID, gen.tlv(4, gen.tlv(0x0A, b"\x0b")))),
    _entry(REASON, REASON),  # duplicate extension
    _entry(gen.seq(bytes.fromhex("0603551d1d"), gen.tlv(4, gen.seq()))),  # certificateIssuer: indirect
    _entry(gen.seq(bytes.fromhex("06032a0304"), gen.tlv(1, b"\xff"), gen.tlv(4, b"\x05\x00"))),  # unknown critical
    _entry(gen.seq(bytes.fromhex("06032a0304"), gen.tlv(4, b"\x05\x00"))),  # unknown, not critical: ignored
    _entry(gen.seq(gen.INVALIDITY_OID, gen.tlv(4, gen.tlv(0x18, b"20250101000000.5Z")))),
    _entry(gen.seq(gen.INVALIDITY_OID, gen.tlv(4, gen.tlv(0x18, b"20251301000000Z")))),
    _entry(gen.seq(gen.INVALIDITY_OID, gen.tlv(4, gen.tlv(0x17, b"250101000000Z")))),
    _entry(),
    gen.seq(gen.integer(0x42), gen.der_time(T), gen.seq()),  # empty extensions
    _entry(serial=gen.integer(-(1 << 150))),
    _entry(when=gen.gen_time(datetime(2051, 1, 1, tzinfo=UTC))),
    _entry(when=gen.tlv(0x18, b"20250101000000Z")),  # GeneralizedTime before 2050
    _entry(gen.seq(gen.REASON_OID, gen.tlv(4, gen.tlv(0x0A, b"\x08")))),  # removeFromCRL
])
def test_crl_unusual_entries_agree(tmp_path: Path, ca: TestCA, entry: bytes) -> None:
    for entries in ([entry], [_entry(REASON, serial=gen.integer(0x42)), entry], [entry, _entry(serial=gen.integer(1))]):
        _same_crl(tmp_path, ca, _crl(ca, entries))  # type: ignore[arg-type]


def test_pem_crl_and_broken_crls_agree(tmp_path: Path, ca: TestCA) -> None:
    good = ca.crl([(0x10, NOW - H, None, None)], pem=True)
    _same_crl(tmp_path, ca, good)
    der = _crl(ca, gen.random_entries(20))
    for broken in (der[:-1] + bytes([der[-1] ^ 1]), der[:100], b"junk", ca.crl([], signer=TestCA("Evil"))):
        _same_crl(tmp_path, ca, broken)
    with pytest.raises(Unusual):
        der_entries(_crl(ca, [_entry(gen.seq(gen.REASON_OID, gen.tlv(1, b"\xff"), gen.tlv(4, gen.tlv(0x0A, b"\x01"))))]))


@pytest.mark.parametrize("text", [b"0A\n0b\n", b"0A\r\n0B\n", b"0A\r0B\n", b"0A\n\n0B\n", b"0x0A\n", b"0A # c\n",
                                  b"0A", b"", b"# none\n", b"zz\n", b"0A\n0A\n", b"0a:0b\n", b"\xef\xbb\xbf0A\n",
                                  b"\xff\n", b" 0A\n", b"-1\n"])
def test_issued_lists_agree(tmp_path: Path, ca: TestCA, text: bytes) -> None:
    _same_crl(tmp_path, ca, _crl(ca, [(0x0A, T, 1, None)]), text)
    fast = issued_serials(text)
    if fast is not None:
        assert set(fast) == parse_serial_list(text.decode(), "x")
