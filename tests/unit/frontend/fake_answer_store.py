"""An in-memory stand-in for frontend.answer_store.AnswerStore (the API of issue 11), for unit tests.

Answers expire at their ``expires_at`` and locks at their TTL, both on the injected ``wall`` clock;
the refresh index keeps members of expired answers (as Redis does: they are removed lazily).
``down`` makes every call answer as the real store does while Redis is unavailable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

from shared.answers import AnswerKey, StoredAnswer, parse_certids


class FakeAnswerStore:
    def __init__(self, wall: Callable[[], float]) -> None:
        self.wall = wall
        self.answers: dict[AnswerKey, tuple[StoredAnswer, float]] = {}
        self.index: dict[str, dict[str, float]] = {}  # CA -> certid_text -> score
        self.locks: dict[str, tuple[str, float]] = {}  # name -> (token, expiry)
        self.down = False
        self.puts = 0
        self.mgets = 0
        self._tokens = itertools.count(1)
        self.name = "fake"
        self.prefix = "ocsp:"

    @property
    def available(self) -> bool:
        return not self.down

    def _live(self, key: AnswerKey) -> StoredAnswer | None:
        found = self.answers.get(key)
        if found is None or found[1] <= self.wall():
            return None
        return found[0]

    async def get(self, key: AnswerKey) -> StoredAnswer | None:
        return None if self.down else self._live(key)

    async def get_many(self, keys: Sequence[AnswerKey]) -> list[StoredAnswer | None]:
        self.mgets += 1
        if self.down:
            return [None] * len(keys)
        return [self._live(k) for k in keys]

    async def put(self, key: AnswerKey, answer: StoredAnswer, expires_at: float) -> None:
        if self.down or len(key.cert_ids) != 1 or expires_at <= self.wall():
            return
        self.puts += 1
        self.answers[key] = (answer, expires_at)
        self.index.setdefault(key.ca, {})[key.certid_text()] = expires_at

    async def delete(self, keys: Iterable[AnswerKey]) -> None:
        if self.down:
            return
        for k in keys:
            self.answers.pop(k, None)
            self.index.get(k.ca, {}).pop(k.certid_text(), None)

    async def due(self, ca: str, before: float, limit: int) -> list[AnswerKey]:
        if self.down:
            return []
        members = sorted((score, m) for m, score in self.index.get(ca, {}).items() if score <= before)
        return [AnswerKey(ca, parse_certids(m)) for _, m in members[:limit]]

    async def members(self, ca: str, cursor: int, count: int) -> tuple[int, list[AnswerKey]]:
        if self.down:
            return 0, []
        names = sorted(self.index.get(ca, {}))
        page = names[cursor:cursor + count]
        nxt = cursor + count if cursor + count < len(names) else 0
        return nxt, [AnswerKey(ca, parse_certids(m)) for m in page]

    def _held(self, name: str) -> tuple[str, float] | None:
        held = self.locks.get(name)
        if held is not None and held[1] <= self.wall():
            del self.locks[name]
            return None
        return held

    async def lock(self, name: str, ttl: float) -> str | None:
        if self.down or self._held(name) is not None:
            return None
        token = f"t{next(self._tokens)}"
        self.locks[name] = (token, self.wall() + ttl)
        return token

    async def renew(self, name: str, token: str, ttl: float) -> bool:
        held = None if self.down else self._held(name)
        if held is None or held[0] != token:
            return False
        self.locks[name] = (token, self.wall() + ttl)
        return True

    async def unlock(self, name: str, token: str) -> None:
        held = None if self.down else self._held(name)
        if held is not None and held[0] == token:
            del self.locks[name]

    async def close(self) -> None:
        pass
