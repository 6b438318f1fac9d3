"""A CA whose key is compromised (``[status] compromised = true``): every serial answers revoked.

RFC 6960 2.7: when a CA's key is known to be compromised, the responder may answer revoked for every
certificate that CA issued, with reason cACompromise (OpenCA OCSPD's ``caCompromised``). Whatever
serial is asked, issued, never issued or revoked for another reason, the answer is the same:
revoked at ``compromised_at`` with reason cACompromise. No status file is read: the answer cannot
depend on data the attacker could have produced with the CA key.

revocationTime is ``compromised_at`` when configured (the time the key is known to have been exposed,
no earlier than the CA certificate's notBefore, and not in the future), else the CA certificate's
notBefore: without a known time of compromise, nothing this CA ever signed can be trusted, and a
client judging an older signature against the revocation time must not find a window in which the
key was still good.

Answers carry thisUpdate = now and nextUpdate = now + ``validity`` (the index source's; 24 h for a CRL
CA), as an index.txt CA's do: both halves build this source from the same CA file, so the signer's
``verify_status`` check agrees with what the frontend asks it to sign.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from cryptography import x509

from shared.ocsp.types import CertStatus, Revocation, RevocationReason, StatusInfo
from shared.status.base import FileStatusSource, Snapshot, StatusDataError, log


class CompromisedSnapshot(Snapshot):
    __slots__ = ("answer", "compromised_at", "validity")

    def __init__(self, compromised_at: datetime, validity: timedelta) -> None:
        self.compromised_at = compromised_at
        self.validity = validity
        self.answer = StatusInfo(CertStatus.REVOKED, Revocation(compromised_at, RevocationReason.CA_COMPROMISE))

    def status(self, serial: int) -> StatusInfo:
        return self.answer

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        return now, now + self.validity

    def issued_at(self) -> None:
        return None  # answers carry the time they are made

    def listed(self, serial: int) -> bool:
        return False  # no data: every serial gets the unlisted answer, revoked

    def serials(self) -> Iterator[int]:
        return iter(())

    def unlisted(self) -> StatusInfo:
        return self.answer

    def interval(self) -> tuple[timedelta, str]:
        return self.validity, "status.validity (the CA is marked compromised)"

    def summary(self) -> str:
        return f"CA marked compromised: every serial revoked (cACompromise) at {self.compromised_at:%Y-%m-%dT%H:%M:%SZ}"


class CompromisedSource(FileStatusSource):
    """No files; ``load_now()`` checks the time and installs the one snapshot."""

    kind = "compromised"
    config_key = "status.compromised_at"

    def __init__(self, name: str, ca_cert_der: bytes, compromised_at: datetime | None, validity: timedelta) -> None:
        super().__init__(name, [], check_interval=3600.0)
        self.ca = x509.load_der_x509_certificate(ca_cert_der)
        self.compromised_at = compromised_at
        self.validity = validity

    def describe_files(self) -> str:
        return "status.compromised (no status files)"

    def load_now(self, attempts: int = 10, pause: float = 0.2) -> None:
        super().load_now(attempts, pause)
        snap = self.current()
        assert isinstance(snap, CompromisedSnapshot)
        log.warning("%s: status.compromised = true: EVERY serial of this CA answers revoked, reason cACompromise, "
                    "at %s (RFC 6960 2.7); no status files are read", self.name,
                    f"{snap.compromised_at:%Y-%m-%dT%H:%M:%SZ}")

    def parse(self) -> CompromisedSnapshot:
        not_before = self.ca.not_valid_before_utc
        at = not_before if self.compromised_at is None else self.compromised_at
        at = at.replace(microsecond=0)
        if at < not_before:
            raise StatusDataError(f"compromised_at {at:%Y-%m-%dT%H:%M:%SZ} is before the CA certificate's notBefore "
                                  f"({not_before:%Y-%m-%dT%H:%M:%SZ}): the signer refuses such revocation times; "
                                  "leave compromised_at out to use notBefore")
        now = datetime.now(not_before.tzinfo)
        if at > now:
            raise StatusDataError(f"compromised_at {at:%Y-%m-%dT%H:%M:%SZ} is in the future; set the time the key "
                                  "was (or may have been) exposed, or leave it out (the CA's notBefore)")
        return CompromisedSnapshot(at, self.validity)
