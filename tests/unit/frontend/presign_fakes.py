"""Fakes for the presign and refresher unit tests: status data, its source, and a signer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from frontend.signer_client import SignResult
from shared.ocsp.errors import TryLater
from shared.ocsp.types import CertStatus, HashAlgorithm, IssuerKey, SingleStatus, StatusInfo
from shared.status.base import GOOD, UNKNOWN, Snapshot

T0 = 1_800_000_000.0  # the fake wall clock's start (epoch seconds)
ISSUER = IssuerKey(HashAlgorithm.SHA1, b"\x01" * 20, b"\x02" * 20)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSnapshot(Snapshot):
    """Every serial in ``statuses``; answers valid ``validity`` from the time they are made, or, with
    ``fixed``, the fixed window (a CRL's)."""

    def __init__(self, statuses: dict[int, StatusInfo], validity: float = 86400.0,
                 fixed: tuple[datetime, datetime] | None = None) -> None:
        self.statuses = statuses
        self.validity = validity
        self.fixed = fixed

    def status(self, serial: int) -> StatusInfo:
        return self.statuses.get(serial, UNKNOWN)

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        if self.fixed is not None:
            return self.fixed
        now = now.replace(microsecond=0)
        return now, now + timedelta(seconds=self.validity)

    def issued_at(self) -> datetime | None:
        return None if self.fixed is None else self.fixed[0]

    def listed(self, serial: int) -> bool:
        return serial in self.statuses

    def serials(self) -> Iterator[int]:
        return iter(self.statuses)


class FakeSource:
    def __init__(self, name: str, snapshot: Snapshot) -> None:
        self.name = name
        self.snapshot = snapshot

    def current(self) -> Snapshot:
        return self.snapshot


def good(n: int, start: int = 1) -> dict[int, StatusInfo]:
    return {s: GOOD for s in range(start, start + n)}


class FakeSigner:
    """Signs at once (or when ``gate`` is set); ``failing``: serials answered TryLater; ``down``: all."""

    def __init__(self, fingerprint: str = "fp-new", address: str = "signer-1") -> None:
        self.fingerprint = fingerprint
        self.address = address
        self.calls: list[SingleStatus] = []
        self.failing: set[int] = set()
        self.down = False
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult:
        (st,) = statuses
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            serial = st.cert_id.serial_int
            if self.down or serial in self.failing:
                raise TryLater("signer: UNAVAILABLE: down")
            self.calls.append(st)
            status = b"R" if st.status is CertStatus.REVOKED else b"G"
            return SignResult(b"der:" + st.cert_id.serial + status, 1, self.fingerprint, self.address)
        finally:
            self.in_flight -= 1
