"""Who holds which cache slot: a free slot, else the least recently used idle
conversation's (it gives its slot up and is rebuilt from its token ids on its
next turn); and a waiting turn's admission, which takes every slot it needs
(its session's, its other choices': engine/choices.py) at once or none."""

from __future__ import annotations

import logging

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.engine.session import Session, Turn

log = logging.getLogger(__name__)


class SlotKeeper:
    def __init__(self, pool: KVPool, sessions: dict[str, Session]):
        self.pool = pool
        self.sessions = sessions  # the engine's registered sessions (shared, not copied)

    def _idle(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.slot is not None and s.turn is None]

    def take(self, for_session: str) -> int | None:
        """A free slot, else the least recently used idle session's (it is rebuilt from ids)."""
        slot = self.pool.slots.allocate()
        if slot is None:
            idle = self._idle()
            if not idle:
                return None
            victim = min(idle, key=lambda s: s.last_used)
            slot = victim.slot
            victim.drop_cache()
            log.info("session %s gave its cache slot %d to %s; it will be rebuilt", victim.id, slot, for_session)
        return slot

    def admit(self, turn: Turn) -> bool:
        """Give a waiting turn its session's slot and, with choices, the other
        choices' slots, all at once or none (the waiting turn's own pending tokens
        are already in its to_feed)."""
        session, group = turn.session, turn.choices
        need = (session.slot is None) + (group.extra_slots if group is not None else 0)
        free = self.pool.slots.free
        if need > free and need > free + len(self._idle()):  # all it needs, or none
            return False
        if session.slot is None:
            session.slot = self.take(session.id)
            if session.slot is None:
                return False
        if group is not None:
            group.reserved = [self.take(session.id) for _ in range(group.extra_slots)]
        return True
