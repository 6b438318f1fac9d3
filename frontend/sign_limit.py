"""Back-pressure on the signing path: at most ``signer.max_in_flight`` signatures in flight for this
frontend process. Past that, a request that needs a signature is answered tryLater at once instead of
queueing behind the others until ``signer.timeout`` runs out, so a flood of nonce requests costs the
flood its answers, not everyone else's latency. Refusals are counted and logged at most every few
seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from frontend.app import Signer
from frontend.signer_client import SignResult
from shared.ocsp.errors import TryLater
from shared.ocsp.types import SingleStatus
from shared.ratelog import RateLimitedLog

log = logging.getLogger("frontend.server")

LOG_INTERVAL = 5.0  # seconds between two log lines about refusals past the bound


class BoundedSigner:
    """Wraps the signer client; is a ``frontend.app.Signer`` itself."""

    def __init__(self, inner: Signer, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.inner = inner
        self.limit = limit
        self.in_flight = 0
        self.refused = 0  # requests answered tryLater because the bound was reached
        self._ratelog = RateLimitedLog(log, LOG_INTERVAL, time.monotonic)

    async def sign(self, statuses: Sequence[SingleStatus], nonce: bytes | None) -> SignResult:
        if self.in_flight >= self.limit:
            self.refused += 1
            self._ratelog.log(logging.WARNING, "full", "%d signatures in flight (signer.max_in_flight): answering "
                              "tryLater at once (%d so far)", self.in_flight, self.refused)
            raise TryLater(f"{self.in_flight} signatures in flight already (signer.max_in_flight)")
        self.in_flight += 1
        try:
            return await self.inner.sign(statuses, nonce)
        finally:
            self.in_flight -= 1
