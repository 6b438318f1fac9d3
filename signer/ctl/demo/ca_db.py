"""The demo CAs' status files: the RSA CA's OpenSSL database (index.txt), the EC CA's CRL and its list
of issued serials (issued.txt).

The files are written as the frontend reads them (shared/status/index_txt.py and crl.py; the tests
check the demo's files with those parsers): an index.txt line is six tab-separated fields ended by
"\\n" and by nothing else (a subject may hold U+2028 or U+0085, which ``str.splitlines`` would take
for line ends), and a file whose last line has no newline is cut short.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from signer.ctl.common import CtlError, write_if_changed
from signer.ctl.demo.pki import aki
from signer.files import write_atomic

CRL_VALIDITY = dt.timedelta(days=7)

# RFC 5280 reason names as OpenSSL writes them in index.txt -> cryptography's ReasonFlags names.
REASONS = {
    "unspecified": "unspecified",
    "keyCompromise": "key_compromise",
    "CACompromise": "ca_compromise",
    "affiliationChanged": "affiliation_changed",
    "superseded": "superseded",
    "cessationOfOperation": "cessation_of_operation",
    "certificateHold": "certificate_hold",
    "privilegeWithdrawn": "privilege_withdrawn",
    "AACompromise": "aa_compromise",
}
# OpenSSL's index.txt knows only these (crypto/x509/v3_crld.c, apps/ca.c crl_reasons).
INDEX_REASONS = {"unspecified", "keyCompromise", "CACompromise", "affiliationChanged", "superseded",
                 "cessationOfOperation", "certificateHold"}


def canonical_reason(text: str) -> str:
    for reason in REASONS:
        if reason.lower() == text.lower():
            return reason
    raise CtlError(f"unknown revocation reason {text!r}; one of {', '.join(REASONS)}")


# -- OpenSSL index.txt ---------------------------------------------------------------------------------


@dataclass
class IndexEntry:
    """One line of an OpenSSL CA database, in the exact form `openssl ca` writes it."""

    status: str  # V, R or E
    expiry: str  # YYMMDDHHMMSSZ (YYYYMMDDHHMMSSZ from 2050)
    revocation: str  # "" or YYMMDDHHMMSSZ[,reason]
    serial: str  # upper-case hex, an even number of digits
    filename: str
    subject: str  # /K=V/K=V

    def line(self) -> str:
        """The line, without its newline. ValueError for a field that would break the line up."""
        fields = (self.status, self.expiry, self.revocation, self.serial, self.filename, self.subject)
        for f in fields:
            if "\t" in f or "\n" in f or "\r" in f:
                raise ValueError(f"index.txt field {f!r} holds a tab or a line break")
        return "\t".join(fields)


def index_time(t: dt.datetime) -> str:
    t = t.astimezone(dt.UTC)
    return t.strftime("%y%m%d%H%M%SZ") if 1950 <= t.year < 2050 else t.strftime("%Y%m%d%H%M%SZ")


def index_serial(serial: int) -> str:
    text = f"{serial:X}"
    return "0" + text if len(text) % 2 else text


def openssl_oneline(name: x509.Name) -> str:
    """X509_NAME_oneline's form of a simple name: /O=.../CN=... (short names, DER order)."""
    short = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O",
             NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
             NameOID.COUNTRY_NAME: "C", NameOID.LOCALITY_NAME: "L", NameOID.STATE_OR_PROVINCE_NAME: "ST",
             NameOID.EMAIL_ADDRESS: "emailAddress"}
    return "".join(f"/{short.get(a.oid, a.oid.dotted_string)}={a.value}" for a in name)


def read_index(path: Path) -> list[IndexEntry]:
    """The entries of an index.txt ([] when there is none), split into lines as the frontend splits
    them. Bytes that are not UTF-8 are kept as they are (``write_index`` writes them back unchanged)."""
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines[-1]:
        raise CtlError(f"{path}:{len(lines)}: the last line has no newline: the file is cut short")
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6 or fields[0] not in ("V", "R", "E"):
            raise CtlError(f"{path}:{number}: not an OpenSSL index.txt line")
        try:
            int(fields[3], 16)
        except ValueError:
            raise CtlError(f"{path}:{number}: serial {fields[3]!r} is not a hex number") from None
        entries.append(IndexEntry(*fields))
    return entries


def write_index(path: Path, entries: list[IndexEntry]) -> bool:
    try:
        text = "".join(e.line() + "\n" for e in entries)
    except ValueError as e:
        raise CtlError(f"cannot write {path}: {e}") from None
    changed = write_if_changed(path, text.encode("utf-8", "surrogateescape"))
    # `openssl ca` reads (and would otherwise warn about) the database's attribute file.
    write_if_changed(path.with_name(path.name + ".attr"), b"unique_subject = no\n")
    return changed


def index_revoke(entries: list[IndexEntry], serial: int, when: dt.datetime, reason: str | None) -> bool:
    """Mark ``serial`` revoked; False when it was already revoked. Raises CtlError when not in the index."""
    for e in entries:
        if int(e.serial, 16) == serial:
            if e.status == "R":
                return False
            if reason is not None and reason not in INDEX_REASONS:
                raise CtlError(f"OpenSSL's index.txt cannot record the reason {reason}")
            e.status = "R"
            e.revocation = index_time(when) + (f",{reason}" if reason else "")
            return True
    raise CtlError(f"serial {serial:X} is not in the CA database (never issued by this CA)")


# -- CRL -----------------------------------------------------------------------------------------------

Revoked = dict[int, tuple[dt.datetime, str | None]]  # serial -> (revocation time, reason)


def read_crl_entries(path: Path, ca_cert: x509.Certificate) -> tuple[Revoked, int, Any]:
    """Revoked serials (time, reason), CRL number and CRL of a CRL file that verifies with the CA;
    ({}, 0, None) otherwise."""
    try:
        data = path.read_bytes()
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except (OSError, ValueError):
        return {}, 0, None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
        return {}, 0, None
    by_flag = {v: k for k, v in REASONS.items()}
    entries: Revoked = {}
    for rc in crl:
        try:
            flag = rc.extensions.get_extension_for_class(x509.CRLReason).value.reason
            reason = by_flag.get(flag.name)
        except x509.ExtensionNotFound:
            reason = None
        entries[rc.serial_number] = (rc.revocation_date_utc, reason)
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return entries, number, crl


def write_crl(path: Path, ca_cert: x509.Certificate, ca_key: Any, entries: Revoked, number: int,
              now: dt.datetime) -> None:
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + CRL_VALIDITY)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(aki(ca_cert), critical=False))
    for serial, (when, reason) in sorted(entries.items()):
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason is not None:
            rb = rb.add_extension(x509.CRLReason(x509.ReasonFlags[REASONS[reason]]), critical=False)
        builder = builder.add_revoked_certificate(rb.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomic(path, crl.public_bytes(Encoding.PEM))


# -- issued.txt ----------------------------------------------------------------------------------------


def read_issued(path: Path) -> list[int]:
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return []
    try:
        return [int(x, 16) for x in lines if x.strip()]
    except ValueError:
        raise CtlError(f"{path} is not a list of hex serials") from None


def write_issued(path: Path, serials: Iterable[int]) -> bool:
    return write_if_changed(path, "".join(f"{index_serial(s)}\n" for s in serials).encode())
