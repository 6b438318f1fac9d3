"""Differential: the fast decoder of the common request and the general (asn1crypto) decoder agree.

On every input below, ``decode_request`` (fast path first) gives the same ParsedRequest as
``decode_request_general``, or the same exception with the same message; and whenever the fast path
accepts (``decode_request_fast`` returns a request), the general decoder accepts too, with an equal
result made of plain ``bytes``. Inputs: common requests as the DER writer here builds them (each
must take the fast path), each kind of change of them (CHANGES: wrong values, other shapes, extra
elements in every SEQUENCE), combined changes with BER lengths (long form, non-minimal,
indefinite), and byte mutations of all these and of the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ocsp.errors import OCSPError
from shared.ocsp.request import (
    MAX_NONCE,
    MIN_NONCE,
    decode_request,
    decode_request_fast,
    decode_request_general,
)
from shared.ocsp.types import CertId, HashAlgorithm, ParsedRequest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
SEEDS = [p.read_bytes() for p in sorted(VECTORS.glob("req-*.der"))]
DIFF = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

HASHES = {HashAlgorithm.SHA1: "1.3.14.3.2.26", HashAlgorithm.SHA256: "2.16.840.1.101.3.4.2.1",
          HashAlgorithm.SHA384: "2.16.840.1.101.3.4.2.2", HashAlgorithm.SHA512: "2.16.840.1.101.3.4.2.3"}
OTHER_HASHES = ["1.2.840.113549.2.5", "2.16.840.1.101.3.4.2.4"]  # md5, sha224
NONCE = "1.3.6.1.5.5.7.48.1.2"
OTHER_EXTENSIONS = ["1.3.6.1.5.5.7.48.1.4", "1.3.6.1.5.5.7.48.1.8", "1.3.6.1.4.1.99999.1", "2.999.1"]


# -- a DER writer that can also write BER lengths ------------------------------------------------


@dataclass
class Writer:
    """Writes TLVs, numbering them in the order written; element ``i`` gets a long-form length of
    ``surplus`` more octets than needed when ``i in long``, the indefinite form when ``i in indefinite``
    (constructed elements only)."""

    long: frozenset[int] = frozenset()
    indefinite: frozenset[int] = frozenset()
    surplus: int = 1
    count: int = 0

    def tlv(self, tag: int, content: bytes) -> bytes:
        i = self.count
        self.count += 1
        if i in self.indefinite and tag & 0x20:
            return bytes([tag, 0x80]) + content + b"\x00\x00"
        n = len(content)
        if i in self.long or n >= 0x80:
            body = n.to_bytes(max(1, (n.bit_length() + 7) // 8) + (self.surplus if i in self.long else 0), "big")
            return bytes([tag, 0x80 | len(body)]) + body + content
        return bytes([tag, n]) + content

    def seq(self, *parts: bytes) -> bytes:
        return self.tlv(0x30, b"".join(parts))

    def oid(self, dotted: str, pad: bool = False) -> bytes:
        arcs = [int(a) for a in dotted.split(".")]
        out = bytearray()
        for k, arc in enumerate([arcs[0] * 40 + arcs[1], *arcs[2:]]):
            chunk = [arc & 0x7F]
            arc >>= 7
            while arc:
                chunk.append(0x80 | (arc & 0x7F))
                arc >>= 7
            if pad and k == len(arcs) - 2:
                chunk.append(0x80)  # a leading 0x80 octet on the last subidentifier: not DER
            out += bytes(reversed(chunk))
        return self.tlv(0x06, bytes(out))


@dataclass(frozen=True)
class Shape:
    """What a generated request holds; ``common`` is True when it is the common shape, valid."""

    hash_oid: str
    params: bytes  # b"" (absent) or the encoded parameters
    name_hash: bytes
    key_hash: bytes
    serial: bytes
    extensions: tuple[tuple[str, bytes, bytes, bool], ...] | None  # (OID, critical, extnValue, pad OID)
    more_cert_ids: int = 0
    version: bytes = b""
    requestor: bool = False
    single_extensions: bytes = b""  # b"": absent; b"-": one, not critical; b"-" + TRUE: critical
    signature: bool = False
    trailing: bytes = b""
    extra_at: str = ""  # a place in EXTRA_PLACES where the element ``extra`` is added at the end
    extra: bytes = b""


EXTRA_PLACES = ["algorithm", "cert_id", "request", "request_list", "extension", "extensions",
                "extensions_tag", "tbs", "ocsp_request"]


def encode(shape: Shape, w: Writer) -> bytes:
    def extra(place: str) -> bytes:
        return shape.extra if shape.extra_at == place else b""

    cid = w.seq(w.seq(w.oid(shape.hash_oid), shape.params, extra("algorithm")), w.tlv(0x04, shape.name_hash),
                w.tlv(0x04, shape.key_hash), w.tlv(0x02, shape.serial), extra("cert_id"))
    single_exts = w.tlv(0xA0, w.seq(w.seq(w.oid("1.3.6.1.4.1.99999.2"), shape.single_extensions[1:],
                                          w.tlv(0x04, b"x")))) if shape.single_extensions else b""
    singles = [w.seq(cid, single_exts, extra("request")) for _ in range(1 + shape.more_cert_ids)]
    exts = b""
    if shape.extensions is not None:
        exts = w.tlv(0xA2, w.seq(*(w.seq(w.oid(o, pad), crit, w.tlv(0x04, v), extra("extension"))
                                   for o, crit, v, pad in shape.extensions), extra("extensions"))
                     + extra("extensions_tag"))
    requestor = w.tlv(0xA1, w.tlv(0xA4, w.seq())) if shape.requestor else b""
    tbs = w.seq(shape.version, requestor, w.seq(*singles, extra("request_list")), exts, extra("tbs"))
    signature = w.tlv(0xA0, w.seq(w.seq(w.oid("1.2.840.10045.4.3.2")), w.tlv(0x03, b"\x00\x01\x02"))) \
        if shape.signature else b""
    return w.seq(tbs, signature, extra("ocsp_request")) + shape.trailing


def wrapped(raw: bytes) -> bytes:
    return Writer().tlv(0x04, raw)


@st.composite
def common_shapes(draw: st.DrawFn) -> tuple[Shape, ParsedRequest]:
    """A valid common request and the ParsedRequest both decoders must return for it."""
    alg = draw(st.sampled_from(list(HASHES)))
    size = alg.digest_size
    name_hash, key_hash = draw(st.binary(min_size=size, max_size=size)), draw(
        st.binary(min_size=size, max_size=size))
    serial = draw(st.binary(min_size=1, max_size=20)).lstrip(b"\x00") or b"\x00"
    if serial[0] >= 0x80 and draw(st.booleans()):
        serial = b"\x00" + serial  # positive, with its sign octet
    while len(serial) > 1 and serial[0] == 0xFF and serial[1] >= 0x80:
        serial = serial[1:]  # negative, minimal
    nonce = None
    extensions: list[tuple[str, bytes, bytes, bool]] | None = None
    if draw(st.booleans()):
        extensions = []
        if draw(st.integers(0, 3)):
            raw = draw(st.binary(min_size=MIN_NONCE, max_size=MAX_NONCE))
            nonce = raw if draw(st.integers(0, 4)) == 0 and raw[0] != 0x04 else wrapped(raw)
            extensions.append((NONCE, b"", nonce, False))
        others = draw(st.lists(st.sampled_from(OTHER_EXTENSIONS), max_size=2, unique=True))
        for other in others:
            extensions.insert(draw(st.integers(0, len(extensions))), (other, b"", draw(st.binary(max_size=8)),
                                                                     False))
    params = draw(st.sampled_from([b"", b"\x05\x00"]))
    shape = Shape(HASHES[alg], params, name_hash, key_hash, serial,
                  None if extensions is None else tuple(extensions))
    return shape, ParsedRequest((CertId(alg, name_hash, key_hash, serial),), nonce)


CHANGES = ["hash", "params", "name_hash", "key_hash", "serial", "nonce", "extension", "critical",
           "duplicate", "pad", "more", "version", "requestor", "single", "signature", "trailing",
           *(f"extra-{place}" for place in EXTRA_PLACES)]


@st.composite
def other_shapes(draw: st.DrawFn, kinds: tuple[str, ...] = ()) -> Shape:
    """A common request with its parts changed as ``kinds`` say (CHANGES; by default two or three
    drawn): made unusual, wrong, or another shape."""
    shape, _ = draw(common_shapes())
    changes: dict[str, object] = {}
    for change in kinds or draw(st.sets(st.sampled_from(CHANGES), min_size=2, max_size=3)):
        if change == "hash":
            changes["hash_oid"] = draw(st.sampled_from(OTHER_HASHES + list(HASHES.values())))
        elif change == "params":
            changes["params"] = draw(st.sampled_from([b"\x05\x81\x00", b"\x05\x01\x00", b"\x02\x01\x00",
                                                      b"\x30\x00", b"\x05\x00\x05\x00"]))
        elif change in ("name_hash", "key_hash"):
            changes[change] = draw(st.binary(max_size=70))
        elif change == "serial":
            changes["serial"] = draw(st.sampled_from([b"", b"\x00", b"\x00\x01", b"\xff\x80", b"\x00" * 3,
                                                      b"\x01" * 21, b"\x00" + b"\x80" * 20, b"\x00" + b"\x80" * 21]))
        elif change == "nonce":
            raw = draw(st.binary(max_size=MAX_NONCE + 3))
            nonce = wrapped(raw) if draw(st.booleans()) else raw
            changes["extensions"] = (*(shape.extensions or ()), (NONCE, b"", nonce, False))
        elif change == "extension":
            changes["extensions"] = (*(shape.extensions or ()),
                                     (draw(st.sampled_from(OTHER_EXTENSIONS)), b"", b"", False))
        elif change in ("critical", "duplicate", "pad"):
            exts = list(shape.extensions or ((NONCE, b"", wrapped(b"n"), False),))
            i = draw(st.integers(0, len(exts) - 1))
            o, crit, v, pad = exts[i]
            if change == "critical":
                exts[i] = (o, draw(st.sampled_from([b"\x01\x01\xff", b"\x01\x01\x00", b"\x01\x01\x01"])), v, pad)
            elif change == "duplicate":
                exts.insert(draw(st.integers(0, len(exts))), (o, b"", draw(st.sampled_from([v, b"", b"dup"])),
                                                              draw(st.integers(0, 3)) == 0))
            else:
                exts[i] = (o, crit, v, True)
            changes["extensions"] = tuple(exts)
        elif change == "more":
            changes["more_cert_ids"] = draw(st.integers(1, 2))
        elif change == "version":
            changes["version"] = draw(st.sampled_from([b"\xa0\x03\x02\x01\x00", b"\xa0\x03\x02\x01\x01"]))
        elif change in ("requestor", "signature"):
            changes[change] = True
        elif change == "single":
            changes["single_extensions"] = draw(st.sampled_from([b"-", b"-\x01\x01\xff"]))
        elif change.startswith("extra-"):
            if shape.extensions is None:
                changes["extensions"] = ((NONCE, b"", wrapped(b"n"), False),)
            changes["extra_at"] = change.removeprefix("extra-")
            changes["extra"] = draw(st.sampled_from([b"\x05\x00", b"\x02\x01\x00", b"\x04\x00", b"\x30\x00",
                                                     b"\xa0\x00", b"\xa3\x02\x05\x00"]))
        else:
            changes["trailing"] = draw(st.binary(min_size=1, max_size=3))
    return Shape(**{**shape.__dict__, **changes})


@st.composite
def writers(draw: st.DrawFn) -> Writer:
    """Mostly DER; sometimes one or two elements with a long-form or indefinite length."""
    if draw(st.integers(0, 2)):
        return Writer()
    return Writer(long=frozenset(draw(st.sets(st.integers(0, 20), max_size=2))),
                  indefinite=frozenset(draw(st.sets(st.integers(0, 20), max_size=1))),
                  surplus=draw(st.integers(0, 2)))


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, set, inserted or deleted, or its tail cut or extended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        i = draw(st.integers(0, len(out) - 1))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[i] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x30, 0x7F, 0x80, 0x81,
                                           0x82, 0x83, 0xA0, 0xA2, 0xFF]))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del out[i:i + draw(st.integers(1, 4))]
        elif op == "truncate":
            del out[i:]
        else:
            out += draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


# -- the check -----------------------------------------------------------------------------------


def outcome(decode, der: bytes, max_cert_ids: int) -> object:
    try:
        return decode(der, max_cert_ids=max_cert_ids)
    except OCSPError as e:
        return type(e), str(e)


def agree(der: bytes, max_cert_ids: int = 64) -> ParsedRequest | None:
    general = outcome(decode_request_general, der, max_cert_ids)
    assert outcome(decode_request, der, max_cert_ids) == general
    fast = decode_request_fast(der, max_cert_ids=max_cert_ids)
    if fast is not None:
        assert fast == general
        (cid,) = fast.cert_ids
        assert all(type(b) is bytes for b in (cid.issuer_name_hash, cid.issuer_key_hash, cid.serial))
        assert fast.nonce is None or type(fast.nonce) is bytes
    return fast


@DIFF
@given(common_shapes())
def test_common_requests_take_the_fast_path(case: tuple[Shape, ParsedRequest]) -> None:
    shape, expected = case
    der = encode(shape, Writer())
    assert agree(der) == expected


@pytest.mark.parametrize("kind", CHANGES)
@settings(DIFF, max_examples=30)
@given(st.data())
def test_each_change_agrees(kind: str, data: st.DataObject) -> None:
    agree(encode(data.draw(other_shapes((kind,))), Writer()))


@DIFF
@given(st.one_of(common_shapes().map(lambda c: c[0]), other_shapes()), writers(),
       st.sampled_from([64, 64, 1, 0]))
def test_other_shapes_and_ber_agree(shape: Shape, writer: Writer, max_cert_ids: int) -> None:
    agree(encode(shape, writer), max_cert_ids)


@DIFF
@given(st.one_of(common_shapes().map(lambda c: encode(c[0], Writer())), other_shapes().map(
    lambda s: encode(s, Writer())), st.sampled_from(SEEDS)).flatmap(mutations))
def test_mutations_agree(der: bytes) -> None:
    agree(der)
