"""Who holds which cache slot: a free slot, else the least recently used of the
idle conversations (one gives its slot up and is rebuilt from its token ids on
its next turn) and prefix templates (engine/prefix_cache.py); and a
waiting turn's admission, which takes every slot it needs (its session's, its
other choices': engine/choices.py) at once or none, then starts an empty cache
from the longest prompt prefix a template shares with it."""

from __future__ import annotations

import logging

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.engine.prefix_cache import PrefixCache, Template
from swiftinfer_core.engine.session import Session, Turn

log = logging.getLogger(__name__)


class SlotKeeper:
    def __init__(self, pool: KVPool, sessions: dict[str, Session], prefix: PrefixCache | None = None):
        self.pool = pool
        self.sessions = sessions  # the engine's registered sessions (shared, not copied)
        self.prefix = prefix  # its templates' slots are given up like idle conversations' (least recently used first)
        self.lends = 0  # slots an idle conversation gave up to another (it is rebuilt on its next turn)

    @property
    def free(self) -> int:
        """Slots a conversation can have without evicting another: free ones and templates'."""
        return self.pool.slots.free + (self.prefix.slots_held if self.prefix is not None else 0)

    def _idle(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.slot is not None and s.turn is None]

    def take(self, for_session: str) -> int | None:
        """A free slot, else the least recently used of the idle sessions (rebuilt
        from ids on their next turn) and prefix templates."""
        return self._take(for_session)[0]

    def _take(self, for_session: str) -> tuple[int | None, Template | None]:
        """(slot, the template that held it, if one did)."""
        slot = self.pool.slots.allocate()
        if slot is not None:
            return slot, None
        idle = self._idle()
        victim = min(idle, key=lambda s: s.last_used, default=None)
        tpl = self.prefix.coldest() if self.prefix is not None else None
        if tpl is not None and (victim is None or tpl.last_used <= victim.last_used):
            return self.prefix.remove(tpl), tpl
        if victim is None:
            return None, None
        slot = victim.slot
        victim.drop_cache()
        self.lends += 1
        log.info("session %s gave its cache slot %d to %s; it will be rebuilt", victim.id, slot, for_session)
        return slot, None

    def admit(self, turn: Turn) -> bool:
        """Give a waiting turn its session's slot and, with choices, the other
        choices' slots, all at once or none (the waiting turn's own pending tokens
        are already in its to_feed)."""
        session, group = turn.session, turn.choices
        need = (session.slot is None) + (group.extra_slots if group is not None else 0)
        free = self.free
        if need > free and need > free + len(self._idle()):  # all it needs, or none
            return False
        in_place = None
        if session.slot is None:
            session.slot, in_place = self._take(session.id)
            if session.slot is None:
                return False
        if group is not None:
            group.reserved = [self.take(session.id) for _ in range(group.extra_slots)]
        if self.prefix is not None:
            self.prefix.apply(turn, in_place)
        return True
