"""Request ids: ``<prefix>-<n>``, a random prefix per process and a counter, unique across workers,
restarts and frontends of a fleet without any coordination.

A frontend process makes one ``RequestIds`` when it starts serving (a forked worker makes its own, so
workers never share a prefix). The signer client names every SignRequest with the next id (the signer
writes it into the audit record), and the access log (frontend.access_log) names every request with one:
a signed answer's line carries the id its SignRequest carried, so the line leads to its audit record.
"""

from __future__ import annotations

import itertools
import secrets

PREFIX_BYTES = 5  # 10 hex digits: a prefix repeats after about a million restarts (birthday bound)


class RequestIds:
    __slots__ = ("_count", "prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else secrets.token_hex(PREFIX_BYTES)
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self._count)}"
