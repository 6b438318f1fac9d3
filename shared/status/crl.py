"""A verified CRL (DER or PEM) as a status source.

A CRL is used only when its signature verifies with the CA certificate's public key, its issuer is
the CA's subject, it has a nextUpdate, and it is a complete CRL (no delta CRL, no indirect CRL, no
CRL limited to some reasons). Answers take thisUpdate/nextUpdate from the CRL; once its nextUpdate
has passed the source answers tryLater rather than sign stale data.

A CRL lists revocations only. For serials not on it, the per-CA ``unissued`` policy decides:

- with ``issued_serials``: listed serials not on the CRL are good, others get ``unissued``;
- without it: every serial not on the CRL gets ``unissued`` (so "good" is an explicit choice).

``unissued = "revoked"`` is RFC 6960 section 2.2's extended revoked answer: revoked,
revocationTime 1970-01-01T00:00:00Z, reason certificateHold.

An entry with reason removeFromCRL (RFC 5280: released from certificateHold; meaningful only in delta
CRLs) is not a revocation: that serial is answered good (the CA's own CRL says it issued it and that
it is not revoked), as an index.txt ``R`` line with that reason is. A revoking entry for the same
serial wins.

A CRL whose thisUpdate is more than ``MAX_CLOCK_SKEW`` ahead of this host's clock is refused (the
signer would refuse every answer built from it): at start-up that is a status-data error, on a reload
the last good CRL stays and the file is tried again at every check, so it is taken once its time has come.

An ``issued_serials`` list cut short is refused as an index.txt is (a truncated list would turn issued
serials into ``unissued`` answers): its last line must end with a newline, it must list at least one
serial, and a reload must not lose more than ``max_shrink`` of the loaded list's serials. The CRL
itself has no shrink rule: entries of expired certificates legitimately leave it.

A reload never goes back in time: a new CRL is refused (the loaded one stays, an ERROR says why)
when its thisUpdate is older than the loaded CRL's, its CRLNumber is lower, or its nextUpdate has
already passed while the loaded CRL is still valid. A stale mirror or a replayed old CRL could
otherwise turn revoked certificates back into good ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from shared.clock import Clock, SystemClock
from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo
from shared.status import loader
from shared.status.base import (
    GOOD,
    UNKNOWN,
    FileStatusSource,
    NotYetValid,
    Snapshot,
    StatusDataError,
    check_shrink,
    check_stale,
)
from shared.status.crl_der import Unusual, der_entries, issued_serials, signed_parts
from shared.status.table import Entries, StatusTable, answer_of, build_table, diff, epoch_seconds, from_epoch

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXTENDED_REVOKED = StatusInfo(CertStatus.REVOKED, Revocation(EPOCH, RevocationReason.CERTIFICATE_HOLD))
UNISSUED = {"unknown": UNKNOWN, "good": GOOD, "revoked": EXTENDED_REVOKED}
# How far ahead of our clock a CRL's thisUpdate may be (the signer's policy.max_clock_skew default).
MAX_CLOCK_SKEW = timedelta(minutes=5)

_REASONS = {
    x509.ReasonFlags.unspecified: RevocationReason.UNSPECIFIED,
    x509.ReasonFlags.key_compromise: RevocationReason.KEY_COMPROMISE,
    x509.ReasonFlags.ca_compromise: RevocationReason.CA_COMPROMISE,
    x509.ReasonFlags.affiliation_changed: RevocationReason.AFFILIATION_CHANGED,
    x509.ReasonFlags.superseded: RevocationReason.SUPERSEDED,
    x509.ReasonFlags.cessation_of_operation: RevocationReason.CESSATION_OF_OPERATION,
    x509.ReasonFlags.certificate_hold: RevocationReason.CERTIFICATE_HOLD,
    x509.ReasonFlags.remove_from_crl: RevocationReason.REMOVE_FROM_CRL,
    x509.ReasonFlags.privilege_withdrawn: RevocationReason.PRIVILEGE_WITHDRAWN,
    x509.ReasonFlags.aa_compromise: RevocationReason.AA_COMPROMISE,
}


def _whole(t: datetime) -> datetime:
    return t.replace(microsecond=0)


class CrlSnapshot(Snapshot):
    __slots__ = ("issued", "name", "next_update", "number", "revoked", "this_update", "unissued")

    def __init__(self, name: str, revoked: dict[int, StatusInfo], issued: frozenset[int] | None,
                 unissued: StatusInfo, this_update: datetime, next_update: datetime,
                 number: int | None = None) -> None:
        self.name = name
        self.revoked = revoked
        self.issued = issued
        self.unissued = unissued
        self.this_update = this_update
        self.next_update = next_update
        self.number = number  # CRLNumber, when the CRL has one

    def status(self, serial: int) -> StatusInfo:
        info = self.revoked.get(serial)
        if info is not None:
            return info
        issued = self.issued
        if issued is not None and serial in issued:
            return GOOD
        return self.unissued

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        check_stale(self.name, now, self.next_update)
        return self.this_update, self.next_update

    def issued_at(self) -> datetime:
        return self.this_update

    def untimed(self) -> bool:
        return self.issued is not None  # the issued-serials list has no time: it changes without the CRL

    def listed(self, serial: int) -> bool:
        issued = self.issued
        return serial in self.revoked or (issued is not None and serial in issued)

    def count(self) -> int | None:
        return len(self.revoked) if self.issued is None else None  # the union: not counted per scrape

    def serials(self) -> Iterator[int]:
        yield from self.revoked
        if self.issued is not None:
            yield from (s for s in self.issued if s not in self.revoked)

    def unlisted(self) -> StatusInfo:
        return self.unissued

    def interval(self) -> tuple[timedelta, str]:
        return self.next_update - self.this_update, "the CRL's thisUpdate..nextUpdate, which answers carry"

    def summary(self) -> str:
        issued = f", {len(self.issued)} issued serials" if self.issued is not None else ""
        revoked = sum(1 for s in self.revoked.values() if s.status is CertStatus.REVOKED)
        return (f"CRL thisUpdate {self.this_update:%Y-%m-%dT%H:%M:%SZ}, nextUpdate "
                f"{self.next_update:%Y-%m-%dT%H:%M:%SZ}, {revoked} revoked{issued}")


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as e:
        raise StatusDataError(f"not a PEM or DER CRL: {e}") from None


def verified_crl(data: bytes, ca: x509.Certificate, where: str = "CRL",
                 wrong_issuer_hint: str = "") -> x509.CertificateRevocationList:
    """Parse ``data`` and check it is a complete CRL signed by ``ca``; raises StatusDataError.
    ``wrong_issuer_hint`` ends the message of a CRL issued by another CA (what to change)."""
    try:
        crl = load_crl(data)
    except StatusDataError as e:
        raise StatusDataError(f"{where}: {e}") from None
    if crl.issuer != ca.subject:
        raise StatusDataError(f"{where} is issued by {crl.issuer.rfc4514_string()!r}, not by this CA "
                              f"({ca.subject.rfc4514_string()!r}){wrong_issuer_hint}")
    try:
        valid = _signature_checked(data, ca) or crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise StatusDataError(f"{where}: signature cannot be checked with the CA key: {e}") from None
    if not valid:
        raise StatusDataError(f"{where}: signature does not verify with the CA certificate's key")
    if crl.next_update_utc is None:
        raise StatusDataError(f"{where}: has no nextUpdate; refusing a CRL with no end of validity")
    for ext in crl.extensions:
        if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise StatusDataError(f"{where}: is a delta CRL; a complete CRL is needed")
        if ext.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
            idp = ext.value
            if idp.indirect_crl:
                raise StatusDataError(f"{where}: is an indirect CRL, which is not supported")
            if idp.only_some_reasons:
                raise StatusDataError(f"{where}: covers only some reasons; a complete CRL is needed")
            if idp.only_contains_attribute_certs or idp.only_contains_ca_certs:
                raise StatusDataError(f"{where}: does not cover end-entity certificates")
        elif ext.critical:
            raise StatusDataError(f"{where}: unsupported critical CRL extension {ext.oid.dotted_string}")
    return crl


# Signature algorithms checked on the CRL's own bytes (their DER AlgorithmIdentifier): the hash, and the
# public key type that must verify it. is_signature_valid re-encodes the whole tbsCertList first (most of
# a second for a million entries); any other algorithm, and any failure, is left to it.
_EC, _RSA = ec.EllipticCurvePublicKey, rsa.RSAPublicKey
_ALGORITHMS: dict[bytes, tuple[type, type[hashes.HashAlgorithm]]] = {
    bytes.fromhex("300a06082a8648ce3d040302"): (_EC, hashes.SHA256),
    bytes.fromhex("300a06082a8648ce3d040303"): (_EC, hashes.SHA384),
    bytes.fromhex("300a06082a8648ce3d040304"): (_EC, hashes.SHA512),
    bytes.fromhex("300d06092a864886f70d01010b0500"): (_RSA, hashes.SHA256),
    bytes.fromhex("300d06092a864886f70d01010c0500"): (_RSA, hashes.SHA384),
    bytes.fromhex("300d06092a864886f70d01010d0500"): (_RSA, hashes.SHA512),
}


def _signature_checked(data: bytes, ca: x509.Certificate) -> bool:
    """True when the DER CRL ``data`` (already loaded by cryptography) carries a signature by ``ca``'s
    key in one of ``_ALGORITHMS``; False means "not decided here"."""
    parts = signed_parts(data) if not data.startswith(b"-----") else None
    if parts is None:
        return False
    tbs, algorithm, signature = parts
    known = _ALGORITHMS.get(algorithm)
    key = ca.public_key()
    if known is None or not isinstance(key, known[0]):
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, tbs, ec.ECDSA(known[1]()))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, tbs, padding.PKCS1v15(), known[1]())
    except (InvalidSignature, TypeError, ValueError):
        return False  # is_signature_valid gives the verdict, as it always did
    return True


def revoked_entries(crl: x509.CertificateRevocationList, where: str = "CRL") -> dict[int, StatusInfo]:
    out: dict[int, StatusInfo] = {}
    released: set[int] = set()
    for entry in crl:
        reason = None
        invalidity = None
        for ext in entry.extensions:
            if ext.oid == CRLEntryExtensionOID.CRL_REASON:
                reason = _REASONS[ext.value.reason]
            elif ext.oid == CRLEntryExtensionOID.INVALIDITY_DATE:
                invalidity = _whole(ext.value.invalidity_date_utc)
            elif ext.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise StatusDataError(f"{where}: entry {entry.serial_number:x} names another issuer "
                                      "(indirect CRL), which is not supported")
            elif ext.critical:
                raise StatusDataError(f"{where}: entry {entry.serial_number:x} has an unsupported critical "
                                      f"extension {ext.oid.dotted_string}")
        if reason is RevocationReason.REMOVE_FROM_CRL:
            released.add(entry.serial_number)
            continue
        out[entry.serial_number] = StatusInfo(
            CertStatus.REVOKED, Revocation(_whole(entry.revocation_date_utc), reason, invalidity))
    for serial in released:
        out.setdefault(serial, GOOD)  # released from hold, unless also revoked
    return out


def parse_serial_list(text: str, where: str = "issued_serials") -> frozenset[int]:
    """One hex serial a line ('0x' prefix and ':' separators allowed); '#' starts a comment.

    A file cut short is refused, as an index.txt is: the last line must end with a newline, and a list
    of no serials at all (every serial would get ``unissued``) is not a list."""
    serials: set[int] = set()
    lines = text.split("\n")  # not splitlines(): "\n" ends a line, nothing else
    if lines[-1]:
        raise StatusDataError(f"{where}:{len(lines)}: the last line has no newline: the file is cut short "
                              "(still being written?)")
    for lineno, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        item = line.split("#", 1)[0].strip().replace(":", "")
        if not item:
            continue
        if item[:2].lower() == "0x":
            item = item[2:]
        try:
            serials.add(int(item, 16))
        except ValueError:
            raise StatusDataError(f"{where}:{lineno}: {line.strip()!r} is not a hex serial number") from None
    if not serials:
        raise StatusDataError(f"{where}: lists no serials; refusing to answer every serial as not issued")
    return frozenset(serials)


class CrlTableSnapshot(CrlSnapshot):
    """A CRL, and its issued-serials list, as one table of every serial either names (a CrlSnapshot's
    answers, from ``CrlSource``)."""

    __slots__ = ("issued_count", "table")

    def __init__(self, name: str, table: StatusTable, issued_count: int | None, unissued: StatusInfo,
                 this_update: datetime, next_update: datetime, number: int | None = None) -> None:
        super().__init__(name, {}, None, unissued, this_update, next_update, number)
        self.table = table
        self.issued_count = issued_count

    def status(self, serial: int) -> StatusInfo:
        info = self.table.get(serial)
        return self.unissued if info is None else info

    def untimed(self) -> bool:
        return self.issued_count is not None

    def listed(self, serial: int) -> bool:
        return serial in self.table

    def serials(self) -> Iterator[int]:
        return iter(self.table)

    def count(self) -> int | None:
        return len(self.table)

    def summary(self) -> str:
        issued = f", {self.issued_count} issued serials" if self.issued_count is not None else ""
        return (f"CRL thisUpdate {self.this_update:%Y-%m-%dT%H:%M:%SZ}, nextUpdate "
                f"{self.next_update:%Y-%m-%dT%H:%M:%SZ}, {self.table.revoked} revoked{issued}")

    def changed_since(self, old: Snapshot) -> list[int] | None:
        if not isinstance(old, CrlTableSnapshot):
            return None
        return diff(old.table, self.table, answer_of(old.unissued), answer_of(self.unissued))


@dataclass(frozen=True, slots=True)
class CrlTables:
    """What the loader reads of a CRL and its issued-serials list."""

    table: StatusTable  # every serial the CRL or the list names, with its answer
    this_update: datetime
    next_update: datetime
    number: int | None
    issued_count: int | None  # distinct serials in the list; None without one

    def header(self) -> dict[str, Any]:
        return {"this_update": epoch_seconds(self.this_update), "next_update": epoch_seconds(self.next_update),
                "number": self.number, "issued_count": self.issued_count}

    @classmethod
    def from_header(cls, header: dict[str, Any], table: StatusTable) -> CrlTables:
        return cls(table, from_epoch(int(header["this_update"])), from_epoch(int(header["next_update"])),
                   None if header["number"] is None else int(header["number"]),
                   None if header["issued_count"] is None else int(header["issued_count"]))


def crl_entries(data: bytes, crl: x509.CertificateRevocationList, where: str) -> Entries:
    """The CRL's entries in order: read from the DER (``crl_der``) in their common forms, else by
    ``revoked_entries`` (cryptography), which decides the rest as it always did."""
    der = crl.public_bytes(serialization.Encoding.DER) if b"-----BEGIN" in data else data
    try:
        return der_entries(der)
    except Unusual:
        pass
    entries = Entries()
    for serial, info in revoked_entries(crl, where).items():
        entries.add(serial, answer_of(info))
    return entries


def read_crl_tables(path: Path, ca_der: bytes, issued_path: Path | None, where: str | None = None,
                    wrong_issuer_hint: str = "") -> CrlTables:
    """Read, verify and tabulate: the checks and errors of ``CrlSource.parse`` up to the issued list.
    ``where`` names the CRL in messages (default: its path)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StatusDataError(f"cannot read {path}: {e.strerror or e}") from None
    where = str(path) if where is None else where
    crl = verified_crl(data, x509.load_der_x509_certificate(ca_der), where, wrong_issuer_hint)
    entries = crl_entries(data, crl, where)
    del data
    issued_count = None
    if issued_path is not None:
        try:
            raw = issued_path.read_bytes()
        except OSError as e:
            raise StatusDataError(f"cannot read {issued_path}: {e}") from None
        issued = issued_serials(raw)
        if issued is None:
            issued = list(parse_serial_list(_issued_text(raw, issued_path), str(issued_path)))
        issued_count = len(set(issued))
        entries.add_good(issued)
    next_update = crl.next_update_utc
    assert next_update is not None
    return CrlTables(build_table(entries), _whole(crl.last_update_utc), _whole(next_update), crl_number(crl),
                     issued_count)


def _issued_text(raw: bytes, path: Path) -> str:
    """``raw`` as ``Path.read_text(encoding="utf-8")`` reads it (universal newlines)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StatusDataError(f"cannot read {path}: {e}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


class CrlSource(FileStatusSource):
    kind = "crl"

    def __init__(self, name: str, path: Path, ca_cert_der: bytes, *, unissued: str,
                 issued_serials: Path | None = None, check_interval: float = 5.0,
                 clock: Clock | None = None, max_shrink: float = 0.1) -> None:
        files = [path] + ([issued_serials] if issued_serials is not None else [])
        super().__init__(name, files, check_interval)
        if unissued not in UNISSUED:
            raise ValueError(f"unissued must be one of {', '.join(UNISSUED)}")
        self.path = path
        self.issued_path = issued_serials
        self.ca = x509.load_der_x509_certificate(ca_cert_der)
        self.ca_der = ca_cert_der
        self.unissued = UNISSUED[unissued]
        self.clock = clock or SystemClock()
        self.max_shrink = max_shrink  # share of the loaded issued serials a reload may lose (0..1)

    def where(self) -> str:
        """How messages name the CRL being read (its path)."""
        return str(self.path)

    wrong_issuer_hint = ""  # ends the message about a CRL issued by another CA

    def parse(self) -> CrlSnapshot:
        """Read and verify the CRL (and the issued list) into a table: in a loader process when big
        (which also names the serials changed since the loaded table), else here."""
        where = self.where()
        loaded = self._snapshot
        changes = None
        if self.use_loader():
            job: dict[str, object] = {"kind": "crl", "path": str(self.path), "ca": self.ca_der.hex(),
                                      "issued": None if self.issued_path is None else str(self.issued_path),
                                      "where": where, "hint": self.wrong_issuer_hint}
            blobs: list[object] = []
            if isinstance(loaded, CrlTableSnapshot):
                job["old"], blobs = loaded.table.to_wire()
                job["unlisted"] = [answer_of(loaded.unissued), answer_of(self.unissued)]
            header, out = loader.run(job, blobs, timeout=self.loader_timeout, command=self.loader_command)
            tables = CrlTables.from_header(header, StatusTable.from_wire(header["table"], out[:5]))
            changes = loader.changes_from_wire(header, out)
        else:
            tables = read_crl_tables(self.path, self.ca_der, self.issued_path, where, self.wrong_issuer_hint)
        if self.issued_path is not None:
            assert tables.issued_count is not None
            # No such rule for the CRL itself: entries of expired certificates legitimately drop off it.
            loaded_issued = loaded.issued_count if isinstance(loaded, CrlTableSnapshot) else None
            check_shrink(str(self.issued_path), "issued serials", tables.issued_count, loaded_issued,
                         self.max_shrink)
        snap = CrlTableSnapshot(self.name, tables.table, tables.issued_count, self.unissued, tables.this_update,
                                tables.next_update, tables.number)
        now = self.clock.now()
        if snap.this_update > now + MAX_CLOCK_SKEW:
            raise NotYetValid(f"{where}: thisUpdate {_fmt(snap.this_update)} is in the future (this host's "
                                  f"clock says {_fmt(now)}); the signer would refuse to sign answers from it "
                                  "(check the clocks of the CA and this host)")
        if isinstance(loaded, CrlSnapshot):
            self._check_not_older(snap, loaded, where)
        if changes is not None and loaded is not None:
            self.computed_changes(loaded, snap, changes)
        return snap

    def _check_not_older(self, new: CrlSnapshot, loaded: CrlSnapshot, where: str) -> None:
        """Refuse a CRL that would roll the loaded one back (StatusDataError says why)."""
        if new.this_update < loaded.this_update:
            raise StatusDataError(f"{where}: thisUpdate {_fmt(new.this_update)} is older than the loaded "
                                  f"CRL's {_fmt(loaded.this_update)}; refusing to go back to an older CRL")
        if new.number is not None and loaded.number is not None and new.number < loaded.number:
            raise StatusDataError(f"{where}: CRLNumber {new.number} is lower than the loaded CRL's "
                                  f"{loaded.number}; refusing to go back to an older CRL")
        now = self.clock.now()
        if new.next_update <= now < loaded.next_update:
            raise StatusDataError(f"{where}: expired at {_fmt(new.next_update)} (nextUpdate passed) while the "
                                  f"loaded CRL is valid until {_fmt(loaded.next_update)}")


def _fmt(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None
