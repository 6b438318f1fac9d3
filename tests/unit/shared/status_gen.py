"""Status data generated quickly, for the table tests and bench/status_bench.py: index.txt lines and
DER CRLs written by hand (cryptography's builder takes minutes for a million entries, and it refuses
odd serials), signed by cryptography."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# (serial, revocation time, CRL reason code or None, invalidity date or None)
Entry = tuple[int, datetime, int | None, datetime | None]

REASON_NAMES = ("unspecified", "keyCompromise", "CACompromise", "affiliationChanged", "superseded",
                "cessationOfOperation", "certificateHold", None, "removeFromCRL")


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _len(len(content)) + content


def integer(value: int) -> bytes:
    return tlv(0x02, value.to_bytes((value + (value < 0)).bit_length() // 8 + 1, "big", signed=True))


def der_time(t: datetime) -> bytes:
    if 1950 <= t.year < 2050:
        return tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def gen_time(t: datetime) -> bytes:
    return tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


REASON_OID = bytes.fromhex("0603551d15")  # 2.5.29.21
INVALIDITY_OID = bytes.fromhex("0603551d18")  # 2.5.29.24
CRL_NUMBER_OID = bytes.fromhex("0603551d14")  # 2.5.29.20
ECDSA_SHA256 = seq(bytes.fromhex("06082a8648ce3d040302"))


def entry_der(serial: int, when: datetime, reason: int | None, invalidity: datetime | None) -> bytes:
    exts = []
    if reason is not None:
        exts.append(seq(REASON_OID, tlv(0x04, tlv(0x0A, bytes([reason])))))
    if invalidity is not None:
        exts.append(seq(INVALIDITY_OID, tlv(0x04, gen_time(invalidity))))
    return seq(integer(serial), der_time(when), *([seq(*exts)] if exts else []))


def crl_der(key: ec.EllipticCurvePrivateKey, issuer_der: bytes, entries: Iterable[Entry | bytes], *,
            this_update: datetime, next_update: datetime, number: int | None = None) -> bytes:
    """A v2 CRL signed with ``key`` (ECDSA P-256, SHA-256); ``entries`` may be ready DER entries."""
    body = b"".join(e if isinstance(e, bytes) else entry_der(*e) for e in entries)
    tbs_parts = [integer(1), ECDSA_SHA256, issuer_der, der_time(this_update), der_time(next_update)]
    if body:
        tbs_parts.append(tlv(0x30, body))
    if number is not None:
        tbs_parts.append(tlv(0xA0, seq(seq(CRL_NUMBER_OID, tlv(0x04, integer(number))))))
    tbs = seq(*tbs_parts)
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return seq(tbs, ECDSA_SHA256, tlv(0x03, b"\x00" + signature))


def random_entries(n: int, seed: int = 1, *, odd: bool = True, base: datetime | None = None) -> list[Entry]:
    """``n`` entries with random 1..20-octet serials (negative and zero ones too when ``odd``), about a
    third with a reason, a sixth with an invalidity date, and some duplicate serials."""
    rng = random.Random(seed)
    base = base or datetime(2025, 1, 1, tzinfo=UTC)
    out: list[Entry] = []
    for i in range(n):
        if odd and i % 50 == 7:
            serial = rng.choice([0, -1, -128, -129, -(1 << 159), 127, 128, 255, 256, (1 << 159) - 1,
                                 (1 << 160) - 1, 1 << 160])
        elif out and i % 97 == 5:
            serial = out[rng.randrange(len(out))][0]  # a duplicate
        else:
            serial = rng.getrandbits(rng.choice((8, 16, 63, 64, 65, 127, 128, 159, 160)))
        when = base + timedelta(seconds=rng.randrange(0, 400 * 86400))
        reason = rng.choice((None, None, None, 0, 1, 2, 3, 4, 5, 6, 8, 9, 10)) if i % 3 == 0 else None
        invalidity = when - timedelta(days=rng.randrange(0, 30)) if i % 6 == 0 else None
        out.append((serial, when, reason, invalidity))
    return out


def index_line(flag: str, serial: int | str, rev: str = "", expiry: str = "301231235959Z") -> str:
    text = serial if isinstance(serial, str) else f"{serial:X}"
    return "\t".join([flag, expiry, rev, text, "unknown", f"/CN=leaf {text}"]) + "\n"


def random_index(n: int, seed: int = 1, *, odd: bool = True) -> str:
    """An index.txt of ``n`` lines: V, E and R (every reason form), duplicates, odd hex forms."""
    rng = random.Random(seed)
    lines: list[str] = []
    serials: list[int] = []
    reasons = ["", ",keyCompromise", ",CACompromise", ",superseded", ",unspecified", ",removeFromCRL",
               ",certificateHold", ",holdInstruction,1.2.840.10040.2.2", ",keyTime,20241231000000Z",
               ",CAkeyTime,241230000000Z", ",cessationOfOperation", ",KEYCOMPROMISE", ",privilegeWithdrawn"]
    for i in range(n):
        if serials and i % 41 == 3:
            serial = serials[rng.randrange(len(serials))]
        else:
            serial = rng.getrandbits(rng.choice((8, 32, 64, 127, 159, 160)))
        serials.append(serial)
        text = f"{serial:X}" if rng.random() < 0.8 else f"{serial:x}".zfill(rng.randrange(1, 44))
        if odd and i % 200 == 11:
            text = rng.choice([f"-{serial:X}", f"0x{serial:X}", f" {serial:X}", f"+{serial:x}"])
        expiry = f"{rng.randrange(2000, 2049) % 100:02d}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}" \
                 f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}Z"
        flag = rng.choice("VVVVER")
        rev = ""
        if flag == "R":
            rev = f"25{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}030405Z" + rng.choice(reasons)
        elif rng.random() < 0.05:
            rev = "junk ignored for V and E"
        lines.append(index_line(flag, text, rev, expiry))
    return "".join(lines)


def simple_index(n: int, revoked_every: int = 10) -> bytes:
    """A large, plain index.txt (the bench's): sequential 16-octet serials, every tenth revoked."""
    base = 0x4F2A_0000_0000_0000_0000_0000_0000_0000
    out = []
    for i in range(n):
        serial = base + i * 7919
        if i % revoked_every == 0:
            out.append(f"R\t301231235959Z\t250102030405Z,keyCompromise\t{serial:X}\tunknown\t/CN=leaf {i}\n")
        else:
            out.append(f"V\t301231235959Z\t\t{serial:X}\tunknown\t/CN=leaf {i}\n")
    return "".join(out).encode()


def simple_crl(key: ec.EllipticCurvePrivateKey, issuer_der: bytes, n: int, *, this_update: datetime,
               next_update: datetime, number: int | None = None, shift: int = 0) -> bytes:
    """A large CRL (the bench's): 16-octet serials, a third with a reason code."""
    base = 0x4F2A_0000_0000_0000_0000_0000_0000_0000
    when = der_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    kc = seq(seq(REASON_OID, tlv(0x04, tlv(0x0A, b"\x01"))))
    parts: Sequence[bytes] = [seq(integer(base + (i + shift) * 7919), when, *((kc,) if i % 3 == 0 else ()))
                              for i in range(n)]
    return crl_der(key, issuer_der, parts, this_update=this_update, next_update=next_update, number=number)
