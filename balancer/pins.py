"""Session ids pinned to the substation that holds them, or may hold them.

A repeat of a session id (the ingress retrying after a lost answer, a client retrying with its
Idempotency-Key) must go where the session is, never to a second substation:
- placed sessions are pinned where they were placed; the substation recognises the repeat and
  answers with the same session;
- when a forward ends ambiguously and the cancel could not be delivered either (the substation
  is down, say), the session may exist there, persisted, and come back with it; it stays pinned
  until that substation answers for it.
Bounded by count and age, oldest dropped first.
"""

from __future__ import annotations

from collections import OrderedDict


class SessionPins:
    def __init__(self, max_entries: int = 100_000, max_age_s: float = 3600.0) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._pinned: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def pin(self, session_id: str, instance: str, now: float) -> None:
        self._pinned[session_id] = (instance, now)
        self._pinned.move_to_end(session_id)
        self._prune(now)

    def pinned_to(self, session_id: str, now: float) -> str | None:
        entry = self._pinned.get(session_id)
        if entry is None:
            return None
        if now - entry[1] > self.max_age_s:
            del self._pinned[session_id]
            return None
        return entry[0]

    def settle(self, session_id: str) -> None:
        self._pinned.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._pinned)

    def _prune(self, now: float) -> None:
        # Oldest first: bounded memory even if a substation never comes back.
        while self._pinned and (len(self._pinned) > self.max_entries or
                                now - next(iter(self._pinned.values()))[1] > self.max_age_s):
            self._pinned.popitem(last=False)
